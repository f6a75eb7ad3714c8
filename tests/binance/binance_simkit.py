"""Shared helpers for the binance tests: a simulated venue on loopback with a REST client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from binance.rest import BinanceRest
from binance.sim.clock import SimClock
from binance.sim.exchange import SimExchange
from binance.sim.server import SimVenue

KEY = "sim-test-key"
SECRET = "sim-test-secret-not-a-real-one"
T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
    """Run one test coroutine with a hard bound."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


@asynccontextmanager
async def venue(
    *, timeout_s: float = 2.0, clock_ms: Callable[[], int] | None = None, **ex_kwargs: Any
) -> AsyncIterator[tuple[SimExchange, SimVenue, BinanceRest]]:
    clock = SimClock()
    ex = SimExchange(clock=clock, api_keys={KEY: SECRET}, **ex_kwargs)
    async with SimVenue(ex) as v:
        rest = BinanceRest(
            api_key=KEY,
            api_secret=SECRET,
            base_url=v.rest_url,
            clock_ms=clock_ms or clock.now_ms,
            timeout_s=timeout_s,
        )
        try:
            yield ex, v, rest
        finally:
            await rest.aclose()


async def wait_for(cond: Callable[[], bool], timeout: float = 2.0) -> None:
    """Poll ``cond`` every 2 ms until true; fail after ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.002)


async def gather_all(*aws: Awaitable[Any]) -> list[Any]:
    return list(await asyncio.gather(*aws))


class Sink:
    """An async callback that records what it is given."""

    def __init__(self) -> None:
        self.items: list[Any] = []

    async def __call__(self, item: Any) -> None:
        self.items.append(item)

    def of(self, kind: type[T]) -> list[T]:
        return [i for i in self.items if isinstance(i, kind)]


@asynccontextmanager
async def running(*tasks: Coroutine[Any, Any, Any]) -> AsyncIterator[list[asyncio.Task[Any]]]:
    """Run background coroutines for the duration of the block; cancel them after."""
    started = [asyncio.create_task(t) for t in tasks]
    try:
        yield started
    finally:
        for t in started:
            t.cancel()
        await asyncio.gather(*started, return_exceptions=True)
