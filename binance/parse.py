"""Pure translation between Binance's wire format and the core's events and commands.

Inbound: ``decode_frame`` turns one WebSocket text frame (raw, combined-stream envelope or an
array) into a list of items: fsm events plus two adapter-level markers (``KlineUpdate``,
``ListenKeyExpired``) that the streams act on. It routes by the ``e`` field through a dict table,
ignores unknown fields, logs and skips unknown event types and anything malformed; it never raises.
REST answers are translated by the ``*_from_rest`` helpers (these raise ``ValueError`` on garbage;
callers catch it). Outbound: ``order_params`` / ``algo_params`` / ``cancel_params`` turn commands into
request parameters (strings, unsigned).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import types
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Literal, ParamSpec, TypeVar, cast

import orjson

from fsm.commands import CancelAlgoOrder, CancelOrder, PlaceAlgoOrder, PlaceOrder
from fsm.events import (
    AlgoOrderUpdated,
    AlgoStatus,
    BalanceChanged,
    Candle,
    Event,
    FundingFee,
    MarkPriceTick,
    OpenOrderInfo,
    OrderStatus,
    OrderUpdated,
    PositionChanged,
    PositionInfo,
    SymbolInfo,
)

log = logging.getLogger(__name__)

Json = dict[str, Any]
PositionSide = Literal["BOTH", "LONG", "SHORT"]
Side = Literal["BUY", "SELL"]
_P = ParamSpec("_P")
_R = TypeVar("_R")


def rest_answer(func: Callable[_P, _R]) -> Callable[_P, _R]:
    """A REST answer helper raises only ValueError or KeyError, whatever the JSON holds: a field
    of the wrong type (a list for a string, a number too big for a float) is garbage like any
    other, and callers catch exactly those two."""

    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return func(*args, **kwargs)
        except (TypeError, AttributeError, OverflowError, RecursionError) as exc:
            raise ValueError(f"{func.__name__}: malformed answer ({type(exc).__name__}: {exc})") from exc

    wrapper.__name__ = func.__name__
    wrapper.__qualname__ = func.__qualname__
    wrapper.__doc__ = func.__doc__
    return wrapper


@dataclass(frozen=True, slots=True, kw_only=True)
class KlineUpdate:
    """A kline push; ``closed`` is the ``k.x`` flag (the candle is final)."""

    now_ms: int
    symbol: str
    interval: str
    candle: Candle
    closed: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenKeyExpired:
    """``listenKeyExpired``: the user stream is dead until a new key is used."""

    now_ms: int
    listen_key: str
    event_time_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class AccountPush:
    """An ``ACCOUNT_UPDATE`` (``reason`` its ``m``: ORDER, FUNDING_FEE, DEPOSIT, MARGIN_TYPE_CHANGE...)
    or an ``ACCOUNT_CONFIG_UPDATE`` (``reason`` "leverage" with its ``symbol``, or "multi_assets"),
    whatever it carries. Not a core event: the account moved, so the facts read ahead for the next
    first entry are void (``binance.account_reads``, D-72)."""

    now_ms: int
    event: str
    reason: str
    symbol: str | None = None


Decoded = Event | KlineUpdate | ListenKeyExpired | AccountPush

ORDER_STATUS: dict[str, OrderStatus] = {
    "NEW": "NEW",
    "PARTIALLY_FILLED": "PARTIALLY_FILLED",
    "FILLED": "FILLED",
    "CANCELED": "CANCELED",
    "EXPIRED": "EXPIRED",
    "EXPIRED_IN_MATCH": "EXPIRED",  # STP expiry
    "REJECTED": "REJECTED",
}
ALGO_STATUS: dict[str, AlgoStatus] = {
    "NEW": "NEW",
    "TRIGGERING": "TRIGGERING",
    "TRIGGERED": "TRIGGERED",
    "FINISHED": "FINISHED",
    "CANCELED": "CANCELED",
    "REJECTED": "REJECTED",
    "EXPIRED": "EXPIRED",
}
POSITION_SIDES: dict[str, PositionSide] = {"BOTH": "BOTH", "LONG": "LONG", "SHORT": "SHORT"}
SIDES: dict[str, Side] = {"BUY": "BUY", "SELL": "SELL"}
KLINE_MS: dict[str, int] = {
    "1m": 60_000,
    "3m": 180_000,
    "5m": 300_000,
    "15m": 900_000,
    "30m": 1_800_000,
    "1h": 3_600_000,
}


# ---------------------------------------------------------------------------------------------
# small converters
# ---------------------------------------------------------------------------------------------


def dec(value: Any) -> Decimal:
    """A Decimal from Binance's string (or number) field; raises ValueError on garbage."""
    if value is None or isinstance(value, bool):
        raise ValueError(f"not a decimal: {value!r}")
    try:
        d = Decimal(str(value))
    except InvalidOperation as exc:
        raise ValueError(f"not a decimal: {value!r}") from exc
    if not d.is_finite():
        raise ValueError(f"not a finite decimal: {value!r}")
    return d


