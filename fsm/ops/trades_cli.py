"""``shortfsm trades``: the trade ledger (``fsm.runtime.ledger``) as a table, CSV or JSON.

Read-only: the database is opened with ``mode=ro`` and never created. Trades are listed oldest
first (a statement); ``--limit N`` keeps the N most recent, ``--since DAY`` drops trades closed
before that UTC day (open ones always show).
"""

from __future__ import annotations

import argparse
import csv
import json
import sqlite3
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from fsm import rules
from fsm.ops.board_cli import EXIT_BAD_CONFIG, add_source_arguments, resolve_source
from fsm.runtime import ledger
from fsm.runtime.config import AppConfig
from fsm.runtime.liveness import EXIT_NO_DATABASE

EXIT_UNREADABLE = 1
# The ledger stores legs as plain text.
_LEG_CODES: dict[str, str] = {str(leg): code for leg, code in rules.LEG_CODES.items()}
CSV_FIELDS = (
    "message_id",
    "symbol",
    "status",
    "opened",
    "closed",
    "legs",
    "entry_avg",
    "exit_avg",
    "quantity",
    "realized_pnl",
    "fees",
    "funding",
    "net",
    "close_reason",
)


def write_csv(rows: Iterable[dict[str, Any]], stream: TextIO) -> None:
    """Trades (``Trade.as_dict`` rows) as CSV: the columns of ``CSV_FIELDS``, legs joined by +."""
    writer = csv.DictWriter(stream, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "legs": "+".join(row["legs"])})


def register(subparsers: Any) -> None:
    """Add the ``trades`` subcommand to an argparse subparsers object."""
    trades = subparsers.add_parser(
        "trades",
        help="the trades (entry to flat) with realised PnL and fees",
        description="List the trades of the daemon's database, one per position from its first entry "
        "fill to flat: opened and closed (UTC), legs filled, entry and exit averages, quantity, "
        "realised PnL, fees, net and why it closed, then the realised PnL today (UTC day) and in "
        f"total. Read-only. Exit 0 (also with no trades yet), {EXIT_NO_DATABASE} when there is no "
        f"database, {EXIT_UNREADABLE} when it cannot be read, {EXIT_BAD_CONFIG} for an unusable "
        "--config or option.",
    )
    add_source_arguments(trades)
    trades.add_argument("--format", choices=("table", "csv", "json"), default="table", help="default table")
    trades.add_argument("--since", metavar="YYYY-MM-DD", help="leave out trades closed before this UTC day")
    trades.add_argument("--limit", type=_positive, metavar="N", help="only the N most recent trades")
    trades.set_defaults(func=cmd_trades)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, not {text!r}")
    return value


@dataclass(frozen=True, slots=True)
class Opened:
    """The database ``--config``/``--db`` name, open read-only, with the ``--since`` day in ms."""

    conn: sqlite3.Connection
    db: Path
    config: AppConfig | None
    since_ms: int | None


def open_source(args: argparse.Namespace, prog: str) -> Opened | int:
    """Open the database the options name, or the exit code after one line on stderr (bad day or
    config, no database, a file that is not one)."""
    since_ms: int | None = None
    if args.since is not None:
        try:
            since_ms = ledger.parse_day(args.since)
        except ValueError:
            print(f"{prog}: --since wants a day as YYYY-MM-DD, not {args.since!r}", file=sys.stderr)
            return EXIT_BAD_CONFIG
    source = resolve_source(args)
    if source is None:
        return EXIT_BAD_CONFIG
    db, config = source
    try:
        conn = ledger.open_readonly(db)
    except ledger.NoDatabase as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_NO_DATABASE
    except ledger.LedgerError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_UNREADABLE
    return Opened(conn=conn, db=db, config=config, since_ms=since_ms)


