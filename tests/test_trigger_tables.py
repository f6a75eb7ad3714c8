"""The machines beside a symbol's phase (fsm/table.py SYMBOL_REGIONS): the price triggers (W40 TP,
W41 scale-in, W43 breakeven), the entry setup in flight, R06 protection and R15's stuck cancels.
They replaced boolean flags; these tests pin what the tables allow and how the engine tells them."""

from __future__ import annotations

from decimal import Decimal

import pytest

from fsm import commands as cmd
from fsm import events as ev
from fsm.engine import Engine
from fsm.harness.bench import T0_MS, leading_event
from fsm.table import SYMBOL_REGIONS, TRIGGERS, find_row


@pytest.mark.parametrize("name", sorted(SYMBOL_REGIONS))
def test_every_row_of_a_region_moves_between_its_own_states(name: str) -> None:
    region = SYMBOL_REGIONS[name]
    assert region["initial"] == region["states"][0]
    for row in region["rows"]:
        assert set(row["source"]) <= set(region["states"]), row
        assert row["dest"] is None or row["dest"] in region["states"], row
    # One row per (trigger, source): the table is a function, as the engine reads it.
    pairs = [(row["trigger"], s) for row in region["rows"] for s in row["source"]]
    assert len(pairs) == len(set(pairs)), name


def test_trigger_names_are_unique_across_every_machine_of_a_symbol() -> None:
    """``transitions`` binds each trigger as a method of the model: two machines sharing a name
    would fire each other's rows."""
    from fsm.table import SYMBOL_TRANSITIONS

    names = [{row["trigger"] for row in SYMBOL_TRANSITIONS}]
    names += [{row["trigger"] for row in region["rows"]} for region in SYMBOL_REGIONS.values()]
    flat = [n for group in names for n in group]
    assert len(flat) == len(set(flat))


@pytest.mark.parametrize("name", TRIGGERS)
def test_arming_and_disarming_are_legal_everywhere_firing_only_when_armed(name: str) -> None:
    rows = SYMBOL_REGIONS[name]["rows"]
    for state in ("OFF", "ARMED"):
        assert find_row(rows, state, f"arm_{name}") is not None
        assert find_row(rows, state, f"disarm_{name}") is not None
    assert find_row(rows, "ARMED", f"{name}_fired") == {
        "trigger": f"{name}_fired",
        "source": ["ARMED"],
        "dest": "OFF",
    }
    assert find_row(rows, "OFF", f"{name}_fired") is None


def _monitored() -> Engine:
    engine = Engine()
    engine.handle(leading_event("AAAUSDT", 1001, T0_MS))
    return engine


def _moved(commands: list[cmd.Command]) -> list[tuple[str, str, str, str]]:
    return [(c.machine, c.source, c.dest, c.trigger) for c in commands if isinstance(c, cmd.Transitioned)]


def test_arming_is_told_once_and_disarming_an_off_trigger_tells_nothing() -> None:
    engine = _monitored()
    model = engine.symbols["AAAUSDT"]
    engine.set_trigger(model, "tp", True, "test")
    engine.set_trigger(model, "tp", True, "again")  # internal: nothing moves, nothing told
    engine.set_trigger(model, "be", False, "never armed")
    out = engine._out
    assert _moved(out) == [("tp", "OFF", "ARMED", "arm_tp")]
    assert [c.reason for c in out if isinstance(c, cmd.Transitioned)] == ["test"]
    assert (model.tp_trigger, model.tp_armed, model.be_trigger) == ("ARMED", True, "OFF")


def test_a_trigger_fired_while_off_is_an_anomaly_and_changes_nothing() -> None:
    engine = _monitored()
    model = engine.symbols["AAAUSDT"]
    engine._out = []
    assert engine.fire_region(model, "be", "be_fired", "test") is False
    assert model.be_trigger == "OFF"
    logs = [(c.kind, c.reason, dict(c.data)) for c in engine._out if isinstance(c, cmd.Log)]
    assert logs == [("anomaly", "illegal_transition", {"detail": "be_fired from be OFF"})]


def test_a_second_setup_while_one_is_in_flight_is_refused_by_the_table() -> None:
    engine = _monitored()
    model = engine.symbols["AAAUSDT"]
    assert engine.fire_region(model, "setup", "prepare_entry1", "first") is True
    assert engine.fire_region(model, "setup", "prepare_entry2", "second") is False
    assert (model.setup, model.preparing) == ("ENTRY1", "ENTRY1")
    assert engine.fire_region(model, "setup", "prepared", "done") is True
    assert (model.setup, model.preparing) == ("NONE", "")


@pytest.mark.spec("W17-2", "W24")
def test_the_entry_setup_is_a_state_the_snapshot_keeps_until_its_answer() -> None:
    """The entry trigger fires: setup NONE->ENTRY1 holds the entry lock (N-21) until OrderPrepared;
    a restart in between keeps it (the snapshot carries the state, not a flag)."""
    engine = _monitored()
    out = engine.handle(
        ev.MarkPriceTick(
            now_ms=T0_MS + 1000, symbol="AAAUSDT", price=Decimal("1000"), event_time_ms=T0_MS + 1000
        )
    )
    out += engine.handle(ev.Tick(now_ms=T0_MS + 1000))
    assert ("setup", "NONE", "ENTRY1", "prepare_entry1") in _moved(out)
    assert any(isinstance(c, cmd.PrepareOrder) and c.leg == "ENTRY1" for c in out)
    restored = Engine.restore(engine.snapshot())
    assert restored.symbols["AAAUSDT"].setup == "ENTRY1"
    assert restored.snapshot() == engine.snapshot()
    assert restored.lock_state("entry_lock") == "GLOBAL_LOCKED"


def test_old_flags_decode_to_the_states_they_meant() -> None:
    from fsm.model import SymbolModel, decode, encode

    raw = encode(SymbolModel(symbol="AAAUSDT", state="PHASE1"))
    for attribute in ("tp_trigger", "add_trigger", "be_trigger", "risk_mode", "exit_cancels", "setup"):
        raw.pop(attribute)
    raw.update(
        tp_armed=False,
        add_armed=True,
        be_armed=False,
        risk_protected=True,
        cancel_failed=True,
        preparing="ENTRY2",
    )
    model = decode(raw)
    assert isinstance(model, SymbolModel)
    got = (
        model.tp_trigger,
        model.add_trigger,
        model.be_trigger,
        model.risk_mode,
        model.exit_cancels,
        model.setup,
    )
    assert got == ("OFF", "ARMED", "OFF", "PROTECTED", "FAILED", "ENTRY2")
    raw = encode(SymbolModel(symbol="AAAUSDT"))
    raw.pop("setup")
    raw["preparing"] = ""
    decoded = decode(raw)
    assert isinstance(decoded, SymbolModel)
    assert decoded.setup == "NONE"


def test_a_state_written_beside_its_old_flag_wins() -> None:
    from fsm.model import SymbolModel, decode, encode

    raw = encode(SymbolModel(symbol="AAAUSDT", state="PHASE1", tp_trigger="ARMED", setup="ENTRY2"))
    raw.update(tp_armed=False, preparing="")
    model = decode(raw)
    assert isinstance(model, SymbolModel)
    assert (model.tp_trigger, model.setup) == ("ARMED", "ENTRY2")
