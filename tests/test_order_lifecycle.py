"""The order lifecycle table (issue #11 step 2): every status change of an order goes through
``OrderTrack.apply`` (the engine's steps) or ``OrderTrack.report`` (the venue's word)."""

from __future__ import annotations

from decimal import Decimal
from itertools import product
from typing import get_args

import pytest
from test_engine_bad_input import BTC, ENTRY_CID, _entry_order, _now, _risk_message, _update

from fsm import commands as cmd
from fsm import events as ev
from fsm.model import decode, encode
from fsm.orders import (
    OPEN_STATUSES,
    ORDER_STATUSES,
    ORDER_STEPS,
    STEPS,
    TERMINAL_STATUSES,
    IllegalOrderStep,
    OrderTrack,
)

D = Decimal


def _track(status: str = "PENDING_NEW", qty: str = "4.950") -> OrderTrack:
    return OrderTrack(
        cid="sf1-TP1-BTCUSDT", leg="TP", side="BUY", kind="LIMIT", price=D(96), qty=D(qty), status=status
    )


def test_the_statuses_are_the_nine_of_the_lifecycle() -> None:
    assert {
        "PENDING_NEW", "UNKNOWN", "NEW", "PARTIALLY_FILLED", "PENDING_CANCEL",
        "FILLED", "CANCELED", "REJECTED", "EXPIRED",
    } == ORDER_STATUSES  # fmt: skip
    assert OPEN_STATUSES | TERMINAL_STATUSES == ORDER_STATUSES
    assert not OPEN_STATUSES & TERMINAL_STATUSES
    for step in ORDER_STEPS:
        assert step.sources <= ORDER_STATUSES and step.dest in ORDER_STATUSES, step.name


@pytest.mark.parametrize(("status", "step"), list(product(sorted(ORDER_STATUSES), sorted(STEPS))))
def test_a_step_moves_only_from_the_statuses_its_row_lists(status: str, step: str) -> None:
    track = _track(status)
    if status in STEPS[step].sources:
        track.apply(step)
        assert track.status == STEPS[step].dest
    else:
        with pytest.raises(IllegalOrderStep, match=f"{step} from {status}"):
            track.apply(step)
        assert track.status == status


def test_an_unknown_order_leaves_unknown_only_by_a_query_or_the_venue() -> None:
    """D-26: nothing is resent from UNKNOWN at once; a query's verdict or the venue's report moves it."""
    leaving = {s.name for s in ORDER_STEPS if "UNKNOWN" in s.sources and s.dest != "UNKNOWN"}
    assert leaving == {
        "resend",
        "refused",
        "found",
        "absent_while_closing",
        "listed_open",
        "not_listed",
        "stop_filled",
        # the venue's answer to our cancel: it cancelled the order (or it had filled), so it existed
        "cancel_done",
        "cancel_too_late",
    }
    assert STEPS["answer_lost"].sources == {"PENDING_NEW"}


@pytest.mark.parametrize(
    ("status", "reported"), list(product(sorted(ORDER_STATUSES), get_args(ev.OrderStatus)))
)
def test_the_venue_word_moves_an_order_forward_only(status: str, reported: ev.OrderStatus) -> None:
    track = _track(status)
    changed = track.report(reported)
    if status in TERMINAL_STATUSES:
        assert (changed, track.status) == (False, status)  # final
    elif reported in TERMINAL_STATUSES:
        assert track.status == reported
    elif reported == "NEW" and status in ("PENDING_CANCEL", "PARTIALLY_FILLED"):
        assert (changed, track.status) == (False, status)  # a late NEW after our cancel or a fill
    else:
        assert track.status == reported
    assert changed == (track.status != status)


def test_a_duplicate_or_older_fill_books_nothing() -> None:
    track = _track("NEW")

    def update(cum: str) -> ev.OrderUpdated:
        return ev.OrderUpdated(
            now_ms=1, symbol=BTC, client_order_id=track.cid, order_id=7, side="BUY", order_type="LIMIT",
            status="PARTIALLY_FILLED", price=D(96), orig_qty=D("4.950"), cum_qty=D(cum), last_qty=D(1),
            last_price=D(96), avg_price=D(96), realized_pnl=D(5), commission=D("0.1"),
        )  # fmt: skip

    assert track.book(update("2")) == D(2)
    assert track.book(update("2")) == D(0)  # the same push again
    assert track.book(update("1")) == D(-1)  # an older one, late
    assert (track.filled, track.realized_pnl, track.commission) == (D(2), D(5), D("0.1"))


