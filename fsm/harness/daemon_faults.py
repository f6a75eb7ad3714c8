"""The fault matrix end to end: the real daemon against the simulated venue, faults injected by the venue.

Theory of operation
-------------------
Each cell runs one scenario (a Telegram feed plus a ``PricePath`` of the simulated venue) through a
real ``Daemon`` on loopback against ``SimHarness`` on a compressed clock, with one fault the venue
can inject (``binance.sim``: ``RestFaults``, ``drop_ws``/``silence_ws``, ``UserFaults``, held and
released user events, a frozen ``premiumIndex``, listenKey expiry) or the real venue's answers
(binance-real-answers.md: 408 -1007 after acceptance, -4130 and -4509 provoked by a closePosition stop
or a close from the app, the algo lifecycle variants, 429s then the rate-limit model's growing 418
ban). A fault fires at a meaningful moment, chosen by a trigger watched from the daemon's observer:
when a command goes out (e.g. the entry's ``PlaceOrder``: the fault is queued before the request
leaves), when a symbol enters a state or the engine saw a mark (plus a delay in venue time), or at a
venue time. A fault step is ``optional`` when some scenarios lack its moment (no stop to trigger in
W55). Scenario actions (the stale-lock scenario freezing the prices) use the same triggers. Every
error answer of the venue and every order / algo update it emits are recorded: a test can prove
that a fault really bit.

After the run, the invariants are checked on what the VENUE saw and ended with, and on the daemon's
decisions (every handled event with its commands, and the locks just before it):

- every order request that reached the venue with a client id carries the same parameters as the
  first one with that id (identical retries, -4116 / query resolution), and the venue holds at most
  one order per client id and at most one entry order per (signal, leg);
- no PlaceOrder / PlaceAlgoOrder is emitted twice except as the identical order with ``attempt + 1``;
- no entry is committed or placed while a lock forbids it (``faults.check_lock_gates``);
- no closing order asks for more than the venue's position when it reaches the venue (unless the
  position shrank under an order sized on the engine's latest position news and the venue refused it);
- nothing reaches the venue during a 418 ban once its first 418 was answered (requests in flight get
  ``BAN_GRACE_MS``);
- no exit order stays open on a flat position (sampled during the run: longer than a grace period,
  and at the end), no order of ours stays open for a symbol the engine holds IDLE at the end;
- the engine and the daemon never failed internally;
- the final state (engine states and locks, venue positions and our open orders) equals the
  fault-free run, or is safely locked, or is flat where the fault's specified reaction is to flatten.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from binance.sim.exchange import AlgoLifecycle, FillPolicy
from binance.sim.server import RateLimitModel, RestFault
from binance.streams import Backoff
from fsm import commands as cmd
from fsm import events as ev
from fsm import rules
from fsm.harness import faults
from fsm.harness.sim_harness import SimHarness
from fsm.runtime.config import AppConfig, StorageConfig
from fsm.runtime.daemon import Daemon, RunClock
from fsm.runtime.feeds import PricePath
from fsm.runtime.logs import DecisionLog
from fsm.runtime.store import Store
from fsm.table import DETAIL_REGIONS
from telegram_ingest.replay import FeedItem

log = logging.getLogger(__name__)

ENTRY_CHAT = -1002171239233
RISK_CHAT = -1003096527269
SYMBOL = "ETHUSDT"
DEFAULT_SPEED = 25.0  # venue ms per wall ms; at 40 a 375 ms stall of a loaded CI host was a 15 s outage
SETTLE_MS = 8_000  # after the last fault action: the position sync and re-query timers get their turn
MAX_EXTRA_MS = 40_000
ORPHAN_GRACE_MS = 4_000
POLL_S = 0.004
# The cell's loop reads the clock every POLL_S; a longer gap between two readings is the host
# stalling the process, and only this much of it is venue time (``RunClock.max_gap_s``).
MAX_GAP_S = 0.05
BAN_GRACE_MS = 1_000  # requests already in flight when a ban's first 418 went out (40 ms of wall time)
ORDER_ROUTES = (("POST", "/fapi/v1/order"), ("POST", "/fapi/v1/algoOrder"))
NOT_PARAMS = frozenset({"timestamp", "signature", "recvWindow"})
ENTRY_LEGS = frozenset({"ENTRY1", "ENTRY2"})
LEADING = (
    "🔥 실시간 주도 마켓 분석 ({ticker})\n\n📈 주도 마켓: 바이낸스\n\n"
    "⏱️Binance 펀딩비 및 카운트다운 : -0.0100% / 01:23:45 (4h)\n\n"
    "🥇지난 24H 등락률 및 순위 : +8.50% / (상승) 상위 15위\n\n🏷️카테고리 : AI\n\n🔗Liq HeatMap : 히트맵 링크"
)
RISK = "🥈 Binance : {symbol}.P 에서 숏 리스크관리 권장"


# =============================================================================================
# Triggers and actions
# =============================================================================================


@dataclass(frozen=True, slots=True, kw_only=True)
class Trigger:
    """When an action fires: at venue time ``at_ms`` after the origin, ``delay_ms`` after the first
    command of ``command`` type (and ``leg`` / exit legs) went out, or after ``symbol_state`` was entered."""

    at_ms: int | None = None
    command: type[cmd.Command] | None = None
    legs: frozenset[str] | None = None
    symbol_state: str | None = None
    mark_seen: str | None = None  # the engine handled a mark of SYMBOL at this price
    delay_ms: int = 0

    def describe(self) -> str:
        if self.at_ms is not None:
            return f"at {self.at_ms / 1000:g} s"
        if self.command is not None:
            legs = f" {'/'.join(sorted(self.legs))}" if self.legs else ""
            what = f"the first {self.command.__name__}{legs}"
        elif self.mark_seen is not None:
            what = f"the engine seeing {SYMBOL} at {self.mark_seen}"
        else:
            what = f"{SYMBOL} entering {self.symbol_state}"
        return what + (f" + {self.delay_ms / 1000:g} s" if self.delay_ms else "")


Action = Callable[["CellContext", "cmd.Command | None"], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class Step:
    trigger: Trigger
    action: Action
    label: str
    optional: bool = False  # a fault step whose moment a scenario may not have (e.g. no stop placed)


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    """A story: the venue's starting marks (``path``) and steps that post the Telegram messages and
    move the marks; ``expect`` is the fault-free run's transitions after recovery."""

    name: str
    title: str
    specs: tuple[str, ...]
    path: PricePath
    steps: tuple[Step, ...]
    end_ms: int  # the run lasts at least this long (venue time after the start)
    expect: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class DaemonFault:
    name: str
    title: str
    steps: tuple[Step, ...]
    flat_ok: str | None = None
    # Flat instead of the reference final state is accepted only with one of these in the run's
    # transitions or venue orders (regular expressions searched): proof that the specified reaction
    # happened.
    flat_evidence: tuple[str, ...] = ()


# =============================================================================================
# The five scenarios
# =============================================================================================


def _leading(message_id: int = 1001) -> FeedItem:
    return FeedItem(at_ms=0, chat_id=ENTRY_CHAT, message_id=message_id, text=LEADING.format(ticker="ETH"))


def _risk(message_id: int = 5001) -> FeedItem:
    return FeedItem(at_ms=0, chat_id=RISK_CHAT, message_id=message_id, text=RISK.format(symbol=SYMBOL))


BASE = {SYMBOL: Decimal("3500.00")}
ENTRY1 = "sf1001-E11-ETHUSDT"
PARTIAL: dict[str, FillPolicy] = {ENTRY1: (Decimal("0.700"),)}


