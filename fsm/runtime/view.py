"""BoardView: what the status board shows, computed from the engine's state (RUNTIME.md).

``board_view`` is a pure function that the daemon calls every second and writes as JSON into the
status table; the board only reads that JSON. It does plain arithmetic on the engine's models (no
pydantic, no I/O). Decimals leave as strings: prices exact when short, long quotients (averages)
rounded to the tick's decimals plus four; ``distance_pct`` to 0.001 and ``roi_pct`` to 0.01.

The monitoring list (W45, W47) holds every symbol waiting for an entry: ``1st`` while MONITORING
(planned price = the target), ``2nd`` while PHASE1 waits for the scale-in (planned price = the
second-entry price). The planned price is where the limit order sells; ``trigger_price`` is the mark
at which it is placed (0.1% below), the same number as the position's ``next_triggers.add``;
``distance_pct`` is how far the mark must still rise to reach it, in % of the mark (zero or
negative: reached).

``next_triggers`` of the position are the mark prices at which the next thing happens on each leg:
the price of the working order when it rests on the venue (TP/BE limits, ENTRY2, MDD and breakeven
stops), otherwise the 0.1% trigger at which the engine will place it, or null when that leg is not
armed in the current state. ``symbols`` lists every symbol that is not IDLE with its own triggers
(``entry`` while MONITORING) and its ``countdown``: the five-second rule (N-19) running on a limit
exit that is part-filled (its deadline and the time left), else null.

``cooldowns`` are the W02 cooldowns still running (time left at ``now_ms``) and ``settings`` the
strategy the engine decides with now (a reload shows once the engine applied it; a change it holds
back waits in ``pending``).
"""

from __future__ import annotations

import dataclasses
import logging
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from fsm import rules
from fsm.model import SymbolModel
from fsm.reader import EngineReader
from fsm.strategy import Strategy
from fsm.table import SAFETY_LOCK

log = logging.getLogger("shortfsm.runtime.view")

DISTANCE_STEP = Decimal("0.001")
ROI_STEP = Decimal("0.01")
EXTRA_PLACES = 4
# The position panel shows the symbol that matters most when, exceptionally, several hold state.
_PHASE_RANK = {"PHASE2": 0, "PHASE1": 1, "ENTRY_ORDER": 2, "EXITING": 3}
_STREAM_VALUES = {
    "market": ("up", "down"),
    "user": ("up", "down"),
    "telegram": ("up", "down", "reconnecting", "replay"),
}
PROFILES = ("sim", "demo", "mainnet")


def board_view(engine: EngineReader, now_ms: int, extras: dict[str, Any] | None = None) -> dict[str, Any]:
    """The BoardView dict of RUNTIME.md for ``engine`` at ``now_ms``.

    ``extras`` comes from the daemon: ``profile``, ``streams`` and ``last_event``; anything missing
    or malformed falls back to a safe default.
    """
    extras = extras if isinstance(extras, dict) else {}
    buffer_pct = engine.strategy.trigger_buffer_pct
    monitoring: list[dict[str, Any]] = []
    holding: list[SymbolModel] = []
    for model in engine.symbols.values():
        row = _monitoring_row(engine, model, buffer_pct)
        if row is not None:
            monitoring.append(row)
        if model.state in _PHASE_RANK:
            holding.append(model)
    monitoring.sort(key=lambda r: (-r["received_at_ms"], -r["message_id"], r["symbol"]))
    holding.sort(key=lambda m: (_PHASE_RANK[m.state], m.symbol))
    price_source = _price_source(engine, now_ms)
    return {
        "now_ms": int(now_ms),
        "profile": _profile(extras.get("profile")),
        "paused": bool(engine.paused),
        "locks": {name: model.state for name, model in engine.locks.items()},
        "price_source": price_source,
        "balance": _balance(engine),
        "position_mode": engine.position_mode,
        "monitoring": monitoring,
        "position": _position(engine, holding[0], buffer_pct, now_ms) if holding else None,
        "streams": _streams(extras.get("streams"), price_source),
        "last_event": _last_event(extras.get("last_event")),
        "symbols": [
            _symbol_row(engine, model, buffer_pct, now_ms)
            for _, model in sorted(engine.symbols.items())
            if model.state != "IDLE"
        ],
        "cooldowns": _cooldowns(engine, now_ms),
        "settings": _settings(engine),
    }


# ---------------------------------------------------------------------------------------------
# Parts
# ---------------------------------------------------------------------------------------------


def _balance(engine: EngineReader) -> dict[str, Any]:
    """Null (shown as unknown) until the venue has told the balance: a recovery that could not read
    the venue leaves the engine's zeros, which are not a balance."""
    recovering = engine.locks["recovery_lock"].state != "READY" if "recovery_lock" in engine.locks else False
    if recovering and engine.wallet_balance == 0 and engine.available_balance == 0:
        return {"wallet": None, "available": None}
    return {"wallet": _plain(engine.wallet_balance), "available": _plain(engine.available_balance)}


