"""The adapter against what real Binance answers (binance-real-answers.md, March 2026, and the
corrections at the top of binance-usdm-2026.md): error codes as data, rate limits as data (weight
and order-count pacing, 429 without Retry-After, 418 bans), hedge-mode legs, the gap read-back,
supervised long-lived tasks, leverage and margin type from symbolConfig.

REST answers the simulator cannot give yet come from an ``httpx.MockTransport`` behind the real
``BinanceRest``; WebSocket misbehaviour from a tiny local server on loopback.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import httpx
import pytest
from binance_simkit import run
from websockets.asyncio.server import ServerConnection, serve

from binance import errors as E
from binance import parse, reconcile
from binance.rest import BAN_END_MARGIN_MS, BinanceRest
from binance.streams import Backoff, MarketStream, PremiumIndexPoller, UserStream
from fsm.commands import UsePriceSource
from fsm.events import (
    MarkPriceTick,
    OrderUpdated,
    PositionChanged,
    PositionInfo,
    PositionModeChanged,
    WsStatusChanged,
)

MINUTE = 60_000
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z, a minute boundary
Reply = tuple[int, Any, dict[str, str]]


class FakeClock:
    def __init__(self, now_ms: int) -> None:
        self.now = now_ms

    def now_ms(self) -> int:
        return self.now


class FakeVenue:
    """An httpx transport answering from ``routes`` ((method, path) -> reply or callable), recording
    every request with the clock time it arrived at. ``/fapi/v1/time`` answers the clock."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.routes: dict[tuple[str, str], Reply | Callable[[httpx.Request], Reply]] = {}
        self.seen: list[tuple[str, str, dict[str, str], int]] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        method, path = request.method, request.url.path
        params = dict(request.url.params)
        self.seen.append((method, path, params, self.clock.now))
        if (method, path) == ("GET", "/fapi/v1/time"):
            return httpx.Response(200, json={"serverTime": self.clock.now})
        route = self.routes.get((method, path))
        if route is None:
            return httpx.Response(404, text="<html>404 Not Found</html>")
        status, body, headers = route(request) if callable(route) else route
        return httpx.Response(status, json=body, headers=headers)

    def paths(self) -> list[tuple[str, str]]:
        return [(m, p) for m, p, _, _ in self.seen if p != "/fapi/v1/time"]


def client(venue: FakeVenue, sleeps: list[float] | None = None) -> BinanceRest:
    async def sleep(seconds: float) -> None:  # time passes on the fake clock only
        if sleeps is not None:
            sleeps.append(seconds)
        venue.clock.now += max(1, int(seconds * 1000))
        await asyncio.sleep(0)

    return BinanceRest(
        api_key="k",
        api_secret="not-a-real-secret",
        base_url="https://fapi.test",
        clock_ms=venue.clock.now_ms,
        transport=httpx.MockTransport(venue.handler),
        sleep=sleep,
    )


OK: Reply = (200, {"ok": True}, {})
CLOSE = {
    "symbol": "BTCUSDT",
    "side": "BUY",
    "type": "MARKET",
    "quantity": "0.010",
    "reduceOnly": "true",
    "newClientOrderId": "sf1-CL1-BTCUSDT",
}
ENTRY = {
    "symbol": "BTCUSDT",
    "side": "SELL",
    "type": "LIMIT",
    "quantity": "0.010",
    "price": "96000",
    "timeInForce": "GTC",
    "newClientOrderId": "sf1-E11-BTCUSDT",
}
ORDER_ACK: Reply = (200, {"orderId": 7, "status": "NEW", "clientOrderId": "x"}, {})


# --------------------------------------------------------------------------------------------
# 1. error codes as data: every answer of binance-real-answers.md, verbatim
# --------------------------------------------------------------------------------------------

REAL_ANSWERS: list[tuple[int, str, int, str, type[E.BinanceError]]] = [
    (
        400,
        "POST",
        -4130,
        "An open stop or take profit order with GTE and closePosition in the direction is existing.",
        E.CloseStopExists,
    ),
    (
        400,
        "POST",
        -4509,
        "Time in Force (TIF) GTE can only be used with open positions. Please ensure that positions "
        "are available.",
        E.AlreadyFlat,
    ),
    (400, "POST", -2021, "Order would immediately trigger.", E.Rejected),
    (400, "POST", -2022, "ReduceOnly Order is rejected.", E.AlreadyFlat),
    (400, "POST", -1111, "Precision is over the maximum defined for this asset.", E.FilterRejected),
    (
        408,
        "POST",
        -1007,
        "Timeout waiting for response from backend server. Send status unknown; execution status unknown.",
        E.UnknownOutcome,
    ),
    (400, "DELETE", -2011, "Unknown order sent.", E.Rejected),
    (
        401,
        "GET",
        -2015,
        "Invalid API-key, IP, or permissions for action, request ip: 203.0.113.9",
        E.AuthFailed,
    ),
    (
        429,
        "GET",
        -1003,
        "Too many requests; current limit of IP(203.0.113.9) is 2400 requests per minute. Please use "
        "the websocket for live updates to avoid polling the API.",
        E.RateLimited,
    ),
    (
        418,
        "GET",
        -1003,
        "Way too many requests; IP(203.0.113.9) banned until 1767229200000. Please use the websocket "
        "for live updates to avoid bans.",
        E.RateLimited,
    ),
]


