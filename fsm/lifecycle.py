"""The trade (W17..W43-1, R09..R22): the 1-second evaluation, entries, phases, exits, OCO, the
five-second rule, market closes and the position sync.

Functions of the engine's state (``fsm.core.Core``); ``fsm.engine`` routes events to them.
"""

from __future__ import annotations

from decimal import Decimal

from fsm import commands as cmd
from fsm import events as ev
from fsm import intake, order_flow, prices, protection, recovery, rules
from fsm.core import (
    AUTH_PROBE_FIRST_MS,
    AUTH_PROBE_MAX_MS,
    RATE_LIMIT_CODES,
    RATE_PROBE_MS,
    ZERO,
    Core,
    position_key,
    price_text,
)
from fsm.model import ENTRY_LEGS, LIMIT_EXIT_LEGS, OrderTrack, SymbolModel
from fsm.table import AUTH, EXIT_CANCEL_LOCK, RATE_LIMIT, RECOVERY_LOCK, SAFETY_LOCK


def on_tick(core: Core, event: ev.Tick) -> None:
    now = event.now_ms
    if core.last_ws_ms is None:
        core.last_ws_ms = now  # the clock of the price source starts with the first tick
    prices.check_price_source(core, now)
    check_timers(core, now)
    if core.locks[RECOVERY_LOCK].state == "RECOVERING":
        recovery.recovery_tick(core, now)
        return
    if core.locks[SAFETY_LOCK].state == "PRICE_STALE":
        return
    evaluate_triggers(core, now)


def check_timers(core: Core, now: int) -> None:
    s = core.strategy
    timeout = s.partial_fill_timeout_seconds * 1000
    for model in core.busy_models():
        if not model.orders and not model.close_retry_at_ms and not model.mismatch_since_ms:
            continue  # nothing below can be due
        # N-19, R19, R25: an exit order stuck part-filled for 5 s: cancel the rest, close at market.
        for order in model.open_orders(*LIMIT_EXIT_LEGS):
            if order.status == "PARTIALLY_FILLED" and now - order.last_fill_ms >= timeout:
                if model.open_orders("CLOSE"):  # R18: a market close is already in flight
                    continue
                core.log("five_second_rule", model.symbol, "partial_exit_stalled", cid=order.cid)
                market_close(core, model, "five_second_rule")
        for order in list(model.orders.values()):
            if order.retry_at_ms and now >= order.retry_at_ms and order.status == "PENDING_NEW":
                if order_flow.entry_resend_blocked(core, model, order, 0):
                    break  # the symbol was held back or reset: its orders are settled
                order.retry_at_ms = 0
                order_flow.retry(core, model, order)
            if order.cancel_at_ms and now >= order.cancel_at_ms and order.is_open:
                # A cancel the rate limits held back (a fill report may have moved it meanwhile).
                order.cancel_at_ms = 0
                order_flow.cancel(core, model, order)
            if order.status == "UNKNOWN" and order.resolve_at_ms and now >= order.resolve_at_ms:
                order.resolve_at_ms = 0  # one query in flight at a time
                order.resolve_attempts += 1
                core.emit(
                    cmd.ResolveOrder(
                        symbol=model.symbol,
                        client_order_id=order.cid,
                        is_algo=order.is_algo,
                        attempt=order.resolve_attempts,
                    )
                )
        if model.close_retry_at_ms and now >= model.close_retry_at_ms and not model.open_orders("CLOSE"):
            market_close(core, model, "timed close retry")
        # R20..R22: the venue's position disagrees with our fills for longer than the grace.
        grace = s.position_sync_grace_seconds * 1000
        if (
            model.mismatch_since_ms
            and now - model.mismatch_since_ms >= grace
            and model.symbol in core.symbols
        ):
            position_mismatch(core, model, now)
    if core.locks[AUTH].state == "AUTH_LOCKED" and core.auth_probe_due_ms and now >= core.auth_probe_due_ms:
        core.auth_probes += 1
        wait = min(AUTH_PROBE_MAX_MS, AUTH_PROBE_FIRST_MS * 2**core.auth_probes)
        core.auth_probe_due_ms = now + wait
        core.emit(cmd.ProbeVenue(purpose="auth", attempt=core.auth_probes))
    if core.locks[RATE_LIMIT].state == "PROTECT" and now >= core.rate_probe_due_ms:
        # N-24 lifts after consecutive successes; while flat nothing else is asked (D-43).
        core.rate_probe_due_ms = now + RATE_PROBE_MS
        core.emit(cmd.ProbeVenue(purpose="rate_limit"))
    if core.locks[EXIT_CANCEL_LOCK].state == "CANCEL_FAILED" and now >= core.requery_due_ms:  # R16
        core.requery_due_ms = now + s.requery_interval_seconds * 1000
        for model in core.symbols.values():
            if model.cancel_failed:
                core.emit(cmd.QueryExchange(purpose="requery", symbol=model.symbol))


