"""Attack 4 on the 1-second evaluation (issue #11 step 9): stale prices and the evaluation's
indexes. Each case was found by an adversary driving ``Engine.handle`` with real events."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

import pytest

from fsm import commands as cmd
from fsm import events as ev
from fsm.engine import Engine
from fsm.harness.bench import bench_symbol, leading_event, symbol_info
from fsm.strategy import Strategy

T0 = 1_700_000_000_000
X = "XUSDT"
D = Decimal


def _mark(
    symbol: str, at: int, price: str = "100", *, source: ev.PriceSource = "WS", venue_ms: int = 0
) -> ev.Event:
    return ev.MarkPriceTick(
        now_ms=at, symbol=symbol, price=D(price), event_time_ms=venue_ms or at, source=source
    )


def _entries(commands: list[cmd.Command]) -> list[cmd.Command]:
    return [c for c in commands if isinstance(c, cmd.PrepareOrder)]


@pytest.mark.spec("W17-2", "W19")
def test_a_re_signalled_symbol_never_enters_on_the_mark_of_its_previous_watch() -> None:
    """X was watched at 100.5, released by a risk message, and signalled again 11 minutes later
    with a lower target (trigger 94.905) while the market is at 90. The first Tick comes before
    X's first new mark: the 11-minute-old 100.5 is not the current price, so no entry; the first
    fresh mark (90) is below the trigger: still none; a fresh 95 enters."""
    engine = Engine()
    engine.handle(ev.Tick(now_ms=T0))
    engine.handle(leading_event(X, 100, T0))
    engine.handle(_mark(X, T0 + 500, "100.5"))
    assert _entries(engine.handle(ev.Tick(now_ms=T0 + 1000))) == []  # below 100.899
    engine.handle(
        ev.MessageReceived(
            now_ms=T0 + 2000,
            chat_id=Strategy().risk_chat_id,
            message_id=7,
            telegram_date_ms=T0 + 2000,
            parsed=ev.RiskSignal(raw_token=X, symbol=X),
            symbol_info=symbol_info(X),
        )
    )
    assert engine.state_of(X) == "IDLE"
    later = T0 + 11 * 60_000
    signal = leading_event(X, 200, later)
    lower = tuple(replace(c, high=D("95"), open=D("90"), low=D("89"), close=D("90")) for c in signal.klines)
    engine.handle(_mark("BTCUSDT", later - 100, "1"))  # the stream itself is alive
    engine.handle(replace(signal, klines=lower))
    assert engine.state_of(X) == "MONITORING"
    assert _entries(engine.handle(ev.Tick(now_ms=later + 300))) == []
    engine.handle(_mark(X, later + 600, "90"))
    assert _entries(engine.handle(ev.Tick(now_ms=later + 1000))) == []
    engine.handle(_mark(X, later + 1600, "95"))
    assert [(c.symbol, c.leg) for c in _entries(engine.handle(ev.Tick(now_ms=later + 2000)))] == [
        (X, "ENTRY1")
    ]


@pytest.mark.spec("W17-2", "W23-1", "N-22")
def test_a_rest_mark_older_than_the_stale_limit_is_not_a_current_price() -> None:
    """X's WS stream is silent, the REST poll answers with a venue time 20 s old above the trigger:
    no entry on it; a REST mark 1 s old at the same price enters."""
    engine = Engine()
    engine.handle(ev.Tick(now_ms=T0))
    engine.handle(leading_event(X, 100, T0))  # trigger 100.899
    engine.handle(leading_event("YUSDT", 101, T0))
    engine.handle(ev.Tick(now_ms=T0 + 100))
    engine.handle(_mark(X, T0 + 1000))
    for k in range(1, 8):
        engine.handle(_mark("YUSDT", T0 + k * 1000))
        engine.handle(ev.Tick(now_ms=T0 + k * 1000 + 100))
    at = T0 + 7050
    engine.handle(_mark(X, at, "101", source="REST", venue_ms=at - 20_000))
    assert _entries(engine.handle(ev.Tick(now_ms=at + 50))) == []
    engine.handle(_mark(X, at + 100, "101", source="REST", venue_ms=at - 1000))
    assert [c.symbol for c in _entries(engine.handle(ev.Tick(now_ms=at + 150)))] == [X]


@pytest.mark.spec("W22", "W23-1")
def test_a_mark_stamped_earlier_than_one_already_handled_does_not_hide_a_silent_symbol() -> None:
    """A's mark at +10.001 s, then B's stamped +10.000 s (handled after), then C's at +14 s: at the
    +15 s Tick B has been silent for 5 s and the price source falls back to REST naming B."""
    engine = Engine()
    a, b, c = (bench_symbol(i) for i in range(3))
    for i, symbol in enumerate((a, b, c)):
        engine.handle(leading_event(symbol, 100 + i, T0))
    engine.handle(ev.Tick(now_ms=T0))
    engine.handle(_mark(a, T0 + 10_001))
    engine.handle(_mark(b, T0 + 10_000))
    engine.handle(_mark(c, T0 + 14_000))
    out = engine.handle(ev.Tick(now_ms=T0 + 15_000))
    fallbacks = [x for x in out if isinstance(x, cmd.UsePriceSource)]
    assert [(x.source, x.reason.split(" (")[0]) for x in fallbacks] == [("REST", f"{b} silent")]


@pytest.mark.spec("N-21")
def test_a_symbol_held_back_to_monitoring_keeps_its_position_sync_timer() -> None:
    """A foreign position seen while the entry's setup was in flight, then the setup held by the
    rate limits (back to MONITORING): the symbol stays among those the timers look at, as every
    symbol was before the evaluation was indexed."""
    engine = Engine()
    engine.handle(ev.Tick(now_ms=T0))
    engine.handle(leading_event(X, 100, T0))
    engine.handle(_mark(X, T0 + 500, "101"))
    assert _entries(engine.handle(ev.Tick(now_ms=T0 + 1000)))
    engine.handle(
        ev.PositionChanged(
            now_ms=T0 + 1100, symbol=X, amount=D("-1"), entry_price=D("100"), venue_time_ms=T0 + 1100
        )
    )
    engine.handle(
        ev.OrderPrepared(now_ms=T0 + 1200, symbol=X, leg="ENTRY1", ok=False, error_code=-1003, reason="rate")
    )
    assert engine.state_of(X) == "MONITORING"
    assert X in engine.busy  # the timers still look at it (the index: fsm/core.py)


@pytest.mark.spec("W23-1", "N-22")
def test_a_rest_answer_asked_before_the_safety_lock_does_not_lift_it() -> None:
    """The REST poll asks at T0+14.9 s while every source is frozen at T0; its answer (venue time
    T0) is stamped with the asking time but reaches the engine after the 1-second evaluation of
    T0+15.5 s has taken the safety lock. Judged at its own stamp it is 14.9 s old, "fresh"; judged
    at the engine's time it is 15.5 s old: the lock stays. Found as a fault-matrix flake: on a loaded
    host the lock was lifted by it and taken again a second later. A truly fresh answer lifts it."""
    engine = Engine()
    engine.handle(ev.Tick(now_ms=T0))
    engine.handle(_mark(X, T0))
    engine.handle(leading_event(X, 100, T0))
    engine.handle(_mark(X, T0 + 100, "99", source="REST", venue_ms=T0))
    engine.handle(ev.Tick(now_ms=T0 + 15_500))
    assert engine.lock_state("safety_lock") == "PRICE_STALE"
    late = _mark(X, T0 + 14_900, "99", source="REST", venue_ms=T0)
    commands = engine.handle(late)
    assert engine.lock_state("safety_lock") == "PRICE_STALE"
    assert [c for c in commands if isinstance(c, cmd.Transitioned)] == []
    engine.handle(_mark(X, T0 + 16_000, "99", source="REST", venue_ms=T0 + 15_800))
    assert engine.lock_state("safety_lock") == "PRICE_OK"
