"""Funding reaches the ledger: a FUNDING_FEE push through the real daemon against ``binance/sim``
lands once in the database, and the totals (and the trade open then) count it (D-58)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import runtime_kit as kit

from fsm.runtime import ledger


def _funding_push(exchange: Any, symbol: str, amount: str, at_ms: int) -> None:
    wallet = exchange.wallet + Decimal(amount)
    exchange.wallet = wallet
    exchange._emit(
        {
            "e": "ACCOUNT_UPDATE",
            "T": at_ms,
            "E": at_ms + 3,
            "a": {
                "m": "FUNDING_FEE",
                "S": symbol,
                "B": [{"a": "USDT", "wb": f"{wallet:.8f}", "cw": f"{wallet:.8f}", "bc": amount}],
                "P": [],
            },
        }
    )


def test_a_funding_push_is_booked_once_and_counted_in_the_totals(tmp_path: Path) -> None:
    feed = kit.write_feed(tmp_path, [])
    path = kit.PricePath(base={"ETHUSDT": Decimal("3500.00")}, points=())
    db = tmp_path / "db.sqlite"

    def booked() -> list[tuple[Any, ...]]:
        conn = ledger.open_readonly(db)
        try:
            return conn.execute(
                "SELECT symbol, asset, amount, venue_time_ms FROM funding ORDER BY id"
            ).fetchall()
        finally:
            conn.close()

    async def scenario() -> None:
        async with kit.Venue(path) as venue:
            exchange = venue.exchange
            run = await venue.start_daemon(tmp_path, feed)
            daemon = run.daemon
            await kit.wait_until(lambda: daemon.user is not None and daemon.user.connected, timeout=10)
            at = exchange.now()
            _funding_push(exchange, "ETHUSDT", "-0.75000000", at)
            _funding_push(exchange, "ETHUSDT", "-0.75000000", at)  # the same settlement pushed again
            await kit.wait_until(lambda: len(booked()) >= 1 and daemon.queue.empty(), timeout=10)
            assert await run.stop() == 0
            assert booked() == [("ETHUSDT", "USDT", "-0.75000000", at)]
            conn = ledger.open_readonly(db)
            try:
                book = ledger.read_ledger(conn)
            finally:
                conn.close()
            total = book.totals(at).as_dict()["total"]
            assert (total["funding"], total["net"]) == ("-0.7500", "-0.7500")

    kit.run(scenario(), timeout=40)
