"""``shortfsm export``: both channels' history, read through the logged-in session, as a replay feed.

Theory of operation: for each configured channel (entry, then risk) the history from the UTC
midnight that starts ``--since`` to the UTC midnight that ends ``--until`` (exclusive; default: now)
is read oldest first with ``iter_messages(chat, reverse=True, ...)`` and appended to FILE as feed
lines (``telegram_ingest.replay``). ``at_ms`` is the offset from the ``--since`` midnight, so a replay
whose clock starts at that midnight delivers every message at its Telegram time. Each line is
written and flushed before the next message is read: FILE is always a usable prefix of the export.

- Resume: a run first drops a torn last line (whatever follows the last newline: a cut write), then
  takes the highest message id already in FILE per channel and reads only after it, so re-running
  an interrupted export with the same arguments finishes it without duplicates.
- FloodWait: Telegram's wait (plus one second) is slept through the injected ``sleep`` and the read
  goes on after the last id read. Other Telegram errors and disconnects are retried after the
  delays of ``RETRY_DELAYS_S``; then the run stops with one line and FILE stays resumable.
- The first read of a channel starts from a date (``offset_date``), every later one from an id
  (``min_id``), never both: Telethon gives the id priority and Telegram does not document what it
  does with both. The date is one second early and the range is checked here, because Telethon
  documents ``offset_date`` as exclusive but hands it to Telegram unchanged in reverse mode.
- One writer per FILE: the run holds ``flock`` on ``FILE.lock`` from start to end; a second export
  to the same FILE stops at once with one line (two appenders would each resume from the same
  highest id and write every later message twice).
- Order: ids normally rise with dates. An id lower than one already read this run (Telegram gave
  them out of order) is still written, once: dropping it would lose a message, and resume stays
  right because it starts after the highest id FILE holds, which the late one is not. (A run cut
  between a high id and a lower one that follows it does lose the lower one on resume: unavoidable
  with "after the highest id", and not seen in practice.) A message dated at or after ``--until`` does
  not end the channel's read at once: up to ``UNTIL_LOOKAHEAD`` more messages are read, and any
  inside the window among them are written; that many in a row past ``--until`` end the read.
- A FloodWait over ``FLOOD_WAIT_CAP_S`` is not slept through: the run stops with one line, resumable.
- Edited messages: history holds a message's current text. The daemon ignores lines marked
  ``edited`` (N-27: an edit event is never acted on), but a message edited after it was sent is
  still the message the daemon acted on live; it is written as a message (no ``edited``) with
  ``edit_date_ms`` saying its text is the edited one. Its original text is not in the history.

Telethon is imported only when the command runs (``shortfsm --version`` stays fast), and the client
is reached through ``HistoryClient`` so tests drive the export with a double.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, TextIO, TypeGuard

from fsm.runtime.config import ConfigError, env_file_for, load_cli_config, load_secrets
from fsm.runtime.ledger import parse_day  # the day format of `shortfsm trades --since`
from telegram_ingest.adapter import RawMessage
from telegram_ingest.replay import feed_line

EXIT_FAILED = 1  # Telegram kept failing, a channel is unreadable, interrupted: FILE is resumable
EXIT_USAGE = 2  # a bad day, --config, secret or FILE that belongs to another export
EXIT_NO_SESSION = 3  # no logged-in session: `shortfsm login`
DEFAULT_OUT = "var/feed-export.jsonl"  # beside the config file, like the daemon's var/
DAY_MS = 86_400_000
# Waits before the 2nd..6th attempt after a Telegram error or disconnect; a message read resets them.
RETRY_DELAYS_S = (1.0, 2.0, 4.0, 8.0, 16.0)
PROG = "shortfsm export"
UNTIL_LOOKAHEAD = 50  # messages read past --until before a channel's read ends (see the docstring)
FLOOD_WAIT_CAP_S = 3600  # a longer FloodWait stops the run (resumable) instead of sleeping
TELEGRAM_START = "2013-08-14"  # Telegram's launch: no channel history before it

ClientFactory = Callable[[str, int, str], Any]  # (session path, api id, api hash) -> client
Sleep = Callable[[float], Awaitable[None]]


class HistoryClient(Protocol):
    """The part of ``telethon.TelegramClient`` the export uses (tests provide a double)."""

    def is_connected(self) -> bool: ...

    def connect(self) -> Awaitable[Any]: ...

    def iter_messages(
        self,
        entity: Any,
        limit: int | None = None,
        *,
        offset_date: datetime | None = None,
        min_id: int = 0,
        reverse: bool = False,
    ) -> AsyncIterator[Any]: ...


class ExportFailed(RuntimeError):
    """The export stopped early (one line); FILE holds everything read so far."""


class SessionRefused(RuntimeError):
    """Telegram refuses the session (not logged in, revoked): only `shortfsm login` helps."""


class FileBusy(ExportFailed):
    """Another export is writing FILE (it holds ``FILE.lock``)."""


class ForeignFile(ValueError):
    """FILE holds lines that are not an export with this ``--since``: appending would mix two feeds."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Window:
    """The UTC days to export: ``since_ms`` inclusive, ``until_ms`` exclusive (None: up to now)."""

    since_ms: int
    until_ms: int | None = None

    @property
    def first_offset(self) -> datetime:
        """``offset_date`` of a channel's first read: one second early (Telegram dates are whole seconds)."""
        return datetime.fromtimestamp(self.since_ms / 1000, tz=UTC) - timedelta(seconds=1)


