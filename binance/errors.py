"""Binance errors as types named for what the caller must do.

``BinanceError`` carries the venue's ``code``, ``msg`` and the HTTP status. The subclasses say the
action: ``Retryable`` (try the same request again later), ``Rejected`` (the venue said no; do not
resend unchanged), ``RateLimited`` (wait ``retry_after_s`` / until ``banned_until_ms``),
``AuthFailed`` (stop signed calls, alert), ``UnknownOutcome`` (the request may have reached the venue:
query by client id before any resend), ``TimestampRejected`` (re-sync the clock, re-sign, retry).
Two refusals name a state rather than a mistake: ``CloseStopExists`` (-4130, a ``closePosition`` stop
in that direction is already open: read ``openAlgoOrders``, adopt ours or cancel the foreign one) and
``AlreadyFlat`` (-4509, and -2022 when the symbol is flat: the position the order needed is gone).
Code and HTTP-status mappings are data (dicts); ``should_retry`` and ``category`` are pure. The codes
seen live are in ``binance-real-answers.md`` (March 2026); the rest are from the error-code page
(``binance-usdm-2026.md`` section 5 and its corrections).
"""

from __future__ import annotations

import re
from typing import Any, Literal, TypeVar

T = TypeVar("T")
RejectCategory = Literal["retry", "rejected", "rate_limited", "auth", "margin", "filter", "flat"]


class BinanceError(Exception):
    """Any failure of a Binance call. ``code`` is Binance's negative code (0 when none was sent)."""

    def __init__(self, code: int, msg: str, http_status: int = 0) -> None:
        super().__init__(f"{code} {msg} (http {http_status})")
        self.code = code
        self.msg = msg
        self.http_status = http_status


class Retryable(BinanceError):
    """Temporary: the request did not take effect; the same request may succeed later."""


class Rejected(BinanceError):
    """The venue refused the request for a reason that resending it unchanged will not fix."""


class InsufficientMargin(Rejected):
    """-2019 / -2018: not enough margin or balance for the order."""


class FilterRejected(Rejected):
    """Price/quantity/notional outside the symbol's exchangeInfo filters."""


class CloseStopExists(Rejected):
    """-4130: "An open stop or take profit order with GTE and closePosition in the direction is
    existing." Only one ``closePosition`` STOP/TAKE_PROFIT per direction may be open (ours, a manual
    one, or an old one whose cancel has not landed); read ``openAlgoOrders`` for the symbol."""


class AlreadyFlat(Rejected):
    """The position a closing order or ``closePosition`` stop needs is not there: -4509 "TIF GTE can
    only be used with open positions" (a stop on a flat symbol), -2022 "ReduceOnly Order is
    rejected" (a reduce-only close of a flat position, or one smaller than the order; with a
    position still open it means a conflict, so the caller confirms by the position read)."""


class AuthFailed(BinanceError):
    """Key, signature or permission refused (-1022, -2014, -2015, HTTP 401)."""


class RateLimited(BinanceError):
    """429 / 418 / -1003 / -1015: back off for ``retry_after_s`` or until ``banned_until_ms``."""

    def __init__(
        self,
        code: int,
        msg: str,
        http_status: int = 0,
        *,
        retry_after_s: float | None = None,
        banned_until_ms: int | None = None,
    ) -> None:
        super().__init__(code, msg, http_status)
        self.retry_after_s = retry_after_s
        self.banned_until_ms = banned_until_ms


class UnknownOutcome(BinanceError):
    """Timeout or 5xx after the request may have reached the venue: query before resending."""


class TimestampRejected(Retryable):
    """-1021 / -5028: timestamp outside recvWindow; re-sync server time, re-sign and retry."""


