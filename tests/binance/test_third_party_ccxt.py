"""Fidelity bar: an unmodified third-party client (ccxt 4.5.90, async ``binanceusdm`` and ccxt.pro for
the user stream) against the simulated venue on loopback.

Only ``urls['api']`` and options are changed. Every request ccxt makes goes through an aiohttp session
we hand it, whose trace hooks record each URL: the tests assert that nothing left 127.0.0.1 and that
only the fapi paths were used (no sapi, no spot, no currencies).

What ccxt sends for a conditional order (read in ``ccxt/async_support/binance.py``, 4.5.90):
``create_order`` with a ``triggerPrice`` on a linear swap sets ``isAlgoOrder`` and posts to
``/fapi/v1/algoOrder`` with ``algoType=CONDITIONAL``, ``type=STOP_MARKET``, ``triggerPrice`` and
``clientAlgoId``; ``cancel_order(..., {"trigger": True})`` deletes ``/fapi/v1/algoOrder``. The classic
endpoint is reached only through the implicit API, where the venue answers -4120.
"""

from __future__ import annotations

import asyncio
import decimal
import itertools
import re
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import aiohttp
import ccxt.pro as ccxtpro
import pytest
from binance_simkit import KEY, SECRET, run, wait_for
from ccxt.base import errors as ccxt_errors
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from binance.sim.exchange import SimExchange
from binance.sim.server import SimVenue

SYMBOL = "BTC/USDT:USDT"
SLOT = 180_000


@pytest.fixture(autouse=True)
def _keep_the_decimal_context() -> Iterator[None]:
    """ccxt sets the thread's decimal rounding to ROUND_HALF_UP; the tests after these must not run
    in it (the engine is immune to it: tests/test_scenarios.py, but the venue double is not)."""
    saved = decimal.getcontext().copy()
    yield
    decimal.setcontext(saved)


FAPI_VERSIONS = {
    "fapiPublic": "v1",
    "fapiPrivate": "v1",
    "fapiPublicV2": "v2",
    "fapiPrivateV2": "v2",
    "fapiPublicV3": "v3",
    "fapiPrivateV3": "v3",
}


class ShiftedWallClock:
    """The wall clock (ccxt stamps requests with it) that a test may set back to write history."""

    def __init__(self) -> None:
        self.offset_ms = 0

    def now_ms(self) -> int:
        return int(time.time() * 1000) + self.offset_ms

    def at(self, ms: int) -> None:
        self.offset_ms = ms - int(time.time() * 1000)


def point_at_venue(client: Any, v: SimVenue) -> None:
    """Every API family to loopback: fapi to the venue, anything else to a path that must stay unused."""
    api = client.urls["api"]
    for name, value in list(api.items()):
        if name == "ws":
            for kind, url in list(value.items()):
                if isinstance(url, dict):
                    value[kind] = {k: f"{v.ws_url}/unexpected-ws/{kind}/{k}" for k in url}
                else:
                    value[kind] = f"{v.ws_url}/ws" if kind == "linear" else f"{v.ws_url}/unexpected-ws/{kind}"
        elif name in FAPI_VERSIONS:
            api[name] = f"{v.rest_url}/fapi/{FAPI_VERSIONS[name]}"
        else:
            api[name] = f"{v.rest_url}/unexpected/{name}"


def all_urls(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [u for item in value.values() for u in all_urls(item)]
    return [value] if isinstance(value, str) else []


@asynccontextmanager
async def ccxt_venue(
    *, secret: str = SECRET, registered: str = SECRET
) -> AsyncIterator[tuple[SimExchange, SimVenue, Any, list[str]]]:
    """The venue on the (shifted) wall clock and a ccxt.pro ``binanceusdm`` pointed at it; the list
    collects every URL ccxt requested (HTTP and the WebSocket handshake). ``registered`` is what the
    venue holds for the key (the HMAC secret, or an Ed25519 public key), ``secret`` what ccxt signs with."""
    clock = ShiftedWallClock()
    ex = SimExchange(clock=clock, api_keys={KEY: registered})
    seen: list[str] = []

    async def on_request_start(
        _session: aiohttp.ClientSession, _ctx: SimpleNamespace, params: aiohttp.TraceRequestStartParams
    ) -> None:
        seen.append(str(params.url))

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_request_start)
    async with SimVenue(ex) as v, aiohttp.ClientSession(trace_configs=[trace]) as session:
        client = ccxtpro.binanceusdm(
            {
                "apiKey": KEY,
                "secret": secret,
                "session": session,
                "options": {"fetchCurrencies": False, "fetchMarkets": {"types": ["linear"]}},
            }
        )
        point_at_venue(client, v)
        try:
            yield ex, v, client, seen
        finally:
            await client.close()
    assert all(u.startswith(("http://127.0.0.1:", "ws://127.0.0.1:")) for u in all_urls(client.urls["api"]))
    assert seen, "ccxt made no request"
    for url in seen:
        parts = urlsplit(url)
        assert parts.hostname == "127.0.0.1", url
        assert parts.path.startswith(("/fapi/", "/private/ws")), url