def _mark(price: str) -> Action:
    def act(ctx: CellContext, _: cmd.Command | None) -> None:
        ctx.harness.exchange.set_mark(SYMBOL, Decimal(price))

    return act


def _post(item: FeedItem) -> Action:
    def act(ctx: CellContext, _: cmd.Command | None) -> None:
        ctx.source.post(replace(item, at_ms=ctx.clock.now_ms() - ctx.origin))

    return act


def _freeze_prices(ctx: CellContext, _: cmd.Command | None) -> None:
    """The market stream goes silent and premiumIndex answers a frozen (ageing) price."""
    ctx.silence_market(True)
    ctx.frozen += 1
    for symbol in ctx.harness.exchange.symbols:
        if symbol not in ctx.harness.exchange.stale_premium:
            ctx.harness.exchange.make_premium_stale(symbol)


def _thaw_prices(ctx: CellContext, _: cmd.Command | None) -> None:
    ctx.frozen -= 1
    if ctx.frozen == 0:
        ctx.harness.exchange.stale_premium.clear()
    ctx.silence_market(False)


def _at(state: str, seconds: float, action: Action, label: str) -> Step:
    return Step(trigger=Trigger(symbol_state=state, delay_ms=int(seconds * 1000)), action=action, label=label)


def _after(command: type[cmd.Command], leg: str, seconds: float, action: Action, label: str) -> Step:
    trigger = Trigger(command=command, legs=frozenset({leg}), delay_ms=int(seconds * 1000))
    return Step(trigger=trigger, action=action, label=label)


_OPEN = (
    "ETHUSDT IDLE->MONITORING",
    "ETHUSDT MONITORING->ENTRY_ORDER",
    "entry_lock GLOBAL_IDLE->GLOBAL_LOCKED",
)
_FLAT = ("ETHUSDT EXITING->IDLE", "entry_lock GLOBAL_LOCKED->GLOBAL_IDLE")
_CLOSING = "ETHUSDT close OPEN->CLOSING"  # the close machine: a close decided, or an exit filled it all
# ETHUSDT: target 3535.00 (the 3m high, 1.01 x 3500), entry trigger 3531.465, 50 % of 10000 USDT
# = 1.414; TP 3358.25 (5 %) placed at Ttp 3361.61; scale-in target 4065.25 (+15 %), trigger 4061.18.
# The leading message goes out 1 s after the start; every later mark (and the risk message) is
# anchored to the engine's progress (a state entered, an order sent) so a fault's delay shifts the
# story instead of breaking it; the fills that matter are re-applied a few seconds later.
_MONITOR = Step(trigger=Trigger(at_ms=1_000), action=_post(_leading()), label="leading message")
_TRIGGER = _at("MONITORING", 1.5, _mark("3532.00"), "mark 3532 (entry trigger)")
# The fill marks are the entry's own price: an entry that reaches the venue late (a loaded machine)
# crosses and fills at the book, which is then the same price, so the exits' prices do not move.
_FILL = (
    _at("ENTRY_ORDER", 2, _mark("3535.00"), "mark 3535 (entry fills)"),
    _at("ENTRY_ORDER", 4, _mark("3535.00"), "mark 3535 again"),
)
_PARTIAL_FILL = _at("ENTRY_ORDER", 2, _mark("3535.00"), "mark 3535 (0.700 of the entry fills)")
SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        name="W55",
        title="entry, TP exit, flat",
        specs=("W55",),
        path=PricePath(base=BASE),
        steps=(
            _MONITOR,
            _TRIGGER,
            *_FILL,
            _at("PHASE1", 2, _mark("3360.00"), "mark 3360 (TP trigger)"),
            _after(cmd.PlaceOrder, "TP", 2, _mark("3358.00"), "mark 3358 (TP fills)"),
            _after(cmd.PlaceOrder, "TP", 5, _mark("3358.00"), "mark 3358 again"),
        ),
        end_ms=20_000,
        expect=(*_OPEN, "ETHUSDT ENTRY_ORDER->PHASE1", "ETHUSDT PHASE1->EXITING", _CLOSING, *_FLAT),
    ),
    Scenario(
        name="W56",
        title="entry, second entry, PHASE2, breakeven exit, MDD stop cancelled",
        specs=("W56",),
        path=PricePath(base=BASE),
        steps=(
            _MONITOR,
            _TRIGGER,
            *_FILL,
            # Above the scale-in level with room to spare: a scale-in that crosses fills at the book.
            _at("PHASE1", 2, _mark("4072.00"), "mark 4072 (scale-in trigger)"),
            _after(cmd.PlaceOrder, "ENTRY2", 2, _mark("4072.00"), "mark 4072 (scale-in fills)"),
            _after(cmd.PlaceOrder, "ENTRY2", 4, _mark("4072.00"), "mark 4072 again"),
            _at("PHASE2", 2, _mark("3900.00"), "mark 3900 (breakeven limit)"),
            _after(cmd.PlaceOrder, "BE", 2, _mark("3700.00"), "mark 3700 (breakeven fills)"),
            _after(cmd.PlaceOrder, "BE", 5, _mark("3700.00"), "mark 3700 again"),
        ),
        end_ms=26_000,
        expect=(
            *_OPEN,
            "ETHUSDT ENTRY_ORDER->PHASE1",
            "ETHUSDT PHASE1->PHASE2",
            "ETHUSDT PHASE2->EXITING",
            _CLOSING,
            *_FLAT,
        ),
    ),
    Scenario(
        name="W57",
        title="risk message during a partial entry fill with a loss: close at market",
        specs=("W57",),
        path=PricePath(base=BASE, fill_policies=PARTIAL),
        steps=(
            _MONITOR,
            _TRIGGER,
            _PARTIAL_FILL,
            _at("ENTRY_ORDER", 3.5, _post(_risk()), "risk message (loss)"),
        ),
        end_ms=12_000,
        expect=(*_OPEN, _CLOSING, "ETHUSDT ENTRY_ORDER->EXITING", *_FLAT),
    ),
    Scenario(
        name="stale-lock",
        title="stale prices with a position: the safety lock closes it (W23-1)",
        specs=("W23-1", "G03"),
        path=PricePath(base=BASE),
        steps=(
            _MONITOR,
            _TRIGGER,
            *_FILL,
            _at("PHASE1", 2, _freeze_prices, "prices frozen"),
            _at("PHASE1", 27, _thaw_prices, "prices back"),
        ),
        end_ms=38_000,
        expect=(
            *_OPEN,
            "ETHUSDT ENTRY_ORDER->PHASE1",
            "safety_lock PRICE_OK->PRICE_STALE",
            _CLOSING,
            "ETHUSDT PHASE1->EXITING",
            *_FLAT,
            "safety_lock PRICE_STALE->PRICE_OK",
        ),
    ),
    Scenario(
        name="risk-profit",
        title="risk message during a partial entry fill with a profit: breakeven stop and TP (W38)",
        specs=("W38",),
        path=PricePath(base=BASE, fill_policies=PARTIAL),
        steps=(
            _MONITOR,
            _TRIGGER,
            _PARTIAL_FILL,
            _at("ENTRY_ORDER", 3, _mark("3520.00"), "mark 3520 (in profit)"),
            Step(
                trigger=Trigger(mark_seen="3520.00", delay_ms=1_000),
                action=_post(_risk()),
                label="risk message (profit)",
            ),
        ),
        end_ms=14_000,
        expect=(*_OPEN, "ETHUSDT ENTRY_ORDER->PHASE1"),
    ),
)


