"""Orders (W24..W35-1, R13..R19, N-11..N-19): placement, answers, unknown outcomes, resends,
cancels and the venue's order updates, each through the order table of ``fsm.orders``.

Functions of the engine's state (``fsm.core.Core``); ``fsm.engine`` routes events to them.
"""

from __future__ import annotations

from decimal import Decimal

from fsm import commands as cmd
from fsm import events as ev
from fsm import flatten, lifecycle, protection, rules
from fsm.core import (
    CLOSE_RETRY_FIRST_MS,
    CLOSE_RETRY_MAX_MS,
    ENTRY_WAIT_MAX_MS,
    ORPHAN_LIMIT,
    RESOLVE_ALERT_AFTER,
    RESOLVE_RETRY_FIRST_MS,
    RESOLVE_RETRY_MAX_MS,
    STOP_RETRY_MS,
    ZERO,
    Core,
)
from fsm.model import ENTRY_LEGS, LIMIT_EXIT_LEGS, STOP_LEGS, TERMINAL_STATUSES, OrderTrack, SymbolModel
from fsm.orders import order_kind
from fsm.table import EXIT_CANCEL_LOCK, RATE_LIMIT, RECOVERY_LOCK


def place_entry(core: Core, model: SymbolModel, leg: cmd.Leg, price: Decimal, qty: Decimal) -> None:
    gen = model.next_generation(leg)
    cid = rules.client_order_id(model.symbol, model.message_id, leg, gen)
    _, position_side = core.side_params()
    model.orders[cid] = OrderTrack(cid=cid, leg=leg, side="SELL", kind="LIMIT", price=price, qty=qty)
    core.emit(
        cmd.PlaceOrder(  # W33: always a GTC limit, never reduce-only
            symbol=model.symbol,
            client_order_id=cid,
            leg=leg,
            side="SELL",
            order_type="LIMIT",
            quantity=qty,
            price=price,
            time_in_force="GTC",
            reduce_only=None,
            position_side=position_side,
        )
    )


def place_limit_exit(core: Core, model: SymbolModel, leg: cmd.Leg, price: Decimal) -> None:
    assert model.info is not None
    qty = rules.exit_quantity(model.position(), model.info)  # R11
    if qty <= 0 or qty < model.info.min_qty:
        if model.state == "ENTRY_ORDER" and model.open_orders("ENTRY1"):
            # The entry is still filling: wait for a size the venue accepts.
            core.log("exit_deferred", model.symbol, "position_below_min_qty", leg=leg, qty=qty)
            if leg == "TP":
                core.set_trigger(model, "tp", True, "waits for a size the venue accepts")
            return
        exit_filter_failure(core, model, leg, "exit_quantity_below_min")
        return
    gen = model.next_generation(leg)
    cid = rules.client_order_id(model.symbol, model.message_id, leg, gen)
    reduce_only, position_side = core.side_params()
    model.orders[cid] = OrderTrack(cid=cid, leg=leg, side="BUY", kind="LIMIT", price=price, qty=qty)
    core.emit(
        cmd.PlaceOrder(
            symbol=model.symbol,
            client_order_id=cid,
            leg=leg,
            side="BUY",
            order_type="LIMIT",
            quantity=qty,
            price=price,
            time_in_force="GTC",
            reduce_only=reduce_only,
            position_side=position_side,
        )
    )


def place_tp(core: Core, model: SymbolModel) -> None:
    price = rules.take_profit_price(model.average(), core.strategy.tp_pct, core.tick_size(model))
    place_limit_exit(core, model, "TP", price)


def place_stop(core: Core, model: SymbolModel, leg: cmd.Leg, trigger_price: Decimal) -> None:
    """A STOP_MARKET through the Algo Order API only (N-14, R09..R11-1)."""
    gen = model.next_generation(leg)
    cid = rules.client_order_id(model.symbol, model.message_id, leg, gen)
    _, position_side = core.side_params()
    model.orders[cid] = OrderTrack(
        cid=cid, leg=leg, side="BUY", kind="STOP_MARKET", price=trigger_price, qty=model.position()
    )
    core.emit(
        cmd.PlaceAlgoOrder(
            symbol=model.symbol,
            client_algo_id=cid,
            leg=leg,
            side="BUY",
            order_type="STOP_MARKET",
            trigger_price=trigger_price,
            working_type="MARK_PRICE",
            close_position=True,
            position_side=position_side,
        )
    )


STOP_REPLACE_MAX = 5  # generations of one stop leg: a venue that keeps ending it is not fed forever


