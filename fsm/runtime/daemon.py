"""The daemon: one asyncio process hosting the engine (``shortfsm run``).

Theory of operation
-------------------
Every source produces fsm events onto ONE ``asyncio.Queue``: the message source (JSONL replay or
Telegram, started only when the engine says ``ResumeTelegram``), the ``/market`` stream (mark
prices of the watched symbols plus the heartbeat symbol, D-05), the ``/private`` user stream, the
REST premiumIndex poller (only while the engine asks for the REST source) and the ticker (a Tick
every second, placed just after the mark-price pushes, plus wake-ups at the engine's next
deadline). A single consumer task takes one event at a time: it journals it, calls
``engine.handle``, writes the channel cursor to disk FIRST and awaits it (N-05), records the audit
rows, then carries the commands out in order. Venue commands go through ``binance.executor``; their
outcome events are handled next, before anything else in the queue, as the scenario runner does.

Startup is recovery (N-28): the engine starts locked (``recovering=True``); the first event is
``RecoveryStarted`` with the cursors and cooldowns saved in the database; the engine asks for an
exchange snapshot, rebuilds, needs a price, and says ``ResumeTelegram``; only then does the message
source start, backfilling from the saved cursors. Just before it, the risk messages journaled after
the journal seq the last snapshot covers (their cursor is stored, their loss-cut may not have gone
out) are handled again, marked ``rerun`` (specs/DECISIONS.md D-18).

Stopping (SIGTERM/SIGINT or ``request_stop``): intake stops, the event being handled finishes with
its requests, outcomes already received are applied (no new venue command is sent), a snapshot is
saved, and orders on the exchange stay where they are (they do not protect a PHASE1 position: by
R13 it has no exchange-side stop; see the README).

One daemon per database: ``run_daemon`` holds ``<database>.lock`` (``fcntl.flock``) for the
process's life. Operator commands (``pause``, ``resume``, ``flatten``) arrive as request rows with
an id; the status step applies them and writes an acknowledgement (``fsm.runtime.liveness``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from binance import parse
from binance.account_reads import AccountReads
from binance.errors import BinanceError, UnknownOutcome
from binance.executor import RESOLVE_MARGIN_MS, Executor
from binance.parse import AccountPush, KlineUpdate, ListenKeyExpired
from binance.reconcile import FundingRead, Tracked, gap_read_back, missed_funding, missed_updates
from binance.rest import BinanceRest, host_of
from binance.streams import KEEPALIVE_S, MarketStream, PremiumIndexPoller, UserStream
from fsm import commands as cmd
from fsm import events as ev
from fsm import rules
from fsm.engine import INTERRUPTED_FLATTEN, Engine, decode_strategy, protected_symbols, recovery_facts
from fsm.journal import render_all
from fsm.model import OrderTrack, SymbolModel, decode
from fsm.runtime import heartbeat
from fsm.runtime.alerts import Alert, Alerts
from fsm.runtime.config import (
    AppConfig,
    ConfigError,
    Secrets,
    file_signature,
    load_config,
    restart_changes,
    settings_changes,
    strategy_changes,
)
from fsm.runtime.feeds import (
    LiveCursors,
    MessageSource,
    PricePath,
    ReplaySource,
    TelegramSource,
    TelegramUnavailable,
    describe_error,
)
from fsm.runtime.keys import can_withdraw, spot_api_url
from fsm.runtime.liveness import HEARTBEAT_KEY, DaemonRunning, DatabaseLock, sd_notify, watchdog_interval_s
from fsm.runtime.logs import DecisionLog
from fsm.runtime.store import CONTROL_KEY, Store, StoreError
from telegram_ingest.adapter import RawMessage
from telegram_ingest.grammar import parse_message

log = logging.getLogger(__name__)

KLINE_COUNT = 200
CURSOR_WAIT_S = 0.5  # wall seconds a message's cursor write may hold up its decision (N-05)
USER_STREAM_WAIT_MS = 5000  # how long recovery waits for the user stream before reading the venue
KLINE_MS = 180_000
QUIET_EVENTS = (ev.Tick, ev.MarkPriceTick, ev.VenueCallSucceeded)  # never the board's "last event"
# A setup's end (its answer came, the order goes out) is not saved before that order: recovery
# rebuilds an entry in flight from the venue, as before D-70 made the setup a machine (D-72).
IN_FLIGHT_MACHINES = frozenset({"setup"})
# Events that move the wallet, or come with a move that may be pushed late or lost (D-72).
ACCOUNT_MOVES = (ev.BalanceChanged, ev.PositionChanged, ev.FundingFee, ev.OrderUpdated, ev.AlgoOrderUpdated)
CHECKPOINT_EVERY_MS = 3_600_000  # the engine's snapshot in the journal: where a replay can start
JOURNAL_KEEP_MS = 7 * 86_400_000  # journal rows kept (a replay needs a checkpoint at or before)
ORDER_WATCH_MS = 15_000  # venue time between two read-backs of our open orders (_watch_orders)
BALANCE_READ_DELAY_MS = 500  # after an ACCOUNT_UPDATE: its fill's other pushes come first (_read_balance)
OUTAGE_ALERT_MS = 10_000  # a Binance stream down this long (venue time) is alerted, naming its host
# Wall seconds a flatten waits for the engine to read FlattenStarted (then goes on regardless): the
# engine can be held by one REST call of its own, which times out after 10 s.
FLATTEN_WAIT_S = 12.0
# Funding the stream may have missed: read from the income history after a restart and after a
# user-stream gap, from where the last complete read ended (the first time: the last run's last
# event), less a margin; Binance keeps three months of it. A settlement booked twice is recognised
# (Store.book_funding).
FUNDING_MARGIN_MS = 3_600_000
FUNDING_GAP_DAY_MS = 24 * 3_600_000  # read again when the mark cannot be trusted
FUNDING_HISTORY_MS = 90 * 24 * 3_600_000
FUNDING_RETRY_FIRST_MS = 60_000  # a failed read of it is tried again after a minute ...
FUNDING_RETRY_MAX_MS = 600_000  # ... doubling up to every 10 minutes, until it goes through
OUTCOME_EVENTS = (
    ev.OrderAccepted,
    ev.AlgoOrderAccepted,
    ev.OrderRejected,
    ev.CancelResult,
    ev.OrderUpdated,
    ev.AlgoOrderUpdated,
    ev.FundingFee,
)


Observer = Callable[[ev.Event, list[cmd.Command]], None]  # sees every handled event (demo, tests)


def _utc(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ms / 1000))


def saved_generations(snapshot: dict[str, Any] | None) -> tuple[tuple[str, str, int], ...]:
    """(symbol, leg, last generation) of every symbol in a saved snapshot (N-13: no id reused)."""
    if not snapshot:
        return ()
    try:
        found: list[tuple[str, str, int]] = []
        for symbol, raw in snapshot["symbols"].items():
            model = decode(raw)
            found.extend((symbol, str(leg), int(gen)) for leg, gen in model.generations.items())
        return tuple(sorted(found))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        log.warning("saved snapshot unreadable: %r", exc)
        return ()


def _describe_missed(event: ev.Event) -> str:
    if isinstance(event, ev.OrderUpdated):
        text = f"{event.client_order_id} {event.status}, {event.cum_qty} of {event.orig_qty}"
        if event.last_qty:
            text += f", filled {event.last_qty} @ {event.last_price} (trade {event.trade_id})"
        return text
    if isinstance(event, ev.AlgoOrderUpdated):
        child = f", order {event.actual_order_id}" if event.actual_order_id else ""
        return f"{event.client_algo_id} {event.status}{child}"
    return type(event).__name__


def managed_symbols(snapshot: dict[str, Any] | None) -> tuple[tuple[str, int, str], ...]:
    """(symbol, signal message id, state) of the symbols a saved engine snapshot was managing:
    recovery's hint for positions that have none of our orders open (specs/DECISIONS.md D-17)."""
    if not snapshot:
        return ()
    try:
        symbols = snapshot["symbols"]
        found = []
        for symbol, raw in symbols.items():
            model = decode(raw)
            if getattr(model, "state", "IDLE") != "IDLE":
                found.append((symbol, int(model.message_id), str(model.state)))
        return tuple(sorted(found))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        log.warning("saved snapshot unreadable, recovering from the exchange alone: %r", exc)
        return ()


def saved_intents(
    snapshot: dict[str, Any] | None,
) -> tuple[tuple[tuple[str, str], ...], tuple[tuple[str, Decimal], ...], tuple[str, ...]]:
    """The market closes a saved snapshot had decided, the positions it held and the symbols R06
    protected (issue #11: a restart carries a decided close out, sees a scale-in that filled while
    nothing ran, and never re-arms a scale-in the channel's risk message ruled out)."""
    if not snapshot:
        return (), (), ()
    try:
        models = {symbol: decode(raw) for symbol, raw in snapshot["symbols"].items()}
        closing, held = recovery_facts(models)
        return closing, held, protected_symbols(models)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        log.warning("saved snapshot unreadable: %r", exc)
        return (), (), ()


def corrected_hints(
    managed: tuple[tuple[str, int, str], ...], orders: list[tuple[str, str, bool]]
) -> tuple[tuple[str, int, str], ...]:
    """A PHASE1 (or ENTRY_ORDER) hint whose signal has a second-entry fill is PHASE2 (N-17): the
    fill's rows reach the database before the snapshot of its transition (kill -9 in between)."""
    second = {
        (symbol, parsed.message_id)
        for symbol, cid, filled in orders
        if filled and (parsed := rules.parse_client_order_id(cid)) is not None and parsed.leg == "ENTRY2"
    }
    return tuple(
        (symbol, message_id, "PHASE2" if (symbol, message_id) in second and state != "EXITING" else state)
        for symbol, message_id, state in managed
    )


def merged_generations(
    saved: tuple[tuple[str, str, int], ...],
    managed: tuple[tuple[str, int, str], ...],
    orders: list[tuple[str, str, bool]],
) -> tuple[tuple[str, str, int], ...]:
    """The snapshot's generations raised by the order rows of each managed signal (N-13: a client
    id that reached the venue is never reused, even when the snapshot after it was not saved)."""
    signal = {symbol: message_id for symbol, message_id, _ in managed}
    merged = {(symbol, leg): gen for symbol, leg, gen in saved}
    for symbol, cid, _ in orders:
        parsed = rules.parse_client_order_id(cid)
        if parsed is None or signal.get(symbol) != parsed.message_id:
            continue
        key = (symbol, parsed.leg)
        merged[key] = max(merged.get(key, 0), parsed.generation)
    return tuple(sorted((symbol, leg, gen) for (symbol, leg), gen in merged.items()))


DEMO_MARKER = "meta.demo"


