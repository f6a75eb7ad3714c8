"""Config reload in the running daemon: the file is polled (mtime, size) every status step and re-read
on SIGHUP; strategy settings go to the engine's settings lock (N-26, G06), other keys need a restart,
an invalid file changes nothing."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from decimal import Decimal
from pathlib import Path

import pytest
import runtime_kit as kit

from fsm import commands as cmd
from fsm import events as ev
from fsm.runtime.config import AppConfig, Secrets, load_config, restart_changes, settings_changes
from fsm.runtime.daemon import Daemon, RunOptions, run_daemon

ETH = kit.LEADING.format(ticker="ETH")
HOLD_PHASE1 = kit.PricePath(
    base={"ETHUSDT": Decimal("3500.00")},
    points=kit.points([(3, "ETHUSDT", "3532.00"), (5, "ETHUSDT", "3536.00")]),
)


def _requests(seen: kit.Seen) -> list[tuple[tuple[str, str], ...]]:
    return [e.changes for e, _ in seen.items if isinstance(e, ev.SettingsChangeRequested)]


def _rewrite(path: Path, text: str) -> None:
    """New content with a different (mtime, size) signature, whatever the file system's resolution."""
    before = path.stat().st_mtime_ns
    path.write_text(path.read_text(encoding="utf-8") + text, encoding="utf-8")
    os.utime(path, ns=(before + 1_000_000, before + 1_000_000))


def _replace(path: Path, text: str) -> None:
    """The storage section plus ``text``, with a new (mtime, size) signature."""
    before = path.stat().st_mtime_ns
    storage = path.read_text(encoding="utf-8").split("strategy:")[0]
    path.write_text(storage + text, encoding="utf-8")
    os.utime(path, ns=(before + 2_000_000, before + 2_000_000))


# ---------------------------------------------------------------------------------------------
# Pure helpers
# ---------------------------------------------------------------------------------------------


def test_settings_changes_lists_strategy_keys_as_text() -> None:
    running = AppConfig().to_strategy()
    new = AppConfig.model_validate(
        {
            "strategy": {"mdd_pct": "20", "mode": "conservative", "excluded_category_words": ["meme", "nft"]},
            "telegram": {"entry_chat_id": 1},
        }
    )
    assert settings_changes(running, new) == (
        ("excluded_category_words", "meme,nft"),
        ("mdd_pct", "20"),
        ("mode", "conservative"),
    )
    assert restart_changes(AppConfig(), new) == ("telegram.entry_chat_id",)
    assert running.with_changes(dict(settings_changes(running, new))).mdd_pct == Decimal("20")


# ---------------------------------------------------------------------------------------------
# Through the running daemon (mtime poll)
# ---------------------------------------------------------------------------------------------


@pytest.mark.spec("G06", "N-26")
def test_mdd_change_with_a_position_open_is_refused_logged_and_alerted(tmp_path: Path) -> None:
    feed = kit.write_feed(tmp_path, [(1000, kit.ENTRY_CHAT, 1001, ETH)])
    config_path = kit.write_config(tmp_path)

    async def scenario() -> None:
        async with kit.Venue(HOLD_PHASE1) as venue:
            run = await venue.start_daemon(
                tmp_path, feed, config=load_config(config_path), config_path=config_path
            )
            await kit.wait_until(lambda: run.seen.has("ETHUSDT ENTRY_ORDER->PHASE1"))
            _rewrite(config_path, "strategy:\n  mdd_pct: 20\n")
            await kit.wait_until(lambda: bool(kit.logs(run.seen, "settings_refused")))
            assert _requests(run.seen) == [(("mdd_pct", "20"),)]
            assert kit.logs(run.seen, "settings_refused") == [
                (None, "symbols_active", {"active": "ETHUSDT", "keys": "mdd_pct"})
            ]
            assert run.daemon.engine.strategy.mdd_pct == Decimal("15")
            assert run.daemon.engine.pending_settings == {"mdd_pct": "20"}  # D-23: kept for when flat
            assert run.daemon.engine.state_of("ETHUSDT") == "PHASE1"
            await asyncio.sleep(0.5)  # the unchanged file is not proposed again
            assert len(_requests(run.seen)) == 1
            # The operator puts the file back: the waiting change is dropped, nothing applies later.
            _replace(config_path, "strategy:\n  mdd_pct: 15\n")
            await kit.wait_until(lambda: bool(kit.logs(run.seen, "settings_pending_dropped")))
            assert _requests(run.seen) == [(("mdd_pct", "20"),), ()]
            assert run.daemon.engine.pending_settings == {}
            assert run.daemon.engine.strategy.mdd_pct == Decimal("15")
            assert await run.stop() == 0

    kit.run(scenario())
    assert kit.rows(tmp_path, "SELECT reason, data FROM decisions WHERE kind = 'settings_refused'") == [
        ("symbols_active", '{"active": "ETHUSDT", "keys": "mdd_pct"}')
    ]
    assert kit.rows(tmp_path, "SELECT severity, text FROM alerts WHERE kind = 'settings_refused'") == [
        ("warning", "settings locked while trading; they apply once no symbol is active")
    ]


