"""``shortfsm sim-venue``: run the simulated venue standalone on the wall clock."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import random
import socket
import sys
from decimal import Decimal, InvalidOperation

from binance.sim.clock import WallClock
from binance.sim.exchange import SimExchange
from binance.sim.server import SimVenue

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``sim-venue --port N --api-key K --api-secret S`` to the ``shortfsm`` CLI."""
    p = subparsers.add_parser(
        "sim-venue",
        help="run the simulated Binance USD-M venue on loopback",
        description="Serve the simulated USD-M venue (REST and the /market and /private streams) on the "
        "wall clock until Ctrl-C, with a random-walk mark price; prints its base URLs for "
        "binance.rest_url / market_ws_url / private_ws_url. Exit 2 when the ports cannot be opened. "
        "It answers like Binance USD-M: the real error codes (-4130, -4509, -2022, -2021, -1111, -4164, "
        "lot and percent-price filters), mark vs last-price triggers, history endpoints back to the "
        "onboard date, listenKey SUBSCRIBE on /private/stream, route weights (rate-limit bans off unless "
        "enabled), 3-minute pings and a 24 h cut, funding settled at 00/08/16 UTC. No order book, "
        "liquidation or trailing stops.",
    )
    p.add_argument("--port", type=_port, default=0, help="REST port (WebSocket on port+1; 0 = ephemeral)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--api-key", required=True)
    p.add_argument("--api-secret", required=True)
    p.add_argument("--balance", type=_balance, default=Decimal("10000"), help="starting USDT wallet balance")
    p.add_argument("--hedge", action="store_true", help="start in hedge (dual-side) position mode")
    p.add_argument("--seed", type=int, default=None, help="seed of the mark-price random walk")
    p.set_defaults(func=run_cli)


class CannotListen(Exception):
    """The venue's ports cannot be opened (in use, no permission, unknown host)."""


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65534:  # the WebSocket takes port + 1
        raise argparse.ArgumentTypeError(f"port must be 0..65534, not {port}")
    return port


def _balance(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value.is_finite() or value < 0:
        raise argparse.ArgumentTypeError(f"must be a positive amount, not {text!r}")
    return value


def run_cli(args: argparse.Namespace) -> int:
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve_forever(args))
    except CannotListen as exc:
        print(f"shortfsm sim-venue: {exc}", file=sys.stderr)
        return 2
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
    venue = SimVenue(ex, host=args.host, rest_port=args.port, ws_port=ws_port)
    try:
        await venue.start()
    except OSError as exc:
        await venue.stop()
        ports = f"ports {args.port} and {ws_port}" if args.port else "an ephemeral port"
        reason = os.strerror(exc.errno) if exc.errno and not isinstance(exc, socket.gaierror) else str(exc)
        raise CannotListen(
            f"cannot listen on {args.host} ({ports}): {reason}; choose another --port (or --host)"
        ) from None
    try:
        print(f"REST base URL: {venue.rest_url}", flush=True)
        print(
            f"WS base URL:   {venue.ws_url}  (market: {venue.ws_url}/market, "
            f"user data: {venue.ws_url}/private)",
            flush=True,
        )
        await random_walk(ex, random.Random(args.seed), stop)
    finally:
        await venue.stop()
