"""read_board_state on real SQLite files: read-only, tolerant of every way a database can be missing."""

from __future__ import annotations

import hashlib
import io
import json
import os
import sqlite3
import time
from pathlib import Path

from board_kit import EMPTY_BOOK, assert_matches, make_db, scenario_state
from rich.console import Console

from fsm.ops.board import TRANSITION_ROWS, Freshness, load_board_state, read_board_state, watch


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_daemon_database_gives_the_view_and_the_newest_rows(tmp_path: Path) -> None:
    view, transitions, alerts = scenario_state("R15", 6)
    setup = {  # stored by the daemon, left out by the board (two moves a second on every entry)
        **transitions[0],
        "machine": "setup",
        "source": "NONE",
        "dest": "ENTRY1",
        "trigger": "prepare_entry1",
    }
    stored = [setup, *transitions]
    db = make_db(tmp_path / "shortfsm.db", view=view, transitions=stored, alerts=alerts)
    got_view, got_transitions, got_alerts = read_board_state(db)
    assert got_view is not None
    assert got_view == {**view, "book": EMPTY_BOOK}  # the ledger's figures join the daemon's view
    assert len(transitions) > TRANSITION_ROWS
    assert got_transitions == transitions[:TRANSITION_ROWS]  # the newest, newest first
    assert got_alerts == alerts
    assert got_alerts[0] == {
        "now_ms": 1_767_225_605_000,
        "kind": "exit_cancel_failed",
        "severity": "critical",
        "symbol": "BTCUSDT",
        "text": "BTCUSDT: could not cancel sf1001-BS1-BTCUSDT after 3 attempts",
    }


def test_only_the_last_transitions_are_read(tmp_path: Path) -> None:
    rows = [
        {
            "now_ms": 1000 * i,
            "machine": "symbol",
            "symbol": "BTCUSDT",
            "source": "IDLE",
            "dest": "MONITORING",
            "trigger": "start_monitoring",
            "reason": f"r{i}",
        }
        for i in range(12, 0, -1)
    ]
    db = make_db(tmp_path / "shortfsm.db", view={"now_ms": 12_000}, transitions=rows)
    _, transitions, alerts = read_board_state(db)
    assert [t["reason"] for t in transitions] == [f"r{i}" for i in range(12, 12 - TRANSITION_ROWS, -1)]
    assert alerts == []


def test_reading_never_writes_the_database(tmp_path: Path) -> None:
    view, transitions, alerts = scenario_state("W55", 4)
    db = make_db(tmp_path / "shortfsm.db", view=view, transitions=transitions, alerts=alerts, wal=False)
    before = digest(db)
    for _ in range(3):
        assert read_board_state(db)[0] == {**view, "book": EMPTY_BOOK}
    assert digest(db) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shortfsm.db"]


def test_a_missing_database_is_no_daemon_and_is_not_created(tmp_path: Path) -> None:
    db = tmp_path / "var" / "shortfsm.db"
    state = load_board_state(db)
    assert (state.view, state.transitions, state.alerts) == (None, [], [])
    assert state.problem == f"no database at {db}"
    assert not db.exists() and not db.parent.exists()


def test_a_garbage_file_is_explained(tmp_path: Path) -> None:
    db = tmp_path / "shortfsm.db"
    db.write_bytes(b"this is not sqlite at all\x00\x01" * 100)
    before = digest(db)
    state = load_board_state(db)
    assert (state.view, state.transitions, state.alerts) == (None, [], [])
    assert state.problem == f"{db} is not a shortfsm database (file is not a database)"
    assert digest(db) == before


def test_an_empty_file_has_no_tables_yet(tmp_path: Path) -> None:
    db = tmp_path / "shortfsm.db"
    db.write_bytes(b"")
    state = load_board_state(db)
    assert state.view is None
    assert state.problem == f"{db} is empty: the daemon has not created its tables yet"


def test_no_status_row_yet_still_reads_the_history(tmp_path: Path) -> None:
    _, transitions, alerts = scenario_state("R15", 6)
    db = make_db(tmp_path / "shortfsm.db", transitions=transitions, alerts=alerts)
    state = load_board_state(db)
    assert state.view is None
    assert state.problem == "no board status yet: the daemon is starting or has never run on this database"
    assert state.transitions == transitions[:TRANSITION_ROWS]
    assert state.alerts == alerts


def test_an_older_schema_without_the_status_table_is_explained(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    conn = sqlite3.connect(db)
    conn.executescript(
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);"
        "INSERT INTO meta VALUES ('schema_version', '0');"
        "CREATE TABLE transitions (id INTEGER PRIMARY KEY, now_ms INTEGER, machine TEXT, symbol TEXT,"
        " source TEXT, dest TEXT);"  # an older layout: no trigger, no reason
        "INSERT INTO transitions (now_ms, machine, symbol, source, dest) VALUES (1, 'symbol', 'X', 'A', 'B');"
    )
    conn.commit()
    conn.close()
    state = load_board_state(db)
    assert (state.view, state.transitions, state.alerts) == (None, [], [])
    assert state.problem == (
        f"{db} has no status table (schema version 0): it was written by an older shortfsm; "
        "start the daemon once to migrate it"
    )