@pytest.mark.parametrize(("old", "new"), [("PENDING", "PENDING_NEW"), ("CANCELING", "PENDING_CANCEL")])
def test_a_snapshot_written_before_the_rename_restores(old: str, new: str) -> None:
    encoded = encode(_track("NEW"))
    encoded["status"] = old
    assert decode(encoded).status == new


def test_a_failed_cancel_answered_after_the_order_filled_is_not_retried() -> None:
    """Found by the order table: the entry's fill push came before its cancel's failure; the engine
    re-cancelled the FILLED order (marking it open again) and after three failures raised the R15
    exit-cancel lock for an order that no longer existed."""
    runner = _entry_order()
    engine = runner.engine
    commands = engine.handle(_risk_message(runner, 5001))  # R01: cancel the entry, nothing filled
    assert [c for c in commands if isinstance(c, cmd.CancelOrder)] == [
        cmd.CancelOrder(symbol=BTC, client_order_id=ENTRY_CID)
    ]
    engine.handle(_update(runner, ENTRY_CID, "FILLED", "4.950", last="4.950"))
    assert engine.symbols[BTC].orders[ENTRY_CID].status == "FILLED"
    out = engine.handle(
        ev.CancelResult(
            now_ms=_now(engine),
            symbol=BTC,
            client_order_id=ENTRY_CID,
            ok=False,
            code=-1001,
            message="Internal error",
        )
    )
    assert not [c for c in out if isinstance(c, (cmd.CancelOrder, cmd.CancelAlgoOrder))]
    assert cmd.Log(kind="cancel_failure_moot", symbol=BTC, reason="FILLED", data=(("cid", ENTRY_CID),)) in out
    assert engine.symbols[BTC].orders[ENTRY_CID].status == "FILLED"
    assert engine.lock_state("exit_cancel_lock") != "CANCEL_FAILED"


@pytest.mark.spec("W50", "R15")
def test_a_cancel_refused_by_the_rate_limits_waits_and_spends_no_r15_attempt() -> None:
    """Attack on the fault matrix (risk-profit x ban-exit): during a 418 ban every cancel fails fast
    in the client, nothing sent. The engine re-cancelled at once three times and raised R15's "could
    not cancel" lock and critical alert for an order the venue was never asked about. Now a cancel the
    rate limits refused goes again once their wait is over, the same order, and R15 counts only
    refusals from the venue."""
    runner = _entry_order()
    engine = runner.engine
    engine.handle(_risk_message(runner, 5001))  # R01: cancel the entry
    order = engine.symbols[BTC].orders[ENTRY_CID]
    for _ in range(4):  # more bans than R15 has attempts
        now = _now(engine)
        out = engine.handle(
            ev.CancelResult(
                now_ms=now, symbol=BTC, client_order_id=ENTRY_CID, ok=False, code=-1003,
                message="IP banned until 1767225721000 (local fail-fast)", retry_after_ms=4_000,
            )
        )  # fmt: skip
        assert not [c for c in out if isinstance(c, (cmd.CancelOrder, cmd.Notify))]
        assert cmd.Log(
            kind="cancel_delayed", symbol=BTC, reason="rate_limited",
            data=(("cid", ENTRY_CID), ("at_ms", str(now + 4_000))),
        ) in out  # fmt: skip
        assert (order.status, order.cancel_attempts, order.cancel_at_ms) == ("PENDING_CANCEL", 0, now + 4_000)
        assert not [c for c in engine.handle(ev.Tick(now_ms=now + 3_999)) if isinstance(c, cmd.CancelOrder)]
        out = engine.handle(ev.Tick(now_ms=now + 4_000))
        assert [c for c in out if isinstance(c, cmd.CancelOrder)] == [
            cmd.CancelOrder(symbol=BTC, client_order_id=ENTRY_CID, attempt=1)
        ]
        assert (order.cancel_attempts, order.cancel_at_ms) == (1, 0)
    assert engine.lock_state("exit_cancel_lock") == "CLEAR"
    # A refusal from the venue itself still counts: the re-cancel goes at once as attempt 2 (R15).
    out = engine.handle(
        ev.CancelResult(
            now_ms=_now(engine),
            symbol=BTC,
            client_order_id=ENTRY_CID,
            ok=False,
            code=-1001,
            message="Internal error",
        )
    )
    assert [c for c in out if isinstance(c, cmd.CancelOrder)] == [
        cmd.CancelOrder(symbol=BTC, client_order_id=ENTRY_CID, attempt=2)
    ]
