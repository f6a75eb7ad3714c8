"""The venue's ``exchangeInfo`` kept in the market data cache, for backtests (D-62).

``shortfsm data`` saves ``GET /fapi/v1/exchangeInfo`` as ``<cache>/exchangeInfo.json``: the answer
with only its USDT-margined PERPETUAL symbols, and the time it was read. It is read again when the
saved one is older than ``MAX_AGE_MS`` or missing; a run that cannot reach the venue (or
``--offline``) keeps the old one and says its age. ``shortfsm backtest`` builds the simulated
venue's symbols from it (``fsm.harness.backtest``); the filters are read by ``binance.parse``, as the
daemon reads them. Binance keeps no history of filters or status: the saved answer is today's, and a
backtest uses it for the past.

File layout (JSON): ``{"read_ms": <epoch ms>, "source": <REST base URL>, "exchangeInfo": {...}}``.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

FILE_NAME = "exchangeInfo.json"
MAX_AGE_MS = 86_400_000  # refreshed when older than a day
KEPT_CONTRACT = "PERPETUAL"
KEPT_QUOTE = "USDT"

Json = dict[str, Any]


class BadExchangeInfo(ValueError):
    """A saved file or an answer that is not an exchangeInfo: one line naming what is wrong."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SavedExchangeInfo:
    """One saved answer: when it was read, from where, and its symbols' entries by name."""

    path: Path
    read_ms: int
    source: str
    answer: Json  # the exchangeInfo answer, its ``symbols`` already cut to USDT perpetuals

    @property
    def entries(self) -> dict[str, Json]:
        """``symbols[]`` entries by symbol name (an entry without a string name is left out)."""
        out: dict[str, Json] = {}
        for entry in self.answer.get("symbols", []):
            if isinstance(entry, dict) and isinstance(entry.get("symbol"), str):
                out[entry["symbol"]] = entry
        return out

    def age_ms(self, now_ms: int) -> int:
        return max(0, now_ms - self.read_ms)


def path_in(root: Path) -> Path:
    return Path(root) / FILE_NAME


def usdt_perpetuals(answer: Mapping[str, Any]) -> Json:
    """``answer`` with only its USDT-margined PERPETUAL symbols; BadExchangeInfo when it is not an
    exchangeInfo answer (no ``symbols`` list)."""
    if not isinstance(answer, Mapping) or not isinstance(answer.get("symbols"), list):
        raise BadExchangeInfo("the exchangeInfo answer has no symbols list")
    kept = [
        entry
        for entry in answer["symbols"]
        if isinstance(entry, dict)
        and entry.get("contractType") == KEPT_CONTRACT
        and entry.get("quoteAsset") == KEPT_QUOTE
        and entry.get("marginAsset", KEPT_QUOTE) == KEPT_QUOTE
    ]
    return {**answer, "symbols": kept}


def save(root: Path, answer: Mapping[str, Any], *, read_ms: int, source: str) -> SavedExchangeInfo:
    """Write the answer's USDT perpetuals atomically (temporary file, then rename)."""
    kept = usdt_perpetuals(answer)
    path = path_in(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(
            json.dumps({"read_ms": read_ms, "source": source, "exchangeInfo": kept}, separators=(",", ":")),
            encoding="utf-8",
        )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return SavedExchangeInfo(path=path, read_ms=read_ms, source=source, answer=kept)


def load(root: Path) -> SavedExchangeInfo | None:
    """The saved answer, None when there is none; BadExchangeInfo when the file cannot be read."""
    path = path_in(root)
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise BadExchangeInfo(f"{path}: unreadable ({type(exc).__name__})") from None
    read_ms = doc.get("read_ms") if isinstance(doc, dict) else None
    if not isinstance(read_ms, int) or isinstance(read_ms, bool):
        raise BadExchangeInfo(f"{path}: no read_ms")
    try:
        answer = usdt_perpetuals(doc.get("exchangeInfo"))
    except BadExchangeInfo as exc:
        raise BadExchangeInfo(f"{path}: {exc}") from None
    return SavedExchangeInfo(path=path, read_ms=read_ms, source=str(doc.get("source", "")), answer=answer)


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def age_text(ms: int) -> str:
    """``3 h``, ``2 d``: how old a saved answer is, for a person."""
    hours = ms // 3_600_000
    if hours < 48:
        return f"{hours} h" if hours else f"{ms // 60_000} min"
    return f"{ms // 86_400_000} d"


@dataclass(frozen=True, slots=True, kw_only=True)
class ExchangeInfoStatus:
    """What ``MarketCache.aexchange_info`` did: ``line`` says it for the user."""

    saved: SavedExchangeInfo | None
    fetched: bool
    line: str
    short: str  # the line without the reason it was not read
    problem: bool = False  # the saved answer is missing or stale because the venue was not read
