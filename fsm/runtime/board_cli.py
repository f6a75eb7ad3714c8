"""``shortfsm status [--db PATH] [--watch]``: the status board, read-only on the daemon's database."""

from __future__ import annotations

import argparse
import contextlib
from typing import Any

from rich.console import Console

from fsm.runtime.board import DEFAULT_DB, load_board_state, render_board, watch
from fsm.runtime.liveness import (
    EXIT_HUNG,
    EXIT_NO_DATABASE,
    EXIT_RUNNING,
    EXIT_STOPPED,
    STALE_AFTER_S,
    liveness,
)


def register(subparsers: Any) -> None:
    """Add the ``status`` subcommand to an argparse subparsers object."""
    status = subparsers.add_parser(
        "status",
        help="the status board (reads the daemon's database, never writes it)",
        description="Show the board once and whether a daemon is alive on the database (its pid runs "
        "and its heartbeat is fresh), or refresh the board every second with --watch (Ctrl-C to leave). "
        f"Exit codes (one-shot): {EXIT_RUNNING} running, {EXIT_STOPPED} stopped (killed or ended; says "
        f"since when), {EXIT_NO_DATABASE} no database at the path, {EXIT_HUNG} hung (the process runs "
        "but its heartbeat is stale).",
    )
    status.add_argument("--db", default=str(DEFAULT_DB), help=f"the daemon's database (default {DEFAULT_DB})")
    status.add_argument("--watch", action="store_true", help="refresh every second until Ctrl-C")
    status.add_argument(
        "--stale",
        type=float,
        default=STALE_AFTER_S,
        metavar="SECONDS",
        help=f"a heartbeat older than this is a hung daemon (default {STALE_AFTER_S:g})",
    )
    status.set_defaults(func=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    console = Console(highlight=False)
    if args.watch:
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how one leaves the board
            watch(args.db, console=console)
        return 0
    live = liveness(args.db, stale_s=args.stale)
    state = load_board_state(args.db)
    view = state.view
    problem = state.problem
    if view is not None and not live.alive:
        view = {**view, "daemon": live.state}
        problem = problem or live.text
    console.print(render_board(view, state.transitions, state.alerts, problem=problem))
    print(live.text, flush=True)
    return live.exit_code