@pytest.mark.parametrize(("status", "method", "code", "msg", "klass"), REAL_ANSWERS)
def test_every_real_answer_maps_to_its_class(
    status: int, method: str, code: int, msg: str, klass: type[E.BinanceError]
) -> None:
    err = E.from_response(status, {"code": code, "msg": msg}, method=method)
    assert type(err) is klass
    assert (err.code, err.msg, err.http_status) == (code, msg, status)
    if status == 418:
        assert isinstance(err, E.RateLimited) and err.banned_until_ms == 1767229200000


def test_newer_codes_of_the_error_page_are_mapped() -> None:
    expected = {
        -4045: E.Rejected,
        -4183: E.FilterRejected,
        -4184: E.FilterRejected,
        -4189: E.Rejected,
        -4192: E.Rejected,
        -4210: E.FilterRejected,
        -4211: E.FilterRejected,
        -4531: E.Rejected,
    }
    assert {code: E.CODE_CLASSES.get(code) for code in expected} == expected
    assert issubclass(E.CloseStopExists, E.Rejected) and issubclass(E.AlreadyFlat, E.Rejected)
    assert E.category(E.AlreadyFlat(-4509, "m")) == "flat" and not E.should_retry(E.AlreadyFlat(-4509, "m"))


def test_5xx_texts_that_mean_failed_are_not_unknown() -> None:
    internal = E.from_response(500, {"msg": "Internal error; unable to process your request"}, method="POST")
    unavailable = E.from_response(503, {"msg": "Service Unavailable."}, method="POST")
    unknown = E.from_response(
        503, {"msg": "Unknown error, please check your request or try again later."}, method="POST"
    )
    assert (type(internal), type(unavailable), type(unknown)) == (E.Retryable, E.Retryable, E.UnknownOutcome)


# --------------------------------------------------------------------------------------------
# 2. rate limits as data
# --------------------------------------------------------------------------------------------


def test_429_without_retry_after_backs_off_to_the_start_of_the_next_minute() -> None:
    async def go() -> None:
        venue = FakeVenue(FakeClock(T0 + 12_345))
        venue.routes[("GET", "/fapi/v1/premiumIndex")] = (
            429,
            {"code": -1003, "msg": "Too many requests"},
            {},
        )
        venue.routes[("DELETE", "/fapi/v1/order")] = (200, {"orderId": 7, "status": "CANCELED"}, {})
        async with client(venue) as rest:
            with pytest.raises(E.RateLimited) as first:
                await rest.premium_index("BTCUSDT")
            assert (first.value.http_status, first.value.retry_after_s) == (429, None)
            assert rest.rate.backoff_until_ms == T0 + MINUTE
            venue.clock.now = T0 + 58_999
            sent = len(venue.seen)
            with pytest.raises(E.RateLimited) as fast:
                await rest.premium_index("BTCUSDT")
            assert fast.value.retry_after_s == 1.001
            assert len(venue.seen) == sent  # failed fast: nothing sent
            await rest.cancel_order("BTCUSDT", "sf1-TP1-BTCUSDT")  # a cancel is not held back
            assert venue.paths()[-1] == ("DELETE", "/fapi/v1/order")
            # Within 1 s of the end (D-48): held to the end of the back-off, then sent.
            venue.clock.now = T0 + 59_999
            venue.routes[("GET", "/fapi/v1/premiumIndex")] = (200, {"symbol": "BTCUSDT"}, {})
            assert await rest.premium_index("BTCUSDT") == {"symbol": "BTCUSDT"}
            assert venue.clock.now >= T0 + MINUTE
            venue.clock.now = T0 + MINUTE
            assert await rest.premium_index("BTCUSDT") == {"symbol": "BTCUSDT"}

    run(go())


def test_429_with_retry_after_waits_what_it_says() -> None:
    async def go() -> None:
        venue = FakeVenue(FakeClock(T0 + 1_000))
        venue.routes[("GET", "/fapi/v1/premiumIndex")] = (
            429,
            {"code": -1003, "msg": "x"},
            {"Retry-After": "3"},
        )
        async with client(venue) as rest:
            with pytest.raises(E.RateLimited):
                await rest.premium_index("BTCUSDT")
            assert rest.rate.backoff_until_ms == T0 + 4_000

    run(go())