# =============================================================================================
# The faults the simulated venue injects
# =============================================================================================

ENTRY = Trigger(command=cmd.PlaceOrder, legs=frozenset({"ENTRY1"}))
FIRST_EXIT = Trigger(command=cmd.Command, legs=faults.EXIT_LEGS)
IN_POSITION = replace(ENTRY, delay_ms=5_000)  # the entry (or its first part) has filled
FILLED = Trigger(mark_seen="3535.00", delay_ms=500)  # every scenario's entry (or its first part) filled
FIRST_STOP = Trigger(command=cmd.PlaceAlgoOrder, delay_ms=1_000)  # the MDD / breakeven stop is working


def _order_path(command: cmd.Command | None) -> str:
    return "/fapi/v1/algoOrder" if isinstance(command, cmd.PlaceAlgoOrder) else "/fapi/v1/order"


def _rest_fault(
    kind: Literal["status", "html", "hang"],
    *,
    status: int = 503,
    body: str | None = None,
    after_accept: bool = False,
    count: int = 1,
    hang_s: float = 0.05,
) -> Action:
    def act(ctx: CellContext, command: cmd.Command | None) -> None:
        fault = RestFault(
            "POST",
            _order_path(command),
            kind,
            status=status,
            after_accept=after_accept,
            count=count,
            hang_s=hang_s,
        )
        if body is not None:
            fault.body = body
        ctx.harness.venue.faults.add(fault)

    return act


def _rate_limited(count: int) -> Action:
    def act(ctx: CellContext, _: cmd.Command | None) -> None:
        ctx.harness.venue.faults.rate_limited = count

    return act


def _banned(ms: int) -> Action:
    def act(ctx: CellContext, _: cmd.Command | None) -> None:
        ctx.harness.venue.faults.banned_until_ms = ctx.clock.now_ms() + ms

    return act


def _drop_ws(ctx: CellContext, _: cmd.Command | None) -> None:
    ctx.harness.venue.drop_ws()


def _silence(silent: bool) -> Action:
    def act(ctx: CellContext, _: cmd.Command | None) -> None:
        ctx.silence_market(silent)

    return act


def _duplicate(ctx: CellContext, _: cmd.Command | None) -> None:
    ctx.harness.exchange.user_faults.duplicate_next = 1_000_000


def _delay(ms: int) -> Action:
    def act(ctx: CellContext, _: cmd.Command | None) -> None:
        ctx.harness.exchange.user_faults.delay_ms = ms

    return act


def _hold(ctx: CellContext, _: cmd.Command | None) -> None:
    ctx.harness.exchange.hold_user_events()


def _release_reversed(ctx: CellContext, _: cmd.Command | None) -> None:
    ctx.harness.exchange.release_user_events(reverse=True)


def _expire_listen_keys(ctx: CellContext, _: cmd.Command | None) -> None:
    exchange = ctx.harness.exchange
    for key in list(exchange.listen_keys):
        exchange.expire_listen_key(key)


def _one(trigger: Trigger, action: Action, label: str) -> tuple[Step, ...]:
    return (Step(trigger=trigger, action=action, label=label),)


FOREIGN_STOP = "web_keptStop4130"  # a closePosition stop placed from the app, not ours
MANUAL_CLOSE = "web_manualClose4509"
STOP_FINISHED = r"^sf\S+ STOP_MARKET BUY @\S+: FINISHED$"  # a stop of ours triggered and ended


def _foreign_close_stop(ctx: CellContext, _: cmd.Command | None) -> None:
    """A closePosition STOP_MARKET BUY of someone else (the app) on the short, far above the mark: the
    place our MDD / breakeven stop needs is taken (-4130, binance-real-answers.md: any origin)."""
    exchange = ctx.harness.exchange
    exchange.new_algo_order(
        {
            "symbol": SYMBOL,
            "algoType": "CONDITIONAL",
            "type": "STOP_MARKET",
            "side": "BUY",
            "closePosition": "true",
            "triggerPrice": "7000.00",
            "workingType": "MARK_PRICE",
            "clientAlgoId": FOREIGN_STOP,
        }
    )


def _close_outside(ctx: CellContext, _: cmd.Command | None) -> None:
    """The whole short closed at market from the app just before our exit order reaches the venue:
    a closePosition stop is then refused -4509, a reduce-only order -2022 (binance-real-answers.md)."""
    exchange = ctx.harness.exchange
    position = exchange.positions.get((SYMBOL, "BOTH"))
    if position is None or position.amount == 0:
        raise RuntimeError("no position to close")
    exchange.new_order(
        {
            "symbol": SYMBOL,
            "side": "BUY",
            "type": "MARKET",
            "quantity": str(abs(position.amount)),
            "reduceOnly": "true",
            "newClientOrderId": MANUAL_CLOSE,
        }
    )


def _algo_lifecycle(mode: AlgoLifecycle) -> Action:
    def act(ctx: CellContext, _: cmd.Command | None) -> None:
        ctx.harness.exchange.algo_lifecycle = mode

    return act


def _cross_stop(ctx: CellContext, command: cmd.Command | None) -> None:
    """The mark moves 1 % past the stop's trigger: the venue triggers it (on the mark, R11-1)."""
    if not isinstance(command, cmd.PlaceAlgoOrder):
        raise RuntimeError(f"no stop to cross: {command!r}")
    price = (command.trigger_price * Decimal("1.01")).quantize(Decimal("0.01"))
    ctx.harness.exchange.set_mark(SYMBOL, price)


def _ban_after_429s(count: int, ban_ms: int) -> Action:
    """``count`` 429s (Retry-After 1 s), then the rate-limit model bans the next request for
    ``ban_ms``; every request during the ban makes the next ban twice as long (``RateLimitModel``)."""

    def act(ctx: CellContext, _: cmd.Command | None) -> None:
        ctx.harness.venue.faults.rate_limited = count
        ctx.ban_next_ms = ban_ms

    return act


def _drop_user_stream(ctx: CellContext, _: cmd.Command | None) -> None:
    if ctx.harness.venue.drop_ws("private") == 0:
        raise RuntimeError("no user stream to drop")


def _stop_lifecycle(mode: AlgoLifecycle, what: str) -> tuple[Step, ...]:
    return (
        Step(trigger=Trigger(at_ms=0), action=_algo_lifecycle(mode), label=what),
        Step(trigger=FIRST_STOP, action=_cross_stop, label="mark past the stop", optional=True),
    )


