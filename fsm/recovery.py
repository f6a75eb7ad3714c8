"""Recovery (N-28): a restart or a contained failure rebuilds each symbol from the exchange.

Functions of the engine's state (``fsm.core.Core``); ``fsm.engine`` routes events to them.
"""

from __future__ import annotations

from decimal import Decimal

from fsm import commands as cmd
from fsm import events as ev
from fsm import lifecycle, order_flow, rules
from fsm.core import ZERO, Core, position_key
from fsm.model import ENTRY_LEGS, OrderTrack, SymbolModel
from fsm.orders import order_kind
from fsm.table import EXIT_CANCEL_LOCK, HOLDING_STATES, RECOVERY_LOCK


def on_recovery_started(core: Core, event: ev.RecoveryStarted) -> None:
    """N-28 steps 1-3: locked, Telegram paused; cursors and cooldowns back; ask for a snapshot."""
    core.fire_lock(RECOVERY_LOCK, "restart", "process start")
    if event.running_settings:
        try:
            core.strategy = core.strategy.with_changes(dict(event.running_settings))
            keys = ",".join(name for name, _ in event.running_settings)
            core.log("settings_resumed", None, "last_run_trading", keys=keys)
        except ValueError as exc:  # a damaged snapshot: the configured values run
            core.log("settings_refused", None, "invalid", error=str(exc))
    for chat_id, message_id in event.cursors:
        core.cursors[chat_id] = max(core.cursors.get(chat_id, 0), message_id)
    for symbol, received_at in event.cooldowns:
        core.cooldowns[symbol] = max(core.cooldowns.get(symbol, 0), received_at)
    core.recovery_hints = {symbol: (message_id, state) for symbol, message_id, state in event.managed}
    core.recovery_closing = dict(event.closing)
    core.recovery_held = dict(event.held)
    core.recovery_protected = tuple(event.protected)
    core.recovery_generations = {}
    for symbol, leg, generation in event.generations:
        core.recovery_generations.setdefault(symbol, {})[leg] = generation
    for model in list(core.symbols.values()):  # N-28 step 7: monitoring is never resumed
        if model.state == "MONITORING":
            core.reset(model, "recovery: monitoring dropped")
    core.recovery_snapshot_done = False
    core.recovery_started_ms = event.now_ms
    core.recovery_query_due_ms = event.now_ms + 5000
    core.emit(cmd.QueryExchange(purpose="recovery"))


def recovery_tick(core: Core, now: int) -> None:
    if not core.recovery_snapshot_done and now >= core.recovery_query_due_ms:
        core.recovery_query_due_ms = now + 5000
        core.emit(cmd.QueryExchange(purpose="recovery"))
    maybe_finish_recovery(core)


def on_snapshot(core: Core, event: ev.ExchangeSnapshot) -> None:
    if event.purpose == "requery":
        requery_result(core, event)
        return
    if not event.complete:
        core.log("recovery", None, "snapshot_incomplete")
        core.emit(
            cmd.Notify(kind="recovery", text="exchange snapshot incomplete; retrying", severity="warning")
        )
        return
    core.position_mode = event.position_mode
    core.wallet_balance = event.wallet_balance
    core.available_balance = event.available_balance
    core.account_positions = {
        position_key(p.symbol, p.position_side): abs(p.amount) for p in event.positions if p.amount != 0
    }
    core.account_entry_orders = {}
    for order in event.open_orders:
        closing = order.reduce_only or order.close_position or order.is_algo
        if not closing and not (order.position_side == "SHORT" and order.side == "BUY"):
            core.account_entry_orders[f"{order.symbol}:{order.order_id}"] = order.symbol
    infos = {i.symbol: i for i in event.symbols}
    on_venue = {p.symbol for p in event.positions if p.amount != 0} | {o.symbol for o in event.open_orders}
    for symbol, model in list(core.symbols.items()):
        if symbol not in on_venue:  # a rebuild after an internal error: nothing of it is left
            for track in model.open_orders():
                # The complete list proves it gone (R16), unless its request may still execute: an
                # unanswered one waits for its answer (D-60), an UNKNOWN one for its query (D-26).
                if not track.request_unanswered and track.status != "UNKNOWN":
                    track.apply("not_listed")
            if model.may_have_live_order():
                core.log("recovery", symbol, "outcome_pending_kept")
                continue
            core.reset(model, "recovery: no position and no order on the exchange")
    for symbol in sorted({p.symbol for p in event.positions} | {o.symbol for o in event.open_orders}):
        rebuild_symbol(core, symbol, event, infos.get(symbol))
    core.recovery_snapshot_done = True
    if event.position_mode is None:  # W26 at start: nothing may be ordered until it is known
        core.critical("recovery", None, "position mode unknown")
    maybe_finish_recovery(core)