def test_418_ban_stops_every_request_signed_or_not_until_its_end() -> None:
    async def go() -> None:
        until = T0 + 7 * MINUTE
        venue = FakeVenue(FakeClock(T0 + 5_000))
        venue.routes[("GET", "/fapi/v1/premiumIndex")] = (
            418,
            {"code": -1003, "msg": f"Way too many requests; IP(203.0.113.9) banned until {until}."},
            {},
        )
        async with client(venue) as rest:
            await rest.sync_time()
            with pytest.raises(E.RateLimited) as ban:
                await rest.premium_index("BTCUSDT")
            assert (ban.value.http_status, ban.value.banned_until_ms) == (418, until)
            sent = len(venue.seen)
            calls: list[Callable[[], Awaitable[Any]]] = [
                rest.server_time,  # unsigned
                lambda: rest.premium_index("BTCUSDT"),
                rest.new_listen_key,  # API key only
                rest.keepalive_listen_key,
                rest.balance,  # signed read
                lambda: rest.cancel_order("BTCUSDT", "sf1-TP1-BTCUSDT"),  # urgent cancel
                lambda: rest.cancel_algo_order("sf1-MD1-BTCUSDT"),
                lambda: rest.place_order(CLOSE),  # urgent close
                lambda: rest.place_order(ENTRY),
                lambda: rest.sync_time(urgent=True),
            ]
            end = until + BAN_END_MARGIN_MS  # D-52: kept a margin past the venue's end
            for at in (T0 + 5_001, end - 2_001):  # held only within 1 s + the margin (D-48, D-52)
                venue.clock.now = at
                for call in calls:
                    with pytest.raises(E.RateLimited) as fast:
                        await call()
                    assert fast.value.http_status == 418 and fast.value.banned_until_ms == end
            assert len(venue.seen) == sent  # not one request during the ban
            venue.routes[("POST", "/fapi/v1/order")] = ORDER_ACK
            venue.clock.now = end - 1  # within 1 s of its end (D-48): held, sent once it is over
            assert (await rest.place_order(CLOSE))["orderId"] == 7
            assert venue.clock.now >= end and len(venue.seen) == sent + 1
            venue.clock.now = end
            assert await rest.server_time() == end

    run(go())


def test_ban_that_begins_while_a_request_waits_for_the_clock_sync_stops_it() -> None:
    """The ban is checked right before sending, not only on entry: a signed request that awaited the
    first time sync while another request earned a 418 sends nothing."""

    async def go() -> None:
        venue = FakeVenue(FakeClock(T0))
        until = T0 + MINUTE
        rest = client(venue)
        original = rest.sync_time

        async def sync_then_ban(*, urgent: bool = False) -> int:
            offset = await (original(urgent=True) if urgent else original())
            rest.rate.banned_until_ms = until  # a concurrent request was answered 418 meanwhile
            return offset

        rest.sync_time = sync_then_ban  # type: ignore[method-assign]
        async with rest:
            with pytest.raises(E.RateLimited):
                await rest.balance()
            assert venue.paths() == []

    run(go())


def test_used_weight_near_the_limit_holds_reads_to_the_next_minute_but_never_a_cancel() -> None:
    async def go() -> None:
        venue = FakeVenue(FakeClock(T0 + 30_000))
        heavy = {"X-MBX-USED-WEIGHT-1M": "1918"}
        venue.routes[("GET", "/fapi/v1/premiumIndex")] = (200, {"symbol": "BTCUSDT"}, heavy)
        venue.routes[("DELETE", "/fapi/v1/order")] = (
            200,
            {"status": "CANCELED"},
            {"X-MBX-USED-WEIGHT-1M": "1919"},
        )
        venue.routes[("GET", "/fapi/v3/balance")] = (200, [], {"X-MBX-USED-WEIGHT-1M": "5"})
        sleeps: list[float] = []
        async with client(venue, sleeps) as rest:
            await rest.sync_time()
            await rest.premium_index("BTCUSDT")
            assert rest.rate.used_weight_1m == 1918
            await rest.cancel_order("BTCUSDT", "sf1-TP1-BTCUSDT")  # 1918 + 1 <= 2400: at once
            assert venue.seen[-1][1:] == (
                "/fapi/v1/order",
                {"symbol": "BTCUSDT", "origClientOrderId": "sf1-TP1-BTCUSDT", **_signed(venue.seen[-1][2])},
                T0 + 30_000,
            )
            assert sleeps == []
            # 1919 + 5 > 80 % of 2400: the read is not sent before the minute's counter resets;
            # 30 s is too long to hold a caller, so it is told when to come back
            sent = len(venue.seen)
            with pytest.raises(E.RateLimited) as held:
                await rest.balance()
            assert (held.value.retry_after_s, held.value.http_status, len(venue.seen)) == (30.0, 0, sent)
            venue.clock.now = T0 + MINUTE - 1_500  # 1.5 s to go: held inline, then sent
            assert await rest.balance() == []
            method, path, _, at = venue.seen[-1]
            assert (method, path, at) == ("GET", "/fapi/v3/balance", T0 + MINUTE)
            assert sum(sleeps) == pytest.approx(1.5, abs=0.01) and max(sleeps) <= 1.0

    run(go())


