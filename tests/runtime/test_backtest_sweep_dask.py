"""``shortfsm backtest --sweep ... --scheduler ADDRESS``: the same grid on a real Dask cluster
(``LocalCluster`` on loopback, two worker processes of one thread), ranked as the process pool ranks it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import dask
import pytest
from backtest_kit import ROOT, shortfsm
from distributed import Client, LocalCluster

from fsm.ops import backtest_sweep
from fsm.ops.backtest_sweep import (
    CONNECT_TIMEOUT_S,
    SweepRow,
    SweepTask,
    missing_paths,
    run_grid_on,
    unseen_paths,
)
from fsm.strategy import Strategy

GRID = ("--demo", "--sweep", "strategy.tp_pct=3,4,5")


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A scheduler on loopback with two worker processes of one thread each (no fixed port: the
    dashboard on ``:0``); a task whose worker dies fails at once (no retry on another worker)."""
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        local = LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            scheduler_port=0,
            dashboard_address=":0",
        )
    try:
        yield local.scheduler_address
    finally:
        local.close()


@pytest.fixture(scope="module")
def pool_sweep(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The grid on the process pool (two processes): what the cluster must reproduce."""
    where = tmp_path_factory.mktemp("pool")
    done = shortfsm("backtest", *GRID, "--jobs", "2", "--out", str(where / "demo.db"), "--json", cwd=where)
    assert done.returncode == 0, done.stderr
    doc: dict[str, object] = json.loads(done.stdout)
    return doc


def _comparable(doc: dict[str, object]) -> list[dict[str, object]]:
    """The rows with each database named by its file (the two sweeps write different folders)."""
    rows = doc["rows"]
    assert isinstance(rows, list)
    return [{**row, "db": Path(row["db"]).name} for row in rows]


def test_the_cluster_ranks_the_same_rows_as_the_process_pool(
    cluster: str, pool_sweep: dict[str, object], tmp_path: Path
) -> None:
    done = shortfsm("backtest", *GRID, "--scheduler", cluster, "--out", "demo.db", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    doc = json.loads(done.stdout)
    folder = tmp_path / "demo.sweep"  # the relative --out, resolved: the workers get absolute paths
    pool_head = pool_sweep["sweep"]
    assert isinstance(pool_head, dict)
    assert doc["sweep"] == {
        **pool_head,
        "folder": str(folder),
        "jobs": 2,  # the cluster's worker threads
        "scheduler": cluster,
    }
    assert _comparable(doc) == _comparable(pool_sweep)  # same rows, figures and order
    assert [row["db"] for row in doc["rows"]] == [
        str(folder / f"run-{row['run']:03d}.db") for row in doc["rows"]
    ]
    assert sorted(p.name for p in folder.glob("run-*.db")) == ["run-001.db", "run-002.db", "run-003.db"]
    assert json.loads((folder / "sweep.json").read_text(encoding="utf-8")) == doc
    # Each database is a full backtest's, with its absolute cache recorded for `report`.
    report = shortfsm("report", "--db", doc["rows"][0]["db"], "--capital", "1000", "--json", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert json.loads(report.stdout)["net"] == doc["rows"][0]["net"]


def test_the_table_names_the_cluster(cluster: str, tmp_path: Path) -> None:
    done = shortfsm(
        "backtest", "--demo", "--sweep", "strategy.tp_pct=3,4", "--scheduler", cluster,
        "--out", str(tmp_path / "d.db"), cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"sweep: 2 run(s) on 2 Dask worker thread(s) of {cluster} in ")
    assert [line.split()[-2:] for line in lines[2:4]] == [
        ["ok", f"{tmp_path}/d.sweep/run-002.db"],
        ["ok", f"{tmp_path}/d.sweep/run-001.db"],
    ]


def test_a_run_that_fails_on_its_worker_is_its_row_and_exit_4(cluster: str, tmp_path: Path) -> None:
    (tmp_path / "demo.sweep" / "run-002.db.lock").mkdir(parents=True)  # run 2's database cannot be written
    done = shortfsm(
        "backtest", *GRID, "--scheduler", cluster, "--out", str(tmp_path / "demo.db"), "--json", cwd=tmp_path
    )
    assert done.returncode == 4, done.stderr
    assert "Traceback" not in done.stderr
    failed = [line for line in done.stderr.splitlines() if line.startswith("backtest: run")]
    assert failed == [
        f"backtest: run 2 (strategy.tp_pct=4) failed: --out {tmp_path}/demo.sweep/run-002.db: cannot be "
        "written: Is a directory"
    ]
    rows = json.loads(done.stdout)["rows"]
    assert [(row["run"], row["status"]) for row in rows] == [(3, "ok"), (1, "ok"), (2, "failed")]
    assert rows[2]["return_pct"] is None
    assert sorted(p.name for p in (tmp_path / "demo.sweep").glob("run-*.db")) == ["run-001.db", "run-003.db"]


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # closed again: nothing listens there


def test_an_unreachable_scheduler_is_one_line_and_exit_2_before_anything_is_written(tmp_path: Path) -> None:
    address = f"tcp://127.0.0.1:{_closed_port()}"
    done = shortfsm("backtest", *GRID, "--scheduler", address, "--out", str(tmp_path / "d.db"), cwd=tmp_path)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.splitlines() == [
        f"backtest: --scheduler {address}: no Dask scheduler answered within {CONNECT_TIMEOUT_S} s "
        "(is `dask scheduler` running there?)"
    ]
    assert list(tmp_path.iterdir()) == []  # no demo data, no sweep folder


BLOCK_DASK = """
import sys
sys.modules["dask"] = None  # as if the extra were not installed: `import dask...` raises ImportError
sys.modules["distributed"] = None
from fsm.ops.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


def test_without_dask_the_scheduler_option_names_the_extra_and_exits_2(tmp_path: Path) -> None:
    argv = ["backtest", *GRID, "--scheduler", "tcp://127.0.0.1:8786", "--out", str(tmp_path / "d.db")]
    done = subprocess.run(
        [sys.executable, "-c", BLOCK_DASK, *argv],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=subprocess.DEVNULL,
        timeout=60,
    )
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.splitlines() == [
        "backtest: --scheduler needs Dask, which is not installed (import of distributed halted; None in "
        "sys.modules): pip install 'shortfsm[distributed]'"
    ]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            [*GRID, "--scheduler", "tcp://127.0.0.1:8786", "--jobs", "2"],
            "backtest: --jobs and --scheduler do not go together: the cluster's workers set how many runs go "
            "at once (dask worker ADDRESS --nworkers N --nthreads 1)",
        ),
        (
            [*GRID, "--scheduler", "local"],
            "backtest: --scheduler local: not offered; on this machine the sweep runs on its own processes "
            "(--jobs N): --scheduler takes a Dask scheduler's address, e.g. tcp://10.0.0.5:8786",
        ),
        ([*GRID, "--scheduler", ""], "backtest: --scheduler: an address is needed, e.g. tcp://10.0.0.5:8786"),
        (
            [*GRID, "--scheduler", "udp://127.0.0.1:8786"],
            "backtest: --scheduler udp://127.0.0.1:8786: not a scheduler address (unknown address scheme "
            "'udp' (known schemes: ['inproc', 'tcp', 'tls', 'ucx', 'ws', 'wss'])); e.g. tcp://10.0.0.5:8786",
        ),
        (["--demo", "--scheduler", "tcp://127.0.0.1:8786"], "backtest: --scheduler goes with --sweep"),
        (
            ["--demo", "--sweep", "strategy.tp_pct=3,500", "--scheduler", "tcp://127.0.0.1:8786"],
            "backtest: --sweep strategy.tp_pct=500: Input should be less than 100",
        ),
    ],
)
def test_a_refused_scheduler_option_is_one_line_and_exit_2(
    tmp_path: Path, args: list[str], line: str
) -> None:
    done = shortfsm("backtest", *args, "--out", str(tmp_path / "d.db"), cwd=tmp_path)
    assert (done.returncode, done.stderr.splitlines(), done.stdout) == (2, [line], "")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# run_grid_on and the shared-disk check, on the same cluster from this process
