"""Issue #13, the listener part: FloodWait never holds a live message, a lost connection is retried
with a capped back-off and reported, a session Telegram refuses ends ``run`` (only a login helps),
and the session file's problems are named offline with the exact remedy.

Handlers get real Telethon events (``NewMessage.build``) and real Telethon errors; history reads go
through ``FakeTelegram`` from ``test_tg_listener``. Sleeps are injected: nothing here waits.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from telethon.crypto import AuthKey
from telethon.errors import AuthKeyUnregisteredError
from telethon.sessions import SQLiteSession
from test_tg_listener import (
    ENTRY,
    ENTRY_PEER,
    RISK,
    RISK_PEER,
    Clock,
    Cursors,
    FakeTelegram,
    Sink,
    make,
    message,
    new_message_event,
)

from telegram_ingest.listener import (
    Backoff,
    ListenerConfig,
    SessionLocked,
    TelegramListener,
    open_session_path,
    session_problem,
)

pytestmark = pytest.mark.spec("N-27")


class GatedSleep:
    """A sleep that blocks until the test opens the gate (a FloodWait in progress)."""

    def __init__(self) -> None:
        self.calls: list[float] = []
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        self.entered.set()
        await self.gate.wait()


def test_backoff_doubles_from_1_s_to_a_60_s_cap() -> None:
    assert [Backoff().delay(n) for n in range(9)] == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert Backoff().delay(10_000) == 60


# -- FloodWait never holds the delivery of live messages ------------------------------------------


def test_a_live_message_is_delivered_at_once_while_a_backfill_sleeps_on_flood_wait() -> None:
    async def scenario() -> None:
        client = FakeTelegram({ENTRY: list(range(1001, 1101)), RISK: [7]})
        client.flood_after[ENTRY] = (40, 300)  # 40 messages, then FloodWait of 300 s
        sleep, clock, sink = GatedSleep(), Clock(), Sink()
        listener = TelegramListener(
            client,
            chat_ids=(ENTRY, RISK),
            cursors=Cursors(entry=1000, risk=7),
            on_raw=sink,
            clock=clock,
            sleep=sleep,
        )
        backfill = asyncio.create_task(listener.backfill(reason="periodic"))
        await asyncio.wait_for(sleep.entered.wait(), 1)
        assert sleep.calls == [300] and sink.ids(ENTRY) == list(range(1001, 1041))
        reads = len(client.reads)
        # A risk message and an entry-channel message arrive during the 300 s wait: both now.
        client.post(RISK, 8)
        await asyncio.wait_for(listener.handle_new_message(new_message_event(message(RISK_PEER, 8))), 1)
        client.post(ENTRY, 1101)
        await asyncio.wait_for(listener.handle_new_message(new_message_event(message(ENTRY_PEER, 1101))), 1)
        assert sink.ids()[-2:] == [8, 1101]
        assert len(client.reads) == reads  # no gap read while Telegram says wait
        sleep.gate.set()
        assert await asyncio.wait_for(backfill, 1) == 40 + 60
        assert sink.ids(ENTRY) == [*range(1001, 1041), 1101, *range(1041, 1101)]
        assert [(lo, hi) for chat, lo, hi in client.reads if chat == ENTRY] == [(1000, 0), (1040, 0)]

    asyncio.run(scenario())


def test_a_gap_read_refused_with_flood_wait_delivers_the_live_message_without_waiting() -> None:
    async def scenario() -> None:
        client = FakeTelegram({ENTRY: [5]})
        listener, sink, sleeper, _ = make(client, Cursors(entry=5, risk=1))
        await listener.start()
        for message_id in (6, 7, 8, 9):
            client.post(ENTRY, message_id)
        client.flood_after[ENTRY] = (0, 120)
        await listener.handle_new_message(new_message_event(message(ENTRY_PEER, 9)))
        assert sink.ids(ENTRY) == [9]
        assert sleeper.calls == []
        assert client.reads[-1] == (ENTRY, 5, 9)

    asyncio.run(scenario())


# -- a lost connection: back-off and state ---------------------------------------------------------


def test_watchdog_reconnects_with_a_capped_back_off_and_reports_its_state() -> None:
    async def scenario() -> None:
        client = FakeTelegram({ENTRY: [1], RISK: [1]})
        states: list[tuple[str, str]] = []
        clock, sink = Clock(), Sink()

        async def no_sleep(seconds: float) -> None:
            return None

        listener = TelegramListener(
            client,
            chat_ids=(ENTRY, RISK),
            cursors=Cursors(entry=1, risk=1),
            on_raw=sink,
            config=ListenerConfig(reconnect_backoff=Backoff(initial_s=1, cap_s=4)),
            clock=clock,
            sleep=no_sleep,
            on_state=lambda state, detail: states.append((state, detail)),
        )
        await listener.start()
        client.connected = False
        client.connect_error = ConnectionError("Connection to Telegram failed 5 time(s)")
        attempts_at: list[int] = []
        start = clock.now_ms
        for _ in range(16):  # 16 s of watchdog steps, one a second
            before = client.connects
            await listener.check()
            if client.connects > before:
                attempts_at.append(clock.now_ms - start)
            clock.now_ms += 1000
        # retries after 1, 2, 4, then 4 s (the cap)
        assert attempts_at == [0, 1000, 3000, 7000, 11000, 15000]
        client.connect_error = None
        client.post(ENTRY, 2)
        while client.connects == 6:
            await listener.check()
            clock.now_ms += 1000
        assert sink.ids(ENTRY) == [2]
        assert [s for s, _ in states] == ["reconnecting"] * 8 + ["up"]  # lost, then each of 7 attempts
        assert states[0] == ("reconnecting", "the connection to Telegram was lost")

    asyncio.run(scenario())


def test_a_session_telegram_revoked_ends_run_instead_of_a_warning_per_backfill() -> None:
    class Revoked(FakeTelegram):
        revoked = False

        def iter_messages(self, entity, limit=None, **kwargs):  # type: ignore[no-untyped-def]
            if self.revoked:
                raise AuthKeyUnregisteredError(request=None)
            return super().iter_messages(entity, limit, **kwargs)

    async def scenario() -> None:
        client = Revoked({ENTRY: [1], RISK: [1]})
        steps: list[float] = []

        async def sleep(seconds: float) -> None:
            steps.append(seconds)
            client.revoked = True
            await asyncio.sleep(0)  # before the fix, ``run`` looped here and never ended

        listener = TelegramListener(
            client,
            chat_ids=(ENTRY, RISK),
            cursors=Cursors(entry=1, risk=1),
            on_raw=Sink(),
            config=ListenerConfig(backfill_interval_s=0),
            sleep=sleep,
        )
        with pytest.raises(AuthKeyUnregisteredError):
            await asyncio.wait_for(listener.run(), 1)
        assert steps == [5.0]

    asyncio.run(scenario())


# -- the session file, offline --------------------------------------------------------------------


def logged_in_session(path: Path) -> Path:
    """A Telethon session file holding an auth key, as ``shortfsm login`` leaves it."""
    session = SQLiteSession(str(path))
    session.set_dc(2, "149.154.167.51", 443)
    session.auth_key = AuthKey(b"\x01" * 256)
    session.save()
    session.close()
    return path


def test_session_problems_are_named_offline_with_the_exact_login_command(tmp_path: Path) -> None:
    missing = tmp_path / "var" / "telegram.session"
    assert session_problem(missing) == (
        f"Telegram session {missing} does not exist: run `shortfsm login --session {missing}`"
    )
    empty = tmp_path / "empty.session"
    empty.write_bytes(b"")
    assert session_problem(empty) == (
        f"Telegram session {empty} is not logged in (empty file): run `shortfsm login --session {empty}`"
    )
    never = tmp_path / "never.session"
    SQLiteSession(str(never)).save()
    assert session_problem(tmp_path / "never") == (
        f"Telegram session {never} is not logged in (no auth key): run `shortfsm login --session {never}`"
    )
    junk = tmp_path / "junk.session"
    junk.write_bytes(b"not sqlite" * 200)
    assert session_problem(junk) == (
        f"Telegram session {junk} is not a Telethon session (file is not a database): "
        f"run `shortfsm login --session {junk}`"
    )
    assert session_problem(logged_in_session(tmp_path / "ok.session")) is None


def test_a_locked_session_names_the_pid_holding_it(tmp_path: Path) -> None:
    path = logged_in_session(tmp_path / "telegram.session")
    with open_session_path(path), pytest.raises(SessionLocked) as raised:
        open_session_path(path)
    assert raised.value.pid == os.getpid()
    assert str(raised.value) == (
        f"Telegram session {path} is in use by another process (pid {os.getpid()}, lock {path}.lock is "
        "held); stop that process first: one session file must never be opened by two processes"
    )