def _monitoring_row(engine: EngineReader, model: SymbolModel, buffer_pct: Decimal) -> dict[str, Any] | None:
    if model.state == "MONITORING":
        stage, planned = "1st", model.target
    elif model.state == "PHASE1" and _waits_for_add(model):
        stage, planned = "2nd", model.add_price
    else:
        return None
    tick = _tick(model)
    mark = engine.marks.get(model.symbol)
    # The first entry's trigger was fixed at receipt (W17-2); the add's follows its price (W41).
    trigger = (
        model.entry_trigger
        if stage == "1st" and model.entry_trigger > 0
        else rules.entry_threshold(planned, buffer_pct)
    )
    distance: str | None = None
    if mark is not None and mark > 0:
        distance = _quantized((trigger - mark) / mark * rules.HUNDRED, DISTANCE_STEP)
    return {
        "symbol": model.symbol,
        "mode": model.mode or engine.strategy.mode,  # a symbol rebuilt by recovery has no signal mode
        "stage": stage,
        "planned_price": _price(planned, tick),
        "trigger_price": _price(trigger, tick),
        "mark": _price(mark, tick) if mark is not None else None,
        "distance_pct": distance,
        "received_at_ms": model.received_at_ms,
        "message_id": model.message_id,
    }


def _waits_for_add(model: SymbolModel) -> bool:
    """PHASE1 waits for the scale-in while the add is armed, being prepared or resting (W41, W47)."""
    if model.closing or model.add_price <= 0:
        return False
    return model.add_armed or model.preparing == "ENTRY2" or bool(model.open_orders("ENTRY2"))


def _position(engine: EngineReader, model: SymbolModel, buffer_pct: Decimal, now_ms: int) -> dict[str, Any]:
    tick = _tick(model)
    quantity = model.position()
    average = model.average()
    mark = engine.marks.get(model.symbol)
    roi = None
    if mark is not None and quantity > 0 and average > 0:
        roi = _quantized(rules.short_roi_pct(average, mark), ROI_STEP)
    orders = [
        {
            "client_order_id": o.cid,
            "leg": o.leg,
            "side": o.side,
            "type": o.kind,
            "price": _price(o.price, tick) if o.price > 0 else None,
            "quantity": _plain(o.qty),
            "filled": _plain(o.filled),
            "status": o.status,
        }
        for o in model.open_orders()
    ]
    return {
        "symbol": model.symbol,
        "state": model.state,
        "phase": model.state,
        "average": _price(average, tick),
        "quantity": _plain(quantity),
        "mark": _price(mark, tick) if mark is not None else None,
        "roi_pct": roi,
        "orders": orders,
        "next_triggers": _next_triggers(engine, model, buffer_pct, tick),
        "countdown": _countdown(engine, model, now_ms),
    }


def _symbol_row(engine: EngineReader, model: SymbolModel, buffer_pct: Decimal, now_ms: int) -> dict[str, Any]:
    tick = _tick(model)
    triggers = _next_triggers(engine, model, buffer_pct, tick)
    entry = None
    if model.state == "MONITORING" and model.target > 0:
        trigger = (
            model.entry_trigger
            if model.entry_trigger > 0
            else rules.entry_threshold(model.target, buffer_pct)
        )
        entry = _price(trigger, tick)
    return {
        "symbol": model.symbol,
        "state": model.state,
        "next_triggers": {"entry": entry, **triggers},
        "countdown": _countdown(engine, model, now_ms),
    }


def _countdown(engine: EngineReader, model: SymbolModel, now_ms: int) -> dict[str, Any] | None:
    """N-19: the earliest deadline of a part-filled TP/BE limit (the engine closes at market then)."""
    timeout = engine.strategy.partial_fill_timeout_seconds * 1000
    running = [o for o in model.open_orders("TP", "BE") if o.status == "PARTIALLY_FILLED" and o.last_fill_ms]
    if not running:
        return None
    order = min(running, key=lambda o: o.last_fill_ms)
    deadline = order.last_fill_ms + timeout
    return {
        "leg": order.leg,
        "client_order_id": order.cid,
        "filled": _plain(order.filled),
        "quantity": _plain(order.qty),
        "deadline_ms": deadline,
        "remaining_ms": max(0, deadline - now_ms),
    }


def _cooldowns(engine: EngineReader, now_ms: int) -> list[dict[str, Any]]:
    length = engine.strategy.cooldown_minutes * 60_000
    rows = [
        {
            "symbol": symbol,
            "received_at_ms": at,
            "until_ms": at + length,
            "remaining_ms": at + length - now_ms,
        }
        for symbol, at in engine.cooldowns.items()
        if at + length > now_ms
    ]
    return sorted(rows, key=lambda r: (r["until_ms"], r["symbol"]))


