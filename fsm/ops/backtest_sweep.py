"""``shortfsm backtest --sweep``: a grid of strategy settings, one independent backtest per combination.

Theory of operation
-------------------
``--sweep strategy.tp_pct=3,4,5 strategy.second_entry_pct=10,15,20`` is the cartesian product of the
values (9 runs here, in that order: the first key varies slowest). Every combination is validated
as ``--set`` is (``backtest_cli.apply_settings``, after the ``--set`` overrides; a swept key wins
over a ``--set`` of the same key) before any run starts: a value outside its validated range is one
line and exit 2. More than ``MAX_RUNS`` combinations is refused the same way.

The unit of work is ``run_task(SweepTask) -> SweepRow``: a module-level function of one picklable
value holding the settings (the validated ``Strategy`` and the swept ``KEY=VALUE`` pairs) and the
paths (feed, cache, database), touching nothing else. ``concurrent.futures.ProcessPoolExecutor``
maps it over the grid on ``--jobs`` processes (default: every core). A run that fails is caught in
its own process and becomes a row saying why; the others go on.

When a sweep outgrows one machine, ``--scheduler tcp://HOST:8786`` maps the same ``run_task`` over
the same tasks on a Dask cluster (``dask.distributed.Client``; the optional extra
``shortfsm[distributed]``, imported only then): ``connect`` reaches the scheduler (``CONNECT_TIMEOUT_S``)
and waits for a worker before anything is written, ``unseen_paths`` asks every worker whether it
sees the feed, the cache and the sweep folder (they must be on a disk all of them share, at the same
absolute paths: the tasks carry absolute paths), and ``run_grid_on`` submits one Dask task per run.
A run that raised on its worker, or whose worker died (on every worker the scheduler retried it
on: its ``allowed-failures``), is a failed row as a broken pool's is; the others go on.

Layout: ``--out DIR/NAME.db`` gives the folder ``DIR/NAME.sweep/``, with ``run-001.db``,
``run-002.db``, ... in grid order (each a full backtest database: ``shortfsm report --db`` and
``shortfsm trades --db`` read it) and ``sweep.json``, the ranked table as ``--json`` prints it. A
run's database is replaced only when it is a backtest's (``backtest.check_out``).

Ranking (``--rank-by``): ``net_return`` (default) is the report's total return of the closed trades
(net / capital), highest first; ``drawdown`` the maximum drawdown (%), smallest first;
``profit_factor`` highest first (no loss with a win counts as infinite, no closed trade last);
``trades`` the most trades first; ``ambiguous`` the smallest share of trades that went through a
minute whose high/low order decides. Ties go to the smaller drawdown, then the higher return, then
grid order; failed runs come last.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import gc
import itertools
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fsm.runtime import ledger
from fsm.strategy import Strategy

if TYPE_CHECKING:  # the optional extra: imported only when --scheduler is given
    from distributed import Client

MAX_RUNS = 256
RANK_BY = ("net_return", "drawdown", "profit_factor", "trades", "ambiguous")
FIGURE = Decimal("0.01")
INFINITY = Decimal("Infinity")
CONNECT_TIMEOUT_S = 10  # --scheduler: to reach the scheduler, then for its first worker
NO_WORKER_S = 60.0  # a cluster without any worker this long fails the runs left
POLL_S = 0.2  # how often the runs' futures are looked at
WATCH_S = 2.0  # how long without a finished run before the workers are counted
HANDSHAKE_GRACE_S = 5  # beyond Dask's own connect timeout, before a silent peer is given up
INSTALL_HINT = "pip install 'shortfsm[distributed]'"


class SweepError(ValueError):
    """A ``--sweep`` argument that cannot be run: one line, exit 2."""


class SchedulerError(SweepError):
    """``--scheduler``: no Dask here, no scheduler answering, no worker, or a worker off the shared
    disk: one line, exit 2, before any run."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SweepTask:
    """One combination of the grid: its settings and its paths (picklable: the unit of work)."""

    index: int  # 1-based, grid order
    settings: tuple[tuple[str, str], ...]  # the swept (SECTION.KEY, value) pairs
    strategy: Strategy  # validated with the --set overrides and these settings
    feed: str
    cache: str
    db: str
    since_ms: int
    until_ms: int | None
    capital: Decimal
    path: str  # pessimistic / optimistic
    dense: bool
    slippage_bps: Decimal
    maker_fee: Decimal
    taker_fee: Decimal
    heartbeat_symbol: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SweepRow:
    """What one run gave (figures as the report computes them), or ``error``."""

    index: int
    settings: tuple[tuple[str, str], ...]
    db: str
    error: str | None = None
    return_pct: Decimal | None = None
    net: Decimal | None = None
    max_drawdown_pct: Decimal | None = None
    profit_factor: Decimal | None = None
    wins: int = 0
    trades: int = 0
    closed_trades: int = 0
    ambiguous_trades: int = 0
    problems: tuple[str, ...] = field(default=())  # the run's data problems, one line each
    wall_s: float = 0.0

    @property
    def ambiguous_pct(self) -> Decimal | None:
        return Decimal(self.ambiguous_trades) * 100 / self.trades if self.trades else None

    @property
    def status(self) -> str:
        if self.error is not None:
            return "failed"
        return "data problems" if self.problems else "ok"

    def as_dict(self, rank: int) -> dict[str, Any]:
        return {
            "rank": rank,
            "run": self.index,
            "settings": dict(self.settings),
            "status": self.status,
            "error": self.error,
            "return_pct": _figure(self.return_pct),
            "net": ledger.money(self.net) if self.net is not None else None,
            "max_drawdown_pct": _figure(self.max_drawdown_pct),
            "profit_factor": _figure(self.profit_factor),
            "trades": self.trades,
            "closed_trades": self.closed_trades,
            "ambiguous_trades": self.ambiguous_trades,
            "ambiguous_pct": _figure(self.ambiguous_pct),
            "db": self.db,
            "data_problems": list(self.problems),
        }


