"""The reliability harness: faults and crashes at the engine level, checked by invariants.

Theory of operation
-------------------
A run replays one spec scenario through the real ``Engine`` and the scenario venue double
(``fsm.harness.scenario.Runner``), with a fault injected as a transformation of what the engine
sees: the timeline (a WS drop inserts silent seconds), the double's answers (a retryable
rejection, a lost answer resolved by resending the same client id) or the user stream
(duplicated, reordered or delayed events). The scenario's own step expectations are not checked
(a fault legitimately changes the path); instead every run is checked against invariants:

- no client order id is placed twice, except an identical retry with ``attempt + 1``;
- no first entry is committed or placed while a lock forbids it (second entries: every lock but
  the entry lock, which our own position holds on);
- no exit quantity is above the venue's position when the order reaches the venue;
- at every quiet point (end of a step): no open order of ours for an IDLE symbol, no open exit
  order once the venue position is flat, at most one open order per (symbol, leg), at most one
  entry order per (signal, leg) ever created at the venue;
- the engine never failed internally (``engine_error``);
- the final state equals the fault-free run, or is safely locked (safety lock, exit-cancel lock)
  where the fault-free run is not, or is flat where the fault's specified reaction is to flatten
  (R12 market fallback, W35 reset, W23-1 safety flatten).

Every run ends with a few quiet seconds of the 1 s loop (the daemon keeps running after the
timeline), so timers such as the R20 position sync get their chance before the final state is
judged. The double refuses a reduce-only order when there is nothing to reduce (-2022), as
Binance and ``binance.sim`` do.

Crash recovery runs the same scenarios and, at every event boundary (and between the commands of
an event), throws the engine away with everything in flight, starts a fresh recovering engine from
what storage holds and the venue's snapshot, then continues the timeline; it must converge to the
fault-free final state under the same invariants. Storage is kept as the daemon keeps it: the
cursors and cooldowns whose Persist commands were carried out, and the engine snapshot (managed
symbols and generations) saved right after a transition, before its orders go out, and again once
an event's commands were all carried out, with the index of the last event whose commands were all
carried out (the journal seq it covers). Once recovery lifts its lock, the risk messages journaled
after that index and at or below the stored cursor are re-run (specs/DECISIONS.md D-18).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

from fsm import commands as cmd
from fsm import events as ev
from fsm import rules
from fsm.engine import Engine
from fsm.harness.scenario import T0_MS, Runner, ScenarioError, VenueOrder, load_scenarios, run_scenario
from fsm.table import ENTRY_LOCK, EXIT_CANCEL_LOCK, RATE_LIMIT, RECOVERY_LOCK, SAFETY_LOCK

ZERO = Decimal(0)

MATRIX_SCENARIOS: tuple[tuple[str, str], ...] = (
    ("W55", "entry, TP exit"),
    ("W56", "entry, second entry, breakeven exit"),
    ("W57", "risk during a partial fill, loss cut"),
    ("W23-1-position", "stale price: safety lock flattens"),
    ("W38-profit", "risk during a partial fill, profit kept"),
)
CRASH_SCENARIOS: tuple[str, ...] = ("W55", "W56", "W57")
EXIT_LEGS = frozenset({"TP", "BE", "CLOSE", "BE_STOP", "MDD"})
ENTRY_LEG_NAMES = frozenset({"ENTRY1", "ENTRY2"})
# Lock states that forbid new entries (N-05 step 2, N-24, N-25, N-28).
FORBIDDING: dict[str, str] = {
    SAFETY_LOCK: "PRICE_STALE",
    RECOVERY_LOCK: "RECOVERING",
    EXIT_CANCEL_LOCK: "CANCEL_FAILED",
    "auth": "AUTH_LOCKED",
    RATE_LIMIT: "PROTECT",
}
RUNAWAY = 10_000
SETTLE_SECONDS = 12  # > position-sync grace (2 s), five-second rule (5 s), R16 re-query (10 s)


# =============================================================================================
# What a run records
# =============================================================================================


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """One ``Engine.handle`` call: the event, its commands and the global locks just before it."""

    index: int
    step: int
    event: ev.Event
    commands: tuple[cmd.Command, ...]
    locks_before: tuple[tuple[str, str], ...]
    paused_before: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class ExitPlacement:
    """A closing order as it first reached the venue, beside the venue's short size then."""

    command: cmd.PlaceOrder
    venue_position: Decimal


@dataclass(frozen=True, slots=True, kw_only=True)
class OpenOrder:
    symbol: str
    cid: str
    leg: str
    side: str
    price: Decimal
    qty: Decimal
    filled: Decimal = ZERO


@dataclass(frozen=True, slots=True, kw_only=True)
class QuietPoint:
    """The venue and the engine at the end of a step, when nothing is in flight."""

    label: str
    positions: tuple[tuple[str, Decimal], ...]  # absolute size, non-zero only
    open_orders: tuple[OpenOrder, ...]  # ours only
    states: tuple[tuple[str, str], ...]  # engine symbol states, active only