# binance-usdm-2026.md (corrections): this 5xx text means the request failed (not "unknown").
SERVICE_UNAVAILABLE = '{"code":-1001,"msg":"Service Unavailable."}'
TIMESTAMP_BODY = '{"code":-1021,"msg":"Timestamp for this request is outside of the recvWindow."}'
# binance-real-answers.md: HTTP 408, the outcome is unknown (the order may or may not exist).
BACKEND_TIMEOUT = (
    '{"code":-1007,"msg":"Timeout waiting for response from backend server. '
    'Send status unknown; execution status unknown."}'
)
FAULTS: tuple[DaemonFault, ...] = (
    DaemonFault(
        name="5xx",
        title='503 "Service Unavailable." on the entry order\'s POST (failed: sent again at once)',
        steps=_one(ENTRY, _rest_fault("status", status=503, body=SERVICE_UNAVAILABLE), "503"),
        flat_ok="W35 (entry reset after its attempts)",
        flat_evidence=("ETHUSDT ENTRY_ORDER->IDLE",),
    ),
    DaemonFault(
        name="timeout-before",
        title="entry POST unanswered, not accepted (connection dropped)",
        steps=_one(ENTRY, _rest_fault("hang"), "hang before acceptance"),
        flat_ok="W35 (entry reset after its attempts)",
        flat_evidence=("ETHUSDT ENTRY_ORDER->IDLE",),
    ),
    DaemonFault(
        name="timeout-after",
        title="first exit order accepted, answer lost (connection dropped)",
        steps=_one(FIRST_EXIT, _rest_fault("hang", after_accept=True), "hang after acceptance"),
        flat_ok="R12 (a rejected limit exit closes at market)",
        flat_evidence=("-CL1-ETHUSDT MARKET",),
    ),
    DaemonFault(
        name="429",
        title="the next 3 requests answer 429 when the entry goes out",
        steps=_one(ENTRY, _rate_limited(3), "429 x3"),
        flat_ok="W35 (entry reset after its attempts)",
        flat_evidence=("ETHUSDT ENTRY_ORDER->IDLE",),
    ),
    DaemonFault(
        name="418",
        title="IP banned for 4 s when the entry goes out",
        steps=_one(ENTRY, _banned(4_000), "418 ban"),
        flat_ok="W35 (entry reset after its attempts)",
        flat_evidence=("ETHUSDT ENTRY_ORDER->IDLE",),
    ),
    DaemonFault(
        name="-1021",
        title="entry POST refused twice with -1021 (re-sync, retry)",
        steps=_one(ENTRY, _rest_fault("status", status=400, body=TIMESTAMP_BODY, count=2), "-1021 x2"),
        flat_ok="W35 (entry reset after its attempts)",
        flat_evidence=("ETHUSDT ENTRY_ORDER->IDLE",),
    ),
    DaemonFault(
        name="ws-drop",
        title="every WebSocket aborted 5 s after the entry order (position open)",
        steps=_one(IN_POSITION, _drop_ws, "drop"),
    ),
    DaemonFault(
        name="silent-ws",
        title="market stream silent for 8 s from 5 s after the entry order (REST fallback)",
        steps=(
            Step(trigger=IN_POSITION, action=_silence(True), label="silent"),
            Step(trigger=replace(ENTRY, delay_ms=13_000), action=_silence(False), label="back"),
        ),
    ),
    DaemonFault(
        name="stale-rest",
        title="silent market stream and a frozen premiumIndex for 22 s from 5 s after the entry order",
        steps=(
            Step(trigger=IN_POSITION, action=_freeze_prices, label="frozen"),
            Step(trigger=replace(ENTRY, delay_ms=27_000), action=_thaw_prices, label="back"),
        ),
        flat_ok="W23-1 (the safety lock flattens)",
        flat_evidence=("safety_lock PRICE_OK->PRICE_STALE",),
    ),
    DaemonFault(
        name="dup-user",
        title="every user-stream event delivered twice",
        steps=_one(Trigger(at_ms=0), _duplicate, "duplicate"),
    ),
    DaemonFault(
        name="reorder-user",
        title="user events held from the entry order on, released reversed 6.5 s later",
        steps=(
            Step(trigger=ENTRY, action=_hold, label="hold"),
            Step(trigger=replace(ENTRY, delay_ms=6_500), action=_release_reversed, label="release"),
        ),
    ),
    DaemonFault(
        name="delay-user",
        title="every user-stream event delayed 1.5 s",
        steps=_one(Trigger(at_ms=0), _delay(1_500), "delay"),
    ),
    DaemonFault(
        name="listenKey",
        title="listenKey expired 1 s after the entry order went out (order working)",
        steps=_one(replace(ENTRY, delay_ms=1_000), _expire_listen_keys, "expire"),
    ),
    DaemonFault(
        name="408-after",
        title="entry POST accepted, answered 408 -1007 (outcome unknown: queried, never resent at once)",
        steps=_one(
            ENTRY,
            _rest_fault("status", status=408, body=BACKEND_TIMEOUT, after_accept=True),
            "408 -1007 after acceptance",
        ),
    ),
    DaemonFault(
        name="-4130",
        title="a closePosition stop from the app sits on the short from the first fill on: our MDD / "
        "breakeven stop is refused -4130 (R20: ours replaces it)",
        steps=_one(FILLED, _foreign_close_stop, "foreign closePosition stop"),
    ),
    DaemonFault(
        name="-4509",
        title="the short closed from the app as our first exit goes out: a stop answers -4509, a "
        "reduce-only order -2022 (already flat)",
        steps=_one(FIRST_EXIT, _close_outside, "closed outside"),
        flat_ok="R21 (position 0: orders cancelled, state reset)",
        flat_evidence=(MANUAL_CLOSE,),
    ),
    DaemonFault(
        name="algo-fill-first",
        title="the venue reports a stop's fills before its TRIGGERED; the mark crosses the first stop",
        steps=_stop_lifecycle("fill_before_triggered", "fills before TRIGGERED"),
        flat_ok="R15 (the stop closed the position: the other exits cancelled)",
        flat_evidence=(STOP_FINISHED,),
    ),
    DaemonFault(
        name="algo-no-triggered",
        title="the venue never reports TRIGGERED; the mark crosses the first stop",
        steps=_stop_lifecycle("no_triggered", "no TRIGGERED"),
        flat_ok="R15 (the stop closed the position: the other exits cancelled)",
        flat_evidence=(STOP_FINISHED,),
    ),
    DaemonFault(
        name="ban-growing",
        # 1 s, then 3 s: D-20 waits both out and sends the entry with the same id. In risk-profit the
        # mark leaves the entry price 3 s after the trigger and the risk message comes during the
        # wait: nothing filled, so R02 cancels the entry (tests/bench/test_fault_matrix_findings.py).
        title="a 429 on the entry, then a 3 s 418 ban that doubles if anything is sent during it",
        steps=_one(ENTRY, _ban_after_429s(1, 3_000), "429, then 418"),
        flat_ok="R02 (a risk message on an entry with nothing filled cancels it)",
        flat_evidence=("ETHUSDT ENTRY_ORDER->IDLE",),
    ),
    DaemonFault(
        name="ban-exit",
        title="a 429 on the first exit, then a 3 s 418 ban that doubles if anything is sent during it",
        steps=_one(FIRST_EXIT, _ban_after_429s(1, 3_000), "429, then 418"),
        flat_ok="R12 (a rejected limit exit closes at market)",
        flat_evidence=("-CL1-ETHUSDT MARKET",),
    ),
    DaemonFault(
        name="user-reconnect",
        title="the user stream (only) dropped as the first exit order goes out (its fills land in the gap)",
        steps=_one(FIRST_EXIT, _drop_user_stream, "user stream dropped"),
    ),
)


# Cells that fail because the daemon is wrong (tests/bench/test_fault_matrix_findings.py pins each as a
# strict xfail until the fix; the matrix test leaves them out meanwhile).
FINDINGS: frozenset[tuple[str, str]] = frozenset()


# =============================================================================================
# What a run records
# =============================================================================================


@dataclass(frozen=True, slots=True, kw_only=True)
class VenueRequest:
    """An order request as it reached the simulated exchange."""

    path: str
    cid: str
    params: tuple[tuple[str, str], ...]
    position: Decimal  # absolute venue position of the symbol just before it
    error: int | None  # the venue's error code, None when taken
    # The absolute position of the last PositionChanged of the symbol the engine had handled when the
    # request arrived (None: none yet): what the engine knew.
    engine_position: Decimal | None = None


