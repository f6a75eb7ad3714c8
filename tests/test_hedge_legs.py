"""Hedge mode: a LONG leg is never ours (issue #12 item 2). A manual LONG on the symbol we short only
holds the entry lock; it never resizes our exits, and a restart rebuilds our SHORT leg alone."""

from __future__ import annotations

from decimal import Decimal

import pytest

from fsm import commands as cmd
from fsm import events as ev
from fsm.harness.scenario import T0_MS, Runner

DOC = {
    "id": "hedge",
    "venue": {
        "position_mode": "HEDGE",
        "symbols": {"BTCUSDT": {"tick": "0.1", "step": "0.001"}},
        "klines": {"BTCUSDT": {"high": "101", "low": "99", "close": "100"}},
    },
    "steps": [
        {"at": 0, "leading": {"id": 1001}},
        {"at": 1, "mark": {"BTCUSDT": "101"}},
        {"at": 2, "fill": {"leg": "ENTRY1"}},
        {"at": 3, "mark": {"BTCUSDT": "96.05"}},  # TP 96.0 for 4.950, positionSide SHORT
    ],
}


def _phase1_with_tp() -> Runner:
    runner = Runner(DOC)
    assert runner.run().passed
    assert runner.engine.state_of("BTCUSDT") == "PHASE1"
    return runner


@pytest.mark.spec("R20", "G01")
def test_a_manual_long_leg_never_resizes_our_exits() -> None:
    runner = _phase1_with_tp()
    now = T0_MS + 4000
    long_leg = ev.PositionChanged(
        now_ms=now, symbol="BTCUSDT", amount=Decimal("2.000"), entry_price=Decimal("97"), position_side="LONG"
    )
    commands = runner.feed([long_leg, ev.Tick(now_ms=now + 3000)])
    assert [c for c in commands if isinstance(c, (cmd.PlaceOrder, cmd.CancelOrder, cmd.ResolveOrder))] == []
    model = runner.engine.symbols["BTCUSDT"]
    assert (model.position(), model.venue_position, model.mismatch_since_ms) == (Decimal("4.950"),) * 2 + (0,)
    assert runner.engine.account_positions == {"BTCUSDT": Decimal("4.950"), "BTCUSDT:LONG": Decimal("2.000")}
    assert runner.engine.lock_state("entry_lock") == "GLOBAL_LOCKED"


@pytest.mark.spec("R20", "G01")
def test_a_long_leg_closing_to_zero_does_not_flatten_our_short() -> None:
    runner = _phase1_with_tp()
    now = T0_MS + 4000
    commands = runner.feed(
        [
            ev.PositionChanged(
                now_ms=now,
                symbol="BTCUSDT",
                amount=Decimal("0"),
                entry_price=Decimal("0"),
                position_side="LONG",
            ),
            ev.Tick(now_ms=now + 3000),
        ]
    )
    assert [c for c in commands if isinstance(c, cmd.Transitioned)] == []
    assert runner.engine.state_of("BTCUSDT") == "PHASE1"


@pytest.mark.spec("G01")
def test_recovery_rebuilds_the_short_leg_and_keeps_the_long_for_the_entry_lock() -> None:
    runner = Runner({**DOC, "steps": []})
    engine = runner.engine
    engine.handle(ev.RecoveryStarted(now_ms=T0_MS, managed=(("BTCUSDT", 1001, "PHASE1"),)))
    info = runner.venue.symbols["BTCUSDT"]
    snapshot = ev.ExchangeSnapshot(
        now_ms=T0_MS,
        position_mode="HEDGE",
        wallet_balance=Decimal("1000"),
        available_balance=Decimal("500"),
        positions=(
            ev.PositionInfo(
                symbol="BTCUSDT", amount=Decimal("3"), entry_price=Decimal("90"), position_side="LONG"
            ),
            ev.PositionInfo(
                symbol="BTCUSDT", amount=Decimal("-4.950"), entry_price=Decimal("101"), position_side="SHORT"
            ),
        ),
        open_orders=(),
        symbols=(info,),
        complete=True,
        purpose="recovery",
    )
    commands = engine.handle(snapshot)
    assert [
        (c.source, c.dest) for c in commands if isinstance(c, cmd.Transitioned) and c.machine == "symbol"
    ] == [("IDLE", "PHASE1")]
    model = engine.symbols["BTCUSDT"]
    assert (model.position(), model.average()) == (Decimal("4.950"), Decimal("101"))
    assert engine.account_positions == {"BTCUSDT:LONG": Decimal("3"), "BTCUSDT": Decimal("4.950")}
