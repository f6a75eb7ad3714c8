"""``shortfsm report``: the performance of the closed trades (``fsm.runtime.metrics``) as a table or JSON.

Read-only on the daemon's database, like ``shortfsm trades`` (same ``--config``/``--db``, same exit
codes). ``--capital`` is required: the database records no deposit, withdrawal or starting balance,
so any default (a balance seen by the board, the first entry's margin) could be silently wrong, and
every percentage divides by it.
"""

from __future__ import annotations

import argparse
import json
import sys
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from fsm.runtime import ledger, metrics
from fsm.runtime.board_cli import EXIT_BAD_CONFIG, add_source_arguments
from fsm.runtime.liveness import EXIT_NO_DATABASE
from fsm.runtime.trades_cli import EXIT_UNREADABLE, read_book

FIGURE = Decimal("0.0001")  # percentages and ratios in JSON
SHOWN = Decimal("0.01")  # percentages and ratios in the table
PROG = "shortfsm report"


def register(subparsers: Any) -> None:
    """Add the ``report`` subcommand to an argparse subparsers object."""
    report = subparsers.add_parser(
        "report",
        help="performance of the closed trades: return, win rate, Sharpe, drawdown, ...",
        description="Measure the closed trades of the daemon's database against a starting capital: "
        "total return, CAGR, win rate, profit factor, expectancy, average R:R, daily Sharpe and "
        "Sortino (sqrt(365)), Calmar, maximum drawdown, longest losing streak, time in the market, "
        "exit reasons and fees (definitions: fsm/runtime/metrics.py). Open trades are only counted. "
        f"Read-only. Exit 0 (also with no closed trade yet), {EXIT_NO_DATABASE} when there is no "
        f"database, {EXIT_UNREADABLE} when it cannot be read, {EXIT_BAD_CONFIG} for an unusable "
        "--config or option.",
    )
    add_source_arguments(report)
    report.add_argument(
        "--capital",
        metavar="USDT",
        help="required: the starting balance the returns are measured on (the database does not know it)",
    )
    report.add_argument("--since", metavar="YYYY-MM-DD", help="only trades closed on or after this UTC day")
    report.add_argument("--json", action="store_true", help="machine-readable output")
    report.set_defaults(func=cmd_report)


def parse_capital(text: str | None) -> Decimal:
    """The ``--capital`` amount; ValueError (with the line to print) when missing or not positive."""
    if text is None:
        raise ValueError("--capital USDT is required (the starting balance the returns are measured on)")
    try:
        value = Decimal(text)
    except InvalidOperation:
        value = Decimal(0)
    if not value.is_finite() or value <= 0:
        raise ValueError(f"--capital wants a positive amount of USDT, not {text!r}")
    return value


def cmd_report(args: argparse.Namespace) -> int:
    try:
        capital = parse_capital(args.capital)
    except ValueError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    read = read_book(args, PROG)
    if isinstance(read, int):
        return read
    book, since_ms = read
    result = metrics.compute(book.trades, capital, since_ms=since_ms)
    empty = _empty_line(book.trades, result, args.since)
    if args.json:
        print(json.dumps(as_dict(result), ensure_ascii=False, indent=2))
        if empty:
            print(empty, file=sys.stderr)
        return 0
    if empty:
        print(empty, flush=True)
        return 0
    console = Console(highlight=False)
    console.print(_headline(result), soft_wrap=True)
    console.print(_table(result))
    return 0


def _empty_line(trades: list[ledger.Trade], result: metrics.Metrics, since: str | None) -> str:
    if result.closed_trades:
        return ""
    if any(t.closed_ms is not None for t in trades):
        line = f"no trade closed since {since}"
    else:
        line = "no closed trade yet"
    return f"{line} ({result.open_trades} open)" if result.open_trades else line


def _figure(value: Decimal | None, places: Decimal = FIGURE) -> str | None:
    if value is None:
        return None
    rounded = value.quantize(places, rounding=ROUND_HALF_UP)
    return format(rounded if rounded else abs(rounded), "f")  # never "-0.0000"


def _when(ms: int | None) -> str | None:
    return ledger.iso_utc(ms) if ms is not None else None


