"""The daemon's SQLite storage (sqlite-utils, WAL, one file; schema in ``notes/RUNTIME.md``).

Theory of operation: one ``sqlite3`` connection opened with ``check_same_thread=False`` and used
only from ONE dedicated worker thread (a single-worker ``ThreadPoolExecutor``). Every public
method is a coroutine that submits its work to that thread, so writes are serialised in
submission order and the event loop never blocks on the disk. ``submit`` returns the future
without awaiting it (fire-and-forget for the journal and the audit rows); ``await`` one when the
order matters, as for the channel cursor, which N-05 requires to be on disk before the message's
effects are carried out. Values are encoded on the worker thread (events are frozen).

The schema is versioned: ``MIGRATIONS`` is applied in order at open and ``meta.schema_version``
records how far. Decimals are stored as text; secrets are never stored.

Journal and snapshots (specs/DECISIONS.md D-18): the store numbers journal rows itself
(``journal_seq``, set when ``journal`` is called, so the caller knows the seq of the event in hand),
and every snapshot row records ``journal_seq``: the last journal row whose commands the daemon had
carried out when the snapshot was taken (``covered_seq``; by default everything journaled so far).
Recovery re-runs the risk messages journaled after it (``risk_messages_after``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

from sqlite_utils import Database

from fsm import commands as cmd
from fsm import events as ev
from fsm.journal import ENGINE_ROW, EXACT_MARK, decode_event, encode_event, encode_snapshot

log = logging.getLogger(__name__)
T = TypeVar("T")
SNAPSHOTS_KEPT = 20
LOCK_WAIT_MS = 250  # the longest one statement waits for another process's write lock
RETRY_LIMIT = 100_000  # writes kept for retry while the database is locked; older ones are dropped


def problem_kind(exc: BaseException) -> str:
    """Why a statement failed: ``locked`` (another process holds the write lock), ``full`` (no space
    left) or ``io`` (anything else: I/O error, read-only file, corruption)."""
    text = str(exc).lower()
    if "locked" in text or "busy" in text:
        return "locked"
    if "full" in text:
        return "full"
    return "io"


class StoreError(RuntimeError):
    """The database cannot be used (corrupt, not ours, newer schema); the message says what to do."""


def to_jsonable(value: Any) -> Any:
    """Dataclasses, Decimals and tuples as plain JSON values (Decimal as text)."""
    if isinstance(value, Decimal):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {"type": type(value).__name__}
        for f in dataclasses.fields(value):
            out[f.name] = to_jsonable(getattr(value, f.name))
        return out
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    return value


def dumps(value: Any) -> str:
    return json.dumps(to_jsonable(value), ensure_ascii=False, separators=(",", ":"))


# ---------------------------------------------------------------------------------------------
# Migrations
# ---------------------------------------------------------------------------------------------


def _m1_initial(db: Database) -> None:
    db.table("messages").create(
        {
            "chat_id": int,
            "message_id": int,
            "date_ms": int,
            "received_ms": int,
            "text": str,
            "kind": str,
            "parse_json": str,
        },
        pk=("chat_id", "message_id"),
    )
    db.table("cursors").create({"chat_id": int, "message_id": int, "updated_ms": int}, pk="chat_id")
    db.table("cooldowns").create({"symbol": str, "received_at_ms": int}, pk="symbol")
    db.execute(
        "CREATE TABLE journal (seq INTEGER PRIMARY KEY AUTOINCREMENT, now_ms INTEGER, type TEXT, "
        "payload TEXT)"
    )
    db.execute(
        "CREATE TABLE transitions (id INTEGER PRIMARY KEY AUTOINCREMENT, now_ms INTEGER, machine TEXT, "
        "symbol TEXT, source TEXT, dest TEXT, trigger TEXT, reason TEXT)"
    )
    db.table("orders").create(
        {
            "client_order_id": str,
            "symbol": str,
            "leg": str,
            "side": str,
            "type": str,
            "price": str,
            "quantity": str,
            "trigger_price": str,
            "status": str,
            "order_id": int,
            "attempts": int,
            "error_code": int,
            "error": str,
            "params": str,
            "created_ms": int,
            "updated_ms": int,
        },
        pk="client_order_id",
    )
    db.table("fills").create(
        {
            "trade_key": str,
            "client_order_id": str,
            "symbol": str,
            "qty": str,
            "price": str,
            "realized_pnl": str,
            "commission": str,
            "now_ms": int,
        },
        pk="trade_key",
    )
    db.execute(
        "CREATE TABLE decisions (id INTEGER PRIMARY KEY AUTOINCREMENT, now_ms INTEGER, kind TEXT, "
        "symbol TEXT, reason TEXT, data TEXT)"
    )
    db.execute(
        "CREATE TABLE alerts (id INTEGER PRIMARY KEY AUTOINCREMENT, now_ms INTEGER, kind TEXT, "
        "severity TEXT, symbol TEXT, text TEXT, delivered INTEGER)"
    )
    db.execute("CREATE TABLE snapshots (id INTEGER PRIMARY KEY AUTOINCREMENT, now_ms INTEGER, engine TEXT)")
    db.table("status").create({"key": str, "value": str, "updated_ms": int}, pk="key")


def _m2_indexes(db: Database) -> None:
    db.execute("CREATE INDEX IF NOT EXISTS transitions_now ON transitions(now_ms)")
    db.execute("CREATE INDEX IF NOT EXISTS fills_symbol ON fills(symbol)")
    db.execute("CREATE INDEX IF NOT EXISTS orders_symbol ON orders(symbol, status)")


def _m3_snapshot_coverage(db: Database) -> None:
    db.execute("ALTER TABLE snapshots ADD COLUMN journal_seq INTEGER")
    # Snapshots written before this column existed are taken to cover the whole journal (no re-run).
    db.execute("UPDATE snapshots SET journal_seq = (SELECT COALESCE(MAX(seq), 0) FROM journal)")


def _m4_journal_out(db: Database) -> None:
    # What the engine answered to each journaled event (``fsm.journal.render_all``): replay compares.
    db.execute("ALTER TABLE journal ADD COLUMN out TEXT")


def _m5_order_status_names(db: Database) -> None:
    # The order table's names (fsm/orders.py, D-44): rows written before the rename.
    db.execute("UPDATE orders SET status = 'PENDING_NEW' WHERE status = 'PENDING'")
    db.execute("UPDATE orders SET status = 'PENDING_CANCEL' WHERE status = 'CANCELING'")


def _m6_fill_position_side(db: Database) -> None:
    # Hedge mode: a LONG leg's fill is never part of our short (the ledger keeps it apart).
    db.execute("ALTER TABLE fills ADD COLUMN position_side TEXT")


def _m7_funding(db: Database) -> None:
    # Funding paid or received (ACCOUNT_UPDATE FUNDING_FEE; a backtest's settlements): the ledger
    # adds it to the trade open on the symbol at that time. One row per (symbol, asset, time).
    db.execute(
        "CREATE TABLE funding (id INTEGER PRIMARY KEY AUTOINCREMENT, symbol TEXT, asset TEXT, "
        "amount TEXT, venue_time_ms INTEGER, now_ms INTEGER, UNIQUE(symbol, asset, venue_time_ms))"
    )


def _m8_funding_legs(db: Database) -> None:
    # Two legs of one symbol (hedge mode) settle at the same instant: the table keeps both. Which
    # rows are one settlement told twice is decided when booking (``_book_funding``), not by a key.
    db.execute(
        "CREATE TABLE funding_new (id INTEGER PRIMARY KEY AUTOINCREMENT, symbol TEXT, asset TEXT, "
        "amount TEXT, venue_time_ms INTEGER, now_ms INTEGER)"
    )
    db.execute(
        "INSERT INTO funding_new (id, symbol, asset, amount, venue_time_ms, now_ms) "
        "SELECT id, symbol, asset, amount, venue_time_ms, now_ms FROM funding ORDER BY id"
    )
    db.execute("DROP TABLE funding")
    db.execute("ALTER TABLE funding_new RENAME TO funding")
    db.execute("CREATE INDEX funding_time ON funding (venue_time_ms)")


MIGRATIONS: tuple[Callable[[Database], None], ...] = (
    _m1_initial,
    _m2_indexes,
    _m3_snapshot_coverage,
    _m4_journal_out,
    _m5_order_status_names,
    _m6_fill_position_side,
    _m7_funding,
    _m8_funding_legs,
)
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(db: Database) -> int:
    """Apply the missing migrations; returns the schema version. Refuses a newer database."""
    if "meta" not in db.table_names():
        db.table("meta").create({"key": str, "value": str}, pk="key")
    row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    version = int(row[0]) if row else 0
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"database schema {version} is newer than this program's {SCHEMA_VERSION}: upgrade shortfsm"
        )
    for index in range(version, SCHEMA_VERSION):
        with db.conn:
            MIGRATIONS[index](db)
            db.execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)", [str(index + 1)]
            )
        log.info("database migrated to schema %d", index + 1)
    return SCHEMA_VERSION


JOURNAL_INSERT = "INSERT INTO journal(seq, now_ms, type, payload, out) VALUES (?, ?, ?, ?, ?)"


def connect(path: str | Path) -> Database:
    """Open (creating) the database file in WAL mode and migrate it. Runs on the caller's thread."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        conn = sqlite3.connect(str(target), check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute(f"PRAGMA busy_timeout={LOCK_WAIT_MS}")
        db = Database(conn)
        migrate(db)
    except sqlite3.DatabaseError as exc:
        raise StoreError(
            f"{target}: not a usable shortfsm database ({exc}); move it aside to start fresh "
            "(cursors and cooldowns in it would be lost)"
        ) from exc
    return db


