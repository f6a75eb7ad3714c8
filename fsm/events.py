"""Input facts for the decision core: frozen, flat, past tense.

Every event carries ``now_ms``: the moment the runtime saw it, in epoch milliseconds. The core
never reads a clock; this field is its only notion of time. Prices and quantities are Decimal.
Wire formats (Telegram text, Binance JSON) are turned into these types at the edges
(``telegram_ingest``, ``binance.parse``) and never reach the core.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal

PositionMode = Literal["ONE_WAY", "HEDGE"]
PriceSource = Literal["WS", "REST"]
RankDirection = Literal["UP", "DOWN"]
OrderStatus = Literal["NEW", "PARTIALLY_FILLED", "FILLED", "CANCELED", "EXPIRED", "REJECTED"]
AlgoStatus = Literal["NEW", "TRIGGERING", "TRIGGERED", "FINISHED", "CANCELED", "REJECTED", "EXPIRED"]


# ---------------------------------------------------------------------------------------------
# Parsed Telegram messages (produced by telegram_ingest.grammar, consumed by the engine)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class LeadingMarket:
    """A "leading market" analysis message whose ticker parsed (N-01).

    ``field_error`` is set (a reason code such as ``"funding_missing"`` or ``"category_unknown"``)
    when the ticker parsed but a field did not: the cooldown still applies (W05-1).
    """

    raw_ticker: str
    ticker: str
    symbol: str
    funding_pct: Decimal | None = None
    change_pct: Decimal | None = None
    rank_direction: RankDirection | None = None
    rank: int | None = None
    category: str | None = None
    field_error: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RiskSignal:
    """A risk-management message (N-03): the exit/cancel trigger for ``symbol``."""

    raw_token: str
    symbol: str


@dataclass(frozen=True, slots=True, kw_only=True)
class EntrySignal:
    """An entry-signal message (N-02): recognised and logged, never acted on (W00)."""

    raw_token: str
    symbol: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Unrecognised:
    """Text the grammar could not use; ``reason`` is a stable code (``ticker_invalid``, ...).

    ``kind`` says what the text looked like ("leading", "risk", "entry" or "unknown") so the
    engine can tell a leading message with a bad ticker (W03) from foreign chatter.
    """

    reason: str
    kind: Literal["leading", "risk", "entry", "unknown"] = "unknown"


ParsedMessage = LeadingMarket | RiskSignal | EntrySignal | Unrecognised


# ---------------------------------------------------------------------------------------------
# Venue reference data attached to events by the runtime
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SymbolInfo:
    """exchangeInfo facts for one symbol (PRICE_FILTER, LOT_SIZE, MARKET_LOT_SIZE, MIN_NOTIONAL)."""

    symbol: str
    status: str
    tick_size: Decimal
    min_price: Decimal = Decimal("0")
    max_price: Decimal = Decimal("0")
    step_size: Decimal
    min_qty: Decimal
    max_qty: Decimal = Decimal("0")
    market_step_size: Decimal | None = None
    market_min_qty: Decimal | None = None
    market_max_qty: Decimal | None = None
    min_notional: Decimal = Decimal("0")


@dataclass(frozen=True, slots=True, kw_only=True)
class Candle:
    """One 3-minute kline; ``close_time_ms`` is the inclusive end (open + 180000 - 1)."""

    open_time_ms: int
    close_time_ms: int
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal


@dataclass(frozen=True, slots=True, kw_only=True)
class PositionInfo:
    symbol: str
    amount: Decimal  # signed: negative is short
    entry_price: Decimal
    position_side: Literal["BOTH", "LONG", "SHORT"] = "BOTH"


@dataclass(frozen=True, slots=True, kw_only=True)
class OpenOrderInfo:
    """An open order seen on the venue, ours or manual (regular or algo)."""

    symbol: str
    client_order_id: str
    order_id: int
    side: Literal["BUY", "SELL"]
    order_type: str
    price: Decimal
    orig_qty: Decimal
    executed_qty: Decimal
    reduce_only: bool = False
    close_position: bool = False
    position_side: Literal["BOTH", "LONG", "SHORT"] = "BOTH"
    is_algo: bool = False
    trigger_price: Decimal = Decimal("0")


# ---------------------------------------------------------------------------------------------
# Events
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    now_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageReceived(Event):
    """A Telegram message from one of the configured channels, parsed and enriched.

    ``now_ms`` is our local receipt time (``received_at_local``, N-10). The runtime attaches the
    exchangeInfo entry of the parsed symbol (``None`` when the symbol is unknown) and, for a
    leading message, the closed 3m candles up to receipt (``None`` when they could not be read).
    ``rerun`` marks a risk message re-delivered by recovery from the journal (specs/DECISIONS.md
    D-18): its id is already at or below the cursor, and it is acted on again all the same.
    """

    chat_id: int
    message_id: int
    telegram_date_ms: int
    parsed: ParsedMessage
    exchange_info_ok: bool = True
    symbol_info: SymbolInfo | None = None
    klines: tuple[Candle, ...] | None = None
    rerun: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class MarkPriceTick(Event):
    """A mark price from the WS stream or the REST premiumIndex fallback.

    ``event_time_ms`` is the venue's own time for the price (WS ``E`` / REST ``time``).
    """

    symbol: str
    price: Decimal
    event_time_ms: int
    source: PriceSource = "WS"


@dataclass(frozen=True, slots=True, kw_only=True)
class RestPriceFailed(Event):
    """The REST premiumIndex poll failed (any cause); feeds the stale-price decision (N-22)."""

    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class WsStatusChanged(Event):
    """The market stream connected or dropped; ``reason`` feeds the W51-2 log."""

    connected: bool
    reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Tick(Event):
    """The 1-second evaluation loop (0.1% triggers, timers, staleness). Also sent at deadlines."""


@dataclass(frozen=True, slots=True, kw_only=True)
class OrderPrepared(Event):
    """Outcome of PrepareOrder: position mode read, leverage/margin set (W24..W26), balance read."""

    symbol: str
    leg: str
    ok: bool
    position_mode: PositionMode | None = None
    wallet_balance: Decimal = Decimal("0")
    available_balance: Decimal = Decimal("0")
    error_code: int | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class OrderAccepted(Event):
    """The venue accepted a regular order (REST answer, or found by query after an unknown outcome)."""

    symbol: str
    client_order_id: str
    order_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class OrderRejected(Event):
    """The venue refused an order; ``retryable`` comes from ``binance.errors.should_retry``.
    ``retry_after_ms`` is how long the venue asked us to wait before sending again (a 429's
    Retry-After, a 418 ban), 0 when it did not say."""

    symbol: str
    client_order_id: str
    code: int
    message: str
    retryable: bool
    # "flat": the venue says the position a closing order needs is not there (-4509, -2022); the
    # venue's position, read at once, comes just before this event.
    category: Literal["retry", "rejected", "rate_limited", "auth", "margin", "filter", "flat"] = "rejected"
    retry_after_ms: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class OrderOutcomeUnknown(Event):
    """An order request whose fate the venue did not tell (a timeout, HTTP 408/-1007, a 5xx "unknown
    error", a 200 without a usable body). The order may exist: it is never a rejection and never
    resent blindly. It is resolved by a query made once the request can no longer execute
    (``resolve_after_ms``: its timestamp + recvWindow, with a margin for clock skew)."""

    symbol: str
    client_order_id: str
    is_algo: bool = False
    resolve_after_ms: int
    reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class OrderResolved(Event):
    """The answer to ``ResolveOrder``. ``found``: the venue knows the order (its fills and status
    were fed just before as ``OrderUpdated``/``AlgoOrderUpdated``; ``status`` is the venue's);
    ``absent``: the venue does not know the id, asked after the request could no longer execute, so
    it never will; ``failed``: the query itself failed (asked again later)."""

    symbol: str
    client_order_id: str
    is_algo: bool = False
    outcome: Literal["found", "absent", "failed"]
    order_id: int = 0
    status: str = ""
    message: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class AlgoOrderAccepted(Event):
    symbol: str
    client_algo_id: str
    algo_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class OrderUpdated(Event):
    """ORDER_TRADE_UPDATE for any order of the account (ours or manual).

    ``last_qty``/``last_price`` describe this event's fill (zero when none); ``trade_id``
    de-duplicates fills (0 when no trade).
    """

    symbol: str
    client_order_id: str
    order_id: int
    side: Literal["BUY", "SELL"]
    order_type: str
    status: OrderStatus
    price: Decimal
    orig_qty: Decimal
    cum_qty: Decimal
    last_qty: Decimal = Decimal("0")
    last_price: Decimal = Decimal("0")
    avg_price: Decimal = Decimal("0")
    trade_id: int = 0
    reduce_only: bool = False
    close_position: bool = False
    position_side: Literal["BOTH", "LONG", "SHORT"] = "BOTH"
    realized_pnl: Decimal = Decimal("0")
    commission: Decimal = Decimal("0")


@dataclass(frozen=True, slots=True, kw_only=True)
class AlgoOrderUpdated(Event):
    """ALGO_UPDATE: a conditional order changed; ``actual_order_id`` is the triggered child (``ai``)."""

    symbol: str
    client_algo_id: str
    algo_id: int
    status: AlgoStatus
    actual_order_id: int = 0
    reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelResult(Event):
    """Outcome of CancelOrder / CancelAlgoOrder. ``gone`` is true for -2011/-2013 (already closed)."""

    symbol: str
    client_order_id: str
    ok: bool
    gone: bool = False
    code: int | None = None
    message: str = ""
    is_algo: bool = False
    executed_qty: Decimal | None = None  # the cancel answer's executedQty: a fill may have raced it
    retry_after_ms: int = 0  # refused by the rate limits: the wait before it may go again


@dataclass(frozen=True, slots=True, kw_only=True)
class PositionChanged(Event):
    """ACCOUNT_UPDATE or a positionRisk read for one symbol (signed amount: short is negative).

    ``venue_time_ms`` is the venue's transaction time (ACCOUNT_UPDATE ``T``), 0 when unknown (a
    REST read of the current position). An update older than one already applied for the symbol
    was delivered out of order and is ignored.
    """

    symbol: str
    amount: Decimal
    entry_price: Decimal
    position_side: Literal["BOTH", "LONG", "SHORT"] = "BOTH"
    venue_time_ms: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class BalanceChanged(Event):
    wallet_balance: Decimal
    available_balance: Decimal | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class FundingFee(Event):
    """A funding settlement paid (negative) or received (positive) on a position: ACCOUNT_UPDATE
    with reason FUNDING_FEE (``bc``). ``symbol`` is ``a.S`` or the one position pushed with it (an
    isolated position); "" when the push does not say (cross margin, before 2026-08)."""

    symbol: str
    asset: str
    amount: Decimal
    venue_time_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PositionModeChanged(Event):
    """ACCOUNT_CONFIG_UPDATE or a read of /fapi/v1/positionSide/dual (None: the read failed)."""

    mode: PositionMode | None


@dataclass(frozen=True, slots=True, kw_only=True)
class ExchangeSnapshot(Event):
    """Everything the venue says about the account: recovery (N-28) and R16 re-queries.

    ``symbols`` holds the exchangeInfo entries of every symbol with a position or open order.
    ``complete`` is false when one of the reads failed (the snapshot is then not trusted).
    """

    position_mode: PositionMode | None
    wallet_balance: Decimal
    available_balance: Decimal
    positions: tuple[PositionInfo, ...] = ()
    open_orders: tuple[OpenOrderInfo, ...] = ()
    symbols: tuple[SymbolInfo, ...] = ()
    complete: bool = True
    purpose: Literal["recovery", "requery"] = "recovery"
    symbol: str | None = None  # the one symbol read (an R16 re-query of one symbol); None: the account


@dataclass(frozen=True, slots=True, kw_only=True)
class RecoveryStarted(Event):
    """The daemon (re)started: saved cursors and cooldowns come back (N-28 steps 1-2)."""

    cursors: tuple[tuple[int, int], ...] = ()
    cooldowns: tuple[tuple[str, int], ...] = ()
    # (symbol, signal message id, state) of every symbol the last saved snapshot was managing: the
    # exchange cannot tell our position from a manual one when none of our orders is open.
    managed: tuple[tuple[str, int, str], ...] = ()
    # (symbol, leg, last generation) from the same snapshot: a new order never reuses the client id
    # of one that already filled before the restart (the venue would answer -4116).
    generations: tuple[tuple[str, str, int], ...] = ()
    # (symbol, reason) of every symbol whose market close was decided and not yet done: a restart
    # must carry the decision out, never forget it (the snapshot keeps it; the exchange cannot).
    closing: tuple[tuple[str, str], ...] = ()
    # (symbol, position we held) from the same snapshot: a larger position on the exchange with no
    # scale-in open means the scale-in filled while no daemon watched (PHASE2, N-17).
    held: tuple[tuple[str, Decimal], ...] = ()
    # Symbols under R06's protection in the same snapshot (no scale-in, no TP, whatever the venue holds).
    protected: tuple[str, ...] = ()
    # G06 across a restart (D-23): the settings the last run traded with, as (name, text) changes to
    # the configured strategy; they run until no symbol is active (config.yaml's own wait as pending).
    running_settings: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class VenueErrorObserved(Event):
    """A REST failure outside an order's own outcome (rate limit, auth, timestamp): N-23..N-25."""

    category: Literal["rate_limited", "auth", "timestamp", "other"]
    code: int
    message: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class VenueCallSucceeded(Event):
    """A REST call succeeded: counts towards leaving rate-limit protection (N-24); a signed one also
    proves the API key works again (N-25)."""

    signed: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class SettingsChangeRequested(Event):
    """A config reload proposes new strategy settings (N-26 settings lock)."""

    changes: tuple[tuple[str, str], ...] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True, kw_only=True)
class PauseRequested(Event):
    """Operator pause/resume: while paused no new entries; exits keep working."""

    paused: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class FlattenStarted(Event):
    """The operator's ``flatten`` is about to cancel every order and close every position on the
    venue itself (D-22, D-63): what the engine holds is the operator's to close until
    ``FlattenFinished``. No exit is armed again, no stop placed again, no close of ours goes out."""

    request_id: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class FlattenFinished(Event):
    """What the operator's flatten did: the client ids it cancelled; each market close of a short it
    placed as (symbol, client id, executed quantity, average price; 0 when not known); and each
    close whose outcome is unknown as (symbol, client id, when a query can decide it). A flatten
    that failed before acting lists nothing."""

    request_id: str = ""
    cancelled: tuple[str, ...] = ()
    closed: tuple[tuple[str, str, Decimal, Decimal], ...] = ()
    unknown: tuple[tuple[str, str, int], ...] = ()
