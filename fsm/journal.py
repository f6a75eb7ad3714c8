"""The journal's exact codec: every engine input is written so that it decodes to an equal event,
and every engine output is rendered as one stable line per command.

A journal row is (type, payload, out): ``encode_event`` gives the payload (``fsm.model.encode``: a
Decimal keeps its digits, a tuple stays a tuple, a nested dataclass keeps its type), ``render_all``
the commands the engine answered with. Feeding the decoded events of one run, in journal order, to
the engine restored from the run's first row (``ENGINE_ROW``, the engine's snapshot) must give the
same lines again: that is ``shortfsm replay --journal``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import fields
from typing import Any

import orjson

from fsm import commands as cmd
from fsm import events as ev
from fsm.model import decode, encode

ENGINE_ROW = "EngineCheckpoint"  # a journal row holding the engine's snapshot() at that point
EXACT_MARK = '{"$t"'  # payloads in this codec start so; older rows (to_jsonable) do not


def _dumps(tree: Any) -> str:
    """Compact JSON of ``encode``'s tree (dicts, lists, str, int, bool and None: never a float),
    as ``json.dumps`` with ``ensure_ascii=False`` and no spaces writes it. orjson writes the same
    text about ten times faster; what it refuses (an int beyond 64 bits, a lone surrogate) goes to
    ``json``."""
    try:
        return orjson.dumps(tree).decode("utf-8")
    except (orjson.JSONEncodeError, UnicodeDecodeError):
        # ``encode`` builds a fresh tree (no cycles): the encoder's cycle check is pure cost.
        return json.dumps(tree, ensure_ascii=False, separators=(",", ":"), check_circular=False)


def encode_event(event: ev.Event) -> str:
    return _dumps(encode(event))


def decode_event(payload: str) -> ev.Event:
    """One journaled event; ``ValueError`` for a row that is not in the exact codec or not an event."""
    if not payload.startswith(EXACT_MARK):
        raise ValueError("journal row written before the exact codec (shortfsm < 0.4)")
    try:
        value = decode(json.loads(payload))
    except (KeyError, TypeError, ArithmeticError) as exc:
        raise ValueError(f"journal row does not decode: {exc!r}") from exc
    if not isinstance(value, ev.Event):
        raise ValueError(f"journal row holds a {type(value).__name__}, not an event")
    return value


def encode_snapshot(snapshot: dict[str, Any]) -> str:
    # ``Engine.snapshot`` is ``encode``'s trees under string keys: no float either.
    return _dumps(snapshot)


def render(command: cmd.Command) -> str:
    """One command as a compact, stable line."""
    name = type(command).__name__
    parts = []
    for f in fields(command):
        value = getattr(command, f.name)
        if value is None or value == () or (f.name == "attempt" and value == 1):
            continue
        if f.name == "data":
            value = ",".join(f"{k}={v}" for k, v in value)
        parts.append(f"{f.name}={value}")
    return f"{name}(" + " ".join(parts) + ")"


def render_all(commands: Iterable[cmd.Command]) -> str:
    return "\n".join(render(c) for c in commands)