def stop_still_needed(model: SymbolModel, order: OrderTrack) -> bool:
    """A stop of ours that ended without our decision still protects a position: the symbol is not
    closing, the engine and the venue (when it said) both hold a short above dust, and no other
    stop of that leg is working."""
    position = model.position()
    return (
        model.info is not None
        and not order.cancel_decided
        and not model.closing
        and model.state in ("PHASE1", "PHASE2")
        and position > 0
        and not rules.is_dust(position, model.info)
        and (model.venue_position is None or model.venue_position > 0)
        and not [o for o in model.open_orders(order.leg) if o is not order]
    )


def cancel_all(
    core: Core, model: SymbolModel, *, legs: tuple[str, ...] = (), exclude_legs: tuple[str, ...] = ()
) -> None:
    for order in model.open_orders(*legs):
        if order.leg in exclude_legs or order.status == "PENDING_CANCEL":
            continue
        cancel(core, model, order)


def cancel(core: Core, model: SymbolModel, order: OrderTrack) -> None:
    order.cancel_wanted = True
    if order.status == "UNKNOWN":
        # A cancel cannot settle an order whose request may still execute ("gone" proves nothing
        # yet): its resolution decides, and cancels it then if it lives (``_on_resolved``).
        core.log("cancel_deferred", model.symbol, "outcome_unknown", cid=order.cid)
        return
    if order.cancel_overtaken:
        return  # already cancelled once and found nothing: the request's answer decides
    order.cancel_attempts += 1
    order.cancel_at_ms = 0  # a held-back cancel timed for it: this one supersedes it
    order.apply("cancel_sent")
    if order.is_algo:
        core.emit(
            cmd.CancelAlgoOrder(symbol=model.symbol, client_algo_id=order.cid, attempt=order.cancel_attempts)
        )
    else:
        core.emit(
            cmd.CancelOrder(symbol=model.symbol, client_order_id=order.cid, attempt=order.cancel_attempts)
        )


def on_accepted(core: Core, event: ev.OrderAccepted) -> None:
    protection.count_success(core)
    order = find_order(core, event.symbol, event.client_order_id)
    if order is None:
        return
    accepted(core, event.symbol, order, event.order_id)


def on_algo_accepted(core: Core, event: ev.AlgoOrderAccepted) -> None:
    protection.count_success(core)
    order = find_order(core, event.symbol, event.client_algo_id)
    if order is None:
        return
    accepted(core, event.symbol, order, event.algo_id)


def accepted(core: Core, symbol: str, order: OrderTrack, venue_id: int) -> None:
    """The venue took the order (one we want gone is cancelled now: ``recancel``)."""
    unconfirmed = order.status in UNCONFIRMED
    order.order_id = venue_id
    order.report("NEW")
    recancel(core, core.symbols[symbol], order, unconfirmed)


UNCONFIRMED = ("PENDING_NEW", "UNKNOWN")  # the venue has not said the order is live


def recancel(core: Core, model: SymbolModel, order: OrderTrack, unconfirmed: bool) -> None:
    """An order we want gone (its cancel decided, or its symbol closing) whose cancel could not
    reach it yet (the cancel overtook the request, or its outcome was unknown) turned out live:
    the cancel goes out now."""
    wanted_gone = order.cancel_decided or (model.closing and order.leg != "CLOSE")
    if unconfirmed and wanted_gone and order.status in ("NEW", "PARTIALLY_FILLED"):
        core.log("order_live_after_cancel", model.symbol, "cancel_could_not_reach_it", cid=order.cid)
        cancel(core, model, order)


def find_order(core: Core, symbol: str, cid: str) -> OrderTrack | None:
    model = core.symbols.get(symbol)
    order = model.orders.get(cid) if model else None
    if order is None:
        core.anomaly("unknown_order", symbol, cid)
    return order