def rebuild_symbol(core: Core, symbol: str, snap: ev.ExchangeSnapshot, info: ev.SymbolInfo | None) -> None:
    """N-28 steps 5-6: classify a symbol from the exchange and reconcile its exit orders."""
    position = next(
        (p for p in snap.positions if p.symbol == symbol and p.amount != 0 and p.position_side != "LONG"),
        None,
    )
    orders = [o for o in snap.open_orders if o.symbol == symbol]
    ours: list[tuple[ev.OpenOrderInfo, rules.ParsedClientId]] = []
    for order in orders:
        parsed_id = rules.parse_client_order_id(order.client_order_id)
        if parsed_id is not None:
            ours.append((order, parsed_id))
    model = core.symbols.get(symbol)
    if model is not None:
        core.clear_model(model)
    if info is None or (position is not None and position.amount > 0):
        reason = "no exchangeInfo" if info is None else "long position"
        core.critical("unclassified", symbol, f"{symbol}: cannot manage ({reason})")
        return
    if not ours and position is not None and rules.is_dust(abs(position.amount), info):
        core.log("position_sync", symbol, "dust_not_managed", amount=position.amount)  # R22
        return
    hint = core.recovery_hints.get(symbol)
    if not ours and position is not None and hint is not None and hint[1] in HOLDING_STATES:
        rebuild_from_hint(core, symbol, position, info, hint)
        return
    if not ours and position is not None:
        core.critical("unclassified", symbol, f"{symbol}: position without our orders; not managed")
        return
    if not ours:
        return  # manual orders only: the entry lock covers them
    model = core.symbol_model(symbol)
    model.info = info
    core.infos[symbol] = info
    adopt_open_orders(core, model, ours)
    amount = abs(position.amount) if position else ZERO
    if position is not None and amount > 0:
        book_recovered_position(core, model, position.entry_price, amount)
    legs = {t.leg for t in model.open_orders()}
    if amount == 0:
        restore_without_position(core, model, legs)
        return
    restore_holding(core, model, legs, amount)
    core.emit(cmd.SubscribeMarket(symbols=(symbol,)))
    refit_exits(core, model, amount, info)
    resume_decided_close(core, model)


def adopt_open_orders(
    core: Core, model: SymbolModel, ours: list[tuple[ev.OpenOrderInfo, rules.ParsedClientId]]
) -> None:
    """Recovery: our open orders on the venue become the symbol's order table again."""
    model.message_id = max(p.message_id for _, p in ours)
    for order, parsed in ours:
        gen = max(model.generations.get(parsed.leg, 0), parsed.generation)
        model.generations[parsed.leg] = gen
        kind = "STOP_MARKET" if order.is_algo else order_kind(order.order_type)
        track = OrderTrack(
            cid=order.client_order_id,
            leg=parsed.leg,
            side=order.side,
            kind=kind,
            price=order.trigger_price if order.is_algo else order.price,
            qty=order.orig_qty,
            status="PARTIALLY_FILLED" if order.executed_qty > 0 else "NEW",
            order_id=order.order_id,
            filled=order.executed_qty,
        )
        model.orders[track.cid] = track


def book_recovered_position(core: Core, model: SymbolModel, entry_price: Decimal, amount: Decimal) -> None:
    """The exchange's entry price is the truth for the average: book the position as one fill.

    Open entries keep their executed quantity (their next update carries it as cum), and the
    rest of the position is booked so that the total average is the exchange's entry price.
    What open exits already executed is inside the exchange's amount: it is booked on the entry
    side too, or the position would count it twice (a part-filled TP at a restart)."""
    base = OrderTrack(
        cid=f"recovered-{model.symbol}",
        leg="ENTRY1",
        side="SELL",
        kind="EXTERNAL",
        price=entry_price,
        qty=amount,
    )
    executed = [(t.price, t.filled) for t in model.open_orders(*ENTRY_LEGS)]
    for track in model.open_orders(*ENTRY_LEGS):
        track.avg_price = track.price
    exited = sum((t.filled for t in model.open_orders() if t.leg not in ENTRY_LEGS), ZERO)
    entered = amount + exited
    rest = entered - sum((qty for _, qty in executed), ZERO)
    if rest > 0:
        cost = entry_price * entered - sum((p * q for p, q in executed), ZERO)
        base.qty = rest
        base.status, base.filled, base.avg_price = "FILLED", rest, cost / rest
        model.orders = {base.cid: base, **model.orders}


