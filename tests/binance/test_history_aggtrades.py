"""aggTrades in the market data cache (D-74): fetched per minute over REST from binance/sim on loopback
(paged by ``fromId`` past 1000 rows), stored in the Parquet store with per-minute coverage (a minute
without a trade is covered and empty), bad answers leave the minute unfetched; the simulator answers
``GET /fapi/v1/aggTrades`` as Binance documents it; ``shortfsm data --ambiguous`` refuses what it
cannot use in one line."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from collections.abc import Coroutine
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import pytest
from test_history_kit import ms

from binance.errors import BinanceError
from binance.history import MarketCache
from binance.history.cache import AggReport
from binance.history.rest_history import HistoryRest
from binance.history.store import Store
from binance.sim.clock import SimClock
from binance.sim.exchange import SimExchange
from binance.sim.server import RestFault, SimVenue

T = TypeVar("T")
D = Decimal
MINUTE = ms("2026-01-03T12:00")
MIN = 60_000
SHORTFSM = Path(sys.executable).parent / "shortfsm"


def run(coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout))


def busy_venue(in_minute: int, after: int = 10) -> SimExchange:
    """BTCUSDT (tick 0.1, starting at 95000) traded ``in_minute`` times inside MINUTE (every 20 ms,
    prices 94000.0, 94000.1, .. 94004.9, 94000.0, ..: each a move of the last price) and ``after``
    times in the next minute."""
    clock = SimClock(MINUTE)
    ex = SimExchange(clock=clock)
    for k in range(in_minute + after):
        clock.set(MINUTE + k * 20 if k < in_minute else MINUTE + MIN + (k - in_minute) * 20)
        ex.set_mark("BTCUSDT", D("94000.0") + D(k % 50) / 10)
    clock.set(MINUTE + 10 * MIN)
    return ex


async def ensure(root: Path, url: str, *minutes: int) -> tuple[AggReport, MarketCache]:
    cache = MarketCache(root, rest=url)
    try:
        return await cache.aensure_agg("BTCUSDT", minutes), cache
    finally:
        await cache.aclose()


def test_a_busy_minute_is_paged_by_from_id_and_stored_whole(tmp_path: Path) -> None:
    ex = busy_venue(2500)

    async def scenario() -> None:
        async with SimVenue(ex) as v:
            report, cache = await ensure(tmp_path, v.rest_url, MINUTE + 30_000)  # any ms of the minute
            # 1000 by the minute's window, then 1000 and 510 (500 + 10 of the next minute) by fromId.
            assert (report.minutes, report.fetched, report.rows, report.requests) == (1, 1, 2500, 3)
            assert report.failed == []
            assert [p for _, p in v.requests] == ["/fapi/v1/aggTrades"] * 3
            trades = cache.agg_trades("BTCUSDT", MINUTE)
            assert trades is not None and len(trades) == 2500
            first = ex.market_trades["BTCUSDT"][0][0]
            assert trades.ids == list(range(first, first + 2500))
            assert trades.times == sorted(trades.times) and trades.times[-1] == MINUTE + 2499 * 20
            assert (trades.prices[0], trades.prices[1], trades.qtys[0]) == (94000.0, 94000.1, 0.001)
            assert trades.buyer_maker[:3] == [
                True,
                False,
                False,
            ]  # a fall from 95000, then rises
            cache.close()
            again, cache = await ensure(tmp_path, v.rest_url, MINUTE)
            assert (again.cached, again.fetched, again.requests) == (1, 0, 0)  # covered: nothing sent
            cache.close()

    run(scenario())


def test_a_minute_without_a_trade_is_covered_and_empty_unlike_one_never_fetched(tmp_path: Path) -> None:
    ex = busy_venue(5, after=0)

    async def scenario() -> None:
        async with SimVenue(ex) as v:
            report, cache = await ensure(tmp_path, v.rest_url, MINUTE + 2 * MIN)
            assert (report.fetched, report.rows, report.requests, report.failed) == (1, 0, 1, [])
            empty = cache.agg_trades("BTCUSDT", MINUTE + 2 * MIN)
            assert empty is not None and len(empty) == 0
            assert cache.agg_trades("BTCUSDT", MINUTE + 3 * MIN) is None  # never fetched
            assert cache.agg_trades("BTCUSDT", MINUTE) is None
            cache.close()

    run(scenario())


def test_a_minute_whose_stored_rows_are_gone_is_not_covered(tmp_path: Path) -> None:
    ex = busy_venue(5, after=0)

    async def scenario() -> None:
        async with SimVenue(ex) as v:
            _, cache = await ensure(tmp_path, v.rest_url, MINUTE)
            cache.close()
            (tmp_path / "aggTrades" / "BTCUSDT" / "2026-01.parquet").unlink()
            assert Store(tmp_path).agg_trades("BTCUSDT", MINUTE) is None
            again, cache = await ensure(tmp_path, v.rest_url, MINUTE)  # fetched again
            assert (again.cached, again.fetched, again.rows) == (0, 1, 5)
            cache.close()

    run(scenario())


@pytest.mark.parametrize(
    ("fault", "why"),
    [
        (
            RestFault("GET", "/fapi/v1/aggTrades", "status", status=200, body='[{"a": 1, "p": "95000.0"}]'),
            "REST aggTrades BTCUSDT 2026-01-03T12:00Z row 1: 'f' is None, not an integer",
        ),
        (
            RestFault(
                "GET", "/fapi/v1/aggTrades", "status", status=200, body='[{"a": 1, "p": 95000.0', count=3
            ),
            'REST aggTrades: unreadable body: \'[{"a": 1, "p": 95000.0\'',
        ),
        (
            RestFault("GET", "/fapi/v1/aggTrades", "status", status=200, body='{"code": 0}'),
            "REST aggTrades BTCUSDT 2026-01-03T12:00Z: expected a JSON array, got dict",
        ),
        (
            RestFault(
                "GET",
                "/fapi/v1/aggTrades",
                "status",
                status=400,
                body='{"code":-1121,"msg":"Invalid symbol."}',
            ),
            "REST aggTrades: Invalid symbol.",
        ),
    ],
    ids=["row", "json", "object", "code"],
)
def test_a_bad_answer_leaves_the_minute_unfetched_and_says_why(
    tmp_path: Path, fault: RestFault, why: str
) -> None:
    ex = busy_venue(5, after=0)

    async def scenario() -> None:
        async with SimVenue(ex) as v:
            v.faults.add(fault)
            report, cache = await ensure(tmp_path, v.rest_url, MINUTE)
            assert report.fetched == 0 and len(report.failed) == 1
            minute, text = report.failed[0]
            assert (minute, text) == (MINUTE, why)
            assert cache.agg_trades("BTCUSDT", MINUTE) is None
            cache.close()
            again, cache = await ensure(tmp_path, v.rest_url, MINUTE)  # the next run fetches it
            assert (again.fetched, again.rows, again.failed) == (1, 5, [])
            cache.close()

    run(scenario())


def test_a_ban_stops_rest_for_the_run_and_every_minute_left_says_so(tmp_path: Path) -> None:
    ex = busy_venue(5, after=0)

    async def scenario() -> None:
        async with SimVenue(ex) as v:
            v.faults.banned_until_ms = MINUTE + 60 * MIN
            report, cache = await ensure(tmp_path, v.rest_url, MINUTE, MINUTE + MIN, MINUTE + 2 * MIN)
            assert report.fetched == 0 and [m for m, _ in report.failed] == [
                MINUTE,
                MINUTE + MIN,
                MINUTE + 2 * MIN,
            ]
            assert len({why for _, why in report.failed}) == 1 and "banned" in report.failed[0][1]
            assert len(v.requests) == 1  # nothing sent into the ban
            cache.close()

    run(scenario())


def test_the_sim_answers_agg_trades_as_binance_documents_it() -> None:
    ex = busy_venue(3, after=0)

    async def scenario() -> None:
        async with SimVenue(ex) as v:
            rest = HistoryRest(api_key="", api_secret="", base_url=v.rest_url, clock_ms=lambda: MINUTE)
            try:
                rows = await rest.agg_trades("BTCUSDT", MINUTE, MINUTE + MIN - 1, None)
                a = rows[0]["a"]
                assert rows == [
                    {"a": a, "p": "94000.0", "q": "0.001", "f": a, "l": a, "T": MINUTE, "m": True},
                    {
                        "a": a + 1,
                        "p": "94000.1",
                        "q": "0.001",
                        "f": a + 1,
                        "l": a + 1,
                        "T": MINUTE + 20,
                        "m": False,
                    },
                    {
                        "a": a + 2,
                        "p": "94000.2",
                        "q": "0.001",
                        "f": a + 2,
                        "l": a + 2,
                        "T": MINUTE + 40,
                        "m": False,
                    },
                ]
                assert await rest.agg_trades("BTCUSDT", None, None, a + 2) == rows[2:]
                with pytest.raises(BinanceError) as window:  # "must be less than 1 hour"
                    await rest.agg_trades("BTCUSDT", MINUTE, MINUTE + 3_600_000, None)
                assert (window.value.code, window.value.http_status) == (-1127, 400)
            finally:
                await rest.aclose()

    run(scenario())


def test_the_sims_own_fills_are_trades_of_its_market() -> None:
    ex = SimExchange(clock=SimClock(MINUTE), api_keys={"k": "s"})
    ex.set_mark("BTCUSDT", D("94990.0"))  # a fall from 95000: the buyer was the maker
    ex.new_order({"symbol": "BTCUSDT", "side": "SELL", "type": "MARKET", "quantity": "0.010"})
    rows = ex.agg_trades({"symbol": "BTCUSDT"})
    assert [(r["p"], r["q"], r["m"]) for r in rows] == [
        ("94990.0", "0.001", True),
        ("94990.0", "0.010", True),
    ]


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SHORTFSM), "data", *args], capture_output=True, text=True, cwd=cwd, timeout=60, check=False
    )


def backtest_db(path: Path, *, table: bool = True, marker: bool = True) -> Path:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE status (key TEXT PRIMARY KEY, value TEXT, updated_ms INTEGER)")
    if marker:
        conn.execute("INSERT INTO status VALUES ('meta.backtest', '{}', 0)")
    if table:
        conn.execute("CREATE TABLE ambiguous_minutes (symbol, minute_ms, message_id, decided_by)")
        conn.execute("INSERT INTO ambiguous_minutes VALUES ('BTCUSDT', ?, 7, 'path')", [MINUTE])
        conn.execute("INSERT INTO ambiguous_minutes VALUES ('BTCUSDT', ?, 8, 'aggTrades')", [MINUTE + MIN])
    conn.commit()
    conn.close()
    return path


@pytest.mark.parametrize(
    ("make", "extra", "says"),
    [
        (None, (), "--ambiguous missing.db: no such database"),
        ("plain", (), "--ambiguous bt.db: not a backtest's database"),
        ("old", (), "written before backtests recorded their ambiguous minutes; run the backtest again"),
        ("ok", ("--symbol", "BTCUSDT"), "--ambiguous goes on its own"),
    ],
)
def test_data_ambiguous_refuses_what_it_cannot_use_in_one_line(
    tmp_path: Path, make: str | None, extra: tuple[str, ...], says: str
) -> None:
    name = "missing.db" if make is None else "bt.db"
    if make is not None:
        backtest_db(tmp_path / name, table=make != "old", marker=make != "plain")
    done = cli("--ambiguous", name, "--cache", "c", *extra, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr == f"shortfsm data: {says}\n" or says in done.stderr
    assert "Traceback" not in done.stderr


def test_data_ambiguous_offline_lists_the_minutes_it_could_not_fetch_and_exits_1(tmp_path: Path) -> None:
    backtest_db(tmp_path / "bt.db")
    done = cli("--ambiguous", "bt.db", "--cache", "c", "--offline", cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    # Only the minute the path rule decided is asked for (the other was decided by aggTrades).
    assert "not fetched BTCUSDT aggTrades 2026-01-03T12:00:00Z: --offline: not fetched" in done.stdout
    assert "12:01" not in done.stdout
