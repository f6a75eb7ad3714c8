"""W24's account reads made while a first entry is monitored (D-72), through the whole daemon against
the simulated venue on loopback, with the read ahead on (it is off by default): the reads happen
during MONITORING and change nothing (W17-1); the
trigger sends its order with no read before it; anything that moves the account in between (a
transfer, a leverage changed in the app) is read again, so the entry is sized and set up on the
account as it is at the trigger."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path

import pytest
import runtime_kit as kit

from binance.sim.server import RestFault
from fsm import commands as cmd
from fsm import events as ev
from fsm.engine import Engine
from fsm.runtime.config import AppConfig, BinanceConfig

D = Decimal
ETH = kit.LEADING.format(ticker="ETH")
READS = {"/fapi/v1/positionSide/dual", "/fapi/v1/symbolConfig", "/fapi/v3/balance"}
CHANGES = {"/fapi/v1/leverage", "/fapi/v1/marginType", "/fapi/v1/allOpenOrders"}
# Target 3535.00 (1.01 x 3500), trigger at 3531.465: reached at 8 s, seven seconds of monitoring.
PATH = kit.PricePath(
    base={"ETHUSDT": D("3500.00")},
    points=kit.points([(8, "ETHUSDT", "3532.00"), (10, "ETHUSDT", "3536.00")]),
)


class Marks:
    """Where the venue's request log stood when the engine answered each event of interest (noted
    inside ``Engine.handle``, before the daemon awaits anything for that event)."""

    def __init__(self, venue: kit.Venue) -> None:
        self.venue = venue
        self.items: list[tuple[ev.Event, list[cmd.Command]]] = []
        self.monitoring = -1  # the leading message made ETHUSDT MONITORING
        self.trigger = -1  # the Tick that asked for the entry's setup
        self.prepared = -1  # the setup's answer reached the engine

    @property
    def requests(self) -> list[tuple[str, str]]:
        return list(self.venue.harness.venue.requests)

    def engine(self, config: AppConfig) -> Engine:
        marks = self

        class Noting(Engine):
            def handle(self, event: ev.Event) -> list[cmd.Command]:
                out = super().handle(event)
                marks.note(event, out)
                return out

        return Noting(config.to_strategy(), recovering=True)

    def note(self, event: ev.Event, commands: list[cmd.Command]) -> None:
        self.items.append((event, commands))
        at = len(self.venue.harness.venue.requests)
        if any(isinstance(c, cmd.Transitioned) and c.dest == "MONITORING" for c in commands):
            self.monitoring = at
        if any(isinstance(c, cmd.PrepareOrder) and c.leg == "ENTRY1" for c in commands):
            self.trigger = at
        if isinstance(event, ev.OrderPrepared) and event.leg == "ENTRY1":
            self.prepared = at

    def between(self, start: int, end: int, paths: set[str]) -> list[tuple[str, str]]:
        return [r for r in self.requests[start:end] if r[1] in paths]

    def entry(self) -> cmd.PlaceOrder:
        return next(
            c for _, cs in self.items for c in cs if isinstance(c, cmd.PlaceOrder) and c.leg == "ENTRY1"
        )


def traded_before(venue: kit.Venue) -> None:
    venue.exchange.leverage["ETHUSDT"] = 1
    venue.exchange.margin_type["ETHUSDT"] = "isolated"


def read_ahead(tmp: Path, seconds: int = 30) -> AppConfig:
    """The daemon's config with the read ahead on (D-72; off by default)."""
    base = kit.config_for(tmp)
    return base.model_copy(update={"binance": BinanceConfig(account_read_max_age_seconds=seconds)})


@asynccontextmanager
async def monitoring(
    tmp: Path, path: kit.PricePath = PATH, *, set_up: bool = True, config: AppConfig | None = None
) -> AsyncIterator[tuple[kit.Venue, Marks, kit.Run]]:
    """The venue (ETHUSDT traded before when ``set_up``: 1x, isolated), and a daemon (the read ahead
    on unless ``config`` says otherwise) whose ETHUSDT is MONITORING; the daemon is stopped after."""
    config = config or read_ahead(tmp)
    async with kit.Venue(path) as venue:
        if set_up:
            traded_before(venue)
        marks = Marks(venue)
        feed = kit.write_feed(tmp, [(1000, kit.ENTRY_CHAT, 1001, ETH)])
        run = await venue.start_daemon(tmp, feed, config=config, engine=marks.engine(config))
        await kit.wait_until(lambda: marks.monitoring >= 0)
        yield venue, marks, run
        if not run.task.done():
            assert await run.stop() == 0


async def entered(venue: kit.Venue, marks: Marks, run: kit.Run) -> None:
    """The entry's setup answered and its order on the venue; then the daemon stops (exit 0)."""
    await kit.wait_until(lambda: marks.prepared >= 0 and venue.exchange.open_orders_index != {})
    assert await run.stop() == 0


