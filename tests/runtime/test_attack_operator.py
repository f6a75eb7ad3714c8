"""Attack: a careless operator, through the real ``shortfsm`` CLI in subprocesses (files,
environment, exit codes, signals)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import runtime_kit as kit

from fsm.runtime.liveness import liveness

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "fsm.ops.cli"]
START_S = 40.0


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_SOCKET", "WATCHDOG_"))}
    env.update({"COLUMNS": "100", "PYTHONUNBUFFERED": "1"})
    return env


def _config(folder: Path, database: Path) -> Path:
    """A sim-profile config (the venue inside the daemon) in ``folder`` using ``database``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "feed.jsonl").write_text("", encoding="utf-8")
    path = folder / "config.yaml"
    path.write_text(
        "storage:\n"
        f"  database: {database}\n"
        f"  log_dir: {folder / 'log'}\n"
        f"  heartbeat_path: {folder / 'hb.json'}\n"
        "telegram:\n"
        f"  feed_path: {folder / 'feed.jsonl'}\n",
        encoding="utf-8",
    )
    path.chmod(0o600)
    return path


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


def _run(procs: list[subprocess.Popen[str]], config: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [*CLI, "run", "--config", str(config)],
        cwd=ROOT,
        env=_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    procs.append(proc)
    return proc


def _alive(db: Path, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + START_S
    while not (liveness(db).alive and liveness(db).pid == proc.pid):
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline, "the daemon did not start"
        time.sleep(0.1)


def test_a_second_run_reaching_the_database_through_a_symlink_is_refused(
    tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    """Issue #13 item 4: one daemon per database. The operator keeps a second config whose
    database is a symlink to the live one (``/srv/shortfsm/db.sqlite -> /data/...``)."""
    real = tmp_path / "data" / "db.sqlite"
    first = _run(procs, _config(tmp_path / "data", real))
    _alive(real, first)
    (tmp_path / "srv").mkdir()
    link = tmp_path / "srv" / "db.sqlite"
    link.symlink_to(real)
    second = _run(procs, _config(tmp_path / "srv", link))
    try:
        code = second.wait(15)
    except subprocess.TimeoutExpired:
        second.send_signal(signal.SIGTERM)
        second.wait(30)
        code = None
    assert second.stderr is not None
    last = second.stderr.read().splitlines()[-1]
    assert code == 2, "the second daemon ran on the live database"
    assert last.startswith(f"shortfsm: another shortfsm daemon (pid {first.pid}) is running on ")
    assert last.endswith("; stop it first")
    assert first.poll() is None


def test_a_second_run_on_a_hard_link_of_the_database_is_refused(
    tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    """Issue #13 item 4 / D-36. ``ln data/db.sqlite copy/db.sqlite`` (or a ``cp -l`` backup tree)
    names the same file under another path; SQLite then keeps two WAL files for one database."""
    real = tmp_path / "data" / "db.sqlite"
    first = _run(procs, _config(tmp_path / "data", real))
    _alive(real, first)
    (tmp_path / "copy").mkdir()
    link = tmp_path / "copy" / "db.sqlite"
    os.link(real, link)
    second = _run(procs, _config(tmp_path / "copy", link))
    try:
        code = second.wait(15)
    except subprocess.TimeoutExpired:
        second.send_signal(signal.SIGTERM)
        second.wait(30)
        code = None
    assert code == 2, "the second daemon ran on the live database"
    assert first.poll() is None


BAD_PATHS: dict[str, tuple[str, Callable[[Path], Path]]] = {
    # storage.log_dir names an existing file
    "log-dir-is-a-file": ("log_dir", lambda tmp: _touch(tmp / "logs")),
    # storage.database where nothing can be created
    "database-unwritable": ("database", lambda tmp: Path("/proc/shortfsm-attack/db.sqlite")),
    # telegram.feed_path mistyped
    "feed-missing": ("feed_path", lambda tmp: tmp / "feed-typo.jsonl"),
    # telegram.feed_path names a folder
    "feed-is-a-folder": ("feed_path", lambda tmp: _folder(tmp / "feeds")),
}


def _touch(path: Path) -> Path:
    path.write_text("", encoding="utf-8")
    return path


def _folder(path: Path) -> Path:
    path.mkdir()
    return path


@pytest.mark.parametrize("case", sorted(BAD_PATHS))
def test_run_with_a_bad_path_in_the_config_is_one_line_not_a_traceback(tmp_path: Path, case: str) -> None:
    """Issue #13 item 11: no traceback reaches a user for an expected failure (a missing file, a
    bad value): one ``shortfsm:`` line naming the path, exit 2, as for the other configuration errors."""
    key, make = BAD_PATHS[case]
    bad = make(tmp_path)
    values = {
        "database": tmp_path / "db.sqlite",
        "log_dir": tmp_path / "log",
        "heartbeat_path": tmp_path / "hb.json",
        "feed_path": _touch(tmp_path / "feed.jsonl"),
    }
    values[key] = bad
    config = tmp_path / "config.yaml"
    config.write_text(
        "storage:\n"
        f"  database: {values['database']}\n"
        f"  log_dir: {values['log_dir']}\n"
        f"  heartbeat_path: {values['heartbeat_path']}\n"
        "telegram:\n"
        f"  feed_path: {values['feed_path']}\n",
        encoding="utf-8",
    )
    config.chmod(0o600)
    result = subprocess.run(
        [*CLI, "run", "--config", str(config)],
        cwd=ROOT,
        env=_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=40,
    )
    assert "Traceback" not in result.stderr
    assert result.returncode == 2
    last = result.stderr.splitlines()[-1]
    assert last.startswith("shortfsm") and str(bad) in last


def test_pause_stops_a_monitored_signal_and_resume_never_enters_on_it(tmp_path: Path) -> None:
    """Issue #13 item 13: monitoring stops at ``pause``; after ``resume`` entries come only from new
    signals. ETHUSDT is monitored when the operator pauses; its trigger is reached while paused and
    is still there after ``resume``: no entry, ever."""
    import asyncio
    from decimal import Decimal

    feed = kit.write_feed(tmp_path, [(1000, kit.ENTRY_CHAT, 1001, kit.LEADING.format(ticker="ETH"))])
    config = kit.write_config(tmp_path)
    path = kit.PricePath(
        base={"ETHUSDT": Decimal("3500.00")},
        # The trigger comes 40 venue seconds (10 s of wall time) in: the pause is acknowledged well before.
        points=kit.points([(40, "ETHUSDT", "3532.00"), (42, "ETHUSDT", "3536.00")]),
    )

    def cli(command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CLI, command, "--config", str(config)],
            cwd=ROOT,
            env=_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
        )

    async def scenario() -> None:
        async with kit.Venue(path, speed=4.0) as venue:
            run = await venue.start_daemon(tmp_path, feed)
            await kit.wait_until(lambda: run.daemon.engine.state_of("ETHUSDT") == "MONITORING", timeout=10)
            paused = await asyncio.to_thread(cli, "pause")
            assert paused.returncode == 0, paused.stderr
            assert not venue.at(40), "the pause came after the trigger: the test proves nothing"
            await kit.wait_until(lambda: venue.at(44), timeout=20)
            resumed = await asyncio.to_thread(cli, "resume")
            assert resumed.returncode == 0, resumed.stderr
            resumed_at = venue.clock.now_ms()
            await kit.wait_until(lambda: venue.clock.now_ms() > resumed_at + 4000, timeout=10)
            assert await run.stop() == 0
            assert kit.venue_orders(venue.exchange) == []
            assert run.daemon.engine.state_of("ETHUSDT") == "IDLE"

    kit.run(scenario(), timeout=60)
