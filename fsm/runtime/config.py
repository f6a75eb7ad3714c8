"""config.yaml, validated: unknown keys and wrong types are refused with the key and the file named.

Secrets never live in the file: they come from the environment or a ``.env`` file (``Secrets``).
The strategy part becomes the core's frozen ``fsm.strategy.Strategy``; pydantic stays at the edge.
"""

from __future__ import annotations

import difflib
import os
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from fsm.strategy import DEFAULT_EXCLUDED_SUBSTRINGS, DEFAULT_EXCLUDED_WORDS, Strategy

Profile = Literal["sim", "demo", "mainnet"]
DEFAULT_CONFIG = "config.yaml"
REPO_ROOT = Path(__file__).resolve().parents[2]
# Hosts Binance documents as production USD-M (REST, market/user streams, WebSocket API): real money.
MAINNET_HOSTS = frozenset(
    {"fapi.binance.com", "fstream.binance.com", "fstream-auth.binance.com", "ws-fapi.binance.com"}
)


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the file and the key."""


class ConfigMissing(ConfigError):
    """The configuration file a command needs is not there (one line naming the path)."""


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
    # W24's reads (position mode, leverage/margin, balance) made while a first entry is monitored
    # serve its trigger while younger than this (D-72). 0, the default: read at every trigger, as
    # W24 says. A read every 10 s at most, so a value below 20 would rarely serve.
    account_read_max_age_seconds: int = Field(default=0, ge=0, le=300)

    @field_validator("account_read_max_age_seconds")
    @classmethod
    def _read_ahead_age(cls, value: int) -> int:
        if 0 < value < 20:
            raise ValueError("0 (read at the trigger) or 20 to 300 seconds")
        return value

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

    def mainnet_urls(self) -> list[str]:
        """The effective URLs that point at a production (real money) Binance host."""
        return [url for url in self.urls() if url and _host(url) in MAINNET_HOSTS]


def _host(url: str) -> str:
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        return ""
    return host.lower().rstrip(".")


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

    @field_validator("telegram_operator_chat")
    @classmethod
    def _no_operator_chat(cls, value: int | None) -> int | None:
        # Accepted (null) so that older files still load; a chat id was never delivered to.
        if value is not None:
            raise ValueError(
                "alert delivery to a Telegram chat is not supported: set it to null and use alerts.discord "
                "with DISCORD_WEBHOOK_URL (alerts also show on `shortfsm status` and in the log)"
            )
        return value


class AppConfig(_Strict):
    strategy: StrategyConfig = StrategyConfig()
    telegram: TelegramConfig = TelegramConfig()
    binance: BinanceConfig = BinanceConfig()
    storage: StorageConfig = StorageConfig()
    alerts: AlertsConfig = AlertsConfig()
    _profile_flag: str | None = PrivateAttr(default=None)

    def for_profile(self, profile: str | None) -> AppConfig:
        """The configuration as it runs under ``profile`` (a ``--profile`` flag; None: the file's).

        Every command resolves its profile here, once, so the URLs always belong to the profile that
        is shown. URL overrides in the file were written for the file's profile: a flag that names
        another profile drops them and the flag's profile defaults apply.
        """
        if profile is None:
            return self
        if profile == self.binance.profile:
            resolved = self.model_copy()
        else:
            binance = self.binance.model_copy(
                update={"profile": profile, "rest_url": "", "market_ws_url": "", "private_ws_url": ""}
            )
            resolved = self.model_copy(update={"binance": binance})
        resolved._profile_flag = profile  # a reloaded file is read under the same flag
        return resolved

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


def env_file_for(config_path: str | Path) -> Path:
    """The ``.env`` every command reads: the one beside the config file."""
    return Path(config_path).absolute().parent / ".env"


# What a bad variable must be, by field; the value itself is never repeated (it may be a secret).
_SECRET_RULES = {"telegram_api_id": "the numeric api id from https://my.telegram.org"}


def load_secrets(env_file: Path | None) -> Secrets:
    """Credentials from the environment, then ``env_file`` (absent: the environment alone).

    An unreadable file or an invalid variable is a ``ConfigError`` of one line that names the
    variable and never its value."""
    if env_file is not None:
        try:
            with env_file.open("rb"):
                pass
        except FileNotFoundError:
            env_file = None
        except OSError as exc:
            raise ConfigError(
                f"{env_file}: cannot be read ({exc.strerror}): it must be readable by the user running "
                "shortfsm (chmod 600, owned by that user)"
            ) from None
    try:
        return Secrets(_env_file=env_file)  # type: ignore[call-arg]
    except ValidationError as exc:
        where = f"the environment or {env_file}" if env_file else "the environment"
        problems = []
        for error in exc.errors(include_input=False):
            field = str(error["loc"][0]) if error["loc"] else ""
            rule = _SECRET_RULES.get(field, "a valid value")
            problems.append(f"{field.upper()} (from {where}) must be {rule}; its value is not shown")
        raise ConfigError("; ".join(problems)) from None
    except UnicodeDecodeError:
        raise ConfigError(f"{env_file}: not UTF-8 text") from None


def load_config(path: str | Path = "config.yaml", *, required: bool = False) -> AppConfig:
    """Read and validate ``path``. Relative paths in the file (storage, session, feed) are taken
    from the file's folder. A missing file is an error when ``required``, else the embedded
    defaults (relative to the working directory)."""
    path = Path(path)
    if not path.exists():
        if required:
            raise ConfigError(f"{path}: no such configuration file")
        return AppConfig()
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    try:
        config = AppConfig.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False):
            loc = tuple(str(part) for part in error["loc"])
            key = ".".join(loc) or "(top level)"
            message = error["msg"].removeprefix("Value error, ")
            if error["type"] == "extra_forbidden":
                message += _suggestion(loc)
            problems.append(f"{path}: {key}: {message}")
        raise ConfigError("\n".join(problems)) from None
    return _resolve_paths(config, path.absolute().parent)


def load_cli_config(given: str | Path | None, *, optional: bool = False) -> tuple[AppConfig, Path]:
    """The configuration a command runs with, and the file it came from (its folder holds the
    ``.env``). A ``--config`` that does not exist is an error; so is a missing default
    ``config.yaml``, unless the command is ``optional`` about it (built-in defaults, working
    directory)."""
    path = Path(given if given is not None else DEFAULT_CONFIG)
    if not path.exists():
        if given is not None:
            raise ConfigMissing(f"configuration file {path} does not exist")
        if not optional:
            raise ConfigMissing(
                f"no {DEFAULT_CONFIG} in {Path.cwd()}: pass --config PATH, "
                "or run from the folder that holds it"
            )
    return load_config(path, required=given is not None), path


def _suggestion(loc: tuple[str, ...]) -> str:
    """ "; did you mean strategy.tp_pct?" for a key that is one typo away from a valid one."""
    model: Any = AppConfig
    for part in loc[:-1]:
        field = model.model_fields.get(part)
        model = field.annotation if field is not None else None
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return ""
    close = difflib.get_close_matches(loc[-1], list(model.model_fields), n=1, cutoff=0.6)
    return f"; did you mean {'.'.join((*loc[:-1], close[0]))}?" if close else ""


def _resolve_paths(config: AppConfig, base: Path) -> AppConfig:
    def at(value: str) -> str:
        given = Path(os.path.expanduser(value))
        return str(given if given.is_absolute() else base / given)

    feed = at(config.telegram.feed_path)
    bundled = REPO_ROOT / config.telegram.feed_path
    if not Path(feed).exists() and not Path(config.telegram.feed_path).is_absolute() and bundled.exists():
        feed = str(bundled)  # the demo feed that ships with shortfsm (specs/feeds/demo.jsonl)
    storage = config.storage.model_copy(
        update={
            "database": at(config.storage.database),
            "log_dir": at(config.storage.log_dir),
            "heartbeat_path": at(config.storage.heartbeat_path),
        }
    )
    telegram = config.telegram.model_copy(
        update={"session_path": at(config.telegram.session_path), "feed_path": feed}
    )
    return config.model_copy(update={"storage": storage, "telegram": telegram})


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
    after = new.for_profile(old._profile_flag).model_dump(exclude={"strategy"})
    changed = [
        f"{section}.{key}"
        for section, values in after.items()
        for key, value in values.items()
        if before.get(section, {}).get(key) != value
    ]
    return tuple(sorted(changed))
