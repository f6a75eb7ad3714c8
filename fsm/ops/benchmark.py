"""The buy-and-hold benchmark of ``shortfsm report``: BTCUSDT bought at the period's start and held.

Return (%) = (last close / first open - 1) x 100, where the first open is the open of the first
cached 1m kline (``binance/history``, dataset ``klines``) opening at or after the period's start,
and the last close the close of the last 1m kline closing at or before its end (a candle opened at
``t`` closes at ``t + 1 min``). The period is the report's (``metrics.Metrics.start_ms`` ..
``end_ms``), so the benchmark and the strategy are measured over the same time. No fees, funding or
leverage: the plain price change. The times shown are the candles', so a cache that starts late or
ends early says so instead of pretending to cover the period.

Where the cache comes from: a backtest's database names the cache it ran on (``SOURCE_KEY`` in its
``status`` table, written by ``shortfsm backtest``); ``shortfsm report --cache DIR`` overrides it,
and is the only way for the daemon's own database (the daemon keeps no market history). Without a
cache, or without BTCUSDT klines in the period, the benchmark is "not available" with the reason,
never a made-up number.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

from fsm.runtime import ledger

SYMBOL = "BTCUSDT"
DATASET = "klines"
MINUTE_MS = 60_000
SOURCE_KEY = "meta.backtest_source"  # status row of a backtest's database: {"cache": ..., ...}
CURVE_POINTS = 400  # the price line drawn on the equity chart: at most this many closes
PCT = Decimal("0.0001")


@dataclass(frozen=True, slots=True, kw_only=True)
class Benchmark:
    """Buy and hold ``symbol`` over a period; ``why`` says why it is not available (then the
    figures are None)."""

    symbol: str = SYMBOL
    start_ms: int | None = None  # the first candle's open time
    end_ms: int | None = None  # the last candle's close time
    open: Decimal | None = None
    close: Decimal | None = None
    why: str | None = None
    curve: tuple[tuple[int, Decimal], ...] = field(default=())  # (close time, close), thinned

    @property
    def return_pct(self) -> Decimal | None:
        if self.open is None or self.close is None or self.open <= 0:
            return None
        return (self.close / self.open - 1) * 100

    def as_dict(self) -> dict[str, Any]:
        """JSON: ``symbol, start, end, open, close, return_pct`` (to 0.0001) and ``not_available``
        (the reason, or None when available)."""
        pct = self.return_pct
        shown = None if pct is None else format(_q(pct), "f")
        return {
            "symbol": self.symbol,
            "start": ledger.iso_utc(self.start_ms) if self.start_ms is not None else None,
            "end": ledger.iso_utc(self.end_ms) if self.end_ms is not None else None,
            "open": _plain(self.open),
            "close": _plain(self.close),
            "return_pct": shown,
            "not_available": self.why,
        }

    def row(self, places: Decimal = PCT) -> tuple[str, str, str]:
        """The report's figure row (label, value, note)."""
        label = f"Buy and hold {self.symbol}"
        pct = self.return_pct
        if pct is None:
            return (label, "—", f"not available: {self.why}")
        start = ledger.iso_utc(self.start_ms or 0)[:16].replace("T", " ")
        end = ledger.iso_utc(self.end_ms or 0)[:16].replace("T", " ")
        return (
            label,
            f"{_q(pct, places)} %",
            f"{_plain(self.open)} -> {_plain(self.close)}, {start} to {end} (no fees, no leverage)",
        )


def _q(value: Decimal, places: Decimal = PCT) -> Decimal:
    rounded = value.quantize(places, rounding=ROUND_HALF_UP)
    return rounded if rounded else abs(rounded)  # never "-0.00"


def _plain(value: Decimal | None) -> str | None:
    return None if value is None else format(value.normalize(), "f")


def unavailable(why: str) -> Benchmark:
    return Benchmark(why=why)


