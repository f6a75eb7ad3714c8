"""The invariant checkers catch seeded violations, pass clean logs, and the fault injectors do what
they say (each checked on hand-made inputs with exact values)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from fsm import commands as cmd
from fsm import events as ev
from fsm.harness import faults
from fsm.harness.scenario import T0_MS, load_scenarios

D = Decimal
LOCKS_OK = (
    ("entry_lock", "GLOBAL_IDLE"),
    ("safety_lock", "PRICE_OK"),
    ("recovery_lock", "READY"),
    ("exit_cancel_lock", "CLEAR"),
    ("rate_limit", "NORMAL"),
    ("auth", "AUTH_OK"),
)


def entry(cid: str = "sf1001-E11-BTCUSDT", attempt: int = 1, qty: str = "4.950") -> cmd.PlaceOrder:
    return cmd.PlaceOrder(
        symbol="BTCUSDT",
        client_order_id=cid,
        leg="ENTRY1",
        side="SELL",
        order_type="LIMIT",
        quantity=D(qty),
        price=D("101.0"),
        time_in_force="GTC",
        attempt=attempt,
    )


def close(qty: str, cid: str = "sf1001-CL1-BTCUSDT") -> cmd.PlaceOrder:
    return cmd.PlaceOrder(
        symbol="BTCUSDT",
        client_order_id=cid,
        leg="CLOSE",
        side="BUY",
        order_type="MARKET",
        quantity=D(qty),
        reduce_only=True,
    )


def decision(commands: list[cmd.Command], **locks: str) -> faults.Decision:
    state = dict(LOCKS_OK)
    state.update(locks)
    return faults.Decision(
        index=7,
        step=2,
        event=ev.Tick(now_ms=T0_MS),
        commands=tuple(commands),
        locks_before=tuple(state.items()),
    )


def order(cid: str, leg: str, symbol: str = "BTCUSDT") -> faults.OpenOrder:
    return faults.OpenOrder(symbol=symbol, cid=cid, leg=leg, side="BUY", price=D("96.0"), qty=D("4.950"))


# -- client ids --------------------------------------------------------------------------------


def test_identical_retries_with_the_next_attempt_are_allowed() -> None:
    log = [entry(), entry(attempt=2), entry(attempt=3), entry("sf1001-E21-BTCUSDT")]
    assert faults.check_client_ids(log) == []


def test_a_duplicate_client_id_is_caught() -> None:
    assert faults.check_client_ids([entry(), entry()]) == [
        "duplicate id: sf1001-E11-BTCUSDT placed again with attempt 1 after 1"
    ]


def test_a_retry_with_other_parameters_is_caught() -> None:
    problems = faults.check_client_ids([entry(), entry(attempt=2, qty="5.000")])
    assert len(problems) == 1
    assert problems[0].startswith("duplicate id: sf1001-E11-BTCUSDT placed again with different parameters")


def test_a_retry_that_skips_an_attempt_or_starts_late_is_caught() -> None:
    assert faults.check_client_ids([entry(), entry(attempt=3)]) == [
        "duplicate id: sf1001-E11-BTCUSDT placed again with attempt 3 after 1"
    ]
    assert faults.check_client_ids([entry(attempt=2)]) == [
        "duplicate id: sf1001-E11-BTCUSDT first placed with attempt 2"
    ]


def test_an_algo_order_reusing_a_limit_orders_id_is_caught() -> None:
    stop = cmd.PlaceAlgoOrder(
        symbol="BTCUSDT",
        client_algo_id="sf1001-E11-BTCUSDT",
        leg="MDD",
        side="BUY",
        order_type="STOP_MARKET",
        trigger_price=D("123.3"),
        attempt=2,
    )
    assert len(faults.check_client_ids([entry(), stop])) == 1


# -- lock gates --------------------------------------------------------------------------------


def committed() -> cmd.Transitioned:
    return cmd.Transitioned(
        machine="symbol", symbol="BTCUSDT", source="MONITORING", dest="ENTRY_ORDER", trigger="entry_triggered"
    )


def test_entries_while_every_lock_is_clear_pass() -> None:
    assert faults.check_lock_gates([decision([committed()]), decision([entry()])]) == []


@pytest.mark.parametrize(
    ("lock", "state"),
    [
        ("safety_lock", "PRICE_STALE"),
        ("recovery_lock", "RECOVERING"),
        ("exit_cancel_lock", "CANCEL_FAILED"),
        ("auth", "AUTH_LOCKED"),
        ("rate_limit", "PROTECT"),
    ],
)
def test_an_entry_placed_under_a_lock_is_caught(lock: str, state: str) -> None:
    assert faults.check_lock_gates([decision([entry()], **{lock: state})]) == [
        f"locked entry: ENTRY1 sf1001-E11-BTCUSDT placed while {lock}={state} (event #7 Tick)"
    ]


def test_committing_an_entry_under_the_entry_lock_is_caught_but_placing_it_is_not() -> None:
    # Our own commitment turns the entry lock on before the order goes out: placing is fine then.
    assert faults.check_lock_gates([decision([entry()], entry_lock="GLOBAL_LOCKED")]) == []
    assert faults.check_lock_gates([decision([committed()], entry_lock="GLOBAL_LOCKED")]) == [
        "locked entry: BTCUSDT entry committed while entry_lock=GLOBAL_LOCKED (event #7 Tick)"
    ]


def test_an_entry_while_paused_is_caught() -> None:
    paused = faults.Decision(
        index=3,
        step=0,
        event=ev.Tick(now_ms=T0_MS),
        commands=(committed(),),
        locks_before=LOCKS_OK,
        paused_before=True,
    )
    assert faults.check_lock_gates([paused]) == [
        "locked entry: BTCUSDT entry committed while paused (event #3 Tick)"
    ]


# -- exit quantities ---------------------------------------------------------------------------


def test_an_exit_above_the_venue_position_is_caught() -> None:
    exits = [
        faults.ExitPlacement(command=close("4.950"), venue_position=D("4.950")),
        faults.ExitPlacement(command=close("1.500", "sf1001-CL2-BTCUSDT"), venue_position=D("0")),
    ]
    assert faults.check_exit_quantities(exits) == [
        "exit above position: CLOSE sf1001-CL2-BTCUSDT qty 1.500 > venue position 0"
    ]


# -- quiet points ------------------------------------------------------------------------------


def point(
    orders: list[faults.OpenOrder], states: dict[str, str], positions: dict[str, str]
) -> faults.QuietPoint:
    return faults.QuietPoint(
        label="after step 3",
        positions=tuple((s, D(q)) for s, q in positions.items()),
        open_orders=tuple(orders),
        states=tuple(states.items()),
    )


def test_a_consistent_quiet_point_passes() -> None:
    ok = point([order("sf1001-TP1-BTCUSDT", "TP")], {"BTCUSDT": "PHASE1"}, {"BTCUSDT": "4.950"})
    assert faults.check_quiet_points([ok]) == []


def test_an_open_exit_order_once_flat_is_caught() -> None:
    flat = point([order("sf1001-MD1-BTCUSDT", "MDD")], {"BTCUSDT": "EXITING"}, {})
    assert faults.check_quiet_points([flat]) == [
        "after step 3: exit order sf1001-MD1-BTCUSDT open while BTCUSDT is flat"
    ]


def test_an_open_order_of_an_idle_symbol_is_caught() -> None:
    idle = point([order("sf1001-E11-BTCUSDT", "ENTRY1")], {}, {})
    assert faults.check_quiet_points([idle]) == [
        "after step 3: orphaned order sf1001-E11-BTCUSDT open while BTCUSDT is IDLE"
    ]


def test_two_open_orders_of_one_leg_are_caught() -> None:
    doubled = point(
        [order("sf1001-TP1-BTCUSDT", "TP"), order("sf1001-TP2-BTCUSDT", "TP")],
        {"BTCUSDT": "PHASE1"},
        {"BTCUSDT": "4.950"},
    )
    assert faults.check_quiet_points([doubled]) == [
        "after step 3: 2 open TP orders for BTCUSDT: ['sf1001-TP1-BTCUSDT', 'sf1001-TP2-BTCUSDT']"
    ]


def test_a_second_venue_entry_for_the_same_signal_is_caught() -> None:
    created = [
        ("BTCUSDT", "sf1001-E11-BTCUSDT", "ENTRY1"),
        ("BTCUSDT", "sf1001-TP1-BTCUSDT", "TP"),
        ("BTCUSDT", "sf1001-TP2-BTCUSDT", "TP"),
        ("BTCUSDT", "sf1001-E12-BTCUSDT", "ENTRY1"),
        ("BTCUSDT", "sf1002-E11-BTCUSDT", "ENTRY1"),
    ]
    assert faults.check_entry_orders(created) == [
        "duplicated entry: sf1001-E12-BTCUSDT created after sf1001-E11-BTCUSDT for the same signal"
    ]


def test_an_engine_error_is_caught() -> None:
    crashed = decision([cmd.Log(kind="anomaly", reason="engine_error", data=(("error", "KeyError('x')"),))])
    assert faults.check_engine_errors([crashed]) == ["engine error on event #7 Tick: KeyError('x')"]


# -- final state -------------------------------------------------------------------------------


def final(
    states: dict[str, str] | None = None, positions: dict[str, str] | None = None, **locks: str
) -> faults.FinalState:
    lock_states = dict(LOCKS_OK)
    lock_states.update(locks)
    return faults.FinalState(
        states=tuple((states or {}).items()),
        locks=tuple(sorted(lock_states.items())),
        positions=tuple((s, D(q)) for s, q in (positions or {}).items()),
        open_orders=(),
    )


def test_final_state_judgement() -> None:
    base = final({"BTCUSDT": "PHASE1"}, {"BTCUSDT": "2.000"})
    assert faults.judge_final(base, base) == ("same", [])
    stale = final(safety_lock="PRICE_STALE")
    assert faults.judge_final(base, stale) == ("safely locked", [])
    assert faults.judge_final(base, final(), flat_ok="R12") == ("flat (R12)", [])
    assert faults.judge_final(base, final(), flat_ok="W23-1", flat_needs_safety_lock=True)[0] == "differs"
    outcome, problems = faults.judge_final(base, final())
    assert outcome == "differs"
    assert problems == [
        "final state differs from the fault-free run: "
        "state BTCUSDT: PHASE1 -> -; position BTCUSDT: 2.000 -> -"
    ]


def test_a_stuck_entry_lock_is_not_flat_and_a_locked_baseline_needs_equality() -> None:
    stuck = final(entry_lock="GLOBAL_LOCKED")
    assert not stuck.flat
    assert faults.judge_final(final(), stuck, flat_ok="R12")[0] == "differs"
    locked_base = final(safety_lock="PRICE_STALE")
    locked_and_stuck = final(safety_lock="PRICE_STALE", entry_lock="GLOBAL_LOCKED")
    assert faults.judge_final(locked_base, locked_and_stuck)[1] == [
        "final state differs from the fault-free run: lock entry_lock: GLOBAL_IDLE -> GLOBAL_LOCKED"
    ]


# -- the injectors -----------------------------------------------------------------------------


def fill_update(cid: str, status: str, cum: str, last: str = "0") -> ev.OrderUpdated:
    return ev.OrderUpdated(
        now_ms=T0_MS,
        symbol="BTCUSDT",
        client_order_id=cid,
        order_id=1,
        side="SELL",
        order_type="LIMIT",
        status=status,  # type: ignore[arg-type]
        price=D("101.0"),
        orig_qty=D("4.950"),
        cum_qty=D(cum),
        last_qty=D(last),
        last_price=D("101.0") if last != "0" else D(0),
        avg_price=D("101.0") if cum != "0" else D(0),
        trade_id=9 if last != "0" else 0,
    )


POSITION = ev.PositionChanged(now_ms=T0_MS, symbol="BTCUSDT", amount=D("-4.950"), entry_price=D("101.0"))
RUNNER: Any = None  # the stream injectors never look at the runner


def test_duplicate_user_events_doubles_every_user_event_only() -> None:
    fill = fill_update("A", "FILLED", "4.950", "4.950")
    tick = ev.Tick(now_ms=T0_MS)
    assert faults.DuplicateUserEvents().batch(RUNNER, [fill, tick, POSITION]) == [
        fill,
        fill,
        tick,
        POSITION,
        POSITION,
    ]


def test_swap_exchanges_adjacent_updates_of_different_orders() -> None:
    a, b, c = fill_update("A", "CANCELED", "0"), fill_update("B", "FILLED", "4.950", "4.950"), POSITION
    accepted = ev.OrderAccepted(now_ms=T0_MS, symbol="BTCUSDT", client_order_id="B", order_id=2)
    assert faults.SwapOrderUpdates().batch(RUNNER, [a, accepted, b, c]) == [b, accepted, a, c]
    same = [fill_update("A", "PARTIALLY_FILLED", "1", "1"), fill_update("A", "FILLED", "4.950", "3.950")]
    assert faults.SwapOrderUpdates().batch(RUNNER, same) == same


def test_late_new_follows_the_first_fill_of_each_order_once() -> None:
    injector = faults.LateNew()
    partial = fill_update("A", "PARTIALLY_FILLED", "1.5", "1.5")
    out = injector.batch(RUNNER, [partial])
    assert out[0] is partial
    assert out[1] == fill_update("A", "NEW", "0")
    assert injector.batch(RUNNER, [fill_update("A", "FILLED", "4.950", "3.450")]) == [
        fill_update("A", "FILLED", "4.950", "3.450")
    ]


def test_position_first_moves_the_account_update_before_its_fill() -> None:
    accepted = ev.OrderAccepted(now_ms=T0_MS, symbol="BTCUSDT", client_order_id="A", order_id=1)
    fill = fill_update("A", "FILLED", "4.950", "4.950")
    assert faults.PositionFirst().batch(RUNNER, [accepted, fill, POSITION]) == [accepted, POSITION, fill]
    other = ev.PositionChanged(now_ms=T0_MS, symbol="ETHUSDT", amount=D("-1"), entry_price=D("50"))
    assert faults.PositionFirst().batch(RUNNER, [fill, other]) == [fill, other]


def test_silent_market_inserts_the_gap_and_shifts_the_rest() -> None:
    doc = {"id": "X", "steps": [{"at": 0, "leading": {"id": 1}}, {"at": 1, "mark": {"BTCUSDT": "100"}}]}
    out = faults.with_silent_market(doc, 0, 3, rest_age_s=20, reason="silent")
    assert out["steps"] == [
        {"at": 0, "leading": {"id": 1}},
        {"at": 0.0, "ws": "down", "ws_reason": "silent", "label": "fault: silent"},
        {"at": 1.0, "_fault_poll": {"age_s": 20}},
        {"at": 2.0, "_fault_poll": {"age_s": 20}},
        {"at": 3.0, "_fault_poll": {"age_s": 20}},
        {"at": 5.0, "ws": "up", "tick": True, "label": "fault: market stream back"},
        {"at": 5.0, "mark": {"BTCUSDT": "100"}},
    ]
    assert doc["steps"][1] == {"at": 1, "mark": {"BTCUSDT": "100"}}  # the original is untouched


def test_ws_down_after_follows_the_scenarios_own_ws_steps() -> None:
    steps: list[dict[str, Any]] = [{"at": 0}, {"at": 1, "ws": "down"}, {"at": 2}, {"at": 3, "ws": "up"}]
    assert [faults.ws_down_after(steps, i) for i in range(4)] == [False, True, True, False]


def test_the_retryable_rejection_fails_each_order_once_then_lets_the_retry_through() -> None:
    runner = faults.FaultRunner(load_scenarios()["W55"], faults.RejectFirstAttempt(-1001, "503"))
    record = runner.run_checked()
    places = [c for c in record.executed if isinstance(c, cmd.PlaceOrder)]
    assert [(c.client_order_id, c.attempt) for c in places] == [
        ("sf1001-E11-BTCUSDT", 1),
        ("sf1001-E11-BTCUSDT", 2),
        ("sf1001-TP1-BTCUSDT", 1),
        ("sf1001-CL1-BTCUSDT", 1),
        ("sf1001-CL1-BTCUSDT", 2),
    ]
    assert faults.check_record(record) == []
    assert runner.final_state().flat


def test_the_lost_answer_is_resolved_by_the_same_id_into_one_venue_order() -> None:
    runner = faults.FaultRunner(load_scenarios()["W55"], faults.LostAnswer())
    record = runner.run_checked()
    assert [cid for _, cid, _ in record.created] == ["sf1001-E11-BTCUSDT", "sf1001-TP1-BTCUSDT"]
    assert len(runner.venue.orders) == 2
    assert faults.check_record(record) == []


def test_a_scripted_fill_of_an_order_the_fault_removed_is_skipped_and_noted() -> None:
    runner = faults.FaultRunner(
        load_scenarios()["W55"],
        faults.RejectEveryAttempt(-1001, "503", legs=frozenset({"ENTRY1"})),
    )
    record = runner.run_checked()
    assert record.skipped[0] == "step 3: fill {'leg': 'ENTRY1'}: no such venue order"
    assert runner.engine.lock_state("entry_lock") == "GLOBAL_IDLE"