# ---------------------------------------------------------------------------------------------
# The store
# ---------------------------------------------------------------------------------------------


class Store:
    """Async facade over one database file; every statement runs on the single DB thread."""

    def __init__(self, db: Database, path: str | Path, pool: ThreadPoolExecutor) -> None:
        self.db = db
        self.path = Path(path)
        self._pool = pool
        self.errors = 0
        self.closed = False
        self.journal_seq = 0  # seq of the last row ``journal`` was asked to write
        self.covered_seq: int | None = None  # what the next snapshot covers; None: the whole journal
        self.last_problem: tuple[str, str] | None = None  # (``problem_kind``, message) of the last failure
        self.dropped = 0  # queued writes given up (the queue overflowed, or they failed for another cause)
        self._retry: deque[Callable[[Database], Any]] = deque()  # writes refused by a lock (DB thread only)
        self._fail_fast = False  # locked: statements do not wait at all until the queue is written

    @classmethod
    async def open(cls, path: str | Path) -> Store:
        """Open on the dedicated thread (the connection is created there too)."""
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shortfsm-db")
        loop = asyncio.get_running_loop()
        try:
            db = await loop.run_in_executor(pool, connect, path)
            last = await loop.run_in_executor(pool, _last_journal_seq, db)
        except BaseException:
            pool.shutdown(wait=False)
            raise
        store = cls(db, path, pool)
        store.journal_seq = last
        return store

    @property
    def healthy(self) -> bool:
        return not self.closed and self.errors == 0

    def submit(self, fn: Callable[[Database], T], *, retry: bool = True) -> asyncio.Future[T]:
        """Queue ``fn(db)`` on the DB thread; the returned future may be awaited or dropped. A write
        refused because another process holds the lock waits at most ``LOCK_WAIT_MS`` (then none at
        all until the lock is gone) and is queued for ``retry_writes`` (``retry``: writes only)."""
        loop = asyncio.get_running_loop()

        def guarded(db: Database) -> T:
            try:
                return fn(db)
            except sqlite3.Error as exc:
                self.errors += 1
                kind = problem_kind(exc)
                self.last_problem = (kind, str(exc))
                if kind != "locked":
                    log.exception("database write failed")
                    raise
                if not self._fail_fast:
                    self._fail_fast = True
                    db.conn.execute("PRAGMA busy_timeout=0")
                if retry:
                    if len(self._retry) >= RETRY_LIMIT:
                        self._retry.popleft()
                        self.dropped += 1
                    self._retry.append(fn)
                log.warning("database locked by another process (%s): write queued for retry", exc)
                raise

        future = loop.run_in_executor(self._pool, guarded, self.db)
        future.add_done_callback(_swallow)
        return future

    async def call(self, fn: Callable[[Database], T]) -> T:
        return await self.submit(fn, retry=False)

    @property
    def queued(self) -> int:
        """Writes waiting for the database's lock."""
        return len(self._retry)

    async def retry_writes(self) -> int:
        """Write the queued writes in order until the lock refuses again; returns how many were
        written. Once the queue is empty statements wait for the lock again (``LOCK_WAIT_MS``)."""

        def run(db: Database) -> int:
            written = 0
            while self._retry:
                try:
                    self._retry[0](db)
                except sqlite3.Error as exc:
                    self.last_problem = (problem_kind(exc), str(exc))
                    if problem_kind(exc) == "locked":
                        return written
                    self._retry.popleft()
                    self.dropped += 1
                    log.error("queued database write failed, given up: %s", exc)
                    continue
                self._retry.popleft()
                written += 1
            if self._fail_fast:
                db.conn.execute(f"PRAGMA busy_timeout={LOCK_WAIT_MS}")
                self._fail_fast = False
            return written

        return await self.call(run)

    async def close(self) -> None:
        """Drain pending writes, checkpoint and close the connection."""
        if self.closed:
            return

        def finish(db: Database) -> None:
            db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            db.conn.close()

        try:
            await self.call(finish)
        except sqlite3.Error:
            log.exception("closing the database failed")
        self.closed = True
        self._pool.shutdown(wait=True)

    # -- writes --------------------------------------------------------------------------------

    def journal(self, event: ev.Event, out: str) -> asyncio.Future[None]:
        """Append one engine input (exact codec, encoded on the DB thread) and ``out``, the engine's
        answer rendered (``fsm.journal.render_all``), as row ``journal_seq`` (numbered here, so that
        the seq of the event in hand is known at once)."""
        name = type(event).__name__
        self.journal_seq += 1
        seq = self.journal_seq

        def write(db: Database) -> None:
            db.execute(JOURNAL_INSERT, [seq, event.now_ms, name, encode_event(event), out])

        return self.submit(write)

    def checkpoint(
        self, now_ms: int, snapshot: dict[str, Any], *, run_start: bool, keep_ms: int
    ) -> asyncio.Future[None]:
        """A journal row holding the engine's state before the next event: a replay starts here.
        Rows older than ``keep_ms`` before the last checkpoint older than that are deleted (a replay
        still starts at a checkpoint); ``keep_ms`` <= 0 keeps everything."""
        self.journal_seq += 1
        seq = self.journal_seq
        payload = encode_snapshot({"run_start": run_start, "engine": snapshot})

        def write(db: Database) -> None:
            with db.conn:
                db.execute(
                    "INSERT INTO journal(seq, now_ms, type, payload, out) VALUES (?, ?, ?, ?, NULL)",
                    [seq, now_ms, ENGINE_ROW, payload],
                )
                if keep_ms > 0:
                    _prune_journal(db, now_ms - keep_ms)

        return self.submit(write)

    def save_cursor(self, chat_id: int, message_id: int, now_ms: int) -> asyncio.Future[None]:
        """N-05: awaited by the daemon before any other command of the message is carried out (for at
        most ``CURSOR_WAIT_S`` there: a locked database never holds up a decision)."""

        def write(db: Database) -> None:
            db.execute(
                "INSERT INTO cursors(chat_id, message_id, updated_ms) VALUES (?, ?, ?) "
                "ON CONFLICT(chat_id) DO UPDATE SET message_id = excluded.message_id, "
                "updated_ms = excluded.updated_ms",
                [chat_id, message_id, now_ms],
            )

        return self.submit(write)

    def record_message(
        self, *, chat_id: int, message_id: int, date_ms: int, received_ms: int, text: str, parsed: Any
    ) -> asyncio.Future[None]:
        def write(db: Database) -> None:
            db.execute(
                "INSERT OR IGNORE INTO messages(chat_id, message_id, date_ms, received_ms, text, kind, "
                "parse_json) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [chat_id, message_id, date_ms, received_ms, text, type(parsed).__name__, dumps(parsed)],
            )

        return self.submit(write)

    def record_commands(self, now_ms: int, commands: Iterable[cmd.Command]) -> asyncio.Future[None]:
        """The audit rows a batch of engine commands implies (cursors excluded: see ``save_cursor``)."""
        batch = [c for c in commands if not isinstance(c, cmd.PersistCursor)]

        def write(db: Database) -> None:
            with db.conn:
                for c in batch:
                    _write_command(db, now_ms, c)

        return self.submit(write)

    def record_outcome(self, event: ev.Event) -> asyncio.Future[None]:
        """Order status, ids, errors and fills from executor answers and user-stream updates."""

        def write(db: Database) -> None:
            with db.conn:
                _write_outcome(db, event)

        return self.submit(write)

    def book_funding(self, events: Iterable[ev.FundingFee]) -> asyncio.Future[list[ev.FundingFee]]:
        """Settlements read from the income history: those not booked yet are booked and returned."""
        wanted = list(events)

        def write(db: Database) -> list[ev.FundingFee]:
            with db.conn:
                return [e for e in wanted if _book_funding(db, e, e.now_ms)]

        # Not queued when the database is locked: the read is tried again, and what it books then
        # is told (a write queued here would book the settlements and never tell them).
        return self.submit(write, retry=False)

    async def funding_cursor(self) -> int | None:
        """Funding is booked up to this venue time (a complete read of the income history)."""

        def read(db: Database) -> int | None:
            row = db.execute("SELECT value FROM meta WHERE key = 'funding_read_to'").fetchone()
            return int(row[0]) if row else None

        return await self.call(read)

    def set_funding_cursor(self, ms: int) -> asyncio.Future[None]:
        def write(db: Database) -> None:
            with db.conn:
                db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('funding_read_to', ?)", [str(ms)])

        return self.submit(write)

    async def last_journal_ms(self) -> int | None:
        """When the last run handled its last event (None on a database that never ran)."""

        def read(db: Database) -> int | None:
            row = db.execute("SELECT now_ms FROM journal ORDER BY seq DESC LIMIT 1").fetchone()
            return int(row[0]) if row and row[0] is not None else None

        return await self.call(read)

    def record_alert(
        self, *, now_ms: int, kind: str, severity: str, symbol: str | None, text: str
    ) -> asyncio.Future[int]:
        def write(db: Database) -> int:
            cur = db.execute(
                "INSERT INTO alerts(now_ms, kind, severity, symbol, text, delivered) "
                "VALUES (?, ?, ?, ?, ?, 0)",
                [now_ms, kind, severity, symbol, text],
            )
            return int(cur.lastrowid or 0)

        return self.submit(write)

    def mark_alert(self, alert_id: int, delivered: bool) -> asyncio.Future[None]:
        def write(db: Database) -> None:
            db.execute("UPDATE alerts SET delivered = ? WHERE id = ?", [1 if delivered else -1, alert_id])

        return self.submit(write)

    def save_snapshot(self, now_ms: int, snapshot: dict[str, Any]) -> asyncio.Future[None]:
        """Keep the last ``SNAPSHOTS_KEPT`` engine snapshots, each with the journal seq it covers
        (``covered_seq`` as it is now; None: every row journaled before it)."""
        covered = self.covered_seq

        def write(db: Database) -> None:
            with db.conn:
                db.execute(
                    "INSERT INTO snapshots(now_ms, engine, journal_seq) VALUES (?, ?, "
                    "COALESCE(?, (SELECT COALESCE(MAX(seq), 0) FROM journal)))",
                    [now_ms, json.dumps(snapshot, separators=(",", ":")), covered],
                )
                db.execute(
                    "DELETE FROM snapshots WHERE id NOT IN "
                    f"(SELECT id FROM snapshots ORDER BY id DESC LIMIT {SNAPSHOTS_KEPT})"
                )

        return self.submit(write)

    def set_status(self, key: str, value: Any, now_ms: int) -> asyncio.Future[None]:
        """``value`` is JSON-encoded on the DB thread (dicts of plain values or dataclasses)."""

        def write(db: Database) -> None:
            text = value if isinstance(value, str) else dumps(value)
            db.execute(
                "INSERT INTO status(key, value, updated_ms) VALUES (?, ?, ?) ON CONFLICT(key) DO UPDATE "
                "SET value = excluded.value, updated_ms = excluded.updated_ms",
                [key, text, now_ms],
            )

        return self.submit(write)

    def drop_status(self, key: str) -> asyncio.Future[None]:
        def write(db: Database) -> None:
            db.execute("DELETE FROM status WHERE key = ?", [key])

        return self.submit(write)

    # -- operator requests (written by the CLI, applied and acknowledged by the daemon) -----------

    async def control_requests(self) -> list[dict[str, Any]]:
        """Pending requests, oldest first; an unreadable row is dropped (logged)."""

        def read(db: Database) -> list[dict[str, Any]]:
            rows = db.execute(
                "SELECT key, value FROM status WHERE key LIKE ? ORDER BY updated_ms, key",
                [f"{CONTROL_REQUEST}%"],
            ).fetchall()
            found = []
            for key, value in rows:
                try:
                    request = json.loads(value)
                    if not isinstance(request, dict) or not isinstance(request.get("id"), str):
                        raise ValueError("not a request")
                except ValueError:
                    log.warning("control request %s unreadable, dropped: %r", key, value)
                    db.execute("DELETE FROM status WHERE key = ?", [key])
                    continue
                found.append(request)
            return found

        return await self.call(read)

    async def set_control(self, control: dict[str, Any], now_ms: int) -> None:
        await self.set_status(CONTROL_KEY, json.dumps(control), now_ms)

    async def drop_control_request(self, request: dict[str, Any]) -> None:
        await self.drop_status(CONTROL_REQUEST + str(request["id"]))

    async def finish_control(self, request: dict[str, Any], outcome: dict[str, Any]) -> None:
        """The request is gone and its acknowledgement written (id, applied at, what was done)."""
        rid = request["id"]
        ack = {"id": rid, "command": request.get("command"), "applied_ms": int(time.time() * 1000), **outcome}

        def write(db: Database) -> None:
            with db.conn:
                db.execute("DELETE FROM status WHERE key = ?", [CONTROL_REQUEST + rid])
                db.execute(
                    "INSERT OR REPLACE INTO status(key, value, updated_ms) VALUES (?, ?, ?)",
                    [CONTROL_ACK + rid, json.dumps(ack), ack["applied_ms"]],
                )
                # Acknowledgements nobody collected (the command gave up) are kept for a day.
                db.execute(
                    "DELETE FROM status WHERE key LIKE ? AND updated_ms < ?",
                    [f"{CONTROL_ACK}%", ack["applied_ms"] - 86_400_000],
                )

        await self.call(write)

    # -- reads ---------------------------------------------------------------------------------

    async def cursors(self) -> dict[int, int]:
        return await self.call(
            lambda db: {
                int(r[0]): int(r[1]) for r in db.execute("SELECT chat_id, message_id FROM cursors").fetchall()
            }
        )

    async def cooldowns(self) -> dict[str, int]:
        return await self.call(
            lambda db: {
                str(r[0]): int(r[1])
                for r in db.execute("SELECT symbol, received_at_ms FROM cooldowns").fetchall()
            }
        )

    async def latest_snapshot(self) -> dict[str, Any] | None:
        def read(db: Database) -> dict[str, Any] | None:
            row = db.execute("SELECT engine FROM snapshots ORDER BY id DESC LIMIT 1").fetchone()
            return json.loads(row[0]) if row else None

        return await self.call(read)

    async def snapshot_coverage(self) -> int:
        """The journal seq the latest snapshot covers (0 without a snapshot: nothing is covered)."""

        def read(db: Database) -> int:
            row = db.execute("SELECT journal_seq FROM snapshots ORDER BY id DESC LIMIT 1").fetchone()
            if row is None:
                return 0
            return int(row[0]) if row[0] is not None else _last_journal_seq(db)

        return await self.call(read)

    async def risk_messages_after(self, seq: int, risk_chat_id: int, cursor: int) -> list[ev.MessageReceived]:
        """D-18: the risk messages journaled after ``seq`` whose id is at or below ``cursor`` (their
        cursor was stored, so the backfill will not bring them back), first journaling of each id."""

        def read(db: Database) -> list[ev.MessageReceived]:
            rows = db.execute(
                "SELECT payload FROM journal WHERE seq > ? AND type = 'MessageReceived' ORDER BY seq",
                [seq],
            ).fetchall()
            found: dict[int, ev.MessageReceived] = {}
            for (payload,) in rows:
                message = risk_message_from_journal(payload)
                if message is not None and message.chat_id == risk_chat_id and message.message_id <= cursor:
                    found.setdefault(message.message_id, message)
            return list(found.values())

        return await self.call(read)

    async def our_orders(self) -> list[tuple[str, str, bool]]:
        """(symbol, client order id, has a fill) of every order row: recovery's second witness,
        written before the snapshot that follows the same event (D-17, D-18)."""
        return await self.call(
            lambda db: [
                (str(r[0]), str(r[1]), bool(r[2]))
                for r in db.execute(
                    "SELECT o.symbol, o.client_order_id, EXISTS(SELECT 1 FROM fills f "
                    "WHERE f.client_order_id = o.client_order_id) FROM orders o WHERE o.symbol IS NOT NULL"
                ).fetchall()
            ]
        )

    async def unfinished_orders(self) -> list[tuple[str, str, bool, Decimal, str]]:
        """(symbol, client order id, is algo, quantity filled on record, status) of our orders not
        yet seen to end (sent, accepted, part-filled, being cancelled, a stop triggered): recovery
        reads back what happened to them while no daemon ran."""

        def read(db: Database) -> list[tuple[str, str, bool, Decimal, str]]:
            rows = db.execute(
                "SELECT o.symbol, o.client_order_id, o.type, o.status, "
                "(SELECT group_concat(f.qty, ' ') FROM fills f WHERE f.client_order_id = o.client_order_id) "
                "FROM orders o WHERE o.symbol IS NOT NULL AND o.leg IS NOT 'EXTERNAL' AND o.status IN "
                "('PENDING_NEW', 'NEW', 'PARTIALLY_FILLED', 'PENDING_CANCEL', 'TRIGGERING', 'TRIGGERED')"
            ).fetchall()
            return [
                (
                    str(symbol),
                    str(cid),
                    kind == "STOP_MARKET",
                    sum((Decimal(q) for q in (qtys or "").split()), Decimal(0)),
                    str(status),
                )
                for symbol, cid, kind, status, qtys in rows
            ]

        return await self.call(read)

    async def status(self, key: str) -> str | None:
        def read(db: Database) -> str | None:
            row = db.execute("SELECT value FROM status WHERE key = ?", [key]).fetchone()
            return str(row[0]) if row else None

        return await self.call(read)

    async def rows(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        args = list(params)
        return await self.call(lambda db: [tuple(r) for r in db.execute(sql, args).fetchall()])


def _last_journal_seq(db: Database) -> int:
    row = db.execute("SELECT COALESCE(MAX(seq), 0) FROM journal").fetchone()
    return int(row[0])


def _info_from_json(data: Any) -> ev.SymbolInfo | None:
    if not isinstance(data, dict):
        return None
    values: dict[str, Any] = {}
    for f in dataclasses.fields(ev.SymbolInfo):
        if f.name not in data:
            continue
        raw = data[f.name]
        values[f.name] = Decimal(str(raw)) if raw is not None and "Decimal" in str(f.type) else raw
    return ev.SymbolInfo(**values)


def risk_message_from_journal(payload: str) -> ev.MessageReceived | None:
    """A journaled ``MessageReceived`` whose text parsed as a risk signal; None for anything else
    (another kind of message, or a row that does not decode: logged)."""
    if payload.startswith(EXACT_MARK):
        try:
            event = decode_event(payload)
        except ValueError as exc:
            log.warning("journal row not decodable as a message, not re-run: %s", exc)
            return None
        if isinstance(event, ev.MessageReceived) and isinstance(event.parsed, ev.RiskSignal):
            return dataclasses.replace(event, rerun=False)
        return None
    try:  # a row written before the exact codec
        data = json.loads(payload)
        parsed = data["parsed"]
        if not isinstance(parsed, dict) or parsed.get("type") != "RiskSignal":
            return None
        return ev.MessageReceived(
            now_ms=int(data["now_ms"]),
            chat_id=int(data["chat_id"]),
            message_id=int(data["message_id"]),
            telegram_date_ms=int(data["telegram_date_ms"]),
            parsed=ev.RiskSignal(raw_token=str(parsed["raw_token"]), symbol=str(parsed["symbol"])),
            exchange_info_ok=bool(data.get("exchange_info_ok", True)),
            symbol_info=_info_from_json(data.get("symbol_info")),
        )
    except (ValueError, KeyError, TypeError, ArithmeticError) as exc:
        log.warning("journal row not decodable as a message, not re-run: %r", exc)
        return None


def _prune_journal(db: Database, cutoff_ms: int) -> None:
    """Delete the rows before the last checkpoint written at or before ``cutoff_ms``."""
    row = db.execute(
        "SELECT MAX(seq) FROM journal WHERE type = ? AND now_ms <= ?", [ENGINE_ROW, cutoff_ms]
    ).fetchone()
    if row and row[0]:
        db.execute("DELETE FROM journal WHERE seq < ?", [row[0]])


def _swallow(future: asyncio.Future[Any]) -> None:
    """Fire-and-forget writes log their failure in ``guarded``; mark the exception retrieved."""
    if not future.cancelled():
        future.exception()


# ---------------------------------------------------------------------------------------------
# Row writers (DB thread)
# ---------------------------------------------------------------------------------------------


def _upsert_order(db: Database, cid: str, now_ms: int, values: dict[str, Any]) -> None:
    exists = db.execute("SELECT 1 FROM orders WHERE client_order_id = ?", [cid]).fetchone()
    if exists:
        if values:
            sets = ", ".join(f"{k} = ?" for k in values)
            db.execute(
                f"UPDATE orders SET {sets}, updated_ms = ? WHERE client_order_id = ?",
                [*values.values(), now_ms, cid],
            )
        return
    row = {"client_order_id": cid, "created_ms": now_ms, "updated_ms": now_ms, **values}
    cols = ", ".join(row)
    marks = ", ".join("?" for _ in row)
    db.execute(f"INSERT INTO orders({cols}) VALUES ({marks})", list(row.values()))


def _dec(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def _write_command(db: Database, now_ms: int, c: cmd.Command) -> None:
    if isinstance(c, cmd.Transitioned):
        db.execute(
            "INSERT INTO transitions(now_ms, machine, symbol, source, dest, trigger, reason) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [now_ms, c.machine, c.symbol, c.source, c.dest, c.trigger, c.reason],
        )
    elif isinstance(c, cmd.Log):
        db.execute(
            "INSERT INTO decisions(now_ms, kind, symbol, reason, data) VALUES (?, ?, ?, ?, ?)",
            [now_ms, c.kind, c.symbol, c.reason, json.dumps(dict(c.data), ensure_ascii=False)],
        )
    elif isinstance(c, cmd.PersistCooldown):
        db.execute(
            "INSERT INTO cooldowns(symbol, received_at_ms) VALUES (?, ?) ON CONFLICT(symbol) "
            "DO UPDATE SET received_at_ms = excluded.received_at_ms",
            [c.symbol, c.received_at_ms],
        )
    elif isinstance(c, cmd.PlaceOrder):
        _upsert_order(
            db,
            c.client_order_id,
            now_ms,
            {
                "symbol": c.symbol,
                "leg": c.leg,
                "side": c.side,
                "type": c.order_type,
                "price": _dec(c.price),
                "quantity": _dec(c.quantity),
                "status": "PENDING_NEW",
                "attempts": c.attempt,
                "params": dumps(c),
            },
        )
    elif isinstance(c, cmd.PlaceAlgoOrder):
        _upsert_order(
            db,
            c.client_algo_id,
            now_ms,
            {
                "symbol": c.symbol,
                "leg": c.leg,
                "side": c.side,
                "type": c.order_type,
                "trigger_price": _dec(c.trigger_price),
                "status": "PENDING_NEW",
                "attempts": c.attempt,
                "params": dumps(c),
            },
        )
    elif isinstance(c, (cmd.CancelOrder, cmd.CancelAlgoOrder)):
        cid = c.client_order_id if isinstance(c, cmd.CancelOrder) else c.client_algo_id
        if db.execute("SELECT 1 FROM orders WHERE client_order_id = ?", [cid]).fetchone():
            _upsert_order(db, cid, now_ms, {"status": "PENDING_CANCEL"})


_ROW_ENDED = frozenset({"FILLED", "CANCELED", "EXPIRED", "REJECTED", "FINISHED"})
_ROW_RANK = {
    "PENDING_NEW": 0,
    "NEW": 1,
    "PENDING_CANCEL": 2,
    "PARTIALLY_FILLED": 2,
    "TRIGGERING": 2,
    "TRIGGERED": 3,
}


def _venue_word(db: Database, cid: str, status: str) -> dict[str, Any]:
    """``{"status": status}`` when the venue's word moves the row forward, else nothing: a push or an
    answer that arrives late (a NEW after the fill, reordered user events) never reopens an ended
    order (the row follows the order table's rule, fsm/orders.py). A fill that raced a cancel
    may still turn an ended row FILLED."""
    row = db.execute("SELECT status FROM orders WHERE client_order_id = ?", [cid]).fetchone()
    old = row[0] if row else None
    if old is None or (old not in _ROW_ENDED and old not in _ROW_RANK):
        return {"status": status}
    if old in _ROW_ENDED:
        return {"status": status} if status == "FILLED" and old != "FILLED" else {}
    if status in _ROW_ENDED or _ROW_RANK.get(status, 0) >= _ROW_RANK[old]:
        return {"status": status}
    return {}


FUNDING_SAME_MS = 1_800_000  # one settlement per symbol per hour at most: nearer than 30 min is the same


def _book_funding(db: Database, event: ev.FundingFee, now: int) -> bool:
    """Book one settlement unless it is booked already: the push and the income history name the
    same settlement with the same amount (their times may differ by some milliseconds; a push that
    did not say its symbol booked it under ""). Two legs of one symbol (hedge mode) settle at the
    same time with different amounts: both are booked. True when it was new."""
    same = db.execute(
        "SELECT 1 FROM funding WHERE asset = ? AND CAST(amount AS REAL) = CAST(? AS REAL) "
        "AND ABS(venue_time_ms - ?) < ? "
        "AND (symbol = ? OR symbol = '' OR ? = '') LIMIT 1",
        [event.asset, str(event.amount), event.venue_time_ms, FUNDING_SAME_MS, event.symbol, event.symbol],
    ).fetchone()
    if same is not None:
        return False
    db.execute(
        "INSERT INTO funding (symbol, asset, amount, venue_time_ms, now_ms) VALUES (?, ?, ?, ?, ?)",
        [event.symbol, event.asset, str(event.amount), event.venue_time_ms, now],
    )
    return True


def _write_outcome(db: Database, event: ev.Event) -> None:
    now = event.now_ms
    if isinstance(event, ev.OrderAccepted):
        accepted = {**_venue_word(db, event.client_order_id, "NEW"), "order_id": event.order_id}
        _upsert_order(db, event.client_order_id, now, accepted)
    elif isinstance(event, ev.AlgoOrderAccepted):
        accepted = {**_venue_word(db, event.client_algo_id, "NEW"), "order_id": event.algo_id}
        _upsert_order(db, event.client_algo_id, now, accepted)
    elif isinstance(event, ev.OrderRejected):
        _upsert_order(
            db,
            event.client_order_id,
            now,
            {"status": "REJECTED", "error_code": event.code, "error": event.message},
        )
    elif isinstance(event, ev.CancelResult):
        if event.ok or event.gone:
            row = db.execute(
                "SELECT status FROM orders WHERE client_order_id = ?", [event.client_order_id]
            ).fetchone()
            if row and row[0] not in ("FILLED", "FINISHED"):
                _upsert_order(db, event.client_order_id, now, {"status": "CANCELED"})
        else:
            _upsert_order(db, event.client_order_id, now, {"error_code": event.code, "error": event.message})
    elif isinstance(event, ev.FundingFee):
        _book_funding(db, event, now)
    elif isinstance(event, ev.OrderUpdated):
        values: dict[str, Any] = {
            **_venue_word(db, event.client_order_id, event.status),
            "order_id": event.order_id,
        }
        known = db.execute(
            "SELECT 1 FROM orders WHERE client_order_id = ?", [event.client_order_id]
        ).fetchone()
        if not known:
            values.update(
                symbol=event.symbol,
                side=event.side,
                type=event.order_type,
                price=str(event.price),
                quantity=str(event.orig_qty),
                leg="EXTERNAL",
            )
        _upsert_order(db, event.client_order_id, now, values)
        if event.last_qty > 0:
            key = (
                f"{event.symbol}:{event.trade_id}"
                if event.trade_id
                else f"{event.client_order_id}:{event.cum_qty}"
            )
            db.execute(
                "INSERT OR IGNORE INTO fills(trade_key, client_order_id, symbol, qty, price, realized_pnl, "
                "commission, now_ms, position_side) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    key,
                    event.client_order_id,
                    event.symbol,
                    str(event.last_qty),
                    str(event.last_price),
                    str(event.realized_pnl),
                    str(event.commission),
                    now,
                    event.position_side,
                ],
            )
    elif isinstance(event, ev.AlgoOrderUpdated):
        moved = _venue_word(db, event.client_algo_id, event.status)
        _upsert_order(db, event.client_algo_id, now, {**moved, "order_id": event.algo_id})


# ---------------------------------------------------------------------------------------------
# Synchronous helpers for one-shot CLI commands (pause/resume/flatten requests, summaries)
# ---------------------------------------------------------------------------------------------

CONTROL_KEY = "control"
CONTROL_REQUEST = "control.request."
CONTROL_ACK = "control.ack."


def request_control(path: str | Path, request_id: str, command: str, now_ms: int) -> None:
    """The CLI's side: one request row for the running daemon. The database must exist (it is
    opened read-write, never created or migrated); raises ``StoreError`` when it cannot be written."""
    target = Path(path)
    value = json.dumps({"id": request_id, "command": command, "requested_ms": now_ms})
    try:
        conn = sqlite3.connect(f"{target.resolve().as_uri()}?mode=rw", uri=True, timeout=5.0)
        try:
            with conn:
                conn.execute(
                    "INSERT INTO status(key, value, updated_ms) VALUES (?, ?, ?)",
                    [CONTROL_REQUEST + request_id, value, now_ms],
                )
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise StoreError(f"{target}: the request could not be written ({exc})") from exc


def read_control_ack(path: str | Path, request_id: str) -> dict[str, Any] | None:
    """The daemon's acknowledgement of ``request_id`` (None until written); read-only."""
    target = Path(path)
    try:
        conn = sqlite3.connect(f"{target.resolve().as_uri()}?mode=ro", uri=True, timeout=1.0)
        try:
            row = conn.execute(
                "SELECT value FROM status WHERE key = ?", [CONTROL_ACK + request_id]
            ).fetchone()
        finally:
            conn.close()
        value = json.loads(row[0]) if row else None
    except (sqlite3.Error, ValueError):
        return None
    return value if isinstance(value, dict) else None


def write_control(path: str | Path, now_ms: int, **values: Any) -> dict[str, Any]:
    """Merge ``values`` into the control row the running daemon polls; returns the new row."""
    db = connect(path)
    try:
        row = db.execute("SELECT value FROM status WHERE key = ?", [CONTROL_KEY]).fetchone()
        current: dict[str, Any] = json.loads(row[0]) if row else {}
        current.update(values)
        db.execute(
            "INSERT INTO status(key, value, updated_ms) VALUES (?, ?, ?) ON CONFLICT(key) DO UPDATE "
            "SET value = excluded.value, updated_ms = excluded.updated_ms",
            [CONTROL_KEY, json.dumps(current), now_ms],
        )
        return current
    finally:
        db.conn.close()
