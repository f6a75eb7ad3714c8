"""Every scenario file under specs/scenarios is a spec test: its `spec` list names the IDs it proves.

Each scenario's command log and final snapshot must equal its golden master (``tests/golden_kit``).
It is then run again with the engine replaced, before the middle step, by ``Engine.restore`` of the
golden snapshot an earlier engine wrote there: the run must continue to the same log and final state
(replay determinism, and snapshots that survive an upgrade of the daemon).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from decimal import ROUND_UP, Context, localcontext
from typing import Any

import golden_kit
import pytest

from fsm import commands as cmd
from fsm import events as ev
from fsm.engine import Engine
from fsm.harness import scenario as scenario_module
from fsm.harness.scenario import Runner, load_scenarios

SCENARIOS = load_scenarios()


class _Capturing(Runner):
    """Records the engine's snapshot just before step ``at`` is fed."""

    def __init__(self, doc: dict[str, Any], at: int) -> None:
        super().__init__(doc)
        self.at = at
        self.captured: dict[str, Any] | None = None

    def step_events(self, step: dict[str, Any]) -> Iterable[ev.Event]:
        if self.captured is None and step is self.doc["steps"][self.at]:
            self.captured = golden_kit.plain(self.engine.snapshot())
        return super().step_events(step)


@pytest.mark.parametrize(
    "scenario_id",
    [
        pytest.param(sid, marks=pytest.mark.spec(*doc.get("spec", [])), id=sid)
        for sid, doc in SCENARIOS.items()
    ],
)
def test_scenario(scenario_id: str) -> None:
    doc = SCENARIOS[scenario_id]
    middle = len(doc["steps"]) // 2
    runner = _Capturing(copy.deepcopy(doc), middle)
    result = runner.run()
    assert result.passed, "\n".join(result.failures)
    golden_kit.check(
        "double", scenario_id, {"log": result.log, "final": result.final, "middle": [middle, runner.captured]}
    )
    golden = golden_kit.load("double", scenario_id)
    again = Runner(copy.deepcopy(doc))
    again.restore_at = (golden["middle"][0], golden["middle"][1])
    resumed = again.run()
    assert resumed.log == golden["log"], (
        "restored from the golden snapshot, the run must continue identically"
    )
    assert golden_kit.plain(resumed.final) == golden["final"]


def test_every_scenario_names_spec_ids() -> None:
    assert SCENARIOS, "no scenarios found"
    for sid, doc in SCENARIOS.items():
        assert doc.get("spec"), f"{sid} proves no spec ID"
        assert doc.get("steps"), f"{sid} has no steps"


class _HostileHost(Engine):
    """The engine as a host process would call it after a library changed the thread's context."""

    def handle(self, event: ev.Event) -> list[cmd.Command]:
        with localcontext(Context(prec=6, rounding=ROUND_UP)):
            return super().handle(event)


@pytest.mark.parametrize("scenario_id", ["W55", "W56", "W57", "R19", "restart-decided-close"])
def test_a_host_that_changed_the_decimal_context_changes_nothing(
    scenario_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A library in the same process (the ccxt client of the third-party tests sets ROUND_HALF_UP)
    may change the thread's decimal context; the engine computes in its own (D-47: replay exactness)."""
    monkeypatch.setattr(scenario_module, "Engine", _HostileHost)
    runner = Runner(copy.deepcopy(SCENARIOS[scenario_id]))
    assert isinstance(runner.engine, _HostileHost)
    result = runner.run()
    golden = golden_kit.load("double", scenario_id)
    assert result.log == golden["log"]
    assert golden_kit.plain(result.final) == golden["final"]
