"""``shortfsm backtest``: a message feed and the market data cache through the engine and the sim.

Exit 0: done; 1: ran, with data problems (listed: feed lines that do not parse, missing or corrupt
minutes, signals skipped for want of a symbol or data or because their text was edited, messages
acted on at a stale price); 2: a bad argument or setting, an --out that is not ours or is being
written by another run (one line); 3: the feed or the cache is missing; 4: with ``--sweep``, a run
of the grid failed (its row says why; the others ran). ``--sweep``: ``fsm.ops.backtest_sweep``;
``--sweep ... --scheduler tcp://HOST:8786`` runs the grid on a Dask cluster instead of local processes
(no Dask, no scheduler within 10 s, no worker, or a worker that does not see the feed, the cache or
the sweep folder: one line, exit 2).

Every run names its cache and feed in its database (``fsm.ops.benchmark.SOURCE_KEY``), so
``shortfsm report`` finds the buy-and-hold BTCUSDT benchmark's data without ``--cache``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from binance.history.cache import parse_day
from fsm.runtime import ledger
from fsm.runtime.config import AppConfig, ConfigError, load_cli_config
from fsm.strategy import Strategy

if TYPE_CHECKING:  # the run (engine, client, sim) is imported when the command runs, not at start-up
    from distributed import Client

    from fsm.harness.backtest import BacktestResult

EXIT_DATA = 1
EXIT_BAD_ARGUMENT = 2
EXIT_MISSING_INPUT = 3
EXIT_SWEEP_FAILED = 4
DAY_MS = 86_400_000


def register(subparsers: Any) -> None:
    """Add the ``backtest`` subcommand to an argparse subparsers object."""
    p = subparsers.add_parser(
        "backtest",
        help="replay a message feed over cached market data through the engine and the simulated venue",
        description="Run a JSONL message feed (shortfsm export) over the market data cache (shortfsm data) "
        "through the engine, the real Binance client and binance/sim on a simulated clock that jumps "
        "from one decision point to the next. Trades land in a database that `shortfsm trades` and "
        "`shortfsm report` read. Exit 0 done, 1 ran with data problems (listed), 2 bad argument or "
        "setting, 3 feed or cache missing, 4 a run of a --sweep failed.",
    )
    p.add_argument(
        "--demo",
        action="store_true",
        help="run the bundled synthetic demo (two months, nine signals; its data written to "
        "<--out folder>/demo-data/, the pessimistic run's HTML report to <--out folder>/demo-report.html) "
        "on both paths; no feed, cache or dates needed",
    )
    p.add_argument("--feed", help="the JSONL message feed (required without --demo)")
    p.add_argument(
        "--cache", help="the market data cache folder, from shortfsm data (required without --demo)"
    )
    p.add_argument("--since", metavar="YYYY-MM-DD", help="first UTC day of the run (required without --demo)")
    p.add_argument(
        "--until", metavar="YYYY-MM-DD", help="last UTC day of the run, inclusive (as export and data)"
    )
    p.add_argument("--capital", metavar="USDT", help="the starting wallet balance (required without --demo)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a setting, validated as in config.yaml (e.g. strategy.tp_pct=4); repeatable",
    )
    p.add_argument(
        "--path",
        choices=("pessimistic", "optimistic", "both"),
        default="pessimistic",
        help="order of high and low inside a minute for a short: pessimistic high first (default), "
        "optimistic low first, both: run each (the optimistic run into OUT.optimistic.db) and print "
        "the bracket",
    )
    p.add_argument("--slippage-bps", default="0", metavar="N", help="MARKET and stop fills, against us")
    p.add_argument("--maker-fee", metavar="RATE", help="maker fee rate (default the sim's 0.0002)")
    p.add_argument("--taker-fee", metavar="RATE", help="taker fee rate (default the sim's 0.0005)")
    p.add_argument("--out", default="var/backtest.db", metavar="DB", help="database written (replaced)")
    p.add_argument("--config", default=None, help="configuration file (default config.yaml when present)")
    p.add_argument("--dense", action="store_true", help="a mark every second instead of the decision points")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--sweep",
        nargs="+",
        action="extend",
        default=[],
        metavar="SECTION.KEY=V1,V2",
        help="run the grid of these settings (cartesian product, at most 256 runs, each validated as "
        "--set) as independent backtests on --jobs processes (or --scheduler's cluster), each into "
        "<--out folder>/<--out name>.sweep/run-NNN.db, and print them ranked (--rank-by)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=None,
        metavar="N",
        help="--sweep: worker processes on this machine (default: every core; not with --scheduler)",
    )
    p.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="--sweep: run the grid on the Dask cluster of this scheduler (e.g. tcp://10.0.0.5:8786; "
        "needs pip install 'shortfsm[distributed]'); the feed, the cache and the --out folder must be "
        "on a disk every worker shares, at the same paths",
    )
    p.add_argument(
        "--rank-by",
        choices=("net_return", "drawdown", "profit_factor", "trades", "ambiguous"),
        default="net_return",
        help="--sweep: net_return (highest first, the default), drawdown (smallest first), "
        "profit_factor, trades (most first), ambiguous (smallest share first); ties go to the "
        "smaller drawdown, then the higher return",
    )
    p.set_defaults(func=cmd_backtest)


def apply_settings(config: AppConfig, assignments: list[str]) -> Strategy:
    """The strategy after ``SECTION.KEY=VALUE`` overrides, validated as the config file is;
    ValueError with one line when one is malformed or refused."""
    data = config.model_dump()
    for text in assignments:
        key, sep, value = text.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise ValueError(f"--set {text!r}: expected SECTION.KEY=VALUE (e.g. strategy.tp_pct=4)")
        if section not in data or not isinstance(data[section], dict):
            raise ValueError(f"--set {text!r}: no section {section!r}")
        current = data[section].get(name)
        data[section][name] = (
            [v.strip() for v in value.split(",") if v.strip()] if isinstance(current, tuple) else value
        )
    try:
        return AppConfig.model_validate(data).to_strategy()
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in error["loc"])
        raise ValueError(f"--set {where}: {error['msg'].removeprefix('Value error, ')}") from None


def _decimal(text: str, what: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"{what} {text!r} is not a number") from None
    if not value.is_finite():
        raise ValueError(f"{what} {text!r} is not a number")
    return value


def cmd_backtest(args: argparse.Namespace) -> int:
    from fsm.harness.backtest import BacktestError, Fees, check_out, check_settings, run_backtest

    demo_folder: Path | None = None
    if args.demo:
        from fsm.harness import backtest_demo

        out = Path(args.out)
        if out == Path("var/backtest.db"):  # the default: the demo gets a folder of its own
            out = Path("var/backtest-demo/demo.db")
        demo_folder = out.parent / backtest_demo.DATA_FOLDER  # written once --out is checked
        feed, cache = backtest_demo.demo_paths(demo_folder)
        args.feed, args.cache, args.out = str(feed), str(cache), str(out)
        args.since, args.until = backtest_demo.DEMO_SINCE, backtest_demo.DEMO_UNTIL
        args.capital = args.capital or str(backtest_demo.DEMO_CAPITAL)
        if not args.sweep:  # a sweep ranks one path
            args.path = "both" if args.path == "pessimistic" else args.path
    missing = [f"--{name}" for name in ("feed", "cache", "since", "capital") if not getattr(args, name)]
    if missing:
        print(f"backtest: {', '.join(missing)} required (or --demo)", file=sys.stderr)
        return EXIT_BAD_ARGUMENT

    try:
        since = parse_day(args.since)
        until = parse_day(args.until) + DAY_MS if args.until else None  # the end of that day
    except ValueError:
        print("backtest: --since/--until must be YYYY-MM-DD", file=sys.stderr)
        return EXIT_BAD_ARGUMENT
    try:
        config, _ = load_cli_config(args.config, optional=True)
        strategy = apply_settings(config, args.set)
        capital = _decimal(args.capital, "--capital")
        slippage = _decimal(args.slippage_bps, "--slippage-bps")
        defaults = Fees()
        fees = Fees(
            maker=_decimal(args.maker_fee, "--maker-fee") if args.maker_fee else defaults.maker,
            taker=_decimal(args.taker_fee, "--taker-fee") if args.taker_fee else defaults.taker,
        )
        check_settings(capital=capital, slippage_bps=slippage, fees=fees)
    except (ValueError, ConfigError, BacktestError) as exc:
        print(f"backtest: {str(exc).splitlines()[0]}", file=sys.stderr)
        return EXIT_BAD_ARGUMENT
    if args.sweep or args.jobs is not None or args.scheduler is not None:
        run = SweepInputs(config, capital, slippage, fees, since, until, demo_folder)
        return cmd_sweep(args, run)
    paths = ("pessimistic", "optimistic") if args.path == "both" else (args.path,)
    out = Path(args.out)
    try:  # every database of the run, before the first run writes anything
        for rule in paths:
            check_out(out if rule == paths[0] else out.with_name(f"{out.stem}.{rule}{out.suffix or '.db'}"))
    except BacktestError as exc:
        print(f"backtest: {exc}", file=sys.stderr)
        return exc.exit_code
    if demo_folder is not None and (code := prepare_demo(demo_folder)):
        return code
    results: list[BacktestResult] = []
    for rule in paths:
        db = out if rule == paths[0] else out.with_name(f"{out.stem}.{rule}{out.suffix or '.db'}")
        try:
            results.append(
                run_backtest(
                    args.feed,
                    args.cache,
                    since_ms=since,
                    until_ms=until,
                    strategy=strategy,
                    capital=capital,
                    path=rule,  # type: ignore[arg-type]
                    dense=args.dense,
                    slippage_bps=slippage,
                    fees=fees,
                    db_path=db,
                    heartbeat_symbol=config.binance.price_heartbeat_symbol,
                )
            )
        except BacktestError as exc:
            print(f"backtest: {exc}", file=sys.stderr)
            return exc.exit_code
        note_source(db, args, since)
    if args.json:
        payload: dict[str, Any] = {"runs": [r.as_json() for r in results]}
        if len(results) == 2:
            payload["bracket"] = {
                "pessimistic": ledger.money(results[0].net),
                "optimistic": ledger.money(results[1].net),
                "marked_pessimistic": ledger.money(results[0].marked_net),
                "marked_optimistic": ledger.money(results[1].marked_net),
            }
        print(json.dumps(payload, ensure_ascii=False, indent=2))
    else:
        for r in results:
            print_result(r)
        if len(results) == 2:
            print(
                f"bracket: net {ledger.money(results[0].net)} (pessimistic) .. "
                f"{ledger.money(results[1].net)} (optimistic), closed trades only; with open positions "
                f"at the last price {ledger.money(results[0].marked_net)} .. "
                f"{ledger.money(results[1].marked_net)}"
            )
    if len(results) == 2 and (
        results[0].net > results[1].net or results[0].marked_net > results[1].marked_net
    ):
        print(
            "backtest: warning: the pessimistic run came out above the optimistic one: the bracket "
            "does not bound this feed's outcome (look at the ambiguous trades)",
            file=sys.stderr,
        )
    if demo_folder is not None:
        page = out.with_name("demo-report.html")
        if write_report(results[0], capital, page, args.config) == 0:
            print(f"report ({results[0].path} run): {page}", file=sys.stderr if args.json else sys.stdout)
    return EXIT_DATA if any(r.data_problems for r in results) else 0


def prepare_demo(folder: Path) -> int:
    """Label the demo on stderr and write its data (with the benchmark's BTCUSDT klines); 0, or
    exit 2 after one line."""
    from fsm.harness import backtest_demo

    print(f"backtest --demo: {backtest_demo.LABEL}", file=sys.stderr)
    try:
        _, cache = backtest_demo.write_demo(folder)
        backtest_demo.write_benchmark(cache)
    except OSError as exc:
        print(f"backtest: cannot write the demo data: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_BAD_ARGUMENT
    return 0


def note_source(db: Path, args: argparse.Namespace, since_ms: int) -> None:
    """Name the run's cache and feed in its database (the report's benchmark reads that cache); a
    failure is one warning line: the run itself is complete."""
    import sqlite3

    from fsm.ops.benchmark import record_source

    until_ms = parse_day(args.until) + DAY_MS if args.until else None
    try:
        record_source(db, cache=Path(args.cache), feed=Path(args.feed), since_ms=since_ms, until_ms=until_ms)
    except (OSError, sqlite3.Error) as exc:
        print(
            f"backtest: warning: {db}: the cache is not recorded ({exc}); report --cache DIR", file=sys.stderr
        )


@dataclass(frozen=True, slots=True)
class SweepInputs:
    """What every run of a sweep shares, read and checked by ``cmd_backtest``."""

    config: AppConfig
    capital: Decimal
    slippage: Decimal
    fees: Any
    since: int
    until: int | None
    demo_folder: Path | None


def cmd_sweep(args: argparse.Namespace, run: SweepInputs) -> int:
    """``--sweep``: validate the whole grid, run it (here or on ``--scheduler``'s Dask cluster),
    print it ranked (``fsm.ops.backtest_sweep``)."""
    from fsm.ops import backtest_sweep as sweep

    config = run.config

    if not args.sweep:
        print(
            f"backtest: {'--jobs' if args.jobs is not None else '--scheduler'} goes with --sweep",
            file=sys.stderr,
        )
        return EXIT_BAD_ARGUMENT
    if args.scheduler is not None and args.jobs is not None:
        print(
            "backtest: --jobs and --scheduler do not go together: the cluster's workers set how many runs "
            "go at once (dask worker ADDRESS --nworkers N --nthreads 1)",
            file=sys.stderr,
        )
        return EXIT_BAD_ARGUMENT
    if args.path == "both":
        print("backtest: --sweep ranks one path: --path pessimistic or optimistic", file=sys.stderr)
        return EXIT_BAD_ARGUMENT
    if args.jobs is not None and not 1 <= args.jobs <= 256:
        print("backtest: --jobs must be between 1 and 256", file=sys.stderr)
        return EXIT_BAD_ARGUMENT
    tuple_keys = {
        f"{section}.{name}"
        for section, values in config.model_dump().items()
        if isinstance(values, dict)
        for name, value in values.items()
        if isinstance(value, tuple)
    }
    try:
        grid = sweep.parse_grid(args.sweep)
        combos = sweep.combinations(grid)
        strategies = sweep.validate(
            grid, combos, lambda extra: apply_settings(config, [*args.set, *extra]), tuple_keys
        )
    except sweep.SweepError as exc:
        print(f"backtest: {exc}", file=sys.stderr)
        return EXIT_BAD_ARGUMENT
    client = None
    if args.scheduler is not None:
        try:  # before anything is written: an unreachable cluster leaves no trace
            client = sweep.connect(args.scheduler)
        except sweep.SchedulerError as exc:
            print(f"backtest: {exc}", file=sys.stderr)
            return EXIT_BAD_ARGUMENT
        except KeyboardInterrupt:
            print("backtest: --sweep interrupted while reaching the scheduler: nothing ran", file=sys.stderr)
            return EXIT_SWEEP_FAILED
    try:
        folder = sweep_folder(args.out, absolute=client is not None)
        with sweep.sweep_lock(folder):
            return run_sweep(
                args, run, grid=grid, combos=combos, strategies=strategies, client=client, folder=folder
            )
    except sweep.SweepError as exc:  # --out names no database file, or another sweep writes it
        print(f"backtest: {exc}", file=sys.stderr)
        return EXIT_BAD_ARGUMENT
    finally:
        if client is not None:
            client.close()  # type: ignore[no-untyped-call]


def sweep_folder(out_arg: str, *, absolute: bool) -> Path:
    """The sweep's folder for ``--out`` (``SweepError`` when it names no database file or its
    folder is missing). Workers get absolute paths, as given: a symlink resolved here may not
    exist on a worker."""
    from fsm.ops import backtest_sweep as sweep

    out = Path(os.path.abspath(out_arg)) if absolute else Path(out_arg)
    if out.name in ("", ".", "..") or out.is_dir():
        raise sweep.SweepError(f"--out {out_arg}: a database file is needed, e.g. var/bt.db")
    folder = sweep.folder_for(out)
    if not folder.parent.is_dir():
        raise sweep.SweepError(f"--out {out_arg}: no folder {folder.parent}")
    return folder


def run_sweep(
    args: argparse.Namespace,
    run: SweepInputs,
    *,
    grid: list[tuple[str, list[str]]],
    combos: list[tuple[tuple[str, str], ...]],
    strategies: list[Strategy],
    client: Client | None,
    folder: Path,
) -> int:
    """The validated grid under its lock: its databases checked, its runs on local processes or on
    ``client``'s cluster (absolute paths, seen by every worker), the rows ranked, written, printed."""
    from fsm.harness.backtest import BacktestError, check_out
    from fsm.ops import backtest_sweep as sweep

    config, capital, slippage, fees = run.config, run.capital, run.slippage, run.fees
    since, until, demo_folder = run.since, run.until, run.demo_folder
    try:
        if folder.exists() and not folder.is_dir():
            raise BacktestError(f"{folder} exists and is not a folder: use another --out", EXIT_BAD_ARGUMENT)
        for index in range(1, len(combos) + 1):
            check_out(sweep.db_for(folder, index))
    except BacktestError as exc:
        print(f"backtest: {exc}", file=sys.stderr)
        return exc.exit_code
    if demo_folder is not None and (code := prepare_demo(demo_folder)):
        return code
    root = Path(args.cache)  # as run_backtest checks them: once here rather than in every row
    if not Path(args.feed).is_file():
        print(f"backtest: no feed file {args.feed}", file=sys.stderr)
        return EXIT_MISSING_INPUT
    if not any((root / name).exists() for name in ("manifest.sqlite", "klines", "markPriceKlines")):
        print(f"backtest: no market data cache at {root} (run `shortfsm data` first)", file=sys.stderr)
        return EXIT_MISSING_INPUT
    feed, cache = (str(args.feed), str(args.cache)) if client is None else (
        os.path.abspath(args.feed), os.path.abspath(root)
    )  # fmt: skip
    if client is not None:
        try:
            unseen = sweep.unseen_paths(client, [feed, cache, str(folder)])
        except sweep.SchedulerError as exc:
            print(f"backtest: {exc}", file=sys.stderr)
            return EXIT_BAD_ARGUMENT
        if unseen:
            worker, paths = next(iter(unseen.items()))
            more = f" (and {len(unseen) - 1} other worker(s))" if len(unseen) > 1 else ""
            print(
                f"backtest: --scheduler: worker {worker}{more} does not see {paths[0]}: the feed, the cache "
                "and the --out folder must be on a disk every worker shares, at the same absolute paths",
                file=sys.stderr,
            )
            return EXIT_BAD_ARGUMENT
    tasks = [
        sweep.SweepTask(
            index=index,
            settings=combo,
            strategy=strategy,
            feed=feed,
            cache=cache,
            db=str(sweep.db_for(folder, index)),
            since_ms=since,
            until_ms=until,
            capital=capital,
            path=args.path,
            dense=args.dense,
            slippage_bps=slippage,
            maker_fee=fees.maker,
            taker_fee=fees.taker,
            heartbeat_symbol=config.binance.price_heartbeat_symbol,
        )
        for index, (combo, strategy) in enumerate(zip(combos, strategies, strict=True), start=1)
    ]
    if client is None:
        jobs = min(args.jobs or sweep.default_jobs(), len(tasks))
        where = f"{jobs} process(es)"
    else:
        jobs = min(sweep.threads(client), len(tasks))
        where = f"{jobs} Dask worker thread(s) of {args.scheduler}"
    started = time.perf_counter()
    try:
        rows = sweep.run_grid(tasks, jobs) if client is None else sweep.run_grid_on(client, tasks)
    except KeyboardInterrupt:
        print("backtest: --sweep interrupted; finished runs are in " + str(folder), file=sys.stderr)
        return EXIT_SWEEP_FAILED
    wall = time.perf_counter() - started
    order = sweep.ranked(rows, args.rank_by)
    keys = [key for key, _ in grid]
    doc = sweep.as_json(
        order, rank_by=args.rank_by, grid=grid, folder=folder, path=args.path, jobs=jobs,
        scheduler=args.scheduler,
    )  # fmt: skip
    sweep.write_index(folder, doc)
    if args.json:
        print(json.dumps(doc, ensure_ascii=False, indent=2))
    else:
        print(
            f"sweep: {len(rows)} run(s) on {where} in {wall:.2f} s, {args.path} path, "
            f"ranked by {sweep.rank_rule(args.rank_by)}; net of closed trades on {ledger.money(capital)} USDT"
        )
        for line in sweep.table_lines(order, keys):
            print(line)
        problems = list(dict.fromkeys(p for row in rows for p in row.problems))
        for line in problems:
            print(f"  data: {line}")
        print(f"databases and sweep.json in {folder} (shortfsm report --db {sweep.db_for(folder, 1)} ...)")
    failed = [row for row in rows if row.error is not None]
    for row in failed:
        named = " ".join(f"{k}={v}" for k, v in row.settings)
        print(f"backtest: run {row.index} ({named}) failed: {row.error}", file=sys.stderr)
    if failed:
        return EXIT_SWEEP_FAILED
    return EXIT_DATA if any(row.problems for row in rows) else 0