def _settings(engine: EngineReader) -> dict[str, Any]:
    pending = dict(engine.pending_settings) if isinstance(engine.pending_settings, dict) else {}
    return {"source": "daemon", "values": strategy_values(engine.strategy), "pending": pending}


def strategy_values(strategy: Strategy) -> dict[str, Any]:
    """Every strategy setting as a JSON value (Decimals as text, word lists as lists)."""
    return {f.name: _setting(getattr(strategy, f.name)) for f in dataclasses.fields(strategy)}


def _setting(value: Any) -> Any:
    if isinstance(value, Decimal):
        return _plain(value)
    if isinstance(value, tuple):
        return list(value)
    return value


def _next_triggers(
    engine: EngineReader, model: SymbolModel, buffer_pct: Decimal, tick: Decimal
) -> dict[str, Any]:
    strategy = engine.strategy
    state = model.state
    average = model.average()

    def working(*legs: str) -> str | None:
        for leg in legs:
            found = model.open_orders(leg)
            if found and found[-1].price > 0:
                return _price(found[-1].price, tick)
        return None

    tp = working("TP")
    if tp is None and model.tp_armed and state in ("ENTRY_ORDER", "PHASE1") and model.position() > 0:
        ptp = rules.take_profit_price(average, strategy.tp_pct, tick)
        tp = _price(rules.take_profit_threshold(ptp, buffer_pct), tick)
    add = working("ENTRY2")
    if add is None and model.add_armed and state == "PHASE1" and model.add_price > 0:
        add = _price(rules.entry_threshold(model.add_price, buffer_pct), tick)
    breakeven = working("BE", "BE_STOP")
    if breakeven is None and model.be_armed and state == "PHASE2" and average > 0:
        pbe = rules.round_to_tick(average, tick)
        breakeven = _price(rules.breakeven_threshold(pbe, buffer_pct), tick)
    return {"tp": tp, "add": add, "breakeven": breakeven, "mdd": working("MDD")}


def _price_source(engine: EngineReader, now_ms: int) -> dict[str, Any]:
    source = engine.price_source
    last = engine.last_ws_ms if source == "WS" else engine.last_rest_ms
    age = max(0, now_ms - last) if last is not None else None
    stale = engine.locks[SAFETY_LOCK].state == "PRICE_STALE" or (
        age is not None and age >= engine.strategy.stale_mark_price_seconds * 1000
    )
    return {"source": source, "stale": stale, "age_ms": age}


def _profile(value: Any) -> str:
    if value in PROFILES:
        return str(value)
    if value is not None:
        log.warning("board view: unknown profile %r, shown as sim", value)
    return "sim"


def _streams(value: Any, price_source: dict[str, Any]) -> dict[str, str]:
    """The daemon's stream states; without them the market stream is judged from the price source."""
    given = value if isinstance(value, dict) else {}
    market_default = "up" if price_source["source"] == "WS" and not price_source["stale"] else "down"
    out = {"market": market_default, "user": "down", "telegram": "down"}
    for name, allowed in _STREAM_VALUES.items():
        if given.get(name) in allowed:
            out[name] = str(given[name])
    return out


def _last_event(value: Any) -> dict[str, Any] | None:
    if (
        isinstance(value, dict)
        and isinstance(value.get("type"), str)
        and isinstance(value.get("now_ms"), int)
    ):
        return {"type": value["type"], "now_ms": value["now_ms"]}
    return None


# ---------------------------------------------------------------------------------------------
# Decimal formatting
# ---------------------------------------------------------------------------------------------


def _tick(model: SymbolModel) -> Decimal:
    return model.info.tick_size if model.info is not None else Decimal(0)


def _plain(value: Decimal) -> str:
    """A Decimal as positional text (never exponent notation)."""
    return format(value, "f")


def _quantized(value: Decimal, step: Decimal) -> str:
    try:
        return _plain(value.quantize(step, rounding=ROUND_HALF_UP))
    except InvalidOperation:
        return _plain(value)


def _price(value: Decimal, tick: Decimal) -> str:
    """Rounded to the tick's decimals + 4, trailing zeros cut back to the tick's decimals.

    A target or a mark keeps its digits (``101.0``, ``96.09``); an average of several fills is
    shortened (``107.19684``).
    """
    places = 0
    if tick > 0:
        exponent = tick.normalize().as_tuple().exponent
        places = max(-exponent, 0) if isinstance(exponent, int) else 0
    try:
        text = _plain(value.quantize(Decimal(1).scaleb(-(places + EXTRA_PLACES)), rounding=ROUND_HALF_UP))
    except InvalidOperation:
        return _plain(value)
    whole, _, fraction = text.partition(".")
    fraction = fraction.rstrip("0").ljust(places, "0")
    return f"{whole}.{fraction}" if fraction else whole
