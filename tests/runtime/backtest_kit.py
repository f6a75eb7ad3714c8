"""Synthetic market data and feeds for the backtest tests, written through ``binance.history``'s own store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from binance.history.archive import Parsed
from binance.history.store import Store
from fsm.harness.scenario import LEADING_TEMPLATE

MINUTE = 60_000
SINCE_MS = int(datetime(2026, 3, 1, tzinfo=UTC).timestamp() * 1000)
SIGNAL_MS = SINCE_MS + 60 * MINUTE + 5_000  # 01:00:05
ENTRY_CHAT = -1002171239233

Bar = tuple[float, float, float, float]


def flat(price: float) -> Bar:
    return (price, price, price, price)


def write_cache(
    root: Path,
    symbol: str,
    bars: dict[int, Bar],
    *,
    datasets: tuple[str, ...] = ("klines", "markPriceKlines"),
) -> None:
    """The minutes ``bars`` (open time -> o, h, l, c) as both the traded and the mark 1m candles."""
    times = sorted(bars)
    columns: dict[str, list[float | None]] = {
        name: [bars[t][i] for t in times] for i, name in enumerate(("open", "high", "low", "close"))
    }
    store = Store(root)
    try:
        for dataset in datasets:
            store.write(symbol, dataset, Parsed(times, dict(columns), dict.fromkeys(columns, 2)))
    finally:
        store.close()


def history(until_ms: int, price: float = 3000.0) -> dict[int, Bar]:
    """Flat minutes from 11 h before the run to ``until_ms``, the 00:59 candle reaching 3010 (the
    aggressive target: the high of the last closed 3m candle before the signal)."""
    bars = {t: flat(price) for t in range(SINCE_MS - 11 * 60 * MINUTE, until_ms, MINUTE)}
    bars[SINCE_MS + 59 * MINUTE] = (3000.0, 3010.0, 3000.0, 3000.0)
    return bars


def tp_bars(end_ms: int = SINCE_MS + 180 * MINUTE) -> dict[int, Bar]:
    """Entry in 01:01 (mark up to 3012: trigger 3006.99, limit 3010), then a slow fall (at most
    1.1 a second) through the take-profit placement (2862.3595) and its limit (2859.50) in 01:09."""
    bars = history(end_ms)
    bars[SINCE_MS + 61 * MINUTE] = (3000.0, 3012.0, 2999.0, 3011.0)
    for k in range(12):
        o = 3011.0 - 20 * k
        bars[SINCE_MS + (62 + k) * MINUTE] = (o, o + 1, o - 21, o - 20)
    for t in range(SINCE_MS + 74 * MINUTE, end_ms, MINUTE):
        bars[t] = flat(2771.0)
    return bars


def ambiguous_bars(end_ms: int = SINCE_MS + 180 * MINUTE) -> dict[int, Bar]:
    """Entry as ``tp_bars``, then one minute (01:02) whose range holds the second-entry level above
    (3458.0385 / 3461.50) and the take-profit levels below (2862.3595 / 2859.50)."""
    bars = history(end_ms)
    bars[SINCE_MS + 61 * MINUTE] = (3000.0, 3012.0, 2999.0, 3011.0)
    bars[SINCE_MS + 62 * MINUTE] = (3011.0, 3470.0, 2850.0, 2900.0)
    for t in range(SINCE_MS + 63 * MINUTE, end_ms, MINUTE):
        bars[t] = flat(2900.0)
    return bars


def leading_text(ticker: str, *, rank: int = 15, category: str = "AI") -> str:
    return LEADING_TEMPLATE.format(
        ticker=ticker, funding="-0.0100", change="+8.50", direction="상승", rank=rank, category=category
    )


def feed_line(message_id: int, at_ms: int, text: str, chat_id: int = ENTRY_CHAT) -> str:
    """One line as ``shortfsm export`` writes it (``at_ms`` from the --since midnight)."""
    payload = {
        "at_ms": at_ms - SINCE_MS,
        "chat_id": chat_id,
        "message_id": message_id,
        "date_ms": at_ms,
        "text": text,
    }
    return json.dumps(payload, ensure_ascii=False)


def write_feed(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


D = Decimal


def write_funding(root: Path, symbol: str, rows: list[tuple[int, float]]) -> None:
    """Funding settlements (time, rate) as the archive stores them (no mark price)."""
    store = Store(root)
    try:
        times = [t for t, _ in rows]
        columns: dict[str, list[float | None]] = {
            "funding_rate": [r for _, r in rows],
            "mark_price": [None] * len(rows),
        }
        store.write(symbol, "fundingRate", Parsed(times, columns, {"funding_rate": 6, "mark_price": 0}))
    finally:
        store.close()


def mdd_bars(end_ms: int = SINCE_MS + 180 * MINUTE) -> dict[int, Bar]:
    """Entry in 01:01, the second entry (3461.50) in 01:02, then 01:03 up through the MDD stop; each
    minute's low is its open, so the optimistic path (low first) walks straight up."""
    bars = history(end_ms)
    bars[SINCE_MS + 61 * MINUTE] = (3000.0, 3012.0, 3000.0, 3011.0)
    bars[SINCE_MS + 62 * MINUTE] = (3011.0, 3470.0, 3011.0, 3465.0)
    bars[SINCE_MS + 63 * MINUTE] = (3465.0, 3700.0, 3465.0, 3690.0)
    for t in range(SINCE_MS + 64 * MINUTE, end_ms, MINUTE):
        bars[t] = flat(3690.0)
    return bars


ROOT = Path(__file__).resolve().parents[2]


def shortfsm(*args: str, cwd: Path, columns: int = 100) -> subprocess.CompletedProcess[str]:
    """The real CLI in a subprocess, as a user runs it (no terminal, a fixed width)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": str(columns)}
    return subprocess.run(
        [sys.executable, "-m", "fsm.ops.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