@pytest.mark.spec("G06", "N-26", "N-28")
def test_mdd_change_made_while_the_daemon_was_down_waits_for_the_position_to_close(tmp_path: Path) -> None:
    """D-23: config.yaml says mdd_pct 20 when the daemon restarts with a PHASE1 position open. The
    restarted engine keeps the 15 it traded with (a restart must not bypass the settings lock), says
    so, and takes 20 once the TP has closed the position."""
    feed = kit.write_feed(tmp_path, [(1000, kit.ENTRY_CHAT, 1001, ETH)])
    config_path = kit.write_config(tmp_path)
    path = kit.PricePath(
        base={"ETHUSDT": Decimal("3500.00")},
        points=kit.points(
            [
                (3, "ETHUSDT", "3532.00"),
                (5, "ETHUSDT", "3536.00"),
                (20, "ETHUSDT", "3360.00"),
                (23, "ETHUSDT", "3358.00"),
            ]
        ),
    )

    async def scenario() -> None:
        async with kit.Venue(path) as venue:
            first = await venue.start_daemon(tmp_path, feed, config=load_config(config_path))
            await kit.wait_until(lambda: first.seen.has("ETHUSDT ENTRY_ORDER->PHASE1"))
            assert await first.stop() == 0
            _replace(config_path, "strategy:\n  mdd_pct: 20\n")
            second = await venue.start_daemon(tmp_path, feed, config=load_config(config_path))
            await kit.wait_until(lambda: second.seen.has("recovery_lock RECOVERING->READY"))
            engine = second.daemon.engine
            assert engine.state_of("ETHUSDT") == "PHASE1"
            assert engine.strategy.mdd_pct == Decimal("15")
            assert engine.pending_settings == {"mdd_pct": "20"}
            assert _requests(second.seen) == [(("mdd_pct", "20"),)]
            assert kit.logs(second.seen, "settings_refused") == [
                (None, "symbols_active", {"active": "ETHUSDT", "keys": "mdd_pct"})
            ]
            assert not venue.at(20)  # decided while the position was still open
            await kit.wait_until(lambda: second.seen.has("entry_lock GLOBAL_LOCKED->GLOBAL_IDLE"), timeout=10)
            assert kit.logs(second.seen, "settings_applied") == [
                (None, "no_symbol_active", {"keys": "mdd_pct"})
            ]
            assert engine.strategy.mdd_pct == Decimal("20") and engine.pending_settings == {}
            assert await second.stop() == 0

    kit.run(scenario(), timeout=25)
    assert kit.rows(
        tmp_path, "SELECT severity, text FROM alerts WHERE kind LIKE 'settings%' ORDER BY id"
    ) == [
        ("warning", "settings locked while trading; they apply once no symbol is active"),
        ("info", "settings applied now that no symbol is active: mdd_pct"),
    ]


@pytest.mark.spec("G06", "N-26")
def test_tp_change_while_flat_is_applied_and_used_by_the_next_trade(tmp_path: Path) -> None:
    """tp_pct 5 -> 4 while nothing is active: accepted; the next position's TP is 3535.00 x 0.96."""
    feed = kit.write_feed(tmp_path, [(10000, kit.ENTRY_CHAT, 1001, ETH)])
    config_path = kit.write_config(tmp_path)
    path = kit.PricePath(
        base={"ETHUSDT": Decimal("3500.00")},
        points=kit.points(
            [(12, "ETHUSDT", "3532.00"), (14, "ETHUSDT", "3536.00"), (17, "ETHUSDT", "3396.00")]
        ),
    )

    async def scenario() -> None:
        async with kit.Venue(path) as venue:
            run = await venue.start_daemon(
                tmp_path, feed, config=load_config(config_path), config_path=config_path
            )
            await kit.wait_until(lambda: run.seen.has("recovery_lock RECOVERING->READY"))
            _rewrite(config_path, "strategy:\n  tp_pct: 4\n")
            await kit.wait_until(lambda: bool(kit.logs(run.seen, "settings_applied")))
            assert not venue.at(10)  # applied before the signal arrives
            assert kit.logs(run.seen, "settings_applied") == [(None, "ok", {"keys": "tp_pct"})]
            assert run.daemon.engine.strategy.tp_pct == Decimal("4")
            await kit.wait_until(lambda: run.seen.accepted("sf1001-TP1-ETHUSDT"))
            assert await run.stop() == 0
            tp = [o for o in venue.exchange.orders.values() if o.client_id == "sf1001-TP1-ETHUSDT"]
            assert [(o.side, o.price, o.qty, o.reduce_only) for o in tp] == [
                ("BUY", Decimal("3393.60"), Decimal("1.414"), True)
            ]

    kit.run(scenario())


