"""Attack pass 2: the trade ledger (``shortfsm trades``) in hedge mode, where the account may hold a
long leg (ours never: short only) on the symbol we are short. Rows written by the real store."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from fsm import commands as cmd
from fsm import events as ev
from fsm.runtime.store import Store

T0 = 1_796_000_000_000
D = Decimal


def _update(
    now: int,
    cid: str,
    oid: int,
    side: str,
    status: str,
    qty: str,
    price: str,
    ps: str,
    trade: int,
    rp: str = "0",
) -> ev.OrderUpdated:
    return ev.OrderUpdated(
        now_ms=now,
        symbol="ETHUSDT",
        client_order_id=cid,
        order_id=oid,
        side=side,  # type: ignore[arg-type]
        order_type="MARKET" if cid.startswith("manual") else "LIMIT",
        status=status,  # type: ignore[arg-type]
        price=D(price),
        orig_qty=D(qty),
        cum_qty=D(qty),
        last_qty=D(qty),
        last_price=D(price),
        avg_price=D(price),
        trade_id=trade,
        position_side=ps,  # type: ignore[arg-type]
        realized_pnl=D(rp),
        commission=D("0.1"),
    )


async def _write(path: Path) -> None:
    store = await Store.open(path)
    entry = cmd.PlaceOrder(
        symbol="ETHUSDT",
        client_order_id="sf1001-E11-ETHUSDT",
        leg="ENTRY1",
        side="SELL",
        order_type="LIMIT",
        quantity=D("1.000"),
        price=D("3500.00"),
        time_in_force="GTC",
        position_side="SHORT",
    )
    tp = cmd.PlaceOrder(
        symbol="ETHUSDT",
        client_order_id="sf1001-TP1-ETHUSDT",
        leg="TP",
        side="BUY",
        order_type="LIMIT",
        quantity=D("1.000"),
        price=D("3325.00"),
        time_in_force="GTC",
        position_side="SHORT",
    )
    await store.record_commands(T0, [entry])
    await store.record_outcome(
        _update(T0 + 1, "sf1001-E11-ETHUSDT", 1, "SELL", "FILLED", "1.000", "3500.00", "SHORT", 11)
    )
    await store.record_commands(T0 + 2, [tp])
    # The operator opens a long leg by hand (hedge mode): BUY on LONG, not an exit of our short.
    await store.record_outcome(
        _update(T0 + 10, "manual-long-open", 2, "BUY", "FILLED", "1.000", "3400.00", "LONG", 12)
    )
    await store.record_outcome(
        _update(T0 + 20, "sf1001-TP1-ETHUSDT", 3, "BUY", "FILLED", "1.000", "3325.00", "SHORT", 13, rp="175")
    )
    await store.record_outcome(
        _update(T0 + 30, "manual-long-close", 4, "SELL", "FILLED", "1.000", "3450.00", "LONG", 14, rp="50")
    )
    await store.close()


def test_a_hand_made_long_leg_in_hedge_mode_is_not_part_of_our_short(tmp_path: Path) -> None:
    db = tmp_path / "db.sqlite"
    asyncio.run(_write(db))
    proc = subprocess.run(
        [sys.executable, "-m", "fsm.ops.cli", "trades", "--db", str(db), "--format", "json"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (proc.returncode, proc.stderr) == (0, "")
    trades = json.loads(proc.stdout)
    ours = [t for t in trades if t["message_id"] == 1001]
    assert len(ours) == 1
    assert (ours[0]["closed"], ours[0]["exit_avg"], ours[0]["exit_quantity"], ours[0]["legs"]) == (
        "2026-11-30T00:53:20Z",
        "3325.00",
        "1.000",
        ["ENTRY1", "TP"],
    )
    assert [t for t in trades if t["status"] == "open"] == []


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fsm.ops.cli", *args], capture_output=True, text=True, timeout=30
    )


@pytest.mark.parametrize("command", [("trades",), ("status", "--json")])
def test_a_fill_row_with_a_garbled_time_is_one_line_not_a_traceback(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    db = tmp_path / "db.sqlite"
    asyncio.run(_write(db))
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE fills SET now_ms = 'x' WHERE rowid = (SELECT MIN(rowid) FROM fills)")
    proc = _cli(*command, "--db", str(db))
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-400:]
    if command == ("trades",):
        assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1
