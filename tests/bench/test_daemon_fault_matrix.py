"""The fault matrix end to end: the real daemon against the simulated venue, one test per cell.

Each scenario's fault-free run is the reference of its row (run once per module); every cell runs
the daemon again with one venue fault and must keep every invariant (``fsm.runtime.daemon_faults``).
"""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from functools import cache

import pytest

from fsm.runtime import daemon_faults, faults
from fsm.runtime.cli import main

# The spec IDs a cell proves beyond its scenario's (the fault's own rule, where the catalog has one).
FAULT_SPECS: dict[str, tuple[str, ...]] = {
    "5xx": ("N-12",),
    "timeout-before": ("N-13",),
    "timeout-after": ("N-13",),
    "429": ("W50", "N-24"),
    "418": ("W50", "N-24"),
    "-1021": ("W49", "N-23"),
    "ws-drop": ("W22", "N-22"),
    "silent-ws": ("W22", "N-22"),
    "stale-rest": ("W23-1", "G03"),
    "dup-user": (),
    "reorder-user": ("G01", "N-21"),
    "delay-user": ("R20",),
    "listenKey": (),
}

# Known gaps, pinned (not skipped): each must still fail exactly this way, so a fix shows up here.
# (W57 x reorder-user was one: a stale ACCOUNT_UPDATE re-locked entries; PositionChanged now carries
# the venue's transaction time and the engine ignores an older update.)
KNOWN_GAPS: dict[tuple[str, str], str] = {}


@cache
def _reference(scenario: str) -> daemon_faults.CellRun:
    return asyncio.run(daemon_faults.run_reference(daemon_faults.scenario_named(scenario)))


def _cells() -> list[object]:
    params: list[object] = []
    for scenario in daemon_faults.SCENARIOS:
        for fault in daemon_faults.FAULTS:
            ids = (*scenario.specs, *FAULT_SPECS[fault.name])
            pinned = (scenario.name, fault.name) in KNOWN_GAPS
            params.append(
                pytest.param(
                    scenario.name,
                    fault.name,
                    marks=() if pinned else pytest.mark.spec(*ids),
                    id=f"{scenario.name}-x-{fault.name}",
                )
            )
    return params


def test_the_matrix_covers_every_scenario_and_fault() -> None:
    assert [s.name for s in daemon_faults.SCENARIOS] == ["W55", "W56", "W57", "stale-lock", "risk-profit"]
    assert [f.name for f in daemon_faults.FAULTS] == [
        "5xx",
        "timeout-before",
        "timeout-after",
        "429",
        "418",
        "-1021",
        "ws-drop",
        "silent-ws",
        "stale-rest",
        "dup-user",
        "reorder-user",
        "delay-user",
        "listenKey",
    ]
    assert set(FAULT_SPECS) == {f.name for f in daemon_faults.FAULTS}


@pytest.mark.parametrize("scenario", [s.name for s in daemon_faults.SCENARIOS])
def test_the_fault_free_run_tells_its_story(scenario: str) -> None:
    reference = _reference(scenario)
    assert reference.violations == ()
    story = daemon_faults.scenario_named(scenario)
    assert reference.transitions[0] == "recovery_lock RECOVERING->READY"
    assert reference.transitions[1:] == story.expect


def test_the_reference_orders_at_the_venue() -> None:
    assert _reference("W56").venue_orders == (
        "sf1001-E11-ETHUSDT LIMIT SELL 3535x1.414: FILLED (1.414)",
        # The scale-in crosses the mark (4072) and fills there, at the book: avg 3761.57 (1.414 x 3535
        # + 1.032 x 4072) / 2.446, MDD 4325.8.
        "sf1001-E21-ETHUSDT LIMIT SELL 4065.25x1.032: FILLED (1.032)",
        "sf1001-BE1-ETHUSDT LIMIT BUY 3761.57x2.446: FILLED (2.446)",
        "sf1001-MD1-ETHUSDT STOP_MARKET BUY @4325.8: CANCELED",
    )
    assert _reference("W57").venue_orders == (
        "sf1001-E11-ETHUSDT LIMIT SELL 3535x1.414: CANCELED (0.700)",
        "sf1001-CL1-ETHUSDT MARKET BUY 0x0.7: FILLED (0.7)",
    )
    profit = _reference("risk-profit")
    assert profit.final.open_orders == (
        ("ETHUSDT", "BE_STOP", "BUY", Decimal("3535"), Decimal("0")),
        ("ETHUSDT", "TP", "BUY", Decimal("3358.25"), Decimal("0.700")),
    )