def history(ex: SimExchange) -> int:
    """Marks in two closed 3m slots (on a clock set back), then back to now at 95000. Returns slot 0."""
    clock = ex.clock
    assert isinstance(clock, ShiftedWallClock)
    s0 = clock.now_ms() // SLOT * SLOT - 3 * SLOT
    for at, price in [
        (s0 + 1_000, "95000.0"),
        (s0 + 61_000, "95600.0"),
        (s0 + 121_000, "94700.0"),
        (s0 + SLOT + 5_000, "95200.0"),
        (s0 + SLOT + 70_000, "96100.0"),
    ]:
        clock.at(at)
        ex.set_mark("BTCUSDT", Decimal(price))
    clock.offset_ms = 0
    ex.set_mark("BTCUSDT", Decimal("95000.0"))
    return s0


def test_ccxt_loads_markets_and_reads_mark_price_ticker_and_3m_klines() -> None:
    async def go() -> None:
        async with ccxt_venue() as (ex, _v, client, seen):
            s0 = history(ex)
            markets = await client.load_markets()
            assert sorted(markets) == ["BTC/USDT:USDT", "DOGE/USDT:USDT", "ETH/USDT:USDT", "SOL/USDT:USDT"]
            btc = markets[SYMBOL]
            assert (btc["id"], btc["type"], btc["linear"], btc["settle"], btc["active"]) == (
                "BTCUSDT",
                "swap",
                True,
                "USDT",
                True,
            )
            assert btc["precision"]["price"] == 0.1
            assert btc["precision"]["amount"] == 0.001
            assert btc["limits"]["amount"] == {"min": 0.001, "max": 1000.0}
            assert btc["limits"]["market"] == {"min": 0.001, "max": 120.0}
            assert btc["limits"]["cost"]["min"] == 100.0
            assert btc["limits"]["price"] == {"min": 556.8, "max": 4529764.0}

            mark = await client.fetch_mark_price(SYMBOL)
            assert (mark["symbol"], mark["markPrice"], mark["indexPrice"]) == (SYMBOL, 95000.0, 95000.0)
            assert mark["info"]["markPrice"] == "95000.00000"

            ticker = await client.fetch_ticker(SYMBOL)
            assert (ticker["last"], ticker["open"], ticker["high"], ticker["low"]) == (
                95000.0,
                95000.0,
                96100.0,
                94700.0,
            )
            assert ticker["baseVolume"] == 6.0

            candles = await client.fetch_ohlcv(SYMBOL, "3m")
            # limit=500 answers 500 rows, as Binance does: seeded history before the sim started,
            # then the recorded candles, every 3 minutes without a gap.
            assert len(candles) == 500
            assert all(b[0] - a[0] == SLOT for a, b in itertools.pairwise(candles))
            by_time = {c[0]: c for c in candles}
            assert [by_time[s0], by_time[s0 + SLOT]] == [
                [s0, 95000.0, 95600.0, 94700.0, 94700.0, 3.0],
                [s0 + SLOT, 95200.0, 96100.0, 95200.0, 96100.0, 2.0],
            ]
            assert candles[-1][1:5] == [95000.0, 95000.0, 95000.0, 95000.0]
            assert [urlsplit(u).path for u in seen] == [
                "/fapi/v1/exchangeInfo",
                "/fapi/v1/premiumIndex",
                "/fapi/v1/ticker/24hr",
                "/fapi/v1/klines",
            ]
            assert dict(parse_qsl(urlsplit(seen[3]).query)) == {
                "symbol": "BTCUSDT",
                "interval": "3m",
                "limit": "500",
            }

    run(go())


