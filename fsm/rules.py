"""Pure trading arithmetic: 0.1% triggers, ROI, targets, sizing and exchange-filter normalisation.

Everything is Decimal and exact: a trigger fires on an exact comparison (N-09), PnL is zero only
when the mark equals the average exactly (spec section 0), prices round half-up to the tick and
quantities floor to the step (W29/W30).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_FLOOR, ROUND_HALF_UP, Decimal

from fsm.commands import Leg
from fsm.events import Candle, SymbolInfo

HUNDRED = Decimal(100)
ZERO = Decimal(0)

# --------------------------------------------------------------------------------------------
# Normalisation (W29..W32)
# --------------------------------------------------------------------------------------------


def round_to_tick(price: Decimal, tick: Decimal) -> Decimal:
    """Round half-up to the nearest multiple of ``tick`` (N-09, W29)."""
    if tick <= 0:
        return price
    steps = (price / tick).to_integral_value(rounding=ROUND_HALF_UP)
    return (steps * tick).quantize(tick)


def floor_to_step(qty: Decimal, step: Decimal) -> Decimal:
    """Floor to a multiple of ``step`` (W30)."""
    if step <= 0:
        return qty
    steps = (qty / step).to_integral_value(rounding=ROUND_FLOOR)
    return (steps * step).quantize(step)


@dataclass(frozen=True, slots=True)
class Sized:
    """A quantity that passed the filters, or the reason it did not."""

    quantity: Decimal
    reason: str = ""

    @property
    def ok(self) -> bool:
        return not self.reason


def size_order(funds: Decimal, price: Decimal, info: SymbolInfo, *, market: bool = False) -> Sized:
    """Quantity = funds / price floored to the step; refused below minQty or MIN_NOTIONAL (N-11)."""
    if price <= 0:
        return Sized(ZERO, "price_not_positive")
    if funds <= 0:
        return Sized(ZERO, "no_funds")
    step = info.market_step_size if market and info.market_step_size else info.step_size
    min_qty = info.market_min_qty if market and info.market_min_qty is not None else info.min_qty
    qty = floor_to_step(funds / price, step)
    if qty <= 0:
        return Sized(qty, "quantity_zero")
    if qty < min_qty:
        return Sized(qty, "below_min_qty")
    if info.max_qty > 0 and qty > info.max_qty:
        qty = floor_to_step(info.max_qty, step)
    if qty * price < info.min_notional:
        return Sized(qty, "below_min_notional")
    return Sized(qty)


def exit_quantity(position: Decimal, info: SymbolInfo, *, market: bool = False) -> Decimal:
    """A closing quantity never above the position (R11): the position floored to the step; a market
    close never above MARKET_LOT_SIZE.maxQty either (a larger position closes in several orders)."""
    step = info.market_step_size if market and info.market_step_size else info.step_size
    qty = floor_to_step(position, step)
    cap = info.market_max_qty if market else None
    if cap is not None and cap > 0 and qty > cap:
        qty = floor_to_step(cap, step)
    return qty


def unclosable(position: Decimal, info: SymbolInfo) -> bool:
    """No market close can express it: below the market step or MARKET_LOT_SIZE's minimum (R22)."""
    qty = exit_quantity(position, info, market=True)
    market_min = info.market_min_qty if info.market_min_qty is not None else info.min_qty
    return qty <= 0 or qty < market_min


def is_dust(position: Decimal, info: SymbolInfo | None) -> bool:
    """Below minQty counts as no position (R22)."""
    if position <= 0:
        return True
    if info is None:
        return False
    return position < info.min_qty


# --------------------------------------------------------------------------------------------
# The 0.1% algorithm (W17-2, N-09)
# --------------------------------------------------------------------------------------------


def _fraction(pct: Decimal) -> Decimal:
    return pct / HUNDRED


def entry_threshold(price: Decimal, buffer_pct: Decimal) -> Decimal:
    """T = P x (1 - b): entries (first and second) fire when mark >= T."""
    return price * (1 - _fraction(buffer_pct))