def on_rejected(core: Core, event: ev.OrderRejected) -> None:
    model = core.symbols.get(event.symbol)
    order = model.orders.get(event.client_order_id) if model else None
    if model is None or order is None:
        core.anomaly("unknown_order_rejected", event.symbol, event.client_order_id)
        return
    core.log(  # W51-3
        "order_failed",
        model.symbol,
        event.category,
        cid=order.cid,
        leg=order.leg,
        price=order.price,
        qty=order.qty,
        code=event.code,
        message=event.message,
        attempt=order.attempts,
    )
    if event.category == "rate_limited":
        protection.count_rate_failure(core)
    if event.category == "auth":
        protection.enter_auth_lock(core, f"{event.code} {event.message}")
    if order.status in TERMINAL_STATUSES:
        # The venue's own final word (or our cancel's) came first: the refusal changes nothing.
        core.log("order_failure_moot", model.symbol, order.status, cid=order.cid)
        return
    if order.status in ("NEW", "PARTIALLY_FILLED"):
        # The venue already reported it live (its push overtook this answer, or a resend's refusal met
        # the original, D-26): the venue's own word stands and the refusal changes nothing.
        core.log("order_failure_moot", model.symbol, order.status, cid=order.cid)
        return
    if order.cancel_decided:
        # We decided to cancel it before its request was answered: the refusal is its end, never
        # a reason to send it again.
        was_open = order.is_open
        order.apply("refused")
        core.log("order_failure_moot", model.symbol, "cancel_decided", cid=order.cid)
        lifecycle.after_order_change(core, model, order, ZERO, was_open)
        return
    if event.category == "flat" and order.leg not in ENTRY_LEGS:
        if model.venue_position == 0:  # the venue's position, read with the refusal: flat
            order.apply("refused")
            core.log("position_sync", model.symbol, "venue_flat_on_close", cid=order.cid)
            lifecycle.sync_position(core, model)
            return
        if order.is_algo and model.position() > 0 and order.attempts < core.strategy.entry_attempts:
            # -4509 while the position is there (the venue's view lagged): the stop goes again.
            order.apply("refused")
            resend(core, model, order, STOP_RETRY_MS)
            return
    retryable = event.retryable and order.attempts < core.strategy.entry_attempts
    if order.leg in ENTRY_LEGS and event.retry_after_ms > ENTRY_WAIT_MAX_MS:
        retryable = False  # an entry this late would no longer be at its trigger
    if order.leg in ENTRY_LEGS:
        entry_rejected(core, model, order, event, retryable)
    elif order.is_algo:
        stop_rejected(core, model, order, event, retryable)
    else:
        exit_rejected(core, model, order, event, retryable)


def on_outcome_unknown(core: Core, event: ev.OrderOutcomeUnknown) -> None:
    """The order may or may not exist: it stays open (UNKNOWN) and holds its leg, the entry lock
    and the symbol, and is queried once its request can no longer execute (never resent first)."""
    model = core.symbols.get(event.symbol)
    order = model.orders.get(event.client_order_id) if model else None
    if model is None or order is None:
        core.anomaly("unknown_order_outcome", event.symbol, event.client_order_id)
        return
    core.log(
        "order_unknown",
        model.symbol,
        event.reason or "outcome_unknown",
        cid=order.cid,
        leg=order.leg,
        resolve_at_ms=event.resolve_after_ms,
    )
    if order.status == "PENDING_CANCEL" and order.order_id == 0:
        # Our cancel is out and the venue has told nothing of the order: if that cancel finds
        # nothing, a query after the request's recvWindow decides (``on_cancel_result``).
        order.resolve_at_ms = max(event.resolve_after_ms, core.now_ms)
        return
    if order.status != "PENDING_NEW":
        return  # the user stream already told what became of it
    order.apply("answer_lost")
    order.resolve_at_ms = max(event.resolve_after_ms, core.now_ms)


def on_resolved(core: Core, event: ev.OrderResolved) -> None:
    model = core.symbols.get(event.symbol)
    order = model.orders.get(event.client_order_id) if model else None
    if model is None or order is None:
        core.anomaly("unknown_order_resolved", event.symbol, event.client_order_id)
        return
    core.log("order_resolved", model.symbol, event.outcome, cid=order.cid, status=event.status)
    if order.cid in model.readback_cids:
        model.readback_cids = tuple(c for c in model.readback_cids if c != order.cid)
        if not model.readback_cids and model.mismatch_since_ms:
            lifecycle.sync_position(core, model)  # the read-back did not explain it: an outside change
        if order.status != "UNKNOWN":
            return
    if event.outcome == "found":
        protection.count_success(core)
        order.order_id = order.order_id or event.order_id
        if order.status == "UNKNOWN":
            order.apply("found")
        wanted_gone = (model.closing and order.leg != "CLOSE") or order.cancel_decided
        if wanted_gone and order.is_open and order.status != "PENDING_CANCEL":
            cancel(core, model, order)  # it came to life after we decided it should go
        return
    if order.status != "UNKNOWN":
        return  # a pushed update already settled it
    if event.outcome == "failed":
        # (an answer to no query of ours has attempts 0: the first delay, never a float timestamp)
        wait = min(RESOLVE_RETRY_MAX_MS, RESOLVE_RETRY_FIRST_MS * 2 ** max(order.resolve_attempts - 1, 0))
        order.resolve_at_ms = core.now_ms + wait
        if order.resolve_attempts == RESOLVE_ALERT_AFTER:
            core.critical(
                "order_unknown",
                model.symbol,
                f"{model.symbol}: the outcome of {order.leg} order {order.cid} is still unknown after "
                f"{order.resolve_attempts} queries ({event.message}); it holds the symbol until known",
            )
        return
    # Absent, asked after the request could no longer execute: it never existed. The leg is
    # free again: the same order goes out once more while attempts remain (N-12), or the leg
    # fails as a rejection would.
    if (model.closing and order.leg != "CLOSE") or order.cancel_decided:
        order.apply("absent_while_closing")
        lifecycle.after_order_change(core, model, order, ZERO, True)
        return
    # An entry is not sent again: by now (recvWindow later) it is no longer at its trigger (as
    # D-20 gives up an entry the venue asks to delay); an exit or a stop goes out once more.
    if order.attempts < core.strategy.entry_attempts and order.leg not in ENTRY_LEGS:
        retry(core, model, order)
        return
    on_rejected(
        core,
        ev.OrderRejected(
            now_ms=event.now_ms,
            symbol=model.symbol,
            client_order_id=order.cid,
            code=0,
            message="absent after an unknown outcome",
            retryable=False,
            category="retry",
        ),
    )


