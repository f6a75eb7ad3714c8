"""``MarketCache``: historical 1m klines, 1m mark-price klines and funding settlements, on disk.

Theory of operation: a window ``[start_ms, end_ms)`` is cut into UTC days, clipped at "now" (only
closed candles are stored). Days the manifest already knows (``complete``, or ``partial`` far enough)
are skipped: a covered window sends nothing. The rest is fetched month by month:

1. a complete past month: the monthly archive zip (one file holds the whole month);
2. otherwise, or when the monthly zip is missing (404): the daily zip of each finished day
   (klines and markPriceKlines only - fundingRate has monthly files only);
3. a day still missing (404), and today: REST, in contiguous runs, paced by weight.

A zip is stored only when its sha256 equals its ``.CHECKSUM`` and every row is a possible candle
(``archive.parse_kline_rows``); a file that fails either is reported and its days fall through to
the next source (monthly -> daily -> REST). Rows outside the file's own period are dropped and
reported. A day is ``complete`` only when its rows were stored, or when its own source (its daily
zip, or REST read through to the end of the window) had none: a monthly zip silent about a day sends
that day on to the daily zip and REST. A REST failure after some pages stores those pages first.
A source that cannot be reached is marked down for
the run; its days fall through to the next source. After fetching, the stored rows of the window are
scanned for gaps (missing minutes; for funding, more than ``FUNDING_MAX_SPACING_MS`` without a
settlement), each reported with exact UTC times and why.

aggTrades are not days but single minutes (``aensure_agg``: the minutes a backtest found ambiguous,
D-74), fetched over REST only (``RestHistory.agg_minute``, paged by ``fromId``), each stored whole
or not at all; a minute already covered sends nothing. The archive's daily aggTrades zips are not
used: a whole day of a busy symbol's trades for a handful of minutes.
"""

from __future__ import annotations

import asyncio
import fcntl
import itertools
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import httpx

from binance.errors import BinanceError
from binance.history import exchange_info
from binance.history.archive import (
    AGG_TRADES,
    DATASETS,
    DAY_MS,
    DEFAULT_ARCHIVE_URL,
    FUNDING,
    MINUTE_MS,
    AggTrades,
    BadData,
    ChecksumMismatch,
    Downloader,
    NotInArchive,
    Parsed,
    Unreachable,
    archive_path,
    check_symbol,
    clip,
    day_of,
    month_of,
    parse_archive_file,
)
from binance.history.exchange_info import ExchangeInfoStatus
from binance.history.rest_history import Banned, HistoryRest, Interrupted, RestHistory
from binance.history.store import CorruptMonth, DayState, Store, exact, months_between
from binance.rest import DEFAULT_BASE_URL, wall_clock_ms

log = logging.getLogger(__name__)

# Binance funding intervals are 8 h at most (4 h and 1 h exist); a longer spacing is a gap.
FUNDING_MAX_SPACING_MS = 8 * 3_600_000 + MINUTE_MS


class CacheBusy(Exception):
    """Another process is filling this cache (it holds ``<root>/.lock``): one line, exit 1."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Gap:
    """Times with no data: ``start_ms`` inclusive, ``end_ms`` exclusive."""

    start_ms: int
    end_ms: int
    reason: str

    def describe(self) -> str:
        span = _span(self.end_ms - self.start_ms)
        return f"{iso(self.start_ms)} .. {iso(self.end_ms)} ({span}): {self.reason}"


@dataclass(slots=True, kw_only=True)
class CoverageReport:
    """What one ``ensure`` found and did for one symbol and dataset."""

    symbol: str
    dataset: str
    start_ms: int
    end_ms: int  # clipped to now (closed candles only)
    archive_files: int = 0
    rest_rows: int = 0
    rows: int = 0  # rows stored inside the window after this run
    requests: int = 0  # HTTP requests this ensure sent (archive + REST)
    gaps: list[Gap] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # one line each: checksum, unreachable, REST errors

    @property
    def complete(self) -> bool:
        return not self.gaps


@dataclass(slots=True, kw_only=True)
class AggReport:
    """What one ``aensure_agg`` found and did for one symbol's minutes."""

    symbol: str
    minutes: int  # asked for
    cached: int = 0  # already covered: nothing sent
    fetched: int = 0  # fetched and stored now (a minute without a trade included)
    rows: int = 0  # aggregate trades stored now
    requests: int = 0
    failed: list[tuple[int, str]] = field(default_factory=list)  # (minute, why), not covered
    problems: list[str] = field(default_factory=list)  # month files moved aside (their minutes refetched)

    @property
    def complete(self) -> bool:
        return not self.failed