def test_unreadable_status_json_is_no_view(tmp_path: Path) -> None:
    db = make_db(tmp_path / "shortfsm.db")
    conn = sqlite3.connect(db)
    conn.execute("INSERT INTO status VALUES ('board', '{not json', 1)")
    conn.commit()
    conn.close()
    state = load_board_state(db)
    assert (state.view, state.problem) == (None, "the board status is unreadable")


def test_a_locked_database_is_retried_later_not_waited_for(tmp_path: Path) -> None:
    view, _, _ = scenario_state("W45", 1)
    db = make_db(tmp_path / "shortfsm.db", view=view, wal=False)
    writer = sqlite3.connect(db, isolation_level=None)
    writer.execute("BEGIN EXCLUSIVE")
    writer.execute("UPDATE status SET updated_ms = 2")
    try:
        state = load_board_state(db, timeout_s=0)
        assert (state.view, state.transitions, state.alerts) == (None, [], [])
        assert state.problem == f"{db} is locked by another process; retrying"
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert read_board_state(db)[0] == {**view, "book": EMPTY_BOOK}


# -- the live loop ------------------------------------------------------------------------------


def test_watch_redraws_until_stopped_and_leaves_the_last_board(tmp_path: Path) -> None:
    view, transitions, alerts = scenario_state(
        "W55",
        4,
        {
            "profile": "sim",
            "streams": {"market": "up", "user": "up", "telegram": "replay"},
            "last_event": {"type": "MarkPriceTick", "now_ms": 1_767_225_603_000},
        },
    )
    db = make_db(tmp_path / "shortfsm.db", view=view, transitions=transitions, alerts=alerts)
    with sqlite3.connect(db) as conn:  # a live daemon's heartbeat (this process, fresh)
        beat = {"pid": os.getpid(), "wall_ms": int(time.time() * 1000)}
        conn.execute("INSERT INTO status VALUES ('heartbeat', ?, 1)", [json.dumps(beat)])
    calls: list[int] = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) == 3

    console = Console(record=True, width=80, height=200, file=io.StringIO(), color_system=None)
    watch(db, refresh_s=0, stop=stop, console=console)
    assert len(calls) == 3
    # the final frame stays on screen (Live leaves the cursor at its end: no newline of its own)
    assert_matches("status_phase1", console.export_text() + "\n")


def test_watch_on_a_missing_database_shows_no_daemon(tmp_path: Path) -> None:
    console = Console(record=True, width=80, file=io.StringIO(), color_system=None)
    watch(tmp_path / "none.db", refresh_s=0, stop=lambda: True, console=console)
    assert "no daemon" in console.export_text()


def test_freshness_notices_a_board_that_stopped_changing() -> None:
    fresh = Freshness(limit_s=5)
    assert fresh.observe({"now_ms": 1000}, 100.0) is None
    assert fresh.observe({"now_ms": 2000}, 101.0) is None
    assert fresh.observe({"now_ms": 2000}, 105.9) is None
    assert fresh.observe({"now_ms": 2000}, 106.0) == "the daemon has not updated the board for 5 s (stopped?)"
    assert fresh.observe({"now_ms": 3000}, 107.0) is None
    assert fresh.observe(None, 200.0) is None


def test_the_board_attaches_to_a_database_the_daemon_store_is_writing(tmp_path: Path) -> None:
    """The real store (WAL, open, its own migrations) writes; the board reads the same state."""
    import asyncio

    from fsm import commands as cmd
    from fsm.ops.board import drive_scenario, rows_from_commands
    from fsm.runtime.store import Store
    from fsm.runtime.view import board_view

    extras = {
        "profile": "sim",
        "streams": {"market": "up", "user": "up", "telegram": "replay"},
        "last_event": {"type": "MarkPriceTick", "now_ms": 1_767_225_603_000},
    }
    engine, commands, now = drive_scenario("W55", 4)
    view = board_view(engine, now, extras)
    transitions, alerts = rows_from_commands(commands)
    db = tmp_path / "shortfsm.db"

    async def daemon_writes_then_board_reads() -> tuple[object, ...]:
        store = await Store.open(db)
        try:
            for at, command in commands:
                await store.record_commands(at, [command])
                if isinstance(command, cmd.Notify):
                    await store.record_alert(
                        now_ms=at,
                        kind=command.kind,
                        severity=command.severity,
                        symbol=command.symbol,
                        text=command.text,
                    )
            await store.set_status("board", view, now)
            return read_board_state(db)  # while the daemon's connection is open
        finally:
            await store.close()

    got = asyncio.run(asyncio.wait_for(daemon_writes_then_board_reads(), 10))
    assert got == ({**view, "book": EMPTY_BOOK}, transitions, alerts)
