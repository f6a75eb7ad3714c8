"""The simulated venue over loopback: Binance's REST paths on a minimal HTTP/1.1 server and its
``/market`` and ``/private`` WebSocket paths on a ``websockets`` server.

REST requests are checked like Binance does (API key header, signature over ``query + body``,
timestamp within recvWindow), answered with the exchange model's JSON and Binance's status codes,
and stamped with ``X-MBX-USED-WEIGHT-1M`` (the route's IP weight, usdm-2026 §1.2/§4: e.g. klines
by ``limit``, openOrders 40 without a symbol, orders 0) and, on orders, the 10 s / 1 min
order-count headers. An API key registered in ``SimExchange.api_keys`` with a plain secret signs
with HMAC-SHA256; one registered with an Ed25519 public key (PEM ``-----BEGIN PUBLIC KEY-----``)
signs with the matching private key (base64 of the signature, URL-encoded in the query).
``RateLimitModel`` (off by default, ``venue.rate_limits.enabled``) answers 429 -1003 over the weight
limit and then 418 bans that grow while requests continue, with the real answers' texts
(binance-real-answers.md) and an optional Retry-After.
``RestFaults`` injects 5xx, HTML pages, hung requests (before or after the order is accepted),
429 and 418 bans. WebSocket connections route by path: ``/market/stream?streams=``,
``/market/ws/<streams>`` (with live SUBSCRIBE/UNSUBSCRIBE, at most 1024 streams per connection;
``!markPrice@arr[@1s]`` pushes the marks changed in one loop run as one array), ``/private/ws/<listenKey>``,
``/private/ws?listenKey=<k>[&events=A/B]``, ``/private/stream?streams=<k1>/<k2>`` or
``?listenKey=<k1>&events=..&listenKey=<k2>``, and ``/private/stream`` with SUBSCRIBE / UNSUBSCRIBE /
LIST_SUBSCRIPTIONS of listenKeys (the official SDK's way, usdm-2026 corrections); an unknown key
is accepted and silent (usdm §3). The legacy bare ``/ws`` and ``/stream`` paths (and ``/public``)
accept the connection but never push mark prices, klines or user data, as the real venue does
since 2026-04-23. On the sim clock every connection gets a ping every 3 minutes, is dropped after
10 minutes without a pong and closed at 24 hours (usdm §2.2; ``ws_ping_every_ms`` and friends).
``drop_ws`` and ``silence_ws`` break them on demand.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import hashlib
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from binance.sim.exchange import INTERVAL_MS, SimError, SimExchange

log = logging.getLogger(__name__)

Security = Literal["NONE", "USER_STREAM", "SIGNED"]
WsKind = Literal["market", "private", "silent"]
Handler = Callable[[dict[str, str]], Any]


@dataclass(slots=True)
class RestFault:
    """One injected failure for ``method path``: ``kind`` is "status" (answer ``status`` with
    ``body``), "html" (an HTML error page), "hang" (no answer for ``hang_s``) or "slow" (the
    normal answer, ``hang_s`` late). ``after_accept``
    runs the request on the exchange first (the order exists, the client does not know)."""

    method: str
    path: str
    kind: Literal["status", "html", "hang", "slow"]
    status: int = 503
    body: str = '{"code":-1000,"msg":"Unknown error, please check your request or try again later."}'
    after_accept: bool = False
    count: int = 1
    hang_s: float = 5.0
    retry_after_s: int | None = None  # sent as Retry-After with a "status" answer (429 / 418)


@dataclass(slots=True)
class RestFaults:
    queue: list[RestFault] = field(default_factory=list)
    rate_limited: int = 0  # next N requests answer 429
    retry_after_s: int = 1
    banned_until_ms: int = 0

    def add(self, fault: RestFault) -> None:
        self.queue.append(fault)

    def take(self, method: str, path: str) -> RestFault | None:
        for f in self.queue:
            if f.count > 0 and f.method == method and f.path == path:
                f.count -= 1
                if f.count == 0:
                    self.queue.remove(f)
                return f
        return None


@dataclass(slots=True)
class RateLimitModel:
    """Binance's IP request-weight limit (usdm-2026 §4 headers/limits; real-answers: the 429 and 418
    texts). Off by default (``enabled``). Over ``weight_limit`` in a minute of the sim clock a request
    answers 429 -1003; after ``ban_after_429s`` such answers in that minute the IP is banned (418
    -1003 "banned until <ms>"). If requests kept arriving during a ban, the first request after it
    starts the next, longer ban (2 min, doubling, at most 3 days: the scale of usdm-2026 §4):
    polling through bans is what earned the seed system hours of them; a client that waits is
    released. ``retry_after`` sends a Retry-After header (documented for Spot, not for USDⓈ-M:
    unconfirmed, hence switchable). How many 429s Binance tolerates before a ban is not
    documented."""

    enabled: bool = False
    weight_limit: int = 2400
    retry_after: bool = True
    ban_after_429s: int = 5
    first_ban_ms: int = 120_000
    max_ban_ms: int = 3 * 86_400_000
    ip: str = "127.0.0.1"
    bans: int = 0  # bans imposed so far (the next one lasts first_ban_ms * 2**bans)
    banned_until_ms: int = 0
    hits_in_ban: int = 0  # requests answered 418 during the current ban
    answers_429: dict[int, int] = field(default_factory=dict)  # minute -> 429 answers

    def ban_length_ms(self) -> int:
        length: int = self.first_ban_ms * 2 ** min(self.bans, 30)
        return min(self.max_ban_ms, length)


@dataclass(eq=False)
class _WsConn:
    ws: ServerConnection
    kind: WsKind
    combined: bool
    streams: set[str] = field(default_factory=set)
    # private: listenKey -> the events wanted (None: all), from the URL or SUBSCRIBE
    keys: dict[str, frozenset[str] | None] = field(default_factory=dict)
    opened_ms: int = 0
    queue: asyncio.Queue[str] = field(default_factory=asyncio.Queue)
    control_times: list[float] = field(default_factory=list)
    kline_slots: dict[str, int] = field(default_factory=dict)
    pending_marks: dict[str, None] = field(default_factory=dict)  # for the ``!markPrice@arr`` batch

    @property
    def listen_key(self) -> str:
        """The first listenKey of a private connection ("" when none)."""
        return next(iter(self.keys), "")


# IP weight per route (usdm-2026 §1.2, §4 and the corrections); (with symbol, without symbol).
ROUTE_WEIGHTS: dict[tuple[str, str], tuple[int, int]] = {
    ("GET", "/fapi/v1/exchangeInfo"): (1, 1),
    ("GET", "/fapi/v1/premiumIndex"): (1, 10),
    ("GET", "/fapi/v1/ticker/24hr"): (1, 40),
    ("GET", "/fapi/v1/ticker/price"): (1, 2),
    ("GET", "/fapi/v2/ticker/price"): (1, 2),
    ("GET", "/fapi/v2/balance"): (5, 5),
    ("GET", "/fapi/v3/balance"): (5, 5),
    ("GET", "/fapi/v2/account"): (5, 5),
    ("GET", "/fapi/v3/account"): (5, 5),
    ("GET", "/fapi/v2/positionRisk"): (5, 5),
    ("GET", "/fapi/v3/positionRisk"): (5, 5),
    ("GET", "/fapi/v1/positionSide/dual"): (30, 30),
    ("GET", "/fapi/v1/openOrders"): (1, 40),
    ("GET", "/fapi/v1/openAlgoOrders"): (1, 40),
    ("GET", "/fapi/v1/userTrades"): (5, 5),
    ("GET", "/fapi/v1/allOrders"): (5, 5),
    ("GET", "/fapi/v1/allAlgoOrders"): (5, 5),
    ("GET", "/fapi/v1/symbolConfig"): (5, 5),
    ("GET", "/fapi/v1/income"): (30, 30),
    ("GET", "/fapi/v1/commissionRate"): (20, 20),
    # developers.binance.com USDⓈ-M "Compressed/Aggregate Trades List": "Request Weight 20".
    ("GET", "/fapi/v1/aggTrades"): (20, 20),
    ("POST", "/fapi/v1/order"): (0, 0),
    ("POST", "/fapi/v1/algoOrder"): (0, 0),
    ("POST", "/fapi/v1/batchOrders"): (5, 5),
    ("POST", "/fapi/v1/countdownCancelAll"): (10, 10),
}
KLINE_PATHS = frozenset({"/fapi/v1/klines", "/fapi/v1/markPriceKlines"})


def route_weight(method: str, path: str, params: dict[str, str]) -> int:
    """The IP weight Binance charges for one request (1 where the reference names none)."""
    if path in KLINE_PATHS:  # by limit: [1,100) 1, [100,500) 2, [500,1000] 5, above 10
        try:
            limit = int(params.get("limit", "500") or 500)
        except ValueError:
            limit = 500
        return 1 if limit < 100 else 2 if limit < 500 else 5 if limit <= 1000 else 10
    with_symbol, without = ROUTE_WEIGHTS.get((method, path), (1, 1))
    return with_symbol if params.get("symbol") else without


ORDER_PATHS = frozenset({"/fapi/v1/order", "/fapi/v1/algoOrder"})
ALL_MARK_STREAMS = frozenset({"!markPrice@arr@1s", "!markPrice@arr"})
MAX_STREAMS_PER_CONNECTION = 1024


ED25519_PUBLIC_PREFIX = "-----BEGIN PUBLIC KEY-----"


@functools.lru_cache(maxsize=64)
def _ed25519_public(pem: str) -> Ed25519PublicKey | None:
    try:
        key = serialization.load_pem_public_key(pem.encode())
    except ValueError:
        return None
    return key if isinstance(key, Ed25519PublicKey) else None


def signature_valid(registered: str, payload: str, given: str) -> bool:
    """Check ``given`` (already URL-decoded) against what the account registered for the API key:
    an HMAC secret (hex signature, case-insensitive) or an Ed25519 public key in PEM (base64
    signature, case-sensitive)."""
    if registered.lstrip().startswith(ED25519_PUBLIC_PREFIX):
        public = _ed25519_public(registered.strip())
        if public is None:
            return False
        try:
            public.verify(base64.b64decode(given, validate=True), payload.encode())
        except (InvalidSignature, binascii.Error, ValueError):
            return False
        return True
    expected = hmac.new(registered.encode(), payload.encode(), hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, given.lower())


def _too_many(ip: str, limit: int = 2400) -> dict[str, Any]:
    """The 429 body, verbatim from the real answers (March 2026)."""
    return {
        "code": -1003,
        "msg": f"Too many requests; current limit of IP({ip}) is {limit} requests per minute. "
        "Please use the websocket for live updates to avoid polling the API.",
    }


def _banned(ip: str, until_ms: int) -> dict[str, Any]:
    """The 418 body, verbatim from the real answers (March 2026)."""
    return {
        "code": -1003,
        "msg": f"Way too many requests; IP({ip}) banned until {until_ms}. "
        "Please use the websocket for live updates to avoid bans.",
    }


def _json(value: Any) -> bytes:
    """Compact JSON, UTF-8 as Binance sends it; what orjson refuses (a float NaN, an int beyond 64
    bits) is written by ``json``."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        return json.dumps(value, separators=(",", ":")).encode()


