"""The trade ledger: what the daemon's fills add up to, read-only on its database.

A trade is one position, from its first entry fill to flat, grouped by (signal message id, symbol):
our client order ids (``sf{message_id}-{LEG}{gen}-{SYMBOL}``, ``fsm.rules``) name the signal. A
fill whose id is not ours (a triggered stop's child, a close made by hand on the venue) belongs to
the trade open on its symbol at that moment; with none open it is a trade of its own (message id
null). The close reason is the reason of the symbol's ``EXITING -> IDLE`` transition that follows
the flattening fill.

Realised PnL is Binance's per-trade ``rp`` and fees its ``n`` (commission, USDT), summed over every
fill; funding (``funding`` rows: ACCOUNT_UPDATE FUNDING_FEE, or a backtest's settlements) belongs to
the trade open on its symbol at its time. Net is PnL - fees + funding. The totals and today's
figures (UTC day) never depend on how fills were grouped, and count funding that no trade claims.

``build_trades`` and ``totals`` are pure; ``read_ledger`` reads the rows the store writes from an
open connection (the board reads inside its one snapshot transaction); ``open_readonly`` opens a
database without ever creating one.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from fsm import rules

ZERO = Decimal(0)
MONEY = Decimal("0.0001")
DAY_MS = 86_400_000
ENTRY_SIDE = "SELL"  # short only: entries sell, exits buy
EXTRA_PLACES = 4  # an average keeps the prices' decimals plus these
# Decisions that mean a signal (or its second entry) was not traded, and why (the decision's reason).
SKIPPED_KINDS = (
    "leading_rejected",
    "leading_ignored",
    "leading_dropped",
    "symbol_mapping",
    "order_blocked",
    "second_entry_skipped",
)


class LedgerError(RuntimeError):
    """The database cannot be read; the message says which and why (one line)."""


class NoDatabase(LedgerError):
    """There is no database at the path (nothing is ever created)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Fill:
    """One row of ``fills`` with what ``orders`` knows of its order."""

    client_order_id: str
    symbol: str
    qty: Decimal
    price: Decimal
    realized_pnl: Decimal
    commission: Decimal
    now_ms: int
    leg: str  # ENTRY1, ENTRY2, TP, BE, BE_STOP, MDD, CLOSE or EXTERNAL
    side: str  # SELL (entry) or BUY (exit)
    position_side: str = "BOTH"  # LONG: a hedge-mode long leg, never ours (its own trade)


