"""``shortfsm status [--config PATH] [--db PATH] [--watch | --json]``: the status board, read-only on the
daemon's database."""

from __future__ import annotations

import argparse
import contextlib
import json
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from fsm.ops.board import DEFAULT_DB, load_board_state, read_book, render_board, watch
from fsm.runtime import ledger
from fsm.runtime.config import DEFAULT_CONFIG, AppConfig, ConfigError, ConfigMissing, load_cli_config
from fsm.runtime.liveness import (
    EXIT_HUNG,
    EXIT_NO_DATABASE,
    EXIT_RUNNING,
    EXIT_STOPPED,
    STALE_AFTER_S,
    Liveness,
    liveness,
)
from fsm.runtime.view import strategy_values

EXIT_BAD_CONFIG = 2


def register(subparsers: Any) -> None:
    """Add the ``status`` subcommand to an argparse subparsers object."""
    status = subparsers.add_parser(
        "status",
        help="the status board (reads the daemon's database, never writes it)",
        description="Show the board once and whether a daemon is alive on the database (its pid runs "
        "and its heartbeat is fresh), or refresh the board every second with --watch (Ctrl-C to leave), "
        "or print one JSON document with --json. "
        f"Exit codes (one-shot and --json): {EXIT_RUNNING} running, {EXIT_STOPPED} stopped (killed or "
        f"ended; says since when), {EXIT_NO_DATABASE} no database at the path, {EXIT_HUNG} hung (the "
        f"process runs but its heartbeat is stale), {EXIT_BAD_CONFIG} an unusable --config.",
    )
    add_source_arguments(status)
    mode = status.add_mutually_exclusive_group()
    mode.add_argument("--watch", action="store_true", help="refresh every second until Ctrl-C")
    mode.add_argument(
        "--json", action="store_true", help="one JSON document (liveness, PnL, trades, settings)"
    )
    status.add_argument(
        "--stale",
        type=float,
        default=STALE_AFTER_S,
        metavar="SECONDS",
        help=f"a heartbeat older than this is a hung daemon (default {STALE_AFTER_S:g})",
    )
    status.set_defaults(func=cmd_status)


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config`` and ``--db`` (``status`` and ``trades``)."""
    parser.add_argument(
        "--config",
        default=None,
        help=f"configuration file whose storage.database is read (default: {DEFAULT_CONFIG} in the working "
        "directory when there is one)",
    )
    parser.add_argument(
        "--db",
        default=None,
        help=f"the daemon's database (default: the config's storage.database, else {DEFAULT_DB})",
    )


def resolve_source(args: argparse.Namespace) -> tuple[Path, AppConfig | None] | None:
    """The database to read and the configuration when one was found; None (after one line on
    stderr) when an explicit ``--config`` cannot be used. A default ``config.yaml`` that is invalid
    only draws a warning: reading the board must not depend on it."""
    config: AppConfig | None = None
    try:
        config, _ = load_cli_config(args.config, optional=True)
    except ConfigMissing as exc:
        print(f"shortfsm: {exc}", file=sys.stderr)
        return None
    except ConfigError as exc:
        problem = str(exc).replace("\n", "; ")
        if args.config is not None:
            print(f"shortfsm: configuration error: {problem}", file=sys.stderr)
            return None
        print(f"shortfsm: warning: {DEFAULT_CONFIG} is not used ({problem})", file=sys.stderr)
    if args.config is None and not Path(DEFAULT_CONFIG).exists():
        config = None  # the built-in defaults are no file's settings
    if args.db is not None:
        return Path(args.db), config
    return (Path(config.storage.database) if config is not None else DEFAULT_DB), config


def cmd_status(args: argparse.Namespace) -> int:
    source = resolve_source(args)
    if source is None:
        return EXIT_BAD_CONFIG
    db, config = source
    if args.watch:
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how one leaves the board
            watch(str(db), console=Console(highlight=False))
        return 0
    live = liveness(db, stale_s=args.stale)
    if args.json:
        print(json.dumps(status_document(db, live, config), ensure_ascii=False, indent=2))
        return live.exit_code
    console = Console(highlight=False)
    state = load_board_state(db, live=live.alive)
    view = state.view
    problem = state.problem
    if view is not None and not live.alive:
        view = {**view, "daemon": live.state}
        problem = problem or live.text
    # A terminal shows the board that fits it (with the liveness line and the prompt below); a pipe
    # gets the whole board.
    height = max(console.height - 2, 10) if console.is_terminal else 10_000
    console.print(render_board(view, state.transitions, state.alerts, problem=problem, height=height))
    print(live.text, flush=True)
    return live.exit_code


# ---------------------------------------------------------------------------------------------
# status --json
# ---------------------------------------------------------------------------------------------


def status_document(db: Path, live: Liveness, config: AppConfig | None) -> dict[str, Any]:
    """Everything the board shows, as one JSON-ready document (README "Running it for real")."""
    beat = live.heartbeat or {}
    state = load_board_state(db, live=live.alive) if db.is_file() else None
    view = state.view if state is not None and state.view is not None else {}
    book = view.get("book")
    if not isinstance(book, dict):
        book = _book_without_view(db)
    now_ms = view.get("now_ms") if isinstance(view.get("now_ms"), int) else int(time.time() * 1000)
    settings = view.get("settings")
    if not isinstance(settings, dict):
        settings = _settings_from_config(config)
    cooldowns = view.get("cooldowns")
    if not isinstance(cooldowns, list):
        cooldowns = _cooldowns_from_database(db, config, int(time.time() * 1000))
    pnl = {key: book.get(key) for key in ("day", "today", "total")} if book else None
    return {
        "database": str(db),
        "daemon": {
            "state": live.state,
            "alive": live.alive,
            "exit_code": live.exit_code,
            "text": live.text,
            "pid": live.pid,
            "started": _iso(beat.get("started_ms")),
            "last_heartbeat": _iso(beat.get("wall_ms")),
        },
        "problem": state.problem if state is not None else None,
        "profile": view.get("profile") or beat.get("profile"),
        "urls": beat.get("urls") if isinstance(beat.get("urls"), dict) else None,
        "as_of": _iso(now_ms),
        "paused": view.get("paused"),
        "locks": view.get("locks"),
        "price_source": view.get("price_source"),
        "balance": view.get("balance"),
        "streams": view.get("streams"),
        "last_event": view.get("last_event"),
        "pnl": pnl,
        "last_trades": (book or {}).get("trades", []),
        "skipped_signals": (book or {}).get("skipped", []),
        "cooldowns": [
            {**row, "until": _iso(row.get("until_ms")), "remaining_s": _seconds(row.get("remaining_ms"))}
            for row in cooldowns
            if isinstance(row, dict)
        ],
        "settings": settings,
        "symbols": view.get("symbols", []),
        "monitoring": view.get("monitoring", []),
        "position": view.get("position"),
    }


def _book_without_view(db: Path) -> dict[str, Any] | None:
    """The ledger of a database the daemon never wrote a board into (today: the wall clock's day)."""
    try:
        conn = ledger.open_readonly(db)
    except ledger.LedgerError:
        return None
    try:
        return read_book(conn, int(time.time() * 1000))
    except (sqlite3.Error, ledger.LedgerError):
        return None
    finally:
        conn.close()


def _settings_from_config(config: AppConfig | None) -> dict[str, Any]:
    """The strategy as the file says, or the built-in defaults without a file (no daemon has
    published the settings it runs)."""
    source = "config" if config is not None else "defaults"
    strategy = (config or AppConfig()).to_strategy()
    return {"source": source, "values": strategy_values(strategy), "pending": {}}


def _cooldowns_from_database(db: Path, config: AppConfig | None, now_ms: int) -> list[dict[str, Any]]:
    """The cooldowns table with the configured length (no daemon view to take them from)."""
    minutes = config.strategy.cooldown_minutes if config is not None else 10
    try:
        conn = ledger.open_readonly(db)
    except ledger.LedgerError:
        return []
    try:
        rows = ledger.cooldown_rows(conn)
    except sqlite3.Error:
        return []
    finally:
        conn.close()
    length = minutes * 60_000
    return sorted(
        (
            {"symbol": s, "received_at_ms": at, "until_ms": at + length, "remaining_ms": at + length - now_ms}
            for s, at in rows.items()
            if at + length > now_ms
        ),
        key=lambda r: (r["until_ms"], r["symbol"]),
    )


def _iso(ms: Any) -> str | None:
    return ledger.iso_utc(ms) if isinstance(ms, int) and not isinstance(ms, bool) and ms > 0 else None


def _seconds(ms: Any) -> float | None:
    return round(ms / 1000, 1) if isinstance(ms, int) and not isinstance(ms, bool) else None