def read_book(args: argparse.Namespace, prog: str) -> tuple[ledger.Ledger, int | None] | int:
    """The ledger of the database ``--config``/``--db`` name and the ``--since`` day in ms, or the
    exit code after one line on stderr (bad day or config, no database, unreadable database)."""
    opened = open_source(args, prog)
    if isinstance(opened, int):
        return opened
    conn, db, since_ms = opened.conn, opened.db, opened.since_ms
    try:
        book = ledger.read_ledger(conn)
    except (sqlite3.Error, ledger.LedgerError) as exc:  # a foreign file or a garbled row: one line
        print(f"{prog}: cannot read {db}: {exc}", file=sys.stderr)
        return EXIT_UNREADABLE
    finally:
        conn.close()
    return book, since_ms


def cmd_trades(args: argparse.Namespace) -> int:
    read = read_book(args, "shortfsm trades")
    if isinstance(read, int):
        return read
    book, since_ms = read
    trades = [t for t in book.trades if since_ms is None or t.closed_ms is None or t.closed_ms >= since_ms]
    if args.limit is not None:
        trades = sorted(trades, key=lambda t: (t.opened_ms, t.closed_ms or 0))[-args.limit :]
    rows = [t.as_dict() for t in sorted(trades, key=lambda t: (t.opened_ms, t.closed_ms or 0))]
    totals = book.totals(int(time.time() * 1000))
    if args.format == "json":
        print(json.dumps(rows, ensure_ascii=False, indent=2))
    elif args.format == "csv":
        write_csv(rows, sys.stdout)
    else:
        console = Console(highlight=False)
        if rows:
            console.print(_table(rows, console.width))
        elif book.trades:
            print(f"no trade closed since {args.since}", flush=True)
        print("no trades yet" if not book.trades else _totals_line(totals), flush=True)
        return 0
    if not book.trades:
        print("no trades yet", file=sys.stderr)
    return 0


WIDE = 120  # columns from which the table shows every figure; narrower: closed, symbol, prices, net, why


def _table(rows: list[dict[str, Any]], width: int) -> Table:
    wide = width >= WIDE
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    if wide:
        table.add_column("Opened (UTC)", no_wrap=True)
    table.add_column("Closed (UTC)" if not wide else "Closed", no_wrap=True)
    table.add_column("Symbol", style="bold", no_wrap=True)
    if wide:
        table.add_column("Legs", no_wrap=True)
    table.add_column("Entry", justify="right", no_wrap=True)
    table.add_column("Exit", justify="right", no_wrap=True)
    if wide:
        table.add_column("Qty", justify="right", no_wrap=True)
        table.add_column("PnL", justify="right", no_wrap=True)
        table.add_column("Fees", justify="right", no_wrap=True)
    table.add_column("Net", justify="right", no_wrap=True)
    table.add_column("Why", overflow="fold", min_width=12)
    for row in rows:
        opened = str(row["opened"])
        closed = str(row["closed"]) if row["closed"] else ""
        net = str(row["net"])
        cells: list[str | Text] = []
        if wide:
            cells.append(opened[:16].replace("T", " "))
        cells.append(
            (closed[5:16].replace("T", " ") if not wide else closed[:16].replace("T", " ")) or "open"
        )
        cells.append(str(row["symbol"]))
        if wide:
            cells.append("+".join(_LEG_CODES.get(str(leg), "EXT") for leg in row["legs"]))
        cells += [str(row["entry_avg"] or "—"), str(row["exit_avg"] or "—")]
        if wide:
            cells += [str(row["quantity"]), str(row["realized_pnl"]), str(row["fees"])]
        cells += [
            Text(net, style="red" if net.startswith("-") else "green"),
            str(row["close_reason"] or "open"),
        ]
        table.add_row(*cells)
    return table


def _totals_line(totals: ledger.Totals) -> str:
    money = ledger.money
    return (
        f"today ({totals.day} UTC): realised {money(totals.today_realized_pnl)} USDT, fees "
        f"{money(totals.today_fees)}, net {money(totals.today_net)}\n"
        f"in total: realised {money(totals.realized_pnl)} USDT, fees {money(totals.fees)}, "
        f"net {money(totals.net)}"
    )