@dataclass
class CellContext:
    harness: SimHarness
    clock: RunClock
    origin: int
    steps: tuple[Step, ...]
    source: ScriptedSource
    decisions: list[faults.Decision] = field(default_factory=list)
    requests: list[VenueRequest] = field(default_factory=list)
    fired: dict[int, int] = field(default_factory=dict)  # step index -> venue time it fired
    armed: dict[int, tuple[int, cmd.Command | None]] = field(default_factory=dict)  # index -> due, command
    entered: dict[str, int] = field(default_factory=dict)  # symbol state -> venue time first entered
    marks_seen: dict[Decimal, int] = field(default_factory=dict)  # SYMBOL mark -> first handled
    orphans: dict[str, int] = field(default_factory=dict)  # cid -> venue time first seen orphaned
    violations: list[str] = field(default_factory=list)
    locks: tuple[tuple[str, str], ...] = ()
    paused: bool = False
    silenced: int = 0  # scenario and fault may both silence the market stream: counted
    frozen: int = 0
    answers: list[str] = field(default_factory=list)  # "+ms METHOD path status code" of each error answer
    user_events: list[str] = field(default_factory=list)  # "ALGO|ORDER cid status" as the venue emitted them
    ban_informed: dict[int, int] = field(default_factory=dict)  # ban end -> venue time of its first 418
    ban_next_ms: int = 0  # the ban-growing fault: the next request after the queued 429s is banned this long
    sized_on: dict[str, Decimal] = field(default_factory=dict)  # cid -> engine position when decided

    def silence_market(self, silent: bool) -> None:
        self.silenced += 1 if silent else -1
        self.harness.venue.silence_ws("market", self.silenced > 0)

    # -- the observer: every handled event, before its commands are carried out -------------------

    def observe(self, engine_locks: tuple[tuple[str, str], ...], paused: bool) -> Callable[..., None]:
        self.locks, self.paused = engine_locks, paused

        def observer(event: ev.Event, commands: list[cmd.Command]) -> None:
            self.decisions.append(
                faults.Decision(
                    index=len(self.decisions) + 1,
                    step=0,
                    event=event,
                    commands=tuple(commands),
                    locks_before=self.locks,
                    paused_before=self.paused,
                )
            )
            now = self.clock.now_ms()
            if isinstance(event, ev.MarkPriceTick) and event.symbol == SYMBOL:
                self.marks_seen.setdefault(event.price, now)
            for c in commands:
                if isinstance(c, cmd.Transitioned) and c.machine == "symbol" and c.symbol == SYMBOL:
                    self.entered.setdefault(c.dest, now)
                self._arm_on_command(c, now)
            self.fire_due()

        return observer

    def after_event(self, locks: tuple[tuple[str, str], ...], paused: bool) -> None:
        self.locks, self.paused = locks, paused

    def _arm_on_command(self, c: cmd.Command, now: int) -> None:
        for index, step in enumerate(self.steps):
            trigger = step.trigger
            if trigger.command is None or index in self.armed or not isinstance(c, trigger.command):
                continue
            leg = getattr(c, "leg", None)
            if not isinstance(c, (cmd.PlaceOrder, cmd.PlaceAlgoOrder)):
                continue
            if trigger.legs is not None and leg not in trigger.legs:
                continue
            self.armed[index] = (now + trigger.delay_ms, c)

    def fire_due(self) -> None:
        now = self.clock.now_ms()
        for index, step in enumerate(self.steps):
            if index in self.fired:
                continue
            trigger = step.trigger
            if trigger.at_ms is not None:
                if now >= self.origin + trigger.at_ms:
                    self._fire(index, step, None, now)
            elif trigger.symbol_state is not None or trigger.mark_seen is not None:
                if trigger.mark_seen is not None:
                    since = self.marks_seen.get(Decimal(trigger.mark_seen))
                else:
                    since = self.entered.get(str(trigger.symbol_state))
                if since is not None and now >= since + trigger.delay_ms:
                    self._fire(index, step, None, now)
            elif index in self.armed and now >= self.armed[index][0]:
                self._fire(index, step, self.armed[index][1], now)

    def armed_times(self) -> list[int]:
        """When each step not fired yet will fire, for those whose moment has come (a state entered,
        a mark seen, a command sent) or is a fixed time: the story is not over before them."""
        out: list[int] = []
        for index, step in enumerate(self.steps):
            if index in self.fired:
                continue
            trigger = step.trigger
            if trigger.at_ms is not None:
                out.append(self.origin + trigger.at_ms)
            elif trigger.mark_seen is not None or trigger.symbol_state is not None:
                if trigger.mark_seen is not None:
                    since = self.marks_seen.get(Decimal(trigger.mark_seen))
                else:
                    since = self.entered.get(str(trigger.symbol_state))
                if since is not None:
                    out.append(since + trigger.delay_ms)
            elif index in self.armed:
                out.append(self.armed[index][0])
        return out

    def _fire(self, index: int, step: Step, command: cmd.Command | None, now: int) -> None:
        self.fired[index] = now
        try:
            step.action(self, command)
        except Exception as exc:  # a broken injector is a failed cell, not a crashed matrix
            self.violations.append(f"fault action {step.label!r} failed: {exc!r}")

    # -- the venue side ---------------------------------------------------------------------------

    def tap_order_routes(self) -> None:
        """Record every order request that reaches the exchange, with the position just before it."""
        venue = self.harness.venue
        routes: dict[tuple[str, str], tuple[Any, Callable[[dict[str, str]], Any]]] = venue._routes
        for key in ORDER_ROUTES:
            security, handler = routes[key]
            routes[key] = (security, self._recording(key[1], handler))

    def _recording(
        self, path: str, handler: Callable[[dict[str, str]], Any]
    ) -> Callable[[dict[str, str]], Any]:
        exchange = self.harness.exchange

        def recorded(params: dict[str, str]) -> Any:
            cid = params.get("newClientOrderId") or params.get("clientAlgoId") or ""
            symbol = params.get("symbol", "")
            position = exchange.positions.get((symbol, "BOTH"))
            amount = abs(position.amount) if position is not None else Decimal(0)
            kept = tuple(sorted((k, v) for k, v in params.items() if k not in NOT_PARAMS))
            error: int | None = None
            try:
                return handler(params)
            except Exception as exc:
                error = int(getattr(exc, "code", 0))
                raise
            finally:
                # What the engine knew: its last position news, or the position it sized this
                # order on (a fill it had just been told of, before the venue's ACCOUNT_UPDATE).
                news = next(
                    (
                        abs(d.event.amount)
                        for d in reversed(self.decisions)
                        if isinstance(d.event, ev.PositionChanged) and d.event.symbol == symbol
                    ),
                    None,
                )
                sized = self.sized_on.get(cid)
                known = max((k for k in (news, sized) if k is not None), default=None)
                self.requests.append(
                    VenueRequest(
                        path=path, cid=cid, params=kept, position=amount, error=error, engine_position=known
                    )
                )

        return recorded

    def tap_answers(self) -> None:
        """Record every error answer of the venue (proof that a fault really bit) and check that
        nothing is sent during a 418 ban once its first 418 was answered (binance-real-answers.md:
        requests sent during a ban earn longer ones). Requests already in flight when the first 418
        went out get ``BAN_GRACE_MS``."""
        venue = self.harness.venue
        original = venue._dispatch

        async def dispatch(
            method: str, target: str, headers: dict[str, str], body: str
        ) -> tuple[int, dict[str, str], bytes, str] | None:
            rl = venue.rate_limits
            now = venue.ex.now()
            path = urlsplit(target).path
            until = max(rl.banned_until_ms if rl.enabled else 0, venue.faults.banned_until_ms)
            if now < until:
                first = self.ban_informed.setdefault(until, now)
                if now - first > BAN_GRACE_MS:
                    self.violations.append(
                        f"request during a 418 ban: {method} {path} {now - first} ms after the ban's "
                        f"first 418 (banned for {until - now} ms more)"
                    )
            tipping = False
            if self.ban_next_ms and venue.faults.rate_limited == 0 and now >= until:
                # The model's own path to a ban: this request is over the limit once too often.
                rl.enabled, rl.first_ban_ms, rl.weight_limit = True, self.ban_next_ms, -1
                rl.answers_429 = {now // 60_000: rl.ban_after_429s}
                self.ban_next_ms, tipping = 0, True
            answer = await original(method, target, headers, body)
            if tipping:
                rl.weight_limit = RateLimitModel().weight_limit
            status = answer[0] if answer is not None else 0
            if status == 418 and now >= until:
                self.ban_informed.setdefault(max(rl.banned_until_ms, venue.faults.banned_until_ms), now)
            if answer is None or status >= 400:
                code: Any = "-"
                if answer is not None:
                    with contextlib.suppress(ValueError, AttributeError):  # an HTML page, a list
                        code = json.loads(answer[2]).get("code", "-")
                at = now - self.origin
                self.answers.append(f"+{at} {method} {path} {status or 'no answer'} {code}")
            return answer

        venue._dispatch = dispatch  # type: ignore[method-assign]

    def tap_user_events(self) -> None:
        """Record the order and algo updates the venue emits, in order (``ALGO cid status``)."""

        def record(payload: dict[str, Any], _key: str | None) -> None:
            event = payload.get("e")
            if event == "ALGO_UPDATE":
                self.user_events.append(f"ALGO {payload['o']['caid']} {payload['o']['X']}")
            elif event == "ORDER_TRADE_UPDATE":
                self.user_events.append(f"ORDER {payload['o']['c']} {payload['o']['X']}")

        self.harness.exchange.user_listeners.append(record)

    def sample_orphans(self) -> None:
        """An exit order open on a flat position for longer than the grace is a violation."""
        now = self.clock.now_ms()
        exchange = self.harness.exchange
        current: set[str] = set()
        for symbol, cid, leg in open_orders_of_ours(exchange):
            position = exchange.positions.get((symbol, "BOTH"))
            flat = position is None or position.amount == 0
            if leg in faults.EXIT_LEGS and flat:
                current.add(cid)
                since = self.orphans.setdefault(cid, now)
                if now - since > ORPHAN_GRACE_MS:
                    message = f"orphaned exit: {cid} open on a flat {symbol} for over {ORPHAN_GRACE_MS} ms"
                    if message not in self.violations:
                        self.violations.append(message)
        for cid in list(self.orphans):
            if cid not in current:
                del self.orphans[cid]


def open_orders_of_ours(exchange: Any) -> list[tuple[str, str, str]]:
    """(symbol, client id, leg) of every open order and algo order whose id is ours."""
    found: list[tuple[str, str, str]] = []
    for o in exchange.orders.values():
        parsed = rules.parse_client_order_id(o.client_id)
        if o.is_open and parsed is not None:
            found.append((o.symbol, o.client_id, parsed.leg))
    for a in exchange.algos.values():
        parsed = rules.parse_client_order_id(a.client_algo_id)
        if a.status == "NEW" and parsed is not None:
            found.append((a.symbol, a.client_algo_id, parsed.leg))
    return found


# =============================================================================================
# Invariants on the venue
# =============================================================================================


def check_venue_requests(requests: Sequence[VenueRequest]) -> list[str]:
    """A client id reaching the venue again must carry the same parameters (an identical retry)."""
    first: dict[str, VenueRequest] = {}
    problems: list[str] = []
    for request in requests:
        if not request.cid:
            continue
        seen = first.setdefault(request.cid, request)
        if seen.params != request.params:
            problems.append(
                f"duplicate id at the venue: {request.cid} sent again with other parameters: "
                f"{dict(seen.params)} then {dict(request.params)}"
            )
    return problems


def check_venue_orders(exchange: Any) -> list[str]:
    """At most one venue order per client id; at most one entry order per (symbol, signal, leg)."""
    problems: list[str] = []
    counts: dict[str, int] = {}
    created: list[tuple[str, str, str]] = []
    # A triggered algo order's child carries the algo's client id: one order, not a duplicate.
    children = {a.actual_order_id for a in exchange.algos.values() if a.actual_order_id}
    orders = [(o.client_id, o.symbol) for o in exchange.orders.values() if o.order_id not in children]
    for cid, symbol in orders + [(a.client_algo_id, a.symbol) for a in exchange.algos.values()]:
        counts[cid] = counts.get(cid, 0) + 1
        parsed = rules.parse_client_order_id(cid)
        if parsed is not None:
            created.append((symbol, cid, parsed.leg))
    problems += [f"duplicated venue order: {cid} exists {n} times" for cid, n in counts.items() if n > 1]
    problems += faults.check_entry_orders(created)
    return problems


def check_venue_exits(requests: Sequence[VenueRequest]) -> list[str]:
    """A closing order (reduce-only, or a BUY while short) never asks for more than the position.
    Except a race no client can avoid: the position shrank under an order the engine sized on its
    latest position news (a stop triggered, a close from the app) and the venue refused it (-2022,
    nothing executed)."""
    problems: list[str] = []
    for request in requests:
        params = dict(request.params)
        if request.path != "/fapi/v1/order" or "quantity" not in params:
            continue
        closing = params.get("reduceOnly") == "true" or params.get("side") == "BUY"
        qty = Decimal(params["quantity"])
        raced = (
            request.error == -2022 and request.engine_position is not None and qty <= request.engine_position
        )
        if closing and qty > request.position and not raced:
            problems.append(
                f"exit above position: {request.cid} qty {params['quantity']} > venue position "
                f"{request.position}"
            )
    return problems


def final_state(engine: Any, exchange: Any) -> faults.FinalState:
    positions = tuple(
        (symbol, abs(p.amount)) for (symbol, _), p in sorted(exchange.positions.items()) if p.amount != 0
    )
    orders: list[tuple[str, str, str, Decimal, Decimal]] = []
    for o in exchange.orders.values():
        parsed = rules.parse_client_order_id(o.client_id)
        if o.is_open and parsed is not None:
            orders.append((o.symbol, parsed.leg, o.side, o.price, o.qty))
    for a in exchange.algos.values():
        parsed = rules.parse_client_order_id(a.client_algo_id)
        if a.status == "NEW" and parsed is not None:
            orders.append((a.symbol, parsed.leg, a.side, a.trigger, a.quantity))
    return faults.FinalState(
        states=tuple(sorted(engine.active_symbols().items())),
        locks=tuple(sorted((name, m.state) for name, m in engine.locks.items())),
        positions=positions,
        open_orders=tuple(sorted(orders)),
    )


def check_end(engine: Any, exchange: Any) -> list[str]:
    """At the end: no order of ours for an IDLE symbol, no exit order on a flat position."""
    states = engine.active_symbols()
    problems: list[str] = []
    for symbol, cid, leg in open_orders_of_ours(exchange):
        position = exchange.positions.get((symbol, "BOTH"))
        if symbol not in states:
            problems.append(f"orphaned order at the end: {cid} open while {symbol} is IDLE")
        elif leg in faults.EXIT_LEGS and (position is None or position.amount == 0):
            problems.append(f"orphaned exit at the end: {cid} open while {symbol} is flat")
    return problems


# =============================================================================================
# Running one cell
# =============================================================================================


@dataclass(frozen=True, slots=True, kw_only=True)
class CellRun:
    scenario: str
    fault: str
    violations: tuple[str, ...]
    outcome: str
    final: faults.FinalState
    fired: tuple[str, ...]
    venue_requests: int
    events: int
    wall_s: float
    transitions: tuple[str, ...] = ()
    venue_orders: tuple[str, ...] = ()
    order_posts: int = 0  # order POSTs the venue received, including those a fault answered
    answers: tuple[str, ...] = ()  # the venue's error answers, "+ms METHOD path status code"
    user_events: tuple[str, ...] = ()  # the order / algo updates the venue emitted, in order
    rest_routes: tuple[str, ...] = ()  # every REST request the venue received, "METHOD path"
    bans: int = 0  # 418 bans the venue's rate-limit model imposed (more than one: the ban grew)

    @property
    def passed(self) -> bool:
        return not self.violations

    def as_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "fault": self.fault,
            "passed": self.passed,
            "outcome": self.outcome,
            "violations": list(self.violations),
            "fired": list(self.fired),
            "final": self.final.describe(),
            "venue_requests": self.venue_requests,
            "order_posts": self.order_posts,
            "events": self.events,
            "wall_s": round(self.wall_s, 3),
            "transitions": list(self.transitions),
            "venue_orders": list(self.venue_orders),
            "answers": list(self.answers),
            "bans": self.bans,
        }