def _signed(params: dict[str, str]) -> dict[str, str]:
    return {k: params[k] for k in ("recvWindow", "timestamp", "signature")}


def test_exchange_info_rate_limits_replace_the_defaults() -> None:
    async def go() -> None:
        venue = FakeVenue(FakeClock(T0 + 1_000))
        venue.routes[("GET", "/fapi/v1/exchangeInfo")] = (
            200,
            {
                "rateLimits": [
                    {
                        "rateLimitType": "REQUEST_WEIGHT",
                        "interval": "MINUTE",
                        "intervalNum": 1,
                        "limit": 1000,
                    },
                    {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1, "limit": 600},
                    {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 50},
                ],
                "symbols": [],
            },
            {"X-MBX-USED-WEIGHT-1M": "794"},
        )
        venue.routes[("GET", "/fapi/v1/premiumIndex")] = (200, {}, {"X-MBX-USED-WEIGHT-1M": "800"})
        sleeps: list[float] = []
        async with client(venue, sleeps) as rest:
            await rest.exchange_info()
            assert (rest.rate.limits.weight_1m, rest.rate.limits.orders_1m, rest.rate.limits.orders_10s) == (
                1000,
                600,
                50,
            )
            await rest.premium_index("BTCUSDT")  # 794 + 1 <= 800: goes
            assert venue.seen[-1][3] == T0 + 1_000
            with pytest.raises(E.RateLimited) as held:  # 800 + 1 > 800: not before the next minute
                await rest.premium_index("BTCUSDT")
            assert held.value.retry_after_s == 59.0
            venue.clock.now = T0 + MINUTE - 500
            await rest.premium_index("BTCUSDT")
            assert venue.seen[-1][3] == T0 + MINUTE

    run(go())


def test_order_counters_hold_new_entries_but_not_closes() -> None:
    async def go() -> None:
        venue = FakeVenue(FakeClock(T0 + 3_000))
        venue.routes[("POST", "/fapi/v1/order")] = (
            200,
            {"orderId": 7, "status": "NEW"},
            {"X-MBX-ORDER-COUNT-10S": "240", "X-MBX-ORDER-COUNT-1M": "240"},
        )
        sleeps: list[float] = []
        async with client(venue, sleeps) as rest:
            await rest.sync_time()
            await rest.place_order(ENTRY)
            assert venue.seen[-1][3] == T0 + 3_000
            await rest.place_order(CLOSE)  # 241 <= 300: a close goes at once
            assert venue.seen[-1][3] == T0 + 3_000 and sleeps == []
            with pytest.raises(E.RateLimited) as held:  # 241 > 80 % of 300: the next 10-second slot
                await rest.place_order(ENTRY)
            assert held.value.retry_after_s == 7.0
            venue.clock.now = T0 + 9_000
            await rest.place_order(ENTRY)
            assert venue.seen[-1][3] == T0 + 10_000
            hedge_close = {**CLOSE, "positionSide": "SHORT"}
            del hedge_close["reduceOnly"]
            venue.routes[("POST", "/fapi/v1/order")] = (
                200,
                {"orderId": 8, "status": "NEW"},
                {"X-MBX-ORDER-COUNT-10S": "300", "X-MBX-ORDER-COUNT-1M": "300"},
            )
            await rest.place_order(hedge_close)  # a close on the SHORT leg: 241 <= 300, at once
            assert venue.seen[-1][3] == T0 + 10_000
            # at the limit itself even a close waits (the venue would refuse it), only until the slot turns
            await rest.place_order(hedge_close)
            assert venue.seen[-1][3] == T0 + 20_000

    run(go())


# --------------------------------------------------------------------------------------------
# 3. hedge mode: legs keyed by (symbol, position side); a LONG leg is never ours
# --------------------------------------------------------------------------------------------


