"""Telegram messages (N-05, W00..W17, R00..R08): cursors, cooldowns, filters, targets, risk messages.

Functions of the engine's state (``fsm.core.Core``); ``fsm.engine`` routes events to them.
"""

from __future__ import annotations

from decimal import Decimal

from fsm import commands as cmd
from fsm import events as ev
from fsm import lifecycle, order_flow, protection, rules
from fsm.core import RISK_SEEN_KEEP, Core
from fsm.model import ENTRY_LEGS, SymbolModel
from fsm.table import RECOVERY_LOCK


def on_message(core: Core, event: ev.MessageReceived) -> None:
    strategy = core.strategy
    if event.chat_id not in (strategy.entry_chat_id, strategy.risk_chat_id):
        core.log("message_ignored", None, "foreign_chat", chat_id=event.chat_id)
        return
    if core.locks[RECOVERY_LOCK].state == "RECOVERING":
        # N-28: Telegram is paused during recovery; a message that still arrives is not consumed,
        # so the backfill after recovery delivers it again.
        core.log("message_deferred", None, "recovery_lock", message_id=event.message_id)
        return
    last = core.cursors.get(event.chat_id, 0)
    rerun = event.rerun and event.chat_id == strategy.risk_chat_id  # D-18: past the cursor on purpose
    late_risk = (
        event.chat_id == strategy.risk_chat_id
        and event.message_id <= last
        and bool(core.risk_seen)
        and event.message_id > core.risk_seen[0]
        and event.message_id not in core.risk_seen
    )
    if late_risk:
        core.log("message_late", None, "risk_gap_read_after_a_newer_message", message_id=event.message_id)
    elif event.message_id <= last and not rerun:  # W00-2, G02
        core.log("message_dropped", None, "duplicate_or_old", message_id=event.message_id, last=last)
        return
    if event.chat_id == strategy.risk_chat_id and event.message_id not in core.risk_seen:
        core.risk_seen = tuple(sorted((*core.risk_seen, event.message_id)))[-RISK_SEEN_KEEP:]
    if event.message_id > last:
        core.cursors[event.chat_id] = event.message_id
        core.emit(cmd.PersistCursor(chat_id=event.chat_id, message_id=event.message_id))
    parsed = event.parsed
    if isinstance(parsed, ev.EntrySignal):  # W00, W00-1
        core.log("message_ignored", parsed.symbol, "entry_signal_not_a_trigger")
        return
    if event.chat_id == strategy.risk_chat_id:
        if isinstance(parsed, ev.RiskSignal):
            on_risk(core, event, parsed)
        else:
            core.log("risk_ignored", None, getattr(parsed, "reason", "not_a_risk_message"))  # R00-1
        return
    if isinstance(parsed, ev.RiskSignal):
        core.log("message_ignored", parsed.symbol, "risk_message_in_entry_channel")
        return
    if isinstance(parsed, ev.Unrecognised) and parsed.kind != "leading":
        core.log("message_ignored", None, parsed.reason)
        return
    on_leading(core, event, parsed)


def on_leading(core: Core, event: ev.MessageReceived, parsed: ev.LeadingMarket | ev.Unrecognised) -> None:
    strategy = core.strategy
    now = event.now_ms
    if rules.signal_too_old(event.telegram_date_ms, now, strategy.max_signal_age_seconds):  # N-27
        core.log("leading_dropped", None, "signal_too_old", age_ms=now - event.telegram_date_ms)
        return
    lock = protection.gate(core, "leading_message")
    if lock is not None:  # W01, N-05 step 2: no cooldown recorded
        core.log("leading_dropped", None, f"locked:{lock}")
        return
    if isinstance(parsed, ev.Unrecognised):  # W03, W03-1: no symbol, no cooldown
        core.log("symbol_mapping", None, parsed.reason, result="ticker_parse_failed")
        return
    symbol = parsed.symbol
    until = core.cooldowns.get(symbol)
    if until is not None and now - until < strategy.cooldown_minutes * 60_000:  # W02
        core.log("leading_dropped", symbol, "cooldown", since_ms=now - until)
        return
    core.cooldowns[symbol] = now  # W05-1, G05: recorded at receipt once the symbol is known
    core.emit(cmd.PersistCooldown(symbol=symbol, received_at_ms=now))
    model = core.symbols.get(symbol)
    active = model is not None and model.state != "IDLE"
    info = event.symbol_info
    if not event.exchange_info_ok or info is None or info.status != "TRADING":  # W04, W48
        reason = "exchange_info_unavailable" if not event.exchange_info_ok else "symbol_not_trading"
        core.log(
            "symbol_mapping",
            symbol,
            reason,
            raw_ticker=parsed.raw_ticker,
            ticker=parsed.ticker,
            result="rejected",
            kept_active=active,
        )
        return
    core.log(
        "symbol_mapping", symbol, "ok", raw_ticker=parsed.raw_ticker, ticker=parsed.ticker, result="valid"
    )
    if parsed.field_error:  # W05 / W10 (정보없음)
        core.log("leading_rejected", symbol, parsed.field_error, kept_active=active)
        return
    if active:  # W06, W07
        core.log("leading_ignored", symbol, f"already_{model.state.lower()}" if model else "")
        return
    reason = filter_reason(core, parsed)
    if reason:  # W09..W13
        core.log("leading_rejected", symbol, reason)
        return
    target = entry_target(core, parsed, event, info)
    if target is not None:
        start_monitoring(core, symbol, event, info, target)