def write_report(result: BacktestResult, capital: Decimal, page: Path, config: str | None) -> int:
    """The HTML page ``shortfsm report --db DB --capital C --html PAGE`` writes, for one run; 0, or
    the report's exit code after its one line on stderr."""
    from fsm.ops import report_cli
    from fsm.runtime import metrics

    args = argparse.Namespace(
        db=str(result.db_path), config=config, since=None, capital=str(capital), html=str(page), csv=None
    )
    read = report_cli.read_source(args)
    if isinstance(read, int):
        return read
    measured = metrics.compute(read.book.trades, capital, since_ms=read.since_ms)
    return report_cli.write_files(args, read, measured)


def print_result(r: BacktestResult) -> None:
    closed = [t for t in r.trades if t.closed_ms is not None]
    mode = "dense" if r.dense else "compressed"
    print(
        f"{r.path} path ({mode}): {len(r.trades)} trade(s), {len(closed)} closed, "
        f"net {ledger.money(r.net)} USDT, closed trades only (funding {ledger.money(r.funding)} included)"
    )
    if len(closed) < len(r.trades):
        print(
            f"  open at the end: unrealised {ledger.money(r.unrealized_total)} USDT at the last price "
            f"({ledger.iso_utc(r.last_mark_ms)}); every trade marked there: {ledger.money(r.marked_net)} USDT"
        )
    for t in r.trades:
        row = r.trade_json(t)
        extra = f" unrealised {row['unrealized']}" if "unrealized" in row else ""
        print(
            f"  {row['opened']} {t.symbol} #{t.message_id}: {row['quantity']} @ {row['entry_avg']} -> "
            f"{row['exit_avg']} {t.close_reason or t.status}  pnl {row['realized_pnl']} fees {row['fees']}"
            f"{extra}"
        )
    print(
        f"  ambiguous: {r.ambiguous_trades} of {len(r.trades)} trade(s) went through a minute whose high/low "
        f"order decides ({r.ambiguous_minutes} minute(s))"
    )
    print(
        f"  {r.messages} message(s), {r.events} events in {r.wall_s:.2f} s "
        f"({r.events_per_s:.0f} events/s); db {r.db_path}"
    )
    for line in r.bad_lines:
        print(f"  feed: {line}")
    for line in r.skipped:
        print(f"  skipped: {line}")
    for line in r.flagged:
        print(f"  flagged: {line}")
    for symbol, ranges in r.missing.items():
        minutes = sum((b - a) // 60_000 for a, b in ranges)
        first = ledger.iso_utc(ranges[0][0])
        print(f"  missing data: {symbol} {minutes} minute(s) from {first} ({len(ranges)} gap(s))")
    for line in r.notes:
        print(f"  note: {line}")
    for line in r.open_at_end:
        print(f"  open at the end: {line}")
