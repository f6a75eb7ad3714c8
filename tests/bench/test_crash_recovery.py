"""Crash recovery at the engine level (N-28): kill -9 at every event boundary of W55, W56 and W57.

At each boundary (and between the commands of an event: a crash can fall after the cursor was
persisted but before the orders went out), the engine is thrown away with everything in flight; a
fresh ``Engine(strategy, recovering=True)`` gets ``RecoveryStarted`` with what storage holds (the
cursors and cooldowns whose Persist commands were carried out) and the venue's snapshot, the market
keeps streaming, the Telegram backfill re-delivers what is above the stored cursors, and the
timeline continues. Each boundary must converge to the crash-free final state with every invariant
of the fault matrix (no duplicate order, no orphaned exit order, no exit above the position).
"""

from __future__ import annotations

from functools import cache
from typing import Any

import pytest

from fsm import commands as cmd
from fsm import events as ev
from fsm.runtime import faults
from fsm.runtime.scenario import load_scenarios


@cache
def _catalog() -> dict[str, dict[str, Any]]:
    return load_scenarios()


@cache
def _reference(scenario: str) -> faults.FinalState:
    final, result = faults.baseline(_catalog()[scenario])
    assert result.passed, result.violations
    return final


def _points() -> list[object]:
    params: list[object] = []
    catalog = load_scenarios()
    for scenario in faults.CRASH_SCENARIOS:
        for point, label in faults.crash_points(catalog[scenario]):
            params.append(
                pytest.param(
                    scenario,
                    point,
                    label,
                    # A pinned known gap proves nothing about the spec: no spec mark for it.
                    marks=()
                    if f"{scenario}-ev{point.event:02d}-cmd{point.commands}" in KNOWN_GAPS
                    else pytest.mark.spec(scenario, "N-28"),
                    id=f"{scenario}-ev{point.event:02d}-cmd{point.commands}",
                )
            )
    return params


# Known gaps, pinned (not skipped): each must still fail exactly this way, so a fix shows up here.
# - W57 event 10 (the risk message): a crash after its cursor was persisted (N-05: cursor before
#   effects) but before the cancel/market close went out loses the loss-cut: at-most-once by design
#   until the daemon re-runs unfinished journaled decisions on recovery.
# - W56 event 12 (the second entry's fill): this harness saves no snapshot between the fill and the
#   crash, so recovery's hint still says PHASE1. The daemon now saves its snapshot right after every
#   transition, before any order goes out, which closes this window there.
KNOWN_GAPS = {
    "W57-ev10-cmd1": "not converged",
    "W57-ev10-cmd2": "not converged",
    "W57-ev10-cmd3": "not converged",
    "W57-ev10-cmd4": "not converged",
    "W57-ev10-cmd5": "not converged",
    "W56-ev12-cmd0": "not converged",
    "W56-ev12-cmd1": "not converged",
    "W56-ev12-cmd2": "not converged",
}


@pytest.mark.parametrize(("scenario", "point", "label"), _points())
def test_crash_at_boundary_converges(scenario: str, point: faults.CrashPoint, label: str) -> None:
    result = faults.run_crash(_catalog()[scenario], point, label, _reference(scenario))
    key = f"{scenario}-ev{point.event:02d}-cmd{point.commands}"
    if key in KNOWN_GAPS:
        assert result.violations, f"{key} converges now: remove it from KNOWN_GAPS"
        assert any(KNOWN_GAPS[key] in v for v in result.violations), result.violations
        # Even in the gap nothing is sent twice and no exit exceeds the position.
        assert not any("duplicate" in v or "above the position" in v for v in result.violations), (
            result.violations
        )
        return
    assert list(result.violations) == [], label


def test_every_boundary_of_the_three_flows_is_visited() -> None:
    catalog = load_scenarios()
    for scenario in faults.CRASH_SCENARIOS:
        runner = faults.FaultRunner(catalog[scenario])
        record = runner.run_checked()
        points = faults.crash_points(catalog[scenario])
        assert len(points) == sum(len(d.commands) + 1 for d in record.decisions)
        assert points[0][0] == faults.CrashPoint(event=1, commands=0)


def test_the_crash_really_replaces_the_engine_and_recovers_from_the_venue() -> None:
    doc = load_scenarios()["W55"]
    # After the first entry reached the venue (event 6 is OrderPrepared -> PlaceOrder ENTRY1).
    runner = faults.FaultRunner(doc, crash=faults.CrashPoint(event=6, commands=1))
    record = runner.run_checked()
    assert runner.crashed
    kinds = [type(d.event).__name__ for d in record.decisions]
    assert kinds[6:9] == ["RecoveryStarted", "ExchangeSnapshot", "MarkPriceTick"]
    rebuilt = [
        (c.source, c.dest)
        for c in record.decisions[7].commands
        if isinstance(c, cmd.Transitioned) and c.machine == "symbol"
    ]
    assert rebuilt == [("IDLE", "ENTRY_ORDER")]
    assert [cid for _, cid, _ in record.created] == ["sf1001-E11-BTCUSDT", "sf1001-TP1-BTCUSDT"]
    assert runner.final_state() == _reference("W55")


def test_backfill_redelivers_a_message_whose_cursor_was_not_stored() -> None:
    doc = load_scenarios()["W57"]
    risk = [
        d for d in faults.FaultRunner(doc).run_checked().decisions if isinstance(d.event, ev.MessageReceived)
    ]
    crash_at = risk[-1].index  # the risk message (5001)

    def deliveries(commands_done: int) -> list[int]:
        runner = faults.FaultRunner(doc, crash=faults.CrashPoint(event=crash_at, commands=commands_done))
        record = runner.run_checked()
        return [d.event.message_id for d in record.decisions if isinstance(d.event, ev.MessageReceived)]

    # Nothing carried out: the cursor is not stored, the backfill delivers 5001 again.
    assert deliveries(0) == [1001, 5001, 5001]
    # PersistCursor carried out, then the crash: 5001 is never seen again (at most once, N-05).
    assert deliveries(1) == [1001, 5001]