async def run_cell(
    scenario: Scenario,
    fault: DaemonFault | None,
    reference: CellRun | None,
    *,
    speed: float = DEFAULT_SPEED,
    workdir: Path,
) -> CellRun:
    """One scenario with one fault (None: the fault-free reference run) through the real daemon."""
    started = time.monotonic()
    config = AppConfig(
        storage=StorageConfig(
            database=str(workdir / "db.sqlite"),
            log_dir=str(workdir / "log"),
            heartbeat_path=str(workdir / "hb.json"),
        )
    )
    clock = RunClock(speed=speed, max_gap_s=MAX_GAP_S)
    harness = SimHarness(clock, path=scenario.path)
    harness.exchange.settle_funding = False  # on the wall clock: a settlement would land at random
    source = ScriptedSource()
    steps = (*scenario.steps, *(fault.steps if fault else ()))
    ctx = CellContext(harness=harness, clock=clock, origin=0, steps=steps, source=source)
    ctx.tap_order_routes()
    ctx.tap_answers()
    ctx.tap_user_events()
    holder: list[Daemon] = []
    inner: Callable[..., None] | None = None

    def locks_of(daemon: Daemon) -> tuple[tuple[str, str], ...]:
        return tuple((name, model.state) for name, model in daemon.engine.locks.items())

    def observer(event: ev.Event, commands: list[cmd.Command]) -> None:
        assert inner is not None
        for c in commands:  # the position each order was sized on, as the engine knew it then
            if isinstance(c, cmd.PlaceOrder) and (model := holder[0].engine.symbols.get(c.symbol)):
                ctx.sized_on[c.client_order_id] = model.position()
        inner(event, commands)
        ctx.after_event(locks_of(holder[0]), holder[0].engine.paused)

    code = -1
    await harness.start()
    store = await Store.open(config.storage.database)
    try:
        daemon = Daemon(
            config=config,
            profile="sim",
            clock=clock,
            store=store,
            endpoints=harness.endpoints(),
            source=source,
            decision_log=DecisionLog(None),
            observer=observer,
        )
        holder.append(daemon)
        inner = ctx.observe(locks_of(daemon), daemon.engine.paused)
        # The streams reconnect after 0.5 s, 1 s, ... of WALL time; the daemon does not scale that by
        # the clock speed (it does for the keepalive and the poller), so the harness does.
        daemon.market.backoff = Backoff(base_s=0.5 / speed, cap_s=30.0 / speed)
        daemon.user.backoff = Backoff(base_s=0.5 / speed, cap_s=30.0 / speed)
        # Everything slow (database migrations, clients) is ready: the story's clock starts now.
        ctx.origin = source.origin_ms = clock.now_ms()
        harness.install(ctx.origin)
        task = asyncio.create_task(daemon.run(), name=f"daemon {scenario.name}")
        try:
            code = await _drive(ctx, scenario, task, daemon)
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
    finally:
        await store.close()
        await harness.stop()
    return _judge(ctx, scenario, fault, reference, holder[0], code, time.monotonic() - started)


