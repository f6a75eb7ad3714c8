"""The order lifecycle as a table: every status change of an order of ours goes through ``apply``.

Two kinds of rows:

- **The engine's own steps** (``ORDER_STEPS``): sending, an answer lost, a cancel sent, a query's
  verdict. Each names the statuses it may start from; a step from anywhere else is a bug in the
  engine and raises ``IllegalOrderStep`` (``Engine.handle``'s failure containment then alerts, locks
  entries and re-reads the exchange: D-32), never a silent overwrite.
- **The venue's word** (``report``): NEW, PARTIALLY_FILLED, FILLED, CANCELED, EXPIRED, REJECTED as the
  user stream or a query tells it. It only moves an order forward (``REPORT_RANK``): a late NEW after
  FILLED, or after our cancel went out, changes nothing; a terminal status is final.

UNKNOWN (sent, outcome not told) counts as open: the order may be live on the venue, so it holds its
leg, the entry lock and the symbol, and leaves UNKNOWN only by a query made after the request could no
longer execute (``found`` / ``absent_*``) or by the venue's own report (D-26).

A fill is booked by its cumulative quantity (``book``): a duplicate or an older update books nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Final, Literal, get_args

from fsm import events
from fsm.commands import Leg, Side

ZERO = Decimal(0)

OrderStatus = Literal[
    "PENDING_NEW",  # the command is out, no answer yet (or a resend waits for its time)
    "UNKNOWN",  # sent, the answer was lost: it may be live on the venue
    "NEW",
    "PARTIALLY_FILLED",
    "PENDING_CANCEL",  # our cancel is out, its answer not yet in
    "FILLED",
    "CANCELED",
    "REJECTED",
    "EXPIRED",
]
ORDER_STATUSES: Final = frozenset(get_args(OrderStatus))
OPEN_STATUSES: Final = frozenset({"PENDING_NEW", "UNKNOWN", "NEW", "PARTIALLY_FILLED", "PENDING_CANCEL"})
TERMINAL_STATUSES: Final = frozenset({"FILLED", "CANCELED", "EXPIRED", "REJECTED"})
# Statuses written by earlier versions of the engine, as their snapshots hold them.
RENAMED: Final = {"PENDING": "PENDING_NEW", "CANCELING": "PENDING_CANCEL"}

_ANY: Final = ORDER_STATUSES
_LIVE: Final = frozenset({"NEW", "PARTIALLY_FILLED", "PENDING_CANCEL"})
_MAY_BE_LIVE: Final = _LIVE | {"UNKNOWN"}


@dataclass(frozen=True, slots=True)
class OrderStep:
    """One of the engine's own steps: from ``sources`` to ``dest``; ``why`` says when it happens."""

    name: str
    sources: frozenset[str]
    dest: OrderStatus
    why: str


ORDER_STEPS: Final[tuple[OrderStep, ...]] = (
    OrderStep("resend", frozenset({"PENDING_NEW", "UNKNOWN", "REJECTED"}), "PENDING_NEW",
              "the same client id again after a retryable refusal, or after a query proved it absent"),
    OrderStep("answer_lost", frozenset({"PENDING_NEW"}), "UNKNOWN",
              "timeout, 408/-1007, 5xx 'unknown', 200 without a usable body (D-26)"),
    OrderStep("refused", frozenset({"PENDING_NEW", "UNKNOWN", "PENDING_CANCEL"}), "REJECTED",
              "the venue refused the request (or a query proved an unknown one absent, attempts spent);"
              " from PENDING_CANCEL when our cancel went out while the request was still unanswered"),
    OrderStep("found", frozenset({"UNKNOWN"}), "NEW", "a query after the request's recvWindow found it"),
    OrderStep("absent_while_closing", frozenset({"UNKNOWN"}), "CANCELED",
              "proved absent while the symbol closes: nothing to cancel, nothing to resend"),
    OrderStep("cancel_sent", frozenset({"PENDING_NEW", "NEW", "PARTIALLY_FILLED", "PENDING_CANCEL"}),
              "PENDING_CANCEL", "our cancel went out (again, after a failed one: R15)"),
    OrderStep("cancel_done", _LIVE | {"PENDING_NEW", "UNKNOWN"}, "CANCELED",
              "the cancel's answer: it is gone (from UNKNOWN only when the venue cancelled it: it existed)"),
    OrderStep("cancel_overtook", frozenset({"PENDING_CANCEL"}), "PENDING_NEW",
              "the cancel found nothing while the request was still unanswered: the request's own"
              " answer decides (cancelled again if the venue took it)"),
    OrderStep("cancel_too_late", _LIVE | {"PENDING_NEW", "UNKNOWN"}, "FILLED",
              "the cancel's answer: it had filled completely first"),
    OrderStep("gone_unexplained", _LIVE | {"PENDING_NEW"}, "UNKNOWN",
              "the cancel said 'already gone' without how much traded; a query tells (R11, D-28)"),
    OrderStep("listed_open", _ANY, "NEW",
              "the venue's open-order list has it: its cancel goes out again (R16)"),
    OrderStep("not_listed", OPEN_STATUSES, "CANCELED", "the venue's complete open-order list lacks it (R16)"),
    OrderStep("traded_in_full", frozenset({"CANCELED"}), "FILLED",
              "a cancelled order's fills add up to its whole quantity (a fill raced the cancel)"),
    OrderStep("stop_filled", _ANY - {"FILLED"}, "FILLED",
              "a triggered stop's market child filled, or the stop FINISHED on a flat position"),
)  # fmt: skip
STEPS: Final = {step.name: step for step in ORDER_STEPS}

