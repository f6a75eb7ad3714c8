"""Message sources for the daemon and the simulated price paths of the sim profile and the demo.

* ``ReplaySource`` plays a JSONL feed (``telegram_ingest.replay``) on the run's clock: each line
  at ``origin + at_ms``; lines already in the past when it starts are the backfill; ids at or
  below the saved cursor are skipped (the engine would drop them anyway, N-28 step 9).
* ``TelegramSource`` runs the Telethon listener (headless: connect and check, never log in).
* ``PricePath`` is what the simulated venue's marks do: a flat history with a 1 % spike per minute
  before the run (so the last closed 3m candle's high, the aggressive target, is ``base x 1.01``),
  timed marks during the run and per-order fill policies (partial fills). ``demo_path`` is the
  bundled story that matches ``specs/feeds/demo.jsonl``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

from binance.sim.exchange import FillPolicy, SimExchange, SimSymbol
from telegram_ingest.adapter import RawMessage
from telegram_ingest.replay import FeedItem, load_feed

log = logging.getLogger(__name__)

Deliver = Callable[[RawMessage], Awaitable[None]]
REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO_FEED = REPO_ROOT / "specs" / "feeds" / "demo.jsonl"
HISTORY_MS = 15 * 60_000
HISTORY_STEP_MS = 20_000
SPIKE = Decimal("1.01")


class Clock(Protocol):
    def now_ms(self) -> int: ...

    async def sleep_until(self, target_ms: int, wake: asyncio.Event | None = None) -> None: ...


class MessageSource(Protocol):
    kind: str  # "replay" | "telegram": shown on the board

    async def run(self, deliver: Deliver, cursors: dict[int, int]) -> None: ...

    def stop(self) -> None: ...

    @property
    def finished(self) -> bool: ...


class ReplaySource:
    """A JSONL feed on the run's clock (the sim profile's Telegram)."""

    kind = "replay"

    def __init__(self, items: Sequence[FeedItem], *, origin_ms: int, clock: Clock) -> None:
        self.items = list(items)
        self.origin_ms = origin_ms
        self.clock = clock
        self.delivered = 0
        self._stop = asyncio.Event()
        self._finished = False

    @classmethod
    def from_file(cls, path: str | Path, *, origin_ms: int, clock: Clock) -> ReplaySource:
        return cls(load_feed(path), origin_ms=origin_ms, clock=clock)

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def last_at_ms(self) -> int:
        return self.items[-1].at_ms if self.items else 0

    def stop(self) -> None:
        self._stop.set()

    async def run(self, deliver: Deliver, cursors: dict[int, int]) -> None:
        for item in self.items:
            if self._stop.is_set():
                return
            if item.message_id <= cursors.get(item.chat_id, 0):
                continue
            due = self.origin_ms + item.at_ms
            if due > self.clock.now_ms():
                await self.clock.sleep_until(due, self._stop)
                if self._stop.is_set():
                    return
            raw = item.to_raw(self.origin_ms)
            await deliver(raw)
            self.delivered += 1
        self._finished = True


class TelegramSource:
    """The real channels through ``telegram_ingest.listener`` (demo and mainnet profiles)."""

    kind = "telegram"

    def __init__(
        self,
        *,
        session_path: str,
        api_id: int,
        api_hash: str,
        chat_ids: Sequence[int],
        backfill_interval_s: float,
        quiet_reconnect_s: float,
    ) -> None:
        self.session_path = session_path
        self.api_id = api_id
        self.api_hash = api_hash
        self.chat_ids = tuple(chat_ids)
        self.backfill_interval_s = backfill_interval_s
        self.quiet_reconnect_s = quiet_reconnect_s
        self._listener: Any = None

    @property
    def finished(self) -> bool:
        return False

    def stop(self) -> None:
        if self._listener is not None:
            self._listener.stop()

    async def run(self, deliver: Deliver, cursors: dict[int, int]) -> None:
        from telethon import TelegramClient

        from telegram_ingest.listener import (
            ListenerConfig,
            TelegramListener,
            ensure_authorised,
            open_session_path,
        )

        class _Cursors:
            def get(self, chat_id: int) -> int:
                return cursors.get(chat_id, 0)

        with open_session_path(self.session_path) as session:
            client = TelegramClient(str(session.path), self.api_id, self.api_hash)
            await ensure_authorised(client)
            try:
                self._listener = TelegramListener(
                    client,
                    chat_ids=self.chat_ids,
                    cursors=_Cursors(),
                    on_raw=deliver,
                    config=ListenerConfig(
                        backfill_interval_s=self.backfill_interval_s,
                        quiet_reconnect_s=self.quiet_reconnect_s,
                    ),
                )
                await self._listener.run()
            finally:
                await client.disconnect()


# ---------------------------------------------------------------------------------------------
# Price paths for the simulated venue
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class PricePath:
    """Marks of the simulated venue: ``base`` history before the run, ``points`` during it."""

    base: dict[str, Decimal]
    points: tuple[tuple[int, str, Decimal], ...] = ()  # (at_ms after the origin, symbol, mark)
    fill_policies: dict[str, FillPolicy] = field(default_factory=dict)
    extra_symbols: tuple[tuple[SimSymbol, Decimal], ...] = ()

    @property
    def end_ms(self) -> int:
        return max((p[0] for p in self.points), default=0)

    def install(self, exchange: SimExchange, set_clock: Callable[[int], None], origin_ms: int) -> None:
        """Add the symbols, write the history (moving a manual clock) and schedule the run's marks."""
        for sym, mark in self.extra_symbols:
            if sym.symbol not in exchange.symbols:
                exchange.add_symbol(sym, mark)
        for step in range(HISTORY_MS // HISTORY_STEP_MS):
            at = origin_ms - HISTORY_MS + step * HISTORY_STEP_MS
            set_clock(at)
            for symbol, base in self.base.items():
                tick = exchange.symbols[symbol].tick
                price = (base * SPIKE).quantize(tick) if step % 3 == 1 else base
                exchange.set_mark(symbol, price)
        set_clock(origin_ms)
        for symbol, base in self.base.items():
            exchange.set_mark(symbol, base)
        exchange.script((origin_ms + at, symbol, price) for at, symbol, price in self.points)
        for cid, policy in self.fill_policies.items():
            exchange.set_fill_policy(cid, policy)


def _sym(name: str, tick: str, step: str, min_qty: str) -> SimSymbol:
    return SimSymbol(
        name,
        Decimal(tick),
        Decimal(step),
        Decimal(min_qty),
        Decimal("10000000"),
        Decimal("1000000"),
        min_price=Decimal(tick),
    )


def _points(rows: Sequence[tuple[float, str, str]]) -> tuple[tuple[int, str, Decimal], ...]:
    return tuple((int(at * 1000), symbol, Decimal(price)) for at, symbol, price in rows)


def demo_path() -> PricePath:
    """The story of ``specs/feeds/demo.jsonl`` (times in seconds after the start):

    3-12 s leading messages: DOGE (meme: filtered), XRP (not listed: mapping failure), SOL (rising
    rank 3: filtered), ETH and LINK (monitoring; targets 3535.00 and 20.200). 16 s both cross their
    0.1% trigger in the same second: W18 tie-break, LINK (latest receipt) wins, ETH is reset.
    19 s / 22 s the LINK limit entry fills 100 then the rest (partial fill, then PHASE1). 26-30 s the
    mark reaches avg +15 %: scale-in fills, PHASE2 with its MDD stop; the breakeven limit rests at
    the new average and fills at 35 s (breakeven exit). 40-53 s AVAX: monitoring, entry, TP placed
    at the 0.1 % trigger, TP filled (take-profit). 60-70 s ADA: entry filled, then a risk message
    with the price above the average: closed at market (risk signal).
    """
    return PricePath(
        base={
            "ETHUSDT": Decimal("3500.00"),
            "DOGEUSDT": Decimal("0.16000"),
            "SOLUSDT": Decimal("180.0000"),
            "LINKUSDT": Decimal("20.000"),
            "AVAXUSDT": Decimal("30.000"),
            "ADAUSDT": Decimal("0.8000"),
        },
        extra_symbols=(
            (_sym("LINKUSDT", "0.001", "0.01", "0.01"), Decimal("20.000")),
            (_sym("AVAXUSDT", "0.001", "1", "1"), Decimal("30.000")),
            (_sym("ADAUSDT", "0.0001", "1", "1"), Decimal("0.8000")),
        ),
        points=_points(
            [
                (16, "ETHUSDT", "3532.00"),
                (16, "LINKUSDT", "20.185"),
                (19, "LINKUSDT", "20.210"),
                (22, "LINKUSDT", "20.220"),
                (24, "LINKUSDT", "21.800"),
                (26, "LINKUSDT", "23.210"),
                (30, "LINKUSDT", "23.250"),
                (33, "LINKUSDT", "22.400"),
                (35, "LINKUSDT", "21.400"),
                (43, "AVAXUSDT", "30.280"),
                (45, "AVAXUSDT", "30.310"),
                (48, "AVAXUSDT", "29.500"),
                (50, "AVAXUSDT", "28.800"),
                (53, "AVAXUSDT", "28.700"),
                (63, "ADAUSDT", "0.8075"),
                (65, "ADAUSDT", "0.8085"),
                (68, "ADAUSDT", "0.8090"),
            ]
        ),
        fill_policies={"sf105-E11-LINKUSDT": (Decimal("100"), Decimal("100000000"))},
    )
