"""The close machine (fsm/table.py ``CLOSE_TRANSITIONS``, issue #11 step 3): beside its phase, each
symbol's ``close_state`` says whether a close is decided and who carries it out (OPEN, CLOSING,
DEFERRED, FLATTENING). It replaced two flags (``closing``, ``close_deferred``) and a reason string
that meant "the operator's flatten": a snapshot written before it must restore to the same engine,
or a daemon upgraded in the middle of a close would forget it.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import pytest
from test_flatten_engine import _now, _phase1_with_its_tp

from fsm import commands as cmd
from fsm import events as ev
from fsm.engine import Engine
from fsm.harness.scenario import Runner, load_scenarios
from fsm.table import CLOSE_STATES

SCENARIOS = load_scenarios()


def _legacy(snapshot: dict[str, Any]) -> dict[str, Any]:
    """``snapshot`` as the engine before the close and trigger tables wrote it: flags, no states."""
    old = copy.deepcopy(snapshot)
    for raw in old["symbols"].values():
        state = raw.pop("close_state")
        raw["closing"] = state != "OPEN"
        raw["close_deferred"] = state == "DEFERRED"
        for flag, attribute, on in _FLAGS:
            raw[flag] = raw.pop(attribute) == on
        setup = raw.pop("setup")
        raw["preparing"] = "" if setup == "NONE" else setup
    return old


_FLAGS = (
    ("tp_armed", "tp_trigger", "ARMED"),
    ("add_armed", "add_trigger", "ARMED"),
    ("be_armed", "be_trigger", "ARMED"),
    ("risk_protected", "risk_mode", "PROTECTED"),
    ("cancel_failed", "exit_cancels", "FAILED"),
)


class _EveryStep(Runner):
    """Takes the engine's snapshot before every step."""

    def __init__(self, doc: dict[str, Any]) -> None:
        super().__init__(doc)
        self.snapshots: list[dict[str, Any]] = []

    def step_events(self, step: dict[str, Any]) -> Iterable[ev.Event]:
        self.snapshots.append(self.engine.snapshot())
        return super().step_events(step)


def test_a_snapshot_from_before_the_close_and_trigger_tables_restores_to_the_same_engine() -> None:
    """Every snapshot the catalog passes through, written in the old encoding, restores to exactly
    the engine the new encoding restores to (so the run continues identically)."""
    seen: set[str] = set()
    checked = 0
    for scenario_id, doc in SCENARIOS.items():
        runner = _EveryStep(copy.deepcopy(doc))
        runner.run()
        for snapshot in runner.snapshots:
            states = {raw["close_state"] for raw in snapshot["symbols"].values()}
            states |= {
                f"{attribute}={raw[attribute]}"
                for raw in snapshot["symbols"].values()
                for _, attribute, on in _FLAGS
                if raw[attribute] == on
            }
            states |= {f"setup={raw['setup']}" for raw in snapshot["symbols"].values()}
            if states <= {"OPEN", "setup=NONE"} and checked % 10:
                checked += 1
                continue  # a sample of the plain ones; every one that is closing
            checked += 1
            seen |= states
            want = Engine.restore(snapshot).snapshot()
            assert Engine.restore(_legacy(snapshot)).snapshot() == want, scenario_id
    # (A deferral resolves within its step on the double, which answers at once: DEFERRED at rest is
    # checked below, where a flatten that cancelled nothing hands a live TP back to the engine.)
    assert {"OPEN", "CLOSING"} <= seen, seen
    assert {f"{attribute}={on}" for _, attribute, on in _FLAGS} <= seen, seen


def test_an_old_snapshot_mid_flatten_restores_flattening() -> None:
    """The operator's flatten was only its reason string before: it restores as FLATTENING, and the
    restored engine leaves the close to the operator exactly as the original does."""
    harness = _phase1_with_its_tp()
    harness.feed([ev.FlattenStarted(now_ms=_now(harness), request_id="flatten-1")])
    engine = harness.engine
    assert engine.close_state_of("BTCUSDT") == "FLATTENING"
    snapshot = engine.snapshot()
    old = Engine.restore(_legacy(snapshot))
    assert old.snapshot() == Engine.restore(snapshot).snapshot()
    assert old.close_state_of("BTCUSDT") == "FLATTENING"
    tick = ev.Tick(now_ms=_now(harness, 1))
    assert old.handle(tick) == engine.handle(tick)


def test_a_flatten_is_told_as_the_close_machine_moving() -> None:
    """FlattenStarted moves the close to FLATTENING, disarms the scale-in (the TP works already) and
    moves the phase to EXITING, in that order, each told once; FlattenFinished hands the symbol back
    to the engine's own close (CLOSING), which waits for its exit cancel (DEFERRED); an old snapshot
    taken then restores DEFERRED."""
    harness = _phase1_with_its_tp()
    out = harness.engine.handle(ev.FlattenStarted(now_ms=_now(harness), request_id="flatten-1"))
    moved = [(c.machine, c.source, c.dest, c.trigger) for c in out if isinstance(c, cmd.Transitioned)]
    assert moved == [
        ("close", "OPEN", "FLATTENING", "flatten_started"),
        ("add", "ARMED", "OFF", "disarm_add"),
        ("symbol", "PHASE1", "EXITING", "exit_started"),
    ]
    # A second flatten while the first runs: internal rows, nothing moves or is told.
    again = harness.engine.handle(ev.FlattenStarted(now_ms=_now(harness, 1), request_id="flatten-2"))
    assert [c for c in again if isinstance(c, cmd.Transitioned)] == []
    done = harness.engine.handle(ev.FlattenFinished(now_ms=_now(harness, 1), request_id="flatten-2"))
    moved = [(c.machine, c.source, c.dest, c.trigger) for c in done if isinstance(c, cmd.Transitioned)]
    assert moved == [
        ("close", "FLATTENING", "CLOSING", "flatten_finished"),
        ("close", "CLOSING", "DEFERRED", "defer_close"),
    ]
    # The flatten cancelled nothing here (its TP is still live): the engine cancels the TP and its
    # close waits for that cancel's answer (R11), sized by what the TP traded meanwhile.
    engine = harness.engine
    assert engine.close_state_of("BTCUSDT") == "DEFERRED"
    assert engine.symbols["BTCUSDT"].close_reason == "flatten left it open"
    snapshot = engine.snapshot()
    old = Engine.restore(_legacy(snapshot))
    assert old.snapshot() == Engine.restore(snapshot).snapshot()
    assert old.close_state_of("BTCUSDT") == "DEFERRED"
    tick = ev.Tick(now_ms=_now(harness, 1))
    assert old.handle(tick) == engine.handle(tick)


@pytest.mark.parametrize("state", CLOSE_STATES)
def test_closing_and_deferred_are_read_from_the_state(state: str) -> None:
    engine = Engine()
    harness_model = engine.symbol_model("BTCUSDT")
    harness_model.close_state = state
    assert harness_model.closing is (state != "OPEN")
    assert harness_model.close_deferred is (state == "DEFERRED")
