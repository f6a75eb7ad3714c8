"""Telethon messages -> RawMessage, with real Telethon objects built offline."""

from __future__ import annotations

import datetime as dt

import pytest
from telethon import types

from telegram_ingest.adapter import RawMessage, raw_from_telethon

pytestmark = pytest.mark.spec("N-04")

ENTRY_CHANNEL = 2171239233
DATE = dt.datetime(2026, 2, 1, 9, 30, 5, tzinfo=dt.UTC)
DATE_MS = 1769938205000


def test_text_message_becomes_a_raw_message_with_the_marked_chat_id() -> None:
    msg = types.Message(
        id=42, peer_id=types.PeerChannel(ENTRY_CHANNEL), date=DATE, message="🔥 실시간 주도 마켓 분석 (btc)"
    )
    assert raw_from_telethon(msg, 1769938206123) == RawMessage(
        chat_id=-1002171239233,
        message_id=42,
        date_ms=DATE_MS,
        text="🔥 실시간 주도 마켓 분석 (btc)",
        received_at_ms=1769938206123,
        edited=False,
    )


def test_media_caption_is_the_text_n04() -> None:
    msg = types.Message(
        id=7,
        peer_id=types.PeerChannel(3096527269),
        date=DATE,
        message="🥈 Binance : BTCUSDT.P 에서 숏 리스크관리 권장",
        media=types.MessageMediaPhoto(),
    )
    raw = raw_from_telethon(msg, 5, edited=True)
    assert raw == RawMessage(
        chat_id=-1003096527269,
        message_id=7,
        date_ms=DATE_MS,
        text="🥈 Binance : BTCUSDT.P 에서 숏 리스크관리 권장",
        received_at_ms=5,
        edited=True,
    )


def test_media_without_caption_has_empty_text() -> None:
    msg = types.Message(
        id=8, peer_id=types.PeerChannel(ENTRY_CHANNEL), date=DATE, message="", media=types.MessageMediaPhoto()
    )
    raw = raw_from_telethon(msg, 1)
    assert raw is not None and raw.text == ""


def test_missing_date_falls_back_to_receipt_time() -> None:
    msg = types.Message(id=9, peer_id=types.PeerChannel(ENTRY_CHANNEL), date=None, message="x")
    raw = raw_from_telethon(msg, 777)
    assert raw is not None and raw.date_ms == 777


def test_service_and_unusable_messages_yield_none() -> None:
    service = types.MessageService(
        id=10, peer_id=types.PeerChannel(ENTRY_CHANNEL), date=DATE, action=types.MessageActionPinMessage()
    )
    no_peer = types.Message(id=11, peer_id=None, date=DATE, message="x")
    assert raw_from_telethon(service, 1) is None
    assert raw_from_telethon(types.MessageEmpty(id=12, peer_id=None), 1) is None
    assert raw_from_telethon(no_peer, 1) is None
    assert raw_from_telethon("not a message", 1) is None
    assert raw_from_telethon(None, 1) is None


def test_raw_message_json_round_trip_keeps_korean_and_lone_surrogates() -> None:
    for text in ("🔥 실시간 주도 마켓 분석 (btc)\r\n카테고리 : AI", "bad \ud800 surrogate"):
        raw = RawMessage(
            chat_id=-1002171239233, message_id=3, date_ms=1, text=text, received_at_ms=2, edited=True
        )
        line = raw.to_json()
        assert "\n" not in line
        assert RawMessage.from_json(line) == raw
        assert RawMessage.from_json(line.encode("utf-8")) == raw
    assert (
        "실시간" in RawMessage(chat_id=1, message_id=1, date_ms=1, text="실시간", received_at_ms=1).to_json()
    )


@pytest.mark.parametrize(
    "line",
    [
        "not json",
        "[1, 2]",
        '{"chat_id": 1, "message_id": 2, "date_ms": 3, "received_at_ms": 4}',
        '{"chat_id": true, "message_id": 2, "date_ms": 3, "text": "", "received_at_ms": 4}',
        '{"chat_id": 1, "message_id": "2", "date_ms": 3, "text": "", "received_at_ms": 4}',
        '{"chat_id": 1, "message_id": 2, "date_ms": 3, "text": "", "received_at_ms": 4, "edited": "yes"}',
    ],
)
def test_malformed_raw_json_raises_value_error(line: str) -> None:
    with pytest.raises(ValueError):
        RawMessage.from_json(line)
