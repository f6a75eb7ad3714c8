"""kill -9 of the real daemon process, restarted on the same database (N-28, D-17, D-18).

The simulated venue runs in the test process on loopback, on a clock compressed ``SPEED`` times;
``shortfsm run`` runs as a real subprocess against it (sim profile with ``binance.rest_url`` set:
its clock starts at the venue's time) with a JSONL feed. The venue's mark follows the flow's
state, not a timetable (a "director" sets the next mark once the venue shows the previous stage
done), so a flow continues correctly however long the daemon is down. The test watches the
daemon's database (journal, orders, fills) and SIGKILLs the process the moment a chosen row
appears, starts a new process on the same database, and so on; the last one is left to finish.

Kill points are chosen where an uncrashed run and a crashed one must agree: once the entry order
is on the venue (an entry that never reached the venue is dropped with the monitoring, N-28 step
7). At the end the venue must hold what the uncrashed run's venue holds (positions, open orders,
filled orders, wallet), no client order id may appear twice, no closing order may exceed the
position when it reached the venue, and no exit order may be left once flat.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import sqlite3
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import runtime_kit as kit
import yaml

from binance.sim.exchange import SimExchange, SimOrder
from binance.sim.server import RestFault, SimVenue
from fsm import events as ev
from fsm.runtime.daemon import RunClock, corrected_hints, merged_generations
from fsm.runtime.feeds import PricePath
from fsm.runtime.store import Store, risk_message_from_journal

REPO = Path(__file__).resolve().parents[2]
SPEED = 10.0
SYMBOL = "ETHUSDT"
POLL_S = 0.005
STEP_TIMEOUT_S = 15.0
RISK = (80_000, kit.RISK_CHAT, 5001, "🥈 Binance : ETHUSDT.P 에서 숏 리스크관리 권장")
LEADING = (1_000, kit.ENTRY_CHAT, 1001, kit.LEADING.format(ticker="ETH"))
ZERO = Decimal(0)


# ---------------------------------------------------------------------------------------------
# The venue: in this process, checked, driven by the flow's state
# ---------------------------------------------------------------------------------------------


class CheckedExchange(SimExchange):
    """Records every BUY order (a closing order for a short) beside the position it met."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.closing: list[tuple[str, Decimal, Decimal]] = []  # cid, quantity, |position|

    def new_order(self, params: dict[str, str]) -> Any:
        if params.get("side") == "BUY":
            pos = self.positions.get((params.get("symbol", ""), "BOTH"))
            size = abs(pos.amount) if pos else ZERO
            self.closing.append((params.get("newClientOrderId", ""), Decimal(params["quantity"]), size))
        return super().new_order(params)


Acked = Callable[[str], bool]  # the daemon's database shows this leg's order accepted
Director = Callable[[CheckedExchange, Acked], Decimal | None]


