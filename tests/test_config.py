"""config.yaml validation (N-26) and secrets from the environment."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from fsm.runtime.config import AppConfig, ConfigError, Secrets, load_config, strategy_changes
from fsm.strategy import Strategy

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.spec("N-26")
def test_committed_config_holds_every_default_of_n26() -> None:
    config = load_config(ROOT / "config.yaml")
    assert config.to_strategy() == Strategy()
    s = config.strategy
    assert (s.mode, s.tp_pct, s.second_entry_pct, s.mdd_pct) == (
        "aggressive",
        Decimal("5"),
        Decimal("15"),
        Decimal("15"),
    )
    assert (s.cooldown_minutes, s.margin_buffer_pct) == (10, Decimal("1"))
    assert (s.ws_stale_fallback_seconds, s.stale_mark_price_seconds, s.trigger_buffer_pct) == (
        5,
        15,
        Decimal("0.1"),
    )
    assert config.binance.profile == "sim" and config.binance.allow_mainnet is False


def test_missing_file_gives_the_embedded_defaults(tmp_path: Path) -> None:
    assert load_config(tmp_path / "absent.yaml") == AppConfig()


def test_unknown_key_is_refused_naming_key_and_file(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("strategy:\n  tp_pctt: 3\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value) and "strategy.tp_pctt" in str(err.value)


def test_wrong_type_is_refused_naming_key(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("strategy:\n  cooldown_minutes: ten\nbinance:\n  profile: live\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert "strategy.cooldown_minutes" in message and "binance.profile" in message


def test_inconsistent_staleness_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("strategy:\n  ws_stale_fallback_seconds: 20\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="stale_mark_price_seconds"):
        load_config(path)


def test_broken_yaml_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("strategy: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_secrets_come_from_environment_and_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(
        "BINANCE_API_KEY=key-from-dotenv\nTELEGRAM_API_ID=12345\n", encoding="utf-8"
    )
    monkeypatch.setenv("BINANCE_API_SECRET", "secret-from-env")
    secrets = Secrets()
    assert secrets.binance_api_key.get_secret_value() == "key-from-dotenv"
    assert secrets.binance_api_secret.get_secret_value() == "secret-from-env"
    assert secrets.telegram_api_id == 12345
    assert "secret-from-env" not in repr(secrets) and "key-from-dotenv" not in repr(secrets)


def test_strategy_changes_lists_only_what_differs(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text('strategy:\n  tp_pct: "3"\n  mode: conservative\n', encoding="utf-8")
    running = AppConfig().to_strategy()
    assert strategy_changes(running, load_config(path).to_strategy()) == (
        ("mode", "conservative"),
        ("tp_pct", "3"),
    )


@pytest.mark.parametrize(("age", "ok"), [(0, True), (19, False), (20, True), (300, True), (301, False)])
def test_the_read_ahead_age_is_off_or_long_enough_to_serve(tmp_path: Path, age: int, ok: bool) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(f"binance:\n  account_read_max_age_seconds: {age}\n", encoding="utf-8")
    if ok:
        assert load_config(path).binance.account_read_max_age_seconds == age
    else:
        with pytest.raises(ConfigError, match=r"binance\.account_read_max_age_seconds"):
            load_config(path)


def test_the_read_ahead_is_off_by_default() -> None:
    """D-72: W24 reads at the trigger unless the operator chooses otherwise."""
    assert AppConfig().binance.account_read_max_age_seconds == 0