ProgressKind = Literal["plan", "stored", "checked", "done"]


@dataclass(frozen=True, slots=True)
class ProgressEvent:
    """``stored``: a file or a REST run was stored (``message`` says which); ``plan``, ``checked``
    and ``done`` move the day count of one ``ensure``."""

    kind: ProgressKind
    symbol: str
    dataset: str
    done_days: int
    total_days: int
    message: str


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _span(ms: int) -> str:
    minutes = ms // MINUTE_MS
    if minutes < 120:
        return f"{minutes} min"
    if ms % DAY_MS == 0:
        return f"{ms // DAY_MS} d"
    return f"{ms / 3_600_000:.1f} h"


class MarketCache:
    """Historical market data under ``root`` (see the module docstring).

    ``ensure`` fetches what is missing, ``read`` returns columns. ``rest`` is the REST base URL or a
    ready ``HistoryRest`` (not closed here). ``clock_ms`` is "now" (closed candles end before it)."""

    def __init__(
        self,
        root: Path,
        *,
        archive_url: str = DEFAULT_ARCHIVE_URL,
        rest: str | HistoryRest = DEFAULT_BASE_URL,
        clock_ms: Callable[[], int] = wall_clock_ms,
        progress: Callable[[ProgressEvent], None] | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        self.root = Path(root)
        self.archive_url = archive_url.rstrip("/")
        self._rest_arg = rest
        self._clock_ms = clock_ms
        self.progress = progress
        self.timeout_s = timeout_s
        self.store = Store(self.root)
        self._archive: Downloader | None = None
        self._archive_client: httpx.AsyncClient | None = None
        self._rest: RestHistory | None = None
        self._own_rest: HistoryRest | None = None
        # "archive" / "rest" -> why that source is skipped until ``aclose`` ends the session.
        self.down: dict[str, str] = {}
        self._lock_file: Any = None  # <root>/.lock, flock'ed from the first aensure to aclose/close
        self._serial: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None

    # -- public API ------------------------------------------------------------------------

    def ensure(self, symbol: str, dataset: str, start_ms: int, end_ms: int) -> CoverageReport:
        """Blocking ``aensure`` (not from inside a running event loop)."""

        async def one() -> CoverageReport:
            try:
                return await self.aensure(symbol, dataset, start_ms, end_ms)
            finally:
                await self.aclose()

        return asyncio.run(one())

    def read(self, symbol: str, dataset: str, start_ms: int, end_ms: int) -> dict[str, list[Any]]:
        """Stored columns for ``start_ms <= time < end_ms``, sorted by time, no duplicates:
        ``open_time, open, high, low, close`` (1m klines / markPriceKlines) or
        ``funding_time, funding_rate, mark_price`` (fundingRate; ``mark_price`` is None for rows
        from the archive, whose funding files carry no mark price). Prices are float64 holding
        Binance's decimals exactly (``binance.history.store.exact`` gives the Decimal)."""
        _check_dataset(dataset)
        return self.store.read(check_symbol(symbol), dataset, start_ms, end_ms)

    def read_table(self, symbol: str, dataset: str, start_ms: int, end_ms: int) -> Any:
        """``read``'s rows as one pyarrow table (``Store.read_table``; None: read them by ``read``)."""
        _check_dataset(dataset)
        return self.store.read_table(check_symbol(symbol), dataset, start_ms, end_ms)

    def known_gaps(self, symbol: str, dataset: str, start_ms: int, end_ms: int) -> list[Gap]:
        """The gaps the manifest holds for the window (as the last ``ensure`` scanning it found them);
        no request, no data read."""
        _check_dataset(dataset)
        rows = self.store.gaps(check_symbol(symbol), dataset, start_ms, end_ms)
        return [Gap(start_ms=max(a, start_ms), end_ms=min(b, end_ms), reason=r) for a, b, r in rows]

    async def aclose(self) -> None:
        """End the session: close the HTTP clients; a source marked down is tried again next time."""
        self.down.clear()
        self._unlock()
        if self._archive_client is not None:
            await self._archive_client.aclose()
            self._archive_client = self._archive = None
        if self._own_rest is not None:
            await self._own_rest.aclose()
            self._own_rest = None
        self._rest = None

    def close(self) -> None:
        """Close the manifest (call ``aclose`` first when ``aensure`` was used)."""
        self._unlock()
        self.store.close()

    def __enter__(self) -> MarketCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def aensure(self, symbol: str, dataset: str, start_ms: int, end_ms: int) -> CoverageReport:
        """Fetch what ``[start_ms, end_ms)`` lacks; report coverage and gaps. Raises nothing for
        network trouble: it becomes ``problems`` and ``gaps``. Raises ``CacheBusy`` when another
        process holds the cache; calls on one ``MarketCache`` run one at a time."""
        _check_dataset(dataset)
        symbol = check_symbol(symbol)
        self._lock()
        async with self._serial_lock():
            return await self._ensure(symbol, dataset, start_ms, end_ms)

    def agg_trades(self, symbol: str, minute_ms: int) -> AggTrades | None:
        """The aggregate trades of a covered minute, oldest first (empty: no trade in it), or None
        when the minute was never fetched whole. No request."""
        return self.store.agg_trades(check_symbol(symbol), minute_ms)

    async def aensure_agg(self, symbol: str, minutes: Iterable[int], *, refetch: bool = False) -> AggReport:
        """Fetch over REST the aggTrades of each closed 1m ``minutes`` start the cache does not cover
        (one minute at a time, each stored whole or not at all); a covered minute sends nothing, unless
        ``refetch`` (its rows are then replaced by the new answer). A month file that cannot be read is
        moved aside first (``report.problems``) and its minutes fetched again. Raises nothing for
        network trouble or a bad answer: the minute is listed in ``failed``.
        No archive: a day's aggTrades zip of a busy symbol is hundreds of MB for a handful of
        minutes (D-74)."""
        symbol = check_symbol(symbol)
        wanted = sorted({m // MINUTE_MS * MINUTE_MS for m in minutes})
        report = AggReport(symbol=symbol, minutes=len(wanted))
        self._lock()
        async with self._serial_lock():
            for month in sorted({month_of(m) for m in wanted}):
                line = self.store.audit_agg(symbol, month)
                if line:
                    report.problems.append(line)
            sent_before = self._requests()
            now = self._clock_ms()
            for minute in wanted:
                if not refetch and self.store.agg_trades(symbol, minute) is not None:
                    report.cached += 1
                    continue
                if minute + MINUTE_MS > now:
                    report.failed.append((minute, "the minute has not closed yet"))
                    continue
                why = self.down.get("rest", "")
                if not why:
                    why = await self._agg_minute(report, minute, now)
                if why:
                    report.failed.append((minute, why))
            report.requests = self._requests() - sent_before
        return report

    async def _agg_minute(self, report: AggReport, minute: int, now: int) -> str:
        """Fetch and store one minute; "" when stored, else why not."""
        where = f"REST aggTrades {report.symbol} {iso(minute)[:16]}Z"
        try:
            trades = await self._rest_history().agg_minute(report.symbol, minute)
        except (Banned, Unreachable) as exc:
            self.down["rest"] = str(exc)
            return str(exc)
        except BinanceError as exc:
            why = f"REST aggTrades: {exc.msg}"
            if "unreachable" in exc.msg:
                self.down["rest"] = why
            return why
        except BadData as exc:
            return str(exc)
        if not len(trades):
            moved = self._candle_range(report.symbol, minute)
            if moved is not None:
                low, high = moved
                return (
                    f"{where}: the venue answered no trade for a minute whose candle traded from {low} "
                    f"to {high}; not stored"
                )
        try:
            count = self.store.write_agg(report.symbol, minute, trades, source="rest", now_ms=now)
        except BadData as exc:
            return f"{where}: {exc}"
        report.fetched += 1
        report.rows += count
        self._emit("stored", report.symbol, AGG_TRADES, 0, 0, f"REST {iso(minute)[:16]}: {count} trades")
        return ""

    def _candle_range(self, symbol: str, minute: int) -> tuple[Decimal, Decimal] | None:
        """The cached klines candle's (low, high) when it moved (high != low); None for no candle (or an
        unreadable month: nothing to check against) or a flat one."""
        try:
            got = self.store.read(symbol, "klines", minute, minute + MINUTE_MS)
        except CorruptMonth:
            return None
        if not got["high"] or got["high"][0] == got["low"][0]:
            return None
        return exact(got["low"][0]), exact(got["high"][0])

    async def aexchange_info(self, *, max_age_ms: int = exchange_info.MAX_AGE_MS) -> ExchangeInfoStatus:
        """Keep ``<root>/exchangeInfo.json`` (D-62): read it again from REST when missing or older
        than ``max_age_ms``; when REST is down (``down["rest"]``, ``--offline``) or fails, keep the
        saved one and say its age. Raises nothing for network trouble or a bad answer."""
        self._lock()
        async with self._serial_lock():
            now = self._clock_ms()
            try:
                saved = exchange_info.load(self.root)
                unreadable = ""
            except exchange_info.BadExchangeInfo as exc:
                saved, unreadable = None, f" ({exc})"
            if saved is not None and saved.age_ms(now) < max_age_ms:
                age = exchange_info.age_text(saved.age_ms(now))
                line = f"exchangeInfo: kept, read {age} ago ({len(saved.entries)} USDT perpetuals)"
                return ExchangeInfoStatus(saved=saved, fetched=False, line=line, short=line)
            why = self.down.get("rest", "")
            if not why:
                sent_before = self._requests()
                try:
                    answer = await self._rest_history().exchange_info()
                    fresh = exchange_info.save(
                        self.root, answer, read_ms=now, source=_source_of(self._rest_arg)
                    )
                except (Banned, Unreachable) as exc:
                    why = str(exc)
                except BinanceError as exc:
                    why = f"REST exchangeInfo: {exc.msg}"
                except (BadData, exchange_info.BadExchangeInfo, OSError) as exc:
                    why = f"REST exchangeInfo: {exc}"
                else:
                    sent = self._requests() - sent_before
                    line = f"exchangeInfo: read ({len(fresh.entries)} USDT perpetuals, {sent} request(s))"
                    return ExchangeInfoStatus(saved=fresh, fetched=True, line=line, short=line)
                if "unreachable" in why or "banned" in why:
                    self.down["rest"] = why  # as a history request would: no more REST this run
            if saved is not None:
                age = exchange_info.age_text(saved.age_ms(now))
                short = f"exchangeInfo: keeping the one read {age} ago"
            else:
                short = (
                    f"exchangeInfo: none saved{unreadable}; backtests trade only the simulator's four "
                    "symbols until `shortfsm data --feed` can read it"
                )
            line = f"{short} (not read: {why})"
            return ExchangeInfoStatus(saved=saved, fetched=False, line=line, short=short, problem=True)

    def _lock(self) -> None:
        """Hold ``<root>/.lock`` (non-blocking flock) until ``aclose``/``close``: two writers on one
        cache would each rewrite month files from their own stale copy and lose the other's days."""
        if self._lock_file is not None:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        f = (self.root / ".lock").open("a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "?"
            f.close()
            raise CacheBusy(
                f"the cache {self.root} is in use by another shortfsm data (pid {holder})"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._lock_file = f

    def _unlock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()  # closing the file drops the flock
            self._lock_file = None

    def _serial_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._serial is None or self._serial[0] is not loop:
            self._serial = (loop, asyncio.Lock())
        return self._serial[1]

    async def _ensure(self, symbol: str, dataset: str, start_ms: int, end_ms: int) -> CoverageReport:
        now = self._clock_ms()
        stop = min(end_ms, now // MINUTE_MS * MINUTE_MS)
        report = CoverageReport(symbol=symbol, dataset=dataset, start_ms=start_ms, end_ms=max(stop, start_ms))
        if stop <= start_ms:
            return report
        sent_before = self._requests()
        report.problems += self.store.audit(symbol, dataset, months_between(start_ms, stop))
        states = self.store.days(symbol, dataset)
        days = list(range(start_ms // DAY_MS * DAY_MS, stop, DAY_MS))
        pending = [d for d in days if not _done(states.get(day_of(d)), d, stop)]
        done = len(days) - len(pending)
        self._emit("plan", symbol, dataset, done, len(days), f"{len(pending)} of {len(days)} days to fetch")
        rest_days: list[int] = []
        for month in months_between(pending[0], pending[-1] + DAY_MS) if pending else []:
            in_month = [d for d in pending if month_of(d) == month]
            month_start = in_month[0] - (int(day_of(in_month[0])[8:]) - 1) * DAY_MS
            month_end = _next_month(month_start)
            left = in_month
            if month_end <= now:
                left = await self._from_archive(report, month, month_start, month_end, in_month, now)
            for d in left:
                if dataset != FUNDING and d + DAY_MS <= now:
                    if not await self._from_archive(report, day_of(d), d, d + DAY_MS, [d], now):
                        continue
                rest_days.append(d)
            done += len(in_month)
            self._emit(
                "checked", symbol, dataset, done - len(rest_days), len(days), f"{month} archive checked"
            )
        if rest_days:
            await self._from_rest(report, rest_days, stop, now)
        self._emit("done", symbol, dataset, len(days), len(days), "done")
        self._scan(report, start_ms, stop)
        report.requests = self._requests() - sent_before
        return report

    # -- sources ---------------------------------------------------------------------------

    async def _from_archive(
        self, report: CoverageReport, period: str, lo: int, hi: int, wanted: list[int], now: int
    ) -> list[int]:
        """Days of ``wanted`` still missing after trying the archive file for ``period``."""
        symbol, dataset = report.symbol, report.dataset
        if "archive" in self.down:
            return wanted
        path = archive_path(dataset, symbol, period)
        try:
            payload = await self._downloader().fetch(path)
            parsed = parse_archive_file(dataset, payload, path)
        except NotInArchive:
            log.info("%s: not in the archive", path)
            return wanted
        except (ChecksumMismatch, BadData) as exc:
            report.problems.append(str(exc))  # the next source (daily zip, REST) is asked for these days
            return wanted
        except Unreachable as exc:
            self.down["archive"] = f"archive unreachable: {exc}"
            report.problems.append(self.down["archive"])
            return wanted
        parsed, outside = clip(parsed, lo, hi)
        if outside:
            report.problems.append(f"{path}: {outside} row(s) outside {iso(lo)} .. {iso(hi)} dropped")
        self.store.write(symbol, dataset, parsed)
        report.archive_files += 1
        self._emit(
            "stored", symbol, dataset, 0, 0, f"archive {path.rsplit('/', 1)[-1]}: {len(parsed.times)} rows"
        )
        counts = _per_day(parsed.times)
        one_day = hi - lo == DAY_MS  # a daily file speaks for its day even when empty
        # A monthly file without a day's rows says nothing about that day: the daily zip is asked.
        finished = [d for d in range(lo, hi, DAY_MS) if d + DAY_MS <= now and (one_day or counts.get(d))]
        if dataset == FUNDING:  # settlements are hours apart: the month's file speaks for every day
            finished = [d for d in range(lo, hi, DAY_MS) if d + DAY_MS <= now]
        self.store.mark(
            symbol,
            dataset,
            [_state(d, "complete", "archive", counts.get(d, 0), d + DAY_MS) for d in finished],
        )
        done = set(finished)
        return [d for d in wanted if d not in done]

    async def _from_rest(self, report: CoverageReport, days: list[int], stop: int, now: int) -> None:
        symbol, dataset = report.symbol, report.dataset
        for run_start, run_end in _runs(days):
            hi = min(run_end, stop)
            run = [d for d in days if run_start <= d < run_end]
            if "rest" in self.down:
                note = self.down["rest"]
                self.store.mark(symbol, dataset, [_state(d, "failed", "rest", 0, 0, note) for d in run])
                continue
            rest = self._rest_history()
            try:
                if dataset == FUNDING:
                    parsed = await rest.funding(symbol, run_start, hi)
                else:
                    parsed = await rest.klines(dataset, symbol, run_start, hi)
            except Interrupted as exc:
                got = exc.partial
                covered = [d for d in run if d + DAY_MS <= exc.covered_until_ms]
                self._store_rest(report, got, run_start, exc.covered_until_ms)
                counts = _per_day(got.times)
                self.store.mark(
                    symbol,
                    dataset,
                    [_state(d, "complete", "rest", counts.get(d, 0), d + DAY_MS) for d in covered],
                )
                run = [d for d in run if d not in set(covered)]
                cause = exc.cause
                why = str(cause) if isinstance(cause, Banned) else f"REST {cause}"
                if isinstance(cause, Banned) or "unreachable" in why:
                    self._rest_down(report, why, symbol, dataset, run)
                else:
                    note = f"REST {dataset} {symbol} {day_of(run_start)}..{day_of(run_end - DAY_MS)}: {why}"
                    report.problems.append(note)
                    self.store.mark(symbol, dataset, [_state(d, "failed", "rest", 0, 0, note) for d in run])
                continue
            except (Banned, Unreachable) as exc:
                self._rest_down(report, str(exc), symbol, dataset, run)
                continue
            except BinanceError as exc:
                if "unreachable" in exc.msg:
                    self._rest_down(report, f"REST {exc.msg}", symbol, dataset, run)
                    continue
                note = f"REST {dataset} {symbol} {day_of(run_start)}..{day_of(run_end - DAY_MS)}: {exc.msg}"
                report.problems.append(note)
                self.store.mark(symbol, dataset, [_state(d, "failed", "rest", 0, 0, note) for d in run])
                continue
            except BadData as exc:
                report.problems.append(str(exc))
                self.store.mark(symbol, dataset, [_state(d, "failed", "rest", 0, 0, str(exc)) for d in run])
                continue
            self._store_rest(report, parsed, run_start, hi)
            counts = _per_day(parsed.times)
            states = []
            for d in run:
                if d + DAY_MS <= now:
                    states.append(_state(d, "complete", "rest", counts.get(d, 0), d + DAY_MS))
                else:
                    states.append(_state(d, "partial", "rest", counts.get(d, 0), hi))
            self.store.mark(symbol, dataset, states)

    def _store_rest(self, report: CoverageReport, parsed: Parsed, lo: int, hi: int) -> None:
        self.store.write(report.symbol, report.dataset, parsed)
        report.rest_rows += len(parsed.times)
        message = f"REST {iso(lo)[:16]}..{iso(hi)[:16]}: {len(parsed.times)} rows"
        self._emit("stored", report.symbol, report.dataset, 0, 0, message)

    def _rest_down(self, report: CoverageReport, why: str, symbol: str, dataset: str, run: list[int]) -> None:
        self.down["rest"] = why
        report.problems.append(why)
        self.store.mark(symbol, dataset, [_state(d, "failed", "rest", 0, 0, why) for d in run])

    # -- gaps ------------------------------------------------------------------------------

    def _scan(self, report: CoverageReport, start_ms: int, stop: int) -> None:
        symbol, dataset = report.symbol, report.dataset
        cols = self.store.read(symbol, dataset, start_ms, stop)
        states = self.store.days(symbol, dataset)
        if dataset == FUNDING:
            times = cols["funding_time"]
            report.rows = len(times)
            report.gaps = funding_gaps(times, start_ms, stop, states)
        else:
            times = cols["open_time"]
            report.rows = len(times)
            report.gaps = minute_gaps(times, start_ms, stop, states)
        self.store.replace_gaps(
            symbol, dataset, start_ms, stop, [(g.start_ms, g.end_ms, g.reason) for g in report.gaps]
        )

    # -- plumbing --------------------------------------------------------------------------

    def _downloader(self) -> Downloader:
        if self._archive is None:
            self._archive_client = httpx.AsyncClient(
                base_url=self.archive_url, timeout=self.timeout_s, follow_redirects=True
            )
            self._archive = Downloader(self._archive_client, self.root / ".downloads")
        return self._archive

    def _rest_history(self) -> RestHistory:
        if self._rest is None:
            rest = self._rest_arg
            if isinstance(rest, str):
                rest = self._own_rest = HistoryRest(
                    api_key="",
                    api_secret="",
                    base_url=rest,
                    clock_ms=wall_clock_ms,  # pacing and back-offs run in real time, not candle time
                    timeout_s=self.timeout_s,
                )
            self._rest = RestHistory(rest)
        return self._rest

    def _requests(self) -> int:
        return (self._archive.requests if self._archive else 0) + (self._rest.requests if self._rest else 0)

    def _emit(
        self, kind: ProgressKind, symbol: str, dataset: str, done: int, total: int, message: str
    ) -> None:
        if self.progress is not None:
            self.progress(ProgressEvent(kind, symbol, dataset, done, total, message))


# ---------------------------------------------------------------------------------------------
# pure helpers
# ---------------------------------------------------------------------------------------------


def _source_of(rest: str | HistoryRest) -> str:
    return rest if isinstance(rest, str) else str(getattr(rest, "base_url", ""))


def _check_dataset(dataset: str) -> None:
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; one of {', '.join(DATASETS)}")


def _done(state: DayState | None, day: int, stop: int) -> bool:
    if state is None:
        return False
    if state.status == "complete":
        return True
    return state.status == "partial" and state.covered_until_ms >= min(day + DAY_MS, stop)


def _state(day: int, status: str, source: str, rows: int, covered: int, note: str = "") -> DayState:
    return DayState(day_of(day), status, source, rows, covered, note)


def _per_day(times: Iterable[int]) -> dict[int, int]:
    out: dict[int, int] = {}
    for t in times:
        d = t // DAY_MS * DAY_MS
        out[d] = out.get(d, 0) + 1
    return out


def _runs(days: list[int]) -> list[tuple[int, int]]:
    """Contiguous ``[start, end)`` runs of whole days."""
    runs: list[tuple[int, int]] = []
    for d in sorted(days):
        if runs and runs[-1][1] == d:
            runs[-1] = (runs[-1][0], d + DAY_MS)
        else:
            runs.append((d, d + DAY_MS))
    return runs


def _next_month(month_start: int) -> int:
    dt = datetime.fromtimestamp(month_start / 1000, UTC)
    nxt = dt.replace(year=dt.year + 1, month=1) if dt.month == 12 else dt.replace(month=dt.month + 1)
    return int(nxt.timestamp() * 1000)


def _why(states: dict[str, DayState], t: int) -> str:
    state = states.get(day_of(t))
    if state is None:
        return "not fetched"
    if state.status == "failed":
        return state.note or "fetch failed"
    if state.rows == 0:
        return f"no data at the source ({state.source})"
    return f"missing minutes in the {state.source} data"


def minute_gaps(times: list[int], start_ms: int, stop: int, states: dict[str, DayState]) -> list[Gap]:
    """Runs of missing 1m open times in ``[start_ms, stop)`` (``times`` sorted), split where the
    reason changes (a day that failed, a day the source had nothing for, minutes missing inside)."""
    first = -(-start_ms // MINUTE_MS) * MINUTE_MS
    gaps: list[Gap] = []
    expected = first
    for t in [*times, stop]:
        if t > expected:
            _add_gap(gaps, expected, min(t, stop), states)
        expected = max(expected, t + MINUTE_MS)
    return gaps


def _add_gap(gaps: list[Gap], lo: int, hi: int, states: dict[str, DayState]) -> None:
    t = lo
    while t < hi:
        day_end = min(hi, (t // DAY_MS + 1) * DAY_MS)
        reason = _why(states, t)
        if gaps and gaps[-1].end_ms == t and gaps[-1].reason == reason:
            gaps[-1] = Gap(start_ms=gaps[-1].start_ms, end_ms=day_end, reason=reason)
        else:
            gaps.append(Gap(start_ms=t, end_ms=day_end, reason=reason))
        t = day_end


def funding_gaps(times: list[int], start_ms: int, stop: int, states: dict[str, DayState]) -> list[Gap]:
    """Stretches longer than ``FUNDING_MAX_SPACING_MS`` without a settlement, and failed days."""
    gaps: list[Gap] = []
    failed = sorted(
        day for day, s in states.items() if s.status == "failed" and start_ms <= _day_ms(day) + DAY_MS
    )
    for day in failed:
        d = _day_ms(day)
        if d < stop:
            gaps.append(Gap(start_ms=max(d, start_ms), end_ms=min(d + DAY_MS, stop), reason=states[day].note))
    edges = [start_ms, *times, stop]
    for a, b in itertools.pairwise(edges):
        if b - a > FUNDING_MAX_SPACING_MS and not any(g.start_ms <= a and b <= g.end_ms for g in gaps):
            gaps.append(Gap(start_ms=a, end_ms=b, reason=f"no funding settlement for {_span(b - a)}"))
    return sorted(gaps, key=lambda g: g.start_ms)


def _day_ms(day: str) -> int:
    return int(datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC).timestamp() * 1000)


def parse_day(text: str) -> int:
    """``YYYY-MM-DD`` (UTC) as epoch ms; ValueError when it is not a date."""
    return _day_ms(datetime.strptime(text, "%Y-%m-%d").strftime("%Y-%m-%d"))


__all__ = [
    "DATASETS",
    "CacheBusy",
    "CoverageReport",
    "Gap",
    "MarketCache",
    "Parsed",
    "ProgressEvent",
    "parse_day",
]
