"""The engine's state and the primitives every part of it uses: the outbox (``emit``, ``log``,
``critical``), the symbol models and their machine (``symbol_model``, ``fire``, ``reset``), the
global locks (``fire_lock``). The parts (``fsm.intake``, ``prices``, ``account``, ``protection``,
``order_flow``, ``lifecycle``, ``recovery``, ``settings``) are functions of a ``Core``; ``fsm.engine``
is the facade that routes events to them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from decimal import ROUND_HALF_EVEN, Context, Decimal, DivisionByZero, InvalidOperation, Overflow
from typing import TYPE_CHECKING

from transitions import Machine

if TYPE_CHECKING:
    from transitions.core import CallbackFunc

from fsm import commands as cmd
from fsm import events as ev
from fsm import rules
from fsm.model import ENTRY_LEGS, LockModel, SymbolModel
from fsm.strategy import Strategy
from fsm.table import (
    GLOBAL_MACHINES,
    RECOVERY_LOCK,
    SYMBOL_REGIONS,
    SYMBOL_STATES,
    SYMBOL_TRANSITIONS,
    TRIGGERS,
    find_row,
    legal_dest,
)

log = logging.getLogger("shortfsm.engine")

# Python's default context, fixed: every Decimal operation of the engine happens in it.
DECIMAL_CONTEXT = Context(
    prec=28, rounding=ROUND_HALF_EVEN, traps=[InvalidOperation, DivisionByZero, Overflow]
)
ZERO = Decimal(0)
_POOL_SIZE = 64  # released symbol models kept for reuse
CLOSE_RETRY_FIRST_MS = 5_000  # timed market closes once the attempts ran out (D-19) ...
CLOSE_RETRY_MAX_MS = 60_000  # ... doubling up to once a minute
ENTRY_WAIT_MAX_MS = 5_000  # an entry the venue asks to delay longer than this is given up (W35)
ORPHAN_LIMIT = 50
RATE_LIMIT_CODES = frozenset({-1003, -1015})  # TOO_MANY_REQUESTS / bans, TOO_MANY_ORDERS
RISK_SEEN_KEEP = 256  # risk message ids remembered past the cursor (late gap reads, D-34)
RESOLVE_RETRY_FIRST_MS = 1_000  # a failing query of an UNKNOWN order is asked again after 1 s ...
RESOLVE_RETRY_MAX_MS = 30_000  # ... doubling up to every 30 s, for as long as it takes
RESOLVE_ALERT_AFTER = 3  # failed queries before a person is told the order's fate is still unknown
STOP_RETRY_MS = 1_000  # a stop refused as "no position" while one is held: asked again after 1 s
RATE_PROBE_MS = 5_000  # one signed read every 5 s while rate-limit protection holds (D-43)
AUTH_PROBE_FIRST_MS = 5_000  # the auth lock asks the venue with a signed read after 5 s ...
AUTH_PROBE_MAX_MS = 60_000  # ... doubling up to once a minute, until the key works again


class RefusedTransition(RuntimeError):
    """A row's ``unless`` refused a transition the engine decided: a bug in that decision. Raised
    inside ``Engine.handle``, it is contained like any engine error (D-32)."""


class _RegionMachine(Machine):
    """A further machine over the same models (the close table on ``close_state``, the triggers...).
    The phase machine bound the models' generic ``trigger``/``may_trigger``; this one binds only its
    own triggers (without the skip, ``transitions`` logs a warning for every new model)."""

    def _checked_assignment(self, model: object, name: str, func: CallbackFunc) -> None:
        if name not in ("trigger", "may_trigger"):
            super()._checked_assignment(model, name, func)


class Core:
    """Everything the engine knows; changed only while ``Engine.handle`` runs."""

    def __init__(self, strategy: Strategy | None = None, *, recovering: bool = False) -> None:
        self.strategy = strategy or Strategy()
        self.symbols: dict[str, SymbolModel] = {}
        self.cursors: dict[int, int] = {}
        # The risk channel's last processed ids (bounded): a risk message read late by a backfill,
        # after a newer live one moved the cursor past it (a FloodWait held its gap read), is still
        # acted on once; risk messages only ever reduce risk (N-27).
        self.risk_seen: tuple[int, ...] = ()
        self.cooldowns: dict[str, int] = {}
        self.marks: dict[str, Decimal] = {}
        self.infos: dict[str, ev.SymbolInfo] = {}  # filters of every symbol we traded (dust checks)
        # Account-wide view for the entry lock (N-21): positions and open entry orders, ours or not.
        self.account_positions: dict[str, Decimal] = {}
        self.position_times: dict[str, int] = {}  # symbol -> venue time of the last position update
        self.account_entry_orders: dict[str, str] = {}
        # symbol -> time of a fill of a non-closing order whose position update has not come yet:
        # between the two, neither the order nor the position holds the entry lock (N-21).
        self.unconfirmed_fills: dict[str, int] = {}
        self.closed_order_keys: dict[str, int] = {}
        self.position_mode: str | None = None
        self.wallet_balance = ZERO
        self.available_balance = ZERO
        # Price source (N-22).
        self.price_source = "WS"
        self.last_ws_ms: int | None = None
        self.last_rest_ms: int | None = None
        self.rest_failing = False
        self.ws_reason = ""
        # Per symbol: when its last WS mark arrived, the venue time of its last REST mark, and since
        # when it is watched. One silent symbol is stale even while others tick (W22, W23-1).
        self.mark_ws_ms: dict[str, int] = {}
        self.mark_rest_ms: dict[str, int] = {}
        self.watch_since: dict[str, int] = {}
        # Protection counters (N-24) and operator pause.
        self.rate_failures = 0
        self.rate_successes = 0
        self.paused = False
        # D-23: strategy settings refused by the settings lock, applied once nothing is active.
        self.pending_settings: dict[str, str] = {}
        self.requery_due_ms = 0
        self.auth_probe_due_ms = 0
        self.auth_probes = 0
        self.rate_probe_due_ms = 0
        self.recovery_snapshot_done = False
        self.recovery_started_ms = 0
        self.price_seen_ms = 0  # when the last fresh mark price (any symbol, WS or REST) arrived
        self.recovery_query_due_ms = 0
        self.recovery_hints: dict[str, tuple[int, str]] = {}
        self.recovery_closing: dict[str, str] = {}  # symbol -> reason of a close decided before the restart
        self.recovery_held: dict[str, Decimal] = {}  # symbol -> position the last snapshot held
        self.recovery_protected: tuple[str, ...] = ()  # symbols R06 protected before the restart
        self.now_ms = 0
        self._out: list[cmd.Command] = []
        # Indexes derived from the state above (rebuilt by ``reindex``, never snapshotted), so the
        # 1-second evaluation costs what changed, not what is monitored (issue #11 step 9):
        self.seq_of: dict[str, int] = {}  # symbol -> creation order (``symbols``' iteration order)
        self._next_seq = 0
        self.busy: dict[str, SymbolModel] = {}  # beyond MONITORING, or monitoring with orders
        self.entry_ready: set[str] = set()  # MONITORING symbols whose mark is at their trigger
        # Watched symbols by when their WS price was last fresh (max of the last WS mark and the
        # start of the watch), oldest first: now is monotonic, so each update goes to the end.
        self.ws_fresh: dict[str, int] = {}
        self.ws_fresh_sorted = True  # False after an out-of-order stamp, until the next look
        self.unwatched: list[str] = []  # symbols created since the watch list was last brought up to date
        self.closed_fills: dict[str, Decimal] = {}  # cid -> quantity booked, for orders of reset symbols
        self.recovery_generations: dict[str, dict[str, int]] = {}
        # Released models stay attached to the symbol machine and are reused: ``add_model`` costs
        # about half of a leading message. A model released during an event joins the pool only
        # once that event is done, so no handler can see its object reused under another symbol.
        self._released: list[SymbolModel] = []
        self._pool: list[SymbolModel] = []
        self._symbol_machine = Machine(
            model=None,
            states=list(SYMBOL_STATES),
            transitions=[dict(row) for row in SYMBOL_TRANSITIONS],
            initial="IDLE",
            auto_transitions=False,
        )
        # The machines beside the phase drive the same models through their own attribute
        # (``close_state``, ``tp_trigger``...: fsm/table.py SYMBOL_REGIONS).
        self._regions: dict[str, Machine] = {
            name: _RegionMachine(
                model=None,
                states=list(region["states"]),
                transitions=[dict(row) for row in region["rows"]],
                initial=region["initial"],
                auto_transitions=False,
                model_attribute=region["attribute"],
            )
            for name, region in SYMBOL_REGIONS.items()
        }
        self.locks: dict[str, LockModel] = {}
        self._lock_machines: dict[str, Machine] = {}
        self._build_lock_machines(recovering)

    def _build_lock_machines(self, recovering: bool) -> None:
        """One ``transitions`` machine per global lock (fsm/table.py's GLOBAL_MACHINES)."""
        for name, (states, initial, rows) in GLOBAL_MACHINES.items():
            if name == RECOVERY_LOCK and not recovering:
                initial = "READY"
            model = LockModel(name=name, state=initial)
            self._lock_machines[name] = Machine(
                model=model,
                states=list(states),
                transitions=[dict(row) for row in rows],
                initial=initial,
                auto_transitions=False,
            )
            self.locks[name] = model

    def state_of(self, symbol: str) -> str:
        model = self.symbols.get(symbol)
        return model.state if model else "IDLE"

    def close_state_of(self, symbol: str) -> str:
        model = self.symbols.get(symbol)
        return model.close_state if model else "OPEN"

    def lock_state(self, name: str) -> str:
        return self.locks[name].state

    def active_symbols(self) -> dict[str, str]:
        return {s: m.state for s, m in self.symbols.items() if m.state != "IDLE"}

    def emit(self, command: cmd.Command) -> None:
        self._out.append(command)

    def log(self, kind: str, symbol: str | None, reason: str, **data: object) -> None:
        self.emit(
            cmd.Log(kind=kind, symbol=symbol, reason=reason, data=tuple((k, str(v)) for k, v in data.items()))
        )

    def critical(self, kind: str, symbol: str | None, text: str) -> None:
        """An alert a person must see (never blocks trading: the runtime queues it)."""
        self.emit(cmd.Notify(kind=kind, symbol=symbol, text=text, severity="critical"))

    def anomaly(self, reason: str, symbol: str | None, detail: str = "") -> None:
        log.warning("anomaly %s %s %s", reason, symbol or "-", detail)
        self.log("anomaly", symbol, reason, detail=detail)

    def symbol_model(self, symbol: str) -> SymbolModel:
        model = self.symbols.get(symbol)
        if model is None:
            if self._pool:
                model = self._pool.pop()
                model.reset_to(symbol)
            else:
                model = SymbolModel(symbol=symbol)
                self.add_to_machines(model)
            self.symbols[symbol] = model
            self.seq_of[symbol] = self._next_seq
            self._next_seq += 1
            self.unwatched.append(symbol)
            if self.locks[RECOVERY_LOCK].state == "RECOVERING":
                model.generations.update(self.recovery_generations.get(symbol, {}))
        return model

    def fire(self, model: SymbolModel, trigger: str, reason: str) -> bool:
        """Fire a trigger of the symbol table; an internal row keeps the state and tells nothing."""
        return self._fire_row(model, "symbol", trigger, reason)

    def fire_close(self, model: SymbolModel, trigger: str, reason: str) -> bool:
        """Fire a trigger of the close table (``close_state``); an internal row tells nothing."""
        return self._fire_row(model, "close", trigger, reason)

    def fire_region(self, model: SymbolModel, region: str, trigger: str, reason: str) -> bool:
        """Fire a trigger of one of the machines beside the phase (fsm/table.py SYMBOL_REGIONS)."""
        return self._fire_row(model, region, trigger, reason)

    def set_trigger(self, model: SymbolModel, name: str, armed: bool, reason: str) -> None:
        """Arm or disarm a price trigger (``tp``, ``add``, ``be``); told only when it changes."""
        self._fire_row(model, name, f"arm_{name}" if armed else f"disarm_{name}", reason)

    def disarm_all(self, model: SymbolModel, reason: str) -> None:
        """The trade is closing: no price trigger of it fires any more."""
        for name in TRIGGERS:
            self._fire_row(model, name, f"disarm_{name}", reason)

    def _fire_row(self, model: SymbolModel, machine: str, trigger: str, reason: str) -> bool:
        if machine == "symbol":
            rows, attr, where = SYMBOL_TRANSITIONS, "state", ""
        else:
            region = SYMBOL_REGIONS[machine]
            rows, attr, where = region["rows"], region["attribute"], f"{machine} "
        source = getattr(model, attr)
        row = find_row(rows, source, trigger)
        if row is None:
            self.anomaly("illegal_transition", model.symbol, f"{trigger} from {where}{source}")
            return False
        if row["dest"] is None and not row.get("unless"):
            return True  # an internal row with nothing to check: ``transitions`` would do nothing
        if not getattr(model, trigger)():  # ``transitions`` says False when an ``unless`` held
            refused_by = [name for name in row.get("unless", ()) if getattr(model, name)()]
            raise RefusedTransition(f"{trigger} of {model.symbol} from {where}{source} refused: {refused_by}")
        dest = row["dest"] or source
        if getattr(model, attr) != dest:  # a trigger shadowed by a model attribute would do nothing
            raise RuntimeError(f"{trigger} left {model.symbol} in {where}{getattr(model, attr)}, not {dest}")
        if row["dest"] is None:
            return True
        if machine == "symbol":
            self.track(model)
        self.emit(
            cmd.Transitioned(
                machine=machine, symbol=model.symbol, source=source, dest=dest, trigger=trigger, reason=reason
            )
        )
        return True

    def decide_close(self, model: SymbolModel, reason: str) -> None:
        """Close the symbol for ``reason`` (which replaces an earlier one): close table ``decide_close``."""
        self.fire_close(model, "decide_close", reason)
        model.close_reason = reason

    def fire_lock(self, name: str, trigger: str, reason: str) -> bool:
        lock = self.locks[name]
        rows = GLOBAL_MACHINES[name][2]
        dest = legal_dest(rows, lock.state, trigger)
        if dest is None:
            return False
        source = lock.state
        getattr(lock, trigger)()
        self.emit(
            cmd.Transitioned(
                machine=name, symbol=None, source=source, dest=dest, trigger=trigger, reason=reason
            )
        )
        return True

    def reset(self, model: SymbolModel, reason: str) -> None:
        """Back to IDLE: forget the signal and every order; stop watching the price."""
        if model.state != "IDLE":
            self.fire(model, "reset", reason)
        self.clear_model(model)

    def clear_model(self, model: SymbolModel) -> None:
        # Closed beyond the fills we saw (an operator's flatten sized by the venue's position): the
        # excess is fills of our entries still on their way; their late reports change nothing.
        unseen = -model.position()
        for order in model.orders.values():
            if rules.parse_client_order_id(order.cid) is not None:
                credit = ZERO
                if unseen > 0 and order.leg in ENTRY_LEGS and order.qty > order.filled:
                    credit = min(unseen, order.qty - order.filled)
                    unseen -= credit
                    self.log(
                        "fill_credited", model.symbol, "closed_before_its_report", cid=order.cid, qty=credit
                    )
                self.closed_fills[order.cid] = order.filled + credit
        if len(self.closed_fills) > 1000:
            for cid in list(self.closed_fills)[:500]:
                del self.closed_fills[cid]
        self.emit(cmd.UnsubscribeMarket(symbols=(model.symbol,)))
        self.watch_since.pop(model.symbol, None)
        self._released.append(model)
        del self.symbols[model.symbol]
        self.busy.pop(model.symbol, None)
        self.entry_ready.discard(model.symbol)
        self.ws_fresh.pop(model.symbol, None)
        self.seq_of.pop(model.symbol, None)

    def add_to_machines(self, model: SymbolModel) -> None:
        """Put ``model`` under the phase machine and every machine beside it, in its own states."""
        self._symbol_machine.add_model(model, initial=model.state)
        for name, machine in self._regions.items():
            machine.add_model(model, initial=getattr(model, SYMBOL_REGIONS[name]["attribute"]))

    def remove_from_machines(self, model: SymbolModel) -> None:
        self._symbol_machine.remove_model(model)
        for machine in self._regions.values():
            machine.remove_model(model)

    def attach(self, model: SymbolModel) -> None:
        """Put a model built elsewhere (a test, a what-if) under the machines in its own states."""
        self.add_to_machines(model)
        self.symbols[model.symbol] = model
        self.seq_of[model.symbol] = self._next_seq
        self._next_seq += 1
        self.unwatched.append(model.symbol)
        self.track(model)

    def track(self, model: SymbolModel) -> None:
        """Keep ``busy`` and ``entry_ready`` in step with the model's state (after each transition)."""
        symbol = model.symbol
        if model.state == "MONITORING":
            mark = self.marks.get(symbol)
            if mark is not None and mark >= model.entry_trigger:
                self.entry_ready.add(symbol)
            else:
                self.entry_ready.discard(symbol)
            if model.orders or model.mismatch_since_ms or model.close_retry_at_ms:
                self.busy[symbol] = model  # back from ENTRY_ORDER (D-43) with timers still running
            else:
                self.busy.pop(symbol, None)
        elif model.state == "IDLE":
            self.busy.pop(symbol, None)
            self.entry_ready.discard(symbol)
        else:
            self.busy[symbol] = model
            self.entry_ready.discard(symbol)

    def busy_models(self) -> list[SymbolModel]:
        """The models the evaluation and the timers look at, in ``symbols``' order."""
        if len(self.busy) < 2:
            return list(self.busy.values())
        return sorted(self.busy.values(), key=lambda m: self.seq_of[m.symbol])

    def by_seq(self, symbols: Iterable[str]) -> list[str]:
        return sorted(symbols, key=self.seq_of.__getitem__)

    def reindex(self) -> None:
        """Rebuild the derived indexes from the state (after a restore)."""
        self.seq_of = {symbol: i for i, symbol in enumerate(self.symbols)}
        self._next_seq = len(self.symbols)
        self.busy, self.entry_ready = {}, set()
        for model in self.symbols.values():
            self.track(model)
        watched = [
            (max(self.mark_ws_ms.get(s, 0), since), self.seq_of[s], s)
            for s, since in self.watch_since.items()
            if s in self.symbols
        ]
        self.ws_fresh = {s: at for at, _, s in sorted(watched)}
        self.ws_fresh_sorted = True
        self.unwatched = [s for s in self.symbols if s not in self.ws_fresh]

    def _recycle(self) -> None:
        for model in self._released:
            if len(self._pool) < _POOL_SIZE:
                self._pool.append(model)
            else:
                self.remove_from_machines(model)
        self._released = []

    def tick_size(self, model: SymbolModel) -> Decimal:
        return model.info.tick_size if model.info else Decimal("0")

    def side_params(self) -> tuple[bool | None, cmd.PositionSide | None]:
        """(reduceOnly for limit exits, positionSide) per position mode (N-15, W27/W28, R09/R10)."""
        if self.position_mode == "HEDGE":
            return None, "SHORT"
        return True, None


def position_key(symbol: str, side: str) -> str:
    """``account_positions`` key: the symbol for our leg (SHORT, or BOTH in one-way mode), and
    ``SYMBOL:LONG`` for a hedge-mode LONG leg, which is never ours but holds the entry lock (G01)."""
    return f"{symbol}:LONG" if side == "LONG" else symbol


def price_text(value: Decimal) -> str:
    """A price for people: at most 8 decimals, no trailing zeros, never a trailing dot."""
    text = f"{value.quantize(Decimal('0.00000001')):f}"
    return text.rstrip("0").rstrip(".") if "." in text else text