async def _drive(ctx: CellContext, scenario: Scenario, task: asyncio.Task[int], daemon: Daemon) -> int:
    """Fire the due steps and watch for orphans until the story is over; then stop the daemon."""
    clock, origin = ctx.clock, ctx.origin
    # A fault's steps must all fire (but the optional ones).
    required = [i for i in range(len(scenario.steps), len(ctx.steps)) if not ctx.steps[i].optional]
    cap = origin + scenario.end_ms + MAX_EXTRA_MS
    hard_cap = cap + 2 * MAX_EXTRA_MS  # a close refused for ever must not hold the cell for ever
    while not task.done():
        ctx.fire_due()
        ctx.sample_orphans()
        now = clock.now_ms()
        last = max(ctx.fired.values(), default=origin)
        pending = any(i not in ctx.fired for i in required)
        # An order of unknown outcome is queried only once its request can no longer execute
        # (recvWindow, widened on a compressed clock): the story is not over before that.
        resolving = [
            o.resolve_at_ms or now
            for m in daemon.engine.symbols.values()
            for o in m.orders.values()
            if o.status == "UNKNOWN"
        ]
        # A decided close waiting for its timed retry (D-19, a ban's end) is not over either.
        resolving += [
            at
            for m in daemon.engine.symbols.values()
            for at in (m.close_retry_at_ms, *(o.retry_at_ms for o in m.orders.values() if o.is_open))
            if at
        ]
        # A step whose moment came on a slow machine (a state entered late) fires before the end.
        resolving += ctx.armed_times()
        if resolving:
            last = max(last, *resolving)
            cap = min(max(cap, max(resolving) + SETTLE_MS), hard_cap)
        if now >= cap or (now >= origin + scenario.end_ms and not pending and now >= last + SETTLE_MS):
            break
        await asyncio.sleep(POLL_S)
    daemon.request_stop("fault matrix cell over")
    return await asyncio.wait_for(task, 15)


