"""What the user stream missed while it was down, read back by REST.

After a gap in the ``/private`` stream (a drop, an expired listenKey, a stream that opened only after
recovery read the venue), the orders the engine still believes open are queried one by one. Whatever
moved is returned as the events the stream would have pushed: one ``OrderUpdated`` per missed trade
(from ``GET /fapi/v1/userTrades``, with its trade id, realised PnL and commission, so the store books
it under the same key as a pushed fill and never twice), then a status-only update when the order
ended without a new fill. A triggered algo stop yields its ``AlgoOrderUpdated`` (with ``ai``) and the
fills of its child order. The events are idempotent for the engine, which books fills by cumulative
quantity: a push that arrives as well changes nothing.

``gap_read_back`` is the whole read-back after a gap: the position mode (``positionSide/dual``, since
``ACCOUNT_CONFIG_UPDATE`` never carries it), the missed order events, then the positions of EVERY
symbol of the account (``positionRisk`` without a symbol) as the ``PositionChanged`` events the stream
would have pushed, per (symbol, position side) leg, plus a flat leg for each symbol the caller
believed held that the venue no longer shows. A query that fails or a malformed body (an object
where a list belongs, a missing field) is logged with its truncated text and skipped: the read-back
never raises.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from binance import parse
from binance.errors import BinanceError, Rejected
from binance.parse import ALGO_STATUS, ORDER_STATUS, PositionSide, dec, int_field, position_side_of, side_of
from binance.rest import BinanceRest
from fsm.events import (
    AlgoOrderUpdated,
    Event,
    FundingFee,
    OrderUpdated,
    PositionChanged,
    PositionMode,
    PositionModeChanged,
)

log = logging.getLogger(__name__)
ZERO = Decimal(0)
# What a malformed REST body raises while it is read (wrong types, missing keys, bad numbers).
MALFORMED = (KeyError, ValueError, TypeError, AttributeError, IndexError, InvalidOperation)


@dataclass(frozen=True, slots=True)
class Tracked:
    """One order the engine believes open, with the quantity it has booked."""

    symbol: str
    client_order_id: str
    is_algo: bool
    filled: Decimal
    status: str


async def missed_updates(rest: BinanceRest, tracked: Sequence[Tracked], now_ms: int) -> list[Event]:
    """The events the stream would have pushed for ``tracked`` since the engine last heard of them.
    An order the venue does not know (-2013) or a failing query is logged and skipped: the
    position re-read that follows still corrects the engine (R20..R22)."""
    events: list[Event] = []
    for order in tracked:
        try:
            if order.is_algo:
                events += await _algo(rest, order, now_ms)
            else:
                answer = await rest.query_order(order.symbol, order.client_order_id)
                events += await _fills(rest, answer, order.filled, order.status, now_ms)
        except Rejected as err:
            log.warning("gap check of %s: %s", order.client_order_id, err)
        except BinanceError as exc:
            log.warning("gap check of %s failed: %s", order.client_order_id, exc)
        except MALFORMED as exc:
            log.warning("gap check of %s: malformed answer skipped: %s", order.client_order_id, _short(exc))
    return events


async def position_mode_event(rest: BinanceRest, now_ms: int) -> PositionModeChanged | None:
    """``GET /fapi/v1/positionSide/dual`` as a ``PositionModeChanged``; None (logged) when the read
    failed: a failed read says nothing about the mode, so the core keeps the one it knows."""
    try:
        mode = parse.position_mode_from_rest(await rest.position_mode())
    except BinanceError as exc:
        log.warning("position mode re-read failed: %s", exc)
        return None
    except MALFORMED as exc:
        log.warning("position mode re-read: malformed answer skipped: %s", _short(exc))
        return None
    return PositionModeChanged(now_ms=now_ms, mode=mode)


async def account_positions(
    rest: BinanceRest, believed: Iterable[str], now_ms: int, mode: PositionMode | None = None
) -> list[PositionChanged]:
    """Every position leg of the account (``positionRisk`` without a symbol) as ``PositionChanged``
    events, and a flat leg for each symbol in ``believed`` (held or managed, per the caller) that the
    venue no longer shows. Per symbol the LONG leg comes first and ours (SHORT, or BOTH in one-way)
    last, so a consumer that keys positions by symbol alone ends on our leg. Empty (logged) when the
    read fails or its body is malformed."""
    try:
        legs = parse.positions_by_key(await rest.position_risk())
    except BinanceError as exc:
        log.warning("position re-read failed: %s", exc)
        return []
    except MALFORMED as exc:
        log.warning("position re-read: malformed answer skipped: %s", _short(exc))
        return []
    held = {key: leg for key, leg in legs.items() if leg.amount != 0}
    if mode is None and any(side != "BOTH" for _, side in legs):
        mode = "HEDGE"
    flat_sides: tuple[PositionSide, ...] = ("LONG", "SHORT") if mode == "HEDGE" else ("BOTH",)
    keys = set(held) | {(symbol, side) for symbol in believed for side in flat_sides}
    order = {"LONG": 0, "BOTH": 1, "SHORT": 2}
    events: list[PositionChanged] = []
    for symbol, side in sorted(keys, key=lambda k: (k[0], order[k[1]])):
        leg = held.get((symbol, side))
        events.append(
            PositionChanged(
                now_ms=now_ms,
                symbol=symbol,
                amount=leg.amount if leg else ZERO,
                entry_price=leg.entry_price if leg else ZERO,
                position_side=side,
            )
        )
    return events


async def gap_read_back(
    rest: BinanceRest, tracked: Sequence[Tracked], believed: Iterable[str], now_ms: int
) -> list[Event]:
    """Everything a user-stream gap may have hidden, in the order the core should see it: the
    position mode, the missed order events, then the account's positions (``account_positions``).
    Never raises for venue trouble or malformed answers (each part is logged and skipped)."""
    events: list[Event] = []
    mode_event = await position_mode_event(rest, now_ms)
    if mode_event is not None:
        events.append(mode_event)
    events += await missed_updates(rest, tracked, now_ms)
    mode = mode_event.mode if mode_event is not None else None
    events += await account_positions(rest, believed, now_ms, mode)
    return events


INCOME_PAGE = 1000
INCOME_PAGES_MAX = 50  # 50,000 settlements: far beyond three months of one account's positions


@dataclass
class FundingRead:
    """What ``missed_funding`` read: the settlements, whether the window was read to its end (only
    then may the caller count it as booked), and the rows it could not use (each logged)."""

    events: list[FundingFee]
    complete: bool
    skipped: int = 0
    error: str = ""


async def missed_funding(rest: BinanceRest, since_ms: int, until_ms: int, now_ms: int) -> FundingRead:
    """The funding settlements of ``since_ms <= time <= until_ms`` from ``GET /fapi/v1/income``
    (FUNDING_FEE), oldest first: what the stream would have pushed while nobody listened. A failing
    read ends it incomplete with what it has; a row that cannot be used (malformed, another income
    type, outside the window) is logged and skipped, never booked."""
    read = FundingRead(events=[], complete=False)
    seen: set[int] = set()
    start = since_ms
    for _ in range(INCOME_PAGES_MAX):
        try:
            rows = await rest.income("FUNDING_FEE", start, until_ms, limit=INCOME_PAGE)
        except BinanceError as exc:
            read.error = str(exc)
            log.warning("funding history read failed from %d: %s (read again later)", start, exc)
            return read
        except MALFORMED as exc:
            read.error = f"malformed answer: {_short(exc)}"
            log.warning("funding history: %s from %d (read again later)", read.error, start)
            return read
        new = 0
        last = start
        for row in rows:
            try:
                tran, event = int_field(row["tranId"]), _funding_row(row, now_ms)
                if not since_ms <= event.venue_time_ms <= until_ms:
                    raise ValueError(f"time {event.venue_time_ms} outside the window asked for")
            except MALFORMED as exc:
                read.skipped += 1
                log.warning("funding history: a row skipped, not booked: %s: %.200r", _short(exc), row)
                continue
            last = max(last, event.venue_time_ms)
            if tran not in seen:
                seen.add(tran)
                read.events.append(event)
                new += 1
        if len(rows) < INCOME_PAGE:
            read.complete = True
            return read
        if new == 0:  # a full page of rows already read: the venue did not move on
            read.error = "the venue answered the same page again"
            log.warning("funding history: %s from %d; the rest is read again later", read.error, start)
            return read
        # A full page: the next one starts at its last row's time (rows of that instant come
        # again and are recognised by their transaction id; a page all of one instant moves on).
        start = last if last > start else start + 1
    read.error = f"more than {INCOME_PAGES_MAX} pages"
    log.warning("funding history: %s from %d; the rest is read again later", read.error, since_ms)
    return read


def _funding_row(row: Mapping[str, Any], now_ms: int) -> FundingFee:
    if row["incomeType"] != "FUNDING_FEE":
        raise ValueError(f"incomeType {row['incomeType']!r} in a FUNDING_FEE read")
    return FundingFee(
        now_ms=now_ms,
        symbol=str(row.get("symbol") or ""),
        asset=str(row["asset"]),
        amount=dec(row["income"]),
        venue_time_ms=int_field(row["time"]),
    )


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 300 else text[:300] + "..."


async def _algo(rest: BinanceRest, order: Tracked, now_ms: int) -> list[Event]:
    d = await rest.query_algo_order(order.client_order_id)
    return await algo_events(rest, order.symbol, d, order.filled, now_ms)


async def order_events(
    rest: BinanceRest, answer: Mapping[str, Any], booked: Decimal, known_status: str, now_ms: int
) -> list[Event]:
    """The events one ``GET /fapi/v1/order`` answer stands for, given what is already booked (also
    how an order of unknown outcome is resolved)."""
    return await _fills(rest, answer, booked, known_status, now_ms)


async def algo_events(
    rest: BinanceRest, symbol: str, d: Mapping[str, Any], booked: Decimal, now_ms: int
) -> list[Event]:
    """The events one ``GET /fapi/v1/algoOrder`` answer stands for: nothing while it is NEW, else
    its ``AlgoOrderUpdated`` and the fills of its child order."""
    status = ALGO_STATUS[str(d["algoStatus"])]
    if status == "NEW":
        return []
    child = int_field(d.get("actualOrderId", ""))
    events: list[Event] = [
        AlgoOrderUpdated(
            now_ms=now_ms,
            symbol=str(d["symbol"]),
            client_algo_id=str(d["clientAlgoId"]),
            algo_id=int_field(d["algoId"]),
            status=status,
            actual_order_id=child,
        )
    ]
    if child:
        answer = await rest.query_order_id(symbol, child)
        events += await _fills(rest, answer, booked, "", now_ms)
    return events


async def _fills(
    rest: BinanceRest, d: Mapping[str, Any], known: Decimal, status: str, now_ms: int
) -> list[Event]:
    """``d`` is a ``GET /fapi/v1/order`` answer; ``known`` the quantity already booked."""
    executed = dec(d["executedQty"])
    final = ORDER_STATUS[str(d["status"])]
    events: list[Event] = []
    if executed > known:
        trades = await rest.user_trades(str(d["symbol"]), order_id=int_field(d["orderId"]))
        cum = cost = ZERO
        for trade in sorted(trades, key=lambda t: int_field(t["id"])):
            qty, price = dec(trade["qty"]), dec(trade["price"])
            cum += qty
            cost += qty * price
            if cum <= known:
                continue
            events.append(
                _update(
                    d,
                    now_ms,
                    status=final if cum >= executed else "PARTIALLY_FILLED",
                    cum=cum,
                    last_qty=qty,
                    last_price=price,
                    avg=cost / cum,
                    trade_id=int_field(trade["id"]),
                    realized=dec(trade.get("realizedPnl", "0")),
                    commission=dec(trade.get("commission", "0")),
                )
            )
        if cum < executed:  # trades not (yet) listed: the order's totals, without a fill to book
            events.append(_update(d, now_ms, status=final, cum=executed, avg=dec(d.get("avgPrice", "0"))))
    elif final != status and executed == known:
        events.append(_update(d, now_ms, status=final, cum=executed, avg=dec(d.get("avgPrice", "0"))))
    return events


def _update(
    d: Mapping[str, Any],
    now_ms: int,
    *,
    status: str,
    cum: Decimal,
    avg: Decimal,
    last_qty: Decimal = ZERO,
    last_price: Decimal = ZERO,
    trade_id: int = 0,
    realized: Decimal = ZERO,
    commission: Decimal = ZERO,
) -> OrderUpdated:
    return OrderUpdated(
        now_ms=now_ms,
        symbol=str(d["symbol"]),
        client_order_id=str(d["clientOrderId"]),
        order_id=int_field(d["orderId"]),
        side=side_of(d["side"]),
        order_type=str(d.get("origType") or d["type"]),
        status=ORDER_STATUS[status],
        price=dec(d.get("price", "0")),
        orig_qty=dec(d["origQty"]),
        cum_qty=cum,
        last_qty=last_qty,
        last_price=last_price,
        avg_price=avg,
        trade_id=trade_id,
        reduce_only=bool(d.get("reduceOnly", False)),
        close_position=bool(d.get("closePosition", False)),
        position_side=position_side_of(d.get("positionSide", "BOTH")),
        realized_pnl=realized,
        commission=commission,
    )


__all__ = [
    "Tracked",
    "account_positions",
    "algo_events",
    "gap_read_back",
    "missed_updates",
    "order_events",
    "position_mode_event",
]