# ---------------------------------------------------------------------------------------------


def _task(index: int) -> SweepTask:
    return SweepTask(
        index=index,
        settings=(("strategy.tp_pct", str(index)),),
        strategy=Strategy(),
        feed="/nowhere/feed.jsonl",
        cache="/nowhere/cache",
        db=f"/nowhere/run-{index:03d}.db",
        since_ms=0,
        until_ms=None,
        capital=Decimal(1000),
        path="pessimistic",
        dense=False,
        slippage_bps=Decimal(0),
        maker_fee=Decimal("0.0002"),
        taker_fee=Decimal("0.0005"),
        heartbeat_symbol="BTCUSDT",
    )


def misbehaving_run(task: SweepTask) -> SweepRow:
    """Run 2 kills its worker process, run 3 raises, the others give a row (run on the workers)."""
    if task.index == 2:
        os._exit(1)
    if task.index == 3:
        raise RuntimeError("boom\nsecond line")
    return SweepRow(index=task.index, settings=task.settings, db=task.db, trades=task.index)


ALLOWS = "all the scheduler allows; it may not have started"


def test_a_dead_worker_or_a_raising_task_is_that_runs_failed_row(cluster: str) -> None:
    rows = []
    with Client(cluster, set_as_default=False) as client:
        for pair in ((1, 2), (3, 4)):  # two runs on two idle workers: one each
            rows += run_grid_on(client, [_task(i) for i in pair], work=misbehaving_run)
            client.wait_for_workers(2, timeout=60)  # a dead worker is back (its nanny restarts it)
    assert [(row.index, row.error, row.trades) for row in rows] == [
        (1, None, 1),
        (2, f"a Dask worker died while the run was assigned to it, 1 time(s) ({ALLOWS})", 0),
        (3, "RuntimeError: boom", 0),
        (4, None, 4),
    ]