def test_hedge_positions_are_keyed_by_symbol_and_side() -> None:
    rows = [
        {"symbol": "BTCUSDT", "positionSide": "LONG", "positionAmt": "0.500", "entryPrice": "90000"},
        {"symbol": "BTCUSDT", "positionSide": "SHORT", "positionAmt": "-0.300", "entryPrice": "95000"},
        {"symbol": "ETHUSDT", "positionSide": "LONG", "positionAmt": "2", "entryPrice": "3000"},
        {"symbol": "ETHUSDT", "positionSide": "SHORT", "positionAmt": "0", "entryPrice": "0"},
    ]
    legs = parse.positions_by_key(rows)
    assert legs[("BTCUSDT", "LONG")] == PositionInfo(
        symbol="BTCUSDT", amount=Decimal("0.500"), entry_price=Decimal("90000"), position_side="LONG"
    )
    assert legs[("BTCUSDT", "SHORT")].amount == Decimal("-0.300")
    assert set(legs) == {("BTCUSDT", "LONG"), ("BTCUSDT", "SHORT"), ("ETHUSDT", "LONG"), ("ETHUSDT", "SHORT")}
    assert parse.short_amount(rows, "BTCUSDT") == Decimal("-0.300")
    assert parse.short_amount(rows, "ETHUSDT") == 0  # a manual LONG alone is not our short
    assert parse.is_our_leg("SHORT") and parse.is_our_leg("BOTH") and not parse.is_our_leg("LONG")


def test_a_leg_whose_side_cannot_be_told_is_never_read_as_ours() -> None:
    update = {
        "e": "ACCOUNT_UPDATE",
        "E": 2,
        "T": 2,
        "a": {"m": "ORDER", "B": [], "P": [{"s": "BTCUSDT", "pa": "0.5", "ep": "90000", "ps": "long"}]},
    }
    assert parse.decode_message(update, 5) == []  # not a BOTH leg of 0.5
    hedge = {**update, "a": {"m": "ORDER", "B": [], "P": [
        {"s": "BTCUSDT", "pa": "0.5", "ep": "90000", "ps": "LONG"},
        {"s": "BTCUSDT", "pa": "-0.3", "ep": "95000", "ps": "SHORT"},
    ]}}  # fmt: skip
    assert [
        (e.position_side, e.amount) for e in parse.decode_message(hedge, 5) if isinstance(e, PositionChanged)
    ] == [
        ("LONG", Decimal("0.5")),
        ("SHORT", Decimal("-0.3")),
    ]
    with pytest.raises(ValueError):
        parse.positions_from_rest(
            [{"symbol": "BTCUSDT", "positionSide": "", "positionAmt": "1", "entryPrice": "1"}]
        )


# --------------------------------------------------------------------------------------------
# 4. gap read-back: every symbol of the account; malformed bodies logged and skipped
# --------------------------------------------------------------------------------------------


def _risk(rows: list[dict[str, str]]) -> Reply:
    return (200, rows, {})


def test_gap_read_back_covers_every_symbol_of_the_account() -> None:
    """A manual short opened on ETHUSDT and our BTCUSDT short closed by hand during the gap both
    reach the core as the PositionChanged events the stream would have pushed."""

    async def go() -> None:
        venue = FakeVenue(FakeClock(T0))
        venue.routes[("GET", "/fapi/v1/positionSide/dual")] = (200, {"dualSidePosition": False}, {})
        venue.routes[("GET", "/fapi/v3/positionRisk")] = _risk(
            [{"symbol": "ETHUSDT", "positionSide": "BOTH", "positionAmt": "-1.5", "entryPrice": "3000"}]
        )
        async with client(venue) as rest:
            events = await reconcile.gap_read_back(rest, [], ["BTCUSDT"], 42)
        assert events == [
            PositionModeChanged(now_ms=42, mode="ONE_WAY"),
            PositionChanged(
                now_ms=42, symbol="BTCUSDT", amount=Decimal(0), entry_price=Decimal(0), position_side="BOTH"
            ),
            PositionChanged(
                now_ms=42,
                symbol="ETHUSDT",
                amount=Decimal("-1.5"),
                entry_price=Decimal("3000"),
                position_side="BOTH",
            ),
        ]
        risk = [p for m, path, p, _ in venue.seen if path == "/fapi/v3/positionRisk"]
        assert len(risk) == 1 and "symbol" not in risk[0]  # the whole account, not our symbols

    run(go())


def test_gap_read_back_in_hedge_mode_sends_each_leg_ours_last() -> None:
    async def go() -> None:
        venue = FakeVenue(FakeClock(T0))
        venue.routes[("GET", "/fapi/v1/positionSide/dual")] = (200, {"dualSidePosition": True}, {})
        venue.routes[("GET", "/fapi/v3/positionRisk")] = _risk(
            [
                {"symbol": "BTCUSDT", "positionSide": "SHORT", "positionAmt": "-0.3", "entryPrice": "95000"},
                {"symbol": "BTCUSDT", "positionSide": "LONG", "positionAmt": "0.5", "entryPrice": "90000"},
            ]
        )
        async with client(venue) as rest:
            events = await reconcile.gap_read_back(rest, [], ["BTCUSDT", "SOLUSDT"], 1)
        legs = [(e.symbol, e.position_side, e.amount) for e in events if isinstance(e, PositionChanged)]
        assert legs == [
            ("BTCUSDT", "LONG", Decimal("0.5")),
            ("BTCUSDT", "SHORT", Decimal("-0.3")),
            ("SOLUSDT", "LONG", Decimal(0)),
            ("SOLUSDT", "SHORT", Decimal(0)),
        ]

    run(go())