def resend(core: Core, model: SymbolModel, order: OrderTrack, wait_ms: int) -> None:
    """A retry now, or once the wait the venue asked for is over (the order stays PENDING, so
    nothing else takes its leg meanwhile)."""
    if wait_ms <= 0:
        retry(core, model, order)
        return
    order.apply("resend")
    order.retry_at_ms = core.now_ms + wait_ms
    core.log("retry_delayed", model.symbol, "venue_asked_to_wait", cid=order.cid, at_ms=order.retry_at_ms)


def retry(core: Core, model: SymbolModel, order: OrderTrack) -> None:
    """Resend the very same order (same client id: N-12, W33) after a retryable failure. An exit
    is never resent above the position as it is now (R11): it is resized, or dropped when flat."""
    if order.leg not in ENTRY_LEGS and not order.is_algo and model.info is not None:
        fit = rules.exit_quantity(model.position(), model.info, market=order.kind == "MARKET")
        if fit <= 0:
            was_open = order.is_open
            if was_open:
                order.apply("refused")
            core.log("resend_moot", model.symbol, "position_flat", cid=order.cid)
            lifecycle.after_order_change(core, model, order, ZERO, was_open)
            return
        if fit < order.qty:
            core.log(
                "resend_resized", model.symbol, "position_smaller", cid=order.cid, qty=fit, was=order.qty
            )
            order.qty = fit
    order.attempts += 1
    order.apply("resend")
    reduce_only, position_side = core.side_params()
    if order.is_algo:
        core.emit(
            cmd.PlaceAlgoOrder(
                symbol=model.symbol,
                client_algo_id=order.cid,
                leg=order.leg,
                side="BUY",
                order_type="STOP_MARKET",
                trigger_price=order.price,
                position_side=position_side,
                attempt=order.attempts,
            )
        )
        return
    is_entry = order.leg in ENTRY_LEGS
    core.emit(
        cmd.PlaceOrder(
            symbol=model.symbol,
            client_order_id=order.cid,
            leg=order.leg,
            side=order.side,
            order_type="LIMIT" if order.kind == "LIMIT" else "MARKET",  # never EXTERNAL: not ours to send
            quantity=order.qty,
            price=order.price if order.kind == "LIMIT" else None,
            time_in_force="GTC" if order.kind == "LIMIT" else None,
            reduce_only=None if is_entry else reduce_only,
            position_side=position_side,
            attempt=order.attempts,
        )
    )


def entry_rejected(
    core: Core, model: SymbolModel, order: OrderTrack, event: ev.OrderRejected, retryable: bool
) -> None:
    order.apply("refused")
    if event.category == "margin" or event.code == -2019:  # W35-1
        if order.leg == "ENTRY1":
            core.reset(model, "first entry: insufficient margin")
            return
        if not model.margin_retry_done:
            model.margin_retry_done = True
            core.fire_region(model, "setup", "prepare_entry2", "W35-1: once more after insufficient margin")
            core.emit(cmd.PrepareOrder(symbol=model.symbol, leg="ENTRY2", configure_margin=False))
            return
        core.log("second_entry_skipped", model.symbol, "insufficient_margin_after_retry")
        return
    if retryable and entry_resend_blocked(core, model, order, event.code):
        return
    if retryable:  # W35, N-12
        resend(core, model, order, event.retry_after_ms)
        return
    if order.leg == "ENTRY1":
        core.reset(model, f"first entry failed after {order.attempts} attempt(s): {event.code}")
    else:
        core.log("second_entry_skipped", model.symbol, f"failed_after_{order.attempts}_attempts")


