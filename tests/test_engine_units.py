"""Engine paths that no normal timeline reaches, driven directly."""

from __future__ import annotations

from decimal import Decimal

from fsm import commands as cmd
from fsm import events as ev
from fsm.engine import Engine
from fsm.model import OrderTrack, SymbolModel

INFO = ev.SymbolInfo(
    symbol="BTCUSDT",
    status="TRADING",
    tick_size=Decimal("0.1"),
    step_size=Decimal("0.001"),
    min_qty=Decimal("0.001"),
    min_notional=Decimal("5"),
)


def _engine_holding_without_mark() -> Engine:
    engine = Engine()
    model = SymbolModel(symbol="BTCUSDT", info=INFO, message_id=1001, state="PHASE1")
    engine.attach(model)
    fill = OrderTrack(
        cid="sf1001-E11-BTCUSDT",
        leg="ENTRY1",
        side="SELL",
        kind="LIMIT",
        price=Decimal("101.0"),
        qty=Decimal("4.950"),
        status="FILLED",
        filled=Decimal("4.950"),
        avg_price=Decimal("101.0"),
    )
    model.orders[fill.cid] = fill
    return engine


def test_risk_without_any_mark_price_closes_at_market_d15() -> None:
    engine = _engine_holding_without_mark()
    risk = ev.MessageReceived(
        now_ms=1,
        chat_id=engine.strategy.risk_chat_id,
        message_id=5001,
        telegram_date_ms=1,
        parsed=ev.RiskSignal(raw_token="BTCUSDT.P", symbol="BTCUSDT"),
        symbol_info=INFO,
    )
    out = engine.handle(risk)
    orders = [c for c in out if isinstance(c, cmd.PlaceOrder)]
    assert [(o.leg, o.order_type, o.side, o.quantity, o.reduce_only) for o in orders] == [
        ("CLOSE", "MARKET", "BUY", Decimal("4.950"), True)
    ]
    assert any(isinstance(c, cmd.Log) and c.reason == "no_mark_price_close" for c in out)
    assert engine.state_of("BTCUSDT") == "EXITING"


def test_a_released_symbol_model_is_reused_clean_for_the_next_symbol() -> None:
    """Model pooling (add_model costs half a leading message) must not leak any field."""
    from fsm.harness.bench import T0_MS, leading_event, symbol_info
    from fsm.model import encode

    engine = Engine()
    engine.handle(leading_event("AAAUSDT", 1001, T0_MS))
    first = engine.symbols["AAAUSDT"]
    first.generations["ENTRY1"] = 3
    first.tp_trigger = "ARMED"
    first.venue_position = Decimal("-2")
    engine.handle(
        ev.MessageReceived(
            now_ms=T0_MS + 1000,
            chat_id=engine.strategy.risk_chat_id,
            message_id=7,
            telegram_date_ms=T0_MS,
            parsed=ev.RiskSignal(raw_token="AAAUSDT", symbol="AAAUSDT"),
            symbol_info=symbol_info("AAAUSDT"),
        )
    )
    assert "AAAUSDT" not in engine.symbols
    engine.handle(leading_event("BBBUSDT", 1002, T0_MS + 2000))

    fresh = Engine()
    fresh.handle(leading_event("BBBUSDT", 1002, T0_MS + 2000))
    reused = engine.symbols["BBBUSDT"]
    assert reused is first
    assert reused.state == "MONITORING"
    assert encode(reused) == encode(fresh.symbols["BBBUSDT"])
    # The reused object still answers its triggers through the machine.
    assert reused.is_MONITORING()  # type: ignore[attr-defined]


def test_a_position_update_delivered_out_of_order_is_ignored() -> None:
    """A reordered user stream: the partial fill's ACCOUNT_UPDATE (-0.700) arrives after the close's
    (0). Applying it would hold the entry lock for a position that no longer exists."""
    engine = Engine()

    def position(amount: str, venue_time_ms: int) -> list[cmd.Command]:
        return engine.handle(
            ev.PositionChanged(
                now_ms=5_000,
                symbol="BTCUSDT",
                amount=Decimal(amount),
                entry_price=Decimal("101"),
                venue_time_ms=venue_time_ms,
            )
        )

    position("0", 2_000)
    out = position("-0.700", 1_000)
    assert engine.account_positions == {}
    assert engine.lock_state("entry_lock") == "GLOBAL_IDLE"
    assert [(c.kind, c.reason) for c in out if isinstance(c, cmd.Log)] == [
        ("position_stale", "older_update_ignored")
    ]
    # In order, the same two updates lock and then release.
    position("-0.700", 3_000)
    assert engine.account_positions == {"BTCUSDT": Decimal("0.700")}
    assert engine.lock_state("entry_lock") == "GLOBAL_LOCKED"
    position("0", 4_000)
    assert engine.lock_state("entry_lock") == "GLOBAL_IDLE"
    # A REST read carries no venue time and is always applied.
    position("-0.100", 0)
    assert engine.account_positions == {"BTCUSDT": Decimal("0.100")}
    assert Engine.restore(engine.snapshot()).position_times == {"BTCUSDT": 4_000}


def test_a_restart_resumes_the_settings_the_last_run_traded_with_through_its_event_d23() -> None:
    """D-23 / G06 across a restart: the running settings arrive inside RecoveryStarted (journaled,
    replayable), never written into the engine from outside; a damaged value keeps the configured one."""
    engine = Engine(recovering=True)
    configured = engine.strategy
    engine.handle(ev.RecoveryStarted(now_ms=1, running_settings=(("mdd_pct", "20"), ("tp_pct", "4"))))
    assert (engine.strategy.mdd_pct, engine.strategy.tp_pct) == (Decimal("20"), Decimal("4"))
    assert engine.strategy.second_entry_pct == configured.second_entry_pct

    damaged = Engine(recovering=True)
    damaged.handle(ev.RecoveryStarted(now_ms=1, running_settings=(("tp_pct", "four"),)))
    assert damaged.strategy == configured