def restore_without_position(core: Core, model: SymbolModel, legs: set[cmd.Leg]) -> None:
    """Recovery, no position: an open first entry keeps waiting, unless its cancel had been decided
    before the restart (R02, the stale lock); anything else is cancelled."""
    decided = core.recovery_closing.get(model.symbol)
    if "ENTRY1" in legs and decided is None:
        core.fire(model, "restore_entry_order", "open first entry, no position")
        order_flow.cancel_all(core, model, exclude_legs=("ENTRY1",))
        core.emit(cmd.SubscribeMarket(symbols=(model.symbol,)))  # recovery waits for its price
    else:
        core.decide_close(model, decided or "recovery: orders without position")
        why = "exit orders left without a position"
        if decided:
            why = f"cancel decided before the restart: {decided}"
        core.fire(model, "restore_exiting", why)
        order_flow.cancel_all(core, model)


def restore_holding(core: Core, model: SymbolModel, legs: set[cmd.Leg], amount: Decimal) -> None:
    """Recovery with a position: the phase the orders (and the last snapshot) prove, re-armed."""
    average = model.average()
    tick = core.tick_size(model)
    if "ENTRY1" in legs:
        core.fire(model, "restore_entry_order", "first entry part-filled")
        core.set_trigger(model, "tp", "TP" not in legs, "recovery: no TP open")
    elif (
        any(t.filled > 0 for t in model.open_orders("ENTRY2"))
        or "MDD" in legs
        or "BE" in legs
        or scaled_in_unseen(core, model.symbol, amount)
        or stored_state(core, model) == "PHASE2"
    ):
        core.fire(model, "restore_phase2", "second entry seen")
        core.set_trigger(model, "be", "BE" not in legs, "recovery: no breakeven open")
        order_flow.cancel_all(core, model, legs=("TP",))  # PHASE2 has no TP (W42)
        if "ENTRY2" not in legs and "MDD" not in legs:
            order_flow.place_stop(
                core, model, "MDD", rules.mdd_stop_price(average, core.strategy.mdd_pct, tick)
            )
    else:
        # W43: PHASE2 needs a fill of the scale-in; one resting unfilled is kept and not sent again.
        core.fire(model, "restore_phase1", "position after first entry")
        model.add_price = rules.second_entry_price(average, core.strategy.second_entry_pct, tick)
        if "BE_STOP" in legs or model.symbol in core.recovery_protected:  # R06
            core.fire_region(model, "risk", "protect", "recovery: protected before the restart")
        core.set_trigger(model, "add", not model.risk_protected and "ENTRY2" not in legs, "recovery: PHASE1")
        core.set_trigger(model, "tp", "TP" not in legs and not model.risk_protected, "recovery: PHASE1")


def refit_exits(core: Core, model: SymbolModel, amount: Decimal, info: ev.SymbolInfo) -> None:
    """N-28 step 6: exit orders that no longer fit the position are cancelled (and re-armed)."""
    for track in model.open_orders("TP", "BE"):
        if track.qty - track.filled != rules.exit_quantity(amount, info) and track.status != "PENDING_CANCEL":
            order_flow.cancel(core, model, track)
            if track.leg == "TP":
                core.set_trigger(model, "tp", model.state != "PHASE2", "recovery: TP no longer fits")
            else:
                core.set_trigger(model, "be", True, "recovery: breakeven no longer fits")


def stored_state(core: Core, model: SymbolModel) -> str:
    """The state the last snapshot held for this trade (saved before the orders of a transition
    went out, D-17): a PHASE2 there means the scale-in filled even if its MDD stop never reached
    the venue."""
    hint = core.recovery_hints.get(model.symbol)
    return hint[1] if hint is not None and hint[0] == model.message_id else ""


def scaled_in_unseen(core: Core, symbol: str, amount: Decimal) -> bool:
    """The exchange holds more than the last snapshot did and no scale-in is open: it filled
    while no daemon watched (kill -9 during the fill)."""
    held = core.recovery_held.get(symbol)
    return held is not None and held > 0 and amount > held