def entry_resend_blocked(core: Core, model: SymbolModel, order: OrderTrack, code: int) -> bool:
    """A first entry goes out again only through its gate (``first_entry_order``): a lock that came
    on since it was decided holds it. The rate limits send the symbol back to its trigger (D-43);
    another lock, or another symbol's position, ends the attempt. Returns whether it was held."""
    if order.leg != "ENTRY1" or model.position() > 0:
        return False
    blocked = protection.gate(core, "first_entry_order", model.symbol)
    if blocked is None:
        return False
    if order.status == "PENDING_NEW":
        order.apply("refused")  # a timed resend that will not go: the attempt ends here
    order.retry_at_ms = 0
    if blocked == RATE_LIMIT and not model.open_orders(*ENTRY_LEGS):
        # Nothing reached the book and the rate limits hold: wait for the trigger (D-43).
        core.log("order_blocked", model.symbol, "rate_limited_entry_held", code=code)
        core.fire(model, "entry_held", f"entry resend held by the rate limits ({code})")
        return True
    core.log("order_blocked", model.symbol, f"locked:{blocked}")
    if not model.open_orders(*ENTRY_LEGS):
        core.reset(model, f"lock before the entry's resend: {blocked}")
    return True


def exit_rejected(
    core: Core, model: SymbolModel, order: OrderTrack, event: ev.OrderRejected, retryable: bool
) -> None:
    order.apply("refused")
    if retryable and order.leg == "CLOSE":
        resend(core, model, order, event.retry_after_ms)
        return
    if order.leg == "CLOSE":
        # A refused close (filters included: a filter refusal repeats if resent at once) is
        # tried again within the attempts, then on D-19's growing delay with an alert.
        close_again(
            core,
            model,
            f"close retry after {event.code}",
            f"market close failed: {event.code} {event.message}",
        )
        return
    if event.category == "filter":  # N-20
        exit_filter_failure(core, model, order.leg, f"filter {event.code}")
        return
    lifecycle.market_close(core, model, f"limit exit rejected ({event.code}): market fallback")  # R12


def close_again(core: Core, model: SymbolModel, reason: str, failure: str) -> None:
    """Another market close while attempts remain. After that a position must still not be left
    unmanaged: a critical alert for a person, and timed closes with a growing delay (D-19)."""
    attempts = core.strategy.entry_attempts
    if model.close_attempts < attempts:
        lifecycle.market_close(core, model, reason)
        return
    backoff = min(CLOSE_RETRY_MAX_MS, CLOSE_RETRY_FIRST_MS * 2 ** (model.close_attempts - attempts))
    if model.close_retry_at_ms == 0 and model.close_attempts == attempts:
        core.critical(
            "close_failed",
            model.symbol,
            f"{model.symbol}: {failure}; retrying the close every {backoff // 1000} s or more",
        )
    model.close_retry_at_ms = core.now_ms + backoff
    core.log("close_retry_scheduled", model.symbol, failure, at_ms=model.close_retry_at_ms)


def exit_filter_failure(core: Core, model: SymbolModel, leg: str, reason: str) -> None:
    """N-20: close at market once when the position is at least minQty; otherwise it is dust."""
    assert model.info is not None
    core.log("exit_filter_failure", model.symbol, reason, leg=leg, position=model.position())
    if model.position() >= model.info.min_qty:
        lifecycle.market_close(core, model, f"exit filter failure: {reason}")
    else:
        core.decide_close(model, "dust")
        cancel_all(core, model)
        lifecycle.finish_if_flat(core, model, dust_ok=True)


def stop_rejected(
    core: Core, model: SymbolModel, order: OrderTrack, event: ev.OrderRejected, retryable: bool
) -> None:
    order.apply("refused")
    if retryable:
        resend(core, model, order, event.retry_after_ms)
        return
    if event.code in (-2021, -4142):  # the stop would trigger at once: its condition already holds
        lifecycle.market_close(core, model, f"{order.leg} would trigger immediately")
        return
    core.critical(
        "stop_rejected",
        model.symbol,
        f"{order.leg} stop of {model.symbol} rejected: {event.code} {event.message}",
    )


