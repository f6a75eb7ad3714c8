"""Is a daemon running on this database? The lock, the heartbeat row, systemd's notify socket.

One daemon per database: ``run`` (and ``demo``) hold an exclusive ``flock`` on ``<database>.lock``
for the life of the process; the kernel releases it when the process dies, even by kill -9. The
file holds the holder's pid and start time, for the message a second ``run`` prints.

Liveness (``shortfsm status``, ``pause``, ``resume``, ``flatten``): the daemon rewrites the
``heartbeat`` status row every second with its pid and the wall time. It is alive when that pid runs,
the row is fresh, and the lock is not free (a free lock means its holder is gone, whatever the row
says).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HEARTBEAT_KEY = "heartbeat"
STALE_AFTER_S = 10.0  # the row is rewritten every second; ten missed beats is a stopped or hung loop

# ``shortfsm status`` exit codes (README "Running it for real").
EXIT_RUNNING = 0
EXIT_STOPPED = 1
EXIT_NO_DATABASE = 3
EXIT_HUNG = 4


class DaemonRunning(RuntimeError):
    """Another process holds the database's lock; ``pid`` is the holder's when known."""

    def __init__(self, database: Path, pid: int | None) -> None:
        who = f"pid {pid}" if pid else "another process"
        super().__init__(f"another shortfsm daemon ({who}) is running on {database}; stop it first")
        self.pid = pid


def lock_path(database: str | Path) -> Path:
    """The lock file beside the database's real path: a symlink or a relative path to the same
    file must meet the same lock (two daemons on one database through a link)."""
    return Path(f"{Path(database).resolve()}.lock")


def _holder_pid(path: Path) -> int | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8") or "{}")
        return int(data["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


class DatabaseLock:
    """The exclusive lock of one database, held until ``release`` (or the process ends)."""

    def __init__(self, database: str | Path, fd: int, db_fd: int | None = None) -> None:
        self.database = Path(database)
        self.path = lock_path(database)
        self._fd: int | None = fd
        self._db_fd = db_fd

    @classmethod
    def acquire(cls, database: str | Path, *, attempts: int = 5) -> DatabaseLock:
        """Take the lock or raise ``DaemonRunning`` naming the holder's pid. A few quick retries: a
        ``status`` probing the lock holds it shared for microseconds."""
        path = lock_path(database)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:  # named after the database the operator wrote, not our lock file
            raise OSError(exc.errno, exc.strerror, str(database)) from None
        for attempt in range(attempts):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt == attempts - 1:
                    os.close(fd)
                    raise DaemonRunning(Path(database), _holder_pid(path)) from None
                time.sleep(0.05)
        lock = cls(database, fd)
        try:
            lock.hold_database_file()
        except DaemonRunning:
            os.close(fd)
            raise
        record = json.dumps({"pid": os.getpid(), "started_ms": int(time.time() * 1000)})
        os.ftruncate(fd, 0)
        os.pwrite(fd, record.encode(), 0)
        return lock

    def hold_database_file(self) -> None:
        """Lock the database file itself as well, once it exists (call again after creating it):
        another path to the same file (a hard link) meets this lock where the lock file beside it
        cannot. flock and SQLite's fcntl locks are independent on Linux: SQLite is not disturbed."""
        if self._db_fd is not None or not self.database.exists():
            return
        try:
            db_fd = os.open(self.database, os.O_RDWR)
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, str(self.database)) from None
        try:
            fcntl.flock(db_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(db_fd)
            beat = read_heartbeat(self.database) or {}
            pid = beat.get("pid")
            raise DaemonRunning(self.database, pid if isinstance(pid, int) else None) from None
        self._db_fd = db_fd

    def release(self) -> None:
        if self._db_fd is not None:
            os.close(self._db_fd)
            self._db_fd = None
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None


def lock_held(database: str | Path) -> bool | None:
    """True: some process holds the lock; False: the lock file exists and is free; None: no lock
    file (no daemon of this version ever ran on it). Opens the file read-only, never creates it."""
    path = lock_path(database)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also drops the shared lock at once
    return False


def pid_running(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    # A zombie (killed, not yet reaped by its parent) is not running.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def read_heartbeat(database: str | Path, *, timeout_s: float = 1.0) -> dict[str, Any] | None:
    """The daemon's ``heartbeat`` row, read-only (None when absent or unreadable)."""
    path = Path(database)
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=timeout_s)
    except sqlite3.Error:
        return None
    try:
        row = conn.execute("SELECT value FROM status WHERE key = ?", [HEARTBEAT_KEY]).fetchone()
        value = json.loads(row[0]) if row else None
    except (sqlite3.Error, ValueError, TypeError):
        return None
    finally:
        conn.close()
    return value if isinstance(value, dict) else None


@dataclass(frozen=True, slots=True)
class Liveness:
    """``state``: running, stopped, hung or no-database; ``reason``: the details, one line."""

    state: str
    database: Path
    reason: str
    pid: int | None = None
    heartbeat: dict[str, Any] | None = None

    @property
    def alive(self) -> bool:
        return self.state == "running"

    @property
    def text(self) -> str:
        if self.alive:
            return f"daemon running on {self.database}: {self.reason}"
        return f"no daemon is running on {self.database}: {self.reason}"

    @property
    def exit_code(self) -> int:
        return {
            "running": EXIT_RUNNING,
            "stopped": EXIT_STOPPED,
            "hung": EXIT_HUNG,
            "no-database": EXIT_NO_DATABASE,
        }[self.state]


def utc(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ms / 1000))


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def liveness(database: str | Path, *, now_ms: int | None = None, stale_s: float = STALE_AFTER_S) -> Liveness:
    """Whether a daemon is running on ``database`` (see the module docstring); never raises."""
    db = Path(database)
    if not db.is_file():
        return Liveness("no-database", db, f"there is no database at {db}")
    now = int(time.time() * 1000) if now_ms is None else now_ms
    beat = read_heartbeat(db)
    held = lock_held(db)
    if beat is None:
        if held:
            return Liveness("running", db, "starting (no heartbeat yet)")
        return Liveness("stopped", db, "it has never written a heartbeat")
    pid, wall, started = _int(beat.get("pid")), _int(beat.get("wall_ms")), _int(beat.get("started_ms"))
    if wall is None:
        return Liveness("stopped", db, "its heartbeat has no time (written by an older shortfsm)", pid, beat)
    if pid is None or not pid_running(pid) or held is False:
        return Liveness("stopped", db, f"stopped since {utc(wall)} (last heartbeat of pid {pid})", pid, beat)
    age_s = max(0.0, (now - wall) / 1000)
    if age_s > stale_s:
        return Liveness(
            "hung",
            db,
            f"pid {pid} is alive but its last heartbeat is {age_s:.0f} s old ({utc(wall)}): hung since then",
            pid,
            beat,
        )
    since = f", started {utc(started)}" if started else ""
    return Liveness("running", db, f"pid {pid}{since}, last heartbeat {age_s:.1f} s ago", pid, beat)


# ---------------------------------------------------------------------------------------------
# systemd notify protocol (Type=notify, WatchdogSec): one datagram per message, no dependency
# ---------------------------------------------------------------------------------------------


def sd_notify(message: str, *, environ: dict[str, str] | None = None) -> bool:
    """Send ``message`` (``READY=1``, ``WATCHDOG=1``, ``STOPPING=1``) to ``$NOTIFY_SOCKET``; False
    when there is none (not under systemd) or it cannot be reached."""
    address = (environ if environ is not None else os.environ).get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # an abstract socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message.encode(), address)
    except OSError:
        return False
    return True


def watchdog_interval_s(environ: dict[str, str] | None = None) -> float | None:
    """Half of systemd's ``WATCHDOG_USEC`` (its advice), when the watchdog is meant for us."""
    env = environ if environ is not None else os.environ
    usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) <= 0:
        return None
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    return int(usec) / 1_000_000 / 2
