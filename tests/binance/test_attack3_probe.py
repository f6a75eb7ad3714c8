"""Attack 3 on D-52's probe (binance/rest.py): after a 429 or 418 one request goes alone and the
others wait for its answer. Real ``BinanceRest`` over loopback to ``binance/sim``; a slow network is
an answer held in transit (the venue has answered, the client has not heard yet)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from binance_simkit import run, venue, wait_for

from binance import errors as E
from binance.rest import BAN_END_MARGIN_MS


class Transit:
    """Holds the venue's answers to ``path`` on the wire until ``release()``."""

    def __init__(self, v: Any, path: str) -> None:
        self.path = path
        self.gate = asyncio.Event()
        self.held = 0
        self._dispatch = v._dispatch
        v._dispatch = self

    async def __call__(self, method: str, target: str, headers: dict[str, str], body: str) -> Any:
        answer = await self._dispatch(method, target, headers, body)
        if target.startswith(self.path) and not self.gate.is_set():
            self.held += 1
            await self.gate.wait()
        return answer

    def release(self) -> None:
        self.gate.set()


def _ban(v: Any, until: int) -> None:
    rl = v.rate_limits
    rl.enabled, rl.banned_until_ms, rl.bans = True, until, 1


def test_a_time_sync_that_waits_behind_a_probe_does_not_skew_the_clock_into_a_ban() -> None:
    """A 429 makes the next request a probe. The probe (a mark read) is 4 s on a slow network; a time
    sync (what a -1021 triggers) starts meanwhile and waits for the probe's answer before it leaves.
    Venue and client share one clock (true offset 0). Then a ban comes: nothing may reach the venue
    before the ban's end."""

    async def go() -> None:
        async with venue() as (ex, v, rest):
            await rest.sync_time()
            assert rest.time_offset_ms == 0
            v.faults.rate_limited, v.faults.retry_after_s = 1, 1
            with pytest.raises(E.RateLimited):
                await rest.premium_index("BTCUSDT")
            assert rest.rate.probe_due
            ex.advance(1_000)  # the 429's Retry-After is over
            transit = Transit(v, "/fapi/v1/premiumIndex")
            probe = asyncio.create_task(rest.premium_index("BTCUSDT"))
            await wait_for(lambda: transit.held == 1)
            sync = asyncio.create_task(rest.sync_time())  # e.g. the resync after a -1021
            await asyncio.sleep(0.05)
            ex.advance(4_000)  # the probe's answer is 4 s late
            transit.release()
            await probe
            await sync
            until = ex.now() + 120_000
            _ban(v, until)
            with pytest.raises(E.RateLimited):
                await rest.balance()
            sent = len(v.requests)
            ex.advance(120_000 - 900)  # 0.9 s before the venue's end: still banned
            with pytest.raises(E.RateLimited):
                await rest.server_time()
            assert len(v.requests) == sent, (
                f"sent inside the ban (client offset {rest.time_offset_ms} ms, true 0)"
            )

    run(go())


def test_a_probe_cancelled_by_its_caller_still_goes_alone() -> None:
    """At the client's end of a ban the venue's ban goes on. The probe (a mark read whose poller is
    stopped) is cancelled while its answer, a 418, is on the wire; a close starts meanwhile. It must
    not reach the venue inside the ban: one request in the ban, not two."""

    async def go() -> None:
        async with venue() as (ex, v, rest):
            await rest.sync_time()
            until = ex.now() + 120_000
            _ban(v, until)
            with pytest.raises(E.RateLimited):
                await rest.premium_index("BTCUSDT")
            ex.advance(120_000 + BAN_END_MARGIN_MS)
            v.rate_limits.banned_until_ms = ex.now() + 60_000  # still banned, longer than said
            v.rate_limits.hits_in_ban = 0
            transit = Transit(v, "/fapi/v1/premiumIndex")
            probe = asyncio.create_task(rest.premium_index("BTCUSDT"))
            await wait_for(lambda: transit.held == 1)
            probe.cancel()  # the poller is stopped; its request is shielded and stays on the wire
            close = asyncio.create_task(
                rest.place_order(
                    {
                        "symbol": "BTCUSDT",
                        "side": "BUY",
                        "type": "MARKET",
                        "quantity": "0.010",
                        "reduceOnly": "true",
                        "newClientOrderId": "sf1-CL1-BTCUSDT",
                    }
                )
            )
            await asyncio.sleep(0.1)
            transit.release()
            with pytest.raises(E.RateLimited):
                await close
            assert v.rate_limits.hits_in_ban == 1, f"{v.rate_limits.hits_in_ban} requests inside the ban"

    run(go())