def compute(cache_root: Path | None, start_ms: int | None, end_ms: int | None) -> Benchmark:
    """The benchmark over ``[start_ms, end_ms]`` from the cache at ``cache_root`` (module docstring).
    Never raises for missing or unreadable data: the reason is in ``why``."""
    if cache_root is None:
        return unavailable("no market data cache (the daemon keeps none: give --cache DIR)")
    if start_ms is None or end_ms is None:
        return unavailable("no closed trade, so no period")
    if not cache_root.is_dir():
        return unavailable(f"no market data cache at {cache_root}")
    if not (cache_root / DATASET / SYMBOL).is_dir():
        return unavailable(f"no {SYMBOL} klines in {cache_root} (shortfsm data --feed fetches them)")
    from binance.history.store import CorruptMonth, Store, exact

    first = -(-start_ms // MINUTE_MS) * MINUTE_MS  # the first candle opening at or after the start
    last_open = end_ms - MINUTE_MS  # ... the last one closing at or before the end
    if last_open < first:
        return unavailable("the period is shorter than one minute")
    store = Store(cache_root)
    try:
        columns = store.read(SYMBOL, DATASET, first, last_open + 1)
    except (CorruptMonth, OSError, ValueError) as exc:
        return unavailable(f"{SYMBOL} klines in {cache_root} cannot be read: {exc}")
    finally:
        store.close()
    times: list[int] = columns["open_time"]
    if not times:
        period = f"{ledger.iso_utc(start_ms)} to {ledger.iso_utc(end_ms)}"
        return unavailable(f"no {SYMBOL} 1m kline in {cache_root} from {period}")
    opened, closed = columns["open"][0], columns["close"][-1]
    if opened is None or closed is None or opened <= 0 or closed <= 0:
        return unavailable(f"{SYMBOL} klines in {cache_root} hold a price that is not one")
    step = max(1, len(times) // CURVE_POINTS)
    picks = list(range(0, len(times), step))
    if picks[-1] != len(times) - 1:
        picks.append(len(times) - 1)
    curve = tuple(
        (times[i] + MINUTE_MS, exact(columns["close"][i])) for i in picks if columns["close"][i] is not None
    )
    return Benchmark(
        start_ms=times[0],
        end_ms=times[-1] + MINUTE_MS,
        open=exact(opened),
        close=exact(closed),
        curve=((times[0], exact(opened)), *curve),
    )


def recorded_cache(conn: sqlite3.Connection) -> Path | None:
    """The cache a backtest's database says it ran on (``SOURCE_KEY``), or None (the daemon's
    database, an older backtest's, or a row that does not parse)."""
    try:
        row = conn.execute("SELECT value FROM status WHERE key = ?", [SOURCE_KEY]).fetchone()
    except sqlite3.Error:
        return None
    if row is None:
        return None
    try:
        cache = json.loads(row[0]).get("cache")
    except (ValueError, AttributeError):
        return None
    return Path(cache) if isinstance(cache, str) and cache else None


def record_source(db: Path, *, cache: Path, feed: Path, since_ms: int, until_ms: int | None) -> None:
    """Name the run's cache and feed in the backtest database ``db`` (``SOURCE_KEY``), so its report
    finds the benchmark's data; ``OSError``/``sqlite3.Error`` when the file cannot be written."""
    value = json.dumps(
        {
            "cache": str(cache.resolve()),
            "feed": str(feed.resolve()),
            "since_ms": since_ms,
            "until_ms": until_ms,
        }
    )
    conn = sqlite3.connect(db, timeout=5.0)
    try:
        with conn:
            conn.execute(
                "INSERT INTO status(key, value, updated_ms) VALUES (?, ?, ?) ON CONFLICT(key) DO UPDATE "
                "SET value = excluded.value, updated_ms = excluded.updated_ms",
                [SOURCE_KEY, value, since_ms],
            )
    finally:
        conn.close()
