"""Async Binance USDⓈ-M REST client (httpx).

Theory of operation: every call goes through ``_call``, which (1) paces by the limits as data: it
fails fast with ``RateLimited`` while an IP ban (418) runs (nothing at all is sent, checked again right
before sending) or, for a non-urgent request, a 429 back-off (Retry-After, else the start of the next
minute); it holds a read or a new entry once ``X-MBX-USED-WEIGHT-1M`` or an order counter reaches 80 %
of its limit (``exchangeInfo.rateLimits``) until the window turns (inline up to ``max_hold_s``, else
``RateLimited`` with the wait), while cancels, closes and the listenKey only wait at the limit itself
(``is_urgent``, ``RateState.wait_until``), (2) signs SIGNED requests with HMAC-SHA256 over
the exact urlencoded query it sends (or Ed25519, base64 then URL-encoded, when the configured secret is
a PEM Ed25519 private key or a path to one), stamped with local time plus the measured server-time offset,
(3) sends the request shielded from cancellation (httpx's pool leaks slots when a request is
cancelled mid-flight), (4) records ``X-MBX-USED-WEIGHT-1M`` and the order counters, and (5) maps any
error answer to a typed ``binance.errors`` exception (``raise ... from``). A -1021/-5028 re-syncs the
clock and retries the same request once with a fresh timestamp and signature.

Orders are idempotent: ``place_order`` / ``place_algo_order`` always carry a client id and are sent
once. An unknown outcome (timeout, 408/-1007, 5xx "unknown", a 200 without a usable body) raises
``UnknownOutcome``: the caller resolves it by a query once the request can no longer execute, never
by an immediate resend. A -4116 (the id is open on the venue) is answered by reading that order back.

Key material never reaches a log line, an exception message or a ``repr``.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import quote, urlencode, urlsplit

import httpx
import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from binance import errors
from binance.errors import BinanceError, RateLimited, Rejected, Retryable, TimestampRejected, UnknownOutcome

log = logging.getLogger(__name__)

Params = Mapping[str, str | int]
DEFAULT_BASE_URL = "https://fapi.binance.com"


def wall_clock_ms() -> int:
    return int(time.time() * 1000)


def host_of(url: str) -> str:
    """``host`` or ``host:port`` of a URL, for messages: never its path or query (a signature, a
    listenKey, a webhook token)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "?"
    if not host:
        return "?"
    return f"{host}:{port}" if port else host


_URL = re.compile(r"\b(?:https?|wss?)://[^\s'\"<>]+")


def hosts_only(text: str) -> str:
    """``text`` with every URL in it cut down to its host (exception texts may carry the request's)."""
    return _URL.sub(lambda m: host_of(m.group(0)), text)


def sign(payload: str, secret: str) -> str:
    """HMAC-SHA256 hex of ``payload`` (the urlencoded totalParams) with the API secret."""
    return hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()


SigningMethod = Literal["HMAC", "Ed25519"]
PEM_PREFIX = "-----BEGIN"


class Signer(Protocol):
    method: SigningMethod

    def sign(self, payload: str) -> str:
        """The ``signature`` value to append, already safe for a query string."""
        ...


class HmacSigner:
    """HMAC-SHA256 with the API secret: lower-case hex."""

    method: SigningMethod = "HMAC"
    __slots__ = ("_secret",)

    def __init__(self, secret: str) -> None:
        self._secret = secret.encode()

    def sign(self, payload: str) -> str:
        return hmac.new(self._secret, payload.encode(), hashlib.sha256).hexdigest()

    def __repr__(self) -> str:
        return "HmacSigner(<secret>)"


class Ed25519Signer:
    """Ed25519 over the query string; base64 of the 64-byte signature, then URL-encoded."""

    method: SigningMethod = "Ed25519"
    __slots__ = ("_key",)

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key

    def sign(self, payload: str) -> str:
        return quote(base64.b64encode(self._key.sign(payload.encode())).decode(), safe="")

    def __repr__(self) -> str:
        return "Ed25519Signer(<private key>)"


def _load_ed25519(pem: bytes, where: str) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        raise ValueError(f"{where}: encrypted PEM keys are not supported; store it unencrypted") from None
    except ValueError:
        raise ValueError(f"{where}: not a readable PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{where}: only Ed25519 private keys are supported, got {type(key).__name__}")
    return key


def make_signer(secret: str) -> Signer:
    """HMAC for a plain secret; Ed25519 for a PEM private key (the text itself, or a path to a
    ``.pem`` file). Raises ValueError naming the problem, never the key."""
    text = secret.strip()
    if text.startswith(PEM_PREFIX):
        return Ed25519Signer(_load_ed25519(text.encode(), "API secret"))
    if text.endswith(".pem") and "\n" not in text:
        path = Path(text).expanduser()
        try:
            pem = path.read_bytes()
        except OSError as exc:
            raise ValueError(f"API secret: cannot read key file {path}: {exc.strerror}") from None
        return Ed25519Signer(_load_ed25519(pem, f"key file {path}"))
    return HmacSigner(secret)


_cached_signer = functools.lru_cache(maxsize=4)(make_signer)


def signed_query(params: Params, secret: str | Signer, timestamp_ms: int, recv_window_ms: int) -> str:
    """``a=1&b=2&recvWindow=..&timestamp=..&signature=<sig>``: the signature is over what is sent."""
    signer = _cached_signer(secret) if isinstance(secret, str) else secret
    items: list[tuple[str, str | int]] = [
        *params.items(),
        ("recvWindow", recv_window_ms),
        ("timestamp", timestamp_ms),
    ]
    query = urlencode(items)
    return f"{query}&signature={signer.sign(query)}"