@pytest.mark.parametrize(("scenario", "fault"), _cells())
def test_cell_keeps_every_invariant(scenario: str, fault: str) -> None:
    reference = _reference(scenario)
    assert reference.violations == ()
    run = asyncio.run(
        daemon_faults.run_one(
            daemon_faults.scenario_named(scenario), daemon_faults.fault_named(fault), reference
        )
    )
    assert run.fired, "the fault never fired"
    gap = KNOWN_GAPS.get((scenario, fault))
    if gap is not None:
        assert run.violations, f"{scenario} x {fault} passes now: remove it from KNOWN_GAPS"
        assert any(gap in v for v in run.violations), run.violations
        # Even in the gap nothing is sent twice, no exit exceeds the position, nothing is orphaned.
        assert not any("duplicate" in v or "above" in v or "orphan" in v for v in run.violations)
        return
    assert list(run.violations) == [], f"{run.outcome}; fired {run.fired}; {run.final.describe()}"


def test_the_venue_faults_really_bite() -> None:
    """A no-op injector cannot pass silently: the 503 reaches the entry's first POST and the same
    client id goes again; the listenKey dies and a new one is used; the frozen prices engage the
    safety lock and flatten; the 4 s 418 ban delays the entry, which goes out with the same client
    id once the ban is over (D-20) instead of burning its three attempts inside the ban."""
    scenario = daemon_faults.scenario_named("W55")
    reference = _reference("W55")

    def run(fault: str) -> daemon_faults.CellRun:
        return asyncio.run(daemon_faults.run_one(scenario, daemon_faults.fault_named(fault), reference))

    five = run("5xx")
    assert five.venue_orders[0] == "sf1001-E11-ETHUSDT LIMIT SELL 3535x1.414: FILLED (1.414)"
    assert (five.order_posts, five.venue_requests) == (3, 2)  # the 503 never reached the exchange
    stale = run("stale-rest")
    assert "safety_lock PRICE_OK->PRICE_STALE" in stale.transitions
    assert stale.outcome.startswith("same") or stale.outcome.startswith("flat")
    assert stale.final.flat
    banned = run("418")
    assert "ETHUSDT ENTRY_ORDER->IDLE" not in banned.transitions
    assert banned.outcome.startswith("same")
    assert banned.venue_orders[0] == "sf1001-E11-ETHUSDT LIMIT SELL 3535x1.414: FILLED (1.414)"


def test_both_matrices_print_and_exit_non_zero_on_a_failure(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    engine = faults.MatrixResult(
        scenarios=("W55",),
        faults=("none",),
        cells=(
            faults.CellResult(
                scenario="W55",
                fault="none",
                runs=(faults.RunResult(scenario="W55", fault="none", variant="", violations=()),),
            ),
        ),
    )
    final = faults.FinalState(states=(), locks=(), positions=(), open_orders=())
    cell = daemon_faults.CellRun(
        scenario="W55",
        fault="5xx",
        violations=("boom at the venue",),
        outcome="differs",
        final=final,
        fired=("503 @ 4.0s",),
        venue_requests=2,
        events=10,
        wall_s=0.5,
    )
    daemon = daemon_faults.DaemonMatrixResult(scenarios=("W55",), faults=("5xx",), cells=(cell,))
    monkeypatch.setattr(faults, "run_matrix", lambda: engine)
    monkeypatch.setattr(daemon_faults, "run_matrix", lambda **_: daemon)
    assert main(["bench", "--faults"]) == 1
    out = capsys.readouterr().out
    assert "fault matrix" in out and "daemon" in out and "boom at the venue" in out
    assert main(["bench", "--faults", "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["faults"]["passed"] is True
    assert data["daemon_faults"]["passed"] is False
    assert data["daemon_faults"]["cells"][0]["violations"] == ["boom at the venue"]
