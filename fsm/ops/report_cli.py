"""``shortfsm report``: the performance of the closed trades (``fsm.runtime.metrics``) as a table or JSON.

Read-only on the daemon's database, like ``shortfsm trades`` (same ``--config``/``--db``, same exit
codes). ``--capital`` is required: the database records no deposit, withdrawal or starting balance,
so any default (a balance seen by the board, the first entry's margin) could be silently wrong, and
every percentage divides by it.

``--html FILE`` also writes a self-contained page (charts, the signal funnel, the trades: see
``fsm.ops.html_report``), ``--csv FILE`` the trades as ``shortfsm trades --format csv`` prints
them; the table and the JSON end with the signal funnel. The buy-and-hold BTCUSDT benchmark over the
report's period (``fsm.ops.benchmark``) reads the market data cache a backtest's database names,
or ``--cache DIR`` (the only way for the daemon's database, which keeps no market history); without
one it is shown as "not available" with the reason. A backtest's database also gets the row
"Ambiguous trades" (its ``ambiguous_minutes`` table: trades that went through a minute whose order
of high and low the path rule decided, and the minutes cached aggTrades decided, D-74; the JSON's
``ambiguity``). The ledger and the funnel are
read in one transaction, and the table, the JSON and the page take their figures from the same
``metrics.compute``. A file is written beside its target and renamed over it (never half a file);
a path that cannot be written is one line and exit 2, before anything is printed (with both
options, the CSV is written first and stays when the page then fails).
"""

from __future__ import annotations

import argparse
import io
import json
import sqlite3
import sys
import time
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from fsm.ops import benchmark, html_report
from fsm.ops.board_cli import EXIT_BAD_CONFIG, add_source_arguments
from fsm.ops.trades_cli import EXIT_UNREADABLE, open_source, write_csv
from fsm.runtime import ledger, metrics
from fsm.runtime.liveness import EXIT_NO_DATABASE

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
        "--config or option, or an --html/--csv path that cannot be written.",
    )
    add_source_arguments(report)
    report.add_argument(
        "--capital",
        metavar="USDT",
        help="required: the starting balance the returns are measured on (the database does not know it)",
    )
    report.add_argument("--since", metavar="YYYY-MM-DD", help="only trades closed on or after this UTC day")
    report.add_argument("--json", action="store_true", help="machine-readable output")
    report.add_argument(
        "--html",
        metavar="FILE",
        help="also write the report as one self-contained HTML page (charts, funnel, trades)",
    )
    report.add_argument(
        "--csv", metavar="FILE", help="also write the trades as CSV (shortfsm trades' columns)"
    )
    report.add_argument(
        "--cache",
        metavar="DIR",
        help="market data cache (shortfsm data) for the buy-and-hold BTCUSDT benchmark; default: the "
        "one a backtest's database names (the daemon's names none: not available without this)",
    )
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


@dataclass(frozen=True, slots=True, kw_only=True)
class Source:
    """What one read of the database gave."""

    db: Path
    book: ledger.Ledger
    funnel: html_report.Funnel
    since_ms: int | None
    fills: dict[int, list[ledger.Fill]]  # id(trade) -> its fills (Trade.fills)
    marks: dict[int, list[tuple[int, Decimal]]]  # id(trade) -> journaled mark prices, with --html
    cache: Path | None = None  # the market data cache a backtest's database names (the benchmark's)
    ambiguity: html_report.Ambiguity | None = None  # a backtest's ambiguous minutes (D-74); else None


def read_source(args: argparse.Namespace) -> Source | int:
    """The ledger and the signal funnel of the database ``--config``/``--db`` name, read in one
    transaction, or the exit code after one line on stderr (the lines of ``shortfsm trades``)."""
    opened = open_source(args, PROG)
    if isinstance(opened, int):
        return opened
    conn, db, config, since_ms = opened.conn, opened.db, opened.config, opened.since_ms
    try:
        conn.execute("BEGIN")  # one snapshot: the funnel's trades are the ledger's
        book = ledger.read_ledger(conn)
        funnel = html_report.read_funnel(
            conn,
            book.trades,
            leading_chat_id=config.telegram.entry_chat_id if config is not None else None,
            since_ms=since_ms,
        )
        fills = {id(t): list(t.fills) for t in book.trades}
        marks = html_report.read_marks(conn, book.trades, fills) if args.html else {}
        cache = benchmark.recorded_cache(conn)
        ambiguity = html_report.read_ambiguity(conn, book.trades)
    except (sqlite3.Error, ledger.LedgerError) as exc:  # a foreign file or a garbled row: one line
        print(f"{PROG}: cannot read {db}: {exc}", file=sys.stderr)
        return EXIT_UNREADABLE
    finally:
        conn.close()
    return Source(
        db=db, book=book, funnel=funnel, since_ms=since_ms, fills=fills, marks=marks, cache=cache,
        ambiguity=ambiguity,
    )  # fmt: skip