# Digits to "0", every other byte to " ": a run of 19 digits is then a substring (a regex takes
# ten times longer on a 300 kB exchangeInfo than parsing it).
_DIGITS = bytes(48 if 48 <= b <= 57 else 32 for b in range(256))
_LONG_RUN = b"0" * 19


def _body(resp: httpx.Response) -> Any:
    """The answer's JSON as ``Response.json`` reads it: orjson on the bytes (faster), but
    ``Response.json`` for a body with a run of 19 digits (orjson reads an int beyond 64 bits as a
    float) and for what orjson refuses (NaN, another charset); ``ValueError`` when neither reads
    it."""
    content = resp.content
    if _LONG_RUN not in content.translate(_DIGITS):
        try:
            return orjson.loads(content)
        except orjson.JSONDecodeError:
            pass
    return resp.json()


# A Retry-After is read within these bounds: under a second would resend into the limit at once;
# Binance's bans "scale 2 minutes -> 3 days" (binance-usdm-2026.md, rate limits), so a longer wait
# is not a wait Binance asks for.
RETRY_AFTER_MIN_S = 1.0
RETRY_AFTER_MAX_S = 3 * 86_400.0


# IP request weight per route (binance-usdm-2026.md sections 1.2 and 4, corrections). Orders weigh 0
# on the IP counter and 1 on each order counter. Routes not listed weigh 1.
ROUTE_WEIGHTS: dict[tuple[str, str], int] = {
    ("GET", "/fapi/v1/positionSide/dual"): 30,
    ("GET", "/fapi/v2/balance"): 5,
    ("GET", "/fapi/v3/balance"): 5,
    ("GET", "/fapi/v2/account"): 5,
    ("GET", "/fapi/v3/account"): 5,
    ("GET", "/fapi/v2/positionRisk"): 5,
    ("GET", "/fapi/v3/positionRisk"): 5,
    ("GET", "/fapi/v1/userTrades"): 5,
    ("GET", "/fapi/v1/income"): 30,
    ("GET", "/fapi/v1/symbolConfig"): 5,
    ("GET", "/fapi/v1/allAlgoOrders"): 5,
    ("GET", "/fapi/v1/aggTrades"): 20,  # Binance's "Compressed/Aggregate Trades List" page (D-74)
    ("POST", "/fapi/v1/order"): 0,
    ("POST", "/fapi/v1/algoOrder"): 0,
}
# Routes that weigh more without a symbol: (with symbol, without).
SYMBOL_WEIGHTS: dict[tuple[str, str], tuple[int, int]] = {
    ("GET", "/fapi/v1/openOrders"): (1, 40),
    ("GET", "/fapi/v1/openAlgoOrders"): (1, 40),
    ("GET", "/fapi/v1/premiumIndex"): (1, 10),
}
# Weighed by ``limit`` like klines. markPriceKlines: the table of Binance's COIN-M page, assumed the
# same on USD-M (its USD-M page gives none). fundingRate weighs 1 here; its own limit (500 per 5 min
# per IP, shared with fundingInfo) is paced by binance.history.rest_history.
KLINE_ROUTES = frozenset({("GET", "/fapi/v1/klines"), ("GET", "/fapi/v1/markPriceKlines")})
ORDER_ROUTES = frozenset({("POST", "/fapi/v1/order"), ("POST", "/fapi/v1/algoOrder")})
CANCEL_ROUTES = frozenset(
    {
        ("DELETE", "/fapi/v1/order"),
        ("DELETE", "/fapi/v1/algoOrder"),
        ("DELETE", "/fapi/v1/allOpenOrders"),
        ("DELETE", "/fapi/v1/algoOpenOrders"),
    }
)
# Non-urgent requests stop at this share of a limit; the rest is kept for cancels and closes.
NON_URGENT_SHARE = 0.8
MINUTE_MS = 60_000
TEN_S_MS = 10_000


def request_weight(method: str, path: str, params: Params) -> int:
    """The IP weight one request costs (klines by ``limit``: 1, 2, 5 or 10; default limit 500)."""
    key = (method, path)
    if key in SYMBOL_WEIGHTS:
        with_symbol, without = SYMBOL_WEIGHTS[key]
        return with_symbol if params.get("symbol") else without
    if key in KLINE_ROUTES:
        limit = int(params.get("limit", 500))
        return 1 if limit < 100 else 2 if limit < 500 else 5 if limit <= 1000 else 10
    return ROUTE_WEIGHTS.get(key, 1)


def is_urgent(method: str, path: str, params: Params) -> bool:
    """Cancels, orders that only reduce a position (reduce-only, close-position, a BUY on the SHORT
    side or a SELL on the LONG side in hedge mode) and the listenKey (the stream is what keeps us
    from polling) are never held back for the weight budget of reads and new entries."""
    if (method, path) in CANCEL_ROUTES or path == "/fapi/v1/listenKey":
        return True
    if (method, path) not in ORDER_ROUTES:
        return False
    side, position_side = params.get("side"), params.get("positionSide")
    return (
        params.get("reduceOnly") == "true"
        or params.get("closePosition") == "true"
        or (position_side == "SHORT" and side == "BUY")
        or (position_side == "LONG" and side == "SELL")
    )


