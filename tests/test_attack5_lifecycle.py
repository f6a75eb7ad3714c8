"""Breaks found by an adversarial pass over the order-lifecycle fixes of D-60 (2026-12-04), each
driven through the property harness's engine and venue double, each failing before its fix."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from test_properties import DRAIN, Harness, settled_problems


def _step(harness: Harness, step: dict[str, Any], seconds: int = 0) -> None:
    harness.clock_ms += seconds * 1000
    harness.runner.now_ms = harness.clock_ms
    harness.feed(harness.runner.step_events(step))


def _sent(harness: Harness, symbol: str, leg: str) -> list[str]:
    return [r for r in harness.rendered if r.startswith(f"PlaceOrder(symbol={symbol}") and f"leg={leg} " in r]


@pytest.mark.spec("W43", "W56", "N-28")
def test_a_restart_just_after_the_scale_in_filled_keeps_phase2_and_places_the_mdd_stop() -> None:
    """The PHASE2 snapshot is saved before the orders go out (D-17); a kill -9 before the TP's cancel
    and the MDD stop reach the venue leaves the TP live, the scale-in filled and no stop. Recovery
    rebuilt PHASE1 and sent a second scale-in on the doubled short, with no stop."""
    harness = Harness(mode="aggressive", position_mode="ONE_WAY")
    harness.run(
        [
            ("leading", 0, 0, 1),  # 1000PEPEUSDT monitoring
            ("mark", 0, 0, 1),  # entry placed
            ("fill", 0, 1, 1),  # PHASE1
            ("mark", 0, 1, 1),  # TP placed
            ("mark", 0, 0, 1),  # scale-in placed
            ("hold", 0, 2, 0),  # the next two commands (TP cancel, MDD stop) never go out...
            ("fill", 1, 1, 1),  # ... the scale-in fills: PHASE2
        ]
    )
    restarted_at = len(harness.rendered)
    harness.run([("restart", 0, 0, 1), ("mark", 0, 0, 1), ("tick", 0, 0, 1)])  # kill -9 before they went
    after = harness.rendered[restarted_at:]
    assert harness.engine.symbols["1000PEPEUSDT"].state == "PHASE2"
    assert any("trigger=restore_phase2" in r for r in after)
    assert any(r.startswith("PlaceAlgoOrder(symbol=1000PEPEUSDT") and "leg=MDD" in r for r in after)
    assert any(r.startswith("CancelOrder(symbol=1000PEPEUSDT client_order_id=sf1001-TP1") for r in after)
    assert not [r for r in after if "leg=ENTRY2" in r and r.startswith("PlaceOrder")]


@pytest.mark.spec("N-24", "N-25", "N-26")
@pytest.mark.parametrize(
    "between",
    [{"pause": True}, {"venue_error": {"category": "auth", "times": 1, "code": -2015}}],
    ids=["pause", "auth-lock"],
)
def test_a_delayed_first_entry_resend_passes_its_gate_when_it_falls_due(between: dict[str, Any]) -> None:
    """A 429 with Retry-After delays the entry's resend; a pause or an auth lock meanwhile must hold
    it: it went out at its time regardless."""
    harness = Harness(mode="aggressive", position_mode="ONE_WAY")
    _step(harness, {"leading": {"id": 1001, "ticker": "BTC"}}, 1)
    rule = {"leg": "ENTRY1", "code": -1003, "retryable": True, "category": "rate_limited", "retry_after_s": 3}
    _step(harness, {"reject_next": rule})
    _step(harness, {"mark": {"BTCUSDT": "100.899"}}, 1)  # entry: PlaceOrder ENTRY1, 429 Retry-After 3 s
    _step(harness, between, 1)
    _step(harness, {"tick": True}, 3)  # the resend falls due
    assert len(_sent(harness, "BTCUSDT", "ENTRY1")) == 1
    assert "BTCUSDT" not in harness.engine.active_symbols()  # reset, not sent
    assert any("reason=lock before the entry's resend" in r for r in harness.rendered)


# Exits whose answer was lost, replaced meanwhile (a further entry fill, an R20 resync): the cancel
# deferred on the unknown one was forgotten, so it stayed live (found) or was resent (absent) next to
# its replacement: two TPs for one position (R11).
LOST_TP_THEN_REPLACED = [
    (
        "aggressive",
        "ONE_WAY",
        [("leading", 0, 0, 1), ("mark", 0, 0, 1), ("fill", 0, 0, 1), ("unknown", 3, 1, 0), ("mark", 0, 1, 1),
         ("fill", 0, 1, 1)],
    ),
    (
        "aggressive",
        "HEDGE",
        [("advance", 7, 42, 0), ("advance", 26, 37, 0), ("unknown", 35, 33, 0), ("advance", 59, 59, 0),
         ("advance", 57, 49, 0), ("position", 36, 54, 0)],
    ),
    (
        "aggressive",
        "ONE_WAY",
        [("advance", 7, 42, 0), ("advance", 26, 37, 0), ("unknown", 35, 31, 0), ("advance", 59, 59, 0),
         ("advance", 57, 49, 0), ("position", 36, 54, 0)],
    ),
]  # fmt: skip


@pytest.mark.spec("R11", "R20", "W43")
@pytest.mark.parametrize(
    ("mode", "position_mode", "actions"), LOST_TP_THEN_REPLACED, ids=["fill", "r20-absent", "r20-found"]
)
def test_a_replaced_exit_of_unknown_outcome_never_doubles_the_exit(
    mode: str, position_mode: str, actions: list[tuple[str, int, int, int]]
) -> None:
    harness = Harness(mode=mode, position_mode=position_mode)
    harness.run([*actions, *DRAIN])
    venue = harness.runner.venue
    for symbol, model in harness.engine.symbols.items():
        live = [
            o.qty for o in venue.orders.values() if o.symbol == symbol and o.leg == "TP" and o.status == "NEW"
        ]
        assert len(live) <= 1, f"{symbol}: {len(live)} TPs live"
        assert sum(live, Decimal(0)) <= model.position()
    assert not settled_problems(harness)


@pytest.mark.spec("N-18", "R11")
@pytest.mark.parametrize("status", [45, 44], ids=["expired", "cancelled"])
def test_a_part_filled_exit_ended_by_the_venue_closes_the_rest(status: int) -> None:
    """The TP had started filling (EXITING) when the venue expired or cancelled it: the rest of the
    short was left with no order and no close, forever."""
    harness = Harness(mode="aggressive", position_mode="ONE_WAY")
    actions = [("advance", 32, 10, 0), ("advance", 3, 48, 0), ("advance", 18, 13, 0), ("advance", 8, 11, 0),
               ("advance", 42, 21, 0), ("venue_cancel", 28, status, 0)]  # fmt: skip
    harness.run([*actions, *DRAIN])
    assert harness.runner.venue.positions["ETHUSDT"][0] == 0
    assert "ETHUSDT" not in harness.engine.symbols or harness.engine.symbols["ETHUSDT"].state == "IDLE"
    closes = _sent(harness, "ETHUSDT", "CLOSE")
    assert len(closes) == 1 and "quantity=0.12" in closes[0]
    assert not settled_problems(harness)


def _live(harness: Harness, symbol: str) -> dict[str, str]:
    return {
        cid: order.leg
        for cid, order in harness.runner.venue.orders.items()
        if order.symbol == symbol and order.status in ("NEW", "PARTIALLY_FILLED")
    }


def _wait_at_the_mark(harness: Harness, symbol: str, rounds: int) -> None:
    runner = harness.runner
    for _ in range(rounds):
        harness.run([("tick", 0, 0, 16), ("release", 0, 0, 0)])
        harness.feed(runner.step_events({"mark": {symbol: str(runner.venue.marks[symbol])}, "tick": True}))


@pytest.mark.spec("R15", "R16", "R09", "W43-1")
@pytest.mark.parametrize("position_mode", ["ONE_WAY", "HEDGE"])
def test_r16_cancels_only_what_was_decided_and_keeps_the_working_stop_and_exit(position_mode: str) -> None:
    """The scale-in fills: the TP is cancelled, that cancel is refused three times (R15); the MDD stop
    and the breakeven limit go out. R16's re-query cancelled every listed exit, the MDD stop and the
    BE with the leftover TP: a PHASE2 short with no stop and no exit, forever."""
    harness = Harness(mode="conservative", position_mode=position_mode)
    harness.run(
        [("leading", 17, 19, 0), ("advance", 49, 20, 0), ("fill", 2, 14, 0), ("advance", 55, 0, 0),
         ("cancel_fail", 41, 10, 0), ("mark", 51, 49, 0), ("advance", 18, 53, 0)]
    )  # fmt: skip
    assert harness.engine.symbols["ETHUSDT"].cancel_failed
    _wait_at_the_mark(harness, "ETHUSDT", 8)
    assert sorted(_live(harness, "ETHUSDT").values()) == ["BE", "MDD"]
    assert harness.engine.lock_state("exit_cancel_lock") == "CLEAR"


@pytest.mark.spec("W37", "W40")
@pytest.mark.parametrize("position_mode", ["ONE_WAY", "HEDGE"])
def test_a_tp_the_venue_expires_before_any_fill_goes_out_again(position_mode: str) -> None:
    """The venue expired the PHASE1 TP before it traded: nothing re-armed it, and the short had no
    exit order ever again even with the mark at the TP threshold."""
    harness = Harness(mode="conservative", position_mode=position_mode)
    harness.run(
        [("advance", 40, 24, 0), ("advance", 36, 54, 0), ("advance", 19, 58, 0), ("advance", 23, 37, 0)]
    )
    runner = harness.runner
    tp = next(cid for cid, order in runner.venue.orders.items() if order.leg == "TP")
    harness.feed(runner.step_events({"venue_cancel": {"cid": tp, "status": "EXPIRED"}}))
    _wait_at_the_mark(harness, "BTCUSDT", 10)
    assert list(_live(harness, "BTCUSDT").values()) == ["TP"]
    assert harness.engine.symbols["BTCUSDT"].state == "PHASE1"


def _decide_by_risk_with_the_cancel_refused(harness: Harness) -> None:
    harness.run([("cancel_fail", 0, 3, 0), ("risk", 0, 0, 1)])  # R02; the cancel refused (R15)


def _decide_by_the_stale_lock_then_kill(harness: Harness) -> None:
    harness.feed(harness.runner.step_events({"ws": "down", "ws_reason": "closed"}))
    harness.hold = 1  # the cancel is on the wire at the kill
    for _ in range(8):
        harness.run([("tick", 0, 0, 16)])
        if harness.engine.symbols["BTCUSDT"].closing:
            break


@pytest.mark.spec("R02", "W23-1", "N-28")
@pytest.mark.parametrize(
    "decide",
    [_decide_by_risk_with_the_cancel_refused, _decide_by_the_stale_lock_then_kill],
    ids=["r02", "stale"],
)
def test_a_decided_cancel_of_the_first_entry_survives_a_restart(decide: Any) -> None:
    """R02 (risk message, nothing filled) or the stale lock decided to cancel the entry; the restart
    came before that cancel took effect. Recovery saw the entry open with no position and kept it
    working: the short could open against the channel's word."""
    harness = Harness(mode="aggressive", position_mode="ONE_WAY")
    harness.run([("leading", 1, 0, 0), ("mark", 0, 0, 1), ("tick", 0, 0, 1)])  # BTCUSDT entry live
    decide(harness)
    assert harness.engine.symbols["BTCUSDT"].closing
    harness.run([("restart", 0, 0, 1)])
    if not harness.runner.ws_alive:
        harness.feed(harness.runner.step_events({"ws": "up", "ws_reason": "back"}))
    harness.run([("mark", 0, 3, 1), ("tick", 0, 0, 1), *DRAIN])
    assert _live(harness, "BTCUSDT") == {}
    assert "BTCUSDT" not in harness.engine.active_symbols()
    assert any("cancel decided before the restart" in r for r in harness.rendered)


