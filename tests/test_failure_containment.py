"""Failure containment (issue #11 item 6): an exception inside ``handle`` leaves no half-applied state
traded on. A person is told, the recovery lock blocks entries, and a re-read of the exchange rebuilds
every symbol as after a restart (N-28)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from fsm import commands as cmd
from fsm import events as ev
from fsm.runtime.scenario import T0_MS, Runner

DOC = {
    "id": "containment",
    "venue": {
        "symbols": {"BTCUSDT": {"tick": "0.1", "step": "0.001"}},
        "klines": {"BTCUSDT": {"high": "101", "low": "99", "close": "100"}},
    },
    "steps": [
        {"at": 0, "leading": {"id": 1001}},
        {"at": 1, "mark": {"BTCUSDT": "101"}},
        {"at": 2, "fill": {"leg": "ENTRY1"}},
        {"at": 3, "mark": {"BTCUSDT": "100"}},
    ],
}


def at(runner: Runner, seconds: float) -> int:
    runner.now_ms = T0_MS + int(seconds * 1000)
    return runner.now_ms


@pytest.mark.spec("G04")
def test_an_exception_inside_handle_locks_entries_and_rebuilds_from_the_exchange() -> None:
    runner = Runner(DOC)
    assert runner.run().passed
    engine = runner.engine
    assert engine.state_of("BTCUSDT") == "PHASE1"

    def broken(_core: object, event: ev.MarkPriceTick) -> None:
        engine.symbols["BTCUSDT"].add_armed = False  # half applied ...
        raise KeyError("boom")  # ... then the handler fails

    engine._handler_table[ev.MarkPriceTick] = broken
    now = at(runner, 4)
    commands = runner.feed(
        [ev.MarkPriceTick(now_ms=now, symbol="BTCUSDT", price=Decimal("100"), event_time_ms=now)]
    )
    alerts = [(c.kind, c.severity) for c in commands if isinstance(c, cmd.Notify)]
    assert ("engine_error", "critical") in alerts
    assert any(isinstance(c, cmd.QueryExchange) and c.purpose == "recovery" for c in commands)
    transitions = [(c.machine, c.source, c.dest) for c in commands if isinstance(c, cmd.Transitioned)]
    # Locked, then the snapshot (answered at once by the venue double) rebuilds the position.
    assert ("recovery_lock", "READY", "RECOVERING") in transitions
    assert ("symbol", "IDLE", "PHASE1") in transitions
    assert engine.lock_state("recovery_lock") == "RECOVERING"  # no price since the failure yet
    model = engine.symbols["BTCUSDT"]
    assert (model.position(), model.average(), model.add_armed) == (Decimal("4.950"), Decimal("101.0"), True)
    del engine._handler_table[ev.MarkPriceTick]
    engine._handler_table = engine._handlers()
    now = at(runner, 5)
    assert engine.blocked("entry_trigger") == "entry_lock"  # our own position holds it; and below it:
    engine.locks["entry_lock"].state = "GLOBAL_IDLE"
    assert engine.blocked("entry_trigger") == "recovery_lock"
    engine.locks["entry_lock"].state = "GLOBAL_LOCKED"
    commands = runner.feed(
        [ev.MarkPriceTick(now_ms=now, symbol="BTCUSDT", price=Decimal("100"), event_time_ms=now)]
    )
    assert [(c.machine, c.dest) for c in commands if isinstance(c, cmd.Transitioned)] == [
        ("recovery_lock", "READY")
    ]