@pytest.mark.spec("W24", "W25", "W17-1")
def test_the_reads_are_made_while_monitoring_and_none_at_the_trigger(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with monitoring(tmp_path) as (venue, marks, run):
            daemon = run.daemon
            await entered(venue, marks, run)
            during = marks.between(marks.monitoring, marks.trigger, READS | CHANGES)
            assert {path for _, path in during} == READS  # read while monitoring ...
            assert all(method == "GET" for method, _ in during)  # ... and nothing changed (W17-1)
            assert marks.prepared == marks.trigger  # no request at all between the trigger and its answer
            assert marks.between(marks.trigger, len(marks.requests), READS | CHANGES) == []
            assert daemon.account_reads.reads >= 1
            entry = marks.entry()
            assert (entry.price, entry.quantity) == (D("3535.00"), D("1.414"))  # 50 % of 10,000 USDT

    kit.run(scenario(), timeout=20)


@pytest.mark.spec("W24", "W17-1")
def test_a_symbol_never_set_up_is_set_up_after_the_trigger(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with monitoring(tmp_path, set_up=False) as (venue, marks, run):  # the defaults: 20x, cross
            await entered(venue, marks, run)
            assert {p for m, p in marks.between(marks.monitoring, marks.trigger, READS | CHANGES)} == READS
            assert marks.between(marks.monitoring, marks.trigger, CHANGES) == []  # W17-1
            assert marks.between(marks.trigger, marks.prepared, READS | CHANGES) == [
                ("POST", "/fapi/v1/leverage"),
                ("POST", "/fapi/v1/marginType"),
            ]
            ex = venue.exchange
            assert (ex.leverage["ETHUSDT"], ex.margin_type["ETHUSDT"]) == (1, "isolated")

    kit.run(scenario(), timeout=20)


@pytest.mark.spec("W24", "W32-1")
def test_a_transfer_while_monitoring_sizes_the_entry_on_the_new_wallet(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with monitoring(tmp_path) as (venue, marks, run):
            await kit.wait_until(lambda: run.daemon.account_reads.facts is not None)
            assert not venue.at(7)  # the trigger is still ahead
            venue.exchange.transfer(D("5000"))  # from the app: ACCOUNT_UPDATE DEPOSIT
            await entered(venue, marks, run)
            entry = marks.entry()
            assert entry.quantity == D("2.121")  # 50 % of 15,000 USDT at 3535.00, not 1.414
            assert [(o[0], o[4]) for o in kit.venue_orders(venue.exchange)] == [
                (entry.client_order_id, D("2.121"))
            ]

    kit.run(scenario(), timeout=20)


@pytest.mark.spec("W24")
def test_a_leverage_changed_in_the_app_while_monitoring_is_set_back_before_the_order(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with monitoring(tmp_path) as (venue, marks, run):
            await kit.wait_until(lambda: run.daemon.account_reads.facts is not None)
            assert not venue.at(7)
            venue.exchange.set_leverage({"symbol": "ETHUSDT", "leverage": "5"})  # ACCOUNT_CONFIG_UPDATE
            await entered(venue, marks, run)
            assert ("POST", "/fapi/v1/leverage") in marks.between(marks.trigger, marks.prepared, CHANGES)
            assert venue.exchange.leverage["ETHUSDT"] == 1

    kit.run(scenario(), timeout=20)


@pytest.mark.spec("W24", "W25")
def test_by_default_the_reads_are_made_at_the_trigger(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with monitoring(tmp_path, config=kit.config_for(tmp_path)) as (venue, marks, run):
            await entered(venue, marks, run)
            assert marks.between(marks.monitoring, marks.trigger, READS) == []
            assert {p for _, p in marks.between(marks.trigger, marks.prepared, READS)} == READS

    kit.run(scenario(), timeout=20)


QUIET = kit.PricePath(base={"ETHUSDT": D("3500.00")}, points=())  # no trigger


async def later(venue: kit.Venue, seconds: int) -> None:
    start = venue.clock.now_ms()
    await kit.wait_until(lambda: venue.clock.now_ms() >= start + seconds * 1000, timeout=12)


@pytest.mark.spec("W24", "W17-1")
def test_a_long_monitoring_reads_every_half_life_and_changes_nothing(tmp_path: Path) -> None:
    """A minute of monitoring with no trigger: one read at the start, then one every 15 s (half of
    the 30 s a read may serve), 40 weight each: about 200 a minute, not a read a second."""

    async def scenario() -> None:
        async with monitoring(tmp_path, QUIET) as (venue, marks, run):
            await later(venue, 61)
            assert await run.stop() == 0
            during = marks.between(marks.monitoring, len(marks.requests), READS | CHANGES)
            modes = [r for r in during if r[1] == "/fapi/v1/positionSide/dual"]
            assert 4 <= len(modes) <= 6, during  # at 0, 15, 30, 45 and 60 s
            assert all(method == "GET" for method, _ in during)  # W17-1
            assert {p for _, p in during} == READS and len(during) == 3 * len(modes)

    kit.run(scenario(), timeout=25)


@pytest.mark.spec("W24", "W26")
def test_a_venue_refusing_the_reads_is_not_asked_every_second(tmp_path: Path) -> None:
    """The position-mode read (weight 30) fails for a whole minute of monitoring: it is tried at
    0, 15 and 45 s (the back-off), not sixty times; the trigger then reads for itself (W26)."""

    async def scenario() -> None:
        async with monitoring(tmp_path, QUIET) as (venue, marks, run):
            fault = RestFault("GET", "/fapi/v1/positionSide/dual", "status", status=500, count=1_000)
            venue.harness.venue.faults.add(fault)
            await later(venue, 60)
            reads = run.daemon.account_reads
            assert reads.facts is None and "500" in reads.problem
            assert await run.stop() == 0
            during = marks.between(marks.monitoring, len(marks.requests), {"/fapi/v1/positionSide/dual"})
            assert 2 <= len(during) <= 4, during

    kit.run(scenario(), timeout=25)
