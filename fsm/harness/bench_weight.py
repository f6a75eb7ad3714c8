"""REST weight as a benchmark figure (issue #12 item 3): the IP request weight the real daemon spends
per venue minute against the simulated venue on loopback, as a share of Binance's 2,400 per minute.

Three phases of one run, one short position open throughout:
* at rest: the position is open, its exit orders are placed, nothing happens (target < 2 %);
* recovery: the daemon is restarted on the same database and rebuilds itself from the venue
  (target < 10 % in the minute that starts with the launch);
* reconnect storm: the user stream is cut every time it comes back, for a minute; each reconnect
  reads back what the gap may have hidden (target < 50 %).

The weight is what ``BinanceRest`` counted as it sent (``weight_sent``, from the route weights of
``binance.rest.ROUTE_WEIGHTS``), i.e. what the venue's ``X-MBX-USED-WEIGHT-1M`` would add up.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from binance.rest import RateLimits
from fsm.harness.bench import ENTRY_CHAT, Row, Target, leading_text, run_row

WEIGHT_LIMIT = RateLimits().weight_1m  # 2,400 per minute per IP
WEIGHT_SPEED = 10.0  # venue clock 10x: a venue minute lasts 6 s
WEIGHT_SYMBOL = "WGT0USDT"
NAMES = (
    "REST weight, a position open at rest: share of the 2,400/min IP limit",
    "REST weight, recovery after a restart: share of the 2,400/min IP limit",
    "REST weight, user-stream reconnect storm: share of the 2,400/min IP limit",
)
TARGETS = (
    Target(stat="max", op="<", value=2.0),
    Target(stat="max", op="<", value=10.0),
    Target(stat="max", op="<", value=50.0),
)


async def _until(cond: Callable[[], bool], clock_now: Callable[[], int], venue_ms: int, what: str) -> None:
    deadline = clock_now() + venue_ms
    while not cond():
        if clock_now() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def rest_weight(minutes_at_rest: int) -> list[Row]:
    """The three phases; per-minute shares in % of ``WEIGHT_LIMIT``."""
    from binance.sim.exchange import SimSymbol
    from fsm.harness.sim_harness import SimHarness
    from fsm.runtime.config import AppConfig, StorageConfig
    from fsm.runtime.daemon import Daemon, RunClock
    from fsm.runtime.feeds import PricePath, ReplaySource
    from fsm.runtime.logs import DecisionLog
    from fsm.runtime.store import Store
    from telegram_ingest.replay import FeedItem

    clock = RunClock(speed=WEIGHT_SPEED)
    base = Decimal("100.00")
    symbol = WEIGHT_SYMBOL
    extra = (
        (
            SimSymbol(
                symbol,
                Decimal("0.01"),
                Decimal("0.001"),
                Decimal("0.001"),
                Decimal("1000000"),
                Decimal("100000"),
                min_price=Decimal("0.01"),
            ),
            base,
        ),
    )
    t = 3_000
    # the 1 % spike triggers the entry (as in the tick-to-order bench), then the price rests below
    # the entry and above the take-profit trigger: the position stays open.
    points = (
        (t + 2_000, symbol, Decimal("100.95")),
        (t + 3_000, symbol, Decimal("101.00")),
        (t + 8_000, symbol, Decimal("100.50")),
    )
    text = leading_text(symbol)
    items = [FeedItem(at_ms=t, chat_id=ENTRY_CHAT, message_id=100, text=text)]
    path = PricePath(base={symbol: base}, points=points, extra_symbols=extra)
    harness = SimHarness(clock, path=path)
    origin = clock.now_ms()
    harness.install(origin)
    await harness.start()
    shares: list[list[float]] = [[], [], []]
    reconnects = 0
    try:
        with tempfile.TemporaryDirectory() as tmp:
            config = AppConfig(
                storage=StorageConfig(
                    database=f"{tmp}/db.sqlite", log_dir=f"{tmp}/log", heartbeat_path=f"{tmp}/hb.json"
                )
            )

            async def launch(source: Any) -> tuple[Daemon, asyncio.Task[int], Any]:
                store = await Store.open(config.storage.database)
                daemon = Daemon(
                    config=config,
                    profile="sim",
                    clock=clock,
                    store=store,
                    endpoints=harness.endpoints(),
                    source=source,
                    decision_log=DecisionLog(None),
                )
                return daemon, asyncio.create_task(daemon.run()), store

            async def stop(daemon: Daemon, task: asyncio.Task[int], store: Any) -> None:
                daemon.request_stop("bench phase over")
                await asyncio.wait_for(task, 30)
                await store.close()

            def holding(daemon: Daemon) -> bool:
                model = daemon.engine.symbols.get(symbol)
                return model is not None and model.position() > 0

            async def minute_share(daemon: Daemon, during: Callable[[], Any] | None = None) -> float:
                start_weight, end = daemon.rest.weight_sent, clock.now_ms() + 60_000
                while clock.now_ms() < end:
                    if during is not None:
                        during()
                    await asyncio.sleep(0.02)
                return (daemon.rest.weight_sent - start_weight) / WEIGHT_LIMIT * 100

            daemon, task, store = await launch(ReplaySource(items, origin_ms=origin, clock=clock))
            await _until(lambda: holding(daemon), clock.now_ms, 120_000, "the position")
            settle = clock.now_ms() + 10_000
            await _until(lambda: clock.now_ms() >= settle, clock.now_ms, 20_000, "settling")
            for _ in range(minutes_at_rest):
                shares[0].append(await minute_share(daemon))
            await stop(daemon, task, store)

            daemon, task, store = await launch(None)
            shares[1].append(await minute_share(daemon))
            if not holding(daemon):
                raise RuntimeError("recovery did not rebuild the open position")

            def cut() -> None:
                if daemon.user.connected:
                    harness.venue.drop_ws("private")

            before = daemon.user.connections
            shares[2].append(await minute_share(daemon, cut))
            reconnects = daemon.user.connections - before
            with contextlib.suppress(asyncio.CancelledError):
                await stop(daemon, task, store)
    finally:
        await harness.stop()
    notes = (
        f"{minutes_at_rest} venue minute(s) with a short open (PHASE1), the mark held at 100.50",
        "the minute that starts with the restart (exchange snapshot, history, streams)",
        f"the user stream cut each time it reconnects, for one venue minute ({reconnects} reconnects; "
        "the back-off runs in wall time, the venue clock 10x)",
    )
    return [
        run_row("rest weight", name, values, "%", target, note)
        for name, values, target, note in zip(NAMES, shares, TARGETS, notes, strict=True)
    ]


def bench_section(quick: bool) -> list[Row]:
    """The ``shortfsm bench`` rows; a harness failure is reported as "not measured", never raised."""
    from fsm.harness.bench import not_measured

    try:
        return asyncio.run(rest_weight(1 if quick else 3))
    except Exception as exc:  # the harness spans the daemon and the simulator: say what broke
        why = f"the daemon harness failed: {type(exc).__name__}: {exc}"
        return [
            not_measured("rest weight", name, "%", target, why)
            for name, target in zip(NAMES, TARGETS, strict=True)
        ]
