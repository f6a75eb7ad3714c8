"""Executor: fsm commands in, fsm events out, against the simulated venue over loopback."""

from __future__ import annotations

from decimal import Decimal

from binance_simkit import KEY, run, venue

from binance.executor import Executor
from binance.rest import BinanceRest
from binance.sim.server import RestFault
from fsm.commands import (
    CancelAlgoOrder,
    CancelOrder,
    Notify,
    PlaceAlgoOrder,
    PlaceOrder,
    PrepareOrder,
    QueryExchange,
)
from fsm.events import (
    AlgoOrderAccepted,
    CancelResult,
    ExchangeSnapshot,
    OrderAccepted,
    OrderPrepared,
    OrderRejected,
    VenueCallSucceeded,
    VenueErrorObserved,
)

NOW = 1_767_225_600_000
ENTRY = PlaceOrder(
    symbol="BTCUSDT",
    client_order_id="s1-ENTRY1-0",
    leg="ENTRY1",
    side="SELL",
    order_type="LIMIT",
    quantity=Decimal("0.010"),
    price=Decimal("96000.0"),
    time_in_force="GTC",
)
STOP = PlaceAlgoOrder(
    symbol="BTCUSDT",
    client_algo_id="s1-MDD-0",
    leg="MDD",
    side="BUY",
    order_type="STOP_MARKET",
    trigger_price=Decimal("99000.0"),
)


def posts(v: object, path: str) -> int:
    return sum(1 for r in v.requests if r == ("POST", path))  # type: ignore[attr-defined]


def test_prepare_sets_leverage_and_isolated_when_needed() -> None:
    async def go() -> None:
        async with venue() as (ex, v, rest):
            out = await Executor(rest).execute(
                PrepareOrder(symbol="BTCUSDT", leg="ENTRY1", configure_margin=True), NOW
            )
            assert out == [
                OrderPrepared(
                    now_ms=NOW,
                    symbol="BTCUSDT",
                    leg="ENTRY1",
                    ok=True,
                    position_mode="ONE_WAY",
                    wallet_balance=Decimal("10000.00000000"),
                    available_balance=Decimal("10000.00000000"),
                ),
                VenueCallSucceeded(now_ms=NOW),
            ]
            assert (ex.leverage["BTCUSDT"], ex.margin_type["BTCUSDT"]) == (1, "isolated")
            # W25: already set -> no change requests
            await Executor(rest).execute(
                PrepareOrder(symbol="BTCUSDT", leg="ENTRY1", configure_margin=True), NOW
            )
            assert (posts(v, "/fapi/v1/leverage"), posts(v, "/fapi/v1/marginType")) == (1, 1)

    run(go())


def test_prepare_w24_cancels_only_that_symbols_open_order_and_retries() -> None:
    async def go() -> None:
        async with venue() as (ex, v, rest):
            ex.leverage["BTCUSDT"] = 1
            ex_ = Executor(rest)
            await ex_.execute(ENTRY, NOW)
            eth = PlaceOrder(
                symbol="ETHUSDT",
                client_order_id="manual-eth",
                leg="ENTRY1",
                side="SELL",
                order_type="LIMIT",
                quantity=Decimal("0.1"),
                price=Decimal("3600.00"),
            )
            await ex_.execute(eth, NOW)
            (prepared, _) = await ex_.execute(
                PrepareOrder(symbol="BTCUSDT", leg="ENTRY1", configure_margin=True), NOW
            )
            assert isinstance(prepared, OrderPrepared) and prepared.ok
            assert ex.margin_type["BTCUSDT"] == "isolated"
            statuses = {o.client_id: o.status for o in ex.orders.values()}
            assert statuses == {"s1-ENTRY1-0": "CANCELED", "manual-eth": "NEW"}
            assert posts(v, "/fapi/v1/marginType") == 2

    run(go())


def test_prepare_reports_hedge_mode_and_failures() -> None:
    async def go() -> None:
        async with venue(hedge_mode=True) as (_ex, v, rest):
            (p, _) = await Executor(rest).execute(
                PrepareOrder(symbol="ETHUSDT", leg="TP", configure_margin=False), NOW
            )
            assert isinstance(p, OrderPrepared) and (p.ok, p.position_mode) == (True, "HEDGE")
            assert posts(v, "/fapi/v1/leverage") == 0
            v.faults.add(RestFault("GET", "/fapi/v1/positionSide/dual", "status", status=500))
            (failed,) = await Executor(rest).execute(
                PrepareOrder(symbol="ETHUSDT", leg="TP", configure_margin=True), NOW
            )
            assert isinstance(failed, OrderPrepared)
            assert (failed.ok, failed.position_mode, failed.error_code) == (False, None, -1000)
            assert failed.reason.startswith("position_mode_read_failed")

    run(go())


