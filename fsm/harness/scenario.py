"""Scenario files: a timeline of events on a simulated clock and the exact outcomes expected.

A scenario (YAML, format in ``specs/README.md``) is run against the real ``Engine`` with a small
in-process venue double that answers the engine's commands the way Binance would (accepts orders,
fills market orders at the mark, cancels, snapshots) unless a step scripts something else
(rejections, partial fills, cancel failures, stops triggering, restarts). Each step's expectations
are checked against what the engine decided in that step: transitions, order commands (type,
side, price, quantity, flags, client id), states, locks, positions, logs and alerts.

The runner is deterministic: the same file gives the same trace, byte for byte.
"""

from __future__ import annotations

import copy
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import yaml

from fsm import commands as cmd
from fsm import events as ev
from fsm.engine import Engine, protected_symbols, recovery_facts
from fsm.journal import render
from fsm.strategy import Strategy
from fsm.table import DETAIL_REGIONS, SYMBOL_REGIONS
from telegram_ingest.grammar import parse_message

SCENARIO_DIR = Path(__file__).resolve().parents[2] / "specs" / "scenarios"
T0_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z: the simulated clock's origin

LEADING_TEMPLATE = (
    "🔥 실시간 주도 마켓 분석 ({ticker})\n\n"
    "📈 주도 마켓: 바이낸스\n\n"
    "⏱️Binance 펀딩비 및 카운트다운 : {funding}% / 01:23:45 (4h)\n\n"
    "🥇지난 24H 등락률 및 순위 : {change}% / ({direction}) 상위 {rank}위\n\n"
    "🏷️카테고리 : {category}\n\n"
    "🔗Liq HeatMap : 히트맵 링크"
)
RISK_TEMPLATE = "🥈 Binance : {symbol}.P 에서 숏 리스크관리 권장"
ENTRY_TEMPLATE = "💥 Binance : {symbol}.P 에서 숏 진입 신호 발생!"

ORDER_TYPES: dict[type[cmd.Command], str] = {
    cmd.PlaceOrder: "place",
    cmd.PlaceAlgoOrder: "algo",
    cmd.CancelOrder: "cancel",
    cmd.CancelAlgoOrder: "cancel_algo",
    cmd.PrepareOrder: "prepare",
}


# Step keys that script the venue's next answers (each a ``Rule``; ``reject_next`` is a "reject").
RULE_KEYS = (
    "reject_next",
    "prepare_fail",
    "cancel_fail",
    "no_answer",
    "unknown",
    "resolve_fail",
    "cancel_race",
    "auth_probe_fail",
)


class ScenarioError(ValueError):
    """The scenario file itself is malformed."""


# ---------------------------------------------------------------------------------------------
# The venue double
# ---------------------------------------------------------------------------------------------


@dataclass
class VenueOrder:
    symbol: str
    cid: str
    leg: str
    side: str
    kind: str
    price: Decimal
    qty: Decimal
    order_id: int
    reduce_only: bool = False
    close_position: bool = False
    filled: Decimal = Decimal(0)
    cost: Decimal = Decimal(0)
    status: str = "NEW"
    algo: bool = False

    @property
    def average(self) -> Decimal:
        return self.cost / self.filled if self.filled else Decimal(0)


@dataclass
class Rule:
    """A scripted answer for the next matching command(s)."""

    kind: str  # reject | prepare_fail | cancel_fail | no_answer | unknown | resolve_fail
    leg: str | None
    times: int
    params: dict[str, Any]


@dataclass
class Venue:
    position_mode: str = "ONE_WAY"
    wallet: Decimal = Decimal("1000")
    available: Decimal = Decimal("1000")
    symbols: dict[str, ev.SymbolInfo] = field(default_factory=dict)
    klines: dict[str, tuple[ev.Candle, ...]] = field(default_factory=dict)
    exchange_info_ok: bool = True
    orders: dict[str, VenueOrder] = field(default_factory=dict)
    positions: dict[str, tuple[Decimal, Decimal]] = field(default_factory=dict)  # symbol -> (amount, entry)
    marks: dict[str, Decimal] = field(default_factory=dict)
    rules: list[Rule] = field(default_factory=list)
    next_id: int = 1000

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id

    def take_rule(self, kind: str, leg: str | None) -> Rule | None:
        for rule in self.rules:
            if rule.kind == kind and (rule.leg is None or rule.leg == leg) and rule.times > 0:
                rule.times -= 1
                return rule
        return None

    def apply_fill(self, order: VenueOrder, qty: Decimal, price: Decimal) -> None:
        amount, entry = self.positions.get(order.symbol, (Decimal(0), Decimal(0)))
        if order.side == "SELL":  # a short grows
            new_amount = amount - qty
            entry = (entry * -amount + price * qty) / -new_amount if new_amount else Decimal(0)
        else:
            new_amount = amount + qty
            if new_amount >= 0:
                new_amount, entry = Decimal(0), Decimal(0)
        self.positions[order.symbol] = (new_amount, entry)


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------


@dataclass
class StepResult:
    at_ms: int
    label: str
    trace: list[str]
    failures: list[str]