def parse_window(since: str, until: str | None) -> Window:
    """The window of ``--since``/``--until``; ValueError with the one line to show."""
    try:
        since_ms = parse_day(since)
    except (ValueError, OverflowError):
        raise ValueError(f"--since wants a day as YYYY-MM-DD, not {since!r}") from None
    if since_ms < parse_day(TELEGRAM_START):
        raise ValueError(f"--since {since} is before Telegram existed ({TELEGRAM_START})")
    if until is None:
        return Window(since_ms=since_ms)
    try:
        until_ms = parse_day(until) + DAY_MS
    except (ValueError, OverflowError):
        raise ValueError(f"--until wants a day as YYYY-MM-DD, not {until!r}") from None
    if until_ms <= since_ms:
        raise ValueError(f"--until {until} is before --since {since}")
    return Window(since_ms=since_ms, until_ms=until_ms)


@dataclass(slots=True)
class ChatTally:
    """What one run exported from one channel."""

    chat_id: int
    resumed_after: int = 0  # the highest id FILE already held for this channel
    written: int = 0
    skipped: int = 0  # no text: media without caption, service messages
    first_ms: int | None = None
    last_ms: int | None = None

    def wrote(self, date_ms: int) -> None:
        self.written += 1
        self.first_ms = date_ms if self.first_ms is None else self.first_ms
        self.last_ms = date_ms

    def summary(self) -> str:
        line = f"chat {self.chat_id}: {self.written} messages, {self.skipped} skipped (no text)"
        if self.first_ms is not None and self.last_ms is not None:
            line += f", {_utc(self.first_ms)} .. {_utc(self.last_ms)} UTC"
        if self.resumed_after:
            line += f" (resumed after message {self.resumed_after})"
        return line


def complete_length(path: Path) -> int:
    """How many bytes of ``path`` are complete lines: up to its last newline. What follows is a
    write that was cut (the export writes each line with its newline in one call)."""
    with open(path, "rb") as handle:
        end = handle.seek(0, 2)
        while end > 0:
            start = max(0, end - 65536)
            handle.seek(start)
            newline = handle.read(end - start).rfind(b"\n")
            if newline >= 0:
                return start + newline + 1
            end = start
        return 0


def written_highs(path: Path, window: Window, end: int) -> dict[int, int]:
    """The highest message id per chat in the first ``end`` bytes of ``path`` (complete lines).
    Raises ``ForeignFile`` when a line was not exported with ``window.since_ms`` (its
    ``date_ms - at_ms`` says which ``--since`` it had)."""
    highs: dict[int, int] = {}
    read = 0
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            read += len(line)
            if read > end:
                break
            stripped = line.decode("utf-8", "replace").strip()
            if not stripped or stripped.startswith("#"):
                continue
            try:
                payload = json.loads(stripped)
            except json.JSONDecodeError:
                continue  # load_feed skips it too; it says nothing about where to resume
            if not isinstance(payload, dict):
                continue
            chat, message_id = payload.get("chat_id"), payload.get("message_id")
            at_ms, date_ms = payload.get("at_ms"), payload.get("date_ms")
            if not (_is_int(chat) and _is_int(message_id) and _is_int(at_ms)):
                continue
            if not _is_int(date_ms):
                raise ForeignFile(
                    f"{path} is not a `shortfsm export` file (line {number} has no date_ms): "
                    "choose another --out"
                )
            if date_ms - at_ms != window.since_ms:
                raise ForeignFile(
                    f"{path} was exported with --since {_day(date_ms - at_ms)}, not "
                    f"{_day(window.since_ms)}: run with that --since to finish it, or choose another --out"
                )
            highs[chat] = max(highs.get(chat, 0), message_id)
    return highs