@dataclass(slots=True)
class RateLimits:
    """The limits paced against; replaced by ``exchangeInfo.rateLimits`` when it is read."""

    weight_1m: int = 2400
    orders_10s: int = 300
    orders_1m: int = 1200


@dataclass(slots=True)
class RateState:
    """What the venue's headers and errors told us about our limits. Each counter belongs to the
    window (venue minute or 10-second slot) it was seen in; a new window starts it at 0."""

    used_weight_1m: int = 0
    order_count_10s: int = 0
    order_count_1m: int = 0
    backoff_until_ms: int = 0  # after a 429
    banned_until_ms: int = 0  # after a 418 (with ``BAN_END_MARGIN_MS``)
    probe_due: bool = False  # a 429 or 418 was met: the next request goes alone (``BinanceRest._call``)
    weight_window: int = 0  # venue minute of ``used_weight_1m``
    orders_10s_window: int = 0
    orders_1m_window: int = 0
    paced_waits: int = 0  # how often a request waited for the next window
    limits: RateLimits = field(default_factory=RateLimits)

    def weight(self, now_ms: int) -> int:
        return self.used_weight_1m if self.weight_window == now_ms // MINUTE_MS else 0

    def orders(self, now_ms: int) -> tuple[int, int]:
        ten = self.order_count_10s if self.orders_10s_window == now_ms // TEN_S_MS else 0
        one = self.order_count_1m if self.orders_1m_window == now_ms // MINUTE_MS else 0
        return ten, one

    def wait_until(self, now_ms: int, weight: int, urgent: bool, is_order: bool) -> int:
        """0 when the request may go now, else the venue time of the window it must wait for."""
        share = 1.0 if urgent else NON_URGENT_SHARE
        if weight and self.weight(now_ms) + weight > self.limits.weight_1m * share:
            return (now_ms // MINUTE_MS + 1) * MINUTE_MS
        if is_order:
            ten, one = self.orders(now_ms)
            if one + 1 > self.limits.orders_1m * share:
                return (now_ms // MINUTE_MS + 1) * MINUTE_MS
            if ten + 1 > self.limits.orders_10s * share:
                return (now_ms // TEN_S_MS + 1) * TEN_S_MS
        return 0

    def note_sent(self, now_ms: int, weight: int, is_order: bool) -> None:
        """Count a request as it leaves; the response's headers then correct the estimate."""
        minute = now_ms // MINUTE_MS
        self.used_weight_1m = self.weight(now_ms) + weight
        self.weight_window = minute
        if is_order:
            ten, one = self.orders(now_ms)
            self.order_count_10s, self.orders_10s_window = ten + 1, now_ms // TEN_S_MS
            self.order_count_1m, self.orders_1m_window = one + 1, minute


def rate_limits_from_exchange_info(info: Mapping[str, Any]) -> RateLimits | None:
    """``exchangeInfo.rateLimits`` -> ``RateLimits`` (None when absent or unreadable)."""
    limits = RateLimits()
    found = False
    rows = info.get("rateLimits")
    if not isinstance(rows, list):
        return None
    for row in rows:
        if not isinstance(row, dict):
            continue
        try:
            kind, interval = str(row["rateLimitType"]), str(row["interval"])
            num, limit = int(row.get("intervalNum", 1)), int(row["limit"])
        except (KeyError, TypeError, ValueError):
            continue
        if limit <= 0:
            continue
        if (kind, interval, num) == ("REQUEST_WEIGHT", "MINUTE", 1):
            limits.weight_1m, found = limit, True
        elif (kind, interval, num) == ("ORDERS", "MINUTE", 1):
            limits.orders_1m, found = limit, True
        elif (kind, interval, num) == ("ORDERS", "SECOND", 10):
            limits.orders_10s, found = limit, True
    return limits if found else None


LIMIT_END_TOLERANCE_MS = 1_000  # how early a retry timed by the caller's clock may come (D-48)
# A ban is kept this much past the venue's "banned until": our estimate of the venue's clock is off
# by up to a round trip, and a request that lands a moment inside the ban earns the next, longer one
# (binance-real-answers.md; D-52).
BAN_END_MARGIN_MS = 1_000


async def _asyncio_sleep(seconds: float) -> None:
    await asyncio.sleep(seconds)


class BinanceRest:
    """Typed endpoints over one ``httpx.AsyncClient``; all URLs relative to ``base_url``."""

    def __init__(
        self,
        *,
        api_key: str,
        api_secret: str,
        base_url: str = DEFAULT_BASE_URL,
        recv_window_ms: int = 5000,
        timeout_s: float = 10.0,
        clock_ms: Callable[[], int] = wall_clock_ms,
        exchange_info_ttl_ms: int = 300_000,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = _asyncio_sleep,
        pacing: bool = True,
        max_hold_s: float = 2.0,
        wall_s: Callable[[int], float] | None = None,
    ) -> None:
        self._key = api_key
        self._signer: Signer = make_signer(api_secret)
        self.base_url = base_url.rstrip("/")
        self.host = host_of(self.base_url)
        self.recv_window_ms = recv_window_ms
        self._clock_ms = clock_ms
        # ``transport``: e.g. ``binance.sim.inproc.InProcessTransport`` (the sim venue without sockets).
        self._client = httpx.AsyncClient(base_url=self.base_url, timeout=timeout_s, transport=transport)
        self._offset_ms = 0
        self._synced = False
        self._sync_lock = asyncio.Lock()
        self._exchange_info: tuple[int, dict[str, Any]] | None = None
        self._exchange_info_ttl_ms = exchange_info_ttl_ms
        self._inflight: set[asyncio.Task[httpx.Response]] = set()
        self.rate = RateState()
        self.requests_sent = 0
        # After a 429 or a 418 the first request out is a probe, alone in flight: the others wait for
        # its answer, so a ban's end never meets a burst (each request inside a ban earns a longer one).
        self._probe: asyncio.Future[None] | None = None
        self._probe_after = 0  # requests numbered up to this were sent before the last limit
        self.weight_sent = 0  # IP weight of every request sent (the bench's figure)
        self._sleep = sleep
        self.pacing = pacing  # False: never hold a request for the budget (a test that wants a 429)
        # A non-urgent request is held inline at most this long; a longer wait is handed back to the
        # caller as ``RateLimited`` with the wait, so a sequential caller is never stuck for a minute
        # behind a read while a cancel or a close waits its turn.
        self.max_hold_s = max_hold_s
        # Venue milliseconds as wall seconds to sleep (a compressed clock in tests and the demo).
        self._wall_s: Callable[[int], float] = wall_s or (lambda ms: ms / 1000)

    @property
    def signing_method(self) -> SigningMethod:
        """``"HMAC"`` or ``"Ed25519"``, chosen from the configured secret."""
        return self._signer.method

    async def aclose(self) -> None:
        """Wait for shielded requests still running, then close the pool."""
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)
        await self._client.aclose()

    async def __aenter__(self) -> BinanceRest:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ----------------------------------------------------------------------------------------
    # time
    # ----------------------------------------------------------------------------------------

    def server_now_ms(self) -> int:
        """Our best estimate of the venue's clock."""
        return self._clock_ms() + self._offset_ms

    @property
    def time_offset_ms(self) -> int:
        return self._offset_ms

    async def sync_time(self, *, urgent: bool = False) -> int:
        """Measure ``serverTime - local`` from ``GET /fapi/v1/time`` (midpoint of the round trip)."""
        sent: list[int] = []  # when the request left: a wait for a probe is not round-trip time
        data = await self._call("GET", "/fapi/v1/time", {}, signed=False, urgent=urgent, _sent_at=sent)
        after = self._clock_ms()
        before = sent[-1] if sent else after
        self._offset_ms = int(data["serverTime"]) - (before + after) // 2
        self._synced = True
        log.info("server time offset %d ms", self._offset_ms)
        return self._offset_ms

    async def _ensure_synced(self, urgent: bool) -> None:
        if self._synced:
            return
        async with self._sync_lock:
            if not self._synced:
                await self.sync_time(urgent=urgent)

    # ----------------------------------------------------------------------------------------
    # transport
    # ----------------------------------------------------------------------------------------

    def limit_left_ms(self) -> int:
        """How long until this client sends anything again after a 418 ban or a 429 back-off (0: now)."""
        now = self.server_now_ms()
        return max(0, self.rate.banned_until_ms - now, self.rate.backoff_until_ms - now)

    def _limit_left_ms(self, urgent: bool) -> int:
        """How long the ban (any request) or the 429 back-off (non-urgent ones) still holds, in ms."""
        now = self.server_now_ms()
        if now < self.rate.banned_until_ms:
            return self.rate.banned_until_ms - now
        if not urgent and now < self.rate.backoff_until_ms:
            return self.rate.backoff_until_ms - now
        return 0

    def _check_limits(self, urgent: bool = False) -> None:
        """Fail fast: nothing at all is sent during a 418 ban (binance-real-answers.md: requests
        sent during a ban earn longer ones); during a 429 back-off only urgent requests go."""
        now = self.server_now_ms()
        if now < self.rate.banned_until_ms:
            raise RateLimited(
                -1003,
                f"IP banned until {self.rate.banned_until_ms} (local fail-fast)",
                418,
                retry_after_s=(self.rate.banned_until_ms - now) / 1000,
                banned_until_ms=self.rate.banned_until_ms,
            )
        if not urgent and now < self.rate.backoff_until_ms:
            raise RateLimited(
                -1003,
                f"backing off after 429 until {self.rate.backoff_until_ms} (local fail-fast)",
                429,
                retry_after_s=(self.rate.backoff_until_ms - now) / 1000,
            )

    async def _pace(self, weight: int, urgent: bool, is_order: bool) -> None:
        """Hold a request until its window has room (``RateState.wait_until``): reads and new
        entries stop at 80 % of the minute's weight or of an order counter; cancels and closes
        only when the limit itself would be crossed (the venue would refuse them with a 429), and
        then only until the window turns. A non-urgent request that would wait longer than
        ``max_hold_s`` is not sent: ``RateLimited`` tells the caller when to try again."""
        waited = False
        while True:
            held = self._limit_left_ms(urgent)
            banned = self.server_now_ms() < self.rate.banned_until_ms
            tolerance = LIMIT_END_TOLERANCE_MS + (BAN_END_MARGIN_MS if banned else 0)
            if not waited and 0 < held <= min(self.max_hold_s * 1000, tolerance):
                # The end of a ban or 429 back-off is near: a caller that waited the venue's wait by
                # its own clock is a little early by ours. It is held to the end, nothing sent before:
                # failing fast would spend one of the order's attempts on a request that never left
                # (D-20, D-48). Earlier than that, it fails fast with the wait.
                self.rate.paced_waits += 1
                waited = True  # once: a clock that did not move meanwhile fails fast below
                await self._sleep(self._wall_s(held) + 0.001)
                continue
            self._check_limits(urgent)
            now = self.server_now_ms()
            until = self.rate.wait_until(now, weight, urgent, is_order) if self.pacing else 0
            if not until:
                return
            if not urgent and until - now > self.max_hold_s * 1000:
                raise RateLimited(
                    -1003,
                    f"weight budget: {self.rate.weight(now)} of {self.rate.limits.weight_1m} used, "
                    f"orders {self.rate.orders(now)}; not sent before {until} (local pacing)",
                    0,
                    retry_after_s=(until - now) / 1000,
                )
            log.warning(
                "rate budget: weight %d of %d, orders %s; holding a%s request until %d",
                self.rate.weight(now),
                self.rate.limits.weight_1m,
                self.rate.orders(now),
                "n urgent" if urgent else " non-urgent",
                until,
            )
            self.rate.paced_waits += 1
            while (left := until - self.server_now_ms()) > 0:
                await self._sleep(min(1.0, left / 1000))

    async def _send(
        self,
        method: str,
        path: str,
        query: str,
        headers: dict[str, str],
        *,
        probe: asyncio.Future[None] | None = None,
        number: int = 0,
    ) -> httpx.Response:
        url = f"{path}?{query}" if query else path
        task = asyncio.ensure_future(self._client.request(method, url, headers=headers))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)
        # The answer (not the caller, who may be cancelled meanwhile) ends the probe and the limit.
        task.add_done_callback(lambda done: self._answered(done, probe, number))
        self.requests_sent += 1
        # Shielded: a cancelled caller must not cancel the request itself (httpcore#1093).
        return await asyncio.shield(task)

    def _record_headers(self, resp: httpx.Response) -> None:
        """``X-MBX-USED-WEIGHT-1M`` (IP) and ``X-MBX-ORDER-COUNT-10S/1M`` (account), each for the
        window it was answered in."""
        h = resp.headers
        now = self.server_now_ms()
        for header, attr, window_attr, window in (
            ("x-mbx-used-weight-1m", "used_weight_1m", "weight_window", now // MINUTE_MS),
            ("x-mbx-order-count-10s", "order_count_10s", "orders_10s_window", now // TEN_S_MS),
            ("x-mbx-order-count-1m", "order_count_1m", "orders_1m_window", now // MINUTE_MS),
        ):
            value = h.get(header)
            if value is not None and value.isdigit():
                setattr(self.rate, attr, int(value))
                setattr(self.rate, window_attr, window)

    def _retry_after_s(self, resp: httpx.Response) -> float | None:
        """The answer's Retry-After in seconds, within [``RETRY_AFTER_MIN_S``, ``RETRY_AFTER_MAX_S``];
        None (the caller's default wait) for a value that is not a finite number of seconds >= 0
        (NaN or inf once raised inside the answer's callback and hung the client)."""
        value = resp.headers.get("retry-after")
        if value is None:
            return None
        try:
            seconds = float(value)
        except ValueError:  # an HTTP date, or garbage
            return None
        if not math.isfinite(seconds) or seconds < 0:
            return None
        return min(max(seconds, RETRY_AFTER_MIN_S), RETRY_AFTER_MAX_S)

    async def _call(
        self,
        method: str,
        path: str,
        params: Params,
        *,
        signed: bool,
        api_key: bool = False,
        urgent: bool | None = None,
        _resynced: bool = False,
        _sent_at: list[int] | None = None,
    ) -> Any:
        if urgent is None:
            urgent = is_urgent(method, path, params)
        weight = request_weight(method, path, params)
        is_order = (method, path) in ORDER_ROUTES
        await self._pace(weight, urgent, is_order)
        headers: dict[str, str] = {}
        if signed or api_key:
            headers["X-MBX-APIKEY"] = self._key
        if signed:
            await self._ensure_synced(urgent)
            query = signed_query(params, self._signer, self.server_now_ms(), self.recv_window_ms)
        else:
            query = urlencode(list(params.items()))
        while self.rate.probe_due and self._probe is not None:
            await asyncio.shield(self._probe)  # its answer decides whether this one may go
        self._check_limits(urgent)  # again: a ban may have begun while this request was signed
        probe: asyncio.Future[None] | None = None
        if self.rate.probe_due:
            probe = self._probe = asyncio.get_running_loop().create_future()
        self.rate.note_sent(self.server_now_ms(), weight, is_order)
        self.weight_sent += weight
        number = self.requests_sent + 1  # ``_send`` counts it
        if _sent_at is not None:
            _sent_at.append(self._clock_ms())
        resp = await self._transport(method, path, query, headers, probe=probe, number=number)
        self._record_headers(resp)
        try:
            body: Any = _body(resp)
        except ValueError:
            body = None
        if resp.status_code < 400 and body is not None and not _is_error_body(body):
            return body
        err = errors.from_response(
            resp.status_code, body, method=method, retry_after_s=self._retry_after_s(resp)
        )
        if resp.status_code < 400 and body is None:
            klass = UnknownOutcome if method != "GET" else Retryable
            err = klass(0, f"unreadable body: {resp.text[:200]!r}", resp.status_code)
        if resp.status_code not in (418, 429):  # those were noted as the answer landed (``_answered``)
            self._note_rate_limit(err)
        if isinstance(err, TimestampRejected) and signed and not _resynced:
            log.warning("%s %s: %s; re-syncing time and retrying once", method, path, err.msg)
            await self.sync_time(urgent=urgent)
            return await self._call(
                method, path, params, signed=signed, api_key=api_key, urgent=urgent, _resynced=True
            )
        raise err from None

    async def _transport(
        self,
        method: str,
        path: str,
        query: str,
        headers: dict[str, str],
        *,
        probe: asyncio.Future[None] | None = None,
        number: int = 0,
    ) -> httpx.Response:
        """One request on the wire; transport failures become the client's errors (a GET that
        failed is retryable, an order whose answer was lost has an unknown outcome)."""
        try:
            return await self._send(method, path, query, headers, probe=probe, number=number)
        except (httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise Retryable(0, f"{self.host} unreachable: not sent: {type(exc).__name__}", 0) from exc
        except httpx.TimeoutException as exc:
            klass = UnknownOutcome if method != "GET" else Retryable
            raise klass(0, f"{self.host}: timeout: {type(exc).__name__}", 0) from exc
        except httpx.ConnectError as exc:
            raise Retryable(0, f"{self.host} unreachable: connect failed: {hosts_only(str(exc))}", 0) from exc
        except httpx.TransportError as exc:
            klass = UnknownOutcome if method != "GET" else Retryable
            raise klass(
                0, f"{self.host}: transport: {type(exc).__name__}: {hosts_only(str(exc))}", 0
            ) from exc

    def _answered(
        self, task: asyncio.Task[httpx.Response], probe: asyncio.Future[None] | None, number: int
    ) -> None:
        """A request's answer, as it lands: a 429/418 is noted at once (before any waiter of the
        probe runs), any other answer to a request sent after the last limit ends it."""
        resp = None if task.cancelled() or task.exception() is not None else task.result()
        if resp is not None and resp.status_code in (418, 429):
            try:
                body: Any = _body(resp)
            except ValueError:
                body = None
            self._note_rate_limit(
                errors.from_response(
                    resp.status_code, body, method="GET", retry_after_s=self._retry_after_s(resp)
                )
            )
        elif resp is not None and number > self._probe_after:
            self.rate.probe_due = False  # an answer sent after the limit, not a limit: it is over
        if probe is not None:
            if self._probe is probe:
                self._probe = None
            if not probe.done():
                probe.set_result(None)

    def _note_rate_limit(self, err: BinanceError) -> None:
        if not isinstance(err, RateLimited):
            return
        now = self.server_now_ms()
        self.rate.probe_due = True
        self._probe_after = self.requests_sent
        if err.http_status == 418 or err.banned_until_ms:
            until = err.banned_until_ms
            if until is None:
                wait_s = err.retry_after_s if err.retry_after_s is not None else 120.0
                until = now + int(wait_s * 1000)
            self.rate.banned_until_ms = max(self.rate.banned_until_ms, until + BAN_END_MARGIN_MS)
            log.error("IP banned until %d: nothing is sent before then", self.rate.banned_until_ms)
        elif err.http_status == 429:
            # Without Retry-After (not documented for USD-M, binance-usdm-2026.md section 4) the
            # weight counter resets at the start of the next minute: wait for it.
            if err.retry_after_s is not None:
                until = now + int(err.retry_after_s * 1000)
            else:
                until = (now // MINUTE_MS + 1) * MINUTE_MS
            self.rate.backoff_until_ms = max(self.rate.backoff_until_ms, until)
            log.warning("429: backing off until %d (%d ms)", until, until - now)

    # ----------------------------------------------------------------------------------------
    # market data (NONE security)
    # ----------------------------------------------------------------------------------------

    async def server_time(self) -> int:
        data = await self._call("GET", "/fapi/v1/time", {}, signed=False)
        return int(data["serverTime"])

    async def exchange_info(self, *, refresh: bool = False) -> dict[str, Any]:
        """``GET /fapi/v1/exchangeInfo``, cached for ``exchange_info_ttl_ms``."""
        now = self._clock_ms()
        if not refresh and self._exchange_info and now - self._exchange_info[0] < self._exchange_info_ttl_ms:
            return self._exchange_info[1]
        data = await self._call("GET", "/fapi/v1/exchangeInfo", {}, signed=False)
        self._exchange_info = (now, data)
        if isinstance(data, dict) and (limits := rate_limits_from_exchange_info(data)) is not None:
            self.rate.limits = limits
        return dict(data)

    async def klines(
        self,
        symbol: str,
        interval: str = "3m",
        *,
        start_ms: int | None = None,
        end_ms: int | None = None,
        limit: int | None = None,
    ) -> list[Any]:
        p: dict[str, str | int] = {"symbol": symbol, "interval": interval}
        if start_ms is not None:
            p["startTime"] = start_ms
        if end_ms is not None:
            p["endTime"] = end_ms
        if limit is not None:
            p["limit"] = limit
        return _list(await self._call("GET", "/fapi/v1/klines", p, signed=False), "klines")

    async def premium_index(self, symbol: str | None = None) -> Any:
        """One object with ``symbol``, else the list of all symbols."""
        return await self._call(
            "GET", "/fapi/v1/premiumIndex", {"symbol": symbol} if symbol else {}, signed=False
        )

    # ----------------------------------------------------------------------------------------
    # account (USER_DATA)
    # ----------------------------------------------------------------------------------------

    async def _v3_or_v2(self, name: str, params: Params) -> Any:
        try:
            return await self._call("GET", f"/fapi/v3/{name}", params, signed=True)
        except Rejected as exc:
            if exc.http_status != 404:
                raise
            log.warning("/fapi/v3/%s not found; falling back to v2", name)
            return await self._call("GET", f"/fapi/v2/{name}", params, signed=True)

    async def balance(self) -> list[Any]:
        return _list(await self._v3_or_v2("balance", {}), "balance")

    async def account(self) -> dict[str, Any]:
        return dict(await self._v3_or_v2("account", {}))

    async def position_risk(self, symbol: str | None = None) -> list[Any]:
        return _list(
            await self._v3_or_v2("positionRisk", {"symbol": symbol} if symbol else {}), "positionRisk"
        )

    async def position_risk_v2(self, symbol: str | None = None) -> list[Any]:
        """v2 still reports ``leverage`` and ``marginType`` per symbol (v3 does not)."""
        p = {"symbol": symbol} if symbol else {}
        return _list(await self._call("GET", "/fapi/v2/positionRisk", p, signed=True), "positionRisk")

    async def symbol_config(self, symbol: str | None = None) -> list[dict[str, Any]]:
        """``GET /fapi/v1/symbolConfig`` (weight 5), the current home of leverage and margin type
        (binance-usdm-2026.md, corrections): rows ``{symbol, marginType ("ISOLATED"/"CROSSED"),
        isAutoAddMargin, leverage (int), maxNotionalValue}``. A venue without the route (404)
        is read through v2 ``positionRisk`` instead, its rows given the same shape."""
        p = {"symbol": symbol} if symbol else {}
        try:
            return _list(await self._call("GET", "/fapi/v1/symbolConfig", p, signed=True), "symbolConfig")
        except Rejected as exc:
            if exc.http_status != 404:
                raise
            log.warning(
                "/fapi/v1/symbolConfig not found; reading leverage and margin type from v2 positionRisk"
            )
        rows: list[dict[str, Any]] = []
        seen: set[str] = set()
        for row in await self.position_risk_v2(symbol):
            if not isinstance(row, dict) or row.get("symbol") in seen:
                continue  # hedge mode: one row per leg, the same settings
            seen.add(str(row.get("symbol")))
            margin = str(row.get("marginType", "")).upper()
            rows.append(
                {
                    "symbol": row.get("symbol"),
                    "marginType": "CROSSED" if margin == "CROSS" else margin,
                    "isAutoAddMargin": str(row.get("isAutoAddMargin", "false")).lower(),
                    "leverage": int(row["leverage"])
                    if str(row.get("leverage", "")).isdigit()
                    else row.get("leverage"),
                    "maxNotionalValue": row.get("maxNotionalValue", ""),
                }
            )
        return rows

    async def position_mode(self) -> dict[str, Any]:
        return dict(await self._call("GET", "/fapi/v1/positionSide/dual", {}, signed=True))

    async def set_leverage(self, symbol: str, leverage: int) -> dict[str, Any]:
        return dict(
            await self._call(
                "POST", "/fapi/v1/leverage", {"symbol": symbol, "leverage": leverage}, signed=True
            )
        )

    async def set_margin_type(self, symbol: str, margin_type: str) -> bool:
        """``POST /fapi/v1/marginType``; returns False when it was already set (-4046)."""
        try:
            await self._call(
                "POST", "/fapi/v1/marginType", {"symbol": symbol, "marginType": margin_type}, signed=True
            )
        except Rejected as exc:
            if exc.code == -4046:
                return False
            raise
        return True

    # ----------------------------------------------------------------------------------------
    # orders (TRADE)
    # ----------------------------------------------------------------------------------------

    async def query_order(self, symbol: str, client_order_id: str) -> dict[str, Any]:
        p = {"symbol": symbol, "origClientOrderId": client_order_id}
        return dict(await self._call("GET", "/fapi/v1/order", p, signed=True))

    async def query_order_id(self, symbol: str, order_id: int) -> dict[str, Any]:
        p = {"symbol": symbol, "orderId": str(order_id)}
        return dict(await self._call("GET", "/fapi/v1/order", p, signed=True))

    async def user_trades(self, symbol: str, *, order_id: int | None = None) -> list[Any]:
        """``GET /fapi/v1/userTrades`` (weight 5): the fills of one order, or the symbol's last 7 days."""
        p = {"symbol": symbol, **({"orderId": str(order_id)} if order_id is not None else {})}
        return _list(await self._call("GET", "/fapi/v1/userTrades", p, signed=True), "userTrades")

    async def income(self, income_type: str, start_ms: int, end_ms: int, *, limit: int = 1000) -> list[Any]:
        """``GET /fapi/v1/income`` (weight 30): the account's ``income_type`` rows with ``start_ms <=
        time <= end_ms``, oldest first, at most ``limit`` (1000) from ``start_ms`` on."""
        p = {
            "incomeType": income_type,
            "startTime": str(start_ms),
            "endTime": str(end_ms),
            "limit": str(limit),
        }
        return _list(await self._call("GET", "/fapi/v1/income", p, signed=True), "income")

    async def cancel_order(self, symbol: str, client_order_id: str) -> dict[str, Any]:
        p = {"symbol": symbol, "origClientOrderId": client_order_id}
        return dict(await self._call("DELETE", "/fapi/v1/order", p, signed=True))

    async def open_orders(self, symbol: str | None = None) -> list[Any]:
        p = {"symbol": symbol} if symbol else {}
        return _list(await self._call("GET", "/fapi/v1/openOrders", p, signed=True), "openOrders")

    async def query_algo_order(self, client_algo_id: str) -> dict[str, Any]:
        p = {"clientAlgoId": client_algo_id}
        return dict(await self._call("GET", "/fapi/v1/algoOrder", p, signed=True))

    async def algo_order_status(self, client_algo_id: str) -> str | None:
        """Whether an algo order is still working, for a cancel the venue refused: the codes for
        cancelling an algo order that is no longer open are not documented (-2011 was seen live),
        so "already gone" is decided by its status (binance-usdm-2026.md, corrections).

        Returns the venue's ``algoStatus`` (``NEW`` means still working; ``TRIGGERING``,
        ``TRIGGERED``, ``FINISHED``, ``CANCELED``, ``REJECTED``, ``EXPIRED`` mean gone), or None when
        the venue refuses the query with a code (it does not know the id: an old CANCELED/EXPIRED
        order is forgotten after 3 days). Raises the ``BinanceError`` of a query
        that failed (retryable, rate limit, auth: ask again later) and ``ValueError`` for a 200
        without a readable ``algoStatus``."""
        try:
            answer = await self.query_algo_order(client_algo_id)
        except Rejected as exc:
            if exc.code == 0:  # no venue code (a 404 page, a WAF 403): the query did not happen
                raise
            log.info("algo order %s: the venue does not know it (%s)", client_algo_id, exc)
            return None
        status = answer.get("algoStatus")
        if not isinstance(status, str) or not status:
            raise ValueError(f"algo order {client_algo_id}: no algoStatus in {str(answer)[:200]!r}")
        return status

    async def cancel_algo_order(self, client_algo_id: str) -> dict[str, Any]:
        p = {"clientAlgoId": client_algo_id}
        return dict(await self._call("DELETE", "/fapi/v1/algoOrder", p, signed=True))

    async def open_algo_orders(self, symbol: str | None = None) -> list[Any]:
        p = {"symbol": symbol} if symbol else {}
        return _list(await self._call("GET", "/fapi/v1/openAlgoOrders", p, signed=True), "openAlgoOrders")

    async def place_order(self, params: Params) -> dict[str, Any]:
        """``POST /fapi/v1/order`` with ``newClientOrderId``; unknown outcomes resolved by query."""
        symbol = str(params["symbol"])
        cid = str(params["newClientOrderId"])
        return await self._idempotent(
            lambda: self._call("POST", "/fapi/v1/order", params, signed=True),
            lambda: self.query_order(symbol, cid),
            what=f"order {cid}",
        )

    async def place_algo_order(self, params: Params) -> dict[str, Any]:
        """``POST /fapi/v1/algoOrder`` with ``clientAlgoId``; unknown outcomes resolved by query."""
        caid = str(params["clientAlgoId"])
        return await self._idempotent(
            lambda: self._call("POST", "/fapi/v1/algoOrder", params, signed=True),
            lambda: self.query_algo_order(caid),
            what=f"algo order {caid}",
        )

    async def _idempotent(
        self,
        post: Callable[[], Awaitable[Any]],
        query: Callable[[], Awaitable[dict[str, Any]]],
        *,
        what: str,
    ) -> dict[str, Any]:
        """One POST. ``UnknownOutcome`` propagates: whether the order exists can only be known by a
        query made once the request can no longer execute (timestamp + recvWindow), and a client id
        is unique only among OPEN orders, so an immediate "not found" followed by a resend could
        place a filled order twice (binance-usdm-2026.md, corrections). The caller schedules that
        query. A -4116 (the id is open on the venue) is the order itself: it is read back."""
        try:
            return dict(await post())
        except Rejected as exc:
            if exc.code != -4116:
                raise
            log.info("%s: -4116 duplicate id; it exists, querying it", what)
            return await query()

    # ----------------------------------------------------------------------------------------
    # user data stream (USER_STREAM: API key only)
    # ----------------------------------------------------------------------------------------

    async def new_listen_key(self) -> str:
        data = await self._call("POST", "/fapi/v1/listenKey", {}, signed=False, api_key=True)
        return str(data["listenKey"])

    async def keepalive_listen_key(self) -> None:
        await self._call("PUT", "/fapi/v1/listenKey", {}, signed=False, api_key=True)

    async def close_listen_key(self) -> None:
        await self._call("DELETE", "/fapi/v1/listenKey", {}, signed=False, api_key=True)


def _list(answer: Any, what: str) -> list[Any]:
    """A list answer, or ValueError naming the route and the (truncated) body: ``list()`` of an
    object would silently turn its keys into rows."""
    if not isinstance(answer, list):
        raise ValueError(f"{what} answer is not a list: {str(answer)[:200]!r}")
    return answer


def _is_error_body(body: Any) -> bool:
    """``{"code": -1234, "msg": ...}`` on a 200 is an error; ``{"code": 200, ...}`` is success."""
    if not isinstance(body, dict) or "code" not in body or "msg" not in body:
        return False
    try:
        return int(body["code"]) < 0
    except (TypeError, ValueError):
        return False
