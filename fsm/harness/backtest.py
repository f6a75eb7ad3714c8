"""``shortfsm backtest``: a message feed and cached market data through the real engine and venue.

Theory of operation
-------------------
The run is ``fsm.harness.simreplay`` pointed at history: the engine's venue commands go through the
real ``binance.executor.Executor`` and ``binance.rest.BinanceRest`` over ``InProcessTransport`` into a
``binance.sim`` exchange, on one ``SimClock``; what the exchange pushes on the user stream is decoded
by ``binance.parse`` and fed back to the engine after the command's own answer. Every engine input is
written to a SQLite database with the same ``fsm.runtime.store.Store`` calls the daemon makes
(messages, outcomes, commands, journal), so ``shortfsm trades`` / ``report`` / ``replay --journal``
read it unchanged. Unlike the daemon, the run writes on its own thread (it is the file's only user),
checkpoints the journal once a simulated day rather than hourly and saves one engine snapshot, at
the end, rather than one per transition (only a daemon's restart reads those).

Clock. Nothing happens per quiet second. While no symbol is watched (every engine symbol IDLE, no
venue position) the clock jumps straight to the next feed message or the engine's next deadline.
While a symbol is watched the run walks its minutes: each 1m candle becomes a path of four vertices
at fixed offsets (open at :00, first extreme at :20, second extreme at :40, close at :59), linear in
between; a walk that starts inside a minute (the signal's own) starts at the path's point of that
moment. In the default (compressed) mode the path is cut only at its vertices and where it crosses
a level that can decide something: the engine's own thresholds (entry trigger, take-profit
placement, second-entry placement, all on the mark) and the venue's resting orders (LIMIT prices on
the traded price, stop triggers on their working price). The level is applied exactly, at the next
whole second after the line reaches it (the live stream pushes a mark a second), and every symbol's
point of one instant is applied before one evaluation ``Tick`` (W18 sees them together). Before a
message or a deadline inside a watched minute, every watched symbol is moved to its path's point of
that moment. ``dense=True`` instead applies a point every second along the same lines.

Prices. The mark path comes from the cached 1m ``markPriceKlines`` (``klines`` when a minute has no
mark candle, counted in ``notes``); the traded (last) path from the 1m ``klines`` (the mark when a
minute has none). A candle that cannot be a price (zero, high below low or outside open/close, a
x10 jump) is dropped and reported as a missing minute. Each point is
``SimExchange.set_mark(symbol, mark, last=last)``: LIMIT orders fill when the traded price reaches
them, STOP_MARKET with ``workingType=MARK_PRICE`` triggers on the mark, exactly as the sim models
Binance. The engine sees the point as a WS ``MarkPriceTick`` followed by the venue's pushes and one
``Tick`` (its 1-second evaluation). Before any input at a later time the watched symbols' marks are
re-announced at their current value (the live stream pushes every second); with nothing watched, the
heartbeat symbol's mark is. The engine's price-staleness deadlines are therefore never decision
points here.

Path rule, chosen per symbol at the minute's start. Holding a short: ``pessimistic`` is open, high,
low, close (the adverse extreme first), ``optimistic`` open, low, high, close. Flat (monitoring, an
entry waiting): ``pessimistic`` is open, low, high, close (the entry comes as late as the minute
allows and earns nothing inside it), ``optimistic`` the other. A trade is *ambiguous* when one of its
legs fills inside a minute whose range (mark or traded, as the level reads) holds a level of another
of its legs (entry trigger/limit, take-profit placement/limit, scale-in, breakeven, stops), or when
it fills at market inside a minute whose high is not its low. The two paths do not bound every
trade (a market exit at a given second can come out better on the pessimistic path);
``--path both`` warns when the pessimistic net comes out above the optimistic one. Each such
(symbol, minute, signal) is written to the database's ``ambiguous_minutes`` table, which
``shortfsm data --ambiguous DB`` reads to fetch those minutes' aggTrades.

aggTrades (D-74). When the cache holds a minute's aggregate trades (``MarketCache.agg_trades``), the
order of high and low is the order in which the traded price first reached the 1m ``klines`` high
and low in them, for both paths and for the mark as well as the traded price: the path rule does
not decide that minute, so the pessimistic and optimistic runs take the same path through it, and a
trade it would have made ambiguous counts as resolved (``ambiguous_resolved``), not ambiguous. A
trade stays ambiguous while any of its minutes is still decided by the path rule. Trades whose
extremes are not the candle's (or a minute with no klines candle to check them against, or an
aggTrades month file that cannot be read) are listed as a data problem and the minute keeps the
path rule.

Feed. A line whose ``edit_date_ms`` is after its date is skipped (the feed holds the edited text; the
daemon acted on the original, N-27). A leading signal whose last closed 3m candle has a missing
minute is skipped (its target is unknown); missing minutes in the other 3m candles are reported. A
message for a held symbol inside a data hole is acted on with the last known price and flagged.

Fills and fees. A resting LIMIT fills at its price as a maker, a crossing one at the traded price as
a taker (the sim's book: one level at the last price). MARKET orders and triggered stops fill at the
traded price moved by ``slippage_bps`` against us (BUY up, SELL down, to the tick). Fees are the
sim's commissionRate (maker 0.02 %, taker 0.05 %) unless overridden. Funding is settled from the
cached rates while a position is held and written as the daemon writes FUNDING_FEE pushes (the
``funding`` table), so each trade's net includes it.

Results. ``net`` counts closed trades only; a position open at the end is marked at the last mark
(``unrealized``, and ``marked_net`` with every trade). The run writes a temporary database beside
``--out`` under an exclusive lock (``<out>.lock``), reads its trades back from it and renames it onto
``--out`` at the end: two runs on one ``--out`` never report each other's trades.

No look-ahead: a decision at time t depends only on inputs before or at t; the run with
``until_ms=T`` handles exactly the inputs of the full run that come before T.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import math
import os
import secrets
import sqlite3
import time
from array import array
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import orjson

from binance import parse
from binance.executor import Executor
from binance.history import MarketCache, exact, exchange_info
from binance.history.store import CorruptMonth
from binance.rest import BinanceRest
from binance.sim.clock import SimClock
from binance.sim.exchange import (
    MAKER_FEE,
    TAKER_FEE,
    SimExchange,
    SimOrder,
    SimSymbol,
    default_symbols,
)
from binance.sim.inproc import InProcessTransport
from binance.sim.server import SimVenue
from fsm import commands as cmd
from fsm import events as ev
from fsm import rules
from fsm.engine import Engine
from fsm.journal import encode_event, render, render_all
from fsm.runtime import ledger
from fsm.runtime.store import JOURNAL_INSERT, Store, problem_kind
from fsm.strategy import Strategy
from telegram_ingest.grammar import parse_message
from telegram_ingest.replay import FeedItem, parse_item

if TYPE_CHECKING:
    from sqlite_utils import Database

log = logging.getLogger(__name__)
T = TypeVar("T")
Json = dict[str, Any]
PathRule = Literal["pessimistic", "optimistic"]
MINUTE_MS = 60_000
KLINE_MS = 180_000  # the engine's targets read 3m candles (N-08)
KLINE_COUNT = 200  # the daemon reads the last 200 closed 3m candles at receipt
HISTORY_MS = (KLINE_COUNT + 1) * KLINE_MS
VERTEX_OFFSETS_MS = (0, 20_000, 40_000, 59_000)  # open, first extreme, second extreme, close
# A journal checkpoint a simulated day (the daemon writes one an hour): ``replay --journal`` starts
# from the run's first and compares the engine's state at each later one; each costs an engine
# snapshot, which over a long run is most of the bookkeeping's time.
CHECKPOINT_EVERY_MS = 86_400_000
JOURNAL_BATCH = 512  # journal rows inserted at once by the backtest's store
OUTCOME_EVENTS = (  # as fsm.runtime.daemon.OUTCOME_EVENTS: the events whose outcome the store books
    ev.OrderAccepted,
    ev.AlgoOrderAccepted,
    ev.OrderRejected,
    ev.CancelResult,
    ev.OrderUpdated,
    ev.AlgoOrderUpdated,
)
BACKTEST_MARKER = "meta.backtest"  # status row naming the run: only such a database is ever replaced
PLACES = Decimal("0.00000001")  # interpolated prices: 8 decimals, as Binance writes marks
BPS = Decimal("10000")
SPIKE_FACTOR = 10  # a minute more than 10x (or under 1/10 of) the previous close is not a price


class BacktestError(Exception):
    """The run cannot start; ``exit_code`` 2 (bad argument or setting) or 3 (feed or cache missing)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True, slots=True, kw_only=True)
class Fees:
    maker: Decimal = MAKER_FEE
    taker: Decimal = TAKER_FEE