# Binance code -> error class. Codes not listed fall back to the HTTP status, then to Rejected.
CODE_CLASSES: dict[int, type[BinanceError]] = {
    -1000: UnknownOutcome,  # UNKNOWN: "An unknown error occurred while processing the request."
    -1001: Retryable,  # DISCONNECTED: internal error, try again
    -1003: RateLimited,  # TOO_MANY_REQUESTS / IP banned until
    -1006: UnknownOutcome,  # UNEXPECTED_RESP: execution status unknown
    -1007: UnknownOutcome,  # TIMEOUT: execution status unknown
    -1008: Retryable,  # request throttled by system-level protection
    -1015: RateLimited,  # TOO_MANY_ORDERS
    -1016: Retryable,  # SERVICE_SHUTTING_DOWN
    -1021: TimestampRejected,  # INVALID_TIMESTAMP
    -5028: TimestampRejected,  # ME_RECVWINDOW_REJECT
    -1002: AuthFailed,  # UNAUTHORIZED
    -1022: AuthFailed,  # INVALID_SIGNATURE
    -2014: AuthFailed,  # BAD_API_KEY_FMT
    -2015: AuthFailed,  # REJECTED_MBX_KEY
    -2018: InsufficientMargin,  # BALANCE_NOT_SUFFICIENT
    -2019: InsufficientMargin,  # MARGIN_NOT_SUFFICIEN
    -1013: FilterRejected,  # generic filter failure
    -1111: FilterRejected,  # BAD_PRECISION
    -4003: FilterRejected,  # QTY_LESS_THAN_ZERO
    -4004: FilterRejected,  # QTY_LESS_THAN_MIN_QTY
    -4005: FilterRejected,  # QTY_GREATER_THAN_MAX_QTY
    -4013: FilterRejected,  # PRICE_LESS_THAN_MIN_PRICE
    -4014: FilterRejected,  # PRICE_NOT_INCREASED_BY_TICK_SIZE
    -4016: FilterRejected,  # PRICE_HIGHTER_THAN_MULTIPLIER_UP
    -4023: FilterRejected,  # QTY_NOT_INCREASED_BY_STEP_SIZE
    -4024: FilterRejected,  # PRICE_LOWER_THAN_MULTIPLIER_DOWN
    -4164: FilterRejected,  # MIN_NOTIONAL
    -1102: Rejected,  # MANDATORY_PARAM_EMPTY_OR_MALFORMED
    -1106: Rejected,  # parameter sent when not required (reduceOnly in hedge mode)
    -1115: Rejected,  # INVALID_TIF
    -1116: Rejected,  # INVALID_ORDER_TYPE
    -1117: Rejected,  # INVALID_SIDE
    -1121: Rejected,  # BAD_SYMBOL
    -1125: Rejected,  # INVALID_LISTEN_KEY
    -2010: Rejected,  # NEW_ORDER_REJECTED
    -2011: Rejected,  # CANCEL_REJECTED "Unknown order sent." (live on algo cancels: query its status)
    -2013: Rejected,  # NO_SUCH_ORDER
    -2021: Rejected,  # ORDER_WOULD_IMMEDIATELY_TRIGGER
    -2022: AlreadyFlat,  # REDUCE_ONLY_REJECT: seen live on a flat position (real answers)
    -2024: Rejected,  # POSITION_NOT_SUFFICIENT
    -2025: Rejected,  # MAX_OPEN_ORDER_EXCEEDED
    -4015: Rejected,  # INVALID_CL_ORD_ID_LEN
    -4046: Rejected,  # NO_NEED_TO_CHANGE_MARGIN_TYPE (callers treat it as success)
    -4047: Rejected,  # THERE_EXISTS_OPEN_ORDERS (margin type)
    -4048: Rejected,  # THERE_EXISTS_QUANTITY (margin type)
    -4059: Rejected,  # NO_NEED_TO_CHANGE_POSITION_SIDE
    -4061: Rejected,  # POSITION_SIDE_NOT_MATCH
    -4062: Rejected,  # REDUCE_ONLY_CONFLICT
    -4116: Rejected,  # DUPLICATED_CLIENT_ORDER_ID (callers resolve it by query)
    -4118: Rejected,  # REDUCE_ONLY_MARGIN_CHECK_FAILED
    -4120: Rejected,  # STOP_ORDER_SWITCH_ALGO
    -4131: Rejected,  # MARKET_ORDER_REJECT
    -4142: Rejected,  # STRATEGY_INVALID_TRIGGER_PRICE
    -4161: Rejected,  # ISOLATED_LEVERAGE_REJECT_WITH_POSITION
    -4130: CloseStopExists,  # closePosition stop already open in that direction (live, not on the page)
    -4509: AlreadyFlat,  # TIF GTE only with open positions: closePosition stop on a flat symbol (live)
    -4045: Rejected,  # MAX_STOP_ORDER_EXCEEDED: conditional orders at their cap (200 across symbols)
    -4067: Rejected,  # POSITION_SIDE_CHANGE_EXISTS_OPEN_ORDERS (dual-side switch refused)
    -4068: Rejected,  # POSITION_SIDE_CHANGE_EXISTS_QUANTITY (dual-side switch refused)
    -4183: FilterRejected,  # limit price above the stop multiplier cap
    -4184: FilterRejected,  # limit price below the stop multiplier floor
    -4189: Rejected,  # on the error page (2026); meaning unconfirmed here: a refusal, never resent unchanged
    -4192: Rejected,  # trade forbidden during the account's cooling-off period
    -4210: FilterRejected,  # stop price above the price multiplier cap
    -4211: FilterRejected,  # stop price below the price multiplier floor
    -4531: Rejected,  # position mode shared with coin-margined futures refuses the change (third-party)
    -5021: Rejected,  # FOK_ORDER_REJECT
    -5022: Rejected,  # GTX_ORDER_REJECT
}