def _figure(value: Decimal | None, places: Decimal = Decimal("0.0001")) -> str | None:
    if value is None:
        return None
    rounded = value.quantize(places, rounding=ROUND_HALF_UP)
    return format(rounded if rounded else abs(rounded), "f")


# ---------------------------------------------------------------------------------------------
# The grid
# ---------------------------------------------------------------------------------------------


def parse_grid(assignments: Sequence[str]) -> list[tuple[str, list[str]]]:
    """``KEY=V1,V2,...`` each to (KEY, values); ``SweepError`` with one line when malformed."""
    grid: list[tuple[str, list[str]]] = []
    for text in assignments:
        key, sep, value = text.partition("=")
        key = key.strip()
        section, dot, name = key.partition(".")
        if not sep or not dot or not name or not section:
            raise SweepError(f"--sweep {text!r}: expected SECTION.KEY=V1,V2,... (e.g. strategy.tp_pct=3,4,5)")
        values = [v.strip() for v in value.split(",")]
        if not all(values):
            raise SweepError(f"--sweep {text!r}: an empty value (values are separated by single commas)")
        if len(set(values)) != len(values):
            raise SweepError(f"--sweep {text!r}: a value is given twice")
        if any(key == k for k, _ in grid):
            raise SweepError(f"--sweep {key}: given twice; put all its values in one KEY=V1,V2,...")
        grid.append((key, values))
    return grid


def combinations(grid: list[tuple[str, list[str]]]) -> list[tuple[tuple[str, str], ...]]:
    """The cartesian product in grid order (the first key varies slowest); ``SweepError`` beyond
    ``MAX_RUNS``."""
    size = 1
    for _, values in grid:
        size *= len(values)
    if size > MAX_RUNS:
        shape = " x ".join(str(len(values)) for _, values in grid)
        raise SweepError(f"--sweep: {shape} = {size} runs, more than {MAX_RUNS}; narrow the grid")
    keys = [key for key, _ in grid]
    return [tuple(zip(keys, combo, strict=True)) for combo in itertools.product(*(v for _, v in grid))]