def dec_str(value: Decimal) -> str:
    """Plain decimal text for a request: no exponent, no trailing zeros (``1E+2`` -> ``100``)."""
    text = format(value.normalize(), "f")
    return text


def int_field(value: Any) -> int:
    """An int from an int or digit string (``"1736996475556"``, ``"88937381063"``); ``""`` -> 0."""
    if isinstance(value, bool):
        raise ValueError(f"not an int: {value!r}")
    if value in ("", None):
        return 0
    return int(value)


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).lower() == "true"


def side_of(value: Any) -> Side:
    return SIDES[str(value)]


def position_side_of(value: Any) -> PositionSide:
    """``BOTH`` / ``LONG`` / ``SHORT``; anything else is garbage (ValueError), never read as ``BOTH``:
    a leg whose side cannot be told must not be taken for ours."""
    side = POSITION_SIDES.get(str(value))
    if side is None:
        raise ValueError(f"not a position side: {value!r}")
    return side


PositionKey = tuple[str, PositionSide]


def is_our_leg(position_side: PositionSide) -> bool:
    """Hedge mode keeps a LONG and a SHORT leg per symbol; we only ever trade SHORT (or BOTH in
    one-way mode). A LONG leg is never ours: it counts for the entry lock, never as our position."""
    return position_side != "LONG"


# ---------------------------------------------------------------------------------------------
# market data
# ---------------------------------------------------------------------------------------------


def mark_price_from_ws(d: Mapping[str, Any], now_ms: int) -> MarkPriceTick:
    """``markPriceUpdate``: ``s`` symbol, ``p`` mark price, ``E`` event time."""
    return MarkPriceTick(
        now_ms=now_ms, symbol=str(d["s"]), price=dec(d["p"]), event_time_ms=int_field(d["E"]), source="WS"
    )


@rest_answer
def mark_price_from_rest(d: Mapping[str, Any], now_ms: int) -> MarkPriceTick:
    """``GET /fapi/v1/premiumIndex`` (one object): ``markPrice`` at venue time ``time``."""
    return MarkPriceTick(
        now_ms=now_ms,
        symbol=str(d["symbol"]),
        price=dec(d["markPrice"]),
        event_time_ms=int_field(d["time"]),
        source="REST",
    )


@rest_answer
def candles_from_rest(rows: Any) -> list[Candle]:
    """``GET /fapi/v1/klines`` rows ``[openTime, o, h, l, c, vol, closeTime, ...]``; bad rows skipped."""
    out: list[Candle] = []
    if not isinstance(rows, list):
        raise ValueError("klines answer is not a list")
    for row in rows:
        try:
            out.append(
                Candle(
                    open_time_ms=int_field(row[0]),
                    close_time_ms=int_field(row[6]),
                    open=dec(row[1]),
                    high=dec(row[2]),
                    low=dec(row[3]),
                    close=dec(row[4]),
                )
            )
        except (IndexError, KeyError, TypeError, ValueError) as exc:
            log.warning("kline row skipped: %r (%s)", row, exc)
    return out


