"""aggTrades in the market data cache (D-74): fetched per minute over REST from binance/sim on loopback
(paged by ``fromId`` past 1000 rows), stored in the Parquet store with per-minute coverage (a minute
without a trade is covered and empty), bad answers leave the minute unfetched; the simulator answers
``GET /fapi/v1/aggTrades`` as Binance documents it; ``shortfsm data --ambiguous`` refuses what it
cannot use in one line."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Coroutine
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import pytest
from test_history_kit import Venue, ms, serve_venue

from binance.errors import BinanceError
from binance.history import MarketCache, rest_history
from binance.history import cli as history_cli
from binance.history.archive import AggTrades, Parsed
from binance.history.cache import AggReport
from binance.history.rest_history import Banned, HistoryRest, RestHistory
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


# ---------------------------------------------------------------------------------------------
# A hostile venue (the D-74 attack): answers ``/fapi/v1/aggTrades`` as ``hook`` says, on loopback.
# ---------------------------------------------------------------------------------------------

SOL = "SOLUSDT"


def agg_row(a: int, t: int, p: str = "141.49", q: str = "1") -> dict[str, Any]:
    return {"a": a, "p": p, "q": q, "f": a, "l": a, "T": t, "m": False}


def answers(*bodies: Any) -> tuple[Venue, list[dict[str, str]]]:
    """A venue answering its aggTrades requests with ``bodies`` in turn (JSON-encoded unless bytes),
    the last one again after that; the queries it got."""
    asked: list[dict[str, str]] = []

    def hook(path: str, qs: dict[str, str]) -> tuple[int, bytes, dict[str, str]] | None:
        if path != "/fapi/v1/aggTrades":
            return None
        body = bodies[min(len(asked), len(bodies) - 1)]
        asked.append(qs)
        return 200, body if isinstance(body, bytes) else json.dumps(body).encode(), {}

    return Venue(rest_hook=hook), asked


def by_minute(rows_of: Callable[[int], list[Any]]) -> tuple[Venue, list[dict[str, str]]]:
    """A venue answering a window request with ``rows_of(startTime)``."""
    asked: list[dict[str, str]] = []

    def hook(path: str, qs: dict[str, str]) -> tuple[int, bytes, dict[str, str]] | None:
        if path != "/fapi/v1/aggTrades":
            return None
        asked.append(qs)
        return 200, json.dumps(rows_of(int(qs["startTime"]))).encode(), {}

    return Venue(rest_hook=hook), asked


def sol_ensure(root: Path, venue: Venue, *minutes: int, refetch: bool = False) -> AggReport:
    async def go() -> AggReport:
        cache = MarketCache(root, rest=venue.url)
        try:
            return await cache.aensure_agg(SOL, minutes, refetch=refetch)
        finally:
            await cache.aclose()
            cache.close()

    return run(go())


def stored(root: Path, minute: int) -> tuple[int | None, list[int] | None]:
    """The manifest's count for ``minute`` and the ids the cache gives for it (None: not covered)."""
    store = Store(root)
    try:
        trades = store.agg_trades(SOL, minute)
        count = store.agg_minutes(SOL, minute, minute + MIN).get(minute)
        return count, None if trades is None else trades.ids
    finally:
        store.close()


def test_a_page_repeating_an_id_is_stored_once_and_the_manifest_counts_what_is_stored(tmp_path: Path) -> None:
    page = [agg_row(10, MINUTE + 5_000), agg_row(11, MINUTE + 10_000), agg_row(11, MINUTE + 10_000)]
    page += [agg_row(12, MINUTE + 20_000), agg_row(13, MINUTE + 50_000)]
    venue, asked = answers(page)
    with serve_venue(venue):
        report = sol_ensure(tmp_path, venue, MINUTE)
        assert (report.fetched, report.rows, report.failed) == (1, 4, [])
        assert stored(tmp_path, MINUTE) == (4, [10, 11, 12, 13])
        again = sol_ensure(tmp_path, venue, MINUTE)
        assert (again.cached, again.fetched, again.requests) == (1, 0, 0)  # usable: never sent again
    assert len(asked) == 1