@dataclass(frozen=True, slots=True, kw_only=True)
class FinalState:
    states: tuple[tuple[str, str], ...]
    locks: tuple[tuple[str, str], ...]
    positions: tuple[tuple[str, Decimal], ...]
    open_orders: tuple[tuple[str, str, str, Decimal, Decimal], ...]  # symbol, leg, side, price, qty

    @property
    def flat(self) -> bool:
        return (
            not self.states
            and not self.positions
            and not self.open_orders
            and dict(self.locks).get(ENTRY_LOCK) == "GLOBAL_IDLE"
        )

    @property
    def safely_locked(self) -> bool:
        locks = dict(self.locks)
        return locks.get(SAFETY_LOCK) == "PRICE_STALE" or locks.get(EXIT_CANCEL_LOCK) == "CANCEL_FAILED"

    def describe(self) -> str:
        return (
            f"states={dict(self.states)} locks={dict(self.locks)} positions={dict(self.positions)} "
            f"open={self._orders()}"
        )

    def _orders(self) -> list[str]:
        return [f"{s}:{leg}:{side}:{p}x{q}" for s, leg, side, p, q in self.open_orders]

    def diff(self, other: FinalState) -> str:
        """What ``other`` has that differs from this state, field by field."""
        parts: list[str] = []
        for name, mine, theirs in (
            ("state", dict(self.states), dict(other.states)),
            ("lock", dict(self.locks), dict(other.locks)),
            ("position", {k: str(v) for k, v in self.positions}, {k: str(v) for k, v in other.positions}),
        ):
            for key in sorted(set(mine) | set(theirs)):
                if mine.get(key) != theirs.get(key):
                    parts.append(f"{name} {key}: {mine.get(key, '-')} -> {theirs.get(key, '-')}")
        if self.open_orders != other.open_orders:
            parts.append(f"open orders: {self._orders()} -> {other._orders()}")
        return "; ".join(parts)


@dataclass
class Record:
    decisions: list[Decision] = field(default_factory=list)
    exits: list[ExitPlacement] = field(default_factory=list)
    quiet: list[QuietPoint] = field(default_factory=list)
    created: list[tuple[str, str, str]] = field(default_factory=list)  # symbol, cid, leg at the venue
    executed: list[cmd.Command] = field(default_factory=list)  # commands the runtime carried out
    skipped: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def commands(self) -> list[cmd.Command]:
        return [c for d in self.decisions for c in d.commands]


# =============================================================================================
# Invariant checkers: pure functions over what a run recorded
# =============================================================================================


def _placement_key(command: cmd.PlaceOrder | cmd.PlaceAlgoOrder) -> str:
    return command.client_order_id if isinstance(command, cmd.PlaceOrder) else command.client_algo_id


def check_client_ids(commands: Iterable[cmd.Command]) -> list[str]:
    """A client id is placed once; a repeat must be the identical order with ``attempt + 1``."""
    last: dict[str, cmd.PlaceOrder | cmd.PlaceAlgoOrder] = {}
    problems: list[str] = []
    for command in commands:
        if not isinstance(command, (cmd.PlaceOrder, cmd.PlaceAlgoOrder)):
            continue
        cid = _placement_key(command)
        previous = last.get(cid)
        if previous is None:
            if command.attempt != 1:
                problems.append(f"duplicate id: {cid} first placed with attempt {command.attempt}")
        elif type(previous) is not type(command) or replace(previous, attempt=command.attempt) != command:
            problems.append(f"duplicate id: {cid} placed again with different parameters: {command}")
        elif command.attempt != previous.attempt + 1:
            problems.append(
                f"duplicate id: {cid} placed again with attempt {command.attempt} after {previous.attempt}"
            )
        last[cid] = command
    return problems


def _forbidding(locks: dict[str, str], paused: bool, *, entry_lock: bool) -> list[str]:
    found = [f"{name}={state}" for name, state in FORBIDDING.items() if locks.get(name) == state]
    if entry_lock and locks.get(ENTRY_LOCK) == "GLOBAL_LOCKED":
        found.append("entry_lock=GLOBAL_LOCKED")
    if paused:
        found.append("paused")
    return found


def check_lock_gates(decisions: Iterable[Decision]) -> list[str]:
    """No entry committed (MONITORING -> ENTRY_ORDER) or placed while a lock forbids it."""
    problems: list[str] = []
    for decision in decisions:
        locks = dict(decision.locks_before)
        for command in decision.commands:
            what = ""
            entry_lock = False
            if isinstance(command, cmd.Transitioned) and command.machine == "symbol":
                if command.source == "MONITORING" and command.dest == "ENTRY_ORDER":
                    what, entry_lock = f"{command.symbol} entry committed", True
            elif isinstance(command, cmd.PlaceOrder) and command.leg in ENTRY_LEG_NAMES:
                what = f"{command.leg} {command.client_order_id} placed"
            if not what:
                continue
            blocking = _forbidding(locks, decision.paused_before, entry_lock=entry_lock)
            if blocking:
                problems.append(
                    f"locked entry: {what} while {', '.join(blocking)} "
                    f"(event #{decision.index} {type(decision.event).__name__})"
                )
    return problems


def check_exit_quantities(exits: Iterable[ExitPlacement]) -> list[str]:
    """A closing order never asks for more than the venue's position when it reaches the venue."""
    return [
        f"exit above position: {e.command.leg} {e.command.client_order_id} qty {e.command.quantity} "
        f"> venue position {e.venue_position}"
        for e in exits
        if e.command.quantity > e.venue_position
    ]


def check_quiet_points(points: Iterable[QuietPoint]) -> list[str]:
    """At the end of every step: no orphaned order, no exit without a position, no doubled leg."""
    problems: list[str] = []
    for point in points:
        states = dict(point.states)
        positions = dict(point.positions)
        legs: dict[tuple[str, str], list[str]] = {}
        for order in point.open_orders:
            legs.setdefault((order.symbol, order.leg), []).append(order.cid)
            if order.symbol not in states:
                problems.append(
                    f"{point.label}: orphaned order {order.cid} open while {order.symbol} is IDLE"
                )
            elif order.leg in EXIT_LEGS and order.symbol not in positions:
                problems.append(f"{point.label}: exit order {order.cid} open while {order.symbol} is flat")
        for (symbol, leg), cids in legs.items():
            if len(cids) > 1:
                problems.append(f"{point.label}: {len(cids)} open {leg} orders for {symbol}: {cids}")
    return problems


