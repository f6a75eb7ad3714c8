"""aggTrades resolve the ambiguous minutes (D-74), the user's flow through the real ``shortfsm`` CLI in
subprocesses: a backtest lists the minute whose order of high and low decided its trade; ``shortfsm
data --ambiguous`` fetches that minute's aggTrades over REST from binance/sim on loopback; the next
backtest takes the order from the trades, so both paths agree and the report counts it resolved."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from backtest_kit import (
    MINUTE,
    SIGNAL_MS,
    SINCE_MS,
    ambiguous_bars,
    feed_line,
    leading_text,
    shortfsm,
    write_cache,
    write_feed,
)

from binance.history.archive import AggTrades
from binance.history.cli import AMBIGUOUS_TABLE, BACKTEST_MARKER
from binance.history.store import Store
from binance.sim.clock import SimClock
from binance.sim.exchange import SimExchange
from binance.sim.server import SimVenue
from fsm.harness import backtest

D = Decimal
MINUTE_0102 = SINCE_MS + 62 * MINUTE  # 01:02: high 3470 (second-entry levels), low 2850 (TP levels)
HIGH_FIRST: tuple[str, ...] = ("3011", "3200", "3470", "3100", "2850", "2900")
LOW_FIRST = ("3011", "2950", "2850", "3300", "3470", "2900")


def setup(tmp: Path) -> tuple[Path, Path]:
    write_cache(tmp / "cache", "ETHUSDT", ambiguous_bars())
    feed = write_feed(tmp / "feed.jsonl", [feed_line(101, SIGNAL_MS, leading_text("ETH"))])
    return feed, tmp / "cache"


def run_backtest(tmp: Path, feed: Path, cache: Path) -> tuple[int, dict[str, Any], str]:
    done = shortfsm(
        *("backtest", "--feed", str(feed), "--cache", str(cache), "--since", "2026-03-01"),
        *("--until", "2026-03-01", "--capital", "1000", "--path", "both", "--json"),
        *("--out", str(tmp / "bt.db")),
        cwd=tmp,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, json.loads(done.stdout) if done.stdout else {}, done.stderr


def minute_rows(db: Path) -> list[tuple[str, int, int, str]]:
    conn = sqlite3.connect(db)
    try:
        return [tuple(r) for r in conn.execute(f"SELECT * FROM {AMBIGUOUS_TABLE} ORDER BY 1, 2, 3")]
    finally:
        conn.close()


def venue_with_trades(prices: tuple[str, ...]) -> SimExchange:
    """binance/sim whose market traded ``prices`` through 01:02, one every 10 s (a move of the last
    price is a trade of the venue's own market)."""
    clock = SimClock(MINUTE_0102)
    ex = SimExchange(clock=clock)
    for k, price in enumerate(prices):
        clock.set(MINUTE_0102 + k * 10_000)
        ex.set_mark("ETHUSDT", D(price))
    clock.set(MINUTE_0102 + 5 * MINUTE)
    return ex


def fetch(tmp: Path, ex: SimExchange, *extra: str) -> subprocess.CompletedProcess[str]:
    async def scenario() -> subprocess.CompletedProcess[str]:
        async with SimVenue(ex) as v:
            args: tuple[str, ...] = ("data", "--ambiguous", str(tmp / "bt.db"))
            args += ("--ambiguous", str(tmp / "bt.optimistic.db"))
            args += ("--cache", str(tmp / "cache"), "--rest-url", v.rest_url, *extra)
            return await asyncio.to_thread(shortfsm, *args, cwd=tmp)

    return asyncio.run(asyncio.wait_for(scenario(), 120))


def test_the_constants_the_data_command_reads_are_the_backtests() -> None:
    assert (AMBIGUOUS_TABLE, BACKTEST_MARKER) == (backtest.AMBIGUOUS_TABLE, backtest.BACKTEST_MARKER)


def trade(run: dict[str, Any]) -> dict[str, Any]:
    (only,) = run["trades"]
    return dict(only)


def report(tmp: Path, db: str) -> dict[str, Any]:
    done = shortfsm("report", "--db", db, "--capital", "1000", "--json", cwd=tmp)
    assert (done.returncode, done.stderr) == (0, "")
    doc: dict[str, Any] = json.loads(done.stdout)
    return doc


# Pessimistic (high first): ENTRY2 at 3461.50 (avg 3200.353659 of 0.287), then the breakeven exit.
HIGH_FIRST_TRADE = {
    "legs": ["ENTRY1", "ENTRY2", "BE"],
    "entry_avg": "3200.353659",
    "exit_avg": "3200.35",
    "realized_pnl": "0.0011",
    "fees": "0.3674",
    "net": "-0.3664",
    "close_reason": "flat: BE filled",
}
# Optimistic (low first): the take-profit fills at 2859.50 before the high: (3010 - 2859.50) x 0.166.
LOW_FIRST_TRADE = {
    "legs": ["ENTRY1", "TP"],
    "entry_avg": "3010.00",
    "exit_avg": "2859.50",
    "realized_pnl": "24.9830",
    "fees": "0.1949",
    "net": "24.7881",
    "close_reason": "flat: TP filled",
}


def shape(run: dict[str, Any]) -> dict[str, Any]:
    return {k: trade(run)[k] for k in HIGH_FIRST_TRADE}


def counts(run: dict[str, Any]) -> tuple[object, ...]:
    keys = ("ambiguous_trades", "ambiguous_minutes", "ambiguous_resolved_by_aggtrades", "aggtrades_problems")
    return tuple(run[k] for k in keys)


def first_run(tmp: Path) -> tuple[Path, Path]:
    """The backtest before any aggTrades: the minute brackets the outcome, and is listed."""
    feed, cache = setup(tmp)
    code, first, _ = run_backtest(tmp, feed, cache)
    assert code == 0
    pessimistic, optimistic = first["runs"]
    assert shape(pessimistic) == HIGH_FIRST_TRADE and shape(optimistic) == LOW_FIRST_TRADE
    assert counts(pessimistic) == counts(optimistic) == (1, 1, 0, [])
    for db in ("bt.db", "bt.optimistic.db"):
        assert minute_rows(tmp / db) == [("ETHUSDT", MINUTE_0102, 101, "path")]
    assert report(tmp, "bt.db")["ambiguity"] == {
        "trades": 1,
        "of_trades": 1,
        "minutes": 1,
        "resolved_by_aggtrades": 0,
    }
    return feed, cache


@pytest.mark.parametrize(
    ("prices", "expected"),
    [(HIGH_FIRST, HIGH_FIRST_TRADE), (LOW_FIRST, LOW_FIRST_TRADE)],
    ids=["high", "low"],
)
def test_the_fetched_trades_decide_the_minute_for_both_paths(
    tmp_path: Path, prices: tuple[str, ...], expected: dict[str, Any]
) -> None:
    feed, cache = first_run(tmp_path)
    got = fetch(tmp_path, venue_with_trades(prices))
    assert (got.returncode, "Traceback" in got.stderr) == (0, False)
    # One minute (listed in both databases), one request, the venue's six trades of 01:02.
    assert "ETHUSDT         1        0         1        6          1             0" in got.stdout
    code, second, _ = run_backtest(tmp_path, feed, cache)
    assert code == 0
    pessimistic, optimistic = second["runs"]
    assert shape(pessimistic) == shape(optimistic) == expected
    assert second["bracket"]["pessimistic"] == second["bracket"]["optimistic"] == expected["net"]
    assert counts(pessimistic) == counts(optimistic) == (0, 0, 1, [])
    note = "1 minute(s) whose order of high and low the cached aggTrades decided (not ambiguous)"
    assert note in pessimistic["notes"] and note in optimistic["notes"]  # the text output's notes
    assert minute_rows(tmp_path / "bt.db") == [("ETHUSDT", MINUTE_0102, 101, "aggTrades")]
    assert report(tmp_path, "bt.db")["ambiguity"] == {
        "trades": 0,
        "of_trades": 1,
        "minutes": 0,
        "resolved_by_aggtrades": 1,
    }
    table = shortfsm("report", "--db", "bt.db", "--capital", "1000", cwd=tmp_path, columns=160)
    assert (
        "Ambiguous trades" in table.stdout
        and "0 minute(s) decided by the path rule, 1 by aggTrades" in table.stdout
    )
    # The new databases list no minute the path rule decided: nothing left to fetch, exit 0.
    again = fetch(tmp_path, venue_with_trades(prices))
    assert (again.returncode, again.stderr) == (
        0,
        "shortfsm data: no ambiguous minute listed: nothing to fetch\n",
    )


def cached_trades(cache: Path, prices: tuple[float, ...]) -> None:
    """``prices`` as the cached aggTrades of 01:02, one every 10 s."""
    n = len(prices)
    trades = AggTrades(
        list(range(1, n + 1)),
        list(prices),
        [0.5] * n,
        list(range(1, n + 1)),
        list(range(1, n + 1)),
        [MINUTE_0102 + k * 10_000 for k in range(n)],
        [False] * n,
        {"price": 1, "qty": 1},
    )
    store = Store(cache)
    try:
        store.write_agg("ETHUSDT", MINUTE_0102, trades, source="test", now_ms=0)
    finally:
        store.close()


@pytest.mark.parametrize(
    ("prices", "problem"),
    [
        ((3011.0, 3400.0, 2850.0, 2900.0), "its 4 aggTrades span 2850.0..3400.0"),
        ((), "its 0 aggTrades span no trade"),
    ],
    ids=["other-high", "empty"],
)
def test_trades_that_disagree_with_the_candle_are_a_data_problem_and_the_path_rule_decides(
    tmp_path: Path, prices: tuple[float, ...], problem: str
) -> None:
    feed, cache = setup(tmp_path)
    cached_trades(cache, prices)
    result = backtest.run_backtest(
        feed, cache, since_ms=SINCE_MS, capital=D(1000), path="optimistic", db_path=tmp_path / "o.db"
    )
    assert result.agg_problems == [
        f"ETHUSDT 2026-03-01T01:02:00Z: {problem}, the 1m candle 2850.0..3470.0; the path rule decides it"
    ]
    assert result.data_problems  # exit 1 from the CLI
    assert f"aggTrades not used: {result.agg_problems[0]}" in result.notes  # said in the text output
    assert (result.ambiguous_trades, result.ambiguous_minutes, result.ambiguous_resolved) == (1, 1, 0)
    (t,) = result.trades
    assert (t.legs, t.exit_avg) == (("ENTRY1", "TP"), D("2859.50"))  # optimistic: low first
    assert minute_rows(tmp_path / "o.db") == [("ETHUSDT", MINUTE_0102, 101, "path")]


def test_without_cached_trades_the_run_is_unchanged_and_nothing_of_aggtrades_is_created(
    tmp_path: Path,
) -> None:
    feed, cache = setup(tmp_path)
    result = backtest.run_backtest(feed, cache, since_ms=SINCE_MS, capital=D(1000), db_path=tmp_path / "p.db")
    assert (result.ambiguous_resolved, result.agg_problems) == (0, [])
    assert not (cache / "aggTrades").exists()


def test_a_trade_stays_ambiguous_while_one_of_its_minutes_is_still_decided_by_the_path(
    tmp_path: Path,
) -> None:
    # Optimistic: the second entry fills in 01:02 (3470 high) and the breakeven exit in 01:03, both
    # minutes holding another leg's level: two ambiguous minutes for trade 101.
    bars = ambiguous_bars()
    bars[MINUTE_0102] = (3011.0, 3470.0, 3000.0, 3465.0)
    bars[MINUTE_0102 + MINUTE] = (3465.0, 3700.0, 3100.0, 3200.0)
    for t in range(MINUTE_0102 + 2 * MINUTE, SINCE_MS + 180 * MINUTE, MINUTE):
        bars[t] = (3200.0, 3200.0, 3200.0, 3200.0)
    write_cache(tmp_path / "cache", "ETHUSDT", bars)
    feed = write_feed(tmp_path / "feed.jsonl", [feed_line(101, SIGNAL_MS, leading_text("ETH"))])

    def run() -> backtest.BacktestResult:
        return backtest.run_backtest(
            feed,
            tmp_path / "cache",
            since_ms=SINCE_MS,
            capital=D(1000),
            path="optimistic",
            db_path=tmp_path / "o.db",
        )

    before = run()
    assert (before.ambiguous_trades, before.ambiguous_minutes, before.ambiguous_resolved) == (1, 2, 0)
    cached_trades(tmp_path / "cache", (3011.0, 3000.0, 3470.0, 3465.0))  # 01:02 only, low first
    after = run()
    assert (after.ambiguous_trades, after.ambiguous_minutes, after.ambiguous_resolved) == (1, 1, 1)
    assert after.agg_problems == []
    assert minute_rows(tmp_path / "o.db") == [
        ("ETHUSDT", MINUTE_0102, 101, "aggTrades"),
        ("ETHUSDT", MINUTE_0102 + MINUTE, 101, "path"),
    ]


@pytest.mark.parametrize("damage", ["truncated", "klines-schema"])
def test_an_unreadable_aggtrades_file_is_a_data_problem_and_the_path_rule_decides(
    tmp_path: Path, damage: str
) -> None:
    feed, cache = setup(tmp_path)
    cached_trades(cache, (3011.0, 2850.0, 3470.0, 2900.0))
    path = cache / "aggTrades" / "ETHUSDT" / "2026-03.parquet"
    if damage == "truncated":
        with path.open("r+b") as f:
            f.truncate(300)
    else:
        path.write_bytes((cache / "klines" / "ETHUSDT" / "2026-03.parquet").read_bytes())
    result = backtest.run_backtest(
        feed, cache, since_ms=SINCE_MS, capital=D(1000), path="optimistic", db_path=tmp_path / "o.db"
    )
    (line,) = result.agg_problems
    assert line.startswith(f"{path}: unreadable (")
    assert line.endswith(
        "); the path rule decides its minutes "
        "(shortfsm data --ambiguous moves it aside and fetches them again)"
    )
    assert result.data_problems
    assert (result.ambiguous_trades, result.ambiguous_minutes, result.ambiguous_resolved) == (1, 1, 0)
    (t,) = result.trades
    assert (t.legs, t.exit_avg) == (("ENTRY1", "TP"), D("2859.50"))  # optimistic: low first