def test_ids_already_stored_for_another_minute_make_the_minute_a_bad_answer(tmp_path: Path) -> None:
    # Both minutes answered with ids 10..13 (each inside the asked window).
    venue, _ = by_minute(lambda start: [agg_row(10 + k, start + k * 1_000) for k in range(4)])
    with serve_venue(venue):
        report = sol_ensure(tmp_path, venue, MINUTE, MINUTE + MIN)
        assert (report.fetched, report.rows) == (1, 4)
        assert report.failed == [
            (
                MINUTE + MIN,
                "REST aggTrades SOLUSDT 2026-01-03T12:01Z: aggregate trade id 10 is stored for "
                "2026-01-03T12:00:00Z; not stored",
            )
        ]
        assert stored(tmp_path, MINUTE) == (4, [10, 11, 12, 13])
        assert stored(tmp_path, MINUTE + MIN) == (None, None)
        again = sol_ensure(tmp_path, venue, MINUTE, MINUTE + MIN)
        assert (again.cached, again.fetched, len(again.failed)) == (1, 0, 1)


FULL = [agg_row(1000 + k, MINUTE + k * 50) for k in range(1000)]
WHERE = "REST aggTrades SOLUSDT 2026-01-03T12:00Z"


@pytest.mark.parametrize(
    ("bodies", "why"),
    [
        (
            [[agg_row(10, MINUTE // 1000 + 30)]],  # T in seconds
            f"{WHERE}: 1 of 1 rows outside the minute asked for (first at T=1767441630); not stored",
        ),
        (
            [[agg_row(10, MINUTE + 5_000), agg_row(11, MINUTE + MIN + 5)]],  # a row of the next minute
            f"{WHERE}: 1 of 2 rows outside the minute asked for (first at T=1767441660005); not stored",
        ),
        (
            [FULL, []],
            f"{WHERE}: a full page of 1000, then none from id 2000 (a past minute of a listed symbol "
            "always has a later trade); not stored",
        ),
        (
            [[agg_row(10, MINUTE + 5_000), agg_row(10, MINUTE + 5_000, p="141.50")]],
            f"{WHERE}: aggregate trade id 10 answered twice with different rows; not stored",
        ),
        (
            [[agg_row(11, MINUTE + 5_000), agg_row(10, MINUTE + 6_000)]],
            f"{WHERE}: ids or times out of order at row 2 (id 10 at 1767441606000); not stored",
        ),
        (
            [[agg_row(2**64, MINUTE + 5_000)]],
            f"{WHERE} row 1: 'a' is 18446744073709551616, not a 64-bit integer",
        ),
        (
            [[agg_row(10, MINUTE + 5_000, p="1_4_1.49")]],
            f"{WHERE} row 1: price '1_4_1.49' is not a decimal (digits, optionally a point and digits)",
        ),
        (
            [[agg_row(10, MINUTE + 5_000, p=" 141.49 ")]],
            f"{WHERE} row 1: price ' 141.49 ' is not a decimal (digits, optionally a point and digits)",
        ),
        (
            [[agg_row(10, MINUTE + 5_000, q="1.5060e2")]],
            f"{WHERE} row 1: quantity '1.5060e2' is not a decimal (digits, optionally a point and digits)",
        ),
    ],
    ids=[
        "seconds",
        "other-minute",
        "full-then-empty",
        "dup-differs",
        "out-of-order",
        "int64",
        "underscore",
        "spaces",
        "exponent",
    ],
)
def test_an_inconsistent_answer_is_a_bad_answer_and_the_run_goes_on(
    tmp_path: Path, bodies: list[Any], why: str
) -> None:
    venue, asked = answers(*bodies)
    with serve_venue(venue):
        report = sol_ensure(tmp_path, venue, MINUTE)
    assert (report.fetched, report.failed) == (0, [(MINUTE, why)])
    assert stored(tmp_path, MINUTE) == (None, None)
    assert len(asked) == len(bodies)


def klines(root: Path, high: float, low: float) -> None:
    store = Store(root)
    try:
        cols: dict[str, list[float | None]] = {"open": [low], "high": [high], "low": [low], "close": [low]}
        store.write(SOL, "klines", Parsed([MINUTE], cols, dict.fromkeys(cols, 2)))
    finally:
        store.close()


@pytest.mark.parametrize(
    ("candle", "why"),
    [
        (None, None),
        ((141.49, 141.49), None),
        (
            (150.6, 141.49),
            f"{WHERE}: the venue answered no trade for a minute whose candle traded from 141.49 to 150.6; "
            "not stored",
        ),
    ],
    ids=["no-candle", "flat", "moving"],
)
def test_an_empty_answer_is_covered_only_when_no_candle_contradicts_it(
    tmp_path: Path, candle: tuple[float, float] | None, why: str | None
) -> None:
    if candle is not None:
        klines(tmp_path, *candle)
    venue, _ = answers([])
    with serve_venue(venue):
        report = sol_ensure(tmp_path, venue, MINUTE)
    if why is None:
        assert (report.fetched, report.rows, report.failed) == (1, 0, [])
        assert stored(tmp_path, MINUTE) == (0, [])
    else:
        assert (report.fetched, report.failed) == (0, [(MINUTE, why)])
        assert stored(tmp_path, MINUTE) == (None, None)


def test_refetch_asks_again_for_cached_minutes_and_replaces_their_rows(tmp_path: Path) -> None:
    wrong, _ = answers([agg_row(10, MINUTE + 1_000), agg_row(11, MINUTE + 2_000)])
    with serve_venue(wrong):
        sol_ensure(tmp_path, wrong, MINUTE)
    right, asked = answers([agg_row(20, MINUTE + 3_000)])
    with serve_venue(right):
        cached = sol_ensure(tmp_path, right, MINUTE)
        assert (cached.cached, cached.requests) == (1, 0)
        again = sol_ensure(tmp_path, right, MINUTE, refetch=True)
    assert (again.cached, again.fetched, again.rows, again.requests) == (0, 1, 1, 1)
    assert stored(tmp_path, MINUTE) == (1, [20])
    assert len(asked) == 1


def test_data_ambiguous_refetch_sends_again_for_a_cached_minute(tmp_path: Path) -> None:
    backtest_db(tmp_path / "bt.db")
    venue, asked = answers([])
    with serve_venue(venue):
        args = ("--ambiguous", "bt.db", "--cache", "c", "--rest-url", venue.url)
        assert cli(*args, cwd=tmp_path).returncode == 0
        assert cli(*args, cwd=tmp_path).returncode == 0  # cached: nothing sent
        refetched = cli(*args, "--refetch", cwd=tmp_path)
    assert (refetched.returncode, refetched.stderr) == (
        0,
        "BTCUSDT aggTrades: REST 2026-01-03T12:00: 0 trades\n",
    )
    assert [q["startTime"] for q in asked] == [str(MINUTE)] * 2


@pytest.mark.parametrize("damage", ["truncated", "klines-schema"])
def test_an_unreadable_month_file_is_moved_aside_said_once_and_its_minutes_fetched_again(
    tmp_path: Path, damage: str
) -> None:
    venue, asked = answers([agg_row(10, MINUTE + 1_000)])
    path = tmp_path / "aggTrades" / SOL / "2026-01.parquet"
    with serve_venue(venue):
        sol_ensure(tmp_path, venue, MINUTE)
        if damage == "truncated":
            with path.open("r+b") as f:
                f.truncate(300)
        else:
            klines(tmp_path, 150.6, 141.49)
            path.write_bytes((tmp_path / "klines" / SOL / "2026-01.parquet").read_bytes())
        report = sol_ensure(tmp_path, venue, MINUTE)
    (line,) = report.problems
    assert line.startswith(f"{path}: unreadable (")
    assert line.endswith("); moved to 2026-01.parquet.corrupt, its minutes fetched again")
    assert (tmp_path / "aggTrades" / SOL / "2026-01.parquet.corrupt").is_file()
    assert (report.cached, report.fetched, report.failed) == (0, 1, [])
    assert stored(tmp_path, MINUTE) == (1, [10])
    assert len(asked) == 2


# -- pacing against a hostile venue (fake clock and sleep: nothing waits for real) ------------


class FakeTime:
    def __init__(self) -> None:
        self.now_ms = MINUTE + 10 * MIN
        self.sleeps: list[float] = []

    def clock(self) -> int:
        return self.now_ms

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now_ms += int(seconds * 1000)


def limited(statuses: list[tuple[int, str | None]]) -> tuple[Venue, list[dict[str, str]]]:
    """A venue answering 429 with each Retry-After of ``statuses`` in turn (None: no header), then
    ``[]``."""
    asked: list[dict[str, str]] = []

    def hook(path: str, qs: dict[str, str]) -> tuple[int, bytes, dict[str, str]] | None:
        if path != "/fapi/v1/aggTrades":
            return None
        asked.append(qs)
        if len(asked) > len(statuses):
            return 200, b"[]", {}
        status, after = statuses[len(asked) - 1]
        headers = {} if after is None else {"Retry-After": after}
        return status, b'{"code":-1003,"msg":"Too many requests."}', headers

    return Venue(rest_hook=hook), asked


def paced_minute(venue: Venue, fake: FakeTime) -> AggTrades:
    async def go() -> AggTrades:
        rest = HistoryRest(
            api_key="", api_secret="", base_url=venue.url, clock_ms=fake.clock, sleep=fake.sleep
        )
        try:
            return await RestHistory(rest, sleep=fake.sleep).agg_minute(SOL, MINUTE)
        finally:
            await rest.aclose()

    return run(go())


def test_a_429_asking_for_more_than_two_minutes_stops_rest_for_the_run() -> None:
    venue, asked = limited([(429, "86400")])
    fake = FakeTime()
    with serve_venue(venue), pytest.raises(Banned) as stop:
        paced_minute(venue, fake)
    assert str(stop.value) == "REST: a 429 asked to wait 86400 s (more than 120 s): no more REST this run"
    assert (len(asked), fake.sleeps) == (1, [])


def test_a_persistent_429_stops_rest_for_the_run() -> None:
    venue, asked = limited([(429, "2")] * 10)
    fake = FakeTime()
    with serve_venue(venue), pytest.raises(Banned) as stop:
        paced_minute(venue, fake)
    assert str(stop.value) == "REST: 4 answers 429 in a row to one request: no more REST this run"
    assert len(asked) == 4


@pytest.mark.parametrize("after", ["0", "-5", None])
def test_a_429_without_a_sane_wait_still_waits_at_least_a_second(after: str | None) -> None:
    venue, asked = limited([(429, after), (429, after)])
    fake = FakeTime()
    with serve_venue(venue):
        got = paced_minute(venue, fake)
    assert len(got) == 0 and len(asked) == 3
    assert fake.sleeps and min(fake.sleeps) >= 1.0


def test_a_trickled_answer_is_cut_at_the_deadline_and_the_run_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rest_history, "REQUEST_DEADLINE_S", 0.5)

    async def scenario() -> AggReport:
        never = asyncio.Event()
        served = 0

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal served
            await reader.readuntil(b"\r\n\r\n")
            served += 1
            if served == 1:  # the first answer: one byte of a hundred, then nothing
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n["
                )
                await writer.drain()
                await never.wait()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n[]")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        cache = MarketCache(tmp_path, rest=f"http://127.0.0.1:{port}")
        try:
            return await cache.aensure_agg(SOL, [MINUTE, MINUTE + MIN])
        finally:
            await cache.aclose()
            cache.close()
            server.close()

    report = run(scenario(), timeout=30)
    assert report.failed == [(MINUTE, "REST aggTrades: no complete answer within 0.5 s")]
    assert (report.fetched, report.requests) == (1, 2)


# -- the databases data --ambiguous reads ----------------------------------------------------


def test_a_database_locked_by_another_process_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = backtest_db(tmp_path / "bt.db")
    monkeypatch.setattr(history_cli, "DB_BUSY_S", 0.05)
    holder = sqlite3.connect(db, isolation_level=None)
    try:
        holder.execute("PRAGMA journal_mode=delete")
        holder.execute("BEGIN EXCLUSIVE")
        with pytest.raises(history_cli.BadArgs) as refused:
            history_cli.ambiguous_minutes(db)
    finally:
        holder.close()
    assert str(refused.value) == (
        f"--ambiguous {db}: locked by another process (a backtest still writing it?); "
        "run again when it is done"
    )


def test_hand_edited_rows_are_skipped_one_line_each_and_the_good_ones_fetched(tmp_path: Path) -> None:
    db = backtest_db(tmp_path / "bt.db")
    conn = sqlite3.connect(db)
    for symbol, minute in (
        ("BTCUSDT", "abc"),
        ("../../x", MINUTE),
        ("BTCUSDT", -MIN),
        ("BTCUSDT", MINUTE + 1),
        (12345, MINUTE),
    ):
        conn.execute("INSERT INTO ambiguous_minutes VALUES (?, ?, 9, 'path')", [symbol, minute])
    conn.commit()
    conn.close()
    venue, asked = answers([])
    with serve_venue(venue):
        done = cli("--ambiguous", "bt.db", "--cache", "c", "--rest-url", venue.url, cwd=tmp_path)
    assert (done.returncode, "Traceback" in done.stderr) == (1, False)
    why = "not a minute start of Binance's history (a multiple of 60000 ms from 2019-09-01)"
    skipped = [line for line in done.stdout.splitlines() if line.startswith("skipped")]
    assert skipped == [
        "skipped bt.db ambiguous_minutes row (12345, 1767441600000): not a symbol: 12345 (a text column)",
        "skipped bt.db ambiguous_minutes row ('../../x', 1767441600000): not a symbol: '../../x' (2-30 ASCII "
        "letters and digits, e.g. BTCUSDT)",
        f"skipped bt.db ambiguous_minutes row ('BTCUSDT', -60000): {why}",
        f"skipped bt.db ambiguous_minutes row ('BTCUSDT', 1767441600001): {why}",
        f"skipped bt.db ambiguous_minutes row ('BTCUSDT', 'abc'): {why}",
    ]
    assert [q["startTime"] for q in asked] == [str(MINUTE)]
