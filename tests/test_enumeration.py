"""The exhaustive test through the public door (issue #11 step 5): every reachable configuration of a
symbol (its phase x its close state) meets every event type the engine handles, through
``Engine.handle`` only, with the event's fields drawn by Hypothesis from what that engine holds (its
symbols, its orders' client ids and quantities, prices around its marks) and from outside it.

Reachable configurations are harvested, not imagined: the engines the property harness's random
sequences pass through (tests/test_properties.py), plus the operator's flatten started on each of
them. A configuration the harvest no longer reaches fails the test, so the matrix cannot shrink
silently.

After every event: ``handle`` neither raises nor reports an engine error (a reset refused by its
row's ``unless`` would be one, D-67); no exit (BUY) order is larger than the symbol's position when
it is decided; no symbol has two entry orders open; every phase and close state is one of its
table's; and the snapshot round-trips exactly.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from decimal import Decimal
from functools import cache
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_properties import REJECTIONS, WEIGHTED_KINDS, Harness, ProbeEngine

from fsm import commands as cmd
from fsm import events as ev
from fsm.engine import Engine
from fsm.model import ENTRY_LEGS
from fsm.table import SYMBOL_REGIONS, SYMBOL_STATES, TRIGGERS

D = Decimal
Config = tuple[str, str]  # (phase, close state) of the event's symbol
EVENT_TYPES = sorted(
    name
    for name, c in vars(ev).items()
    if isinstance(c, type) and issubclass(c, ev.Event) and c is not ev.Event
)
# Configurations the harvest must reach (the symbol the event is about; IDLE: a symbol not held).
REACHABLE: frozenset[Config] = frozenset(
    {
        ("IDLE", "OPEN"),
        ("MONITORING", "OPEN"),
        ("ENTRY_ORDER", "OPEN"),
        ("ENTRY_ORDER", "CLOSING"),  # R02 / the stale lock: the unfilled entry's cancel decided
        ("PHASE1", "OPEN"),
        ("PHASE2", "OPEN"),
        ("EXITING", "OPEN"),  # an exit filling, the position not gone yet
        ("EXITING", "CLOSING"),
        ("EXITING", "DEFERRED"),
        ("EXITING", "FLATTENING"),
    }
)
PER_CONFIG = 6  # engines kept per configuration
SYMBOL_POOL = ("BTCUSDT", "ETHUSDT", "1000PEPEUSDT", "XRPUSDT")


def _config(engine: Engine, symbol: str) -> Config:
    model = engine.symbols.get(symbol)
    return (model.state, model.close_state) if model else ("IDLE", "OPEN")


@cache
def harvest() -> dict[Config, list[tuple[str, dict[str, Any]]]]:
    """(symbol, snapshot) per configuration, from deterministic random harness sequences."""
    found: dict[Config, list[tuple[str, dict[str, Any]]]] = {}

    def keep(engine: Engine) -> None:
        snapshot = None
        for symbol in (*engine.symbols, "XRPUSDT"):
            bucket = found.setdefault(_config(engine, symbol), [])
            if len(bucket) < PER_CONFIG:
                snapshot = snapshot or engine.snapshot()
                bucket.append((symbol, snapshot))

    class Harvesting(Harness):
        def handle(self, event: ev.Event) -> list[cmd.Command]:
            out = super().handle(event)
            keep(self.engine)
            return out

    kinds = [kind for kind, weight in WEIGHTED_KINDS for _ in range(weight)]
    for seed in range(400):
        rng = random.Random(seed)
        harness = Harvesting(
            mode=rng.choice(("aggressive", "conservative")), position_mode=rng.choice(("ONE_WAY", "HEDGE"))
        )
        actions = [
            (rng.choice(kinds), rng.randint(0, 59), rng.randint(0, 59), rng.choice((1, 0, 1, 2, 3, 5, 6, 16)))
            for _ in range(rng.randint(12, 40))
        ]
        harness.run(actions)
        if seed % 4 == 0 and any(
            m.state in ("ENTRY_ORDER", "PHASE1", "PHASE2", "EXITING") for m in harness.engine.symbols.values()
        ):
            harness.engine.handle(ev.FlattenStarted(now_ms=harness.clock_ms, request_id=f"f{seed}"))
            keep(harness.engine)
    return found


def test_the_harvest_reaches_every_configuration() -> None:
    assert set(harvest()) >= REACHABLE, sorted(REACHABLE - set(harvest()))


# -- events drawn from what the engine holds ---------------------------------------------------


def _qty(draw: st.DrawFn, around: Decimal) -> Decimal:
    return draw(st.sampled_from((D(0), around / 2, around, around * 2, D("0.001")))).quantize(D("0.001"))


def _cid(draw: st.DrawFn, engine: Engine, symbol: str) -> tuple[str, Decimal, str]:
    """(client id, its quantity, its side): one of the symbol's orders, or one nobody knows."""
    model = engine.symbols.get(symbol)
    known = [(o.cid, o.qty, o.side) for o in model.orders.values()] if model else []
    foreign = (f"sf9-TP1-{symbol}", D("1.000"), "BUY")
    return draw(st.sampled_from([*known, foreign]))