def evaluate_triggers(core: Core, now: int) -> None:
    b = core.strategy.trigger_buffer_pct
    # W17-2, W19, W34: a monitored symbol whose mark is at T1 = P1 x 0.999 (fixed at receipt) is
    # kept in ``entry_ready`` by each mark; the rest of the evaluation is the busy symbols'.
    candidates = [m for m in (core.symbols[s] for s in core.by_seq(core.entry_ready)) if not m.closing]
    for model in core.busy_models():
        mark = core.marks.get(model.symbol)
        if mark is None or model.closing:
            continue
        state = model.state
        if state == "MONITORING":
            continue
        elif state in ("ENTRY_ORDER", "PHASE1") and model.tp_armed and model.position() > 0:
            ptp = rules.take_profit_price(model.average(), core.strategy.tp_pct, core.tick_size(model))
            if mark <= rules.take_profit_threshold(ptp, b) and not model.open_orders("TP"):  # W40
                order_flow.place_tp(core, model)
                core.fire_region(model, "tp", "tp_fired", f"mark {mark} at the take-profit level")
        if (
            state == "PHASE1"
            and model.add_armed
            and not model.preparing
            and protection.gate(core, "second_entry") is None
        ):
            if mark >= rules.entry_threshold(model.add_price, b) and not model.open_orders("ENTRY2"):  # W41
                core.fire_region(model, "add", "add_fired", f"mark {mark} at the scale-in level")
                core.fire_region(model, "setup", "prepare_entry2", "scale-in triggered")
                core.emit(cmd.PrepareOrder(symbol=model.symbol, leg="ENTRY2", configure_margin=False))
        if state == "PHASE2" and model.be_armed:
            pbe = rules.round_to_tick(model.average(), core.tick_size(model))
            # W43, N-17: mark >= Tbe places it. A mark already below Tbe has passed through the
            # band before this evaluation (W19: a trigger met at the first look goes at once):
            # it goes too, or PHASE2 would hold no exit at all (D-40).
            if not model.open_orders("BE"):
                core.fire_region(model, "be", "be_fired", f"mark {mark}: breakeven goes out")
                order_flow.cancel_all(core, model, legs=("ENTRY2",))
                order_flow.place_limit_exit(core, model, "BE", pbe)
    if not candidates:
        return
    if protection.gate(core, "entry_trigger") is not None:
        return
    # W18, N-10: the latest receipt wins, then the larger message id; the rest are reset.
    winner = max(candidates, key=lambda m: (m.received_at_ms, m.message_id))
    for model in candidates:
        if model is not winner:
            core.reset(model, f"W18 tie-break lost to {winner.symbol}")
    core.fire(
        winner,
        "entry_triggered",
        f"mark {core.marks[winner.symbol]} >= {price_text(winner.entry_trigger)}"
        f" (target {winner.target} - {core.strategy.trigger_buffer_pct}%)",
    )
    core.fire_region(winner, "setup", "prepare_entry1", "entry triggered")
    core.emit(cmd.PrepareOrder(symbol=winner.symbol, leg="ENTRY1", configure_margin=True))  # W17-1, W24


def on_prepared(core: Core, event: ev.OrderPrepared) -> None:
    model = core.symbols.get(event.symbol)
    if model is None or model.preparing != event.leg:
        core.anomaly("unexpected_prepare_result", event.symbol, event.leg)
        return
    core.fire_region(model, "setup", "prepared", f"{event.leg} set up")
    if event.leg == "ENTRY1":
        prepared_entry1(core, model, event)
    else:
        prepared_entry2(core, model, event)


