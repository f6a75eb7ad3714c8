"""History over REST: ``/fapi/v1/klines``, ``/fapi/v1/markPriceKlines`` and ``/fapi/v1/fundingRate``.

Reuses ``binance.rest.BinanceRest`` (its ``_call`` paces by ``X-MBX-USED-WEIGHT-1M`` at 80 % of the
minute's 2400, fails fast during a 418 ban, honours 429 back-offs). Limits as data, from
binance-usdm-2026.md §4 and the official pages:

- klines: ``limit`` max 1500, weight by limit (1 / 2 / 5 / 10 above 1000);
- markPriceKlines: same rows and limit, the same weight table (the official page lists it;
  ``binance.rest.ROUTE_WEIGHTS`` has no row for it yet, so the client's estimate before sending
  is 1 and the response header corrects it - reported to the lead);
- fundingRate: ``limit`` max 1000, "shares 500/5min/IP with GET /fapi/v1/fundingInfo" (official
  page): paced here by ``FUNDING_BUDGET`` on top of the weight pacing;
- aggTrades (developers.binance.com, USDⓈ-M "Compressed/Aggregate Trades List", read 2026-12):
  request weight 20; ``limit`` default 500, max 1000; ``startTime``/``endTime`` less than 1 hour
  apart; "Sending both startTime/endTime and fromId might cause response timeout, please send either
  fromId or startTime/endTime"; fromId/startTime/endTime inclusive; rows ``a p q f l T m``. One minute
  is asked by its time window, the pages after a full one by ``fromId`` alone. ``binance.rest`` weighs
  it 20 before sending (``ROUTE_WEIGHTS``). Unsure: the COIN-M page adds "support querying futures
  trade histories that are not older than one year"; the USD-M page does not say it. An older
  minute answered empty would contradict its candle and be reported by the backtest, never used.

A request the client refuses for the budget (``RateLimited`` with ``retry_after_s``) is waited out
(at least ``MIN_WAIT_S``) and sent again; a 418 ban, a 429 asking for more than
``RETRY_AFTER_STOP_S`` or more than ``MAX_429`` 429s in a row stop REST for the run (nothing is sent
into a ban). Every request has an overall deadline (``REQUEST_DEADLINE_S``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from binance.errors import BinanceError, RateLimited, Retryable
from binance.history.archive import (
    FUNDING,
    INTERVAL,
    MINUTE_MS,
    AggTrades,
    BadData,
    Parsed,
    decimals_of,
    dedupe,
    parse_agg_rows,
    parse_kline_rows,
    price_of,
)
from binance.rest import BinanceRest

log = logging.getLogger(__name__)

KLINE_LIMIT = 1500
FUNDING_LIMIT = 1000
AGG_LIMIT = 1000
AGG_MAX_PAGES = 500  # 500k aggregate trades in one minute is not a minute this cache can hold
FUNDING_BUDGET = (400, 300.0)  # requests per seconds: 80 % of the shared 500 / 5 min
MAX_WAITS = 20  # budget waits per request before the day is reported instead
# Against a hostile or broken venue (D-74's attack): the weight window is one minute and Binance's
# bans start at 2 minutes, so a 429 asking for more than 2 minutes is a ban in all but name: REST
# stops for the run (as for a 418) instead of sleeping hours. A Retry-After of 0 or less is read as
# the minimum; more than ``MAX_429`` 429s in a row to one request stop REST too (polling through
# 429s is what earns bans). Each request has an overall deadline: httpx's timeout is per read, and
# a body trickled a byte at a time would hold the run forever.
RETRY_AFTER_STOP_S = 120.0
MIN_WAIT_S = 1.0
MAX_429 = 3
REQUEST_DEADLINE_S = 60.0


class Banned(Exception):
    """The venue banned this IP (418), or asked for a wait this run does not make (a 429 over
    ``RETRY_AFTER_STOP_S``, 429s in a row): no REST request is sent for the rest of the run."""


class Interrupted(Exception):
    """REST failed (``cause``) after some pages: ``partial`` holds their rows, complete up to
    ``covered_until_ms`` (the cursor when it failed), to be stored before the failure is reported."""

    def __init__(self, cause: Exception, partial: Parsed, covered_until_ms: int) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.partial = partial
        self.covered_until_ms = covered_until_ms


def _kline_time(row: Any, n: int, where: str) -> int:
    """The open time of a REST kline row, BadData when the row is not a kline row."""
    if not isinstance(row, list) or len(row) < 5:
        raise BadData(f"{where} row {n}: not a kline row: {str(row)[:120]}")
    try:
        return int(row[0])
    except (TypeError, ValueError):
        raise BadData(f"{where} row {n}: open_time {row[0]!r} is not an integer") from None


def _funding_parsed(rows: list[tuple[int, str, str]], where: str) -> Parsed:
    times: list[int] = []
    rates: list[float | None] = []
    marks: list[float | None] = []
    decimals = {"funding_rate": 0, "mark_price": 0}
    for n, (t, rate, mark) in enumerate(rows, start=1):
        at = f"{where} row {n}"
        times.append(t)
        rates.append(price_of(rate, at, positive=False))
        marks.append(price_of(mark, at) if mark else None)
        decimals["funding_rate"] = max(decimals["funding_rate"], decimals_of(rate))
        decimals["mark_price"] = max(decimals["mark_price"], decimals_of(mark))
    return dedupe(Parsed(times, {"funding_rate": rates, "mark_price": marks}, decimals), where)


class HistoryRest(BinanceRest):
    """``BinanceRest`` plus the two history routes it lacks; public GETs, no key needed."""

    async def mark_price_klines(self, symbol: str, interval: str, start_ms: int, end_ms: int) -> list[Any]:
        p: dict[str, str | int] = {
            "symbol": symbol,
            "interval": interval,
            "startTime": start_ms,
            "endTime": end_ms,
            "limit": KLINE_LIMIT,
        }
        return _rows(await self._call("GET", "/fapi/v1/markPriceKlines", p, signed=False))

    async def funding_rate(self, symbol: str, start_ms: int, end_ms: int) -> list[Any]:
        p: dict[str, str | int] = {
            "symbol": symbol,
            "startTime": start_ms,
            "endTime": end_ms,
            "limit": FUNDING_LIMIT,
        }
        return _rows(await self._call("GET", "/fapi/v1/fundingRate", p, signed=False))

    def abandon(self) -> None:
        """Cancel the requests still on the wire. ``BinanceRest`` shields each request from its
        caller's cancellation (an order's answer must not be lost); a history GET past its deadline
        has no outcome to keep, and a shielded one trickled forever would hold ``aclose``."""
        for task in list(self._inflight):
            task.cancel()

    async def agg_trades(
        self, symbol: str, start_ms: int | None, end_ms: int | None, from_id: int | None
    ) -> Any:
        """One page of ``GET /fapi/v1/aggTrades`` (``AGG_LIMIT`` rows) as answered: by time window
        or by ``fromId``, never both (the official page warns the pair may time out)."""
        p: dict[str, str | int] = {"symbol": symbol, "limit": AGG_LIMIT}
        if from_id is not None:
            p["fromId"] = from_id
        else:
            assert start_ms is not None and end_ms is not None
            p["startTime"] = start_ms
            p["endTime"] = end_ms
        return await self._call("GET", "/fapi/v1/aggTrades", p, signed=False)


def _rows(answer: Any) -> list[Any]:
    if not isinstance(answer, list):
        raise BadData(f"expected a JSON array, got {type(answer).__name__}")
    return answer


def _agg_page(answer: Any, where: str) -> tuple[AggTrades, bool]:
    """One aggTrades answer parsed, and whether it was a full page (``AGG_LIMIT`` rows as sent). An
    id repeated with the same row is kept once; with a different row, or ids and times not both
    ascending (Binance answers by id, and ids follow time), the answer is BadData."""
    if not isinstance(answer, list):
        raise BadData(f"{where}: expected a JSON array, got {type(answer).__name__}")
    got = parse_agg_rows(answer, where)
    rows: dict[int, tuple[Any, ...]] = {}
    keep: list[int] = []
    for i, agg_id in enumerate(got.ids):
        row = tuple(col[i] for col in got.columns())
        if agg_id in rows:
            if rows[agg_id] != row:
                raise BadData(
                    f"{where}: aggregate trade id {agg_id} answered twice with different rows; not stored"
                )
            continue
        if keep and (agg_id < got.ids[keep[-1]] or got.times[i] < got.times[keep[-1]]):
            raise BadData(
                f"{where}: ids or times out of order at row {i + 1} (id {agg_id} at {got.times[i]}); "
                "not stored"
            )
        rows[agg_id] = row
        keep.append(i)
    cols = [[col[i] for i in keep] for col in got.columns()]
    return AggTrades.of_columns(cols, got.decimals), len(answer) >= AGG_LIMIT


async def _sleep(seconds: float) -> None:
    await asyncio.sleep(seconds)


class RestHistory:
    """Pages of closed candles / settlements for one window, paced; counts what it sent."""

    def __init__(
        self,
        rest: HistoryRest,
        *,
        sleep: Callable[[float], Awaitable[None]] = _sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rest = rest
        self._sleep = sleep
        self._monotonic = monotonic
        self._funding_sent: deque[float] = deque()

    @property
    def requests(self) -> int:
        """Requests that left (a request held back by the local budget is not one); 0 for a client
        that does not count them."""
        return int(getattr(self.rest, "requests_sent", 0))

    async def klines(self, dataset: str, symbol: str, start_ms: int, end_ms: int) -> Parsed:
        """Closed 1m candles with ``start_ms <= open_time`` and ``open_time + 1m <= end_ms``.

        Pages are asked for while the cursor is inside the window: a short page (a loaded server may
        answer fewer than ``limit`` rows) does not end the window, an empty one does (the source has
        nothing after the cursor). A page that does not move the cursor (a server ignoring
        ``startTime``) and more pages than the window can hold are BadData. A failure after some
        pages raises ``Interrupted`` carrying them."""
        where = f"REST {dataset} {symbol}"
        rows: list[list[str]] = []
        cursor = start_ms
        # Full pages need span / limit requests; twice that (+2) lets a loaded server answer half
        # pages, while a server creeping forward a minute a page is still stopped.
        cap = 2 * ((end_ms - start_ms) // (MINUTE_MS * KLINE_LIMIT)) + 2
        pages = 0
        while cursor + MINUTE_MS <= end_ms:
            if pages >= cap:
                raise BadData(f"{where}: more than {cap} pages for the window; not stored")
            last = end_ms - MINUTE_MS  # endTime bounds the open time of the last candle wanted
            page = await self._interruptible(
                self._kline_page, rows, where, cursor, dataset, symbol, cursor, last
            )
            pages += 1
            if not page:
                break
            times = [_kline_time(r, n, where) for n, r in enumerate(page, start=1)]
            rows.extend(
                [str(c) for c in r[:5]]
                for r, t in zip(page, times, strict=True)
                if cursor <= t and t + MINUTE_MS <= end_ms
            )
            nxt = max(times) + MINUTE_MS
            if nxt <= cursor:
                raise BadData(
                    f"{where}: a page from {cursor} did not advance (ends at {max(times)}); not stored"
                )
            cursor = nxt
        return parse_kline_rows(rows, where)

    async def _interruptible(
        self, call: Callable[..., Awaitable[list[Any]]], rows: list[Any], where: str, cursor: int, *args: Any
    ) -> list[Any]:
        try:
            page: list[Any] = await self._paced(call, *args)
        except (Banned, BinanceError) as exc:
            if not rows:
                raise
            got = parse_kline_rows(rows, where) if isinstance(rows[0], list) else _funding_parsed(rows, where)
            raise Interrupted(exc, got, cursor) from exc
        return page

    async def _kline_page(self, dataset: str, symbol: str, start: int, end: int) -> list[Any]:
        if dataset == "klines":
            return await self.rest.klines(symbol, INTERVAL, start_ms=start, end_ms=end, limit=KLINE_LIMIT)
        return await self.rest.mark_price_klines(symbol, INTERVAL, start, end)

    async def funding(self, symbol: str, start_ms: int, end_ms: int) -> Parsed:
        """Settlements with ``start_ms <= fundingTime < end_ms``; ``markPrice`` may be empty on old
        rows (then None). Paged as ``klines``."""
        where = f"REST {FUNDING} {symbol}"
        rows: list[tuple[int, str, str]] = []
        cursor = start_ms
        # Settlements are at least an hour apart; a page of FUNDING_LIMIT covers >= 1000 h.
        cap = 2 * ((end_ms - start_ms) // (3_600_000 * FUNDING_LIMIT)) + 2
        pages = 0
        while cursor < end_ms:
            if pages >= cap:
                raise BadData(f"{where}: more than {cap} pages for the window; not stored")
            await self._funding_budget()
            page = await self._interruptible(
                self.rest.funding_rate, rows, where, cursor, symbol, cursor, end_ms - 1
            )
            pages += 1
            if not page:
                break
            times = []
            for n, row in enumerate(page, start=1):
                try:
                    t = int(row["fundingTime"])
                    rate, mark = str(row["fundingRate"]), str(row.get("markPrice") or "")
                except (KeyError, TypeError, ValueError, AttributeError):
                    raise BadData(f"{where} row {n}: unreadable {str(row)[:120]}") from None
                times.append(t)
                if cursor <= t < end_ms:
                    rows.append((t, rate, mark))
            nxt = max(times) + 1
            if nxt <= cursor:
                raise BadData(
                    f"{where}: a page from {cursor} did not advance (ends at {max(times)}); not stored"
                )
            cursor = nxt
        return _funding_parsed(rows, where)

    async def agg_minute(self, symbol: str, minute_ms: int) -> AggTrades:
        """Every aggregate trade of the minute opening at ``minute_ms``, oldest first: the minute's
        window (``startTime`` .. ``endTime`` inclusive, 59 999 ms), then, while a page comes back
        full and still inside the minute, the next page from the last id + 1 (``fromId`` alone).
        Each page is checked (``_agg_page``: a repeated id kept once, ids and times in order); any
        failure leaves the minute unfetched (it is stored whole or not at all). BadData for:

        - a row of the window page outside the window (Binance answers only inside it);
        - a full page followed by an empty ``fromId`` page: a past minute of a listed symbol always
          has a later trade (assumed: a delisted symbol's last minute could end on exactly 1000
          trades; that minute is then reported, never stored wrong);
        - a ``fromId`` page starting before the id asked for or before the last time seen;
        - more than ``AGG_MAX_PAGES`` pages.

        An empty window page is an empty minute here; the cache checks it against the candle."""
        when = datetime.fromtimestamp(minute_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%MZ")
        where = f"REST aggTrades {symbol} {when}"
        end = minute_ms + MINUTE_MS
        page = await self._paced(self.rest.agg_trades, symbol, minute_ms, end - 1, None)
        got, full = _agg_page(page, where)
        outside = [t for t in got.times if not minute_ms <= t < end]
        if outside:
            raise BadData(
                f"{where}: {len(outside)} of {len(got)} rows outside the minute asked for "
                f"(first at T={outside[0]}); not stored"
            )
        out = got
        pages = 1
        while full and max(got.times) < end:
            if pages >= AGG_MAX_PAGES:
                raise BadData(f"{where}: more than {AGG_MAX_PAGES} pages for one minute; not stored")
            after = max(got.ids) + 1
            page = await self._paced(self.rest.agg_trades, symbol, None, None, after)
            got, full = _agg_page(page, where)
            pages += 1
            if not len(got):
                raise BadData(
                    f"{where}: a full page of {AGG_LIMIT}, then none from id {after} (a past minute of a "
                    "listed symbol always has a later trade); not stored"
                )
            if got.ids[0] < after or got.times[0] < out.times[-1]:
                raise BadData(
                    f"{where}: a page from id {after} starts at id {got.ids[0]} (T={got.times[0]}); "
                    "not stored"
                )
            out.extend(got.within(minute_ms, end))
        return out

    async def exchange_info(self) -> dict[str, Any]:
        """``GET /fapi/v1/exchangeInfo`` (weight 1), read afresh, paced as the history pages are."""
        answer = await self._paced(lambda: self.rest.exchange_info(refresh=True))
        if not isinstance(answer, dict):
            raise BadData(f"REST exchangeInfo: expected a JSON object, got {type(answer).__name__}")
        return answer

    async def _funding_budget(self) -> None:
        count, window = FUNDING_BUDGET
        now = self._monotonic()
        while self._funding_sent and now - self._funding_sent[0] >= window:
            self._funding_sent.popleft()
        if len(self._funding_sent) >= count:
            await self._sleep(window - (now - self._funding_sent[0]))
        self._funding_sent.append(self._monotonic())

    async def _paced(self, call: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """One request within ``REQUEST_DEADLINE_S``; budget refusals waited out (at least
        ``MIN_WAIT_S``), transport failures retried twice. ``Banned`` (no more REST this run) for a
        418, a 429 asking for more than ``RETRY_AFTER_STOP_S``, or more than ``MAX_429`` in a row."""
        failures = 0
        limited = 0  # the venue's own 429s to this request, in a row
        for _ in range(MAX_WAITS):
            sent = self.requests
            try:
                return await asyncio.wait_for(call(*args), REQUEST_DEADLINE_S)
            except TimeoutError:
                self.rest.abandon()
                raise BinanceError(0, f"no complete answer within {REQUEST_DEADLINE_S:g} s", 0) from None
            except RateLimited as exc:
                if exc.http_status == 418 or exc.banned_until_ms:
                    raise Banned(f"REST: IP banned until {exc.banned_until_ms}: {exc.msg}") from None
                wait = max(exc.retry_after_s or 0.0, MIN_WAIT_S)
                if exc.http_status == 429 and self.requests > sent:  # the venue's, not ours
                    limited += 1
                    if wait > RETRY_AFTER_STOP_S:
                        raise Banned(
                            f"REST: a 429 asked to wait {wait:g} s (more than {RETRY_AFTER_STOP_S:g} s): "
                            "no more REST this run"
                        ) from None
                    if limited > MAX_429:
                        raise Banned(
                            f"REST: {limited} answers 429 in a row to one request: no more REST this run"
                        ) from None
                log.info("REST budget: waiting %.1f s", wait)
                await self._sleep(wait)
            except Retryable as exc:
                failures += 1
                if failures > 2 or "unreachable" in exc.msg:
                    raise
                await self._sleep(0.2 * failures)
        raise BinanceError(0, f"REST: still over the budget after {MAX_WAITS} waits", 0)