def validate(
    grid: list[tuple[str, list[str]]],
    combos: list[tuple[tuple[str, str], ...]],
    settle: Callable[[list[str]], Strategy],
    tuple_keys: set[str],
) -> list[Strategy]:
    """Each value alone, then each combination, through ``settle`` (``apply_settings`` with the
    ``--set`` overrides): the strategies in grid order, or ``SweepError`` naming the first refused."""
    for key, values in grid:
        if key in tuple_keys:
            raise SweepError(f"--sweep {key}: a list setting cannot be swept (its values are comma lists)")
        alone = []
        for value in values:
            try:
                alone.append(settle([f"{key}={value}"]))
            except ValueError as exc:
                raise SweepError(f"--sweep {key}={value}: {_reason(exc)}") from None
        if len(values) > 1 and all(strategy == alone[0] for strategy in alone):
            raise SweepError(f"--sweep {key}: its values do not change the strategy a backtest runs")
    strategies = []
    for combo in combos:
        try:
            strategies.append(settle([f"{k}={v}" for k, v in combo]))
        except ValueError as exc:
            named = " ".join(f"{k}={v}" for k, v in combo)
            raise SweepError(f"--sweep {named}: {_reason(exc)}") from None
    return strategies


def _reason(exc: ValueError) -> str:
    """``apply_settings``' line without its ``--set KEY:`` prefix."""
    text = str(exc).splitlines()[0]
    head, sep, rest = text.partition(": ")
    return rest if sep and head.startswith("--set ") else text


def folder_for(out: Path) -> Path:
    """``DIR/NAME.db`` -> ``DIR/NAME.sweep`` (the folder of the grid's databases)."""
    return out.with_name(f"{out.stem}.sweep")


def db_for(folder: Path, index: int) -> Path:
    return folder / f"run-{index:03d}.db"


@contextlib.contextmanager
def sweep_lock(folder: Path) -> Iterator[None]:
    """An exclusive lock on the sweep folder (``NAME.sweep.lock`` beside it) for the whole sweep:
    two sweeps into one --out would write each other's run-NNN.db (on Dask, one after the other,
    both reporting success with the other's figures). ``SweepError`` when it is taken."""
    path = folder.with_name(f"{folder.name}.lock")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise SweepError(f"--out: {path} cannot be written: {exc.strerror or exc}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise SweepError(
                f"another sweep is writing {folder}: wait for it, or use another --out"
            ) from None
        yield
    finally:
        os.close(fd)  # the lock file stays (as a run's: unlinking it would let two sweeps lock two files)


# ---------------------------------------------------------------------------------------------
# The unit of work
# ---------------------------------------------------------------------------------------------


