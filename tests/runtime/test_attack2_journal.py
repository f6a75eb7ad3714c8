"""Attack pass 2: ``shortfsm replay --journal`` on a real daemon database with corrupt rows, and
the order rows a reordered user stream leaves behind."""

from __future__ import annotations

import asyncio
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
        [sys.executable, "-m", "fsm.ops.cli", *args], capture_output=True, text=True, timeout=60
    )


@cache
def _w57_reordered(root: str) -> Path:
    """W57 with the user stream's pushes delivered in reverse order: the daemon's database."""
    scenario = daemon_faults.scenario_named("W57")
    workdir = Path(root) / "w57"
    workdir.mkdir(parents=True, exist_ok=True)
    reference = asyncio.run(daemon_faults.run_reference(scenario))
    run = asyncio.run(
        daemon_faults.run_cell(
            scenario, daemon_faults.fault_named("reorder-user"), reference, workdir=workdir
        )
    )
    assert run.passed, run.violations
    return workdir / "db.sqlite"


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _w57_reordered(str(tmp_path_factory.mktemp("attack2_journal")))


def _corrupt(database: Path, tmp_path: Path, sql: str) -> Path:
    copy = tmp_path / "copy.sqlite"
    shutil.copy(database, copy)
    with sqlite3.connect(copy) as conn:
        assert conn.execute(sql).rowcount == 1
    return copy


def _assert_one_line_exit_2(proc: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-600:]
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1


def test_the_intact_database_replays_identically(database: Path) -> None:
    proc = _shortfsm("replay", "--journal", str(database))
    assert (proc.returncode, proc.stderr) == (0, "")


def test_a_checkpoint_row_that_is_not_json_is_one_line(database: Path, tmp_path: Path) -> None:
    copy = _corrupt(
        database, tmp_path, "UPDATE journal SET payload = '{not json' WHERE type = 'EngineCheckpoint'"
    )
    _assert_one_line_exit_2(_shortfsm("replay", "--journal", str(copy)))


def test_a_checkpoint_row_without_its_keys_is_one_line(database: Path, tmp_path: Path) -> None:
    copy = _corrupt(database, tmp_path, "UPDATE journal SET payload = '{}' WHERE type = 'EngineCheckpoint'")
    _assert_one_line_exit_2(_shortfsm("replay", "--journal", str(copy)))


def test_a_checkpoint_with_a_foreign_engine_is_one_line(database: Path, tmp_path: Path) -> None:
    copy = _corrupt(
        database,
        tmp_path,
        'UPDATE journal SET payload = \'{"run_start":true,"engine":{"x":1}}\' '
        "WHERE type = 'EngineCheckpoint'",
    )
    _assert_one_line_exit_2(_shortfsm("replay", "--journal", str(copy)))


def test_an_event_row_with_a_bad_number_is_reported_not_a_traceback(database: Path, tmp_path: Path) -> None:
    copy = _corrupt(
        database,
        tmp_path,
        'UPDATE journal SET payload = replace(payload, \'"$d":"95000.00000"\', \'"$d":"abc"\') '
        "WHERE seq = (SELECT MIN(seq) FROM journal WHERE type = 'MarkPriceTick')",
    )
    proc = _shortfsm("replay", "--journal", str(copy))
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-600:]
    assert proc.returncode == 1
    assert "<undecodable row:" in proc.stdout


def test_an_event_row_of_an_unknown_type_is_reported(database: Path, tmp_path: Path) -> None:
    copy = _corrupt(
        database,
        tmp_path,
        'UPDATE journal SET payload = replace(payload, \'"$t":"MarkPriceTick"\', \'"$t":"Nope"\') '
        "WHERE seq = (SELECT MIN(seq) FROM journal WHERE type = 'MarkPriceTick')",
    )
    proc = _shortfsm("replay", "--journal", str(copy))
    assert "Traceback" not in proc.stdout + proc.stderr
    assert proc.returncode == 1 and "<undecodable row:" in proc.stdout


@pytest.mark.spec("W57")
def test_reordered_pushes_leave_ended_orders_ended_in_the_database(database: Path) -> None:
    with sqlite3.connect(database) as conn:
        rows = conn.execute("SELECT client_order_id, status FROM orders ORDER BY client_order_id").fetchall()
    assert rows == [("sf1001-CL1-ETHUSDT", "FILLED"), ("sf1001-E11-ETHUSDT", "CANCELED")]
