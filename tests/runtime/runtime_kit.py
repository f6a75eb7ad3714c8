"""Helpers for the daemon tests: the whole daemon against the simulated venue on a compressed clock."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from binance.sim.exchange import SimExchange
from binance.sim.server import SimVenue
from fsm import commands as cmd
from fsm import events as ev
from fsm.harness.sim_harness import SimHarness
from fsm.runtime.config import AppConfig, StorageConfig
from fsm.runtime.daemon import Daemon, RunClock
from fsm.runtime.feeds import PricePath as PricePath
from fsm.runtime.feeds import ReplaySource
from fsm.runtime.logs import DecisionLog
from fsm.runtime.store import Store
from fsm.table import DETAIL_REGIONS

ENTRY_CHAT = -1002171239233
RISK_CHAT = -1003096527269
SPEED = 10.0
LEADING = (
    "🔥 실시간 주도 마켓 분석 ({ticker})\n\n📈 주도 마켓: 바이낸스\n\n"
    "⏱️Binance 펀딩비 및 카운트다운 : -0.0100% / 01:23:45 (4h)\n\n"
    "🥇지난 24H 등락률 및 순위 : +8.50% / (상승) 상위 15위\n\n🏷️카테고리 : AI\n\n🔗Liq HeatMap : 히트맵 링크"
)


def config_for(tmp: Path) -> AppConfig:
    return AppConfig(
        storage=StorageConfig(
            database=str(tmp / "db.sqlite"), log_dir=str(tmp / "log"), heartbeat_path=str(tmp / "hb.json")
        )
    )


def write_feed(tmp: Path, rows: list[tuple[int, int, int, str]]) -> Path:
    path = tmp / "feed.jsonl"
    with path.open("w", encoding="utf-8") as handle:
        for at_ms, chat, message_id, text in rows:
            line = {"at_ms": at_ms, "chat_id": chat, "message_id": message_id, "text": text}
            handle.write(json.dumps(line, ensure_ascii=False) + "\n")
    return path


def points(rows: list[tuple[float, str, str]]) -> tuple[tuple[int, str, Decimal], ...]:
    return tuple((int(at * 1000), s, Decimal(p)) for at, s, p in rows)


# W55 on ETHUSDT: target 3535.00 (1.01 x 3500), trigger at 3531.465, TP 3358.25 (Ttp 3361.61).
W55_PATH = PricePath(
    base={"ETHUSDT": Decimal("3500.00")},
    points=points(
        [
            (3, "ETHUSDT", "3532.00"),
            (5, "ETHUSDT", "3536.00"),
            (8, "ETHUSDT", "3360.00"),
            (14, "ETHUSDT", "3358.00"),
        ]
    ),
)


@dataclass
class Seen:
    """Everything the observer saw: (event, commands) pairs."""

    items: list[tuple[ev.Event, list[cmd.Command]]] = field(default_factory=list)

    def __call__(self, event: ev.Event, commands: list[cmd.Command]) -> None:
        self.items.append((event, commands))

    def transitions(self) -> list[str]:
        """The phases, the close and the global locks."""
        return [
            f"{cmd.who_moved(c.machine, c.symbol)} {c.source}->{c.dest}"
            for _, cs in self.items
            for c in cs
            if isinstance(c, cmd.Transitioned) and c.machine not in DETAIL_REGIONS
        ]

    def triggers(self) -> list[str]:
        """The other machines beside the phase: price triggers, setups, R06, stuck cancels."""
        return [
            f"{cmd.who_moved(c.machine, c.symbol)} {c.source}->{c.dest}"
            for _, cs in self.items
            for c in cs
            if isinstance(c, cmd.Transitioned) and c.machine in DETAIL_REGIONS
        ]

    def has(self, line: str) -> bool:
        return line in self.transitions()

    def accepted(self, cid: str) -> bool:
        return any(
            isinstance(e, (ev.OrderAccepted, ev.AlgoOrderAccepted))
            and (getattr(e, "client_order_id", None) == cid or getattr(e, "client_algo_id", None) == cid)
            for e, _ in self.items
        )


@dataclass
class Run:
    daemon: Daemon
    task: asyncio.Task[int]
    store: Store
    seen: Seen

    async def stop(self) -> int:
        self.daemon.request_stop("test")
        code = await asyncio.wait_for(self.task, 5)
        await self.store.close()
        return code


class Venue:
    """A simulated venue on a compressed clock, shared by successive daemons."""

    def __init__(
        self,
        path: PricePath,
        speed: float = SPEED,
        *,
        origin_ms: int | None = None,
        settle_funding: bool = False,
    ) -> None:
        self.clock = RunClock(speed=speed, origin_ms=origin_ms)
        self.harness = SimHarness(self.clock, path=path)
        # On the wall clock a run that crosses 00/08/16 UTC would see a settlement at a random
        # moment; the funding tests turn it on with an origin they place (``origin_ms``).
        self.harness.exchange.settle_funding = settle_funding
        self.origin = self.clock.now_ms()

    async def __aenter__(self) -> Venue:
        self.harness.install(self.origin)
        await self.harness.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.harness.stop()

    @property
    def exchange(self) -> Any:
        return self.harness.exchange

    async def start_daemon(self, tmp: Path, feed: Path, **kwargs: Any) -> Run:
        config = kwargs.pop("config", None) or config_for(tmp)
        config_path = kwargs.pop("config_path", None)
        clock = kwargs.pop("clock", None) or self.clock  # a host clock of its own (a wrong one)
        store = await Store.open(config.storage.database)
        seen = Seen()
        daemon = Daemon(
            config=config,
            profile="sim",
            clock=clock,
            store=store,
            endpoints=self.harness.endpoints(),
            source=ReplaySource.from_file(feed, origin_ms=self.origin, clock=self.clock),
            decision_log=DecisionLog(config.storage.log_dir, secrets=[self.harness.endpoints().api_secret]),
            heartbeat_path=config.storage.heartbeat_path,
            observer=seen,
            **kwargs,
        )
        if config_path is not None:
            daemon.watch_config(config_path)
        task = asyncio.create_task(daemon.run())
        return Run(daemon, task, store, seen)

    def at(self, seconds: float) -> bool:
        """True once the venue clock is ``seconds`` past the origin."""
        return self.clock.now_ms() >= self.origin + int(seconds * 1000)


async def wait_until(cond: Callable[[], bool], timeout: float = 8.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.01)


def run(coro: Any, timeout: float = 15.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


# ---------------------------------------------------------------------------------------------
# Operator controls, reload and storage faults
# ---------------------------------------------------------------------------------------------

RISK = "🥈 Binance : {symbol}.P 에서 숏 리스크관리 권장"


def write_config(tmp: Path, text: str = "", *, name: str = "config.yaml") -> Path:
    """A config file whose storage section matches ``config_for(tmp)``, plus ``text`` (YAML)."""
    storage = (
        "storage:\n"
        f"  database: {tmp / 'db.sqlite'}\n"
        f"  log_dir: {tmp / 'log'}\n"
        f"  heartbeat_path: {tmp / 'hb.json'}\n"
    )
    path = tmp / name
    path.write_text(storage + text, encoding="utf-8")
    path.chmod(0o600)
    return path


def board(tmp: Path) -> dict[str, Any]:
    """The board row the daemon writes every second (``{}`` before the first one)."""
    with sqlite3.connect(tmp / "db.sqlite") as conn:
        row = conn.execute("SELECT value FROM status WHERE key = 'board'").fetchone()
    return json.loads(row[0]) if row else {}


def rows(tmp: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(tmp / "db.sqlite")
    try:
        return [tuple(r) for r in conn.execute(sql).fetchall()]
    finally:
        conn.close()


def logs(seen: Seen, kind: str) -> list[tuple[str | None, str, dict[str, str]]]:
    """(symbol, reason, data) of every ``Log`` command of ``kind`` the engine emitted."""
    return [
        (c.symbol, c.reason, dict(c.data))
        for _, cs in seen.items
        for c in cs
        if isinstance(c, cmd.Log) and c.kind == kind
    ]


def venue_orders(exchange: Any) -> list[tuple[str, str, str, Decimal, Decimal, str, bool, Decimal]]:
    """(client id, side, type, price, quantity, status, reduceOnly, executed) in the venue's order."""
    return [
        (o.client_id, o.side, o.type, o.price, o.qty, o.status, o.reduce_only, o.executed)
        for o in exchange.orders.values()
    ]


