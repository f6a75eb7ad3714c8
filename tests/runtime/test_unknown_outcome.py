"""Unknown order outcomes through the real daemon and the simulated venue (issue #11 items 1 and 2).

The order's answer is lost (HTTP 408 / -1007, as real Binance answered in March 2026), the user
stream stays silent about it, and the first queries fail: the daemon must neither send the order
again nor take it for a rejection, and nothing of ours may stay live on the venue once flat."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
import runtime_kit as kit

from binance.sim.server import RestFault
from fsm import events as ev

ETH_LEADING = (1000, kit.ENTRY_CHAT, 1001, kit.LEADING.format(ticker="ETH"))
TIMEOUT_1007 = (
    '{"code":-1007,"msg":"Timeout waiting for response from backend server. '
    'Send status unknown; execution status unknown."}'
)
QUERY_FAILS = RestFault("GET", "/fapi/v1/order", "html", status=502, count=2)
# W55 with a jump through the target: the limit entry crosses and fills as the venue takes it.
CROSSING_PATH = kit.PricePath(
    base={"ETHUSDT": kit.Decimal("3500.00")},
    points=kit.points([(3, "ETHUSDT", "3536.00"), (8, "ETHUSDT", "3360.00"), (14, "ETHUSDT", "3358.00")]),
)


def lost_answer() -> RestFault:
    return RestFault("POST", "/fapi/v1/order", "status", status=408, body=TIMEOUT_1007, after_accept=True)


def resolved(seen: kit.Seen, cid: str) -> list[str]:
    return [e.outcome for e, _ in seen.items if isinstance(e, ev.OrderResolved) and e.client_order_id == cid]


@pytest.mark.spec("W33", "W35")
def test_lost_entry_answer_is_never_resent_and_its_fill_is_booked_once(tmp_path: Path) -> None:
    feed = kit.write_feed(tmp_path, [ETH_LEADING])

    async def scenario() -> None:
        async with kit.Venue(CROSSING_PATH) as venue:
            sim = venue.harness.venue
            sim.faults.add(lost_answer())
            sim.faults.add(QUERY_FAILS)
            venue.exchange.hold_user_events()  # the stream says nothing of the order or its fill
            run = await venue.start_daemon(tmp_path, feed)
            await kit.wait_until(lambda: "found" in resolved(run.seen, "sf1001-E11-ETHUSDT"))
            assert resolved(run.seen, "sf1001-E11-ETHUSDT") == ["failed", "failed", "found"]
            assert run.daemon.engine.state_of("ETHUSDT") == "PHASE1"
            venue.exchange.release_user_events()  # the late pushes change nothing
            await kit.wait_until(lambda: run.seen.has("ETHUSDT EXITING->IDLE"))
            assert await run.stop() == 0
            entries = [o for o in venue.exchange.orders.values() if o.client_id == "sf1001-E11-ETHUSDT"]
            assert [(o.status, o.executed) for o in entries] == [("FILLED", Decimal("1.414"))]
            assert [(o.client_id, o.status) for o in venue.exchange.orders.values()] == [
                ("sf1001-E11-ETHUSDT", "FILLED"),
                ("sf1001-TP1-ETHUSDT", "FILLED"),
            ]
            assert venue.exchange.positions[("ETHUSDT", "BOTH")].amount == 0

    kit.run(scenario())
    fills = kit.rows(tmp_path, "SELECT client_order_id, qty FROM fills ORDER BY rowid")
    assert fills == [("sf1001-E11-ETHUSDT", "1.414"), ("sf1001-TP1-ETHUSDT", "1.414")]


@pytest.mark.spec("R12", "W40")
def test_lost_tp_answer_is_not_a_rejection_and_nothing_stays_live(tmp_path: Path) -> None:
    feed = kit.write_feed(tmp_path, [ETH_LEADING])

    async def scenario() -> None:
        async with kit.Venue(kit.W55_PATH) as venue:
            sim = venue.harness.venue
            run = await venue.start_daemon(tmp_path, feed)
            await kit.wait_until(lambda: run.daemon.engine.state_of("ETHUSDT") == "PHASE1")
            sim.faults.add(lost_answer())  # the next order is the TP
            sim.faults.add(QUERY_FAILS)
            venue.exchange.hold_user_events()
            await kit.wait_until(lambda: "found" in resolved(run.seen, "sf1001-TP1-ETHUSDT"))
            venue.exchange.release_user_events()
            await kit.wait_until(lambda: run.seen.has("ETHUSDT EXITING->IDLE"))
            assert await run.stop() == 0
            assert [(o.client_id, o.type, o.status) for o in venue.exchange.orders.values()] == [
                ("sf1001-E11-ETHUSDT", "LIMIT", "FILLED"),
                ("sf1001-TP1-ETHUSDT", "LIMIT", "FILLED"),
            ]  # no market fallback (R12 is for a refusal) and nothing left open
            rejected = [e for e, _ in run.seen.items if isinstance(e, ev.OrderRejected)]
            assert rejected == []

    kit.run(scenario())


@pytest.mark.spec("R20", "W37")
def test_lost_fill_push_is_read_back_and_the_position_managed(tmp_path: Path) -> None:
    """The entry's ORDER_TRADE_UPDATE is lost while the stream stays up and ACCOUNT_UPDATE arrives:
    after the grace the order is read back (fill booked with the venue's trade id), PHASE1, TP."""
    feed = kit.write_feed(tmp_path, [ETH_LEADING])

    async def scenario() -> None:
        async with kit.Venue(kit.W55_PATH) as venue:
            ex = venue.exchange
            run = await venue.start_daemon(tmp_path, feed)
            await kit.wait_until(lambda: run.seen.accepted("sf1001-E11-ETHUSDT"))
            ex.hold_user_events()
            await kit.wait_until(
                lambda: any(
                    o.client_id == "sf1001-E11-ETHUSDT" and o.status == "FILLED" for o in ex.orders.values()
                )
            )
            held = ex.user_faults.held
            lost = [p for p, _ in held if p.get("e") == "ORDER_TRADE_UPDATE"]
            ex.user_faults.held = [(p, k) for p, k in held if p.get("e") != "ORDER_TRADE_UPDATE"]
            assert lost and ex.user_faults.held  # the fill push is dropped, the position push kept
            ex.release_user_events()
            await kit.wait_until(lambda: run.seen.has("ETHUSDT EXITING->IDLE"))
            assert await run.stop() == 0
            mismatch = kit.logs(run.seen, "position_mismatch")
            assert [(s, r) for s, r, _ in mismatch] == [("ETHUSDT", "reading_orders_back")]
            assert kit.logs(run.seen, "position_sync") == []  # never booked as an outside change
            assert [(o.client_id, o.price, o.status) for o in ex.orders.values()] == [
                ("sf1001-E11-ETHUSDT", Decimal("3535.00"), "FILLED"),
                ("sf1001-TP1-ETHUSDT", Decimal("3358.25"), "FILLED"),
            ]

    kit.run(scenario())
    fills = kit.rows(tmp_path, "SELECT client_order_id, qty, price FROM fills ORDER BY rowid")
    assert fills == [("sf1001-E11-ETHUSDT", "1.414", "3535.00"), ("sf1001-TP1-ETHUSDT", "1.414", "3358.25")]
