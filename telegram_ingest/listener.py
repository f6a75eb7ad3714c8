"""Telethon 1.x listener: live messages, backfill, watchdog, session file and login.

Theory of operation: the listener turns every message of the configured channels into a
``RawMessage`` and hands it to ``on_raw`` in channel order. Live ``NewMessage`` events and backfill
pages go through one delivery lock, so they never interleave, and through a bounded set of
``(chat_id, message_id)`` keys, so a message seen both live and in a backfill is delivered once.
Telethon 1.x does not fetch missed updates after a reconnect and silently skips channel gaps of
over 100 messages (N-27), so the listener reads the history itself with
``iter_messages(chat, min_id=cursor, reverse=True)``: on start, after every reconnect, every
``backfill_interval_s`` and before a live message that arrives after a gap (so the gap is
delivered first and the engine sees ids in order). The cursor comes from the engine's store; the
listener never decides what is too old or already processed, it only forwards.

FloodWait: the delivery lock is held for one read pass, never for a FloodWait sleep, so a live
message is delivered at once while a backfill waits; a live message that arrives during a FloodWait
is delivered without first reading its gap (the engine's cursor then drops the older gap messages).
A lost connection is reconnected with a capped exponential back-off; ``on_state`` hears "up" and
"reconnecting". A session Telegram no longer accepts (revoked, expired) raises ``SessionUnusable``
out of ``run``: retrying cannot help, the operator must log in again.

The daemon never logs in interactively: ``ensure_authorised`` connects and checks, ``login`` is the
one-time interactive command.
"""

from __future__ import annotations

import asyncio
import fcntl
import getpass
import logging
import os
import sqlite3
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from telethon import TelegramClient, events
from telethon.errors import AuthKeyError, FloodWaitError, RPCError, UnauthorizedError

from telegram_ingest.adapter import RawMessage, raw_from_telethon

logger = logging.getLogger(__name__)

SESSION_SUFFIX = ".session"


class NotAuthorised(RuntimeError):
    """The session file holds no logged-in account: the operator must run ``shortfsm login``."""


class SessionLocked(RuntimeError):
    """Another process holds the session file (Telethon sessions must never be shared)."""

    def __init__(self, message: str, *, pid: int | None = None) -> None:
        super().__init__(message)
        self.pid = pid


# Telegram refuses the session itself (revoked, expired, deactivated, used from two places):
# reconnecting cannot help, only ``shortfsm login``.
SessionUnusable = (UnauthorizedError, AuthKeyError)


def login_remedy(session: str | os.PathLike[str]) -> str:
    return f"run `shortfsm login --session {session}`"


@dataclass(frozen=True, slots=True, kw_only=True)
class Backoff:
    """Reconnect delays: ``initial_s`` doubling up to ``cap_s`` (1, 2, 4, ... 60 s)."""

    initial_s: float = 1.0
    cap_s: float = 60.0

    def delay(self, failures: int) -> float:
        """The wait before the attempt that follows ``failures`` failed ones (0 -> ``initial_s``)."""
        return float(min(self.cap_s, self.initial_s * 2 ** min(max(failures, 0), 32)))


class CursorStore(Protocol):
    """The engine's per-channel last processed message id (0 when there is none yet)."""

    def get(self, chat_id: int) -> int: ...


class TelegramClientLike(Protocol):
    """The part of ``telethon.TelegramClient`` the listener uses (tests provide a double)."""

    def add_event_handler(self, callback: Callable[[Any], Awaitable[None]], event: Any = None) -> None: ...

    def remove_event_handler(self, callback: Callable[[Any], Awaitable[None]], event: Any = None) -> int: ...

    def is_connected(self) -> bool: ...

    def connect(self) -> Awaitable[None]: ...

    def disconnect(self) -> Awaitable[None]: ...

    def iter_messages(
        self,
        entity: Any,
        limit: int | None = None,
        *,
        min_id: int = 0,
        max_id: int = 0,
        reverse: bool = False,
    ) -> AsyncIterator[Any]: ...


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenerConfig:
    backfill_interval_s: float = 60.0  # periodic history read, in case live updates stalled
    quiet_reconnect_s: float = 900.0  # no update of any kind for this long: reconnect
    watchdog_interval_s: float = 5.0  # how often ``run`` checks the connection
    dedupe_size: int = 4096  # (chat_id, message_id) keys remembered against double delivery
    max_flood_waits: int = 5  # FloodWait retries within one channel backfill before giving up
    reconnect_backoff: Backoff = Backoff()  # between failed reconnects of the watchdog