def test_ccxt_reads_balance_and_positions() -> None:
    async def go() -> None:
        async with ccxt_venue() as (ex, _v, client, seen):
            await client.load_markets()
            balance = await client.fetch_balance()
            assert balance["USDT"] == {"free": 10000.0, "used": 0.0, "total": 10000.0}
            assert await client.fetch_positions() == []

            ex.new_order(
                {
                    "symbol": "BTCUSDT",
                    "side": "SELL",
                    "type": "MARKET",
                    "quantity": "0.010",
                    "newClientOrderId": "m1",
                }
            )
            ex.set_mark("BTCUSDT", Decimal("94000.0"))
            (pos,) = await client.fetch_positions([SYMBOL])
            assert (pos["symbol"], pos["side"], pos["contracts"], pos["entryPrice"], pos["markPrice"]) == (
                SYMBOL,
                "short",
                0.01,
                95000.0,
                94000.0,
            )
            assert (pos["unrealizedPnl"], pos["notional"], pos["marginMode"]) == (10.0, 940.0, "cross")
            after = await client.fetch_balance()
            assert after["info"]["totalWalletBalance"] == "9999.52500000"  # 10000 - taker fee 0.475
            assert after["USDT"]["total"] == 10009.525  # ccxt's total is the margin balance: + 10 unrealised
            paths = [urlsplit(u).path for u in seen]
            assert paths.count("/fapi/v3/account") == 2
            assert paths.count("/fapi/v3/positionRisk") == 2
            assert paths.count("/fapi/v1/leverageBracket") == 1  # cached by ccxt after the first call

    run(go())


def test_ccxt_places_and_cancels_limit_and_market_orders() -> None:
    async def go() -> None:
        async with ccxt_venue() as (ex, v, client, _seen):
            await client.load_markets()
            limit = await client.create_order(
                SYMBOL, "limit", "sell", 0.01, 96000, {"clientOrderId": "cc-limit-1"}
            )
            assert (
                limit["clientOrderId"],
                limit["status"],
                limit["price"],
                limit["amount"],
                limit["type"],
            ) == (
                "cc-limit-1",
                "open",
                96000.0,
                0.01,
                "limit",
            )
            (open_order,) = await client.fetch_open_orders(SYMBOL)
            assert (open_order["id"], open_order["status"]) == (limit["id"], "open")
            cancelled = await client.cancel_order(limit["id"], SYMBOL)
            assert (cancelled["id"], cancelled["status"]) == (limit["id"], "canceled")
            assert ex.orders[int(limit["id"])].status == "CANCELED"
            assert await client.fetch_open_orders(SYMBOL) == []

            market = await client.create_order(
                SYMBOL, "market", "sell", 0.01, None, {"clientOrderId": "cc-mkt-1"}
            )
            assert (market["status"], market["filled"], market["side"], market["type"]) == (
                "closed",
                0.01,
                "sell",
                "market",
            )
            assert ex.positions[("BTCUSDT", "BOTH")].amount == Decimal("-0.010")

            with pytest.raises(ccxt_errors.OrderNotFound):
                await client.cancel_order(limit["id"], SYMBOL)  # -2011 Unknown order sent.
            # ccxt picks its USDⓈ-M error table by hostname (fapi.binance.com), so on loopback a code it
            # does not know in the common table surfaces as ExchangeError carrying the venue's JSON.
            with pytest.raises(ccxt_errors.ExchangeError) as margin:
                await client.create_order(SYMBOL, "market", "sell", 100, None)
            assert str(margin.value).endswith('{"code":-2019,"msg":"Margin is insufficient."}')
            posts = [r for r in v.requests if r[0] == "POST"]
            assert posts == [("POST", "/fapi/v1/order")] * 3

    run(go())