def prepared_entry1(core: Core, model: SymbolModel, event: ev.OrderPrepared) -> None:
    if model.state != "ENTRY_ORDER" or model.closing:
        core.anomaly("prepare_result_late", model.symbol, model.state)
        return
    blocked = protection.gate(core, "first_entry_order", model.symbol)
    if blocked is not None:  # a lock came on while the setup call was in flight
        core.log("order_blocked", model.symbol, f"locked:{blocked}")
        core.reset(model, f"lock during pre-order setup: {blocked}")
        return
    if not event.ok and event.error_code in RATE_LIMIT_CODES:
        # Held back by the rate limits, nothing sent: wait for the trigger again (D-10, D-43).
        core.log("order_blocked", model.symbol, "rate_limited_entry_held", code=event.error_code)
        core.fire(model, "entry_held", f"pre-order setup held by the rate limits ({event.error_code})")
        return
    if not event.ok or event.position_mode is None:  # W24 failure, W26
        core.log("order_blocked", model.symbol, event.reason or "prepare_failed", code=event.error_code)
        core.reset(model, f"pre-order setup failed: {event.reason or event.error_code}")
        return
    core.position_mode = event.position_mode
    core.wallet_balance = event.wallet_balance
    core.available_balance = event.available_balance
    assert model.info is not None
    funds = event.wallet_balance * core.strategy.first_entry_balance_pct / 100  # W32-1
    sized = rules.size_order(funds, model.target, model.info)  # W32-2, W30, W31
    if not sized.ok:  # W32-5
        core.log("order_blocked", model.symbol, sized.reason, funds=funds, price=model.target)
        core.reset(model, f"sizing: {sized.reason}")
        return
    order_flow.place_entry(core, model, "ENTRY1", model.target, sized.quantity)


def prepared_entry2(core: Core, model: SymbolModel, event: ev.OrderPrepared) -> None:
    if model.state != "PHASE1" or model.closing:
        core.anomaly("prepare_result_late", model.symbol, model.state)
        return
    if not event.ok or event.position_mode is None:
        core.log("second_entry_skipped", model.symbol, event.reason or "prepare_failed")
        return
    blocked = protection.gate(core, "second_entry")
    if blocked is not None:
        core.log("second_entry_skipped", model.symbol, f"locked:{blocked}")
        return
    core.position_mode = event.position_mode
    core.available_balance = event.available_balance
    funds = event.available_balance * (1 - core.strategy.margin_buffer_pct / 100)  # W32-3
    if event.available_balance <= 0 or funds <= 0:  # W32-6
        core.log("second_entry_skipped", model.symbol, "insufficient_available_balance", available=funds)
        return
    assert model.info is not None
    sized = rules.size_order(funds, model.add_price, model.info)  # W32-4
    if not sized.ok:
        # W32-5 says "reset", but resetting a symbol that holds a position would orphan it
        # (G04: position outranks everything): the second entry is skipped instead.
        core.log("second_entry_skipped", model.symbol, sized.reason, funds=funds)
        return
    order_flow.place_entry(core, model, "ENTRY2", model.add_price, sized.quantity)


