"""Prices (W17..W23-1, N-09, N-22): marks, the WS/REST source and staleness per watched symbol.

Functions of the engine's state (``fsm.core.Core``); ``fsm.engine`` routes events to them.
"""

from __future__ import annotations

from fsm import commands as cmd
from fsm import events as ev
from fsm import lifecycle, order_flow, recovery
from fsm.core import Core
from fsm.model import SymbolModel
from fsm.table import RECOVERY_LOCK, SAFETY_LOCK


def on_mark(core: Core, event: ev.MarkPriceTick) -> None:
    now = event.now_ms
    symbol = event.symbol
    stale_ms = core.strategy.stale_mark_price_seconds * 1000
    if event.source == "WS":
        core.last_ws_ms = max(core.last_ws_ms or 0, now)
        core.mark_ws_ms[symbol] = max(core.mark_ws_ms.get(symbol, 0), now)
        if symbol in core.ws_fresh:
            _freshen(core, symbol, now)
        if core.price_source == "REST" and ws_silent(core, now) is None:  # W23
            core.price_source = "WS"
            core.emit(cmd.UsePriceSource(source="WS", reason="websocket message received"))
            core.log("price_source", None, "ws_back", at_ms=now)
        fresh = True
    else:
        core.rest_failing = False
        core.last_rest_ms = max(core.last_rest_ms or 0, event.event_time_ms)
        core.mark_rest_ms[event.symbol] = max(core.mark_rest_ms.get(event.symbol, 0), event.event_time_ms)
        # Judged at the engine's time, not the answer's stamp: an answer asked for before a
        # safety lock and handled after it is as old as the engine's clock says (W23-1).
        fresh = core.now_ms - event.event_time_ms < stale_ms
    if fresh:  # W17-2, W23-1: a REST answer older than the stale limit is not the current price
        core.marks[symbol] = event.price
        model = core.symbols.get(symbol)
        if model is not None and model.state == "MONITORING":
            if event.price >= model.entry_trigger:
                core.entry_ready.add(symbol)
            else:
                core.entry_ready.discard(symbol)
        core.price_seen_ms = now
    if fresh and core.locks[SAFETY_LOCK].state == "PRICE_STALE":
        core.fire_lock(SAFETY_LOCK, "price_fresh", f"fresh {event.source} mark price")
        core.emit(cmd.Notify(kind="safety_lock_lifted", text="fresh mark price: safety lock lifted"))
    if core.locks[RECOVERY_LOCK].state == "RECOVERING":
        recovery.maybe_finish_recovery(core)


def on_rest_failed(core: Core, event: ev.RestPriceFailed) -> None:
    core.rest_failing = True
    core.log("price_source", None, "rest_failed", cause=event.reason)


def on_ws_status(core: Core, event: ev.WsStatusChanged) -> None:
    core.ws_reason = event.reason
    core.log(
        "price_source", None, "ws_connected" if event.connected else "ws_disconnected", cause=event.reason
    )
    if event.connected and core.last_ws_ms is None:
        core.last_ws_ms = event.now_ms


def watch_new_symbols(core: Core, now: int) -> None:
    """Symbols created since the last look join the watch (their watch starts now)."""
    waiting = []
    for symbol in core.unwatched:
        model = core.symbols.get(symbol)
        if model is None or symbol in core.ws_fresh:
            continue
        if model.state == "IDLE":
            waiting.append(symbol)  # not watched while idle; looked at again next time
            continue
        since = core.watch_since.setdefault(symbol, now)
        _freshen(core, symbol, max(core.mark_ws_ms.get(symbol, 0), since))
    core.unwatched = waiting


def _freshen(core: Core, symbol: str, at: int) -> None:
    """``symbol``'s WS price was fresh at ``at``: it goes to the end of ``ws_fresh``. Events are
    stamped by one clock, so that keeps the order; one stamped earlier than the last (out of
    order) marks the order broken, and the next look sorts it again."""
    fresh_at = core.ws_fresh
    fresh_at.pop(symbol, None)
    if fresh_at and at < next(reversed(fresh_at.values())):
        core.ws_fresh_sorted = False
    fresh_at[symbol] = at


