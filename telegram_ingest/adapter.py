"""Telethon messages -> ``RawMessage``: the one plain record the rest of the system sees.

``RawMessage`` is what the listener forwards, the store records and the replay feed carries. The
runtime parses its text (``grammar.parse_message``) and enriches it into ``fsm.events.MessageReceived``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class RawMessage:
    """One channel message as received; ``chat_id`` is the marked id (``-100...`` for channels)."""

    chat_id: int
    message_id: int
    date_ms: int  # Telegram's date for the message
    text: str
    received_at_ms: int  # our local receipt time
    edited: bool = False

    def to_json(self) -> str:
        """One line of JSON (non-ASCII kept readable unless the text holds lone surrogates)."""
        payload = asdict(self)
        try:
            line = json.dumps(payload, ensure_ascii=False, sort_keys=True)
            line.encode("utf-8")
        except UnicodeEncodeError:
            line = json.dumps(payload, ensure_ascii=True, sort_keys=True)
        return line

    @classmethod
    def from_json(cls, data: str | bytes) -> RawMessage:
        """Inverse of ``to_json``; raises ``ValueError`` on anything malformed."""
        try:
            payload = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"raw message is not JSON: {exc}") from exc
        if not isinstance(payload, dict):
            raise ValueError("raw message JSON is not an object")
        ints = {name: payload.get(name) for name in ("chat_id", "message_id", "date_ms", "received_at_ms")}
        for name, value in ints.items():
            if not _is_int(value):
                raise ValueError(f"raw message field {name!r} must be an integer, got {value!r}")
        text = payload.get("text")
        if not isinstance(text, str):
            raise ValueError("raw message field 'text' must be a string")
        edited = payload.get("edited", False)
        if not isinstance(edited, bool):
            raise ValueError("raw message field 'edited' must be a boolean")
        return cls(
            chat_id=payload["chat_id"],
            message_id=payload["message_id"],
            date_ms=payload["date_ms"],
            text=text,
            received_at_ms=payload["received_at_ms"],
            edited=edited,
        )


def raw_from_telethon(message: Any, received_at_ms: int, *, edited: bool = False) -> RawMessage | None:
    """Convert a Telethon ``types.Message`` (text or media caption); None for anything unusable.

    Service messages (pins, joins), empty messages and messages without a chat are not signals:
    they are logged at debug level and yield None.
    """
    # Imported here: Telethon costs ~50 MB resident, and the sim profile and replay never need it.
    from telethon import utils
    from telethon.tl import types

    if not isinstance(message, types.Message):
        logger.debug("not a plain message: %s", type(message).__name__)
        return None
    message_id = message.id
    if not _is_int(message_id) or message_id <= 0:
        logger.warning("telegram message without a usable id: %r", message_id)
        return None
    try:
        chat_id = utils.get_peer_id(message.peer_id)
    except (TypeError, ValueError, AttributeError) as exc:
        logger.warning("telegram message %s without a usable chat: %s", message_id, exc)
        return None
    text = message.message
    if not isinstance(text, str):
        text = ""
    date = message.date
    if isinstance(date, datetime):
        date_ms = round(date.timestamp() * 1000)
    else:
        logger.warning("telegram message %s/%s has no date; using the receipt time", chat_id, message_id)
        date_ms = received_at_ms
    return RawMessage(
        chat_id=chat_id,
        message_id=message_id,
        date_ms=date_ms,
        text=text,
        received_at_ms=received_at_ms,
        edited=edited,
    )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
