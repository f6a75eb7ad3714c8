"""The SQLite store on a real file, and the daemon's cursor-before-effects ordering (N-05)."""

from __future__ import annotations

import asyncio
import sqlite3
from decimal import Decimal
from pathlib import Path

import pytest
import runtime_kit as kit

from fsm import commands as cmd
from fsm import events as ev
from fsm.engine import Engine
from fsm.runtime.daemon import Daemon, Endpoints, RunClock
from fsm.runtime.store import SCHEMA_VERSION, SNAPSHOTS_KEPT, Store, StoreError, connect, write_control

TABLES = [
    "alerts",
    "cooldowns",
    "cursors",
    "decisions",
    "fills",
    "funding",
    "journal",
    "messages",
    "meta",
    "orders",
    "snapshots",
    "status",
    "transitions",
]


def test_schema_is_migrated_in_wal_mode(tmp_path: Path) -> None:
    db = connect(tmp_path / "x.db")
    names = sorted(n for n in db.table_names() if not n.startswith("sqlite_"))
    assert names == TABLES
    assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (
        str(SCHEMA_VERSION),
    )
    assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    db.conn.close()
    again = connect(tmp_path / "x.db")  # reopening applies nothing twice
    assert again.execute("SELECT count(*) FROM meta").fetchone() == (1,)
    again.conn.close()


def test_newer_schema_and_garbage_files_are_refused(tmp_path: Path) -> None:
    db = connect(tmp_path / "new.db")
    db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    db.conn.close()
    with pytest.raises(StoreError, match="schema 99 is newer"):
        connect(tmp_path / "new.db")
    (tmp_path / "junk.db").write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(StoreError, match="not a usable shortfsm database"):
        connect(tmp_path / "junk.db")


def test_cursors_cooldowns_snapshots_round_trip(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = await Store.open(tmp_path / "s.db")
        await store.save_cursor(-100, 7, 1_000)
        await store.save_cursor(-100, 9, 2_000)
        await store.save_cursor(-200, 3, 2_000)
        await store.record_commands(
            5,
            [
                cmd.PersistCooldown(symbol="ETHUSDT", received_at_ms=4_000),
                cmd.PersistCursor(chat_id=1, message_id=1),
            ],
        )
        for i in range(SNAPSHOTS_KEPT + 5):
            store.save_snapshot(i, {"n": i})
        assert await store.cursors() == {-100: 9, -200: 3}
        assert await store.cooldowns() == {"ETHUSDT": 4_000}
        assert await store.latest_snapshot() == {"n": SNAPSHOTS_KEPT + 4}
        assert await store.rows("SELECT count(*) FROM snapshots") == [(SNAPSHOTS_KEPT,)]
        await store.close()

    kit.run(scenario())


def test_orders_and_fills_follow_commands_and_outcomes(tmp_path: Path) -> None:
    place = cmd.PlaceOrder(
        symbol="ETHUSDT",
        client_order_id="sf1-E11-ETHUSDT",
        leg="ENTRY1",
        side="SELL",
        order_type="LIMIT",
        quantity=Decimal("1.414"),
        price=Decimal("3535.00"),
        time_in_force="GTC",
    )
    fill = ev.OrderUpdated(
        now_ms=30,
        symbol="ETHUSDT",
        client_order_id="sf1-E11-ETHUSDT",
        order_id=77,
        side="SELL",
        order_type="LIMIT",
        status="PARTIALLY_FILLED",
        price=Decimal("3535.00"),
        orig_qty=Decimal("1.414"),
        cum_qty=Decimal("1"),
        last_qty=Decimal("1"),
        last_price=Decimal("3535.00"),
        trade_id=5,
        commission=Decimal("0.707"),
    )

    async def scenario() -> list[tuple[object, ...]]:
        store = await Store.open(tmp_path / "s.db")
        store.record_commands(10, [place])
        store.record_outcome(
            ev.OrderAccepted(now_ms=20, symbol="ETHUSDT", client_order_id=place.client_order_id, order_id=77)
        )
        store.record_outcome(fill)
        store.record_outcome(fill)  # a duplicated user-stream event books no second fill
        rows = await store.rows(
            "SELECT client_order_id, leg, side, type, price, quantity, status, order_id, attempts, "
            "created_ms, updated_ms FROM orders"
        )
        fills = await store.rows("SELECT trade_key, qty, price, commission FROM fills")
        await store.close()
        return [*rows, *fills]

    assert kit.run(scenario()) == [
        ("sf1-E11-ETHUSDT", "ENTRY1", "SELL", "LIMIT", "3535.00", "1.414", "PARTIALLY_FILLED", 77, 1, 10, 30),
        ("ETHUSDT:5", "1", "3535.00", "0.707"),
    ]


def test_control_row_merges(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    assert write_control(path, 1, paused=True) == {"paused": True}
    assert write_control(path, 2, flatten=2) == {"paused": True, "flatten": 2}
    db = sqlite3.connect(path)
    assert db.execute("SELECT updated_ms FROM status WHERE key = 'control'").fetchone() == (2,)


def test_cursor_is_on_disk_before_the_message_has_any_effect(tmp_path: Path) -> None:
    """N-05: PersistCursor is awaited before the first other command of the message is carried out."""
    db_path = tmp_path / "db.sqlite"
    seen_at_subscribe: list[list[tuple[int, int]]] = []

    async def scenario() -> None:
        store = await Store.open(db_path)
        config = kit.config_for(tmp_path)
        endpoints = Endpoints(
            rest_url="http://127.0.0.1:9",
            market_ws_url="ws://127.0.0.1:9/market",
            private_ws_url="ws://127.0.0.1:9/private",
            api_key="k",
            api_secret="s",
        )
        daemon = Daemon(
            config=config, profile="sim", clock=RunClock(), store=store, endpoints=endpoints, source=None
        )
        daemon.engine = Engine(config.to_strategy())  # recovery done

        async def subscribe(symbols: object) -> None:
            with sqlite3.connect(db_path) as conn:  # another connection: only what is committed
                seen_at_subscribe.append(conn.execute("SELECT chat_id, message_id FROM cursors").fetchall())

        daemon.market.subscribe = subscribe  # type: ignore[method-assign]
        info = ev.SymbolInfo(
            symbol="ETHUSDT",
            status="TRADING",
            tick_size=Decimal("0.01"),
            step_size=Decimal("0.001"),
            min_qty=Decimal("0.001"),
        )
        candle = ev.Candle(
            open_time_ms=0,
            close_time_ms=179_999,
            open=Decimal(1),
            high=Decimal(2),
            low=Decimal(1),
            close=Decimal(1),
        )
        from telegram_ingest.grammar import parse_message

        message = ev.MessageReceived(
            now_ms=1_000_000,
            chat_id=kit.ENTRY_CHAT,
            message_id=42,
            telegram_date_ms=999_000,
            parsed=parse_message(kit.LEADING.format(ticker="ETH")),
            symbol_info=info,
            klines=(candle,),
        )
        await daemon._handle(message, execute=True)
        assert daemon.engine.state_of("ETHUSDT") == "MONITORING"
        await daemon.rest.aclose()
        await store.close()

    asyncio.run(scenario())
    assert seen_at_subscribe == [[(kit.ENTRY_CHAT, 42)]]
