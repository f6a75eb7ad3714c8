"""``shortfsm sim-venue``: run the simulated venue standalone on the wall clock."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
from decimal import Decimal

from binance.sim.clock import WallClock
from binance.sim.exchange import SimExchange
from binance.sim.server import SimVenue

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``sim-venue --port N --api-key K --api-secret S`` to the ``shortfsm`` CLI."""
    p = subparsers.add_parser("sim-venue", help="run the simulated Binance USD-M venue on loopback")
    p.add_argument("--port", type=int, default=0, help="REST port (WebSocket on port+1; 0 = ephemeral)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--api-key", required=True)
    p.add_argument("--api-secret", required=True)
    p.add_argument("--balance", default="10000", help="starting USDT wallet balance")
    p.add_argument("--hedge", action="store_true", help="start in hedge (dual-side) position mode")
    p.add_argument("--seed", type=int, default=None, help="seed of the mark-price random walk")
    p.set_defaults(func=run_cli)


def run_cli(args: argparse.Namespace) -> int:
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_forever(args))
    return 0


async def random_walk(
    ex: SimExchange, rng: random.Random, stop: asyncio.Event, period_s: float = 1.0
) -> None:
    """Each second: move every mark by up to ±0.05 % (rounded to the tick) and push it."""
    while not stop.is_set():
        for name, sym in ex.symbols.items():
            step = Decimal(str(round(rng.uniform(-0.0005, 0.0005), 6)))
            price = (ex.marks[name] * (1 + step)).quantize(sym.tick)
            ex.set_mark(name, max(price, sym.tick))
        ex.pump()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), period_s)


async def serve_forever(args: argparse.Namespace, stop: asyncio.Event | None = None) -> None:
    ex = SimExchange(
        clock=WallClock(),
        api_keys={args.api_key: args.api_secret},
        balance=Decimal(args.balance),
        hedge_mode=bool(args.hedge),
    )
    ws_port = args.port + 1 if args.port else 0
    stop = stop or asyncio.Event()
    async with SimVenue(ex, host=args.host, rest_port=args.port, ws_port=ws_port) as venue:
        print(f"REST base URL: {venue.rest_url}", flush=True)
        print(
            f"WS base URL:   {venue.ws_url}  (market: {venue.ws_url}/market, "
            f"user data: {venue.ws_url}/private)",
            flush=True,
        )
        await random_walk(ex, random.Random(args.seed), stop)
