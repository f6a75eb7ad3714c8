"""What a trader needs to see (issue #13 items 10, 11 and 14): ``status --json``, the book on the
board, one consistent frame, and a board that fits 80x24. Databases are written by the daemon
(the demo) or by the store's own write functions; the CLI runs in a subprocess."""

from __future__ import annotations

import asyncio
import io
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from fsm import commands as cmd
from fsm.ops.board import drive_scenario, load_board_state, render_board
from fsm.runtime.store import Store, connect
from fsm.runtime.view import board_view

EXTRAS = {
    "profile": "sim",
    "streams": {"market": "up", "user": "up", "telegram": "replay"},
    "last_event": {"type": "OrderUpdated", "now_ms": 1_767_225_612_000},
}
QUIET_EVENTS = {"Tick", "MarkPriceTick", "VenueCallSucceeded"}


def recorded_totals(db: Path) -> dict[str, str]:
    """Realised PnL, fees and net over every fill the daemon recorded, to 0.0001 (the demo's prices
    depend on whether an entry met the book as a maker, which a loaded machine changes)."""
    conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT realized_pnl, commission FROM fills").fetchall()
    finally:
        conn.close()
    pnl = sum((Decimal(r[0]) for r in rows), Decimal(0))
    fees = sum((Decimal(r[1]) for r in rows), Decimal(0))
    cent = Decimal("0.0001")
    return {
        "realized_pnl": str(pnl.quantize(cent)),
        "fees": str(fees.quantize(cent)),
        "funding": "0.0000",  # the demo runs through no settlement
        "net": str((pnl - fees).quantize(cent)),
    }