def kline_from_ws(d: Mapping[str, Any], now_ms: int) -> KlineUpdate:
    """``kline`` event: ``k.t``/``k.T`` open/close time, ``k.o/h/l/c``, ``k.x`` closed."""
    k = d["k"]
    candle = Candle(
        open_time_ms=int_field(k["t"]),
        close_time_ms=int_field(k["T"]),
        open=dec(k["o"]),
        high=dec(k["h"]),
        low=dec(k["l"]),
        close=dec(k["c"]),
    )
    return KlineUpdate(
        now_ms=now_ms,
        symbol=str(k.get("s", d.get("s"))),
        interval=str(k["i"]),
        candle=candle,
        closed=_bool(k["x"]),
    )


@rest_answer
def symbol_info(entry: Mapping[str, Any]) -> SymbolInfo:
    """One ``exchangeInfo.symbols[]`` entry; only the filters the core uses are read."""
    filters = {str(f.get("filterType")): f for f in entry.get("filters", []) if isinstance(f, dict)}
    price = filters.get("PRICE_FILTER", {})
    lot = filters["LOT_SIZE"]
    market = filters.get("MARKET_LOT_SIZE")
    notional = filters.get("MIN_NOTIONAL", {})
    return SymbolInfo(
        symbol=str(entry["symbol"]),
        status=str(entry.get("status", "")),
        tick_size=dec(price.get("tickSize", "0")),
        min_price=dec(price.get("minPrice", "0")),
        max_price=dec(price.get("maxPrice", "0")),
        step_size=dec(lot["stepSize"]),
        min_qty=dec(lot["minQty"]),
        max_qty=dec(lot.get("maxQty", "0")),
        market_step_size=dec(market["stepSize"]) if market else None,
        market_min_qty=dec(market["minQty"]) if market else None,
        market_max_qty=dec(market["maxQty"]) if market else None,
        min_notional=dec(notional.get("notional", "0")),
    )


@rest_answer
def symbol_infos(exchange_info: Mapping[str, Any]) -> dict[str, SymbolInfo]:
    """All usable symbols of an exchangeInfo answer; a malformed entry is logged and skipped."""
    out: dict[str, SymbolInfo] = {}
    for entry in exchange_info.get("symbols", []):
        try:
            info = symbol_info(entry)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            log.warning(
                "exchangeInfo entry skipped: %r (%s)",
                entry.get("symbol") if isinstance(entry, dict) else entry,
                exc,
            )
            continue
        out[info.symbol] = info
    return out


# ---------------------------------------------------------------------------------------------
# user data
# ---------------------------------------------------------------------------------------------


def order_updated(d: Mapping[str, Any], now_ms: int) -> OrderUpdated:
    """``ORDER_TRADE_UPDATE``: ``o`` holds the order (``c`` client id, ``i`` id, ``X`` status, ...)."""
    o = d["o"]
    return OrderUpdated(
        now_ms=now_ms,
        symbol=str(o["s"]),
        client_order_id=str(o["c"]),
        order_id=int_field(o["i"]),
        side=side_of(o["S"]),
        order_type=str(o["o"]),
        status=ORDER_STATUS[str(o["X"])],
        price=dec(o.get("p", "0")),
        orig_qty=dec(o["q"]),
        cum_qty=dec(o.get("z", "0")),  # cumulative filled
        last_qty=dec(o.get("l", "0")),  # this event's fill
        last_price=dec(o.get("L", "0")),
        avg_price=dec(o.get("ap", "0")),
        trade_id=int_field(o.get("t", 0)),
        reduce_only=_bool(o.get("R", False)),
        close_position=_bool(o.get("cp", False)),
        position_side=position_side_of(o.get("ps", "BOTH")),
        realized_pnl=dec(o.get("rp", "0")),
        commission=dec(o.get("n", "0")),
    )


