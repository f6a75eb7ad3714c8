"""The real REST client against the simulated venue over loopback, endpoint by endpoint and fault by fault."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from decimal import Decimal

import pytest
from binance_simkit import KEY, SECRET, run, venue, wait_for

from binance import errors as E
from binance import parse
from binance.rest import BAN_END_MARGIN_MS, BinanceRest, request_weight, sign, signed_query
from binance.sim.server import RestFault

LIMIT_SELL = {
    "symbol": "BTCUSDT",
    "side": "SELL",
    "type": "LIMIT",
    "quantity": "0.010",
    "price": "96000.0",
    "timeInForce": "GTC",
    "newClientOrderId": "s1-ENTRY1-0",
}


def count(v: object, method: str, path: str) -> int:
    return sum(1 for r in v.requests if r == (method, path))  # type: ignore[attr-defined]


# --------------------------------------------------------------------------------------------
# signing
# --------------------------------------------------------------------------------------------


def test_sign_matches_hmac_sha256_of_documented_query() -> None:
    query = (
        "symbol=LTCBTC&side=BUY&type=LIMIT&timeInForce=GTC&quantity=1&price=0.1"
        "&recvWindow=5000&timestamp=1499827319559"
    )
    secret = "example-secret-for-tests"
    expected = hmac.new(secret.encode(), query.encode(), hashlib.sha256).hexdigest()
    assert sign(query, secret) == expected
    assert len(expected) == 64


def test_signed_query_layout() -> None:
    q = signed_query({"symbol": "BTCUSDT", "side": "BUY"}, "s3cr3t", 1499827319559, 5000)
    body, sig = q.rsplit("&signature=", 1)
    assert body == "symbol=BTCUSDT&side=BUY&recvWindow=5000&timestamp=1499827319559"
    assert sig == hmac.new(b"s3cr3t", body.encode(), hashlib.sha256).hexdigest()


# --------------------------------------------------------------------------------------------
# public endpoints
# --------------------------------------------------------------------------------------------


def test_time_exchange_info_cached_premium_index_klines() -> None:
    async def go() -> None:
        async with venue() as (ex, v, rest):
            assert await rest.server_time() == ex.now()
            info = await rest.exchange_info()
            again = await rest.exchange_info()
            assert info == again
            assert count(v, "GET", "/fapi/v1/exchangeInfo") == 1
            btc = parse.symbol_infos(info)["BTCUSDT"]
            assert (btc.tick_size, btc.step_size, btc.min_notional) == (
                Decimal("0.10"),
                Decimal("0.001"),
                Decimal("100"),
            )
            ex.advance(300_001)
            await rest.exchange_info()
            assert count(v, "GET", "/fapi/v1/exchangeInfo") == 2  # TTL expired

            one = await rest.premium_index("BTCUSDT")
            tick = parse.mark_price_from_rest(one, 1)
            assert (tick.symbol, tick.price, tick.event_time_ms) == (
                "BTCUSDT",
                Decimal("95000"),
                ex.mark_time["BTCUSDT"],
            )
            assert {d["symbol"] for d in await rest.premium_index()} == {
                "BTCUSDT",
                "ETHUSDT",
                "DOGEUSDT",
                "SOLUSDT",
            }

            t0 = ex.now() // 180_000 * 180_000 + 180_000
            ex.clock.set(t0)  # type: ignore[attr-defined]
            for i, price in enumerate(["95010", "95100", "94900", "95050"]):
                ex.clock.set(t0 + i * 60_000)  # type: ignore[attr-defined]
                ex.set_mark("BTCUSDT", Decimal(price))
            rows = await rest.klines("BTCUSDT", "3m", start_ms=t0)
            candles = parse.candles_from_rest(rows)
            assert [(c.open_time_ms, c.close_time_ms, c.open, c.high, c.low, c.close) for c in candles] == [
                (
                    t0,
                    t0 + 179_999,
                    Decimal("95010.0"),
                    Decimal("95100.0"),
                    Decimal("94900.0"),
                    Decimal("94900.0"),
                ),
                (
                    t0 + 180_000,
                    t0 + 359_999,
                    Decimal("95050.0"),
                    Decimal("95050.0"),
                    Decimal("95050.0"),
                    Decimal("95050.0"),
                ),
            ]
            with pytest.raises(E.Rejected) as bad:
                await rest.klines("NOPEUSDT")
            assert bad.value.code == -1121

    run(go())


def test_stale_premium_index() -> None:
    async def go() -> None:
        async with venue() as (ex, _v, rest):
            ex.make_premium_stale("BTCUSDT")
            frozen = ex.now()
            ex.advance(20_000)
            ex.set_mark("BTCUSDT", Decimal("96000"))
            d = await rest.premium_index("BTCUSDT")
            assert (d["time"], d["markPrice"]) == (frozen, "95000.00000")

    run(go())


# --------------------------------------------------------------------------------------------
# account endpoints
# --------------------------------------------------------------------------------------------


def test_account_endpoints_and_config() -> None:
    async def go() -> None:
        async with venue(hedge_mode=True) as (ex, _v, rest):
            assert parse.position_mode_from_rest(await rest.position_mode()) == "HEDGE"
            assert parse.balance_from_rest(await rest.balance()) == (
                Decimal("10000.00000000"),
                Decimal("10000.00000000"),
            )
            acct = await rest.account()
            assert acct["availableBalance"] == "10000.00000000"
            assert await rest.position_risk() == []
            v2 = await rest.position_risk_v2("BTCUSDT")
            assert [(r["positionSide"], r["leverage"], r["marginType"]) for r in v2] == [
                ("LONG", "20", "cross"),
                ("SHORT", "20", "cross"),
            ]
            assert await rest.set_leverage("BTCUSDT", 1) == {
                "leverage": 1,
                "maxNotionalValue": "1000000",
                "symbol": "BTCUSDT",
            }
            assert await rest.set_margin_type("BTCUSDT", "ISOLATED") is True
            assert await rest.set_margin_type("BTCUSDT", "ISOLATED") is False  # -4046 is success
            assert (ex.leverage["BTCUSDT"], ex.margin_type["BTCUSDT"]) == (1, "isolated")

    run(go())


def test_v3_404_falls_back_to_v2() -> None:
    async def go() -> None:
        async with venue() as (_ex, v, rest):
            v.disable_route("GET", "/fapi/v3/balance")
            rows = await rest.balance()
            assert rows[0]["asset"] == "USDT"
            assert count(v, "GET", "/fapi/v3/balance") == 1
            assert count(v, "GET", "/fapi/v2/balance") == 1

    run(go())


# --------------------------------------------------------------------------------------------
# orders
# --------------------------------------------------------------------------------------------


def test_limit_place_query_open_cancel_and_weights() -> None:
    async def go() -> None:
        async with venue() as (_ex, _v, rest):
            placed = await rest.place_order(LIMIT_SELL)
            assert (placed["status"], placed["clientOrderId"], placed["type"]) == (
                "NEW",
                "s1-ENTRY1-0",
                "LIMIT",
            )
            assert rest.rate.order_count_10s == 1 and rest.rate.order_count_1m == 1
            assert rest.rate.used_weight_1m > 0
            opened = [parse.open_order_from_rest(o) for o in await rest.open_orders("BTCUSDT")]
            assert [(o.client_order_id, o.price, o.orig_qty) for o in opened] == [
                ("s1-ENTRY1-0", Decimal("96000.0"), Decimal("0.010"))
            ]
            cancelled = await rest.cancel_order("BTCUSDT", "s1-ENTRY1-0")
            assert cancelled["status"] == "CANCELED"
            assert (await rest.query_order("BTCUSDT", "s1-ENTRY1-0"))["status"] == "CANCELED"
            assert await rest.open_orders() == []
            with pytest.raises(E.Rejected) as gone:
                await rest.cancel_order("BTCUSDT", "s1-ENTRY1-0")
            assert gone.value.code == -2011
            with pytest.raises(E.Rejected) as missing:
                await rest.query_order("BTCUSDT", "never-sent")
            assert missing.value.code == -2013

    run(go())


def test_limit_fills_at_mark_and_market_order_closes_with_pnl() -> None:
    async def go() -> None:
        async with venue() as (ex, _v, rest):
            await rest.place_order(LIMIT_SELL)
            ex.set_mark("BTCUSDT", Decimal("96000.0"))
            q = await rest.query_order("BTCUSDT", "s1-ENTRY1-0")
            assert (q["status"], q["executedQty"], q["avgPrice"]) == ("FILLED", "0.010", "96000.00000")
            (pos,) = parse.positions_from_rest(await rest.position_risk())
            assert (pos.amount, pos.entry_price) == (Decimal("-0.010"), Decimal("96000.00000"))
            ex.set_mark("BTCUSDT", Decimal("95000.0"))
            close = {
                "symbol": "BTCUSDT",
                "side": "BUY",
                "type": "MARKET",
                "quantity": "0.010",
                "reduceOnly": "true",
                "newClientOrderId": "s1-CLOSE-0",
            }
            res = await rest.place_order(close)
            assert (res["status"], res["executedQty"]) == ("FILLED", "0.010")
            assert await rest.position_risk() == []
            # +10 USDT pnl, maker fee 0.192 on entry, taker fee 0.475 on exit
            assert ex.wallet == Decimal("10000") + Decimal("10") - Decimal("0.192") - Decimal("0.475")

    run(go())


def test_conditional_type_on_classic_endpoint_is_4120() -> None:
    async def go() -> None:
        async with venue() as (_ex, _v, rest):
            stop = {
                "symbol": "BTCUSDT",
                "side": "BUY",
                "type": "STOP_MARKET",
                "stopPrice": "99000",
                "closePosition": "true",
                "newClientOrderId": "x",
            }
            with pytest.raises(E.Rejected) as err:
                await rest.place_order(stop)
            assert err.value.code == -4120
            assert err.value.msg.startswith("Order type not supported for this endpoint")

    run(go())


def test_insufficient_margin_min_notional_bad_symbol() -> None:
    async def go() -> None:
        async with venue(balance=Decimal("10")) as (ex, _v, rest):
            with pytest.raises(E.InsufficientMargin) as margin:
                await rest.place_order(LIMIT_SELL)  # 960 USDT notional at 20x = 48 > 10
            assert (margin.value.code, margin.value.http_status) == (-2019, 400)
            small = {**LIMIT_SELL, "quantity": "0.001", "newClientOrderId": "small"}
            with pytest.raises(E.FilterRejected) as notional:
                await rest.place_order(small)  # 96 < 100
            assert notional.value.code == -4164
            with pytest.raises(E.Rejected) as sym:
                await rest.place_order({**LIMIT_SELL, "symbol": "NOPEUSDT"})
            assert sym.value.code == -1121
            assert ex.orders == {}

    run(go())


def test_algo_stop_market_place_query_trigger_and_cancel() -> None:
    async def go() -> None:
        async with venue() as (ex, _v, rest):
            await rest.place_order({**LIMIT_SELL, "price": "95000.0"})  # fills at once (marketable)
            algo = {
                "algoType": "CONDITIONAL",
                "symbol": "BTCUSDT",
                "side": "BUY",
                "type": "STOP_MARKET",
                "triggerPrice": "99000.0",
                "workingType": "MARK_PRICE",
                "closePosition": "true",
                "clientAlgoId": "s1-MDD-0",
            }
            res = await rest.place_algo_order(algo)
            assert (res["algoStatus"], res["orderType"], res["clientAlgoId"], res["closePosition"]) == (
                "NEW",
                "STOP_MARKET",
                "s1-MDD-0",
                True,
            )
            assert set(res) >= set(parse.as_json_object(res))
            assert [o["clientAlgoId"] for o in await rest.open_algo_orders("BTCUSDT")] == ["s1-MDD-0"]
            assert await rest.open_orders() == []  # algo orders are not regular open orders
            with pytest.raises(E.Rejected) as classic:
                await rest.query_order("BTCUSDT", "s1-MDD-0")
            assert classic.value.code == -2013
            ex.set_mark("BTCUSDT", Decimal("99500.0"))
            done = await rest.query_algo_order("s1-MDD-0")
            assert done["algoStatus"] == "FINISHED"
            child = ex.orders[int(done["actualOrderId"])]
            assert (child.type, child.status, child.executed) == ("MARKET", "FILLED", Decimal("0.010"))
            assert await rest.position_risk() == []
            # a second stop, cancelled
            await rest.place_order({**LIMIT_SELL, "price": "99000.0", "newClientOrderId": "s1-ENTRY1-1"})
            await rest.place_algo_order({**algo, "triggerPrice": "105000.0", "clientAlgoId": "s1-MDD-1"})
            c = await rest.cancel_algo_order("s1-MDD-1")
            assert c == {"algoId": c["algoId"], "clientAlgoId": "s1-MDD-1", "code": "200", "msg": "success"}
            with pytest.raises(E.Rejected) as again:
                await rest.cancel_algo_order("s1-MDD-1")
            assert again.value.code == -2011
            with pytest.raises(E.Rejected) as immediate:
                await rest.place_algo_order({**algo, "triggerPrice": "98000.0", "clientAlgoId": "s1-MDD-2"})
            assert immediate.value.code == -2021

    run(go())


# --------------------------------------------------------------------------------------------
# faults
# --------------------------------------------------------------------------------------------


def test_timestamp_rejected_resyncs_resigns_and_retries_once() -> None:
    drift = [0]

    async def go() -> None:
        async with venue() as (ex, v, _rest):
            rest = BinanceRest(
                api_key=KEY, api_secret=SECRET, base_url=v.rest_url, clock_ms=lambda: ex.now() + drift[0]
            )
            try:
                await rest.balance()
                assert rest.time_offset_ms == 0
                drift[0] = -30_000  # our clock falls 30 s behind
                await rest.balance()
                assert rest.time_offset_ms == 30_000
                assert count(v, "GET", "/fapi/v1/time") == 2
                assert count(v, "GET", "/fapi/v3/balance") == 3
            finally:
                await rest.aclose()

    run(go())


def test_bad_signature_and_bad_key() -> None:
    async def go() -> None:
        async with venue() as (ex, v, _rest):
            wrong_secret = BinanceRest(
                api_key=KEY, api_secret="not-the-secret", base_url=v.rest_url, clock_ms=ex.now
            )
            wrong_key = BinanceRest(
                api_key="unknown", api_secret=SECRET, base_url=v.rest_url, clock_ms=ex.now
            )
            try:
                with pytest.raises(E.AuthFailed) as sig:
                    await wrong_secret.balance()
                assert (sig.value.code, E.category(sig.value)) == (-1022, "auth")
                with pytest.raises(E.AuthFailed) as key:
                    await wrong_key.balance()
                assert (key.value.code, key.value.http_status) == (-2015, 401)
            finally:
                await wrong_secret.aclose()
                await wrong_key.aclose()

    run(go())


def test_429_backs_off_then_succeeds() -> None:
    async def go() -> None:
        async with venue() as (ex, v, rest):
            v.faults.rate_limited = 1
            v.faults.retry_after_s = 2
            with pytest.raises(E.RateLimited) as first:
                await rest.server_time()
            assert (first.value.http_status, first.value.retry_after_s) == (429, 2.0)
            sent = len(v.requests)
            with pytest.raises(E.RateLimited) as fast:
                await rest.server_time()
            assert fast.value.retry_after_s == 2.0
            assert len(v.requests) == sent  # failed fast, nothing sent
            ex.advance(2_000)
            assert await rest.server_time() == ex.now()

    run(go())


def test_418_ban_fails_fast_until_the_ban_ends() -> None:
    async def go() -> None:
        async with venue() as (ex, v, rest):
            until = ex.now() + 120_000
            v.faults.banned_until_ms = until
            with pytest.raises(E.RateLimited) as ban:
                await rest.place_order(LIMIT_SELL)
            assert (ban.value.http_status, ban.value.banned_until_ms) == (418, until)
            sent = len(v.requests)
            for _ in range(3):
                with pytest.raises(E.RateLimited):
                    await rest.balance()
            assert len(v.requests) == sent
            ex.advance(120_000 + BAN_END_MARGIN_MS)  # D-52: the client keeps a margin past the end
            assert (await rest.place_order(LIMIT_SELL))["status"] == "NEW"

    run(go())


def test_timeout_after_acceptance_is_unknown_not_queried_not_resent() -> None:
    """An immediate "not found" proves nothing while the request can still execute, and a client id
    is unique only among open orders: the client sends once and reports the outcome as unknown."""

    async def go() -> None:
        async with venue(timeout_s=0.05) as (ex, v, rest):
            await rest.sync_time()
            v.faults.add(RestFault("POST", "/fapi/v1/order", "hang", after_accept=True, hang_s=0.2))
            with pytest.raises(E.UnknownOutcome):
                await rest.place_order(LIMIT_SELL)
            assert len(ex.orders) == 1
            assert count(v, "POST", "/fapi/v1/order") == 1
            assert count(v, "GET", "/fapi/v1/order") == 0

    run(go())


def test_unknown_5xx_before_acceptance_is_unknown_and_never_resent() -> None:
    async def go() -> None:
        async with venue() as (ex, v, rest):
            v.faults.add(RestFault("POST", "/fapi/v1/order", "status", status=503))
            with pytest.raises(E.UnknownOutcome) as err:
                await rest.place_order(LIMIT_SELL)
            assert err.value.code == -1000
            assert len(ex.orders) == 0
            assert count(v, "POST", "/fapi/v1/order") == 1
            assert count(v, "GET", "/fapi/v1/order") == 0

    run(go())


def test_408_1007_on_algo_order_is_unknown() -> None:
    """binance-real-answers.md: ``POST /fapi/v1/algoOrder`` 408 / -1007 "execution status unknown"."""

    async def go() -> None:
        async with venue() as (ex, v, rest):
            await rest.place_order({**LIMIT_SELL, "price": "95000.0"})
            body = (
                '{"code":-1007,"msg":"Timeout waiting for response from backend server. '
                'Send status unknown; execution status unknown."}'
            )
            v.faults.add(
                RestFault("POST", "/fapi/v1/algoOrder", "status", status=408, body=body, after_accept=True)
            )
            algo = {
                "algoType": "CONDITIONAL",
                "symbol": "BTCUSDT",
                "side": "BUY",
                "type": "STOP_MARKET",
                "triggerPrice": "99000.0",
                "workingType": "MARK_PRICE",
                "closePosition": "true",
                "clientAlgoId": "s1-MDD-0",
            }
            with pytest.raises(E.UnknownOutcome) as err:
                await rest.place_algo_order(algo)
            assert (err.value.http_status, err.value.code) == (408, -1007)
            assert len(ex.algos) == 1
            assert count(v, "POST", "/fapi/v1/algoOrder") == 1
            assert count(v, "GET", "/fapi/v1/algoOrder") == 0

    run(go())


def test_duplicate_client_id_4116_means_it_exists() -> None:
    async def go() -> None:
        async with venue() as (ex, v, rest):
            first = await rest.place_order(LIMIT_SELL)
            second = await rest.place_order(LIMIT_SELL)  # -4116 -> query
            assert second["orderId"] == first["orderId"]
            assert len(ex.orders) == 1
            assert count(v, "GET", "/fapi/v1/order") == 1

    run(go())


def test_html_error_page_on_a_read_is_retryable() -> None:
    async def go() -> None:
        async with venue() as (_ex, v, rest):
            v.faults.add(RestFault("GET", "/fapi/v1/premiumIndex", "html", status=502))
            with pytest.raises(E.Retryable) as err:
                await rest.premium_index("BTCUSDT")
            assert (err.value.http_status, err.value.code) == (502, 0)
            assert (await rest.premium_index("BTCUSDT"))["symbol"] == "BTCUSDT"

    run(go())


def test_cancelled_caller_does_not_cancel_the_request() -> None:
    async def go() -> None:
        async with venue() as (ex, v, rest):
            await rest.sync_time()
            for _ in range(5):
                v.faults.add(RestFault("GET", "/fapi/v1/time", "hang", hang_s=0.02))
                task = asyncio.create_task(rest.server_time())
                await wait_for(lambda: len(rest._inflight) == 1)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                await wait_for(lambda: not rest._inflight)  # the request ran to its end
            assert await rest.server_time() == ex.now()  # the pool still works

    run(go())


def test_listen_key_create_keepalive_delete() -> None:
    async def go() -> None:
        async with venue() as (_ex, _v, rest):
            key = await rest.new_listen_key()
            assert len(key) == 64
            assert await rest.new_listen_key() == key  # the active key comes back
            await rest.keepalive_listen_key()
            await rest.close_listen_key()
            with pytest.raises(E.Rejected) as err:
                await rest.keepalive_listen_key()
            assert err.value.code == -1125

    run(go())


def test_mark_price_klines_weigh_by_limit_like_klines() -> None:
    """The history cache pages markPriceKlines by 1,500: 10 weight each, as klines, not 1."""
    for limit, weight in (("99", 1), ("499", 2), ("1000", 5), ("1500", 10)):
        assert request_weight("GET", "/fapi/v1/markPriceKlines", {"limit": limit}) == weight
    assert request_weight("GET", "/fapi/v1/markPriceKlines", {}) == 5  # default limit 500
    assert request_weight("GET", "/fapi/v1/fundingRate", {"limit": "1000"}) == 1


@pytest.mark.parametrize(
    ("raw", "read"),
    [
        (b'{"orderId":12,"price":"0.1","t":1.5}', {"orderId": 12, "price": "0.1", "t": 1.5}),
        (b'{"id":123456789012345678901234567890}', {"id": 123456789012345678901234567890}),  # > 64 bits
        (b'{"v":NaN}', None),  # json reads NaN; the comparison below is by repr
        ('{"msg":"\u7c3f"}'.encode("utf-16"), {"msg": "\u7c3f"}),  # not UTF-8: httpx's charset guess
    ],
    ids=["plain", "huge-int", "nan", "utf-16"],
)
def test_an_answer_reads_as_json_reads_it(raw: bytes, read: object) -> None:
    """The client reads answers with orjson and falls back to ``Response.json`` for what orjson
    refuses: every body reads exactly as json read it before."""
    import httpx

    from binance.rest import _body

    resp = httpx.Response(200, content=raw)
    assert repr(_body(resp)) == repr(resp.json())
    if read is not None:
        assert _body(resp) == read


@pytest.mark.parametrize("raw", [b"", b"<html>502</html>", b'{"a":'])
def test_an_unreadable_answer_is_a_value_error(raw: bytes) -> None:
    import httpx

    from binance.rest import _body

    with pytest.raises(ValueError):
        _body(httpx.Response(502, content=raw))


@pytest.mark.parametrize(
    ("header", "read"),
    [("nan", None), ("inf", None), ("-5", None), ("Wed, 21 Oct 2026 07:28:00 GMT", None), ("0", 1.0),
     ("2", 2.0), ("1e12", 3 * 86_400.0)],
)  # fmt: skip
def test_a_hostile_retry_after_is_bounded_and_never_hangs_the_client(header: str, read: float | None) -> None:
    """A 429 whose Retry-After is not a finite number of seconds >= 0 falls back to the next
    minute (it raised inside the answer's callback and hung the client: an attack on D-74's
    fetch found it); one under a second waits a second, one past Binance's longest ban waits 3 days."""

    async def go() -> None:
        async with venue() as (ex, v, rest):
            v.faults.add(RestFault("GET", "/fapi/v1/time", "status", status=429, retry_after_s=header))  # type: ignore[arg-type]
            with pytest.raises(E.RateLimited) as first:
                await asyncio.wait_for(rest.server_time(), 5)
            assert (first.value.http_status, first.value.retry_after_s) == (429, read)
            now = ex.now()
            wait_ms = int(read * 1000) if read is not None else (now // 60_000 + 1) * 60_000 - now
            assert rest.rate.backoff_until_ms == now + wait_ms
            sent = len(v.requests)
            with pytest.raises(E.RateLimited):
                await asyncio.wait_for(rest.server_time(), 5)
            assert len(v.requests) == sent  # still backing off: nothing sent
            ex.advance(wait_ms)
            assert await asyncio.wait_for(rest.server_time(), 5) == ex.now()

    run(go())


@pytest.mark.parametrize("header", ["nan", "inf", "-1"])
def test_a_ban_with_a_hostile_retry_after_lasts_the_default_two_minutes(header: str) -> None:
    async def go() -> None:
        async with venue() as (ex, v, rest):
            v.faults.add(RestFault("GET", "/fapi/v1/time", "status", status=418, retry_after_s=header))  # type: ignore[arg-type]
            with pytest.raises(E.RateLimited) as ban:
                await asyncio.wait_for(rest.server_time(), 5)
            assert ban.value.http_status == 418
            assert rest.rate.banned_until_ms == ex.now() + 120_000 + BAN_END_MARGIN_MS

    run(go())
