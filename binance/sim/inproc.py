"""The simulated venue in process: an ``httpx`` transport that hands every request to ``SimVenue``.

``BinanceRest(..., transport=InProcessTransport(venue))`` talks to the venue without sockets: the
request goes through the same routing, API-key and signature checks, weights, error codes and
injected faults as over loopback TCP (``SimVenue.handle_request``). A request the venue never
answers (a "hang" fault) raises ``httpx.ReadTimeout`` at once, as the client's timeout would, so a
replay on a simulated clock never waits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

import httpx

from binance.sim.server import SimVenue

ORDER_PATHS = frozenset({"/fapi/v1/order", "/fapi/v1/algoOrder"})
UNSIGNED_KEYS = frozenset({"timestamp", "signature", "recvWindow"})


@dataclass(frozen=True, slots=True, kw_only=True)
class Exchanged:
    """One request and what the venue did with it (``status`` 0: no answer)."""

    method: str
    path: str
    params: tuple[tuple[str, str], ...]  # without timestamp, recvWindow and signature
    status: int
    body: str

    @property
    def client_id(self) -> str:
        """The client order id a new (algo) order carries, else ""."""
        wanted = "clientAlgoId" if self.path == "/fapi/v1/algoOrder" else "newClientOrderId"
        return next((v for k, v in self.params if k == wanted), "")

    @property
    def places_order(self) -> bool:
        return self.method == "POST" and self.path in ORDER_PATHS


@dataclass
class InProcessTransport(httpx.AsyncBaseTransport):
    """Requests straight into ``venue``; every exchange is kept in ``log`` (oldest first) unless
    ``keep_log`` is off (a backtest: a year's answers, exchangeInfo's among them, took hundreds of MB)."""

    venue: SimVenue
    log: list[Exchanged] = field(default_factory=list)
    keep_log: bool = True

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = (await request.aread()).decode()
        target = request.url.raw_path.decode("ascii")
        headers = dict(request.headers.items())
        answer = await self.venue.handle_request(request.method, target, headers, body)
        parts = urlsplit(target)
        path = parts.path
        params = (
            tuple(
                (k, v)
                for k, v in parse_qsl(parts.query, keep_blank_values=True) + parse_qsl(body)
                if k not in UNSIGNED_KEYS
            )
            if self.keep_log
            else ()
        )
        if answer is None:
            if self.keep_log:
                self.log.append(Exchanged(method=request.method, path=path, params=params, status=0, body=""))
            raise httpx.ReadTimeout("the simulated venue did not answer", request=request)
        status, extra, payload, content_type = answer
        if self.keep_log:
            self.log.append(
                Exchanged(
                    method=request.method, path=path, params=params, status=status, body=payload.decode()
                )
            )
        return httpx.Response(
            status, headers={"Content-Type": content_type, **extra}, content=payload, request=request
        )
