"""The decision core: ``Engine.handle(event) -> list[Command]``.

Theory of operation
-------------------
The engine is a pure, synchronous function of its state and one event. It never reads a clock
(time is ``event.now_ms``), never awaits and never does I/O. It answers with commands that the
runtime carries out; their outcomes come back later as events. So every run is replayable.

State lives in models driven by the ``transitions`` tables of ``fsm.table``: one model per symbol
on a shared machine, and one model per global machine (entry lock, safety lock, recovery lock,
exit-cancel-failed lock, rate-limit protection, auth lock). The engine checks a trigger against
the table before firing it, so an illegal (state, trigger) pair changes nothing and emits nothing.

Handling order inside one event: the event is applied (cursors, fills, prices), the decision is
taken, then the entry lock is recomputed from the account (N-21) and, if it turned on, every other
monitoring symbol is reset (W46). No exception escapes ``handle``: an unexpected error is logged
as an anomaly and the state is left as the event found it.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from decimal import (
    ROUND_HALF_EVEN,
    Context,
    Decimal,
    DivisionByZero,
    InvalidOperation,
    Overflow,
    localcontext,
)
from typing import Any

from transitions import Machine

from fsm import commands as cmd
from fsm import events as ev
from fsm import rules
from fsm.model import (
    ENTRY_LEGS,
    LIMIT_EXIT_LEGS,
    STOP_LEGS,
    TERMINAL_STATUSES,
    LockModel,
    OrderTrack,
    SymbolModel,
    decode,
    encode,
)
from fsm.orders import order_kind
from fsm.strategy import Strategy
from fsm.table import (
    ACTIVE_STATES,
    AUTH,
    ENTRY_LOCK,
    ENTRY_LOCK_OTHERS,
    EXIT_CANCEL_LOCK,
    GATES,
    GLOBAL_MACHINES,
    HOLDING_STATES,
    LOCKED_STATE,
    PAUSED,
    RATE_LIMIT,
    RECOVERY_LOCK,
    SAFETY_LOCK,
    SYMBOL_STATES,
    SYMBOL_TRANSITIONS,
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


class Engine:
    """Routes events to the machines and collects the commands they decide."""

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
        self.now_ms = 0
        self._out: list[cmd.Command] = []
        self._handler_table = self._handlers()
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

    # =========================================================================================
    # Public API
    # =========================================================================================

    def handle(self, event: ev.Event) -> list[cmd.Command]:
        """Apply one event; return the commands it decided. Never raises. The arithmetic runs in
        the engine's own decimal context: a host process (a library) that changed the thread's
        rounding or precision must not change a decision or a figure (replay exactness)."""
        with localcontext(DECIMAL_CONTEXT):
            return self._handle(event)

    def _handle(self, event: ev.Event) -> list[cmd.Command]:
        self._out = []
        try:
            self.now_ms = max(self.now_ms, event.now_ms)
            handler = self._handler_table.get(type(event))
            if handler is None:
                self._anomaly("unknown_event", None, type(event).__name__)
            else:
                handler(event)
                if not isinstance(event, ev.MarkPriceTick):  # a price never changes what is held
                    self._settle_deferred_closes()
                    self._recompute_entry_lock()
                    if self.pending_settings:
                        self._apply_pending_settings()
        except Exception as exc:  # the core must never die on one bad event
            # The commands decided before the failure are kept: they match the state already changed.
            log.exception("engine failed on %s", type(event).__name__)
            self._out.append(cmd.Log(kind="anomaly", reason="engine_error", data=(("error", repr(exc)),)))
            self._contain_failure(event, exc)
        if self._released:
            self._recycle()
        out, self._out = self._out, []
        return out

    def _contain_failure(self, event: ev.Event, exc: Exception) -> None:
        """A half-applied event must not be traded on: a person is told, and the engine recovers
        from the exchange as after a restart (N-28): the recovery lock blocks every entry until a
        fresh snapshot has rebuilt each symbol and a price has answered. Decided closes and the
        positions held are carried into the rebuild; monitoring is dropped."""
        try:
            self._critical(
                "engine_error",
                None,
                f"internal error on {type(event).__name__} ({type(exc).__name__}): entries locked, "
                "re-reading the exchange to rebuild the state",
            )
            closing, held = recovery_facts(self.symbols)
            self._on_recovery_started(
                ev.RecoveryStarted(
                    now_ms=self.now_ms,
                    managed=tuple(
                        sorted(
                            (s, m.message_id, m.state) for s, m in self.symbols.items() if m.state != "IDLE"
                        )
                    ),
                    generations=tuple(
                        sorted(
                            (s, leg, g) for s, m in self.symbols.items() for leg, g in m.generations.items()
                        )
                    ),
                    closing=closing,
                    held=held,
                )
            )
        except Exception:  # never fail while containing a failure: the alert above is what matters
            log.exception("engine failure containment failed")

    def state_of(self, symbol: str) -> str:
        model = self.symbols.get(symbol)
        return model.state if model else "IDLE"

    def lock_state(self, name: str) -> str:
        return self.locks[name].state

    def active_symbols(self) -> dict[str, str]:
        return {s: m.state for s, m in self.symbols.items() if m.state != "IDLE"}

    def next_deadline_ms(self) -> int | None:
        """The earliest time at which a Tick would decide something that no other event brings."""
        deadlines: list[int] = []
        timeout = self.strategy.partial_fill_timeout_seconds * 1000
        for model in self.symbols.values():
            for order in model.open_orders(*LIMIT_EXIT_LEGS):
                if order.status == "PARTIALLY_FILLED":
                    deadlines.append(order.last_fill_ms + timeout)
            if model.mismatch_since_ms:
                deadlines.append(model.mismatch_since_ms + self.strategy.position_sync_grace_seconds * 1000)
            if model.close_retry_at_ms:
                deadlines.append(model.close_retry_at_ms)
            deadlines.extend(o.retry_at_ms for o in model.orders.values() if o.retry_at_ms and o.is_open)
            deadlines.extend(o.cancel_at_ms for o in model.orders.values() if o.cancel_at_ms and o.is_open)
            deadlines.extend(
                o.resolve_at_ms for o in model.orders.values() if o.resolve_at_ms and o.status == "UNKNOWN"
            )
        if self.locks[EXIT_CANCEL_LOCK].state == "CANCEL_FAILED":
            deadlines.append(self.requery_due_ms)
        if self.locks[AUTH].state == "AUTH_LOCKED" and self.auth_probe_due_ms:
            deadlines.append(self.auth_probe_due_ms)
        if self.locks[RATE_LIMIT].state == "PROTECT":
            deadlines.append(self.rate_probe_due_ms)
        grace = self.strategy.position_sync_grace_seconds * 1000
        deadlines.extend(at + grace for at in self.unconfirmed_fills.values())
        if self.last_ws_ms is not None:
            if self.price_source == "WS":
                deadlines.append(self.last_ws_ms + self.strategy.ws_stale_fallback_seconds * 1000)
            if self.locks[SAFETY_LOCK].state == "PRICE_OK":
                deadlines.append(self.last_ws_ms + self.strategy.stale_mark_price_seconds * 1000)
        return min(deadlines) if deadlines else None

    def snapshot(self) -> dict[str, Any]:
        """Everything needed to continue exactly where this engine stands (JSON-able)."""
        data: dict[str, Any] = {
            "strategy": encode_strategy(self.strategy),
            "symbols": {s: encode(m) for s, m in self.symbols.items()},
            "locks": {name: model.state for name, model in self.locks.items()},
        }
        for name in _PLAIN_FIELDS:
            data[name] = encode(getattr(self, name))
        return data

    @classmethod
    def restore(cls, data: dict[str, Any]) -> Engine:
        engine = cls(decode_strategy(data["strategy"]))
        engine._restore_into(data)
        return engine

    # =========================================================================================
    # Plumbing
    # =========================================================================================

    def _restore_into(self, data: dict[str, Any]) -> None:
        self.strategy = decode_strategy(data["strategy"])
        for model in [*self.symbols.values(), *self._released, *self._pool]:
            self._symbol_machine.remove_model(model)
        self.symbols = {}
        self._released = []
        self._pool = []
        for symbol, raw in data["symbols"].items():
            model = decode(raw)
            assert isinstance(model, SymbolModel)
            self._symbol_machine.add_model(model, initial=model.state)
            self.symbols[symbol] = model
        for name, state in data["locks"].items():
            self.locks[name].state = state
        for name in _PLAIN_FIELDS:
            if name in data:  # a snapshot from before a field existed keeps the field's default
                setattr(self, name, decode(data[name]))

    def _handlers(self) -> dict[type, Callable[[Any], None]]:
        return {
            ev.MessageReceived: self._on_message,
            ev.MarkPriceTick: self._on_mark,
            ev.RestPriceFailed: self._on_rest_failed,
            ev.WsStatusChanged: self._on_ws_status,
            ev.Tick: self._on_tick,
            ev.OrderPrepared: self._on_prepared,
            ev.OrderAccepted: self._on_accepted,
            ev.AlgoOrderAccepted: self._on_algo_accepted,
            ev.OrderRejected: self._on_rejected,
            ev.OrderOutcomeUnknown: self._on_outcome_unknown,
            ev.OrderResolved: self._on_resolved,
            ev.OrderUpdated: self._on_order_update,
            ev.AlgoOrderUpdated: self._on_algo_update,
            ev.CancelResult: self._on_cancel_result,
            ev.PositionChanged: self._on_position,
            ev.BalanceChanged: self._on_balance,
            ev.PositionModeChanged: self._on_position_mode,
            ev.ExchangeSnapshot: self._on_snapshot,
            ev.RecoveryStarted: self._on_recovery_started,
            ev.VenueErrorObserved: self._on_venue_error,
            ev.VenueCallSucceeded: self._on_venue_ok,
            ev.SettingsChangeRequested: self._on_settings,
            ev.PauseRequested: self._on_pause,
        }

    def _emit(self, command: cmd.Command) -> None:
        self._out.append(command)

    def _log(self, kind: str, symbol: str | None, reason: str, **data: object) -> None:
        self._emit(
            cmd.Log(kind=kind, symbol=symbol, reason=reason, data=tuple((k, str(v)) for k, v in data.items()))
        )

    def _critical(self, kind: str, symbol: str | None, text: str) -> None:
        """An alert a person must see (never blocks trading: the runtime queues it)."""
        self._emit(cmd.Notify(kind=kind, symbol=symbol, text=text, severity="critical"))

    def _anomaly(self, reason: str, symbol: str | None, detail: str = "") -> None:
        log.warning("anomaly %s %s %s", reason, symbol or "-", detail)
        self._log("anomaly", symbol, reason, detail=detail)

    def _model(self, symbol: str) -> SymbolModel:
        model = self.symbols.get(symbol)
        if model is None:
            if self._pool:
                model = self._pool.pop()
                model.reset_to(symbol)
            else:
                model = SymbolModel(symbol=symbol)
                self._symbol_machine.add_model(model, initial="IDLE")
            self.symbols[symbol] = model
            if self.locks[RECOVERY_LOCK].state == "RECOVERING":
                model.generations.update(self.recovery_generations.get(symbol, {}))
        return model

    def _fire(self, model: SymbolModel, trigger: str, reason: str) -> bool:
        dest = legal_dest(SYMBOL_TRANSITIONS, model.state, trigger)
        if dest is None:
            self._anomaly("illegal_transition", model.symbol, f"{trigger} from {model.state}")
            return False
        source = model.state
        getattr(model, trigger)()
        if model.state != dest:  # a trigger shadowed by a model attribute would silently do nothing
            raise RuntimeError(f"{trigger} left {model.symbol} in {model.state}, not {dest}")
        self._emit(
            cmd.Transitioned(
                machine="symbol",
                symbol=model.symbol,
                source=source,
                dest=dest,
                trigger=trigger,
                reason=reason,
            )
        )
        return True

    def _fire_lock(self, name: str, trigger: str, reason: str) -> bool:
        lock = self.locks[name]
        rows = GLOBAL_MACHINES[name][2]
        dest = legal_dest(rows, lock.state, trigger)
        if dest is None:
            return False
        source = lock.state
        getattr(lock, trigger)()
        self._emit(
            cmd.Transitioned(
                machine=name, symbol=None, source=source, dest=dest, trigger=trigger, reason=reason
            )
        )
        return True

    def blocked(self, action: str, symbol: str = "") -> str | None:
        """Query: which gate of ``action`` (a key of ``GATES``) holds now, or None."""
        return self._gate(action, symbol)

    def _gate(self, action: str, symbol: str = "") -> str | None:
        """The first gate of ``action`` (``GATES``) that holds now, named; None when it may go."""
        for gate in GATES[action]:
            if gate == PAUSED:
                held: str | None = PAUSED if self.paused else None
            elif gate == ENTRY_LOCK_OTHERS:
                held = self._entry_lock_by_others(symbol)
            else:
                held = gate if self.locks[gate].state == LOCKED_STATE[gate] else None
            if held is not None:
                return held
        return None

    def _reset(self, model: SymbolModel, reason: str) -> None:
        """Back to IDLE: forget the signal and every order; stop watching the price."""
        if model.state != "IDLE":
            self._fire(model, "reset", reason)
        self._clear_model(model)

    def _clear_model(self, model: SymbolModel) -> None:
        for order in model.orders.values():
            if rules.parse_client_order_id(order.cid) is not None:
                self.closed_fills[order.cid] = order.filled
        if len(self.closed_fills) > 1000:
            for cid in list(self.closed_fills)[:500]:
                del self.closed_fills[cid]
        self._emit(cmd.UnsubscribeMarket(symbols=(model.symbol,)))
        self.watch_since.pop(model.symbol, None)
        self._released.append(model)
        del self.symbols[model.symbol]

    def _recycle(self) -> None:
        for model in self._released:
            if len(self._pool) < _POOL_SIZE:
                self._pool.append(model)
            else:
                self._symbol_machine.remove_model(model)
        self._released = []

    # =========================================================================================
    # Telegram messages (N-05, W00..W17, R00..R08)
    # =========================================================================================

    def _on_message(self, event: ev.MessageReceived) -> None:
        strategy = self.strategy
        if event.chat_id not in (strategy.entry_chat_id, strategy.risk_chat_id):
            self._log("message_ignored", None, "foreign_chat", chat_id=event.chat_id)
            return
        if self.locks[RECOVERY_LOCK].state == "RECOVERING":
            # N-28: Telegram is paused during recovery; a message that still arrives is not consumed,
            # so the backfill after recovery delivers it again.
            self._log("message_deferred", None, "recovery_lock", message_id=event.message_id)
            return
        last = self.cursors.get(event.chat_id, 0)
        rerun = event.rerun and event.chat_id == strategy.risk_chat_id  # D-18: past the cursor on purpose
        late_risk = (
            event.chat_id == strategy.risk_chat_id
            and event.message_id <= last
            and bool(self.risk_seen)
            and event.message_id > self.risk_seen[0]
            and event.message_id not in self.risk_seen
        )
        if late_risk:
            self._log(
                "message_late", None, "risk_gap_read_after_a_newer_message", message_id=event.message_id
            )
        elif event.message_id <= last and not rerun:  # W00-2, G02
            self._log("message_dropped", None, "duplicate_or_old", message_id=event.message_id, last=last)
            return
        if event.chat_id == strategy.risk_chat_id and event.message_id not in self.risk_seen:
            self.risk_seen = tuple(sorted((*self.risk_seen, event.message_id)))[-RISK_SEEN_KEEP:]
        if event.message_id > last:
            self.cursors[event.chat_id] = event.message_id
            self._emit(cmd.PersistCursor(chat_id=event.chat_id, message_id=event.message_id))
        parsed = event.parsed
        if isinstance(parsed, ev.EntrySignal):  # W00, W00-1
            self._log("message_ignored", parsed.symbol, "entry_signal_not_a_trigger")
            return
        if event.chat_id == strategy.risk_chat_id:
            if isinstance(parsed, ev.RiskSignal):
                self._on_risk(event, parsed)
            else:
                self._log("risk_ignored", None, getattr(parsed, "reason", "not_a_risk_message"))  # R00-1
            return
        if isinstance(parsed, ev.RiskSignal):
            self._log("message_ignored", parsed.symbol, "risk_message_in_entry_channel")
            return
        if isinstance(parsed, ev.Unrecognised) and parsed.kind != "leading":
            self._log("message_ignored", None, parsed.reason)
            return
        self._on_leading(event, parsed)

    def _on_leading(self, event: ev.MessageReceived, parsed: ev.LeadingMarket | ev.Unrecognised) -> None:
        strategy = self.strategy
        now = event.now_ms
        if rules.signal_too_old(event.telegram_date_ms, now, strategy.max_signal_age_seconds):  # N-27
            self._log("leading_dropped", None, "signal_too_old", age_ms=now - event.telegram_date_ms)
            return
        lock = self._gate("leading_message")
        if lock is not None:  # W01, N-05 step 2: no cooldown recorded
            self._log("leading_dropped", None, f"locked:{lock}")
            return
        if isinstance(parsed, ev.Unrecognised):  # W03, W03-1: no symbol, no cooldown
            self._log("symbol_mapping", None, parsed.reason, result="ticker_parse_failed")
            return
        symbol = parsed.symbol
        until = self.cooldowns.get(symbol)
        if until is not None and now - until < strategy.cooldown_minutes * 60_000:  # W02
            self._log("leading_dropped", symbol, "cooldown", since_ms=now - until)
            return
        self.cooldowns[symbol] = now  # W05-1, G05: recorded at receipt once the symbol is known
        self._emit(cmd.PersistCooldown(symbol=symbol, received_at_ms=now))
        model = self.symbols.get(symbol)
        active = model is not None and model.state != "IDLE"
        info = event.symbol_info
        if not event.exchange_info_ok or info is None or info.status != "TRADING":  # W04, W48
            reason = "exchange_info_unavailable" if not event.exchange_info_ok else "symbol_not_trading"
            self._log(
                "symbol_mapping",
                symbol,
                reason,
                raw_ticker=parsed.raw_ticker,
                ticker=parsed.ticker,
                result="rejected",
                kept_active=active,
            )
            return
        self._log(
            "symbol_mapping", symbol, "ok", raw_ticker=parsed.raw_ticker, ticker=parsed.ticker, result="valid"
        )
        if parsed.field_error:  # W05 / W10 (정보없음)
            self._log("leading_rejected", symbol, parsed.field_error, kept_active=active)
            return
        if active:  # W06, W07
            self._log("leading_ignored", symbol, f"already_{model.state.lower()}" if model else "")
            return
        reason = self._filter_reason(parsed)
        if reason:  # W09..W13
            self._log("leading_rejected", symbol, reason)
            return
        target = self._target(parsed, event, info)
        if target is not None:
            self._start_monitoring(symbol, event, info, target)

    def _start_monitoring(
        self, symbol: str, event: ev.MessageReceived, info: ev.SymbolInfo, target: Decimal
    ) -> None:
        """W15/W16/W17: watch the symbol's mark for the entry trigger."""
        strategy = self.strategy
        model = self._model(symbol)
        model.info = info
        self.infos[symbol] = info
        model.message_id = event.message_id
        model.received_at_ms = event.now_ms
        model.mode = strategy.mode
        model.target = target
        model.entry_trigger = rules.entry_threshold(target, strategy.trigger_buffer_pct)
        self._fire(model, "start_monitoring", f"{strategy.mode} target {target}")
        self._emit(cmd.SubscribeMarket(symbols=(symbol,)))

    def _filter_reason(self, parsed: ev.LeadingMarket) -> str:
        s = self.strategy
        if parsed.category is None or parsed.funding_pct is None or parsed.rank is None:
            return "field_missing"
        hit = rules.category_excluded(
            parsed.category, s.excluded_category_words, s.excluded_category_substrings
        )
        if hit:
            return f"category_excluded:{hit}"
        if parsed.rank_direction and rules.rank_rejected(
            parsed.rank_direction, parsed.rank, s.rising_rank_reject_top
        ):
            return "rank_top_rising"
        if rules.funding_rejected(parsed.funding_pct, s.funding_reject_at_or_below_pct):
            return "funding_too_negative"
        return ""

    def _target(
        self, parsed: ev.LeadingMarket, event: ev.MessageReceived, info: ev.SymbolInfo
    ) -> Decimal | None:
        s = self.strategy
        klines = event.klines or ()
        if s.mode == "aggressive":
            raw = rules.aggressive_target(klines, event.now_ms)
        else:
            raw = rules.atr_upper_band(
                klines, event.now_ms, length=s.atr_length, multiplier=s.atr_multiplier, count=s.atr_candles
            )
        if raw is None:
            self._log("leading_rejected", parsed.symbol, "target_unavailable", klines=len(klines))
            return None
        price = rules.round_to_tick(raw, info.tick_size)
        if price <= 0:  # W29
            self._log("leading_rejected", parsed.symbol, "target_not_positive", price=price)
            return None
        return price

    def _on_risk(self, event: ev.MessageReceived, parsed: ev.RiskSignal) -> None:
        model = self.symbols.get(parsed.symbol)
        if model is None or model.state == "IDLE":  # R08 (and R00-2 for unknown symbols)
            self._log("risk_ignored", parsed.symbol, "symbol_not_active")
            return
        if model.info is None and (event.symbol_info is None or event.symbol_info.status != "TRADING"):
            self._log("risk_ignored", parsed.symbol, "symbol_not_trading")  # R00-2
            return
        self._log("risk_received", parsed.symbol, model.state)
        if model.state == "MONITORING":  # R01
            self._reset(model, "risk: monitoring released")
            return
        position = model.position()
        if model.state == "ENTRY_ORDER" and position <= 0:  # R02
            model.closing = True
            model.close_reason = "risk"
            self._cancel_all(model, legs=tuple(ENTRY_LEGS))
            self._finish_if_flat(model)
            return
        if model.state == "ENTRY_ORDER":  # R03, W38: cancel the rest of the entry first
            model.risk_protected = True
            self._cancel_all(model, legs=tuple(ENTRY_LEGS))
        self._apply_risk_pnl(model)

    def _apply_risk_pnl(self, model: SymbolModel) -> None:
        """R04..R07: PnL <= 0 closes at market; PnL > 0 protects (phase 1) or keeps (phase 2)."""
        average = model.average()
        mark = self.marks.get(model.symbol)
        if mark is None:
            self._log("risk_pnl", model.symbol, "no_mark_price_close", average=average)
            self._market_close(model, "risk_no_price")
            return
        sign = rules.pnl_sign(average, mark)
        roi = rules.short_roi_pct(average, mark)
        self._log("risk_pnl", model.symbol, "computed", average=average, mark=mark, roi_pct=roi)
        if sign <= 0:  # R04, R05, R26
            self._market_close(model, "risk_pnl_negative" if sign < 0 else "risk_pnl_zero")
            return
        if model.state == "EXITING":
            self._log("risk_kept", model.symbol, "already_exiting")
            return
        if model.state == "PHASE2":  # R07, R24: breakeven limit stays, MDD stays, no stop overwrite
            self._log("risk_kept", model.symbol, "phase2_breakeven_limit_kept")
            return
        # R06, R23, N-16: breakeven STOP_MARKET plus keep (or place once) the TP limit.
        model.risk_protected = True
        model.add_armed = False
        if not model.open_orders("BE_STOP"):
            self._place_stop(model, "BE_STOP", rules.round_to_tick(average, self._tick(model)))
        if not model.open_orders("TP"):
            self._place_tp(model)
        model.tp_armed = False

    # =========================================================================================
    # Prices and the 1-second evaluation (W17..W23-1, N-09, N-22)
    # =========================================================================================

    def _on_mark(self, event: ev.MarkPriceTick) -> None:
        now = event.now_ms
        self.marks[event.symbol] = event.price
        stale_ms = self.strategy.stale_mark_price_seconds * 1000
        if event.source == "WS":
            self.last_ws_ms = now
            self.mark_ws_ms[event.symbol] = now
            if self.price_source == "REST" and self._ws_silent(now) is None:  # W23
                self.price_source = "WS"
                self._emit(cmd.UsePriceSource(source="WS", reason="websocket message received"))
                self._log("price_source", None, "ws_back", at_ms=now)
            fresh = True
        else:
            self.rest_failing = False
            self.last_rest_ms = max(self.last_rest_ms or 0, event.event_time_ms)
            self.mark_rest_ms[event.symbol] = max(self.mark_rest_ms.get(event.symbol, 0), event.event_time_ms)
            fresh = now - event.event_time_ms < stale_ms
        if fresh:
            self.price_seen_ms = now
        if fresh and self.locks[SAFETY_LOCK].state == "PRICE_STALE":
            self._fire_lock(SAFETY_LOCK, "price_fresh", f"fresh {event.source} mark price")
            self._emit(cmd.Notify(kind="safety_lock_lifted", text="fresh mark price: safety lock lifted"))
        if self.locks[RECOVERY_LOCK].state == "RECOVERING":
            self._maybe_finish_recovery()

    def _on_rest_failed(self, event: ev.RestPriceFailed) -> None:
        self.rest_failing = True
        self._log("price_source", None, "rest_failed", cause=event.reason)

    def _on_ws_status(self, event: ev.WsStatusChanged) -> None:
        self.ws_reason = event.reason
        self._log(
            "price_source", None, "ws_connected" if event.connected else "ws_disconnected", cause=event.reason
        )
        if event.connected and self.last_ws_ms is None:
            self.last_ws_ms = event.now_ms

    def _on_tick(self, event: ev.Tick) -> None:
        now = event.now_ms
        if self.last_ws_ms is None:
            self.last_ws_ms = now  # the clock of the price source starts with the first tick
        self._check_price_source(now)
        self._check_timers(now)
        if self.locks[RECOVERY_LOCK].state == "RECOVERING":
            self._recovery_tick(now)
            return
        if self.locks[SAFETY_LOCK].state == "PRICE_STALE":
            return
        self._evaluate_triggers(now)

    def _watched_ws_at(self, now: int) -> list[tuple[str, int]]:
        """(symbol, time of its last WS mark or of the start of its watch) for every watched symbol."""
        out = []
        for symbol, model in self.symbols.items():
            if model.state == "IDLE":
                continue
            since = self.watch_since.setdefault(symbol, now)
            out.append((symbol, max(self.mark_ws_ms.get(symbol, 0), since)))
        return out

    def _silent_and_stale(self, now: int, fallback_ms: int, stale_ms: int) -> tuple[str | None, str | None]:
        """In one pass over the watched symbols (``_watched_ws_at``'s order): the first with no WS
        mark for ``fallback_ms`` (W22) and the first with no fresh mark from either source for
        ``stale_ms`` (W23-1; with REST failing, its REST marks do not count)."""
        silent: str | None = None
        stale: str | None = None
        ws_ms, rest_ms, since_ms = self.mark_ws_ms, self.mark_rest_ms, self.watch_since
        fresh_ms = min(fallback_ms, stale_ms)
        for symbol, model in self.symbols.items():
            if model.state == "IDLE":
                continue
            since = since_ms.setdefault(symbol, now)
            at = max(ws_ms.get(symbol, 0), since)
            if now - at < fresh_ms:
                continue  # fresh: neither silent nor stale
            if silent is None and now - at >= fallback_ms:
                silent = symbol
            if stale is None and now - at >= stale_ms:
                rest_at = rest_ms.get(symbol, 0)
                if now - max(at, rest_at) >= stale_ms and (self.rest_failing or now - rest_at >= stale_ms):
                    stale = symbol
            if stale is not None and silent is not None:
                break
        return silent, stale

    def _ws_silent(self, now: int) -> str | None:
        """A watched symbol with no WS mark for the fallback time (its own stream is silent)."""
        limit = self.strategy.ws_stale_fallback_seconds * 1000
        return next((s for s, at in self._watched_ws_at(now) if now - at >= limit), None)

    def _check_price_source(self, now: int) -> None:
        s = self.strategy
        assert self.last_ws_ms is not None
        ws_age = now - self.last_ws_ms
        fallback_ms = s.ws_stale_fallback_seconds * 1000
        stale_ms = s.stale_mark_price_seconds * 1000
        silent, stale_symbol = self._silent_and_stale(now, fallback_ms, stale_ms)
        if self.price_source == "WS" and (ws_age >= fallback_ms or silent is not None):  # W22
            self.price_source = "REST"
            cause = self.ws_reason or "no message"
            what = f"no websocket message for {ws_age} ms" if ws_age >= fallback_ms else f"{silent} silent"
            self._emit(cmd.UsePriceSource(source="REST", reason=f"{what} ({cause})"))
            self._log("price_source", silent, "rest_fallback", at_ms=now, cause=cause)
        rest_stale = self.rest_failing or self.last_rest_ms is None or now - self.last_rest_ms >= stale_ms
        if self.locks[SAFETY_LOCK].state != "PRICE_OK":
            return
        if ws_age >= stale_ms and rest_stale:  # W23-1
            why = f"no fresh mark price for {ws_age} ms"
        elif stale_symbol is not None:
            why = f"no fresh mark price of {stale_symbol} for {stale_ms // 1000} s or more"
        else:
            return
        self._fire_lock(SAFETY_LOCK, "price_stale", why)
        released = [m.symbol for m in self.symbols.values() if m.state == "MONITORING"]
        closing = [m.symbol for m in self.symbols.values() if m.position() > 0]
        for model in list(self.symbols.values()):
            self._stale_reset(model)
        done = [f"{len(released)} monitoring released"] if released else []
        done += [f"closing {', '.join(closing)} at market"] if closing else []
        self._critical(
            "safety_lock", None, f"safety lock on: {why}; " + ("; ".join(done) or "nothing was held")
        )

    def _stale_reset(self, model: SymbolModel) -> None:
        if model.state == "MONITORING":
            self._reset(model, "safety lock: monitoring released")
        elif model.position() > 0:
            self._market_close(model, "safety_lock")
        elif model.state == "ENTRY_ORDER":
            model.closing = True
            model.close_reason = "safety_lock"
            self._cancel_all(model)
            self._finish_if_flat(model)

    def _check_timers(self, now: int) -> None:
        s = self.strategy
        timeout = s.partial_fill_timeout_seconds * 1000
        for model in list(self.symbols.values()):
            if not model.orders and not model.close_retry_at_ms and not model.mismatch_since_ms:
                continue  # nothing below can be due (a monitored symbol: most of them)
            # N-19, R19, R25: an exit order stuck part-filled for 5 s: cancel the rest, close at market.
            for order in model.open_orders(*LIMIT_EXIT_LEGS):
                if order.status == "PARTIALLY_FILLED" and now - order.last_fill_ms >= timeout:
                    if model.open_orders("CLOSE"):  # R18: a market close is already in flight
                        continue
                    self._log("five_second_rule", model.symbol, "partial_exit_stalled", cid=order.cid)
                    self._market_close(model, "five_second_rule")
            for order in list(model.orders.values()):
                if order.retry_at_ms and now >= order.retry_at_ms and order.status == "PENDING_NEW":
                    order.retry_at_ms = 0
                    self._retry(model, order)
                if order.cancel_at_ms and now >= order.cancel_at_ms and order.is_open:
                    # A cancel the rate limits held back (a fill report may have moved it meanwhile).
                    order.cancel_at_ms = 0
                    self._cancel(model, order)
                if order.status == "UNKNOWN" and order.resolve_at_ms and now >= order.resolve_at_ms:
                    order.resolve_at_ms = 0  # one query in flight at a time
                    order.resolve_attempts += 1
                    self._emit(
                        cmd.ResolveOrder(
                            symbol=model.symbol,
                            client_order_id=order.cid,
                            is_algo=order.is_algo,
                            attempt=order.resolve_attempts,
                        )
                    )
            if model.close_retry_at_ms and now >= model.close_retry_at_ms and not model.open_orders("CLOSE"):
                self._market_close(model, "timed close retry")
            # R20..R22: the venue's position disagrees with our fills for longer than the grace.
            grace = s.position_sync_grace_seconds * 1000
            if (
                model.mismatch_since_ms
                and now - model.mismatch_since_ms >= grace
                and model.symbol in self.symbols
            ):
                self._position_mismatch(model, now)
        if (
            self.locks[AUTH].state == "AUTH_LOCKED"
            and self.auth_probe_due_ms
            and now >= self.auth_probe_due_ms
        ):
            self.auth_probes += 1
            wait = min(AUTH_PROBE_MAX_MS, AUTH_PROBE_FIRST_MS * 2**self.auth_probes)
            self.auth_probe_due_ms = now + wait
            self._emit(cmd.ProbeVenue(purpose="auth", attempt=self.auth_probes))
        if self.locks[RATE_LIMIT].state == "PROTECT" and now >= self.rate_probe_due_ms:
            # N-24 lifts after consecutive successes; while flat nothing else is asked (D-43).
            self.rate_probe_due_ms = now + RATE_PROBE_MS
            self._emit(cmd.ProbeVenue(purpose="rate_limit"))
        if self.locks[EXIT_CANCEL_LOCK].state == "CANCEL_FAILED" and now >= self.requery_due_ms:  # R16
            self.requery_due_ms = now + s.requery_interval_seconds * 1000
            for model in self.symbols.values():
                if model.cancel_failed:
                    self._emit(cmd.QueryExchange(purpose="requery", symbol=model.symbol))

    def _evaluate_triggers(self, now: int) -> None:
        b = self.strategy.trigger_buffer_pct
        candidates: list[SymbolModel] = []
        for model in list(self.symbols.values()):
            mark = self.marks.get(model.symbol)
            if mark is None or model.closing:
                continue
            state = model.state
            if state == "MONITORING":
                if mark >= model.entry_trigger:  # W17-2, W19, W34 (T1 = P1 x 0.999, fixed at receipt)
                    candidates.append(model)
                continue
            elif state in ("ENTRY_ORDER", "PHASE1") and model.tp_armed and model.position() > 0:
                ptp = rules.take_profit_price(model.average(), self.strategy.tp_pct, self._tick(model))
                if mark <= rules.take_profit_threshold(ptp, b) and not model.open_orders("TP"):  # W40
                    self._place_tp(model)
                    model.tp_armed = False
            if (
                state == "PHASE1"
                and model.add_armed
                and not model.preparing
                and self._gate("second_entry") is None
            ):
                if mark >= rules.entry_threshold(model.add_price, b) and not model.open_orders(
                    "ENTRY2"
                ):  # W41
                    model.add_armed = False
                    model.preparing = "ENTRY2"
                    self._emit(cmd.PrepareOrder(symbol=model.symbol, leg="ENTRY2", configure_margin=False))
            if state == "PHASE2" and model.be_armed:
                pbe = rules.round_to_tick(model.average(), self._tick(model))
                # W43, N-17: mark >= Tbe places it. A mark already below Tbe has passed through the
                # band before this evaluation (W19: a trigger met at the first look goes at once):
                # it goes too, or PHASE2 would hold no exit at all (D-40).
                if not model.open_orders("BE"):
                    model.be_armed = False
                    self._cancel_all(model, legs=("ENTRY2",))
                    self._place_limit_exit(model, "BE", pbe)
        if not candidates:
            return
        if self._gate("entry_trigger") is not None:
            return
        # W18, N-10: the latest receipt wins, then the larger message id; the rest are reset.
        winner = max(candidates, key=lambda m: (m.received_at_ms, m.message_id))
        for model in candidates:
            if model is not winner:
                self._reset(model, f"W18 tie-break lost to {winner.symbol}")
        self._fire(
            winner,
            "entry_triggered",
            f"mark {self.marks[winner.symbol]} >= {_price_text(winner.entry_trigger)}"
            f" (target {winner.target} - {self.strategy.trigger_buffer_pct}%)",
        )
        winner.preparing = "ENTRY1"
        self._emit(cmd.PrepareOrder(symbol=winner.symbol, leg="ENTRY1", configure_margin=True))  # W17-1, W24

    # =========================================================================================
    # Orders: preparation, placement, outcomes (W24..W35-1, N-11..N-15)
    # =========================================================================================

    def _tick(self, model: SymbolModel) -> Decimal:
        return model.info.tick_size if model.info else Decimal("0")

    def _side_params(self) -> tuple[bool | None, cmd.PositionSide | None]:
        """(reduceOnly for limit exits, positionSide) per position mode (N-15, W27/W28, R09/R10)."""
        if self.position_mode == "HEDGE":
            return None, "SHORT"
        return True, None

    def _on_prepared(self, event: ev.OrderPrepared) -> None:
        model = self.symbols.get(event.symbol)
        if model is None or model.preparing != event.leg:
            self._anomaly("unexpected_prepare_result", event.symbol, event.leg)
            return
        model.preparing = ""
        if event.leg == "ENTRY1":
            self._prepared_entry1(model, event)
        else:
            self._prepared_entry2(model, event)

    def _entry_lock_by_others(self, symbol: str) -> str | None:
        """The entry lock, counted only for reasons other than ``symbol`` itself (it holds the lock
        from its own trigger on): another position, an open entry order, another symbol's entry."""
        for other, amount in self.account_positions.items():
            if other != symbol and not rules.is_dust(amount, self.infos.get(other.partition(":")[0])):
                return f"entry_lock: position {other}"
        for key, other in self.account_entry_orders.items():
            if other != symbol:
                return f"entry_lock: open order {key}"
        for other, model in self.symbols.items():
            held = self._holds_entry_lock(model)
            if other != symbol and held:
                return f"entry_lock: {other} {held}"
        return None

    def _holds_entry_lock(self, model: SymbolModel) -> str:
        """Why our own ``model`` holds the entry lock ("" when it does not). It counts from the
        moment we commit to an entry (before the venue confirms); leftover exit orders without a
        position do not count (N-21: they are N-18's business)."""
        if model.state not in HOLDING_STATES:
            return ""
        if model.preparing == "ENTRY1" or model.open_orders(*ENTRY_LEGS):
            return "entry order"
        if not rules.is_dust(model.position(), model.info):
            return "position"
        return ""

    def _prepared_entry1(self, model: SymbolModel, event: ev.OrderPrepared) -> None:
        if model.state != "ENTRY_ORDER" or model.closing:
            self._anomaly("prepare_result_late", model.symbol, model.state)
            return
        blocked = self._gate("first_entry_order", model.symbol)
        if blocked is not None:  # a lock came on while the setup call was in flight
            self._log("order_blocked", model.symbol, f"locked:{blocked}")
            self._reset(model, f"lock during pre-order setup: {blocked}")
            return
        if not event.ok and event.error_code in RATE_LIMIT_CODES:
            # Held back by the rate limits, nothing sent: wait for the trigger again (D-10, D-43).
            self._log("order_blocked", model.symbol, "rate_limited_entry_held", code=event.error_code)
            self._fire(model, "entry_held", f"pre-order setup held by the rate limits ({event.error_code})")
            return
        if not event.ok or event.position_mode is None:  # W24 failure, W26
            self._log("order_blocked", model.symbol, event.reason or "prepare_failed", code=event.error_code)
            self._reset(model, f"pre-order setup failed: {event.reason or event.error_code}")
            return
        self.position_mode = event.position_mode
        self.wallet_balance = event.wallet_balance
        self.available_balance = event.available_balance
        assert model.info is not None
        funds = event.wallet_balance * self.strategy.first_entry_balance_pct / 100  # W32-1
        sized = rules.size_order(funds, model.target, model.info)  # W32-2, W30, W31
        if not sized.ok:  # W32-5
            self._log("order_blocked", model.symbol, sized.reason, funds=funds, price=model.target)
            self._reset(model, f"sizing: {sized.reason}")
            return
        self._place_entry(model, "ENTRY1", model.target, sized.quantity)

    def _prepared_entry2(self, model: SymbolModel, event: ev.OrderPrepared) -> None:
        if model.state != "PHASE1" or model.closing:
            self._anomaly("prepare_result_late", model.symbol, model.state)
            return
        if not event.ok or event.position_mode is None:
            self._log("second_entry_skipped", model.symbol, event.reason or "prepare_failed")
            return
        blocked = self._gate("second_entry")
        if blocked is not None:
            self._log("second_entry_skipped", model.symbol, f"locked:{blocked}")
            return
        self.position_mode = event.position_mode
        self.available_balance = event.available_balance
        funds = event.available_balance * (1 - self.strategy.margin_buffer_pct / 100)  # W32-3
        if event.available_balance <= 0 or funds <= 0:  # W32-6
            self._log("second_entry_skipped", model.symbol, "insufficient_available_balance", available=funds)
            return
        assert model.info is not None
        sized = rules.size_order(funds, model.add_price, model.info)  # W32-4
        if not sized.ok:
            # W32-5 says "reset", but resetting a symbol that holds a position would orphan it
            # (G04: position outranks everything): the second entry is skipped instead.
            self._log("second_entry_skipped", model.symbol, sized.reason, funds=funds)
            return
        self._place_entry(model, "ENTRY2", model.add_price, sized.quantity)

    def _place_entry(self, model: SymbolModel, leg: cmd.Leg, price: Decimal, qty: Decimal) -> None:
        gen = model.next_generation(leg)
        cid = rules.client_order_id(model.symbol, model.message_id, leg, gen)
        _, position_side = self._side_params()
        model.orders[cid] = OrderTrack(cid=cid, leg=leg, side="SELL", kind="LIMIT", price=price, qty=qty)
        self._emit(
            cmd.PlaceOrder(  # W33: always a GTC limit, never reduce-only
                symbol=model.symbol,
                client_order_id=cid,
                leg=leg,
                side="SELL",
                order_type="LIMIT",
                quantity=qty,
                price=price,
                time_in_force="GTC",
                reduce_only=None,
                position_side=position_side,
            )
        )

    def _place_limit_exit(self, model: SymbolModel, leg: cmd.Leg, price: Decimal) -> None:
        assert model.info is not None
        qty = rules.exit_quantity(model.position(), model.info)  # R11
        if qty <= 0 or qty < model.info.min_qty:
            if model.state == "ENTRY_ORDER" and model.open_orders("ENTRY1"):
                # The entry is still filling: wait for a size the venue accepts.
                self._log("exit_deferred", model.symbol, "position_below_min_qty", leg=leg, qty=qty)
                if leg == "TP":
                    model.tp_armed = True
                return
            self._exit_filter_failure(model, leg, "exit_quantity_below_min")
            return
        gen = model.next_generation(leg)
        cid = rules.client_order_id(model.symbol, model.message_id, leg, gen)
        reduce_only, position_side = self._side_params()
        model.orders[cid] = OrderTrack(cid=cid, leg=leg, side="BUY", kind="LIMIT", price=price, qty=qty)
        self._emit(
            cmd.PlaceOrder(
                symbol=model.symbol,
                client_order_id=cid,
                leg=leg,
                side="BUY",
                order_type="LIMIT",
                quantity=qty,
                price=price,
                time_in_force="GTC",
                reduce_only=reduce_only,
                position_side=position_side,
            )
        )

    def _place_tp(self, model: SymbolModel) -> None:
        price = rules.take_profit_price(model.average(), self.strategy.tp_pct, self._tick(model))
        self._place_limit_exit(model, "TP", price)

    def _place_stop(self, model: SymbolModel, leg: cmd.Leg, trigger_price: Decimal) -> None:
        """A STOP_MARKET through the Algo Order API only (N-14, R09..R11-1)."""
        gen = model.next_generation(leg)
        cid = rules.client_order_id(model.symbol, model.message_id, leg, gen)
        _, position_side = self._side_params()
        model.orders[cid] = OrderTrack(
            cid=cid, leg=leg, side="BUY", kind="STOP_MARKET", price=trigger_price, qty=model.position()
        )
        self._emit(
            cmd.PlaceAlgoOrder(
                symbol=model.symbol,
                client_algo_id=cid,
                leg=leg,
                side="BUY",
                order_type="STOP_MARKET",
                trigger_price=trigger_price,
                working_type="MARK_PRICE",
                close_position=True,
                position_side=position_side,
            )
        )

    def _market_close(self, model: SymbolModel, reason: str) -> None:
        """Cancel every other order of the symbol and close the whole position at market."""
        assert model.info is not None
        model.closing = True
        model.close_reason = reason
        model.tp_armed = model.add_armed = model.be_armed = False
        self._cancel_all(model, exclude_legs=("CLOSE",))
        position = model.position()
        qty = rules.exit_quantity(position, model.info, market=True)
        if model.state in ("ENTRY_ORDER", "PHASE1", "PHASE2"):
            self._fire(model, "exit_started", f"market close: {reason}")
        if model.open_orders("CLOSE"):
            return
        racing = self._racing_exits(model)
        if racing:
            model.close_deferred = True
            self._log(
                "close_deferred", model.symbol, "exit_cancel_in_flight", cids=",".join(o.cid for o in racing)
            )
            return
        model.close_deferred = False
        # An exit whose cancel failed for good may still trade: the close leaves its rest to it.
        held_back = sum(
            (o.qty - o.filled for o in model.open_orders(*LIMIT_EXIT_LEGS) if o.status == "PENDING_CANCEL"),
            ZERO,
        )
        qty = rules.exit_quantity(position - held_back, model.info, market=True) if held_back else qty
        market_min = (
            model.info.market_min_qty if model.info.market_min_qty is not None else model.info.min_qty
        )
        if qty <= 0 or qty < market_min:  # R22: what no order can express is dust, not a position
            self._log("dust", model.symbol, "position_below_min_qty", position=position)
            model.close_reason = "dust"
            self._finish_if_flat(model, dust_ok=True)
            return
        model.close_attempts += 1
        model.close_retry_at_ms = 0
        gen = model.next_generation("CLOSE")
        cid = rules.client_order_id(model.symbol, model.message_id, "CLOSE", gen)
        reduce_only, position_side = self._side_params()
        model.orders[cid] = OrderTrack(cid=cid, leg="CLOSE", side="BUY", kind="MARKET", price=ZERO, qty=qty)
        self._emit(
            cmd.PlaceOrder(
                symbol=model.symbol,
                client_order_id=cid,
                leg="CLOSE",
                side="BUY",
                order_type="MARKET",
                quantity=qty,
                reduce_only=reduce_only,
                position_side=position_side,
            )
        )

    @staticmethod
    def _racing_exits(model: SymbolModel) -> list[OrderTrack]:
        """Limit exits whose cancel is unanswered: they may still trade until it is. (An exit of
        unknown outcome does not hold a loss-cut back for its recvWindow: the close is reduce-only,
        so the venue refuses what would exceed the position; D-26.)"""
        if model.cancel_failed:
            return []
        return [
            o
            for o in model.open_orders(*LIMIT_EXIT_LEGS)
            if o.status == "PENDING_CANCEL" or (o.status == "UNKNOWN" and o.cancel_attempts > 0)
        ]

    def _settle_deferred_closes(self) -> None:
        """A deferred close goes out once every racing exit has answered (sized by what they traded)."""
        for model in list(self.symbols.values()):
            if model.close_deferred and not self._racing_exits(model) and not model.open_orders("CLOSE"):
                model.close_deferred = False
                if model.position() > 0:
                    self._market_close(model, model.close_reason or "close")
                else:
                    self._finish_if_flat(model, dust_ok=True)

    def _cancel_all(
        self, model: SymbolModel, *, legs: tuple[str, ...] = (), exclude_legs: tuple[str, ...] = ()
    ) -> None:
        for order in model.open_orders(*legs):
            if order.leg in exclude_legs or order.status == "PENDING_CANCEL":
                continue
            self._cancel(model, order)

    def _cancel(self, model: SymbolModel, order: OrderTrack) -> None:
        if order.status == "UNKNOWN":
            # A cancel cannot settle an order whose request may still execute ("gone" proves nothing
            # yet): its resolution decides, and cancels it then if it lives (``_on_resolved``).
            self._log("cancel_deferred", model.symbol, "outcome_unknown", cid=order.cid)
            return
        order.cancel_attempts += 1
        order.cancel_at_ms = 0  # a held-back cancel timed for it: this one supersedes it
        order.apply("cancel_sent")
        if order.is_algo:
            self._emit(
                cmd.CancelAlgoOrder(
                    symbol=model.symbol, client_algo_id=order.cid, attempt=order.cancel_attempts
                )
            )
        else:
            self._emit(
                cmd.CancelOrder(symbol=model.symbol, client_order_id=order.cid, attempt=order.cancel_attempts)
            )

    def _on_accepted(self, event: ev.OrderAccepted) -> None:
        self._count_success()
        order = self._order(event.symbol, event.client_order_id)
        if order is None:
            return
        order.order_id = event.order_id
        order.report("NEW")

    def _on_algo_accepted(self, event: ev.AlgoOrderAccepted) -> None:
        self._count_success()
        order = self._order(event.symbol, event.client_algo_id)
        if order is None:
            return
        order.order_id = event.algo_id
        order.report("NEW")

    def _order(self, symbol: str, cid: str) -> OrderTrack | None:
        model = self.symbols.get(symbol)
        order = model.orders.get(cid) if model else None
        if order is None:
            self._anomaly("unknown_order", symbol, cid)
        return order

    def _on_rejected(self, event: ev.OrderRejected) -> None:
        model = self.symbols.get(event.symbol)
        order = model.orders.get(event.client_order_id) if model else None
        if model is None or order is None:
            self._anomaly("unknown_order_rejected", event.symbol, event.client_order_id)
            return
        self._log(  # W51-3
            "order_failed",
            model.symbol,
            event.category,
            cid=order.cid,
            leg=order.leg,
            price=order.price,
            qty=order.qty,
            code=event.code,
            message=event.message,
            attempt=order.attempts,
        )
        if event.category == "rate_limited":
            self._count_rate_failure()
        if event.category == "auth":
            self._enter_auth_lock(f"{event.code} {event.message}")
        if event.category == "flat" and order.leg not in ENTRY_LEGS:
            if model.venue_position == 0:  # the venue's position, read with the refusal: flat
                order.apply("refused")
                self._log("position_sync", model.symbol, "venue_flat_on_close", cid=order.cid)
                self._sync_position(model)
                return
            if order.is_algo and model.position() > 0 and order.attempts < self.strategy.entry_attempts:
                # -4509 while the position is there (the venue's view lagged): the stop goes again.
                order.apply("refused")
                self._resend(model, order, STOP_RETRY_MS)
                return
        retryable = event.retryable and order.attempts < self.strategy.entry_attempts
        if order.leg in ENTRY_LEGS and event.retry_after_ms > ENTRY_WAIT_MAX_MS:
            retryable = False  # an entry this late would no longer be at its trigger
        if order.leg in ENTRY_LEGS:
            self._entry_rejected(model, order, event, retryable)
        elif order.is_algo:
            self._stop_rejected(model, order, event, retryable)
        else:
            self._exit_rejected(model, order, event, retryable)

    def _on_outcome_unknown(self, event: ev.OrderOutcomeUnknown) -> None:
        """The order may or may not exist: it stays open (UNKNOWN) and holds its leg, the entry lock
        and the symbol, and is queried once its request can no longer execute (never resent first)."""
        model = self.symbols.get(event.symbol)
        order = model.orders.get(event.client_order_id) if model else None
        if model is None or order is None:
            self._anomaly("unknown_order_outcome", event.symbol, event.client_order_id)
            return
        self._log(
            "order_unknown",
            model.symbol,
            event.reason or "outcome_unknown",
            cid=order.cid,
            leg=order.leg,
            resolve_at_ms=event.resolve_after_ms,
        )
        if order.status != "PENDING_NEW":
            return  # the user stream already told what became of it
        order.apply("answer_lost")
        order.resolve_at_ms = max(event.resolve_after_ms, self.now_ms)

    def _on_resolved(self, event: ev.OrderResolved) -> None:
        model = self.symbols.get(event.symbol)
        order = model.orders.get(event.client_order_id) if model else None
        if model is None or order is None:
            self._anomaly("unknown_order_resolved", event.symbol, event.client_order_id)
            return
        self._log("order_resolved", model.symbol, event.outcome, cid=order.cid, status=event.status)
        if order.cid in model.readback_cids:
            model.readback_cids = tuple(c for c in model.readback_cids if c != order.cid)
            if not model.readback_cids and model.mismatch_since_ms:
                self._sync_position(model)  # the read-back did not explain it: an outside change
            if order.status != "UNKNOWN":
                return
        if event.outcome == "found":
            self._count_success()
            order.order_id = order.order_id or event.order_id
            if order.status == "UNKNOWN":
                order.apply("found")
            if model.closing and order.leg != "CLOSE" and order.is_open and order.status != "PENDING_CANCEL":
                self._cancel(model, order)  # it came to life after the symbol decided to close
            return
        if order.status != "UNKNOWN":
            return  # a pushed update already settled it
        if event.outcome == "failed":
            wait = min(RESOLVE_RETRY_MAX_MS, RESOLVE_RETRY_FIRST_MS * 2 ** (order.resolve_attempts - 1))
            order.resolve_at_ms = self.now_ms + wait
            if order.resolve_attempts == RESOLVE_ALERT_AFTER:
                self._critical(
                    "order_unknown",
                    model.symbol,
                    f"{model.symbol}: the outcome of {order.leg} order {order.cid} is still unknown after "
                    f"{order.resolve_attempts} queries ({event.message}); it holds the symbol until known",
                )
            return
        # Absent, asked after the request could no longer execute: it never existed. The leg is
        # free again: the same order goes out once more while attempts remain (N-12), or the leg
        # fails as a rejection would.
        if model.closing and order.leg != "CLOSE":
            order.apply("absent_while_closing")
            self._finish_if_flat(model)
            return
        # An entry is not sent again: by now (recvWindow later) it is no longer at its trigger (as
        # D-20 gives up an entry the venue asks to delay); an exit or a stop goes out once more.
        if order.attempts < self.strategy.entry_attempts and order.leg not in ENTRY_LEGS:
            self._retry(model, order)
            return
        self._on_rejected(
            ev.OrderRejected(
                now_ms=event.now_ms,
                symbol=model.symbol,
                client_order_id=order.cid,
                code=0,
                message="absent after an unknown outcome",
                retryable=False,
                category="retry",
            )
        )

    def _resend(self, model: SymbolModel, order: OrderTrack, wait_ms: int) -> None:
        """A retry now, or once the wait the venue asked for is over (the order stays PENDING, so
        nothing else takes its leg meanwhile)."""
        if wait_ms <= 0:
            self._retry(model, order)
            return
        order.apply("resend")
        order.retry_at_ms = self.now_ms + wait_ms
        self._log(
            "retry_delayed", model.symbol, "venue_asked_to_wait", cid=order.cid, at_ms=order.retry_at_ms
        )

    def _retry(self, model: SymbolModel, order: OrderTrack) -> None:
        """Resend the very same order (same client id: N-12, W33) after a retryable failure."""
        order.attempts += 1
        order.apply("resend")
        reduce_only, position_side = self._side_params()
        if order.is_algo:
            self._emit(
                cmd.PlaceAlgoOrder(
                    symbol=model.symbol,
                    client_algo_id=order.cid,
                    leg=order.leg,
                    side="BUY",
                    order_type="STOP_MARKET",
                    trigger_price=order.price,
                    position_side=position_side,
                    attempt=order.attempts,
                )
            )
            return
        is_entry = order.leg in ENTRY_LEGS
        self._emit(
            cmd.PlaceOrder(
                symbol=model.symbol,
                client_order_id=order.cid,
                leg=order.leg,
                side=order.side,
                order_type="LIMIT" if order.kind == "LIMIT" else "MARKET",  # never EXTERNAL: not ours to send
                quantity=order.qty,
                price=order.price if order.kind == "LIMIT" else None,
                time_in_force="GTC" if order.kind == "LIMIT" else None,
                reduce_only=None if is_entry else reduce_only,
                position_side=position_side,
                attempt=order.attempts,
            )
        )

    def _entry_rejected(
        self, model: SymbolModel, order: OrderTrack, event: ev.OrderRejected, retryable: bool
    ) -> None:
        order.apply("refused")
        if event.category == "margin" or event.code == -2019:  # W35-1
            if order.leg == "ENTRY1":
                self._reset(model, "first entry: insufficient margin")
                return
            if not model.margin_retry_done:
                model.margin_retry_done = True
                model.preparing = "ENTRY2"
                self._emit(cmd.PrepareOrder(symbol=model.symbol, leg="ENTRY2", configure_margin=False))
                return
            self._log("second_entry_skipped", model.symbol, "insufficient_margin_after_retry")
            return
        if retryable:  # W35, N-12
            self._resend(model, order, event.retry_after_ms)
            return
        if order.leg == "ENTRY1":
            self._reset(model, f"first entry failed after {order.attempts} attempt(s): {event.code}")
        else:
            self._log("second_entry_skipped", model.symbol, f"failed_after_{order.attempts}_attempts")

    def _exit_rejected(
        self, model: SymbolModel, order: OrderTrack, event: ev.OrderRejected, retryable: bool
    ) -> None:
        order.apply("refused")
        if retryable and order.leg == "CLOSE":
            self._resend(model, order, event.retry_after_ms)
            return
        if order.leg == "CLOSE":
            # A refused close (filters included: a filter refusal repeats if resent at once) is
            # tried again within the attempts, then on D-19's growing delay with an alert.
            self._close_again(
                model, f"close retry after {event.code}", f"market close failed: {event.code} {event.message}"
            )
            return
        if event.category == "filter":  # N-20
            self._exit_filter_failure(model, order.leg, f"filter {event.code}")
            return
        self._market_close(model, f"limit exit rejected ({event.code}): market fallback")  # R12

    def _close_again(self, model: SymbolModel, reason: str, failure: str) -> None:
        """Another market close while attempts remain. After that a position must still not be left
        unmanaged: a critical alert for a person, and timed closes with a growing delay (D-19)."""
        attempts = self.strategy.entry_attempts
        if model.close_attempts < attempts:
            self._market_close(model, reason)
            return
        backoff = min(CLOSE_RETRY_MAX_MS, CLOSE_RETRY_FIRST_MS * 2 ** (model.close_attempts - attempts))
        if model.close_retry_at_ms == 0 and model.close_attempts == attempts:
            self._critical(
                "close_failed",
                model.symbol,
                f"{model.symbol}: {failure}; retrying the close every {backoff // 1000} s or more",
            )
        model.close_retry_at_ms = self.now_ms + backoff
        self._log("close_retry_scheduled", model.symbol, failure, at_ms=model.close_retry_at_ms)

    def _exit_filter_failure(self, model: SymbolModel, leg: str, reason: str) -> None:
        """N-20: close at market once when the position is at least minQty; otherwise it is dust."""
        assert model.info is not None
        self._log("exit_filter_failure", model.symbol, reason, leg=leg, position=model.position())
        if model.position() >= model.info.min_qty:
            self._market_close(model, f"exit filter failure: {reason}")
        else:
            model.closing = True
            model.close_reason = "dust"
            self._cancel_all(model)
            self._finish_if_flat(model, dust_ok=True)

    def _stop_rejected(
        self, model: SymbolModel, order: OrderTrack, event: ev.OrderRejected, retryable: bool
    ) -> None:
        order.apply("refused")
        if retryable:
            self._resend(model, order, event.retry_after_ms)
            return
        if event.code in (-2021, -4142):  # the stop would trigger at once: its condition already holds
            self._market_close(model, f"{order.leg} would trigger immediately")
            return
        self._critical(
            "stop_rejected",
            model.symbol,
            f"{order.leg} stop of {model.symbol} rejected: {event.code} {event.message}",
        )

    # =========================================================================================
    # Fills and order updates (W36..W43-1, R13..R19, N-16..N-19)
    # =========================================================================================

    def _track_account_order(self, event: ev.OrderUpdated) -> None:
        """N-21's account-wide view of open entry orders; an order once terminal stays terminal."""
        key = f"{event.symbol}:{event.order_id}"
        closing_order = (
            event.reduce_only
            or event.close_position
            or (event.position_side == "SHORT" and event.side == "BUY")
        )
        if event.status in ("NEW", "PARTIALLY_FILLED"):
            if not closing_order and key not in self.closed_order_keys:
                self.account_entry_orders[key] = event.symbol
            return
        self.account_entry_orders.pop(key, None)
        if event.cum_qty > 0 and not closing_order and key not in self.closed_order_keys:
            self.unconfirmed_fills[event.symbol] = event.now_ms
        self.closed_order_keys[key] = event.now_ms
        if len(self.closed_order_keys) > 2000:  # keep the newest only: late updates come within minutes
            for old in sorted(self.closed_order_keys, key=self.closed_order_keys.__getitem__)[:1000]:
                del self.closed_order_keys[old]

    def _on_order_update(self, event: ev.OrderUpdated) -> None:
        self._track_account_order(event)
        model = self.symbols.get(event.symbol)
        if model is None:
            if self.locks[RECOVERY_LOCK].state == "RECOVERING" and not self.recovery_snapshot_done:
                # N-28: the venue is the truth; its snapshot (still to come) already holds this fill.
                self._log("fill_deferred", event.symbol, "recovery_snapshot", cid=event.client_order_id)
                return
            if event.cum_qty > 0:
                self._adopt_late_fill(event)
            return  # otherwise an order of a symbol we do not manage: only the entry lock cares
        order = model.orders.get(event.client_order_id)
        if order is None and event.order_id in model.algo_children:
            order = model.orders.get(model.algo_children[event.order_id])
            if order is not None:
                self._apply_child_fill(model, order, event)
                return
        if order is None:
            if model.open_orders(*STOP_LEGS) and event.side == "BUY":
                # A stop's child can report before ALGO_UPDATE names it (ai): keep it for then.
                model.orphan_updates = [*model.orphan_updates, event][-ORPHAN_LIMIT:]
            self._log("foreign_order", model.symbol, event.status, cid=event.client_order_id)
            return
        if order.order_id == 0:
            order.order_id = event.order_id
        if event.cum_qty == order.filled and event.avg_price > 0 and event.cum_qty > 0:
            order.avg_price = event.avg_price  # the exact average of a fill first booked from a cancel answer
        delta = order.book(event)
        if delta < 0 or (delta == 0 and event.last_qty > 0):
            self._log(
                "fill_ignored", model.symbol, "duplicate_or_reordered", cid=order.cid, cum=event.cum_qty
            )
        was_open = order.is_open
        order.report(event.status)
        if order.status == "CANCELED" and order.filled >= order.qty:
            order.apply("traded_in_full")
        self._after_order_change(model, order, delta if delta > 0 else ZERO, was_open)

    def _adopt_late_fill(self, event: ev.OrderUpdated) -> None:
        """A fill of one of our entry orders reported after the symbol was reset (it raced the
        cancel): the short is real and nobody manages it. We cancelled that entry on purpose, so the
        position is taken back under management and closed at market."""
        parsed = rules.parse_client_order_id(event.client_order_id)
        info = self.infos.get(event.symbol)
        if parsed is None or parsed.leg not in ENTRY_LEGS or info is None:
            return
        unbooked = event.cum_qty - self.closed_fills.get(event.client_order_id, ZERO)
        if unbooked <= 0:
            self._log(
                "fill_ignored", event.symbol, "already_booked", cid=event.client_order_id, cum=event.cum_qty
            )
            return
        model = self._model(event.symbol)
        model.info = info
        model.message_id = parsed.message_id
        for cid in self.closed_fills:  # never reuse a client id of this signal (N-13)
            known = rules.parse_client_order_id(cid)
            if known is not None and known.message_id == parsed.message_id and cid.endswith(event.symbol):
                model.generations[known.leg] = max(model.generations.get(known.leg, 0), known.generation)
        track = OrderTrack(
            cid=event.client_order_id,
            leg=parsed.leg,
            side=event.side,
            kind=order_kind(event.order_type),
            price=event.price,
            qty=event.orig_qty,
            status=event.status if event.status != "NEW" else "CANCELED",
            order_id=event.order_id,
            filled=unbooked,
            avg_price=event.avg_price if event.avg_price > 0 else event.last_price or event.price,
            last_fill_ms=event.now_ms,
        )
        model.orders[track.cid] = track
        self._critical(
            "late_fill",
            event.symbol,
            f"{event.symbol}: {event.cum_qty} filled after its cancel; closing at market",
        )
        self._fire(model, "restore_phase1", "fill after the entry was cancelled")
        self._emit(cmd.SubscribeMarket(symbols=(event.symbol,)))
        self._market_close(model, "fill after cancel")

    def _apply_child_fill(self, model: SymbolModel, stop: OrderTrack, event: ev.OrderUpdated) -> None:
        """A triggered stop's market child filled: its quantity closes the position."""
        delta = stop.book(event)
        if event.status == "FILLED" and stop.status != "FILLED":
            stop.apply("stop_filled")
        self._after_order_change(model, stop, delta if delta > 0 else ZERO, True)

    def _after_order_change(
        self, model: SymbolModel, order: OrderTrack, delta: Decimal, was_open: bool
    ) -> None:
        if order.leg in ENTRY_LEGS:
            self._after_entry_change(model, order, delta)
        elif delta > 0:
            self._after_exit_fill(model, order)
        if (
            model.mismatch_since_ms
            and model.venue_position is not None
            and model.venue_position == model.position()
        ):
            model.mismatch_since_ms = 0
            model.mismatch_readback = False
        if was_open and not order.is_open:
            self._finish_if_flat(model)

    def _after_entry_change(self, model: SymbolModel, order: OrderTrack, delta: Decimal) -> None:
        if order.leg == "ENTRY1":
            if delta > 0 and model.state == "ENTRY_ORDER" and not model.closing:
                model.tp_armed = model.tp_armed or not model.open_orders("TP")  # W37: TP algorithm on
                self._replace_exit_if_stale(model, "TP")
            if model.state == "ENTRY_ORDER" and not order.is_open and not model.closing:
                if model.position() > 0:
                    self._enter_phase1(model, order)
                elif not model.open_orders(*ENTRY_LEGS) and not model.preparing:
                    self._reset(model, f"entry order {order.status.lower()} without a fill")
            return
        # ENTRY2 (W43, W43-1, N-17)
        if delta > 0 and model.state in ("PHASE1", "PHASE2") and not model.closing:
            first_fill = model.state == "PHASE1"
            self._fire(
                model,
                "add_filled",
                "second entry filled" if order.status == "FILLED" else "second entry part-filled",
            )
            if first_fill:
                model.tp_armed = False
                self._cancel_all(model, legs=("TP",))
                model.be_armed = not model.open_orders("BE")
                self._emit(
                    cmd.Notify(
                        kind="scale_in",
                        symbol=model.symbol,
                        text=f"{model.symbol}: second entry filled, PHASE2",
                    )
                )
            self._replace_exit_if_stale(model, "BE")
            if order.status == "FILLED" and not model.latest("MDD"):
                self._place_stop(
                    model,
                    "MDD",
                    rules.mdd_stop_price(model.average(), self.strategy.mdd_pct, self._tick(model)),
                )

    def _enter_phase1(self, model: SymbolModel, order: OrderTrack) -> None:
        """W39..W42: TP algorithm on, second entry monitored at avg + 15%, no MDD stop."""
        reason = "first entry filled" if order.status == "FILLED" else "first entry closed part-filled"
        self._fire(model, "entry_filled", reason)
        average = model.average()
        model.add_price = rules.second_entry_price(average, self.strategy.second_entry_pct, self._tick(model))
        model.tp_armed = not model.open_orders("TP") and not model.risk_protected
        model.add_armed = not model.risk_protected
        self._replace_exit_if_stale(model, "TP")
        self._emit(
            cmd.Notify(
                kind="entry_filled",
                symbol=model.symbol,
                text=f"{model.symbol}: short {model.position()} @ {_price_text(average)}",
            )
        )

    def _replace_exit_if_stale(self, model: SymbolModel, leg: cmd.Leg) -> None:
        """W37, W43: when the average or the size changed, cancel the working limit exit and re-place it."""
        working = model.open_orders(leg)
        if not working:
            return
        tick = self._tick(model)
        if leg == "TP":
            price = rules.take_profit_price(model.average(), self.strategy.tp_pct, tick)
        else:
            price = rules.round_to_tick(model.average(), tick)
        assert model.info is not None
        qty = rules.exit_quantity(model.position(), model.info)
        current = working[-1]
        if current.price == price and current.qty == qty:
            return
        for order in working:
            self._cancel(model, order)
        self._place_limit_exit(model, leg, price)

    def _after_exit_fill(self, model: SymbolModel, order: OrderTrack) -> None:
        if model.state in ("ENTRY_ORDER", "PHASE1", "PHASE2"):
            self._fire(model, "exit_started", f"{order.leg} filling")
        assert model.info is not None
        position = model.position()
        if position <= 0 or rules.is_dust(position, model.info):
            # R15, N-18 (OCO): the position is gone: cancel every other order of the symbol.
            model.closing = True
            model.close_reason = model.close_reason or f"{order.leg} filled"
            model.tp_armed = model.add_armed = model.be_armed = False
            self._cancel_all(model)
            self._finish_if_flat(model, dust_ok=True)
        elif order.status == "FILLED" and not model.open_orders("CLOSE"):
            # The exit filled but some position is left (sizes raced, or a close capped by
            # MARKET_LOT_SIZE.maxQty): close the rest at market, for the same reason.
            if order.leg == "CLOSE":
                model.close_attempts = 0  # a close that went through: the next slice starts afresh
            self._market_close(model, model.close_reason or f"{order.leg} filled, remainder")

    def _finish_if_flat(self, model: SymbolModel, *, dust_ok: bool = False) -> None:
        """Reset once a closing symbol has no position (or dust) and no open order left."""
        if not model.closing or model.symbol not in self.symbols:
            return
        position = model.position()
        flat = (
            position <= 0
            or model.close_reason == "dust"
            or (dust_ok and model.info is not None and rules.is_dust(position, model.info))
        )
        if model.open_orders():
            return
        if not flat:
            if model.state == "ENTRY_ORDER" and model.close_reason == "risk":
                model.closing = False  # a fill raced the R02 cancel: treat it as R03
                model.risk_protected = True
                self._apply_risk_pnl(model)
            elif model.state == "EXITING" and not model.open_orders("CLOSE"):
                self._close_again(
                    model,
                    f"{model.close_reason}: remainder",
                    f"{position} left after {model.close_attempts} closes",
                )
            return
        if model.cancel_failed:
            return
        self._emit_pnl(model)
        self._reset(model, f"flat: {model.close_reason or 'closed'}")

    def _emit_pnl(self, model: SymbolModel) -> None:
        realised = sum((o.realized_pnl for o in model.orders.values()), ZERO)
        fees = sum((o.commission for o in model.orders.values()), ZERO)
        exits = [o for o in model.orders.values() if o.leg not in ENTRY_LEGS and o.filled > 0]
        if not exits:
            return
        exit_qty = sum((o.filled for o in exits), ZERO)
        exit_avg = sum((o.avg_price * o.filled for o in exits), ZERO) / exit_qty
        estimated = (model.average() - exit_avg) * exit_qty
        self._emit(
            cmd.Notify(
                kind="position_closed",
                symbol=model.symbol,
                text=(
                    f"{model.symbol} closed ({model.close_reason}): estimated {estimated:+.4f} USDT, "
                    f"realised net {realised - fees:+.4f} USDT (fees {fees:.4f})"
                ),
            )
        )

    def _on_algo_update(self, event: ev.AlgoOrderUpdated) -> None:
        model = self.symbols.get(event.symbol)
        order = model.orders.get(event.client_algo_id) if model else None
        if model is None or order is None:
            # One of our ids no longer tracked (a stop cancelled or replaced before the symbol reset)
            # is ours, late; only an id we never make is foreign.
            ours = rules.parse_client_order_id(event.client_algo_id)
            kind = "late_algo_update" if ours else "foreign_algo_order"
            self._log(kind, event.symbol, event.status, cid=event.client_algo_id)
            return
        if event.algo_id and not order.order_id:
            order.order_id = event.algo_id
        if event.status in ("TRIGGERING", "TRIGGERED", "FINISHED"):
            if event.actual_order_id:
                model.algo_children[event.actual_order_id] = order.cid
            if model.state in ("ENTRY_ORDER", "PHASE1", "PHASE2"):
                self._fire(model, "exit_started", f"{order.leg} stop triggered")
            model.closing = True
            model.close_reason = model.close_reason or f"{order.leg} stop"
            model.tp_armed = model.add_armed = model.be_armed = False
            orphans = [u for u in model.orphan_updates if u.order_id == event.actual_order_id]
            model.orphan_updates = [u for u in model.orphan_updates if u.order_id != event.actual_order_id]
            for update in orphans:
                self._apply_child_fill(model, order, update)
            self._cancel_all(model, exclude_legs=(order.leg,))  # R15: the stop closes everything
            if event.status == "FINISHED" and order.status != "FILLED" and model.position() <= 0:
                order.apply("stop_filled")
            self._finish_if_flat(model, dust_ok=True)
        elif event.status in ("CANCELED", "EXPIRED", "REJECTED"):
            was_open = order.is_open
            order.report("CANCELED" if event.status != "REJECTED" else "REJECTED")
            if event.status == "REJECTED":
                self._critical(
                    "stop_rejected", model.symbol, f"{order.leg} stop rejected by the venue: {event.reason}"
                )
            if was_open:
                self._finish_if_flat(model)
        else:
            order.report("NEW")

    def _on_cancel_result(self, event: ev.CancelResult) -> None:
        model = self.symbols.get(event.symbol)
        order = model.orders.get(event.client_order_id) if model else None
        if model is None or order is None:
            self._log("cancel_result_ignored", event.symbol, "unknown_order", cid=event.client_order_id)
            return
        if event.gone and not order.is_algo and order.leg in LIMIT_EXIT_LEGS and model.close_deferred:
            # "Already gone": filled or cancelled, and how much traded is not said. The close waits
            # for the order's own answer, asked now (a filled TP's push may be late or lost).
            order.apply("gone_unexplained")
            order.resolve_at_ms = self.now_ms
            self._log("exit_gone", model.symbol, "querying_before_close", cid=order.cid)
            return
        if event.ok or event.gone:
            self._cancel_done(model, order, event)
            return
        self._cancel_refused(model, order, event)

    def _cancel_done(self, model: SymbolModel, order: OrderTrack, event: ev.CancelResult) -> None:
        """The cancel went through, or the order was already gone."""
        self._count_success()
        self.account_entry_orders.pop(f"{model.symbol}:{order.order_id}", None)
        if order.order_id:
            self.closed_order_keys[f"{model.symbol}:{order.order_id}"] = event.now_ms
        delta = ZERO
        if event.executed_qty is not None and event.executed_qty > order.filled and not order.is_algo:
            # A fill raced the cancel: book it at the order's price until the user stream says more.
            delta = event.executed_qty - order.filled
            order.avg_price = (order.avg_price * order.filled + order.price * delta) / event.executed_qty
            order.filled = event.executed_qty
            order.last_fill_ms = event.now_ms
        was_open = order.is_open
        if was_open:
            order.apply(
                "cancel_too_late" if order.filled >= order.qty and order.filled > 0 else "cancel_done"
            )
        if model.cancel_failed and not model.open_orders():
            model.cancel_failed = False  # R16: the re-cancel went through
        self._after_order_change(model, order, delta, was_open)
        if self.locks[EXIT_CANCEL_LOCK].state == "CANCEL_FAILED" and not any(
            m.cancel_failed for m in self.symbols.values()
        ):
            self._fire_lock(EXIT_CANCEL_LOCK, "cancel_clean", "leftover exit orders cancelled")

    def _cancel_refused(self, model: SymbolModel, order: OrderTrack, event: ev.CancelResult) -> None:
        """W51-3, R15: a refused cancel is retried, delayed by the rate limits, or locks exits."""
        self._log(  # W51-3
            "cancel_failed",
            model.symbol,
            str(event.code),
            cid=order.cid,
            attempt=order.cancel_attempts,
            message=event.message,
        )
        if event.code in (-1003, 429, 418):
            self._count_rate_failure()
        if order.status in TERMINAL_STATUSES:
            # The order's own report (a fill, a venue cancel) came before this refusal: nothing
            # is left to cancel; a re-cancel would only fail again into the R15 lock.
            self._log("cancel_failure_moot", model.symbol, order.status, cid=order.cid)
            return
        if event.retry_after_ms > 0 and order.status != "UNKNOWN":
            # Refused by the rate limits (W50), not by the venue's book: not one of R15's attempts.
            # It goes again once the wait is over (sent sooner, it would only lengthen a ban).
            order.cancel_attempts -= 1
            order.cancel_at_ms = self.now_ms + event.retry_after_ms
            self._log("cancel_delayed", model.symbol, "rate_limited", cid=order.cid, at_ms=order.cancel_at_ms)
            return
        if order.cancel_attempts < self.strategy.cancel_attempts:
            self._cancel(model, order)
            return
        # R15: three failures: mark the symbol, block new orders, re-query periodically (R16).
        model.cancel_failed = True
        self._critical(
            "exit_cancel_failed",
            model.symbol,
            f"{model.symbol}: could not cancel {order.cid} after {order.cancel_attempts} attempts",
        )
        if self._fire_lock(EXIT_CANCEL_LOCK, "cancel_failed", f"{order.cid} not cancelled"):
            self.requery_due_ms = event.now_ms + self.strategy.requery_interval_seconds * 1000

    # =========================================================================================
    # Positions, balances, exchange snapshots (R20..R22, N-21, N-28)
    # =========================================================================================

    def _on_position(self, event: ev.PositionChanged) -> None:
        if event.venue_time_ms:
            if event.venue_time_ms < self.position_times.get(event.symbol, 0):
                self._log(
                    "position_stale",
                    event.symbol,
                    "older_update_ignored",
                    amount=event.amount,
                    venue_time_ms=event.venue_time_ms,
                )
                return
            self.position_times[event.symbol] = event.venue_time_ms
        self.unconfirmed_fills.pop(event.symbol, None)
        amount = abs(event.amount)
        key = _position_key(event.symbol, event.position_side)
        if amount == 0:
            self.account_positions.pop(key, None)
        else:
            self.account_positions[key] = amount
        if event.position_side == "LONG":
            return  # a hedge-mode LONG leg is never ours (we only short): it only holds the entry lock
        model = self.symbols.get(event.symbol)
        if model is None or model.state in ("IDLE", "MONITORING"):
            return
        model.venue_position = amount
        model.venue_entry_price = event.entry_price
        if amount == model.position():
            model.mismatch_since_ms = 0
            model.mismatch_readback = False
        elif not model.mismatch_since_ms:
            model.mismatch_since_ms = event.now_ms  # decided after the grace, when no fill explains it

    def _position_mismatch(self, model: SymbolModel, now: int) -> None:
        """The venue's position still disagrees after the grace. A lost fill push is the usual
        cause: our open orders are read back first (their fills come back with trade ids), and
        only a mismatch that survives one more grace is an outside change (R20..R22)."""
        reads = [o for o in model.open_orders() if o.status != "UNKNOWN"]
        if model.mismatch_readback or not reads:
            self._sync_position(model)
            return
        model.mismatch_readback = True
        model.readback_cids = tuple(o.cid for o in reads)
        model.mismatch_since_ms = now  # if no answer comes, the next grace decides without them
        self._log("position_mismatch", model.symbol, "reading_orders_back", venue=model.venue_position)
        for order in reads:
            self._emit(
                cmd.ResolveOrder(symbol=model.symbol, client_order_id=order.cid, is_algo=order.is_algo)
            )

    def _sync_position(self, model: SymbolModel) -> None:
        """R20..R22: the venue's position is the truth; follow it."""
        model.mismatch_since_ms = 0
        model.mismatch_readback = False
        venue = model.venue_position
        assert venue is not None and model.info is not None
        ours = model.position()
        self._log("position_sync", model.symbol, "external_change", ours=ours, venue=venue)
        # Book the difference as an external fill so that our position equals the venue's.
        diff = ours - venue
        key = f"ext-{model.next_generation('CLOSE')}"
        external = OrderTrack(
            cid=key, leg="CLOSE", side="BUY", kind="EXTERNAL", price=ZERO, qty=abs(diff), status="FILLED"
        )
        if diff > 0:
            external.filled = diff
        else:
            # More on the venue than our fills say: the missing fill is priced so that the average
            # becomes the venue's entry price (never the model's average, 0 before any fill).
            external.leg = "ENTRY1"
            external.filled = -diff
            entry_cost = sum(
                (o.avg_price * o.filled for o in model.orders.values() if o.leg in ENTRY_LEGS), ZERO
            )
            exit_qty = model.exit_filled_qty()
            wanted = model.venue_entry_price * (venue + exit_qty) - entry_cost
            external.avg_price = (
                wanted / -diff if model.venue_entry_price > 0 and wanted > 0 else model.average()
            )
        model.orders[key] = external
        if venue == 0 or rules.is_dust(venue, model.info):  # R21, R22
            model.closing = True
            model.close_reason = "external close" if venue == 0 else "dust"
            model.tp_armed = model.add_armed = model.be_armed = False
            if model.state in ("ENTRY_ORDER", "PHASE1", "PHASE2"):
                self._fire(model, "exit_started", model.close_reason)
            self._cancel_all(model)
            self._finish_if_flat(model, dust_ok=True)
            return
        # R20: cancel every exit order, then re-place only what the new size needs.
        had = {o.leg for o in model.open_orders("TP", "BE", "BE_STOP", "MDD")}
        self._cancel_all(model, legs=("TP", "BE", "BE_STOP", "MDD"))
        if "TP" in had:
            self._place_tp(model)
        if "BE" in had:
            self._place_limit_exit(model, "BE", rules.round_to_tick(model.average(), self._tick(model)))
        for leg in ("BE_STOP", "MDD"):
            if leg in had:
                previous = model.latest(leg)
                assert previous is not None
                self._place_stop(model, leg, previous.price)

    def _on_balance(self, event: ev.BalanceChanged) -> None:
        self.wallet_balance = event.wallet_balance
        if event.available_balance is not None:
            self.available_balance = event.available_balance

    def _on_position_mode(self, event: ev.PositionModeChanged) -> None:
        self.position_mode = event.mode
        self._log("position_mode", None, event.mode or "unknown")

    def _recompute_entry_lock(self) -> None:
        """N-21, section 1 rule 1: any position above dust or open entry order, account-wide."""
        reasons: list[str] = []
        for key, amount in self.account_positions.items():
            if not rules.is_dust(amount, self.infos.get(key.partition(":")[0])):
                reasons.append(f"position {key}")
        reasons.extend(f"open entry order {key}" for key in sorted(self.account_entry_orders))
        if self.unconfirmed_fills:
            grace = self.strategy.position_sync_grace_seconds * 1000
            for symbol, at in list(self.unconfirmed_fills.items()):
                if self.now_ms - at >= grace:  # no position update came: the positions decide again
                    del self.unconfirmed_fills[symbol]
                else:
                    reasons.append(f"fill on {symbol} awaiting its position update")
        for symbol, model in self.symbols.items():
            if model.state not in HOLDING_STATES:
                continue  # the test ``_holds_entry_lock`` starts with, without the call (600 a second)
            held = self._holds_entry_lock(model)
            if held:
                reasons.append(f"{symbol} {held}")
        lock = self.locks[ENTRY_LOCK]
        if reasons and lock.state == "GLOBAL_IDLE":
            self._fire_lock(ENTRY_LOCK, "lock", reasons[0])
            for model in list(self.symbols.values()):  # W46, W36-2: every other monitoring symbol goes
                if model.state == "MONITORING":
                    self._reset(model, f"entry lock: {reasons[0]}")
        elif not reasons and lock.state == "GLOBAL_LOCKED":
            self._fire_lock(ENTRY_LOCK, "unlock", "no position and no open entry order")

    def _on_recovery_started(self, event: ev.RecoveryStarted) -> None:
        """N-28 steps 1-3: locked, Telegram paused; cursors and cooldowns back; ask for a snapshot."""
        self._fire_lock(RECOVERY_LOCK, "restart", "process start")
        if event.running_settings:
            try:
                self.strategy = self.strategy.with_changes(dict(event.running_settings))
                keys = ",".join(name for name, _ in event.running_settings)
                self._log("settings_resumed", None, "last_run_trading", keys=keys)
            except ValueError as exc:  # a damaged snapshot: the configured values run
                self._log("settings_refused", None, "invalid", error=str(exc))
        for chat_id, message_id in event.cursors:
            self.cursors[chat_id] = max(self.cursors.get(chat_id, 0), message_id)
        for symbol, received_at in event.cooldowns:
            self.cooldowns[symbol] = max(self.cooldowns.get(symbol, 0), received_at)
        self.recovery_hints = {symbol: (message_id, state) for symbol, message_id, state in event.managed}
        self.recovery_closing = dict(event.closing)
        self.recovery_held = dict(event.held)
        self.recovery_generations = {}
        for symbol, leg, generation in event.generations:
            self.recovery_generations.setdefault(symbol, {})[leg] = generation
        for model in list(self.symbols.values()):  # N-28 step 7: monitoring is never resumed
            if model.state == "MONITORING":
                self._reset(model, "recovery: monitoring dropped")
        self.recovery_snapshot_done = False
        self.recovery_started_ms = event.now_ms
        self.recovery_query_due_ms = event.now_ms + 5000
        self._emit(cmd.QueryExchange(purpose="recovery"))

    def _recovery_tick(self, now: int) -> None:
        if not self.recovery_snapshot_done and now >= self.recovery_query_due_ms:
            self.recovery_query_due_ms = now + 5000
            self._emit(cmd.QueryExchange(purpose="recovery"))
        self._maybe_finish_recovery()

    def _on_snapshot(self, event: ev.ExchangeSnapshot) -> None:
        if event.purpose == "requery":
            self._requery_result(event)
            return
        if not event.complete:
            self._log("recovery", None, "snapshot_incomplete")
            self._emit(
                cmd.Notify(kind="recovery", text="exchange snapshot incomplete; retrying", severity="warning")
            )
            return
        self.position_mode = event.position_mode
        self.wallet_balance = event.wallet_balance
        self.available_balance = event.available_balance
        self.account_positions = {
            _position_key(p.symbol, p.position_side): abs(p.amount) for p in event.positions if p.amount != 0
        }
        self.account_entry_orders = {}
        for order in event.open_orders:
            closing = order.reduce_only or order.close_position or order.is_algo
            if not closing and not (order.position_side == "SHORT" and order.side == "BUY"):
                self.account_entry_orders[f"{order.symbol}:{order.order_id}"] = order.symbol
        infos = {i.symbol: i for i in event.symbols}
        on_venue = {p.symbol for p in event.positions if p.amount != 0} | {
            o.symbol for o in event.open_orders
        }
        for symbol, model in list(self.symbols.items()):
            if symbol not in on_venue:  # a rebuild after an internal error: nothing of it is left
                self._reset(model, "recovery: no position and no order on the exchange")
        for symbol in sorted({p.symbol for p in event.positions} | {o.symbol for o in event.open_orders}):
            self._rebuild_symbol(symbol, event, infos.get(symbol))
        self.recovery_snapshot_done = True
        if event.position_mode is None:  # W26 at start: nothing may be ordered until it is known
            self._critical("recovery", None, "position mode unknown")
        self._maybe_finish_recovery()

    def _rebuild_symbol(self, symbol: str, snap: ev.ExchangeSnapshot, info: ev.SymbolInfo | None) -> None:
        """N-28 steps 5-6: classify a symbol from the exchange and reconcile its exit orders."""
        position = next(
            (p for p in snap.positions if p.symbol == symbol and p.amount != 0 and p.position_side != "LONG"),
            None,
        )
        orders = [o for o in snap.open_orders if o.symbol == symbol]
        ours: list[tuple[ev.OpenOrderInfo, rules.ParsedClientId]] = []
        for order in orders:
            parsed_id = rules.parse_client_order_id(order.client_order_id)
            if parsed_id is not None:
                ours.append((order, parsed_id))
        model = self.symbols.get(symbol)
        if model is not None:
            self._clear_model(model)
        if info is None or (position is not None and position.amount > 0):
            reason = "no exchangeInfo" if info is None else "long position"
            self._critical("unclassified", symbol, f"{symbol}: cannot manage ({reason})")
            return
        hint = self.recovery_hints.get(symbol)
        if not ours and position is not None and hint is not None and hint[1] in HOLDING_STATES:
            self._rebuild_from_hint(symbol, position, info, hint)
            return
        if not ours and position is not None:
            self._critical("unclassified", symbol, f"{symbol}: position without our orders; not managed")
            return
        if not ours:
            return  # manual orders only: the entry lock covers them
        model = self._model(symbol)
        model.info = info
        self.infos[symbol] = info
        self._adopt_open_orders(model, ours)
        amount = abs(position.amount) if position else ZERO
        if position is not None and amount > 0:
            self._book_recovered_position(model, position.entry_price, amount)
        legs = {t.leg for t in model.open_orders()}
        if amount == 0:
            self._restore_without_position(model, legs)
            return
        self._restore_holding(model, legs, amount)
        self._emit(cmd.SubscribeMarket(symbols=(symbol,)))
        self._refit_exits(model, amount, info)
        self._resume_decided_close(model)

    def _adopt_open_orders(
        self, model: SymbolModel, ours: list[tuple[ev.OpenOrderInfo, rules.ParsedClientId]]
    ) -> None:
        """Recovery: our open orders on the venue become the symbol's order table again."""
        model.message_id = max(p.message_id for _, p in ours)
        for order, parsed in ours:
            gen = max(model.generations.get(parsed.leg, 0), parsed.generation)
            model.generations[parsed.leg] = gen
            kind = "STOP_MARKET" if order.is_algo else order_kind(order.order_type)
            track = OrderTrack(
                cid=order.client_order_id,
                leg=parsed.leg,
                side=order.side,
                kind=kind,
                price=order.trigger_price if order.is_algo else order.price,
                qty=order.orig_qty,
                status="PARTIALLY_FILLED" if order.executed_qty > 0 else "NEW",
                order_id=order.order_id,
                filled=order.executed_qty,
            )
            model.orders[track.cid] = track

    def _book_recovered_position(self, model: SymbolModel, entry_price: Decimal, amount: Decimal) -> None:
        """The exchange's entry price is the truth for the average: book the position as one fill.

        Open entries keep their executed quantity (their next update carries it as cum), and the
        rest of the position is booked so that the total average is the exchange's entry price.
        What open exits already executed is inside the exchange's amount: it is booked on the entry
        side too, or the position would count it twice (a part-filled TP at a restart)."""
        base = OrderTrack(
            cid=f"recovered-{model.symbol}",
            leg="ENTRY1",
            side="SELL",
            kind="EXTERNAL",
            price=entry_price,
            qty=amount,
        )
        executed = [(t.price, t.filled) for t in model.open_orders(*ENTRY_LEGS)]
        for track in model.open_orders(*ENTRY_LEGS):
            track.avg_price = track.price
        exited = sum((t.filled for t in model.open_orders() if t.leg not in ENTRY_LEGS), ZERO)
        entered = amount + exited
        rest = entered - sum((qty for _, qty in executed), ZERO)
        if rest > 0:
            cost = entry_price * entered - sum((p * q for p, q in executed), ZERO)
            base.qty = rest
            base.status, base.filled, base.avg_price = "FILLED", rest, cost / rest
            model.orders = {base.cid: base, **model.orders}

    def _restore_without_position(self, model: SymbolModel, legs: set[cmd.Leg]) -> None:
        """Recovery, no position: an open first entry keeps waiting; anything else is cancelled."""
        if "ENTRY1" in legs:
            self._fire(model, "restore_entry_order", "open first entry, no position")
            self._cancel_all(model, exclude_legs=("ENTRY1",))
            self._emit(cmd.SubscribeMarket(symbols=(model.symbol,)))  # recovery waits for its price
        else:
            model.closing = True
            model.close_reason = "recovery: orders without position"
            self._fire(model, "restore_exiting", "exit orders left without a position")
            self._cancel_all(model)

    def _restore_holding(self, model: SymbolModel, legs: set[cmd.Leg], amount: Decimal) -> None:
        """Recovery with a position: the phase the orders (and the last snapshot) prove, re-armed."""
        average = model.average()
        tick = self._tick(model)
        if "ENTRY1" in legs:
            self._fire(model, "restore_entry_order", "first entry part-filled")
            model.tp_armed = "TP" not in legs
        elif (
            "ENTRY2" in legs or "MDD" in legs or "BE" in legs or self._scaled_in_unseen(model.symbol, amount)
        ):
            self._fire(model, "restore_phase2", "second entry seen")
            model.be_armed = "BE" not in legs
            self._cancel_all(model, legs=("TP",))  # PHASE2 has no TP (W42)
            if "ENTRY2" not in legs and "MDD" not in legs:
                self._place_stop(model, "MDD", rules.mdd_stop_price(average, self.strategy.mdd_pct, tick))
        else:
            self._fire(model, "restore_phase1", "position after first entry")
            model.add_price = rules.second_entry_price(average, self.strategy.second_entry_pct, tick)
            model.risk_protected = "BE_STOP" in legs
            model.add_armed = not model.risk_protected
            model.tp_armed = "TP" not in legs and not model.risk_protected

    def _refit_exits(self, model: SymbolModel, amount: Decimal, info: ev.SymbolInfo) -> None:
        """N-28 step 6: exit orders that no longer fit the position are cancelled (and re-armed)."""
        for track in model.open_orders("TP", "BE"):
            if (
                track.qty - track.filled != rules.exit_quantity(amount, info)
                and track.status != "PENDING_CANCEL"
            ):
                self._cancel(model, track)
                if track.leg == "TP":
                    model.tp_armed = model.state != "PHASE2"
                else:
                    model.be_armed = True

    def _scaled_in_unseen(self, symbol: str, amount: Decimal) -> bool:
        """The exchange holds more than the last snapshot did and no scale-in is open: it filled
        while no daemon watched (kill -9 during the fill)."""
        held = self.recovery_held.get(symbol)
        return held is not None and held > 0 and amount > held

    def _resume_decided_close(self, model: SymbolModel) -> None:
        """A market close decided before the restart (risk PnL <= 0, the five-second rule, the stale
        lock, D-19's timed retries) is carried out now: a restart never forgets it."""
        reason = self.recovery_closing.get(model.symbol)
        if reason is None or model.position() <= 0:
            return
        self._critical(
            "close_resumed",
            model.symbol,
            f"{model.symbol}: close at market decided before the restart ({reason})",
        )
        self._market_close(model, f"{reason} (resumed after restart)")

    def _rebuild_from_hint(
        self, symbol: str, position: ev.PositionInfo, info: ev.SymbolInfo, hint: tuple[int, str]
    ) -> None:
        """A position of ours with none of our orders open (PHASE1 before its TP, PHASE2 after its
        stop was cancelled...): storage says it was ours, the exchange gives size and average."""
        message_id, state = hint
        model = self._model(symbol)
        model.info = info
        self.infos[symbol] = info
        model.message_id = message_id
        amount = abs(position.amount)
        base = OrderTrack(
            cid=f"recovered-{symbol}",
            leg="ENTRY1",
            side="SELL",
            kind="EXTERNAL",
            price=position.entry_price,
            qty=amount,
        )
        base.status, base.filled, base.avg_price = "FILLED", amount, position.entry_price
        model.orders[base.cid] = base
        tick = self._tick(model)
        if state == "PHASE2" or self._scaled_in_unseen(symbol, amount):
            self._fire(model, "restore_phase2", f"stored state {state}, no open order")
            model.be_armed = True
            self._place_stop(
                model, "MDD", rules.mdd_stop_price(position.entry_price, self.strategy.mdd_pct, tick)
            )
        else:
            self._fire(model, "restore_phase1", f"stored state {state}, position without open orders")
            model.add_price = rules.second_entry_price(
                position.entry_price, self.strategy.second_entry_pct, tick
            )
            model.tp_armed = model.add_armed = True
        self._emit(cmd.SubscribeMarket(symbols=(symbol,)))
        self._resume_decided_close(model)

    def _maybe_finish_recovery(self) -> None:
        if self.locks[RECOVERY_LOCK].state != "RECOVERING" or not self.recovery_snapshot_done:
            return
        if self.price_seen_ms < self.recovery_started_ms or self.price_seen_ms == 0:
            return  # N-28 step 8: the price source must answer before anything resumes, flat or not
        needs_price = [s for s, m in self.symbols.items() if m.state in HOLDING_STATES and not m.closing]
        if any(s not in self.marks for s in needs_price):
            return  # ... and for every symbol held
        self._fire_lock(RECOVERY_LOCK, "recovered", "exchange reconciled, price source checked")
        self._emit(cmd.ResumeTelegram())

    def _requery_result(self, event: ev.ExchangeSnapshot) -> None:
        """R16: re-cancel what is still open; lift the exit-cancel-failed lock once clean."""
        if not event.complete:
            return
        open_ids = {o.client_order_id for o in event.open_orders}
        for model in list(self.symbols.values()):
            if not model.cancel_failed:
                continue
            remaining = [
                o
                for o in model.orders.values()
                if o.cid in open_ids and (o.leg not in ENTRY_LEGS or model.closing)
            ]
            for order in model.orders.values():
                if order.cid not in open_ids and order.is_open:
                    order.apply("not_listed")
            if remaining:
                for order in remaining:
                    order.apply("listed_open")
                    order.cancel_attempts = 0
                    self._cancel(model, order)
                continue
            model.cancel_failed = False
            self._finish_if_flat(model, dust_ok=True)
        if not any(m.cancel_failed for m in self.symbols.values()):
            self._fire_lock(EXIT_CANCEL_LOCK, "cancel_clean", "no leftover exit order")

    # =========================================================================================
    # Protection modes, settings, pause (N-23..N-26)
    # =========================================================================================

    def _count_rate_failure(self) -> None:
        self.rate_successes = 0
        self.rate_failures += 1
        if self.rate_failures >= self.strategy.rate_limit_enter_after and self._fire_lock(
            RATE_LIMIT, "throttle", f"{self.rate_failures} consecutive rate-limit failures"
        ):
            self._emit(cmd.Notify(kind="rate_limit", text="rate-limit protection on", severity="warning"))

    def _count_success(self) -> None:
        self.rate_failures = 0
        if self.locks[RATE_LIMIT].state == "PROTECT":
            self.rate_successes += 1
            if self.rate_successes >= self.strategy.rate_limit_leave_after:
                self.rate_successes = 0
                self._fire_lock(RATE_LIMIT, "relax", "consecutive successes")
                self._emit(cmd.Notify(kind="rate_limit", text="rate-limit protection off"))

    def _on_venue_error(self, event: ev.VenueErrorObserved) -> None:
        self._log("venue_error", None, event.category, code=event.code, message=event.message)
        if event.category == "rate_limited":  # W50, N-24
            self._count_rate_failure()
        elif event.category == "auth":  # W51, N-25
            self._enter_auth_lock(f"{event.code} {event.message}")

    def _enter_auth_lock(self, reason: str) -> None:
        if not self._fire_lock(AUTH, "auth_failed", reason):
            return
        self.auth_probes = 0
        self.auth_probe_due_ms = self.now_ms + AUTH_PROBE_FIRST_MS
        self._critical("auth_lock", None, f"API key refused: {reason}")
        for model in list(self.symbols.values()):
            if model.state == "MONITORING":  # no position, no open order: reset (N-25)
                self._reset(model, "auth lock")

    def _on_venue_ok(self, event: ev.VenueCallSucceeded) -> None:
        self._count_success()
        if event.signed and self.locks[AUTH].state == "AUTH_LOCKED":
            self._fire_lock(AUTH, "auth_restored", "signed request succeeded")
            self.auth_probe_due_ms = 0
            self._emit(cmd.Notify(kind="auth_lock", text="API key works again"))

    def _on_settings(self, event: ev.SettingsChangeRequested) -> None:
        """N-26, G06: strategy settings are locked while any symbol is active (and while recovery
        has not yet shown what is active). A refused change is kept and applied once nothing is
        active (D-23); the latest request replaces an earlier pending one."""
        changes = dict(event.changes)
        if not changes:  # the file is back to the running values: nothing is waiting any more
            if self.pending_settings:
                keys = ",".join(self.pending_settings)
                self._log("settings_pending_dropped", None, "file_unchanged", keys=keys)
                self.pending_settings = {}
            return
        try:
            self.strategy.with_changes(changes)
        except ValueError as exc:
            self._log("settings_refused", None, "invalid", error=str(exc))
            return
        active = self.active_symbols()
        recovering = self.locks[RECOVERY_LOCK].state == "RECOVERING"
        if active or recovering:
            self.pending_settings = changes
            self._log(
                "settings_refused",
                None,
                "symbols_active" if active else "recovering",
                active=",".join(sorted(active)),
                keys=",".join(changes),
            )
            self._emit(
                cmd.Notify(
                    kind="settings_refused",
                    text="settings locked while trading; they apply once no symbol is active",
                    severity="warning",
                )
            )
            return
        self.pending_settings = {}
        self.strategy = self.strategy.with_changes(changes)
        self._log("settings_applied", None, "ok", keys=",".join(sorted(changes)))

    def _apply_pending_settings(self) -> None:
        """D-23: the settings refused while trading, once recovery is over and nothing is active."""
        if self.locks[RECOVERY_LOCK].state == "RECOVERING" or self.active_symbols():
            return
        changes, self.pending_settings = self.pending_settings, {}
        try:
            self.strategy = self.strategy.with_changes(changes)
        except ValueError as exc:  # cannot happen: checked when requested; kept for a damaged snapshot
            self._log("settings_refused", None, "invalid", error=str(exc))
            return
        keys = ",".join(sorted(changes))
        self._log("settings_applied", None, "no_symbol_active", keys=keys)
        self._emit(
            cmd.Notify(kind="settings_applied", text=f"settings applied now that no symbol is active: {keys}")
        )

    def _on_pause(self, event: ev.PauseRequested) -> None:
        """A pause stops new entries and releases what only monitors (no order, no position): a
        signal seen before the pause never enters after ``resume``; new signals do (D-40)."""
        self.paused = event.paused
        self._log("pause", None, "paused" if event.paused else "resumed")
        if event.paused:
            for model in list(self.symbols.values()):
                if model.state == "MONITORING":
                    self._reset(model, "paused: monitoring released")