def test_place_order_accepted_and_rejections_categorised() -> None:
    async def go() -> None:
        async with venue(balance=Decimal("50")) as (ex, _v, rest):
            exe = Executor(rest)
            accepted = await exe.execute(ENTRY, NOW)
            order_id = next(iter(ex.orders))
            assert accepted == [
                OrderAccepted(now_ms=NOW, symbol="BTCUSDT", client_order_id="s1-ENTRY1-0", order_id=order_id),
                VenueCallSucceeded(now_ms=NOW),
            ]
            big = PlaceOrder(
                symbol="BTCUSDT",
                client_order_id="s1-ENTRY2-0",
                leg="ENTRY2",
                side="SELL",
                order_type="LIMIT",
                quantity=Decimal("0.1"),
                price=Decimal("96000.0"),
            )
            assert await exe.execute(big, NOW) == [
                OrderRejected(
                    now_ms=NOW,
                    symbol="BTCUSDT",
                    client_order_id="s1-ENTRY2-0",
                    code=-2019,
                    message="Margin is insufficient.",
                    retryable=False,
                    category="margin",
                )
            ]
            tiny = PlaceOrder(
                symbol="BTCUSDT",
                client_order_id="t",
                leg="TP",
                side="SELL",
                order_type="LIMIT",
                quantity=Decimal("0.0001"),
                price=Decimal("96000.0"),
            )
            (rej,) = await exe.execute(tiny, NOW)
            assert isinstance(rej, OrderRejected) and (rej.code, rej.category) == (-1111, "filter")

    run(go())


def test_algo_place_cancel_and_gone() -> None:
    async def go() -> None:
        async with venue() as (ex, _v, rest):
            exe = Executor(rest)
            await exe.execute(
                PlaceOrder(
                    symbol="BTCUSDT",
                    client_order_id="e",
                    leg="ENTRY1",
                    side="SELL",
                    order_type="MARKET",
                    quantity=Decimal("0.010"),
                ),
                NOW,
            )
            (acc, _) = await exe.execute(STOP, NOW)
            assert acc == AlgoOrderAccepted(
                now_ms=NOW, symbol="BTCUSDT", client_algo_id="s1-MDD-0", algo_id=next(iter(ex.algos))
            )
            (again, _) = await exe.execute(STOP, NOW)  # same id: -4116 -> found by query
            assert again == acc
            assert len(ex.algos) == 1
            cancel = CancelAlgoOrder(symbol="BTCUSDT", client_algo_id="s1-MDD-0")
            (ok, _) = await exe.execute(cancel, NOW)
            assert ok == CancelResult(
                now_ms=NOW, symbol="BTCUSDT", client_order_id="s1-MDD-0", ok=True, is_algo=True
            )
            assert await exe.execute(cancel, NOW) == [
                CancelResult(
                    now_ms=NOW,
                    symbol="BTCUSDT",
                    client_order_id="s1-MDD-0",
                    ok=False,
                    gone=True,
                    code=-2011,
                    message="Unknown order sent.",
                    is_algo=True,
                )
            ]
            assert await exe.execute(CancelOrder(symbol="BTCUSDT", client_order_id="nope"), NOW) == [
                CancelResult(
                    now_ms=NOW,
                    symbol="BTCUSDT",
                    client_order_id="nope",
                    ok=False,
                    gone=True,
                    code=-2011,
                    message="Unknown order sent.",
                )
            ]

    run(go())


