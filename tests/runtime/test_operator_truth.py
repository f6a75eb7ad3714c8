"""Issue #13, operator truth: one daemon per database, a status a monitor can trust, control commands
that act or fail, a demo that never touches a live daemon's database.

Every test drives the real ``shortfsm`` CLI in subprocesses (files, environment, exit codes,
signals); the daemons run the sim profile, whose simulated venue lives inside the daemon on loopback.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fsm.runtime.liveness import liveness
from fsm.runtime.store import Store

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "fsm.ops.cli"]
START_S = 40.0  # a daemon's start on a busy 2-core machine
UTC_RE = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_SOCKET", "WATCHDOG_"))}
    env.update({"COLUMNS": "100", "PYTHONUNBUFFERED": "1", **extra})
    return env


def _config(tmp: Path) -> Path:
    (tmp / "feed.jsonl").write_text("", encoding="utf-8")
    path = tmp / "config.yaml"
    path.write_text(
        "storage:\n"
        f"  database: {tmp / 'db.sqlite'}\n"
        f"  log_dir: {tmp / 'log'}\n"
        f"  heartbeat_path: {tmp / 'hb.json'}\n"
        "telegram:\n"
        f"  feed_path: {tmp / 'feed.jsonl'}\n",
        encoding="utf-8",
    )
    path.chmod(0o600)
    return path


def shortfsm(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        cwd=REPO,
        env=env or _env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class Daemon:
    """``shortfsm run`` in a subprocess."""

    def __init__(self, config: Path, env: dict[str, str] | None = None) -> None:
        self.db = config.parent / "db.sqlite"
        self.proc = subprocess.Popen(
            [*CLI, "run", "--config", str(config)],
            cwd=REPO,
            env=env or _env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.pid = self.proc.pid

    def wait_alive(self) -> None:
        deadline = time.monotonic() + START_S
        while not (liveness(self.db).alive and liveness(self.db).pid == self.pid):
            assert self.proc.poll() is None, self.proc.stderr.read() if self.proc.stderr else ""
            assert time.monotonic() < deadline, "the daemon did not start"
            time.sleep(0.1)

    def stop(self) -> int:
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
        return self.proc.wait(30)

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        self.proc.wait(30)


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for daemon in started:
        if daemon.proc.poll() is None:
            os.kill(daemon.pid, signal.SIGCONT)
            daemon.proc.kill()
            daemon.proc.wait(30)
        if daemon.proc.stderr:
            daemon.proc.stderr.close()


def _start(daemons: list[Daemon], config: Path, env: dict[str, str] | None = None) -> Daemon:
    daemon = Daemon(config, env)
    daemons.append(daemon)
    daemon.wait_alive()
    return daemon


def _status_rows(db: Path, like: str) -> dict[str, Any]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT key, value FROM status WHERE key LIKE ?", [like]).fetchall()
    return {key: json.loads(value) if value.startswith("{") else value for key, value in rows}


def _board(db: Path) -> dict[str, Any]:
    board: dict[str, Any] = _status_rows(db, "board")["board"]
    return board


def _until(cond: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


# ---------------------------------------------------------------------------------------------
# 4. one daemon per database
# ---------------------------------------------------------------------------------------------


def test_a_second_run_on_the_same_database_exits_naming_the_holder(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    config = _config(tmp_path)
    first = _start(daemons, config)
    second = shortfsm("run", "--config", str(config), timeout=30)
    assert second.returncode == 2
    assert second.stderr.splitlines()[-1] == (
        f"shortfsm: another shortfsm daemon (pid {first.pid}) is running on {tmp_path / 'db.sqlite'}; "
        "stop it first"
    )
    assert liveness(first.db).pid == first.pid and first.proc.poll() is None
    assert first.stop() == 0
    assert first.proc.stderr is not None and "UNIQUE constraint" not in first.proc.stderr.read()
    # The lock went with its holder: the next run starts.
    again = _start(daemons, config)
    assert again.stop() == 0


# ---------------------------------------------------------------------------------------------
# 5. liveness: status exit codes, kill -9, a hung loop, systemd's notify socket
# ---------------------------------------------------------------------------------------------


def test_status_exit_codes_follow_the_daemon(tmp_path: Path, daemons: list[Daemon]) -> None:
    config = _config(tmp_path)
    db = tmp_path / "db.sqlite"
    absent = shortfsm("status", "--db", str(db))
    assert absent.returncode == 3
    assert absent.stdout.splitlines()[-1] == f"no daemon is running on {db}: there is no database at {db}"
    assert not db.exists()

    daemon = _start(daemons, config)
    running = shortfsm("status", "--db", str(db))
    assert running.returncode == 0, running.stdout
    assert re.fullmatch(
        rf"daemon running on {db}: pid {daemon.pid}, started {UTC_RE}, last heartbeat \d+\.\d s ago",
        running.stdout.splitlines()[-1],
    )
    beat = json.loads((tmp_path / "hb.json").read_text(encoding="utf-8"))
    assert (beat["pid"], beat["profile"], beat["database_path"]) == (daemon.pid, "sim", str(db))
    assert set(beat["urls"]) == {"rest", "market_ws", "private_ws"}
    assert beat["urls"]["rest"].startswith("http://127.0.0.1:")
    assert beat["streams"] == {"market": "up", "user": "up", "telegram": "replay"}

    os.kill(daemon.pid, signal.SIGSTOP)  # the process runs, its loop does not
    hung: list[subprocess.CompletedProcess[str]] = []
    _until(
        lambda: hung.append(shortfsm("status", "--db", str(db), "--stale", "1")) or hung[-1].returncode == 4
    )
    assert re.fullmatch(
        rf"no daemon is running on {db}: pid {daemon.pid} is alive but its last heartbeat is \d+ s old "
        rf"\(({UTC_RE})\): hung since then",
        hung[-1].stdout.splitlines()[-1],
    )
    daemon.kill()
    stopped = shortfsm("status", "--db", str(db))
    assert stopped.returncode == 1
    last = stopped.stdout.splitlines()[-1]
    assert re.fullmatch(
        rf"no daemon is running on {db}: stopped since {UTC_RE} \(last heartbeat of pid {daemon.pid}\)", last
    )
    assert "STOPPED" in stopped.stdout and "running" not in stopped.stdout.split("no daemon is running")[0]


def test_the_daemon_speaks_systemds_notify_protocol(daemons: list[Daemon]) -> None:
    with tempfile.TemporaryDirectory(prefix="sfn") as short:  # unix socket paths are short
        tmp = Path(short)
        config = _config(tmp)
        address = str(tmp / "notify")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(address)
            sock.settimeout(START_S)
            daemon = Daemon(config, _env(NOTIFY_SOCKET=address, WATCHDOG_USEC="2000000"))
            daemons.append(daemon)
            ready = sock.recv(4096).decode()
            assert ready.splitlines() == [
                "READY=1",
                f"STATUS=running on {tmp / 'db.sqlite'}",
                f"MAINPID={daemon.pid}",
            ]
            assert liveness(daemon.db).alive
            pings = [sock.recv(4096).decode() for _ in range(2)]
            assert pings == ["WATCHDOG=1", "WATCHDOG=1"]
            assert daemon.stop() == 0
            messages = []
            sock.settimeout(1)
            while True:
                try:
                    messages.append(sock.recv(4096).decode())
                except TimeoutError:
                    break
            assert messages[-1] == "STOPPING=1"
            assert set(messages[:-1]) <= {"WATCHDOG=1"}


# ---------------------------------------------------------------------------------------------
# 3. control commands that act or fail
# ---------------------------------------------------------------------------------------------


def _acknowledged(
    result: subprocess.CompletedProcess[str], command: str, pid: int, db: Path, lines: list[str]
) -> str:
    out = result.stdout.splitlines()
    assert result.returncode == 0, (result.stdout, result.stderr)
    sent = re.fullmatch(
        rf"{command} ({command}-\d+-[0-9a-f]{{6}}) sent to daemon pid {pid} on {db}", out[-2 - len(lines)]
    )
    assert sent is not None, out
    assert out[-1 - len(lines) : -1] == lines
    assert re.fullmatch(rf"{command} {sent[1]} applied at {UTC_RE}", out[-1])
    return sent[1]


def test_pause_resume_and_flatten_are_acknowledged_by_the_running_daemon(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    config = _config(tmp_path)
    db = tmp_path / "db.sqlite"
    daemon = _start(daemons, config)
    rid = _acknowledged(
        shortfsm("pause", "--config", str(config)), "pause", daemon.pid, db, ["  paused: no new entries"]
    )
    _until(lambda: _board(db)["paused"] is True)
    control = _status_rows(db, "control")["control"]
    assert (control["paused"], control["by"], control["id"]) == (True, "pause", rid)
    _acknowledged(
        shortfsm("resume", "--config", str(config)),
        "resume",
        daemon.pid,
        db,
        ["  resumed: new entries allowed"],
    )
    _until(lambda: _board(db)["paused"] is False)

    flatten = shortfsm("flatten", "--yes", "--config", str(config))
    rest = json.loads((tmp_path / "hb.json").read_text(encoding="utf-8"))["urls"]["rest"]
    assert flatten.stdout.splitlines()[:3] == [
        f"daemon pid {daemon.pid} on {db} (sim, {rest}) will cancel every open order and close",
        "every position on the account at market, then keep entries paused. It holds:",
        "  no order or position of its own (anything else on the account is flattened too)",
    ]
    rid = _acknowledged(flatten, "flatten", daemon.pid, db, ["  nothing to cancel or close"])
    control = _status_rows(db, "control")["control"]
    assert (control["paused"], control["by"], control["id"]) == (True, "flatten", rid)
    _until(lambda: _board(db)["paused"] is True)
    assert _status_rows(db, "control.request.%") == {}
    assert daemon.stop() == 0
    # The next start stays paused and says why: never an unexplained pause.
    again = _start(daemons, config)
    _until(lambda: _board(db)["paused"] is True)
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        texts = [t for (t,) in conn.execute("SELECT text FROM alerts WHERE kind = 'control'")]
    assert len(texts) == 1
    assert re.fullmatch(
        rf"entries stay paused: operator `flatten` {rid} at {UTC_RE} \(`shortfsm resume` allows entries\)",
        texts[0],
    )
    assert again.stop() == 0


def test_control_commands_with_no_daemon_fail_and_create_nothing(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    config = _config(tmp_path)
    db = tmp_path / "db.sqlite"
    missing = f"shortfsm: no daemon is running on {db}: there is no database at {db}\n"
    for command in ("pause", "resume"):
        result = shortfsm(command, "--config", str(config))
        assert (result.returncode, result.stdout, result.stderr) == (3, "", missing)
    flatten = shortfsm("flatten", "--yes", "--config", str(config))
    assert (flatten.returncode, flatten.stdout) == (3, "")
    assert flatten.stderr == missing + (
        "shortfsm: `shortfsm flatten --direct` cancels and closes on the sim venue from here\n"
    )
    direct = shortfsm("flatten", "--yes", "--direct", "--config", str(config))
    assert (direct.returncode, direct.stderr) == (
        2,
        "shortfsm: the sim profile's venue lives inside the daemon: with no daemon running there is "
        "nothing to flatten\n",
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "feed.jsonl"]

    # A daemon that ran and stopped: the commands say since when, and write nothing.
    daemon = _start(daemons, config)
    assert daemon.stop() == 0
    for command in ("pause", "resume", "flatten"):
        result = (
            shortfsm(command, "--yes", "--config", str(config))
            if command == "flatten"
            else shortfsm(command, "--config", str(config))
        )
        assert result.returncode == 3
        assert re.fullmatch(
            rf"shortfsm: no daemon is running on {db}: stopped since {UTC_RE} \(last heartbeat of pid "
            rf"{daemon.pid}\)",
            result.stderr.splitlines()[0],
        )
    assert _status_rows(db, "control%") == {}


def test_a_request_the_daemon_never_acknowledged_is_never_applied_later(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    config = _config(tmp_path)
    db = tmp_path / "db.sqlite"
    daemon = _start(daemons, config)
    os.kill(daemon.pid, signal.SIGSTOP)  # alive and fresh, but it will never read the request
    result = shortfsm("pause", "--wait", "1", "--config", str(config))
    assert result.returncode == 1
    sent = re.fullmatch(
        rf"pause (pause-\d+-[0-9a-f]{{6}}) sent to daemon pid {daemon.pid} on {db}", result.stdout.strip()
    )
    assert sent is not None
    rid = sent[1]
    assert result.stderr == (
        f"shortfsm: pause {rid} not acknowledged within 1 s by daemon pid {daemon.pid}: check "
        "`shortfsm status` (the daemon may still apply it)\n"
    )
    daemon.kill()
    again = _start(daemons, config)
    _until(lambda: f"control.ack.{rid}" in _status_rows(db, "control.ack.%"))
    ack = _status_rows(db, "control.ack.%")[f"control.ack.{rid}"]
    assert (ack["result"], ack["lines"]) == (
        "discarded",
        [f"operator pause {rid} written while no daemon ran on this database: discarded, nothing done"],
    )
    assert _status_rows(db, "control") == {}
    assert _board(db)["paused"] is False
    assert again.stop() == 0
    assert _board(db)["paused"] is False


# ---------------------------------------------------------------------------------------------
# 7. the demo never deletes a live daemon's database and keeps its own log
# ---------------------------------------------------------------------------------------------


async def _demo_database(path: Path) -> None:
    store = await Store.open(path)
    await store.set_status("meta.demo", "1", 0)
    await store.close()


def test_run_adopts_a_demo_database_and_the_demo_never_touches_it_again(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    import asyncio

    config = _config(tmp_path)
    db = tmp_path / "db.sqlite"
    asyncio.run(_demo_database(db))  # first made by `make run`
    daemon = _start(daemons, config)
    assert _status_rows(db, "meta.demo") == {}  # adopted at start
    live = shortfsm("demo", "--speed", "40", "--no-board", "--config", str(config), timeout=60)
    assert live.returncode == 2
    assert live.stderr == (
        f"shortfsm demo: a daemon is running on {db}: the demo never touches it; pass --db to choose "
        "another file\n"
    )
    assert liveness(db).pid == daemon.pid
    assert daemon.stop() == 0
    stopped = shortfsm("demo", "--speed", "40", "--no-board", "--config", str(config), timeout=60)
    assert stopped.returncode == 2
    assert stopped.stderr == (
        f"shortfsm demo: {db} exists and is not a demo database: pass --db to choose another file\n"
    )
    assert _board(db)["profile"] == "sim"  # still the daemon's database


def test_the_demo_writes_its_own_log_and_heartbeat(tmp_path: Path) -> None:
    config = _config(tmp_path)
    demo_db = tmp_path / "demo.db"
    result = shortfsm(
        "demo", "--speed", "40", "--no-board", "--db", str(demo_db), "--config", str(config), timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "log").exists() and not (tmp_path / "hb.json").exists()
    lines = (tmp_path / "demo.db-log" / "shortfsm.jsonl").read_text(encoding="utf-8").splitlines()
    assert lines and all(json.loads(line) for line in lines)
    assert json.loads((tmp_path / "demo.db-heartbeat.json").read_text(encoding="utf-8"))["profile"] == "sim"
    assert _status_rows(demo_db, "meta.demo") == {"meta.demo": "1"}


# ---------------------------------------------------------------------------------------------
# 15. the README says what protects a PHASE1 position when the daemon is gone
# ---------------------------------------------------------------------------------------------


def test_the_readme_does_not_promise_protection_and_uses_the_watchdog() -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## Running it for real", 1)[1].split("\n## ", 1)[0]
    assert "leaves exchange orders in place" not in section
    assert "no exchange-side stop" in section
    for line in ("Type=notify", "NotifyAccess=main", "WatchdogSec=30"):
        assert line in section.splitlines()


# ---------------------------------------------------------------------------------------------
# 8. another process holding the database's write lock never stalls a decision
# ---------------------------------------------------------------------------------------------

HOLD_LOCK = (
    "import sqlite3, sys\n"
    "conn = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
    "conn.execute('BEGIN IMMEDIATE')\n"
    "print('locked', flush=True)\n"
    "sys.stdin.read()\n"
    "conn.execute('ROLLBACK')\n"
)


def test_a_locked_database_never_holds_up_the_loss_cut(tmp_path: Path) -> None:
    """PHASE1 on ETHUSDT (entry 1.414 @ 3535.00, mark 3545.00: a loss); another process takes the
    database's write lock; the risk message arrives: the market close goes out at once, the alert
    names the lock, and every write refused meanwhile (the cursor, the fills) lands once it is gone."""
    import asyncio

    import runtime_kit as kit

    from fsm import events as ev

    feed = kit.write_feed(
        tmp_path,
        [
            (1000, kit.ENTRY_CHAT, 1001, kit.LEADING.format(ticker="ETH")),
            (40_000, kit.RISK_CHAT, 5001, kit.RISK.format(symbol="ETHUSDT")),
        ],
    )
    path = kit.PricePath(
        base={"ETHUSDT": __import__("decimal").Decimal("3500.00")},
        points=kit.points([(3, "ETHUSDT", "3532.00"), (5, "ETHUSDT", "3536.00"), (8, "ETHUSDT", "3545.00")]),
    )
    db = tmp_path / "db.sqlite"
    seen_at: dict[str, float] = {}

    async def scenario() -> None:
        async with kit.Venue(path) as venue:
            run = await venue.start_daemon(tmp_path, feed)
            await kit.wait_until(lambda: run.seen.has("ETHUSDT ENTRY_ORDER->PHASE1"))
            holder = await asyncio.create_subprocess_exec(
                sys.executable, "-c", HOLD_LOCK, str(db), stdin=subprocess.PIPE, stdout=subprocess.PIPE
            )
            assert holder.stdout is not None and holder.stdin is not None
            assert await holder.stdout.readline() == b"locked\n"
            assert not venue.at(40)  # the lock is held before the risk message arrives

            def risk_handled() -> bool:
                for event, _ in run.seen.items:
                    if isinstance(event, ev.MessageReceived) and event.message_id == 5001:
                        seen_at.setdefault("risk", time.monotonic())
                    if isinstance(event, ev.OrderAccepted) and event.client_order_id == "sf1001-CL1-ETHUSDT":
                        seen_at.setdefault("close", time.monotonic())
                return "close" in seen_at

            await kit.wait_until(risk_handled, timeout=15)
            alerts = [(a.severity, a.text) for a in run.daemon.alerts.recent if a.kind == "database"]
            assert alerts == [
                (
                    "critical",
                    f"database {db} is locked by another process (database is locked): decisions continue "
                    "from memory, writes are queued and retried; find the process holding it (fuser)",
                )
            ]
            assert run.store.queued > 0
            holder.stdin.close()
            assert await holder.wait() == 0
            await kit.wait_until(lambda: run.store.queued == 0 and run.daemon.db_health.ok, timeout=10)
            await kit.wait_until(lambda: run.seen.has("ETHUSDT EXITING->IDLE"))
            assert await run.stop() == 0
            assert venue.exchange.positions[("ETHUSDT", "BOTH")].amount == 0

    kit.run(scenario(), timeout=40)
    # The close went out within a second of the message (it used to wait 5 s per refused write).
    assert seen_at["close"] - seen_at["risk"] < 1.0
    assert kit.rows(tmp_path, "SELECT chat_id, message_id FROM cursors ORDER BY chat_id") == [
        (kit.RISK_CHAT, 5001),
        (kit.ENTRY_CHAT, 1001),
    ]
    assert kit.rows(tmp_path, "SELECT client_order_id FROM fills ORDER BY now_ms") == [
        ("sf1001-E11-ETHUSDT",),
        ("sf1001-CL1-ETHUSDT",),
    ]
    texts = [t for (t,) in kit.rows(tmp_path, "SELECT text FROM alerts WHERE kind = 'database' ORDER BY id")]
    assert len(texts) == 2 and texts[0].startswith(f"database {db} is locked by another process")
    assert re.fullmatch(
        r"database writes work again after \d+ s; \d+ queued writes were written, \d+ writes were lost; "
        r"cursors, cooldowns and the engine snapshot are written again",
        texts[1],
    )


# ---------------------------------------------------------------------------------------------
# 12. unknown values show as unknown
# ---------------------------------------------------------------------------------------------


def test_a_balance_the_venue_never_told_shows_as_unknown() -> None:
    from rich.console import Console

    from fsm.engine import Engine
    from fsm.ops.board import render_board
    from fsm.runtime.config import AppConfig
    from fsm.runtime.view import board_view

    engine = Engine(AppConfig().to_strategy(), recovering=True)  # recovery could not read the venue
    view = board_view(engine, 1_767_225_600_000, {"profile": "demo"})
    assert view["balance"] == {"wallet": None, "available": None}
    console = Console(width=100, record=True, color_system=None)
    console.print(render_board(view, [], []))
    assert "unknown wallet · unknown available USDT" in console.export_text()


def test_flatten_waits_longer_for_its_acknowledgement_than_pause() -> None:
    """A flatten may wait up to 12 s for a busy engine before it cancels, closes and reads each
    close back: its command waits 30 s by default, pause and resume 10 s."""
    flatten = shortfsm("flatten", "--help")
    pause = shortfsm("pause", "--help")
    assert flatten.returncode == 0 and pause.returncode == 0
    assert "(default 30)" in " ".join(flatten.stdout.split())
    assert "(default 10)" in " ".join(pause.stdout.split())
