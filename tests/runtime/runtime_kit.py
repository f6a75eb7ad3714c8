"""Helpers for the daemon tests: the whole daemon against the simulated venue on a compressed clock."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from fsm import commands as cmd
from fsm import events as ev
from fsm.runtime.config import AppConfig, StorageConfig
from fsm.runtime.daemon import Daemon, RunClock, SimHarness
from fsm.runtime.feeds import PricePath, ReplaySource
from fsm.runtime.logs import DecisionLog
from fsm.runtime.store import Store

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
        return [
            f"{c.symbol or c.machine} {c.source}->{c.dest}"
            for _, cs in self.items
            for c in cs
            if isinstance(c, cmd.Transitioned)
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

    def __init__(self, path: PricePath, speed: float = SPEED) -> None:
        self.clock = RunClock(speed=speed)
        self.harness = SimHarness(self.clock, path=path)
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
        store = await Store.open(config.storage.database)
        seen = Seen()
        daemon = Daemon(
            config=config,
            profile="sim",
            clock=self.clock,
            store=store,
            endpoints=self.harness.endpoints(),
            source=ReplaySource.from_file(feed, origin_ms=self.origin, clock=self.clock),
            decision_log=DecisionLog(config.storage.log_dir, secrets=[self.harness.endpoints().api_secret]),
            heartbeat_path=config.storage.heartbeat_path,
            observer=seen,
            **kwargs,
        )
        task = asyncio.create_task(daemon.run())
        return Run(daemon, task, store, seen)


async def wait_until(cond: Callable[[], bool], timeout: float = 8.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.01)


def run(coro: Any, timeout: float = 15.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))
