"""JSONL message feeds: the replay source that stands in for Telegram, and its recorder.

One JSON object per line::

    {"at_ms": 1500, "chat_id": -1002171239233, "message_id": 7, "text": "...", "date_ms": 1767225601500}

``at_ms`` is the offset from the start of the run; ``date_ms`` (Telegram's date) is optional and
defaults to ``start + at_ms``; ``edited`` (optional, default false) marks an edit. ``edit_date_ms``
(optional) is when Telegram says the message was last edited (``shortfsm export`` writes it for a
history message whose text is its edited one). Blank lines and lines starting with ``#`` are
skipped; malformed lines are logged with their line number and skipped.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from telegram_ingest.adapter import RawMessage

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class FeedItem:
    """One scripted message, ``at_ms`` after the start of the run."""

    at_ms: int
    chat_id: int
    message_id: int
    text: str
    date_ms: int | None = None
    edited: bool = False
    edit_date_ms: int | None = None  # when the text was last edited (informational: not replayed)

    def to_raw(self, start_ms: int) -> RawMessage:
        """The message as the listener would have delivered it, for a run that began at ``start_ms``."""
        received = start_ms + self.at_ms
        return RawMessage(
            chat_id=self.chat_id,
            message_id=self.message_id,
            date_ms=self.date_ms if self.date_ms is not None else received,
            text=self.text,
            received_at_ms=received,
            edited=self.edited,
        )


def load_feed(path: str | os.PathLike[str]) -> list[FeedItem]:
    """Read a feed file, skipping (and logging) malformed lines; items come back sorted by ``at_ms``."""
    items: list[FeedItem] = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            try:
                items.append(parse_item(json.loads(stripped)))
            except (json.JSONDecodeError, ValueError) as exc:
                logger.warning("%s:%d: skipped malformed feed line: %s", path, number, exc)
    items.sort(key=lambda item: item.at_ms)  # stable: equal offsets keep their file order
    return items


def parse_item(payload: Any) -> FeedItem:
    """One feed line's JSON object as a ``FeedItem``; ``ValueError`` says what is wrong with it."""
    if not isinstance(payload, dict):
        raise ValueError("not a JSON object")
    for name in ("at_ms", "chat_id", "message_id"):
        if not _is_int(payload.get(name)):
            raise ValueError(f"{name!r} must be an integer")
    if payload["at_ms"] < 0:
        raise ValueError("'at_ms' must not be negative")
    if payload["message_id"] <= 0:
        raise ValueError("'message_id' must be positive")
    text = payload.get("text")
    if not isinstance(text, str):
        raise ValueError("'text' must be a string")
    date_ms = payload.get("date_ms")
    if date_ms is not None and not _is_int(date_ms):
        raise ValueError("'date_ms' must be an integer when present")
    edited = payload.get("edited", False)
    if not isinstance(edited, bool):
        raise ValueError("'edited' must be a boolean when present")
    edit_date_ms = payload.get("edit_date_ms")
    if edit_date_ms is not None and not _is_int(edit_date_ms):
        raise ValueError("'edit_date_ms' must be an integer when present")
    return FeedItem(
        at_ms=payload["at_ms"],
        chat_id=payload["chat_id"],
        message_id=payload["message_id"],
        text=text,
        date_ms=date_ms,
        edited=edited,
        edit_date_ms=edit_date_ms,
    )


def feed_line(raw: RawMessage, start_ms: int, *, edit_date_ms: int | None = None) -> str:
    """The feed line that replays ``raw`` at the same offset from ``start_ms`` (with
    ``edit_date_ms`` when given)."""
    payload: dict[str, Any] = {
        "at_ms": max(0, raw.received_at_ms - start_ms),
        "chat_id": raw.chat_id,
        "message_id": raw.message_id,
        "date_ms": raw.date_ms,
        "text": raw.text,
    }
    if raw.edited:
        payload["edited"] = True
    if edit_date_ms is not None:
        payload["edit_date_ms"] = edit_date_ms
    try:
        line = json.dumps(payload, ensure_ascii=False)
        line.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: keep them as JSON escapes
        line = json.dumps(payload, ensure_ascii=True)
    return line


def append_raw(path: str | os.PathLike[str], raw: RawMessage, start_ms: int) -> None:
    """Record one received message into a feed file (created on first use)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "a", encoding="utf-8") as handle:
        handle.write(feed_line(raw, start_ms) + "\n")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
