"""The simulated venue on loopback for the demo, the benchmarks, the fault matrices and the tests.

Kept out of ``fsm.runtime.daemon`` so that the daemon a trader runs never loads the simulator
(``tests/test_architecture.py`` holds it to that)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from decimal import Decimal

from binance.sim.exchange import SimExchange
from binance.sim.server import SimVenue
from fsm.runtime.daemon import Endpoints, RunClock
from fsm.runtime.feeds import PricePath

log = logging.getLogger("shortfsm.runtime.daemon")


class SimHarness:
    """The simulated venue on loopback, driven by ``clock``: every second it applies the scripted
    marks that are due and pushes every mark (the venue's 1 s markPrice stream)."""

    def __init__(
        self, clock: RunClock, *, balance: Decimal = Decimal("10000"), path: PricePath | None = None
    ) -> None:
        self.clock = clock
        self.api_key = f"sim-{secrets.token_hex(6)}"
        self._secret = secrets.token_hex(16)  # a throwaway credential for the loopback venue
        self.exchange = SimExchange(clock=clock, api_keys={self.api_key: self._secret}, balance=balance)
        self.path = path
        self.venue = SimVenue(self.exchange)
        self._driver: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    def install(self, origin_ms: int) -> None:
        """Write the price path's history before ``origin_ms``, then let the clock run from there."""
        if self.path is not None:
            self.path.install(self.exchange, self.clock.set_manual, origin_ms)
        self.clock.start(origin_ms)

    async def start(self) -> None:
        await self.venue.start()
        self._driver = asyncio.create_task(self._drive(), name="sim-driver")

    async def stop(self) -> None:
        self._stop.set()
        if self._driver is not None:
            self._driver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._driver
        await self.venue.stop()

    def endpoints(self) -> Endpoints:
        # A compressed clock stretches loopback latency in venue time: widen the recvWindow.
        window = min(60_000, max(5_000, int(5_000 * self.clock.speed)))
        return Endpoints(
            rest_url=self.venue.rest_url,
            market_ws_url=f"{self.venue.ws_url}/market",
            private_ws_url=f"{self.venue.ws_url}/private",
            api_key=self.api_key,
            api_secret=self._secret,
            recv_window_ms=window,
        )

    async def _drive(self) -> None:
        while not self._stop.is_set():
            now = self.clock.now_ms()
            await self.clock.sleep_until((now // 1000 + 1) * 1000, self._stop)
            try:
                self.exchange.pump()
                self.exchange.publish_marks()
            except Exception:  # the venue must keep ticking whatever one step did
                log.exception("sim venue step failed")