@dataclass
class ScenarioResult:
    scenario_id: str
    title: str
    spec: list[str]
    steps: list[StepResult]
    log: list[str]  # every command of the run, rendered: the replay-determinism fingerprint
    final: dict[str, Any] = field(default_factory=dict)  # the engine's snapshot() after the last step

    @property
    def passed(self) -> bool:
        return all(not s.failures for s in self.steps)

    @property
    def failures(self) -> list[str]:
        return [f"step {i} ({s.label}): {f}" for i, s in enumerate(self.steps) for f in s.failures]


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


def transition_line(c: cmd.Transitioned) -> str:
    return f"{cmd.who_moved(c.machine, c.symbol)} {c.source}->{c.dest}"


# ---------------------------------------------------------------------------------------------
# The runner
# ---------------------------------------------------------------------------------------------


def _dec(value: Any) -> Decimal:
    return Decimal(str(value))


def _symbol_info(symbol: str, spec: dict[str, Any]) -> ev.SymbolInfo:
    return ev.SymbolInfo(
        symbol=symbol,
        status=str(spec.get("status", "TRADING")),
        tick_size=_dec(spec.get("tick", "0.01")),
        step_size=_dec(spec.get("step", "0.001")),
        min_qty=_dec(spec.get("min_qty", "0.001")),
        max_qty=_dec(spec.get("max_qty", "0")),
        market_step_size=_dec(spec["market_step"]) if "market_step" in spec else None,
        market_min_qty=_dec(spec["market_min_qty"]) if "market_min_qty" in spec else None,
        market_max_qty=_dec(spec["market_max_qty"]) if "market_max_qty" in spec else None,
        min_notional=_dec(spec.get("min_notional", "5")),
    )


def _klines(spec: Any) -> tuple[ev.Candle, ...]:
    """Either explicit rows [open_offset_s, open, high, low, close] or a flat generator."""
    candles: list[ev.Candle] = []
    if isinstance(spec, dict):
        count = int(spec.get("count", 5))
        last_open = T0_MS + int(float(spec.get("last_open_s", -180)) * 1000)
        for i in range(count):
            open_ms = last_open - (count - 1 - i) * 180_000
            candles.append(
                ev.Candle(
                    open_time_ms=open_ms,
                    close_time_ms=open_ms + 179_999,
                    open=_dec(spec.get("open", spec["close"])),
                    high=_dec(spec["high"]),
                    low=_dec(spec["low"]),
                    close=_dec(spec["close"]),
                )
            )
    else:
        for row in spec:
            open_ms = T0_MS + int(float(row[0]) * 1000)
            candles.append(
                ev.Candle(
                    open_time_ms=open_ms,
                    close_time_ms=open_ms + 179_999,
                    open=_dec(row[1]),
                    high=_dec(row[2]),
                    low=_dec(row[3]),
                    close=_dec(row[4]),
                )
            )
    return tuple(candles)


