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
    model = SymbolModel(symbol="BTCUSDT", info=INFO, message_id=1001)
    engine._symbol_machine.add_model(model, initial="PHASE1")
    engine.symbols["BTCUSDT"] = model
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
    from fsm.model import encode
    from fsm.runtime.bench import T0_MS, leading_event, symbol_info

    engine = Engine()
    engine.handle(leading_event("AAAUSDT", 1001, T0_MS))
    first = engine.symbols["AAAUSDT"]
    first.generations["ENTRY1"] = 3
    first.tp_armed = True
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
