"""``shortfsm status``: one snapshot of a prepared database, "no daemon" without one, --watch until Ctrl-C."""

from __future__ import annotations

import argparse
import json
import os
import re
import sqlite3
import time
from pathlib import Path

import pytest
from board_kit import EXPECTED, make_db, scenario_state

from fsm.ops import board_cli, cli


def status(*argv: str) -> int:
    """``shortfsm status ...`` through a parser holding only this subcommand (the other edge packages'
    subcommands are not this test's business)."""
    parser = argparse.ArgumentParser(prog="shortfsm")
    board_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["status", *argv])
    result: int = args.func(args)
    return result


@pytest.fixture
def plain_terminal(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An 80-column, colourless stdout in an empty working directory."""
    monkeypatch.setenv("COLUMNS", "80")
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "LINES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_status_prints_one_snapshot_of_a_running_daemon(
    plain_terminal: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    extras = {
        "profile": "sim",
        "streams": {"market": "up", "user": "up", "telegram": "replay"},
        "last_event": {"type": "MarkPriceTick", "now_ms": 1_767_225_603_000},
    }
    view, transitions, alerts = scenario_state("W55", 4, extras)
    (plain_terminal / "var").mkdir()
    db = plain_terminal / "var" / "shortfsm.db"
    make_db(db, view=view, transitions=transitions, alerts=alerts)
    now = int(time.time() * 1000)
    with sqlite3.connect(db) as conn:  # the daemon's heartbeat: this process, fresh
        beat = {"pid": os.getpid(), "wall_ms": now, "started_ms": now - 60_000}
        conn.execute("INSERT INTO status VALUES ('heartbeat', ?, ?)", [json.dumps(beat), now])
    assert status() == 0
    board, last, _ = capsys.readouterr().out.rsplit("\n", 2)
    assert board + "\n" == (EXPECTED / "status_phase1.txt").read_text(encoding="utf-8")
    assert re.fullmatch(
        rf"daemon running on var/shortfsm.db: pid {os.getpid()}, started \d{{4}}-\d\d-\d\d "
        r"\d\d:\d\d:\d\d UTC, last heartbeat \d+\.\d s ago",
        last,
    )


def test_status_of_a_database_whose_daemon_is_gone_says_stopped_and_exits_1(
    plain_terminal: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    extras = {"profile": "sim", "streams": {"market": "up", "user": "up", "telegram": "replay"}}
    view, transitions, alerts = scenario_state("W55", 4, extras)
    db = plain_terminal / "shortfsm.db"
    make_db(db, view=view, transitions=transitions, alerts=alerts)
    with sqlite3.connect(db) as conn:  # pid 0 never runs
        beat = {"pid": 0, "wall_ms": 1_767_225_600_000, "started_ms": 1_767_225_000_000}
        conn.execute("INSERT INTO status VALUES ('heartbeat', ?, ?)", [json.dumps(beat), 1])
    assert status("--db", str(db)) == 1
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == (
        f"no daemon is running on {db}: stopped since 2026-01-01 00:00:00 UTC (last heartbeat of pid 0)"
    )
    assert "STOPPED" in out and "running" not in out.splitlines()[2]


def test_status_on_a_missing_database_prints_no_daemon(
    plain_terminal: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert status("--db", "var/shortfsm.db") == 3
    assert capsys.readouterr().out == (EXPECTED / "empty.txt").read_text(encoding="utf-8") + (
        "no daemon is running on var/shortfsm.db: there is no database at var/shortfsm.db\n"
    )
    assert list(plain_terminal.iterdir()) == []


def test_status_watch_ends_quietly_on_ctrl_c(
    plain_terminal: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: list[str] = []

    def interrupted(db_path: str, **_: object) -> None:
        seen.append(db_path)
        raise KeyboardInterrupt

    monkeypatch.setattr(board_cli, "watch", interrupted)
    assert status("--watch", "--db", "other.db") == 0
    assert seen == ["other.db"]
    assert capsys.readouterr().err == ""


def test_status_is_a_shortfsm_subcommand() -> None:
    args = cli.build_parser().parse_args(["status"])
    assert (args.db, args.config, args.watch, args.json, args.func) == (
        None,
        None,
        False,
        False,
        board_cli.cmd_status,
    )