def algo_updated(d: Mapping[str, Any], now_ms: int) -> AlgoOrderUpdated:
    """``ALGO_UPDATE``: ``caid`` client algo id, ``aid`` algo id, ``X`` status, ``ai`` child order id."""
    o = d["o"]
    return AlgoOrderUpdated(
        now_ms=now_ms,
        symbol=str(o["s"]),
        client_algo_id=str(o["caid"]),
        algo_id=int_field(o["aid"]),
        status=ALGO_STATUS[str(o["X"])],
        actual_order_id=int_field(o.get("ai", "")),
        reason=str(o.get("rm", "") or ""),
    )


def account_update(d: Mapping[str, Any], now_ms: int, *, asset: str = "USDT") -> list[Event]:
    """``ACCOUNT_UPDATE``: ``a.B`` balances (``wb`` wallet) and ``a.P`` changed positions only; with
    reason ``FUNDING_FEE`` also the funding paid or received (``bc``)."""
    a = d["a"]
    venue_time = int_field(d.get("T") or d.get("E"))
    out: list[Event] = []
    for b in a.get("B", []):
        if str(b.get("a")) == asset:
            out.append(BalanceChanged(now_ms=now_ms, wallet_balance=dec(b["wb"])))
    if a.get("m") == "FUNDING_FEE":
        positions = a.get("P", [])
        symbol = str(a.get("S") or (positions[0]["s"] if len(positions) == 1 else ""))
        for b in a.get("B", []):
            if str(b.get("a")) == asset and dec(b.get("bc", "0")) != 0:
                out.append(
                    FundingFee(
                        now_ms=now_ms,
                        symbol=symbol,
                        asset=asset,
                        amount=dec(b["bc"]),
                        venue_time_ms=venue_time,
                    )
                )
    for p in a.get("P", []):
        out.append(
            PositionChanged(
                now_ms=now_ms,
                symbol=str(p["s"]),
                amount=dec(p["pa"]),
                entry_price=dec(p["ep"]),
                position_side=position_side_of(p.get("ps", "BOTH")),
                venue_time_ms=venue_time,
            )
        )
    return out


def account_config_update(d: Mapping[str, Any], now_ms: int) -> list[Decoded]:
    """``ACCOUNT_CONFIG_UPDATE`` carries only ``ac{s,l}`` (leverage) and ``ai{j}`` (multi-assets
    mode); Binance sends no position-mode field (binance-usdm-2026.md, corrections), so nothing here
    reaches the core. A mode change is seen only by re-reading ``GET /fapi/v1/positionSide/dual``
    (``binance.reconcile.position_mode_event``, after every user-stream reconnect)."""
    ac = d.get("ac")
    if isinstance(ac, Mapping) and ac.get("s"):
        return [
            AccountPush(now_ms=now_ms, event="ACCOUNT_CONFIG_UPDATE", reason="leverage", symbol=str(ac["s"]))
        ]
    return [AccountPush(now_ms=now_ms, event="ACCOUNT_CONFIG_UPDATE", reason="multi_assets")]


def _account_update(d: Mapping[str, Any], now_ms: int) -> list[Decoded]:
    """The push itself first (it voids the facts read ahead whatever it carries), then its events."""
    a = d.get("a")
    reason = str(a.get("m", "")) if isinstance(a, Mapping) else ""
    return [AccountPush(now_ms=now_ms, event="ACCOUNT_UPDATE", reason=reason), *account_update(d, now_ms)]


def listen_key_expired(d: Mapping[str, Any], now_ms: int) -> ListenKeyExpired:
    """``listenKeyExpired``; ``E`` may be a string (doc example) or an int (current connector)."""
    return ListenKeyExpired(
        now_ms=now_ms, listen_key=str(d.get("listenKey", "")), event_time_ms=int_field(d.get("E", 0))
    )