def test_ccxt_stop_market_goes_to_the_algo_endpoint_and_the_classic_one_answers_4120() -> None:
    async def go() -> None:
        async with ccxt_venue() as (ex, v, client, _seen):
            await client.load_markets()
            await client.create_order(SYMBOL, "market", "sell", 0.01)  # a short to protect
            stop = await client.create_order(
                SYMBOL,
                "market",
                "buy",
                None,
                None,
                {
                    "triggerPrice": 99000,
                    "closePosition": True,
                    "workingType": "MARK_PRICE",
                    "clientOrderId": "cc-sl-1",
                },
            )
            assert ("POST", "/fapi/v1/algoOrder") in v.requests
            (algo,) = ex.algos.values()
            assert (algo.client_algo_id, algo.type, algo.side, algo.trigger, algo.working_type) == (
                "cc-sl-1",
                "STOP_MARKET",
                "BUY",
                Decimal("99000.0"),
                "MARK_PRICE",
            )
            assert (algo.close_position, algo.quantity, algo.status) == (True, Decimal("0"), "NEW")
            assert (stop["id"], stop["clientOrderId"]) == (str(algo.algo_id), "cc-sl-1")
            assert stop["info"]["algoStatus"] == "NEW"
            assert stop["info"]["orderType"] == "STOP_MARKET"

            (listed,) = await client.fetch_open_orders(SYMBOL, params={"trigger": True})
            assert (listed["id"], listed["triggerPrice"]) == (stop["id"], 99000.0)
            assert (
                await client.fetch_open_orders(SYMBOL) == []
            )  # untriggered algo orders are not regular orders

            cancelled = await client.cancel_order(stop["id"], SYMBOL, {"trigger": True})
            assert cancelled["info"] == {
                "algoId": algo.algo_id,
                "clientAlgoId": "cc-sl-1",
                "code": "200",
                "msg": "success",
            }
            assert algo.status == "CANCELED"
            assert ("DELETE", "/fapi/v1/algoOrder") in v.requests

            classic = {
                "symbol": "BTCUSDT",
                "side": "BUY",
                "type": "STOP_MARKET",
                "stopPrice": "99000.0",
                "closePosition": "true",
            }
            with pytest.raises(ccxt_errors.ExchangeError) as err:
                await client.fapiPrivatePostOrder(classic)
            assert '"code":-4120' in str(err.value)
            assert "Please use the Algo Order API endpoints instead." in str(err.value)
            assert len(ex.algos) == 1

    run(go())


def test_ccxt_pro_receives_user_data_order_updates() -> None:
    async def go() -> None:
        async with ccxt_venue() as (ex, v, client, seen):
            await client.load_markets()
            first = asyncio.ensure_future(client.watch_orders(SYMBOL))
            await wait_for(lambda: v.ws_connections("private") == 1, 5.0)
            (key,) = ex.listen_keys
            (conn,) = [c for c in v._ws_conns if c.kind == "private"]
            assert conn.listen_key == key
            ws_urls = [u for u in seen if u.startswith("ws://")]
            assert [urlsplit(u).path for u in ws_urls] == ["/private/ws"]
            assert urlsplit(ws_urls[0]).query == f"listenKey={key}"

            placed = await client.create_order(
                SYMBOL, "limit", "sell", 0.01, 96000, {"clientOrderId": "cc-w-1"}
            )
            (update,) = await asyncio.wait_for(first, 5)
            assert (update["id"], update["clientOrderId"], update["status"], update["filled"]) == (
                placed["id"],
                "cc-w-1",
                "open",
                0.0,
            )
            assert update["info"]["x"] == "NEW"

            second = asyncio.ensure_future(client.watch_orders(SYMBOL))
            ex.set_mark("BTCUSDT", Decimal("96000.0"))  # the mark reaches the resting sell
            (filled,) = await asyncio.wait_for(second, 5)
            assert (filled["id"], filled["status"], filled["filled"], filled["average"]) == (
                placed["id"],
                "closed",
                0.01,
                96000.0,
            )
            assert (filled["info"]["x"], filled["info"]["rp"], filled["info"]["n"]) == (
                "TRADE",
                "0.00000000",
                "0.19200000",
            )

    run(go(), timeout=20)


def test_ccxt_signing_with_an_ed25519_key_is_accepted_by_the_venue() -> None:
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public_pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )

    async def go() -> None:
        async with ccxt_venue(secret=private_pem, registered=public_pem) as (ex, _v, client, _seen):
            await client.load_markets()
            balance = await client.fetch_balance()  # GET, signature in the query
            assert balance["USDT"]["free"] == 10000.0
            placed = await client.create_order(
                SYMBOL, "limit", "sell", 0.01, 96000, {"clientOrderId": "cc-ed-1"}
            )
            assert placed["status"] == "open"  # POST, signature in the form body
            assert ex.orders[int(placed["id"])].client_id == "cc-ed-1"

    run(go())


def test_product_code_never_imports_ccxt() -> None:
    root = Path(__file__).resolve().parents[2]
    offenders = [
        str(path.relative_to(root))
        for package in ("binance", "fsm", "telegram_ingest")
        for path in sorted((root / package).rglob("*.py"))
        if re.search(r"^\s*(import|from)\s+ccxt\b", path.read_text(), re.MULTILINE)
    ]
    assert offenders == []
