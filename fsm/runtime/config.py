"""config.yaml, validated: unknown keys and wrong types are refused with the key and the file named.

Secrets never live in the file: they come from the environment or a ``.env`` file (``Secrets``).
The strategy part becomes the core's frozen ``fsm.strategy.Strategy``; pydantic stays at the edge.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from fsm.strategy import DEFAULT_EXCLUDED_SUBSTRINGS, DEFAULT_EXCLUDED_WORDS, Strategy

Profile = Literal["sim", "demo", "mainnet"]


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the file and the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StrategyConfig(_Strict):
    """N-26 settings and their defaults; changes are refused while trading (settings lock)."""

    mode: Literal["aggressive", "conservative"] = "aggressive"
    tp_pct: Decimal = Field(default=Decimal("5"), gt=0, lt=100)
    second_entry_pct: Decimal = Field(default=Decimal("15"), gt=0)
    mdd_pct: Decimal = Field(default=Decimal("15"), gt=0)
    cooldown_minutes: int = Field(default=10, ge=0)
    margin_buffer_pct: Decimal = Field(default=Decimal("1"), ge=0, lt=100)
    first_entry_balance_pct: Decimal = Field(default=Decimal("50"), gt=0, le=100)
    trigger_buffer_pct: Decimal = Field(default=Decimal("0.1"), ge=0, lt=10)
    ws_stale_fallback_seconds: int = Field(default=5, gt=0)
    stale_mark_price_seconds: int = Field(default=15, gt=0)
    max_signal_age_seconds: int = Field(default=180, gt=0)
    excluded_category_words: tuple[str, ...] = DEFAULT_EXCLUDED_WORDS
    excluded_category_substrings: tuple[str, ...] = DEFAULT_EXCLUDED_SUBSTRINGS
    funding_reject_at_or_below_pct: Decimal = Decimal("-0.1")
    rising_rank_reject_top: int = Field(default=10, ge=0)
    atr_length: int = Field(default=3, gt=0)
    atr_multiplier: Decimal = Field(default=Decimal("1"), gt=0)
    atr_candles: int = Field(default=200, gt=0, le=1500)
    leverage: int = Field(default=1, ge=1, le=125)
    entry_attempts: int = Field(default=3, ge=1)
    cancel_attempts: int = Field(default=3, ge=1)
    partial_fill_timeout_seconds: int = Field(default=5, gt=0)
    requery_interval_seconds: int = Field(default=10, gt=0)
    position_sync_grace_seconds: int = Field(default=2, ge=0)
    rate_limit_enter_after: int = Field(default=5, ge=1)
    rate_limit_leave_after: int = Field(default=3, ge=1)

    @model_validator(mode="after")
    def _stale_after_fallback(self) -> StrategyConfig:
        if self.stale_mark_price_seconds <= self.ws_stale_fallback_seconds:
            raise ValueError("stale_mark_price_seconds must be greater than ws_stale_fallback_seconds")
        return self


class TelegramConfig(_Strict):
    entry_chat_id: int = -1002171239233
    risk_chat_id: int = -1003096527269
    session_path: str = "var/telegram.session"
    backfill_interval_seconds: int = Field(default=60, gt=0)
    quiet_reconnect_seconds: int = Field(default=600, gt=0)
    feed_path: str = "specs/feeds/demo.jsonl"


class BinanceConfig(_Strict):
    profile: Profile = "sim"
    allow_mainnet: bool = False
    rest_url: str = ""
    market_ws_url: str = ""
    private_ws_url: str = ""
    recv_window_ms: int = Field(default=5000, gt=0, le=60000)
    price_heartbeat_symbol: str = "BTCUSDT"

    def urls(self) -> tuple[str, str, str]:
        """(REST, /market WS, /private WS) for the profile unless overridden (keep every URL configurable)."""
        defaults = {
            "sim": ("", "", ""),
            "demo": (
                "https://demo-fapi.binance.com",
                "wss://demo-fstream.binance.com/market",
                "wss://demo-fstream.binance.com/private",
            ),
            "mainnet": (
                "https://fapi.binance.com",
                "wss://fstream.binance.com/market",
                "wss://fstream.binance.com/private",
            ),
        }[self.profile]
        return (
            self.rest_url or defaults[0],
            self.market_ws_url or defaults[1],
            self.private_ws_url or defaults[2],
        )


class StorageConfig(_Strict):
    database: str = "var/shortfsm.db"
    log_dir: str = "var/log"
    log_retention_days: int = Field(default=7, gt=0)
    heartbeat_path: str = "var/heartbeat.json"


class AlertsConfig(_Strict):
    discord: bool = False
    telegram_operator_chat: int | None = None
    queue_limit: int = Field(default=200, gt=0)
    max_attempts: int = Field(default=5, gt=0)


class AppConfig(_Strict):
    strategy: StrategyConfig = StrategyConfig()
    telegram: TelegramConfig = TelegramConfig()
    binance: BinanceConfig = BinanceConfig()
    storage: StorageConfig = StorageConfig()
    alerts: AlertsConfig = AlertsConfig()

    def to_strategy(self) -> Strategy:
        values: dict[str, Any] = self.strategy.model_dump()
        values["entry_chat_id"] = self.telegram.entry_chat_id
        values["risk_chat_id"] = self.telegram.risk_chat_id
        return Strategy(**values)


class Secrets(BaseSettings):
    """Credentials from the environment or ``.env``; never from config.yaml, never logged."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    binance_api_key: SecretStr = SecretStr("")
    binance_api_secret: SecretStr = SecretStr("")
    telegram_api_id: int = 0
    telegram_api_hash: SecretStr = SecretStr("")
    telegram_phone: SecretStr = SecretStr("")
    discord_webhook_url: SecretStr = SecretStr("")


