"""What the user stream missed, read back by REST (``binance.reconcile``) from the simulated venue
over loopback: every missed trade as the update the stream would have pushed, with the venue's own
trade id, realised PnL and commission; ends without a fill; triggered algo stops and their child."""

from __future__ import annotations

from decimal import Decimal

import pytest
from binance_simkit import run, venue

from binance.reconcile import Tracked, missed_updates
from fsm import events as ev

D = Decimal
NOW = 1_800_000_000_000
CID = "sf1001-E11-BTCUSDT"


def _limit_sell(ex, cid: str = CID, qty: str = "0.010", price: str = "96000.0") -> None:  # type: ignore[no-untyped-def]
    ex.new_order(
        {
            "symbol": "BTCUSDT",
            "side": "SELL",
            "type": "LIMIT",
            "quantity": qty,
            "price": price,
            "timeInForce": "GTC",
            "newClientOrderId": cid,
        }
    )


@pytest.mark.spec("R20")
def test_two_missed_slices_come_back_as_two_fills_with_the_venue_trade_ids() -> None:
    async def go() -> None:
        async with venue() as (ex, _v, rest):
            ex.set_fill_policy(CID, (D("0.004"), D("0.006")))
            _limit_sell(ex)
            ex.set_mark("BTCUSDT", D("96000"))
            ex.set_mark("BTCUSDT", D("96100"))
            out = await missed_updates(rest, [Tracked("BTCUSDT", CID, False, D(0), "NEW")], NOW)
            trades = [t for t in ex.trades if t["symbol"] == "BTCUSDT"]
            assert [type(e) for e in out] == [ev.OrderUpdated, ev.OrderUpdated]
            assert [
                (e.status, e.cum_qty, e.last_qty, e.last_price, e.trade_id, e.avg_price, e.commission)
                for e in out
                if isinstance(e, ev.OrderUpdated)
            ] == [
                (
                    "PARTIALLY_FILLED",
                    D("0.004"),
                    D("0.004"),
                    D("96000.0"),
                    trades[0]["id"],
                    D("96000"),
                    D(trades[0]["commission"]),
                ),
                (
                    "FILLED",
                    D("0.010"),
                    D("0.006"),
                    D("96000.0"),
                    trades[1]["id"],
                    D("96000"),
                    D(trades[1]["commission"]),
                ),
            ]
            first = out[0]
            assert isinstance(first, ev.OrderUpdated)
            assert (first.client_order_id, first.side, first.order_type, first.orig_qty, first.now_ms) == (
                CID,
                "SELL",
                "LIMIT",
                D("0.010"),
                NOW,
            )
            # The engine had booked the first slice already: only the second comes back.
            again = await missed_updates(
                rest, [Tracked("BTCUSDT", CID, False, D("0.004"), "PARTIALLY_FILLED")], NOW
            )
            assert [(e.cum_qty, e.last_qty) for e in again if isinstance(e, ev.OrderUpdated)] == [
                (D("0.010"), D("0.006"))
            ]

    run(go())


@pytest.mark.spec("R20")
def test_an_order_that_ended_without_a_fill_gives_one_status_update_and_a_quiet_one_nothing() -> None:
    async def go() -> None:
        async with venue() as (ex, _v, rest):
            _limit_sell(ex)
            _limit_sell(ex, cid="sf1002-E11-BTCUSDT", price="97000.0")
            await rest.cancel_order("BTCUSDT", CID)
            out = await missed_updates(
                rest,
                [
                    Tracked("BTCUSDT", CID, False, D(0), "NEW"),
                    Tracked("BTCUSDT", "sf1002-E11-BTCUSDT", False, D(0), "NEW"),
                ],
                NOW,
            )
            assert [
                (e.client_order_id, e.status, e.cum_qty, e.last_qty)
                for e in out
                if isinstance(e, ev.OrderUpdated)
            ] == [(CID, "CANCELED", D(0), D(0))]
            assert len(out) == 1

    run(go())


@pytest.mark.spec("W43", "R20")
def test_a_triggered_stop_gives_its_algo_update_then_the_child_fill() -> None:
    async def go() -> None:
        async with venue() as (ex, _v, rest):
            _limit_sell(ex)
            ex.set_mark("BTCUSDT", D("96000"))  # short 0.010 @ 96000
            stop = "sf1001-MD1-BTCUSDT"
            algo = ex.new_algo_order(
                {
                    "algoType": "CONDITIONAL",
                    "symbol": "BTCUSDT",
                    "side": "BUY",
                    "type": "STOP_MARKET",
                    "triggerPrice": "99000.0",
                    "closePosition": "true",
                    "workingType": "MARK_PRICE",
                    "clientAlgoId": stop,
                }
            )
            ex.set_mark("BTCUSDT", D("99000"))
            out = await missed_updates(rest, [Tracked("BTCUSDT", stop, True, D(0), "NEW")], NOW)
            child = ex.algos[algo["algoId"]].actual_order_id
            assert child
            head, fill = out
            assert isinstance(head, ev.AlgoOrderUpdated) and isinstance(fill, ev.OrderUpdated)
            assert (head.client_algo_id, head.algo_id, head.status, head.actual_order_id) == (
                stop,
                algo["algoId"],
                ex.algos[algo["algoId"]].status,
                child,
            )
            trade = ex.trades[-1]
            assert (
                fill.order_id,
                fill.side,
                fill.status,
                fill.cum_qty,
                fill.trade_id,
                fill.realized_pnl,
            ) == (
                child,
                "BUY",
                "FILLED",
                D("0.010"),
                trade["id"],
                D(trade["realizedPnl"]),
            )
            assert fill.realized_pnl == D("-30.00000000")  # (96000 - 99000) x 0.010

    run(go())


def test_an_order_the_venue_does_not_know_is_skipped_and_the_rest_still_checked() -> None:
    async def go() -> None:
        async with venue() as (ex, _v, rest):
            _limit_sell(ex)
            ex.set_mark("BTCUSDT", D("96000"))
            out = await missed_updates(
                rest,
                [
                    Tracked("BTCUSDT", "sf9999-E11-BTCUSDT", False, D(0), "NEW"),  # -2013
                    Tracked("BTCUSDT", "sf9999-MD1-BTCUSDT", True, D(0), "NEW"),  # -2013 (algo)
                    Tracked("BTCUSDT", CID, False, D(0), "NEW"),
                ],
                NOW,
            )
            assert [(e.client_order_id, e.status) for e in out if isinstance(e, ev.OrderUpdated)] == [
                (CID, "FILLED")
            ]

    run(go())


def test_user_trades_endpoint_filters_and_limits() -> None:
    async def go() -> None:
        async with venue() as (ex, _v, rest):
            _limit_sell(ex)
            _limit_sell(ex, cid="sf1002-E11-BTCUSDT", qty="0.020", price="96050.0")
            ex.set_mark("BTCUSDT", D("96100"))
            every = await rest.user_trades("BTCUSDT")
            assert [(t["qty"], t["side"], t["buyer"]) for t in every] == [
                ("0.010", "SELL", False),
                ("0.020", "SELL", False),
            ]
            assert set(every[0]) == {
                "buyer",
                "commission",
                "commissionAsset",
                "id",
                "maker",
                "orderId",
                "price",
                "qty",
                "quoteQty",
                "realizedPnl",
                "side",
                "positionSide",
                "symbol",
                "time",
            }
            one = await rest.user_trades("BTCUSDT", order_id=every[1]["orderId"])
            assert one == [every[1]]
            assert await rest.user_trades("ETHUSDT") == []

    run(go())