class Runner:
    """Runs one scenario document."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        overrides = {k: str(v) for k, v in (doc.get("config") or {}).items()}
        self.strategy = Strategy().with_changes(overrides)
        venue_spec = doc.get("venue") or {}
        self.venue = Venue(
            position_mode=str(venue_spec.get("position_mode", "ONE_WAY")),
            wallet=_dec(venue_spec.get("wallet", "1000")),
            available=_dec(venue_spec.get("available", venue_spec.get("wallet", "1000"))),
        )
        symbols = venue_spec.get("symbols") or {"BTCUSDT": {}}
        for symbol, spec in symbols.items():
            self.venue.symbols[symbol] = _symbol_info(symbol, spec or {})
        for symbol, spec in (venue_spec.get("klines") or {}).items():
            self.venue.klines[symbol] = _klines(spec)
        self.engine = Engine(self.strategy, recovering=bool(doc.get("start_recovering", False)))
        # (step index, snapshot): before that step the engine is replaced by Engine.restore(snapshot),
        # as a daemon upgraded between two events would do (the golden master's compatibility check).
        self.restore_at: tuple[int, dict[str, Any]] | None = None
        self.ws_alive = True
        self.log: list[str] = []
        self.now_ms = T0_MS

    # -- event construction -----------------------------------------------------------------

    def _message(self, chat_id: int, spec: dict[str, Any], text: str) -> ev.MessageReceived:
        parsed = parse_message(text)
        symbol = getattr(parsed, "symbol", None)
        info = self.venue.symbols.get(symbol) if symbol else None
        klines = None
        if isinstance(parsed, ev.LeadingMarket) and not spec.get("klines_unavailable"):
            klines = tuple(
                c for c in self.venue.klines.get(parsed.symbol, ()) if c.open_time_ms < self.now_ms
            )
        return ev.MessageReceived(
            now_ms=self.now_ms,
            chat_id=chat_id,
            message_id=int(spec["id"]),
            telegram_date_ms=self.now_ms - int(float(spec.get("age_s", 1)) * 1000),
            parsed=parsed,
            exchange_info_ok=self.venue.exchange_info_ok and not spec.get("exchange_info_down", False),
            symbol_info=info,
            klines=klines,
        )

    def _leading_text(self, spec: dict[str, Any]) -> str:
        if "text" in spec:
            return str(spec["text"])
        return LEADING_TEMPLATE.format(
            ticker=spec.get("ticker", "BTC"),
            funding=spec.get("funding", "-0.0250"),
            change=spec.get("change", "+12.34"),
            direction=spec.get("direction", "상승"),
            rank=spec.get("rank", 11),
            category=spec.get("category", "AI"),
        )

    def step_events(self, step: dict[str, Any]) -> Iterable[ev.Event]:
        s = self.strategy
        now = self.now_ms
        if "ws" in step:
            self.ws_alive = step["ws"] == "up"
            yield ev.WsStatusChanged(
                now_ms=now, connected=self.ws_alive, reason=str(step.get("ws_reason", ""))
            )
        if "restart" in step:
            yield from self._restart()
        if "settings" in step:
            changes = tuple((k, str(v)) for k, v in step["settings"].items())
            yield ev.SettingsChangeRequested(now_ms=now, changes=changes)
        if "pause" in step:
            yield ev.PauseRequested(now_ms=now, paused=bool(step["pause"]))
        if "exchange_info" in step:
            self.venue.exchange_info_ok = step["exchange_info"] == "up"
        if "leading" in step:
            spec = step["leading"]
            yield self._message(int(spec.get("chat", s.entry_chat_id)), spec, self._leading_text(spec))
        if "risk" in step:
            spec = step["risk"]
            text = str(spec.get("text") or RISK_TEMPLATE.format(symbol=spec.get("symbol", "BTCUSDT")))
            yield self._message(int(spec.get("chat", s.risk_chat_id)), spec, text)
        if "entry_signal" in step:
            spec = step["entry_signal"]
            text = str(spec.get("text") or ENTRY_TEMPLATE.format(symbol=spec.get("symbol", "BTCUSDT")))
            yield self._message(int(spec.get("chat", s.entry_chat_id)), spec, text)
        if "message" in step:
            spec = step["message"]
            chat = {"entry": s.entry_chat_id, "risk": s.risk_chat_id}.get(str(spec.get("chat")))
            yield self._message(int(chat if chat is not None else spec["chat"]), spec, str(spec["text"]))
        for key in RULE_KEYS:
            if key in step:
                spec = dict(step[key])
                kind = {"reject_next": "reject"}.get(key, key)
                leg = spec.pop("leg", None)
                self.venue.rules.append(Rule(kind, leg, int(spec.pop("times", 1)), spec))
        if "venue_position" in step:  # the venue's position changes and nobody is told (a lost push)
            for symbol, amount in step["venue_position"].items():
                prev = self.venue.positions.get(symbol, (Decimal(0), Decimal(0)))
                self.venue.positions[symbol] = (_dec(amount), prev[1] if _dec(amount) else Decimal(0))
        if "balance" in step:
            self.venue.wallet = _dec(step["balance"].get("wallet", self.venue.wallet))
            self.venue.available = _dec(step["balance"].get("available", self.venue.available))
        if "manual_order" in step:
            yield self._manual_order(step["manual_order"])
        if "fill" in step:
            yield from self._fill(step["fill"])
        if "venue_cancel" in step:
            yield from self._venue_cancel(step["venue_cancel"])
        if "algo_trigger" in step:
            yield from self._algo_trigger(step["algo_trigger"])
        if "position" in step:
            for symbol, amount in step["position"].items():
                prev = self.venue.positions.get(symbol, (Decimal(0), Decimal(0)))
                self.venue.positions[symbol] = (_dec(amount), prev[1])
                yield ev.PositionChanged(now_ms=now, symbol=symbol, amount=_dec(amount), entry_price=prev[1])
        if "venue_error" in step:
            spec = step["venue_error"]
            for _ in range(int(spec.get("times", 1))):
                yield ev.VenueErrorObserved(
                    now_ms=now, category=spec["category"], code=int(spec.get("code", 0))
                )
        if "venue_ok" in step:
            for _ in range(int(step["venue_ok"])):
                yield ev.VenueCallSucceeded(now_ms=now)
        if "rest_fail" in step:
            yield ev.RestPriceFailed(now_ms=now, reason=str(step["rest_fail"]))
        if "rest_mark" in step:
            for symbol, spec in step["rest_mark"].items():
                price = _dec(spec["price"] if isinstance(spec, dict) else spec)
                age = int(float(spec.get("age_s", 0)) * 1000) if isinstance(spec, dict) else 0
                self.venue.marks[symbol] = price
                yield ev.MarkPriceTick(
                    now_ms=now, symbol=symbol, price=price, event_time_ms=now - age, source="REST"
                )
        if "mark" in step:
            for symbol, price in step["mark"].items():
                self.venue.marks[symbol] = _dec(price)
                if self.ws_alive:
                    yield ev.MarkPriceTick(now_ms=now, symbol=symbol, price=_dec(price), event_time_ms=now)
        if step.get("tick", "mark" in step or "rest_mark" in step):
            if self.ws_alive and "mark" not in step:
                for symbol, price in sorted(self.venue.marks.items()):
                    yield ev.MarkPriceTick(now_ms=now, symbol=symbol, price=price, event_time_ms=now)
            yield ev.Tick(now_ms=now)

    def _restart(self) -> Iterable[ev.Event]:
        """A crash and restart: the engine is rebuilt from nothing but what storage keeps (N-28)."""
        old = self.engine
        self.engine = Engine(self.strategy, recovering=True)
        closing, held = recovery_facts(old.symbols)
        # What the store keeps: cursors, cooldowns, and the last snapshot's managed symbols.
        yield ev.RecoveryStarted(
            now_ms=self.now_ms,
            cursors=tuple(sorted(old.cursors.items())),
            cooldowns=tuple(sorted(old.cooldowns.items())),
            managed=tuple(
                sorted((s, m.message_id, m.state) for s, m in old.symbols.items() if m.state != "IDLE")
            ),
            generations=tuple(
                sorted((s, leg, g) for s, m in old.symbols.items() for leg, g in m.generations.items())
            ),
            closing=closing,
            held=held,
            protected=protected_symbols(old.symbols),
        )

    def _manual_order(self, spec: dict[str, Any]) -> ev.Event:
        order = VenueOrder(
            symbol=spec["symbol"],
            cid=str(spec.get("cid", "web_manual_1")),
            leg="MANUAL",
            side=str(spec.get("side", "SELL")),
            kind="LIMIT",
            price=_dec(spec.get("price", "1")),
            qty=_dec(spec.get("qty", "1")),
            order_id=self.venue.new_id(),
            reduce_only=bool(spec.get("reduce_only", False)),
        )
        status = str(spec.get("status", "NEW"))
        order.status = status
        self.venue.orders[order.cid] = order
        return self._update(order, status, Decimal(0), Decimal(0))

    def _find(self, spec: dict[str, Any]) -> VenueOrder:
        if "cid" in spec:
            return self.venue.orders[str(spec["cid"])]
        leg = str(spec["leg"])
        symbol = spec.get("symbol")
        found = [
            o for o in self.venue.orders.values() if o.leg == leg and (symbol is None or o.symbol == symbol)
        ]
        if not found:
            raise ScenarioError(f"no venue order for leg {leg}")
        return found[-1]

    def _update(
        self, order: VenueOrder, status: str, last_qty: Decimal, last_price: Decimal
    ) -> ev.OrderUpdated:
        return ev.OrderUpdated(
            now_ms=self.now_ms,
            symbol=order.symbol,
            client_order_id=order.cid,
            order_id=order.order_id,
            side=order.side,  # type: ignore[arg-type]
            order_type=order.kind,
            status=status,  # type: ignore[arg-type]
            price=order.price,
            orig_qty=order.qty,
            cum_qty=order.filled,
            last_qty=last_qty,
            last_price=last_price,
            avg_price=order.average,
            trade_id=self.venue.new_id() if last_qty else 0,
            reduce_only=order.reduce_only,
            close_position=order.close_position,
        )

    def _fill(self, spec: dict[str, Any]) -> Iterable[ev.Event]:
        order = self._find(spec)
        qty = _dec(spec["qty"]) if "qty" in spec else order.qty - order.filled
        price = _dec(
            spec.get("price", order.price if order.price > 0 else self.venue.marks.get(order.symbol, 0))
        )
        order.filled += qty
        order.cost += qty * price
        order.status = "FILLED" if order.filled >= order.qty else "PARTIALLY_FILLED"
        self.venue.apply_fill(order, qty, price)
        if spec.get("unseen"):  # the daemon is down (killed): nobody hears the pushes
            return
        update = self._update(order, order.status, qty, price)
        # The venue reports the order's average price: keep it exact over several fills.
        yield update
        if spec.get("duplicate"):
            yield update
        if spec.get("position_event", True):
            yield self._position_event(order.symbol)

    def _position_event(self, symbol: str) -> ev.PositionChanged:
        amount, entry = self.venue.positions.get(symbol, (Decimal(0), Decimal(0)))
        return ev.PositionChanged(now_ms=self.now_ms, symbol=symbol, amount=amount, entry_price=entry)

    def _venue_cancel(self, spec: dict[str, Any]) -> Iterable[ev.Event]:
        order = self._find(spec)
        order.status = str(spec.get("status", "CANCELED"))
        if spec.get("silent"):  # its push never reaches the engine (the daemon was down, the stream lost)
            return
        if order.algo:  # a conditional order's end is told on the ALGO_UPDATE stream
            yield ev.AlgoOrderUpdated(
                now_ms=self.now_ms,
                symbol=order.symbol,
                client_algo_id=order.cid,
                algo_id=order.order_id,
                status=order.status,  # type: ignore[arg-type]
            )
            return
        yield self._update(order, order.status, Decimal(0), Decimal(0))

    def _algo_trigger(self, spec: dict[str, Any]) -> Iterable[ev.Event]:
        stop = self._find(spec)
        amount, _ = self.venue.positions.get(stop.symbol, (Decimal(0), Decimal(0)))
        child = VenueOrder(
            symbol=stop.symbol,
            cid=f"autoclose-{stop.order_id}",
            leg="CHILD",
            side="BUY",
            kind="MARKET",
            price=Decimal(0),
            qty=-amount,
            order_id=self.venue.new_id(),
            reduce_only=True,
        )
        stop.status = "FINISHED"
        price = self.venue.marks.get(stop.symbol, stop.price)
        child.filled = child.qty
        child.cost = child.qty * price
        self.venue.apply_fill(child, child.qty, price)
        triggered = ev.AlgoOrderUpdated(
            now_ms=self.now_ms,
            symbol=stop.symbol,
            client_algo_id=stop.cid,
            algo_id=stop.order_id,
            status="TRIGGERED",
            actual_order_id=child.order_id,
        )
        fill = self._update(child, "FILLED", child.qty, price)
        if spec.get("fill_first"):  # the child's fill can arrive before ALGO_UPDATE names it
            yield fill
            yield triggered
        else:
            yield triggered
            yield fill
        yield self._position_event(stop.symbol)

    # -- the venue double answering commands ---------------------------------------------------

    def answer(self, command: cmd.Command) -> list[ev.Event]:
        now = self.now_ms
        venue = self.venue
        if isinstance(command, cmd.PrepareOrder):
            rule = venue.take_rule("prepare_fail", command.leg)
            if rule:
                mode = rule.params.get("position_mode", venue.position_mode)
                return [
                    ev.OrderPrepared(
                        now_ms=now,
                        symbol=command.symbol,
                        leg=command.leg,
                        ok=bool(rule.params.get("ok", False)),
                        position_mode=mode,
                        wallet_balance=venue.wallet,
                        available_balance=venue.available,
                        error_code=rule.params.get("code"),
                        reason=str(rule.params.get("reason", "")),
                    )
                ]
            return [
                ev.OrderPrepared(
                    now_ms=now,
                    symbol=command.symbol,
                    leg=command.leg,
                    ok=True,
                    position_mode=venue.position_mode,  # type: ignore[arg-type]
                    wallet_balance=venue.wallet,
                    available_balance=venue.available,
                )
            ]
        if isinstance(command, (cmd.PlaceOrder, cmd.PlaceAlgoOrder)):
            cid = command.client_order_id if isinstance(command, cmd.PlaceOrder) else command.client_algo_id
            if venue.take_rule("no_answer", command.leg):
                return []
            unknown = venue.take_rule("unknown", command.leg)
            if unknown is not None:
                # The answer is lost (a timeout, a 408): the venue holds the order only if it took it.
                answer = ev.OrderOutcomeUnknown(
                    now_ms=now,
                    symbol=command.symbol,
                    client_order_id=cid,
                    is_algo=isinstance(command, cmd.PlaceAlgoOrder),
                    resolve_after_ms=now + int(unknown.params.get("resolve_after_ms", 6000)),
                    reason="timeout",
                )
                if not unknown.params.get("accepted", True):
                    return [answer]
                taken = [e for e in self._accept(command, cid) if not isinstance(e, ev.OrderAccepted)]
                return [answer, *taken]
            rule = venue.take_rule("reject", command.leg)
            if rule:
                code = int(rule.params.get("code", -1001))
                # Like the executor: a "no position" refusal comes with the venue's position, read then.
                position = (
                    [self._position_event(command.symbol)] if rule.params.get("category") == "flat" else []
                )
                return [
                    *position,
                    ev.OrderRejected(
                        now_ms=now,
                        symbol=command.symbol,
                        client_order_id=cid,
                        code=code,
                        message=str(rule.params.get("message", "rejected")),
                        retryable=bool(rule.params.get("retryable", False)),
                        category=rule.params.get("category", "rejected"),
                        retry_after_ms=int(float(rule.params.get("retry_after_s", 0)) * 1000),
                    ),
                ]
            return self._accept(command, cid)
        if isinstance(command, cmd.ResolveOrder):
            return self._resolve(command)
        if isinstance(command, cmd.ProbeVenue):
            if venue.take_rule("auth_probe_fail", None):
                return [
                    ev.VenueErrorObserved(now_ms=now, category="auth", code=-2015, message="still refused")
                ]
            return [ev.VenueCallSucceeded(now_ms=now, signed=True)]
        if isinstance(command, (cmd.CancelOrder, cmd.CancelAlgoOrder)):
            return self._cancel_answer(command)
        if isinstance(command, cmd.QueryExchange):
            return [self._snapshot(command.purpose, command.symbol)]
        return []

    def _resolve(self, command: cmd.ResolveOrder) -> list[ev.Event]:
        """``GET /fapi/v1/order`` (or ``algoOrder``) by client id after an unknown outcome."""
        venue = self.venue
        known = venue.orders.get(command.client_order_id)

        def resolved(outcome: Literal["found", "absent", "failed"], **kw: Any) -> ev.OrderResolved:
            return ev.OrderResolved(
                now_ms=self.now_ms,
                symbol=command.symbol,
                client_order_id=command.client_order_id,
                is_algo=command.is_algo,
                outcome=outcome,
                **kw,
            )

        if venue.take_rule("resolve_fail", known.leg if known else None):
            return [resolved("failed", message="-1001 internal error")]
        if known is None:
            return [resolved("absent", message="-2013 Order does not exist.")]
        # Like the executor: the order's fills as the stream would have pushed them, then its status.
        fills = [self._update(known, known.status, Decimal(0), Decimal(0))] if known.filled > 0 else []
        return [*fills, resolved("found", order_id=known.order_id, status=known.status)]

    def _accept(self, command: cmd.PlaceOrder | cmd.PlaceAlgoOrder, cid: str) -> list[ev.Event]:
        """The venue takes the order (or, for a client id it already holds open, answers with it)."""
        now, venue = self.now_ms, self.venue
        if cid in venue.orders:  # same client id again: the venue knows it (-4116)
            existing = venue.orders[cid]
            return [
                ev.OrderAccepted(
                    now_ms=now, symbol=command.symbol, client_order_id=cid, order_id=existing.order_id
                )
            ]
        if isinstance(command, cmd.PlaceAlgoOrder):
            order = VenueOrder(
                symbol=command.symbol,
                cid=cid,
                leg=command.leg,
                side=command.side,
                kind="STOP_MARKET",
                price=command.trigger_price,
                qty=Decimal(0),
                order_id=venue.new_id(),
                close_position=True,
                algo=True,
            )
            venue.orders[cid] = order
            return [
                ev.AlgoOrderAccepted(
                    now_ms=now, symbol=command.symbol, client_algo_id=cid, algo_id=order.order_id
                )
            ]
        order = VenueOrder(
            symbol=command.symbol,
            cid=cid,
            leg=command.leg,
            side=command.side,
            kind=command.order_type,
            price=command.price or Decimal(0),
            qty=command.quantity,
            order_id=venue.new_id(),
            reduce_only=bool(command.reduce_only),
        )
        venue.orders[cid] = order
        out: list[ev.Event] = [
            ev.OrderAccepted(now_ms=now, symbol=command.symbol, client_order_id=cid, order_id=order.order_id)
        ]
        if command.order_type == "MARKET" and not self.doc.get("manual_market_fills"):
            out.extend(self._fill({"cid": cid, "price": str(venue.marks.get(command.symbol, order.price))}))
        return out

    def _cancel_answer(self, command: cmd.CancelOrder | cmd.CancelAlgoOrder) -> list[ev.Event]:
        now, venue = self.now_ms, self.venue
        cid = command.client_order_id if isinstance(command, cmd.CancelOrder) else command.client_algo_id
        is_algo = isinstance(command, cmd.CancelAlgoOrder)
        target = venue.orders.get(cid)
        leg = target.leg if target else None
        rule = venue.take_rule("cancel_fail", leg)
        if rule:
            return [
                ev.CancelResult(
                    now_ms=now,
                    symbol=command.symbol,
                    client_order_id=cid,
                    ok=False,
                    code=int(rule.params.get("code", -1001)),
                    message=str(rule.params.get("message", "internal error")),
                    is_algo=is_algo,
                )
            ]
        if target is None or target.status in ("FILLED", "CANCELED", "EXPIRED", "FINISHED"):
            return [
                ev.CancelResult(
                    now_ms=now,
                    symbol=command.symbol,
                    client_order_id=cid,
                    ok=False,
                    gone=True,
                    code=-2011,
                    is_algo=is_algo,
                )
            ]
        race = venue.take_rule("cancel_race", leg)
        if race is not None and not is_algo:
            # The order trades once more just before the cancel lands: the DELETE answer's
            # executedQty says so, the pushes of the trade come after the answer.
            qty, price = _dec(race.params["qty"]), target.price
            target.filled += qty
            target.cost += qty * price
            venue.apply_fill(target, qty, price)
            target.status = "CANCELED"
            return [
                ev.CancelResult(
                    now_ms=now,
                    symbol=command.symbol,
                    client_order_id=cid,
                    ok=True,
                    executed_qty=target.filled,
                ),
                self._update(target, "PARTIALLY_FILLED", qty, price),
                self._update(target, "CANCELED", Decimal(0), Decimal(0)),
                self._position_event(target.symbol),
            ]
        target.status = "CANCELED"
        answers: list[ev.Event] = [
            ev.CancelResult(now_ms=now, symbol=command.symbol, client_order_id=cid, ok=True, is_algo=is_algo)
        ]
        if not is_algo:  # like Binance, the user stream reports the cancel too
            answers.append(self._update(target, "CANCELED", Decimal(0), Decimal(0)))
        return answers

    def _snapshot(self, purpose: str, symbol: str | None = None) -> ev.ExchangeSnapshot:
        """The account, or one symbol of it when the query names one (as ``binance/executor.py``)."""
        venue = self.venue
        positions = tuple(
            ev.PositionInfo(symbol=s, amount=a, entry_price=e)
            for s, (a, e) in sorted(venue.positions.items())
            if a != 0 and symbol in (None, s)
        )
        open_orders = tuple(
            ev.OpenOrderInfo(
                symbol=o.symbol,
                client_order_id=o.cid,
                order_id=o.order_id,
                side=o.side,  # type: ignore[arg-type]
                order_type=o.kind,
                price=o.price,
                orig_qty=o.qty,
                executed_qty=o.filled,
                reduce_only=o.reduce_only,
                close_position=o.close_position,
                is_algo=o.algo,
                trigger_price=o.price if o.algo else Decimal(0),
            )
            for o in venue.orders.values()
            if o.status in ("NEW", "PARTIALLY_FILLED") and symbol in (None, o.symbol)
        )
        symbols = {p.symbol for p in positions} | {o.symbol for o in open_orders}
        return ev.ExchangeSnapshot(
            now_ms=self.now_ms,
            position_mode=venue.position_mode,  # type: ignore[arg-type]
            wallet_balance=venue.wallet,
            available_balance=venue.available,
            positions=positions,
            open_orders=open_orders,
            symbols=tuple(venue.symbols[s] for s in sorted(symbols) if s in venue.symbols),
            purpose=purpose,  # type: ignore[arg-type]
            symbol=symbol,
        )

    # -- driving ---------------------------------------------------------------------------------

    def feed(self, events: Iterable[ev.Event]) -> list[cmd.Command]:
        """Feed events and the venue's answers until nothing is left; return every command.

        In the daemon's order (``Daemon._consume``): the answers to an event's commands queue behind
        the answers already waiting (first in, first out), and all of them come before the next
        outside event."""
        outside = deque(events)
        front: deque[ev.Event] = deque()
        emitted: list[cmd.Command] = []
        guard = 0
        while front or outside:
            guard += 1
            if guard > 10_000:
                raise ScenarioError("runaway command/answer loop")
            event = front.popleft() if front else outside.popleft()
            commands = self.engine.handle(event)
            emitted.extend(commands)
            for command in commands:
                front.extend(self.answer(command))
        return emitted

    def run(self) -> ScenarioResult:
        steps = self.doc.get("steps") or []
        results: list[StepResult] = []
        for index, step in enumerate(steps):
            self.now_ms = T0_MS + int(float(step.get("at", 0)) * 1000)
            if self.restore_at is not None and self.restore_at[0] == index:
                self.engine = Engine.restore(self.restore_at[1])
            summary = _describe(step) or f"step {index}"
            label = f"{summary} -- {step['label']}" if step.get("label") else summary
            try:
                commands = self.feed(self.step_events(step))
            except (ScenarioError, KeyError, ValueError) as exc:
                results.append(StepResult(self.now_ms, label, [], [f"scenario error: {exc!r}"]))
                break
            rendered = [render(c) for c in commands if not isinstance(c, cmd.Log)]
            self.log.extend(rendered)
            trace = [transition_line(c) for c in commands if isinstance(c, cmd.Transitioned)]
            trace += [render(c) for c in commands if type(c) in ORDER_TYPES]
            failures = self.check(step.get("expect") or {}, commands)
            results.append(StepResult(self.now_ms, label, trace, failures))
        spec = [str(s) for s in self.doc.get("spec") or []]
        return ScenarioResult(
            str(self.doc.get("id", "?")),
            str(self.doc.get("title", "")),
            spec,
            results,
            self.log,
            self.engine.snapshot(),
        )

    # -- expectations ----------------------------------------------------------------------------

    def check(self, expect: dict[str, Any], commands: list[cmd.Command]) -> list[str]:
        failures: list[str] = []
        engine = self.engine
        if "transitions" in expect:  # phases and global locks; the machines beside a phase have theirs
            got = [
                transition_line(c)
                for c in commands
                if isinstance(c, cmd.Transitioned) and c.machine not in SYMBOL_REGIONS
            ]
            want = [str(t) for t in expect["transitions"]]
            if got != want:
                failures.append(f"transitions: expected {want}, got {got}")
        if "close" in expect:
            got = [
                transition_line(c)
                for c in commands
                if isinstance(c, cmd.Transitioned) and c.machine == "close"
            ]
            want = [str(t) for t in expect["close"]]
            if got != want:
                failures.append(f"close: expected {want}, got {got}")
        if "triggers" in expect:  # the price triggers, the setups, R06 and the stuck cancels
            got = [
                transition_line(c)
                for c in commands
                if isinstance(c, cmd.Transitioned) and c.machine in DETAIL_REGIONS
            ]
            want = [str(t) for t in expect["triggers"]]
            if got != want:
                failures.append(f"triggers: expected {want}, got {got}")
        if "orders" in expect:
            got_orders = [c for c in commands if type(c) in ORDER_TYPES]
            want_orders = expect["orders"] or []
            if len(got_orders) != len(want_orders):
                failures.append(
                    f"orders: expected {len(want_orders)}, got {len(got_orders)}: "
                    f"{[render(c) for c in got_orders]}"
                )
            else:
                for want_o, got_o in zip(want_orders, got_orders, strict=True):
                    failures.extend(_match_command(want_o, got_o))
        if "commands" in expect:
            others = list(commands)
            for want_c in expect["commands"]:
                matched = next((c for c in others if not _match_command(want_c, c, typed=True)), None)
                if matched is None:
                    failures.append(f"commands: nothing matches {want_c}")
                else:
                    others.remove(matched)
        for kind in expect.get("absent", []):
            if any(type(c).__name__ == kind for c in commands):
                failures.append(f"absent: {kind} was emitted")
        if "states" in expect:
            for symbol, state in expect["states"].items():
                if engine.state_of(symbol) != state:
                    failures.append(f"state of {symbol}: expected {state}, got {engine.state_of(symbol)}")
        if "close_states" in expect:
            for symbol, state in expect["close_states"].items():
                if engine.close_state_of(symbol) != state:
                    got_state = engine.close_state_of(symbol)
                    failures.append(f"close state of {symbol}: expected {state}, got {got_state}")
        if "armed" in expect:  # symbol -> the price triggers armed after the step, e.g. [tp, add]
            for symbol, names in expect["armed"].items():
                model = engine.symbols.get(symbol)
                armed = [n for n in ("tp", "add", "be") if model is not None and getattr(model, f"{n}_armed")]
                if armed != list(names or []):
                    failures.append(f"armed of {symbol}: expected {list(names or [])}, got {armed}")
        if "locks" in expect:
            for name, state in expect["locks"].items():
                if engine.lock_state(name) != state:
                    failures.append(f"lock {name}: expected {state}, got {engine.lock_state(name)}")
        if "position" in expect:
            for symbol, qty in expect["position"].items():
                model = engine.symbols.get(symbol)
                got_qty = model.position() if model else Decimal(0)
                if got_qty != _dec(qty):
                    failures.append(f"position of {symbol}: expected {qty}, got {got_qty}")
        if "logs" in expect:
            reasons = [(c.kind, c.reason) for c in commands if isinstance(c, cmd.Log)]
            for want_log in expect["logs"]:
                kind, _, reason = str(want_log).partition(":")
                if not any(k == kind and (not reason or r == reason) for k, r in reasons):
                    failures.append(f"logs: no {want_log} in {reasons}")
        if "notify" in expect:
            kinds = [c.kind for c in commands if isinstance(c, cmd.Notify)]
            for kind in expect["notify"]:
                if kind not in kinds:
                    failures.append(f"notify: no {kind} in {kinds}")
        if "cooldown" in expect:
            for symbol, present in expect["cooldown"].items():
                if (symbol in engine.cooldowns) != bool(present):
                    failures.append(f"cooldown of {symbol}: expected {'set' if present else 'absent'}")
        if "cursor" in expect:
            for chat, message_id in expect["cursor"].items():
                chat_id = {"entry": self.strategy.entry_chat_id, "risk": self.strategy.risk_chat_id}.get(
                    chat, chat
                )
                if engine.cursors.get(int(chat_id), 0) != int(message_id):
                    failures.append(
                        f"cursor of {chat}: expected {message_id}, got {engine.cursors.get(int(chat_id))}"
                    )
        if "price_source" in expect and engine.price_source != expect["price_source"]:
            failures.append(f"price source: expected {expect['price_source']}, got {engine.price_source}")
        if "strategy" in expect:
            for key, value in expect["strategy"].items():
                if str(getattr(engine.strategy, key)) != str(value):
                    failures.append(f"strategy {key}: expected {value}, got {getattr(engine.strategy, key)}")
        return failures


_COMMAND_NAMES = {name: cls for cls, name in ORDER_TYPES.items()}


def _match_command(want: dict[str, Any], got: cmd.Command, *, typed: bool = False) -> list[str]:
    want = dict(want)
    kind = want.pop("type", None)
    if kind is not None:
        expected_cls = _COMMAND_NAMES.get(kind) or getattr(cmd, str(kind), None)
        if expected_cls is None or type(got) is not expected_cls:
            return [f"expected a {kind}, got {render(got)}"]
    elif typed:
        return ["typed match needs a type"]
    problems = []
    for key, value in want.items():
        if not hasattr(got, key):
            problems.append(f"{render(got)} has no field {key}")
            continue
        actual = getattr(got, key)
        if isinstance(actual, Decimal) and value is not None:
            ok = actual == _dec(value)
        elif isinstance(actual, tuple):
            ok = _plain(actual) == _plain(value)
        else:
            ok = actual == value
        if not ok:
            problems.append(f"{render(got)}: {key} expected {value!r}")
    return problems


def _plain(value: Any) -> Any:
    """Tuples as lists and scalars as text, recursively: YAML has no tuples."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return str(value)