class StartupRefused(RuntimeError):
    """The daemon must not start (mainnet without opt-in, missing keys, ...); the message says why."""


# ---------------------------------------------------------------------------------------------
# Clock
# ---------------------------------------------------------------------------------------------


class RunClock:
    """Epoch milliseconds for the whole process; ``speed`` > 1 compresses time (sim and demo).

    ``set_manual`` freezes it at a given time (used to write a price history before the run);
    ``start`` lets it run from ``origin_ms`` at ``speed`` x wall time.
    """

    def __init__(
        self,
        *,
        speed: float = 1.0,
        origin_ms: int | None = None,
        max_gap_s: float | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.speed = speed
        self._monotonic = monotonic
        self._origin = origin_ms if origin_ms is not None else int(time.time() * 1000)
        self._mono0 = monotonic()
        self._manual: int | None = None
        # A test harness that reads the clock every few milliseconds may set ``max_gap_s``: a gap
        # between two readings longer than that is the host stalling the process (a loaded CI
        # machine), and only ``max_gap_s`` of it counts. On a compressed clock a 400 ms stall is
        # otherwise ten venue seconds in which nothing could run: a price "stale" for no reason.
        self.max_gap_s = max_gap_s
        self.stalled_s = 0.0  # wall time not counted
        self._read_at = self._mono0
        self._lock = threading.Lock()

    def now_ms(self) -> int:
        if self._manual is not None:
            return self._manual
        if self.max_gap_s is None:
            return self._origin + int((self._monotonic() - self._mono0) * 1000 * self.speed)
        with self._lock:
            mono = max(self._monotonic(), self._read_at)
            gap = mono - self._read_at
            if gap > self.max_gap_s:
                self.stalled_s += gap - self.max_gap_s
            self._read_at = mono
            return self._origin + int((mono - self._mono0 - self.stalled_s) * 1000 * self.speed)

    def set_manual(self, now_ms: int) -> None:
        self._manual = now_ms

    def start(self, origin_ms: int) -> None:
        self._manual = None
        self._origin = origin_ms
        self._mono0 = self._read_at = self._monotonic()
        self.stalled_s = 0.0

    def wall_s(self, ms: float) -> float:
        return max(0.0, ms / 1000 / self.speed)

    async def sleep_until(self, target_ms: int, wake: asyncio.Event | None = None) -> None:
        """Sleep until the clock reads ``target_ms`` (or ``wake`` is set)."""
        while True:
            delay = self.wall_s(target_ms - self.now_ms())
            if delay <= 0:
                return
            if wake is None:
                await asyncio.sleep(delay)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), delay)
            if wake.is_set():
                return


# ---------------------------------------------------------------------------------------------
# Endpoints and the in-process simulated venue
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Endpoints:
    rest_url: str
    market_ws_url: str
    private_ws_url: str
    api_key: str
    api_secret: str
    recv_window_ms: int = 5000

    def __repr__(self) -> str:  # never print the credentials
        return f"Endpoints(rest_url={self.rest_url!r}, market_ws_url={self.market_ws_url!r})"


# ---------------------------------------------------------------------------------------------
# The daemon
# ---------------------------------------------------------------------------------------------


