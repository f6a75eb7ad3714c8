"""Which lock gates which action is one table (``fsm.table.GATES``); the engine reads nothing else.

Each global machine is put in its locked state alone (through a snapshot, as a restart would) and
each action must be blocked exactly when its row lists that machine, named by it.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from fsm.engine import Engine
from fsm.strategy import Strategy
from fsm.table import ENTRY_LOCK_OTHERS, GATES, LOCKED_STATE, PAUSED


def _engine_with(locked: str | None = None, *, paused: bool = False) -> Engine:
    data = Engine(Strategy()).snapshot()
    data["locks"] = {
        name: ("READY" if name == "recovery_lock" else state) for name, state in data["locks"].items()
    }
    if locked is not None:
        data["locks"][locked] = LOCKED_STATE[locked]
    engine = Engine.restore(data)
    engine.paused = paused
    return engine


def test_a_free_engine_gates_nothing() -> None:
    engine = _engine_with()
    assert {action: engine.blocked(action, "BTCUSDT") for action in GATES} == dict.fromkeys(GATES)


@pytest.mark.parametrize("action", sorted(GATES))
@pytest.mark.parametrize("lock", sorted(LOCKED_STATE))
def test_a_locked_machine_blocks_exactly_the_actions_whose_row_names_it(action: str, lock: str) -> None:
    engine = _engine_with(lock)
    expected = lock if lock in GATES[action] else None
    assert engine.blocked(action, "BTCUSDT") == expected


@pytest.mark.parametrize("action", sorted(GATES))
def test_pause_blocks_every_entry_action(action: str) -> None:
    assert PAUSED in GATES[action]
    assert _engine_with(paused=True).blocked(action, "BTCUSDT") == PAUSED


def test_the_first_entry_order_counts_the_entry_lock_only_for_others() -> None:
    """W24: the symbol's own commitment holds the entry lock; only another reason blocks its order."""
    assert "entry_lock" not in GATES["first_entry_order"] and ENTRY_LOCK_OTHERS in GATES["first_entry_order"]
    engine = _engine_with()
    engine.account_positions["ETHUSDT"] = Decimal(1)
    assert engine.blocked("first_entry_order", "BTCUSDT") == "entry_lock: position ETHUSDT"
    assert engine.blocked("second_entry", "BTCUSDT") is None