def message_line(message: Any, chat_id: int, date_ms: int, window: Window) -> str | None:
    """The feed line of one history message of ``chat_id`` sent at ``date_ms``; None when it has
    no text (media without caption, service messages such as pins)."""
    from telethon.tl import types

    if not isinstance(message, types.Message):
        return None
    text = message.message if isinstance(message.message, str) else ""
    if not text.strip():
        return None
    raw = RawMessage(
        chat_id=chat_id, message_id=message.id, date_ms=date_ms, text=text, received_at_ms=date_ms
    )
    edit_date = message.edit_date
    # edit_hide: Telegram shows the message as not edited (e.g. only a bot keyboard changed).
    edited_ms = _ms(edit_date) if isinstance(edit_date, datetime) and not message.edit_hide else None
    return feed_line(raw, window.since_ms, edit_date_ms=edited_ms)


async def export_history(
    client: HistoryClient,
    chats: Sequence[int],
    window: Window,
    out: Path,
    *,
    sleep: Sleep,
    err: TextIO,
    retry_delays: Sequence[float] = RETRY_DELAYS_S,
) -> list[ChatTally]:
    """Append every channel's messages in ``window`` that ``out`` does not hold yet; one tally per chat.
    Raises ``FileBusy`` when another export holds ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = _lock_out(out)
    try:
        return await _export_locked(
            client, chats, window, out, sleep=sleep, err=err, retry_delays=retry_delays
        )
    finally:
        lock.close()  # closing drops the flock


def _lock_out(out: Path) -> TextIO:
    import fcntl

    handle = open(str(out) + ".lock", "a+", encoding="utf-8")  # noqa: SIM115 - held for the run
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "?"
        handle.close()
        raise FileBusy(f"{out} is being written by another shortfsm export (pid {holder})") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


async def _export_locked(
    client: HistoryClient,
    chats: Sequence[int],
    window: Window,
    out: Path,
    *,
    sleep: Sleep,
    err: TextIO,
    retry_delays: Sequence[float],
) -> list[ChatTally]:
    highs: dict[int, int] = {}
    if out.exists():
        complete = complete_length(out)
        highs = written_highs(out, window, complete)  # a foreign file is refused before it is touched
        dropped = out.stat().st_size - complete
        if dropped:
            with open(out, "rb+") as handle:
                handle.truncate(complete)
            _say(err, f"{out}: dropped a partial last line ({dropped} bytes) left by an interrupted run")
    tallies: list[ChatTally] = []
    with open(out, "a", encoding="utf-8", newline="\n") as handle:
        for chat in dict.fromkeys(chats):
            tally = ChatTally(chat, resumed_after=highs.get(chat, 0))
            tallies.append(tally)
            await _export_chat(client, chat, window, tally, handle, sleep=sleep, err=err, retry=retry_delays)
    return tallies


async def _export_chat(
    client: HistoryClient,
    chat: int,
    window: Window,
    tally: ChatTally,
    handle: TextIO,
    *,
    sleep: Sleep,
    err: TextIO,
    retry: Sequence[float],
) -> None:
    from telethon.errors import (
        BadRequestError,
        FloodPremiumWaitError,
        FloodWaitError,
        ForbiddenError,
        NotFoundError,
        RPCError,
    )

    from telegram_ingest.listener import SessionUnusable

    after = tally.resumed_after  # the highest id read (written or skipped)
    seen: set[int] = set()  # ids read this run: a late (lower) id is written once, a repeat never
    late = 0  # messages in a row dated at or after --until
    failures = 0
    while True:
        try:
            if not client.is_connected():
                await client.connect()
            history = client.iter_messages(
                chat, reverse=True, min_id=after, offset_date=None if after else window.first_offset
            )
            async for message in history:
                message_id = getattr(message, "id", None)
                if not _is_int(message_id) or message_id <= tally.resumed_after or message_id in seen:
                    continue
                seen.add(message_id)
                after = max(after, message_id)
                date = getattr(message, "date", None)
                date_ms = _ms(date) if isinstance(date, datetime) else None
                if date_ms is not None and window.until_ms is not None and date_ms >= window.until_ms:
                    late += 1
                    if late >= UNTIL_LOOKAHEAD:
                        return  # that many in a row past --until: the rest is later still
                    continue
                late = 0
                if date_ms is None:  # cannot be placed on the replay's clock
                    tally.skipped += 1
                elif date_ms >= window.since_ms:  # (the first read starts one second early)
                    line = message_line(message, chat, date_ms, window)
                    if line is None:
                        tally.skipped += 1
                    else:
                        handle.write(line + "\n")
                        handle.flush()
                        tally.wrote(date_ms)
                failures = 0
            return
        except (FloodWaitError, FloodPremiumWaitError) as exc:
            wait = int(exc.seconds) + 1
            if wait > FLOOD_WAIT_CAP_S:
                raise ExportFailed(
                    f"chat {chat}: Telegram asks to wait {wait} s (over {FLOOD_WAIT_CAP_S} s); {handle.name} "
                    "holds everything read so far: run the same command again later to resume"
                ) from None
            _say(err, f"waiting {wait} s (Telegram flood limit)")
            await sleep(wait)
        except SessionUnusable as exc:
            raise SessionRefused(
                f"Telegram refused the session ({type(exc).__name__}): run `shortfsm login` again"
            ) from None
        except ValueError as exc:  # Telethon cannot resolve the chat (or gave up on a request)
            raise ExportFailed(
                f"chat {chat} cannot be read ({_describe(exc)}): is the account a member? join the "
                "channel, then run `shortfsm login` again (it caches the channels)"
            ) from None
        except (BadRequestError, ForbiddenError, NotFoundError) as exc:  # asking again cannot help
            raise ExportFailed(f"chat {chat}: Telegram refused to read it ({_describe(exc)})") from None
        except (OSError, EOFError, RPCError) as exc:
            if failures >= len(retry):
                raise ExportFailed(
                    f"chat {chat}: Telegram failed {failures + 1} times in a row ({_describe(exc)}); "
                    f"{handle.name} holds everything read so far: run the same command again to resume"
                ) from None
            delay = retry[failures]
            failures += 1
            _say(err, f"chat {chat}: {_describe(exc)}; retrying in {delay:g} s")
            await sleep(delay)


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------


def register(subparsers: Any) -> None:
    """Add the ``export`` subcommand to an argparse subparsers object."""
    export = subparsers.add_parser(
        "export",
        help="write both channels' history as a replay feed (JSONL)",
        description="Read the entry and risk channels' history (telegram.entry_chat_id, risk_chat_id) "
        "through the session `shortfsm login` wrote and append it to FILE as the JSONL feed a replay "
        "reads (at_ms counted from the --since midnight, UTC). Messages without text are skipped. An "
        "existing FILE is resumed after its last message per channel, so an interrupted export finishes "
        "when run again with the same arguments. The session must not be in use (stop the daemon "
        f"first). Exit 0 done, {EXIT_FAILED} stopped early (FILE resumable), {EXIT_USAGE} bad option, "
        f"config or FILE, {EXIT_NO_SESSION} no logged-in session.",
    )
    export.add_argument("--since", required=True, metavar="YYYY-MM-DD", help="first UTC day to export")
    export.add_argument(
        "--until", metavar="YYYY-MM-DD", help="last UTC day to export, included (default: up to now)"
    )
    export.add_argument(
        "--out",
        metavar="FILE",
        help=f"the feed to write or resume (default: {DEFAULT_OUT} beside the config)",
    )
    export.add_argument(
        "--config",
        default=None,
        help="configuration file (default: config.yaml in the working directory; without one, the "
        "built-in defaults and the working directory)",
    )
    export.add_argument("--session", default=None, help="session file (default: telegram.session_path)")
    export.set_defaults(func=cmd_export)


def cmd_export(
    args: argparse.Namespace,
    *,
    client_factory: ClientFactory | None = None,
    sleep: Sleep = asyncio.sleep,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Run the export; one line on stderr (never a traceback) for every way it can stop."""
    err = stderr or sys.stderr
    try:
        window = parse_window(args.since, args.until)
        config, config_path = load_cli_config(args.config, optional=True)
        secrets_ = load_secrets(env_file_for(config_path))
    except (ValueError, ConfigError) as exc:  # ConfigError is a ValueError; its lines joined
        _say(err, f"{PROG}: {str(exc).replace(chr(10), '; ')}")
        return EXIT_USAGE
    out = Path(args.out) if args.out else Path(config_path).absolute().parent / DEFAULT_OUT
    if out.is_dir():
        _say(err, f"{PROG}: --out {out} is a directory")
        return EXIT_USAGE
    chats = (config.telegram.entry_chat_id, config.telegram.risk_chat_id)

    # Telethon only for the command that needs it.
    from telegram_ingest.listener import SessionLocked, open_session_path, session_file, session_problem

    session = session_file(args.session or config.telegram.session_path)
    if not session.exists():
        _say(err, f"{PROG}: {session_problem(session)}")
        return EXIT_NO_SESSION
    api_hash = secrets_.telegram_api_hash.get_secret_value()
    missing = [
        n
        for n, v in (("TELEGRAM_API_ID", secrets_.telegram_api_id), ("TELEGRAM_API_HASH", api_hash))
        if not v
    ]
    if missing:
        _say(err, f"{PROG} needs {', '.join(missing)} in the environment or {env_file_for(config_path)}")
        return EXIT_USAGE
    try:
        lock = open_session_path(session)
    except SessionLocked as exc:
        _say(err, f"{PROG}: {exc}")
        return EXIT_FAILED
    try:
        problem = session_problem(lock.path)
        if problem is not None:
            _say(err, f"{PROG}: {problem}")
            return EXIT_NO_SESSION
        factory = client_factory or _telethon_client
        client = factory(str(lock.path), secrets_.telegram_api_id, api_hash)
        tallies = asyncio.run(_export(client, session, chats, window, out, sleep=sleep, err=err))
    except SessionRefused as exc:
        _say(err, f"{PROG}: {exc}")
        return EXIT_NO_SESSION
    except ForeignFile as exc:
        _say(err, f"{PROG}: {exc}")
        return EXIT_USAGE
    except ExportFailed as exc:
        _say(err, f"{PROG}: {exc}")
        return EXIT_FAILED
    except KeyboardInterrupt:
        _say(err, f"{PROG}: interrupted; {out} holds everything read so far: run the same command to resume")
        return EXIT_FAILED
    except Exception as exc:  # the operator needs the cause, not a traceback
        _say(err, f"{PROG} failed: {_describe(exc)}; {out} is resumable: run the same command again")
        return EXIT_FAILED
    finally:
        lock.release()
    for tally in tallies:
        _say(err, tally.summary())
    print(out, file=stdout or sys.stdout)
    return 0


