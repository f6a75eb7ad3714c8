"""D-52: after a 429 or a 418 the first request out goes alone, and a ban is kept a margin past the
venue's "banned until". Each request that lands inside a ban earns a longer one (binance-real-answers
.md; the sim's ``RateLimitModel``): when the mark-price poller and a market close both waited for the
ban's end and went together, the one that found the ban still on made the other earn the next, and a
safety-lock close never left (fault matrix: stale-lock x ban-exit, issue #12).

Real client over loopback to ``binance/sim`` with its rate-limit model on.
"""

from __future__ import annotations

import asyncio

import pytest
from binance_simkit import run, venue, wait_for

from binance import errors as E
from binance.rest import BAN_END_MARGIN_MS
from binance.sim.server import RestFault

CLOSE = {
    "symbol": "BTCUSDT",
    "side": "BUY",
    "type": "MARKET",
    "quantity": "0.010",
    "reduceOnly": "true",
    "newClientOrderId": "sf1-CL1-BTCUSDT",
}


def _ban(v: object, until: int) -> None:
    rl = v.rate_limits  # type: ignore[attr-defined]
    rl.enabled, rl.banned_until_ms, rl.bans = True, until, 1


def test_at_a_ban_end_one_request_probes_and_the_others_fail_fast_when_the_ban_goes_on() -> None:
    """The venue's ban outlasts what it announced. At the client's end of the ban a close, a mark read
    and a balance read start together: one reaches the venue, meets the ban, and the two others are
    refused locally with the new end; the venue counts one request inside its ban, not three."""

    async def go() -> None:
        async with venue() as (ex, v, rest):
            await rest.sync_time()
            until = ex.now() + 120_000
            _ban(v, until)
            with pytest.raises(E.RateLimited) as ban:
                await rest.premium_index("BTCUSDT")
            assert (ban.value.http_status, ban.value.banned_until_ms) == (418, until)
            assert rest.rate.banned_until_ms == until + BAN_END_MARGIN_MS
            ex.advance(120_000 + BAN_END_MARGIN_MS)
            v.rate_limits.banned_until_ms = ex.now() + 60_000  # still banned, longer than said
            v.rate_limits.hits_in_ban = 0
            sent = len(v.requests)
            results = await asyncio.gather(
                rest.place_order(CLOSE), rest.premium_index("BTCUSDT"), rest.balance(), return_exceptions=True
            )
            assert all(isinstance(r, E.RateLimited) and r.http_status == 418 for r in results), results
            assert len(v.requests) == sent + 1
            assert v.rate_limits.hits_in_ban == 1
            assert rest.rate.banned_until_ms == ex.now() + 60_000 + BAN_END_MARGIN_MS

    run(go())


def test_at_a_ban_end_the_others_go_once_the_probe_is_answered() -> None:
    """The ban is over: the first request is answered (slowly) before any other leaves; then the two
    others go and every call succeeds."""

    async def go() -> None:
        async with venue() as (ex, v, rest):
            await rest.sync_time()
            until = ex.now() + 120_000
            _ban(v, until)
            with pytest.raises(E.RateLimited):
                await rest.premium_index("BTCUSDT")
            v.rate_limits.hits_in_ban = 0  # that one request inside the ban is forgiven: the ban is over
            ex.advance(120_000 + BAN_END_MARGIN_MS)
            sent = len(v.requests)
            v.faults.add(RestFault("GET", "/fapi/v1/premiumIndex", "slow", hang_s=0.3))
            probe = asyncio.create_task(rest.premium_index("BTCUSDT"))
            await wait_for(lambda: len(v.requests) == sent + 1)
            others = asyncio.gather(rest.server_time(), rest.balance())
            await asyncio.sleep(0.1)  # the probe is still unanswered: nothing else has left
            assert len(v.requests) == sent + 1 and not probe.done()
            assert (await probe)["symbol"] == "BTCUSDT"
            time_answer, balance = await others
            assert time_answer == ex.now() and isinstance(balance, list)
            assert len(v.requests) == sent + 3 and not rest.rate.probe_due

    run(go())


def test_a_429_makes_the_next_request_a_probe_too() -> None:
    """After a 429 (Retry-After 1 s), two cancels (urgent: they may go during the back-off) start
    together while the venue answers 429 again: one is sent, the other waits for its answer and then
    goes (urgent requests are not held by a 429 back-off), so the venue sees them one after the
    other, never two at once."""

    async def go() -> None:
        async with venue() as (_, v, rest):
            await rest.sync_time()
            v.faults.rate_limited = 2
            with pytest.raises(E.RateLimited):
                await rest.premium_index("BTCUSDT")
            assert rest.rate.probe_due
            sent = len(v.requests)
            first, second = await asyncio.gather(
                rest.cancel_order("BTCUSDT", "sf1-TP1-BTCUSDT"),
                rest.cancel_order("BTCUSDT", "sf1-TP2-BTCUSDT"),
                return_exceptions=True,
            )
            assert isinstance(first, E.RateLimited) and first.http_status == 429
            assert isinstance(second, E.BinanceError) and second.code == -2011  # sent after the probe
            assert len(v.requests) == sent + 2 and rest.rate.probe_due is False

    run(go())
