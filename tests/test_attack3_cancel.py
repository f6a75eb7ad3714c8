"""Attack 3 on D-52's cancel wait: a cancel refused by the rate limits is re-sent once the wait is
over and is not one of R15's three attempts. The refusals here come from the venue itself (real
``BinanceRest`` + ``Executor`` over loopback to ``binance/sim``), as USD-M documents them: a 418
"IP banned until <ms>" and a 429, with no ``Retry-After`` header (binance-usdm-2026.md section 4:
Retry-After is documented for Spot, not for USD-M; the sim's ``RateLimitModel.retry_after`` off)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal as D
from typing import Any

from test_engine_bad_input import BTC, ENTRY_CID, _entry_order, _now, _risk_message, _update

from binance.executor import Executor
from binance.rest import BinanceRest
from binance.sim.clock import SimClock
from binance.sim.exchange import SimExchange
from binance.sim.server import SimVenue
from fsm import commands as cmd
from fsm import events as ev

KEY = "sim-test-key"
SECRET = "sim-test-secret-not-a-real-one"


@asynccontextmanager
async def _venue() -> AsyncIterator[tuple[SimExchange, SimVenue, BinanceRest]]:
    clock = SimClock()
    ex = SimExchange(clock=clock, api_keys={KEY: SECRET})
    async with SimVenue(ex) as v:
        rest = BinanceRest(
            api_key=KEY, api_secret=SECRET, base_url=v.rest_url, clock_ms=clock.now_ms, timeout_s=2.0
        )
        try:
            yield ex, v, rest
        finally:
            await rest.aclose()


async def _cancel_on_the_venue(
    executor: Executor, engine: Any, command: cmd.CancelOrder
) -> tuple[ev.CancelResult, list[cmd.Command]]:
    """The executor runs the engine's cancel against the venue; its events go back to the engine."""
    events = await executor.execute(command, _now(engine))
    results = [e for e in events if isinstance(e, ev.CancelResult)]
    assert len(results) == 1, events
    commands: list[cmd.Command] = []
    for event in events:
        commands.extend(engine.handle(event))
    return results[0], commands


def test_a_cancel_refused_by_a_venue_418_without_retry_after_waits_for_the_ban_end() -> None:
    async def go() -> None:
        async with _venue() as (ex, v, rest):
            await rest.sync_time()
            rl = v.rate_limits
            rl.enabled, rl.retry_after, rl.banned_until_ms, rl.bans = True, False, ex.now() + 120_000, 1
            runner = _entry_order()
            engine = runner.engine
            out = engine.handle(_risk_message(runner, 5001))  # R01: cancel the entry
            cancel = next(c for c in out if isinstance(c, cmd.CancelOrder))
            result, _ = await _cancel_on_the_venue(Executor(rest), engine, cancel)
            assert (result.ok, result.code) == (False, -1003)
            order = engine.symbols[BTC].orders[ENTRY_CID]
            assert result.retry_after_ms > 0 and order.cancel_attempts == 0 and order.cancel_at_ms > 0, (
                result,
                order.cancel_attempts,
                order.cancel_at_ms,
            )

    asyncio.run(asyncio.wait_for(go(), 10))


def test_three_venue_429s_without_retry_after_on_a_cancel_do_not_raise_the_r15_lock() -> None:
    async def go() -> None:
        async with _venue() as (_, v, rest):
            await rest.sync_time()
            rl = v.rate_limits
            rl.enabled, rl.retry_after, rl.weight_limit, rl.ban_after_429s = True, False, 1, 100
            runner = _entry_order()
            engine = runner.engine
            out = engine.handle(_risk_message(runner, 5001))
            executor = Executor(rest)
            refusals = 0
            while cancels := [c for c in out if isinstance(c, cmd.CancelOrder)]:
                # each re-cancel the engine asks for goes to the venue (cancels are urgent) and meets a 429
                result, out = await _cancel_on_the_venue(executor, engine, cancels[0])
                # the wait is the client's back-off to the next minute (no Retry-After): never 0 (D-52)
                assert (result.ok, result.code) == (False, -1003) and result.retry_after_ms >= 1_000, result
                refusals += 1
                assert refusals <= 3
            assert v.requests.count(("DELETE", "/fapi/v1/order")) == refusals
            assert engine.lock_state("exit_cancel_lock") != "CANCEL_FAILED", f"R15 after {refusals} 429s"

    asyncio.run(asyncio.wait_for(go(), 10))


def _delayed_then_part_filled(retry_after_ms: int) -> tuple[Any, Any, int]:
    """R01 cancels the entry; the cancel is refused by a ban (wait ``retry_after_ms``); meanwhile the
    venue part-fills the entry (it was never asked to cancel it)."""
    runner = _entry_order(mark="101.5")
    engine = runner.engine
    engine.handle(_risk_message(runner, 2001))
    now = _now(engine)
    engine.handle(
        ev.CancelResult(
            now_ms=now, symbol=BTC, client_order_id=ENTRY_CID, ok=False, code=-1003,
            message="IP banned until 1767225721000 (local fail-fast)", retry_after_ms=retry_after_ms,
        )
    )  # fmt: skip
    order = engine.symbols[BTC].orders[ENTRY_CID]
    assert (order.status, order.cancel_at_ms) == ("PENDING_CANCEL", now + retry_after_ms)
    engine.handle(_update(runner, ENTRY_CID, "PARTIALLY_FILLED", "1.000", last="1.000"))
    assert order.status == "PARTIALLY_FILLED"
    return runner, order, now


def test_a_delayed_cancel_still_goes_when_the_order_part_filled_during_the_wait() -> None:
    runner, order, now = _delayed_then_part_filled(4_000)
    engine = runner.engine
    sent: list[cmd.Command] = []
    for t in range(1, 31):  # 30 s with fresh marks (no safety lock), well past the 4 s wait
        at = now + t * 1000
        engine.handle(ev.MarkPriceTick(now_ms=at, symbol=BTC, price=D("101.5"), event_time_ms=at))
        sent += [c for c in engine.handle(ev.Tick(now_ms=at)) if isinstance(c, cmd.CancelOrder)]
    assert [c.client_order_id for c in sent] == [ENTRY_CID], (sent, order.status, order.cancel_at_ms)


def test_a_stale_cancel_retry_time_never_doubles_a_cancel() -> None:
    runner, _, now = _delayed_then_part_filled(10_000)
    engine = runner.engine
    batches: list[list[cmd.CancelOrder]] = []
    for t in range(1, 20):  # no mark price: the safety lock (W23-1) closes at 15 s and cancels the entry
        out = engine.handle(ev.Tick(now_ms=now + t * 1000))
        if cancels := [c for c in out if isinstance(c, cmd.CancelOrder)]:
            batches.append(cancels)
    assert batches, "the safety lock never cancelled the entry"
    assert all(len(b) == 1 for b in batches), batches