def check_entry_orders(created: Iterable[tuple[str, str, str]]) -> list[str]:
    """At most one venue entry order per (symbol, signal, leg): a resend never makes a second one."""
    seen: dict[tuple[str, int, str], str] = {}
    problems: list[str] = []
    for symbol, cid, _ in created:
        parsed = rules.parse_client_order_id(cid)
        if parsed is None or parsed.leg not in ENTRY_LEG_NAMES:
            continue
        key = (symbol, parsed.message_id, parsed.leg)
        if key in seen and seen[key] != cid:
            problems.append(f"duplicated entry: {cid} created after {seen[key]} for the same signal")
        seen.setdefault(key, cid)
    return problems


def check_engine_errors(decisions: Iterable[Decision]) -> list[str]:
    return [
        f"engine error on event #{d.index} {type(d.event).__name__}: {dict(c.data).get('error', '')}"
        for d in decisions
        for c in d.commands
        if isinstance(c, cmd.Log) and c.kind == "anomaly" and c.reason == "engine_error"
    ]


def judge_final(
    baseline: FinalState,
    final: FinalState,
    *,
    flat_ok: str | None = None,
    safety_engaged: bool = False,
    flat_needs_safety_lock: bool = False,
) -> tuple[str, list[str]]:
    """(outcome, violations): the final state is the fault-free one, safely locked (when the
    fault-free run is not), or flat where the fault's reaction is specified to flatten (``flat_ok``
    names the rule)."""
    if final == baseline:
        return "same", []
    if final.safely_locked and not baseline.safely_locked:
        return "safely locked", []
    if flat_ok and final.flat and (safety_engaged or not flat_needs_safety_lock):
        return f"flat ({flat_ok})", []
    return "differs", [f"final state differs from the fault-free run: {baseline.diff(final)}"]


def check_record(record: Record) -> list[str]:
    """Every invariant except the final-state judgement."""
    return [
        *record.errors,
        *check_engine_errors(record.decisions),
        *check_client_ids(record.executed),
        *check_lock_gates(record.decisions),
        *check_exit_quantities(record.exits),
        *check_quiet_points(record.quiet),
        *check_entry_orders(record.created),
    ]


# =============================================================================================
# The instrumented runner
# =============================================================================================


class Injector:
    """A fault: hooks around the timeline, the double's answers and the user stream (identity here)."""

    def step(self, runner: FaultRunner, index: int, events: list[ev.Event]) -> list[ev.Event]:
        """The events of step ``index`` before the engine sees them."""
        return self.batch(runner, events)

    def execute(self, runner: FaultRunner, command: cmd.Command) -> list[ev.Event]:
        """Carry one command out at the venue; return what comes back."""
        return runner.execute(command)

    def batch(self, runner: FaultRunner, events: list[ev.Event]) -> list[ev.Event]:
        """A batch of venue events (a step's, or the answers to one event's commands)."""
        return events


@dataclass(frozen=True, slots=True)
class CrashPoint:
    """Crash after the ``event``-th handled event (1-based), once ``commands`` of its commands ran."""

    event: int
    commands: int