def read_benchmark(args: argparse.Namespace, read: Source, result: metrics.Metrics) -> benchmark.Benchmark:
    """Buy and hold BTCUSDT over the report's period, from ``--cache`` or the database's own cache."""
    given = getattr(args, "cache", None)
    cache = Path(given) if given else read.cache
    return benchmark.compute(cache, result.start_ms, result.end_ms)


def cmd_report(args: argparse.Namespace) -> int:
    try:
        capital = parse_capital(args.capital)
    except ValueError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    read = read_source(args)
    if isinstance(read, int):
        return read
    book, since_ms = read.book, read.since_ms
    result = metrics.compute(book.trades, capital, since_ms=since_ms)
    bench = read_benchmark(args, read, result)
    written = write_files(args, read, result, bench)
    if written:
        return written
    empty = _empty_line(book.trades, result, args.since)
    if args.json:
        doc = as_dict(result)
        doc["benchmark"] = bench.as_dict()
        if read.ambiguity is not None:  # a backtest's database: its minutes whose order decided
            doc["ambiguity"] = read.ambiguity.as_dict()
        doc["funnel"] = read.funnel.as_dict()
        print(json.dumps(doc, ensure_ascii=False, indent=2))
        if empty:
            print(empty, file=sys.stderr)
        return 0
    if empty:
        print(empty, flush=True)
    else:
        console = Console(highlight=False)
        console.print(_headline(result), soft_wrap=True)
        console.print(_table(result, bench, read.ambiguity))
    if read.funnel.received:  # a database with no message (a test's, an import's) shows none
        print("Signal funnel" + (f" (messages received since {args.since})" if args.since else "") + ":")
        for line in read.funnel.lines():
            print(f"  {line}")
    return 0


def listed_trades(trades: list[ledger.Trade], since_ms: int | None) -> list[ledger.Trade]:
    """The trades ``shortfsm trades --since`` lists, in its order: oldest first, open ones always."""
    kept = [t for t in trades if since_ms is None or t.closed_ms is None or t.closed_ms >= since_ms]
    return sorted(kept, key=lambda t: (t.opened_ms, t.closed_ms or 0))


def trades_csv(trades: list[ledger.Trade]) -> str:
    """The rows of ``shortfsm trades --format csv``."""
    out = io.StringIO()
    write_csv((trade.as_dict() for trade in trades), out)
    return out.getvalue()


def write_files(
    args: argparse.Namespace,
    read: Source,
    result: metrics.Metrics,
    bench: benchmark.Benchmark | None = None,
) -> int:
    """Write ``--html`` and ``--csv``; 0, or ``EXIT_BAD_CONFIG`` after one line on stderr. The
    benchmark is read here when not given (``read_benchmark``)."""
    listed = listed_trades(read.book.trades, read.since_ms)
    outputs: list[tuple[str, str]] = []
    if args.csv:
        outputs.append((args.csv, trades_csv(listed)))
    if args.html:
        bench = bench if bench is not None else read_benchmark(args, read, result)
        page = html_report.render(
            source=str(read.db),
            generated_ms=int(time.time() * 1000),
            headline=_headline(result)
            if result.closed_trades
            else _empty_line(read.book.trades, result, args.since),
            figures=with_ambiguity(
                with_benchmark(figure_rows(result, FIGURE), bench.row(FIGURE)), read.ambiguity
            ),
            result=result,
            counted=metrics.counted_trades(read.book.trades, since_ms=read.since_ms),
            listed=listed,
            fills=read.fills,
            marks=read.marks,
            funnel=read.funnel,
            since=args.since,
            since_ms=read.since_ms,
            benchmark=bench,
        )
        outputs.append((args.html, page))
    for name, text in outputs:
        try:
            html_report.write_atomic(Path(name), text)
        except OSError as exc:
            why = exc.strerror or type(exc).__name__
            print(f"{PROG}: cannot write {name}: {why}", file=sys.stderr)
            return EXIT_BAD_CONFIG
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
        "funding": money(m.funding),
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