def shortfsm(*args: str, cwd: Path, columns: int = 80) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_SOCKET", "WATCHDOG_", "LINES"))}
    env.update({"COLUMNS": str(columns), "PYTHONUNBUFFERED": "1"})
    return subprocess.run(
        [sys.executable, "-m", "fsm.ops.cli", *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("demo")
    result = shortfsm("demo", "--speed", "25", "--db", str(folder / "demo.db"), "--no-board", cwd=folder)
    assert result.returncode == 0, result.stderr
    yield folder / "demo.db"


def write_frames(
    db: Path, commands: list[tuple[int, cmd.Command]], views: list[tuple[int, dict[str, Any]]]
) -> None:
    """The daemon's writes through the store: every command's rows, then each board view in turn."""

    async def write() -> None:
        store = await Store.open(db)
        try:
            for at, command in commands:
                await store.record_commands(at, [command])
            for at, view in views:
                await store.set_status("board", view, at)
        finally:
            await store.close()

    asyncio.run(asyncio.wait_for(write(), 10))


def r19_database(db: Path) -> int:
    """R19 (an exit part-filled, the five-second rule): every command up to the market close at
    t=17 s is recorded, but the daemon's last board view is the one it wrote at t=13.8 s, while
    the TP was part-filled. Returns that view's time."""
    engine, _, at_12 = drive_scenario("R19", 6)
    _, commands, _ = drive_scenario("R19", 8)
    view_ms = at_12 + 1_800
    write_frames(db, commands, [(view_ms, board_view(engine, view_ms, EXTRAS))])
    return view_ms


def frame_text(db: Path, width: int = 80, height: int = 24) -> str:
    state = load_board_state(db)
    console = Console(record=True, width=width, height=height, file=io.StringIO(), color_system=None)
    console.print(render_board(state.view, state.transitions, state.alerts, problem=state.problem))
    return console.export_text()


# -- status --json -------------------------------------------------------------------------------


def test_status_json_of_the_demo_has_pnl_trades_skipped_signals_cooldowns_and_settings(
    demo_db: Path, tmp_path: Path
) -> None:
    result = shortfsm("status", "--db", str(demo_db), "--json", cwd=tmp_path)
    assert result.returncode == 1, result.stderr  # the demo has ended: stopped, as the board says
    doc = json.loads(result.stdout)
    assert doc["daemon"]["state"] == "stopped"
    assert doc["daemon"]["exit_code"] == 1
    assert doc["daemon"]["text"].startswith(f"no daemon is running on {demo_db}: stopped since ")
    assert (doc["profile"], doc["paused"]) == ("sim", False)
    assert set(doc["urls"]) == {"rest", "market_ws", "private_ws"}
    truth = recorded_totals(demo_db)
    assert doc["pnl"]["today"] == truth  # the demo ran today (UTC)
    assert doc["pnl"]["total"] == truth
    assert [(t["symbol"], t["legs"], t["close_reason"]) for t in doc["last_trades"]] == [
        ("ADAUSDT", ["ENTRY1", "CLOSE"], "flat: risk_pnl_negative"),
        ("AVAXUSDT", ["ENTRY1", "TP"], "flat: TP filled"),
        ("LINKUSDT", ["ENTRY1", "ENTRY2", "BE"], "flat: BE filled"),
    ]
    net = sum((Decimal(t["net"]) for t in doc["last_trades"]), Decimal(0))
    assert abs(net - Decimal(truth["net"])) <= Decimal("0.0002")  # each trade rounded to 0.0001
    assert [(s["symbol"], s["kind"], s["reason"]) for s in doc["skipped_signals"]] == [
        ("SOLUSDT", "leading_rejected", "rank_top_rising"),
        ("XRPUSDT", "symbol_mapping", "symbol_not_trading"),
        ("DOGEUSDT", "leading_rejected", "category_excluded:meme"),
    ]
    assert all(s["at"].endswith("Z") for s in doc["skipped_signals"])
    # W02: every symbol named by a leading message is cooling down for 10 minutes (the demo lasts ~1)
    assert [c["symbol"] for c in doc["cooldowns"]] == [
        "DOGEUSDT",
        "XRPUSDT",
        "SOLUSDT",
        "ETHUSDT",
        "LINKUSDT",
        "AVAXUSDT",
        "ADAUSDT",
    ]
    assert all(0 < c["remaining_s"] <= 600 for c in doc["cooldowns"])
    assert doc["settings"]["source"] == "daemon"  # published by the daemon, as it runs them
    assert (doc["settings"]["values"]["tp_pct"], doc["settings"]["values"]["cooldown_minutes"]) == ("5", 10)
    assert (doc["symbols"], doc["position"]) == ([], None)
    assert doc["last_event"]["type"] not in QUIET_EVENTS  # the last event that decided something


def test_status_json_shows_each_legs_next_trigger_and_the_five_second_countdown(tmp_path: Path) -> None:
    db = tmp_path / "shortfsm.db"
    view_ms = r19_database(db)
    result = shortfsm("status", "--db", str(db), "--json", cwd=tmp_path)
    assert result.returncode == 1, result.stderr  # no heartbeat: not running
    doc = json.loads(result.stdout)
    countdown = {
        "leg": "TP",
        "client_order_id": "sf1001-TP1-BTCUSDT",
        "filled": "3.000",
        "quantity": "4.950",
        "deadline_ms": view_ms + 3_200,
        "remaining_ms": 3_200,
    }
    assert doc["symbols"] == [
        {
            "symbol": "BTCUSDT",
            "state": "EXITING",
            "next_triggers": {"entry": None, "tp": "96.0", "add": None, "breakeven": None, "mdd": None},
            "countdown": countdown,
        }
    ]
    assert doc["position"]["countdown"] == countdown
    assert doc["last_event"] == {"type": "OrderUpdated", "now_ms": 1_767_225_612_000}


def test_status_json_without_a_daemon_view_takes_the_settings_from_the_config(tmp_path: Path) -> None:
    connect(tmp_path / "db.sqlite").conn.close()  # the daemon's schema; no daemon ever wrote a board
    (tmp_path / "config.yaml").write_text("strategy:\n  tp_pct: 7\nstorage:\n  database: db.sqlite\n")
    result = shortfsm("status", "--config", str(tmp_path / "config.yaml"), "--json", cwd=REPO_ROOT)
    assert result.returncode == 1, result.stderr
    doc = json.loads(result.stdout)
    assert doc["database"] == str(tmp_path / "db.sqlite")  # the config's folder, not the working one
    assert doc["settings"]["source"] == "config"
    assert doc["settings"]["values"]["tp_pct"] == "7"
    assert (doc["last_trades"], doc["skipped_signals"], doc["cooldowns"]) == ([], [], [])
    assert doc["pnl"]["total"] == {
        "realized_pnl": "0.0000",
        "fees": "0.0000",
        "funding": "0.0000",
        "net": "0.0000",
    }


def test_status_json_on_a_missing_database_exits_3_and_creates_nothing(tmp_path: Path) -> None:
    result = shortfsm("status", "--db", "var/shortfsm.db", "--json", cwd=tmp_path)
    assert result.returncode == 3
    doc = json.loads(result.stdout)
    assert (doc["daemon"]["state"], doc["pnl"], doc["last_trades"]) == ("no-database", None, [])
    assert list(tmp_path.iterdir()) == []


REPO_ROOT = Path(__file__).resolve().parents[2]


# -- the board -------------------------------------------------------------------------------------


def test_the_board_shows_the_book_of_the_demo(demo_db: Path, tmp_path: Path) -> None:
    result = shortfsm("status", "--db", str(demo_db), cwd=tmp_path)  # a pipe: the whole board
    assert result.returncode == 1
    out = result.stdout
    assert "╭─ Book ─" in out
    assert "│ total             realised +242.1251 · fees 9.2104 · net +232.9146 USDT" in out
    for symbol, legs, net, why in (
        ("ADAUSDT", "ENTRY1,CLOSE", "-9.9259", "flat: risk_pnl_negative"),
        ("AVAXUSDT", "ENTRY1,TP", "+246.5220", "flat: TP filled"),
    ):
        assert any(
            symbol in line and legs in line and net in line and why in line for line in out.splitlines()
        )
    assert any("SOLUSDT" in line and "leading_rejected: rank_top_rising" in line for line in out.splitlines())


def test_the_board_fits_80x24_and_still_shows_the_transitions(demo_db: Path, tmp_path: Path) -> None:
    text = frame_text(demo_db)
    lines = text.splitlines()
    assert len(lines) <= 24 and max(len(line) for line in lines) <= 80
    assert lines[0].startswith("shortfsm · SIM  ")
    assert "PnL today +242.1251 · total +242.1251 · fees 9.2104 · net +232.9146 USDT" in lines
    assert any(
        line.startswith("trade ") and "ADAUSDT -9.9259 flat: risk_pnl_negative" in line for line in lines
    )
    assert any(
        line.startswith("skip  ") and "SOLUSDT leading_rejected: rank_top_rising" in line for line in lines
    )
    title = lines.index("Last transitions")
    assert len(lines) - title - 1 >= 3
    assert any("ADAUSDT EXITING→IDLE flat: risk_pnl_negative" in line for line in lines[title:])

    db = tmp_path / "r19.db"
    r19_database(db)
    lines = frame_text(db).splitlines()
    assert len(lines) <= 24
    assert "BTCUSDT EXITING  avg 101.0 · qty 1.950 · mark 96.0 · ROI +4.95%" in lines
    assert "  5 s rule: TP part-filled 3.000 of 4.950, the rest closes at market in 3.2 s" in lines
    assert "  next: tp 96.0 · add — · breakeven — · mdd —" in lines
    title = lines.index("Last transitions")
    assert any("BTCUSDT PHASE1→EXITING TP filling" in line for line in lines[title:])
    # A tall terminal keeps the full board, panels and all.
    assert "╭─ Last transitions" in frame_text(db, height=200)


def heartbeat(db: Path, pid: int) -> None:
    """The daemon's heartbeat row, through the store: ``pid`` and the wall time now."""
    now = int(time.time() * 1000)

    async def write() -> None:
        store = await Store.open(db)
        try:
            await store.set_status("heartbeat", {"pid": pid, "wall_ms": now, "started_ms": now - 60_000}, now)
        finally:
            await store.close()

    asyncio.run(asyncio.wait_for(write(), 10))


def test_one_frame_never_shows_a_transition_newer_than_its_state(tmp_path: Path) -> None:
    db = tmp_path / "shortfsm.db"
    view_ms = r19_database(db)  # the EXITING -> IDLE of t=17 s is recorded, the view is of t=13.8 s
    heartbeat(db, os.getpid())  # a live daemon (this process) that has not rewritten its view yet
    result = shortfsm("status", "--db", str(db), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Position BTCUSDT · EXITING" in result.stdout
    assert "EXITING→IDLE" not in result.stdout
    assert "PHASE1→EXITING" in result.stdout
    # The daemon's next view (after the close) brings the transition with it.
    engine, _, at_17 = drive_scenario("R19", 8)
    write_frames(db, [], [(at_17, board_view(engine, at_17, EXTRAS))])
    assert at_17 > view_ms
    result = shortfsm("status", "--db", str(db), cwd=tmp_path)
    assert "flat: no position" in result.stdout
    assert "EXITING→IDLE" in result.stdout


def test_a_stopped_daemon_shows_its_last_rows_even_after_its_last_view(tmp_path: Path) -> None:
    db = tmp_path / "shortfsm.db"
    r19_database(db)
    heartbeat(db, 0)  # pid 0 never runs: no daemon will rewrite the view
    result = shortfsm("status", "--db", str(db), cwd=tmp_path)
    assert result.returncode == 1
    assert "STOPPED" in result.stdout
    assert "EXITING→IDLE" in result.stdout  # what it did last is the truth, whatever its view says