class FaultRunner(Runner):
    """``Runner`` with a fault injector, invariant recording and an optional crash point."""

    def __init__(
        self, doc: dict[str, Any], injector: Injector | None = None, crash: CrashPoint | None = None
    ) -> None:
        super().__init__(doc)
        self.injector = injector or Injector()
        self.crash = crash
        self.crashed = False
        self.record = Record()
        self.handled = 0
        self.step_index = -1
        self.stored_cursors: dict[int, int] = {}
        self.stored_cooldowns: dict[str, int] = {}
        # The last saved engine snapshot: managed symbols, generations and the index of the last
        # event whose commands were all carried out when it was saved (the journal seq it covers).
        self.stored_managed: tuple[tuple[str, int, str], ...] = ()
        self.stored_generations: tuple[tuple[str, str, int], ...] = ()
        self.stored_covered = 0
        self.reruns: list[ev.MessageReceived] = []  # D-18: handed over when recovery resumes Telegram
        self.messages: list[
            ev.MessageReceived
        ] = []  # every Telegram message delivered (the backfill's source)
        self._creations: dict[str, int] = {}

    # -- the timeline ------------------------------------------------------------------------

    def step_events(self, step: dict[str, Any]) -> Iterable[ev.Event]:
        yield from super().step_events(step)
        poll = step.get("_fault_poll")
        if poll is not None:
            # The REST premiumIndex poller runs only after the engine switched to REST (N-22).
            if self.engine.price_source == "REST":
                age = int(float(poll.get("age_s", 0)) * 1000)
                for symbol, price in sorted(self.venue.marks.items()):
                    yield ev.MarkPriceTick(
                        now_ms=self.now_ms,
                        symbol=symbol,
                        price=price,
                        event_time_ms=self.now_ms - age,
                        source="REST",
                    )
            yield ev.Tick(now_ms=self.now_ms)

    # -- scripted venue events that a fault made moot are skipped, not errors -------------------

    def _live(self, spec: dict[str, Any], what: str, statuses: tuple[str, ...]) -> VenueOrder | None:
        try:
            order = self._find(spec)
        except (ScenarioError, KeyError):
            self.record.skipped.append(f"step {self.step_index}: {what} {spec}: no such venue order")
            return None
        if order.status not in statuses:
            self.record.skipped.append(f"step {self.step_index}: {what} {order.cid}: it is {order.status}")
            return None
        return order

    def _fill(self, spec: dict[str, Any]) -> Iterable[ev.Event]:
        order = self._live(spec, "fill", ("NEW", "PARTIALLY_FILLED"))
        if order is None:
            return []
        if "qty" in spec and Decimal(str(spec["qty"])) > order.qty - order.filled:
            spec = {k: v for k, v in spec.items() if k != "qty"}
        return list(super()._fill(spec))

    def _venue_cancel(self, spec: dict[str, Any]) -> Iterable[ev.Event]:
        if self._live(spec, "venue cancel", ("NEW", "PARTIALLY_FILLED")) is None:
            return []
        return list(super()._venue_cancel(spec))

    def _algo_trigger(self, spec: dict[str, Any]) -> Iterable[ev.Event]:
        if self._live(spec, "algo trigger", ("NEW",)) is None:
            return []
        return list(super()._algo_trigger(spec))

    # -- the venue double, with bookkeeping ----------------------------------------------------

    def execute(self, command: cmd.Command) -> list[ev.Event]:
        """The unfaulted double (``Runner.answer``) plus what the invariants need to know."""
        if isinstance(command, cmd.PersistCursor):
            self.stored_cursors[command.chat_id] = command.message_id
        elif isinstance(command, cmd.ResumeTelegram) and self.reruns:
            reruns, self.reruns = self.reruns, []
            return [replace(message, now_ms=self.now_ms, rerun=True) for message in reruns]
        elif isinstance(command, cmd.PersistCooldown):
            self.stored_cooldowns[command.symbol] = command.received_at_ms
        cid = ""
        if isinstance(command, (cmd.PlaceOrder, cmd.PlaceAlgoOrder)):
            cid = _placement_key(command)
            if isinstance(command, cmd.PlaceOrder) and command.side == "BUY" and cid not in self.venue.orders:
                amount = self.venue.positions.get(command.symbol, (ZERO, ZERO))[0]
                self.record.exits.append(ExitPlacement(command=command, venue_position=abs(amount)))
                if command.reduce_only and amount == 0:
                    # Like Binance (and binance.sim): nothing to reduce, the order is refused.
                    return [
                        ev.OrderRejected(
                            now_ms=self.now_ms,
                            symbol=command.symbol,
                            client_order_id=cid,
                            code=-2022,
                            message="ReduceOnly Order is rejected.",
                            retryable=False,
                            category="rejected",
                        )
                    ]
        answers = self.answer(command)
        if cid and cid in self.venue.orders:
            order = self.venue.orders[cid]
            known = self._creations.get(cid)
            if known is None:
                self._creations[cid] = order.order_id
                self.record.created.append((order.symbol, cid, order.leg))
            elif known != order.order_id:
                self.record.errors.append(f"duplicated venue order: {cid} exists twice")
        return answers

    # -- driving ---------------------------------------------------------------------------------

    def _locks(self) -> tuple[tuple[str, str], ...]:
        return tuple((name, model.state) for name, model in self.engine.locks.items())

    def feed(self, events: Iterable[ev.Event]) -> list[cmd.Command]:
        queue = list(events)
        emitted: list[cmd.Command] = []
        guard = 0
        while queue:
            guard += 1
            if guard > RUNAWAY:
                raise ScenarioError("runaway command/answer loop")
            event = queue.pop(0)
            if isinstance(event, ev.MessageReceived) and not event.rerun and event not in self.messages:
                self.messages.append(event)
            locks, paused = self._locks(), self.engine.paused
            commands = self.engine.handle(event)
            self.handled += 1
            index = self.handled
            self.record.decisions.append(
                Decision(
                    index=self.handled,
                    step=self.step_index,
                    event=event,
                    commands=tuple(commands),
                    locks_before=locks,
                    paused_before=paused,
                )
            )
            emitted.extend(commands)
            if any(isinstance(c, cmd.Transitioned) for c in commands):
                self._save_snapshot(covered=index - 1)  # as the daemon: before the orders go out
            answers: list[ev.Event] = []
            for done, command in enumerate(commands):
                if self._crash_due(done):
                    self._recover([*answers, *queue])
                    return emitted
                self.record.executed.append(command)
                answers.extend(self.injector.execute(self, command))
            if self._crash_due(len(commands)):
                self._recover([*answers, *queue])
                return emitted
            self._save_snapshot(covered=index)
            queue[0:0] = self.injector.batch(self, answers)
        return emitted

    def _save_snapshot(self, *, covered: int) -> None:
        """What the daemon's snapshot row holds: the managed symbols and generations now, and the
        last event index whose commands were all carried out."""
        symbols = self.engine.symbols
        self.stored_managed = tuple(
            sorted((s, m.message_id, m.state) for s, m in symbols.items() if m.state != "IDLE")
        )
        self.stored_generations = tuple(
            sorted((s, str(leg), int(gen)) for s, m in symbols.items() for leg, gen in m.generations.items())
        )
        self.stored_covered = covered

    def unfinished_risk_messages(self) -> list[ev.MessageReceived]:
        """D-18: risk messages handled after the snapshot's covered index whose cursor is stored."""
        risk_chat = self.strategy.risk_chat_id
        found: dict[int, ev.MessageReceived] = {}
        for decision in self.record.decisions:
            event = decision.event
            if (
                decision.index > self.stored_covered
                and isinstance(event, ev.MessageReceived)
                and event.chat_id == risk_chat
                and isinstance(event.parsed, ev.RiskSignal)
                and event.message_id <= self.stored_cursors.get(risk_chat, 0)
            ):
                found.setdefault(event.message_id, event)
        return [found[k] for k in sorted(found)]

    def _crash_due(self, commands_done: int) -> bool:
        crash = self.crash
        return (
            crash is not None
            and not self.crashed
            and crash.event == self.handled
            and crash.commands == commands_done
        )

    def _recover(self, lost: list[ev.Event]) -> None:
        """kill -9: everything in flight is lost; a fresh engine recovers from storage and the venue.

        The market stream keeps streaming, so the venue's marks arrive; after recovery the Telegram
        backfill re-delivers every message above the stored cursor of its chat (N-28 step 9); the risk
        messages the snapshot does not cover are re-run first, when recovery resumes Telegram (D-18)."""
        self.crashed = True
        now = self.now_ms
        self.engine = Engine(self.strategy, recovering=True)
        self.reruns = self.unfinished_risk_messages()
        self.feed(
            [
                ev.RecoveryStarted(
                    now_ms=now,
                    cursors=tuple(sorted(self.stored_cursors.items())),
                    cooldowns=tuple(sorted(self.stored_cooldowns.items())),
                    managed=self.stored_managed,
                    generations=self.stored_generations,
                )
            ]
        )
        heartbeat: list[ev.Event] = []
        if self.ws_alive:
            heartbeat = [
                ev.MarkPriceTick(now_ms=now, symbol=symbol, price=price, event_time_ms=now)
                for symbol, price in sorted(self.venue.marks.items())
            ]
        self.feed([*heartbeat, ev.Tick(now_ms=now)])
        pending = [e for e in lost if isinstance(e, ev.MessageReceived) and e not in self.messages]
        backfill = [
            replace(message, now_ms=now)
            for message in [*self.messages, *pending]
            if message.message_id > self.stored_cursors.get(message.chat_id, 0)
        ]
        self.feed(backfill)

    def quiet_point(self, label: str) -> QuietPoint:
        positions = tuple(
            (symbol, abs(amount))
            for symbol, (amount, _) in sorted(self.venue.positions.items())
            if amount != 0
        )
        open_orders = tuple(
            OpenOrder(
                symbol=o.symbol,
                cid=o.cid,
                leg=o.leg,
                side=o.side,
                price=o.price,
                qty=o.qty,
                filled=o.filled,
            )
            for o in self.venue.orders.values()
            if o.status in ("NEW", "PARTIALLY_FILLED") and rules.parse_client_order_id(o.cid) is not None
        )
        states = tuple(sorted(self.engine.active_symbols().items()))
        return QuietPoint(label=label, positions=positions, open_orders=open_orders, states=states)

    def final_state(self) -> FinalState:
        point = self.quiet_point("final")
        return FinalState(
            states=point.states,
            locks=tuple(sorted(self._locks())),
            positions=point.positions,
            open_orders=tuple(sorted((o.symbol, o.leg, o.side, o.price, o.qty) for o in point.open_orders)),
        )

    def run_checked(self, settle_s: int = SETTLE_SECONDS) -> Record:
        """Run every step with the injector, then ``settle_s`` quiet seconds of the 1 s loop (the
        daemon keeps running after the timeline: timers such as the R20 position sync, the
        five-second rule and the R16 re-query get their chance); record decisions and quiet points."""
        steps = list(self.doc.get("steps") or [])
        end = _at(steps[-1]) if steps else 0.0
        steps += [{"at": end + s, "tick": True, "label": "settle"} for s in range(1, settle_s + 1)]
        for index, step in enumerate(steps):
            self.step_index = index
            self.now_ms = T0_MS + int(float(step.get("at", 0)) * 1000)
            try:
                events = self.injector.step(self, index, list(self.step_events(step)))
                self.feed(events)
            except (ScenarioError, KeyError, ValueError) as exc:
                self.record.errors.append(f"step {index}: scenario error: {exc!r}")
                break
            self.record.quiet.append(self.quiet_point(f"after step {index} (t={step.get('at', 0)}s)"))
        return self.record

    def safety_engaged(self) -> bool:
        return any(
            isinstance(c, cmd.Transitioned) and c.machine == SAFETY_LOCK and c.dest == "PRICE_STALE"
            for c in self.record.commands()
        )