def take_profit_threshold(price: Decimal, buffer_pct: Decimal) -> Decimal:
    """Ttp = Ptp x (1 + b): the take-profit limit is placed when mark <= Ttp."""
    return price * (1 + _fraction(buffer_pct))


def breakeven_threshold(price: Decimal, buffer_pct: Decimal) -> Decimal:
    """Tbe = Pbe x (1 + b): the breakeven limit is placed when mark >= Tbe."""
    return price * (1 + _fraction(buffer_pct))


def second_entry_price(average: Decimal, second_entry_pct: Decimal, tick: Decimal) -> Decimal:
    return round_to_tick(average * (1 + _fraction(second_entry_pct)), tick)


def take_profit_price(average: Decimal, tp_pct: Decimal, tick: Decimal) -> Decimal:
    return round_to_tick(average * (1 - _fraction(tp_pct)), tick)


def mdd_stop_price(average: Decimal, mdd_pct: Decimal, tick: Decimal) -> Decimal:
    return round_to_tick(average * (1 + _fraction(mdd_pct)), tick)


def short_roi_pct(average: Decimal, mark: Decimal) -> Decimal:
    """Short ROI without fees: (avg - mark) / avg x 100; exactly zero only when mark == avg."""
    if average <= 0:
        return ZERO
    return (average - mark) / average * HUNDRED


def pnl_sign(average: Decimal, mark: Decimal) -> int:
    """+1 profit, 0 exactly flat, -1 loss, for a short (no tolerance: spec section 0)."""
    if mark < average:
        return 1
    if mark > average:
        return -1
    return 0


# --------------------------------------------------------------------------------------------
# Targets (W15/W16, N-08)
# --------------------------------------------------------------------------------------------


def closed_candles(klines: Sequence[Candle], received_at_ms: int) -> list[Candle]:
    """Candles whose close time is before the receipt time, oldest first."""
    return sorted((c for c in klines if c.close_time_ms < received_at_ms), key=lambda c: c.open_time_ms)


def aggressive_target(klines: Sequence[Candle], received_at_ms: int) -> Decimal | None:
    """The high of the last closed 3m candle at receipt."""
    closed = closed_candles(klines, received_at_ms)
    return closed[-1].high if closed else None


def atr_upper_band(
    klines: Sequence[Candle], received_at_ms: int, *, length: int, multiplier: Decimal, count: int
) -> Decimal | None:
    """close + multiplier x ATR of the last closed candle, ATR with Wilder smoothing (N-08).

    True range of the first candle is high - low; the ATR is seeded with the mean of the first
    ``length`` true ranges, then ATR = (ATR_prev x (length - 1) + TR) / length.
    """
    closed = closed_candles(klines, received_at_ms)[-count:]
    if length <= 0 or len(closed) < length:
        return None
    ranges: list[Decimal] = []
    previous_close: Decimal | None = None
    for candle in closed:
        if previous_close is None:
            ranges.append(candle.high - candle.low)
        else:
            ranges.append(
                max(
                    candle.high - candle.low,
                    abs(candle.high - previous_close),
                    abs(candle.low - previous_close),
                )
            )
        previous_close = candle.close
    atr = sum(ranges[:length], ZERO) / Decimal(length)
    for true_range in ranges[length:]:
        atr = (atr * (length - 1) + true_range) / Decimal(length)
    return closed[-1].close + multiplier * atr


# --------------------------------------------------------------------------------------------
# Filters (W09..W14, N-06, N-07)
# --------------------------------------------------------------------------------------------

_pattern_cache: dict[tuple[str, ...], re.Pattern[str]] = {}


def _word_pattern(words: tuple[str, ...]) -> re.Pattern[str]:
    pattern = _pattern_cache.get(words)
    if pattern is None:
        alternatives = "|".join(re.escape(w.lower()) for w in words if w.strip())
        pattern = re.compile(rf"(?<![0-9a-z])(?:{alternatives})(?![0-9a-z])" if alternatives else r"(?!x)x")
        _pattern_cache[words] = pattern
    return pattern