def track_account_order(core: Core, event: ev.OrderUpdated) -> None:
    """N-21's account-wide view of open entry orders; an order once terminal stays terminal."""
    key = f"{event.symbol}:{event.order_id}"
    closing_order = (
        event.reduce_only or event.close_position or (event.position_side == "SHORT" and event.side == "BUY")
    )
    if event.status in ("NEW", "PARTIALLY_FILLED"):
        if not closing_order and key not in core.closed_order_keys:
            core.account_entry_orders[key] = event.symbol
        return
    core.account_entry_orders.pop(key, None)
    if event.cum_qty > 0 and not closing_order and key not in core.closed_order_keys:
        core.unconfirmed_fills[event.symbol] = event.now_ms
    core.closed_order_keys[key] = event.now_ms
    if len(core.closed_order_keys) > 2000:  # keep the newest only: late updates come within minutes
        for old in sorted(core.closed_order_keys, key=core.closed_order_keys.__getitem__)[:1000]:
            del core.closed_order_keys[old]


def on_order_update(core: Core, event: ev.OrderUpdated) -> None:
    track_account_order(core, event)
    model = core.symbols.get(event.symbol)
    if model is None:
        if core.locks[RECOVERY_LOCK].state == "RECOVERING" and not core.recovery_snapshot_done:
            # N-28: the venue is the truth; its snapshot (still to come) already holds this fill.
            core.log("fill_deferred", event.symbol, "recovery_snapshot", cid=event.client_order_id)
            return
        if event.cum_qty > 0:
            adopt_late_fill(core, event)
        return  # otherwise an order of a symbol we do not manage: only the entry lock cares
    order = model.orders.get(event.client_order_id)
    if order is None and event.order_id in model.algo_children:
        order = model.orders.get(model.algo_children[event.order_id])
        if order is not None:
            apply_child_fill(core, model, order, event)
            return
    if order is None:
        order = flatten.adopt_close(core, model, event)
    if order is None:
        if model.open_orders(*STOP_LEGS) and event.side == "BUY":
            # A stop's child can report before ALGO_UPDATE names it (ai): keep it for then.
            model.orphan_updates = [*model.orphan_updates, event][-ORPHAN_LIMIT:]
        core.log("foreign_order", model.symbol, event.status, cid=event.client_order_id)
        return
    unconfirmed = order.status in UNCONFIRMED
    if order.order_id == 0:
        order.order_id = event.order_id
    if event.cum_qty == order.filled and event.avg_price > 0 and event.cum_qty > 0:
        order.avg_price = event.avg_price  # the exact average of a fill first booked from a cancel answer
    delta = order.book(event)
    if delta < 0 or (delta == 0 and event.last_qty > 0):
        core.log("fill_ignored", model.symbol, "duplicate_or_reordered", cid=order.cid, cum=event.cum_qty)
    was_open = order.is_open
    order.report(event.status)
    if order.status == "CANCELED" and order.filled >= order.qty:
        order.apply("traded_in_full")
    recancel(core, model, order, unconfirmed)
    lifecycle.after_order_change(core, model, order, delta if delta > 0 else ZERO, was_open)


def adopt_late_fill(core: Core, event: ev.OrderUpdated) -> None:
    """A fill of one of our entry orders reported after the symbol was reset (it raced the
    cancel): the short is real and nobody manages it. We cancelled that entry on purpose, so the
    position is taken back under management and closed at market."""
    parsed = rules.parse_client_order_id(event.client_order_id)
    info = core.infos.get(event.symbol)
    if parsed is None or parsed.leg not in ENTRY_LEGS or info is None:
        return
    unbooked = event.cum_qty - core.closed_fills.get(event.client_order_id, ZERO)
    if unbooked <= 0:
        core.log("fill_ignored", event.symbol, "already_booked", cid=event.client_order_id, cum=event.cum_qty)
        return
    model = core.symbol_model(event.symbol)
    model.info = info
    model.message_id = parsed.message_id
    for cid in core.closed_fills:  # never reuse a client id of this signal (N-13)
        known = rules.parse_client_order_id(cid)
        if known is not None and known.message_id == parsed.message_id and cid.endswith(event.symbol):
            model.generations[known.leg] = max(model.generations.get(known.leg, 0), known.generation)
    track = OrderTrack(
        cid=event.client_order_id,
        leg=parsed.leg,
        side=event.side,
        kind=order_kind(event.order_type),
        price=event.price,
        qty=event.orig_qty,
        status=event.status if event.status != "NEW" else "CANCELED",
        order_id=event.order_id,
        filled=unbooked,
        avg_price=event.avg_price if event.avg_price > 0 else event.last_price or event.price,
        last_fill_ms=event.now_ms,
    )
    model.orders[track.cid] = track
    core.critical(
        "late_fill",
        event.symbol,
        f"{event.symbol}: {event.cum_qty} filled after its cancel; closing at market",
    )
    core.fire(model, "restore_phase1", "fill after the entry was cancelled")
    core.emit(cmd.SubscribeMarket(symbols=(event.symbol,)))
    lifecycle.market_close(core, model, "fill after cancel")