def market_close(core: Core, model: SymbolModel, reason: str) -> None:
    """Cancel every other order of the symbol and close the whole position at market."""
    assert model.info is not None
    if model.close_state == "FLATTENING":
        core.log("close_left_to_operator", model.symbol, reason)  # FlattenFinished decides
        return
    core.decide_close(model, reason)
    core.disarm_all(model, reason)
    order_flow.cancel_all(core, model, exclude_legs=("CLOSE",))
    position = model.position()
    qty = rules.exit_quantity(position, model.info, market=True)
    if model.state in ("ENTRY_ORDER", "PHASE1", "PHASE2"):
        core.fire(model, "exit_started", f"market close: {reason}")
    if model.open_orders("CLOSE"):
        return
    racing = racing_exits(model)
    if racing:
        core.fire_close(model, "defer_close", reason)
        core.log(
            "close_deferred", model.symbol, "exit_cancel_in_flight", cids=",".join(o.cid for o in racing)
        )
        return
    core.fire_close(model, "resume_close", reason)
    # An exit whose cancel failed for good may still trade: the close leaves its rest to it.
    held_back = sum(
        (o.qty - o.filled for o in model.open_orders(*LIMIT_EXIT_LEGS) if o.status == "PENDING_CANCEL"),
        ZERO,
    )
    if held_back and not rules.unclosable(position, model.info):
        qty = rules.exit_quantity(position - held_back, model.info, market=True)
        if rules.unclosable(position - held_back, model.info):
            # The exit that could not be cancelled covers the rest: when it is out of the way
            # (traded, or cancelled by R16), ``finish_if_flat`` closes what is left.
            core.log("close_waits", model.symbol, "exit_cancel_failed_covers_the_rest", held_back=held_back)
            return
    if rules.unclosable(position, model.info):  # R22: what no order can express is dust
        core.log("dust", model.symbol, "position_below_min_qty", position=position)
        model.close_reason = "dust"
        finish_if_flat(core, model, dust_ok=True)
        return
    model.close_attempts += 1
    model.close_retry_at_ms = 0
    gen = model.next_generation("CLOSE")
    cid = rules.client_order_id(model.symbol, model.message_id, "CLOSE", gen)
    reduce_only, position_side = core.side_params()
    model.orders[cid] = OrderTrack(cid=cid, leg="CLOSE", side="BUY", kind="MARKET", price=ZERO, qty=qty)
    core.emit(
        cmd.PlaceOrder(
            symbol=model.symbol,
            client_order_id=cid,
            leg="CLOSE",
            side="BUY",
            order_type="MARKET",
            quantity=qty,
            reduce_only=reduce_only,
            position_side=position_side,
        )
    )


def racing_exits(model: SymbolModel) -> list[OrderTrack]:
    """Limit exits whose cancel is unanswered: they may still trade until it is. (An exit of
    unknown outcome does not hold a loss-cut back for its recvWindow: the close is reduce-only,
    so the venue refuses what would exceed the position; D-26.)"""
    if model.cancel_failed:
        return []
    return [
        o
        for o in model.open_orders(*LIMIT_EXIT_LEGS)
        if o.status == "PENDING_CANCEL" or (o.status == "UNKNOWN" and o.cancel_attempts > 0)
    ]


def settle_deferred_closes(core: Core) -> None:
    """A deferred close goes out once every racing exit has answered (sized by what they traded)."""
    for model in core.busy_models():
        if model.close_deferred and not racing_exits(model) and not model.open_orders("CLOSE"):
            core.fire_close(model, "resume_close", "exit cancels answered")
            if model.position() > 0:
                market_close(core, model, model.close_reason or "close")
            else:
                finish_if_flat(core, model, dust_ok=True)


def after_order_change(
    core: Core, model: SymbolModel, order: OrderTrack, delta: Decimal, was_open: bool
) -> None:
    if order.leg in ENTRY_LEGS:
        after_entry_change(core, model, order, delta)
    elif delta > 0:
        after_exit_fill(core, model, order)
    if (
        model.mismatch_since_ms
        and model.venue_position is not None
        and model.venue_position == model.position()
    ):
        model.mismatch_since_ms = 0
        model.mismatch_readback = False
    if was_open and not order.is_open:
        finish_if_flat(core, model)
        exit_ended_by_the_venue(core, model, order)