def test_malformed_user_trades_is_logged_and_skipped_never_raised(caplog: pytest.LogCaptureFixture) -> None:
    """One ``userTrades`` answer shaped as an object: that order is skipped with the body in the
    log; the next order and the positions are still read back."""

    def order(symbol: str, oid: int) -> dict[str, Any]:
        return {
            "symbol": symbol,
            "clientOrderId": f"sf1-E1{oid}-{symbol}",
            "orderId": oid,
            "side": "SELL",
            "type": "LIMIT",
            "status": "FILLED",
            "price": "10",
            "origQty": "1",
            "executedQty": "1",
            "avgPrice": "10",
            "positionSide": "BOTH",
        }

    def order_route(request: httpx.Request) -> Reply:
        symbol = request.url.params["symbol"]
        return (200, order(symbol, 1 if symbol == "BTCUSDT" else 2), {})

    def trades_route(request: httpx.Request) -> Reply:
        if request.url.params["symbol"] == "BTCUSDT":
            return (200, {"id": 1, "qty": "1", "price": "10", "note": "an object, not a list"}, {})
        return (200, [{"id": 9, "qty": "1", "price": "10", "realizedPnl": "0", "commission": "0.01"}], {})

    async def go() -> list[Any]:
        venue = FakeVenue(FakeClock(T0))
        venue.routes[("GET", "/fapi/v1/order")] = order_route
        venue.routes[("GET", "/fapi/v1/userTrades")] = trades_route
        venue.routes[("GET", "/fapi/v1/positionSide/dual")] = (200, {"dualSidePosition": False}, {})
        venue.routes[("GET", "/fapi/v3/positionRisk")] = (200, {"positions": "not a list"}, {})
        tracked = [
            reconcile.Tracked("BTCUSDT", "sf1-E11-BTCUSDT", False, Decimal(0), "NEW"),
            reconcile.Tracked("ETHUSDT", "sf1-E12-ETHUSDT", False, Decimal(0), "NEW"),
        ]
        async with client(venue) as rest:
            return await reconcile.gap_read_back(rest, tracked, ["BTCUSDT"], 7)

    with caplog.at_level(logging.WARNING, logger="binance.reconcile"):
        events = run(go())
    fills = [e for e in events if isinstance(e, OrderUpdated)]
    assert [(f.symbol, f.trade_id, f.cum_qty, f.status) for f in fills] == [
        ("ETHUSDT", 9, Decimal(1), "FILLED")
    ]
    assert events[0] == PositionModeChanged(now_ms=7, mode="ONE_WAY")
    assert not [e for e in events if isinstance(e, PositionChanged)]  # the malformed read is skipped
    text = caplog.text
    assert "sf1-E11-BTCUSDT: malformed answer skipped" in text and "an object, not a list" in text
    assert "position re-read: malformed answer skipped" in text and "not a list" in text


def test_failed_mode_read_keeps_the_known_mode() -> None:
    async def go() -> None:
        venue = FakeVenue(FakeClock(T0))
        venue.routes[("GET", "/fapi/v1/positionSide/dual")] = (200, {"dualSidePosition": "yes"}, {})
        async with client(venue) as rest:
            assert await reconcile.position_mode_event(rest, 1) is None
            venue.routes[("GET", "/fapi/v1/positionSide/dual")] = (200, {"dualSidePosition": True}, {})
            assert await reconcile.position_mode_event(rest, 2) == PositionModeChanged(now_ms=2, mode="HEDGE")

    run(go())


# --------------------------------------------------------------------------------------------
# 5. supervision: every long-lived task survives an unexpected exception
# --------------------------------------------------------------------------------------------

MARK = {"e": "markPriceUpdate", "E": T0, "s": "BTCUSDT", "p": "95000.0"}