def test_every_worker_is_asked_whether_it_sees_the_paths(cluster: str, tmp_path: Path) -> None:
    here, away = str(tmp_path), str(tmp_path / "not-here")
    assert missing_paths([here, away]) == [away]
    with Client(cluster, set_as_default=False) as client:
        client.wait_for_workers(2, timeout=60)
        unseen = unseen_paths(client, [here, away])
        assert unseen_paths(client, [here]) == {}
    assert len(unseen) == 2
    assert list(unseen.values()) == [[away], [away]]


def test_a_scheduler_without_workers_is_refused_after_the_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backtest_sweep, "CONNECT_TIMEOUT_S", 1)  # the 10 s of the command, shortened
    with LocalCluster(n_workers=0, processes=True, host="127.0.0.1", dashboard_address=":0") as empty:
        address = empty.scheduler_address
        with pytest.raises(backtest_sweep.SchedulerError) as refused:
            backtest_sweep.connect(address)
    assert str(refused.value) == (
        f"--scheduler {address}: no worker joined within 1 s (start some: dask worker {address})"
    )


def test_runs_fail_when_no_worker_is_left(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cluster's last worker is gone (here: a scheduler that never had one): Dask would wait
    for another for ever (an attack hung the CLI so); after ``no_worker_s`` the runs not done are
    failed rows and the sweep ends."""
    with (
        LocalCluster(n_workers=0, processes=True, host="127.0.0.1", dashboard_address=":0") as empty,
        Client(empty.scheduler_address, set_as_default=False) as client,
    ):
        rows = run_grid_on(client, [_task(1), _task(2)], work=misbehaving_run, no_worker_s=1)
    assert [(row.index, row.error) for row in rows] == [
        (1, "no Dask worker left to run it (none for 1 s)"),
        (2, "no Dask worker left to run it (none for 1 s)"),
    ]


class _SilentPeer:
    """A loopback socket that accepts connections and never says a word (``nc -l``)."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                self.accepted.append(self.server.accept()[0])

    def close(self) -> None:
        self.server.close()
        for conn in self.accepted:
            conn.close()


def test_a_peer_that_never_speaks_dask_is_given_up_at_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    """``Client()`` waits on such a peer past its own timeout for good (the CLI hung 900 s): the
    connection is given up at CONNECT_TIMEOUT_S + HANDSHAKE_GRACE_S (shortened here to 2 s)."""
    monkeypatch.setattr(backtest_sweep, "HANDSHAKE_GRACE_S", 2 - CONNECT_TIMEOUT_S)
    peer = _SilentPeer()
    try:
        with pytest.raises(backtest_sweep.SchedulerError) as refused:
            backtest_sweep.connect(f"tcp://127.0.0.1:{peer.port}")
    finally:
        peer.close()
    assert str(refused.value) == (
        f"--scheduler tcp://127.0.0.1:{peer.port}: something accepted the connection but did not "
        "answer as a Dask scheduler within 2 s (is it `dask scheduler`?)"
    )
    assert peer.accepted  # it was reached, then given up


def test_ctrl_c_while_reaching_the_scheduler_is_one_line_and_exit_4(tmp_path: Path) -> None:
    peer = _SilentPeer()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = ["backtest", *GRID, "--scheduler", f"tcp://127.0.0.1:{peer.port}", "--out", str(tmp_path / "d.db")]
    proc = subprocess.Popen(
        [sys.executable, "-m", "fsm.ops.cli", *args], cwd=tmp_path, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not peer.accepted and time.monotonic() < deadline:  # the CLI is connecting
            peer.thread.join(0.05)
        assert peer.accepted
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        peer.close()
    assert (proc.returncode, out, err) == (
        4,
        "",
        "backtest: --sweep interrupted while reaching the scheduler: nothing ran\n",
    )
    assert list(tmp_path.iterdir()) == []


def test_a_second_sweep_into_the_same_out_is_refused_while_the_first_runs(tmp_path: Path) -> None:
    """Two sweeps into one --out wrote each other's run-NNN.db (on Dask both reported success)."""
    with backtest_sweep.sweep_lock(backtest_sweep.folder_for(tmp_path / "d.db")):
        done = shortfsm("backtest", *GRID, "--jobs", "1", "--out", str(tmp_path / "d.db"), cwd=tmp_path)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        f"backtest: another sweep is writing {tmp_path}/d.sweep: wait for it, or use another --out\n"
    )
    assert not (tmp_path / "d.sweep").exists()


@pytest.mark.parametrize("out", [".", "..", "sub"])
def test_an_out_that_is_not_a_database_file_is_one_line_and_exit_2(tmp_path: Path, out: str) -> None:
    (tmp_path / "here" / "sub").mkdir(parents=True)
    done = shortfsm("backtest", *GRID, "--jobs", "1", "--out", out, cwd=tmp_path / "here")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == f"backtest: --out {out}: a database file is needed, e.g. var/bt.db\n"


def test_the_workers_get_the_paths_as_given_not_their_symlinks_resolved(cluster: str, tmp_path: Path) -> None:
    """A shared disk is often a symlink here (/shared -> /mnt/nfs) and a mount there: the paths
    sent are absolute but not resolved."""
    (tmp_path / "real").mkdir()
    (tmp_path / "shared").symlink_to(tmp_path / "real")
    done = shortfsm(
        "backtest", *GRID, "--scheduler", cluster, "--out", "shared/d.db", "--json", cwd=tmp_path
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["sweep"]["folder"] == f"{tmp_path}/shared/d.sweep"
    assert [row["db"] for row in doc["rows"]] == [
        f"{tmp_path}/shared/d.sweep/run-00{i}.db" for i in (3, 2, 1)
    ]
