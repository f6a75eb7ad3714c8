"""Async Binance USDⓈ-M REST client (httpx).

Theory of operation: every call goes through ``_call``, which (1) fails fast with ``RateLimited``
while an IP ban (418) or a 429 back-off is running, (2) signs SIGNED requests with HMAC-SHA256 over
the exact urlencoded query it sends (or Ed25519, base64 then URL-encoded, when the configured secret is
a PEM Ed25519 private key or a path to one), stamped with local time plus the measured server-time offset,
(3) sends the request shielded from cancellation (httpx's pool leaks slots when a request is
cancelled mid-flight), (4) records ``X-MBX-USED-WEIGHT-1M`` and the order counters, and (5) maps any
error answer to a typed ``binance.errors`` exception (``raise ... from``). A -1021/-5028 re-syncs the
clock and retries the same request once with a fresh timestamp and signature.

Orders are idempotent: ``place_order`` / ``place_algo_order`` always carry a client id. When the
outcome is unknown (timeout, 5xx) or the venue says -4116 (the id exists), the order is looked up by
that id before anything is sent again; only a definite "does not exist" allows one resend.

Key material never reaches a log line, an exception message or a ``repr``.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import quote, urlencode

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from binance import errors
from binance.errors import BinanceError, RateLimited, Rejected, Retryable, TimestampRejected, UnknownOutcome

log = logging.getLogger(__name__)

Params = Mapping[str, str | int]
DEFAULT_BASE_URL = "https://fapi.binance.com"


def wall_clock_ms() -> int:
    return int(time.time() * 1000)


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


@dataclass(slots=True)
class RateState:
    """What the venue's headers and errors told us about our limits."""

    used_weight_1m: int = 0
    order_count_10s: int = 0
    order_count_1m: int = 0
    backoff_until_ms: int = 0  # after a 429
    banned_until_ms: int = 0  # after a 418


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
        default_backoff_s: float = 1.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._key = api_key
        self._signer: Signer = make_signer(api_secret)
        self.base_url = base_url.rstrip("/")
        self.recv_window_ms = recv_window_ms
        self._clock_ms = clock_ms
        # ``transport``: e.g. ``binance.sim.inproc.InProcessTransport`` (the sim venue without sockets).
        self._client = httpx.AsyncClient(base_url=self.base_url, timeout=timeout_s, transport=transport)
        self._offset_ms = 0
        self._synced = False
        self._sync_lock = asyncio.Lock()
        self._exchange_info: tuple[int, dict[str, Any]] | None = None
        self._exchange_info_ttl_ms = exchange_info_ttl_ms
        self._default_backoff_ms = int(default_backoff_s * 1000)
        self._inflight: set[asyncio.Task[httpx.Response]] = set()
        self.rate = RateState()
        self.requests_sent = 0

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

    async def sync_time(self) -> int:
        """Measure ``serverTime - local`` from ``GET /fapi/v1/time`` (midpoint of the round trip)."""
        before = self._clock_ms()
        data = await self._call("GET", "/fapi/v1/time", {}, signed=False)
        after = self._clock_ms()
        self._offset_ms = int(data["serverTime"]) - (before + after) // 2
        self._synced = True
        log.info("server time offset %d ms", self._offset_ms)
        return self._offset_ms

    async def _ensure_synced(self) -> None:
        if self._synced:
            return
        async with self._sync_lock:
            if not self._synced:
                await self.sync_time()

    # ----------------------------------------------------------------------------------------
    # transport
    # ----------------------------------------------------------------------------------------

    def _check_limits(self) -> None:
        now = self.server_now_ms()
        if now < self.rate.banned_until_ms:
            raise RateLimited(
                -1003,
                f"IP banned until {self.rate.banned_until_ms} (local fail-fast)",
                418,
                retry_after_s=(self.rate.banned_until_ms - now) / 1000,
                banned_until_ms=self.rate.banned_until_ms,
            )
        if now < self.rate.backoff_until_ms:
            raise RateLimited(
                -1003,
                f"backing off after 429 until {self.rate.backoff_until_ms} (local fail-fast)",
                429,
                retry_after_s=(self.rate.backoff_until_ms - now) / 1000,
            )

    async def _send(self, method: str, path: str, query: str, headers: dict[str, str]) -> httpx.Response:
        url = f"{path}?{query}" if query else path
        task = asyncio.ensure_future(self._client.request(method, url, headers=headers))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)
        self.requests_sent += 1
        # Shielded: a cancelled caller must not cancel the request itself (httpcore#1093).
        return await asyncio.shield(task)

    def _record_headers(self, resp: httpx.Response) -> None:
        h = resp.headers
        for header, attr in (
            ("x-mbx-used-weight-1m", "used_weight_1m"),
            ("x-mbx-order-count-10s", "order_count_10s"),
            ("x-mbx-order-count-1m", "order_count_1m"),
        ):
            value = h.get(header)
            if value is not None and value.isdigit():
                setattr(self.rate, attr, int(value))

    def _retry_after_s(self, resp: httpx.Response) -> float | None:
        value = resp.headers.get("retry-after")
        if value is None:
            return None
        try:
            return float(value)
        except ValueError:
            return None

    async def _call(
        self,
        method: str,
        path: str,
        params: Params,
        *,
        signed: bool,
        api_key: bool = False,
        _resynced: bool = False,
    ) -> Any:
        self._check_limits()
        headers: dict[str, str] = {}
        if signed or api_key:
            headers["X-MBX-APIKEY"] = self._key
        if signed:
            await self._ensure_synced()
            query = signed_query(params, self._signer, self.server_now_ms(), self.recv_window_ms)
        else:
            query = urlencode(list(params.items()))
        try:
            resp = await self._send(method, path, query, headers)
        except (httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise Retryable(0, f"not sent: {type(exc).__name__}", 0) from exc
        except httpx.TimeoutException as exc:
            klass = UnknownOutcome if method != "GET" else Retryable
            raise klass(0, f"timeout: {type(exc).__name__}", 0) from exc
        except httpx.ConnectError as exc:
            raise Retryable(0, f"connect failed: {exc}", 0) from exc
        except httpx.TransportError as exc:
            klass = UnknownOutcome if method != "GET" else Retryable
            raise klass(0, f"transport: {type(exc).__name__}: {exc}", 0) from exc
        self._record_headers(resp)
        try:
            body: Any = resp.json()
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
        self._note_rate_limit(err)
        if isinstance(err, TimestampRejected) and signed and not _resynced:
            log.warning("%s %s: %s; re-syncing time and retrying once", method, path, err.msg)
            await self.sync_time()
            return await self._call(method, path, params, signed=signed, api_key=api_key, _resynced=True)
        raise err from None

    def _note_rate_limit(self, err: BinanceError) -> None:
        if not isinstance(err, RateLimited):
            return
        now = self.server_now_ms()
        if err.http_status == 418 or err.banned_until_ms:
            until = err.banned_until_ms
            if until is None:
                wait_s = err.retry_after_s if err.retry_after_s is not None else 120.0
                until = now + int(wait_s * 1000)
            self.rate.banned_until_ms = max(self.rate.banned_until_ms, until)
            log.error("IP banned until %d", self.rate.banned_until_ms)
        elif err.http_status == 429:
            wait_ms = (
                int(err.retry_after_s * 1000) if err.retry_after_s is not None else self._default_backoff_ms
            )
            self.rate.backoff_until_ms = max(self.rate.backoff_until_ms, now + wait_ms)
            log.warning("429: backing off %d ms", wait_ms)

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
        return list(await self._call("GET", "/fapi/v1/klines", p, signed=False))

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
        return list(await self._v3_or_v2("balance", {}))

    async def account(self) -> dict[str, Any]:
        return dict(await self._v3_or_v2("account", {}))

    async def position_risk(self, symbol: str | None = None) -> list[Any]:
        return list(await self._v3_or_v2("positionRisk", {"symbol": symbol} if symbol else {}))

    async def position_risk_v2(self, symbol: str | None = None) -> list[Any]:
        """v2 still reports ``leverage`` and ``marginType`` per symbol (v3 does not)."""
        p = {"symbol": symbol} if symbol else {}
        return list(await self._call("GET", "/fapi/v2/positionRisk", p, signed=True))

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
        return list(await self._call("GET", "/fapi/v1/userTrades", p, signed=True))

    async def cancel_order(self, symbol: str, client_order_id: str) -> dict[str, Any]:
        p = {"symbol": symbol, "origClientOrderId": client_order_id}
        return dict(await self._call("DELETE", "/fapi/v1/order", p, signed=True))

    async def open_orders(self, symbol: str | None = None) -> list[Any]:
        return list(
            await self._call("GET", "/fapi/v1/openOrders", {"symbol": symbol} if symbol else {}, signed=True)
        )

    async def query_algo_order(self, client_algo_id: str) -> dict[str, Any]:
        p = {"clientAlgoId": client_algo_id}
        return dict(await self._call("GET", "/fapi/v1/algoOrder", p, signed=True))

    async def cancel_algo_order(self, client_algo_id: str) -> dict[str, Any]:
        p = {"clientAlgoId": client_algo_id}
        return dict(await self._call("DELETE", "/fapi/v1/algoOrder", p, signed=True))

    async def open_algo_orders(self, symbol: str | None = None) -> list[Any]:
        p = {"symbol": symbol} if symbol else {}
        return list(await self._call("GET", "/fapi/v1/openAlgoOrders", p, signed=True))

    async def place_order(self, params: Params) -> dict[str, Any]:
        """``POST /fapi/v1/order`` with ``newClientOrderId``; unknown outcomes resolved by query."""
        symbol = str(params["symbol"])
        cid = str(params["newClientOrderId"])
        return await self._idempotent(
            lambda: self._call("POST", "/fapi/v1/order", params, signed=True),
            lambda: self.query_order(symbol, cid),
            not_found_code=-2013,
            what=f"order {cid}",
        )

    async def place_algo_order(self, params: Params) -> dict[str, Any]:
        """``POST /fapi/v1/algoOrder`` with ``clientAlgoId``; unknown outcomes resolved by query."""
        caid = str(params["clientAlgoId"])
        return await self._idempotent(
            lambda: self._call("POST", "/fapi/v1/algoOrder", params, signed=True),
            lambda: self.query_algo_order(caid),
            not_found_code=-2013,
            what=f"algo order {caid}",
        )

    async def _idempotent(
        self,
        post: Callable[[], Awaitable[Any]],
        query: Callable[[], Awaitable[dict[str, Any]]],
        *,
        not_found_code: int,
        what: str,
    ) -> dict[str, Any]:
        try:
            return dict(await post())
        except UnknownOutcome as exc:
            log.warning("%s: outcome unknown (%s); querying before any resend", what, exc.msg)
            first: BinanceError = exc
        except Rejected as exc:
            if exc.code != -4116:
                raise
            log.info("%s: -4116 duplicate id; it exists, querying it", what)
            return await query()
        try:
            return await query()
        except Rejected as qexc:
            if qexc.code != not_found_code:
                raise first from qexc
        except BinanceError as qexc:
            raise first from qexc
        log.info("%s: not found after unknown outcome; sending once more with the same id", what)
        try:
            return dict(await post())
        except Rejected as exc:
            if exc.code != -4116:
                raise
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


def _is_error_body(body: Any) -> bool:
    """``{"code": -1234, "msg": ...}`` on a 200 is an error; ``{"code": 200, ...}`` is success."""
    if not isinstance(body, dict) or "code" not in body or "msg" not in body:
        return False
    try:
        return int(body["code"]) < 0
    except (TypeError, ValueError):
        return False