def _judge(
    ctx: CellContext,
    scenario: Scenario,
    fault: DaemonFault | None,
    reference: CellRun | None,
    daemon: Daemon,
    code: int,
    wall_s: float,
) -> CellRun:
    exchange = ctx.harness.exchange
    violations = list(ctx.violations)
    if code != 0:
        violations.append(f"daemon exit code {code}")
    if daemon.errors:
        violations.append(f"daemon internal errors: {daemon.errors}")
    commands = [c for d in ctx.decisions for c in d.commands]
    violations += faults.check_engine_errors(ctx.decisions)
    violations += faults.check_client_ids(commands)
    violations += faults.check_lock_gates(ctx.decisions)
    violations += check_venue_requests(ctx.requests)
    violations += check_venue_orders(exchange)
    violations += check_venue_exits(ctx.requests)
    violations += check_end(daemon.engine, exchange)
    never = [
        ctx.steps[i].label
        for i in range(len(scenario.steps), len(ctx.steps))
        if i not in ctx.fired and not ctx.steps[i].optional
    ]
    if never:
        violations.append(f"fault never fired: {never}")
    final = final_state(daemon.engine, exchange)
    transitions = tuple(  # the phases, the close and the locks (the triggers are the scenarios' business)
        f"{cmd.who_moved(c.machine, c.symbol)} {c.source}->{c.dest}"
        for c in commands
        if isinstance(c, cmd.Transitioned) and c.machine not in DETAIL_REGIONS
    )
    orders = venue_orders(exchange)
    outcome = "reference"
    if reference is None:
        after_recovery = tuple(t for t in transitions if not t.startswith("recovery_lock"))
        if after_recovery != scenario.expect:
            violations.append(f"the fault-free run went {list(after_recovery)}, not {list(scenario.expect)}")
    else:
        evidence = fault.flat_evidence if fault else ()
        outcome, wrong = faults.judge_final(
            reference.final,
            final,
            flat_ok=fault.flat_ok if fault else None,
            safety_engaged=any(re.search(e, line) for e in evidence for line in (*transitions, *orders)),
            flat_needs_safety_lock=True,
        )
        violations += wrong
        if transitions != reference.transitions:
            outcome += ", other path"
    fired = tuple(
        f"{ctx.steps[i].label} @ {(at - ctx.origin) / 1000:.1f}s"
        for i, at in sorted(ctx.fired.items(), key=lambda x: x[1])
    )
    return CellRun(
        scenario=scenario.name,
        fault=fault.name if fault else "none",
        violations=tuple(violations),
        outcome=outcome,
        final=final,
        fired=fired,
        venue_requests=len(ctx.requests),
        events=len(ctx.decisions),
        wall_s=wall_s,
        transitions=transitions,
        venue_orders=orders,
        order_posts=sum(1 for r in ctx.harness.venue.requests if r in ORDER_ROUTES),
        answers=tuple(ctx.answers),
        user_events=tuple(ctx.user_events),
        rest_routes=tuple(f"{method} {path}" for method, path in ctx.harness.venue.requests),
        bans=ctx.harness.venue.rate_limits.bans,
    )


class ScriptedSource:
    """The Telegram side of a cell: messages posted by the steps, delivered in order (replay kind)."""

    kind = "replay"

    def __init__(self) -> None:
        self.origin_ms = 0
        self._queue: asyncio.Queue[FeedItem | None] = asyncio.Queue()
        self.delivered = 0

    @property
    def finished(self) -> bool:
        return False

    def post(self, item: FeedItem) -> None:
        self._queue.put_nowait(item)

    def stop(self) -> None:
        self._queue.put_nowait(None)

    async def run(self, deliver: Callable[[Any], Any], cursors: Mapping[int, int]) -> None:
        while (item := await self._queue.get()) is not None:
            if item.message_id > cursors.get(item.chat_id, 0):
                await deliver(item.to_raw(self.origin_ms))
                self.delivered += 1


def venue_orders(exchange: Any) -> tuple[str, ...]:
    """Every order the venue holds, in creation order: ``cid type side price x qty: status (filled)``."""
    rows = [
        f"{o.client_id} {o.type} {o.side} {o.price}x{o.qty}: {o.status} ({o.executed})"
        for o in sorted(exchange.orders.values(), key=lambda o: o.order_id)
    ]
    rows += [
        f"{a.client_algo_id} {a.type} {a.side} @{a.trigger}: {a.status}"
        for a in sorted(exchange.algos.values(), key=lambda a: a.algo_id)
    ]
    return tuple(rows)


# =============================================================================================
# The matrix
# =============================================================================================


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class DaemonMatrixResult:
    scenarios: tuple[str, ...]
    faults: tuple[str, ...]
    cells: tuple[CellRun, ...]
    wall_s: float = 0.0
    speed: float = DEFAULT_SPEED

    def __repr__(self) -> str:
        failed = sum(not c.passed for c in self.cells)
        return f"DaemonMatrixResult({len(self.cells)} cells, {failed} failed)"

    def cell(self, scenario: str, fault: str) -> CellRun:
        return next(c for c in self.cells if c.scenario == scenario and c.fault == fault)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.cells)

    def as_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "speed": self.speed,
            "wall_s": round(self.wall_s, 1),
            "scenarios": list(self.scenarios),
            "faults": list(self.faults),
            "cells": [c.as_json() for c in self.cells],
        }


def scenario_named(name: str) -> Scenario:
    return next(s for s in SCENARIOS if s.name == name)


def fault_named(name: str) -> DaemonFault:
    return next(f for f in FAULTS if f.name == name)


async def run_reference(scenario: Scenario, *, speed: float = DEFAULT_SPEED) -> CellRun:
    with tempfile.TemporaryDirectory(prefix="shortfsm-faults-") as tmp:
        return await run_cell(scenario, None, None, speed=speed, workdir=Path(tmp))


async def run_one(
    scenario: Scenario, fault: DaemonFault, reference: CellRun, *, speed: float = DEFAULT_SPEED
) -> CellRun:
    with tempfile.TemporaryDirectory(prefix="shortfsm-faults-") as tmp:
        return await run_cell(scenario, fault, reference, speed=speed, workdir=Path(tmp))


def run_matrix(
    scenarios: Sequence[str] | None = None,
    fault_names: Sequence[str] | None = None,
    *,
    speed: float = DEFAULT_SPEED,
    progress: Callable[[CellRun], None] | None = None,
) -> DaemonMatrixResult:
    """Every scenario fault-free (its reference), then crossed with every fault."""
    chosen = [scenario_named(n) for n in scenarios] if scenarios else list(SCENARIOS)
    chosen_faults = [fault_named(n) for n in fault_names] if fault_names else list(FAULTS)
    started = time.monotonic()
    cells: list[CellRun] = []
    previous = logging.root.manager.disable
    logging.disable(logging.ERROR)  # every fault makes the daemon complain; the cells judge it
    try:
        for scenario in chosen:
            base = asyncio.run(run_reference(scenario, speed=speed))
            cells.append(base)
            if progress is not None:
                progress(base)
            for fault in chosen_faults:
                run = asyncio.run(run_one(scenario, fault, base, speed=speed))
                cells.append(run)
                if progress is not None:
                    progress(run)
    finally:
        logging.disable(previous)
    return DaemonMatrixResult(
        scenarios=tuple(s.name for s in chosen),
        faults=("none", *(f.name for f in chosen_faults)),
        cells=tuple(cells),
        wall_s=time.monotonic() - started,
        speed=speed,
    )


def main() -> None:  # pragma: no cover - a manual entry point: python -m fsm.harness.daemon_faults
    import sys

    names = sys.argv[1:]
    result = run_matrix(
        [n for n in names if any(s.name == n for s in SCENARIOS)] or None,
        [n for n in names if any(f.name == n for f in FAULTS)] or None,
        progress=lambda c: print(
            f"{c.scenario:12} {c.fault:15} {'pass' if c.passed else 'FAIL'} {c.wall_s:5.2f}s "
            f"{c.outcome}: {c.final.describe()} {list(c.fired)} {list(c.violations)}",
            flush=True,
        ),
    )
    print(json.dumps({"wall_s": round(result.wall_s, 1), "passed": result.passed}))


if __name__ == "__main__":
    main()
