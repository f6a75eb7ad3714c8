"""``shortfsm status``: one snapshot of a prepared database, "no daemon" without one, --watch until Ctrl-C."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from board_kit import EXPECTED, make_db, scenario_state

from fsm.runtime import board_cli, cli


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
    make_db(plain_terminal / "var" / "shortfsm.db", view=view, transitions=transitions, alerts=alerts)
    assert status() == 0
    assert capsys.readouterr().out == (EXPECTED / "position_phase1.txt").read_text(encoding="utf-8")


def test_status_on_a_missing_database_prints_no_daemon(
    plain_terminal: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert status("--db", "var/shortfsm.db") == 0
    assert capsys.readouterr().out == (EXPECTED / "empty.txt").read_text(encoding="utf-8")
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
    assert (args.db, args.watch, args.func) == ("var/shortfsm.db", False, board_cli.cmd_status)