@dataclass(frozen=True, slots=True, kw_only=True)
class Funding:
    """One funding settlement on a symbol: negative paid, positive received ("" symbol: unknown)."""

    symbol: str
    amount: Decimal
    at_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Trade:
    message_id: int | None
    symbol: str
    opened_ms: int
    closed_ms: int | None
    legs: tuple[str, ...]  # legs that filled, in the order they first filled
    entry_qty: Decimal
    exit_qty: Decimal
    entry_avg: Decimal | None
    exit_avg: Decimal | None
    realized_pnl: Decimal
    fees: Decimal
    close_reason: str | None
    price_places: int = 0
    funding: Decimal = ZERO  # paid (negative) or received while it was open
    fills: tuple[Fill, ...] = field(default=(), compare=False, repr=False)  # in booking order

    @property
    def net(self) -> Decimal:
        return self.realized_pnl - self.fees + self.funding

    @property
    def status(self) -> str:
        return "open" if self.closed_ms is None else "closed"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: Decimals as text (money to 0.0001), times as ISO UTC."""
        return {
            "message_id": self.message_id,
            "symbol": self.symbol,
            "status": self.status,
            "opened": iso_utc(self.opened_ms),
            "closed": iso_utc(self.closed_ms) if self.closed_ms is not None else None,
            "legs": list(self.legs),
            "entry_avg": _average(self.entry_avg, self.price_places),
            "exit_avg": _average(self.exit_avg, self.price_places),
            "quantity": _plain(self.entry_qty),
            "exit_quantity": _plain(self.exit_qty),
            "realized_pnl": money(self.realized_pnl),
            "fees": money(self.fees),
            "funding": money(self.funding),
            "net": money(self.net),
            "close_reason": self.close_reason,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Totals:
    day: str  # the UTC day "today" refers to, YYYY-MM-DD
    realized_pnl: Decimal
    fees: Decimal
    today_realized_pnl: Decimal
    today_fees: Decimal
    funding: Decimal = ZERO
    today_funding: Decimal = ZERO

    @property
    def net(self) -> Decimal:
        return self.realized_pnl - self.fees + self.funding

    @property
    def today_net(self) -> Decimal:
        return self.today_realized_pnl - self.today_fees + self.today_funding

    def as_dict(self) -> dict[str, Any]:
        return {
            "day": self.day,
            "today": {
                "realized_pnl": money(self.today_realized_pnl),
                "fees": money(self.today_fees),
                "funding": money(self.today_funding),
                "net": money(self.today_net),
            },
            "total": {
                "realized_pnl": money(self.realized_pnl),
                "fees": money(self.fees),
                "funding": money(self.funding),
                "net": money(self.net),
            },
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Ledger:
    fills: list[Fill] = field(default_factory=list)
    trades: list[Trade] = field(default_factory=list)
    funding: list[Funding] = field(default_factory=list)

    def totals(self, now_ms: int) -> Totals:
        return totals(self.fills, now_ms, self.funding)


# ---------------------------------------------------------------------------------------------
# Pure computation
# ---------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class _Open:
    message_id: int | None
    symbol: str
    opened_ms: int
    closed_ms: int | None = None
    legs: list[str] = field(default_factory=list)
    entry_qty: Decimal = ZERO
    entry_cost: Decimal = ZERO
    exit_qty: Decimal = ZERO
    exit_cost: Decimal = ZERO
    pnl: Decimal = ZERO
    fees: Decimal = ZERO
    places: int = 0
    fills: list[Fill] = field(default_factory=list)


def build_trades(
    fills: Iterable[Fill], closings: Sequence[tuple[int, str, str]] = (), funding: Iterable[Funding] = ()
) -> list[Trade]:
    """Trades from fills in booking order; ``closings`` are the ``(now_ms, symbol, reason)`` of the
    symbol machine's ``EXITING -> IDLE`` transitions in the order they were recorded; each funding
    payment goes to the trade open on its symbol at its time (none: it stays in the totals only)."""
    trades: dict[tuple[Any, ...], _Open] = {}
    open_on: dict[str, tuple[Any, ...]] = {}
    for fill in fills:
        long_leg = fill.position_side == "LONG"
        parsed = None if long_leg else rules.parse_client_order_id(fill.client_order_id)
        book = f"{fill.symbol}:LONG" if long_leg else fill.symbol  # a long leg is its own position
        key: tuple[Any, ...]
        if parsed is not None:
            key = (parsed.message_id, fill.symbol)
        else:
            key = open_on.get(book) or (None, book, fill.now_ms, fill.client_order_id)
        trade = trades.get(key)
        if trade is None:
            trade = trades[key] = _Open(
                message_id=parsed.message_id if parsed is not None else None,
                symbol=fill.symbol,
                opened_ms=fill.now_ms,
            )
        trade.fills.append(fill)
        if fill.leg not in trade.legs:
            trade.legs.append(fill.leg)
        if (fill.side == ENTRY_SIDE) != long_leg:  # a long leg opens with a BUY
            trade.entry_qty += fill.qty
            trade.entry_cost += fill.qty * fill.price
        else:
            trade.exit_qty += fill.qty
            trade.exit_cost += fill.qty * fill.price
        trade.pnl += fill.realized_pnl
        trade.fees += fill.commission
        trade.places = max(trade.places, _places(fill.price))
        if trade.exit_qty >= trade.entry_qty:  # flat (an exit with no entry of ours: nothing stays open)
            trade.closed_ms = fill.now_ms
            if open_on.get(book) == key:
                del open_on[book]
        else:
            trade.closed_ms = None
            open_on[book] = key
    reasons = _close_reasons(list(trades.values()), closings)
    return [
        Trade(
            message_id=t.message_id,
            symbol=t.symbol,
            opened_ms=t.opened_ms,
            closed_ms=t.closed_ms,
            legs=tuple(t.legs),
            entry_qty=t.entry_qty,
            exit_qty=t.exit_qty,
            entry_avg=t.entry_cost / t.entry_qty if t.entry_qty > 0 else None,
            exit_avg=t.exit_cost / t.exit_qty if t.exit_qty > 0 else None,
            realized_pnl=t.pnl,
            fees=t.fees,
            close_reason=reasons.get(id(t)) if t.closed_ms is not None else None,
            price_places=t.places,
            funding=_funding_of(t, funding),
            fills=tuple(t.fills),
        )
        for t in trades.values()
    ]


def _funding_of(trade: _Open, funding: Iterable[Funding]) -> Decimal:
    end = trade.closed_ms if trade.closed_ms is not None else None
    return sum(
        (
            f.amount
            for f in funding
            if f.symbol == trade.symbol and trade.opened_ms <= f.at_ms and (end is None or f.at_ms <= end)
        ),
        ZERO,
    )


def _close_reasons(trades: list[_Open], closings: Sequence[tuple[int, str, str]]) -> dict[int, str]:
    """Each closed trade takes the first unused ``EXITING -> IDLE`` of its symbol at or after its
    flattening fill, or else the last unused one since it opened (the machine may settle first)."""
    used: set[int] = set()
    out: dict[int, str] = {}
    for trade in sorted((t for t in trades if t.closed_ms is not None), key=lambda t: t.closed_ms or 0):
        closed = trade.closed_ms or 0
        candidates = [
            i for i, (at, symbol, _) in enumerate(closings) if symbol == trade.symbol and i not in used
        ]
        after = [i for i in candidates if closings[i][0] >= closed]
        before = [i for i in candidates if trade.opened_ms <= closings[i][0] < closed]
        chosen = after[0] if after else before[-1] if before else None
        if chosen is None:
            out[id(trade)] = "external" if trade.message_id is None else "flat"
            continue
        used.add(chosen)
        out[id(trade)] = closings[chosen][2]
    return out


def totals(fills: Iterable[Fill], now_ms: int, funding: Iterable[Funding] = ()) -> Totals:
    """Realised PnL, fees and funding in total and on the UTC day of ``now_ms``."""
    start = now_ms - now_ms % DAY_MS
    pnl = fees = today_pnl = today_fees = paid = today_paid = ZERO
    for f in funding:
        paid += f.amount
        if start <= f.at_ms < start + DAY_MS:
            today_paid += f.amount
    for fill in fills:
        pnl += fill.realized_pnl
        fees += fill.commission
        if start <= fill.now_ms < start + DAY_MS:
            today_pnl += fill.realized_pnl
            today_fees += fill.commission
    return Totals(
        day=datetime.fromtimestamp(start / 1000, tz=UTC).strftime("%Y-%m-%d"),
        realized_pnl=pnl,
        fees=fees,
        today_realized_pnl=today_pnl,
        today_fees=today_fees,
        funding=paid,
        today_funding=today_paid,
    )


# ---------------------------------------------------------------------------------------------
# Reading the store's rows
# ---------------------------------------------------------------------------------------------


def open_readonly(path: str | Path, *, timeout_s: float = 1.0) -> sqlite3.Connection:
    """The database opened read-only (``mode=ro``: a missing file is never created)."""
    target = Path(path)
    if not target.is_file():
        raise NoDatabase(f"no database at {path}")
    try:
        conn = sqlite3.connect(f"{target.resolve().as_uri()}?mode=ro", uri=True, timeout=timeout_s)
        conn.execute("PRAGMA query_only = 1")
    except sqlite3.Error as exc:
        raise LedgerError(f"cannot open {path}: {exc}") from exc
    return conn


def read_ledger(conn: sqlite3.Connection, *, until_ms: int | None = None) -> Ledger:
    """Fills and trades from an open connection (raises ``sqlite3.Error`` on a foreign file); with
    ``until_ms``, only what was recorded up to that time (the board's frame)."""
    upto = "" if until_ms is None else f" WHERE now_ms <= {int(until_ms)}"
    tables = _tables(conn)
    if "fills" not in tables:
        return Ledger()
    sides: dict[str, tuple[str, str]] = {}
    if "orders" in tables:
        for cid, leg, side in conn.execute("SELECT client_order_id, leg, side FROM orders"):
            sides[str(cid)] = (str(leg or ""), str(side or ""))
    fills: list[Fill] = []
    has_side = "position_side" in {row[1] for row in conn.execute("PRAGMA table_info(fills)")}
    rows = conn.execute(
        "SELECT client_order_id, symbol, qty, price, realized_pnl, commission, now_ms, "
        f"{'position_side' if has_side else 'NULL'} FROM fills{upto} ORDER BY now_ms, rowid"
    )
    for cid, symbol, qty, price, pnl, commission, now_ms, position_side in rows:
        cid = str(cid or "")
        leg, side = sides.get(cid, ("", ""))
        parsed = rules.parse_client_order_id(cid)
        if not leg:
            leg = parsed.leg if parsed is not None else "EXTERNAL"
        if side not in ("BUY", "SELL"):
            side = ENTRY_SIDE if leg in ("ENTRY1", "ENTRY2") else "BUY"
        fills.append(
            Fill(
                client_order_id=cid,
                symbol=str(symbol or ""),
                qty=_dec(qty),
                price=_dec(price),
                realized_pnl=_dec(pnl),
                commission=_dec(commission),
                now_ms=_time_of(now_ms, cid),
                leg=leg,
                side=side,
                position_side=str(position_side or "BOTH"),
            )
        )
    closings: list[tuple[int, str, str]] = []
    if "transitions" in tables:
        closings = [
            (_time_of(at, "a transition"), str(symbol or ""), str(reason or ""))
            for at, symbol, reason in conn.execute(
                "SELECT now_ms, symbol, reason FROM transitions WHERE machine = 'symbol' "
                f"AND source = 'EXITING' AND dest = 'IDLE'{upto.replace(' WHERE', ' AND')} ORDER BY id"
            )
        ]
    funding: list[Funding] = []
    if "funding" in tables:
        funding = [
            Funding(symbol=str(symbol or ""), amount=_dec(amount), at_ms=_time_of(at, "a funding row"))
            for symbol, amount, at in conn.execute(
                f"SELECT symbol, amount, COALESCE(venue_time_ms, now_ms) FROM funding{upto} ORDER BY id"
            )
        ]
    return Ledger(fills=fills, trades=build_trades(fills, closings, funding), funding=funding)


def skipped_signals(
    conn: sqlite3.Connection, limit: int = 10, *, until_ms: int | None = None
) -> list[dict[str, Any]]:
    """The last ``limit`` signals (or second entries) not traded, newest first: time, symbol, what
    was decided (the decision's kind) and why."""
    if "decisions" not in _tables(conn):
        return []
    marks = ", ".join("?" for _ in SKIPPED_KINDS)
    upto = "" if until_ms is None else f" AND now_ms <= {int(until_ms)}"
    rows = conn.execute(
        f"SELECT now_ms, kind, symbol, reason, data FROM decisions WHERE kind IN ({marks}) "
        f"AND NOT (kind = 'symbol_mapping' AND reason = 'ok'){upto} ORDER BY id DESC LIMIT ?",
        [*SKIPPED_KINDS, int(limit)],
    ).fetchall()
    out: list[dict[str, Any]] = []
    for now_ms, kind, symbol, reason, data in rows:
        try:
            details = json.loads(data) if data else {}
        except ValueError:
            details = {}
        out.append(
            {
                "at": iso_utc(int(now_ms or 0)),
                "now_ms": int(now_ms or 0),
                "symbol": symbol,
                "kind": kind,
                "reason": reason,
                "details": details if isinstance(details, dict) else {},
            }
        )
    return out


def cooldown_rows(conn: sqlite3.Connection) -> dict[str, int]:
    """``symbol -> received_at_ms`` of the cooldowns table (the daemon keeps it current)."""
    if "cooldowns" not in _tables(conn):
        return {}
    return {str(s): int(t) for s, t in conn.execute("SELECT symbol, received_at_ms FROM cooldowns")}


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {str(r[0]) for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


# ---------------------------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------------------------


def iso_utc(ms: int) -> str:
    """``2026-12-04T05:25:46Z``; the daemon's clock in milliseconds since the epoch."""
    try:
        moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return "unknown"
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def money(value: Decimal) -> str:
    """USDT to 0.0001 (what the alerts and the demo summary show)."""
    rounded = value.quantize(MONEY, rounding=ROUND_HALF_UP)
    return _plain(rounded if rounded else abs(rounded))  # never "-0.0000"


def parse_day(text: str) -> int:
    """``YYYY-MM-DD`` as the epoch ms of that UTC midnight; ValueError for anything else."""
    moment = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def _plain(value: Decimal) -> str:
    return format(value, "f")


def _average(value: Decimal | None, places: int) -> str | None:
    """Rounded to the prices' decimals + 4, trailing zeros cut back to the prices' decimals."""
    if value is None:
        return None
    text = _plain(value.quantize(Decimal(1).scaleb(-(places + EXTRA_PLACES)), rounding=ROUND_HALF_UP))
    whole, _, fraction = text.partition(".")
    fraction = fraction.rstrip("0").ljust(places, "0")
    return f"{whole}.{fraction}" if fraction else whole


def _places(value: Decimal) -> int:
    exponent = value.as_tuple().exponent  # the text as the venue wrote it: "20.200" has 3
    return max(-exponent, 0) if isinstance(exponent, int) else 0


def _time_of(value: Any, cid: str) -> int:
    """A row's epoch-ms time; a garbled one is one clear line (``LedgerError``), never a traceback."""
    try:
        return int(value or 0)
    except (TypeError, ValueError) as exc:
        raise LedgerError(
            f"the fill of {cid or 'an unnamed order'} has no readable time ({value!r})"
        ) from exc


def _dec(value: Any) -> Decimal:
    try:
        number = Decimal(str(value)) if value is not None else ZERO
    except InvalidOperation:
        return ZERO
    return number if number.is_finite() else ZERO
