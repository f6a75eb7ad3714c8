"""The second attack on D-71's funding reads, each break a test: a host clock that was wrong, a
database locked by another process during the read, a skipped row told again at every retry.
Real daemon, real SQLite file, the real client over loopback to ``binance/sim``."""

from __future__ import annotations

import sqlite3
import threading
from decimal import Decimal
from pathlib import Path

import pytest
import runtime_kit as kit

from binance import reconcile
from binance.sim.exchange import FUNDING_PERIOD_MS, SimError
from fsm.runtime.daemon import RunClock
from fsm.runtime.feeds import PricePath

ETH_LEADING = (1000, kit.ENTRY_CHAT, 1001, kit.LEADING.format(ticker="ETH"))
SETTLEMENT = 1_767_225_600_000 + FUNDING_PERIOD_MS  # 2026-01-01 08:00 UTC
HELD = PricePath(  # short 1.414 ETH @ 3535.00 from 5 s on
    base={"ETHUSDT": Decimal("3500.00")},
    points=kit.points([(3, "ETHUSDT", "3532.00"), (5, "ETHUSDT", "3536.00")]),
)
HOUR = 3_600_000
INCOME = ("GET", "/fapi/v1/income")


async def _skewed_daemon(venue: kit.Venue, tmp: Path, feed: Path, skew_ms: int) -> kit.Run:
    """A daemon whose host clock is ``skew_ms`` ahead of the venue's (a VM before NTP synced)."""
    clock = RunClock(speed=venue.clock.speed, origin_ms=venue.clock.now_ms() + skew_ms)
    return await venue.start_daemon(tmp, feed, clock=clock)


async def _held_then_stopped(venue: kit.Venue, tmp: Path, feed: Path) -> None:
    """The first daemon opens the short (PHASE1) and stops before the settlement."""
    first = await venue.start_daemon(tmp, feed)
    await kit.wait_until(lambda: first.seen.has("ETHUSDT ENTRY_ORDER->PHASE1"))
    assert await first.stop() == 0


def _funding(tmp_path: Path) -> list[tuple[object, ...]]:
    return kit.rows(tmp_path, "SELECT symbol, venue_time_ms FROM funding")


@pytest.mark.spec("N-28")
def test_a_run_on_a_host_clock_hours_ahead_leaves_no_mark_in_the_future(tmp_path: Path) -> None:
    """The window and the mark are the venue's time (the client's measured offset), so the run on
    the wrong clock marks no future; the settlement while no daemon ran is booked by the next."""
    feed = kit.write_feed(tmp_path, [ETH_LEADING])
    marks: list[int] = []

    async def scenario() -> None:
        async with kit.Venue(HELD, origin_ms=SETTLEMENT - 30_000, settle_funding=True) as venue:
            await _held_then_stopped(venue, tmp_path, feed)
            second = await _skewed_daemon(venue, tmp_path, feed, 3 * HOUR)
            await kit.wait_until(lambda: second.seen.has("recovery_lock RECOVERING->READY"))
            await kit.wait_until(lambda: not second.daemon._side_tasks)  # its funding read is over
            assert await second.stop() == 0
            ((mark,),) = kit.rows(tmp_path, "SELECT value FROM meta WHERE key = 'funding_read_to'")
            marks.append(int(mark))
            assert int(mark) <= venue.clock.now_ms()
            await kit.wait_until(lambda: venue.exchange.funding_rows != [], timeout=12)
            third = await venue.start_daemon(tmp_path, feed)
            await kit.wait_until(lambda: _funding(tmp_path) != [])
            assert await third.stop() == 0

    kit.run(scenario(), timeout=45)
    assert marks[0] < SETTLEMENT
    assert _funding(tmp_path) == [("ETHUSDT", SETTLEMENT)]