def exit_ended_by_the_venue(core: Core, model: SymbolModel, order: OrderTrack) -> None:
    """A limit exit the venue cancelled or expired (not us) with the position still open and nothing
    else working on it. Had it started filling (EXITING, N-18), the rest is closed at market;
    otherwise its trigger is armed again, so the same exit goes out when its level is crossed."""
    if (
        order.leg not in LIMIT_EXIT_LEGS
        or order.status not in ("CANCELED", "EXPIRED")
        or order.cancel_decided
        or model.closing
        or model.symbol not in core.symbols
        or model.position() <= 0
        or model.open_orders(*LIMIT_EXIT_LEGS, "CLOSE")
    ):
        return
    ended = f"{order.leg} {order.status.lower()} by the venue"
    if model.state == "EXITING":
        market_close(core, model, f"{ended}: remainder")
    elif order.leg == "TP" and model.state in ("ENTRY_ORDER", "PHASE1") and not model.risk_protected:
        core.log("exit_rearmed", model.symbol, ended, cid=order.cid)
        core.set_trigger(model, "tp", True, ended)  # W37, W40
    elif order.leg == "BE" and model.state == "PHASE2":
        core.log("exit_rearmed", model.symbol, ended, cid=order.cid)
        core.set_trigger(model, "be", True, ended)  # W43-1


def after_entry_change(core: Core, model: SymbolModel, order: OrderTrack, delta: Decimal) -> None:
    if order.leg == "ENTRY1":
        if delta > 0 and model.state == "ENTRY_ORDER" and not model.closing:
            if not model.open_orders("TP"):  # W37: TP algorithm on
                core.set_trigger(model, "tp", True, "first entry filling")
            replace_exit_if_stale(core, model, "TP")
        if model.state == "ENTRY_ORDER" and not order.is_open and not model.closing:
            if model.position() > 0:
                enter_phase1(core, model, order)
            elif not model.open_orders(*ENTRY_LEGS) and not model.preparing:
                core.reset(model, f"entry order {order.status.lower()} without a fill")
        return
    # ENTRY2 (W43, W43-1, N-17)
    if delta > 0 and model.state in ("PHASE1", "PHASE2") and not model.closing:
        first_fill = model.state == "PHASE1"
        core.fire(
            model,
            "add_filled",
            "second entry filled" if order.status == "FILLED" else "second entry part-filled",
        )
        if first_fill:
            core.set_trigger(model, "tp", False, "PHASE2 has no TP (W42)")
            order_flow.cancel_all(core, model, legs=("TP",))
            core.set_trigger(model, "be", not model.open_orders("BE"), "PHASE2 began")
            core.emit(
                cmd.Notify(
                    kind="scale_in",
                    symbol=model.symbol,
                    text=f"{model.symbol}: second entry filled, PHASE2",
                )
            )
        replace_exit_if_stale(core, model, "BE")
        if order.status == "FILLED" and not model.latest("MDD"):
            order_flow.place_stop(
                core,
                model,
                "MDD",
                rules.mdd_stop_price(model.average(), core.strategy.mdd_pct, core.tick_size(model)),
            )


def enter_phase1(core: Core, model: SymbolModel, order: OrderTrack) -> None:
    """W39..W42: TP algorithm on, second entry monitored at avg + 15%, no MDD stop."""
    reason = "first entry filled" if order.status == "FILLED" else "first entry closed part-filled"
    core.fire(model, "entry_filled", reason)
    average = model.average()
    model.add_price = rules.second_entry_price(average, core.strategy.second_entry_pct, core.tick_size(model))
    core.set_trigger(model, "tp", not model.open_orders("TP") and not model.risk_protected, reason)
    core.set_trigger(model, "add", not model.risk_protected, reason)
    replace_exit_if_stale(core, model, "TP")
    core.emit(
        cmd.Notify(
            kind="entry_filled",
            symbol=model.symbol,
            text=f"{model.symbol}: short {model.position()} @ {price_text(average)}",
        )
    )


def replace_exit_if_stale(core: Core, model: SymbolModel, leg: cmd.Leg) -> None:
    """W37, W43: when the average or the size changed, cancel the working limit exit and re-place it."""
    working = model.open_orders(leg)
    if not working:
        return
    tick = core.tick_size(model)
    if leg == "TP":
        price = rules.take_profit_price(model.average(), core.strategy.tp_pct, tick)
    else:
        price = rules.round_to_tick(model.average(), tick)
    assert model.info is not None
    qty = rules.exit_quantity(model.position(), model.info)
    current = working[-1]
    if current.price == price and current.qty == qty:
        return
    for order in working:
        order_flow.cancel(core, model, order)
    order_flow.place_limit_exit(core, model, leg, price)