class Crashes:
    """A crash hook that records (name, exception type, restart count)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, int]] = []

    async def __call__(self, name: str, exc: BaseException, restarts: int) -> None:
        self.seen.append((name, type(exc).__name__, restarts))


def test_market_stream_restarts_after_a_crash_and_reports_it() -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.send(json.dumps({"stream": "btcusdt@markPrice@1s", "data": MARK}))
        await ws.wait_closed()

    async def go() -> None:
        crashes = Crashes()
        ticks: list[MarkPriceTick] = []
        done = asyncio.Event()

        async def on_item(item: Any) -> None:
            if isinstance(item, MarkPriceTick):
                if not crashes.seen:
                    raise RuntimeError("consumer bug")
                ticks.append(item)
                done.set()

        async with serve(handler, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            stream = MarketStream(f"ws://127.0.0.1:{port}", on_item, clock_ms=lambda: 5, on_crash=crashes)
            stream.symbols = {"BTCUSDT"}
            task = asyncio.create_task(stream.run())
            await asyncio.wait_for(done.wait(), 5)
            stream.stop()
            await asyncio.wait_for(task, 5)
        assert crashes.seen == [("market stream", "RuntimeError", 1)]
        assert [(t.symbol, t.price) for t in ticks] == [("BTCUSDT", Decimal("95000.0"))]
        assert stream.connections == 2

    run(go())


def test_user_stream_restarts_after_a_crashing_reconciliation_and_reconciles_again() -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.wait_closed()

    async def go() -> None:
        venue = FakeVenue(FakeClock(T0))
        venue.routes[("POST", "/fapi/v1/listenKey")] = (200, {"listenKey": "lk1"}, {})
        crashes = Crashes()
        reconciles: list[int] = []

        async def on_reconcile() -> None:
            reconciles.append(len(reconciles))
            if len(reconciles) == 1:
                raise TypeError("string indices must be integers")  # the malformed userTrades of the issue

        async def on_item(item: Any) -> None:
            return None

        async with serve(handler, "127.0.0.1", 0) as server, client(venue) as rest:
            port = server.sockets[0].getsockname()[1]
            user = UserStream(
                rest, f"ws://127.0.0.1:{port}", on_item, on_reconcile, clock_ms=lambda: 5, on_crash=crashes
            )
            user.backoff = Backoff(base_s=0.01)
            user.reconcile_first = True
            task = asyncio.create_task(user.run())
            await asyncio.wait_for(user.opened.wait(), 5)
            assert not task.done()
            user.stop()
            await asyncio.wait_for(task, 5)
        assert crashes.seen == [("user stream", "TypeError", 1)]
        assert reconciles == [0, 1]

    run(go())


def test_price_poller_restarts_after_a_crash() -> None:
    async def go() -> None:
        venue = FakeVenue(FakeClock(T0))
        venue.routes[("GET", "/fapi/v1/premiumIndex")] = (
            200,
            {"symbol": "BTCUSDT", "markPrice": "95000", "time": T0},
            {},
        )
        crashes = Crashes()
        got: list[Any] = []
        done = asyncio.Event()

        async def on_event(ev: Any) -> None:
            if not crashes.seen:
                raise KeyError("consumer bug")
            got.append(ev)
            done.set()

        async with client(venue) as rest:
            poller = PremiumIndexPoller(rest, on_event, clock_ms=lambda: 9, interval_s=0.01, on_crash=crashes)
            poller.set_symbols(["BTCUSDT"])
            poller.use_source(UsePriceSource(source="REST", reason="test"))
            task = asyncio.create_task(poller.run())
            await asyncio.wait_for(done.wait(), 5)
            poller.stop()
            await asyncio.wait_for(task, 5)
        assert crashes.seen == [("price poller", "KeyError", 1)]
        assert isinstance(got[0], MarkPriceTick) and got[0].price == Decimal("95000")

    run(go())


def test_stop_during_the_back_off_ends_the_run_without_another_restart() -> None:
    async def go() -> None:
        crashes = Crashes()

        async def on_item(item: Any) -> None:
            if isinstance(item, WsStatusChanged):
                raise RuntimeError("always")

        stream = MarketStream("ws://127.0.0.1:9", on_item, on_crash=crashes, backoff=Backoff(base_s=30))
        task = asyncio.create_task(stream.run())
        await asyncio.sleep(0.2)
        stream.stop()
        await asyncio.wait_for(task, 5)
        assert [name for name, _, _ in crashes.seen] == ["market stream"]

    run(go())


# --------------------------------------------------------------------------------------------
# 6. leverage and margin type from symbolConfig (v2 positionRisk on a 404); algo status helper
# --------------------------------------------------------------------------------------------


def test_symbol_config_is_read_from_symbol_config() -> None:
    async def go() -> None:
        venue = FakeVenue(FakeClock(T0))
        venue.routes[("GET", "/fapi/v1/symbolConfig")] = (
            200,
            [
                {
                    "symbol": "BTCUSDT",
                    "marginType": "ISOLATED",
                    "isAutoAddMargin": "false",
                    "leverage": 3,
                    "maxNotionalValue": "1000000",
                }
            ],
            {},
        )
        async with client(venue) as rest:
            rows = await rest.symbol_config("BTCUSDT")
        assert parse.symbol_configs_from_rest(rows) == {
            "BTCUSDT": parse.SymbolConfig(symbol="BTCUSDT", leverage=3, margin_type="ISOLATED")
        }
        assert venue.paths() == [("GET", "/fapi/v1/symbolConfig")]
        assert venue.seen[-1][2]["symbol"] == "BTCUSDT"

    run(go())


def test_symbol_config_falls_back_to_v2_position_risk_on_a_404() -> None:
    async def go() -> None:
        venue = FakeVenue(FakeClock(T0))
        venue.routes[("GET", "/fapi/v2/positionRisk")] = (
            200,
            [
                {"symbol": "BTCUSDT", "positionSide": "LONG", "leverage": "20", "marginType": "cross"},
                {"symbol": "BTCUSDT", "positionSide": "SHORT", "leverage": "20", "marginType": "cross"},
            ],
            {},
        )
        async with client(venue) as rest:
            rows = await rest.symbol_config("BTCUSDT")
        assert rows == [
            {
                "symbol": "BTCUSDT",
                "marginType": "CROSSED",
                "isAutoAddMargin": "false",
                "leverage": 20,
                "maxNotionalValue": "",
            }
        ]
        assert parse.symbol_configs_from_rest(rows)["BTCUSDT"].margin_type == "CROSSED"
        assert venue.paths() == [("GET", "/fapi/v1/symbolConfig"), ("GET", "/fapi/v2/positionRisk")]

    run(go())


def test_symbol_config_other_failures_are_not_hidden() -> None:
    async def go() -> None:
        venue = FakeVenue(FakeClock(T0))
        venue.routes[("GET", "/fapi/v1/symbolConfig")] = (401, {"code": -2015, "msg": "Invalid API-key"}, {})
        async with client(venue) as rest:
            with pytest.raises(E.AuthFailed):
                await rest.symbol_config("BTCUSDT")
        assert venue.paths() == [("GET", "/fapi/v1/symbolConfig")]

    run(go())


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ((200, {"algoId": 1, "clientAlgoId": "c", "algoStatus": "NEW"}, {}), "NEW"),
        ((200, {"algoId": 1, "clientAlgoId": "c", "algoStatus": "FINISHED"}, {}), "FINISHED"),
        ((200, {"algoId": 1, "clientAlgoId": "c", "algoStatus": "CANCELED"}, {}), "CANCELED"),
        ((400, {"code": -2013, "msg": "Order does not exist."}, {}), None),
    ],
)
def test_algo_order_status_decides_already_gone(reply: Reply, expected: str | None) -> None:
    async def go() -> str | None:
        venue = FakeVenue(FakeClock(T0))
        venue.routes[("GET", "/fapi/v1/algoOrder")] = reply
        async with client(venue) as rest:
            return await rest.algo_order_status("sf1-MD1-BTCUSDT")

    assert run(go()) == expected


def test_algo_order_status_raises_when_the_query_itself_failed() -> None:
    async def go() -> None:
        venue = FakeVenue(FakeClock(T0))
        async with client(venue) as rest:
            with pytest.raises(E.Rejected):  # a 404 page without a code: the route, not the order
                await rest.algo_order_status("c")
            venue.routes[("GET", "/fapi/v1/algoOrder")] = (503, {"msg": "Service Unavailable."}, {})
            with pytest.raises(E.Retryable):
                await rest.algo_order_status("c")
            venue.routes[("GET", "/fapi/v1/algoOrder")] = (200, {"algoId": 1}, {})
            with pytest.raises(ValueError):
                await rest.algo_order_status("c")

    run(go())


def test_a_storm_of_short_user_stream_connections_keeps_backing_off() -> None:
    """Each reconnect costs REST weight (listenKey, the gap read-back): a connection that drops at
    once must not reset the back-off, or a storm reads the account back twice a second."""

    async def handler(ws: ServerConnection) -> None:
        await ws.close()

    async def go() -> None:
        venue = FakeVenue(FakeClock(T0))
        venue.routes[("POST", "/fapi/v1/listenKey")] = (200, {"listenKey": "lk1"}, {})
        reconciles: list[int] = []

        async def on_reconcile() -> None:
            reconciles.append(1)

        async def on_item(item: Any) -> None:
            return None

        async with serve(handler, "127.0.0.1", 0) as server, client(venue) as rest:
            port = server.sockets[0].getsockname()[1]
            user = UserStream(rest, f"ws://127.0.0.1:{port}", on_item, on_reconcile, clock_ms=lambda: 5)
            user.backoff = Backoff(base_s=0.005, cap_s=1.0)
            task = asyncio.create_task(user.run())
            async with asyncio.timeout(10):
                while user.connections < 5:
                    await asyncio.sleep(0.005)
            user.stop()
            await asyncio.wait_for(task, 5)
        # 5 ms, 10, 20, 40...: never started over (the last drop may come after the stop or not).
        assert user.connections >= 5 and user.backoff.attempt >= user.connections - 1
        assert len(reconciles) == user.connections - 1  # every reconnect read the gap back

    run(go())