def resume_decided_close(core: Core, model: SymbolModel) -> None:
    """A market close decided before the restart (risk PnL <= 0, the five-second rule, the stale
    lock, D-19's timed retries) is carried out now: a restart never forgets it."""
    reason = core.recovery_closing.get(model.symbol)
    if reason is None or model.position() <= 0:
        return
    core.critical(
        "close_resumed",
        model.symbol,
        f"{model.symbol}: close at market decided before the restart ({reason})",
    )
    lifecycle.market_close(core, model, f"{reason} (resumed after restart)")


def rebuild_from_hint(
    core: Core, symbol: str, position: ev.PositionInfo, info: ev.SymbolInfo, hint: tuple[int, str]
) -> None:
    """A position of ours with none of our orders open (PHASE1 before its TP, PHASE2 after its
    stop was cancelled...): storage says it was ours, the exchange gives size and average."""
    message_id, state = hint
    model = core.symbol_model(symbol)
    model.info = info
    core.infos[symbol] = info
    model.message_id = message_id
    amount = abs(position.amount)
    base = OrderTrack(
        cid=f"recovered-{symbol}",
        leg="ENTRY1",
        side="SELL",
        kind="EXTERNAL",
        price=position.entry_price,
        qty=amount,
    )
    base.status, base.filled, base.avg_price = "FILLED", amount, position.entry_price
    model.orders[base.cid] = base
    tick = core.tick_size(model)
    if state == "PHASE2" or scaled_in_unseen(core, symbol, amount):
        core.fire(model, "restore_phase2", f"stored state {state}, no open order")
        core.set_trigger(model, "be", True, "recovery: PHASE2 without orders")
        order_flow.place_stop(
            core, model, "MDD", rules.mdd_stop_price(position.entry_price, core.strategy.mdd_pct, tick)
        )
    else:
        core.fire(model, "restore_phase1", f"stored state {state}, position without open orders")
        model.add_price = rules.second_entry_price(position.entry_price, core.strategy.second_entry_pct, tick)
        core.set_trigger(model, "tp", True, "recovery: PHASE1 without orders")
        core.set_trigger(model, "add", True, "recovery: PHASE1 without orders")
    core.emit(cmd.SubscribeMarket(symbols=(symbol,)))
    resume_decided_close(core, model)


def maybe_finish_recovery(core: Core) -> None:
    if core.locks[RECOVERY_LOCK].state != "RECOVERING" or not core.recovery_snapshot_done:
        return
    if core.price_seen_ms < core.recovery_started_ms or core.price_seen_ms == 0:
        return  # N-28 step 8: the price source must answer before anything resumes, flat or not
    needs_price = [s for s, m in core.symbols.items() if m.state in HOLDING_STATES and not m.closing]
    if any(s not in core.marks for s in needs_price):
        return  # ... and for every symbol held
    core.fire_lock(RECOVERY_LOCK, "recovered", "exchange reconciled, price source checked")
    core.emit(cmd.ResumeTelegram())


def requery_result(core: Core, event: ev.ExchangeSnapshot) -> None:
    """R16: re-cancel what is still open; lift the exit-cancel-failed lock once clean."""
    if not event.complete:
        return
    open_ids = {o.client_order_id for o in event.open_orders}
    for model in list(core.symbols.values()):
        if not model.cancel_failed or (event.symbol is not None and event.symbol != model.symbol):
            continue  # a re-query of one symbol says nothing of another's orders
        remaining = [
            o for o in model.orders.values() if o.cid in open_ids and (model.closing or o.cancel_decided)
        ]
        for order in model.orders.values():
            if order.cid in open_ids or not order.is_open:
                continue
            if order.request_unanswered:  # the list cannot show it yet: its answer decides
                if order.status == "PENDING_CANCEL":
                    order.apply("cancel_overtook")
                continue
            if order.status == "UNKNOWN":
                continue  # its request may still execute (D-26): its own query decides
            if order.status == "PENDING_CANCEL" and order.order_id == 0 and order.resolve_at_ms:
                order.apply("gone_unexplained")  # its answer was lost: a query decides
                continue
            order.apply("not_listed")
        if remaining:
            for order in remaining:
                order.apply("listed_open")
                order.cancel_attempts = 0
                order_flow.cancel(core, model, order)
            continue
        core.fire_region(model, "cancels", "cancels_clean", "R16: nothing of it is open any more")
        lifecycle.finish_if_flat(core, model, dust_ok=True)
    if not any(m.cancel_failed for m in core.symbols.values()):
        core.fire_lock(EXIT_CANCEL_LOCK, "cancel_clean", "no leftover exit order")