def after_exit_fill(core: Core, model: SymbolModel, order: OrderTrack) -> None:
    if model.state in ("ENTRY_ORDER", "PHASE1", "PHASE2"):
        core.fire(model, "exit_started", f"{order.leg} filling")
    assert model.info is not None
    position = model.position()
    if position <= 0 or rules.is_dust(position, model.info):
        # R15, N-18 (OCO): the position is gone: cancel every other order of the symbol.
        core.fire_close(model, "close_by_exit", f"{order.leg} filled")
        model.close_reason = model.close_reason or f"{order.leg} filled"
        core.disarm_all(model, f"{order.leg} filled")
        order_flow.cancel_all(core, model)
        finish_if_flat(core, model, dust_ok=True)
    elif order.status == "FILLED" and not model.open_orders("CLOSE"):
        # The exit filled but some position is left (sizes raced, or a close capped by
        # MARKET_LOT_SIZE.maxQty): close the rest at market, for the same reason.
        if order.leg == "CLOSE":
            model.close_attempts = 0  # a close that went through: the next slice starts afresh
        market_close(core, model, model.close_reason or f"{order.leg} filled, remainder")


def finish_if_flat(core: Core, model: SymbolModel, *, dust_ok: bool = False) -> None:
    """Reset once a closing symbol has no position (or dust) and no open order left."""
    if not model.closing or model.symbol not in core.symbols:
        return
    position = model.position()
    flat = (
        position <= 0
        or (model.close_reason == "dust" and (model.info is None or rules.unclosable(position, model.info)))
        or (dust_ok and model.info is not None and rules.is_dust(position, model.info))
    )
    if model.open_orders():
        return
    if not flat:
        if model.state == "ENTRY_ORDER" and model.close_reason == "risk":
            core.fire_close(model, "withdraw_close", "entry filled before its cancel: R03")
            core.fire_region(model, "risk", "protect", "R03: the entry filled before its cancel")
            intake.apply_risk_pnl(core, model)
        elif model.state == "EXITING" and not model.open_orders("CLOSE"):
            order_flow.close_again(
                core,
                model,
                f"{model.close_reason}: remainder",
                f"{position} left after {model.close_attempts} closes",
            )
        return
    if model.cancel_failed:
        return
    emit_pnl(core, model)
    core.reset(model, f"flat: {model.close_reason or 'closed'}")


def emit_pnl(core: Core, model: SymbolModel) -> None:
    realised = sum((o.realized_pnl for o in model.orders.values()), ZERO)
    fees = sum((o.commission for o in model.orders.values()), ZERO)
    exits = [o for o in model.orders.values() if o.leg not in ENTRY_LEGS and o.filled > 0]
    if not exits:
        return
    exit_qty = sum((o.filled for o in exits), ZERO)
    exit_avg = sum((o.avg_price * o.filled for o in exits), ZERO) / exit_qty
    if any(o.avg_price <= 0 for o in exits):
        # Part of it was closed outside at a price we were not told (R21, an external close): no
        # estimate rather than a wrong one.
        estimate = "estimate unknown (closed outside at a price not reported)"
    else:
        estimate = f"estimated {(model.average() - exit_avg) * exit_qty:+.4f} USDT"
    core.emit(
        cmd.Notify(
            kind="position_closed",
            symbol=model.symbol,
            text=(
                f"{model.symbol} closed ({model.close_reason}): {estimate}, "
                f"realised net {realised - fees:+.4f} USDT (fees {fees:.4f})"
            ),
        )
    )


def on_position(core: Core, event: ev.PositionChanged) -> None:
    if event.venue_time_ms:
        if event.venue_time_ms < core.position_times.get(event.symbol, 0):
            core.log(
                "position_stale",
                event.symbol,
                "older_update_ignored",
                amount=event.amount,
                venue_time_ms=event.venue_time_ms,
            )
            return
        core.position_times[event.symbol] = event.venue_time_ms
    core.unconfirmed_fills.pop(event.symbol, None)
    amount = abs(event.amount)
    key = position_key(event.symbol, event.position_side)
    if amount == 0:
        core.account_positions.pop(key, None)
    else:
        core.account_positions[key] = amount
    if event.position_side == "LONG":
        return  # a hedge-mode LONG leg is never ours (we only short): it only holds the entry lock
    model = core.symbols.get(event.symbol)
    if model is None or model.state in ("IDLE", "MONITORING"):
        return
    model.venue_position = amount
    model.venue_entry_price = event.entry_price
    if amount == model.position():
        model.mismatch_since_ms = 0
        model.mismatch_readback = False
    elif not model.mismatch_since_ms:
        model.mismatch_since_ms = event.now_ms  # decided after the grace, when no fill explains it


