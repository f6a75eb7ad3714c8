"""Strategy settings (N-26, G06, D-23): the settings lock and the changes it holds back.

Functions of the engine's state (``fsm.core.Core``); ``fsm.engine`` routes events to them.
"""

from __future__ import annotations

from fsm import commands as cmd
from fsm import events as ev
from fsm.core import Core
from fsm.table import RECOVERY_LOCK


def on_settings(core: Core, event: ev.SettingsChangeRequested) -> None:
    """N-26, G06: strategy settings are locked while any symbol is active (and while recovery
    has not yet shown what is active). A refused change is kept and applied once nothing is
    active (D-23); the latest request replaces an earlier pending one."""
    changes = dict(event.changes)
    if not changes:  # the file is back to the running values: nothing is waiting any more
        if core.pending_settings:
            keys = ",".join(core.pending_settings)
            core.log("settings_pending_dropped", None, "file_unchanged", keys=keys)
            core.pending_settings = {}
        return
    try:
        core.strategy.with_changes(changes)
    except ValueError as exc:
        core.log("settings_refused", None, "invalid", error=str(exc))
        return
    active = core.active_symbols()
    recovering = core.locks[RECOVERY_LOCK].state == "RECOVERING"
    if active or recovering:
        core.pending_settings = changes
        core.log(
            "settings_refused",
            None,
            "symbols_active" if active else "recovering",
            active=",".join(sorted(active)),
            keys=",".join(changes),
        )
        core.emit(
            cmd.Notify(
                kind="settings_refused",
                text="settings locked while trading; they apply once no symbol is active",
                severity="warning",
            )
        )
        return
    core.pending_settings = {}
    core.strategy = core.strategy.with_changes(changes)
    core.log("settings_applied", None, "ok", keys=",".join(sorted(changes)))


def apply_pending_settings(core: Core) -> None:
    """D-23: the settings refused while trading, once recovery is over and nothing is active."""
    if core.locks[RECOVERY_LOCK].state == "RECOVERING" or core.active_symbols():
        return
    changes, core.pending_settings = core.pending_settings, {}
    try:
        core.strategy = core.strategy.with_changes(changes)
    except ValueError as exc:  # cannot happen: checked when requested; kept for a damaged snapshot
        core.log("settings_refused", None, "invalid", error=str(exc))
        return
    keys = ",".join(sorted(changes))
    core.log("settings_applied", None, "no_symbol_active", keys=keys)
    core.emit(
        cmd.Notify(kind="settings_applied", text=f"settings applied now that no symbol is active: {keys}")
    )