@dataclass(slots=True)
class _Seen:
    """A bounded FIFO set of delivered (chat_id, message_id) keys."""

    size: int
    keys: OrderedDict[tuple[int, int], None] = field(default_factory=OrderedDict)

    def __contains__(self, key: tuple[int, int]) -> bool:
        return key in self.keys

    def add(self, key: tuple[int, int]) -> None:
        self.keys[key] = None
        while len(self.keys) > self.size:
            self.keys.popitem(last=False)


class TelegramListener:
    """Forwards the configured channels' messages, in order and once, to ``on_raw``.

    ``on_raw`` runs under the delivery lock: it should enqueue and return, never call back into
    the listener.
    """

    def __init__(
        self,
        client: TelegramClientLike,
        *,
        chat_ids: Sequence[int],
        cursors: CursorStore,
        on_raw: Callable[[RawMessage], Awaitable[None]],
        config: ListenerConfig | None = None,
        clock: Callable[[], int] = wall_clock_ms,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        on_state: Callable[[str, str], None] | None = None,
    ) -> None:
        if not chat_ids or not all(isinstance(c, int) and not isinstance(c, bool) for c in chat_ids):
            raise ValueError(f"chat_ids must be marked integer ids (-100...), got {chat_ids!r}")
        self._client = client
        self._chats = tuple(dict.fromkeys(chat_ids))
        self._cursors = cursors
        self._on_raw = on_raw
        self._config = config or ListenerConfig()
        self._clock = clock
        self._sleep = sleep
        self._lock = asyncio.Lock()
        self._seen = _Seen(size=max(1, self._config.dedupe_size))
        self._high: dict[int, int] = {}  # highest id delivered or read, per chat
        self._baseline: dict[int, int] = {}  # where to start when the engine has no cursor yet
        self._registered = False
        self._stopped = False
        self._last_activity_ms = clock()
        self._last_backfill_ms = clock()
        self._was_connected = True
        self._on_state = on_state
        self._reconnect_failures = 0
        self._next_reconnect_ms = 0
        self._flood_until_ms = 0  # a backfill is sleeping on FloodWait until then

    @property
    def chat_ids(self) -> tuple[int, ...]:
        return self._chats

    # -- handlers --------------------------------------------------------------------------------

    def register(self) -> None:
        """Attach the handlers to the client (idempotent). Chat ids are marked: no network lookup."""
        if self._registered:
            return
        chats = list(self._chats)
        self._client.add_event_handler(self.handle_new_message, events.NewMessage(chats=chats))
        self._client.add_event_handler(self.handle_edited, events.MessageEdited(chats=chats))
        self._client.add_event_handler(self.handle_update, events.Raw())
        self._registered = True

    def unregister(self) -> None:
        if not self._registered:
            return
        for callback in (self.handle_new_message, self.handle_edited, self.handle_update):
            self._client.remove_event_handler(callback)
        self._registered = False

    async def handle_new_message(self, event: Any) -> None:
        """Live ``NewMessage``: deliver the gap before it (if any), then the message itself."""
        self._touch()
        raw = raw_from_telethon(getattr(event, "message", None), self._clock())
        if raw is None:
            return
        if raw.chat_id not in self._chats:
            logger.debug("message %s from foreign chat %s ignored (N-04)", raw.message_id, raw.chat_id)
            return
        async with self._lock:
            high = self._high.get(raw.chat_id)
            gap = (
                high is not None
                and raw.message_id > high + 1
                and (raw.chat_id, raw.message_id) not in self._seen
            )
            if gap and self._clock() < self._flood_until_ms:
                logger.warning(
                    "chat %s: live message %s after %s delivered at once; its gap is not read during "
                    "a FloodWait",
                    raw.chat_id,
                    raw.message_id,
                    high,
                )
            elif gap:
                logger.info(
                    "chat %s: live message %s after %s, reading the gap first",
                    raw.chat_id,
                    raw.message_id,
                    high,
                )
                _, _, flood_s = await self._read_pass(raw.chat_id, 0, max_id=raw.message_id)
                if flood_s is not None:
                    logger.warning(
                        "chat %s gap read: FloodWait of %d s; live message %s delivered without it",
                        raw.chat_id,
                        flood_s,
                        raw.message_id,
                    )
            await self._forward(raw)

    async def handle_edited(self, event: Any) -> None:
        """Edits (and reactions, which Telethon reports as edits) are logged and ignored (N-27)."""
        self._touch()
        message = getattr(event, "message", None)
        logger.info(
            "edited message %s in chat %s ignored (N-27)",
            getattr(message, "id", None),
            getattr(event, "chat_id", None),
        )

    async def handle_update(self, update: Any) -> None:
        """Any update proves the connection is alive (feeds the quiet watchdog)."""
        self._touch()

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> int:
        """Register the handlers and backfill every channel; returns how many messages it delivered."""
        self.register()
        self._stopped = False
        self._last_activity_ms = self._clock()
        self._was_connected = self._client.is_connected()
        return await self.backfill(reason="start")

    def stop(self) -> None:
        """Ask ``run`` to return after its current step."""
        self._stopped = True

    async def run(self) -> None:
        """Start, then run the watchdog until ``stop``. Never calls ``client.start()``."""
        await self.start()
        while not self._stopped:
            await self._sleep(self._config.watchdog_interval_s)
            if self._stopped:
                break
            try:
                await self.check()
            except (asyncio.CancelledError, *SessionUnusable):
                raise
            except Exception:  # one bad step must not end the watchdog
                logger.exception("telegram watchdog step failed; continuing")

    async def check(self) -> None:
        """One watchdog step: reconnect when down or quiet too long, periodic backfill when due."""
        now = self._clock()
        connected = self._client.is_connected()
        if not connected:
            if self._was_connected:
                self._was_connected = False
                self._state("reconnecting", "the connection to Telegram was lost")
            if now >= self._next_reconnect_ms:
                await self._reconnect("the client is disconnected")
            return
        if not self._was_connected:
            self._was_connected = True
            self._reconnect_failures = 0
            self._state("up", "Telegram's own reconnect")
            logger.info("telegram connection is back; backfilling")
            await self.backfill(reason="reconnected")
            return
        quiet_ms = now - self._last_activity_ms
        if quiet_ms >= self._config.quiet_reconnect_s * 1000:
            await self._reconnect(f"no update for {quiet_ms / 1000:.0f} s")
            return
        if now - self._last_backfill_ms >= self._config.backfill_interval_s * 1000:
            await self.backfill(reason="periodic")

    async def backfill(self, *, reason: str = "periodic") -> int:
        """Read every channel's history after its cursor, in order; returns messages delivered.
        The delivery lock is held per read pass: FloodWait sleeps happen outside it."""
        delivered = 0
        for chat in self._chats:
            delivered += await self._backfill_chat(chat)
        self._last_backfill_ms = self._clock()
        if delivered:
            logger.info("backfill (%s) delivered %d missed message(s)", reason, delivered)
        else:
            logger.debug("backfill (%s): nothing missed", reason)
        return delivered

    # -- internals -------------------------------------------------------------------------------

    def _touch(self) -> None:
        self._last_activity_ms = self._clock()

    def _state(self, state: str, detail: str) -> None:
        if self._on_state is not None:
            self._on_state(state, detail)

    async def _reconnect(self, cause: str) -> None:
        logger.warning("telegram watchdog: reconnecting (%s)", cause)
        self._state("reconnecting", cause)
        try:
            if self._client.is_connected():
                await self._client.disconnect()
            await self._client.connect()
        except (asyncio.CancelledError, *SessionUnusable):
            raise
        except Exception as exc:  # the watchdog must outlive any connection failure
            delay = self._config.reconnect_backoff.delay(self._reconnect_failures)
            self._reconnect_failures += 1
            self._next_reconnect_ms = self._clock() + int(delay * 1000)
            self._was_connected = False
            logger.error(
                "telegram reconnect failed: %s: %s; next attempt in %.0f s", type(exc).__name__, exc, delay
            )
            return
        self._was_connected = self._client.is_connected()
        self._reconnect_failures = 0
        self._next_reconnect_ms = 0
        self._last_activity_ms = self._clock()
        self._state("up", "reconnected")
        await self.backfill(reason="reconnect")

    async def _floor(self, chat: int) -> int:
        """The id to read after: the engine's cursor, or the newest message when there is none."""
        cursor = self._cursors.get(chat)
        if cursor > 0:
            return cursor
        if chat in self._baseline:
            return self._baseline[chat]
        latest = 0
        async for message in self._client.iter_messages(chat, 1):
            latest = max(latest, int(getattr(message, "id", 0) or 0))
        self._baseline[chat] = latest
        logger.info("chat %s has no saved cursor: starting after its newest message %s", chat, latest)
        return latest

    async def _backfill_chat(self, chat: int) -> int:
        """One channel's history after its cursor. Each read pass holds the delivery lock; a
        FloodWait sleep does not, so live messages are delivered while it waits."""
        delivered = 0
        floods = 0
        resume = 0  # the last id an earlier pass read
        while True:
            async with self._lock:
                count, resume, flood_s = await self._read_pass(chat, resume)
            delivered += count
            if flood_s is None:
                return delivered
            floods += 1
            if floods > self._config.max_flood_waits:
                logger.error("chat %s backfill: FloodWait %d times, giving up for now", chat, floods)
                return delivered
            logger.warning("chat %s backfill: FloodWait of %d s, waiting", chat, flood_s)
            await self._sleep(flood_s)

    async def _read_pass(self, chat: int, resume: int, *, max_id: int = 0) -> tuple[int, int, int | None]:
        """One history read after ``max(resume, cursor)`` (the caller holds the lock): messages
        delivered, the last id read, and the FloodWait seconds that interrupted it (or None)."""
        delivered = 0
        flood_s: int | None = None
        try:
            min_id = max(resume, await self._floor(chat))
            resume = min_id
            self._high[chat] = max(self._high.get(chat, 0), min_id)
            history = self._client.iter_messages(chat, min_id=min_id, max_id=max_id, reverse=True)
            async for message in history:
                raw = raw_from_telethon(message, self._clock())
                if raw is not None and raw.chat_id == chat and await self._forward(raw):
                    delivered += 1
                message_id = getattr(message, "id", None)
                if isinstance(message_id, int) and message_id > resume:
                    resume = message_id
        except FloodWaitError as exc:
            flood_s = int(exc.seconds)
            self._flood_until_ms = max(self._flood_until_ms, self._clock() + flood_s * 1000)
        except SessionUnusable:
            raise
        except (ValueError, TypeError) as exc:
            logger.error(
                "chat %s history unreadable (%s): is the account a member? "
                "`shortfsm login` refreshes the session's channel cache",
                chat,
                exc,
            )
        except (TimeoutError, RPCError, OSError, ConnectionError) as exc:
            logger.warning(
                "chat %s backfill failed (%s: %s); next backfill retries", chat, type(exc).__name__, exc
            )
        if chat in self._high:
            self._high[chat] = max(self._high[chat], resume)
        return delivered, resume, flood_s

    async def _forward(self, raw: RawMessage) -> bool:
        key = (raw.chat_id, raw.message_id)
        if key in self._seen:
            logger.debug("chat %s message %s already delivered", raw.chat_id, raw.message_id)
            return False
        try:
            await self._on_raw(raw)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("on_raw failed for chat %s message %s", raw.chat_id, raw.message_id)
            return False
        self._seen.add(key)
        self._high[raw.chat_id] = max(self._high.get(raw.chat_id, 0), raw.message_id)
        return True


