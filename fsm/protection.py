"""Protection (N-23..N-25, D-29, D-40): the gates of ``fsm.table.GATES``, rate-limit and auth
locks, the operator pause.

Functions of the engine's state (``fsm.core.Core``); ``fsm.engine`` routes events to them.
"""

from __future__ import annotations

from fsm import account
from fsm import commands as cmd
from fsm import events as ev
from fsm.core import AUTH_PROBE_FIRST_MS, Core
from fsm.table import AUTH, ENTRY_LOCK_OTHERS, GATES, LOCKED_STATE, PAUSED, RATE_LIMIT


def gate(core: Core, action: str, symbol: str = "") -> str | None:
    """The first gate of ``action`` (``GATES``) that holds now, named; None when it may go."""
    for gate in GATES[action]:
        if gate == PAUSED:
            held: str | None = PAUSED if core.paused else None
        elif gate == ENTRY_LOCK_OTHERS:
            held = account.entry_lock_by_others(core, symbol)
        else:
            held = gate if core.locks[gate].state == LOCKED_STATE[gate] else None
        if held is not None:
            return held
    return None


def count_rate_failure(core: Core) -> None:
    core.rate_successes = 0
    core.rate_failures += 1
    if core.rate_failures >= core.strategy.rate_limit_enter_after and core.fire_lock(
        RATE_LIMIT, "throttle", f"{core.rate_failures} consecutive rate-limit failures"
    ):
        core.emit(cmd.Notify(kind="rate_limit", text="rate-limit protection on", severity="warning"))


def count_success(core: Core) -> None:
    core.rate_failures = 0
    if core.locks[RATE_LIMIT].state == "PROTECT":
        core.rate_successes += 1
        if core.rate_successes >= core.strategy.rate_limit_leave_after:
            core.rate_successes = 0
            core.fire_lock(RATE_LIMIT, "relax", "consecutive successes")
            core.emit(cmd.Notify(kind="rate_limit", text="rate-limit protection off"))


def on_venue_error(core: Core, event: ev.VenueErrorObserved) -> None:
    core.log("venue_error", None, event.category, code=event.code, message=event.message)
    if event.category == "rate_limited":  # W50, N-24
        count_rate_failure(core)
    elif event.category == "auth":  # W51, N-25
        enter_auth_lock(core, f"{event.code} {event.message}")


def enter_auth_lock(core: Core, reason: str) -> None:
    if not core.fire_lock(AUTH, "auth_failed", reason):
        return
    core.auth_probes = 0
    core.auth_probe_due_ms = core.now_ms + AUTH_PROBE_FIRST_MS
    core.critical("auth_lock", None, f"API key refused: {reason}")
    for model in list(core.symbols.values()):
        if model.state == "MONITORING":  # no position, no open order: reset (N-25)
            core.reset(model, "auth lock")


def on_venue_ok(core: Core, event: ev.VenueCallSucceeded) -> None:
    count_success(core)
    if event.signed and core.locks[AUTH].state == "AUTH_LOCKED":
        core.fire_lock(AUTH, "auth_restored", "signed request succeeded")
        core.auth_probe_due_ms = 0
        core.emit(cmd.Notify(kind="auth_lock", text="API key works again"))


def on_pause(core: Core, event: ev.PauseRequested) -> None:
    """A pause stops new entries and releases what only monitors (no order, no position): a
    signal seen before the pause never enters after ``resume``; new signals do (D-40)."""
    core.paused = event.paused
    core.log("pause", None, "paused" if event.paused else "resumed")
    if event.paused:
        for model in list(core.symbols.values()):
            if model.state == "MONITORING":
                core.reset(model, "paused: monitoring released")
