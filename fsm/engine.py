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
monitoring symbol is reset (W46). No exception escapes ``handle``: an unexpected error raises a
critical alert, locks entries and rebuilds the state from the exchange (D-32).

The parts, each a module of functions of the state (``fsm.core.Core``) that never holds the engine:
``intake`` (messages, cursors, cooldowns, filters, targets), ``prices`` (marks, WS/REST source,
staleness), ``account`` (balances, position mode, the entry lock), ``protection`` (gates, rate-limit
and auth locks, pause), ``order_flow`` (placing, answers, cancels, order updates through the order
table), ``lifecycle`` (the 1-second evaluation, entries, phases, exits, closes, position sync),
``recovery`` (N-28) and ``settings`` (the settings lock). This module routes events to them and
holds the read-only queries and snapshot/restore.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from decimal import Decimal, localcontext
from typing import Any, Final

from fsm import account, flatten, intake, lifecycle, order_flow, prices, protection, recovery, rules, settings
from fsm import commands as cmd
from fsm import events as ev
from fsm.core import DECIMAL_CONTEXT, Core
from fsm.model import LIMIT_EXIT_LEGS, SymbolModel, decode, encode
from fsm.strategy import Strategy
from fsm.table import ACTIVE_STATES, AUTH, EXIT_CANCEL_LOCK, RATE_LIMIT, SAFETY_LOCK

log = logging.getLogger("shortfsm.engine")


class Engine(Core):
    """Routes events to the parts and collects the commands they decide; the typed read-only
    queries (``fsm.reader.EngineReader``) and snapshot/restore live here."""

    def __init__(self, strategy: Strategy | None = None, *, recovering: bool = False) -> None:
        super().__init__(strategy, recovering=recovering)
        self._handler_table = self._handlers()
        self._info_codes: dict[str, tuple[ev.SymbolInfo | None, Any]] = {}  # ``_encode_infos``'s trees

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
                self.anomaly("unknown_event", None, type(event).__name__)
            else:
                handler(self, event)
                if not isinstance(event, ev.MarkPriceTick):  # a price never changes what is held
                    lifecycle.settle_deferred_closes(self)
                    account.recompute_entry_lock(self)
                    if self.pending_settings:
                        settings.apply_pending_settings(self)
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
            self.critical(
                "engine_error",
                None,
                f"internal error on {type(event).__name__} ({type(exc).__name__}): entries locked, "
                "re-reading the exchange to rebuild the state",
            )
            closing, held = recovery_facts(self.symbols)
            recovery.on_recovery_started(
                self,
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
                    protected=protected_symbols(self.symbols),
                ),
            )
        except Exception:  # never fail while containing a failure: the alert above is what matters
            log.exception("engine failure containment failed")

    def next_deadline_ms(self, *, price_watchdogs: bool = True) -> int | None:
        """The earliest time at which a Tick would decide something that no other event brings.
        ``price_watchdogs=False`` leaves out the WS fallback and stale-price times: a replay of
        recorded prices (the backtest) announces every price itself."""
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
        if price_watchdogs and self.last_ws_ms is not None:
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
            data[name] = self._encode_infos() if name == "infos" else encode(getattr(self, name))
        return data

    def _encode_infos(self) -> dict[str, Any]:
        """``encode(self.infos)``, each info's tree made again only when its object changed: the
        infos are frozen and seldom replaced, and a backtest's daily snapshot encoded the same
        hundreds of them every time. The trees are shared between snapshots and never changed."""
        memo = self._info_codes
        pairs: list[list[Any]] = []
        for symbol, info in self.infos.items():
            hit = memo.get(symbol)
            if hit is None or hit[0] is not info:
                hit = memo[symbol] = (info, encode(info))
            pairs.append([encode(symbol), hit[1]])
        if len(memo) > 2 * len(self.infos) + 64:  # symbols gone from infos
            for symbol in [s for s in memo if s not in self.infos]:
                del memo[symbol]
        return {"$m": pairs}

    @classmethod
    def restore(cls, data: dict[str, Any]) -> Engine:
        engine = cls(decode_strategy(data["strategy"]))
        engine._restore_into(data)
        return engine

    def _restore_into(self, data: dict[str, Any]) -> None:
        self.strategy = decode_strategy(data["strategy"])
        for model in [*self.symbols.values(), *self._released, *self._pool]:
            self.remove_from_machines(model)
        self.symbols = {}
        self._released = []
        self._pool = []
        for symbol, raw in data["symbols"].items():
            model = decode(raw)
            assert isinstance(model, SymbolModel)
            self.add_to_machines(model)
            self.symbols[symbol] = model
        for name, state in data["locks"].items():
            self.locks[name].state = state
        for name in _PLAIN_FIELDS:
            if name in data:  # a snapshot from before a field existed keeps the field's default
                setattr(self, name, decode(data[name]))
        self.reindex()

    def _handlers(self) -> dict[type, Callable[[Core, Any], None]]:
        return {
            ev.MessageReceived: intake.on_message,
            ev.MarkPriceTick: prices.on_mark,
            ev.RestPriceFailed: prices.on_rest_failed,
            ev.WsStatusChanged: prices.on_ws_status,
            ev.Tick: lifecycle.on_tick,
            ev.OrderPrepared: lifecycle.on_prepared,
            ev.OrderAccepted: order_flow.on_accepted,
            ev.AlgoOrderAccepted: order_flow.on_algo_accepted,
            ev.OrderRejected: order_flow.on_rejected,
            ev.OrderOutcomeUnknown: order_flow.on_outcome_unknown,
            ev.OrderResolved: order_flow.on_resolved,
            ev.OrderUpdated: order_flow.on_order_update,
            ev.AlgoOrderUpdated: order_flow.on_algo_update,
            ev.CancelResult: order_flow.on_cancel_result,
            ev.PositionChanged: lifecycle.on_position,
            ev.BalanceChanged: account.on_balance,
            ev.FundingFee: account.on_funding,
            ev.PositionModeChanged: account.on_position_mode,
            ev.ExchangeSnapshot: recovery.on_snapshot,
            ev.RecoveryStarted: recovery.on_recovery_started,
            ev.VenueErrorObserved: protection.on_venue_error,
            ev.VenueCallSucceeded: protection.on_venue_ok,
            ev.SettingsChangeRequested: settings.on_settings,
            ev.PauseRequested: protection.on_pause,
            ev.FlattenStarted: flatten.on_flatten_started,
            ev.FlattenFinished: flatten.on_flatten_finished,
        }

    def blocked(self, action: str, symbol: str = "") -> str | None:
        """Query: which gate of ``action`` (a key of ``GATES``) holds now, or None."""
        return protection.gate(self, action, symbol)


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
    "recovery_protected",
    "recovery_generations",
    "closed_fills",
    "now_ms",
)


