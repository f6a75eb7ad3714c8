"""What the user stream missed while it was down, read back by REST.

After a gap in the ``/private`` stream (a drop, an expired listenKey, a stream that opened only after
recovery read the venue), the orders the engine still believes open are queried one by one. Whatever
moved is returned as the events the stream would have pushed: one ``OrderUpdated`` per missed trade
(from ``GET /fapi/v1/userTrades``, with its trade id, realised PnL and commission, so the store books
it under the same key as a pushed fill and never twice), then a status-only update when the order
ended without a new fill. A triggered algo stop yields its ``AlgoOrderUpdated`` (with ``ai``) and the
fills of its child order. The events are idempotent for the engine, which books fills by cumulative
quantity: a push that arrives as well changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from binance.errors import BinanceError, Rejected
from binance.parse import ALGO_STATUS, ORDER_STATUS, dec, int_field, position_side_of, side_of
from binance.rest import BinanceRest
from fsm.events import AlgoOrderUpdated, Event, OrderUpdated

log = logging.getLogger(__name__)
ZERO = Decimal(0)


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
        except (BinanceError, KeyError, ValueError) as exc:
            log.warning("gap check of %s failed: %s", order.client_order_id, exc)
    return events


async def _algo(rest: BinanceRest, order: Tracked, now_ms: int) -> list[Event]:
    d = await rest.query_algo_order(order.client_order_id)
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
        answer = await rest.query_order_id(order.symbol, child)
        events += await _fills(rest, answer, order.filled, "", now_ms)
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


__all__ = ["Tracked", "missed_updates"]