def _one(
    fn: Callable[[Mapping[str, Any], int], Decoded],
) -> Callable[[Mapping[str, Any], int], list[Decoded]]:
    def wrapped(d: Mapping[str, Any], now_ms: int) -> list[Decoded]:
        return [fn(d, now_ms)]

    return wrapped


def _ignore(d: Mapping[str, Any], now_ms: int) -> list[Decoded]:
    return []


def _many(
    fn: Callable[[Mapping[str, Any], int], list[Event]],
) -> Callable[[Mapping[str, Any], int], list[Decoded]]:
    def wrapped(d: Mapping[str, Any], now_ms: int) -> list[Decoded]:
        return list(fn(d, now_ms))

    return wrapped


HANDLERS: dict[str, Callable[[Mapping[str, Any], int], list[Decoded]]] = {
    "markPriceUpdate": _one(mark_price_from_ws),
    "kline": _one(kline_from_ws),
    "ORDER_TRADE_UPDATE": _one(order_updated),
    "ALGO_UPDATE": _one(algo_updated),
    "ACCOUNT_UPDATE": _account_update,
    "ACCOUNT_CONFIG_UPDATE": account_config_update,
    "listenKeyExpired": _one(listen_key_expired),
    "TRADE_LITE": _ignore,  # the same fill arrives as ORDER_TRADE_UPDATE
    "MARGIN_CALL": _ignore,
}

_MARKET_EVENTS = frozenset({"markPriceUpdate", "kline"})
_NAN = Decimal("NaN")
_PARSE_ERRORS = (KeyError, TypeError, ValueError, AttributeError, IndexError, InvalidOperation)


def _short(text: str | bytes) -> str:
    s = text if isinstance(text, str) else text.decode("utf-8", "replace")
    return s if len(s) <= 300 else s[:300] + "..."


MarkTickBuilder = Callable[[int, str, Decimal, int], MarkPriceTick]
_MARK_TICK_FIELDS = ("now_ms", "symbol", "price", "event_time_ms", "source")


def _plain_mark_tick(now_ms: int, symbol: str, price: Decimal, event_time_ms: int) -> MarkPriceTick:
    return MarkPriceTick(now_ms=now_ms, symbol=symbol, price=price, event_time_ms=event_time_ms, source="WS")


def _mark_tick_builder() -> MarkTickBuilder:
    """A ``MarkPriceTick`` maker for the 600-item frame: the frozen dataclass ``__init__`` costs half
    of the frame's budget, so the slots are filled directly. Used only while the class has exactly
    these slot fields and no ``__post_init__``; otherwise (the contract changed) the constructor."""
    names = tuple(f.name for f in dataclasses.fields(MarkPriceTick))
    slots: list[Any] = [getattr(MarkPriceTick, name, None) for name in names]
    if (
        names != _MARK_TICK_FIELDS
        or hasattr(MarkPriceTick, "__post_init__")
        or not all(isinstance(slot, types.MemberDescriptorType) for slot in slots)
    ):
        log.warning("MarkPriceTick changed shape; using its constructor on the hot path")
        return _plain_mark_tick
    new = object.__new__
    set_now, set_symbol, set_price, set_event, set_source = (slot.__set__ for slot in slots)

    def build(now_ms: int, symbol: str, price: Decimal, event_time_ms: int) -> MarkPriceTick:
        tick: MarkPriceTick = new(MarkPriceTick)
        set_now(tick, now_ms)
        set_symbol(tick, symbol)
        set_price(tick, price)
        set_event(tick, event_time_ms)
        set_source(tick, "WS")
        return tick

    return build


_mark_tick = _mark_tick_builder()


