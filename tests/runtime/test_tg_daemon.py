"""Issue #13, the Telegram listener in the daemon: a session that cannot listen stops ``shortfsm run``
before anything can trade, with the exact remedy; after a good start every loss is reconnected with
a back-off, shown on the board and alerted; backfills read from the engine's cursors of now.

The daemon runs in-process against the simulated venue on a compressed clock (``runtime_kit``) with
a hand-written Telethon client that answers with real Telethon objects and errors; the start
refusals run the real ``shortfsm run`` in a subprocess.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import runtime_kit as kit
from telethon import TelegramClient, events
from telethon.crypto import AuthKey
from telethon.errors import AuthKeyUnregisteredError
from telethon.sessions import SQLiteSession
from telethon.tl import types

from fsm import events as ev
from fsm.ops.cli import main
from fsm.runtime import feeds
from fsm.runtime.daemon import Daemon
from fsm.runtime.feeds import TelegramSource
from fsm.runtime.logs import DecisionLog
from fsm.runtime.store import Store
from telegram_ingest.listener import Backoff, open_session_path

pytestmark = pytest.mark.spec("N-27", "N-28")

ROOT = Path(__file__).resolve().parents[2]
ENTRY, RISK = kit.ENTRY_CHAT, kit.RISK_CHAT
KEYS = {
    "BINANCE_API_KEY": kit.VenueThread.API_KEY,
    "BINANCE_API_SECRET": kit.VenueThread.API_SECRET,
    "TELEGRAM_API_ID": "12345",
    "TELEGRAM_API_HASH": "test-hash",
}


def logged_in_session(path: Path) -> Path:
    """A Telethon session file holding an auth key, as ``shortfsm login`` leaves it."""
    session = SQLiteSession(str(path))
    session.set_dc(2, "149.154.167.51", 443)
    session.auth_key = AuthKey(b"\x01" * 256)
    session.save()
    session.close()
    path.chmod(0o600)
    return path


class FakeClient:
    """The ``TelegramClient`` methods the listener and its supervisor use. ``connect_errors`` are
    raised by the next connects, one each; ``revoked`` answers as Telegram does for a session that
    was terminated (not authorised, ``AuthKeyUnregisteredError`` on reads)."""

    def __init__(self, *, connect_errors: list[Exception] | None = None) -> None:
        self.history: dict[int, list[types.Message]] = {ENTRY: [], RISK: []}
        self.connect_errors = list(connect_errors or [])
        self.connected = False
        self.revoked = False
        self.connects = 0
        self.handlers: list[tuple[Any, Any]] = []
        self.reads: list[tuple[int, int]] = []  # (chat, min_id) of each history read

    def add_event_handler(self, callback: Any, event: Any = None) -> None:
        self.handlers.append((callback, event))

    def remove_event_handler(self, callback: Any, event: Any = None) -> int:
        return 0

    def is_connected(self) -> bool:
        return self.connected

    async def connect(self) -> None:
        self.connects += 1
        if self.connect_errors:
            raise self.connect_errors.pop(0)
        self.connected = True

    async def disconnect(self) -> None:
        self.connected = False

    async def is_user_authorized(self) -> bool:
        return not self.revoked

    def iter_messages(
        self,
        entity: int,
        limit: int | None = None,
        *,
        min_id: int = 0,
        max_id: int = 0,
        reverse: bool = False,
    ) -> AsyncIterator[types.Message]:
        return self._iter(entity, limit, min_id, max_id, reverse)

    async def _iter(
        self, chat: int, limit: int | None, min_id: int, max_id: int, reverse: bool
    ) -> AsyncIterator[types.Message]:
        if self.revoked:
            raise AuthKeyUnregisteredError(request=None)
        self.reads.append((chat, min_id))
        found = [m for m in self.history[chat] if m.id > min_id and (not max_id or m.id < max_id)]
        found.sort(key=lambda m: m.id, reverse=not reverse)
        for msg in found[:limit] if limit is not None else found:
            yield msg

    async def push(self, chat: int, message_id: int, text: str = "hello") -> None:
        """A new channel message, posted and delivered live through the NewMessage handler."""
        msg = types.Message(
            id=message_id, peer_id=types.PeerChannel(int(str(chat)[4:])), date=None, message=text
        )
        self.history[chat].append(msg)
        event = events.NewMessage.build(types.UpdateNewChannelMessage(message=msg, pts=1, pts_count=1))
        event._set_client(TelegramClient(None, 1, "1"))
        (handler,) = [cb for cb, builder in self.handlers if type(builder) is events.NewMessage]
        await handler(event)


async def start(
    venue: kit.Venue, tmp: Path, client: FakeClient, **source: Any
) -> tuple[kit.Run, TelegramSource]:
    config = kit.config_for(tmp)
    store = await Store.open(config.storage.database)
    seen = kit.Seen()
    telegram = TelegramSource(
        session_path=str(logged_in_session(tmp / "telegram.session")),
        api_id=12345,
        api_hash="test-hash",
        chat_ids=(ENTRY, RISK),
        backfill_interval_s=3600,
        quiet_reconnect_s=3600,
        clock=venue.clock,
        client_factory=lambda session, api_id, api_hash: client,
        watchdog_interval_s=1,
        **source,
    )
    daemon = Daemon(
        config=config,
        profile="sim",
        clock=venue.clock,
        store=store,
        endpoints=venue.harness.endpoints(),
        source=telegram,
        decision_log=DecisionLog(config.storage.log_dir),
        heartbeat_path=config.storage.heartbeat_path,
        observer=seen,
    )
    return kit.Run(daemon, asyncio.create_task(daemon.run()), store, seen), telegram


def telegram_alerts(run: kit.Run) -> list[tuple[str, str]]:
    return [(a.severity, a.text) for a in run.daemon.alerts.recent if a.kind == "telegram"]


def received(run: kit.Run, chat: int) -> list[int]:
    return [
        e.message_id for e, _ in run.seen.items if isinstance(e, ev.MessageReceived) and e.chat_id == chat
    ]


# ---------------------------------------------------------------------------------------------
# After a good start: supervised, alerted, on the board
# ---------------------------------------------------------------------------------------------


def test_telegram_failing_is_reconnected_with_back_off_alerted_and_shown_on_the_board(tmp_path: Path) -> None:
    async def scenario() -> None:
        errors: list[Exception] = [
            OSError("network unreachable"),  # the check at start: a warning, the daemon starts
            ConnectionError("Connection to Telegram failed 5 time(s)"),
            OSError("network unreachable"),
            TimeoutError(),
            RuntimeError("unexpected Telethon failure"),
        ]
        client = FakeClient(connect_errors=errors)
        async with kit.Venue(kit.W55_PATH, speed=20) as venue:
            run, source = await start(venue, tmp_path, client, down_alert_s=5)
            daemon = run.daemon
            await kit.wait_until(lambda: daemon.streams["telegram"] == "reconnecting")
            await kit.wait_until(
                lambda: kit.board(tmp_path).get("streams", {}).get("telegram") == "reconnecting"
            )
            await kit.wait_until(lambda: daemon.streams["telegram"] == "up")
            await kit.wait_until(lambda: len(telegram_alerts(run)) == 2)
            # back-off on the run's clock: 1, 2, 4, 8 s between the four failed attempts and the fifth
            assert client.connects == 6
            assert source.attempts == 5
            (down, back) = telegram_alerts(run)
            assert down == (
                "critical",
                "Telegram down for 5 s (TimeoutError): no signal or risk message is seen "
                "until it is back; reconnecting",
            )
            assert back[0] == "info"
            assert re.fullmatch(
                r"Telegram is back after 1[4-6] s down; the messages missed meanwhile are read from the "
                r"channels' history",
                back[1],
            ), back[1]
            await client.push(RISK, 1)
            await kit.wait_until(lambda: received(run, RISK) == [1])
            await kit.wait_until(lambda: kit.board(tmp_path).get("streams", {}).get("telegram") == "up")
            assert await run.stop() == 0
            assert daemon.streams["telegram"] == "down"
            await source.close()

    kit.run(scenario(), timeout=30)


def test_a_revoked_session_alerts_at_once_with_the_remedy_and_keeps_retrying(tmp_path: Path) -> None:
    async def scenario() -> None:
        client = FakeClient()
        async with kit.Venue(kit.W55_PATH, speed=20) as venue:
            run, source = await start(venue, tmp_path, client, backoff=Backoff(initial_s=1, cap_s=2))
            daemon = run.daemon
            await kit.wait_until(lambda: daemon.streams["telegram"] == "up")
            client.revoked = True  # terminated from another device
            client.connected = False
            await kit.wait_until(lambda: daemon.streams["telegram"] == "down")
            assert telegram_alerts(run) == [
                (
                    "critical",
                    "Telegram session refused: Telegram refused the session (AuthKeyUnregisteredError): "
                    f"run `shortfsm login --session {tmp_path / 'telegram.session'}`; no signal is seen "
                    "until then",
                )
            ]
            connects = client.connects
            await kit.wait_until(lambda: client.connects >= connects + 3)  # still retrying, alerted once
            assert len(telegram_alerts(run)) == 1
            assert daemon.streams["telegram"] == "down"
            client.revoked = False
            await kit.wait_until(lambda: daemon.streams["telegram"] == "up")
            await kit.wait_until(lambda: len(telegram_alerts(run)) == 2)
            assert telegram_alerts(run)[1][0] == "info"
            assert await run.stop() == 0
            await source.close()

    kit.run(scenario(), timeout=30)


class CrashingSource:
    """A Telegram source whose ``run`` raises ``crashes`` times, then runs until stopped."""

    kind = "telegram"
    finished = False

    def __init__(self, crashes: int) -> None:
        self.crashes = crashes
        self.runs = 0
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self, deliver: Any, cursors: Any) -> None:
        self.runs += 1
        if self.runs <= self.crashes:
            raise RuntimeError(f"crash {self.runs}")
        await self._stop.wait()


def test_a_telegram_source_that_crashes_is_started_again_not_left_stopped(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with kit.Venue(kit.W55_PATH, speed=20) as venue:
            config = kit.config_for(tmp_path)
            store = await Store.open(config.storage.database)
            source = CrashingSource(crashes=2)
            daemon = Daemon(
                config=config,
                profile="sim",
                clock=venue.clock,
                store=store,
                endpoints=venue.harness.endpoints(),
                source=source,
                decision_log=DecisionLog(config.storage.log_dir),
            )
            run = kit.Run(daemon, asyncio.create_task(daemon.run()), store, kit.Seen())
            await kit.wait_until(lambda: source.runs == 3)
            assert daemon.streams["telegram"] == "up"
            assert telegram_alerts(run) == [
                ("critical", "telegram source failed (RuntimeError: crash 1); restarting it in 1 s"),
                ("critical", "telegram source failed (RuntimeError: crash 2); restarting it in 2 s"),
            ]
            assert await run.stop() == 0
            assert daemon.streams["telegram"] == "down"

    kit.run(scenario(), timeout=30)


# ---------------------------------------------------------------------------------------------
# Backfill from the engine's cursors of now (item 10)
# ---------------------------------------------------------------------------------------------


def test_a_reconnect_backfill_after_more_messages_than_the_dedupe_set_holds_re_delivers_none(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        client = FakeClient()
        async with kit.Venue(kit.W55_PATH, speed=20) as venue:
            run, source = await start(venue, tmp_path, client, dedupe_size=8)
            daemon = run.daemon
            await kit.wait_until(lambda: daemon.streams["telegram"] == "up")
            for message_id in range(1, 21):  # 20 messages: the dedupe set has forgotten 1..12
                await client.push(ENTRY, message_id)
            await kit.wait_until(lambda: daemon.engine.cursors.get(ENTRY) == 20)
            reads = len(client.reads)
            client.connected = False  # the connection drops; the watchdog reconnects and backfills
            await kit.wait_until(lambda: len(client.reads) >= reads + 2)
            assert client.reads[reads:] == [(ENTRY, 20), (RISK, 0)]
            await client.push(ENTRY, 21)
            await kit.wait_until(lambda: 21 in received(run, ENTRY))
            assert received(run, ENTRY) == list(range(1, 22))  # each message once
            assert kit.logs(run.seen, "message_dropped") == []
            assert await run.stop() == 0
            await source.close()

    kit.run(scenario(), timeout=30)


# ---------------------------------------------------------------------------------------------
# At start: refused before anything can trade, with the exact remedy
# ---------------------------------------------------------------------------------------------


def _run_cli(tmp: Path, venue: kit.VenueThread, session: Path) -> subprocess.CompletedProcess[str]:
    config = kit.write_config(tmp, venue.config_text() + f"telegram:\n  session_path: {session}\n")
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp), "PYTHONPATH": str(ROOT), **KEYS}
    return subprocess.run(
        [sys.executable, "-m", "fsm.ops.cli", "run", "--profile", "demo", "--config", str(config)],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _refused(result: subprocess.CompletedProcess[str], venue: kit.VenueThread, line: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == line
    assert not [path for _, path in venue.venue.requests if "order" in path.lower()]
    assert not venue.exchange.orders and not venue.exchange.algos


@pytest.fixture
def venue() -> Any:
    with kit.VenueThread() as running:
        running.add_route("GET", "/sapi/v1/account/apiRestrictions", {"enableWithdrawals": False})
        yield running


def test_run_without_a_session_file_stops_with_the_login_command(
    tmp_path: Path, venue: kit.VenueThread
) -> None:
    session = tmp_path / "var" / "telegram.session"
    result = _run_cli(tmp_path, venue, session)
    _refused(
        result,
        venue,
        f"shortfsm: Telegram session {session} does not exist: run `shortfsm login --session {session}`",
    )
    assert not session.exists()  # a refused start creates nothing


def test_run_with_a_session_never_logged_in_stops_with_the_login_command(
    tmp_path: Path, venue: kit.VenueThread
) -> None:
    session = tmp_path / "telegram.session"
    SQLiteSession(str(session)).save()  # created, never logged in: no auth key
    result = _run_cli(tmp_path, venue, session)
    _refused(
        result,
        venue,
        f"shortfsm: Telegram session {session} is not logged in (no auth key): "
        f"run `shortfsm login --session {session}`",
    )


def test_run_with_a_session_held_by_another_process_names_its_pid(
    tmp_path: Path, venue: kit.VenueThread
) -> None:
    session = logged_in_session(tmp_path / "telegram.session")
    with open_session_path(session):  # this test process holds it, as a running daemon would
        result = _run_cli(tmp_path, venue, session)
    _refused(
        result,
        venue,
        f"shortfsm: Telegram session {session} is held by process {os.getpid()}: stop it first "
        "(a session must never be used by two processes at once)",
    )


class NotLoggedIn:
    """Telegram's answer for a session whose auth key it no longer knows as a user."""

    def __init__(self, session: str, api_id: int, api_hash: str) -> None:
        self.calls: list[str] = []

    async def connect(self) -> None:
        self.calls.append("connect")

    async def is_user_authorized(self) -> bool:
        return False

    async def disconnect(self) -> None:
        self.calls.append("disconnect")


def test_run_with_a_session_telegram_does_not_accept_stops_with_the_login_command(
    tmp_path: Path,
    venue: kit.VenueThread,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    made: list[NotLoggedIn] = []

    def factory(session: str, api_id: int, api_hash: str) -> NotLoggedIn:
        made.append(NotLoggedIn(session, api_id, api_hash))
        return made[-1]

    monkeypatch.setattr(feeds, "telegram_client_factory", factory)
    for name, value in KEYS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    session = logged_in_session(tmp_path / "telegram.session")
    config = kit.write_config(tmp_path, venue.config_text() + f"telegram:\n  session_path: {session}\n")
    assert main(["run", "--profile", "demo", "--config", str(config)]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"shortfsm: the Telegram session is not logged in: run `shortfsm login --session {session}` first"
    )
    assert [c.calls[0] for c in made] == ["connect"] and made[0].calls[-1] == "disconnect"
    assert not venue.exchange.orders
    with open_session_path(session):  # the refused run released the session
        pass
