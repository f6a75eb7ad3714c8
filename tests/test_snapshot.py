"""``Engine.snapshot()`` / ``Engine.restore()``: an engine caught mid-PHASE2 (open orders, a stop, an
orphan stop child, cooldowns, cursors, marks, timers) is JSON-serialisable, restores to an engine
whose snapshot is identical, and the restored engine answers what comes next with exactly the same
commands as the original.

Two scenario runners play the same steps, so their venue doubles are identical; the second one's
engine is then replaced by one restored from the first one's snapshot (through JSON text).
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest

from fsm import events as ev
from fsm.engine import Engine, clone
from fsm.harness.scenario import T0_MS, Runner
from fsm.journal import render
from fsm.strategy import Strategy

D = Decimal
BTC = "BTCUSDT"
DOC: dict[str, Any] = {
    "venue": {
        "wallet": "1000",
        "symbols": {
            BTC: {"tick": "0.1", "step": "0.001", "min_qty": "0.001", "min_notional": "5"},
            "ETHUSDT": {"tick": "0.01", "step": "0.01", "min_qty": "0.01", "min_notional": "5"},
        },
        "klines": {BTC: {"high": "101", "low": "99", "close": "100", "count": 5}},
    }
}
ENTRY2_CID = "sf1001-E21-BTCUSDT"

# Signal, entry at 101.0 (4.950), PHASE1, second entry at 116.2 (8.519) part-filled: PHASE2 with the
# rest of the second entry still open; a risk message for another symbol advances the risk cursor.
PART_FILLED: list[dict[str, Any]] = [
    {"at": 0, "leading": {"id": 1001, "ticker": "BTC"}},
    {"at": 1, "mark": {BTC: "100.9"}},
    {"at": 2, "fill": {"leg": "ENTRY1"}},
    {"at": 3, "mark": {BTC: "116.1"}},
    {"at": 4, "fill": {"leg": "ENTRY2", "qty": "4.000"}},
    {"at": 5, "risk": {"id": 2001, "symbol": "ETHUSDT"}},
    # No evaluation in PHASE2 yet: the first one places the breakeven limit and cancels the rest of
    # the second entry (W43, D-40), so the snapshot is taken just before it.
]
# The same, then the second entry completes (MDD stop placed) and the breakeven limit goes out
# (average 110.61..., trigger 110.7...).
WITH_STOP = [
    *PART_FILLED,
    {"at": 7, "fill": {"leg": "ENTRY2"}},
    {"at": 8, "mark": {BTC: "111.5"}},
]

NEXT: dict[str, list[dict[str, Any]]] = {
    "breakeven_exit": [
        {"at": 20, "mark": {BTC: "113"}},
        {"at": 21, "fill": {"leg": "BE"}},
        {"at": 22, "tick": True},
    ],
    "second_entry_completes_then_stop": [
        {"at": 20, "fill": {"leg": "ENTRY2"}},
        {"at": 21, "mark": {BTC: "130"}},
        {"at": 22, "algo_trigger": {"leg": "MDD"}},
    ],
    "risk_with_loss": [
        {"at": 20, "mark": {BTC: "120"}},
        {"at": 21, "risk": {"id": 2002, "symbol": BTC}},
    ],
    "stale_prices": [
        {"at": 20, "ws": "down", "ws_reason": "connection closed"},
        {"at": 26, "tick": True},
        {"at": 36, "tick": True},
    ],
    "five_second_rule": [
        {"at": 20, "mark": {BTC: "113"}},
        {"at": 21, "fill": {"leg": "BE", "qty": "3.000"}},
        {"at": 24, "tick": True},
        {"at": 26, "tick": True},
    ],
    "external_position_change": [
        {"at": 20, "position": {BTC: "-5.000"}},
        {"at": 21, "tick": True},
        {"at": 23, "tick": True},
    ],
    "same_signal_again_and_settings": [
        {"at": 20, "leading": {"id": 1002, "ticker": "BTC"}},
        {"at": 21, "settings": {"tp_pct": "4"}},
    ],
}


def _play(runner: Runner, steps: list[dict[str, Any]]) -> list[str]:
    rendered: list[str] = []
    for step in steps:
        runner.now_ms = T0_MS + int(step["at"]) * 1000
        body = {k: v for k, v in step.items() if k != "at"}
        rendered.extend(render(c) for c in runner.feed(runner.step_events(body)))
    return rendered


def _through_json(engine: Engine) -> Engine:
    text = json.dumps(engine.snapshot())
    return Engine.restore(json.loads(text))


def _decisions(engine: Engine) -> dict[str, Any]:
    """The parts of a snapshot that decisions change (not the clocks of the price source)."""
    snapshot = engine.snapshot()
    return {key: snapshot[key] for key in ("symbols", "locks", "cursors", "cooldowns", "strategy")}


def _pair(setup: list[dict[str, Any]]) -> tuple[Runner, Runner]:
    original = Runner(DOC)
    _play(original, setup)
    twin = Runner(DOC)
    _play(twin, setup)
    twin.engine = _through_json(original.engine)
    return original, twin


def test_mid_phase2_snapshot_holds_the_whole_picture() -> None:
    runner = Runner(DOC)
    _play(runner, PART_FILLED)
    engine = runner.engine
    assert engine.state_of(BTC) == "PHASE2"
    snapshot = engine.snapshot()
    text = json.dumps(snapshot)  # JSON-serialisable as it is
    assert json.loads(text) == snapshot
    restored = Engine.restore(json.loads(text))
    assert restored.snapshot() == snapshot
    model = restored.symbols[BTC]
    assert model.state == "PHASE2"
    assert model.position() == D("8.950")
    assert [(o.leg, o.status, o.filled) for o in model.open_orders()] == [
        ("ENTRY2", "PARTIALLY_FILLED", D("4.000"))
    ]
    assert model.be_armed
    assert restored.cooldowns == {BTC: T0_MS}
    strategy = Strategy()
    assert restored.cursors == {strategy.entry_chat_id: 1001, strategy.risk_chat_id: 2001}
    assert restored.marks == {BTC: D("116.1")}
    assert restored.lock_state("entry_lock") == "GLOBAL_LOCKED"
    assert restored.next_deadline_ms() == engine.next_deadline_ms()
    assert clone(engine).snapshot() == snapshot


def test_the_infos_of_a_snapshot_are_encoded_as_they_stand_now() -> None:
    """Snapshots keep each symbol info's tree while its object is the same: they still read as
    ``encode(engine.infos)`` at every moment, a replaced info included, and one gone is gone."""
    from dataclasses import replace

    from fsm.model import encode

    runner = Runner(DOC)
    _play(runner, PART_FILLED)
    engine = runner.engine
    first = engine.snapshot()["infos"]
    assert first == encode(engine.infos) and BTC in engine.infos
    engine.infos[BTC] = replace(engine.infos[BTC], min_qty=D("7"))
    engine.infos["ZZZUSDT"] = replace(engine.infos[BTC], symbol="ZZZUSDT")
    second = engine.snapshot()["infos"]
    assert second == encode(engine.infos) != first
    assert json.dumps(second).count('"7"') >= 1
    del engine.infos["ZZZUSDT"]
    assert engine.snapshot()["infos"] == encode(engine.infos)
    assert Engine.restore(json.loads(json.dumps(engine.snapshot()))).infos == engine.infos


def test_snapshot_with_a_stop_and_an_orphan_child_round_trips() -> None:
    runner = Runner(DOC)
    _play(runner, WITH_STOP)
    engine = runner.engine
    model = engine.symbols[BTC]
    assert sorted(o.leg for o in model.open_orders()) == ["BE", "MDD"]
    # A stop's child fill reported before its ALGO_UPDATE is kept as an orphan (an OrderUpdated).
    runner.now_ms = T0_MS + 9000
    child = ev.OrderUpdated(
        now_ms=runner.now_ms,
        symbol=BTC,
        client_order_id="autoclose-9001",
        order_id=9001,
        side="BUY",
        order_type="MARKET",
        status="FILLED",
        price=D(0),
        orig_qty=model.position(),
        cum_qty=model.position(),
        last_qty=model.position(),
        last_price=D("130"),
        avg_price=D("130"),
        reduce_only=True,
    )
    engine.handle(child)
    assert model.orphan_updates == [child]
    snapshot = engine.snapshot()
    restored = Engine.restore(json.loads(json.dumps(snapshot)))
    assert restored.snapshot() == snapshot
    assert restored.symbols[BTC].orphan_updates == [child]
    mdd = next(o for o in model.open_orders() if o.leg == "MDD")
    triggered = ev.AlgoOrderUpdated(
        now_ms=runner.now_ms,
        symbol=BTC,
        client_algo_id=mdd.cid,
        algo_id=mdd.order_id,
        status="TRIGGERED",
        actual_order_id=9001,
    )
    original_out = [render(c) for c in engine.handle(triggered)]
    restored_out = [render(c) for c in restored.handle(triggered)]
    assert restored_out == original_out
    assert restored.snapshot() == engine.snapshot()
    assert engine.symbols[BTC].position() == 0


@pytest.mark.parametrize("setup", [PART_FILLED, WITH_STOP], ids=["entry2_part_filled", "with_mdd_stop"])
@pytest.mark.parametrize("name", sorted(NEXT))
def test_restored_engine_answers_like_the_original(setup: list[dict[str, Any]], name: str) -> None:
    original, twin = _pair(setup)
    assert twin.engine.snapshot() == original.engine.snapshot()
    before = _decisions(original.engine)
    expected = _play(original, NEXT[name])
    got = _play(twin, NEXT[name])
    assert got == expected
    assert twin.engine.snapshot() == original.engine.snapshot()
    # The steps really changed something (the comparison is not between two idle engines).
    assert _decisions(original.engine) != before


def test_restore_replaces_everything_of_an_engine_in_use() -> None:
    """``_restore_into`` on a busy engine leaves no trace of its previous symbols on the machine."""
    busy = Runner(DOC)
    _play(busy, WITH_STOP)
    quiet = Runner(DOC)
    _play(quiet, PART_FILLED[:1])
    snapshot = quiet.engine.snapshot()
    busy.engine._restore_into(json.loads(json.dumps(snapshot)))
    assert busy.engine.snapshot() == snapshot
    assert busy.engine.active_symbols() == {BTC: "MONITORING"}
    assert busy.engine._symbol_machine.models == [busy.engine.symbols[BTC]]