# =============================================================================================
# The faults
# =============================================================================================

USER_EVENTS = (ev.OrderUpdated, ev.AlgoOrderUpdated, ev.PositionChanged)


class RejectFirstAttempt(Injector):
    """Every order's first attempt fails with a retryable error (5xx, timeout, -1021): the venue
    did not take it; the retry with the same client id goes through."""

    def __init__(
        self, code: int, message: str, *, timestamp: bool = False, legs: frozenset[str] | None = None
    ):
        self.code = code
        self.message = message
        self.timestamp = timestamp
        self.legs = legs
        self.failed: set[str] = set()

    def execute(self, runner: FaultRunner, command: cmd.Command) -> list[ev.Event]:
        if not isinstance(command, (cmd.PlaceOrder, cmd.PlaceAlgoOrder)):
            return runner.execute(command)
        if self.legs is not None and command.leg not in self.legs:
            return runner.execute(command)
        if not self._fails(_placement_key(command), command.attempt):
            return runner.execute(command)
        out: list[ev.Event] = []
        if self.timestamp:
            out.append(
                ev.VenueErrorObserved(
                    now_ms=runner.now_ms, category="timestamp", code=self.code, message=self.message
                )
            )
        out.append(
            ev.OrderRejected(
                now_ms=runner.now_ms,
                symbol=command.symbol,
                client_order_id=_placement_key(command),
                code=self.code,
                message=self.message,
                retryable=True,
                category="retry",
            )
        )
        return out

    def _fails(self, cid: str, attempt: int) -> bool:
        if attempt != 1 or cid in self.failed:
            return False
        self.failed.add(cid)
        return True


class RejectEveryAttempt(RejectFirstAttempt):
    """The first entry fails on every attempt (W35: three attempts, then reset)."""

    def _fails(self, cid: str, attempt: int) -> bool:
        return True