def protected_symbols(models: dict[str, SymbolModel]) -> tuple[str, ...]:
    """The symbols a risk message in profit protected (R06): a restart keeps them protected even
    when their breakeven stop is not on the venue (refused, expired)."""
    return tuple(sorted(s for s, m in models.items() if m.risk_protected and m.state != "IDLE"))


# A flatten a stop interrupted is the engine's to finish after the restart (D-63).
INTERRUPTED_FLATTEN: Final = "flatten interrupted by a stop"
INTERRUPTED: Final = {rules.OPERATOR_FLATTEN: INTERRUPTED_FLATTEN, flatten.FLATTENED: INTERRUPTED_FLATTEN}


def recovery_facts(
    models: dict[str, SymbolModel],
) -> tuple[tuple[tuple[str, str], ...], tuple[tuple[str, Decimal], ...]]:
    """What a restart must not forget from a saved engine's symbols: the market closes and the entry
    cancels (R02, the stale lock) it had decided (``RecoveryStarted.closing``) and the positions it
    held (``RecoveryStarted.held``)."""
    closing = sorted(
        (s, INTERRUPTED.get(m.close_reason, m.close_reason) or "close")
        for s, m in models.items()
        if m.closing
        and (
            m.close_attempts > 0
            or m.close_retry_at_ms > 0
            or m.close_deferred
            or m.state == "ENTRY_ORDER"
            or m.close_reason in INTERRUPTED  # the operator's flatten had begun (D-63)
        )
    )
    held = sorted((s, m.position()) for s, m in models.items() if m.state != "IDLE")
    return tuple(closing), tuple(held)


def encode_strategy(strategy: Strategy) -> dict[str, Any]:
    return {name: encode(getattr(strategy, name)) for name in strategy.__dataclass_fields__}


def decode_strategy(data: dict[str, Any]) -> Strategy:
    return Strategy(**{k: decode(v) for k, v in data.items()})


def clone(engine: Engine) -> Engine:
    """An independent copy (tests, what-if evaluation)."""
    return Engine.restore(copy.deepcopy(engine.snapshot()))


__all__ = ["ACTIVE_STATES", "INTERRUPTED_FLATTEN", "Engine", "clone"]