def _price(draw: st.DrawFn, engine: Engine, symbol: str) -> Decimal:
    mark = engine.marks.get(symbol, D(100))
    factor = draw(st.sampled_from((D("0.5"), D("0.95"), D("0.999"), D(1), D("1.001"), D("1.05"), D("1.2"))))
    return (mark * factor).quantize(D("0.0000001"))


def _event(draw: st.DrawFn, name: str, engine: Engine, symbol: str, now: int) -> ev.Event:
    cls = getattr(ev, name)
    if name in (
        "OrderAccepted",
        "OrderRejected",
        "OrderOutcomeUnknown",
        "OrderResolved",
        "CancelResult",
        "OrderUpdated",
    ):
        cid, qty, side = _cid(draw, engine, symbol)
    if name == "OrderAccepted":
        return ev.OrderAccepted(
            now_ms=now, symbol=symbol, client_order_id=cid, order_id=draw(st.integers(1, 9))
        )
    if name == "OrderRejected":
        code, retryable, category = draw(
            st.sampled_from([*REJECTIONS, (-2022, False, "flat"), (-4509, False, "flat")])
        )
        return ev.OrderRejected(
            now_ms=now,
            symbol=symbol,
            client_order_id=cid,
            code=code,
            message="drawn",
            retryable=retryable,
            category=category,
            retry_after_ms=draw(st.sampled_from((0, 1_000))),
        )
    if name == "OrderOutcomeUnknown":
        return ev.OrderOutcomeUnknown(
            now_ms=now,
            symbol=symbol,
            client_order_id=cid,
            is_algo=draw(st.booleans()),
            resolve_after_ms=now + draw(st.sampled_from((0, 5_000))),
            reason="timeout",
        )
    if name == "OrderResolved":
        outcome = draw(st.sampled_from(("found", "absent", "failed")))
        status = draw(st.sampled_from(("NEW", "PARTIALLY_FILLED", "FILLED", "CANCELED", "EXPIRED")))
        return ev.OrderResolved(
            now_ms=now,
            symbol=symbol,
            client_order_id=cid,
            is_algo=draw(st.booleans()),
            outcome=outcome,
            order_id=7 if outcome == "found" else 0,
            status=status if outcome == "found" else "",
        )
    if name == "CancelResult":
        ok = draw(st.booleans())
        return ev.CancelResult(
            now_ms=now,
            symbol=symbol,
            client_order_id=cid,
            ok=ok,
            gone=not ok and draw(st.booleans()),
            code=None if ok else -2011,
            message="" if ok else "Unknown order sent.",
            is_algo=draw(st.booleans()),
            executed_qty=draw(st.sampled_from((None, D(0), qty / 2))),
        )
    if name == "OrderUpdated":
        status = draw(
            st.sampled_from(("NEW", "PARTIALLY_FILLED", "FILLED", "CANCELED", "EXPIRED", "REJECTED"))
        )
        cum = {"NEW": D(0), "PARTIALLY_FILLED": (qty / 2).quantize(D("0.001")), "FILLED": qty}.get(
            status, D(0)
        )
        price = _price(draw, engine, symbol)
        return ev.OrderUpdated(
            now_ms=now,
            symbol=symbol,
            client_order_id=cid,
            order_id=draw(st.integers(1, 9)),
            side=side,
            order_type="LIMIT",
            status=status,
            price=price,
            orig_qty=qty,
            cum_qty=cum,
            last_qty=cum,
            last_price=price if cum else D(0),
            avg_price=price if cum else D(0),
            trade_id=draw(st.integers(1, 50)),
            reduce_only=side == "BUY",
        )
    if name == "AlgoOrderAccepted" or name == "AlgoOrderUpdated":
        model = engine.symbols.get(symbol)
        algos = [o for o in model.orders.values() if o.is_algo] if model else []
        cid = draw(st.sampled_from([o.cid for o in algos] + [f"sf9-MD1-{symbol}"]))
        if name == "AlgoOrderAccepted":
            return ev.AlgoOrderAccepted(
                now_ms=now, symbol=symbol, client_algo_id=cid, algo_id=draw(st.integers(1, 9))
            )
        status = draw(
            st.sampled_from(("NEW", "TRIGGERING", "TRIGGERED", "FINISHED", "CANCELED", "EXPIRED", "REJECTED"))
        )
        return ev.AlgoOrderUpdated(
            now_ms=now,
            symbol=symbol,
            client_algo_id=cid,
            algo_id=draw(st.integers(1, 9)),
            status=status,
            actual_order_id=draw(st.sampled_from((0, 9001))),
        )
    if name == "PositionChanged":
        model = engine.symbols.get(symbol)
        held = model.position() if model else D(0)
        return ev.PositionChanged(
            now_ms=now,
            symbol=symbol,
            amount=-_qty(draw, held or D(1)),
            entry_price=_price(draw, engine, symbol),
            position_side=draw(st.sampled_from(("BOTH", "SHORT", "LONG"))),
            venue_time_ms=now,
        )
    if name == "MarkPriceTick":
        return ev.MarkPriceTick(
            now_ms=now,
            symbol=symbol,
            price=_price(draw, engine, symbol),
            event_time_ms=now - draw(st.sampled_from((0, 20_000))),
            source=draw(st.sampled_from(("WS", "REST"))),
        )
    if name == "FundingFee":
        return ev.FundingFee(now_ms=now, symbol=symbol, asset="USDT", amount=D("-0.01"), venue_time_ms=now)
    if name == "OrderPrepared":
        return ev.OrderPrepared(
            now_ms=now,
            symbol=symbol,
            leg=draw(st.sampled_from(("ENTRY1", "ENTRY2"))),
            ok=draw(st.booleans()),
            position_mode=draw(st.sampled_from(("ONE_WAY", "HEDGE", None))),
            wallet_balance=D(1000),
            available_balance=draw(st.sampled_from((D(1000), D(0)))),
            error_code=None,
        )
    if name == "MessageReceived":
        return _message(draw, symbol, now)
    if name == "ExchangeSnapshot":
        model = engine.symbols.get(symbol)
        held = model.position() if model else D(0)
        positions = ()
        if draw(st.booleans()) and held:
            positions = (
                ev.PositionInfo(symbol=symbol, amount=-held, entry_price=model.average() if model else D(0)),
            )
        return ev.ExchangeSnapshot(
            now_ms=now,
            position_mode="ONE_WAY",
            wallet_balance=D(1000),
            available_balance=D(1000),
            positions=positions,
            open_orders=(),
            symbols=(),
            complete=draw(st.booleans()),
            purpose=draw(st.sampled_from(("recovery", "requery"))),
            symbol=draw(st.sampled_from((None, symbol))),
        )
    if name == "FlattenFinished":
        return ev.FlattenFinished(now_ms=now, request_id="drawn")
    if name == "RecoveryStarted":
        return ev.RecoveryStarted(now_ms=now)
    if name == "SettingsChangeRequested":
        return ev.SettingsChangeRequested(
            now_ms=now, changes=(("tp_pct", draw(st.sampled_from(("4", "5", "-1")))),)
        )
    if name == "VenueErrorObserved":
        category = draw(st.sampled_from(("rate_limited", "auth", "timestamp", "other")))
        return ev.VenueErrorObserved(now_ms=now, category=category, code=-1003, message="drawn")
    simple: dict[str, Callable[[], ev.Event]] = {
        "BalanceChanged": lambda: ev.BalanceChanged(
            now_ms=now, wallet_balance=D(500), available_balance=D(10)
        ),
        "FlattenStarted": lambda: ev.FlattenStarted(now_ms=now, request_id="drawn"),
        "PauseRequested": lambda: ev.PauseRequested(now_ms=now, paused=draw(st.booleans())),
        "PositionModeChanged": lambda: ev.PositionModeChanged(
            now_ms=now, mode=draw(st.sampled_from(("ONE_WAY", "HEDGE")))
        ),
        "RestPriceFailed": lambda: ev.RestPriceFailed(now_ms=now, reason="HTTP 503"),
        "Tick": lambda: ev.Tick(now_ms=now),
        "VenueCallSucceeded": lambda: ev.VenueCallSucceeded(now_ms=now, signed=draw(st.booleans())),
        "WsStatusChanged": lambda: ev.WsStatusChanged(
            now_ms=now, connected=draw(st.booleans()), reason="drawn"
        ),
    }
    assert name in simple, f"no drawing for {cls.__name__}: add one"
    return simple[name]()


