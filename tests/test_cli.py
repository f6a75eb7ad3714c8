"""The shortfsm command line: replay and diagram."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fsm.ops import cli
from fsm.ops.diagram import DIAGRAM_PATH, render_diagrams
from fsm.table import GLOBAL_MACHINES, SYMBOL_REGIONS, SYMBOL_TRANSITIONS


def test_replay_of_w55_prints_the_trace_from_message_to_closed_position(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["replay", "W55"]) == 0
    out = capsys.readouterr().out
    for line in (
        "BTCUSDT IDLE->MONITORING",
        "BTCUSDT MONITORING->ENTRY_ORDER",
        "BTCUSDT PHASE1->EXITING",
        "BTCUSDT EXITING->IDLE",
        "1 passed, 0 failed",
    ):
        assert line in out


def test_replay_by_spec_id_runs_every_scenario_that_proves_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["replay", "R19", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert {r["id"] for r in results} >= {"R19", "R19-entry-exempt"}
    assert all(r["passed"] and "R19" in r["spec"] for r in results)


def test_replay_exits_non_zero_when_an_expectation_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "id: bad\nspec: [W55]\nvenue: {klines: {BTCUSDT: {high: '101', low: '99', close: '100'}}}\n"
        "steps:\n  - {at: 0, leading: {id: 1}, expect: {states: {BTCUSDT: PHASE2}}}\n",
        encoding="utf-8",
    )
    assert cli.main(["replay", str(path)]) == 1
    assert "expected PHASE2, got MONITORING" in capsys.readouterr().out


def test_replay_of_an_unknown_id_is_a_clear_error() -> None:
    with pytest.raises(SystemExit, match="no scenario or spec ID"):
        cli.main(["replay", "W99"])


def test_committed_diagrams_match_the_tables() -> None:
    assert DIAGRAM_PATH.read_text(encoding="utf-8") == render_diagrams(), "run `shortfsm diagram` and commit"


def test_diagram_shows_every_transition_row() -> None:
    text = render_diagrams()
    for row in [*SYMBOL_TRANSITIONS, *(row for region in SYMBOL_REGIONS.values() for row in region["rows"])]:
        for source in row["source"]:
            if row["dest"] is None:  # internal: a loop labelled so
                assert f"{source} --> {source}: " in text
                assert f"{row['trigger']} (internal)" in text
            else:
                assert f"{source} --> {row['dest']}:" in text
    assert "## Per symbol: the close (`close`, beside the phase)" in text
    for name in SYMBOL_REGIONS:
        assert f"(`{name}`, beside the phase)" in text
    for name in GLOBAL_MACHINES:
        assert f"## Global: {name}" in text


def test_diagram_check_flags_a_stale_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    stale = tmp_path / "diagrams.md"
    stale.write_text("old\n", encoding="utf-8")
    monkeypatch.setattr("fsm.ops.diagram.DIAGRAM_PATH", stale)
    assert cli.main(["diagram", "--check"]) == 1
    monkeypatch.setattr("fsm.ops.diagram.DIAGRAM_PATH", stale)
    stale.write_text(render_diagrams(), encoding="utf-8")
    assert cli.main(["diagram", "--check"]) == 0