@dataclass(kw_only=True)
class BacktestResult:
    """What one run did (the trades are the database's ledger, read back as ``shortfsm trades`` does)."""

    path: str
    dense: bool
    db_path: Path
    trades: list[ledger.Trade] = field(default_factory=list)
    ambiguous_trades: int = 0
    ambiguous_minutes: int = 0
    events: int = 0
    wall_s: float = 0.0
    messages: int = 0
    bad_lines: list[str] = field(default_factory=list)
    flagged: list[str] = field(default_factory=list)  # acted on, but on prices that are not history
    skipped: list[str] = field(default_factory=list)
    missing: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # symbol -> minute ranges
    notes: list[str] = field(default_factory=list)
    decisions: list[tuple[int, str]] = field(default_factory=list)  # (now_ms, rendered command)
    open_at_end: list[str] = field(default_factory=list)
    ambiguous_keys: set[tuple[str, int]] = field(default_factory=set)  # (symbol, signal message id)
    ambiguous_resolved: int = 0  # minutes that would be ambiguous, whose order the aggTrades decided
    agg_problems: list[str] = field(default_factory=list)  # cached aggTrades not used (why)
    funding: Decimal = Decimal(0)  # received (+) / paid (-) at the settlements held (in the trades' net)
    unrealized: dict[str, Decimal] = field(default_factory=dict)  # symbol -> open position at the last mark
    last_mark_ms: int = 0  # when the run stopped (the marks the unrealised figures use)

    @property
    def events_per_s(self) -> float:
        return self.events / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def data_problems(self) -> bool:
        return bool(self.bad_lines or self.missing or self.skipped or self.flagged or self.agg_problems)

    @property
    def net(self) -> Decimal:
        """Closed trades only (realised PnL - fees + funding); open positions are in ``marked_net``."""
        return sum((t.net for t in self.trades if t.closed_ms is not None), Decimal(0))

    @property
    def unrealized_total(self) -> Decimal:
        return sum(self.unrealized.values(), Decimal(0))

    @property
    def marked_net(self) -> Decimal:
        """Every trade's net so far plus the open positions' unrealised PnL at the last mark."""
        return sum((t.net for t in self.trades), Decimal(0)) + self.unrealized_total

    def trade_json(self, t: ledger.Trade) -> Json:
        row = t.as_dict()
        if t.closed_ms is None:
            row["unrealized"] = ledger.money(self.unrealized.get(t.symbol, Decimal(0)))
        return row

    def as_json(self) -> Json:
        return {
            "path": self.path,
            "dense": self.dense,
            "db": str(self.db_path),
            "trades": [self.trade_json(t) for t in self.trades],
            "closed_trades": sum(t.closed_ms is not None for t in self.trades),
            "net": ledger.money(self.net),  # closed trades only
            "unrealized": ledger.money(self.unrealized_total),  # open positions at the last mark
            "marked_net": ledger.money(self.marked_net),
            "last_mark": ledger.iso_utc(self.last_mark_ms),
            "funding": ledger.money(self.funding),
            "ambiguous_trades": self.ambiguous_trades,
            "ambiguous_minutes": self.ambiguous_minutes,
            "ambiguous_resolved_by_aggtrades": self.ambiguous_resolved,
            "aggtrades_problems": self.agg_problems,
            "events": self.events,
            "wall_s": round(self.wall_s, 3),
            "events_per_s": round(self.events_per_s, 1),
            "messages": self.messages,
            "bad_feed_lines": self.bad_lines,
            "skipped_signals": self.skipped,
            "flagged": self.flagged,
            "missing_data": {
                s: [{"from": ledger.iso_utc(a), "to": ledger.iso_utc(b), "minutes": (b - a) // MINUTE_MS}
                    for a, b in ranges]
                for s, ranges in self.missing.items()
            },
            "notes": self.notes,
            "open_at_end": self.open_at_end,
        }  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FeedMessage:
    at_ms: int  # absolute receipt time on the run's clock
    item: FeedItem


def load_feed(path: Path, since_ms: int) -> tuple[list[FeedMessage], list[str]]:
    """The feed's messages on the run's clock (``date_ms``, else ``since + at_ms``) and one line per
    line that does not parse. Raises ``BacktestError`` (exit 3) when the file cannot be read."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise BacktestError(f"feed {path} cannot be read: {exc.strerror or exc}", 3) from None
    messages: list[FeedMessage] = []
    bad: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            item = parse_item(json.loads(stripped))
        except (json.JSONDecodeError, ValueError) as exc:
            bad.append(f"{path}:{number}: skipped, does not parse: {exc}")
            continue
        at = item.date_ms if item.date_ms is not None else since_ms + item.at_ms
        messages.append(FeedMessage(at, item))
    messages.sort(key=lambda m: m.at_ms)  # stable: equal times keep the file's order
    return messages, bad


Bar = tuple[Decimal, Decimal, Decimal, Decimal]  # open, high, low, close
RawBar = tuple[Any, Any, Any, Any]  # open, high, low, close as the cache stores them (float64)


def _json_key(value: Any) -> bytes | None:
    """``value`` (parsed JSON) as compact JSON bytes, or None when orjson cannot write it."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        return None


def _array_of(typecode: str, values: Any) -> array[Any]:
    """A pyarrow array of fixed-width values without nulls as a Python ``array`` (its buffer copied)."""
    out = array(typecode)
    width = out.itemsize
    data = values.buffers()[1]
    out.frombytes(memoryview(data)[values.offset * width : (values.offset + len(values)) * width])
    return out


class Bars:
    """One dataset's cached 1m candles by minute, kept as the cache's float64 values in flat
    arrays (minutes; opens, highs, lows, closes): a year of hundreds of symbols held as dicts of
    tuples of floats took gigabytes. A bar becomes Decimals (``exact``: the decimal Binance sent)
    only when one of its prices is used, once. Order and equality survive the float form
    (``exact`` is monotonic), so comparisons may read ``raw_at``. A bar whose values are not all
    floats (never from the cache's float64 columns) is kept as it came, beside the arrays."""

    __slots__ = ("_exact", "_minutes", "_odd", "_prices")

    def __init__(self, raw: dict[int, RawBar]) -> None:
        minutes = sorted(raw)
        self._minutes = array("q", minutes)
        self._odd: dict[int, RawBar] = {}
        self._exact: dict[int, Bar] = {}
        bars = [raw[m] for m in minutes]
        if all(type(v) is float for bar in bars for v in bar):
            o, h, lo, c = (array("d", (bar[k] for bar in bars)) for k in range(4))
            self._prices = (o, h, lo, c)
            return
        self._prices = (array("d"), array("d"), array("d"), array("d"))
        nan = (math.nan, math.nan, math.nan, math.nan)
        for minute in minutes:
            bar = raw[minute]
            if not all(type(v) is float for v in bar):
                self._odd[minute] = bar
                bar = nan
            for column, value in zip(self._prices, bar, strict=True):
                column.append(value)

    @classmethod
    def of_arrow(cls, minutes: Any, o: Any, h: Any, lo: Any, c: Any) -> Bars:
        """Bars of sorted int64 minutes and float64 prices as pyarrow arrays without nulls
        (``_all_good``'s answer): their buffers are copied as they are, no value passes Python."""
        bars = cls({})
        bars._minutes = _array_of("q", minutes)
        bars._prices = (_array_of("d", o), _array_of("d", h), _array_of("d", lo), _array_of("d", c))
        return bars

    def raw_at(self, minute: int) -> RawBar | None:
        """The bar of ``minute`` as stored, or None."""
        minutes = self._minutes
        i = bisect_left(minutes, minute)
        if i == len(minutes) or minutes[i] != minute:
            return None
        if self._odd and minute in self._odd:
            return self._odd[minute]
        o, h, lo, c = self._prices
        return o[i], h[i], lo[i], c[i]

    def span(self, start: int, end: int) -> dict[int, RawBar]:
        """The bars of ``start <= minute < end`` as stored, by minute."""
        minutes, odd = self._minutes, self._odd
        o, h, lo_, c = self._prices
        lo, hi = bisect_left(minutes, start), bisect_left(minutes, end)
        out = {minutes[i]: (o[i], h[i], lo_[i], c[i]) for i in range(lo, hi)}
        if odd:
            out.update((m, bar) for m, bar in odd.items() if start <= m < end)
        return out

    def get(self, minute: int) -> Bar | None:
        bar = self._exact.get(minute)
        if bar is None:
            r = self.raw_at(minute)
            if r is None:
                return None
            bar = self._exact[minute] = (exact(r[0]), exact(r[1]), exact(r[2]), exact(r[3]))
        return bar

    def first(self) -> int | None:
        return self._minutes[0] if self._minutes else None

    def last(self) -> int | None:
        return self._minutes[-1] if self._minutes else None

    def __contains__(self, minute: object) -> bool:
        return isinstance(minute, int) and self.raw_at(minute) is not None

    def __iter__(self) -> Iterator[int]:
        return iter(self._minutes)

    def __len__(self) -> int:
        return len(self._minutes)


@dataclass(slots=True)
class MinuteData:
    """One symbol's cached 1m candles for the run: marks and traded prices, by minute."""

    marks: Bars
    lasts: Bars

    def bars(self, minute: int) -> tuple[Bar, Bar, str] | None:
        """(mark bar, traded bar, note) of a minute; None when neither dataset has it."""
        mark, last = self.marks.get(minute), self.lasts.get(minute)
        if mark is None and last is None:
            return None
        if mark is None:
            assert last is not None
            return last, last, "klines for the mark"
        if last is None:
            return mark, mark, "mark for the traded price"
        return mark, last, ""

    def close_before(self, t_ms: int) -> Decimal | None:
        """The last mark known at ``t_ms``: the close of the last minute closed by then."""
        minute = t_ms // MINUTE_MS * MINUTE_MS - MINUTE_MS
        for source in (self.marks, self.lasts):
            bar = source.get(minute)
            if bar is not None:
                return bar[3]
        return None

    def candles_3m(self, received_ms: int) -> tuple[tuple[ev.Candle, ...], list[int]]:
        """The last 200 3m candles closed before ``received_ms``, built from the 1m traded prices,
        and the missing minutes of the slots left out (a slot with a missing minute is incomplete;
        a slot wholly before the cached data begins is not counted as missing)."""
        end = received_ms // KLINE_MS * KLINE_MS  # slots opening before this have closed
        first = self.first_last if len(self.lasts) else end
        raw_at = self.lasts.span(end - KLINE_COUNT * KLINE_MS, end).get
        out: list[ev.Candle] = []
        missing: list[int] = []
        candle = ev.Candle
        for start in range(end - KLINE_COUNT * KLINE_MS, end, KLINE_MS):
            a, b, c = raw_at(start), raw_at(start + MINUTE_MS), raw_at(start + 2 * MINUTE_MS)
            if a is None or b is None or c is None:
                if start + KLINE_MS > first:
                    missing.extend(start + i * MINUTE_MS for i, p in enumerate((a, b, c)) if p is None)
                continue
            # The extremes are picked on the stored floats (same order as their decimals).
            out.append(
                candle(
                    open_time_ms=start,
                    close_time_ms=start + KLINE_MS - 1,
                    open=exact(a[0]),
                    high=exact(max(a[1], b[1], c[1])),
                    low=exact(min(a[2], b[2], c[2])),
                    close=exact(c[3]),
                )
            )
        return tuple(out), missing

    last_minute: int = -1  # the last minute either dataset holds (set by ``load``)
    first_last: int = -1  # the first minute of ``lasts`` (set by ``load``)

    @classmethod
    def load(cls, marks: Bars, lasts: Bars) -> MinuteData:
        ends = [m for m in (marks.last(), lasts.last()) if m is not None]
        first = lasts.first()
        return cls(marks, lasts, max(ends, default=-1), -1 if first is None else first)


def _bars(columns: dict[str, list[Any]]) -> dict[int, RawBar]:
    prices = zip(columns["open"], columns["high"], columns["low"], columns["close"], strict=True)
    return dict(zip(map(int, columns["open_time"]), prices, strict=True))


def _all_good(columns: dict[str, list[Any]]) -> Bars | None:
    """The columns as ``Bars`` when every candle is plainly a price: integer minutes strictly
    increasing, all prices finite floats, low > 0, open and close within [low, high], and each candle far
    from a x10 jump of the previous close (the float prefilter of ``_checked``, no product close
    to call). Checked column-wise by pyarrow; None sends the columns to ``_checked``, which reads
    them one by one (the only path that can drop a candle, so the two agree wherever this one
    answers: with no candle dropped, the previous good close is the previous row's)."""
    import pyarrow as pa

    times = columns["open_time"]
    o, h, lo, c = (columns[n] for n in ("open", "high", "low", "close"))
    if not times:
        return Bars({})
    if not set(map(type, times)) <= {int} or not set(map(type, chain(o, h, lo, c))) <= {float}:
        return None
    prices = (pa.array(x, pa.float64()) for x in (o, h, lo, c))
    return _good_arrays(pa.array(times, pa.int64()), *prices)


def _all_good_table(table: Any) -> Bars | None:
    """``_all_good`` of a cache table read as it is stored (``MarketCache.read_table``): its
    int64 minutes and float64 prices, without nulls, go to the same column checks without
    passing through Python lists; any other column type declines."""
    import pyarrow as pa

    names = ("open_time", "open", "high", "low", "close")
    if table.num_rows == 0:
        return Bars({})
    cols = [table.column(n).combine_chunks() for n in names]
    wanted = [pa.int64()] + [pa.float64()] * 4
    if any(col.type != t or col.null_count for col, t in zip(cols, wanted, strict=True)):
        return None
    return _good_arrays(*cols)


def _good_arrays(t: Any, ao: Any, ah: Any, al: Any, ac: Any) -> Bars | None:
    """The column checks of ``_all_good`` on pyarrow arrays (int64 minutes, float64 prices)."""
    import pyarrow.compute as pc

    if len(t) > 1 and not pc.all(pc.greater(t[1:], t[:-1])).as_py():
        return None
    # Finite value by value (no sum: a sum of huge values overflows in an order of its own).
    if not all(pc.all(pc.is_finite(a)).as_py() for a in (ao, ah, al, ac)):
        return None
    good = pc.and_(pc.greater(al, 0.0), pc.and_(pc.less_equal(al, ao), pc.less_equal(ao, ah)))
    good = pc.and_(good, pc.and_(pc.less_equal(al, ac), pc.less_equal(ac, ah)))
    if not pc.all(good).as_py():
        return None
    if len(t) > 1:
        prev = ac[:-1]  # the previous close of rows 1..n-1
        far_up = pc.less(pc.multiply(ah[1:], 2.0), pc.multiply(prev, float(SPIKE_FACTOR)))
        far_down = pc.greater(pc.multiply(al[1:], float(SPIKE_FACTOR)), pc.multiply(prev, 2.0))
        if not pc.all(pc.and_(far_up, far_down)).as_py():
            return None
    return Bars.of_arrow(t, ao, ah, al, ac)


def _plain_floats(raw: dict[int, RawBar]) -> bool:
    """Whether every stored price is a finite float (the sum of finite floats is finite unless it
    overflows, which only sends the check to the decimals)."""
    values = list(chain.from_iterable(raw.values()))
    if not set(map(type, values)) <= {float}:
        return False
    try:
        return math.isfinite(math.fsum(values))
    except OverflowError:  # huge values of both signs: the decimals decide
        return False


def _finite_number(value: Any) -> bool:
    """A stored price that can be one: an int or float, finite (not a bool, None or text)."""
    return type(value) in (int, float) and math.isfinite(value)


def _spike(high: float, low: float, previous: float) -> bool:
    """Whether a candle jumps more than SPIKE_FACTOR from the previous close, as the decimals say:
    read on the floats unless a rounded float product is within a billionth of the other side."""
    up, down = previous * SPIKE_FACTOR, low * SPIKE_FACTOR
    if abs(high - up) <= 1e-9 * abs(up) or abs(down - previous) <= 1e-9 * abs(previous):
        p = exact(previous)
        return exact(high) > p * SPIKE_FACTOR or exact(low) * SPIKE_FACTOR < p
    return high > up or down < previous


# ---------------------------------------------------------------------------------------------
# The venue
# ---------------------------------------------------------------------------------------------


class BacktestExchange(SimExchange):
    """``SimExchange`` with this run's fees and its slippage on taker MARKET fills (market orders and
    triggered stops' children)."""

    def __init__(self, *, fees: Fees, slippage_bps: Decimal, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fees = fees
        self.maker_fee, self.taker_fee = fees.maker, fees.taker
        self.slippage = slippage_bps / BPS
        self._entries: dict[str, tuple[tuple[Any, ...], Json]] = {}
        self.held: set[str] = set()  # symbols with a position (either side), kept as fills land

    def _apply_position(self, symbol: str, pside: str, side: str, qty: Decimal, price: Decimal) -> Decimal:
        realised = super()._apply_position(symbol, pside, side, qty, price)
        sides = (self.positions.get((symbol, ps)) for ps in ("BOTH", "LONG", "SHORT"))
        if any(p is not None and p.amount for p in sides):
            self.held.add(symbol)
        else:
            self.held.discard(symbol)
        return realised

    def exchange_info(self, params: dict[str, str]) -> Json:
        """The sim's answer, each symbol's entry built once while its fields stay the same: the
        client reads exchangeInfo at each signal, and with hundreds of symbols formatting their
        filters again each time was a tenth of a long run. The answer is equal to the sim's."""
        symbols, self.symbols = self.symbols, {}
        try:
            answer = super().exchange_info(params)  # the header, with no symbols
        finally:
            self.symbols = symbols
        entries: list[Json] = []
        for name, sym in symbols.items():
            key = tuple(getattr(sym, f) for f in SimSymbol.__slots__)
            cached = self._entries.get(name)
            if cached is None or cached[0] != key:
                cached = self._entries[name] = (key, sym.entry())
            entries.append(cached[1])
        answer["symbols"] = entries
        return answer

    def fill_price(self, o: SimOrder, price: Decimal, *, maker: bool) -> Decimal:
        if maker or o.type != "MARKET" or not self.slippage:
            return price
        tick = self.symbols[o.symbol].tick
        if o.side == "BUY":
            moved = price * (1 + self.slippage)
            return (moved / tick).to_integral_value(rounding=ROUND_CEILING) * tick
        moved = price * (1 - self.slippage)
        return (moved / tick).to_integral_value(rounding=ROUND_FLOOR) * tick


# ---------------------------------------------------------------------------------------------
# Price paths
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Point:
    """A mark and a traded price at one time of the path."""

    at_ms: int
    mark: Decimal
    last: Decimal


def vertices(minute: int, mark: Bar, last: Bar, rule: PathRule) -> list[Point]:
    """The minute's four vertices under ``rule`` (see the module docstring)."""

    def order(bar: Bar) -> tuple[Decimal, Decimal, Decimal, Decimal]:
        o, h, lo, c = bar
        return (o, h, lo, c) if rule == "pessimistic" else (o, lo, h, c)

    return [
        Point(minute + off, m, t)
        for off, m, t in zip(VERTEX_OFFSETS_MS, order(mark), order(last), strict=True)
    ]


def _between(a: Point, b: Point, at_ms: int) -> Point:
    """The point of segment a-b at ``at_ms`` (linear, 8 decimals)."""
    if b.at_ms == a.at_ms:
        return b
    f = Decimal(at_ms - a.at_ms) / Decimal(b.at_ms - a.at_ms)
    return Point(
        at_ms,
        (a.mark + (b.mark - a.mark) * f).quantize(PLACES),
        (a.last + (b.last - a.last) * f).quantize(PLACES),
    )


def dense_points(points: list[Point]) -> list[Point]:
    """A point every second along the vertices' lines."""
    out: list[Point] = []
    start = points[0].at_ms
    for second in range(60):
        t = start + second * 1000
        seg = next((i for i in range(len(points) - 1) if points[i].at_ms <= t <= points[i + 1].at_ms), None)
        out.append(_between(points[seg], points[seg + 1], t) if seg is not None else points[-1])
    return out


def first_crossing(
    a: Point, b: Point, mark_levels: Iterable[Decimal], last_levels: Iterable[Decimal]
) -> Point | None:
    """The earliest point strictly inside segment a-b where the mark or the traded price reaches a
    level (the level then exact), or None."""
    best: tuple[Decimal, Point] | None = None
    for attr, levels in (("mark", mark_levels), ("last", last_levels)):
        lo, hi = getattr(a, attr), getattr(b, attr)
        if lo == hi:
            continue
        for level in levels:
            if not (min(lo, hi) < level < max(lo, hi)) or level == lo:
                continue
            f = (level - lo) / (hi - lo)
            if f <= 0 or f >= 1:
                continue
            if best is not None and f >= best[0]:
                continue
            # The live stream pushes a mark a second: the engine sees the level at the next whole
            # second (so two symbols crossing within one second meet in one evaluation, W18).
            at = min(-(-(a.at_ms + int(f * (b.at_ms - a.at_ms))) // 1000) * 1000, b.at_ms)
            # The other price at the same fraction of the segment (not at the truncated ms): with
            # equal mark and traded series a level is exact on both.
            if attr == "mark":
                p = Point(at, level, (a.last + (b.last - a.last) * f).quantize(PLACES))
            else:
                p = Point(at, (a.mark + (b.mark - a.mark) * f).quantize(PLACES), level)
            best = (f, p)
    return best[1] if best else None


@dataclass(slots=True)
class Walk:
    """Where one symbol stands on its path through the current minute."""

    points: list[Point]  # what is left, the next first
    current: Point | None  # the last applied point (compressed mode: the segment's start)


@dataclass(frozen=True, slots=True)
class Level:
    """A price at which something can happen to a symbol, and the leg it belongs to."""

    leg: str  # ENTRY1, ENTRY2, TP, BE_STOP, MDD, ... (an order's own id when it is not ours)
    on: Literal["mark", "last"]
    price: Decimal


@dataclass(kw_only=True, slots=True)
class MinuteWatch:
    """One watched symbol's minute, for the ambiguity count."""

    mark: Bar
    last: Bar
    legs_in_range: set[str] = field(default_factory=set)  # legs with a level inside the range
    filled: set[tuple[int, str]] = field(default_factory=set)  # (signal message id, leg) filled
    market_fills: set[int] = field(default_factory=set)  # signal message ids with a MARKET fill
    by_trades: bool = False  # the order of high and low came from the minute's aggTrades


def _leg(client_id: str) -> str:
    parsed = rules.parse_client_order_id(client_id)
    return parsed.leg if parsed is not None else client_id


def _other(rule: PathRule) -> PathRule:
    return "optimistic" if rule == "pessimistic" else "pessimistic"


# ---------------------------------------------------------------------------------------------
# The venue's symbols from the saved exchangeInfo (D-62)
# ---------------------------------------------------------------------------------------------

SIM_DEFAULT = SimSymbol("", Decimal(0), Decimal(0), Decimal(0), Decimal(0), Decimal(0))  # its defaults


@dataclass(slots=True, kw_only=True)
class VenueSymbols:
    """The simulated venue's symbols and starting marks; why the feed's other symbols are not
    there (symbol -> the skip line's text); when a listed symbol was onboarded (a signal before
    that is skipped)."""

    symbols: list[tuple[SimSymbol, Decimal]]
    not_listed: dict[str, str] = field(default_factory=dict)
    onboard_ms: dict[str, int] = field(default_factory=dict)


def symbols_from_exchange_info(
    saved: exchange_info.SavedExchangeInfo,
    named: list[str],
    first_price: Callable[[str], Decimal | None],
    notes: list[str],
) -> VenueSymbols:
    """A ``SimSymbol`` for each of ``named`` the saved answer lists as TRADING, its filters read by
    ``binance.parse`` as the daemon reads them; where the answer lacks a value the simulator's
    default is used and named once in ``notes``."""
    read = ledger.iso_utc(saved.read_ms)
    notes.append(
        f"symbols, filters and status from the venue's exchangeInfo read {read}: today's status and "
        "filters stand for the past (Binance keeps no history of them)"
    )
    entries = saved.entries
    infos = parse.symbol_infos({"symbols": [entries[s] for s in named if s in entries]})
    out = VenueSymbols(symbols=[])
    defaulted: dict[str, list[str]] = {}  # "field (default)" -> symbols
    for symbol in named:
        entry = entries.get(symbol)
        info = infos.get(symbol)
        if entry is None:
            out.not_listed[symbol] = (
                f"{symbol} unknown to the venue (not a USDT perpetual in its exchangeInfo read {read})"
            )
            continue
        if info is None:
            out.not_listed[symbol] = f"{symbol} unknown to the venue (its exchangeInfo entry is unreadable)"
            continue
        if info.status != "TRADING":
            out.not_listed[symbol] = (
                f"{symbol} is {info.status or 'without a status'} on the venue (exchangeInfo read {read}; "
                "today's status stands for the past)"
            )
            continue
        lacking = [
            name
            for name, value in (
                ("tickSize", info.tick_size),
                ("stepSize", info.step_size),
                ("minQty", info.min_qty),
                ("maxQty", info.max_qty),
            )
            if value <= 0
        ]
        if lacking:  # the simulator has no default for these
            out.not_listed[symbol] = (
                f"{symbol} cannot trade in the simulator: its exchangeInfo entry has no {', '.join(lacking)}"
            )
            continue
        mark = first_price(symbol)
        if mark is None:
            out.not_listed[symbol] = f"no cached market data for {symbol}"
            continue
        sim = _sim_symbol(entry, info, defaulted)
        out.symbols.append((sim, mark))
        onboard = entry.get("onboardDate")
        if isinstance(onboard, int) and not isinstance(onboard, bool):
            out.onboard_ms[symbol] = onboard
    for what, symbols in defaulted.items():
        notes.append(f"exchangeInfo has no {what} for {', '.join(symbols)}: the simulator's used")
    return out


def _sim_symbol(entry: Json, info: ev.SymbolInfo, defaulted: dict[str, list[str]]) -> SimSymbol:
    """The ``SimSymbol`` of one TRADING entry; ``defaulted`` collects what came from the simulator."""

    def pick(name: str, value: Decimal | None, default: Decimal) -> Decimal:
        if value is not None and value > 0:
            return value
        defaulted.setdefault(f"{name} ({default})", []).append(info.symbol)
        return default

    filters = {f.get("filterType"): f for f in entry.get("filters", []) if isinstance(f, dict)}
    percent = filters.get("PERCENT_PRICE", {})

    def multiplier(key: str) -> Decimal | None:
        try:
            return parse.dec(percent[key])
        except (KeyError, ValueError):
            return None

    onboard = entry.get("onboardDate")
    if not isinstance(onboard, int) or isinstance(onboard, bool):
        defaulted.setdefault(f"onboardDate ({ledger.iso_utc(SIM_DEFAULT.onboard_ms)})", []).append(
            info.symbol
        )
        onboard = SIM_DEFAULT.onboard_ms
    market_max = info.market_max_qty
    if market_max is None or market_max <= 0:  # Binance: without MARKET_LOT_SIZE, LOT_SIZE applies
        defaulted.setdefault("MARKET_LOT_SIZE maxQty (LOT_SIZE maxQty)", []).append(info.symbol)
        market_max = info.max_qty
    return SimSymbol(
        info.symbol,
        info.tick_size,
        info.step_size,
        info.min_qty,
        info.max_qty,
        market_max,
        min_notional=pick("MIN_NOTIONAL notional", info.min_notional, SIM_DEFAULT.min_notional),
        min_price=pick("PRICE_FILTER minPrice", info.min_price, SIM_DEFAULT.min_price),
        max_price=pick("PRICE_FILTER maxPrice", info.max_price, SIM_DEFAULT.max_price),
        status=info.status,
        onboard_ms=onboard,
        percent_up=pick("PERCENT_PRICE multiplierUp", multiplier("multiplierUp"), SIM_DEFAULT.percent_up),
        percent_down=pick(
            "PERCENT_PRICE multiplierDown", multiplier("multiplierDown"), SIM_DEFAULT.percent_down
        ),
    )


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


class Backtest:
    """One run's engine, venue, client, clock and cached data; ``run`` drives it (module docstring)."""

    def __init__(
        self,
        *,
        strategy: Strategy,
        messages: list[FeedMessage],
        cache: MarketCache,
        since_ms: int,
        until_ms: int | None,
        capital: Decimal,
        rule: PathRule,
        dense: bool,
        slippage_bps: Decimal,
        fees: Fees,
        store: Store,
        result: BacktestResult,
        heartbeat_symbol: str,
    ) -> None:
        self.strategy = strategy
        self.messages = [
            m for m in messages if m.at_ms >= since_ms and (until_ms is None or m.at_ms < until_ms)
        ]
        if len(self.messages) < len(messages):
            outside = len(messages) - len(self.messages)
            result.notes.append(f"{outside} feed message(s) outside the run's window, not replayed")
        self.cache = cache
        self.since_ms = since_ms
        self.until_ms = until_ms
        self.rule = rule
        self.dense = dense
        self.store = store
        self.result = result
        self.heartbeat = heartbeat_symbol
        self.clock = SimClock(since_ms)
        self.api_key = f"backtest-{secrets.token_hex(4)}"
        secret = secrets.token_hex(16)  # a throwaway credential for the in-process venue
        self.data: dict[str, MinuteData | None] = {}
        self.missing_minutes: dict[str, list[int]] = {}
        venue = self.venue_symbols()
        self.exchange = BacktestExchange(
            fees=fees,
            slippage_bps=slippage_bps,
            clock=self.clock,
            api_keys={self.api_key: secret},
            balance=capital,
            symbols=venue.symbols,
        )
        self.not_listed = venue.not_listed
        self.onboard_ms = venue.onboard_ms
        self.exchange.answer_as_binance()
        self.exchange.settle_funding = False  # the backtest pays funding from the rate history itself
        self.exchange.record_market_trades = False  # nobody asks this venue for its aggTrades
        self.exchange.user_listeners.append(lambda payload, key: self.pending.append(payload))
        self.transport = InProcessTransport(SimVenue(self.exchange), keep_log=False)
        # The venue's exchangeInfo is today's for the whole run (D-62): the daemon's five-minute
        # re-read could never learn anything new here, so the run reads it once a simulated day.
        self.rest = BinanceRest(
            api_key=self.api_key,
            api_secret=secret,
            base_url="http://sim.invalid",
            clock_ms=self.clock.now_ms,
            transport=self.transport,
            exchange_info_ttl_ms=86_400_000,
        )
        self.executor = Executor(self.rest)
        self.engine = Engine(strategy)
        self.busy: set[str] = set()  # symbols the engine holds in a state other than IDLE
        self._infos: dict[str, ev.SymbolInfo] = {}
        self._info_rows: object = None
        self._info_key: bytes | None = None  # ``_json_key`` of the rows last parsed
        self.pending: list[Json] = []
        self.refreshed_ms = -1
        self.ticked_ms = -1
        self.checkpoint_due_ms = 0
        self.ambiguous: set[tuple[str, int]] = set()
        # (symbol, minute start, signal message id, "path" | "aggTrades") for ``ambiguous_minutes``
        self.minute_rows: set[tuple[str, int, int, str]] = set()
        self._agg_order: dict[tuple[str, int], bool | None] = {}  # (symbol, minute) -> high first
        self._has_agg: dict[str, bool] = {}
        self.trades_seen = 0  # the venue's trades already looked at for the minute's ambiguity
        self.note_counts: dict[str, int] = {}

    # -- the venue's symbols (D-62) ----------------------------------------------------------------

    def venue_symbols(self) -> VenueSymbols:
        """The simulated venue's symbols: from the cache's ``exchangeInfo.json`` for every symbol
        the feed names (starting at its first cached price), else the simulator's four; each
        choice said once in ``notes``."""
        root = self.cache.root
        try:
            saved = exchange_info.load(root)
            unreadable = ""
        except exchange_info.BadExchangeInfo as exc:
            saved, unreadable = None, f" ({exc})"
        if saved is None:
            names = ", ".join(s.symbol for s, _ in default_symbols())
            self.result.notes.append(
                f"no exchangeInfo in the cache{unreadable}: only the simulator's four symbols trade "
                f"({names}), with its filters; run `shortfsm data --feed` to save the venue's"
            )
            return VenueSymbols(symbols=default_symbols())
        named = sorted(
            {
                sym
                for m in self.messages
                if isinstance(sym := getattr(parse_message(m.item.text), "symbol", None), str)
            }
        )
        return symbols_from_exchange_info(saved, named, self.first_price, self.result.notes)

    def first_price(self, symbol: str) -> Decimal | None:
        """The first cached price of the run's window (mark, else traded): the starting mark."""
        data = self.market(symbol)
        if data is None:
            return None
        for bars in (data.marks, data.lasts):
            first = next(iter(bars), None)
            bar = bars.get(first) if first is not None else None
            if bar is not None:
                return bar[0]
        return None

    # -- data ------------------------------------------------------------------------------------

    def market(self, symbol: str) -> MinuteData | None:
        if symbol not in self.data:
            lo = self.since_ms - HISTORY_MS
            hi = (self.until_ms if self.until_ms is not None else self._feed_end()) + 1
            marks, lasts = (self._load(symbol, dataset, lo, hi) for dataset in ("markPriceKlines", "klines"))
            self.data[symbol] = MinuteData.load(marks, lasts) if marks or lasts else None
        return self.data[symbol]

    def _load(self, symbol: str, dataset: str, lo: int, hi: int) -> Bars:
        table = self.cache.read_table(symbol, dataset, lo, hi)  # None: the months' schemas differ
        fast = _all_good_table(table) if table is not None else None
        if fast is not None:
            return fast
        columns = self.cache.read(symbol, dataset, lo, hi)
        return _all_good(columns) or self._checked(symbol, dataset, _bars(columns))

    def _checked(self, symbol: str, dataset: str, raw: dict[int, RawBar]) -> Bars:
        """``raw`` without the candles that cannot be prices (a zero or negative price, high below
        low or outside open/close, a jump of more than SPIKE_FACTOR from the previous close): each
        one becomes a missing minute, with a line saying how many and the first; so does a candle
        with a value that is no finite number (NaN, inf, null). The test reads the stored floats
        (their order is their decimals' order); the x10 comparison, where the float product is too
        close to call, and a series with a value that is not a finite float, read the decimals."""
        bad: list[int] = []
        previous: Any = None  # the last good close, as stored
        floats = _plain_floats(raw)
        for t in sorted(raw):
            o, h, lo, c = raw[t]
            if floats:  # positive prices far from x10 (the common case) need no product at all
                spike = (
                    previous is not None
                    and not (h * 2 < previous * SPIKE_FACTOR and lo * SPIKE_FACTOR > previous * 2)
                    and _spike(h, lo, previous)
                )
                fails = lo <= 0 or h < lo or not (lo <= o <= h and lo <= c <= h) or spike
            elif not all(map(_finite_number, (o, h, lo, c))):  # NaN, inf, null, text: no price
                fails = True
            else:  # as the decimals say
                do, dh, dl, dc = exact(o), exact(h), exact(lo), exact(c)
                dp = exact(previous) if previous is not None else None
                spike = dp is not None and (dh > dp * SPIKE_FACTOR or dl * SPIKE_FACTOR < dp)
                fails = dl <= 0 or dh < dl or not (dl <= do <= dh and dl <= dc <= dh) or spike
            if fails:
                bad.append(t)
                del raw[t]
                continue
            previous = c
        if bad:
            self.missing_minutes.setdefault(symbol, []).extend(bad)
            self.result.notes.append(
                f"{symbol} {dataset}: {len(bad)} corrupt candle(s) dropped (zero price, high below low, "
                f"or a x{SPIKE_FACTOR} jump), the first at {ledger.iso_utc(bad[0])}: counted as missing"
            )
        return Bars(raw)

    def _feed_end(self) -> int:
        last = self.messages[-1].at_ms if self.messages else self.since_ms
        return last + 30 * 86_400_000  # no --until: at most 30 days after the last message

    # -- the engine loop ---------------------------------------------------------------------------

    async def feed(self, events: list[ev.Event]) -> None:
        """Feed events and the venue's answers until nothing is left, in the daemon's order: answers
        first in, first out, before the next outside event (D-61)."""
        outside = deque(events)
        front: deque[ev.Event] = deque()
        while front or outside:
            event = front.popleft() if front else outside.popleft()
            front.extend(await self.handle(event))

    async def handle(self, event: ev.Event) -> list[ev.Event]:
        store = self.store
        if isinstance(event, OUTCOME_EVENTS):
            store.record_outcome(event)
        if event.now_ms >= self.checkpoint_due_ms:
            first = not self.checkpoint_due_ms
            store.checkpoint(event.now_ms, self.engine.snapshot(), run_start=first, keep_ms=0)
            self.checkpoint_due_ms = event.now_ms + CHECKPOINT_EVERY_MS
        commands = self.engine.handle(event)
        for c in commands:
            if isinstance(c, cmd.Transitioned) and c.machine == "symbol" and c.symbol is not None:
                (self.busy.discard if c.dest == "IDLE" else self.busy.add)(c.symbol)
        store.journal(event, render_all(commands))
        self.result.events += 1
        if not commands:
            return []
        now = event.now_ms
        for c in commands:
            if isinstance(c, cmd.PersistCursor):
                store.save_cursor(c.chat_id, c.message_id, now)
        store.record_commands(now, commands)
        # No snapshot row per transition (the daemon's, for its restart): nothing reads a backtest's
        # but ``replay --journal``, which starts from the journal's checkpoints; the run's last
        # state is saved at the end (``_run``).
        answers: list[ev.Event] = []
        for c in commands:
            if not isinstance(c, cmd.Log):
                self.result.decisions.append((now, render(c)))
            if self.executor.handles(c):
                answers.extend(await self.executor.execute(c, now))
                answers.extend(self.drain())
        return answers

    async def symbol_infos(self) -> dict[str, ev.SymbolInfo]:
        """exchangeInfo through the client, as the daemon reads it at each signal; parsed again
        only when the client read it again (its cached answer shares the ``symbols`` list)."""
        answer = await self.rest.exchange_info()
        rows = answer.get("symbols")
        if rows is not self._info_rows:
            # A read again: parsed again only when it says something else. Compared as compact
            # JSON (a few hundred kB compared object by object took ~8 ms; its bytes ~0.5 ms).
            key = _json_key(rows)
            if key is None or key != self._info_key:
                self._infos = parse.symbol_infos(answer)
            self._info_rows, self._info_key = rows, key
        return self._infos

    def drain(self) -> list[ev.Event]:
        payloads, self.pending = self.pending, []
        now = self.clock.now_ms()
        out: list[ev.Event] = []
        for payload in payloads:
            out.extend(e for e in parse.decode_message(payload, now) if isinstance(e, ev.Event))
        return out

    def move_to(self, at_ms: int) -> None:
        self.clock.set(max(at_ms, self.clock.now_ms()))
        self.exchange.pump()

    async def refresh(self, at_ms: int, *, skip: set[str] | None = None) -> None:
        """Re-announce the current marks at ``at_ms`` (the stream pushes every second)."""
        if at_ms <= self.refreshed_ms:
            return
        self.refreshed_ms = at_ms
        watched = [s for s in self.watched() if not skip or s not in skip]
        if not watched and not skip and self.exchange.marks:  # the heartbeat (its mark decides nothing)
            watched = [self.heartbeat if self.heartbeat in self.exchange.marks else min(self.exchange.marks)]
        events: list[ev.Event] = [
            ev.MarkPriceTick(now_ms=at_ms, symbol=s, price=self.exchange.marks[s], event_time_ms=at_ms)
            for s in watched
            if s in self.exchange.marks
        ]
        await self.feed(events)

    def watched(self) -> list[str]:
        """Symbols whose prices can decide something: not IDLE in the engine, or held on the venue.
        Both sets are kept as they change (the engine's transitions, the venue's fills): read on
        every point, a scan of every symbol and position ever seen grew with the run."""
        return sorted((self.busy | self.exchange.held) & self.exchange.symbols.keys())

    def deadline(self) -> int | None:
        """The engine's next deadline, its price-staleness watchdogs left out (see the docstring);
        a deadline a Tick at that time did not clear comes back a second later, never in a loop."""
        due = self.engine.next_deadline_ms(price_watchdogs=False)
        if due is not None and due <= self.ticked_ms:
            due = self.ticked_ms + 1000
        return due

    # -- inputs --------------------------------------------------------------------------------------

    async def message(self, m: FeedMessage) -> None:
        at = m.at_ms
        self.move_to(at)
        item = m.item
        await self.refresh(at)
        self.result.messages += 1
        date_ms = item.date_ms if item.date_ms is not None else at
        if item.edit_date_ms is not None and item.edit_date_ms > date_ms:
            # The feed holds the edited text; the daemon acted on the original (N-27), which is lost.
            self.result.skipped.append(
                f"{ledger.iso_utc(at)} message {item.message_id}: its text was edited at "
                f"{ledger.iso_utc(item.edit_date_ms)}; the original is not in the feed, not replayed"
            )
            return
        parsed = parse_message(item.text)
        self.store.record_message(
            chat_id=item.chat_id, message_id=item.message_id, date_ms=date_ms, received_ms=at, text=item.text,
            parsed=parsed,
        )  # fmt: skip
        if item.edited:
            return
        symbol = getattr(parsed, "symbol", None)
        info: ev.SymbolInfo | None = None
        klines: tuple[ev.Candle, ...] | None = None
        if isinstance(symbol, str):
            info = (await self.symbol_infos()).get(symbol)
            when = ledger.iso_utc(at)
            why = self.not_listed.get(symbol, f"{symbol} unknown to the venue")
            if at < self.onboard_ms.get(symbol, at):
                info = None  # listed today, not yet then (D-62)
                why = f"{symbol} was not listed yet: onboarded {ledger.iso_utc(self.onboard_ms[symbol])}"
            if info is None:
                self.result.skipped.append(f"{when} message {item.message_id}: {why}")
            else:
                data = self.market(symbol)
                mark = data.close_before(at) if data is not None else None
                incomplete: list[int] = []
                if isinstance(parsed, ev.LeadingMarket):
                    klines, incomplete = data.candles_3m(at) if data is not None else ((), [])
                    if incomplete:  # minutes missing from the 3m candles the target reads
                        self.missing_minutes.setdefault(symbol, []).extend(incomplete)
                last_slot = at // KLINE_MS * KLINE_MS - KLINE_MS
                if mark is None and symbol in self.watched() and symbol in self.exchange.marks:
                    seen = self.exchange.mark_time.get(symbol, at)
                    self.result.flagged.append(
                        f"{when} message {item.message_id}: no cached market data for {symbol} at that time; "
                        f"acted on with the last known price {self.exchange.marks[symbol]} from "
                        f"{ledger.iso_utc(seen)} ({(at - seen) // MINUTE_MS} min old): that trade's "
                        "exit price is not market history"
                    )
                elif isinstance(parsed, ev.LeadingMarket) and any(
                    last_slot <= t < last_slot + KLINE_MS for t in incomplete
                ):
                    self.result.skipped.append(
                        f"{when} message {item.message_id}: the last closed 3m candle of {symbol} "
                        f"({ledger.iso_utc(last_slot)}) has missing minutes: its target is unknown, "
                        "not replayed"
                    )
                    klines = None
                elif mark is None or (isinstance(parsed, ev.LeadingMarket) and not klines):
                    self.result.skipped.append(
                        f"{when} message {item.message_id}: no cached market data for {symbol} at that time"
                    )
                    klines = None
                elif symbol not in self.watched():  # a watched symbol's mark is on its path already
                    self.clock.set(at)
                    self.exchange.set_mark(symbol, mark)
                    await self.feed(
                        [
                            ev.MarkPriceTick(now_ms=at, symbol=symbol, price=mark, event_time_ms=at),
                            *self.drain(),
                        ]
                    )
        await self.feed(
            [
                ev.MessageReceived(
                    now_ms=at,
                    chat_id=item.chat_id,
                    message_id=item.message_id,
                    telegram_date_ms=date_ms,
                    parsed=parsed,
                    exchange_info_ok=True,
                    symbol_info=info,
                    klines=klines,
                )
            ]
        )
        await self.feed([ev.Tick(now_ms=at)])

    async def tick(self, at_ms: int) -> None:
        self.move_to(at_ms)
        self.ticked_ms = at_ms
        await self.refresh(at_ms)
        await self.feed([*self.drain(), ev.Tick(now_ms=at_ms)])

    async def points(self, at_ms: int, moves: list[tuple[str, Point]]) -> None:
        """Every symbol's point at one instant, then one evaluation (W18: the engine sees all the
        marks of that second before it decides)."""
        self.move_to(at_ms)
        await self.refresh(at_ms, skip={s for s, _ in moves})
        events: list[ev.Event] = []
        for symbol, p in moves:
            self.exchange.set_mark(symbol, p.mark, last=p.last)
            events.append(ev.MarkPriceTick(now_ms=at_ms, symbol=symbol, price=p.mark, event_time_ms=at_ms))
            events.extend(self.drain())
        await self.feed([*events, ev.Tick(now_ms=at_ms)])

    async def align(self, walks: dict[str, Walk | None], at_ms: int, skip: set[str]) -> None:
        """Move every other walked symbol to its path's point at ``at_ms`` (a message, a deadline or
        another symbol's point inside a watched minute sees the prices of that moment)."""
        watched = set(self.watched())
        self.move_to(at_ms)
        events: list[ev.Event] = []
        for symbol, walk in sorted(walks.items()):
            if walk is None or symbol in skip or symbol not in watched or walk.current is None:
                continue
            if not walk.points or not walk.current.at_ms < at_ms <= walk.points[0].at_ms:
                continue
            p = _between(walk.current, walk.points[0], at_ms)
            if p.at_ms == walk.points[0].at_ms:
                p = walk.points.pop(0)
            walk.current = p
            self.exchange.set_mark(symbol, p.mark, last=p.last)
            events.append(ev.MarkPriceTick(now_ms=at_ms, symbol=symbol, price=p.mark, event_time_ms=at_ms))
            events.extend(self.drain())
        if events:
            await self.feed(events)

    # -- levels and paths ------------------------------------------------------------------------------

    def labelled_levels(self, symbol: str) -> list[Level]:
        """Every level that can decide something for ``symbol`` now, with the leg it belongs to."""
        out: list[Level] = []
        for algo in self.exchange.new_algos_index.values():
            if algo.symbol == symbol and algo.status == "NEW":
                on: Literal["mark", "last"] = "mark" if algo.working_type == "MARK_PRICE" else "last"
                out.append(Level(_leg(algo.client_algo_id), on, algo.trigger))
        for order in self.exchange.open_orders_index.values():
            if (
                order.symbol == symbol
                and order.type == "LIMIT"
                and order.status in ("NEW", "PARTIALLY_FILLED")
            ):
                out.append(Level(_leg(order.client_id), "last", order.price))
        model = self.engine.symbols.get(symbol)
        if model is None:
            return out
        b = self.strategy.trigger_buffer_pct
        if model.state == "MONITORING":
            out.append(Level("ENTRY1", "mark", model.entry_trigger))
        if model.state in ("ENTRY_ORDER", "PHASE1") and model.tp_armed and model.position() > 0:
            tick = self.engine.tick_size(model)
            tp = rules.take_profit_price(model.average(), self.strategy.tp_pct, tick)
            out.append(Level("TP", "mark", rules.take_profit_threshold(tp, b)))
        if model.state == "PHASE1" and model.add_armed:
            out.append(Level("ENTRY2", "mark", rules.entry_threshold(model.add_price, b)))
        return out

    def levels(self, symbol: str) -> tuple[list[Decimal], list[Decimal]]:
        """(mark levels, traded-price levels) that can decide something for ``symbol`` now."""
        levels = self.labelled_levels(symbol)
        return [x.price for x in levels if x.on == "mark"], [x.price for x in levels if x.on == "last"]

    def holding(self, symbol: str) -> bool:
        return any(p.amount != 0 for (s, _), p in self.exchange.positions.items() if s == symbol)

    def start_walk(
        self, symbol: str, minute: int, start_ms: int, watches: dict[str, MinuteWatch]
    ) -> Walk | None:
        """The symbol's path through ``minute`` from ``start_ms`` (the first point interpolated there).
        The order of high and low is chosen from the symbol's state now: holding a short, the
        pessimistic path goes to the high first; flat (monitoring, entry waiting) to the low first,
        so that an entry comes as late as the minute allows and earns nothing inside it."""
        data = self.market(symbol)
        bars = data.bars(minute) if data is not None else None
        if bars is None:
            self.missing_minutes.setdefault(symbol, []).append(minute)
            return None
        mark, last, note = bars
        if note:
            self.note_counts[note] = self.note_counts.get(note, 0) + 1
        held = self.holding(symbol)
        rule: PathRule = self.rule if held else _other(self.rule)
        high_first = self.trade_order(symbol, minute, last, note)
        if high_first is not None:  # the trades decide: open, high, low, close is "pessimistic"'s order
            rule = "pessimistic" if high_first else "optimistic"
        points = vertices(minute, mark, last, rule)
        watches[symbol] = MinuteWatch(mark=mark, last=last, by_trades=high_first is not None)
        if self.dense:
            points = dense_points(points)
        before = [p for p in points if p.at_ms <= start_ms]
        later = [p for p in points if p.at_ms > start_ms]
        if not later:
            return None
        if before and before[-1].at_ms < start_ms:  # a walk starting mid-minute: from that moment
            later.insert(0, _between(before[-1], later[0], start_ms))
        elif before:
            later.insert(0, before[-1])
        return Walk(later, None)

    def trade_order(self, symbol: str, minute: int, last: Bar, note: str) -> bool | None:
        """Whether the traded price reached the minute's high before its low in the cached aggTrades
        (True / False), or None when they cannot say: none cached, a flat candle, no klines candle to
        check them against, trades whose extremes are not the candle's, or a month file that cannot
        be read (each listed in ``agg_problems``; the path rule decides that minute)."""
        key = (symbol, minute)
        if key in self._agg_order:
            return self._agg_order[key]
        has = self._has_agg.get(symbol)
        if has is None:
            has = self._has_agg[symbol] = self.cache.store.has_agg(symbol)
        order: bool | None = None
        try:
            trades = self.cache.agg_trades(symbol, minute) if has else None
        except CorruptMonth as exc:  # said once per file; ``data --ambiguous`` repairs it
            trades = None
            line = (
                f"{exc.path}: unreadable ({exc.why}); the path rule decides its minutes "
                "(shortfsm data --ambiguous moves it aside and fetches them again)"
            )
            if line not in self.result.agg_problems:
                self.result.agg_problems.append(line)
        if trades is not None and last[1] != last[2]:
            when = f"{symbol} {ledger.iso_utc(minute)}"
            prices = [exact(p) for p in trades.prices]
            if note == "mark for the traded price":
                self.result.agg_problems.append(
                    f"{when}: no klines candle to check its aggTrades against; the path rule decides it"
                )
            elif not prices or max(prices) != last[1] or min(prices) != last[2]:
                span = f"{min(prices)}..{max(prices)}" if prices else "no trade"
                self.result.agg_problems.append(
                    f"{when}: its {len(prices)} aggTrades span {span}, the 1m candle {last[2]}..{last[1]}; "
                    "the path rule decides it"
                )
            else:
                order = prices.index(last[1]) < prices.index(last[2])
        self._agg_order[key] = order
        return order

    def observe(self, watches: dict[str, MinuteWatch], known: dict[str, list[Level]] | None = None) -> None:
        """Note, for the minute's ambiguity, the legs whose levels lie in each watched symbol's range
        and the fills since the last look (by the leg of the order that filled). ``known``: the
        levels of this moment already listed (filled in here; ``next_point`` reads them)."""
        for symbol, w in watches.items():
            levels = self.labelled_levels(symbol) if known is None else self._known(symbol, known)
            for x in levels:
                bar = w.mark if x.on == "mark" else w.last
                if bar[2] <= x.price <= bar[1]:
                    w.legs_in_range.add(x.leg)
        trades = self.exchange.trades
        for t in trades[self.trades_seen :]:
            watch = watches.get(t["symbol"])
            order = self.exchange.orders.get(int(t["orderId"]))
            if watch is None or order is None:
                continue
            parsed = rules.parse_client_order_id(order.client_id)
            if parsed is None:
                continue
            watch.filled.add((parsed.message_id, parsed.leg))
            if order.type == "MARKET":
                watch.market_fills.add(parsed.message_id)
        self.trades_seen = len(trades)

    def close_minute(self, minute: int, watches: dict[str, MinuteWatch]) -> None:
        """Count the minute's ambiguous trades: one filled or exited in a minute whose range holds a
        level of another of its legs, or closed at market in a minute whose high is not its low."""
        self.observe(watches)
        for symbol, w in watches.items():
            keys = {mid for mid, leg in w.filled if w.legs_in_range - {leg}}
            if w.mark[1] != w.mark[2] or w.last[1] != w.last[2]:
                keys |= w.market_fills
            if not keys:
                continue
            if w.by_trades:  # the trades decided the order: not ambiguous any more
                self.result.ambiguous_resolved += 1
            else:
                self.result.ambiguous_minutes += 1
                self.ambiguous.update((symbol, mid) for mid in keys)
            decided = "aggTrades" if w.by_trades else "path"
            self.minute_rows.update((symbol, minute, mid, decided) for mid in keys)

    def _known(self, symbol: str, known: dict[str, list[Level]]) -> list[Level]:
        """``labelled_levels(symbol)``, listed once per moment (nothing moves between the look of
        ``observe`` and the choice of the next points)."""
        levels = known.get(symbol)
        if levels is None:
            levels = known[symbol] = self.labelled_levels(symbol)
        return levels

    def next_point(
        self, symbol: str, walk: Walk, known: dict[str, list[Level]] | None = None
    ) -> Point | None:
        if not walk.points:
            return None
        target = walk.points[0]
        if self.dense or walk.current is None:
            return target
        if known is None:
            marks, lasts = self.levels(symbol)
        else:
            levels = self._known(symbol, known)
            marks = [x.price for x in levels if x.on == "mark"]
            lasts = [x.price for x in levels if x.on == "last"]
        return first_crossing(walk.current, target, marks, lasts) or target

    # -- driving -----------------------------------------------------------------------------------------

    def stop_ms(self) -> int:
        return self.until_ms if self.until_ms is not None else self._feed_end()

    async def run(self) -> None:
        stop = self.stop_ms()
        index = 0
        now = self.since_ms
        while True:
            watched = self.watched()
            next_msg = self.messages[index].at_ms if index < len(self.messages) else None
            if watched and self.data_ended(watched, now):
                self.result.notes.append(f"market data ends at {ledger.iso_utc(now)}: run stopped")
                break
            if not watched:
                deadline = self.deadline()
                due = [t for t in (next_msg, deadline) if t is not None]
                if not due or min(due) >= stop:
                    break
                now = max(min(due), now)
                if next_msg is not None and next_msg <= now:
                    await self.message(self.messages[index])
                    index += 1
                else:
                    await self.tick(now)
                continue
            # A watched minute: every symbol's path, messages and deadlines in time order.
            minute = now // MINUTE_MS * MINUTE_MS
            end = min(minute + MINUTE_MS, stop)
            index = await self.run_minute(minute, now, end, index)
            if end >= stop:
                break
            now = end

    def data_ended(self, watched: list[str], now: int) -> bool:
        if self.until_ms is not None:
            return False
        return all(
            (d := self.market(s)) is None or d.last_minute < now // MINUTE_MS * MINUTE_MS for s in watched
        )

    async def run_minute(self, minute: int, start: int, end: int, index: int) -> int:
        walks: dict[str, Walk | None] = {}
        watches: dict[str, MinuteWatch] = {}
        self.trades_seen = len(self.exchange.trades)
        now = start
        try:
            while True:
                watched = self.watched()
                for s in watched:
                    if s not in walks:
                        walks[s] = self.start_walk(s, minute, now, watches)
                known: dict[str, list[Level]] = {}  # this moment's levels, by symbol
                self.observe(watches, known)
                candidates: list[tuple[int, int, str, Point | None]] = []
                if index < len(self.messages) and self.messages[index].at_ms < end:
                    candidates.append((self.messages[index].at_ms, 0, "", None))
                deadline = self.deadline()
                if deadline is not None and deadline < end:
                    candidates.append((max(deadline, now), 1, "", None))
                for s, walk in sorted(walks.items()):
                    if walk is None or s not in watched:  # a symbol let go mid-minute is not walked on
                        continue
                    p = self.next_point(s, walk, known)
                    if p is not None and p.at_ms < end:
                        candidates.append((p.at_ms, 2, s, p))
                if not candidates:
                    return index
                at, kind, _, _ = min(candidates, key=lambda c: (c[0], c[1], c[2]))
                now = max(now, at)
                if kind == 2:
                    moves = [(s, p) for t, k, s, p in candidates if k == 2 and t == at and p is not None]
                    for s, p in moves:
                        walk = walks[s]
                        assert walk is not None
                        if walk.points and p == walk.points[0]:
                            walk.points.pop(0)
                        walk.current = p
                    await self.align(walks, now, {s for s, _ in moves})
                    await self.points(now, moves)
                    continue
                await self.align(walks, now, set())
                if kind == 0:
                    await self.message(self.messages[index])
                    index += 1
                else:
                    await self.tick(now)
        finally:
            self.close_minute(minute, watches)

    def settle_funding(self) -> None:
        """Funding at every cached settlement while a position was held (short: a positive rate is
        received): size on the venue just before the settlement x the settlement's mark (the last
        mark closed by then when the row has none) x rate, booked in the ``funding`` table at the
        settlement's time (the ledger gives it to the trade open then)."""
        held: dict[str, list[tuple[int, Decimal]]] = {}  # symbol -> (time, signed size after the fill)
        sizes: dict[str, Decimal] = {}
        for t in self.exchange.trades:
            qty = Decimal(t["qty"]) * (1 if t["buyer"] else -1)
            sizes[t["symbol"]] = sizes.get(t["symbol"], Decimal(0)) + qty
            held.setdefault(t["symbol"], []).append((int(t["time"]), sizes[t["symbol"]]))
        end = self.clock.now_ms()
        for symbol, steps in sorted(held.items()):
            rows = self.cache.read(symbol, "fundingRate", steps[0][0], end + 1)
            if not rows["funding_time"] and end - steps[0][0] >= 8 * 3_600_000:
                self.result.notes.append(f"no cached funding for {symbol}: its funding is not counted")
            data = self.market(symbol)
            for at, rate, mark in zip(
                rows["funding_time"], rows["funding_rate"], rows["mark_price"], strict=True
            ):
                size = next((sz for t, sz in reversed(steps) if t < at), Decimal(0))
                if size == 0:
                    continue
                price = (
                    exact(mark) if mark is not None else (data.close_before(at) if data is not None else None)
                )
                if price is None:
                    self.result.notes.append(
                        f"{symbol} funding at {ledger.iso_utc(at)}: no mark, not counted"
                    )
                    continue
                amount = -(size * price * exact(rate)).quantize(PLACES)
                self.result.funding += amount
                self.store.record_outcome(
                    ev.FundingFee(now_ms=at, symbol=symbol, asset="USDT", amount=amount, venue_time_ms=at)
                )

    async def finish(self) -> None:
        await self.rest.aclose()
        for symbol, minutes in sorted(self.missing_minutes.items()):
            self.result.missing[symbol] = _ranges(sorted(set(minutes)))
        for note, count in sorted(self.note_counts.items()):
            self.result.notes.append(f"{count} minute(s) used {note}")
        # In the notes too, so the text output (``print_result``) says them.
        if self.result.ambiguous_resolved:
            self.result.notes.append(
                f"{self.result.ambiguous_resolved} minute(s) whose order of high and low the cached "
                "aggTrades decided (not ambiguous)"
            )
        self.result.notes += [f"aggTrades not used: {line}" for line in self.result.agg_problems]
        self.result.last_mark_ms = self.clock.now_ms()
        for (symbol, _), pos in sorted(self.exchange.positions.items()):
            mark = self.exchange.marks.get(symbol)
            if pos.amount != 0 and mark is not None:
                pnl = ((mark - pos.entry) * pos.amount).quantize(PLACES)
                self.result.unrealized[symbol] = self.result.unrealized.get(symbol, Decimal(0)) + pnl
        self.result.open_at_end = [
            f"{s} {m.state} position {m.position()}"
            for s, m in sorted(self.engine.symbols.items())
            if m.state != "IDLE"
        ]


def _ranges(minutes: list[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for m in minutes:
        if out and out[-1][1] == m:
            out[-1] = (out[-1][0], m + MINUTE_MS)
        else:
            out.append((m, m + MINUTE_MS))
    return out


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


def run_backtest(
    feed_path: str | Path,
    cache_root: str | Path,
    *,
    since_ms: int,
    until_ms: int | None = None,
    strategy: Strategy | None = None,
    capital: Decimal = Decimal("1000"),
    path: PathRule = "pessimistic",
    dense: bool = False,
    slippage_bps: Decimal = Decimal(0),
    fees: Fees | None = None,
    db_path: str | Path = "var/backtest.db",
    heartbeat_symbol: str = "BTCUSDT",
) -> BacktestResult:
    """One run (see the module docstring). The database at ``db_path`` is replaced. Raises
    ``BacktestError`` for a missing feed or cache (exit 3) or a bad argument (exit 2)."""
    feed = Path(feed_path)
    root = Path(cache_root)
    if not feed.is_file():
        raise BacktestError(f"no feed file {feed}", 3)
    # A cache is its Parquet folders (the manifest is optional for reading, binance.history.store).
    if not any((root / name).exists() for name in ("manifest.sqlite", "klines", "markPriceKlines")):
        raise BacktestError(f"no market data cache at {root} (run `shortfsm data` first)", 3)
    check_settings(capital=capital, slippage_bps=slippage_bps, fees=fees or Fees())
    if until_ms is not None and until_ms <= since_ms:
        raise BacktestError("--until must be after --since", 2)
    messages, bad = load_feed(feed, since_ms)
    db = Path(db_path)
    check_out(db)
    result = BacktestResult(path=path, dense=dense, db_path=db, bad_lines=bad)
    started = time.perf_counter()
    with _OutLock(db) as lock:
        temp = lock.temp
        cache = MarketCache(root)
        try:
            asyncio.run(
                _run(
                    strategy=strategy or Strategy(),
                    messages=messages,
                    cache=cache,
                    since_ms=since_ms,
                    until_ms=until_ms,
                    capital=capital,
                    rule=path,
                    dense=dense,
                    slippage_bps=slippage_bps,
                    fees=fees or Fees(),
                    db=temp,
                    result=result,
                    heartbeat_symbol=heartbeat_symbol,
                )
            )
        finally:
            cache.close()
        result.wall_s = time.perf_counter() - started
        conn = ledger.open_readonly(temp)  # this run's own file: no other run can have replaced it
        try:
            result.trades = ledger.read_ledger(conn).trades
        finally:
            conn.close()
        lock.commit()
    result.ambiguous_trades = sum((t.symbol, t.message_id) in result.ambiguous_keys for t in result.trades)
    return result


MAX_CAPITAL = Decimal("1e12")
MAX_FEE = Decimal("0.01")
MAX_SLIPPAGE_BPS = Decimal(1000)


def check_settings(*, capital: Decimal, slippage_bps: Decimal, fees: Fees) -> None:
    """Refuse (exit 2) a setting outside what a futures account can mean."""
    if not (0 < capital <= MAX_CAPITAL):
        raise BacktestError(f"--capital must be above 0 and at most {MAX_CAPITAL:,.0f} USDT", 2)
    if not (0 <= slippage_bps <= MAX_SLIPPAGE_BPS):
        raise BacktestError(f"--slippage-bps must be between 0 and {MAX_SLIPPAGE_BPS}", 2)
    for name, rate in (("--maker-fee", fees.maker), ("--taker-fee", fees.taker)):
        if not (0 <= rate <= MAX_FEE):
            raise BacktestError(f"{name} must be a rate between 0 and {MAX_FEE} (0.02 % is 0.0002)", 2)


def check_out(db: Path) -> None:
    """Refuse (exit 2, one line) an --out that is not ours to replace or cannot be written: an existing
    file that is not a backtest database, a -wal/-shm beside a missing database, a parent that is a
    file or cannot be created."""
    try:
        _check_out(db)
    except OSError as exc:
        raise BacktestError(f"--out {db}: unusable: {exc.strerror or exc}", 2) from None


def _check_out(db: Path) -> None:
    if db.exists() and not _is_backtest_db(db):
        raise BacktestError(f"{db} exists and is not a backtest database: refusing to replace it", 2)
    if not db.exists():
        for suffix in ("-wal", "-shm", "-journal"):
            stray = Path(f"{db}{suffix}")
            if stray.exists():
                raise BacktestError(f"{stray} exists without {db}: not this run's to delete; move it away", 2)
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
        if not db.parent.is_dir():
            raise NotADirectoryError(20, "Not a directory")
    except OSError as exc:
        raise BacktestError(f"--out {db}: cannot create its folder: {exc.strerror or exc}", 2) from None


class _OutLock:
    """An exclusive lock on ``--out`` for the run (``<out>.lock``) and the temporary database in the
    same folder that replaces ``--out`` only at the end (``commit``): two runs on one --out never
    write into, or report, each other's file."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self.lock_path = Path(f"{db}.lock")
        self.temp = db.with_name(f".{db.name}.{os.getpid()}.tmp")
        self.fd = -1

    def __enter__(self) -> _OutLock:
        try:
            self.fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise BacktestError(f"--out {self.db}: cannot be written: {exc.strerror or exc}", 2) from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            raise BacktestError(
                f"--out {self.db}: another backtest is writing it; use another --out", 2
            ) from None
        check_out(self.db)  # again, under the lock
        self._remove_temp()
        return self

    def commit(self) -> None:
        for suffix in ("-wal", "-shm", "-journal"):
            Path(f"{self.db}{suffix}").unlink(missing_ok=True)  # the old backtest's (checked above)
        os.replace(self.temp, self.db)

    def _remove_temp(self) -> None:
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{self.temp}{suffix}").unlink(missing_ok=True)

    def __exit__(self, *exc: object) -> None:
        # The lock file stays: unlinking it would let two later runs lock two different files.
        try:
            self._remove_temp()
        finally:
            os.close(self.fd)


def _is_backtest_db(path: Path) -> bool:
    """Whether ``path`` is a backtest's database (its marker row). Not a database, or one without the
    status table: False. A database that cannot be read now (locked, damaged): ``BacktestError``, so
    the one line says why rather than calling it foreign."""
    try:
        conn = ledger.open_readonly(path)
    except ledger.LedgerError:
        return False
    try:
        return conn.execute("SELECT 1 FROM status WHERE key = ?", [BACKTEST_MARKER]).fetchone() is not None
    except sqlite3.DatabaseError as exc:
        text = str(exc)
        if "no such table" in text or "not a database" in text:
            return False
        raise BacktestError(f"{path} cannot be read: {text}", 2) from None
    finally:
        conn.close()


AMBIGUOUS_TABLE = "ambiguous_minutes"


def write_ambiguous_minutes(db: Database, rows: Iterable[tuple[str, int, int, str]]) -> None:
    """The run's ``ambiguous_minutes(symbol, minute_ms, message_id, decided_by)``: each minute whose
    order of high and low decided something for the trade of that signal; ``decided_by`` is "path"
    (the path rule: the trade is ambiguous) or "aggTrades" (the cached trades). The table exists,
    empty, in every backtest's database (``shortfsm data --ambiguous`` tells it from an older one)."""
    db.execute(
        f"CREATE TABLE IF NOT EXISTS {AMBIGUOUS_TABLE} (symbol TEXT NOT NULL, minute_ms INTEGER NOT NULL, "
        "message_id INTEGER NOT NULL, decided_by TEXT NOT NULL, PRIMARY KEY (symbol, minute_ms, message_id))"
    )
    db.conn.executemany(f"INSERT OR REPLACE INTO {AMBIGUOUS_TABLE} VALUES (?, ?, ?, ?)", sorted(rows))


class _InlineStore(Store):
    """The daemon's ``Store`` (same statements, same order) with each write run at once on the
    caller's thread: the backtest is its file's only user (under ``_OutLock``), so the DB thread's
    hop per row and the event loop's wake-up for each answer are pure overhead. A failing write is
    counted and logged and its future holds the error, as on the DB thread (nobody awaits it).
    Rows are written in one open transaction until a write's own ``with db.conn`` commits it (or
    ``close``): one commit per command batch rather than per journal row. Journal rows (one per
    engine input) are held and inserted ``JOURNAL_BATCH`` at a time, and at ``close``: their
    ``seq`` is numbered at once, as the daemon's, and nothing reads the journal while the run goes
    on; a failing batch counts as one failed write."""

    def __init__(self, db: Database, path: str | Path, pool: ThreadPoolExecutor) -> None:
        super().__init__(db, path, pool)
        self._journal_rows: list[tuple[int, int, str, ev.Event, str]] = []
        self._written: asyncio.Future[None] | None = None  # a done future for the rows held

    def journal(self, event: ev.Event, out: str) -> asyncio.Future[None]:
        self.journal_seq += 1
        self._journal_rows.append((self.journal_seq, event.now_ms, type(event).__name__, event, out))
        if len(self._journal_rows) >= JOURNAL_BATCH:
            return self.submit(self._write_journal)
        if self._written is None:
            self._written = asyncio.get_running_loop().create_future()
            self._written.set_result(None)
        return self._written

    def save_snapshot(self, now_ms: int, snapshot: dict[str, Any]) -> asyncio.Future[None]:
        # The snapshot row records the journal's last seq (MAX(seq)): the held rows go in first.
        if self._journal_rows:
            self.submit(self._write_journal)
        return super().save_snapshot(now_ms, snapshot)

    def _write_journal(self, db: Database) -> None:
        rows, self._journal_rows = self._journal_rows, []
        db.conn.executemany(JOURNAL_INSERT, [(s, t, n, encode_event(e), o) for s, t, n, e, o in rows])

    def submit(self, fn: Callable[[Database], T], *, retry: bool = True) -> asyncio.Future[T]:
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        try:
            if not self.db.conn.in_transaction:
                self.db.conn.execute("BEGIN")
            future.set_result(fn(self.db))
        except Exception as exc:
            if isinstance(exc, sqlite3.Error):
                self.errors += 1
                self.last_problem = (problem_kind(exc), str(exc))
                log.exception("database write failed")
            future.set_exception(exc)
            future.exception()  # retrieved: a dropped future does not warn
        return future

    async def close(self) -> None:
        if not self.closed and self._journal_rows:
            self.submit(self._write_journal)
        if not self.closed and self.db.conn.in_transaction:
            self.db.conn.commit()
        await super().close()


async def _run(*, db: Path, result: BacktestResult, **kwargs: Any) -> None:
    store = await _InlineStore.open(db)
    # A backtest's database is rebuilt by running again: no fsync per row (the daemon's durability).
    store.db.conn.execute("PRAGMA synchronous=OFF")  # (outside a transaction: before any write)
    try:
        backtest = Backtest(store=store, result=result, **kwargs)
        marker = {"path": result.path, "dense": result.dense, "since_ms": kwargs["since_ms"]}
        store.set_status(BACKTEST_MARKER, marker, kwargs["since_ms"])
        try:
            await backtest.run()
            backtest.settle_funding()
        finally:
            await backtest.finish()
        result.ambiguous_keys = set(backtest.ambiguous)
        store.submit(lambda db: write_ambiguous_minutes(db, backtest.minute_rows))
        store.save_snapshot(backtest.clock.now_ms(), backtest.engine.snapshot())
    finally:
        await store.close()
