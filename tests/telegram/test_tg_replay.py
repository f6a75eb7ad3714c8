"""JSONL feed loading and recording."""

from __future__ import annotations

import json
from pathlib import Path

from telegram_ingest.adapter import RawMessage
from telegram_ingest.replay import FeedItem, append_raw, load_feed

ENTRY = -1002171239233
RISK = -1003096527269


def test_load_feed_skips_malformed_lines_and_sorts_by_offset(tmp_path: Path) -> None:
    feed = tmp_path / "feed.jsonl"
    feed.write_text(
        "\n".join(
            [
                "# a hand-written feed",
                json.dumps({"at_ms": 2000, "chat_id": RISK, "message_id": 5, "text": "🥈 Binance : X"}),
                "{not json",
                json.dumps({"at_ms": 100, "chat_id": ENTRY, "message_id": 3}),  # no text
                json.dumps({"at_ms": 100, "chat_id": ENTRY, "message_id": True, "text": "x"}),
                json.dumps({"at_ms": -5, "chat_id": ENTRY, "message_id": 3, "text": "x"}),
                json.dumps(["a", "list"]),
                "",
                json.dumps({"at_ms": 0, "chat_id": ENTRY, "message_id": 7, "text": "🔥", "date_ms": 42}),
                json.dumps({"at_ms": 2000, "chat_id": ENTRY, "message_id": 8, "text": "", "edited": True}),
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    assert load_feed(feed) == [
        FeedItem(at_ms=0, chat_id=ENTRY, message_id=7, text="🔥", date_ms=42),
        FeedItem(at_ms=2000, chat_id=RISK, message_id=5, text="🥈 Binance : X"),
        FeedItem(at_ms=2000, chat_id=ENTRY, message_id=8, text="", edited=True),
    ]


def test_feed_item_to_raw_defaults_the_date_to_start_plus_offset() -> None:
    item = FeedItem(at_ms=1500, chat_id=ENTRY, message_id=9, text="t")
    assert item.to_raw(1_000_000) == RawMessage(
        chat_id=ENTRY, message_id=9, date_ms=1_001_500, text="t", received_at_ms=1_001_500
    )
    dated = FeedItem(at_ms=1500, chat_id=ENTRY, message_id=9, text="t", date_ms=5)
    assert dated.to_raw(1_000_000).date_ms == 5


def test_recorded_messages_replay_identically(tmp_path: Path) -> None:
    path = tmp_path / "rec" / "feed.jsonl"
    start = 1_769_904_000_000
    raws = [
        RawMessage(
            chat_id=ENTRY,
            message_id=1,
            date_ms=start - 30_000,
            text="🔥 (btc)\r\n카테고리 : AI",
            received_at_ms=start + 10,
        ),
        RawMessage(
            chat_id=RISK,
            message_id=2,
            date_ms=start + 900,
            text="lone \udc80",
            received_at_ms=start + 1000,
            edited=True,
        ),
    ]
    for raw in raws:
        append_raw(path, raw, start)
    assert len(path.read_text(encoding="utf-8").splitlines()) == 2
    assert [item.to_raw(start) for item in load_feed(path)] == raws