def test_non_reloadable_keys_say_a_restart_is_needed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fsm.runtime.daemon")
    feed = kit.write_feed(tmp_path, [])
    config_path = kit.write_config(tmp_path)

    async def scenario() -> None:
        async with kit.Venue(HOLD_PHASE1) as venue:
            run = await venue.start_daemon(
                tmp_path, feed, config=load_config(config_path), config_path=config_path
            )
            await kit.wait_until(lambda: run.seen.has("recovery_lock RECOVERING->READY"))
            _rewrite(
                config_path,
                "binance:\n  profile: demo\n  rest_url: https://example.invalid\n"
                "telegram:\n  risk_chat_id: -100123\n",
            )
            await kit.wait_until(lambda: "restart shortfsm" in caplog.text)
            await asyncio.sleep(0.3)
            assert _requests(run.seen) == []
            assert run.daemon.engine.strategy.risk_chat_id == kit.RISK_CHAT
            assert await run.stop() == 0

    kit.run(scenario())
    restart = [r.getMessage() for r in caplog.records if "restart shortfsm" in r.getMessage()]
    assert restart == [
        "config reload: binance.profile changed; restart shortfsm for it to take effect",
        "config reload: binance.rest_url changed; restart shortfsm for it to take effect",
        "config reload: telegram.risk_chat_id changed; restart shortfsm for it to take effect",
    ]
    assert all(r.levelno == logging.WARNING for r in caplog.records if "restart shortfsm" in r.getMessage())


def test_invalid_config_is_logged_and_the_old_one_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fsm.runtime.daemon")
    feed = kit.write_feed(tmp_path, [])
    config_path = kit.write_config(tmp_path)

    async def scenario() -> None:
        async with kit.Venue(HOLD_PHASE1) as venue:
            run = await venue.start_daemon(
                tmp_path, feed, config=load_config(config_path), config_path=config_path
            )
            await kit.wait_until(lambda: run.seen.has("recovery_lock RECOVERING->READY"))
            _rewrite(config_path, "strategy:\n  mdd_pct: -5\n  bogus_key: 1\n")
            await kit.wait_until(lambda: "is invalid" in caplog.text)
            assert _requests(run.seen) == []
            assert run.daemon.engine.strategy.mdd_pct == Decimal("15")
            # The next valid save is read as usual: the watcher keeps going.
            config_path.write_text(
                config_path.read_text(encoding="utf-8").replace(
                    "  mdd_pct: -5\n  bogus_key: 1\n", "  mdd_pct: 18\n"
                ),
                encoding="utf-8",
            )
            os.utime(config_path, ns=(1, 1))
            await kit.wait_until(lambda: bool(kit.logs(run.seen, "settings_applied")))
            assert run.daemon.engine.strategy.mdd_pct == Decimal("18")
            assert await run.stop() == 0

    kit.run(scenario())
    errors = [r for r in caplog.records if r.name == "fsm.runtime.daemon" and "is invalid" in r.getMessage()]
    assert len(errors) == 1 and errors[0].levelno == logging.ERROR
    assert errors[0].getMessage() == (
        f"config reload: {config_path} is invalid; the running configuration is kept: "
        f"{config_path}: strategy.mdd_pct: Input should be greater than 0; "
        f"{config_path}: strategy.bogus_key: Extra inputs are not permitted"
    )
    assert kit.rows(tmp_path, "SELECT severity FROM alerts WHERE kind = 'config'") == [("warning",)]


# ---------------------------------------------------------------------------------------------
# SIGHUP through run_daemon
# ---------------------------------------------------------------------------------------------


def test_sighup_rereads_the_config_even_when_its_mtime_did_not_change(tmp_path: Path) -> None:
    feed = kit.write_feed(tmp_path, [])
    config_path = kit.write_config(tmp_path, "strategy:\n  mdd_pct: 15\n")
    seen = kit.Seen()
    ready = asyncio.Event()

    def observe(event: ev.Event, commands: list[cmd.Command]) -> None:
        seen(event, commands)
        if seen.has("recovery_lock RECOVERING->READY"):
            ready.set()

    def done(daemon: Daemon) -> bool:
        return bool(kit.logs(seen, "settings_applied"))

    options = RunOptions(
        profile="sim",
        speed=kit.SPEED,
        feed_path=str(feed),
        path=HOLD_PHASE1,
        stop_when=done,
        observer=observe,
        install_signals=True,
        config_path=str(config_path),
    )

    async def scenario() -> int:
        task = asyncio.create_task(
            run_daemon(load_config(config_path), Secrets(_env_file=None), options)  # type: ignore[call-arg]
        )
        await asyncio.wait_for(ready.wait(), 5)
        stat = config_path.stat()
        config_path.write_text(
            config_path.read_text(encoding="utf-8").replace("mdd_pct: 15", "mdd_pct: 25"), encoding="utf-8"
        )
        os.utime(config_path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size, same mtime
        await asyncio.sleep(0.5)  # several status steps: the poll alone does not notice
        assert _requests(seen) == []
        os.kill(os.getpid(), signal.SIGHUP)
        return await asyncio.wait_for(task, 5)

    assert kit.run(scenario()) == 0
    assert _requests(seen) == [(("mdd_pct", "25"),)]
    assert kit.logs(seen, "settings_applied") == [(None, "ok", {"keys": "mdd_pct"})]
    assert kit.rows(tmp_path, "SELECT kind, reason FROM decisions WHERE kind LIKE 'settings%'") == [
        ("settings_applied", "ok")
    ]