class LostAnswer(Injector):
    """The venue takes every order but the answer is lost (timeout after acceptance); the executor
    sends the same request again, and the venue answers the repeated client id with the existing
    order. The user stream still reports what the order did."""

    def execute(self, runner: FaultRunner, command: cmd.Command) -> list[ev.Event]:
        if not isinstance(command, (cmd.PlaceOrder, cmd.PlaceAlgoOrder)):
            return runner.execute(command)
        first = [e for e in runner.execute(command) if isinstance(e, USER_EVENTS)]
        return [*first, *runner.execute(command)]


class RateLimitBurst(Injector):
    """Five consecutive rate-limit failures (429/418/-1003) before the chosen steps, then successes
    after them: rate-limit protection is on while the step's events are handled (N-24); the 1 s
    loop evaluates again once it lifts."""

    CODES = (429, 429, -1003, 418, 429)

    def __init__(self, steps: frozenset[int] | None) -> None:
        self.steps = steps

    def step(self, runner: FaultRunner, index: int, events: list[ev.Event]) -> list[ev.Event]:
        if self.steps is not None and index not in self.steps:
            return events
        now = runner.now_ms
        errors: list[ev.Event] = [
            ev.VenueErrorObserved(now_ms=now, category="rate_limited", code=code) for code in self.CODES
        ]
        successes: list[ev.Event] = [ev.VenueCallSucceeded(now_ms=now) for _ in range(3)]
        return [*errors, *events, *successes, ev.Tick(now_ms=now)]


class DuplicateUserEvents(Injector):
    """Every user-stream event (ORDER_TRADE_UPDATE, ALGO_UPDATE, ACCOUNT_UPDATE) arrives twice."""

    def batch(self, runner: FaultRunner, events: list[ev.Event]) -> list[ev.Event]:
        out: list[ev.Event] = []
        for event in events:
            out.append(event)
            if isinstance(event, USER_EVENTS):
                out.append(event)
        return out


class SwapOrderUpdates(Injector):
    """Adjacent ORDER_TRADE_UPDATEs of different orders swap places within a batch."""

    def batch(self, runner: FaultRunner, events: list[ev.Event]) -> list[ev.Event]:
        out = list(events)
        slots = [i for i, e in enumerate(out) if isinstance(e, ev.OrderUpdated)]
        for a, b in zip(slots[::2], slots[1::2], strict=False):
            first, second = out[a], out[b]
            assert isinstance(first, ev.OrderUpdated) and isinstance(second, ev.OrderUpdated)
            if first.client_order_id != second.client_order_id:
                out[a], out[b] = second, first
        return out


class LateNew(Injector):
    """The NEW update of an order arrives after its first fill (PARTIALLY_FILLED or FILLED)."""

    def __init__(self) -> None:
        self.sent: set[str] = set()

    def batch(self, runner: FaultRunner, events: list[ev.Event]) -> list[ev.Event]:
        out: list[ev.Event] = []
        for event in events:
            out.append(event)
            if (
                isinstance(event, ev.OrderUpdated)
                and event.status in ("PARTIALLY_FILLED", "FILLED")
                and event.client_order_id not in self.sent
            ):
                self.sent.add(event.client_order_id)
                out.append(
                    replace(
                        event,
                        status="NEW",
                        cum_qty=ZERO,
                        last_qty=ZERO,
                        last_price=ZERO,
                        avg_price=ZERO,
                        trade_id=0,
                        realized_pnl=ZERO,
                        commission=ZERO,
                    )
                )
        return out


class PositionFirst(Injector):
    """ACCOUNT_UPDATE overtakes the fill it results from: PositionChanged before its OrderUpdated."""

    def batch(self, runner: FaultRunner, events: list[ev.Event]) -> list[ev.Event]:
        out: list[ev.Event] = []
        for event in events:
            if isinstance(event, ev.PositionChanged):
                fills = [
                    i
                    for i, e in enumerate(out)
                    if isinstance(e, ev.OrderUpdated) and e.symbol == event.symbol and e.last_qty > 0
                ]
                if fills:
                    out.insert(fills[-1], event)
                    continue
            out.append(event)
        return out


class RequeryAt(Injector):
    """listenKey expiry: the user stream is re-opened and the account re-queried before a step."""

    def __init__(self, index: int) -> None:
        self.index = index

    def step(self, runner: FaultRunner, index: int, events: list[ev.Event]) -> list[ev.Event]:
        if index != self.index:
            return events
        return [runner._snapshot("requery"), *events]


# -- timeline transformations ---------------------------------------------------------------------


def _at(step: dict[str, Any]) -> float:
    return float(step.get("at", 0))


def ws_down_after(steps: Sequence[dict[str, Any]], index: int) -> bool:
    """Whether the scenario itself has the market stream down after step ``index``."""
    up = True
    for step in steps[: index + 1]:
        if "ws" in step:
            up = step["ws"] == "up"
    return not up


def with_silent_market(
    doc: dict[str, Any], after: int, seconds: int, *, rest_age_s: int, reason: str
) -> dict[str, Any]:
    """The market stream goes silent right after step ``after`` for ``seconds`` 1 s ticks (the REST
    poller answering with marks ``rest_age_s`` old once the engine switched to it); it comes back
    just before the next step, and every later step moves by the gap."""
    out = copy.deepcopy(doc)
    steps: list[dict[str, Any]] = out["steps"]
    start = _at(steps[after])
    shift = seconds + 1
    gap: list[dict[str, Any]] = [
        {"at": start, "ws": "down", "ws_reason": reason, "label": f"fault: {reason}"}
    ]
    gap += [{"at": start + s, "_fault_poll": {"age_s": rest_age_s}} for s in range(1, seconds + 1)]
    later = [dict(step, at=_at(step) + shift) for step in steps[after + 1 :]]
    resume: list[dict[str, Any]] = []
    if later:
        resume = [{"at": _at(later[0]), "ws": "up", "tick": True, "label": "fault: market stream back"}]
    out["steps"] = [*steps[: after + 1], *gap, *resume, *later]
    return out


