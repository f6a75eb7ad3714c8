"""The account (N-21): balances, position mode and the account-wide entry lock.

Functions of the engine's state (``fsm.core.Core``); ``fsm.engine`` routes events to them.
"""

from __future__ import annotations

from fsm import events as ev
from fsm import rules
from fsm.core import Core
from fsm.model import ENTRY_LEGS, SymbolModel
from fsm.table import ENTRY_LOCK, HOLDING_STATES


def entry_lock_by_others(core: Core, symbol: str) -> str | None:
    """The entry lock, counted only for reasons other than ``symbol`` itself (it holds the lock
    from its own trigger on): another position, an open entry order, another symbol's entry."""
    for other, amount in core.account_positions.items():
        if other != symbol and not rules.is_dust(amount, core.infos.get(other.partition(":")[0])):
            return f"entry_lock: position {other}"
    for key, other in core.account_entry_orders.items():
        if other != symbol:
            return f"entry_lock: open order {key}"
    for other, model in core.symbols.items():
        held = holds_entry_lock(core, model)
        if other != symbol and held:
            return f"entry_lock: {other} {held}"
    return None


def holds_entry_lock(core: Core, model: SymbolModel) -> str:
    """Why our own ``model`` holds the entry lock ("" when it does not). It counts from the
    moment we commit to an entry (before the venue confirms); leftover exit orders without a
    position do not count (N-21: they are N-18's business)."""
    if model.state not in HOLDING_STATES:
        return ""
    if model.preparing == "ENTRY1" or model.open_orders(*ENTRY_LEGS):
        return "entry order"
    if not rules.is_dust(model.position(), model.info):
        return "position"
    return ""


def on_balance(core: Core, event: ev.BalanceChanged) -> None:
    core.wallet_balance = event.wallet_balance
    if event.available_balance is not None:
        core.available_balance = event.available_balance


def on_position_mode(core: Core, event: ev.PositionModeChanged) -> None:
    core.position_mode = event.mode
    core.log("position_mode", None, event.mode or "unknown")


def recompute_entry_lock(core: Core) -> None:
    """N-21, section 1 rule 1: any position above dust or open entry order, account-wide."""
    reasons: list[str] = []
    for key, amount in core.account_positions.items():
        if not rules.is_dust(amount, core.infos.get(key.partition(":")[0])):
            reasons.append(f"position {key}")
    reasons.extend(f"open entry order {key}" for key in sorted(core.account_entry_orders))
    if core.unconfirmed_fills:
        grace = core.strategy.position_sync_grace_seconds * 1000
        for symbol, at in list(core.unconfirmed_fills.items()):
            if core.now_ms - at >= grace:  # no position update came: the positions decide again
                del core.unconfirmed_fills[symbol]
            else:
                reasons.append(f"fill on {symbol} awaiting its position update")
    for model in core.busy_models():
        if model.state not in HOLDING_STATES:
            continue  # the test ``holds_entry_lock`` starts with, without the call
        held = holds_entry_lock(core, model)
        if held:
            reasons.append(f"{model.symbol} {held}")
    lock = core.locks[ENTRY_LOCK]
    if reasons and lock.state == "GLOBAL_IDLE":
        core.fire_lock(ENTRY_LOCK, "lock", reasons[0])
        for model in list(core.symbols.values()):  # W46, W36-2: every other monitoring symbol goes
            if model.state == "MONITORING":
                core.reset(model, f"entry lock: {reasons[0]}")
    elif not reasons and lock.state == "GLOBAL_LOCKED":
        core.fire_lock(ENTRY_LOCK, "unlock", "no position and no open entry order")


def on_funding(core: Core, event: ev.FundingFee) -> None:
    """Funding changes no decision (the wallet push beside it does); it is noted for the ledger."""
    core.log("funding", event.symbol or None, "paid" if event.amount < 0 else "received", amount=event.amount)