def _describe(step: dict[str, Any]) -> str:
    """A short human summary of what happens in a step."""
    parts: list[str] = []
    for key, value in step.items():
        if key in ("at", "expect", "label"):
            continue
        if key == "leading" and isinstance(value, dict):
            parts.append(f"leading message #{value.get('id')} ({value.get('ticker', 'BTC')})")
        elif key in ("risk", "entry_signal") and isinstance(value, dict):
            parts.append(
                f"{key.replace('_', ' ')} #{value.get('id')} {value.get('symbol', value.get('text', ''))}"
            )
        elif key in ("mark", "rest_mark") and isinstance(value, dict):
            prices = ", ".join(f"{k}={v['price'] if isinstance(v, dict) else v}" for k, v in value.items())
            parts.append(f"{'REST ' if key == 'rest_mark' else ''}mark {prices}")
        elif key == "fill" and isinstance(value, dict):
            qty = value.get("qty", "rest")
            parts.append(
                f"venue fills {value.get('leg', value.get('cid'))} {qty}"
                + (f" @ {value['price']}" if "price" in value else "")
            )
        elif key == "tick":
            if value and "mark" not in step and "rest_mark" not in step:
                parts.append("1 s evaluation")
        elif isinstance(value, dict):
            parts.append(f"{key} " + " ".join(f"{k}={v}" for k, v in value.items()))
        else:
            parts.append(f"{key}={value}")
    return "; ".join(parts)


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def load_scenarios(directory: Path = SCENARIO_DIR) -> dict[str, dict[str, Any]]:
    """Every scenario document under ``directory`` by id (a file may hold several documents)."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(directory.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if not doc:
                continue
            if "id" not in doc:
                raise ScenarioError(f"{path}: a scenario without an id")
            if doc["id"] in found:
                raise ScenarioError(f"{path}: duplicate scenario id {doc['id']}")
            doc["_file"] = str(path)
            found[str(doc["id"])] = doc
    return found


def run_scenario(doc: dict[str, Any]) -> ScenarioResult:
    return Runner(copy.deepcopy(doc)).run()
