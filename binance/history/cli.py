"""``shortfsm data``: fill the historical market data cache and say what is still missing.

With ``--feed``, the run also keeps the venue's exchangeInfo in the cache (``exchangeInfo.json``,
read again when a day old: ``binance.history.exchange_info``, D-62), and the plan also covers the
1m ``klines`` of ``BENCHMARK_SYMBOL`` (BTCUSDT) from the first window's start to the last one's end,
so the report's buy-and-hold benchmark has its prices after a normal ``data`` run (klines only: the
benchmark needs no mark price or funding; ``--symbol`` windows add nothing: name BTCUSDT yourself
there, and a ``--symbol`` run reads no exchangeInfo).

With ``--ambiguous RUN.db`` (repeatable), the run fetches instead the aggTrades of the minutes that
backtest's database lists as decided by the path rule (its ``ambiguous_minutes`` table, written by
``fsm.harness.backtest``): over REST, one minute at a time, weight-paced; a minute already cached
sends nothing (``--refetch``: sent again, the rows replaced); the next backtest on the cache then
takes those minutes' order of high and low from the trades (D-74). It goes on its own (no
--symbol/--feed/--since). A row of the table naming no symbol or no minute of Binance's history is
skipped with one line (exit 1); a database locked by another process is refused (exit 2).

Exit 0 when every window is complete, 1 when gaps remain (each listed with its UTC times and why) or
the sources cannot be reached (one line), 2 for bad arguments. Never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

EXIT_OK = 0
EXIT_GAPS = 1
EXIT_BAD_ARGS = 2
DEFAULT_CACHE = Path("var/market")
DATASET_NAMES = ("klines", "markPriceKlines", "fundingRate")
MAX_GAP_LINES = 40
DAY_MS = 86_400_000
FIRST_DAY = "2019-09-01"  # USD-M perpetuals (and their archive) start in September 2019
FIRST_DAY_MS = 1_567_296_000_000
BENCHMARK_SYMBOL = "BTCUSDT"  # the report's buy-and-hold benchmark (fsm.ops.benchmark)
BENCHMARK_DATASET = "klines"
OFFLINE = "--offline: not fetched"
# As fsm.harness.backtest writes them (not imported: that would load the engine for a download).
BACKTEST_MARKER = "meta.backtest"
AMBIGUOUS_TABLE = "ambiguous_minutes"

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    """Add the ``data`` subcommand to an argparse subparsers object."""
    p = subparsers.add_parser(
        "data",
        help="download and cache historical klines, mark-price klines and funding rates",
        description="Fill the market data cache (Parquet under --cache, coverage in manifest.sqlite) "
        "for the given symbols and UTC days: Binance's public archive (monthly zips for past months, "
        "daily zips otherwise, sha256-checked, resumed when cut) and REST for what the archive lacks "
        "(recent days, missing files), paced by request weight. A window already covered sends no "
        "request. Prints per symbol and dataset the archive files, REST rows and gaps. Exit 0 when "
        f"complete, {EXIT_GAPS} when gaps remain (listed) or the network is down, {EXIT_BAD_ARGS} for "
        "bad arguments.",
    )
    p.add_argument("--symbol", action="append", default=[], help="USD-M symbol, e.g. BTCUSDT (repeatable)")
    p.add_argument("--since", help="first UTC day, YYYY-MM-DD")
    p.add_argument("--until", help="last UTC day, YYYY-MM-DD, inclusive (default: today)")
    p.add_argument(
        "--datasets",
        default=",".join(DATASET_NAMES),
        help=f"comma-separated, from {','.join(DATASET_NAMES)} (default: all)",
    )
    p.add_argument(
        "--cache", type=Path, default=DEFAULT_CACHE, help=f"cache directory (default {DEFAULT_CACHE})"
    )
    p.add_argument("--archive-url", default="https://data.binance.vision", help="public archive base URL")
    p.add_argument("--rest-url", default="https://fapi.binance.com", help="USD-M REST base URL")
    p.add_argument(
        "--feed",
        type=Path,
        help="JSONL message feed: the symbols and dates of its leading-market messages give the windows",
    )
    p.add_argument(
        "--horizon-days",
        type=int,
        default=7,
        help="with --feed: days after each message's day to cover (default 7)",
    )
    p.add_argument(
        "--offline",
        action="store_true",
        help="send no request: report what the cache holds (missing days are listed as gaps); with "
        "--feed, keep the saved exchangeInfo and say its age",
    )
    p.add_argument(
        "--ambiguous",
        action="append",
        type=Path,
        default=[],
        metavar="RUN.db",
        help="fetch (REST) the aggTrades of the minutes this backtest's database lists as ambiguous, so "
        "the next backtest takes their order of high and low from the trades; repeatable (both "
        "databases of --path both); goes on its own, with --cache, --rest-url, --offline",
    )
    p.add_argument(
        "--refetch",
        action="store_true",
        help="with --ambiguous: fetch again the minutes already cached (their rows replaced), e.g. after "
        "a backtest said their trades disagree with the candle, or they came from a wrong --rest-url",
    )
    p.set_defaults(func=run_cli)


class BadArgs(Exception):
    """An argument that cannot be used: one line, exit 2."""


@dataclass(frozen=True, slots=True)
class Window:
    symbol: str
    start_ms: int
    end_ms: int


def run_cli(args: argparse.Namespace) -> int:

    err = Console(stderr=True, highlight=False, soft_wrap=True)
    if getattr(args, "ambiguous", None):
        return run_ambiguous(args, err)
    if getattr(args, "refetch", False):
        err.print("shortfsm data: --refetch goes with --ambiguous", markup=False)
        return EXIT_BAD_ARGS
    try:
        windows, datasets, skipped = _windows(args)
    except BadArgs as exc:
        err.print(f"shortfsm data: {exc}", markup=False)
        return EXIT_BAD_ARGS
    if skipped:
        err.print(f"{skipped} feed message(s) without date_ms skipped", markup=False)
    for line in getattr(args, "feed_problems", []):
        err.print(f"problem: {line}", markup=False)
    if not windows:
        err.print("shortfsm data: nothing to fetch: every window is in the future", markup=False)
        return EXIT_OK
    extra = benchmark_plan(windows, datasets) if args.feed is not None else []
    run = _run(args, windows, datasets, err, extra)
    return _fetch(run, err, "interrupted; a cut download resumes on the next run")


def _fetch(run: Coroutine[Any, Any, int], err: Console, interrupted: str) -> int:
    """``run`` to its exit code; a busy cache, Ctrl-C or any failure is one line (never a traceback)."""
    from binance.history.cache import CacheBusy

    try:
        return asyncio.run(run)
    except CacheBusy as exc:
        err.print(str(exc), markup=False)
        return EXIT_GAPS
    except KeyboardInterrupt:
        err.print(interrupted, markup=False)
        return EXIT_GAPS
    except Exception as exc:  # one line naming what failed
        log.debug("shortfsm data failed", exc_info=True)
        err.print(f"shortfsm data: {type(exc).__name__}: {exc}", markup=False)
        return EXIT_GAPS


def _windows(args: argparse.Namespace) -> tuple[list[Window], list[str], int]:
    from binance.history.cache import parse_day

    datasets = [d.strip() for d in str(args.datasets).split(",") if d.strip()]
    unknown = [d for d in datasets if d not in DATASET_NAMES]
    if unknown or not datasets:
        raise BadArgs(
            f"unknown dataset(s) {','.join(unknown) or '(none)'}; choose from {','.join(DATASET_NAMES)}"
        )
    if args.horizon_days < 0:
        raise BadArgs("--horizon-days must not be negative")
    from binance.history.archive import check_symbol

    symbols = []
    for raw in args.symbol:
        try:
            symbols.append(check_symbol(raw))
        except ValueError as exc:
            raise BadArgs(str(exc)) from None
    since = until = None
    try:
        if args.since:
            since = parse_day(args.since)
        if args.until:
            until = parse_day(args.until)
    except (ValueError, OverflowError, OSError):
        raise BadArgs(f"dates are YYYY-MM-DD: got {args.since!r} / {args.until!r}") from None
    for name, day in (("--since", since), ("--until", until)):
        if day is not None and day < FIRST_DAY_MS:
            raise BadArgs(f"{name} is before {FIRST_DAY}: Binance USD-M history starts then")
    windows: list[Window] = []
    skipped = 0
    if args.feed is not None:
        feed_windows, skipped, args.feed_problems = _feed_windows(args.feed, args.horizon_days)
        if since is not None:
            feed_windows = [w for w in feed_windows if w.end_ms > since]
        windows.extend(feed_windows)
    if symbols:
        if since is None:
            raise BadArgs("--since is required with --symbol")
        end = (until + DAY_MS) if until is not None else _tomorrow_ms()
        if until is None and end <= since:
            raise BadArgs(f"--since {args.since} is in the future (no closed candle yet)")
        if end <= since:
            raise BadArgs(f"--until {args.until} is before --since {args.since}")
        windows.extend(Window(s, since, end) for s in symbols)
    if not symbols and args.feed is None:
        raise BadArgs("give --symbol SYMBOL --since YYYY-MM-DD, or --feed FILE")
    return _merge(windows), datasets, skipped


def benchmark_plan(windows: list[Window], datasets: list[str]) -> list[tuple[Window, str]]:
    """The benchmark's (window, dataset): BTCUSDT klines over the whole span of ``windows``, when
    klines are asked for at all; nothing otherwise."""
    if BENCHMARK_DATASET not in datasets or not windows:
        return []
    start = min(w.start_ms for w in windows)
    end = max(w.end_ms for w in windows)
    return [(Window(BENCHMARK_SYMBOL, start, end), BENCHMARK_DATASET)]


def _tomorrow_ms() -> int:
    from binance.rest import wall_clock_ms

    return (wall_clock_ms() // DAY_MS + 1) * DAY_MS


def _feed_windows(path: Path, horizon_days: int) -> tuple[list[Window], int, list[str]]:
    from binance.history.archive import check_symbol
    from fsm.events import LeadingMarket
    from telegram_ingest.grammar import parse_message
    from telegram_ingest.replay import load_feed

    if not path.is_file():
        raise BadArgs(f"no feed file {path}")
    try:
        items = load_feed(path)
    except OSError as exc:
        raise BadArgs(f"cannot read feed {path}: {exc.strerror}") from None
    windows = []
    skipped = 0
    problems: list[str] = []
    for item in items:
        parsed = parse_message(item.text)
        if not isinstance(parsed, LeadingMarket):
            continue
        if item.date_ms is None:  # only an offset from the run's start: no calendar date
            skipped += 1
            continue
        day = item.date_ms // DAY_MS * DAY_MS
        try:
            check_symbol(parsed.symbol)
            iso_day(day)  # a date far outside the calendar cannot name an archive file
        except (ValueError, OverflowError, OSError):
            problems.append(
                f"feed message {item.message_id}: symbol {parsed.symbol!r} date_ms {item.date_ms} skipped"
            )
            continue
        if day + (horizon_days + 1) * DAY_MS <= FIRST_DAY_MS:
            problems.append(f"feed message {item.message_id}: before {FIRST_DAY}, skipped")
            continue
        day = max(day, FIRST_DAY_MS)
        windows.append(Window(parsed.symbol, day, day + (horizon_days + 1) * DAY_MS))
    if not windows and not skipped and not problems:
        raise BadArgs(f"no leading-market message in {path}")
    return windows, skipped, problems


def iso_day(ms: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d")


def _merge(windows: list[Window]) -> list[Window]:
    """Overlapping or touching windows of one symbol joined."""
    out: list[Window] = []
    for w in sorted(windows, key=lambda w: (w.symbol, w.start_ms)):
        if out and out[-1].symbol == w.symbol and w.start_ms <= out[-1].end_ms:
            last = out[-1]
            out[-1] = Window(w.symbol, last.start_ms, max(last.end_ms, w.end_ms))
        else:
            out.append(w)
    return out


async def _run(
    args: argparse.Namespace,
    windows: list[Window],
    datasets: list[str],
    err: Console,
    extra: list[tuple[Window, str]] | None = None,
) -> int:
    from binance.history.cache import CoverageReport, MarketCache, ProgressEvent

    out = Console(highlight=False, soft_wrap=True)
    if not out.is_terminal:
        out = Console(highlight=False, soft_wrap=True, width=140)  # a pipe or file: no narrow 80 columns
    plan = [(w, dataset) for w in windows for dataset in datasets] + list(extra or [])
    progress, finish = _progress(err, len(plan))
    cache = MarketCache(args.cache, archive_url=args.archive_url, rest=args.rest_url, progress=progress)
    offline = bool(getattr(args, "offline", False))
    if offline:
        cache.down.update(archive=OFFLINE, rest=OFFLINE)
    reports: list[CoverageReport] = []
    try:
        for w, dataset in plan:
            reports.append(await cache.aensure(w.symbol, dataset, w.start_ms, w.end_ms))
            progress(ProgressEvent("done", w.symbol, dataset, -1, -1, "finished"))
        down = dict(cache.down)
        # The venue's symbols and filters, for backtests of the feed (D-62); a ``--symbol`` run
        # fetches exactly what it names (a covered window sends nothing, D-55).
        info = await cache.aexchange_info() if args.feed is not None else None
    finally:
        finish()
        await cache.aclose()
        cache.close()
    fetched = sum(r.archive_files + r.rest_rows for r in reports)
    if offline:
        err.print("offline: no request sent; what the cache lacks is listed as gaps", markup=False)
    elif {"archive", "rest"} <= down.keys() and not fetched and any(r.gaps for r in reports):
        line = f"network down: {down['archive']}; {down['rest']}. Nothing fetched."
        err.print(f"{line} {info.short}." if info else line, markup=False)
        return EXIT_GAPS
    if info is not None:
        (err if info.problem else out).print(info.line, markup=False)
    _summary(out, reports)
    problems = list(dict.fromkeys(p for r in reports for p in r.problems))
    for line in problems:
        err.print(f"problem: {line}", markup=False)
    gaps = [(r, g) for r in reports for g in r.gaps]
    for r, g in gaps[:MAX_GAP_LINES]:
        out.print(f"gap {r.symbol} {r.dataset} {g.describe()}", markup=False)
    if len(gaps) > MAX_GAP_LINES:
        out.print(f"... and {len(gaps) - MAX_GAP_LINES} more gaps", markup=False)
    return EXIT_GAPS if gaps else EXIT_OK


def _summary(out: Console, reports: list[Any]) -> None:
    from binance.history.cache import iso

    table = Table(box=box.SIMPLE_HEAD, title="market data cache")
    for name, justify in (
        ("symbol", "left"),
        ("dataset", "left"),
        ("from", "left"),
        ("to", "left"),
        ("archive files", "right"),
        ("REST rows", "right"),
        ("rows", "right"),
        ("gaps", "right"),
        ("requests", "right"),
    ):
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for r in reports:
        table.add_row(
            r.symbol,
            r.dataset,
            iso(r.start_ms)[:16],
            iso(r.end_ms)[:16],
            str(r.archive_files),
            str(r.rest_rows),
            str(r.rows),
            str(len(r.gaps)),
            str(r.requests),
        )
    out.print(table)


def _progress(err: Console, total: int) -> tuple[Callable[[Any], None], Callable[[], None]]:
    """A rich progress bar on a terminal, plain lines otherwise."""
    if not err.is_terminal:

        def plain(event: Any) -> None:
            if event.kind == "stored":  # one line per file or REST run stored; the rest is noise in a log
                print(f"{event.symbol} {event.dataset}: {event.message}", file=sys.stderr, flush=True)

        return plain, lambda: None

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=err)
    task = bar.add_task("market data", total=total)
    bar.start()

    def rich_event(event: Any) -> None:
        if event.total_days < 0:
            bar.advance(task)
        else:
            bar.update(task, description=f"{event.symbol} {event.dataset}: {event.message}")

    return rich_event, bar.stop


# ---------------------------------------------------------------------------------------------
# --ambiguous: the aggTrades of a backtest's ambiguous minutes
# ---------------------------------------------------------------------------------------------


DB_BUSY_S = 5.0  # how long a read waits for another process's write lock on a backtest's database
LAST_MINUTE_MS = 253_402_300_740_000  # 9999-12-31T23:59Z: a later time has no calendar date
BAD_MINUTE = "not a minute start of Binance's history (a multiple of 60000 ms from 2019-09-01)"


def ambiguous_minutes(db: Path) -> tuple[dict[str, list[int]], list[str]]:
    """symbol -> the minute starts ``db`` (a backtest's database) lists as decided by the path rule,
    and one line per row that names no symbol or no minute of Binance's history (a hand-edited
    table: skipped). BadArgs (one line) when it is not a backtest's database, predates the table, or
    another process holds it locked."""
    import sqlite3

    from binance.history.archive import check_symbol

    if not db.is_file():
        raise BadArgs(f"--ambiguous {db}: no such database")
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=DB_BUSY_S)
    except sqlite3.Error as exc:
        raise BadArgs(f"--ambiguous {db}: cannot be opened: {exc}") from None
    locked = BadArgs(
        f"--ambiguous {db}: locked by another process (a backtest still writing it?); "
        "run again when it is done"
    )
    try:
        try:
            marker = conn.execute("SELECT 1 FROM status WHERE key = ?", [BACKTEST_MARKER]).fetchone()
        except sqlite3.DatabaseError as exc:
            if "locked" in str(exc):
                raise locked from None
            marker = None
        if marker is None:
            raise BadArgs(f"--ambiguous {db}: not a backtest's database")
        try:
            rows = conn.execute(
                f"SELECT symbol, minute_ms FROM {AMBIGUOUS_TABLE} WHERE decided_by = 'path' "
                "ORDER BY symbol, minute_ms"
            ).fetchall()
        except sqlite3.DatabaseError as exc:
            if "locked" in str(exc):
                raise locked from None
            raise BadArgs(
                f"--ambiguous {db}: written before backtests recorded their ambiguous minutes; "
                "run the backtest again"
            ) from None
    finally:
        conn.close()
    out: dict[str, list[int]] = {}
    skipped: list[str] = []
    for symbol, minute in rows:
        try:
            if not isinstance(symbol, str):
                raise ValueError(f"not a symbol: {symbol!r} (a text column)")
            name = check_symbol(symbol)
        except ValueError as exc:
            skipped.append(f"skipped {db} {AMBIGUOUS_TABLE} row ({symbol!r}, {minute!r}): {exc}")
            continue
        if (
            isinstance(minute, bool)
            or not isinstance(minute, int)
            or not FIRST_DAY_MS <= minute <= LAST_MINUTE_MS
            or minute % 60_000
        ):
            skipped.append(f"skipped {db} {AMBIGUOUS_TABLE} row ({symbol!r}, {minute!r}): {BAD_MINUTE}")
            continue
        out.setdefault(name, []).append(minute)
    return out, skipped


def run_ambiguous(args: argparse.Namespace, err: Console) -> int:
    """``--ambiguous``: fetch the listed minutes' aggTrades; exit 0 all cached, 1 some not (or rows
    of a database skipped), 2 bad arguments (a database locked by another process included: nothing
    is fetched until every listed database can be read)."""

    if args.symbol or args.feed is not None or args.since or args.until:
        err.print(
            "shortfsm data: --ambiguous goes on its own (with --cache, --rest-url, --offline, --refetch)",
            markup=False,
        )
        return EXIT_BAD_ARGS
    wanted: dict[str, set[int]] = {}
    skipped: list[str] = []
    try:
        for db in args.ambiguous:
            minutes_of, bad_rows = ambiguous_minutes(db)
            skipped += bad_rows
            for symbol, minutes in minutes_of.items():
                wanted.setdefault(symbol, set()).update(minutes)
    except BadArgs as exc:
        err.print(f"shortfsm data: {exc}", markup=False)
        return EXIT_BAD_ARGS
    if not wanted:
        for line in skipped:
            print(line, flush=True)
        err.print("shortfsm data: no ambiguous minute listed: nothing to fetch", markup=False)
        return EXIT_GAPS if skipped else EXIT_OK
    return _fetch(
        _run_ambiguous(args, wanted, err, skipped), err, "interrupted; the minutes stored so far are kept"
    )


async def _run_ambiguous(
    args: argparse.Namespace, wanted: dict[str, set[int]], err: Console, skipped: list[str]
) -> int:
    from binance.history.cache import AggReport, MarketCache, iso

    out = Console(highlight=False, soft_wrap=True)
    if not out.is_terminal:
        out = Console(highlight=False, soft_wrap=True, width=140)
    progress, finish = _progress(err, len(wanted))
    cache = MarketCache(args.cache, archive_url=args.archive_url, rest=args.rest_url, progress=progress)
    if args.offline:
        cache.down["rest"] = OFFLINE
    reports: list[AggReport] = []
    try:
        for symbol, minutes in sorted(wanted.items()):
            reports.append(
                await cache.aensure_agg(symbol, minutes, refetch=bool(getattr(args, "refetch", False)))
            )
    finally:
        finish()
        await cache.aclose()
        cache.close()
    table = Table(box=box.SIMPLE_HEAD, title="aggTrades of the ambiguous minutes")
    for name, justify in (("symbol", "left"), ("minutes", "right"), ("cached", "right"),
                          ("fetched", "right"), ("trades", "right"), ("requests", "right"),
                          ("not fetched", "right")):  # fmt: skip
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for r in reports:
        cells = (r.minutes, r.cached, r.fetched, r.rows, r.requests, len(r.failed))
        table.add_row(r.symbol, *(str(c) for c in cells))
    out.print(table)
    for line in (p for r in reports for p in r.problems):
        err.print(f"problem: {line}", markup=False)
    for line in skipped:
        out.print(line, markup=False)
    failed = [(r.symbol, minute, why) for r in reports for minute, why in r.failed]
    for symbol, minute, why in failed[:MAX_GAP_LINES]:
        out.print(f"not fetched {symbol} aggTrades {iso(minute)}: {why}", markup=False)
    if len(failed) > MAX_GAP_LINES:
        out.print(f"... and {len(failed) - MAX_GAP_LINES} more minutes", markup=False)
    return EXIT_GAPS if failed or skipped else EXIT_OK
