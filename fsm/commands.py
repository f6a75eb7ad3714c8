"""Outputs of the decision core: frozen, flat, imperative.

The runtime carries each command out (REST call, subscription, storage write, alert) and feeds
the outcome back as an event. Client order ids are deterministic (N-13), so a command that is
carried out twice can never create two orders: the venue answers -4116 for the second.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

Side = Literal["BUY", "SELL"]
# Which rung of the ladder an order is: entries, exits, protective stops.
Leg = Literal["ENTRY1", "ENTRY2", "TP", "BE", "CLOSE", "BE_STOP", "MDD"]
OrderType = Literal["LIMIT", "MARKET"]
PositionSide = Literal["SHORT"]  # hedge mode only; one-way orders carry none


@dataclass(frozen=True, slots=True, kw_only=True)
class Command:
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class PrepareOrder(Command):
    """Read position mode, set leverage/margin if ``configure_margin`` (W24/W25), read balances."""

    symbol: str
    leg: Leg
    configure_margin: bool
    leverage: int = 1
    margin_type: Literal["ISOLATED"] = "ISOLATED"


@dataclass(frozen=True, slots=True, kw_only=True)
class PlaceOrder(Command):
    """``POST /fapi/v1/order`` with LIMIT or MARKET only (conditional types go through the algo API)."""

    symbol: str
    client_order_id: str
    leg: Leg
    side: Side
    order_type: OrderType
    quantity: Decimal
    price: Decimal | None = None
    time_in_force: Literal["GTC"] | None = None
    reduce_only: bool | None = None
    position_side: PositionSide | None = None
    attempt: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class PlaceAlgoOrder(Command):
    """``POST /fapi/v1/algoOrder``: a CONDITIONAL STOP_MARKET closing the whole short on mark price."""

    symbol: str
    client_algo_id: str
    leg: Leg
    side: Side
    order_type: Literal["STOP_MARKET"]
    trigger_price: Decimal
    working_type: Literal["MARK_PRICE"] = "MARK_PRICE"
    close_position: bool = True
    position_side: PositionSide | None = None
    attempt: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelOrder(Command):
    symbol: str
    client_order_id: str
    attempt: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelAlgoOrder(Command):
    symbol: str
    client_algo_id: str
    attempt: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class ResolveOrder(Command):
    """Query one order whose placement outcome is unknown, by its client id (answer: ``OrderResolved``)."""

    symbol: str
    client_order_id: str
    is_algo: bool = False
    attempt: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class QueryExchange(Command):
    """Take an exchange snapshot (positions, open orders, open algo orders, position mode)."""

    purpose: Literal["recovery", "requery"]
    symbol: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SubscribeMarket(Command):
    """Mark price @1s (and 3m klines) for these symbols on the ``/market`` stream."""

    symbols: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class UnsubscribeMarket(Command):
    symbols: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class UsePriceSource(Command):
    """Switch the evaluator's price source (W22/W23); ``reason`` is logged (W51-2)."""

    source: Literal["WS", "REST"]
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PersistCursor(Command):
    """Save the channel's last processed message id before acting on the message (N-05)."""

    chat_id: int
    message_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PersistCooldown(Command):
    symbol: str
    received_at_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeVenue(Command):
    """One signed read while a protection mode holds: the API key refused (N-25, ``auth``) or
    rate-limit protection (N-24, ``rate_limit``). Its success counts like any signed success, so a
    transient -2015 or a passing weight peak never locks trading out until a restart."""

    purpose: Literal["auth", "rate_limit"]
    attempt: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class ResumeTelegram(Command):
    """Recovery finished: resume the listener with backfill from the saved cursors (N-28 step 9)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Notify(Command):
    """An operator alert (Discord/Telegram); never blocks trading."""

    kind: str
    text: str
    symbol: str | None = None
    severity: Literal["info", "warning", "critical"] = "info"


@dataclass(frozen=True, slots=True, kw_only=True)
class Log(Command):
    """A structured decision record (W51-1..3): written to the JSON log and the database."""

    kind: str
    symbol: str | None = None
    reason: str = ""
    data: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Transitioned(Command):
    """A state machine moved: recorded in the transition log and the database (every decision is audited)."""

    machine: str
    symbol: str | None
    source: str
    dest: str
    trigger: str
    reason: str = ""


def who_moved(machine: str, symbol: str | None) -> str:
    """A transition's subject as people read it: the symbol (its phase), ``SYMBOL close`` (a machine
    beside the phase: close, tp, add, be, setup, risk, cancels), or the global machine's name."""
    if symbol and machine != "symbol":
        return f"{symbol} {machine}"
    return symbol or machine


ORDER_COMMANDS = (PlaceOrder, PlaceAlgoOrder, CancelOrder, CancelAlgoOrder)
