"""Funding the stream did not tell (issue #14): settlements while no daemon ran are read from the
venue's income history at the next start and booked once, with an alert; a settlement the stream
already booked is recognised and not booked again. Real daemon, real SQLite file, the real client
over loopback to ``binance/sim`` settling funding as Binance does (00, 08, 16 UTC)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest
import runtime_kit as kit

from binance.sim.exchange import FUNDING_PERIOD_MS, SimError
from fsm import events as ev
from fsm.runtime.feeds import PricePath
from fsm.runtime.store import Store

ETH_LEADING = (1000, kit.ENTRY_CHAT, 1001, kit.LEADING.format(ticker="ETH"))
SETTLEMENT = 1_767_225_600_000 + FUNDING_PERIOD_MS  # 2026-01-01 08:00 UTC
HELD = PricePath(  # W55 up to PHASE1: short 1.414 ETH @ 3535.00, the mark stays at 3536
    base={"ETHUSDT": Decimal("3500.00")},
    points=kit.points([(3, "ETHUSDT", "3532.00"), (5, "ETHUSDT", "3536.00")]),
)


def _venue() -> kit.Venue:
    # The settlement falls 20 venue seconds after the origin (2 s of wall time at 10x).
    return kit.Venue(HELD, origin_ms=SETTLEMENT - 20_000, settle_funding=True)


async def _short_held(venue: kit.Venue, tmp_path: Path, feed: Path) -> kit.Run:
    """The first daemon, once it holds the short (PHASE1)."""
    run = await venue.start_daemon(tmp_path, feed)
    await kit.wait_until(lambda: run.seen.has("ETHUSDT ENTRY_ORDER->PHASE1"))
    return run


def _expected(venue: kit.Venue) -> Decimal:
    rate = venue.exchange.funding_rate_at("ETHUSDT", SETTLEMENT)
    return (Decimal("1.414") * Decimal("3536.00") * rate).quantize(Decimal("0.00000001"))


def _run(
    tmp_path: Path, *, down_at_settlement: bool, forget_cursor: bool = False
) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]], Decimal]:
    feed = kit.write_feed(tmp_path, [ETH_LEADING])
    out: dict[str, object] = {}

    async def scenario() -> None:
        async with _venue() as venue:
            first = await _short_held(venue, tmp_path, feed)
            if not down_at_settlement:
                await kit.wait_until(
                    lambda: venue.at(22) and len(kit.rows(tmp_path, "SELECT 1 FROM funding")) == 1
                )
            assert await first.stop() == 0
            if forget_cursor:  # a database the previous version wrote: no mark of funding booked
                with sqlite3.connect(tmp_path / "db.sqlite") as conn:
                    conn.execute("DELETE FROM meta WHERE key = 'funding_read_to'")
            await kit.wait_until(lambda: venue.at(22) and venue.exchange.funding_rows != [])
            second = await venue.start_daemon(tmp_path, feed)
            await kit.wait_until(lambda: second.seen.has("recovery_lock RECOVERING->READY"))
            await kit.wait_until(lambda: len(kit.rows(tmp_path, "SELECT 1 FROM funding")) == 1)
            await asyncio.sleep(0.3)  # a second booking would land now (the read is under way)
            assert await second.stop() == 0
            out["expected"] = _expected(venue)

    kit.run(scenario(), timeout=20)
    funding = kit.rows(tmp_path, "SELECT symbol, asset, amount, venue_time_ms FROM funding ORDER BY id")
    alerts = kit.rows(tmp_path, "SELECT kind, symbol, text FROM alerts WHERE kind = 'funding'")
    expected = out["expected"]
    assert isinstance(expected, Decimal)
    return funding, alerts, expected


@pytest.mark.spec("N-28")
def test_funding_settled_while_no_daemon_ran_is_booked_once_at_the_next_start_with_an_alert(
    tmp_path: Path,
) -> None:
    funding, alerts, income = _run(tmp_path, down_at_settlement=True)
    assert income > 0  # a short receives a positive rate
    assert funding == [("ETHUSDT", "USDT", f"{income:.8f}", SETTLEMENT)]
    assert alerts == [
        (
            "funding",
            "ETHUSDT",
            "while shortfsm was down: funding received on ETHUSDT: "
            f"{income:.8f} USDT at 2026-01-01 08:00:00 UTC",
        )
    ]


@pytest.mark.spec("N-28")
def test_without_a_mark_of_funding_booked_the_read_starts_an_hour_before_the_last_run_ended(
    tmp_path: Path,
) -> None:
    funding, alerts, income = _run(tmp_path, down_at_settlement=True, forget_cursor=True)
    assert funding == [("ETHUSDT", "USDT", f"{income:.8f}", SETTLEMENT)]
    assert [kind for kind, _, _ in alerts] == ["funding"]


@pytest.mark.spec("N-28")
def test_funding_the_stream_booked_is_not_booked_again_by_the_next_start(tmp_path: Path) -> None:
    funding, alerts, income = _run(tmp_path, down_at_settlement=False)
    assert funding == [("ETHUSDT", "USDT", f"{income:.8f}", SETTLEMENT)]
    assert alerts == []


def test_one_settlement_is_booked_once_whoever_tells_it(tmp_path: Path) -> None:
    """The push and the income row of one settlement may differ by milliseconds, and a push that
    did not name its symbol is booked under "": within 30 minutes and of the same amount they are
    the same settlement; two legs of one symbol settling together are two."""

    def fee(symbol: str, at: int, amount: str = "0.5") -> ev.FundingFee:
        return ev.FundingFee(
            now_ms=at + 9, symbol=symbol, asset="USDT", amount=Decimal(amount), venue_time_ms=at
        )

    async def body() -> None:
        store = await Store.open(tmp_path / "db.sqlite")
        try:
            await store.record_outcome(fee("BTCUSDT", SETTLEMENT + 37))  # the push
            await store.record_outcome(fee("BTCUSDT", SETTLEMENT + 37))  # delivered twice
            later = SETTLEMENT + FUNDING_PERIOD_MS
            await store.record_outcome(fee("", later + 12))  # a push without its symbol
            booked = await store.book_funding(
                [
                    fee("BTCUSDT", SETTLEMENT, "0.50"),  # the push's, told with another scale
                    fee("BTCUSDT", later),
                    fee("ETHUSDT", later + FUNDING_PERIOD_MS, "-0.2"),
                    fee("ETHUSDT", later + FUNDING_PERIOD_MS, "0.3"),  # the other leg (hedge mode)
                ]
            )
            assert booked == [
                fee("ETHUSDT", later + FUNDING_PERIOD_MS, "-0.2"),
                fee("ETHUSDT", later + FUNDING_PERIOD_MS, "0.3"),
            ]
        finally:
            await store.close()

    kit.run(body())
    assert kit.rows(tmp_path, "SELECT symbol, amount, venue_time_ms FROM funding ORDER BY id") == [
        ("BTCUSDT", "0.5", SETTLEMENT + 37),
        ("", "0.5", SETTLEMENT + FUNDING_PERIOD_MS + 12),
        ("ETHUSDT", "-0.2", SETTLEMENT + 2 * FUNDING_PERIOD_MS),
        ("ETHUSDT", "0.3", SETTLEMENT + 2 * FUNDING_PERIOD_MS),
    ]


def test_a_database_from_before_keeps_its_funding_and_takes_both_legs(tmp_path: Path) -> None:
    """Schema 7 kept one row per (symbol, asset, time): the migration keeps every row and lifts that."""
    from sqlite_utils import Database

    from fsm.runtime.store import MIGRATIONS, connect

    path = tmp_path / "db.sqlite"
    old = Database(sqlite3.connect(path))
    old.table("meta").create({"key": str, "value": str}, pk="key")
    for migration in MIGRATIONS[:7]:
        migration(old)
    old.execute("INSERT INTO meta VALUES ('schema_version', '7')")
    insert = (
        "INSERT INTO funding (symbol, asset, amount, venue_time_ms, now_ms) "
        "VALUES ('ETHUSDT', 'USDT', ?, ?, ?)"
    )
    old.execute(insert, ["-0.2", SETTLEMENT, SETTLEMENT + 5])
    old.conn.commit()
    old.conn.close()
    db = connect(path)
    db.execute(insert, ["0.3", SETTLEMENT, SETTLEMENT + 6])
    assert db.execute("SELECT id, amount FROM funding ORDER BY id").fetchall() == [(1, "-0.2"), (2, "0.3")]
    db.conn.close()


Route = Callable[[dict[str, str]], list[object]]


def _failing(times: int, real: Route) -> tuple[list[int], Route]:
    """An income route that answers -1000 ``times`` times, then as ``real`` does."""
    calls: list[int] = []

    def answer(params: dict[str, str]) -> list[object]:
        calls.append(1)
        if len(calls) <= times:
            raise SimError(-1000, "An unknown error occurred while processing the request.")
        return real(params)

    return calls, answer


def _down_then_back(tmp_path: Path, failures: int, *, wait_for_booking: bool) -> dict[str, object]:
    """A settlement while no daemon ran; the next run's income reads fail ``failures`` times."""
    feed = kit.write_feed(tmp_path, [ETH_LEADING])
    out: dict[str, object] = {}

    async def scenario() -> None:
        async with _venue() as venue:
            first = await _short_held(venue, tmp_path, feed)
            assert await first.stop() == 0
            await kit.wait_until(lambda: venue.at(22) and venue.exchange.funding_rows != [])
            routes = venue.harness.venue._routes
            real = routes[("GET", "/fapi/v1/income")][1]
            calls, answer = _failing(failures, real)
            routes[("GET", "/fapi/v1/income")] = ("SIGNED", answer)
            second = await venue.start_daemon(tmp_path, feed)
            await kit.wait_until(lambda: len(calls) >= 1 and "funding" in _kinds(tmp_path))
            if wait_for_booking:  # the retry comes 60 venue seconds later (6 s here)
                await kit.wait_until(
                    lambda: len(kit.rows(tmp_path, "SELECT 1 FROM funding")) == 1, timeout=12
                )
            assert await second.stop() == 0
            out["calls"] = len(calls)
            out["cursor"] = kit.rows(tmp_path, "SELECT value FROM meta WHERE key = 'funding_read_to'")
            out["booked_before_third"] = kit.rows(tmp_path, "SELECT amount FROM funding")
            if not wait_for_booking:
                routes[("GET", "/fapi/v1/income")] = ("SIGNED", real)
                third = await venue.start_daemon(tmp_path, feed)
                await kit.wait_until(lambda: len(kit.rows(tmp_path, "SELECT 1 FROM funding")) == 1)
                assert await third.stop() == 0
            out["expected"] = _expected(venue)

    kit.run(scenario(), timeout=30)
    out["funding"] = kit.rows(tmp_path, "SELECT symbol, amount, venue_time_ms FROM funding")
    out["alerts"] = kit.rows(tmp_path, "SELECT severity, text FROM alerts WHERE kind = 'funding' ORDER BY id")
    return out