# ---------------------------------------------------------------------------------------------
# Session file, authorisation, login
# ---------------------------------------------------------------------------------------------


class SessionLock:
    """Holds ``<session>.lock`` for the life of the process; ``path`` is what TelegramClient gets."""

    def __init__(self, path: Path, lock_path: Path, fd: int) -> None:
        self.path = path
        self.lock_path = lock_path
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> SessionLock:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def open_session_path(path: str | os.PathLike[str]) -> SessionLock:
    """Lock the session (``<path>.lock``, exclusive ``flock``) and create the file with mode 0600.

    Telethon appends ``.session`` to a name without it; the returned ``path`` already has it.
    Raises ``SessionLocked`` when another process holds the lock.
    """
    session = Path(path)
    if not session.name.endswith(SESSION_SUFFIX):
        session = session.with_name(session.name + SESSION_SUFFIX)
    session.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock_path = session.with_name(session.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        pid = _lock_holder(lock_path)
        holder = f"pid {pid}, " if pid is not None else ""
        raise SessionLocked(
            f"Telegram session {session} is in use by another process ({holder}lock {lock_path} is held); "
            "stop that process first: one session file must never be opened by two processes",
            pid=pid,
        ) from exc
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        session_fd = os.open(session, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(session_fd)
        os.chmod(session, 0o600)
    except OSError:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
        raise
    return SessionLock(session, lock_path, fd)


def _lock_holder(lock_path: Path) -> int | None:
    """The pid the holder wrote into the lock file (None when unreadable or not a live pid)."""
    try:
        text = lock_path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and int(text) > 0 else None


def session_file(path: str | os.PathLike[str]) -> Path:
    """The file Telethon uses for ``path`` (it appends ``.session`` to a name without it)."""
    session = Path(path)
    return (
        session if session.name.endswith(SESSION_SUFFIX) else session.with_name(session.name + SESSION_SUFFIX)
    )


def session_problem(path: str | os.PathLike[str]) -> str | None:
    """Why the session file certainly cannot be logged in, read offline (None: it may be; only
    Telegram can say). A Telethon session holds an auth key once it has logged in."""
    session = session_file(path)
    if not session.exists():
        return f"Telegram session {session} does not exist: {login_remedy(session)}"
    try:
        size = session.stat().st_size
    except OSError as exc:
        return f"Telegram session {session} is unreadable ({exc.strerror}): {login_remedy(session)}"
    if size == 0:
        return f"Telegram session {session} is not logged in (empty file): {login_remedy(session)}"
    try:
        conn = sqlite3.connect(f"{session.resolve().as_uri()}?mode=ro", uri=True, timeout=1.0)
        try:
            keys = [row[0] for row in conn.execute("SELECT auth_key FROM sessions")]
        finally:
            conn.close()
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc):
            return f"Telegram session {session} is in use by another program (database locked)"
        return f"Telegram session {session} is not a Telethon session ({exc}): {login_remedy(session)}"
    except sqlite3.DatabaseError as exc:
        return f"Telegram session {session} is not a Telethon session ({exc}): {login_remedy(session)}"
    if not any(isinstance(key, bytes) and key for key in keys):
        return f"Telegram session {session} is not logged in (no auth key): {login_remedy(session)}"
    return None


async def ensure_authorised(client: Any, session: str | os.PathLike[str] | None = None) -> None:
    """Connect and check the session is logged in; never prompts (the daemon runs headless)."""
    await client.connect()
    if not await client.is_user_authorized():
        await client.disconnect()
        remedy = login_remedy(session) if session is not None else "run `shortfsm login`"
        raise NotAuthorised(f"the Telegram session is not logged in: {remedy} first")


async def login(
    api_id: int,
    api_hash: str,
    session_path: str | os.PathLike[str],
    phone: str,
    *,
    client_factory: Callable[[str, int, str], Any] = TelegramClient,
    prompt: Callable[[str], str] = input,
    secret_prompt: Callable[[str], str] = getpass.getpass,
) -> str:
    """One-time interactive login (code and 2FA prompts); returns who is logged in.

    It also reads the dialog list once so the session caches the channels' access hashes, which
    the daemon needs to read their history by marked id.
    """
    with open_session_path(session_path) as session:
        client = client_factory(str(session.path), api_id, api_hash)
        try:
            await client.start(
                phone=lambda: phone,
                code_callback=lambda: prompt("Telegram login code: "),
                password=lambda: secret_prompt("Telegram 2FA password (input hidden): "),
            )
            me = await client.get_me()
            try:
                await client.get_dialogs()
            except (RPCError, OSError) as exc:
                logger.warning(
                    "could not read the dialog list (%s); the daemon may not find the channels", exc
                )
        finally:
            await client.disconnect()
    name = " ".join(
        part for part in (getattr(me, "first_name", None), getattr(me, "last_name", None)) if part
    )
    return f"logged in as {name or 'user'} (id {getattr(me, 'id', '?')}); session {session.path}"


@dataclass(frozen=True, slots=True)
class ChannelAccess:
    """What ``check_channels`` found for one channel: its title and newest message id, or why not."""

    chat_id: int
    title: str | None = None
    last_message_id: int | None = None
    problem: str | None = None


async def check_channels(client: Any, chat_ids: Sequence[int]) -> list[ChannelAccess]:
    """Resolve each channel through the (connected, authorised) session and read its newest message,
    which is what the daemon's backfill does first. Never raises for one channel's trouble."""
    found: list[ChannelAccess] = []
    for chat_id in chat_ids:
        try:
            entity = await client.get_entity(chat_id)
        except ValueError:
            found.append(
                ChannelAccess(
                    chat_id,
                    problem="not known to this session: join the channel with this account, then run "
                    "`shortfsm login` again (it caches the channels)",
                )
            )
            continue
        except RPCError as exc:
            found.append(ChannelAccess(chat_id, problem=f"refused by Telegram: {type(exc).__name__}"))
            continue
        title = getattr(entity, "title", None)
        try:
            newest = [m async for m in client.iter_messages(entity, limit=1)]
        except RPCError as exc:
            found.append(ChannelAccess(chat_id, title, problem=f"history not readable: {type(exc).__name__}"))
            continue
        found.append(ChannelAccess(chat_id, title, newest[0].id if newest else 0))
    return found