def _message(draw: st.DrawFn, symbol: str, now: int) -> ev.MessageReceived:
    from test_properties import KLINES, SYMBOLS  # the harness's symbols, filters and candles

    from fsm.harness.scenario import Runner

    ticker = symbol.removesuffix("USDT")
    runner = Runner({"venue": {"symbols": SYMBOLS, "klines": KLINES}})
    runner.now_ms = now
    kind = draw(st.sampled_from(("leading", "risk", "entry_signal")))
    body: dict[str, Any] = {"id": draw(st.integers(900, 9_000))}
    body["ticker" if kind == "leading" else "symbol"] = ticker if kind == "leading" else symbol
    events = list(runner.step_events({kind: body}))
    message = next(e for e in events if isinstance(e, ev.MessageReceived))
    return message


# -- the test --------------------------------------------------------------------------------------

CASES = [(config, name) for config in sorted(REACHABLE) for name in EVENT_TYPES]


@settings(
    max_examples=30, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
)
@given(data=st.data())
def _one(data: st.DataObject, config: Config, name: str) -> None:
    symbol, snapshot = data.draw(st.sampled_from(harvest()[config]))
    engine = ProbeEngine.restore(snapshot)
    assert isinstance(engine, ProbeEngine)
    now = engine.now_ms + data.draw(st.sampled_from((0, 1_000, 6_000, 70_000)))
    event = _event(data.draw, name, engine, symbol, now)
    engine.buys = []
    commands = engine.handle(event)
    errors = [c for c in commands if isinstance(c, cmd.Log) and c.reason == "engine_error"]
    assert not errors, (config, event, errors)
    for buy, position in engine.buys:
        assert buy.quantity <= position, (config, event, buy, position)
    for model in engine.symbols.values():
        assert model.state in SYMBOL_STATES
        for region in SYMBOL_REGIONS.values():
            assert getattr(model, region["attribute"]) in region["states"], (config, event, region)
        if model.closing:  # a decided close fires no price trigger of its trade
            armed = [n for n in TRIGGERS if getattr(model, f"{n}_armed")]
            assert not armed, (config, event, armed)
        if model.preparing and not model.closing:  # a setup belongs to its phase (a close skips its answer)
            phases = ("ENTRY_ORDER",) if model.preparing == "ENTRY1" else ("PHASE1", "PHASE2")
            assert model.state in phases, (config, event, model.preparing)
        entries = [o.cid for o in model.open_orders(*ENTRY_LEGS)]
        assert len(entries) <= 1, (config, event, entries)
    snapshot_after = engine.snapshot()
    assert Engine.restore(snapshot_after).snapshot() == snapshot_after


@pytest.mark.parametrize(("config", "name"), CASES, ids=[f"{p}-{c}-{n}" for (p, c), n in CASES])
def test_every_reachable_configuration_meets_every_event(config: Config, name: str) -> None:
    _one(config=config, name=name)


def test_every_event_type_has_a_drawing() -> None:
    assert len(EVENT_TYPES) == 26
    assert len(CASES) == len(REACHABLE) * len(EVENT_TYPES)