def venue_algos(exchange: Any) -> list[tuple[str, str, str, Decimal, str, bool]]:
    """(client algo id, side, type, trigger price, status, closePosition) in the venue's order."""
    return [
        (a.client_algo_id, a.side, a.type, a.trigger, a.status, a.close_position)
        for a in exchange.algos.values()
    ]


DISK_FULL = "database or disk is full"


def fill_disk(store: Store) -> None:
    """Every write statement of ``store`` fails as SQLite does on a full disk (reads still work)."""
    real = store.db.execute

    def execute(sql: str, parameters: Any = None) -> Any:
        if sql.lstrip().split(" ", 1)[0].upper() in ("INSERT", "UPDATE", "DELETE", "REPLACE"):
            raise sqlite3.OperationalError(DISK_FULL)
        return real(sql, parameters) if parameters is not None else real(sql)

    store.db.execute = execute  # type: ignore[method-assign]


def free_disk(store: Store) -> None:
    del store.db.execute  # back to the class's method


class OffsetClock:
    """Wall time shifted by ``offset_ms`` (a venue whose clock is ahead of ours)."""

    def __init__(self, offset_ms: int = 0) -> None:
        self.offset_ms = offset_ms

    def now_ms(self) -> int:
        return int(time.time() * 1000) + self.offset_ms


class VenueThread:
    """A simulated venue on loopback served from its own thread and event loop, on the wall clock:
    for the one-shot CLI commands (``check``, ``flatten``), which run their own ``asyncio.run``."""

    API_KEY = "test-venue-key"
    API_SECRET = "test-venue-secret-0123456789"

    def __init__(self, *, clock_offset_ms: int = 0, hedge: bool = False) -> None:
        self.exchange = SimExchange(
            clock=OffsetClock(clock_offset_ms), api_keys={self.API_KEY: self.API_SECRET}, hedge_mode=hedge
        )
        self.exchange.settle_funding = False  # the wall clock: no settlement at a random moment
        self.venue = SimVenue(self.exchange)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="sim-venue", daemon=True)

    def add_route(self, method: str, path: str, answer: dict[str, Any]) -> None:
        """A signed route the simulated venue does not have (e.g. the spot API's apiRestrictions)."""
        self.venue._routes[(method, path)] = ("SIGNED", lambda params: answer)

    def __enter__(self) -> VenueThread:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.venue.start(), self._loop).result(5)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.venue.stop(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def config_text(self, profile: str = "demo") -> str:
        return (
            "binance:\n"
            f"  profile: {profile}\n"
            f"  rest_url: {self.venue.rest_url}\n"
            f"  market_ws_url: {self.venue.ws_url}/market\n"
            f"  private_ws_url: {self.venue.ws_url}/private\n"
        )
