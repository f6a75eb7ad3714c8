"""The Telethon listener: live handler with real Telethon events, backfill and watchdog with a double.

Handlers are driven by events built offline (``NewMessage.build`` + a never-connected client);
history reads go through ``FakeTelegram``, a hand-written double of the client methods the
listener uses. Time and sleep are injected: nothing here waits.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import pytest
from telethon import TelegramClient, events, types
from telethon.errors import FloodWaitError

from telegram_ingest.adapter import RawMessage
from telegram_ingest.listener import ListenerConfig, NotAuthorised, TelegramListener, ensure_authorised

pytestmark = pytest.mark.spec("N-04", "N-27")

ENTRY = -1002171239233
RISK = -1003096527269
ENTRY_PEER = 2171239233
RISK_PEER = 3096527269
DATE = dt.datetime(2026, 2, 1, tzinfo=dt.UTC)
DATE_MS = 1769904000000


def message(peer: int, message_id: int, text: str | None = None) -> types.Message:
    return types.Message(
        id=message_id, peer_id=types.PeerChannel(peer), date=DATE, message=text or f"msg {message_id}"
    )


def new_message_event(msg: types.Message) -> Any:
    event = events.NewMessage.build(types.UpdateNewChannelMessage(message=msg, pts=1, pts_count=1))
    event._set_client(TelegramClient(None, 1, "1"))
    return event


class Cursors:
    def __init__(self, **by_chat: int) -> None:
        self.values = {ENTRY: by_chat.get("entry", 0), RISK: by_chat.get("risk", 0)}

    def get(self, chat_id: int) -> int:
        return self.values.get(chat_id, 0)


class Clock:
    def __init__(self, now_ms: int = 1_000_000) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms


class Sleeper:
    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


class Sink:
    def __init__(self) -> None:
        self.raws: list[RawMessage] = []
        self.fail_ids: set[int] = set()

    async def __call__(self, raw: RawMessage) -> None:
        if raw.message_id in self.fail_ids:
            self.fail_ids.discard(raw.message_id)
            raise RuntimeError("queue closed")
        self.raws.append(raw)

    def ids(self, chat: int | None = None) -> list[int]:
        return [r.message_id for r in self.raws if chat is None or r.chat_id == chat]


class FakeTelegram:
    """History per chat plus scripted FloodWait / unknown-entity failures."""

    def __init__(self, history: dict[int, list[int]] | None = None) -> None:
        self.history: dict[int, list[types.Message]] = {}
        for chat, ids in (history or {}).items():
            for message_id in ids:
                self.post(chat, message_id)
        self.connected = True
        self.handlers: list[tuple[Any, Any]] = []
        self.reads: list[tuple[int, int, int]] = []  # (chat, min_id, max_id) of each history read
        self.flood_after: dict[int, tuple[int, int]] = {}  # chat -> (yield this many, then FloodWait(s))
        self.unknown: set[int] = set()
        self.connects = 0
        self.disconnects = 0
        self.connect_error: Exception | None = None

    def post(self, chat: int, message_id: int) -> None:
        peer = int(str(chat)[4:])
        self.history.setdefault(chat, []).append(message(peer, message_id))

    def add_event_handler(self, callback: Any, event: Any = None) -> None:
        self.handlers.append((callback, event))

    def remove_event_handler(self, callback: Any, event: Any = None) -> int:
        before = len(self.handlers)
        self.handlers = [(cb, ev) for cb, ev in self.handlers if cb != callback]
        return before - len(self.handlers)

    def is_connected(self) -> bool:
        return self.connected

    async def connect(self) -> None:
        self.connects += 1
        if self.connect_error is not None:
            raise self.connect_error
        self.connected = True

    async def disconnect(self) -> None:
        self.disconnects += 1
        self.connected = False

    def iter_messages(
        self,
        entity: Any,
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
        if chat in self.unknown:
            raise ValueError(f"Could not find the input entity for PeerChannel({chat})")
        self.reads.append((chat, min_id, max_id))
        found = [m for m in self.history.get(chat, []) if m.id > min_id and (not max_id or m.id < max_id)]
        found.sort(key=lambda m: m.id, reverse=not reverse)
        if limit is not None:
            found = found[:limit]
        flood = self.flood_after.pop(chat, None)
        for index, msg in enumerate(found):
            if flood is not None and index == flood[0]:
                raise FloodWaitError(request=None, capture=flood[1])
            yield msg


def make(
    client: FakeTelegram, cursors: Cursors, *, clock: Clock | None = None, **config: Any
) -> tuple[TelegramListener, Sink, Sleeper, Clock]:
    sink, sleeper, clock = Sink(), Sleeper(), clock or Clock()
    listener = TelegramListener(
        client,
        chat_ids=(ENTRY, RISK),
        cursors=cursors,
        on_raw=sink,
        config=ListenerConfig(**config),
        clock=clock,
        sleep=sleeper,
    )
    return listener, sink, sleeper, clock


# -- live handler with real Telethon events -------------------------------------------------------


def test_live_new_message_event_is_forwarded_as_raw_message() -> None:
    async def scenario() -> None:
        listener, sink, _, clock = make(FakeTelegram(), Cursors(entry=41))
        await listener.handle_new_message(
            new_message_event(message(ENTRY_PEER, 42, "🔥 실시간 주도 마켓 분석 (btc)"))
        )
        assert sink.raws == [
            RawMessage(
                chat_id=ENTRY,
                message_id=42,
                date_ms=DATE_MS,
                text="🔥 실시간 주도 마켓 분석 (btc)",
                received_at_ms=clock.now_ms,
            )
        ]

    asyncio.run(scenario())


def test_foreign_chat_is_ignored_n04() -> None:
    async def scenario() -> None:
        listener, sink, _, _ = make(FakeTelegram(), Cursors())
        await listener.handle_new_message(new_message_event(message(1234567890, 5)))
        assert sink.raws == []

    asyncio.run(scenario())


def test_same_live_event_twice_is_delivered_once() -> None:
    async def scenario() -> None:
        listener, sink, _, _ = make(FakeTelegram(), Cursors())
        event = new_message_event(message(RISK_PEER, 9, "🥈 Binance : BTCUSDT.P 에서 숏 리스크관리 권장"))
        await listener.handle_new_message(event)
        await listener.handle_new_message(event)
        assert sink.ids() == [9]

    asyncio.run(scenario())


def test_edited_message_is_logged_and_ignored_n27() -> None:
    async def scenario() -> None:
        listener, sink, _, _ = make(FakeTelegram(), Cursors())
        msg = message(ENTRY_PEER, 42, "🔥 실시간 주도 마켓 분석 (eth)")
        edit = events.MessageEdited.build(types.UpdateEditChannelMessage(message=msg, pts=2, pts_count=1))
        edit._set_client(TelegramClient(None, 1, "1"))
        await listener.handle_edited(edit)
        assert sink.raws == []

    asyncio.run(scenario())


def test_register_attaches_handlers_for_the_marked_chat_ids_on_a_real_client() -> None:
    client = TelegramClient(None, 1, "1")
    listener = TelegramListener(client, chat_ids=(ENTRY, RISK), cursors=Cursors(), on_raw=Sink())
    listener.register()
    listener.register()  # idempotent
    registered = client.list_event_handlers()
    assert [type(builder) for _, builder in registered] == [
        events.NewMessage,
        events.MessageEdited,
        events.Raw,
    ]
    assert registered[0][0] == listener.handle_new_message
    assert registered[0][1].chats == [ENTRY, RISK]
    listener.unregister()
    assert client.list_event_handlers() == []


def test_listener_rejects_non_integer_chat_ids() -> None:
    with pytest.raises(ValueError):
        TelegramListener(FakeTelegram(), chat_ids=("@channel",), cursors=Cursors(), on_raw=Sink())  # type: ignore[arg-type]


# -- backfill ----------------------------------------------------------------------------------------


def test_gap_of_150_messages_is_recovered_in_order() -> None:
    async def scenario() -> None:
        client = FakeTelegram({ENTRY: list(range(1, 251)), RISK: [1, 2, 3]})
        listener, sink, _, _ = make(client, Cursors(entry=100, risk=3))
        delivered = await listener.start()
        assert delivered == 150
        assert sink.ids(ENTRY) == list(range(101, 251))
        assert sink.ids(RISK) == []
        assert (ENTRY, 100, 0) in client.reads

    asyncio.run(scenario())


def test_live_and_backfill_overlap_is_delivered_once() -> None:
    async def scenario() -> None:
        client = FakeTelegram({ENTRY: [10, 11, 12]})
        listener, sink, _, _ = make(client, Cursors(entry=10, risk=1))
        await listener.start()  # 11, 12
        client.post(ENTRY, 13)
        await listener.handle_new_message(new_message_event(message(ENTRY_PEER, 13)))
        await listener.handle_new_message(new_message_event(message(ENTRY_PEER, 12)))  # late live duplicate
        client.post(ENTRY, 14)
        assert await listener.backfill() == 1  # the cursor still says 10: 11..13 are re-read but not re-sent
        assert sink.ids(ENTRY) == [11, 12, 13, 14]

    asyncio.run(scenario())


def test_live_message_after_a_gap_delivers_the_gap_first() -> None:
    async def scenario() -> None:
        client = FakeTelegram({ENTRY: [5]})
        listener, sink, _, _ = make(client, Cursors(entry=5, risk=1))
        await listener.start()
        for message_id in (6, 7, 8):
            client.post(ENTRY, message_id)  # missed by the live feed
        client.post(ENTRY, 9)
        await listener.handle_new_message(new_message_event(message(ENTRY_PEER, 9)))
        assert sink.ids(ENTRY) == [6, 7, 8, 9]
        assert client.reads[-1] == (ENTRY, 5, 9)

    asyncio.run(scenario())


def test_flood_wait_is_honoured_and_the_read_resumes_after_the_last_delivered_id() -> None:
    async def scenario() -> None:
        client = FakeTelegram({ENTRY: list(range(1001, 1151)), RISK: [4]})
        client.flood_after[ENTRY] = (40, 17)
        listener, sink, sleeper, _ = make(client, Cursors(entry=1000, risk=3))
        assert await listener.start() == 151
        assert sleeper.calls == [17]
        assert sink.ids(ENTRY) == list(range(1001, 1151))
        assert sink.ids(RISK) == [4]
        assert [(lo, hi) for chat, lo, hi in client.reads if chat == ENTRY] == [(1000, 0), (1040, 0)]

    asyncio.run(scenario())


def test_endless_flood_wait_gives_up_after_the_configured_retries() -> None:
    class AlwaysFlood(FakeTelegram):
        def iter_messages(
            self, entity: Any, limit: int | None = None, **kwargs: Any
        ) -> AsyncIterator[types.Message]:
            self.flood_after[entity] = (0, 30)
            return super().iter_messages(entity, limit, **kwargs)

    async def scenario() -> None:
        client = AlwaysFlood({ENTRY: [2, 3], RISK: [8, 9]})
        listener, sink, sleeper, _ = make(client, Cursors(entry=1, risk=8), max_flood_waits=2)
        assert await listener.start() == 0
        # Two retries per channel, then it gives up until the next backfill.
        assert sleeper.calls == [30, 30, 30, 30]
        assert sink.raws == []

    asyncio.run(scenario())


def test_without_a_cursor_the_listener_starts_after_the_newest_message() -> None:
    async def scenario() -> None:
        client = FakeTelegram({ENTRY: list(range(1, 31)), RISK: [7]})
        listener, sink, _, _ = make(client, Cursors())
        assert await listener.start() == 0  # history from before the first run is never replayed
        client.post(ENTRY, 31)
        client.post(RISK, 8)
        assert await listener.backfill() == 2
        assert sink.ids() == [31, 8]

    asyncio.run(scenario())


def test_unreadable_channel_does_not_stop_the_other_one() -> None:
    async def scenario() -> None:
        client = FakeTelegram({ENTRY: [1, 2], RISK: [5, 6]})
        client.unknown.add(ENTRY)
        listener, sink, _, _ = make(client, Cursors(entry=1, risk=5))
        assert await listener.start() == 1
        assert sink.ids() == [6]

    asyncio.run(scenario())


def test_failed_callback_is_retried_by_the_next_backfill() -> None:
    async def scenario() -> None:
        client = FakeTelegram({ENTRY: [1, 2, 3]})
        listener, sink, _, _ = make(client, Cursors(entry=1, risk=1))
        sink.fail_ids.add(2)
        assert await listener.start() == 1
        assert sink.ids() == [3]
        assert await listener.backfill() == 1
        assert sink.ids() == [3, 2]

    asyncio.run(scenario())


def test_dedupe_memory_is_bounded() -> None:
    async def scenario() -> None:
        client = FakeTelegram({ENTRY: list(range(1, 11))})
        listener, sink, _, _ = make(client, Cursors(entry=0, risk=1), dedupe_size=4)
        client.history[ENTRY] = []  # the channel is empty when the listener first looks
        await listener.start()
        for message_id in range(1, 11):
            client.post(ENTRY, message_id)
        await listener.backfill()
        await listener.handle_new_message(new_message_event(message(ENTRY_PEER, 9)))  # still remembered
        await listener.handle_new_message(new_message_event(message(ENTRY_PEER, 2)))  # forgotten
        # The engine's cursor check (N-05) drops the late 2, not the listener.
        assert sink.ids() == [*range(1, 11), 2]

    asyncio.run(scenario())


# -- watchdog ----------------------------------------------------------------------------------------


def test_periodic_backfill_runs_only_when_due() -> None:
    async def scenario() -> None:
        client = FakeTelegram({ENTRY: [1], RISK: [1]})
        listener, sink, _, clock = make(client, Cursors(entry=1, risk=1), backfill_interval_s=60)
        await listener.start()
        reads = len(client.reads)
        client.post(RISK, 2)
        clock.now_ms += 59_999
        await listener.check()
        assert len(client.reads) == reads and sink.raws == []
        clock.now_ms += 1
        await listener.check()
        assert sink.ids(RISK) == [2]

    asyncio.run(scenario())


def test_disconnected_client_is_reconnected_and_backfilled() -> None:
    async def scenario() -> None:
        client = FakeTelegram({ENTRY: [1], RISK: [1]})
        listener, sink, _, _ = make(client, Cursors(entry=1, risk=1))
        await listener.start()
        client.connected = False
        client.post(ENTRY, 2)
        await listener.check()
        assert (client.connects, client.disconnects) == (1, 0)
        assert sink.ids(ENTRY) == [2]

    asyncio.run(scenario())


def test_failed_reconnect_is_retried_at_the_next_check_after_its_back_off() -> None:
    async def scenario() -> None:
        client = FakeTelegram({ENTRY: [1], RISK: [1]})
        listener, sink, _, clock = make(client, Cursors(entry=1, risk=1))
        await listener.start()
        client.connected = False
        client.connect_error = OSError("network unreachable")
        client.post(ENTRY, 2)
        await listener.check()
        assert client.connects == 1 and sink.raws == []
        client.connect_error = None
        clock.now_ms += 999
        await listener.check()  # the first back-off is 1 s
        assert client.connects == 1
        clock.now_ms += 1
        await listener.check()
        assert client.connects == 2 and sink.ids(ENTRY) == [2]

    asyncio.run(scenario())


def test_quiet_listener_is_reconnected_by_the_watchdog() -> None:
    async def scenario() -> None:
        client = FakeTelegram({ENTRY: [1], RISK: [1]})
        listener, sink, _, clock = make(
            client, Cursors(entry=1, risk=1), quiet_reconnect_s=600, backfill_interval_s=10_000
        )
        await listener.start()
        clock.now_ms += 300_000
        await listener.handle_update(
            types.UpdateUserStatus(user_id=1, status=types.UserStatusOnline(expires=0))
        )
        clock.now_ms += 599_999
        await listener.check()
        assert (client.connects, client.disconnects) == (0, 0)
        client.post(RISK, 2)
        clock.now_ms += 1
        await listener.check()
        assert (client.connects, client.disconnects) == (1, 1)
        assert sink.ids(RISK) == [2]

    asyncio.run(scenario())


def test_run_loops_on_the_injected_sleep_until_stopped() -> None:
    async def scenario() -> None:
        client = FakeTelegram({ENTRY: [1], RISK: [1]})
        clock, sink = Clock(), Sink()
        steps: list[float] = []

        async def sleep(seconds: float) -> None:
            steps.append(seconds)
            clock.now_ms += int(seconds * 1000)
            client.post(ENTRY, len(steps) + 1)
            if len(steps) == 3:
                listener.stop()

        listener = TelegramListener(
            client,
            chat_ids=(ENTRY, RISK),
            cursors=Cursors(entry=1, risk=1),
            on_raw=sink,
            config=ListenerConfig(backfill_interval_s=5, watchdog_interval_s=5),
            clock=clock,
            sleep=sleep,
        )
        await listener.run()
        assert steps == [5.0, 5.0, 5.0]
        assert sink.ids(ENTRY) == [2, 3]  # two watchdog steps ran; the third sleep ended the loop

    asyncio.run(scenario())


def test_run_survives_an_unexpected_error_in_one_step() -> None:
    class Flaky(FakeTelegram):
        def __init__(self) -> None:
            super().__init__({ENTRY: [1], RISK: [1]})
            self.failures = 1

        def is_connected(self) -> bool:
            if self.failures and self.connects == 0 and len(self.reads) >= 2:
                self.failures -= 1
                raise RuntimeError("unexpected")
            return self.connected

    async def scenario() -> None:
        client, sink, steps = Flaky(), Sink(), []

        async def sleep(seconds: float) -> None:
            steps.append(seconds)
            client.post(RISK, len(steps) + 1)
            if len(steps) == 3:
                listener.stop()

        listener = TelegramListener(
            client,
            chat_ids=(ENTRY, RISK),
            cursors=Cursors(entry=1, risk=1),
            on_raw=sink,
            config=ListenerConfig(backfill_interval_s=0),
            sleep=sleep,
        )
        await listener.run()
        assert client.failures == 0
        assert sink.ids(RISK) == [2, 3]  # the first step failed, the second delivered both

    asyncio.run(scenario())


# -- authorisation -----------------------------------------------------------------------------------


class AuthClient:
    def __init__(self, authorised: bool) -> None:
        self.authorised = authorised
        self.calls: list[str] = []

    async def connect(self) -> None:
        self.calls.append("connect")

    async def is_user_authorized(self) -> bool:
        self.calls.append("is_user_authorized")
        return self.authorised

    async def disconnect(self) -> None:
        self.calls.append("disconnect")

    async def start(self, *args: Any, **kwargs: Any) -> None:
        raise AssertionError("the daemon must never call start()")


def test_ensure_authorised_connects_and_checks_without_start() -> None:
    client = AuthClient(authorised=True)
    asyncio.run(ensure_authorised(client))
    assert client.calls == ["connect", "is_user_authorized"]


def test_ensure_authorised_tells_the_operator_to_log_in() -> None:
    client = AuthClient(authorised=False)
    with pytest.raises(NotAuthorised, match="shortfsm login"):
        asyncio.run(ensure_authorised(client))
    assert client.calls == ["connect", "is_user_authorized", "disconnect"]