def test_hedge_mode_algo_and_one_way_reduce_only_reach_the_venue_right() -> None:
    async def go() -> None:
        async with venue(hedge_mode=True) as (_ex, _v, rest):
            exe = Executor(rest)
            short = PlaceOrder(
                symbol="BTCUSDT",
                client_order_id="h1",
                leg="ENTRY1",
                side="SELL",
                order_type="MARKET",
                quantity=Decimal("0.010"),
                position_side="SHORT",
            )
            (a, _) = await exe.execute(short, NOW)
            assert isinstance(a, OrderAccepted)
            tp = PlaceOrder(
                symbol="BTCUSDT",
                client_order_id="h-tp",
                leg="TP",
                side="BUY",
                order_type="LIMIT",
                quantity=Decimal("0.010"),
                price=Decimal("90000.0"),
                reduce_only=True,
                position_side="SHORT",
            )
            (b, _) = await exe.execute(tp, NOW)
            assert isinstance(b, OrderAccepted)  # reduceOnly not sent in hedge mode (-1106 otherwise)
            (c, _) = await exe.execute(
                PlaceAlgoOrder(
                    symbol="BTCUSDT",
                    client_algo_id="h-stop",
                    leg="MDD",
                    side="BUY",
                    order_type="STOP_MARKET",
                    trigger_price=Decimal("99000.0"),
                    position_side="SHORT",
                ),
                NOW,
            )
            assert isinstance(c, AlgoOrderAccepted)
            (d,) = await exe.execute(
                PlaceAlgoOrder(
                    symbol="BTCUSDT",
                    client_algo_id="h-bad",
                    leg="MDD",
                    side="BUY",
                    order_type="STOP_MARKET",
                    trigger_price=Decimal("99000.0"),
                ),
                NOW,
            )
            assert isinstance(d, OrderRejected) and d.code == -4061

    run(go())


def test_query_exchange_snapshot_has_positions_orders_and_algo_orders() -> None:
    async def go() -> None:
        async with venue() as (_ex, v, rest):
            exe = Executor(rest)
            await exe.execute(
                PlaceOrder(
                    symbol="BTCUSDT",
                    client_order_id="e",
                    leg="ENTRY1",
                    side="SELL",
                    order_type="MARKET",
                    quantity=Decimal("0.010"),
                ),
                NOW,
            )
            await exe.execute(STOP, NOW)
            await exe.execute(
                PlaceOrder(
                    symbol="ETHUSDT",
                    client_order_id="manual",
                    leg="ENTRY1",
                    side="SELL",
                    order_type="LIMIT",
                    quantity=Decimal("0.1"),
                    price=Decimal("3700.00"),
                ),
                NOW,
            )
            (snap, ok) = await exe.execute(QueryExchange(purpose="recovery"), NOW)
            assert ok == VenueCallSucceeded(now_ms=NOW)
            assert isinstance(snap, ExchangeSnapshot)
            assert (snap.position_mode, snap.complete, snap.purpose) == ("ONE_WAY", True, "recovery")
            assert [(p.symbol, p.amount, p.entry_price) for p in snap.positions] == [
                ("BTCUSDT", Decimal("-0.010"), Decimal("95000.00000"))
            ]
            assert sorted(
                (o.symbol, o.client_order_id, o.is_algo, o.close_position) for o in snap.open_orders
            ) == [
                ("BTCUSDT", "s1-MDD-0", True, True),
                ("ETHUSDT", "manual", False, False),
            ]
            assert [s.symbol for s in snap.symbols] == ["BTCUSDT", "ETHUSDT"]
            assert snap.wallet_balance == Decimal("9999.52500000")

            v.faults.add(RestFault("GET", "/fapi/v1/openAlgoOrders", "status", status=500))
            (partial,) = await exe.execute(QueryExchange(purpose="requery", symbol="BTCUSDT"), NOW)
            assert isinstance(partial, ExchangeSnapshot)
            assert (partial.complete, [o.is_algo for o in partial.open_orders]) == (False, [])

    run(go())


def test_auth_failure_is_observed_and_unknown_commands_ignored() -> None:
    async def go() -> None:
        async with venue() as (ex, v, _rest):
            bad = BinanceRest(api_key=KEY, api_secret="wrong", base_url=v.rest_url, clock_ms=ex.now)
            try:
                exe = Executor(bad)
                out = await exe.execute(CancelOrder(symbol="BTCUSDT", client_order_id="x"), NOW)
                assert out[1:] == [
                    VenueErrorObserved(
                        now_ms=NOW,
                        category="auth",
                        code=-1022,
                        message="Signature for this request is not valid.",
                    )
                ]
                assert await exe.execute(Notify(kind="k", text="t"), NOW) == []
                assert exe.handles(Notify(kind="k", text="t")) is False
            finally:
                await bad.aclose()

    run(go())