@pytest.mark.spec("R06", "N-28")
@pytest.mark.parametrize("variant", ["refused", "expired"])
def test_r06_protection_survives_a_restart_without_its_stop(variant: str) -> None:
    """A risk message in profit (R06) rules out the scale-in. Its breakeven stop was refused (-4164)
    or later expired on the venue; after a restart recovery saw a plain PHASE1 and the scale-in went
    out when the mark rose."""
    harness = Harness(mode="aggressive", position_mode="ONE_WAY")
    harness.run([("leading", 1, 0, 0), ("mark", 0, 0, 1), ("tick", 0, 0, 1)])
    runner = harness.runner
    entry = next(iter(runner.venue.orders))
    harness.feed(runner.step_events({"fill": {"cid": entry, "qty": str(runner.venue.orders[entry].qty)}}))
    harness.run([("mark", 0, 8, 1)])  # in profit
    if variant == "refused":
        harness.run([("reject", 7, 2, 0), ("risk", 0, 0, 1)])  # the BE_STOP refused
    else:
        harness.run([("risk", 0, 0, 1)])
        stop = next(cid for cid, order in runner.venue.orders.items() if order.leg == "BE_STOP")
        harness.feed(runner.step_events({"venue_cancel": {"cid": stop, "status": "EXPIRED"}}))
    assert harness.engine.symbols["BTCUSDT"].risk_protected
    restarted_at = len(harness.rendered)
    harness.run([("restart", 0, 0, 1), ("mark", 0, 8, 1), ("tick", 0, 0, 1)])
    assert harness.engine.symbols["BTCUSDT"].risk_protected
    harness.run([("mark", 0, 0, 1), ("tick", 0, 0, 1), ("tick", 0, 0, 1)])  # the scale-in's level
    assert not [r for r in harness.rendered[restarted_at:] if "leg=ENTRY2" in r]


