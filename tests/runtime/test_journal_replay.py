"""``shortfsm replay --journal``: a real daemon run against binance/sim, with a venue fault, re-fed
from its own database reproduces every engine answer exactly (issue #11 step 7)."""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

from fsm.harness import daemon_faults


def _shortfsm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fsm.ops.cli", *args], capture_output=True, text=True, timeout=120
    )


@cache
def _daemon_database(root: str) -> Path:
    """W57 (partial entry fill, risk message, market close) with user events delivered in reverse
    order: the daemon's database after the run."""
    scenario = daemon_faults.scenario_named("W57")
    workdir = Path(root) / "w57"
    workdir.mkdir(parents=True, exist_ok=True)
    reference = asyncio.run(daemon_faults.run_reference(scenario))
    fault = daemon_faults.fault_named("reorder-user")
    run = asyncio.run(daemon_faults.run_cell(scenario, fault, reference, workdir=workdir))
    assert run.passed, run.violations
    return workdir / "db.sqlite"


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _daemon_database(str(tmp_path_factory.mktemp("journal")))


@pytest.mark.spec("W57")
def test_a_daemon_run_with_a_fault_replays_to_the_same_answers(database: Path) -> None:
    with sqlite3.connect(database) as conn:
        kinds = dict(conn.execute("SELECT type, COUNT(*) FROM journal GROUP BY type").fetchall())
    # Marks and ticks are journaled: the run is complete, not just its messages and venue answers.
    assert kinds["MarkPriceTick"] > 0 and kinds["Tick"] > 0 and kinds["EngineCheckpoint"] == 1
    proc = _shortfsm("replay", "--journal", str(database), "--json")
    assert (proc.returncode, proc.stderr) == (0, ""), proc.stdout
    report = json.loads(proc.stdout)
    assert report["identical"] is True
    (run,) = report["runs"]
    assert run["from_run_start"] is True
    assert run["events"] == sum(n for kind, n in kinds.items() if kind != "EngineCheckpoint")
    assert run["commands"] > 20
    text = _shortfsm("replay", "--journal", str(database))
    assert text.returncode == 0
    assert f"{run['events']} events re-fed, {run['commands']} commands" in text.stdout


def test_a_recorded_answer_that_differs_is_named_with_its_journal_seq(database: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.sqlite"
    shutil.copy(database, copy)
    with sqlite3.connect(copy) as conn:
        seq, out = conn.execute(
            "SELECT seq, out FROM journal WHERE out LIKE '%PlaceOrder(%' ORDER BY seq LIMIT 1"
        ).fetchone()
        conn.execute(
            "UPDATE journal SET out = ? WHERE seq = ?", [out.replace("quantity=", "quantity=9"), seq]
        )
    proc = _shortfsm("replay", "--journal", str(copy))
    assert proc.returncode == 1
    assert f"DIFFERS at journal seq {seq} (" in proc.stdout
    assert "recorded: " in proc.stdout and "quantity=9" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


def test_a_missing_or_foreign_database_is_one_line_and_exit_2(tmp_path: Path) -> None:
    missing = _shortfsm("replay", "--journal", str(tmp_path / "nope.sqlite"))
    assert (missing.returncode, missing.stdout) == (2, "")
    assert missing.stderr.strip().splitlines() == [f"replay: no database at {tmp_path / 'nope.sqlite'}"]
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"not a database at all" * 100)
    bad = _shortfsm("replay", "--journal", str(garbage))
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert "Traceback" not in bad.stderr
    scenario = _shortfsm("replay", "W55", "--journal", str(garbage))
    assert scenario.returncode == 2 and "name no scenario" in scenario.stderr


def test_a_checkpoint_in_the_encoding_before_the_close_table_is_the_same_state() -> None:
    """A journal written before D-66 holds checkpoints with the flags ``closing``/``close_deferred``:
    replayed by today's engine, the same state is not a divergence; another state still is."""
    from test_close_machine import _legacy  # the old encoding of a snapshot
    from test_flatten_engine import _now, _phase1_with_its_tp

    from fsm import events as ev
    from fsm.harness.journal_replay import RunReplay, _compare_checkpoint

    harness = _phase1_with_its_tp()
    harness.engine.handle(ev.FlattenStarted(now_ms=_now(harness), request_id="f1"))
    engine = harness.engine
    old = json.loads(json.dumps(_legacy(engine.snapshot())))
    assert "close_state" not in json.dumps(old) and '"closing": true' in json.dumps(old)
    run = RunReplay(start_seq=1, started_ms=0, run_start=True)
    _compare_checkpoint(run, 9, engine, old)
    assert run.divergence is None
    old["symbols"]["BTCUSDT"]["close_reason"] = "risk"  # a recorded close the replay did not decide
    _compare_checkpoint(run, 10, engine, old)
    assert run.divergence is not None and (run.divergence.seq, run.divergence.what) == (10, "checkpoint")