# Engine attributes that snapshot() carries as they are.
_PLAIN_FIELDS = (
    "cursors",
    "risk_seen",
    "cooldowns",
    "marks",
    "infos",
    "account_positions",
    "position_times",
    "account_entry_orders",
    "unconfirmed_fills",
    "closed_order_keys",
    "position_mode",
    "wallet_balance",
    "available_balance",
    "price_source",
    "last_ws_ms",
    "last_rest_ms",
    "rest_failing",
    "ws_reason",
    "mark_ws_ms",
    "mark_rest_ms",
    "watch_since",
    "rate_failures",
    "rate_successes",
    "paused",
    "pending_settings",
    "requery_due_ms",
    "auth_probe_due_ms",
    "auth_probes",
    "rate_probe_due_ms",
    "recovery_snapshot_done",
    "recovery_started_ms",
    "price_seen_ms",
    "recovery_query_due_ms",
    "recovery_hints",
    "recovery_closing",
    "recovery_held",
    "recovery_generations",
    "closed_fills",
    "now_ms",
)


def _position_key(symbol: str, side: str) -> str:
    """``account_positions`` key: the symbol for our leg (SHORT, or BOTH in one-way mode), and
    ``SYMBOL:LONG`` for a hedge-mode LONG leg, which is never ours but holds the entry lock (G01)."""
    return f"{symbol}:LONG" if side == "LONG" else symbol