# A TP whose cancel failed (R15) filled while the failure held, so the flat symbol could not finish;
# the re-cancel that then went through cleared the failure but never finished it: EXITING, flat, no
# order, the entry lock held, forever. Minimised from random runs of the adversary's end-state check.
STUCK_AFTER_R16 = [
    (
        "aggressive",
        [("advance", 17, 46, 2), ("advance", 18, 58, 3), ("advance", 47, 38, 2), ("cancel_fail", 25, 53, 5),
         ("hold", 12, 55, 1), ("advance", 6, 25, 3), ("pause", 8, 35, 16), ("mark", 21, 15, 3),
         ("advance", 31, 22, 16), ("advance", 35, 57, 16), ("advance", 57, 1, 5)],
    ),
    (
        "conservative",
        [("cancel_fail", 42, 38, 6), ("advance", 48, 54, 3), ("advance", 17, 0, 3), ("advance", 40, 45, 3),
         ("mark", 20, 8, 2), ("hold", 54, 45, 1), ("advance", 53, 35, 16), ("advance", 55, 26, 6),
         ("fill", 41, 34, 1), ("rest", 30, 8, 2)],
    ),
]  # fmt: skip


@pytest.mark.spec("R15", "R16")
@pytest.mark.parametrize(("mode", "actions"), STUCK_AFTER_R16, ids=["aggressive", "conservative"])
def test_a_flat_symbol_finishes_once_r16_clears_its_cancel_failure(mode: str, actions: list[Any]) -> None:
    harness = Harness(mode=mode, position_mode="ONE_WAY")
    harness.run([*actions, *DRAIN])
    venue = harness.runner.venue
    for symbol, model in harness.engine.symbols.items():
        live = [
            c
            for c, o in venue.orders.items()
            if o.symbol == symbol and o.status in ("NEW", "PARTIALLY_FILLED")
        ]
        flat = venue.positions.get(symbol, (Decimal(0), Decimal(0)))[0] == 0
        assert not (flat and not live and model.state == "EXITING"), f"{symbol} stuck EXITING while flat"
    assert harness.engine.lock_state("entry_lock") == "GLOBAL_IDLE"
    assert not settled_problems(harness)
