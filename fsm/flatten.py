"""The operator's ``flatten`` as the engine sees it (D-22, D-63).

The daemon cancels every order and closes every position on the venue itself. Between
``FlattenStarted`` and ``FlattenFinished`` each symbol the engine holds is closing for the operator
(``OPERATOR_FLATTEN``): its orders are ones we want gone (a cancel that lands is never a reason to
arm an exit again), and no close of ours goes out (``lifecycle.market_close`` leaves it to the
operator). The operator's close of our short is booked as the symbol's CLOSE order, from its fill
report or, failing that, from the venue's answer; one of unknown outcome is resolved by a query
like any order of ours. Whatever the flatten did not close, the engine closes.
"""

from __future__ import annotations

from decimal import Decimal

from fsm import events as ev
from fsm import lifecycle, order_flow, rules
from fsm.core import Core
from fsm.model import SymbolModel
from fsm.orders import OrderTrack
from fsm.rules import OPERATOR_FLATTEN

ZERO = Decimal(0)
HOLDING_STATES = ("ENTRY_ORDER", "PHASE1", "PHASE2", "EXITING")
FLATTENED = "flatten"  # close_reason once the flatten is over: the engine's closing rules apply again


def on_flatten_started(core: Core, event: ev.FlattenStarted) -> None:
    for model in list(core.symbols.values()):
        if model.state not in HOLDING_STATES:
            continue
        core.fire_close(model, "flatten_started", OPERATOR_FLATTEN)
        model.close_reason = OPERATOR_FLATTEN
        model.close_retry_at_ms = 0
        core.disarm_all(model, OPERATOR_FLATTEN)
        for order in model.open_orders():
            if order.leg != "CLOSE":
                order.cancel_wanted = True  # the operator's cancel is on its way
        core.fire(model, "exit_started", OPERATOR_FLATTEN)  # internal when already EXITING
        core.log("flatten", model.symbol, "left_to_the_operator", request=event.request_id)


def adopt_close(core: Core, model: SymbolModel, event: ev.OrderUpdated) -> OrderTrack | None:
    """A report of the operator's close of our short, on a symbol it flattens (or flattened): booked
    as the symbol's own close. (A hedge-mode LONG leg's close is not ours: its id differs.)"""
    if event.side != "BUY" or event.position_side == "LONG":
        return None
    return _adopt(core, model, event.client_order_id)


def _adopt(core: Core, model: SymbolModel, cid: str) -> OrderTrack | None:
    flattened = model.close_state == "FLATTENING" or model.close_reason == FLATTENED
    if not flattened or not rules.is_flatten_close(cid, model.symbol):
        return None
    track = OrderTrack(
        cid=cid, leg="CLOSE", side="BUY", kind="MARKET", price=ZERO, qty=max(model.position(), ZERO)
    )
    model.orders[cid] = track
    core.log("flatten", model.symbol, "operator_close_booked", cid=cid)
    return track


def on_flatten_finished(core: Core, event: ev.FlattenFinished) -> None:
    cancelled = set(event.cancelled)
    closes = {symbol: (cid, qty, price) for symbol, cid, qty, price in event.closed}
    unknown = {symbol: (cid, at_ms) for symbol, cid, at_ms in event.unknown}
    for model in list(core.symbols.values()):
        if model.close_state != "FLATTENING":
            continue
        close = closes.get(model.symbol)
        if close is not None:
            book_close(core, model, *close)
        if model.symbol not in core.symbols or model.close_state != "FLATTENING":
            continue  # booking it finished the symbol
        core.fire_close(model, "flatten_finished", f"flatten {event.request_id} finished")
        model.close_reason = FLATTENED
        pending = unknown.get(model.symbol)
        if pending is not None:
            # It may have traded: a query once it can no longer execute decides (never a resend first).
            track = model.orders.get(pending[0]) or _adopt(core, model, pending[0])
            if track is not None and track.is_open and track.status != "UNKNOWN":
                track.apply("gone_unexplained")  # what it traded is known only by asking
                track.resolve_at_ms = max(pending[1], core.now_ms)
        position = model.position()
        unclosed = position > 0 and model.info is not None and not rules.is_dust(position, model.info)
        if unclosed and not model.open_orders("CLOSE"):
            core.critical(
                "flatten",
                model.symbol,
                f"{model.symbol}: the flatten left {position} open; the engine closes it at market",
            )
            lifecycle.market_close(core, model, "flatten left it open")
            continue
        for order in model.open_orders():
            # Placed after the flatten listed the venue's orders: nobody else cancels it.
            if (
                order.cid not in cancelled
                and order.leg != "CLOSE"
                and order.status in ("NEW", "PARTIALLY_FILLED")
            ):
                order_flow.cancel(core, model, order)
        lifecycle.finish_if_flat(core, model, dust_ok=True)


def book_close(core: Core, model: SymbolModel, cid: str, qty: Decimal, price: Decimal) -> None:
    """The venue's answer to the operator's close, when its fill report has not come (yet)."""
    if qty <= 0:
        return
    track = model.orders.get(cid) or _adopt(core, model, cid)
    if track is None:
        return
    order_flow.on_order_update(
        core,
        ev.OrderUpdated(
            now_ms=core.now_ms,
            symbol=model.symbol,
            client_order_id=cid,
            order_id=track.order_id,
            side="BUY",
            order_type="MARKET",
            status="FILLED",
            price=ZERO,
            orig_qty=qty,
            cum_qty=qty,
            avg_price=price,
            last_price=price,
        ),
    )