def apply_child_fill(core: Core, model: SymbolModel, stop: OrderTrack, event: ev.OrderUpdated) -> None:
    """A triggered stop's market child filled: its quantity closes the position."""
    delta = stop.book(event)
    if event.status == "FILLED" and stop.status != "FILLED":
        stop.apply("stop_filled")
    lifecycle.after_order_change(core, model, stop, delta if delta > 0 else ZERO, True)


def on_algo_update(core: Core, event: ev.AlgoOrderUpdated) -> None:
    model = core.symbols.get(event.symbol)
    order = model.orders.get(event.client_algo_id) if model else None
    if model is None or order is None:
        # One of our ids no longer tracked (a stop cancelled or replaced before the symbol reset)
        # is ours, late; only an id we never make is foreign.
        ours = rules.parse_client_order_id(event.client_algo_id)
        kind = "late_algo_update" if ours else "foreign_algo_order"
        core.log(kind, event.symbol, event.status, cid=event.client_algo_id)
        return
    if event.algo_id and not order.order_id:
        order.order_id = event.algo_id
    if event.status in ("TRIGGERING", "TRIGGERED", "FINISHED"):
        if event.actual_order_id:
            model.algo_children[event.actual_order_id] = order.cid
        if model.state in ("ENTRY_ORDER", "PHASE1", "PHASE2"):
            core.fire(model, "exit_started", f"{order.leg} stop triggered")
        core.fire_close(model, "close_by_exit", f"{order.leg} stop triggered")
        model.close_reason = model.close_reason or f"{order.leg} stop"
        core.disarm_all(model, f"{order.leg} stop triggered")
        orphans = [u for u in model.orphan_updates if u.order_id == event.actual_order_id]
        model.orphan_updates = [u for u in model.orphan_updates if u.order_id != event.actual_order_id]
        for update in orphans:
            apply_child_fill(core, model, order, update)
        cancel_all(core, model, exclude_legs=(order.leg,))  # R15: the stop closes everything
        if event.status == "FINISHED" and order.status != "FILLED" and model.position() <= 0:
            order.apply("stop_filled")
        lifecycle.finish_if_flat(core, model, dust_ok=True)
    elif event.status in ("CANCELED", "EXPIRED", "REJECTED"):
        was_open = order.is_open
        order.report("CANCELED" if event.status != "REJECTED" else "REJECTED")
        if event.status == "REJECTED":
            core.critical(
                "stop_rejected", model.symbol, f"{order.leg} stop rejected by the venue: {event.reason}"
            )
        elif was_open and stop_still_needed(model, order):
            # D-69: our protective stop went away without our decision (cancelled in the app, expired
            # by the venue) while its position is held: placed again at its price, and told.
            what = f"{model.symbol}: {order.leg} stop {event.status.lower()} outside shortfsm"
            if model.generations.get(order.leg, 0) >= STOP_REPLACE_MAX:
                core.critical("stop_not_replaced", model.symbol, f"{what} again; the position has no stop")
            else:
                core.critical("stop_replaced", model.symbol, f"{what}; placed again at {order.price}")
                place_stop(core, model, order.leg, order.price)
        if was_open:
            lifecycle.finish_if_flat(core, model)
    else:
        order.report("NEW")