def _mark_array(items: list[Any], now_ms: int, watched: Collection[str] | None) -> list[Decoded]:
    """``!markPrice@arr``: one ``MarkPriceTick`` per watched item. Other symbols are skipped before any
    Decimal is built; a canonical item (string ``s`` and ``p``, int ``E``) takes the fast path, anything
    else goes through ``decode_message``, which validates, logs and skips a bad item alone."""
    out: list[Decoded] = []
    append = out.append
    build = _mark_tick
    for item in items:
        if type(item) is not dict:
            log.warning("array item skipped: not an object: %r", item)
            continue
        symbol = item.get("s")
        if watched is not None and (type(symbol) is not str or symbol not in watched):
            continue
        raw_price = item.get("p")
        event_ms = item.get("E")
        if (
            type(symbol) is str
            and type(raw_price) is str
            and type(event_ms) is int
            and item.get("e") == "markPriceUpdate"
        ):
            try:
                price = Decimal(raw_price)
            except InvalidOperation:
                price = _NAN
            if price.is_finite():
                append(build(now_ms, symbol, price, event_ms))
                continue
        out.extend(decode_message(item, now_ms, watched))
    return out


def decode_message(msg: Any, now_ms: int, watched: Collection[str] | None = None) -> list[Decoded]:
    """Route one decoded JSON value (object, envelope or array) by its event type.

    ``watched``: when given, market pushes (mark price, kline) of other symbols are dropped before
    any Decimal is built (a 600-symbol ``!markPrice@arr`` frame stays well under 1 ms).
    """
    if type(msg) is list:
        return _mark_array(msg, now_ms, watched)
    if not isinstance(msg, dict):
        log.warning("frame skipped: not an object: %r", msg)
        return []
    if "data" in msg and "stream" in msg:
        return decode_message(msg["data"], now_ms, watched)
    if "e" not in msg:
        if "result" in msg and "id" in msg:
            log.debug("control answer: %r", msg)
        else:
            log.warning("frame skipped: no event type: %s", _short(json.dumps(msg, default=str)))
        return []
    kind = msg["e"]
    if not isinstance(kind, str):
        log.info("event type %r skipped", kind)
        return []
    if watched is not None and kind in _MARKET_EVENTS:
        symbol = msg.get("s")
        if type(symbol) is not str or symbol not in watched:
            return []
    handler = HANDLERS.get(kind)
    if handler is None:
        log.info("event type %r skipped", kind)
        return []
    try:
        return handler(msg, now_ms)
    except _PARSE_ERRORS as exc:
        log.warning("malformed %s skipped (%s): %s", kind, exc, _short(json.dumps(msg, default=str)))
        return []


def decode_frame(raw: str | bytes, now_ms: int, watched: Collection[str] | None = None) -> list[Decoded]:
    """Decode one WebSocket frame (orjson); anything unusable is logged and skipped (never raises)."""
    try:
        msg = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        log.warning("undecodable frame skipped (%s): %s", exc, _short(raw))
        return []
    try:
        return decode_message(msg, now_ms, watched)
    except RecursionError:  # envelopes nested hundreds deep
        log.warning("frame skipped: nested too deep: %s", _short(raw))
        return []


# ---------------------------------------------------------------------------------------------
# REST answers
# ---------------------------------------------------------------------------------------------


@rest_answer
def position_mode_from_rest(d: Mapping[str, Any]) -> Literal["ONE_WAY", "HEDGE"]:
    """``GET /fapi/v1/positionSide/dual``: ``dualSidePosition`` true means hedge mode."""
    value = d["dualSidePosition"]
    if not isinstance(value, bool):
        raise ValueError(f"dualSidePosition is not a bool: {value!r}")
    return "HEDGE" if value else "ONE_WAY"


@rest_answer
def balance_from_rest(rows: Any, asset: str = "USDT") -> tuple[Decimal, Decimal]:
    """``GET /fapi/v3/balance`` -> (wallet ``balance``, ``availableBalance``) of ``asset``."""
    if not isinstance(rows, list):
        raise ValueError("balance answer is not a list")
    for row in rows:
        if isinstance(row, dict) and row.get("asset") == asset:
            return dec(row["balance"]), dec(row["availableBalance"])
    return Decimal("0"), Decimal("0")