async def _export(
    client: Any,
    session: Path,
    chats: Sequence[int],
    window: Window,
    out: Path,
    *,
    sleep: Sleep,
    err: TextIO,
) -> list[ChatTally]:
    from telethon.errors import RPCError

    from telegram_ingest.listener import NotAuthorised, SessionUnusable, ensure_authorised

    try:
        try:
            await ensure_authorised(client, session)
        except NotAuthorised as exc:
            raise SessionRefused(str(exc)) from None
        except SessionUnusable as exc:
            raise SessionRefused(
                f"Telegram refused session {session} ({type(exc).__name__}): run `shortfsm login` again"
            ) from None
        except (OSError, EOFError, RPCError) as exc:
            raise ExportFailed(f"cannot reach Telegram ({_describe(exc)}); nothing was read") from None
        return await export_history(client, chats, window, out, sleep=sleep, err=err)
    finally:
        with contextlib.suppress(Exception):  # already down: nothing to release
            await client.disconnect()


def _telethon_client(session: str, api_id: int, api_hash: str) -> Any:
    from telethon import TelegramClient

    # Every FloodWait reaches the export, which says how long it waits (Telethon would sleep silently).
    return TelegramClient(session, api_id, api_hash, flood_sleep_threshold=0)


def _say(stream: TextIO, line: str) -> None:
    stream.write(line + "\n")
    stream.flush()


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _ms(moment: datetime) -> int:
    return round(moment.timestamp() * 1000)


def _utc(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def _day(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d")


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)
