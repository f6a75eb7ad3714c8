"""``shortfsm status [--db PATH] [--watch]``: the status board, read-only on the daemon's database."""

from __future__ import annotations

import argparse
import contextlib
from typing import Any

from rich.console import Console

from fsm.runtime.board import DEFAULT_DB, print_snapshot, watch


def register(subparsers: Any) -> None:
    """Add the ``status`` subcommand to an argparse subparsers object."""
    status = subparsers.add_parser(
        "status",
        help="the status board (reads the daemon's database, never writes it)",
        description="Show the board once, or refresh it every second with --watch (Ctrl-C to leave). "
        "Prints 'no daemon' when the database is absent, locked or has no status yet; exits 0.",
    )
    status.add_argument("--db", default=str(DEFAULT_DB), help=f"the daemon's database (default {DEFAULT_DB})")
    status.add_argument("--watch", action="store_true", help="refresh every second until Ctrl-C")
    status.set_defaults(func=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    console = Console(highlight=False)
    if args.watch:
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how one leaves the board
            watch(args.db, console=console)
        return 0
    print_snapshot(args.db, console)
    return 0
