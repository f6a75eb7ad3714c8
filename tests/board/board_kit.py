"""Shared helpers for the board tests: scenario-driven board states, a RUNTIME.md database, exact text."""

from __future__ import annotations

import io
import json
import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console, RenderableType

from fsm.engine import Engine
from fsm.ops.board import drive_scenario, rows_from_commands
from fsm.runtime.view import board_view

EXPECTED = Path(__file__).resolve().parent / "expected"
REGENERATE = os.environ.get("SHORTFSM_REGEN_BOARD") == "1"  # rewrite the expected files after a review

Rows = list[dict[str, Any]]
# The book the board reads beside the view from a database with no fill and no decision yet.
EMPTY_BOOK = {
    "day": "2026-01-01",
    "today": {"realized_pnl": "0.0000", "fees": "0.0000", "funding": "0.0000", "net": "0.0000"},
    "total": {"realized_pnl": "0.0000", "fees": "0.0000", "funding": "0.0000", "net": "0.0000"},
    "trades": [],
    "skipped": [],
}
State = tuple[dict[str, Any] | None, Rows, Rows]

# The tables of RUNTIME.md, as the store creates them.
SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE messages (chat_id INTEGER, message_id INTEGER, date_ms INTEGER, received_ms INTEGER, text TEXT,
                       kind TEXT, parse_json TEXT, PRIMARY KEY (chat_id, message_id));
CREATE TABLE cursors (chat_id INTEGER PRIMARY KEY, message_id INTEGER, updated_ms INTEGER);
CREATE TABLE cooldowns (symbol TEXT PRIMARY KEY, received_at_ms INTEGER);
CREATE TABLE journal (seq INTEGER PRIMARY KEY AUTOINCREMENT, now_ms INTEGER, type TEXT, payload TEXT);
CREATE TABLE transitions (id INTEGER PRIMARY KEY AUTOINCREMENT, now_ms INTEGER, machine TEXT, symbol TEXT,
                          source TEXT, dest TEXT, trigger TEXT, reason TEXT);
CREATE TABLE orders (client_order_id TEXT PRIMARY KEY, symbol TEXT, leg TEXT, side TEXT, type TEXT,
                     price TEXT, quantity TEXT, trigger_price TEXT, status TEXT, order_id INTEGER,
                     attempts INTEGER, error_code INTEGER, error TEXT, params TEXT, created_ms INTEGER,
                     updated_ms INTEGER);
CREATE TABLE fills (trade_key TEXT PRIMARY KEY, client_order_id TEXT, symbol TEXT, qty TEXT, price TEXT,
                    realized_pnl TEXT, commission TEXT, now_ms INTEGER);
CREATE TABLE decisions (id INTEGER PRIMARY KEY AUTOINCREMENT, now_ms INTEGER, kind TEXT, symbol TEXT,
                        reason TEXT, data TEXT);
CREATE TABLE alerts (id INTEGER PRIMARY KEY AUTOINCREMENT, now_ms INTEGER, kind TEXT, severity TEXT,
                     symbol TEXT, text TEXT, delivered INTEGER);
CREATE TABLE snapshots (id INTEGER PRIMARY KEY AUTOINCREMENT, now_ms INTEGER, engine TEXT);
CREATE TABLE status (key TEXT PRIMARY KEY, value TEXT, updated_ms INTEGER);
"""


def scenario_engine(scenario_id: str, steps: int) -> tuple[Engine, int]:
    """The engine after the first ``steps`` steps of a catalog scenario, and the time of the last one."""
    engine, _, now = drive_scenario(scenario_id, steps)
    return engine, now


def scenario_state(scenario_id: str, steps: int, extras: dict[str, Any] | None = None) -> State:
    """(view, transitions, alerts) as the daemon would store them after those steps."""
    engine, commands, now = drive_scenario(scenario_id, steps)
    transitions, alerts = rows_from_commands(commands)
    return board_view(engine, now, extras), transitions, alerts


def make_db(
    path: Path,
    *,
    view: dict[str, Any] | None = None,
    transitions: Sequence[dict[str, Any]] = (),
    alerts: Sequence[dict[str, Any]] = (),
    wal: bool = True,
    schema_version: str = "1",
) -> Path:
    """A database with the RUNTIME.md tables; rows are inserted oldest first (the reader sorts by id)."""
    conn = sqlite3.connect(path)
    if wal:
        conn.execute("PRAGMA journal_mode = WAL")
    conn.executescript(SCHEMA)
    conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (schema_version,))
    for row in reversed(transitions):
        conn.execute(
            "INSERT INTO transitions (now_ms, machine, symbol, source, dest, trigger, reason) "
            "VALUES (:now_ms, :machine, :symbol, :source, :dest, :trigger, :reason)",
            row,
        )
    for row in reversed(alerts):
        conn.execute(
            "INSERT INTO alerts (now_ms, kind, severity, symbol, text, delivered) "
            "VALUES (:now_ms, :kind, :severity, :symbol, :text, 1)",
            row,
        )
    if view is not None:
        conn.execute(
            "INSERT INTO status VALUES ('board', ?, ?)",
            (json.dumps(view, ensure_ascii=False), view["now_ms"]),
        )
    conn.commit()
    conn.close()
    return path


def text_of(renderable: RenderableType, width: int = 80, height: int = 200) -> str:
    """The plain text a terminal of ``width`` columns and ``height`` lines would show."""
    console = Console(
        record=True, width=width, height=height, file=io.StringIO(), color_system=None, legacy_windows=False
    )
    console.print(renderable)
    return console.export_text()


def assert_matches(name: str, actual: str) -> None:
    """Exact comparison with ``expected/<name>.txt`` so that any change of the board shows."""
    path = EXPECTED / f"{name}.txt"
    if REGENERATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual, encoding="utf-8")
    expected = path.read_text(encoding="utf-8")
    assert actual == expected, f"board text differs from {path}:\n{actual}"