def figure_rows(m: metrics.Metrics, places: Decimal = SHOWN) -> list[tuple[str, str, str]]:
    """The report's rows (metric, value, note): percentages and ratios to ``places`` (the table's
    0.01, the page's 0.0001 like the JSON), money to 0.0001 USDT."""
    money = ledger.money
    drawdown = m.max_drawdown

    def shown(value: Decimal | None, suffix: str = "") -> str:
        text = _figure(value, places)
        return "—" if text is None else f"{text}{suffix}"

    span = f"{_figure(m.days, SHOWN)} days" if m.days is not None else ""
    rows: list[tuple[str, str, str]] = [
        ("Total return", shown(m.total_return_pct, " %"), f"{money(m.net)} USDT net"),
        ("CAGR", shown(m.cagr_pct, " %"), span if m.cagr_pct is not None else f"{span}, under 30 days"),
        ("Win rate", shown(m.win_rate_pct, " %"), f"{m.wins} won, {m.losses} lost"),
        ("Profit factor", shown(m.profit_factor), "" if m.profit_factor is not None else "no loss"),
        ("Expectancy", f"{money(m.expectancy)} USDT" if m.expectancy is not None else "—", "net per trade"),
        ("Average R:R", shown(m.average_rr), "average win / average loss"),
        ("Sharpe (daily)", shown(m.sharpe), "x sqrt(365)"),
        ("Sortino (daily)", shown(m.sortino), "x sqrt(365)"),
        ("Calmar", shown(m.calmar), "CAGR / max drawdown"),
        (
            "Max drawdown",
            shown(drawdown.pct, " %"),
            f"{money(drawdown.amount)} USDT, {_span(drawdown.start_ms, drawdown.end_ms)}"
            if drawdown.end_ms is not None
            else "none",
        ),
        ("Longest losing streak", str(m.longest_losing_streak), "trades"),
        ("Time in the market", shown(m.time_in_market_pct, " %"), "a trade open"),
        ("Fees", f"{money(m.fees)} USDT", f"realised PnL {money(m.realized_pnl)} USDT"),
        ("Funding", f"{money(m.funding)} USDT", "received (+) or paid (-) while the trades were open"),
        ("Final equity", f"{money(m.final_equity)} USDT", ""),
    ]
    rows += [(f"Exit: {reason}", str(count), "trades") for reason, count in m.exit_reasons.items()]
    return rows


def with_benchmark(rows: list[tuple[str, str, str]], row: tuple[str, str, str]) -> list[tuple[str, str, str]]:
    """The figure rows with the benchmark's right after the total return it is compared with."""
    return [*rows[:1], row, *rows[1:]]


def with_ambiguity(
    rows: list[tuple[str, str, str]], ambiguity: html_report.Ambiguity | None
) -> list[tuple[str, str, str]]:
    """The figure rows with a backtest's ambiguity row last (a daemon's database has none)."""
    return [*rows, ambiguity.row()] if ambiguity is not None else rows


def _table(
    m: metrics.Metrics,
    bench: benchmark.Benchmark | None = None,
    ambiguity: html_report.Ambiguity | None = None,
) -> Table:
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    table.add_column("Metric", no_wrap=True)
    table.add_column("Value", justify="right", no_wrap=True)
    table.add_column("Note", overflow="fold")
    rows = with_benchmark(figure_rows(m), bench.row(SHOWN)) if bench is not None else figure_rows(m)
    rows = with_ambiguity(rows, ambiguity)
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))  # a close reason is data, never rich markup
    return table


def _span(start_ms: int | None, end_ms: int | None) -> str:
    start = (_when(start_ms) or "")[:16].replace("T", " ")
    end = (_when(end_ms) or "")[:16].replace("T", " ")
    return f"{start} to {end}"