# -- the catalogue of faults -------------------------------------------------------------------------

Variant = tuple[str, dict[str, Any], Injector]


@dataclass(frozen=True, slots=True, kw_only=True)
class Fault:
    name: str
    title: str
    variants: Callable[[dict[str, Any]], list[Variant]]
    flat_ok: str | None = None  # the rule under which flattening is this fault's specified reaction
    flat_needs_safety_lock: bool = False


def _one(injector: Callable[[], Injector]) -> Callable[[dict[str, Any]], list[Variant]]:
    def variants(doc: dict[str, Any]) -> list[Variant]:
        return [("", doc, injector())]

    return variants


def _boundaries(doc: dict[str, Any]) -> range:
    return range(len(doc.get("steps") or []) - 1)


def _rejections(doc: dict[str, Any]) -> list[Variant]:
    return [
        ("5xx on every order's first attempt", doc, RejectFirstAttempt(-1001, "503 Service Unavailable")),
        ("timeout on every order's first attempt", doc, RejectFirstAttempt(0, "request timed out")),
        (
            "first entry fails on every attempt",
            doc,
            RejectEveryAttempt(-1001, "503 Service Unavailable", legs=frozenset({"ENTRY1"})),
        ),
    ]


def _rate_limits(doc: dict[str, Any]) -> list[Variant]:
    out: list[Variant] = [("every step", doc, RateLimitBurst(None))]
    out += [(f"step {i}", doc, RateLimitBurst(frozenset({i}))) for i in range(len(doc.get("steps") or []))]
    return out


def _reorders(doc: dict[str, Any]) -> list[Variant]:
    return [("swap adjacent updates", doc, SwapOrderUpdates()), ("NEW after the first fill", doc, LateNew())]


def _ws_drops(doc: dict[str, Any]) -> list[Variant]:
    steps = doc.get("steps") or []
    return [
        (f"after step {i}", with_silent_market(doc, i, 6, rest_age_s=0, reason="ws drop"), Injector())
        for i in _boundaries(doc)
        if not ws_down_after(steps, i)
    ]


def _silent_stale(doc: dict[str, Any]) -> list[Variant]:
    steps = doc.get("steps") or []
    return [
        (
            f"after step {i}",
            with_silent_market(doc, i, 16, rest_age_s=20, reason="silent ws, stale REST"),
            Injector(),
        )
        for i in _boundaries(doc)
        if not ws_down_after(steps, i)
    ]


def _listen_key(doc: dict[str, Any]) -> list[Variant]:
    return [(f"before step {i + 1}", doc, RequeryAt(i + 1)) for i in _boundaries(doc)]


FAULTS: tuple[Fault, ...] = (
    Fault(
        name="retryable",
        title="order request fails retryably (5xx/timeout)",
        variants=_rejections,
        flat_ok="R12 (a rejected limit exit closes at market) / W35 (entry reset after 3 failures)",
    ),
    Fault(name="unknown", title="unknown outcome, resolved by resending the id", variants=_one(LostAnswer)),
    Fault(name="429/418", title="rate limited x5, then successes", variants=_rate_limits),
    Fault(
        name="-1021",
        title="timestamp outside recvWindow (retryable)",
        variants=_one(lambda: RejectFirstAttempt(-1021, "Timestamp outside recvWindow", timestamp=True)),
        flat_ok="R12 (a rejected limit exit closes at market)",
    ),
    Fault(name="dup", title="every user event delivered twice", variants=_one(DuplicateUserEvents)),
    Fault(name="reorder", title="user events reordered", variants=_reorders),
    Fault(name="delay", title="position update before its fill", variants=_one(PositionFirst)),
    Fault(name="ws-drop", title="no WS marks for 6 s: REST fallback", variants=_ws_drops),
    Fault(
        name="silent+stale",
        title="silent WS and stale REST: safety lock",
        variants=_silent_stale,
        flat_ok="W23-1 (the safety lock flattens)",
        flat_needs_safety_lock=True,
    ),
    Fault(name="listenKey", title="listenKey expiry: account re-queried mid-run", variants=_listen_key),
)


# =============================================================================================
# Running the matrix
# =============================================================================================


@dataclass(frozen=True, slots=True, kw_only=True)
class RunResult:
    scenario: str
    fault: str
    variant: str
    violations: tuple[str, ...]
    outcome: str = "same"
    skipped: tuple[str, ...] = ()
    events: int = 0

    @property
    def passed(self) -> bool:
        return not self.violations

    def as_json(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "passed": self.passed,
            "outcome": self.outcome,
            "violations": list(self.violations),
            "skipped": list(self.skipped),
            "events": self.events,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class CellResult:
    scenario: str
    fault: str
    runs: tuple[RunResult, ...]

    @property
    def passed(self) -> bool:
        return bool(self.runs) and all(r.passed for r in self.runs)

    @property
    def failed_runs(self) -> list[RunResult]:
        return [r for r in self.runs if not r.passed]


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class MatrixResult:
    scenarios: tuple[str, ...]
    faults: tuple[str, ...]
    cells: tuple[CellResult, ...]

    def __repr__(self) -> str:
        failed = sum(not c.passed for c in self.cells)
        return f"MatrixResult({len(self.cells)} cells, {failed} failed)"

    def cell(self, scenario: str, fault: str) -> CellResult:
        return next(c for c in self.cells if c.scenario == scenario and c.fault == fault)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.cells)

    def as_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "scenarios": list(self.scenarios),
            "faults": list(self.faults),
            "cells": [
                {
                    "scenario": c.scenario,
                    "fault": c.fault,
                    "passed": c.passed,
                    "runs": [r.as_json() for r in c.runs],
                }
                for c in self.cells
            ],
        }