def _kinds(tmp_path: Path) -> set[str]:
    return {str(k) for (k,) in kit.rows(tmp_path, "SELECT kind FROM alerts")}


@pytest.mark.spec("N-28")
def test_a_failed_funding_read_is_told_and_tried_again_until_it_books(tmp_path: Path) -> None:
    out = _down_then_back(tmp_path, 1, wait_for_booking=True)
    income = out["expected"]
    assert out["calls"] == 2
    assert out["funding"] == [("ETHUSDT", f"{income:.8f}", SETTLEMENT)]
    severities = [severity for severity, _ in out["alerts"]]  # type: ignore[attr-defined]
    assert severities == ["warning", "info"]
    first_text = out["alerts"][0][1]  # type: ignore[index]
    assert first_text.startswith("funding history could not be read (")
    assert first_text.endswith("may be missing from the ledger; read again in 60 s")


@pytest.mark.spec("N-28")
def test_a_restart_after_a_failed_funding_read_reads_again_from_where_it_started(tmp_path: Path) -> None:
    """Only a complete read moves the mark of funding booked: the first run's read at its start
    (nothing before it) left it there, the second run's failed read did not move it, so the third
    run, however much later, reads from there and books the settlement."""
    out = _down_then_back(tmp_path, 99, wait_for_booking=False)
    income = out["expected"]
    assert out["booked_before_third"] == []
    ((cursor,),) = out["cursor"]  # type: ignore[misc]
    assert SETTLEMENT - 20_000 <= int(cursor) < SETTLEMENT
    assert out["funding"] == [("ETHUSDT", f"{income:.8f}", SETTLEMENT)]
    texts = [text for _, text in out["alerts"]]  # type: ignore[attr-defined]
    assert texts[-1].startswith("while shortfsm was down: funding received on ETHUSDT")
