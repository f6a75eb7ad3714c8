"""The fault matrix: every scenario x every event-level fault keeps every invariant.

One test per cell, so a failure names the scenario, the fault and (in its message) the variant and
the violated invariant. The whole matrix runs in-process in about a second.
"""

from __future__ import annotations

import pytest

from fsm import commands as cmd
from fsm.harness import daemon_faults, faults
from fsm.harness.scenario import load_scenarios
from fsm.ops import bench_cli
from fsm.ops.cli import main

# The spec IDs a cell proves beyond its scenario: the fault's own rule (none where the catalog has none).
FAULT_SPECS: dict[str, tuple[str, ...]] = {
    "none": (),
    "retryable": ("W35", "R12", "N-12"),
    "unknown": ("N-13",),
    "429/418": ("W50", "N-24"),
    "-1021": ("W49", "N-23"),
    "dup": (),
    "reorder": ("G01", "N-21"),
    "delay": ("R20",),
    "ws-drop": ("W22", "W23", "N-22"),
    "silent+stale": ("W23-1", "G03"),
    "listenKey": (),
}
CATALOG_SCENARIOS = {"W55", "W56", "W57"}


def _cells() -> list[object]:
    params: list[object] = []
    for scenario, _ in faults.MATRIX_SCENARIOS:
        for fault in ("none", *(f.name for f in faults.FAULTS)):
            ids = (*((scenario,) if scenario in CATALOG_SCENARIOS else ()), *FAULT_SPECS[fault])
            marks = [pytest.mark.spec(*ids)] if ids else []
            params.append(pytest.param(scenario, fault, marks=marks, id=f"{scenario}-x-{fault}"))
    return params


@pytest.fixture(scope="module")
def matrix() -> faults.MatrixResult:
    return faults.run_matrix()


def test_the_matrix_covers_every_scenario_and_fault(matrix: faults.MatrixResult) -> None:
    assert matrix.scenarios == ("W55", "W56", "W57", "W23-1-position", "W38-profit")
    assert matrix.faults == (
        "none",
        "retryable",
        "unknown",
        "429/418",
        "-1021",
        "dup",
        "reorder",
        "delay",
        "ws-drop",
        "silent+stale",
        "listenKey",
    )
    assert len(matrix.cells) == 55
    assert all(cell.runs for cell in matrix.cells)
    assert set(FAULT_SPECS) == set(matrix.faults)


@pytest.mark.parametrize(("scenario", "fault"), _cells())
def test_cell_keeps_every_invariant(matrix: faults.MatrixResult, scenario: str, fault: str) -> None:
    cell = matrix.cell(scenario, fault)
    failures = [f"[{run.variant or 'default'}] {v}" for run in cell.failed_runs for v in run.violations]
    assert failures == []


def test_the_timeline_faults_really_bite() -> None:
    """The WS drop makes the engine fall back to REST; silent WS with stale REST engages the safety
    lock; rate limiting engages protection: checked on W55 so a no-op injector cannot pass silently."""
    doc = load_scenarios()["W55"]
    drop = next(f for f in faults.FAULTS if f.name == "ws-drop")
    _, drop_doc, injector = drop.variants(doc)[3]
    runner = faults.FaultRunner(drop_doc, injector)
    record = runner.run_checked()
    sources = [c.source for c in record.commands() if isinstance(c, cmd.UsePriceSource)]
    assert sources == ["REST", "WS"]

    silent = next(f for f in faults.FAULTS if f.name == "silent+stale")
    _, silent_doc, injector = silent.variants(doc)[3]
    runner = faults.FaultRunner(silent_doc, injector)
    runner.run_checked()
    assert runner.safety_engaged()
    assert runner.final_state().flat

    runner = faults.FaultRunner(doc, faults.RateLimitBurst(None))
    record = runner.run_checked()
    protect = [
        c.dest for c in record.commands() if isinstance(c, cmd.Transitioned) and c.machine == "rate_limit"
    ]
    assert protect[:2] == ["PROTECT", "NORMAL"]
    assert runner.final_state().flat


def test_the_matrix_prints_and_exits_non_zero_on_a_failure(
    matrix: faults.MatrixResult, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setattr(bench_cli.faults, "run_matrix", lambda: matrix)
    # The daemon-level matrix has its own tests (test_daemon_fault_matrix.py); here it is empty.
    empty = daemon_faults.DaemonMatrixResult(scenarios=(), faults=(), cells=())
    monkeypatch.setattr(bench_cli.daemon_faults, "run_matrix", lambda **_: empty)
    code = main(["bench", "--faults"])
    out = capsys.readouterr().out
    assert "fault matrix" in out and "silent+stale" in out
    assert code == (0 if matrix.passed else 1)
    failing = faults.MatrixResult(
        scenarios=("W55",),
        faults=("none",),
        cells=(
            faults.CellResult(
                scenario="W55",
                fault="none",
                runs=(faults.RunResult(scenario="W55", fault="none", variant="", violations=("boom",)),),
            ),
        ),
    )
    monkeypatch.setattr(bench_cli.faults, "run_matrix", lambda: failing)
    assert main(["bench", "--faults"]) == 1
    assert "boom" in capsys.readouterr().out
