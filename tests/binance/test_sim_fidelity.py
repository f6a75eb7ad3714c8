"""The simulator answers as the real venue does (issue #12, item 1), checked through plain HTTP and
WebSocket requests shaped like Binance's documentation (not through our client)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from binance_simkit import KEY, SECRET, run, wait_for
from websockets.asyncio.client import ClientConnection, connect

from binance.sim.clock import SimClock
from binance.sim.exchange import SimExchange
from binance.sim.server import SimVenue

MSG_4130 = "An open stop or take profit order with GTE and closePosition in the direction is existing."
MSG_4509 = (
    "Time in Force (TIF) GTE can only be used with open positions. "
    "Please ensure that positions are available."
)
START_MS = 1_767_225_600_000  # SimClock's default start, 2026-01-01T00:00:00Z


@dataclass
class Http:
    """Requests signed the way Binance documents: HMAC-SHA256 over the query string."""

    client: httpx.AsyncClient
    ex: SimExchange

    async def call(
        self, method: str, path: str, params: dict[str, str] | None = None, *, signed: bool = True
    ) -> httpx.Response:
        p = dict(params or {})
        headers = {"X-MBX-APIKEY": KEY}
        if signed:
            p["timestamp"] = str(self.ex.now())
            query = urlencode(p)
            sig = hmac.new(SECRET.encode(), query.encode(), hashlib.sha256).hexdigest()
            query = f"{query}&signature={sig}"
        else:
            query = urlencode(p)
        return await self.client.request(method, f"{path}?{query}" if query else path, headers=headers)

    async def ok(self, method: str, path: str, params: dict[str, str] | None = None, **kw: Any) -> Any:
        resp = await self.call(method, path, params, **kw)
        assert resp.status_code == 200, resp.text
        return resp.json()


@asynccontextmanager
async def sim(**ex_kwargs: Any) -> AsyncIterator[tuple[SimExchange, SimVenue, Http]]:
    ex = SimExchange(clock=SimClock(), api_keys={KEY: SECRET}, **ex_kwargs).answer_as_binance()
    async with SimVenue(ex) as v, httpx.AsyncClient(base_url=v.rest_url) as client:
        yield ex, v, Http(client, ex)


def error(resp: httpx.Response) -> tuple[int, int, str]:
    body = resp.json()
    return resp.status_code, body["code"], body["msg"]


def algo(**kw: str) -> dict[str, str]:
    p = {
        "algoType": "CONDITIONAL",
        "symbol": "BTCUSDT",
        "side": "BUY",
        "type": "STOP_MARKET",
        "triggerPrice": "97000.0",
        "closePosition": "true",
    }
    p.update(kw)
    return p


async def short(http: Http, qty: str = "0.010", symbol: str = "BTCUSDT") -> None:
    await http.ok(
        "POST", "/fapi/v1/order", {"symbol": symbol, "side": "SELL", "type": "MARKET", "quantity": qty}
    )


# --------------------------------------------------------------------------------------------
# a. error answers
# --------------------------------------------------------------------------------------------


def test_close_position_stops_answer_4130_twice_in_one_direction_and_4509_on_a_flat_symbol() -> None:
    async def go() -> None:
        async with sim() as (_ex, _v, http):
            flat = await http.call("POST", "/fapi/v1/algoOrder", algo())
            assert error(flat) == (400, -4509, MSG_4509)
            await short(http)
            first = await http.ok("POST", "/fapi/v1/algoOrder", algo(clientAlgoId="sl-1"))
            assert (first["algoStatus"], first["closePosition"]) == ("NEW", True)
            second = await http.call("POST", "/fapi/v1/algoOrder", algo(clientAlgoId="sl-2"))
            assert error(second) == (400, -4130, MSG_4130)
            tp = await http.call(
                "POST",
                "/fapi/v1/algoOrder",
                algo(type="TAKE_PROFIT_MARKET", triggerPrice="90000.0", clientAlgoId="tp-1"),
            )
            assert tp.status_code == 200  # one closePosition STOP and one TAKE_PROFIT may coexist
            await http.ok("DELETE", "/fapi/v1/algoOrder", {"clientAlgoId": "sl-1"})
            again = await http.ok("POST", "/fapi/v1/algoOrder", algo(clientAlgoId="sl-3"))
            assert again["algoStatus"] == "NEW"

    run(go())


def test_reduce_only_precision_min_notional_market_lot_and_immediate_trigger_answers() -> None:
    async def go() -> None:
        async with sim() as (_ex, _v, http):
            ro = {
                "symbol": "BTCUSDT",
                "side": "BUY",
                "type": "MARKET",
                "quantity": "0.010",
                "reduceOnly": "true",
            }
            assert error(await http.call("POST", "/fapi/v1/order", ro)) == (
                400,
                -2022,
                "ReduceOnly Order is rejected.",
            )
            await short(http, "0.005")
            assert (
                error(await http.call("POST", "/fapi/v1/order", ro))[1] == -2022
            )  # larger than the position
            doge = algo(
                symbol="DOGEUSDT", triggerPrice="0.12045000000000002", closePosition="false", quantity="100"
            )
            doge["reduceOnly"] = "true"
            assert error(await http.call("POST", "/fapi/v1/algoOrder", doge)) == (
                400,
                -1111,
                "Precision is over the maximum defined for this asset.",
            )
            tiny = {"symbol": "BTCUSDT", "side": "SELL", "type": "MARKET", "quantity": "0.001"}
            assert error(await http.call("POST", "/fapi/v1/order", tiny)) == (
                400,
                -4164,
                "Order's notional must be no smaller than 100 (unless you choose reduce only).",
            )
            big = {"symbol": "BTCUSDT", "side": "SELL", "type": "MARKET", "quantity": "121"}
            assert error(await http.call("POST", "/fapi/v1/order", big)) == (
                400,
                -4005,
                "Quantity greater than max quantity.",
            )
            info = await http.ok("GET", "/fapi/v1/exchangeInfo", signed=False)
            btc = next(s for s in info["symbols"] if s["symbol"] == "BTCUSDT")
            lots = {f["filterType"]: f for f in btc["filters"]}
            assert (lots["LOT_SIZE"]["maxQty"], lots["MARKET_LOT_SIZE"]["maxQty"]) == ("1000", "120")
            crossed = await http.call("POST", "/fapi/v1/algoOrder", algo(triggerPrice="94000.0"))
            assert error(crossed) == (400, -2021, "Order would immediately trigger.")

    run(go())


def test_percent_price_is_enforced_as_advertised() -> None:
    async def go() -> None:
        async with sim() as (_ex, _v, http):
            info = await http.ok("GET", "/fapi/v1/exchangeInfo", signed=False)
            btc = next(s for s in info["symbols"] if s["symbol"] == "BTCUSDT")
            (pp,) = [f for f in btc["filters"] if f["filterType"] == "PERCENT_PRICE"]
            assert (pp["multiplierUp"], pp["multiplierDown"]) == ("1.0500", "0.9500")
            limit = {"symbol": "BTCUSDT", "type": "LIMIT", "timeInForce": "GTC", "quantity": "0.010"}
            high_buy = await http.call("POST", "/fapi/v1/order", {**limit, "side": "BUY", "price": "99750.1"})
            assert error(high_buy) == (400, -4016, "Price is higher than mark price multiplier cap.")
            low_sell = await http.call(
                "POST", "/fapi/v1/order", {**limit, "side": "SELL", "price": "90249.9"}
            )
            assert error(low_sell) == (400, -4024, "Price is lower than mark price multiplier floor.")
            edge = await http.ok("POST", "/fapi/v1/order", {**limit, "side": "BUY", "price": "90000.0"})
            assert edge["status"] == "NEW"  # a resting BUY below the mark is inside the band
            at_cap = await http.call("POST", "/fapi/v1/order", {**limit, "side": "SELL", "price": "99750.0"})
            assert at_cap.status_code == 200

    run(go())


def test_stop_limit_take_profit_answers_2021_when_crossed_and_rests_a_limit_child() -> None:
    async def go() -> None:
        async with sim() as (ex, _v, http):
            await short(http, "0.020")
            tp = algo(type="TAKE_PROFIT", closePosition="false", quantity="0.010", reduceOnly="true")
            crossed = await http.call(
                "POST", "/fapi/v1/algoOrder", {**tp, "triggerPrice": "95100.0", "price": "95100.0"}
            )
            assert error(crossed) == (400, -2021, "Order would immediately trigger.")
            placed = await http.ok(
                "POST",
                "/fapi/v1/algoOrder",
                {**tp, "triggerPrice": "94000.0", "price": "93900.0", "clientAlgoId": "tp-limit"},
            )
            assert (placed["orderType"], placed["price"], placed["triggerPrice"]) == (
                "TAKE_PROFIT",
                "93900.0",
                "94000.0",
            )
            ex.set_mark("BTCUSDT", Decimal("94000.0"))
            done = await http.ok("GET", "/fapi/v1/algoOrder", {"clientAlgoId": "tp-limit"})
            assert (done["algoStatus"], done["actualType"]) == ("FINISHED", "LIMIT")
            child = await http.ok(
                "GET", "/fapi/v1/order", {"symbol": "BTCUSDT", "orderId": done["actualOrderId"]}
            )
            assert (child["type"], child["price"], child["status"]) == ("LIMIT", "93900.0", "NEW")
            ex.set_mark("BTCUSDT", Decimal("93900.0"))
            child = await http.ok(
                "GET", "/fapi/v1/order", {"symbol": "BTCUSDT", "orderId": done["actualOrderId"]}
            )
            assert (child["status"], child["avgPrice"]) == ("FILLED", "93900.00000")

    run(go())


# --------------------------------------------------------------------------------------------
# b. fills at the book; workingType
# --------------------------------------------------------------------------------------------


def test_a_crossing_limit_fills_at_the_book_and_a_resting_one_at_its_price() -> None:
    async def go() -> None:
        async with sim() as (ex, _v, http):
            cross = {"symbol": "BTCUSDT", "side": "SELL", "type": "LIMIT", "timeInForce": "GTC"}
            placed = await http.ok(
                "POST", "/fapi/v1/order", {**cross, "quantity": "0.010", "price": "94000.0"}
            )
            q = await http.ok(
                "GET", "/fapi/v1/order", {"symbol": "BTCUSDT", "orderId": str(placed["orderId"])}
            )
            assert (q["status"], q["avgPrice"]) == ("FILLED", "95000.00000")
            rest = {**cross, "quantity": "0.010", "price": "95500.0"}
            await http.ok("POST", "/fapi/v1/order", rest)
            ex.set_mark("BTCUSDT", Decimal("95700.0"))
            trades = await http.ok("GET", "/fapi/v1/userTrades", {"symbol": "BTCUSDT"})
            assert [(t["price"], t["maker"]) for t in trades] == [("95000.0", False), ("95500.0", True)]

    run(go())


def test_working_type_contract_price_triggers_on_the_last_price_and_mark_price_on_the_mark() -> None:
    async def go() -> None:
        async with sim() as (ex, _v, http):
            await short(http, "0.020")
            stop = algo(closePosition="false", quantity="0.010", reduceOnly="true", triggerPrice="95500.0")
            await http.ok("POST", "/fapi/v1/algoOrder", {**stop, "clientAlgoId": "last"})
            await http.ok(
                "POST", "/fapi/v1/algoOrder", {**stop, "clientAlgoId": "mark", "workingType": "MARK_PRICE"}
            )

            async def status(caid: str) -> str:
                a = await http.ok("GET", "/fapi/v1/algoOrder", {"clientAlgoId": caid})
                return str(a["algoStatus"])

            ex.set_last("BTCUSDT", Decimal("95600.0"))
            assert (await status("last"), await status("mark")) == ("FINISHED", "NEW")
            ex.set_mark("BTCUSDT", Decimal("95550.0"), last=Decimal("95400.0"))
            assert await status("mark") == "FINISHED"
            trades = await http.ok("GET", "/fapi/v1/userTrades", {"symbol": "BTCUSDT"})
            assert [t["price"] for t in trades] == ["95000.0", "95600.0", "95400.0"]  # children fill at last
            price = await http.ok("GET", "/fapi/v1/ticker/price", {"symbol": "BTCUSDT"}, signed=False)
            assert price == {"symbol": "BTCUSDT", "price": "95400.0", "time": ex.now()}

    run(go())


# --------------------------------------------------------------------------------------------
# c, d. user data: ACCOUNT_CONFIG_UPDATE, integer E, SUBSCRIBE on /private/stream
# --------------------------------------------------------------------------------------------


async def recv(ws: ClientConnection, timeout: float = 1.0) -> Any:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


def test_private_stream_subscribe_several_keys_list_and_config_events() -> None:
    async def go() -> None:
        async with sim() as (ex, v, http):
            key = (await http.ok("POST", "/fapi/v1/listenKey", signed=False))["listenKey"]
            async with connect(f"{v.ws_url}/private/stream", proxy=None) as ws:
                await ws.send(json.dumps({"method": "SUBSCRIBE", "params": [key, "not-a-key"], "id": 1}))
                assert await recv(ws) == {"result": None, "id": 1}
                await ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 2}))
                assert await recv(ws) == {"result": [key, "not-a-key"], "id": 2}
                await http.ok("POST", "/fapi/v1/leverage", {"symbol": "BTCUSDT", "leverage": "7"})
                lev = await recv(ws)
                assert lev == {
                    "stream": key,
                    "data": {
                        "e": "ACCOUNT_CONFIG_UPDATE",
                        "E": ex.now(),
                        "T": ex.now(),
                        "ac": {"s": "BTCUSDT", "l": 7},
                    },
                }
                await http.ok("POST", "/fapi/v1/positionSide/dual", {"dualSidePosition": "true"})
                with pytest.raises(TimeoutError):  # no event for a position-mode change
                    await asyncio.wait_for(ws.recv(), 0.05)
                await ws.send(json.dumps({"method": "UNSUBSCRIBE", "params": ["not-a-key"], "id": 3}))
                assert await recv(ws) == {"result": None, "id": 3}
                ex.expire_listen_key(key)
                expired = await recv(ws)
                assert expired == {
                    "stream": key,
                    "data": {"e": "listenKeyExpired", "E": ex.now(), "listenKey": key},
                }

    run(go())


def test_private_ws_events_filter_keeps_only_the_named_events() -> None:
    async def go() -> None:
        async with sim() as (_ex, v, http):
            key = (await http.ok("POST", "/fapi/v1/listenKey", signed=False))["listenKey"]
            url = f"{v.ws_url}/private/ws?listenKey={key}&events=ACCOUNT_UPDATE"
            async with connect(url, proxy=None) as ws:
                await wait_for(lambda: v.ws_connections("private") == 1)
                await short(http)
                got = await recv(ws)
                assert got["e"] == "ACCOUNT_UPDATE"  # the two ORDER_TRADE_UPDATEs were filtered out
                assert got["a"]["P"][0]["pa"] == "-0.010"

    run(go())


# --------------------------------------------------------------------------------------------
# e. history and account reads
# --------------------------------------------------------------------------------------------


def test_klines_cover_any_range_deterministically_back_to_the_onboard_date() -> None:
    async def go() -> None:
        async with sim() as (_ex, _v, http):
            day = 86_400_000
            q = {
                "symbol": "BTCUSDT",
                "interval": "1h",
                "startTime": str(START_MS - 30 * day),
                "limit": "1000",
            }
            rows = await http.ok("GET", "/fapi/v1/klines", q, signed=False)
            assert len(rows) == 720 + 1  # 30 days of hours, then the open candle of now
            assert [r[0] for r in rows] == [START_MS - 30 * day + i * 3_600_000 for i in range(721)]
            assert rows[-2][4] == "95000.0"  # the synthetic past meets the first mark: no jump
            assert all(Decimal(r[3]) <= min(Decimal(r[1]), Decimal(r[4])) for r in rows)
            assert all(Decimal(r[2]) >= max(Decimal(r[1]), Decimal(r[4])) for r in rows)
            again = await http.ok("GET", "/fapi/v1/klines", q, signed=False)
            assert again == rows
            window = {"symbol": "BTCUSDT", "interval": "3m", "endTime": str(START_MS - day), "limit": "5"}
            last5 = await http.ok("GET", "/fapi/v1/klines", window, signed=False)
            assert [r[0] for r in last5] == [START_MS - day - 180_000 * i for i in (4, 3, 2, 1, 0)]
            onboard = 1569398400000
            early = {
                "symbol": "BTCUSDT",
                "interval": "4h",
                "startTime": str(onboard - 10 * day),
                "limit": "3",
            }
            assert [r[0] for r in await http.ok("GET", "/fapi/v1/klines", early, signed=False)] == [
                onboard,
                onboard + 14_400_000,
                onboard + 28_800_000,
            ]
            before = {**early, "endTime": str(onboard - day)}
            assert await http.ok("GET", "/fapi/v1/klines", before, signed=False) == []
            marks = await http.ok("GET", "/fapi/v1/markPriceKlines", window, signed=False)
            assert [r[5] for r in marks] == ["0"] * 5 and [r[0] for r in marks] == [r[0] for r in last5]
        async with sim() as (other, _v, http2):
            assert await http2.ok("GET", "/fapi/v1/klines", q, signed=False) == rows  # same seed
            other.history_seed = 7
            assert await http2.ok("GET", "/fapi/v1/klines", q, signed=False) != rows

    run(go())


def test_funding_income_all_orders_all_algo_orders_commission_and_symbol_config() -> None:
    async def go() -> None:
        async with sim() as (ex, _v, http):
            funding = await http.ok(
                "GET", "/fapi/v1/fundingRate", {"symbol": "BTCUSDT", "limit": "3"}, signed=False
            )
            assert [f["fundingTime"] for f in funding] == [
                START_MS - 16 * 3_600_000,
                START_MS - 8 * 3_600_000,
                START_MS,
            ]
            assert set(funding[0]) == {"symbol", "fundingRate", "fundingTime", "markPrice"}
            await short(http)
            await http.ok(
                "POST",
                "/fapi/v1/order",
                {
                    "symbol": "BTCUSDT",
                    "side": "BUY",
                    "type": "MARKET",
                    "quantity": "0.010",
                    "reduceOnly": "true",
                },
            )
            await http.ok(
                "POST",
                "/fapi/v1/order",
                {"symbol": "BTCUSDT", "side": "SELL", "type": "MARKET", "quantity": "0.010"},
            )
            await http.ok("POST", "/fapi/v1/algoOrder", algo(clientAlgoId="sl"))
            await http.ok("DELETE", "/fapi/v1/algoOrder", {"clientAlgoId": "sl"})
            ex.advance(60_000)
            ex.set_mark("BTCUSDT", Decimal("94000.0"))
            income = await http.ok("GET", "/fapi/v1/income", {"symbol": "BTCUSDT"})
            assert [(i["incomeType"], i["income"]) for i in income] == [
                ("COMMISSION", "-0.47500000"),
                ("COMMISSION", "-0.47500000"),
                ("COMMISSION", "-0.47500000"),
            ]  # the round trip at one price realised nothing
            orders = await http.ok("GET", "/fapi/v1/allOrders", {"symbol": "BTCUSDT"})
            assert [(o["side"], o["status"], o["reduceOnly"]) for o in orders] == [
                ("SELL", "FILLED", False),
                ("BUY", "FILLED", True),
                ("SELL", "FILLED", False),
            ]
            algos = await http.ok("GET", "/fapi/v1/allAlgoOrders", {"symbol": "BTCUSDT"})
            assert [(a["clientAlgoId"], a["algoStatus"]) for a in algos] == [("sl", "CANCELED")]
            assert await http.ok("GET", "/fapi/v1/commissionRate", {"symbol": "BTCUSDT"}) == {
                "symbol": "BTCUSDT",
                "makerCommissionRate": "0.0002",
                "takerCommissionRate": "0.0005",
            }
            await http.ok("POST", "/fapi/v1/leverage", {"symbol": "BTCUSDT", "leverage": "5"})
            assert await http.ok("GET", "/fapi/v1/symbolConfig", {"symbol": "BTCUSDT"}) == [
                {
                    "symbol": "BTCUSDT",
                    "marginType": "CROSSED",
                    "isAutoAddMargin": False,
                    "leverage": 5,
                    "maxNotionalValue": "1000000",
                }
            ]
            prices = await http.ok("GET", "/fapi/v2/ticker/price", signed=False)
            assert [p["symbol"] for p in prices] == ["BTCUSDT", "ETHUSDT", "DOGEUSDT", "SOLUSDT"]

    run(go())


def test_batch_orders_modify_and_countdown_cancel_all() -> None:
    async def go() -> None:
        async with sim() as (ex, _v, http):
            base = {"symbol": "BTCUSDT", "side": "SELL", "type": "LIMIT", "timeInForce": "GTC"}
            batch = [
                {**base, "quantity": "0.010", "price": "96000.0", "newClientOrderId": "b1"},
                {**base, "quantity": "0.010", "price": "96000.05", "newClientOrderId": "b2"},
                {**base, "type": "STOP_MARKET", "quantity": "0.010", "newClientOrderId": "b3"},
            ]
            answers = await http.ok("POST", "/fapi/v1/batchOrders", {"batchOrders": json.dumps(batch)})
            assert [a.get("clientOrderId", a.get("code")) for a in answers] == ["b1", -1111, -4120]
            modified = await http.call(
                "PUT",
                "/fapi/v1/order",
                {
                    "symbol": "BTCUSDT",
                    "origClientOrderId": "b1",
                    "side": "SELL",
                    "quantity": "0.020",
                    "price": "96500.0",
                },
            )
            assert modified.status_code == 200
            assert (modified.json()["origQty"], modified.json()["price"]) == ("0.020", "96500.0")
            same = await http.call(
                "PUT",
                "/fapi/v1/order",
                {
                    "symbol": "BTCUSDT",
                    "origClientOrderId": "b1",
                    "side": "SELL",
                    "quantity": "0.020",
                    "price": "96500.0",
                },
            )
            assert error(same) == (400, -5027, "No need to modify the order.")
            await http.ok(
                "POST",
                "/fapi/v1/order",
                {**base, "quantity": "0.010", "price": "97000.0", "newClientOrderId": "b4"},
            )
            cancelled = await http.ok(
                "DELETE",
                "/fapi/v1/batchOrders",
                {"symbol": "BTCUSDT", "origClientOrderIdList": json.dumps(["b4", "nope"])},
            )
            assert [c.get("status", c.get("code")) for c in cancelled] == ["CANCELED", -2011]
            timer = await http.ok(
                "POST", "/fapi/v1/countdownCancelAll", {"symbol": "BTCUSDT", "countdownTime": "60000"}
            )
            assert timer == {"symbol": "BTCUSDT", "countdownTime": "60000"}
            ex.advance(59_999)
            assert [
                o["clientOrderId"] for o in await http.ok("GET", "/fapi/v1/openOrders", {"symbol": "BTCUSDT"})
            ] == ["b1"]
            ex.advance(1)
            assert await http.ok("GET", "/fapi/v1/openOrders", {"symbol": "BTCUSDT"}) == []

    run(go())


# --------------------------------------------------------------------------------------------
# f. algo lifecycle
# --------------------------------------------------------------------------------------------


def lifecycle(ex: SimExchange) -> list[str]:
    out = []
    for e in ex_events(ex):
        if e["e"] == "ALGO_UPDATE":
            out.append(f"ALGO {e['o']['X']}" + (f" ({e['o']['rm']})" if "rm" in e["o"] else ""))
        elif e["e"] == "ORDER_TRADE_UPDATE":
            out.append(f"ORDER {e['o']['x']}")
    return out


_EVENTS: dict[int, list[dict[str, Any]]] = {}


def ex_events(ex: SimExchange) -> list[dict[str, Any]]:
    return _EVENTS[id(ex)]


def record(ex: SimExchange) -> None:
    _EVENTS[id(ex)] = []
    ex.user_listeners.append(lambda payload, key: _EVENTS[id(ex)].append(payload))


def test_algo_lifecycle_variants() -> None:
    def triggered(mode: str) -> list[str]:
        ex = SimExchange(clock=SimClock()).answer_as_binance()
        ex.algo_lifecycle = mode  # type: ignore[assignment]
        ex.new_order({"symbol": "BTCUSDT", "side": "SELL", "type": "MARKET", "quantity": "0.010"})
        ex.new_algo_order(algo())
        record(ex)
        ex.set_mark("BTCUSDT", Decimal("97000.0"))
        return lifecycle(ex)

    assert triggered("normal") == [
        "ALGO TRIGGERING",
        "ALGO TRIGGERED",
        "ORDER NEW",
        "ORDER TRADE",
        "ALGO FINISHED",
    ]
    assert triggered("fill_before_triggered") == [
        "ALGO TRIGGERING",
        "ORDER NEW",
        "ORDER TRADE",
        "ALGO TRIGGERED",
        "ALGO FINISHED",
    ]
    assert triggered("no_triggered") == ["ALGO TRIGGERING", "ORDER NEW", "ORDER TRADE", "ALGO FINISHED"]

    ex = SimExchange(clock=SimClock()).answer_as_binance()
    ex.new_order({"symbol": "BTCUSDT", "side": "SELL", "type": "MARKET", "quantity": "0.010"})
    record(ex)
    ex.new_algo_order(algo(clientAlgoId="close"))
    ex.new_algo_order(algo(closePosition="false", quantity="0.010", reduceOnly="true", clientAlgoId="ro"))
    ex.new_order(
        {"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "0.010", "reduceOnly": "true"}
    )
    ex.set_mark("BTCUSDT", Decimal("97000.0"))  # the position is gone when they trigger
    assert lifecycle(ex) == [
        "ALGO NEW",
        "ALGO NEW",
        "ORDER NEW",
        "ORDER TRADE",
        "ALGO TRIGGERING",
        "ALGO EXPIRED (No position to close)",
        "ALGO TRIGGERING",
        "ALGO REJECTED (Reduce Only reject)",
    ]
    assert {a.client_algo_id: a.status for a in ex.algos.values()} == {"close": "EXPIRED", "ro": "REJECTED"}
    raw = [e for e in ex_events(ex) if e["e"] == "ALGO_UPDATE"]
    assert all(isinstance(e["E"], int) for e in raw)


# --------------------------------------------------------------------------------------------
# g. rate limits
# --------------------------------------------------------------------------------------------


def test_weight_over_the_limit_answers_429_then_bans_that_grow_while_requests_continue() -> None:
    async def go() -> None:
        async with sim() as (ex, v, http):
            rl = v.rate_limits
            rl.enabled, rl.weight_limit, rl.ban_after_429s = True, 10, 2
            ex.advance(30_000)  # half a minute into the window
            risk = ("GET", "/fapi/v2/positionRisk")
            answers = [await http.call(*risk) for _ in range(5)]
            assert [r.status_code for r in answers] == [200, 200, 429, 429, 418]
            assert [r.headers["X-MBX-USED-WEIGHT-1M"] for r in answers] == ["5", "10", "15", "20", "25"]
            assert error(answers[2]) == (
                429,
                -1003,
                "Too many requests; current limit of IP(127.0.0.1) is 10 requests per minute. "
                "Please use the websocket for live updates to avoid polling the API.",
            )
            assert answers[2].headers["Retry-After"] == "30"  # to the next minute
            until = ex.now() + 120_000
            assert error(answers[4]) == (
                418,
                -1003,
                f"Way too many requests; IP(127.0.0.1) banned until {until}. "
                "Please use the websocket for live updates to avoid bans.",
            )
            assert answers[4].headers["Retry-After"] == "120"
            ex.advance(60_000)
            during = await http.call(*risk)  # still polling during the ban
            assert (during.status_code, error(during)[2].split("until ")[1][:13]) == (418, str(until))
            ex.advance(60_000)  # the ban ends, but requests came during it: a longer one starts
            longer = await http.call(*risk)
            assert error(longer)[2].split("until ")[1][:13] == str(ex.now() + 240_000)
            ex.advance(240_000)  # waited it out without a request
            assert (await http.call(*risk)).status_code == 200
            rl.retry_after = False
            for _ in range(2):
                await http.call(*risk)
            quiet = await http.call(*risk)
            assert quiet.status_code == 429 and "Retry-After" not in quiet.headers

    run(go())


def test_rate_limits_are_off_by_default_and_weights_follow_the_routes() -> None:
    async def go() -> None:
        async with sim() as (_ex, _v, http):
            for _ in range(81):  # 81 x 30 = 2430 > 2400
                resp = await http.call("GET", "/fapi/v1/positionSide/dual")
                assert resp.status_code == 200
            assert resp.headers["X-MBX-USED-WEIGHT-1M"] == "2430"
            q = {"symbol": "BTCUSDT", "interval": "3m", "limit": "1500"}
            k = await http.call("GET", "/fapi/v1/klines", q, signed=False)
            assert k.headers["X-MBX-USED-WEIGHT-1M"] == "2440"
            o = await http.call("GET", "/fapi/v1/openOrders")  # without a symbol: 40
            assert o.headers["X-MBX-USED-WEIGHT-1M"] == "2480"

    run(go())


# --------------------------------------------------------------------------------------------
# h. WebSocket keepalive on the sim clock
# --------------------------------------------------------------------------------------------


def test_ws_pings_every_3_minutes_drops_without_pong_and_cuts_at_24_hours() -> None:
    async def go() -> None:
        async with sim() as (ex, v, _http):
            v.ws_keeper_poll_s = 0.005
            async with connect(f"{v.ws_url}/market/ws/btcusdt@markPrice@1s", proxy=None) as polite:
                await wait_for(lambda: v.ws_connections("market") == 1)
                ex.advance(179_999)
                await asyncio.sleep(0.03)
                assert v.pings_sent == 0
                ex.advance(1)
                await wait_for(lambda: v.pings_sent == 1)
                ex.advance(600_000)  # the client answered the ping: no drop
                await wait_for(lambda: v.pings_sent == 2)
                assert v.ws_connections("market") == 1

                # a client that never answers a ping: raw socket after the upgrade
                host, port = v.ws_url.removeprefix("ws://").split(":")
                reader, writer = await asyncio.open_connection(host, int(port))
                writer.write(
                    b"GET /market/ws/btcusdt@markPrice HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                    b"Sec-WebSocket-Version: 13\r\n\r\n"
                )
                head = await reader.readuntil(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 101")
                await wait_for(lambda: v.ws_connections("market") == 2)
                ex.advance(180_000)
                frame = await asyncio.wait_for(reader.readexactly(2), 1)
                assert frame[0] == 0x89  # FIN + ping
                ex.advance(600_000)
                await wait_for(lambda: v.ws_connections("market") == 1, timeout=3.0)
                writer.close()

                ex.advance(86_400_000)
                await wait_for(lambda: v.ws_connections("market") == 0)
                await polite.wait_closed()
                assert polite.close_code == 1000

    run(go(), timeout=15)
