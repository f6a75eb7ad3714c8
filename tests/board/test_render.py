"""The board rendered at 80 columns (and 100 for the README picture), compared with reviewed text."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from board_kit import SCHEMA, assert_matches, scenario_engine, scenario_state, text_of

from fsm import events as ev
from fsm.ops.board import (
    SVG_PATH,
    demo_board,
    drive_scenario,
    export_board_svg,
    render_board,
    rows_from_commands,
)
from fsm.runtime.view import board_view


def live_extras(now_ms: int) -> dict[str, Any]:
    return {
        "profile": "sim",
        "streams": {"market": "up", "user": "up", "telegram": "replay"},
        "last_event": {"type": "MarkPriceTick", "now_ms": now_ms},
    }


def monitoring_state() -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """Three symbols listed (W46's first steps) with their marks."""
    engine, commands, now = drive_scenario("W46", 3)
    for symbol, price in (("BTCUSDT", "100.5"), ("ETHUSDT", "47"), ("SOLUSDT", "18")):
        engine.handle(ev.MarkPriceTick(now_ms=now, symbol=symbol, price=Decimal(price), event_time_ms=now))
    transitions, alerts = rows_from_commands(commands)
    return board_view(engine, now, live_extras(now)), transitions, alerts


# -- the four states, exactly -------------------------------------------------------------------


def test_no_daemon() -> None:
    assert_matches("empty", text_of(render_board(None, [], [], problem="no database at var/shortfsm.db")))


@pytest.mark.spec("W45")
def test_monitoring() -> None:
    view, transitions, alerts = monitoring_state()
    assert_matches("monitoring", text_of(render_board(view, transitions, alerts)))


@pytest.mark.spec("W47")
def test_position_in_phase1_with_the_second_stage_listed() -> None:
    view, transitions, alerts = scenario_state("W55", 4, live_extras(1_767_225_603_000))
    assert_matches("position_phase1", text_of(render_board(view, transitions, alerts)))


def test_position_in_phase2() -> None:
    view, transitions, alerts = demo_board()
    assert_matches("position_phase2", text_of(render_board(view, transitions, alerts)))


def test_position_in_phase2_at_100_columns_shows_client_ids() -> None:
    view, transitions, alerts = demo_board()
    text = text_of(render_board(view, transitions, alerts), width=100)
    assert_matches("position_phase2_wide", text)
    assert "sf1001-BE1-BTCUSDT" in text


def test_exit_cancel_failed_alert() -> None:
    view, transitions, alerts = scenario_state("R15", 6)
    assert_matches("alert", text_of(render_board(view, transitions, alerts)))


def test_every_line_fits_80_columns() -> None:
    for view, transitions, alerts in (monitoring_state(), demo_board(), scenario_state("R15", 6)):
        lines = text_of(render_board(view, transitions, alerts)).splitlines()
        assert max(len(line) for line in lines) == 80


# -- alert conditions ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scenario_id", "steps", "line"),
    [
        ("W51", 2, "● AUTH LOCK: the API key was refused; no new entries"),
        ("W50", 3, "● RATE-LIMIT MODE: monitoring goes on, no new entries"),
        ("W23-1-monitoring", 6, "● SAFETY LOCK: no fresh mark price; no new entries, no position to close"),
    ],
)
def test_lock_conditions_are_alerts(scenario_id: str, steps: int, line: str) -> None:
    view, transitions, alerts = scenario_state(scenario_id, steps)
    text = text_of(render_board(view, transitions, alerts))
    alerts_box = text.split("╭─ Alerts")[1].split("╭─ Monitoring")[0]
    assert line in alerts_box


def test_a_stale_price_reads_stale_in_the_header() -> None:
    view, _, _ = scenario_state("W23-1-monitoring", 6)
    assert "│ price       STALE (REST) · age 29.0 s" in text_of(render_board(view, [], []))


def test_pause_and_a_notice_are_warnings() -> None:
    engine, now = scenario_engine("W55", 2)
    engine.handle(ev.PauseRequested(now_ms=now, paused=True))
    text = text_of(render_board(board_view(engine, now), [], [], problem="the daemon has not updated"))
    assert "● PAUSED by the operator: no new signals" in text
    assert "● the daemon has not updated" in text
    assert "time        2026-01-01 00:00:01 UTC   PAUSED" in text


# -- never crashes -------------------------------------------------------------------------------


def test_no_daemon_still_shows_the_recorded_history() -> None:
    _, transitions, alerts = scenario_state("R15", 6)
    text = text_of(render_board(None, transitions, alerts, problem="no board status yet"))
    assert "no daemon" in text
    assert "exit_cancel_failed" in text
    assert "CLEAR→CANCEL_FAILED" in text


@pytest.mark.parametrize(
    "view",
    [
        {},
        {"monitoring": "x", "position": [1], "locks": 5, "price_source": {"age_ms": "x", "stale": "yes"}},
        {"monitoring": [None, {"distance_pct": "abc", "planned_price": 3}], "position": {"orders": [7, {}]}},
        {"now_ms": 10**30, "last_event": {"type": None, "now_ms": -5}, "balance": None, "streams": [1]},
        {"position": {"roi_pct": "NaN", "next_triggers": "none"}},
    ],
)
def test_a_malformed_view_renders_without_error(view: dict[str, Any]) -> None:
    text = text_of(render_board(view, ["x", {"now_ms": "bad", "symbol": 3}], [None, {"severity": 7}]))  # type: ignore[list-item]
    assert "╭─ shortfsm · —" in text
    assert "╭─ Last transitions" in text


def test_not_a_view_at_all_is_no_daemon() -> None:
    text = text_of(render_board("garbage", "x", 3))  # type: ignore[arg-type]
    assert "no daemon" in text
    assert "no board status to show" in text


# -- the README picture --------------------------------------------------------------------------


def test_the_committed_board_svg_is_current(tmp_path: Any) -> None:
    svg = export_board_svg(tmp_path / "board.svg")
    assert (tmp_path / "board.svg").read_text(encoding="utf-8") == svg
    assert svg.startswith('<svg class="rich-terminal"')
    assert "PHASE2" in svg and "sf1001-MD1-BTCUSDT" in svg
    assert SVG_PATH.read_text(encoding="utf-8") == svg, "regenerate it: python -m fsm.ops.board"


def test_schema_helper_matches_runtime_md_tables() -> None:
    tables = {line.split()[2] for line in SCHEMA.splitlines() if line.startswith("CREATE TABLE")}
    assert tables == {
        "meta",
        "messages",
        "cursors",
        "cooldowns",
        "journal",
        "transitions",
        "orders",
        "fills",
        "decisions",
        "alerts",
        "snapshots",
        "status",
    }
