"""Failure containment (issue #11 item 6): an exception inside ``handle`` leaves no half-applied state
traded on. A person is told, the recovery lock blocks entries, and a re-read of the exchange rebuilds
every symbol as after a restart (N-28)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from fsm import commands as cmd
from fsm import events as ev
from fsm.engine import Engine
from fsm.harness.scenario import T0_MS, Runner
from fsm.orders import OrderTrack

D1 = Decimal(1)

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
        engine.symbols["BTCUSDT"].add_trigger = "OFF"  # half applied ...
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


@pytest.mark.spec("G04", "R15")
def test_a_reset_with_an_order_of_ours_live_is_refused_by_the_table_and_contained() -> None:
    """The symbol table's ``reset`` row has ``unless: may_have_live_order`` (D-67): a decision that
    would forget a symbol while its TP works on the venue is refused, and the refusal is contained
    like any engine error. Without the row the symbol was dropped and its TP left working unseen."""
    runner = Runner(DOC)
    assert runner.run().passed
    engine = runner.engine
    at(runner, 4)
    runner.feed(runner.step_events({"mark": {"BTCUSDT": "96.0"}}))  # W40: the TP goes out
    tp = next(o for o in engine.symbols["BTCUSDT"].orders.values() if o.leg == "TP")
    assert tp.status == "NEW" and tp.may_be_live

    def buggy(core: Engine, _event: ev.Tick) -> None:
        core.reset(core.symbols["BTCUSDT"], "a decision that forgets the TP")

    engine._handler_table[ev.Tick] = buggy
    commands = runner.feed([ev.Tick(now_ms=at(runner, 5))])
    engine._handler_table = engine._handlers()
    notes = [(c.kind, c.severity, c.text) for c in commands if isinstance(c, cmd.Notify)]
    assert [n[:2] for n in notes] == [("engine_error", "critical")]
    assert "RefusedTransition" in notes[0][2]
    logged = [c for c in commands if isinstance(c, cmd.Log) and c.reason == "engine_error"]
    assert "reset of BTCUSDT from PHASE1 refused: ['may_have_live_order']" in dict(logged[0].data)["error"]
    transitions = [(c.machine, c.source, c.dest) for c in commands if isinstance(c, cmd.Transitioned)]
    assert ("symbol", "PHASE1", "IDLE") not in transitions
    assert ("recovery_lock", "READY", "RECOVERING") in transitions
    # Rebuilt from the exchange: the position and its working TP are the engine's again.
    model = engine.symbols["BTCUSDT"]
    assert model.state == "PHASE1"
    assert model.position() == Decimal("4.950")
    assert [(o.cid, o.status) for o in model.open_orders("TP")] == [(tp.cid, "NEW")]
    assert runner.venue.orders[tp.cid].status == "NEW"


@pytest.mark.parametrize(
    ("status", "order_id", "retry_at_ms", "live"),
    [
        ("PENDING_NEW", 0, 0, True),  # sent, unanswered: it may have reached the book
        ("PENDING_NEW", 0, 5_000, False),  # refused, a resend waits for its time
        ("UNKNOWN", 0, 0, True),
        ("NEW", 7, 0, True),
        ("PARTIALLY_FILLED", 7, 0, True),
        ("PENDING_CANCEL", 7, 0, True),
        ("FILLED", 7, 0, False),
        ("CANCELED", 7, 0, False),
        ("REJECTED", 0, 0, False),
        ("EXPIRED", 7, 0, False),
    ],
)
def test_which_orders_may_be_live(status: str, order_id: int, retry_at_ms: int, live: bool) -> None:
    order = OrderTrack(cid="sf1-TP1-BTCUSDT", leg="TP", side="BUY", kind="LIMIT", price=D1, qty=D1)
    order.status, order.order_id, order.retry_at_ms = status, order_id, retry_at_ms  # type: ignore[assignment]
    assert order.may_be_live is live


def _empty_recovery_snapshot(now: int) -> ev.ExchangeSnapshot:
    return ev.ExchangeSnapshot(
        now_ms=now, position_mode="ONE_WAY", wallet_balance=Decimal(1000), available_balance=Decimal(1000),
        positions=(), open_orders=(), symbols=(), complete=True, purpose="recovery",
    )  # fmt: skip


@pytest.mark.spec("N-28")
def test_a_rebuild_that_finds_nothing_on_the_exchange_ends_the_orders_it_proves_gone() -> None:
    """A rebuild after an engine error (D-32) whose complete snapshot lists neither a position nor an
    order of the symbol: the orders the engine thought live are proven gone (R16's ``not_listed``)
    and the symbol resets. Before D-67's row the reset forgot them as they were; with the row and
    without this step, the refusal would be an engine error again: a rebuild that never ends."""
    runner = Runner({**DOC, "steps": DOC["steps"][:2]})
    assert runner.run().passed
    engine = runner.engine
    entry = engine.symbols["BTCUSDT"].orders["sf1001-E11-BTCUSDT"]
    assert (engine.state_of("BTCUSDT"), entry.status) == ("ENTRY_ORDER", "NEW")
    out = engine.handle(_empty_recovery_snapshot(at(runner, 3)))
    assert not [c for c in out if isinstance(c, cmd.Log) and c.reason == "engine_error"]
    assert entry.status == "CANCELED"
    assert engine.state_of("BTCUSDT") == "IDLE"


@pytest.mark.spec("N-28")
@pytest.mark.parametrize("lost", [False, True], ids=["unanswered", "unknown"])
def test_a_rebuild_keeps_a_symbol_whose_request_may_still_execute(lost: bool) -> None:
    """What the venue does not list of a request still unanswered (D-60), or of one whose answer was
    lost (UNKNOWN, D-26), proves nothing while it may still execute: the symbol is kept, and the
    request's answer, or the query after its recvWindow, decides."""
    runner = Runner({**DOC, "steps": DOC["steps"][:1]})
    assert runner.run().passed
    engine = runner.engine
    now = at(runner, 1)
    engine.handle(ev.MarkPriceTick(now_ms=now, symbol="BTCUSDT", price=Decimal("101"), event_time_ms=now))
    engine.handle(ev.Tick(now_ms=now))
    engine.handle(
        ev.OrderPrepared(
            now_ms=now, symbol="BTCUSDT", leg="ENTRY1", ok=True, position_mode="ONE_WAY",
            wallet_balance=Decimal(1000), available_balance=Decimal(1000),
        )
    )  # fmt: skip
    entry = engine.symbols["BTCUSDT"].orders["sf1001-E11-BTCUSDT"]
    assert entry.status == "PENDING_NEW" and entry.request_unanswered
    if lost:
        engine.handle(
            ev.OrderOutcomeUnknown(
                now_ms=now, symbol="BTCUSDT", client_order_id=entry.cid, resolve_after_ms=now + 5_000
            )
        )
        assert entry.status == "UNKNOWN"
    status = entry.status
    out = engine.handle(_empty_recovery_snapshot(now))
    assert [(c.kind, c.reason) for c in out if isinstance(c, cmd.Log) and c.kind == "recovery"] == [
        ("recovery", "outcome_pending_kept")
    ]
    assert not [c for c in out if isinstance(c, cmd.Log) and c.reason == "engine_error"]
    assert (engine.state_of("BTCUSDT"), entry.status) == ("ENTRY_ORDER", status)
    answered = engine.handle(
        ev.OrderAccepted(now_ms=now, symbol="BTCUSDT", client_order_id=entry.cid, order_id=5)
    )
    assert entry.status == "NEW", answered
