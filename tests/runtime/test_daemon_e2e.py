"""The whole daemon against the simulated venue over loopback, on a compressed clock."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from decimal import Decimal
from pathlib import Path

import pytest
import runtime_kit as kit

from binance.sim.server import RestFault
from fsm.runtime.config import AppConfig, BinanceConfig, Secrets
from fsm.runtime.daemon import RunOptions, StartupRefused, run_daemon

ETH_LEADING = (1000, kit.ENTRY_CHAT, 1001, kit.LEADING.format(ticker="ETH"))


def _orders(exchange: object) -> list[tuple[str, str, str, Decimal, Decimal, str, bool]]:
    return sorted(
        (o.client_id, o.side, o.type, o.price, o.qty, o.status, o.reduce_only)
        for o in exchange.orders.values()  # type: ignore[attr-defined]
    )


@pytest.mark.spec("W55")
def test_w55_leading_message_to_take_profit_to_flat(tmp_path: Path) -> None:
    feed = kit.write_feed(tmp_path, [ETH_LEADING])

    async def scenario() -> None:
        async with kit.Venue(kit.W55_PATH) as venue:
            run = await venue.start_daemon(tmp_path, feed)
            await kit.wait_until(lambda: run.seen.has("entry_lock GLOBAL_LOCKED->GLOBAL_IDLE"))
            engine = run.daemon.engine
            assert engine.state_of("ETHUSDT") == "IDLE"
            assert engine.lock_state("entry_lock") == "GLOBAL_IDLE"
            assert await run.stop() == 0
            assert _orders(venue.exchange) == [
                (
                    "sf1001-E11-ETHUSDT",
                    "SELL",
                    "LIMIT",
                    Decimal("3535.00"),
                    Decimal("1.414"),
                    "FILLED",
                    False,
                ),
                ("sf1001-TP1-ETHUSDT", "BUY", "LIMIT", Decimal("3358.25"), Decimal("1.414"), "FILLED", True),
            ]
            position = venue.exchange.positions[("ETHUSDT", "BOTH")]
            assert position.amount == 0
            assert run.seen.transitions()[1:] == [
                "ETHUSDT IDLE->MONITORING",
                "ETHUSDT MONITORING->ENTRY_ORDER",
                "entry_lock GLOBAL_IDLE->GLOBAL_LOCKED",
                "ETHUSDT ENTRY_ORDER->PHASE1",
                "ETHUSDT PHASE1->EXITING",
                "ETHUSDT close OPEN->CLOSING",  # the TP filled the position away (R15)
                "ETHUSDT EXITING->IDLE",
                "entry_lock GLOBAL_LOCKED->GLOBAL_IDLE",
            ]

    kit.run(scenario())
    db = sqlite3.connect(tmp_path / "db.sqlite")
    assert db.execute("SELECT chat_id, message_id FROM cursors").fetchall() == [(kit.ENTRY_CHAT, 1001)]
    assert db.execute("SELECT client_order_id, status FROM orders ORDER BY 1").fetchall() == [
        ("sf1001-E11-ETHUSDT", "FILLED"),
        ("sf1001-TP1-ETHUSDT", "FILLED"),
    ]
    realised = db.execute("SELECT realized_pnl FROM fills WHERE client_order_id LIKE '%TP1%'").fetchone()
    assert Decimal(realised[0]) == (Decimal("3535.00") - Decimal("3358.25")) * Decimal("1.414")
    kinds = [r[0] for r in db.execute("SELECT kind FROM alerts ORDER BY id")]
    assert kinds == ["entry_filled", "position_closed"]
    lines = [json.loads(line) for line in (tmp_path / "log" / "shortfsm.jsonl").read_text().splitlines()]
    placed = [r for r in lines if r["kind"] == "order" and r["command"] == "PlaceOrder"]
    assert [(r["params"]["client_order_id"], r["result"], r["attempt"]) for r in placed] == [
        ("sf1001-E11-ETHUSDT", "accepted", 1),
        ("sf1001-TP1-ETHUSDT", "accepted", 1),
    ]


@pytest.mark.spec("G02")
def test_restart_in_the_middle_converges_without_duplicates(tmp_path: Path) -> None:
    """Stop the daemon while its TP rests on the venue; a new daemon on the same database and venue
    recovers the position from the exchange, keeps the TP, does not replay the message, ends flat."""
    feed = kit.write_feed(tmp_path, [ETH_LEADING])

    async def scenario() -> None:
        async with kit.Venue(kit.W55_PATH) as venue:
            first = await venue.start_daemon(tmp_path, feed)
            await kit.wait_until(lambda: first.seen.accepted("sf1001-TP1-ETHUSDT"))
            assert await first.stop() == 0
            second = await venue.start_daemon(tmp_path, feed)
            await kit.wait_until(lambda: second.seen.has("recovery_lock RECOVERING->READY"))
            assert second.daemon.engine.state_of("ETHUSDT") == "PHASE1"
            await kit.wait_until(lambda: second.seen.has("ETHUSDT EXITING->IDLE"))
            assert await second.stop() == 0
            cids = [o.client_id for o in venue.exchange.orders.values()]
            assert sorted(cids) == ["sf1001-E11-ETHUSDT", "sf1001-TP1-ETHUSDT"]  # nothing sent twice
            assert [o for o in venue.exchange.orders.values() if o.is_open] == []
            assert [a for a in venue.exchange.algos.values() if a.status == "NEW"] == []
            messages = [e for e, _ in second.seen.items if type(e).__name__ == "MessageReceived"]
            assert messages == []  # G02: the saved cursor kept message 1001 from being replayed

    kit.run(scenario())


@pytest.mark.spec("W40", "W41")
def test_restart_in_phase1_before_any_exit_order_keeps_managing_the_position(tmp_path: Path) -> None:
    """Stop right after the entry fills, before the TP exists: no order of ours is open on the venue,
    so only the stored snapshot says the short is ours (D-17). The new daemon must manage it: the TP
    goes out at its trigger and the position ends flat, with nothing sent twice."""
    feed = kit.write_feed(tmp_path, [ETH_LEADING])

    async def scenario() -> None:
        async with kit.Venue(kit.W55_PATH) as venue:
            first = await venue.start_daemon(tmp_path, feed)
            await kit.wait_until(lambda: first.seen.has("ETHUSDT ENTRY_ORDER->PHASE1"))
            assert await first.stop() == 0
            assert [o.client_id for o in venue.exchange.orders.values()] == ["sf1001-E11-ETHUSDT"]
            second = await venue.start_daemon(tmp_path, feed)
            await kit.wait_until(lambda: second.seen.has("recovery_lock RECOVERING->READY"))
            assert second.daemon.engine.state_of("ETHUSDT") == "PHASE1"
            await kit.wait_until(lambda: second.seen.has("ETHUSDT EXITING->IDLE"))
            assert await second.stop() == 0
            cids = [o.client_id for o in venue.exchange.orders.values()]
            assert sorted(cids) == ["sf1001-E11-ETHUSDT", "sf1001-TP1-ETHUSDT"]
            assert [o for o in venue.exchange.orders.values() if o.is_open] == []

    kit.run(scenario())


def test_clean_stop_leaves_orders_in_place_and_saves_state(tmp_path: Path) -> None:
    feed = kit.write_feed(tmp_path, [ETH_LEADING])
    path = kit.PricePath(base={"ETHUSDT": Decimal("3500.00")}, points=kit.points([(3, "ETHUSDT", "3532.00")]))

    async def scenario() -> None:
        async with kit.Venue(path) as venue:
            run = await venue.start_daemon(tmp_path, feed)
            await kit.wait_until(lambda: run.seen.accepted("sf1001-E11-ETHUSDT"))
            assert await run.stop() == 0
            open_orders = [(o.client_id, o.status) for o in venue.exchange.orders.values() if o.is_open]
            assert open_orders == [("sf1001-E11-ETHUSDT", "NEW")]

    kit.run(scenario())
    db = sqlite3.connect(tmp_path / "db.sqlite")
    snapshot = json.loads(db.execute("SELECT engine FROM snapshots ORDER BY id DESC LIMIT 1").fetchone()[0])
    assert snapshot["symbols"]["ETHUSDT"]["state"] == "ENTRY_ORDER"
    board = json.loads(db.execute("SELECT value FROM status WHERE key = 'board'").fetchone()[0])
    assert board["position"]["symbol"] == "ETHUSDT"
    assert board["locks"]["entry_lock"] == "GLOBAL_LOCKED"


def test_heartbeat_file_content(tmp_path: Path) -> None:
    feed = kit.write_feed(tmp_path, [])

    async def scenario() -> dict[str, object]:
        async with kit.Venue(kit.W55_PATH) as venue:
            run = await venue.start_daemon(tmp_path, feed)
            hb = tmp_path / "hb.json"
            await kit.wait_until(
                lambda: hb.exists() and json.loads(hb.read_text())["locks"]["recovery_lock"] == "READY"
            )
            await kit.wait_until(lambda: json.loads(hb.read_text())["streams"]["market"] == "up")
            data: dict[str, object] = json.loads(hb.read_text())
            assert await run.stop() == 0
            return data

    data = kit.run(scenario())
    assert sorted(data) == sorted(
        [
            "now_ms",
            "wall_ms",
            "pid",
            "started_ms",
            "profile",
            "urls",
            "price_source",
            "price_age_ms",
            "streams",
            "locks",
            "database",
            "database_path",
            "last_event",
            "exposure",
            "connections",
            "alerts",
        ]
    )
    assert (data["pid"], data["profile"], data["database_path"]) == (
        os.getpid(),
        "sim",
        str(tmp_path / "db.sqlite"),
    )
    assert data["exposure"] == {"orders": [], "positions": []}
    assert data["price_source"] == "WS"
    assert data["database"] == "ok"
    assert data["streams"] == {"market": "up", "user": "up", "telegram": "replay"}
    assert data["locks"] == {
        "entry_lock": "GLOBAL_IDLE",
        "safety_lock": "PRICE_OK",
        "recovery_lock": "READY",
        "exit_cancel_lock": "CLEAR",
        "rate_limit": "NORMAL",
        "auth": "AUTH_OK",
    }


def test_mainnet_refused_without_opt_in(tmp_path: Path) -> None:
    config = AppConfig(binance=BinanceConfig(profile="mainnet", allow_mainnet=False))
    with pytest.raises(StartupRefused, match="allow_mainnet: true"):
        kit.run(run_daemon(config, Secrets(_env_file=None), RunOptions(profile="mainnet")))  # type: ignore[call-arg]
    assert not (tmp_path / "db.sqlite").exists()


def test_demo_profile_refused_without_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("BINANCE_API_KEY", "BINANCE_API_SECRET", "TELEGRAM_API_ID", "TELEGRAM_API_HASH"):
        monkeypatch.delenv(name, raising=False)
    config = AppConfig(binance=BinanceConfig(profile="demo"))
    with pytest.raises(StartupRefused) as info:
        kit.run(run_daemon(config, Secrets(_env_file=None), RunOptions(profile="demo")))  # type: ignore[call-arg]
    assert str(info.value) == (
        "the demo profile needs BINANCE_API_KEY, BINANCE_API_SECRET, TELEGRAM_API_HASH, TELEGRAM_API_ID "
        "in the environment or .env"
    )


@pytest.mark.spec("W55", "N-28")
def test_a_tp_filled_while_no_daemon_ran_is_booked_from_the_venue_history(tmp_path: Path) -> None:
    """Stop with the TP resting; it fills while nothing runs. The next daemon finds the venue flat
    (nothing to manage) and books the TP's fill from userTrades: same trade key as a push, the order
    row FILLED, and an alert with the realised PnL and fee, so no fill of ours goes unrecorded."""
    feed = kit.write_feed(tmp_path, [ETH_LEADING])

    async def scenario() -> None:
        async with kit.Venue(kit.W55_PATH) as venue:
            first = await venue.start_daemon(tmp_path, feed)
            await kit.wait_until(lambda: first.seen.accepted("sf1001-TP1-ETHUSDT"))
            assert await first.stop() == 0
            ex = venue.exchange
            await kit.wait_until(lambda: all(o.status == "FILLED" for o in ex.orders.values()))
            second = await venue.start_daemon(tmp_path, feed)
            await kit.wait_until(lambda: second.seen.has("recovery_lock RECOVERING->READY"))
            assert second.daemon.engine.active_symbols() == {}
            await kit.wait_until(lambda: len(kit.rows(tmp_path, "SELECT 1 FROM fills")) == 2)
            assert await second.stop() == 0
            tp = ex.trades[-1]
            fills = kit.rows(
                tmp_path,
                "SELECT trade_key, client_order_id, qty, price, realized_pnl FROM fills ORDER BY trade_key",
            )
            assert [(key, cid, qty, price, Decimal(pnl)) for key, cid, qty, price, pnl in fills] == [
                (f"ETHUSDT:{ex.trades[0]['id']}", "sf1001-E11-ETHUSDT", "1.414", "3535.00", Decimal(0)),
                (f"ETHUSDT:{tp['id']}", "sf1001-TP1-ETHUSDT", "1.414", "3358.25", Decimal(tp["realizedPnl"])),
            ]
            assert kit.rows(
                tmp_path, "SELECT client_order_id, status FROM orders ORDER BY client_order_id"
            ) == [
                ("sf1001-E11-ETHUSDT", "FILLED"),
                ("sf1001-TP1-ETHUSDT", "FILLED"),
            ]
            assert kit.rows(tmp_path, "SELECT kind, symbol, text FROM alerts WHERE kind = 'recovery'") == [
                (
                    "recovery",
                    "ETHUSDT",
                    "while shortfsm was down: sf1001-TP1-ETHUSDT FILLED, 1.414 of 1.414, filled 1.414 @ "
                    f"3358.25 (trade {tp['id']}), realised {tp['realizedPnl']} USDT, "
                    f"fee {tp['commission']} USDT",
                )
            ]

    kit.run(scenario())


# W55 up to its TP, which then rests: the mark stays above the TP price.
RESTING_TP_PATH = kit.PricePath(
    base={"ETHUSDT": Decimal("3500.00")},
    points=kit.points([(3, "ETHUSDT", "3532.00"), (5, "ETHUSDT", "3536.00"), (8, "ETHUSDT", "3360.00")]),
)


@pytest.mark.spec("N-28")
def test_a_stream_that_opened_during_recovery_is_reconciled_again_once_the_orders_are_known(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The listenKey answers after recovery stopped waiting (0.8 s > 0.5 s wall) and before the slow
    snapshot is in (1.1 s): the stream's first reconciliation finds no order known yet. Once recovery
    has rebuilt PHASE1 with its TP, the daemon reads the TP back once more, so nothing that happened
    between the snapshot's read and the stream can be missed."""
    caplog.set_level(logging.WARNING, logger="fsm.runtime.daemon")
    feed = kit.write_feed(tmp_path, [ETH_LEADING])

    async def scenario() -> None:
        async with kit.Venue(RESTING_TP_PATH) as venue:
            first = await venue.start_daemon(tmp_path, feed)
            await kit.wait_until(lambda: first.seen.accepted("sf1001-TP1-ETHUSDT"))
            assert await first.stop() == 0
            sim = venue.harness.venue
            sim.faults.add(RestFault(method="POST", path="/fapi/v1/listenKey", kind="slow", hang_s=0.8))
            sim.faults.add(RestFault(method="GET", path="/fapi/v1/openOrders", kind="slow", hang_s=1.1))
            before = len(sim.requests)
            second = await venue.start_daemon(tmp_path, feed)
            await kit.wait_until(lambda: second.seen.has("recovery_lock RECOVERING->READY"))
            await kit.wait_until(lambda: ("GET", "/fapi/v1/order") in sim.requests[before:])
            assert second.daemon.engine.state_of("ETHUSDT") == "PHASE1"
            assert await second.stop() == 0

    kit.run(scenario())
    rereads = [r.getMessage() for r in caplog.records if r.getMessage().startswith("user stream reconnected")]
    assert rereads[0] == "user stream reconnected: re-reading 0 open order(s) and the positions"
    assert rereads[-1] == "user stream reconnected: re-reading 1 open order(s) and the positions"
    assert any("user stream not open after 0.5 s" in r.getMessage() for r in caplog.records)