@pytest.mark.spec("N-28")
def test_a_mark_ahead_of_the_venue_clock_reads_the_last_day_again(tmp_path: Path) -> None:
    """A database whose mark a wrong clock put in the future (written before the fix above)."""
    feed = kit.write_feed(tmp_path, [ETH_LEADING])

    async def scenario() -> None:
        async with kit.Venue(HELD, origin_ms=SETTLEMENT - 20_000, settle_funding=True) as venue:
            await _held_then_stopped(venue, tmp_path, feed)
            with sqlite3.connect(tmp_path / "db.sqlite") as conn:
                future = str(SETTLEMENT + 5 * HOUR)
                conn.execute("UPDATE meta SET value = ? WHERE key = 'funding_read_to'", [future])
            await kit.wait_until(lambda: venue.at(22) and venue.exchange.funding_rows != [])
            second = await venue.start_daemon(tmp_path, feed)
            await kit.wait_until(lambda: _funding(tmp_path) != [])
            assert await second.stop() == 0

    kit.run(scenario(), timeout=30)
    assert _funding(tmp_path) == [("ETHUSDT", SETTLEMENT)]


@pytest.mark.spec("N-28")
def test_a_database_locked_during_the_read_is_a_failed_read_told_retried_and_then_told_booked(
    tmp_path: Path,
) -> None:
    feed = kit.write_feed(tmp_path, [ETH_LEADING])

    async def scenario() -> None:
        async with kit.Venue(HELD, origin_ms=SETTLEMENT - 20_000, settle_funding=True) as venue:
            await _held_then_stopped(venue, tmp_path, feed)
            await kit.wait_until(lambda: venue.at(22) and venue.exchange.funding_rows != [])
            routes = venue.harness.venue._routes
            real = routes[INCOME]

            def locking(params: dict[str, str]) -> object:
                # Another process (a report, a backup) takes the write lock for 2 s as the read runs.
                other = sqlite3.connect(tmp_path / "db.sqlite", check_same_thread=False, isolation_level=None)
                other.execute("BEGIN IMMEDIATE")
                threading.Timer(2.0, lambda: (other.execute("COMMIT"), other.close())).start()
                routes[INCOME] = real
                return real[1](params)

            routes[INCOME] = (real[0], locking)
            second = await venue.start_daemon(tmp_path, feed)
            booked = "SELECT 1 FROM alerts WHERE kind = 'funding' AND text LIKE '%funding received%'"
            await kit.wait_until(lambda: kit.rows(tmp_path, booked) != [], timeout=15)
            assert await second.stop() == 0

    kit.run(scenario(), timeout=40)
    assert _funding(tmp_path) == [("ETHUSDT", SETTLEMENT)]
    texts = [
        str(t) for (t,) in kit.rows(tmp_path, "SELECT text FROM alerts WHERE kind = 'funding' ORDER BY id")
    ]
    assert texts[0].startswith("funding history could not be read (database: ")
    assert texts[1].startswith("while shortfsm was down: funding received on ETHUSDT")
    assert len(texts) == 2


def test_a_skipped_row_is_told_once_however_often_the_read_is_tried_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reconcile, "INCOME_PAGE", 2)
    feed = kit.write_feed(tmp_path, [ETH_LEADING])
    calls: list[int] = []

    async def scenario() -> None:
        async with kit.Venue(HELD, origin_ms=SETTLEMENT - HOUR, speed=100.0, settle_funding=True) as venue:
            routes = venue.harness.venue._routes
            first_start: list[int] = []

            def route(params: dict[str, str]) -> list[dict[str, object]]:
                calls.append(1)
                start = int(params["startTime"])
                first_start[:] = first_start or [start]
                if start == first_start[0]:  # page 1, full: one row it cannot use, one good
                    row = {"symbol": "ETHUSDT", "incomeType": "FUNDING_FEE", "income": "-0.1"}
                    row |= {"asset": "USDT", "time": start, "tranId": 7}
                    return [{**row, "income": "n/a", "tranId": 6}, row]
                raise SimError(-1000, "An unknown error occurred while processing the request.", 500)

            routes[INCOME] = (routes[INCOME][0], route)
            run = await venue.start_daemon(tmp_path, feed)
            await kit.wait_until(lambda: len(calls) >= 8, timeout=20)  # four tries of two pages
            assert await run.stop() == 0

    kit.run(scenario(), timeout=40)
    texts = [
        str(t) for (t,) in kit.rows(tmp_path, "SELECT text FROM alerts WHERE kind = 'funding' ORDER BY id")
    ]
    skipped = [t for t in texts if "could not be read, not booked" in t]
    failed = [t for t in texts if t.startswith("funding history could not be read")]
    assert (len(skipped), len(failed)) == (1, 1), texts