def position_mismatch(core: Core, model: SymbolModel, now: int) -> None:
    """The venue's position still disagrees after the grace. A lost fill push is the usual
    cause: our open orders are read back first (their fills come back with trade ids), and
    only a mismatch that survives one more grace is an outside change (R20..R22)."""
    reads = [o for o in model.open_orders() if o.status != "UNKNOWN"]
    if model.mismatch_readback or not reads:
        sync_position(core, model)
        return
    model.mismatch_readback = True
    model.readback_cids = tuple(o.cid for o in reads)
    model.mismatch_since_ms = now  # if no answer comes, the next grace decides without them
    core.log("position_mismatch", model.symbol, "reading_orders_back", venue=model.venue_position)
    for order in reads:
        core.emit(cmd.ResolveOrder(symbol=model.symbol, client_order_id=order.cid, is_algo=order.is_algo))


def sync_position(core: Core, model: SymbolModel) -> None:
    """R20..R22: the venue's position is the truth; follow it."""
    model.mismatch_since_ms = 0
    model.mismatch_readback = False
    venue = model.venue_position
    assert venue is not None and model.info is not None
    ours = model.position()
    core.log("position_sync", model.symbol, "external_change", ours=ours, venue=venue)
    # Book the difference as an external fill so that our position equals the venue's.
    diff = ours - venue
    key = f"ext-{model.next_generation('CLOSE')}"
    external = OrderTrack(
        cid=key, leg="CLOSE", side="BUY", kind="EXTERNAL", price=ZERO, qty=abs(diff), status="FILLED"
    )
    if diff > 0:
        external.filled = diff
    else:
        # More on the venue than our fills say: the missing fill is priced so that the average
        # becomes the venue's entry price (never the model's average, 0 before any fill).
        external.leg = "ENTRY1"
        external.filled = -diff
        entry_cost = sum((o.avg_price * o.filled for o in model.orders.values() if o.leg in ENTRY_LEGS), ZERO)
        exit_qty = model.exit_filled_qty()
        wanted = model.venue_entry_price * (venue + exit_qty) - entry_cost
        external.avg_price = wanted / -diff if model.venue_entry_price > 0 and wanted > 0 else model.average()
    model.orders[key] = external
    if venue == 0 or rules.is_dust(venue, model.info):  # R21, R22
        core.decide_close(model, "external close" if venue == 0 else "dust")
        core.disarm_all(model, model.close_reason)
        if model.state in ("ENTRY_ORDER", "PHASE1", "PHASE2"):
            core.fire(model, "exit_started", model.close_reason)
        order_flow.cancel_all(core, model)
        finish_if_flat(core, model, dust_ok=True)
        return
    if model.closing:
        # Already closing: no limit exit goes out again; the close covers the size the venue shows.
        order_flow.cancel_all(core, model, exclude_legs=("CLOSE",))
        if not model.open_orders("CLOSE"):
            market_close(core, model, f"{model.close_reason or 'close'}: position resynced")
        return
    # R20: cancel every exit order, then re-place only what the new size needs.
    had = {o.leg for o in model.open_orders("TP", "BE", "BE_STOP", "MDD")}
    order_flow.cancel_all(core, model, legs=("TP", "BE", "BE_STOP", "MDD"))
    if "TP" in had:
        order_flow.place_tp(core, model)
    if "BE" in had:
        order_flow.place_limit_exit(
            core, model, "BE", rules.round_to_tick(model.average(), core.tick_size(model))
        )
    for leg in ("BE_STOP", "MDD"):
        if leg in had:
            previous = model.latest(leg)
            assert previous is not None
            order_flow.place_stop(core, model, leg, previous.price)