def baseline(doc: dict[str, Any]) -> tuple[FinalState, RunResult]:
    """The fault-free run: its final state is the reference; it must satisfy every invariant and
    the scenario's own expectations."""
    runner = FaultRunner(copy.deepcopy(doc))
    record = runner.run_checked()
    violations = check_record(record)
    expected = run_scenario(doc)
    violations += [f"fault-free scenario expectation: {f}" for f in expected.failures]
    result = RunResult(
        scenario=str(doc["id"]),
        fault="none",
        variant="",
        violations=tuple(violations),
        skipped=tuple(record.skipped),
        events=len(record.decisions),
    )
    return runner.final_state(), result


def run_variant(
    doc: dict[str, Any], fault: Fault, variant: str, injector: Injector, reference: FinalState
) -> RunResult:
    runner = FaultRunner(copy.deepcopy(doc), injector)
    record = runner.run_checked()
    violations = check_record(record)
    outcome, wrong = judge_final(
        reference,
        runner.final_state(),
        flat_ok=fault.flat_ok,
        safety_engaged=runner.safety_engaged(),
        flat_needs_safety_lock=fault.flat_needs_safety_lock,
    )
    return RunResult(
        scenario=str(doc["id"]),
        fault=fault.name,
        variant=variant,
        outcome=outcome,
        violations=tuple([*violations, *wrong]),
        skipped=tuple(record.skipped),
        events=len(record.decisions),
    )


def run_matrix(scenarios: Sequence[str] | None = None, faults: Sequence[Fault] | None = None) -> MatrixResult:
    catalog = load_scenarios()
    chosen = list(scenarios or [s for s, _ in MATRIX_SCENARIOS])
    chosen_faults = list(faults or FAULTS)
    cells: list[CellResult] = []
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # the engine logs every anomaly a fault provokes
    try:
        for scenario in chosen:
            doc = catalog[scenario]
            reference, base = baseline(doc)
            cells.append(CellResult(scenario=scenario, fault="none", runs=(base,)))
            for fault in chosen_faults:
                runs = tuple(
                    run_variant(variant_doc, fault, label, injector, reference)
                    for label, variant_doc, injector in fault.variants(doc)
                )
                cells.append(CellResult(scenario=scenario, fault=fault.name, runs=runs))
    finally:
        logging.disable(previous)
    return MatrixResult(
        scenarios=tuple(chosen), faults=("none", *(f.name for f in chosen_faults)), cells=tuple(cells)
    )


# =============================================================================================
# Crash recovery
# =============================================================================================


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class CrashMatrixResult:
    scenarios: tuple[str, ...]
    runs: tuple[RunResult, ...]

    def __repr__(self) -> str:
        failed = sum(not r.passed for r in self.runs)
        return f"CrashMatrixResult({len(self.runs)} crash points, {failed} not converged)"

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.runs)

    def as_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "scenarios": list(self.scenarios),
            "runs": [{"scenario": r.scenario, **r.as_json()} for r in self.runs],
        }


def crash_points(doc: dict[str, Any]) -> list[tuple[CrashPoint, str]]:
    """Every event boundary of the fault-free run, and every point between an event's commands."""
    runner = FaultRunner(copy.deepcopy(doc))
    record = runner.run_checked()
    points: list[tuple[CrashPoint, str]] = []
    for decision in record.decisions:
        names = [type(c).__name__ for c in decision.commands]
        for done in range(len(decision.commands) + 1):
            what = f"after event #{decision.index} {type(decision.event).__name__} (step {decision.step})"
            if decision.commands:
                what += f", {done}/{len(names)} commands carried out"
                if done < len(names):
                    what += f" (next: {names[done]})"
            points.append((CrashPoint(event=decision.index, commands=done), what))
    return points


def run_crash(doc: dict[str, Any], point: CrashPoint, label: str, reference: FinalState) -> RunResult:
    runner = FaultRunner(copy.deepcopy(doc), crash=point)
    record = runner.run_checked()
    violations = check_record(record)
    if not runner.crashed:
        violations.append("the crash point was never reached")
    final = runner.final_state()
    if final != reference:
        violations.append(f"not converged: {reference.diff(final)}" + _lost_events(record, point))
    return RunResult(
        scenario=str(doc["id"]),
        fault="crash",
        variant=label,
        violations=tuple(violations),
        skipped=tuple(record.skipped),
        events=len(record.decisions),
    )


def _lost_events(record: Record, point: CrashPoint) -> str:
    decision = next((d for d in record.decisions if d.index == point.event), None)
    if decision is None:
        return ""
    lost = [type(c).__name__ for c in decision.commands[point.commands :] if not isinstance(c, cmd.Log)]
    return f"; crash after {type(decision.event).__name__}, commands not carried out: {lost}"


def run_crash_matrix(scenarios: Sequence[str] = CRASH_SCENARIOS) -> CrashMatrixResult:
    catalog = load_scenarios()
    runs: list[RunResult] = []
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        for scenario in scenarios:
            doc = catalog[scenario]
            reference, _ = baseline(doc)
            runs.extend(run_crash(doc, point, label, reference) for point, label in crash_points(doc))
    finally:
        logging.disable(previous)
    return CrashMatrixResult(scenarios=tuple(scenarios), runs=tuple(runs))