def start_monitoring(
    core: Core, symbol: str, event: ev.MessageReceived, info: ev.SymbolInfo, target: Decimal
) -> None:
    """W15/W16/W17: watch the symbol's mark for the entry trigger."""
    strategy = core.strategy
    model = core.symbol_model(symbol)
    model.info = info
    core.infos[symbol] = info
    model.message_id = event.message_id
    model.received_at_ms = event.now_ms
    model.mode = strategy.mode
    model.target = target
    model.entry_trigger = rules.entry_threshold(target, strategy.trigger_buffer_pct)
    seen = max(core.mark_ws_ms.get(symbol, 0), core.mark_rest_ms.get(symbol, 0))
    if symbol in core.marks and event.now_ms - seen >= strategy.stale_mark_price_seconds * 1000:
        del core.marks[symbol]  # W17-2: a price from an earlier watch is not the current price
    core.fire(model, "start_monitoring", f"{strategy.mode} target {target}")
    core.emit(cmd.SubscribeMarket(symbols=(symbol,)))


def filter_reason(core: Core, parsed: ev.LeadingMarket) -> str:
    s = core.strategy
    if parsed.category is None or parsed.funding_pct is None or parsed.rank is None:
        return "field_missing"
    hit = rules.category_excluded(parsed.category, s.excluded_category_words, s.excluded_category_substrings)
    if hit:
        return f"category_excluded:{hit}"
    if parsed.rank_direction and rules.rank_rejected(
        parsed.rank_direction, parsed.rank, s.rising_rank_reject_top
    ):
        return "rank_top_rising"
    if rules.funding_rejected(parsed.funding_pct, s.funding_reject_at_or_below_pct):
        return "funding_too_negative"
    return ""


def entry_target(
    core: Core, parsed: ev.LeadingMarket, event: ev.MessageReceived, info: ev.SymbolInfo
) -> Decimal | None:
    s = core.strategy
    klines = event.klines or ()
    if s.mode == "aggressive":
        raw = rules.aggressive_target(klines, event.now_ms)
    else:
        raw = rules.atr_upper_band(
            klines, event.now_ms, length=s.atr_length, multiplier=s.atr_multiplier, count=s.atr_candles
        )
    if raw is None:
        core.log("leading_rejected", parsed.symbol, "target_unavailable", klines=len(klines))
        return None
    price = rules.round_to_tick(raw, info.tick_size)
    if price <= 0:  # W29
        core.log("leading_rejected", parsed.symbol, "target_not_positive", price=price)
        return None
    return price


def on_risk(core: Core, event: ev.MessageReceived, parsed: ev.RiskSignal) -> None:
    model = core.symbols.get(parsed.symbol)
    if model is None or model.state == "IDLE":  # R08 (and R00-2 for unknown symbols)
        core.log("risk_ignored", parsed.symbol, "symbol_not_active")
        return
    if model.info is None and (event.symbol_info is None or event.symbol_info.status != "TRADING"):
        core.log("risk_ignored", parsed.symbol, "symbol_not_trading")  # R00-2
        return
    core.log("risk_received", parsed.symbol, model.state)
    if model.state == "MONITORING":  # R01
        core.reset(model, "risk: monitoring released")
        return
    position = model.position()
    if model.state == "ENTRY_ORDER" and position <= 0:  # R02
        core.decide_close(model, "risk")
        order_flow.cancel_all(core, model, legs=tuple(ENTRY_LEGS))
        lifecycle.finish_if_flat(core, model)
        return
    if model.state == "ENTRY_ORDER":  # R03, W38: cancel the rest of the entry first
        core.fire_region(model, "risk", "protect", "R03: risk message while the entry fills")
        order_flow.cancel_all(core, model, legs=tuple(ENTRY_LEGS))
    apply_risk_pnl(core, model)


def apply_risk_pnl(core: Core, model: SymbolModel) -> None:
    """R04..R07: PnL <= 0 closes at market; PnL > 0 protects (phase 1) or keeps (phase 2)."""
    average = model.average()
    mark = core.marks.get(model.symbol)
    if mark is None:
        core.log("risk_pnl", model.symbol, "no_mark_price_close", average=average)
        lifecycle.market_close(core, model, "risk_no_price")
        return
    sign = rules.pnl_sign(average, mark)
    roi = rules.short_roi_pct(average, mark)
    core.log("risk_pnl", model.symbol, "computed", average=average, mark=mark, roi_pct=roi)
    if sign <= 0:  # R04, R05, R26
        lifecycle.market_close(core, model, "risk_pnl_negative" if sign < 0 else "risk_pnl_zero")
        return
    if model.state == "EXITING":
        core.log("risk_kept", model.symbol, "already_exiting")
        return
    if model.state == "PHASE2":  # R07, R24: breakeven limit stays, MDD stays, no stop overwrite
        core.log("risk_kept", model.symbol, "phase2_breakeven_limit_kept")
        return
    # R06, R23, N-16: breakeven STOP_MARKET plus keep (or place once) the TP limit.
    core.fire_region(model, "risk", "protect", "R06: risk message in profit")
    core.set_trigger(model, "add", False, "R06: no scale-in")
    if not model.open_orders("BE_STOP"):
        order_flow.place_stop(core, model, "BE_STOP", rules.round_to_tick(average, core.tick_size(model)))
    if not model.open_orders("TP"):
        order_flow.place_tp(core, model)
    core.set_trigger(model, "tp", False, "R06: the TP works")