@rest_answer
def positions_from_rest(rows: Any) -> list[PositionInfo]:
    """``GET /fapi/v3/positionRisk`` rows with a non-zero ``positionAmt``."""
    if not isinstance(rows, list):
        raise ValueError("positionRisk answer is not a list")
    out: list[PositionInfo] = []
    for row in rows:
        amount = dec(row["positionAmt"])
        if amount == 0:
            continue
        out.append(
            PositionInfo(
                symbol=str(row["symbol"]),
                amount=amount,
                entry_price=dec(row["entryPrice"]),
                position_side=position_side_of(row.get("positionSide", "BOTH")),
            )
        )
    return out


@rest_answer
def positions_by_key(rows: Any) -> dict[PositionKey, PositionInfo]:
    """``GET /fapi/v3/positionRisk`` rows keyed by (symbol, position side), flat legs included
    (amount 0): in hedge mode a symbol has a LONG and a SHORT leg, and one must never overwrite the
    other. A malformed row is logged and skipped, so one bad row cannot hide the others."""
    if not isinstance(rows, list):
        raise ValueError("positionRisk answer is not a list")
    out: dict[PositionKey, PositionInfo] = {}
    for row in rows:
        try:
            info = PositionInfo(
                symbol=str(row["symbol"]),
                amount=dec(row["positionAmt"]),
                entry_price=dec(row.get("entryPrice", "0")),
                position_side=position_side_of(row.get("positionSide", "BOTH")),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            log.warning("positionRisk row skipped (%s): %s", exc, _short(json.dumps(row, default=str)))
            continue
        out[(info.symbol, info.position_side)] = info
    return out


@rest_answer
def short_amount(rows: Any, symbol: str) -> Decimal:
    """Our position on ``symbol`` from positionRisk rows (signed, negative for a short): the
    SHORT leg in hedge mode or the BOTH leg in one-way mode; a LONG leg never counts."""
    legs = positions_by_key(rows)
    total = Decimal(0)
    for side in ("SHORT", "BOTH"):
        leg = legs.get((symbol, side))
        if leg is not None:
            total += leg.amount
    return total


@dataclass(frozen=True, slots=True, kw_only=True)
class SymbolConfig:
    """Leverage and margin type of one symbol (``GET /fapi/v1/symbolConfig``)."""

    symbol: str
    leverage: int
    margin_type: Literal["ISOLATED", "CROSSED"]


MARGIN_TYPES: dict[str, Literal["ISOLATED", "CROSSED"]] = {
    "ISOLATED": "ISOLATED",
    "CROSSED": "CROSSED",
    "CROSS": "CROSSED",  # v2 positionRisk spells it "cross"
}


@rest_answer
def symbol_configs_from_rest(rows: Any) -> dict[str, SymbolConfig]:
    """``GET /fapi/v1/symbolConfig`` rows ``{symbol, marginType, isAutoAddMargin, leverage,
    maxNotionalValue}`` (also the v2 positionRisk fallback of ``BinanceRest.symbol_config``)."""
    if not isinstance(rows, list):
        raise ValueError("symbolConfig answer is not a list")
    out: dict[str, SymbolConfig] = {}
    for row in rows:
        margin = MARGIN_TYPES.get(str(row["marginType"]).upper())
        if margin is None:
            raise ValueError(f"unknown marginType {row['marginType']!r}")
        leverage = row["leverage"]
        if isinstance(leverage, bool) or not str(leverage).isdigit():
            raise ValueError(f"leverage is not a positive integer: {leverage!r}")
        out[str(row["symbol"])] = SymbolConfig(
            symbol=str(row["symbol"]), leverage=int(leverage), margin_type=margin
        )
    return out


@rest_answer
def open_order_from_rest(d: Mapping[str, Any]) -> OpenOrderInfo:
    """A regular order as answered by ``/fapi/v1/order`` or ``/fapi/v1/openOrders``."""
    return OpenOrderInfo(
        symbol=str(d["symbol"]),
        client_order_id=str(d["clientOrderId"]),
        order_id=int_field(d["orderId"]),
        side=side_of(d["side"]),
        order_type=str(d["type"]),
        price=dec(d.get("price", "0")),
        orig_qty=dec(d["origQty"]),
        executed_qty=dec(d.get("executedQty", "0")),
        reduce_only=_bool(d.get("reduceOnly", False)),
        close_position=_bool(d.get("closePosition", False)),
        position_side=position_side_of(d.get("positionSide", "BOTH")),
        is_algo=False,
        trigger_price=dec(d.get("stopPrice", "0") or "0"),
    )


@rest_answer
def open_algo_order_from_rest(d: Mapping[str, Any]) -> OpenOrderInfo:
    """An algo order as answered by ``/fapi/v1/algoOrder`` or ``/fapi/v1/openAlgoOrders``."""
    return OpenOrderInfo(
        symbol=str(d["symbol"]),
        client_order_id=str(d["clientAlgoId"]),
        order_id=int_field(d["algoId"]),
        side=side_of(d["side"]),
        order_type=str(d.get("orderType", d.get("type", ""))),
        price=dec(d.get("price") or "0"),
        orig_qty=dec(d.get("quantity") or "0"),
        executed_qty=dec(d.get("actualQty") or "0"),
        reduce_only=_bool(d.get("reduceOnly", False)),
        close_position=_bool(d.get("closePosition", False)),
        position_side=position_side_of(d.get("positionSide", "BOTH")),
        is_algo=True,
        trigger_price=dec(d.get("triggerPrice") or "0"),
    )


# ---------------------------------------------------------------------------------------------
# commands -> request parameters
# ---------------------------------------------------------------------------------------------


def order_params(cmd: PlaceOrder) -> dict[str, str]:
    """``POST /fapi/v1/order`` parameters. Hedge mode (``position_side`` set) never sends reduceOnly."""
    p: dict[str, str] = {
        "symbol": cmd.symbol,
        "side": cmd.side,
        "type": cmd.order_type,
        "quantity": dec_str(cmd.quantity),
    }
    if cmd.order_type == "LIMIT":
        if cmd.price is None:
            raise ValueError("LIMIT order without a price")
        p["price"] = dec_str(cmd.price)
        p["timeInForce"] = cmd.time_in_force or "GTC"
    if cmd.position_side is not None:
        p["positionSide"] = cmd.position_side
    elif cmd.reduce_only:
        p["reduceOnly"] = "true"
    p["newClientOrderId"] = cmd.client_order_id
    p["newOrderRespType"] = "RESULT"
    return p


def algo_params(cmd: PlaceAlgoOrder) -> dict[str, str]:
    """``POST /fapi/v1/algoOrder``: CONDITIONAL, closePosition=true (never with quantity or reduceOnly)."""
    p: dict[str, str] = {
        "algoType": "CONDITIONAL",
        "symbol": cmd.symbol,
        "side": cmd.side,
        "type": cmd.order_type,
        "triggerPrice": dec_str(cmd.trigger_price),
        "workingType": cmd.working_type,
    }
    if cmd.close_position:
        p["closePosition"] = "true"
    if cmd.position_side is not None:
        p["positionSide"] = cmd.position_side
    p["clientAlgoId"] = cmd.client_algo_id
    return p


def cancel_params(cmd: CancelOrder | CancelAlgoOrder) -> dict[str, str]:
    """Cancel parameters: symbol + origClientOrderId (``/fapi/v1/order``) or clientAlgoId (``/algoOrder``)."""
    if isinstance(cmd, CancelAlgoOrder):
        return {"clientAlgoId": cmd.client_algo_id}
    return {"symbol": cmd.symbol, "origClientOrderId": cmd.client_order_id}


def as_json_object(value: Any) -> Json:
    """Narrow a decoded JSON value to an object or raise ValueError."""
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {type(value).__name__}")
    return cast(Json, value)
