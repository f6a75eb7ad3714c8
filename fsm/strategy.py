"""The strategy settings the core decides with (N-26). A plain frozen dataclass: pydantic validates
``config.yaml`` at the edge (``fsm.runtime.config``) and hands the core one of these."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

Mode = Literal["aggressive", "conservative"]

DEFAULT_EXCLUDED_WORDS: tuple[str, ...] = ("meme", "defi", "pump.fun", "dex", "binance alpha spotlight")
DEFAULT_EXCLUDED_SUBSTRINGS: tuple[str, ...] = ("탈중앙화 거래소",)


@dataclass(frozen=True, slots=True, kw_only=True)
class Strategy:
    # Channels (N-04)
    entry_chat_id: int = -1002171239233
    risk_chat_id: int = -1003096527269
    # Signal handling (N-05, N-27)
    mode: Mode = "aggressive"
    cooldown_minutes: int = 10
    max_signal_age_seconds: int = 180
    # Filters (N-06, N-07)
    excluded_category_words: tuple[str, ...] = DEFAULT_EXCLUDED_WORDS
    excluded_category_substrings: tuple[str, ...] = DEFAULT_EXCLUDED_SUBSTRINGS
    funding_reject_at_or_below_pct: Decimal = Decimal("-0.1")
    rising_rank_reject_top: int = 10
    # Targets (N-08, N-09)
    atr_length: int = 3
    atr_multiplier: Decimal = Decimal("1")
    atr_candles: int = 200
    trigger_buffer_pct: Decimal = Decimal("0.1")
    # Ladder (N-11, N-16, N-17)
    first_entry_balance_pct: Decimal = Decimal("50")
    second_entry_pct: Decimal = Decimal("15")
    tp_pct: Decimal = Decimal("5")
    mdd_pct: Decimal = Decimal("15")
    margin_buffer_pct: Decimal = Decimal("1")
    leverage: int = 1
    # Retries and timers (N-12, N-18, N-19, R16)
    entry_attempts: int = 3
    cancel_attempts: int = 3
    partial_fill_timeout_seconds: int = 5
    requery_interval_seconds: int = 10
    position_sync_grace_seconds: int = 2
    # Price source (N-22)
    ws_stale_fallback_seconds: int = 5
    stale_mark_price_seconds: int = 15
    # Protection modes (N-24)
    rate_limit_enter_after: int = 5
    rate_limit_leave_after: int = 3

    def with_changes(self, changes: dict[str, str]) -> Strategy:
        """A copy with ``changes`` applied; values arrive as text and are converted to each field's type."""
        current = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        converted: dict[str, Any] = {}  # each value is of its field's type, checked per branch below
        for key, raw in changes.items():
            if key not in current:
                raise ValueError(f"unknown setting {key!r}")
            old = current[key]
            try:
                if isinstance(old, bool):
                    converted[key] = raw.strip().lower() in ("1", "true", "yes")
                elif isinstance(old, int):
                    converted[key] = int(raw)
                elif isinstance(old, Decimal):
                    converted[key] = Decimal(raw)
                elif isinstance(old, tuple):
                    converted[key] = tuple(part.strip() for part in raw.split(",") if part.strip())
                else:
                    if key == "mode" and raw not in ("aggressive", "conservative"):
                        raise ValueError(f"mode must be aggressive or conservative, not {raw!r}")
                    converted[key] = raw
            except (ValueError, InvalidOperation) as exc:
                raise ValueError(f"setting {key!r}: {exc}") from exc
        return dataclasses.replace(self, **converted)