# The venue's word moves an order forward only; terminal statuses are final.
REPORT_RANK: Final[dict[str, int]] = {
    "PENDING_NEW": 0,
    "UNKNOWN": 0,
    "NEW": 1,
    "PENDING_CANCEL": 2,
    "PARTIALLY_FILLED": 2,
}


# LIMIT, MARKET, STOP_MARKET (algo); EXTERNAL for a fill booked from the venue's position.
OrderKind = Literal["LIMIT", "MARKET", "STOP_MARKET", "EXTERNAL"]
_VENUE_KINDS: Final[dict[str, OrderKind]] = {
    "LIMIT": "LIMIT",
    "MARKET": "MARKET",
    "STOP_MARKET": "STOP_MARKET",
}


def order_kind(venue_type: str) -> OrderKind:
    """Our kind for an order type the venue reports; a type we never send (an order adopted from
    the venue with our client id but placed by hand) is booked as EXTERNAL: never resent."""
    return _VENUE_KINDS.get(venue_type, "EXTERNAL")


class IllegalOrderStep(RuntimeError):
    """The engine tried a step its order table does not allow from the order's status."""


@dataclass(eq=False, kw_only=True)
class OrderTrack:
    """One order of ours, from the command that created it to its terminal status."""

    cid: str
    leg: Leg
    side: Side
    kind: OrderKind
    price: Decimal
    qty: Decimal
    status: str = "PENDING_NEW"
    order_id: int = 0
    filled: Decimal = ZERO
    avg_price: Decimal = ZERO
    attempts: int = 1
    cancel_attempts: int = 0
    last_fill_ms: int = 0
    realized_pnl: Decimal = ZERO
    commission: Decimal = ZERO
    retry_at_ms: int = 0  # a resend the venue asked us to delay (429 Retry-After); 0 when none
    cancel_at_ms: int = 0  # a cancel the rate limits held back goes again then (D-52); 0 when none
    resolve_at_ms: int = 0  # UNKNOWN: when its resolving query goes out; 0 while one is in flight
    resolve_attempts: int = 0
    cancel_wanted: bool = False  # we decided to cancel it (even while its outcome was unknown)

    def __post_init__(self) -> None:
        self.status = RENAMED.get(self.status, self.status)  # a snapshot from an earlier engine

    @property
    def is_algo(self) -> bool:
        return self.kind == "STOP_MARKET"

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES

    @property
    def request_unanswered(self) -> bool:
        """Sent, no answer yet, and the venue has told nothing of it: that the venue does not know it
        ("unknown order", absent from its open orders) proves nothing yet. (A lost answer while our
        cancel was out leaves ``resolve_at_ms`` set: that order is resolved by a query instead.)"""
        return (
            self.status in ("PENDING_NEW", "PENDING_CANCEL")
            and self.order_id == 0
            and self.retry_at_ms == 0
            and self.resolve_at_ms == 0
        )

    @property
    def may_be_live(self) -> bool:
        """It may be working on the venue: told live, of unknown outcome, our cancel unanswered, or
        its request still unanswered (a resend waiting for its time is not: it was refused)."""
        return self.status in _MAY_BE_LIVE or (self.status == "PENDING_NEW" and self.request_unanswered)

    @property
    def cancel_decided(self) -> bool:
        """We decided to cancel it (a cancel went out, one the rate limits hold back waits, or one
        deferred while its outcome is unknown)."""
        return self.cancel_wanted or self.cancel_attempts > 0 or self.cancel_at_ms > 0

    @property
    def cancel_overtaken(self) -> bool:
        """Cancelled while its request was unanswered, and the cancel found nothing
        (``cancel_overtook``): it waits for that answer, and is cancelled again if the venue took it."""
        return self.status == "PENDING_NEW" and self.cancel_attempts > 0 and self.retry_at_ms == 0

    def apply(self, step: str) -> None:
        """One of the engine's steps (``ORDER_STEPS``); raises ``IllegalOrderStep`` from a status the
        table does not list."""
        row = STEPS[step]
        if self.status not in row.sources:
            raise IllegalOrderStep(f"order {self.cid}: {step} from {self.status}")
        self.status = row.dest

    def report(self, status: events.OrderStatus) -> bool:
        """The venue's word: forward only (a late NEW after FILLED changes nothing). Returns whether
        the status changed."""
        if self.status in TERMINAL_STATUSES:
            return False
        if status in TERMINAL_STATUSES or REPORT_RANK[status] >= REPORT_RANK[self.status]:
            changed = status != self.status
            self.status = status
            return changed
        return False

    def book(self, event: events.OrderUpdated) -> Decimal:
        """Book an update's fill by its cumulative quantity (a duplicate or an older update books
        nothing); returns the quantity newly filled."""
        delta = event.cum_qty - self.filled
        if delta > 0:
            self.filled = event.cum_qty
            self.avg_price = event.avg_price if event.avg_price > 0 else event.last_price
            self.last_fill_ms = event.now_ms
            self.realized_pnl += event.realized_pnl
            self.commission += event.commission
        return delta