def on_cancel_result(core: Core, event: ev.CancelResult) -> None:
    model = core.symbols.get(event.symbol)
    order = model.orders.get(event.client_order_id) if model else None
    if model is None or order is None:
        core.log("cancel_result_ignored", event.symbol, "unknown_order", cid=event.client_order_id)
        return
    if event.gone and order.status == "PENDING_CANCEL" and order.request_unanswered:
        # The venue has told nothing of this order and its request is unanswered: "unknown order"
        # proves nothing yet (the cancel overtook the request). The request's answer decides.
        order.apply("cancel_overtook")
        core.log("cancel_overtook_request", model.symbol, "awaiting_request_answer", cid=order.cid)
        return
    if event.gone and order.status == "UNKNOWN":
        return  # "unknown order" proves nothing while its request may still execute: its query decides
    if event.gone and order.status == "PENDING_CANCEL" and order.order_id == 0 and order.resolve_at_ms:
        # Its answer was lost while our cancel was out: it may still execute; a query decides.
        order.apply("gone_unexplained")
        core.log("cancel_overtook_request", model.symbol, "querying_after_lost_answer", cid=order.cid)
        return
    if (
        event.gone
        and order.is_open
        and not order.is_algo
        and order.leg in LIMIT_EXIT_LEGS
        and model.close_deferred
    ):
        # "Already gone": filled or cancelled, and how much traded is not said. The close waits
        # for the order's own answer, asked now (a filled TP's push may be late or lost).
        order.apply("gone_unexplained")
        order.resolve_at_ms = core.now_ms
        core.log("exit_gone", model.symbol, "querying_before_close", cid=order.cid)
        return
    if event.ok or event.gone:
        cancel_done(core, model, order, event)
        return
    cancel_refused(core, model, order, event)


def cancel_done(core: Core, model: SymbolModel, order: OrderTrack, event: ev.CancelResult) -> None:
    """The cancel went through, or the order was already gone."""
    protection.count_success(core)
    core.account_entry_orders.pop(f"{model.symbol}:{order.order_id}", None)
    if order.order_id:
        core.closed_order_keys[f"{model.symbol}:{order.order_id}"] = event.now_ms
    delta = ZERO
    if event.executed_qty is not None and event.executed_qty > order.filled and not order.is_algo:
        # A fill raced the cancel: book it at the order's price until the user stream says more.
        delta = event.executed_qty - order.filled
        order.avg_price = (order.avg_price * order.filled + order.price * delta) / event.executed_qty
        order.filled = event.executed_qty
        order.last_fill_ms = event.now_ms
    was_open = order.is_open
    if was_open:
        order.apply("cancel_too_late" if order.filled >= order.qty and order.filled > 0 else "cancel_done")
    cleared = model.cancel_failed and not model.open_orders()
    if cleared:
        core.fire_region(model, "cancels", "cancels_clean", f"{order.cid}: the re-cancel went through")  # R16
    lifecycle.after_order_change(core, model, order, delta, was_open)
    if cleared and model.symbol in core.symbols:
        # An exit that filled meanwhile could not finish the symbol while the failure held.
        lifecycle.finish_if_flat(core, model, dust_ok=True)
    if core.locks[EXIT_CANCEL_LOCK].state == "CANCEL_FAILED" and not any(
        m.cancel_failed for m in core.symbols.values()
    ):
        core.fire_lock(EXIT_CANCEL_LOCK, "cancel_clean", "leftover exit orders cancelled")


def cancel_refused(core: Core, model: SymbolModel, order: OrderTrack, event: ev.CancelResult) -> None:
    """W51-3, R15: a refused cancel is retried, delayed by the rate limits, or locks exits."""
    core.log(  # W51-3
        "cancel_failed",
        model.symbol,
        str(event.code),
        cid=order.cid,
        attempt=order.cancel_attempts,
        message=event.message,
    )
    if event.code in (-1003, 429, 418):
        protection.count_rate_failure(core)
    if order.status in TERMINAL_STATUSES:
        # The order's own report (a fill, a venue cancel) came before this refusal: nothing
        # is left to cancel; a re-cancel would only fail again into the R15 lock.
        core.log("cancel_failure_moot", model.symbol, order.status, cid=order.cid)
        return
    if event.retry_after_ms > 0 and order.status != "UNKNOWN":
        # Refused by the rate limits (W50), not by the venue's book: not one of R15's attempts.
        # It goes again once the wait is over (sent sooner, it would only lengthen a ban).
        order.cancel_attempts -= 1
        order.cancel_at_ms = core.now_ms + event.retry_after_ms
        core.log("cancel_delayed", model.symbol, "rate_limited", cid=order.cid, at_ms=order.cancel_at_ms)
        return
    if order.cancel_attempts < core.strategy.cancel_attempts:
        cancel(core, model, order)
        return
    # R15: three failures: mark the symbol, block new orders, re-query periodically (R16).
    core.fire_region(model, "cancels", "cancel_stuck", f"{order.cid} not cancelled")
    core.critical(
        "exit_cancel_failed",
        model.symbol,
        f"{model.symbol}: could not cancel {order.cid} after {order.cancel_attempts} attempts",
    )
    if core.fire_lock(EXIT_CANCEL_LOCK, "cancel_failed", f"{order.cid} not cancelled"):
        core.requery_due_ms = event.now_ms + core.strategy.requery_interval_seconds * 1000