# HTTP status -> error class, used when the body carries no known code.
STATUS_CLASSES: dict[int, type[BinanceError]] = {
    401: AuthFailed,
    403: Rejected,  # WAF
    404: Rejected,
    408: UnknownOutcome,  # backend timeout
    418: RateLimited,
    429: RateLimited,
    500: UnknownOutcome,
    502: UnknownOutcome,
    503: UnknownOutcome,
    504: UnknownOutcome,
}

_RETRY: dict[type[BinanceError], bool] = {
    Retryable: True,
    TimestampRejected: True,
    RateLimited: True,  # after the wait it names
    UnknownOutcome: True,  # only with the same client id, after a query (the REST client does this)
    Rejected: False,
    InsufficientMargin: False,
    FilterRejected: False,
    AuthFailed: False,
    BinanceError: False,
}

_CATEGORY: dict[type[BinanceError], RejectCategory] = {
    Retryable: "retry",
    TimestampRejected: "retry",
    UnknownOutcome: "retry",
    RateLimited: "rate_limited",
    AuthFailed: "auth",
    InsufficientMargin: "margin",
    FilterRejected: "filter",
    AlreadyFlat: "flat",
    Rejected: "rejected",
    BinanceError: "rejected",
}

# 5xx texts that say the request failed (not "unknown"): binance-usdm-2026.md, corrections.
FAILED_5XX_TEXTS = ("Service Unavailable", "Internal error; unable to process your request")
_BANNED_UNTIL = re.compile(r"banned until (\d{10,})")
_MUTATING_METHODS = frozenset({"POST", "PUT", "DELETE"})


def _lookup(table: dict[type[BinanceError], T], err: BinanceError) -> T:
    for klass in type(err).__mro__:
        if klass in table:
            return table[klass]
    return table[BinanceError]


def should_retry(err: BinanceError) -> bool:
    """True when sending the same request again (after any wait the error names) may succeed."""
    return _lookup(_RETRY, err)


def category(err: BinanceError) -> RejectCategory:
    """The ``OrderRejected.category`` for this error."""
    return _lookup(_CATEGORY, err)


def banned_until_from_msg(msg: str) -> int | None:
    """Parse the epoch ms out of "Way too many requests; IP banned until 1565123456789."."""
    m = _BANNED_UNTIL.search(msg)
    return int(m.group(1)) if m else None


def from_response(
    http_status: int,
    body: Any,
    *,
    method: str = "GET",
    retry_after_s: float | None = None,
) -> BinanceError:
    """Map an HTTP error answer (parsed JSON body or None) to a typed error.

    A 5xx/408 on a mutating call is ``UnknownOutcome``; on a read it is ``Retryable`` since
    nothing can have changed. 503 "Service Unavailable." means the request was not executed.
    """
    code = 0
    msg = ""
    if isinstance(body, dict):
        raw_code = body.get("code", 0)
        try:
            code = int(raw_code)
        except (TypeError, ValueError):
            code = 0
        msg = str(body.get("msg", ""))
    if not msg:
        msg = f"HTTP {http_status}"
    klass = CODE_CLASSES.get(code) or STATUS_CLASSES.get(http_status)
    if klass is None:
        klass = UnknownOutcome if http_status >= 500 else Rejected
    if http_status in (429, 418):
        klass = RateLimited
    if klass is UnknownOutcome and (
        method.upper() not in _MUTATING_METHODS or any(text in msg for text in FAILED_5XX_TEXTS)
    ):
        klass = Retryable
    if klass is RateLimited:
        banned = banned_until_from_msg(msg)
        return RateLimited(code, msg, http_status, retry_after_s=retry_after_s, banned_until_ms=banned)
    return klass(code, msg, http_status)
