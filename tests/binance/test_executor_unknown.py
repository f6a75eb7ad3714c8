"""Unknown order outcomes through the real executor and client against the simulated venue (issue #11
items 1-2, issue #12 item 2): never a rejection, never an immediate resend; a query once the request
can no longer execute says found (with its fills), absent, or failed."""

from __future__ import annotations

from decimal import Decimal

from binance_simkit import run, venue
from test_executor import ENTRY, NOW, STOP

from binance.executor import RESOLVE_MARGIN_MS, Executor
from binance.sim.server import RestFault
from fsm.commands import ResolveOrder
from fsm.events import (
    OrderOutcomeUnknown,
    OrderResolved,
    OrderUpdated,
    VenueCallSucceeded,
)

TIMEOUT_1007 = (
    '{"code":-1007,"msg":"Timeout waiting for response from backend server. '
    'Send status unknown; execution status unknown."}'
)


def requests(v: object, method: str, path: str) -> int:
    return sum(1 for r in v.requests if r == (method, path))  # type: ignore[attr-defined]


def unknown(cid: str, *, is_algo: bool = False, reason: str) -> OrderOutcomeUnknown:
    return OrderOutcomeUnknown(
        now_ms=NOW,
        symbol="BTCUSDT",
        client_order_id=cid,
        is_algo=is_algo,
        resolve_after_ms=NOW + 5000 + RESOLVE_MARGIN_MS,
        reason=reason,
    )


def test_408_on_entry_is_unknown_with_resolve_after_recv_window() -> None:
    async def go() -> None:
        async with venue() as (ex, v, rest):
            v.faults.add(
                RestFault(
                    "POST", "/fapi/v1/order", "status", status=408, body=TIMEOUT_1007, after_accept=True
                )
            )
            out = await Executor(rest).execute(ENTRY, NOW)
            reason = "Timeout waiting for response from backend server. Send status unknown; " + (
                "execution status unknown."
            )
            assert out == [unknown("s1-ENTRY1-0", reason=reason)]
            assert requests(v, "POST", "/fapi/v1/order") == 1
            assert requests(v, "GET", "/fapi/v1/order") == 0
            assert len(ex.orders) == 1

    run(go())


def test_200_without_order_id_is_unknown_not_a_retryable_rejection() -> None:
    async def go() -> None:
        async with venue() as (_ex, v, rest):
            v.faults.add(RestFault("POST", "/fapi/v1/order", "status", status=200, body='{"status":"NEW"}'))
            out = await Executor(rest).execute(ENTRY, NOW)
            assert len(out) == 1 and isinstance(out[0], OrderOutcomeUnknown)
            assert out[0].reason.startswith("unusable answer")
            assert out[0].resolve_after_ms == NOW + 6000

    run(go())


def test_resolve_found_feeds_the_fills_with_trade_ids_then_found() -> None:
    async def go() -> None:
        async with venue() as (ex, v, rest):
            v.faults.add(
                RestFault(
                    "POST", "/fapi/v1/order", "status", status=408, body=TIMEOUT_1007, after_accept=True
                )
            )
            ex.set_fill_policy("s1-ENTRY1-0", (Decimal("0.004"), Decimal("0.006")))
            executor = Executor(rest)
            await executor.execute(ENTRY, NOW)
            order = next(iter(ex.orders.values()))
            ex.set_mark("BTCUSDT", Decimal("96000"))  # the first slice trades
            out = await executor.execute(
                ResolveOrder(symbol="BTCUSDT", client_order_id="s1-ENTRY1-0"), NOW + 6000
            )
            fills = [e for e in out if isinstance(e, OrderUpdated)]
            assert [(f.status, f.cum_qty, f.last_qty, f.trade_id > 0) for f in fills] == [
                ("PARTIALLY_FILLED", Decimal("0.004"), Decimal("0.004"), True)
            ]
            assert out[-2:] == [
                OrderResolved(
                    now_ms=NOW + 6000,
                    symbol="BTCUSDT",
                    client_order_id="s1-ENTRY1-0",
                    outcome="found",
                    order_id=order.order_id,
                    status="PARTIALLY_FILLED",
                ),
                VenueCallSucceeded(now_ms=NOW + 6000),
            ]
            assert requests(v, "POST", "/fapi/v1/order") == 1

    run(go())


def test_resolve_absent_and_failed() -> None:
    async def go() -> None:
        async with venue() as (_ex, v, rest):
            executor = Executor(rest)
            absent = await executor.execute(
                ResolveOrder(symbol="BTCUSDT", client_order_id="s1-ENTRY1-0"), NOW
            )
            assert absent[0] == OrderResolved(
                now_ms=NOW,
                symbol="BTCUSDT",
                client_order_id="s1-ENTRY1-0",
                outcome="absent",
                message="-2013 Order does not exist.",
            )
            v.faults.add(RestFault("GET", "/fapi/v1/order", "html", status=502))
            failed = await executor.execute(
                ResolveOrder(symbol="BTCUSDT", client_order_id="s1-ENTRY1-0"), NOW
            )
            assert len(failed) == 1 and isinstance(failed[0], OrderResolved)
            assert failed[0].outcome == "failed"
            assert requests(v, "POST", "/fapi/v1/order") == 0

    run(go())


def test_algo_stop_unknown_then_found() -> None:
    async def go() -> None:
        async with venue() as (ex, v, rest):
            await rest.place_order({**ENTRY_PARAMS, "price": "95000.0"})
            v.faults.add(
                RestFault(
                    "POST", "/fapi/v1/algoOrder", "status", status=408, body=TIMEOUT_1007, after_accept=True
                )
            )
            executor = Executor(rest)
            out = await executor.execute(STOP, NOW)
            assert len(out) == 1 and isinstance(out[0], OrderOutcomeUnknown) and out[0].is_algo
            found = await executor.execute(
                ResolveOrder(symbol="BTCUSDT", client_order_id="s1-MDD-0", is_algo=True), NOW + 6000
            )
            algo = next(iter(ex.algos.values()))
            assert found[0] == OrderResolved(
                now_ms=NOW + 6000,
                symbol="BTCUSDT",
                client_order_id="s1-MDD-0",
                is_algo=True,
                outcome="found",
                order_id=algo.algo_id,
                status="NEW",
            )
            assert requests(v, "POST", "/fapi/v1/algoOrder") == 1

    run(go())


ENTRY_PARAMS = {
    "symbol": "BTCUSDT",
    "side": "SELL",
    "type": "LIMIT",
    "quantity": "0.010",
    "price": "96000.0",
    "timeInForce": "GTC",
    "newClientOrderId": "s1-ENTRY1-0",
}