def load_config(path: str | Path = "config.yaml") -> AppConfig:
    """Read and validate ``path``; a missing file gives the embedded defaults."""
    path = Path(path)
    if not path.exists():
        return AppConfig()
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    try:
        return AppConfig.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            key = ".".join(str(part) for part in error["loc"]) or "(top level)"
            problems.append(f"{path}: {key}: {error['msg']}")
        raise ConfigError("\n".join(problems)) from None


# ---------------------------------------------------------------------------------------------
# Reload (mtime poll and SIGHUP in the daemon)
# ---------------------------------------------------------------------------------------------

# Strategy fields that come from outside the ``strategy`` section (the listener is built with them).
_NOT_RELOADABLE_STRATEGY = frozenset({"entry_chat_id", "risk_chat_id"})


def file_signature(path: str | Path) -> tuple[int, int] | None:
    """(mtime in ns, size) of ``path``; None when it cannot be read."""
    try:
        st = Path(path).stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def setting_text(value: Any) -> str:
    """A strategy value as the text ``Strategy.with_changes`` reads back."""
    return ",".join(value) if isinstance(value, tuple) else str(value)


def settings_changes(current: Strategy, new: AppConfig) -> tuple[tuple[str, str], ...]:
    """The ``strategy`` settings in ``new`` that differ from the running ones, as
    ``SettingsChangeRequested.changes`` (sorted by name)."""
    return strategy_changes(current, new.to_strategy())


def strategy_changes(current: Strategy, target: Strategy) -> tuple[tuple[str, str], ...]:
    """The reloadable settings of ``target`` that differ from ``current``, sorted by name."""
    changes = [
        (name, setting_text(getattr(target, name)))
        for name in current.__dataclass_fields__
        if name not in _NOT_RELOADABLE_STRATEGY and getattr(current, name) != getattr(target, name)
    ]
    return tuple(sorted(changes))


def restart_changes(old: AppConfig, new: AppConfig) -> tuple[str, ...]:
    """Dotted keys outside ``strategy`` whose value differs: they take effect only after a restart
    (storage paths, profile, venue URLs, channels, alerts)."""
    before = old.model_dump(exclude={"strategy"})
    after = new.model_dump(exclude={"strategy"})
    changed = [
        f"{section}.{key}"
        for section, values in after.items()
        for key, value in values.items()
        if before.get(section, {}).get(key) != value
    ]
    return tuple(sorted(changed))