def run_task(task: SweepTask) -> SweepRow:
    """Run one combination into its own database; never raises (a failure is the row's ``error``)."""
    from fsm.harness.backtest import BacktestError, Fees, run_backtest
    from fsm.ops import benchmark
    from fsm.runtime import metrics

    failed = SweepRow(index=task.index, settings=task.settings, db=task.db)
    started = time.perf_counter()
    try:
        result = run_backtest(
            task.feed,
            task.cache,
            since_ms=task.since_ms,
            until_ms=task.until_ms,
            strategy=task.strategy,
            capital=task.capital,
            path=task.path,  # type: ignore[arg-type]
            dense=task.dense,
            slippage_bps=task.slippage_bps,
            fees=Fees(maker=task.maker_fee, taker=task.taker_fee),
            db_path=task.db,
            heartbeat_symbol=task.heartbeat_symbol,
        )
        benchmark.record_source(
            Path(task.db),
            cache=Path(task.cache),
            feed=Path(task.feed),
            since_ms=task.since_ms,
            until_ms=task.until_ms,
        )
        measured = metrics.compute(result.trades, task.capital)
    except BacktestError as exc:
        return _failed(failed, str(exc), started)
    except Exception as exc:  # a run's own failure: its row says so, the grid goes on
        return _failed(failed, f"{type(exc).__name__}: {exc}", started)
    problems = [*(f"feed: {line}" for line in result.bad_lines)]
    problems += [f"skipped: {line}" for line in result.skipped]
    problems += [f"flagged: {line}" for line in result.flagged]
    for symbol, ranges in result.missing.items():
        minutes = sum((b - a) // 60_000 for a, b in ranges)
        problems.append(f"missing data: {symbol} {minutes} minute(s) in {len(ranges)} gap(s)")
    return SweepRow(
        index=task.index,
        settings=task.settings,
        db=task.db,
        return_pct=measured.total_return_pct,
        net=measured.net,
        max_drawdown_pct=measured.max_drawdown.pct,
        profit_factor=measured.profit_factor,
        wins=measured.wins,
        trades=len(result.trades),
        closed_trades=measured.closed_trades,
        ambiguous_trades=result.ambiguous_trades,
        problems=tuple(problems),
        wall_s=time.perf_counter() - started,
    )


def _failed(row: SweepRow, why: str, started: float) -> SweepRow:
    line = why.splitlines()[0] if why else "failed"
    return SweepRow(
        index=row.index, settings=row.settings, db=row.db, error=line, wall_s=time.perf_counter() - started
    )


def run_grid(tasks: list[SweepTask], jobs: int) -> list[SweepRow]:
    """Every task on ``jobs`` processes (in this process when 1), rows in grid order."""
    if jobs <= 1 or len(tasks) == 1:
        return [run_task(task) for task in tasks]
    rows: dict[int, SweepRow] = {}
    with ProcessPoolExecutor(max_workers=min(jobs, len(tasks))) as pool:
        futures: dict[Future[SweepRow], SweepTask] = {pool.submit(run_task, task): task for task in tasks}
        for future, task in futures.items():
            try:
                rows[task.index] = future.result()
            except BrokenProcessPool:
                rows[task.index] = SweepRow(
                    index=task.index, settings=task.settings, db=task.db, error="its worker process died"
                )
            except Exception as exc:  # e.g. a result that cannot be sent back
                rows[task.index] = SweepRow(
                    index=task.index, settings=task.settings, db=task.db, error=f"{type(exc).__name__}: {exc}"
                )
    return [rows[task.index] for task in tasks]


# ---------------------------------------------------------------------------------------------
# The same tasks on a Dask cluster (--scheduler)
# ---------------------------------------------------------------------------------------------


def connect(address: str) -> Client:
    """A client of the Dask scheduler at ``address`` with at least one worker, or
    ``SchedulerError`` (one line) when Dask is not installed, the address is malformed, nothing
    answers within ``CONNECT_TIMEOUT_S`` or no worker joins in that time."""
    if address.strip().lower() == "local":
        raise SchedulerError(
            "--scheduler local: not offered; on this machine the sweep runs on its own processes "
            "(--jobs N): --scheduler takes a Dask scheduler's address, e.g. tcp://10.0.0.5:8786"
        )
    if not address.strip():  # an empty address would make Dask start a cluster of its own here
        raise SchedulerError("--scheduler: an address is needed, e.g. tcp://10.0.0.5:8786")
    try:
        from distributed import Client
    except ImportError as exc:
        raise SchedulerError(
            f"--scheduler needs Dask, which is not installed ({exc}): {INSTALL_HINT}"
        ) from None
    try:
        client = _client_within(Client, address, CONNECT_TIMEOUT_S + HANDSHAKE_GRACE_S)
    except _Silent:
        raise SchedulerError(
            f"--scheduler {address}: something accepted the connection but did not answer as a Dask "
            f"scheduler within {CONNECT_TIMEOUT_S + HANDSHAKE_GRACE_S} s (is it `dask scheduler`?)"
        ) from None
    except (OSError, TimeoutError):
        why = f"no Dask scheduler answered within {CONNECT_TIMEOUT_S} s (is `dask scheduler` running there?)"
    except ValueError as exc:
        why = f"not a scheduler address ({_first_line(exc)}); e.g. tcp://10.0.0.5:8786"
    except Exception as exc:  # e.g. a TLS or version handshake refused
        why = f"cannot connect: {type(exc).__name__}: {_first_line(exc)}"
    else:
        try:
            client.wait_for_workers(1, timeout=CONNECT_TIMEOUT_S)
        except TimeoutError:
            client.close()  # type: ignore[no-untyped-call]
            raise SchedulerError(
                f"--scheduler {address}: no worker joined within {CONNECT_TIMEOUT_S} s "
                f"(start some: dask worker {address})"
            ) from None
        return client
    gc.collect()  # a half-built Client closes itself when collected: now, while its event loop runs
    raise SchedulerError(f"--scheduler {address}: {why}")


class _Silent(Exception):
    """The Dask client was not built within its deadline."""


def _client_within(factory: Callable[..., Client], address: str, deadline_s: float) -> Client:
    """``factory(address, ...)`` built on a daemon thread, waited for at most ``deadline_s``: a
    peer that accepts TCP and never speaks Dask holds ``Client()`` past its own timeout for good
    (an attack hung the CLI 900 s). Ctrl-C interrupts the wait; a thread still stuck is left to
    the process's exit (daemon)."""
    done = threading.Event()
    got: dict[str, Any] = {}

    def build() -> None:
        try:
            got["client"] = factory(address, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
        except BaseException as exc:  # handed to the waiting thread
            got["error"] = exc
        finally:
            done.set()

    threading.Thread(target=build, name="shortfsm-dask-connect", daemon=True).start()
    if not done.wait(deadline_s):
        raise _Silent()
    if "error" in got:
        raise got["error"]
    client: Client = got["client"]
    return client


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def threads(client: Client) -> int:
    """How many runs the cluster's workers take at once now (their threads)."""
    return sum(client.nthreads().values())  # type: ignore[no-untyped-call]


def missing_paths(paths: Sequence[str]) -> list[str]:
    """Those of ``paths`` this machine does not see (run on every worker by ``unseen_paths``)."""
    return [path for path in paths if not os.path.exists(path)]


def unseen_paths(client: Client, paths: Sequence[str]) -> dict[str, list[str]]:
    """Worker address -> the ``paths`` it does not see, for the workers that miss any;
    ``SchedulerError`` when the workers cannot be asked."""
    try:
        seen: dict[str, list[str]] = client.run(missing_paths, list(paths))
    except Exception as exc:  # e.g. a worker without shortfsm: it cannot run a task either
        raise SchedulerError(
            f"--scheduler: a worker failed the shared-disk check ({type(exc).__name__}: {_first_line(exc)}); "
            "every worker needs shortfsm installed, the same version as here"
        ) from None
    return {worker: missing for worker, missing in sorted(seen.items()) if missing}


def run_grid_on(
    client: Client,
    tasks: list[SweepTask],
    work: Callable[[SweepTask], SweepRow] = run_task,
    *,
    no_worker_s: float = NO_WORKER_S,
) -> list[SweepRow]:
    """Every task as one Dask task (``work``, ``run_task`` but in tests) on the client's cluster,
    rows in grid order; a task that raised on its worker, or whose worker died on every try the
    scheduler allows, is its run's failed row. Without any worker for ``no_worker_s`` (the last
    one died: Dask would wait for another for ever), the runs not done are failed rows."""
    sweep = uuid.uuid4().hex[:8]  # keys name the run on the dashboard; unique per sweep
    keys = [f"shortfsm-sweep-{sweep}-run-{task.index:03d}" for task in tasks]
    futures = client.map(work, tasks, key=keys, retries=0)  # one message: the scheduler spreads them
    pending = dict(zip(futures, tasks, strict=True))
    rows: dict[int, SweepRow] = {}
    alone_since: float | None = None
    last_done = time.monotonic()
    while pending:
        done = [future for future in pending if future.done()]  # type: ignore[no-untyped-call]
        if not done:
            time.sleep(POLL_S)  # (distributed.wait needs a default client: this CLI sets none)
        for future in done:
            task = pending.pop(future)
            rows[task.index] = _row_of(future, task)
        if done:
            last_done = time.monotonic()
        if done or time.monotonic() - last_done < WATCH_S or threads(client):
            alone_since = None
            continue
        alone_since = alone_since if alone_since is not None else time.monotonic()
        if time.monotonic() - alone_since >= no_worker_s:
            client.cancel(list(pending))  # type: ignore[no-untyped-call]
            why = f"no Dask worker left to run it (none for {no_worker_s:g} s)"
            for task in pending.values():
                rows[task.index] = SweepRow(index=task.index, settings=task.settings, db=task.db, error=why)
            break
    return [rows[task.index] for task in tasks]


def _row_of(future: Any, task: SweepTask) -> SweepRow:
    """The run's row from its finished Dask future."""
    from distributed import KilledWorker

    try:
        row: SweepRow = future.result()
        return row
    except KilledWorker as exc:
        tries = exc.allowed_failures + 1
        why = (
            f"a Dask worker died while the run was assigned to it, {tries} time(s) (all the scheduler "
            "allows; it may not have started)"
        )
    except (asyncio.CancelledError, concurrent.futures.CancelledError) as exc:
        why = (
            f"cancelled by the cluster ({_first_line(exc)}): it may still have finished on its worker, "
            f"into {Path(task.db).name}"
        )
    except Exception as exc:  # raised on the worker, or the scheduler lost
        why = f"{type(exc).__name__}: {_first_line(exc)}"
    return SweepRow(index=task.index, settings=task.settings, db=task.db, error=why)


# ---------------------------------------------------------------------------------------------
# Ranking and output
# ---------------------------------------------------------------------------------------------


def rank_key(row: SweepRow, rank_by: str) -> tuple[Any, ...]:
    """The sort key of ``rank_by`` (module docstring); failed rows after every other."""
    if row.error is not None or row.return_pct is None:
        return (1, row.index)
    ret = row.return_pct
    drawdown = row.max_drawdown_pct or Decimal(0)
    ties = (drawdown, -ret, row.index)
    if rank_by == "drawdown":
        return (0, drawdown, -ret, row.index)
    if rank_by == "profit_factor":
        no_loss = INFINITY if row.wins else -INFINITY  # no loss: infinite with a win, last without
        pf = row.profit_factor if row.profit_factor is not None else no_loss
        return (0, -pf, *ties)
    if rank_by == "trades":
        return (0, -row.trades, *ties)
    if rank_by == "ambiguous":
        share = row.ambiguous_pct if row.ambiguous_pct is not None else Decimal(0)
        return (0, share, *ties)
    return (0, -ret, *ties)


def ranked(rows: list[SweepRow], rank_by: str) -> list[SweepRow]:
    return sorted(rows, key=lambda r: rank_key(r, rank_by))


def as_json(
    rows: list[SweepRow],
    *,
    rank_by: str,
    grid: list[tuple[str, list[str]]],
    folder: Path,
    path: str,
    jobs: int,
    scheduler: str | None = None,
) -> dict[str, Any]:
    """The ranked table; with ``scheduler`` (its address) ``jobs`` is its workers' threads at the start."""
    head: dict[str, Any] = {
        "keys": [key for key, _ in grid],
        "values": {key: values for key, values in grid},
        "runs": len(rows),
        "jobs": jobs,
        "path": path,
        "rank_by": rank_by,
        "folder": str(folder),
    }
    if scheduler is not None:
        head["scheduler"] = scheduler
    return {"sweep": head, "rows": [row.as_dict(rank) for rank, row in enumerate(rows, start=1)]}


def table_lines(rows: list[SweepRow], keys: list[str]) -> list[str]:
    """The ranked table as plain text columns (no terminal-width wrapping)."""
    head = ["rank", *keys, "return %", "net USDT", "max DD %", "PF", "trades", "ambiguous %", "status", "db"]
    body: list[list[str]] = []
    for rank, row in enumerate(rows, start=1):
        values = dict(row.settings)
        if row.error is not None:
            figures = ["—"] * 6 + [f"failed: {row.error}"]
        else:
            figures = [
                _shown(row.return_pct),
                ledger.money(row.net) if row.net is not None else "—",
                _shown(row.max_drawdown_pct),
                _shown(row.profit_factor) if row.profit_factor is not None else ("inf" if row.wins else "—"),
                f"{row.closed_trades}/{row.trades}" if row.closed_trades != row.trades else str(row.trades),
                _shown(row.ambiguous_pct),
                row.status,
            ]
        body.append([str(rank), *(values.get(k, "") for k in keys), *figures, row.db])
    widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head))]
    right = {0, *range(len(keys) + 1, len(keys) + 7)}

    def fmt(cells: list[str]) -> str:
        out = [c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(cells)]
        return "  ".join(out).rstrip()

    return [fmt(head), *(fmt(line) for line in body)]


def _shown(value: Decimal | None) -> str:
    return "—" if value is None else (_figure(value, FIGURE) or "—")


def rank_rule(rank_by: str) -> str:
    return {
        "net_return": "net return, highest first",
        "drawdown": "max drawdown, smallest first",
        "profit_factor": "profit factor, highest first",
        "trades": "trades, most first",
        "ambiguous": "ambiguous share, smallest first",
    }[rank_by] + "; ties: smaller drawdown, then higher return"


def default_jobs() -> int:
    return os.cpu_count() or 1


def write_index(folder: Path, doc: dict[str, Any]) -> None:
    """``sweep.json`` in the folder (written beside and renamed over)."""
    from fsm.ops.html_report import write_atomic

    try:
        write_atomic(folder / "sweep.json", json.dumps(doc, ensure_ascii=False, indent=2) + "\n")
    except OSError as exc:
        print(f"backtest: cannot write {folder / 'sweep.json'}: {exc.strerror or exc}", file=sys.stderr)