def category_excluded(category: str, words: tuple[str, ...], substrings: tuple[str, ...]) -> str | None:
    """The excluded keyword found in ``category`` (whole words, case-insensitive), or None."""
    lowered = category.lower()
    match = _word_pattern(words).search(lowered)
    if match:
        return match.group(0)
    for sub in substrings:
        if sub and sub.lower() in lowered:
            return sub
    return None


def funding_rejected(funding_pct: Decimal, reject_at_or_below_pct: Decimal) -> bool:
    return funding_pct <= reject_at_or_below_pct


def rank_rejected(direction: str, rank: int, reject_top: int) -> bool:
    """Rising (상승) ranks 1..reject_top are rejected; every falling rank passes (W11/W12)."""
    return direction == "UP" and 1 <= rank <= reject_top


def signal_too_old(telegram_date_ms: int, received_at_ms: int, max_age_seconds: int) -> bool:
    """A leading message older than the limit when first seen is dropped (N-27)."""
    return received_at_ms - telegram_date_ms > max_age_seconds * 1000


# --------------------------------------------------------------------------------------------
# Client order ids (N-13)
# --------------------------------------------------------------------------------------------

LEG_CODES: dict[Leg, str] = {
    "ENTRY1": "E1",
    "ENTRY2": "E2",
    "TP": "TP",
    "BE": "BE",
    "CLOSE": "CL",
    "BE_STOP": "BS",
    "MDD": "MD",
}
CODE_LEGS = {code: leg for leg, code in LEG_CODES.items()}
_CID_RE = re.compile(r"^sf(\d+)-([A-Z0-9]{2})(\d+)-([A-Z0-9]+)$")
_CID_ALLOWED = re.compile(r"^[.A-Z:/a-z0-9_-]{1,36}$")


def client_order_id(symbol: str, message_id: int, leg: Leg, generation: int) -> str:
    """Deterministic id of (symbol, signal message id, leg, generation), within Binance's pattern.

    Readable form ``sf<msg>-<leg><gen>-<symbol>``; when that would exceed 36 characters the symbol
    part is replaced by a short hash of it.
    """
    cid = f"sf{message_id}-{LEG_CODES[leg]}{generation}-{symbol}"
    if len(cid) > 36:
        digest = hashlib.blake2b(symbol.encode(), digest_size=4).hexdigest().upper()
        cid = f"sf{message_id}-{LEG_CODES[leg]}{generation}-H{digest}"
    assert _CID_ALLOWED.match(cid), cid
    return cid


@dataclass(frozen=True, slots=True)
class ParsedClientId:
    message_id: int
    leg: Leg
    generation: int
    symbol_part: str


def parse_client_order_id(cid: str) -> ParsedClientId | None:
    """Recognise one of our ids (recovery, N-28); None for manual or foreign orders."""
    match = _CID_RE.match(cid)
    if not match or match.group(2) not in CODE_LEGS:
        return None
    return ParsedClientId(int(match.group(1)), CODE_LEGS[match.group(2)], int(match.group(3)), match.group(4))


OPERATOR_FLATTEN = "operator flatten"  # a symbol's close_reason while the operator's flatten runs (D-63)
_FLATTEN_CID_RE = re.compile(r"^flat-(\d+)-")


def flatten_client_order_id(symbol: str, now_ms: int, *, long: bool = False) -> str:
    """The client id of the operator's market close of ``symbol`` (``shortfsm flatten``); a hedge-mode
    LONG leg's close has its own, so that it is never taken for our short's."""
    return f"{'flatlong' if long else 'flat'}-{now_ms}-{symbol}"[:36]


def is_flatten_close(cid: str, symbol: str) -> bool:
    found = _FLATTEN_CID_RE.match(cid)
    return found is not None and cid == flatten_client_order_id(symbol, int(found.group(1)))