def recovery_facts(
    models: dict[str, SymbolModel],
) -> tuple[tuple[tuple[str, str], ...], tuple[tuple[str, Decimal], ...]]:
    """What a restart must not forget from a saved engine's symbols: the market closes it had
    decided (``RecoveryStarted.closing``) and the positions it held (``RecoveryStarted.held``)."""
    closing = sorted(
        (s, m.close_reason or "close")
        for s, m in models.items()
        if m.closing and (m.close_attempts > 0 or m.close_retry_at_ms > 0 or m.close_deferred)
    )
    held = sorted((s, m.position()) for s, m in models.items() if m.state != "IDLE")
    return tuple(closing), tuple(held)


def _price_text(value: Decimal) -> str:
    """A price for people: at most 8 decimals, no trailing zeros, never a trailing dot."""
    text = f"{value.quantize(Decimal('0.00000001')):f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def encode_strategy(strategy: Strategy) -> dict[str, Any]:
    return {name: encode(getattr(strategy, name)) for name in strategy.__dataclass_fields__}


def decode_strategy(data: dict[str, Any]) -> Strategy:
    return Strategy(**{k: decode(v) for k, v in data.items()})


def clone(engine: Engine) -> Engine:
    """An independent copy (tests, what-if evaluation)."""
    return Engine.restore(copy.deepcopy(engine.snapshot()))


__all__ = ["ACTIVE_STATES", "Engine", "clone"]
