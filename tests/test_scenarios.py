"""Every scenario file under specs/scenarios is a spec test: its `spec` list names the IDs it proves.

Each scenario is run twice; the two command logs must be identical (replay determinism).
"""

from __future__ import annotations

import pytest

from fsm.runtime.scenario import load_scenarios, run_scenario

SCENARIOS = load_scenarios()


@pytest.mark.parametrize(
    "scenario_id",
    [
        pytest.param(sid, marks=pytest.mark.spec(*doc.get("spec", [])), id=sid)
        for sid, doc in SCENARIOS.items()
    ],
)
def test_scenario(scenario_id: str) -> None:
    doc = SCENARIOS[scenario_id]
    result = run_scenario(doc)
    assert result.passed, "\n".join(result.failures)
    again = run_scenario(doc)
    assert again.log == result.log, "the same scenario must replay to the same command log"


def test_every_scenario_names_spec_ids() -> None:
    assert SCENARIOS, "no scenarios found"
    for sid, doc in SCENARIOS.items():
        assert doc.get("spec"), f"{sid} proves no spec ID"
        assert doc.get("steps"), f"{sid} has no steps"