def as_dict(m: metrics.Metrics) -> dict[str, Any]:
    """JSON-ready: money to 0.0001 USDT, percentages and ratios to 0.0001, times as ISO UTC."""
    money = ledger.money
    drawdown = m.max_drawdown
    return {
        "capital": money(m.capital),
        "period": {"start": _when(m.start_ms), "end": _when(m.end_ms), "days": _figure(m.days)},
        "trades": {"closed": m.closed_trades, "open": m.open_trades, "wins": m.wins, "losses": m.losses},
        "final_equity": money(m.final_equity),
        "realized_pnl": money(m.realized_pnl),
        "fees": money(m.fees),
        "net": money(m.net),
        "total_return_pct": _figure(m.total_return_pct),
        "cagr_pct": _figure(m.cagr_pct),
        "win_rate_pct": _figure(m.win_rate_pct),
        "profit_factor": _figure(m.profit_factor),
        "expectancy": money(m.expectancy) if m.expectancy is not None else None,
        "average_rr": _figure(m.average_rr),
        "sharpe": _figure(m.sharpe),
        "sortino": _figure(m.sortino),
        "calmar": _figure(m.calmar),
        "max_drawdown": {
            "pct": _figure(drawdown.pct),
            "amount": money(drawdown.amount),
            "start": _when(drawdown.start_ms),
            "end": _when(drawdown.end_ms),
        },
        "longest_losing_streak": m.longest_losing_streak,
        "time_in_market_pct": _figure(m.time_in_market_pct),
        "exit_reasons": m.exit_reasons,
    }


def _headline(m: metrics.Metrics) -> str:
    start = (_when(m.start_ms) or "")[:16].replace("T", " ")
    end = (_when(m.end_ms) or "")[:16].replace("T", " ")
    opened = f", {m.open_trades} open (not counted)" if m.open_trades else ""
    return (
        f"{m.closed_trades} closed trade(s){opened}, {start} to {end} UTC, on {ledger.money(m.capital)} USDT"
    )


def _shown(value: Decimal | None, suffix: str = "") -> str:
    text = _figure(value, SHOWN)
    return "—" if text is None else f"{text}{suffix}"


def _table(m: metrics.Metrics) -> Table:
    money = ledger.money
    drawdown = m.max_drawdown
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    table.add_column("Metric", no_wrap=True)
    table.add_column("Value", justify="right", no_wrap=True)
    table.add_column("Note", overflow="fold")
    span = f"{_figure(m.days, SHOWN)} days" if m.days is not None else ""
    rows: list[tuple[str, str, str]] = [
        ("Total return", _shown(m.total_return_pct, " %"), f"{money(m.net)} USDT net"),
        ("CAGR", _shown(m.cagr_pct, " %"), span if m.cagr_pct is not None else f"{span}, under 30 days"),
        ("Win rate", _shown(m.win_rate_pct, " %"), f"{m.wins} won, {m.losses} lost"),
        ("Profit factor", _shown(m.profit_factor), "" if m.profit_factor is not None else "no loss"),
        ("Expectancy", f"{money(m.expectancy)} USDT" if m.expectancy is not None else "—", "net per trade"),
        ("Average R:R", _shown(m.average_rr), "average win / average loss"),
        ("Sharpe (daily)", _shown(m.sharpe), "x sqrt(365)"),
        ("Sortino (daily)", _shown(m.sortino), "x sqrt(365)"),
        ("Calmar", _shown(m.calmar), "CAGR / max drawdown"),
        (
            "Max drawdown",
            _shown(drawdown.pct, " %"),
            f"{money(drawdown.amount)} USDT, {_span(drawdown.start_ms, drawdown.end_ms)}"
            if drawdown.end_ms is not None
            else "none",
        ),
        ("Longest losing streak", str(m.longest_losing_streak), "trades"),
        ("Time in the market", _shown(m.time_in_market_pct, " %"), "a trade open"),
        ("Fees", f"{money(m.fees)} USDT", f"realised PnL {money(m.realized_pnl)} USDT"),
        ("Final equity", f"{money(m.final_equity)} USDT", ""),
    ]
    rows += [(f"Exit: {reason}", str(count), "trades") for reason, count in m.exit_reasons.items()]
    for row in rows:
        table.add_row(*row)
    return table


def _span(start_ms: int | None, end_ms: int | None) -> str:
    start = (_when(start_ms) or "")[:16].replace("T", " ")
    end = (_when(end_ms) or "")[:16].replace("T", " ")
    return f"{start} to {end}"