class Daemon:
    """Sources -> one queue -> engine -> executor; see the module docstring."""

    def __init__(
        self,
        *,
        config: AppConfig,
        profile: str,
        clock: RunClock,
        store: Store,
        endpoints: Endpoints,
        source: MessageSource | None,
        decision_log: DecisionLog | None = None,
        alerts: Alerts | None = None,
        heartbeat_path: str | Path | None = None,
        stop_when: Callable[[Daemon], bool] | None = None,
        observer: Observer | None = None,
        engine: Engine | None = None,
    ) -> None:
        self.config = config
        self.profile = profile
        self.clock = clock
        self.store = store
        self.source = source
        self.decision_log = decision_log or DecisionLog(None)
        self.alerts = alerts or Alerts(store=store)
        self.alerts.on_submit = self._log_alert
        self.heartbeat_path = Path(heartbeat_path) if heartbeat_path else None
        self.stop_when = stop_when
        self.observer = observer
        strategy = config.to_strategy()
        self.chats = (strategy.entry_chat_id, strategy.risk_chat_id)
        self.heartbeat_symbol = config.binance.price_heartbeat_symbol.upper()
        self.urls = {
            "rest": endpoints.rest_url,
            "market_ws": endpoints.market_ws_url,
            "private_ws": endpoints.private_ws_url,
        }
        self.started_ms = int(time.time() * 1000)  # wall time, for the operator
        self.engine = engine or Engine(strategy, recovering=True)  # a given one: the bench's timed engine
        self.queue: asyncio.Queue[ev.Event] = asyncio.Queue()
        self._front: deque[ev.Event] = deque()
        self.rest = BinanceRest(
            api_key=endpoints.api_key,
            api_secret=endpoints.api_secret,
            base_url=endpoints.rest_url,
            recv_window_ms=endpoints.recv_window_ms,
            clock_ms=clock.now_ms,
            timeout_s=10.0,
            wall_s=clock.wall_s,
        )
        self.account_reads = AccountReads(
            self.rest,
            max_age_ms=config.binance.account_read_max_age_seconds * 1000,
            stream_epoch=lambda: self.user.connections if self.user.connected else None,
        )
        self._account_wake = asyncio.Event()
        self._new_monitoring = False  # a symbol started monitoring since the last read ahead began
        self.executor = Executor(self.rest, reads=self.account_reads)
        self.market = MarketStream(endpoints.market_ws_url, self._on_stream_item, clock_ms=clock.now_ms)
        self.user = UserStream(
            self.rest,
            endpoints.private_ws_url,
            self._on_stream_item,
            self._reconcile,
            clock_ms=clock.now_ms,
            keepalive_s=KEEPALIVE_S / clock.speed,
        )
        self.poller = PremiumIndexPoller(
            self.rest, self.enqueue, clock_ms=clock.now_ms, interval_s=clock.wall_s(1000)
        )
        self.market.on_crash = self.user.on_crash = self.poller.on_crash = self._stream_crashed
        self.streams = {"market": "down", "user": "down", "telegram": "down"}
        # Binance connections for the operator: host (never a URL), since when down, and why.
        self.connections: dict[str, dict[str, Any]] = {
            "market": {"host": host_of(endpoints.market_ws_url), "down_since_ms": None, "problem": None},
            "user": {"host": host_of(endpoints.private_ws_url), "down_since_ms": None, "problem": None},
        }
        self._outage_alerted: set[str] = set()
        self.last_event: dict[str, Any] | None = None
        self.handled = 0
        self.errors = 0
        self.exit_code = 0
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._balance_read: asyncio.Task[None] | None = None
        self._balance_updates = 0  # ACCOUNT_UPDATE balance pushes seen (a read started before one is stale)
        self._source_task: asyncio.Task[None] | None = None
        self._mark_phase_ms = 0
        self._snapshot_dirty = True
        self._checkpoint_due_ms = 0  # 0: this run's first checkpoint (run_start) is still to write
        self._infos: dict[str, ev.SymbolInfo] = {}
        self._infos_at_ms = -math.inf
        self._pending_acks: list[tuple[dict[str, Any], bool]] = []  # (request, paused wanted)
        self._notified_ready = False
        self._pause_queued: bool | None = None  # the PauseRequested on its way to the engine
        self._flattening: set[str] = set()  # flatten requests being carried out (not applied twice)
        self._flatten_lock = asyncio.Lock()
        self._flatten_seen = asyncio.Event()  # the engine has handled the last FlattenStarted
        self._side_tasks: set[asyncio.Task[None]] = set()
        self._watchdog_s = watchdog_interval_s()
        self._watchdog_at = 0.0
        self.stopped_reason = ""
        self.config_watch: ConfigWatch | None = None  # set by ``watch_config``
        self._restart_settings: tuple[tuple[str, str], ...] = ()  # D-23: config.yaml vs the snapshot
        self._running_settings: tuple[tuple[str, str], ...] = ()  # D-23: the snapshot vs config.yaml
        # D-18: the risk messages recovery re-runs, and the journal seq snapshots may claim to cover.
        self._reruns: list[ev.MessageReceived] = []
        self._last_run_ms: int | None = None  # when the previous run handled its last event
        self._funding_task: asyncio.Task[None] | None = None
        self._funding_again = False
        self._reruns_pending = 0
        self._rerun_floor: int | None = None
        store.covered_seq = store.journal_seq
        self.db_health = DatabaseHealth()

    # -- lifecycle ---------------------------------------------------------------------------

    def request_stop(self, reason: str = "requested") -> None:
        if not self._stopping.is_set():
            log.info("stopping: %s", reason)
            self.stopped_reason = reason
            self._stopping.set()
            self._wake.set()

    async def run(self) -> int:
        """Run until ``request_stop``; returns the process exit code."""
        recovery = await self._recovery_inputs()
        control = await self._read_control()
        await self._discard_stale_requests(recovery)
        now = self.clock.now_ms()
        # Queued first: every push of the user stream opened next comes after it.
        self.enqueue_nowait(replace(recovery, now_ms=now))
        if control.get("paused"):
            self._explain_pause(control, now)
            self._pause_queued = True
            self.enqueue_nowait(ev.PauseRequested(now_ms=now, paused=True))
        if self._restart_settings:
            self.enqueue_nowait(ev.SettingsChangeRequested(now_ms=now, changes=self._restart_settings))
        user_task = asyncio.create_task(self.user.run(), name="user-stream")
        await self._user_stream_first()
        await self.market.subscribe([self.heartbeat_symbol])
        self.poller.set_symbols(self.market.symbols)
        self.alerts.start()
        consumer = asyncio.create_task(self._consume(), name="consumer")
        self._tasks = [
            asyncio.create_task(self.market.run(), name="market-stream"),
            user_task,
            asyncio.create_task(self.poller.run(), name="premium-poller"),
            asyncio.create_task(self._ticker(), name="ticker"),
            asyncio.create_task(self._status_loop(), name="status"),
            asyncio.create_task(self._watch_orders(), name="order-watch"),
            asyncio.create_task(self._read_account_ahead(), name="account-reads"),
        ]
        await self._stopping.wait()
        # 1) intake stops
        if self.source is not None:
            self.source.stop()
        self.market.stop()
        self.user.stop()
        self.poller.stop()
        # 2) the consumer finishes the event in hand (and its requests), then returns
        self.queue.put_nowait(_STOP)
        with contextlib.suppress(asyncio.CancelledError):
            await consumer
        extra = [t for t in (self._source_task, self._balance_read, *self._side_tasks) if t is not None]
        for task in [*self._tasks, *extra]:
            task.cancel()
        await asyncio.gather(*self._tasks, *extra, return_exceptions=True)
        # 3) persist
        now = self.clock.now_ms()
        self.store.save_snapshot(now, self.engine.snapshot())
        self._write_status(now)
        await self.alerts.stop()
        await self.rest.aclose()
        self.decision_log.close()
        if self._notified_ready:
            sd_notify("STOPPING=1")
        log.info("stopped (%s) after %d events", self.stopped_reason, self.handled)
        return self.exit_code

    async def _user_stream_first(self) -> None:
        """N-28 step 3 reads the venue by REST; the user stream is opened first, so that a fill
        landing after that read arrives as a push. If it is not up in time, recovery goes on and
        its first connection re-reads the positions (as after any gap)."""
        opened = asyncio.create_task(self.user.opened.wait())
        stopping = asyncio.create_task(self._stopping.wait())
        wait_s = self.clock.wall_s(USER_STREAM_WAIT_MS)
        done, _ = await asyncio.wait({opened, stopping}, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
        for task in (opened, stopping):
            task.cancel()
        if not done:
            self.user.reconcile_first = True
            log.warning(
                "user stream not open after %.1f s: recovery reads the venue without it; "
                "positions are re-read when it connects",
                wait_s,
            )

    # -- recovery inputs and the re-run of risk messages (N-28, D-17, D-18) ---------------------

    async def _recovery_inputs(self) -> ev.RecoveryStarted:
        """N-28 step 2 from storage: cursors, cooldowns, the last snapshot's managed symbols and
        generations (D-17) checked against the orders and fills tables, which are written before
        the snapshot that follows the same event; and the risk messages to re-run (D-18)."""
        store = self.store
        self._last_run_ms = await store.last_journal_ms()
        cursors = await store.cursors()
        cooldowns = await store.cooldowns()
        saved = await store.latest_snapshot()
        orders = await store.our_orders()
        covered = await store.snapshot_coverage()
        risk_chat = self.chats[1]
        self._reruns = await store.risk_messages_after(covered, risk_chat, cursors.get(risk_chat, 0))
        if self._reruns:
            self._rerun_floor = covered
            store.covered_seq = covered
            log.warning(
                "recovery: risk message(s) %s journaled after the last snapshot (seq %d) are re-run "
                "once recovery is over (D-18)",
                [m.message_id for m in self._reruns],
                covered,
            )
        managed = managed_symbols(saved)
        if managed:
            self._keep_running_strategy(saved, managed)
        closing, held, protected = saved_intents(saved)
        return ev.RecoveryStarted(
            closing=closing,
            held=held,
            protected=protected,
            now_ms=0,
            cursors=tuple(sorted(cursors.items())),
            cooldowns=tuple(sorted(cooldowns.items())),
            managed=corrected_hints(managed, orders),
            generations=merged_generations(saved_generations(saved), managed, orders),
            running_settings=self._running_settings,
        )

    def _keep_running_strategy(
        self, saved: dict[str, Any] | None, managed: tuple[tuple[str, int, str], ...]
    ) -> None:
        """G06 across a restart (D-23): the last run was trading, so it goes on with the settings it
        traded with; a config.yaml that differs is a change requested now, which the settings lock
        refuses and keeps until no symbol is active."""
        try:
            running = decode_strategy(saved["strategy"]) if saved else None
        except (KeyError, TypeError, ValueError, InvalidOperation) as exc:
            log.warning("saved strategy unreadable, starting with config.yaml's: %r", exc)
            return
        if running is None:
            return
        wanted = self.engine.strategy
        running = replace(running, entry_chat_id=wanted.entry_chat_id, risk_chat_id=wanted.risk_chat_id)
        changes = strategy_changes(running, wanted)
        if not changes:
            return
        self._running_settings = strategy_changes(wanted, running)
        self._restart_settings = changes
        log.warning(
            "config.yaml changes %s while the last run was trading %s: the running values are kept "
            "until no symbol is active (G06, D-23)",
            ", ".join(f"{k}={v}" for k, v in changes),
            ", ".join(symbol for symbol, _, _ in managed),
        )

    async def _book_history(self, snapshot: ev.ExchangeSnapshot) -> None:
        """What happened while no daemon ran to our orders that are no longer open (a TP filled, an
        entry part-filled then cancelled): their fills are booked from the venue's history with
        the trade ids a push would have carried, and the operator is told. Store only: the engine
        has already rebuilt itself from the exchange (N-28), so these must not move it again."""
        open_now = {o.client_order_id for o in snapshot.open_orders}
        tracked = [
            Tracked(symbol, cid, is_algo, filled, status)
            for symbol, cid, is_algo, filled, status in await self.store.unfinished_orders()
            if cid not in open_now
        ]
        if not tracked:
            return
        now = self.clock.now_ms()
        for event in await missed_updates(self.rest, tracked, now):
            self.store.record_outcome(event)
            text = f"while shortfsm was down: {_describe_missed(event)}"
            if isinstance(event, ev.OrderUpdated) and event.last_qty:
                text += f", realised {event.realized_pnl} USDT, fee {event.commission} USDT"
            log.warning("recovery: %s", text)
            symbol = getattr(event, "symbol", None)
            self.alerts.submit(Alert(now_ms=now, kind="recovery", text=text, symbol=symbol))

    def _start_funding_read(self, *, down: bool) -> None:
        """One read of the income history at a time; a reason for another while one runs (a
        reconnection) makes it read once more when it is done."""
        if self._funding_task is not None and not self._funding_task.done():
            self._funding_again = True
            return
        task = asyncio.create_task(self._read_funding(down=down), name="funding-read")
        self._funding_task = task
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    async def _read_funding(self, *, down: bool) -> None:
        """Funding settled while no daemon ran (``down``) or while the user stream was away, read
        from the income history from where the last complete read ended (``Store.funding_cursor``;
        before the first one, the previous run's last event) and booked unless the push booked it
        already (``Store.book_funding``). Store only, like ``_book_history``: funding moves no
        decision. Times are the venue's (the host clock may be wrong: a VM before NTP). A read that
        fails, the venue's or the database's, is told once and tried again, sooner first, until it
        goes through; the mark moves only after a complete read, so a restart reads again from it."""
        attempt, told_skips = 0, False
        while not self._stopping.is_set():
            now = self.clock.now_ms()
            venue_now = self.rest.server_now_ms()
            try:
                since = await self._funding_since(venue_now)
                read = await missed_funding(self.rest, since, venue_now, now)
                self._tell_funding(await self.store.book_funding(read.events), now, down=down)
                if read.complete:
                    # The last hour is read again next time: a settlement may reach the history late.
                    await self.store.set_funding_cursor(max(since, venue_now - FUNDING_MARGIN_MS))
            except (sqlite3.Error, StoreError) as exc:
                read = FundingRead(events=[], complete=False, error=f"database: {exc}")
            if read.skipped and not told_skips:  # told once per reason to read, not per retry
                told_skips = True
                text = (
                    f"{read.skipped} funding row(s) from Binance could not be read, not booked (see the log)"
                )
                self.alerts.submit(Alert(now_ms=now, kind="funding", text=text, severity="warning"))
            if read.complete:
                if not self._funding_again:
                    return
                self._funding_again, down, attempt, told_skips = False, False, 0, False
                continue
            attempt += 1
            wait = min(FUNDING_RETRY_MAX_MS, FUNDING_RETRY_FIRST_MS * 2 ** (attempt - 1))
            if attempt == 1:
                text = (
                    f"funding history could not be read ({read.error}): funding settled while the stream "
                    f"did not tell it may be missing from the ledger; read again in {wait // 1000} s"
                )
                self.alerts.submit(Alert(now_ms=now, kind="funding", text=text, severity="warning"))
            await self.clock.sleep_until(now + wait, self._stopping)

    async def _funding_since(self, venue_now: int) -> int:
        """Where the read starts: the mark of funding booked, else the previous run's last event less
        a margin (written down first, so that a failed read is read again from there). A mark ahead
        of the venue's clock (a run whose host clock was wrong) says nothing: the last day is read."""
        mark = await self.store.funding_cursor()
        cursor = mark
        if cursor is None:
            cursor = self._last_run_ms - FUNDING_MARGIN_MS if self._last_run_ms is not None else venue_now
        if cursor > venue_now:
            log.warning("the mark of funding booked is ahead of Binance's clock: the last day is read again")
            cursor = venue_now - FUNDING_GAP_DAY_MS
        if mark is None:
            await self.store.set_funding_cursor(cursor)
        floor = venue_now - FUNDING_HISTORY_MS
        if cursor < floor:
            log.warning("funding before %s is past the income history Binance keeps: not booked", _utc(floor))
        return max(cursor, floor)

    def _tell_funding(self, booked: list[ev.FundingFee], now: int, *, down: bool) -> None:
        for event in booked:
            verb = "paid" if event.amount < 0 else "received"
            where = event.symbol or "the account"
            text = f"funding {verb} on {where}: {event.amount} {event.asset} at {_utc(event.venue_time_ms)}"
            if down:
                text = f"while shortfsm was down: {text}"
            log.warning("%s", text)
            self.alerts.submit(Alert(now_ms=now, kind="funding", text=text, symbol=event.symbol or None))

    async def _watch_recovered_symbols(self) -> None:
        """N-28 step 8 needs a price for every rebuilt symbol: subscribe the ones the engine did not
        ask for (a first entry restored without a position emits no SubscribeMarket)."""
        missing = sorted(set(self.engine.active_symbols()) - self.market.symbols)
        if missing:
            log.info("recovery: watching the mark price of %s", ", ".join(missing))
            await self.market.subscribe(missing)
            self.poller.set_symbols(self.market.symbols)

    def _rerun_risk_messages(self) -> None:
        """Recovery is over (the engine says ResumeTelegram): the risk messages whose decision may
        not have been carried out go first, before anything the backfill brings (D-18)."""
        if not self._reruns:
            return
        now = self.clock.now_ms()
        reruns, self._reruns = self._reruns, []
        self._reruns_pending = len(reruns)
        self._front.extend(replace(m, now_ms=now, rerun=True) for m in reruns)

    def _carried(self, seq: int | None, rerun: bool) -> None:
        """An event's commands were all carried out: later snapshots may cover its journal seq, but
        never a re-run's original row while a re-run is still to be carried out (D-18)."""
        if rerun:
            self._reruns_pending -= 1
            if self._reruns_pending <= 0 and not self._reruns:
                self._rerun_floor = None
        if seq is not None:
            floor = self._rerun_floor
            self.store.covered_seq = seq if floor is None else min(seq, floor)

    # -- intake --------------------------------------------------------------------------------

    def enqueue_nowait(self, event: ev.Event) -> None:
        if not self._stopping.is_set():
            self.queue.put_nowait(event)

    async def enqueue(self, event: ev.Event) -> None:
        self.enqueue_nowait(event)

    async def _on_stream_item(self, item: parse.Decoded) -> None:
        if isinstance(item, (KlineUpdate, ListenKeyExpired)):
            return  # klines are read by REST at receipt; the user stream renews its own key
        if isinstance(item, AccountPush):  # the account moved: read it again before a trigger
            self.account_reads.invalidate(f"{item.event} {item.reason} {item.symbol or ''}".rstrip())
            self._account_wake.set()
            return
        if isinstance(item, ev.WsStatusChanged):
            self.streams["market"] = "up" if item.connected else "down"
        elif isinstance(item, ev.MarkPriceTick) and item.symbol == self.heartbeat_symbol:
            self._mark_phase_ms = item.event_time_ms % 1000
        elif isinstance(item, ev.BalanceChanged) and item.available_balance is None:
            self._read_balance_soon()
        self.enqueue_nowait(item)

    def _read_balance_soon(self) -> None:
        """ACCOUNT_UPDATE tells the wallet balance, not the available one, which a fill changes:
        read both once the push's burst is over (weight 5), one read at a time (issue #13)."""
        self._balance_updates += 1
        if self._balance_read is not None and not self._balance_read.done():
            return  # the read in flight sees this update counted and reads again if it came late
        self._balance_read = asyncio.create_task(self._read_balance(), name="balance-read")

    async def _read_balance(self) -> None:
        while not self._stopping.is_set():
            await self.clock.sleep_until(self.clock.now_ms() + BALANCE_READ_DELAY_MS, self._stopping)
            if self._stopping.is_set():
                return
            seen = self._balance_updates
            try:
                wallet, available = parse.balance_from_rest(await self.rest.balance())
            except (BinanceError, ValueError, KeyError) as exc:
                log.info(
                    "available balance not read after an account update (%s): the board keeps the last", exc
                )
                return
            if self._balance_updates != seen:
                continue  # a newer push came while it was read: this answer may predate it
            self.enqueue_nowait(
                ev.BalanceChanged(
                    now_ms=self.clock.now_ms(), wallet_balance=wallet, available_balance=available
                )
            )
            return

    async def _reconcile(self) -> None:
        """After a user-stream gap: the position mode, what the stream missed about our open orders
        (fills with their trade ids, ends, triggered stops), then every position of the account, so
        that manual positions opened or closed meanwhile reach the entry lock (G01, R20..R22)."""
        tracked = [
            Tracked(symbol, o.cid, o.is_algo, o.filled, o.status)
            for symbol, model in self.engine.symbols.items()
            for o in model.orders.values()
            # PENDING: its answer is on its way; UNKNOWN: the engine resolves it itself (D-26).
            if o.is_open and o.status not in ("PENDING_NEW", "UNKNOWN")
        ]
        believed = set(self.engine.active_symbols()) | {
            key.partition(":")[0] for key in self.engine.account_positions
        }
        log.warning("user stream reconnected: re-reading %d open order(s) and the positions", len(tracked))
        self._start_funding_read(down=False)
        for event in await gap_read_back(self.rest, tracked, believed, self.clock.now_ms()):
            if isinstance(event, (ev.OrderUpdated, ev.AlgoOrderUpdated)):
                log.warning("user stream gap: %s", _describe_missed(event))
            self.enqueue_nowait(event)

    async def _read_account_ahead(self) -> None:
        """W24's reads for the next first entry, made while one is monitored (D-72): at once when
        a symbol starts monitoring or a push voided them, then again at half their life."""
        reads = self.account_reads
        if not reads.enabled:
            return
        problem = ""
        while not self._stopping.is_set():
            self._account_wake.clear()
            now = self.clock.now_ms()
            if (
                reads.due(now, new_symbol=self._new_monitoring)
                and self.engine.lock_state("recovery_lock") != "RECOVERING"
                and any(m.state == "MONITORING" for m in self.engine.symbols.values())
            ):
                self._new_monitoring = False
                try:
                    await reads.refresh(now)
                except Exception as exc:  # never let it die: the trigger reads for itself meanwhile
                    reads.invalidate("read crashed")
                    reads.problem = f"{type(exc).__name__}: {exc}"
                if reads.problem != problem:
                    problem = reads.problem
                    if problem:
                        log.info(
                            "account read ahead failed (%s): the next entry reads at its trigger", problem
                        )
            await self.clock.sleep_until(self.clock.now_ms() + 1_000, self._account_wake)

    def _account_moved(self, event: ev.Event, commands: list[cmd.Command]) -> None:
        """Void the facts read ahead on anything that moves the account (handled here, whatever its
        source: a push, a read-back, the order watch), and read at once for a new monitoring."""
        if isinstance(event, ACCOUNT_MOVES) and not (
            isinstance(event, ev.BalanceChanged) and event.available_balance is not None
        ):
            self.account_reads.invalidate(type(event).__name__)
            self._account_wake.set()
        elif any(isinstance(c, cmd.Transitioned) and c.dest == "MONITORING" for c in commands):
            self._new_monitoring = True  # read soon (1 s apart, not 10): its trigger may be near
            self._account_wake.set()

    async def _watch_orders(self) -> None:
        """Our open orders are read back every ``ORDER_WATCH_MS`` whatever the user stream says: a
        stream that stays connected and pushes nothing (no drop, so no gap read-back) must not
        hide a fill for long. Weight 1 per open order: a few a minute at most."""
        while not self._stopping.is_set():
            await self.clock.sleep_until(self.clock.now_ms() + ORDER_WATCH_MS, self._stopping)
            if self._stopping.is_set() or self.engine.lock_state("recovery_lock") == "RECOVERING":
                continue
            tracked = [
                Tracked(symbol, o.cid, o.is_algo, o.filled, o.status)
                for symbol, model in self.engine.symbols.items()
                for o in model.orders.values()
                if o.is_open and o.status not in ("PENDING_NEW", "UNKNOWN")
            ]
            if not tracked:
                continue
            try:
                missed = await missed_updates(self.rest, tracked, self.clock.now_ms())
            except Exception:  # never let the watch die: the next round asks again
                log.exception("order watch failed")
                continue
            for event in missed:
                log.warning("order watch: the user stream did not say: %s", _describe_missed(event))
                self.enqueue_nowait(event)

    async def _stream_crashed(self, name: str, exc: BaseException, restarts: int) -> None:
        """A long-lived task died of an unexpected error and is being restarted (never silently)."""
        self.errors += 1
        self.alerts.submit(
            Alert(
                now_ms=self.clock.now_ms(),
                kind="task_crashed",
                text=f"{name} failed ({type(exc).__name__}: {exc}); restarted ({restarts} so far)",
                severity="critical",
            )
        )

    async def _deliver_raw(self, raw: RawMessage) -> None:
        """A message from the source: stored, parsed, enriched, queued (never raises)."""
        try:
            await self._deliver(raw)
        except Exception:
            self.errors += 1
            log.exception("message %s/%s could not be processed", raw.chat_id, raw.message_id)

    async def _deliver(self, raw: RawMessage) -> None:
        now = self.clock.now_ms()
        parsed = parse_message(raw.text)
        self.store.record_message(
            chat_id=raw.chat_id,
            message_id=raw.message_id,
            date_ms=raw.date_ms,
            received_ms=now,
            text=raw.text,
            parsed=parsed,
        )
        if raw.edited:
            log.info("edited message %s/%s ignored (N-27)", raw.chat_id, raw.message_id)
            return
        symbol = getattr(parsed, "symbol", None)
        info_ok, info = (True, None)
        if isinstance(symbol, str):
            info_ok, info = await self._symbol_info(symbol)
        klines = None
        if isinstance(parsed, ev.LeadingMarket) and info is not None and info.status == "TRADING":
            klines = await self._klines(parsed.symbol, now)
        self.enqueue_nowait(
            ev.MessageReceived(
                now_ms=now,
                chat_id=raw.chat_id,
                message_id=raw.message_id,
                telegram_date_ms=raw.date_ms,
                parsed=parsed,
                exchange_info_ok=info_ok,
                symbol_info=info,
                klines=klines,
            )
        )

    async def _symbol_info(self, symbol: str) -> tuple[bool, ev.SymbolInfo | None]:
        """exchangeInfo entry (cached; refreshed when stale or when the symbol is not in it)."""
        now = self.clock.now_ms()
        fresh = now - self._infos_at_ms < 300_000
        if not fresh or symbol not in self._infos:
            try:
                self._infos = parse.symbol_infos(await self.rest.exchange_info(refresh=fresh))
                self._infos_at_ms = now
            except (BinanceError, KeyError, ValueError, TypeError) as exc:
                log.warning("exchangeInfo unavailable: %s", exc)
                return False, None
        return True, self._infos.get(symbol)

    async def _klines(self, symbol: str, received_ms: int) -> tuple[ev.Candle, ...] | None:
        """The last 200 closed 3m candles at receipt (N-08)."""
        try:
            rows = await self.rest.klines(symbol, "3m", end_ms=received_ms, limit=KLINE_COUNT + 1)
            candles = [c for c in parse.candles_from_rest(rows) if c.close_time_ms < received_ms]
        except (BinanceError, ValueError) as exc:
            log.warning("klines of %s unavailable: %s", symbol, exc)
            return None
        return tuple(candles[-KLINE_COUNT:])

    # -- the consumer --------------------------------------------------------------------------

    async def _consume(self) -> None:
        while True:
            event = self._front.popleft() if self._front else await self.queue.get()
            if event is _STOP:
                # Outcomes already received are applied; no new venue command goes out.
                while self._front:
                    await self._process(self._front.popleft(), execute=False)
                return
            await self._process(event, execute=True)

    async def _process(self, event: ev.Event, *, execute: bool) -> None:
        try:
            await self._handle(event, execute=execute)
        except asyncio.CancelledError:
            raise
        except Exception:  # never crash on a bad event
            self.errors += 1
            log.exception("event %s failed in the daemon", type(event).__name__)
        finally:
            self._wake.set()
            if isinstance(event, ev.FlattenStarted):
                self._flatten_seen.set()

    async def _handle(self, event: ev.Event, *, execute: bool) -> None:
        store = self.store
        rerun = isinstance(event, ev.MessageReceived) and event.rerun
        if rerun and not execute:
            return  # stopping: the snapshot keeps not covering it, the next start re-runs it (D-18)
        if isinstance(event, OUTCOME_EVENTS):
            store.record_outcome(event)
        if event.now_ms >= self._checkpoint_due_ms:  # replay starts at a checkpoint (#11 step 7)
            first = not self._checkpoint_due_ms
            store.checkpoint(event.now_ms, self.engine.snapshot(), run_start=first, keep_ms=JOURNAL_KEEP_MS)
            self._checkpoint_due_ms = event.now_ms + CHECKPOINT_EVERY_MS
        booked = self._order_before(event)
        held = dict(self.engine.symbols) if not isinstance(event, ev.MarkPriceTick) else {}
        commands = self.engine.handle(event)
        self._account_moved(event, commands)
        # Every input is journaled with what the engine answered, in the order handled, before any
        # command is carried out: `shortfsm replay --journal` re-makes the same answers from it.
        store.journal(event, render_all(commands))
        seq: int | None = store.journal_seq
        self.handled += 1
        self._log_fill_and_close(event, commands, booked, held)
        if self.observer is not None and not commands:
            self.observer(event, commands)
        if not isinstance(event, QUIET_EVENTS):
            self.last_event = {"type": type(event).__name__, "now_ms": event.now_ms}
        if not commands:
            await self._after_recovery_snapshot(event)
            if execute:
                self._carried(seq, rerun)
            return
        now = event.now_ms
        for c in commands:  # N-05: the cursor is on disk before the message has any effect
            if isinstance(c, cmd.PersistCursor):
                await self._save_cursor(c.chat_id, c.message_id, now)
        store.record_commands(now, commands)
        self.decision_log.decisions(now, event, commands)
        if isinstance(event, ev.FlattenStarted) or any(
            isinstance(c, cmd.Transitioned) and c.machine not in IN_FLIGHT_MACHINES for c in commands
        ):
            # Saved before the orders go out: recovery's hint must never lag a state change (D-17),
            # nor a restart miss a flatten that had begun (D-63).
            self.store.save_snapshot(now, self.engine.snapshot())
        elif any(isinstance(c, (cmd.Transitioned, *cmd.ORDER_COMMANDS)) for c in commands):
            self._snapshot_dirty = True
        if self.observer is not None:
            self.observer(event, commands)
        for c in commands:
            await self._carry_out(c, execute=execute)
        await self._after_recovery_snapshot(event)
        if execute:
            self._carried(seq, rerun)

    def _order_before(self, event: ev.Event) -> tuple[OrderTrack, Decimal] | None:
        """Our order an update may fill, with what the engine had booked on it before."""
        if not isinstance(event, ev.OrderUpdated) or event.cum_qty <= 0:
            return None
        model = self.engine.symbols.get(event.symbol)
        order = model.orders.get(event.client_order_id) if model is not None else None
        return (order, order.filled) if order is not None else None

    def _log_fill_and_close(
        self,
        event: ev.Event,
        commands: list[cmd.Command],
        booked: tuple[OrderTrack, Decimal] | None,
        held: dict[str, SymbolModel],
    ) -> None:
        """Decision log: the fill the engine booked (a duplicate or late update books nothing) and,
        when a position of ours is flat again, its realised PnL and fees over all its orders."""
        if booked is not None and isinstance(event, ev.OrderUpdated):
            order, before = booked
            if order.filled > before:
                self.decision_log.fill(event.now_ms, event, order.filled - before, leg=order.leg)
        for c in commands:
            if isinstance(c, cmd.Notify) and c.kind == "position_closed" and c.symbol in held:
                model = held[c.symbol]
                self.decision_log.position_closed(
                    event.now_ms,
                    c.symbol,
                    reason=model.close_reason or "closed",
                    message_id=model.message_id,
                    realised=sum((o.realized_pnl for o in model.orders.values()), Decimal(0)),
                    fees=sum((o.commission for o in model.orders.values()), Decimal(0)),
                )

    async def _after_recovery_snapshot(self, event: ev.Event) -> None:
        """After the recovery snapshot (whether or not it decided anything: a flat venue waits for
        its price with no command at all), watch the rebuilt symbols and book what happened to our
        orders, and the funding settled, while no daemon ran."""
        if isinstance(event, ev.ExchangeSnapshot) and event.purpose == "recovery":
            await self._watch_recovered_symbols()
            if event.complete:  # a venue that answers nothing is not asked more meanwhile
                self._tasks.append(asyncio.create_task(self._book_history(event), name="recovery-history"))
                self._start_funding_read(down=True)

    async def _carry_out(self, c: cmd.Command, *, execute: bool) -> None:
        if self.executor.handles(c):
            if not execute:
                log.info("stopping: %s not sent", type(c).__name__)
                return
            now = self.clock.now_ms()
            outcomes = await self.executor.execute(c, now)
            self.decision_log.order_outcome(now, c, outcomes)
            self._front.extend(outcomes)
        elif isinstance(c, cmd.SubscribeMarket):
            await self.market.subscribe(c.symbols)
            self.poller.set_symbols(self.market.symbols)
        elif isinstance(c, cmd.UnsubscribeMarket):
            gone = [s for s in c.symbols if s.upper() != self.heartbeat_symbol]
            if gone:
                await self.market.unsubscribe(gone)
                self.poller.set_symbols(self.market.symbols)
        elif isinstance(c, cmd.UsePriceSource):
            self.poller.use_source(c)
        elif isinstance(c, cmd.Notify):
            self.alerts.notify(c, self.clock.now_ms())
        elif isinstance(c, cmd.ResumeTelegram):
            if self.user.reconcile_first and self.user.connected:
                # Recovery read the venue before the stream was up, and the stream's first
                # reconciliation may have run before the engine knew its orders: read them back
                # once more, now that the engine holds everything the snapshot rebuilt.
                self._tasks.append(asyncio.create_task(self._reconcile(), name="reconcile-after-recovery"))
            self._rerun_risk_messages()
            self._resume_source()

    def _resume_source(self) -> None:
        if self.source is None or self._stopping.is_set():
            return
        if self._source_task is not None and not self._source_task.done():
            return
        if isinstance(self.source, TelegramSource):
            self.source.on_state = self._source_state
            self.source.on_alert = self._source_alert
            self.streams["telegram"] = self.source.state
        else:
            self.streams["telegram"] = "replay" if self.source.kind == "replay" else "up"
        # The engine's cursors as they are at each read, never a copy from the start (issue #13).
        cursors = LiveCursors(lambda: self.engine.cursors)
        self._source_task = asyncio.create_task(self._run_source(cursors), name="message-source")

    async def _run_source(self, cursors: Mapping[int, int]) -> None:
        """The source runs until the daemon stops; a Telegram source that fails or returns anyway
        is started again (after a capped back-off), never left stopped behind a live daemon."""
        assert self.source is not None
        restarts = 0
        try:
            while not self._stopping.is_set():
                if restarts and not isinstance(self.source, TelegramSource):
                    self.streams["telegram"] = "up"  # a TelegramSource reports its own state
                try:
                    await self.source.run(self._deliver_raw, cursors)
                    if self.source.kind != "telegram" or self._stopping.is_set():
                        return
                    problem = "it returned"
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.errors += 1
                    log.exception("message source failed")
                    problem = describe_error(exc)
                    if self.source.kind != "telegram":
                        self._source_alert("critical", f"message source stopped: {problem}")
                        return
                delay_ms = min(60_000, 1000 * 2 ** min(restarts, 6))
                restarts += 1
                self.streams["telegram"] = "reconnecting"
                self._source_alert(
                    "critical", f"telegram source failed ({problem}); restarting it in {delay_ms // 1000} s"
                )
                await self.clock.sleep_until(self.clock.now_ms() + delay_ms, self._stopping)
        finally:
            if self.source.kind == "telegram" or not self.source.finished:
                self.streams["telegram"] = "down"

    def _source_state(self, state: str, detail: str) -> None:
        """The Telegram source's connection state, shown on the board ("up", "reconnecting", "down")."""
        if self.streams.get("telegram") != state:
            log.info("telegram %s (%s)", state, detail)
        self.streams["telegram"] = state

    def _source_alert(self, severity: str, text: str) -> None:
        self.alerts.submit(Alert(now_ms=self.clock.now_ms(), kind="telegram", text=text, severity=severity))

    # -- time ----------------------------------------------------------------------------------

    def _tick_offset_ms(self) -> int:
        # Just after the venue's 1 s pushes; a compressed clock needs a wider margin in venue time.
        return int(min(500, max(100, 15 * self.clock.speed)))

    async def _ticker(self) -> None:
        """A Tick each second aligned to the mark-price pushes, and at the engine's deadlines."""
        last_tick = 0
        while not self._stopping.is_set():
            now = self.clock.now_ms()
            phase = (self._mark_phase_ms + self._tick_offset_ms()) % 1000
            target = (now - phase) // 1000 * 1000 + phase
            while target <= max(now, last_tick):
                target += 1000
            deadline = self.engine.next_deadline_ms()
            if deadline is not None and last_tick < deadline < target:
                target = max(deadline, now)
            self._wake.clear()
            await self.clock.sleep_until(target, self._wake)
            if self._stopping.is_set():
                return
            now = self.clock.now_ms()
            if now >= target:
                last_tick = now
                self.enqueue_nowait(ev.Tick(now_ms=now))

    async def _status_loop(self) -> None:
        """Board row, heartbeat file, snapshot when something moved, operator controls, stop rule."""
        interval = max(0.2, self.clock.wall_s(1000))
        while not self._stopping.is_set():
            await asyncio.sleep(interval)
            now = self.clock.now_ms()
            try:
                self.streams["user"] = "up" if self.user.connected else "down"
                self._check_connections(now)
                await self._check_database(now)
                self._reload_config(now)
                self._write_status(now)
                if self._snapshot_dirty:
                    self._snapshot_dirty = False
                    self.store.save_snapshot(now, self.engine.snapshot())
                await self._poll_control(now)
                self._notify_systemd()
                if self.stop_when is not None and self.stop_when(self):
                    self.request_stop("finished")
            except Exception:
                self.errors += 1
                log.exception("status step failed")

    def _log_alert(self, alert: Alert) -> None:
        self.decision_log.alert(alert.now_ms, alert.kind, alert.severity, alert.text, alert.symbol)

    def _check_connections(self, now: int) -> None:
        """A Binance stream down for ``OUTAGE_ALERT_MS`` is alerted once, naming its host and why;
        its return is alerted too. The state (host, since, problem) goes to the heartbeat."""
        for name, stream in (("market", self.market), ("user", self.user)):
            entry = self.connections[name]
            up = self.streams.get(name) == "up"
            if up:
                since = entry["down_since_ms"]
                entry["down_since_ms"], entry["problem"] = None, None
                if name in self._outage_alerted and since is not None:
                    self._outage_alerted.discard(name)
                    text = f"Binance {name} stream {entry['host']} is back after {(now - since) / 1000:.0f} s"
                    log.warning("%s", text)
                    self.alerts.submit(Alert(now_ms=now, kind="binance_connection", text=text))
                continue
            if entry["down_since_ms"] is None:
                entry["down_since_ms"] = now
            entry["problem"] = stream.problem or f"{entry['host']} not connected yet"
            if name not in self._outage_alerted and now - entry["down_since_ms"] >= OUTAGE_ALERT_MS:
                self._outage_alerted.add(name)
                text = (
                    f"Binance {name} stream down for {(now - entry['down_since_ms']) / 1000:.0f} s: "
                    f"{entry['problem']}; reconnecting"
                )
                log.warning("%s", text)
                self.alerts.submit(
                    Alert(now_ms=now, kind="binance_connection", text=text, severity="warning")
                )

    def _notify_systemd(self) -> None:
        """Type=notify: READY=1 once the loop runs, then WATCHDOG=1 from this same loop, so a hung
        loop stops the pings and systemd restarts the service (WatchdogSec)."""
        if not self._notified_ready:
            self._notified_ready = True
            sd_notify(f"READY=1\nSTATUS=running on {self.store.path}\nMAINPID={os.getpid()}")
        if self._watchdog_s is not None:
            mono = time.monotonic()
            if mono - self._watchdog_at >= self._watchdog_s:
                self._watchdog_at = mono
                sd_notify("WATCHDOG=1")

    def _write_status(self, now: int) -> None:
        extras = {
            "profile": self.profile,
            "streams": dict(self.streams),
            "last_event": self.last_event,
            "urls": dict(self.urls),
            "pid": os.getpid(),
            "started_ms": self.started_ms,
            "connections": {name: dict(entry) for name, entry in self.connections.items()},
            "alerts": self.alerts.channel_status(),
        }
        beat = heartbeat.heartbeat_payload(
            self.engine,
            now_ms=now,
            streams=self.streams,
            database_ok=self.db_health.ok,
            last_event=self.last_event,
            profile=self.profile,
            urls=self.urls,
            started_ms=self.started_ms,
            database=str(self.store.path),
        )
        beat["connections"] = extras["connections"]
        beat["alerts"] = extras["alerts"]
        if not self.store.closed:
            self.store.set_status("board", board_view(self.engine, now, extras), now)
            self.store.set_status(HEARTBEAT_KEY, beat, now)
        if self.heartbeat_path is not None:
            heartbeat.write_atomic(self.heartbeat_path, beat)

    async def _read_control(self) -> dict[str, Any]:
        import json

        text = await self.store.status(CONTROL_KEY)
        try:
            value = json.loads(text) if text else {}
        except ValueError:
            log.warning("control row unreadable: %r", text)
            return {}
        return value if isinstance(value, dict) else {}

    async def _poll_control(self, now: int) -> None:
        """Operator requests (``pause``, ``resume``, ``flatten``) in the order written, each
        acknowledged once applied; and the paused flag kept as the control row says."""
        for request in await self.store.control_requests():
            if str(request.get("id")) not in self._flattening:
                await self._apply_request(request, now)
        control = await self._read_control()
        paused = bool(control.get("paused", False))
        if paused == self.engine.paused:
            self._pause_queued = None
        elif paused != self._pause_queued:
            self._pause_queued = paused
            self.enqueue_nowait(ev.PauseRequested(now_ms=now, paused=paused))
        still: list[tuple[dict[str, Any], bool]] = []
        for request, wanted in self._pending_acks:
            if self.engine.paused == wanted:
                state = "paused: no new entries" if wanted else "resumed: new entries allowed"
                await self.store.finish_control(request, {"result": "ok", "lines": [state]})
                log.info("operator %s %s applied (%s)", request.get("command"), request.get("id"), state)
                self._log_operator(now, request, "ok", [state])
            else:
                still.append((request, wanted))
        self._pending_acks = still

    async def _apply_request(self, request: dict[str, Any], now: int) -> None:
        command, rid = request.get("command"), request.get("id")
        log.warning("operator %s request %s", command, rid)
        if command in ("pause", "resume"):
            wanted = command == "pause"
            await self.store.set_control(
                {"paused": wanted, "by": command, "id": rid, "since_ms": int(time.time() * 1000)}, now
            )
            await self.store.drop_control_request(request)
            self._pending_acks.append((request, wanted))
        elif command == "flatten":
            # Entries stop first, so nothing opens again behind the flatten.
            await self.store.set_control(
                {"paused": True, "by": "flatten", "id": rid, "since_ms": int(time.time() * 1000)}, now
            )
            if not self.engine.paused and self._pause_queued is not True:
                self._pause_queued = True
                self.enqueue_nowait(ev.PauseRequested(now_ms=now, paused=True))
            # Its own task: the status loop (heartbeat, watchdog) keeps beating through slow calls.
            self._flattening.add(str(rid))
            task = asyncio.create_task(self._run_flatten(request, now), name=f"flatten-{rid}")
            self._side_tasks.add(task)
            task.add_done_callback(self._side_tasks.discard)
        else:
            lines = [f"unknown command {command!r}"]
            await self.store.finish_control(request, {"result": "refused", "lines": lines, "failures": 1})
            self._log_operator(now, request, "refused", lines)

    async def _record_flatten_close(self, params: dict[str, str]) -> None:
        """The flatten's close of a short is on record before it is sent: a stop before its fills
        are booked leaves it unfinished, and the next start reads it back (N-28)."""
        close = cmd.PlaceOrder(
            symbol=params["symbol"],
            client_order_id=params["newClientOrderId"],
            leg="CLOSE",
            side="BUY",
            order_type="MARKET",
            quantity=Decimal(params["quantity"]),
            reduce_only="reduceOnly" in params,
            position_side="SHORT" if "positionSide" in params else None,
        )
        await self.store.record_commands(self.clock.now_ms(), [close])

    async def _run_flatten(self, request: dict[str, Any], now: int) -> None:
        rid = str(request.get("id"))
        try:
            async with self._flatten_lock:  # one flatten at a time, in the order asked
                # The engine has read FlattenStarted before the first cancel goes out, so it reads
                # their reports as the operator's (an answer of its own in hand comes first).
                self._flatten_seen.clear()
                self.enqueue_nowait(ev.FlattenStarted(now_ms=now, request_id=rid))
                try:
                    await asyncio.wait_for(self._flatten_seen.wait(), FLATTEN_WAIT_S)
                except TimeoutError:
                    log.error("flatten %s: the engine is busy; flattening without waiting for it", rid)
                outcome = await self._flatten(now)
                for report in outcome.reports:  # the close's fills as the stream would have told them
                    self.enqueue_nowait(report)
                self.enqueue_nowait(outcome.finished(self.clock.now_ms(), rid))
                result = "failed" if outcome.failures else "ok"
                await self.store.finish_control(
                    request, {"result": result, "lines": outcome.lines, "failures": outcome.failures}
                )
                self._log_operator(self.clock.now_ms(), request, result, outcome.lines)
        finally:
            self._flattening.discard(rid)

    def _log_operator(self, now: int, request: dict[str, Any], result: str, lines: list[str]) -> None:
        self.decision_log.operator(
            now, str(request.get("command")), str(request.get("id")), result, [str(line) for line in lines]
        )

    async def _discard_stale_requests(self, recovery: ev.RecoveryStarted) -> None:
        """Requests found at start were written while no daemon ran (or before a crash): their
        command already said it was not acknowledged, so they are never applied late. A flatten a
        stop interrupted had begun: what it started closing this daemon closes (D-63)."""
        interrupted = sorted(s for s, why in recovery.closing if why == INTERRUPTED_FLATTEN)
        for request in await self.store.control_requests():
            command = request.get("command")
            text = (
                f"operator {command} {request.get('id')} written while no daemon ran "
                "on this database: discarded, nothing done"
            )
            if command == "flatten" and interrupted:
                text = (
                    f"operator flatten {request.get('id')} was interrupted by a stop: not applied again; "
                    f"this daemon finishes what it began for {', '.join(interrupted)} (what is still open "
                    "is closed at market, what it closed is read back)"
                )
            log.warning(text)
            await self.store.finish_control(request, {"result": "discarded", "lines": [text], "failures": 1})
            self._log_operator(self.clock.now_ms(), request, "discarded", [text])

    def _explain_pause(self, control: dict[str, Any], now: int) -> None:
        since = control.get("since_ms")
        when = _utc(since) if since else "an earlier run"
        by = control.get("by") or "pause"
        text = (
            f"entries stay paused: operator `{by}` {control.get('id') or ''} at {when} "
            "(`shortfsm resume` allows entries)"
        ).replace("  ", " ")
        log.warning(text)
        self.alerts.submit(Alert(now_ms=now, kind="control", severity="info", text=text))

    async def _flatten(self, now: int) -> FlattenOutcome:
        """Every order cancelled and every position closed; each line says what was done or failed."""
        outcome = FlattenOutcome(lines=[])
        try:
            await flatten_account(self.rest, now, outcome, self.clock.now_ms, self._record_flatten_close)
        except Exception as exc:  # what was done before it stays listed; FlattenFinished still follows
            known = isinstance(exc, (BinanceError, KeyError, ValueError))
            if not known:
                log.exception("flatten failed unexpectedly")
            outcome.lines.append(f"FAILED flatten: {exc if known else f'{type(exc).__name__}: {exc}'}"[:500])
            outcome.failures += 1
        outcome.lines = outcome.lines or ["nothing to cancel or close"]
        lines, failures = outcome.lines, outcome.failures
        log.log(logging.ERROR if failures else logging.WARNING, "flatten: %s", "; ".join(lines))
        self.alerts.submit(
            Alert(
                now_ms=now,
                kind="flatten",
                severity="critical" if failures else "info",
                text="; ".join(lines) or "nothing to flatten",
            )
        )
        return outcome

    # -- config reload (mtime poll in the status loop, SIGHUP) -----------------------------------

    def watch_config(self, path: str | Path) -> None:
        """Re-read ``path`` when it changes (polled every status step) or on ``request_reload``."""
        self.config_watch = ConfigWatch(path)

    def request_reload(self) -> None:
        """SIGHUP: re-read the config file at the next status step, changed or not."""
        if self.config_watch is None:
            log.warning("reload requested, but no config file is watched")
            return
        log.info("reload requested: %s", self.config_watch.path)
        self.config_watch.requested = True

    def _reload_config(self, now: int) -> None:
        """Strategy settings go to the engine as ``SettingsChangeRequested`` (its settings lock
        decides); any other changed key only takes effect after a restart; a bad file changes nothing."""
        watch = self.config_watch
        if watch is None or not watch.due():
            return
        where = str(watch.path)
        if not watch.path.exists():
            log.error("config reload: %s is missing; the running configuration is kept", watch.path)
            self.decision_log.config_reload(now, where, "refused", reason="the file is missing")
            return
        try:
            new = load_config(watch.path)
        except ConfigError as exc:
            problem = str(exc).replace("\n", "; ")
            log.error(
                "config reload: %s is invalid; the running configuration is kept: %s", watch.path, problem
            )
            self.decision_log.config_reload(now, where, "refused", reason=f"invalid: {problem}")
            self.alerts.submit(
                Alert(
                    now_ms=now,
                    kind="config",
                    severity="warning",
                    text=f"config reload refused, the file is invalid: {problem}",
                )
            )
            return
        restart = restart_changes(self.config, new)
        for key in restart:
            log.warning("config reload: %s changed; restart shortfsm for it to take effect", key)
        if restart:
            self.decision_log.config_reload(now, where, "restart_needed", keys=list(restart))
        changes = settings_changes(self.engine.strategy, new)
        if changes:
            log.info("config reload: asking the engine for %s", ", ".join(f"{k}={v}" for k, v in changes))
            # The engine's settings_applied / settings_refused line follows with its decision.
            self.decision_log.config_reload(now, where, "requested", changes=dict(changes))
            self.enqueue_nowait(ev.SettingsChangeRequested(now_ms=now, changes=changes))
        elif self.engine.pending_settings:
            log.info("config reload: back to the running settings; the pending change is dropped")
            self.decision_log.config_reload(now, where, "requested", changes={})
            self.enqueue_nowait(ev.SettingsChangeRequested(now_ms=now, changes=()))
        elif not restart:
            log.info("config reload: %s has no change", watch.path)
            self.decision_log.config_reload(now, where, "unchanged")

    # -- database health (full disk, I/O errors) -----------------------------------------------

    async def _save_cursor(self, chat_id: int, message_id: int, now: int) -> None:
        """N-05's cursor write, awaited at most ``CURSOR_WAIT_S``: a database that is locked by
        another process, full or failing never holds up the message's decision (the engine has
        already moved); a locked write stays queued and lands once the lock is gone, a failed one
        is written again once writes work."""
        future = self.store.save_cursor(chat_id, message_id, now)
        done, _ = await asyncio.wait({future}, timeout=CURSOR_WAIT_S)
        if not done:
            log.warning(
                "cursor %s/%s not on disk after %.1f s (database busy): the message is acted on now",
                chat_id,
                message_id,
                CURSOR_WAIT_S,
            )
            return
        exc = future.exception()
        if exc is not None:
            log.error("cursor %s/%s not saved: %s", chat_id, message_id, exc)

    async def _check_database(self, now: int) -> None:
        """One alert naming the cause when database writes start failing (locked by another
        process, disk full, I/O error), one when they work again; writes refused by a lock are
        written then, and the state kept in memory (cursors, cooldowns, engine snapshot) again."""
        health = self.db_health
        if self.store.closed:
            return
        new_errors = self.store.errors - health.seen_errors
        health.seen_errors = self.store.errors
        if new_errors > 0:
            health.failed_writes += new_errors
            kind, text = self.store.last_problem or ("io", "unknown error")
            if health.failing_since_ms is None or health.cause != kind:
                health.failing_since_ms = health.failing_since_ms or now
                health.cause = kind
                self.alerts.submit(
                    Alert(
                        now_ms=now,
                        kind="database",
                        severity="critical",
                        text=database_problem_text(kind, text, self.store.path),
                    )
                )
            return
        if health.failing_since_ms is None:
            return
        written = await self.store.retry_writes()
        if self.store.queued:
            health.seen_errors = self.store.errors
            return
        try:
            await self.store.set_status("meta.database_ok", str(now), now)
        except (sqlite3.Error, OSError):
            health.seen_errors = self.store.errors  # the probe itself is not a lost write
            return
        since, lost = health.failing_since_ms, max(0, health.failed_writes - written)
        for chat_id, message_id in sorted(self.engine.cursors.items()):
            await self._save_cursor(chat_id, message_id, now)
        self.store.record_commands(
            now,
            [
                cmd.PersistCooldown(symbol=s, received_at_ms=t)
                for s, t in sorted(self.engine.cooldowns.items())
            ],
        )
        self.store.save_snapshot(now, self.engine.snapshot())
        queued = f"{written} queued writes were written, " if written else ""
        self.alerts.submit(
            Alert(
                now_ms=now,
                kind="database",
                severity="warning",
                text=f"database writes work again after {(now - since) / 1000:.0f} s; {queued}{lost} writes "
                "were lost; cursors, cooldowns and the engine snapshot are written again",
            )
        )
        # Healthy only once the alert is out: a stop in between must not swallow it.
        health.failing_since_ms, health.failed_writes, health.cause = None, 0, None


def database_problem_text(kind: str, error: str, path: Path) -> str:
    """The critical alert for a database that stopped taking writes, by cause."""
    if kind == "locked":
        return (
            f"database {path} is locked by another process ({error}): decisions continue from memory, "
            "writes are queued and retried; find the process holding it (fuser)"
        )
    if kind == "full":
        return (
            f"database writes fail: the disk is full ({error}): trading continues from memory; free disk "
            "space"
        )
    return (
        f"database writes fail: I/O error on {path} ({error}): trading continues from memory; check the "
        "disk and the file"
    )


_STOP = ev.Event(now_ms=0)


class ConfigWatch:
    """The config file as the daemon last read it: due again when its (mtime, size) changes or a
    reload was requested (SIGHUP)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.signature = file_signature(self.path)
        self.requested = False

    def due(self) -> bool:
        signature = file_signature(self.path)
        due = self.requested or signature != self.signature
        self.signature = signature
        self.requested = False
        return due


@dataclass(slots=True)
class DatabaseHealth:
    """Whether database writes work; ``seen_errors`` follows ``Store.errors``."""

    seen_errors: int = 0
    failing_since_ms: int | None = None
    failed_writes: int = 0
    cause: str | None = None  # ``store.problem_kind`` of the failure

    @property
    def ok(self) -> bool:
        return self.failing_since_ms is None


def board_view(engine: Engine, now_ms: int, extras: dict[str, Any]) -> dict[str, Any]:
    """``fsm.runtime.view.board_view`` when it is installed, else the minimal row below."""
    try:
        from fsm.runtime.view import board_view as view
    except ImportError:
        return {
            "now_ms": now_ms,
            "profile": extras.get("profile"),
            "paused": engine.paused,
            "locks": {n: m.state for n, m in engine.locks.items()},
            "active": engine.active_symbols(),
            "streams": extras.get("streams"),
            "last_event": extras.get("last_event"),
        }
    return view(engine, now_ms, extras)


# ---------------------------------------------------------------------------------------------
# Flatten (operator control)
# ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class FlattenOutcome:
    """What ``flatten_account`` did: one line per order or position (done, or ``FAILED`` /
    ``UNKNOWN`` with the venue's answer), the client ids it cancelled, and each close of a short as
    the engine books it (``FlattenFinished``)."""

    lines: list[str]
    failures: int = 0
    cancelled: list[str] = field(default_factory=list)
    closed: list[tuple[str, str, Decimal, Decimal]] = field(default_factory=list)
    unknown: list[tuple[str, str, int]] = field(default_factory=list)
    reports: list[ev.Event] = field(default_factory=list)  # each close's fills, read back

    def finished(self, now_ms: int, request_id: str) -> ev.FlattenFinished:
        return ev.FlattenFinished(
            now_ms=now_ms,
            request_id=request_id,
            cancelled=tuple(self.cancelled),
            closed=tuple(self.closed),
            unknown=tuple(self.unknown),
        )


async def flatten_account(
    rest: BinanceRest,
    now_ms: int,
    out: FlattenOutcome | None = None,
    clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    before_close: Callable[[dict[str, str]], Awaitable[None]] | None = None,
) -> FlattenOutcome:
    """Cancel every open order and algo order, then close every position at market, recording
    into ``out`` as it goes; ``before_close`` sees each close of a short before it is sent.
    Reading the venue failing raises ``BinanceError``."""
    out = out if out is not None else FlattenOutcome(lines=[])
    for order in await rest.open_orders():
        cid = str(order["clientOrderId"])
        try:
            await rest.cancel_order(str(order["symbol"]), cid)
            out.lines.append(f"cancelled {cid}")
            out.cancelled.append(cid)
        except BinanceError as exc:
            out.failures += 1
            out.lines.append(f"FAILED cancel {cid} ({order['symbol']}): {exc}")
    for algo in await rest.open_algo_orders():
        caid = str(algo["clientAlgoId"])
        try:
            await rest.cancel_algo_order(caid)
            out.lines.append(f"cancelled {caid}")
            out.cancelled.append(caid)
        except BinanceError as exc:
            out.failures += 1
            out.lines.append(f"FAILED cancel {caid} ({algo.get('symbol')}): {exc}")
    hedge = parse.position_mode_from_rest(await rest.position_mode()) == "HEDGE"
    for position in parse.positions_from_rest(await rest.position_risk()):
        short = position.amount < 0
        cid = rules.flatten_client_order_id(position.symbol, now_ms, long=not short)
        params: dict[str, str] = {
            "symbol": position.symbol,
            "side": "BUY" if short else "SELL",
            "type": "MARKET",
            "quantity": parse.dec_str(abs(position.amount)),
            "newClientOrderId": cid,
            "newOrderRespType": "RESULT",
        }
        if hedge:
            params["positionSide"] = "SHORT" if short else "LONG"
        else:
            params["reduceOnly"] = "true"
        if short and before_close is not None:
            await before_close(params)
        sent_ms = clock_ms()
        try:
            answer = await rest.place_order(params)
        except UnknownOutcome as exc:
            # It may have traded: the engine resolves it by query, never by a second close.
            out.failures += 1
            out.lines.append(f"UNKNOWN close {position.symbol} {position.amount}: {exc} (resolved by query)")
            if short:
                resolve_ms = sent_ms + rest.recv_window_ms + RESOLVE_MARGIN_MS
                out.unknown.append((position.symbol, cid, resolve_ms))
            continue
        except BinanceError as exc:
            out.failures += 1
            out.lines.append(f"FAILED close {position.symbol} {position.amount}: {exc}")
            continue
        out.lines.append(f"closed {position.symbol} {position.amount}")
        executed = _decimal(answer.get("executedQty"))
        if short and executed > 0:
            # The POST answer no longer carries the price (usdm-2026, new-order response): the
            # order and its trades are read back, so its fills, PnL and fees are booked even when
            # the stream never tells them (GET order, weight 1; userTrades, weight 5).
            tracked = Tracked(position.symbol, cid, False, Decimal(0), "NEW")
            fills = [
                r
                for r in await missed_updates(rest, [tracked], clock_ms())
                if isinstance(r, ev.OrderUpdated) and r.trade_id  # a fill with its PnL and fee
            ]
            out.reports.extend(fills)
            if sum((f.last_qty for f in fills), Decimal(0)) >= executed:
                out.closed.append((position.symbol, cid, executed, fills[-1].avg_price))
            else:  # its trades could not be read (yet): the engine asks again, as for any order
                out.unknown.append((position.symbol, cid, clock_ms()))
    return out


def _decimal(value: object) -> Decimal:
    try:
        return Decimal(str(value)) if value is not None else Decimal(0)
    except InvalidOperation:
        return Decimal(0)


async def account_exposure(rest: BinanceRest) -> list[str]:
    """What ``flatten_account`` would act on, one line each (read-only)."""
    lines = [
        f"cancel {o['clientOrderId']} ({o['symbol']} {o['side']} {o['type']} {o.get('origQty', '')} @ "
        f"{o.get('price', '')})"
        for o in await rest.open_orders()
    ]
    lines += [
        f"cancel {a['clientAlgoId']} ({a.get('symbol')} {a.get('side')} "
        f"{a.get('orderType') or a.get('type')} trigger {a.get('triggerPrice')})"
        for a in await rest.open_algo_orders()
    ]
    lines += [
        f"close {p.symbol} {p.amount} at market"
        for p in parse.positions_from_rest(await rest.position_risk())
    ]
    return lines


# ---------------------------------------------------------------------------------------------
# Assembling a daemon from the configuration
# ---------------------------------------------------------------------------------------------


def check_profile(config: AppConfig, profile: str, secrets_: Secrets) -> None:
    """Refuse what must not run; raises ``StartupRefused`` with the reason. The mainnet guard looks
    at the URLs the profile will really use, not at its name."""
    binance = config.for_profile(profile).binance
    if profile == "mainnet" and not binance.allow_mainnet:
        raise StartupRefused(
            "refusing to start on mainnet: real money. Set binance.allow_mainnet: true in the config "
            "file if you mean it (and run `shortfsm check` first)."
        )
    if profile != "mainnet" and binance.mainnet_urls():
        raise StartupRefused(
            f"refusing to start: the {profile} profile points at Binance mainnet "
            f"({', '.join(binance.mainnet_urls())}), real money; fix binance.rest_url / market_ws_url / "
            "private_ws_url in the config file, or use --profile mainnet with binance.allow_mainnet: true"
        )
    if profile in ("demo", "mainnet"):
        missing = [
            name
            for name, value in (
                ("BINANCE_API_KEY", secrets_.binance_api_key.get_secret_value()),
                ("BINANCE_API_SECRET", secrets_.binance_api_secret.get_secret_value()),
                ("TELEGRAM_API_HASH", secrets_.telegram_api_hash.get_secret_value()),
            )
            if not value
        ]
        if not secrets_.telegram_api_id:
            missing.append("TELEGRAM_API_ID")
        if missing:
            raise StartupRefused(
                f"the {profile} profile needs {', '.join(missing)} in the environment or .env"
            )


@dataclass(slots=True)
class RunOptions:
    profile: str = "sim"
    speed: float = 1.0
    feed_path: str | None = None
    path: PricePath | None = None
    database: str | None = None
    stop_when: Callable[[Daemon], bool] | None = None
    observer: Observer | None = None
    install_signals: bool = True
    balance: Decimal = Decimal("10000")
    config_path: str | None = None  # watched for reloads (mtime poll, SIGHUP)
    feed_origin_ms: int | None = None  # sim: the epoch ms the feed's at_ms count from (default: start)
    demo: bool = False  # ``shortfsm demo``: its database keeps the demo marker (``run`` removes it)


async def refuse_withdrawing_key(config: AppConfig, profile: str, endpoints: Endpoints) -> None:
    """No trading with a key that can withdraw funds (issue #5); unknown is logged, not refused
    (demo trading cannot say)."""
    async with BinanceRest(
        api_key=endpoints.api_key,
        api_secret=endpoints.api_secret,
        base_url=endpoints.rest_url,
        recv_window_ms=endpoints.recv_window_ms,
    ) as rest:
        try:
            await rest.sync_time()
        except BinanceError as exc:
            log.warning("server time unavailable before the key check: %s", exc)
        withdraw = await can_withdraw(
            spot_api_url(config, profile),
            endpoints.api_key,
            endpoints.api_secret,
            timestamp_ms=rest.server_now_ms(),
            recv_window_ms=endpoints.recv_window_ms,
        )
    if withdraw is True:
        raise StartupRefused(
            "this API key can withdraw funds: create a key without the withdrawal permission "
            "(a trading daemon never needs it)"
        )
    if withdraw is None:
        log.warning("could not tell whether the API key can withdraw; make sure it cannot")


async def run_daemon(config: AppConfig, secrets_: Secrets, options: RunOptions) -> int:
    """Build everything for ``options.profile`` and run until stopped; returns the exit code."""
    profile = options.profile
    check_profile(config, profile, secrets_)
    database = options.database or config.storage.database
    async with contextlib.AsyncExitStack() as stack:
        try:
            lock = DatabaseLock.acquire(database)
        except DaemonRunning as exc:
            raise StartupRefused(str(exc)) from None
        stack.callback(lock.release)
        store = await open_store(database)
        stack.push_async_callback(store.close)
        try:
            lock.hold_database_file()  # created just now when it did not exist
        except DaemonRunning as exc:
            raise StartupRefused(str(exc)) from None
        if not options.demo:
            await store.drop_status(DEMO_MARKER)  # adopted by `run`: the demo never recreates it
        clock = RunClock(speed=options.speed if profile == "sim" else 1.0)
        source: MessageSource
        if profile == "sim" and config.binance.rest_url:
            endpoints = await external_sim(config, secrets_, clock)
            source = ReplaySource.from_file(
                options.feed_path or config.telegram.feed_path,
                origin_ms=options.feed_origin_ms or clock.now_ms(),
                clock=clock,
            )
        elif profile == "sim":
            from fsm.harness.sim_harness import SimHarness  # the demo's venue: never loaded by `run`

            harness = SimHarness(clock, balance=options.balance, path=options.path)
            origin = clock.now_ms()
            harness.install(origin)
            await harness.start()
            stack.push_async_callback(harness.stop)
            endpoints = harness.endpoints()
            source = ReplaySource.from_file(
                options.feed_path or config.telegram.feed_path, origin_ms=origin, clock=clock
            )
        else:
            rest_url, market_url, private_url = config.binance.urls()
            endpoints = Endpoints(
                rest_url=rest_url,
                market_ws_url=market_url,
                private_ws_url=private_url,
                api_key=secrets_.binance_api_key.get_secret_value(),
                api_secret=secrets_.binance_api_secret.get_secret_value(),
                recv_window_ms=config.binance.recv_window_ms,
            )
            await refuse_withdrawing_key(config, profile, endpoints)
            source = TelegramSource(
                session_path=config.telegram.session_path,
                api_id=secrets_.telegram_api_id,
                api_hash=secrets_.telegram_api_hash.get_secret_value(),
                chat_ids=(config.telegram.entry_chat_id, config.telegram.risk_chat_id),
                backfill_interval_s=config.telegram.backfill_interval_seconds,
                quiet_reconnect_s=config.telegram.quiet_reconnect_seconds,
                clock=clock,
            )
            try:  # before the daemon exists: nothing can trade on a session that cannot listen
                await source.open()
            except TelegramUnavailable as exc:
                raise StartupRefused(str(exc)) from None
            stack.push_async_callback(source.close)
        secret_values = [
            endpoints.api_key,
            endpoints.api_secret,
            secrets_.telegram_api_hash.get_secret_value(),
            secrets_.discord_webhook_url.get_secret_value(),
        ]
        decision_log = DecisionLog(
            config.storage.log_dir, retention_days=config.storage.log_retention_days, secrets=secret_values
        )
        webhook = secrets_.discord_webhook_url.get_secret_value() if config.alerts.discord else ""
        alerts = Alerts(
            store=store,
            webhook_url=webhook,
            queue_limit=config.alerts.queue_limit,
            max_attempts=config.alerts.max_attempts,
        )
        await store.set_status("meta.profile", profile, clock.now_ms())
        daemon = Daemon(
            config=config,
            profile=profile,
            clock=clock,
            store=store,
            endpoints=endpoints,
            source=source,
            decision_log=decision_log,
            alerts=alerts,
            heartbeat_path=config.storage.heartbeat_path,
            stop_when=options.stop_when,
            observer=options.observer,
        )
        if options.config_path:
            daemon.watch_config(options.config_path)
        return await _run_with_signals(daemon, options.install_signals)


async def external_sim(config: AppConfig, secrets_: Secrets, clock: RunClock) -> Endpoints:
    """The sim profile against a simulated venue running elsewhere (``binance.rest_url`` and the two
    WebSocket URLs set; keys from the environment): the run's clock starts at the venue's time and
    runs at the run's speed, as the venue's own clock does (kill -9 tests restart against it)."""
    rest_url, market_url, private_url = config.binance.urls()
    if not (market_url and private_url):
        raise StartupRefused("an external sim venue needs binance.market_ws_url and binance.private_ws_url")
    import httpx

    async with httpx.AsyncClient(base_url=rest_url, timeout=5.0) as client:
        before = time.monotonic()
        answer = (await client.get("/fapi/v1/time")).json()
        half = (time.monotonic() - before) / 2
    clock.start(int(answer["serverTime"]) + int(half * 1000 * clock.speed))
    return Endpoints(
        rest_url=rest_url,
        market_ws_url=market_url,
        private_ws_url=private_url,
        api_key=secrets_.binance_api_key.get_secret_value(),
        api_secret=secrets_.binance_api_secret.get_secret_value(),
        recv_window_ms=max(config.binance.recv_window_ms, min(60_000, int(5_000 * clock.speed))),
    )


async def open_store(path: str | Path) -> Store:
    """The database, opened before anything else starts: a corrupt file raises ``StoreError`` (it
    is never reset); a missing one is created, and the log says that nothing was restored."""
    if not Path(path).exists():
        log.warning(
            "database %s does not exist: starting fresh (no saved cursors, cooldowns or snapshot)", path
        )
    return await Store.open(path)


async def _run_with_signals(daemon: Daemon, install: bool) -> int:
    """SIGTERM/SIGINT stop the daemon, SIGHUP re-reads the config file."""
    loop = asyncio.get_running_loop()
    handlers: list[tuple[signal.Signals, Callable[..., None], tuple[Any, ...]]] = [
        (signal.SIGTERM, daemon.request_stop, ("SIGTERM",)),
        (signal.SIGINT, daemon.request_stop, ("SIGINT",)),
        (signal.SIGHUP, daemon.request_reload, ()),
    ]
    if install:
        for sig, handler, args in handlers:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, handler, *args)
    try:
        return await daemon.run()
    finally:
        if install:
            for sig, _, _ in handlers:
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)