class SimVenue:
    """HTTP + WebSocket front of a ``SimExchange``; ``await start()``, then use ``rest_url`` /
    ``ws_url`` (append ``/market`` or ``/private``)."""

    def __init__(
        self, exchange: SimExchange, *, host: str = "127.0.0.1", rest_port: int = 0, ws_port: int = 0
    ) -> None:
        self.ex = exchange
        self.host = host
        self._rest_port = rest_port
        self._ws_port = ws_port
        self.faults = RestFaults()
        self.requests: list[tuple[str, str]] = []
        self._http: asyncio.Server | None = None
        self._ws: Server | None = None
        self._conn_tasks: set[asyncio.Task[None]] = set()
        self._ws_conns: set[_WsConn] = set()
        self.silenced: set[WsKind] = set()
        self.max_control_per_s = 10
        self._weight: dict[int, int] = {}
        self._orders_1m: list[int] = []
        self.rate_limits = RateLimitModel()
        # WebSocket keepalive on the sim clock (usdm-2026 §2.2): a ping every 3 min, a drop when no
        # pong came within 10 min, a cut at 24 h (None turns a rule off).
        self.ws_ping_every_ms: int | None = 180_000
        self.ws_pong_timeout_ms: int | None = 600_000
        self.ws_max_life_ms: int | None = 86_400_000
        self.ws_keeper_poll_s = 0.05
        self.pings_sent = 0
        self._routes: dict[tuple[str, str], tuple[Security, Handler]] = self._route_table()
        exchange.market_listeners.append(self._on_mark)
        exchange.user_listeners.append(self._on_user)

    def _route_table(self) -> dict[tuple[str, str], tuple[Security, Handler]]:
        ex = self.ex
        return {
            ("GET", "/fapi/v1/ping"): ("NONE", lambda p: {}),
            ("GET", "/fapi/v1/time"): ("NONE", ex.server_time),
            ("GET", "/fapi/v1/exchangeInfo"): ("NONE", ex.exchange_info),
            ("GET", "/fapi/v1/klines"): ("NONE", ex.klines),
            ("GET", "/fapi/v1/markPriceKlines"): ("NONE", ex.mark_price_klines),
            ("GET", "/fapi/v1/fundingRate"): ("NONE", ex.funding_rate),
            ("GET", "/fapi/v1/aggTrades"): ("NONE", ex.agg_trades),
            ("GET", "/fapi/v1/ticker/price"): ("NONE", ex.ticker_price),
            ("GET", "/fapi/v2/ticker/price"): ("NONE", ex.ticker_price),
            ("GET", "/fapi/v1/commissionRate"): ("SIGNED", ex.commission_rate),
            ("GET", "/fapi/v1/symbolConfig"): ("SIGNED", ex.symbol_config),
            ("GET", "/fapi/v1/income"): ("SIGNED", ex.income),
            ("GET", "/fapi/v1/allOrders"): ("SIGNED", ex.all_orders),
            ("GET", "/fapi/v1/allAlgoOrders"): ("SIGNED", ex.all_algo_orders),
            ("GET", "/fapi/v1/premiumIndex"): ("NONE", ex.premium_index),
            ("GET", "/fapi/v1/ticker/24hr"): ("NONE", ex.ticker_24hr),
            ("GET", "/fapi/v1/leverageBracket"): ("SIGNED", ex.leverage_bracket),
            ("GET", "/fapi/v2/balance"): ("SIGNED", ex.balance),
            ("GET", "/fapi/v3/balance"): ("SIGNED", ex.balance),
            ("GET", "/fapi/v2/account"): ("SIGNED", ex.account_v2),
            ("GET", "/fapi/v3/account"): ("SIGNED", ex.account),
            ("GET", "/fapi/v2/positionRisk"): ("SIGNED", ex.position_risk_v2),
            ("GET", "/fapi/v3/positionRisk"): ("SIGNED", ex.position_risk),
            ("GET", "/fapi/v1/positionSide/dual"): ("SIGNED", ex.get_position_mode),
            ("POST", "/fapi/v1/positionSide/dual"): ("SIGNED", ex.set_position_mode),
            ("POST", "/fapi/v1/leverage"): ("SIGNED", ex.set_leverage),
            ("POST", "/fapi/v1/marginType"): ("SIGNED", ex.set_margin_type),
            ("POST", "/fapi/v1/order"): ("SIGNED", ex.new_order),
            ("GET", "/fapi/v1/order"): ("SIGNED", ex.query_order),
            ("DELETE", "/fapi/v1/order"): ("SIGNED", ex.cancel_order),
            ("PUT", "/fapi/v1/order"): ("SIGNED", ex.modify_order),
            ("POST", "/fapi/v1/batchOrders"): ("SIGNED", ex.batch_orders),
            ("DELETE", "/fapi/v1/batchOrders"): ("SIGNED", ex.cancel_batch_orders),
            ("POST", "/fapi/v1/countdownCancelAll"): ("SIGNED", ex.countdown_cancel_all),
            ("GET", "/fapi/v1/openOrders"): ("SIGNED", ex.open_orders),
            ("GET", "/fapi/v1/userTrades"): ("SIGNED", ex.user_trades),
            ("DELETE", "/fapi/v1/allOpenOrders"): ("SIGNED", ex.cancel_all_orders),
            ("POST", "/fapi/v1/algoOrder"): ("SIGNED", ex.new_algo_order),
            ("GET", "/fapi/v1/algoOrder"): ("SIGNED", ex.query_algo_order),
            ("DELETE", "/fapi/v1/algoOrder"): ("SIGNED", ex.cancel_algo_order),
            ("GET", "/fapi/v1/openAlgoOrders"): ("SIGNED", ex.open_algo_orders),
            ("DELETE", "/fapi/v1/algoOpenOrders"): ("SIGNED", ex.cancel_all_algo_orders),
            ("POST", "/fapi/v1/listenKey"): ("USER_STREAM", ex.new_listen_key),
            ("PUT", "/fapi/v1/listenKey"): ("USER_STREAM", ex.keepalive_listen_key),
            ("DELETE", "/fapi/v1/listenKey"): ("USER_STREAM", ex.close_listen_key),
        }

    async def handle_request(
        self, method: str, target: str, headers: dict[str, str], body: str
    ) -> tuple[int, dict[str, str], bytes, str] | None:
        """One REST request without sockets (``binance.sim.inproc``): the same routing, auth, weights,
        error codes and faults as over TCP. ``target`` is path plus query; ``None`` means no answer."""
        lowered = {k.lower(): v for k, v in headers.items()}
        return await self._dispatch(method.upper(), target, lowered, body)

    def disable_route(self, method: str, path: str) -> None:
        """Make a path answer 404 (e.g. to exercise the v3 -> v2 fallback)."""
        self._routes.pop((method, path), None)

    # ----------------------------------------------------------------------------------------
    # lifecycle
    # ----------------------------------------------------------------------------------------

    async def start(self) -> None:
        self._http = await asyncio.start_server(self._serve_http, self.host, self._rest_port)
        self._rest_port = self._http.sockets[0].getsockname()[1]
        self._ws = await serve(
            self._serve_ws,
            self.host,
            self._ws_port,
            process_request=self._ws_route_check,
            ping_interval=None,  # pings follow the sim clock (``_ws_keeper``)
        )
        self._ws_port = next(iter(self._ws.sockets)).getsockname()[1]

    async def stop(self) -> None:
        if self._ws is not None:
            self._ws.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ws.wait_closed(), 2)
        if self._http is not None:
            self._http.close()
        for task in list(self._conn_tasks):
            task.cancel()
        if self._conn_tasks:
            await asyncio.gather(*self._conn_tasks, return_exceptions=True)
        if self._http is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._http.wait_closed(), 2)
        with contextlib.suppress(ValueError):
            self.ex.market_listeners.remove(self._on_mark)
        with contextlib.suppress(ValueError):
            self.ex.user_listeners.remove(self._on_user)

    async def __aenter__(self) -> SimVenue:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def rest_url(self) -> str:
        return f"http://{self.host}:{self._rest_port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self._ws_port}"

    # ----------------------------------------------------------------------------------------
    # HTTP
    # ----------------------------------------------------------------------------------------

    async def _serve_http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._conn_tasks.add(task)
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                method, target, _ = line.decode("latin-1").split(" ", 2)
                headers: dict[str, str] = {}
                while True:
                    h = await reader.readline()
                    if h in (b"\r\n", b"\n", b""):
                        break
                    name, _, value = h.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0") or 0))
                answer = await self._dispatch(method.upper(), target, headers, body.decode())
                if answer is None:
                    break  # hung request: the client gave up; close without answering
                status, extra, payload, ctype = answer
                reason = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Unknown"
                head = [
                    f"HTTP/1.1 {status} {reason}",
                    f"Content-Type: {ctype}",
                    f"Content-Length: {len(payload)}",
                ]
                head += [f"{k}: {v}" for k, v in extra.items()]
                writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + payload)
                await writer.drain()
                if headers.get("connection", "").lower() == "close":
                    break
        except (ConnectionError, asyncio.IncompleteReadError, ValueError) as exc:
            log.debug("http connection ended: %s", exc)
        finally:
            writer.close()
            if task is not None:
                self._conn_tasks.discard(task)

    def _used_weight(self, add: int) -> int:
        minute = self.ex.now() // 60_000
        self._weight = {m: w for m, w in self._weight.items() if m == minute}
        self._weight[minute] = self._weight.get(minute, 0) + add
        return self._weight[minute]

    async def _dispatch(
        self, method: str, target: str, headers: dict[str, str], body: str
    ) -> tuple[int, dict[str, str], bytes, str] | None:
        url = urlsplit(target)
        path = url.path
        self.requests.append((method, path))
        pairs = parse_qsl(url.query, keep_blank_values=True) + parse_qsl(body, keep_blank_values=True)
        params: dict[str, str] = {}
        for k, v in reversed(pairs):  # the query string wins on duplicates
            params[k] = v
        used = self._used_weight(route_weight(method, path, params))
        extra = {"X-MBX-USED-WEIGHT-1M": str(used)}
        now = self.ex.now()
        ip = self.rate_limits.ip
        if now < self.faults.banned_until_ms:
            until = self.faults.banned_until_ms
            retry = str(max(1, (until - now + 999) // 1000))
            return 418, {**extra, "Retry-After": retry}, _json(_banned(ip, until)), "application/json"
        if self.faults.rate_limited > 0:
            self.faults.rate_limited -= 1
            headers_429 = {**extra, "Retry-After": str(self.faults.retry_after_s)}
            return 429, headers_429, _json(_too_many(ip)), "application/json"
        limited = self._rate_model(now, used, extra)
        if limited is not None:
            return limited
        route = self._routes.get((method, path))
        if route is None:
            return 404, extra, b"<html><body><h1>404 Not Found</h1></body></html>", "text/html"
        security, handler = route
        fault = self.faults.take(method, path)
        if fault is not None and fault.kind == "slow":
            await asyncio.sleep(fault.hang_s)
            fault = None
        if fault is not None and not fault.after_accept:
            return await self._fault_answer(fault, extra)
        try:
            self._authorise(security, headers, params, url.query, body)
            result = handler(params)
        except SimError as err:
            return err.http_status, extra, _json({"code": err.code, "msg": err.msg}), "application/json"
        if path in ORDER_PATHS and method == "POST":
            self._orders_1m = [t for t in self._orders_1m if t > now - 60_000] + [now]
            extra["X-MBX-ORDER-COUNT-10S"] = str(sum(1 for t in self._orders_1m if t > now - 10_000))
            extra["X-MBX-ORDER-COUNT-1M"] = str(len(self._orders_1m))
        if fault is not None:
            return await self._fault_answer(fault, extra)
        return 200, extra, _json(result), "application/json"

    def _rate_model(
        self, now: int, used: int, extra: dict[str, str]
    ) -> tuple[int, dict[str, str], bytes, str] | None:
        """``RateLimitModel``: 429 over the weight limit, then 418 bans that grow while requests
        keep coming (see its docstring)."""
        rl = self.rate_limits
        if not rl.enabled:
            return None
        if now < rl.banned_until_ms:
            rl.hits_in_ban += 1
            return self._ban_answer(now, extra)
        if rl.hits_in_ban:  # requests came during the ban: the next, longer ban starts now
            rl.hits_in_ban = 0
            rl.banned_until_ms = now + rl.ban_length_ms()
            rl.bans += 1
            return self._ban_answer(now, extra)
        if used <= rl.weight_limit:
            return None
        minute = now // 60_000
        rl.answers_429 = {minute: rl.answers_429.get(minute, 0) + 1}
        if rl.answers_429[minute] > rl.ban_after_429s:
            rl.banned_until_ms = now + rl.ban_length_ms()
            rl.bans += 1
            return self._ban_answer(now, extra)
        headers = dict(extra)
        if rl.retry_after:
            headers["Retry-After"] = str(max(1, ((minute + 1) * 60_000 - now + 999) // 1000))
        return 429, headers, _json(_too_many(rl.ip, rl.weight_limit)), "application/json"

    def _ban_answer(self, now: int, extra: dict[str, str]) -> tuple[int, dict[str, str], bytes, str]:
        rl = self.rate_limits
        headers = dict(extra)
        if rl.retry_after:
            headers["Retry-After"] = str(max(1, (rl.banned_until_ms - now + 999) // 1000))
        return 418, headers, _json(_banned(rl.ip, rl.banned_until_ms)), "application/json"

    async def _fault_answer(
        self, fault: RestFault, extra: dict[str, str]
    ) -> tuple[int, dict[str, str], bytes, str] | None:
        if fault.kind == "hang":
            await asyncio.sleep(fault.hang_s)
            return None
        if fault.kind == "html":
            title = f"{fault.status} Bad Gateway"
            page = f"<html><head><title>{title}</title></head><body><h1>{title}</h1></body></html>"
            return fault.status, extra, page.encode(), "text/html"
        if fault.retry_after_s is not None:
            extra = {**extra, "Retry-After": str(fault.retry_after_s)}
        return fault.status, extra, fault.body.encode(), "application/json"

    def _authorise(
        self, security: Security, headers: dict[str, str], params: dict[str, str], query: str, body: str
    ) -> None:
        if security == "NONE":
            return
        key = headers.get("x-mbx-apikey")
        if not key:
            raise SimError(-2014, "API-key format invalid.", 401)
        secret = self.ex.api_keys.get(key)
        if secret is None:
            raise SimError(-2015, "Invalid API-key, IP, or permissions for action.", 401)
        if security != "SIGNED":
            return
        ts_raw = params.get("timestamp")
        if not ts_raw or not ts_raw.isdigit():
            raise SimError(
                -1102, "Mandatory parameter 'timestamp' was not sent, was empty/null, or malformed."
            )
        recv = int(params.get("recvWindow", "5000") or 5000)
        now = self.ex.now()
        ts = int(ts_raw)
        if ts >= now + 1000 or now - ts > recv:
            raise SimError(-1021, "Timestamp for this request is outside of the recvWindow.")
        given = params.get("signature", "")
        payload = "&".join(part for part in query.split("&") if part and not part.startswith("signature="))
        payload += "&".join(part for part in body.split("&") if part and not part.startswith("signature="))
        if not signature_valid(secret, payload, given):
            raise SimError(-1022, "Signature for this request is not valid.")

    # ----------------------------------------------------------------------------------------
    # WebSocket
    # ----------------------------------------------------------------------------------------

    def _ws_route_check(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        head = path.split("/")[1] if path.count("/") >= 1 else ""
        if head not in ("market", "private", "public", "ws", "stream"):
            return Response(404, "Not Found", Headers([("Content-Type", "text/plain")]), b"Not Found\n")
        kind, _, streams, _keys = self._classify(request.path)
        if kind == "market" and len(streams) > MAX_STREAMS_PER_CONNECTION:
            body = f"more than {MAX_STREAMS_PER_CONNECTION} streams on one connection\n".encode()
            return Response(400, "Bad Request", Headers([("Content-Type", "text/plain")]), body)
        return None

    @staticmethod
    def _private_keys(query: str, combined: bool, rest: list[str]) -> dict[str, frozenset[str] | None]:
        """The listenKeys a ``/private`` URL names, each with the ``events=`` that follows it
        (usdm-2026 §2.1: ``/private/stream?listenKey=k1&events=A&listenKey=k2&events=B``)."""
        keys: dict[str, frozenset[str] | None] = {}
        current = ""
        for name, value in parse_qsl(query):
            if name == "listenKey" and value:
                current = value
                keys[current] = None
            elif name == "events" and current:
                keys[current] = frozenset(e for e in value.split("/") if e)
            elif name == "streams" and combined:
                keys.update({k: None for k in value.split("/") if k})
        if not keys and rest:
            keys[rest[0]] = None
        return keys

    @staticmethod
    def _classify(target: str) -> tuple[WsKind, bool, set[str], dict[str, frozenset[str] | None]]:
        url = urlsplit(target)
        parts = [p for p in url.path.split("/") if p]
        query = dict(parse_qsl(url.query))
        head = parts[0] if parts else ""
        mode = parts[1] if len(parts) > 1 else ""
        rest = parts[2:]
        combined = mode == "stream"
        if head == "market":
            streams = set(query.get("streams", "").split("/")) if combined else set(rest)
            return "market", combined, {s for s in streams if s}, {}
        if head == "private":
            return "private", combined, set(), SimVenue._private_keys(url.query, combined, rest)
        return "silent", head == "stream" or mode == "stream", set(), {}

    async def _serve_ws(self, ws: ServerConnection) -> None:
        kind, combined, streams, keys = self._classify(ws.request.path if ws.request else "/")
        conn = _WsConn(
            ws=ws, kind=kind, combined=combined, streams=streams, keys=keys, opened_ms=self.ex.now()
        )
        self._ws_conns.add(conn)
        sender = asyncio.create_task(self._ws_sender(conn))
        keeper = asyncio.create_task(self._ws_keeper(conn))
        try:
            async for message in ws:
                await self._ws_control(conn, message)
        except ConnectionClosed:
            pass
        finally:
            self._ws_conns.discard(conn)
            for task in (sender, keeper):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _ws_keeper(self, conn: _WsConn) -> None:
        """Binance's connection rules on the sim clock (usdm-2026 §2.2): a ping frame every 3 min,
        a drop (no close frame) when a ping has had no pong for 10 min, a close at 24 h. The close
        code and reason Binance uses at 24 h are not documented; the sim sends 1000. A pong counts
        only when it answers a ping; so that a test's big clock jump between a ping and its pong
        cannot drop a healthy client, a drop also needs 1 s of real time without the pong."""
        loop = asyncio.get_running_loop()
        last_ping_ms = conn.opened_ms
        waiter: Awaitable[float] | None = None
        sent_ms, sent_real = 0, 0.0
        with contextlib.suppress(ConnectionClosed):
            while True:
                await asyncio.sleep(self.ws_keeper_poll_s)
                now = self.ex.now()
                if self.ws_max_life_ms is not None and now - conn.opened_ms >= self.ws_max_life_ms:
                    await conn.ws.close(1000, "connection open for 24 hours")
                    return
                timeout = self.ws_pong_timeout_ms
                if isinstance(waiter, asyncio.Future) and waiter.done():
                    waiter = None
                if (
                    waiter is not None
                    and timeout is not None
                    and now - sent_ms >= timeout
                    and loop.time() - sent_real >= 1.0
                ):
                    log.info("ws: no pong for %d ms; dropping the connection", now - sent_ms)
                    conn.ws.transport.abort()
                    return
                every = self.ws_ping_every_ms
                if every is not None and now - last_ping_ms >= every:
                    last_ping_ms = now
                    fut = await conn.ws.ping()
                    self.pings_sent += 1
                    if waiter is None:
                        waiter, sent_ms, sent_real = fut, now, loop.time()

    async def _ws_sender(self, conn: _WsConn) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                text = await conn.queue.get()
                await conn.ws.send(text)

    async def _ws_control(self, conn: _WsConn, message: str | bytes) -> None:
        loop_now = asyncio.get_running_loop().time()
        conn.control_times = [t for t in conn.control_times if t > loop_now - 1.0] + [loop_now]
        if len(conn.control_times) > self.max_control_per_s:
            log.warning("ws: more than %d control messages in 1 s; closing", self.max_control_per_s)
            await conn.ws.close(1008, "Too many requests")
            return
        try:
            msg = json.loads(message)
            method = msg["method"]
            req_id = msg.get("id")
        except (ValueError, KeyError, TypeError):
            conn.queue.put_nowait(
                json.dumps({"code": 3, "msg": "Invalid JSON: expected value at line 1 column 1"})
            )
            return
        params = [str(p) for p in msg.get("params", []) if isinstance(p, str)]
        if conn.kind == "private":
            self._private_control(conn, method, params, req_id)
            return
        if method == "SUBSCRIBE":
            if len(conn.streams | set(params)) > MAX_STREAMS_PER_CONNECTION:
                msg_text = (
                    f"Invalid request: more than {MAX_STREAMS_PER_CONNECTION} streams on one connection"
                )
                conn.queue.put_nowait(json.dumps({"code": 2, "msg": msg_text, "id": req_id}))
                return
            conn.streams.update(params)
            conn.queue.put_nowait(json.dumps({"result": None, "id": req_id}))
        elif method == "UNSUBSCRIBE":
            conn.streams.difference_update(params)
            conn.queue.put_nowait(json.dumps({"result": None, "id": req_id}))
        elif method == "LIST_SUBSCRIPTIONS":
            conn.queue.put_nowait(json.dumps({"result": sorted(conn.streams), "id": req_id}))
        else:
            conn.queue.put_nowait(
                json.dumps({"code": 2, "msg": f"Invalid request: unknown method {method}", "id": req_id})
            )

    def _private_control(self, conn: _WsConn, method: str, params: list[str], req_id: Any) -> None:
        """``/private``: SUBSCRIBE / UNSUBSCRIBE listenKeys (several per connection, usdm-2026
        corrections: the official SDK's way), LIST_SUBSCRIPTIONS. A key that is not (or no longer)
        valid is accepted and stays silent (§3, third-party observation)."""
        if method == "SUBSCRIBE":
            conn.keys.update({k: None for k in params if k})
            conn.queue.put_nowait(json.dumps({"result": None, "id": req_id}))
        elif method == "UNSUBSCRIBE":
            for k in params:
                conn.keys.pop(k, None)
            conn.queue.put_nowait(json.dumps({"result": None, "id": req_id}))
        elif method == "LIST_SUBSCRIPTIONS":
            conn.queue.put_nowait(json.dumps({"result": list(conn.keys), "id": req_id}))
        else:
            conn.queue.put_nowait(
                json.dumps({"code": 2, "msg": f"Invalid request: unknown method {method}", "id": req_id})
            )

    def _push(self, conn: _WsConn, stream: str, payload: dict[str, Any] | list[Any]) -> None:
        data = {"stream": stream, "data": payload} if conn.combined else payload
        conn.queue.put_nowait(json.dumps(data, separators=(",", ":")))

    def _on_mark(self, symbol: str) -> None:
        if "market" in self.silenced:
            return
        low = symbol.lower()
        mark: dict[str, Any] | None = None
        for conn in list(self._ws_conns):
            if conn.kind != "market":
                continue
            if not conn.streams.isdisjoint(ALL_MARK_STREAMS):
                self._queue_all_marks(conn, symbol)
            for stream in sorted(conn.streams):
                if stream in (f"{low}@markPrice@1s", f"{low}@markPrice"):
                    mark = mark or self.ex.mark_payload(symbol)
                    self._push(conn, stream, mark)
                elif stream.startswith(f"{low}@kline_"):
                    interval = stream.split("_", 1)[1]
                    if interval not in INTERVAL_MS:
                        continue
                    self._push_kline(conn, stream, symbol, interval)

    def _queue_all_marks(self, conn: _WsConn, symbol: str) -> None:
        """``!markPrice@arr``: the marks that change in one run of the loop (``publish_marks``, a
        scripted step) go out as one array frame, like Binance's one push per second."""
        first = not conn.pending_marks
        conn.pending_marks[symbol] = None
        if not first:
            return
        try:
            asyncio.get_running_loop().call_soon(self._flush_all_marks, conn)
        except RuntimeError:  # driven outside a loop: no batching possible
            self._flush_all_marks(conn)

    def _flush_all_marks(self, conn: _WsConn) -> None:
        symbols = list(conn.pending_marks)
        conn.pending_marks.clear()
        if "market" in self.silenced or conn not in self._ws_conns:
            return
        payload = [self.ex.mark_payload(s) for s in symbols if s in self.ex.symbols]
        for stream in sorted(conn.streams & ALL_MARK_STREAMS):
            self._push(conn, stream, payload)

    def _push_kline(self, conn: _WsConn, stream: str, symbol: str, interval: str) -> None:
        iv = INTERVAL_MS[interval]
        slot = self.ex.now() // iv * iv
        prev_slot = conn.kline_slots.get(stream)
        if prev_slot is not None and prev_slot < slot:
            closed = self.ex.kline_payload(symbol, interval, closed_slot=prev_slot)
            if closed is not None:
                self._push(conn, stream, closed)
        conn.kline_slots[stream] = slot
        current = self.ex.kline_payload(symbol, interval)
        if current is not None:
            self._push(conn, stream, current)

    def _on_user(self, payload: dict[str, Any], only_key: str | None) -> None:
        if "private" in self.silenced:
            return
        event = payload.get("e")
        for conn in list(self._ws_conns):
            if conn.kind != "private":
                continue
            for key, events in list(conn.keys.items()):
                if only_key is not None:
                    if key != only_key:
                        continue
                elif not self.ex.listen_key_valid(key):
                    continue
                if events is not None and event not in events:
                    continue
                self._push(conn, key, payload)

    # ----------------------------------------------------------------------------------------
    # WS faults
    # ----------------------------------------------------------------------------------------

    def ws_connections(self, kind: WsKind | None = None) -> int:
        return sum(1 for c in self._ws_conns if kind is None or c.kind == kind)

    def drop_ws(self, kind: WsKind | None = None) -> int:
        """Abort matching connections as a network failure would (no close frame)."""
        n = 0
        for conn in list(self._ws_conns):
            if kind is None or conn.kind == kind:
                conn.ws.transport.abort()
                n += 1
        return n

    def silence_ws(self, kind: WsKind, silent: bool = True) -> None:
        """Keep connections open but stop pushing data of this kind."""
        if silent:
            self.silenced.add(kind)
        else:
            self.silenced.discard(kind)