class Venue:
    """The simulated venue on ``SPEED`` x time: the mark follows ``director``; 1 s pushes."""

    def __init__(self, director: Director) -> None:
        self.clock = RunClock(speed=SPEED)
        self.api_key = f"sim-{secrets.token_hex(6)}"
        self.api_secret = secrets.token_hex(16)  # a throwaway credential for the loopback venue
        self.exchange = CheckedExchange(clock=self.clock, api_keys={self.api_key: self.api_secret})
        self.exchange.settle_funding = False  # the wall clock: no settlement at a random moment
        self.server = SimVenue(self.exchange)
        self.director = director
        self.hold = False  # the mark stays where it is (while a killed daemon is down)
        self.acked: Acked = lambda code: False
        self.pending: Callable[[], bool] | None = None  # a kill condition the test is about to act on
        self.origin = self.clock.now_ms()
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Venue:
        PricePath(base={SYMBOL: Decimal("3500.00")}).install(
            self.exchange, self.clock.set_manual, self.origin
        )
        self.clock.start(self.origin)
        await self.server.start()
        self._tasks = [asyncio.create_task(self._pushes()), asyncio.create_task(self._direct())]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.server.stop()

    async def _pushes(self) -> None:
        while True:
            now = self.clock.now_ms()
            await self.clock.sleep_until((now // 1000 + 1) * 1000)
            self.exchange.pump()
            self.exchange.publish_marks()

    async def _direct(self) -> None:
        while True:
            # The director reads the database first: the kill conditions only ever become true,
            # so one that holds after it cannot have been false when the director read it.
            mark = self.director(self.exchange, self.acked)
            if self.hold or (self.pending is not None and self.pending()):
                mark = None
            if mark is not None and mark != self.exchange.marks[SYMBOL]:
                self.exchange.set_mark(SYMBOL, mark)
            await asyncio.sleep(0.02)


def _ours(ex: SimExchange, code: str) -> SimOrder | None:
    """The latest order of the signal 1001 with this leg code (any generation)."""
    found = [o for o in ex.orders.values() if o.client_id.startswith(f"sf1001-{code}")]
    return found[-1] if found else None


def _short(ex: SimExchange) -> Decimal:
    pos = ex.positions.get((SYMBOL, "BOTH"))
    return abs(pos.amount) if pos else ZERO


# Target 3535.00 (the last closed 3m candle's high: 1.01 x 3500), entry trigger 3531.465.
def w55_director(ex: CheckedExchange, acked: Acked) -> Decimal | None:
    """Entry, fill, TP trigger (TP 3358.25, trigger 3361.61), TP fill. An order is filled only
    once the daemon's database shows it accepted, so a kill point on that row comes first."""
    e1, tp = _ours(ex, "E1"), _ours(ex, "TP")
    if e1 is None:
        return Decimal("3532")
    if e1.is_open:
        return Decimal("3536") if acked("E1") else None
    if tp is None and _short(ex) > 0:
        return Decimal("3360")
    if tp is not None and tp.is_open and acked("TP"):
        return Decimal("3358")
    return None


def w56_director(ex: CheckedExchange, acked: Acked) -> Decimal | None:
    """Entry, fill, scale-in at 3535 x 1.15 = 4065.25 (trigger 4061.18), PHASE2 with its MDD stop,
    breakeven limit at the new average placed, then filled by a fall to 3700."""
    e1, e2, be = _ours(ex, "E1"), _ours(ex, "E2"), _ours(ex, "BE")
    if e1 is None:
        return Decimal("3532")
    if e1.is_open:
        return Decimal("3536") if acked("E1") else None
    if e2 is None and _short(ex) > 0:
        return Decimal("4062")
    if e2 is not None and e2.is_open:
        return Decimal("4066") if acked("E2") else None
    if be is not None and be.is_open and acked("BE"):
        return Decimal("3700")
    return None


def w57_director(ex: CheckedExchange, acked: Acked) -> Decimal | None:
    """Entry, then one move to 3540: a partial fill of 0.5 at 3535 (the rest never fills) and the
    mark at a loss for the short, at once, so the market close always meets the same mark; the risk
    message of the feed (5001) then cancels the rest and closes at market."""
    e1 = _ours(ex, "E1")
    if e1 is None:
        return Decimal("3532")
    return Decimal("3540") if acked("E1") else None


# ---------------------------------------------------------------------------------------------
# The daemon process and its database
# ---------------------------------------------------------------------------------------------


@dataclass
class Daemon:
    """``shortfsm run`` against ``venue``, on one database, started as often as needed."""

    venue: Venue
    home: Path
    feed: list[tuple[int, int, int, str]]
    starts: int = 0
    kills: list[str] = field(default_factory=list)
    known: set[str] = field(default_factory=set)  # open on the venue when the process recovered
    proc: asyncio.subprocess.Process | None = None
    binance: dict[str, Any] = field(default_factory=dict)  # more `binance:` settings (the read ahead)

    def __post_init__(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.db = self.home / "db.sqlite"
        feed = kit.write_feed(self.home, self.feed)
        ws = self.venue.server.ws_url
        config = {
            "telegram": {"feed_path": str(feed)},
            "binance": {
                "profile": "sim",
                "rest_url": self.venue.server.rest_url,
                "market_ws_url": f"{ws}/market",
                "private_ws_url": f"{ws}/private",
                **self.binance,
            },
            "storage": {
                "database": str(self.db),
                "log_dir": str(self.home / "log"),
                "heartbeat_path": str(self.home / "hb.json"),
            },
        }
        self.config = self.home / "config.yaml"
        self.config.write_text(yaml.safe_dump(config), encoding="utf-8")
        self.venue.acked = lambda code: self.accepted(code)()

    async def start(self) -> None:
        self.starts += 1
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "BINANCE_API_KEY": self.venue.api_key,
            "BINANCE_API_SECRET": self.venue.api_secret,
        }
        log = (self.home / f"stderr-{self.starts}.txt").open("wb")
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "fsm.ops.cli",
            "run",
            "--config",
            str(self.config),
            "--speed",
            str(SPEED),
            "--feed-origin-ms",
            str(self.venue.origin),
            cwd=self.home,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
        log.close()

    async def kill_when(self, label: str, condition: Callable[[], bool], *, hold: bool = True) -> None:
        """SIGKILL the process the moment ``condition`` holds, then start a new one. With ``hold``
        the venue's mark stays put until the new process has recovered (so that the next stage
        happens while a daemon is there to see it); without, the flow goes on while it is down."""
        self.venue.pending = condition
        await self.wait_for(label, condition)
        assert self.proc is not None
        self.venue.hold = hold
        self.venue.pending = None
        self.proc.send_signal(signal.SIGKILL)
        assert await self.proc.wait() == -signal.SIGKILL
        self.kills.append(label)
        await self.start()
        await self.wait_for(f"recovered after {label}", self.recovered)
        self.known = set(_open(self.venue.exchange))
        self.venue.hold = False

    def recovered(self) -> bool:
        return self._heartbeat() is not None

    async def wait_for(self, label: str, condition: Callable[[], bool]) -> None:
        assert self.proc is not None
        try:
            async with asyncio.timeout(STEP_TIMEOUT_S):
                while not condition():
                    if self.proc.returncode is not None:
                        raise AssertionError(f"{label}: the daemon exited with {self.proc.returncode}")
                    await asyncio.sleep(POLL_S)
        except TimeoutError:
            ex = self.venue.exchange
            venue = [(o.client_id, o.status, o.executed) for o in ex.orders.values()]
            venue += [(a.client_algo_id, a.status, ZERO) for a in ex.algos.values()]
            tail = (self.home / f"stderr-{self.starts}.txt").read_text(errors="replace")[-2000:]
            raise AssertionError(
                f"{label}: not reached within {STEP_TIMEOUT_S} s; kills {self.kills}; venue {venue}, "
                f"short {_short(ex)}\n{tail}"
            ) from None

    async def stop(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            assert await self.proc.wait() == 0

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Committed rows (read-only, beside the daemon's WAL writer); [] before the schema exists."""
        if not self.db.exists():
            return []
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5.0)
        try:
            return [tuple(r) for r in conn.execute(sql, params).fetchall()]
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return []
            raise
        finally:
            conn.close()

    # -- kill conditions, read from the database -----------------------------------------------

    def journaled(self, n: int) -> Callable[[], bool]:
        def done() -> bool:
            rows = self.rows("SELECT count(*) FROM journal")
            return bool(rows) and int(rows[0][0]) >= n

        return done

    def accepted(self, code: str) -> Callable[[], bool]:
        """The daemon knows this leg's order is on the venue: its row shows the acknowledgement, or
        it was open on the venue when the current process recovered (a kill can fall between the
        venue's answer and the row; recovery then learns the order from the exchange, N-28)."""
        prefix = f"sf1001-{code}"
        return lambda: (
            any(cid.startswith(prefix) for cid in self.known)
            or bool(
                self.rows(
                    "SELECT 1 FROM orders WHERE client_order_id LIKE ? AND order_id IS NOT NULL",
                    (f"{prefix}%",),
                )
            )
        )

    def filled(self, code: str) -> Callable[[], bool]:
        return lambda: bool(
            self.rows("SELECT 1 FROM fills WHERE client_order_id LIKE ?", (f"sf1001-{code}%",))
        )

    def idle(self) -> bool:
        """The venue is flat with nothing of ours open, and the current process says so too
        (heartbeat: recovered, entry lock idle; board: no position, nothing monitored)."""
        ex = self.venue.exchange
        if not ex.orders or _short(ex) != 0 or _open(ex):
            return False
        beat = self._heartbeat()
        board = self.rows("SELECT value FROM status WHERE key = 'board'")
        if beat is None or beat["locks"]["entry_lock"] != "GLOBAL_IDLE" or not board:
            return False
        view = json.loads(board[0][0])
        return view.get("position") is None and view.get("monitoring") == []

    def _heartbeat(self) -> dict[str, Any] | None:
        """The current process's heartbeat once its recovery lock is lifted."""
        try:
            beat: dict[str, Any] = json.loads((self.home / "hb.json").read_text())
        except (OSError, ValueError):
            return None
        assert self.proc is not None
        ready = beat.get("pid") == self.proc.pid and beat["locks"]["recovery_lock"] == "READY"
        return beat if ready else None


def _open(ex: SimExchange) -> list[str]:
    return [o.client_id for o in ex.orders.values() if o.is_open] + [
        a.client_algo_id for a in ex.algos.values() if a.status == "NEW"
    ]


def final_state(ex: CheckedExchange) -> dict[str, Any]:
    """What the venue holds at the end: comparable between an uncrashed and a crashed run (leg
    codes without their generation: a restart may legitimately skip a generation, N-13)."""
    filled = sorted(
        (o.client_id.split("-")[1][:2], o.side, o.type, o.price, o.executed, o.status)
        for o in ex.orders.values()
        if o.executed > 0
    )
    return {
        "positions": {k: p.amount for k, p in ex.positions.items() if p.amount != 0},
        "open": _open(ex),
        "filled": filled,
        "wallet": ex.wallet,
    }


def invariants(ex: CheckedExchange) -> list[str]:
    problems = []
    cids = [o.client_id for o in ex.orders.values()] + [a.client_algo_id for a in ex.algos.values()]
    problems += [f"client id {c} used twice" for c in sorted(set(cids)) if cids.count(c) > 1]
    problems += [f"{cid}: {qty} above the position {size}" for cid, qty, size in ex.closing if qty > size]
    if _short(ex) == 0 and _open(ex):
        problems.append(f"flat with exit orders left: {_open(ex)}")
    return problems


async def _run(
    director: Director,
    feed: list[tuple[int, int, int, str]],
    home: Path,
    kill_plan: Callable[[Daemon], Any] | None,
    setup: Callable[[Venue], None] | None = None,
    binance: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], Daemon]:
    async with Venue(director) as venue:
        if setup is not None:
            setup(venue)
        daemon = Daemon(venue, home, feed, binance=binance or {})
        await daemon.start()
        try:
            if kill_plan is not None:
                await kill_plan(daemon)
            await daemon.wait_for("flat at the end", daemon.idle)
            await daemon.stop()
        finally:
            if daemon.proc is not None and daemon.proc.returncode is None:
                daemon.proc.kill()
                await daemon.proc.wait()
        assert invariants(venue.exchange) == []
        return final_state(venue.exchange), daemon


async def _both(
    director: Director,
    feed: list[tuple[int, int, int, str]],
    tmp: Path,
    kill_plan: Callable[[Daemon], Any],
    setup: Callable[[Venue], None] | None = None,
    binance: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, Any], Daemon]:
    """The uncrashed run and the crashed run side by side (two venues, two databases)."""
    (reference, _), (crashed, daemon) = await asyncio.gather(
        _run(director, feed, tmp / "reference", None, setup, binance),
        _run(director, feed, tmp / "crashed", kill_plan, setup, binance),
    )
    return reference, crashed, daemon


def _go(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


# ---------------------------------------------------------------------------------------------
# The flows
# ---------------------------------------------------------------------------------------------


@pytest.mark.spec("W55", "N-28")
def test_kill9_through_w55_converges_to_the_uncrashed_run(tmp_path: Path) -> None:
    async def plan(d: Daemon) -> None:
        await d.kill_when("recovery journaled", d.journaled(1))
        await d.kill_when("entry order on the venue", d.accepted("E1"))
        await d.kill_when("entry filled", d.filled("E1"))
        # The TP fills while no daemon runs: the next one finds the venue flat, nothing to undo.
        await d.kill_when("TP order on the venue", d.accepted("TP"), hold=False)

    reference, crashed, daemon = _go(_both(w55_director, [LEADING], tmp_path, plan))
    assert daemon.kills == [
        "recovery journaled",
        "entry order on the venue",
        "entry filled",
        "TP order on the venue",
    ]
    assert crashed == reference
    assert reference["filled"] == [
        ("E1", "SELL", "LIMIT", Decimal("3535.00"), Decimal("1.414"), "FILLED"),
        ("TP", "BUY", "LIMIT", Decimal("3358.25"), Decimal("1.414"), "FILLED"),
    ]
    assert reference["positions"] == {} and reference["open"] == []
    # The leading message was consumed once: its cursor kept every restart from replaying it.
    assert daemon.rows("SELECT chat_id, message_id FROM cursors") == [(kit.ENTRY_CHAT, 1001)]


@pytest.mark.spec("W56", "N-28")
def test_kill9_through_w56_converges_to_the_uncrashed_run(tmp_path: Path) -> None:
    async def plan(d: Daemon) -> None:
        # The entry fills while no daemon runs: only the snapshot says the short is ours (D-17).
        await d.kill_when("entry order on the venue", d.accepted("E1"), hold=False)
        await d.kill_when("second entry on the venue", d.accepted("E2"))
        await d.kill_when("second entry filled", d.filled("E2"))
        await d.kill_when("breakeven order on the venue", d.accepted("BE"))
        await d.kill_when("breakeven filled", d.filled("BE"))  # the MDD stop may still be open

    reference, crashed, daemon = _go(_both(w56_director, [LEADING], tmp_path, plan))
    assert len(daemon.kills) == 5
    assert crashed == reference
    assert [row[:3] for row in reference["filled"]] == [
        ("BE", "BUY", "LIMIT"),
        ("E1", "SELL", "LIMIT"),
        ("E2", "SELL", "LIMIT"),
    ]
    assert reference["positions"] == {} and reference["open"] == []
    # PHASE2 had its MDD stop (cancelled by the breakeven fill, OCO) in both runs.
    assert [a.status for a in daemon.venue.exchange.algos.values()] == ["CANCELED"]


@pytest.mark.spec("W57", "N-28", "N-05")
def test_kill9_through_w57_re_runs_the_loss_cut_after_restart(tmp_path: Path) -> None:
    """The last kill falls while the risk message's cancel is on the wire (the venue holds the
    answer): its cursor is stored, the market close was never sent. The restarted daemon re-runs
    the journaled risk message once recovery is over (D-18) and the loss is cut."""

    def hang_the_first_cancel(venue: Venue) -> None:
        venue.server.faults.add(RestFault("DELETE", "/fapi/v1/order", "hang", hang_s=30.0))

    def cancel_on_the_wire(d: Daemon) -> Callable[[], bool]:
        return lambda: ("DELETE", "/fapi/v1/order") in d.venue.server.requests

    async def plan(d: Daemon) -> None:
        d.venue.exchange.set_fill_policy("sf1001-E11-ETHUSDT", (Decimal("0.500"),))
        await d.kill_when("entry order on the venue", d.accepted("E1"))
        await d.kill_when("entry part-filled", d.filled("E1"))
        await d.kill_when("risk message cancel in flight", cancel_on_the_wire(d))

    async def reference_run(tmp: Path) -> tuple[dict[str, Any], dict[str, Any], Daemon]:
        async def partial(d: Daemon) -> None:
            d.venue.exchange.set_fill_policy("sf1001-E11-ETHUSDT", (Decimal("0.500"),))

        (reference, _), (crashed, daemon) = await asyncio.gather(
            _run(w57_director, [LEADING, RISK], tmp / "reference", partial),
            _run(w57_director, [LEADING, RISK], tmp / "crashed", plan, hang_the_first_cancel),
        )
        return reference, crashed, daemon

    reference, crashed, daemon = _go(reference_run(tmp_path))
    assert daemon.kills == ["entry order on the venue", "entry part-filled", "risk message cancel in flight"]
    assert crashed == reference
    assert reference["filled"] == [
        ("CL", "BUY", "MARKET", ZERO, Decimal("0.500"), "FILLED"),
        ("E1", "SELL", "LIMIT", Decimal("3535.00"), Decimal("0.500"), "CANCELED"),
    ]
    journal = [
        json.loads(p) for (p,) in daemon.rows("SELECT payload FROM journal WHERE type = 'MessageReceived'")
    ]
    risk = [(m["message_id"], m["rerun"]) for m in journal if m["chat_id"] == kit.RISK_CHAT]
    assert risk == [(5001, False), (5001, True)]  # consumed once, re-run once after the restart
    assert sorted(daemon.rows("SELECT chat_id, message_id FROM cursors")) == [
        (kit.RISK_CHAT, 5001),
        (kit.ENTRY_CHAT, 1001),
    ]


# ---------------------------------------------------------------------------------------------
# What recovery reads from the database (no process needed)
# ---------------------------------------------------------------------------------------------


def _risk(message_id: int, now_ms: int = 5_000) -> ev.MessageReceived:
    return ev.MessageReceived(
        now_ms=now_ms,
        chat_id=kit.RISK_CHAT,
        message_id=message_id,
        telegram_date_ms=now_ms - 100,
        parsed=ev.RiskSignal(raw_token="ETHUSDT.P", symbol=SYMBOL),
        symbol_info=ev.SymbolInfo(
            symbol=SYMBOL,
            status="TRADING",
            tick_size=Decimal("0.01"),
            step_size=Decimal("0.001"),
            min_qty=Decimal("0.001"),
            market_min_qty=None,
        ),
    )


@pytest.mark.spec("N-28")
def test_snapshots_record_the_journal_seq_they_cover_and_risk_messages_after_it_come_back(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        store = await Store.open(tmp_path / "j.db")
        assert await store.snapshot_coverage() == 0  # no snapshot: nothing is covered
        store.journal(ev.Tick(now_ms=1), "")
        store.journal(_risk(5001), "")
        assert store.journal_seq == 2
        store.covered_seq = 1  # the risk message's commands are not all carried out
        await store.save_snapshot(10, {"n": 1})
        store.journal(_risk(5002), "")
        store.journal(_risk(5001), "")  # a duplicate delivery: the first journaling counts
        store.journal(_risk(5003), "")  # above the stored cursor: the backfill's job, not a re-run
        assert await store.snapshot_coverage() == 1
        again = await store.risk_messages_after(1, kit.RISK_CHAT, 5002)
        assert [(m.message_id, m.rerun) for m in again] == [(5001, False), (5002, False)]
        assert again[0] == _risk(5001)  # decoded exactly, Decimals and all
        assert await store.risk_messages_after(1, kit.ENTRY_CHAT, 9999) == []
        store.covered_seq = None  # default: everything journaled so far
        await store.save_snapshot(11, {"n": 2})
        assert await store.snapshot_coverage() == 5
        await store.close()
        reopened = await Store.open(tmp_path / "j.db")
        assert reopened.journal_seq == 5  # numbering continues after a restart
        await reopened.close()

    kit.run(scenario())


def test_a_journal_row_that_does_not_decode_is_not_re_run() -> None:
    assert risk_message_from_journal("{not json") is None
    assert risk_message_from_journal(json.dumps({"parsed": {"type": "RiskSignal"}})) is None
    leading = {"parsed": {"type": "LeadingMarket"}, "chat_id": 1, "message_id": 2}
    assert risk_message_from_journal(json.dumps(leading)) is None


@pytest.mark.spec("W56")
def test_a_second_entry_fill_on_record_corrects_a_phase1_hint() -> None:
    orders = [
        (SYMBOL, "sf1001-E11-ETHUSDT", True),
        (SYMBOL, "sf1001-TP1-ETHUSDT", False),
        (SYMBOL, "sf1001-E21-ETHUSDT", True),
        ("BTCUSDT", "sf900-E21-BTCUSDT", True),  # an older signal of another symbol
        (SYMBOL, "manual-1", True),
    ]
    managed = ((SYMBOL, 1001, "PHASE1"), ("BTCUSDT", 901, "PHASE1"), ("XRPUSDT", 7, "EXITING"))
    assert corrected_hints(managed, orders) == (
        (SYMBOL, 1001, "PHASE2"),
        ("BTCUSDT", 901, "PHASE1"),
        ("XRPUSDT", 7, "EXITING"),
    )


@pytest.mark.spec("N-13")
def test_generations_on_record_are_never_reused_after_a_restart() -> None:
    orders = [
        (SYMBOL, "sf1001-CL1-ETHUSDT", True),
        (SYMBOL, "sf1001-BE2-ETHUSDT", False),
        (SYMBOL, "sf900-CL5-ETHUSDT", True),  # an older signal: its ids cannot collide
    ]
    saved = ((SYMBOL, "BE", 1), (SYMBOL, "ENTRY1", 1))
    managed = ((SYMBOL, 1001, "PHASE2"),)
    assert merged_generations(saved, managed, orders) == (
        (SYMBOL, "BE", 2),
        (SYMBOL, "CLOSE", 1),
        (SYMBOL, "ENTRY1", 1),
    )