def silent_and_stale(core: Core, now: int, fallback_ms: int, stale_ms: int) -> tuple[str | None, str | None]:
    """The first watched symbol (in ``symbols``' order) with no WS mark for ``fallback_ms`` (W22),
    and the first with no fresh mark from either source for ``stale_ms`` (W23-1). Only the oldest
    entries of ``ws_fresh`` can be either, so the look stops at the first fresh one."""
    watch_new_symbols(core, now)
    if not core.ws_fresh_sorted:
        core.ws_fresh = dict(sorted(core.ws_fresh.items(), key=lambda item: item[1]))
        core.ws_fresh_sorted = True
    silent: list[str] = []
    stale: list[str] = []
    rest_ms = core.mark_rest_ms
    fresh_ms = min(fallback_ms, stale_ms)
    for symbol, at in core.ws_fresh.items():
        if now - at < fresh_ms:
            break  # this one and every later one are fresh
        if now - at >= fallback_ms:
            silent.append(symbol)
        if now - at >= stale_ms and now - max(at, rest_ms.get(symbol, 0)) >= stale_ms:
            stale.append(symbol)
    return (
        core.by_seq(silent)[0] if silent else None,
        core.by_seq(stale)[0] if stale else None,
    )


def ws_silent(core: Core, now: int) -> str | None:
    """A watched symbol with no WS mark for the fallback time (its own stream is silent)."""
    limit = core.strategy.ws_stale_fallback_seconds * 1000
    return silent_and_stale(core, now, limit, limit)[0]


def check_price_source(core: Core, now: int) -> None:
    s = core.strategy
    assert core.last_ws_ms is not None
    ws_age = now - core.last_ws_ms
    fallback_ms = s.ws_stale_fallback_seconds * 1000
    stale_ms = s.stale_mark_price_seconds * 1000
    silent, stale_symbol = silent_and_stale(core, now, fallback_ms, stale_ms)
    if core.price_source == "WS" and (ws_age >= fallback_ms or silent is not None):  # W22
        core.price_source = "REST"
        cause = core.ws_reason or "no message"
        what = f"no websocket message for {ws_age} ms" if ws_age >= fallback_ms else f"{silent} silent"
        core.emit(cmd.UsePriceSource(source="REST", reason=f"{what} ({cause})"))
        core.log("price_source", silent, "rest_fallback", at_ms=now, cause=cause)
    rest_stale = core.rest_failing or core.last_rest_ms is None or now - core.last_rest_ms >= stale_ms
    if core.locks[SAFETY_LOCK].state != "PRICE_OK":
        return
    if ws_age >= stale_ms and rest_stale:  # W23-1
        why = f"no fresh mark price for {ws_age} ms"
    elif stale_symbol is not None:
        why = f"no fresh mark price of {stale_symbol} for {stale_ms // 1000} s or more"
    else:
        return
    core.fire_lock(SAFETY_LOCK, "price_stale", why)
    released = [m.symbol for m in core.symbols.values() if m.state == "MONITORING"]
    closing = [m.symbol for m in core.symbols.values() if m.position() > 0]
    for model in list(core.symbols.values()):
        stale_reset(core, model)
    done = [f"{len(released)} monitoring released"] if released else []
    done += [f"closing {', '.join(closing)} at market"] if closing else []
    core.critical("safety_lock", None, f"safety lock on: {why}; " + ("; ".join(done) or "nothing was held"))


def stale_reset(core: Core, model: SymbolModel) -> None:
    if model.state == "MONITORING":
        core.reset(model, "safety lock: monitoring released")
    elif model.position() > 0:
        lifecycle.market_close(core, model, "safety_lock")
    elif model.state == "ENTRY_ORDER":
        core.decide_close(model, "safety_lock")
        order_flow.cancel_all(core, model)
        lifecycle.finish_if_flat(core, model)
