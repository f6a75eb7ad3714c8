"""Bad and out-of-order input to the decision core: every case is logged, decides nothing, changes nothing.

Each test drives a real ``Engine`` to a known state through the scenario runner's venue double, then
hands it one odd event and checks the exact log record, the exact commands and that the engine's
state (its full snapshot) is untouched unless the case says otherwise.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from fsm import commands as cmd
from fsm import events as ev
from fsm.engine import Engine
from fsm.harness.scenario import RISK_TEMPLATE, T0_MS, Runner
from fsm.journal import render
from fsm.strategy import Strategy
from fsm.table import GLOBAL_MACHINES
from telegram_ingest.grammar import parse_message

D = Decimal
BTC = "BTCUSDT"
ENTRY_CID = "sf1001-E11-BTCUSDT"
TP_CID = "sf1001-TP1-BTCUSDT"
DOC: dict[str, Any] = {
    "venue": {
        "wallet": "1000",
        "symbols": {
            BTC: {"tick": "0.1", "step": "0.001", "min_qty": "0.001", "min_notional": "5"},
            "ETHUSDT": {"tick": "0.01", "step": "0.01", "min_qty": "0.01", "min_notional": "5"},
        },
        "klines": {BTC: {"high": "101", "low": "99", "close": "100", "count": 5}},
    }
}


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _step(runner: Runner, at_s: int, **step: Any) -> list[cmd.Command]:
    runner.now_ms = T0_MS + at_s * 1000
    return runner.feed(runner.step_events(step))


def _monitoring() -> Runner:
    runner = Runner(DOC)
    _step(runner, 0, leading={"id": 1001, "ticker": "BTC"})
    assert runner.engine.state_of(BTC) == "MONITORING"
    return runner


def _entry_order(mark: str = "100.9") -> Runner:
    """ENTRY1 (SELL 4.950 @ 101.0) placed and acknowledged, nothing filled."""
    runner = _monitoring()
    _step(runner, 1, mark={BTC: mark})
    assert runner.engine.state_of(BTC) == "ENTRY_ORDER"
    assert runner.engine.symbols[BTC].orders[ENTRY_CID].status == "NEW"
    return runner


def _phase1() -> Runner:
    runner = _entry_order()
    _step(runner, 2, fill={"cid": ENTRY_CID})
    assert runner.engine.state_of(BTC) == "PHASE1"
    assert runner.engine.symbols[BTC].position() == D("4.950")
    return runner


def _now(engine: Engine) -> int:
    """Events stamped with the engine's own clock, so that a snapshot can be compared whole."""
    return engine.now_ms


def _order_commands(commands: list[cmd.Command]) -> list[cmd.Command]:
    return [c for c in commands if isinstance(c, (*cmd.ORDER_COMMANDS, cmd.PrepareOrder))]


def _locks(engine: Engine) -> dict[str, str]:
    return {name: engine.lock_state(name) for name in GLOBAL_MACHINES}


def _update(
    runner: Runner, cid: str, status: str, cum: str, *, last: str = "0", side: str = "SELL", symbol: str = BTC
) -> ev.OrderUpdated:
    venue_order = runner.venue.orders.get(cid)
    return ev.OrderUpdated(
        now_ms=_now(runner.engine),
        symbol=symbol,
        client_order_id=cid,
        order_id=venue_order.order_id if venue_order else 987_654,
        side=side,  # type: ignore[arg-type]
        order_type="LIMIT",
        status=status,  # type: ignore[arg-type]
        price=D("101.0"),
        orig_qty=D("4.950"),
        cum_qty=D(cum),
        last_qty=D(last),
        last_price=D("101.0") if D(last) else D(0),
        avg_price=D("101.0") if D(cum) else D(0),
    )


def _risk_message(runner: Runner, message_id: int) -> ev.MessageReceived:
    return ev.MessageReceived(
        now_ms=runner.now_ms,
        chat_id=Strategy().risk_chat_id,
        message_id=message_id,
        telegram_date_ms=runner.now_ms - 1000,
        parsed=parse_message(RISK_TEMPLATE.format(symbol=BTC)),
        symbol_info=runner.venue.symbols[BTC],
    )


def _anomaly(reason: str, symbol: str | None, detail: str) -> cmd.Log:
    return cmd.Log(kind="anomaly", symbol=symbol, reason=reason, data=(("detail", detail),))


# ---------------------------------------------------------------------------------------------
# Events about symbols and orders the engine does not know
# ---------------------------------------------------------------------------------------------

UNKNOWN_SYMBOL_CASES: list[tuple[str, Any, list[cmd.Command]]] = [
    (
        "accepted",
        lambda now: ev.OrderAccepted(
            now_ms=now, symbol="XRPUSDT", client_order_id="sf7-E11-XRPUSDT", order_id=5
        ),
        [_anomaly("unknown_order", "XRPUSDT", "sf7-E11-XRPUSDT")],
    ),
    (
        "algo_accepted",
        lambda now: ev.AlgoOrderAccepted(
            now_ms=now, symbol="XRPUSDT", client_algo_id="sf7-MD1-XRPUSDT", algo_id=6
        ),
        [_anomaly("unknown_order", "XRPUSDT", "sf7-MD1-XRPUSDT")],
    ),
    (
        "rejected",
        lambda now: ev.OrderRejected(
            now_ms=now,
            symbol="XRPUSDT",
            client_order_id="sf7-E11-XRPUSDT",
            code=-1001,
            message="x",
            retryable=True,
        ),
        [_anomaly("unknown_order_rejected", "XRPUSDT", "sf7-E11-XRPUSDT")],
    ),
    (
        "prepared",
        lambda now: ev.OrderPrepared(
            now_ms=now, symbol="XRPUSDT", leg="ENTRY1", ok=True, position_mode="ONE_WAY"
        ),
        [_anomaly("unexpected_prepare_result", "XRPUSDT", "ENTRY1")],
    ),
    (
        "cancel_result",
        lambda now: ev.CancelResult(now_ms=now, symbol="XRPUSDT", client_order_id="sf7-TP1-XRPUSDT", ok=True),
        [
            cmd.Log(
                kind="cancel_result_ignored",
                symbol="XRPUSDT",
                reason="unknown_order",
                data=(("cid", "sf7-TP1-XRPUSDT"),),
            )
        ],
    ),
    (
        "algo_update",
        lambda now: ev.AlgoOrderUpdated(
            now_ms=now, symbol="XRPUSDT", client_algo_id="sf7-MD1-XRPUSDT", algo_id=6, status="TRIGGERED"
        ),
        [
            cmd.Log(
                kind="late_algo_update",
                symbol="XRPUSDT",
                reason="TRIGGERED",
                data=(("cid", "sf7-MD1-XRPUSDT"),),
            )
        ],
    ),
    (
        "flat_position",
        lambda now: ev.PositionChanged(now_ms=now, symbol="XRPUSDT", amount=D(0), entry_price=D(0)),
        [],
    ),
]


@pytest.mark.parametrize(
    ("make", "expected"),
    [pytest.param(make, expected, id=name) for name, make, expected in UNKNOWN_SYMBOL_CASES],
)
def test_events_for_unknown_symbols_change_nothing(make: Any, expected: list[cmd.Command]) -> None:
    runner = _entry_order()
    engine = runner.engine
    before = engine.snapshot()
    out = engine.handle(make(_now(engine)))
    assert out == expected
    assert engine.snapshot() == before
    assert engine.active_symbols() == {BTC: "ENTRY_ORDER"}


@pytest.mark.spec("R08", "R00-2")
def test_risk_message_for_an_unknown_symbol_only_advances_the_cursor() -> None:
    runner = _entry_order()
    engine = runner.engine
    before = engine.snapshot()
    strategy = Strategy()
    event = ev.MessageReceived(
        now_ms=_now(engine),
        chat_id=strategy.risk_chat_id,
        message_id=77,
        telegram_date_ms=_now(engine) - 1000,
        parsed=parse_message(RISK_TEMPLATE.format(symbol="XRPUSDT")),
        symbol_info=None,
    )
    out = engine.handle(event)
    assert out == [
        cmd.PersistCursor(chat_id=strategy.risk_chat_id, message_id=77),
        cmd.Log(kind="risk_ignored", symbol="XRPUSDT", reason="symbol_not_active"),
    ]
    assert engine.cursors[strategy.risk_chat_id] == 77
    after = engine.snapshot()
    after["cursors"] = before["cursors"]
    after["risk_seen"] = before["risk_seen"]  # the id is remembered as seen (D-34), nothing else
    assert after == before


@pytest.mark.spec("G01", "N-21")
def test_a_manual_order_of_an_unmanaged_symbol_only_feeds_the_entry_lock() -> None:
    runner = _monitoring()
    engine = runner.engine
    manual = _update(runner, "web_manual_1", "NEW", "0", symbol="ETHUSDT")
    out = engine.handle(manual)
    assert [c for c in out if isinstance(c, cmd.Transitioned)] == [
        cmd.Transitioned(
            machine="entry_lock",
            symbol=None,
            source="GLOBAL_IDLE",
            dest="GLOBAL_LOCKED",
            trigger="lock",
            reason="open entry order ETHUSDT:987654",
        ),
        cmd.Transitioned(
            machine="symbol",
            symbol=BTC,
            source="MONITORING",
            dest="IDLE",
            trigger="reset",
            reason="entry lock: open entry order ETHUSDT:987654",
        ),
    ]
    assert _order_commands(out) == []
    assert engine.symbols == {}


# ---------------------------------------------------------------------------------------------
# Fills: unknown orders, duplicates, reordering, races with cancels
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cid", ["web_manual_7", "sf1001-TP7-BTCUSDT", "sf999-E11-BTCUSDT"])
def test_fill_of_an_unknown_order_of_a_managed_symbol_is_ignored(cid: str) -> None:
    runner = _phase1()
    engine = runner.engine
    before = engine.snapshot()
    out = engine.handle(_update(runner, cid, "FILLED", "4.950", last="4.950"))
    assert out == [cmd.Log(kind="foreign_order", symbol=BTC, reason="FILLED", data=(("cid", cid),))]
    after = engine.snapshot()
    # The account view remembers that this order is closed (a late NEW must not reopen it) and,
    # for a SELL, that its position update is still to come (the entry lock is held meanwhile) ...
    assert f"{BTC}:987654" in engine.closed_order_keys
    assert engine.unconfirmed_fills == {BTC: engine.now_ms}
    # ... and nothing else changes.
    account = ("closed_order_keys", "unconfirmed_fills")
    assert {k: v for k, v in after.items() if k not in account} == {
        k: v for k, v in before.items() if k not in account
    }
    assert engine.symbols[BTC].position() == D("4.950")


def test_unknown_buy_fill_while_a_stop_is_open_waits_for_the_stop_update() -> None:
    runner = _phase1()
    engine = runner.engine
    _step(runner, 3, mark={BTC: "100.0"})
    _step(runner, 4, risk={"id": 2001, "symbol": BTC})  # R06: PnL > 0: breakeven stop + TP
    model = engine.symbols[BTC]
    assert [o.leg for o in model.open_orders()] == ["BE_STOP", "TP"]
    child = _update(runner, "autoclose-55", "FILLED", "4.950", last="4.950", side="BUY")
    out = engine.handle(child)
    assert out == [
        cmd.Log(kind="foreign_order", symbol=BTC, reason="FILLED", data=(("cid", "autoclose-55"),))
    ]
    assert model.orphan_updates == [child]
    assert model.position() == D("4.950")
    assert engine.state_of(BTC) == "PHASE1"


def test_duplicated_partial_fill_counts_once() -> None:
    runner = _entry_order()
    engine = runner.engine
    fill = _update(runner, ENTRY_CID, "PARTIALLY_FILLED", "2.000", last="2.000")
    first = engine.handle(fill)
    assert _order_commands(first) == []
    assert engine.symbols[BTC].position() == D("2.000")
    before = engine.snapshot()
    again = engine.handle(fill)
    assert again == [
        cmd.Log(
            kind="fill_ignored",
            symbol=BTC,
            reason="duplicate_or_reordered",
            data=(("cid", ENTRY_CID), ("cum", "2.000")),
        )
    ]
    assert engine.snapshot() == before
    assert engine.symbols[BTC].position() == D("2.000")
    assert engine.state_of(BTC) == "ENTRY_ORDER"


@pytest.mark.spec("W39")
def test_duplicated_full_fill_counts_once() -> None:
    runner = _entry_order()
    engine = runner.engine
    fill = _update(runner, ENTRY_CID, "FILLED", "4.950", last="4.950")
    first = engine.handle(fill)
    assert [c.dest for c in first if isinstance(c, cmd.Transitioned) and c.machine == "symbol"] == ["PHASE1"]
    before = engine.snapshot()
    again = engine.handle(fill)
    assert again == [
        cmd.Log(
            kind="fill_ignored",
            symbol=BTC,
            reason="duplicate_or_reordered",
            data=(("cid", ENTRY_CID), ("cum", "4.950")),
        )
    ]
    assert engine.snapshot() == before
    assert engine.symbols[BTC].position() == D("4.950")


@pytest.mark.spec("R02", "R04")
def test_entry_fill_racing_the_risk_cancel_is_closed_at_market() -> None:
    runner = _entry_order(mark="101.5")  # the mark stays above the 101.0 entry: PnL < 0
    engine = runner.engine
    runner.now_ms = T0_MS + 3000
    out = engine.handle(_risk_message(runner, 2001))
    assert _order_commands(out) == [cmd.CancelOrder(symbol=BTC, client_order_id=ENTRY_CID)]
    # The venue filled the entry before our cancel reached it; the fill is reported first.
    out = engine.handle(_update(runner, ENTRY_CID, "FILLED", "4.950", last="4.950"))
    assert _order_commands(out) == [
        cmd.PlaceOrder(
            symbol=BTC,
            client_order_id="sf1001-CL1-BTCUSDT",
            leg="CLOSE",
            side="BUY",
            order_type="MARKET",
            quantity=D("4.950"),
            reduce_only=True,
        )
    ]
    assert engine.state_of(BTC) == "EXITING"
    assert engine.symbols[BTC].position() == D("4.950")
    # The cancel then answers "already filled": nothing more to do.
    out = engine.handle(
        ev.CancelResult(
            now_ms=runner.now_ms, symbol=BTC, client_order_id=ENTRY_CID, ok=False, gone=True, code=-2011
        )
    )
    assert _order_commands(out) == []
    assert engine.state_of(BTC) == "EXITING"


@pytest.mark.spec("G04")
def test_entry_fill_reported_after_the_cancel_was_confirmed_is_not_forgotten() -> None:
    """The venue filled 2.000 of the entry, then our R02 cancel succeeded; the REST answer of the
    cancel arrives before the user stream's fill. The short position exists on the account."""
    runner = _entry_order()
    engine = runner.engine
    runner.now_ms = T0_MS + 3000
    out = engine.handle(_risk_message(runner, 2001))
    assert _order_commands(out) == [cmd.CancelOrder(symbol=BTC, client_order_id=ENTRY_CID)]
    out = engine.handle(ev.CancelResult(now_ms=runner.now_ms, symbol=BTC, client_order_id=ENTRY_CID, ok=True))
    assert engine.state_of(BTC) == "IDLE"
    out = engine.handle(_update(runner, ENTRY_CID, "CANCELED", "2.000", last="2.000"))
    out += engine.handle(
        ev.PositionChanged(now_ms=runner.now_ms, symbol=BTC, amount=D("-2.000"), entry_price=D("101.0"))
    )
    # G04: a held position outranks everything. Our own fill must not vanish silently: either the
    # symbol is managed again (and closed: the risk signal asked for it) or the operator is alerted.
    alerted = [c for c in out if isinstance(c, cmd.Notify) and c.symbol == BTC]
    closing = [c for c in out if isinstance(c, cmd.PlaceOrder) and c.symbol == BTC and c.side == "BUY"]
    assert alerted or closing, [render(c) for c in out]


@pytest.mark.spec("N-21")
@pytest.mark.parametrize(
    ("status", "cum"),
    [("NEW", "0"), ("PARTIALLY_FILLED", "2.000")],
)
def test_update_older_than_filled_changes_nothing(status: str, cum: str) -> None:
    runner = _phase1()
    engine = runner.engine
    before = engine.snapshot()
    locks = _locks(engine)
    out = engine.handle(_update(runner, ENTRY_CID, status, cum))
    assert out == [
        cmd.Log(
            kind="fill_ignored",
            symbol=BTC,
            reason="duplicate_or_reordered",
            data=(("cid", ENTRY_CID), ("cum", cum)),
        )
    ]
    model = engine.symbols[BTC]
    assert model.orders[ENTRY_CID].status == "FILLED"
    assert model.position() == D("4.950")
    assert engine.state_of(BTC) == "PHASE1"
    assert _locks(engine) == locks
    # The stale update must not resurrect the filled order as an open entry order of the account
    # (N-21): that would keep the entry lock on after the position is gone.
    assert engine.account_entry_orders == {}
    assert engine.snapshot() == before


@pytest.mark.spec("G01", "N-21")
def test_entry_lock_clears_after_a_stale_new_and_the_tp_exit() -> None:
    runner = _phase1()
    engine = runner.engine
    engine.handle(_update(runner, ENTRY_CID, "NEW", "0"))
    _step(runner, 5, mark={BTC: "96.09"})
    _step(runner, 6, fill={"cid": TP_CID})
    assert engine.state_of(BTC) == "IDLE"
    assert engine.account_positions == {}
    assert engine.lock_state("entry_lock") == "GLOBAL_IDLE"


# ---------------------------------------------------------------------------------------------
# Algo updates, cancel results, messages and prepare results nobody asked for
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["NEW", "TRIGGERED", "FINISHED", "CANCELED"])
def test_algo_update_for_an_unknown_algo_id_is_ignored(status: str) -> None:
    runner = _phase1()
    engine = runner.engine
    before = engine.snapshot()
    out = engine.handle(
        ev.AlgoOrderUpdated(
            now_ms=_now(engine),
            symbol=BTC,
            client_algo_id="sf1001-MD4-BTCUSDT",
            algo_id=424242,
            status=status,  # type: ignore[arg-type]
            actual_order_id=515151,
        )
    )
    assert out == [
        cmd.Log(kind="late_algo_update", symbol=BTC, reason=status, data=(("cid", "sf1001-MD4-BTCUSDT"),))
    ]
    assert engine.snapshot() == before
    assert engine.state_of(BTC) == "PHASE1"


@pytest.mark.parametrize(("ok", "code"), [(True, None), (False, -1001)])
def test_cancel_result_for_an_unknown_order_is_ignored(ok: bool, code: int | None) -> None:
    runner = _phase1()
    engine = runner.engine
    before = engine.snapshot()
    out = engine.handle(
        ev.CancelResult(
            now_ms=_now(engine), symbol=BTC, client_order_id="sf1001-BE3-BTCUSDT", ok=ok, code=code
        )
    )
    assert out == [
        cmd.Log(
            kind="cancel_result_ignored",
            symbol=BTC,
            reason="unknown_order",
            data=(("cid", "sf1001-BE3-BTCUSDT"),),
        )
    ]
    assert engine.snapshot() == before


@pytest.mark.spec("N-04")
@pytest.mark.parametrize(
    "text",
    [
        "🔥 실시간 주도 마켓 분석 (ETH)\n\n⏱️Binance 펀딩비 및 카운트다운 : -0.0250% / 01:23:45 (4h)\n\n"
        "🥇지난 24H 등락률 및 순위 : +12.34% / (상승) 상위 11위\n\n🏷️카테고리 : AI",
        RISK_TEMPLATE.format(symbol=BTC),
    ],
    ids=["leading", "risk"],
)
def test_message_from_a_foreign_chat_is_ignored(text: str) -> None:
    runner = _monitoring()
    engine = runner.engine
    before = engine.snapshot()
    out = engine.handle(
        ev.MessageReceived(
            now_ms=_now(engine),
            chat_id=-100555,
            message_id=999_999,
            telegram_date_ms=_now(engine) - 1000,
            parsed=parse_message(text),
            symbol_info=runner.venue.symbols.get("ETHUSDT"),
        )
    )
    assert out == [
        cmd.Log(kind="message_ignored", symbol=None, reason="foreign_chat", data=(("chat_id", "-100555"),))
    ]
    assert engine.snapshot() == before
    assert engine.state_of(BTC) == "MONITORING"


def test_prepare_result_while_monitoring_is_unexpected() -> None:
    runner = _monitoring()
    engine = runner.engine
    before = engine.snapshot()
    out = engine.handle(
        ev.OrderPrepared(
            now_ms=_now(engine),
            symbol=BTC,
            leg="ENTRY1",
            ok=True,
            position_mode="HEDGE",
            wallet_balance=D("5000"),
            available_balance=D("5000"),
        )
    )
    assert out == [_anomaly("unexpected_prepare_result", BTC, "ENTRY1")]
    assert engine.snapshot() == before
    assert engine.position_mode is None


def test_second_prepare_result_for_the_same_entry_places_nothing() -> None:
    runner = _entry_order()
    engine = runner.engine
    before = engine.snapshot()
    out = engine.handle(
        ev.OrderPrepared(
            now_ms=_now(engine),
            symbol=BTC,
            leg="ENTRY1",
            ok=True,
            position_mode="ONE_WAY",
            wallet_balance=D("1000"),
            available_balance=D("1000"),
        )
    )
    assert out == [_anomaly("unexpected_prepare_result", BTC, "ENTRY1")]
    assert engine.snapshot() == before


def test_prepare_result_for_a_second_entry_nobody_asked_for() -> None:
    runner = _phase1()
    engine = runner.engine
    before = engine.snapshot()
    out = engine.handle(
        ev.OrderPrepared(
            now_ms=_now(engine),
            symbol=BTC,
            leg="ENTRY2",
            ok=True,
            position_mode="ONE_WAY",
            wallet_balance=D("1000"),
            available_balance=D("500"),
        )
    )
    assert out == [_anomaly("unexpected_prepare_result", BTC, "ENTRY2")]
    assert engine.snapshot() == before
    assert engine.state_of(BTC) == "PHASE1"


def test_an_event_type_the_engine_does_not_know_is_an_anomaly() -> None:
    runner = _phase1()
    engine = runner.engine
    before = engine.snapshot()
    out = engine.handle(ev.Event(now_ms=_now(engine)))
    assert out == [_anomaly("unknown_event", None, "Event")]
    assert engine.snapshot() == before


@pytest.mark.spec("N-28")
def test_a_fill_pushed_before_the_recovery_snapshot_is_left_to_the_snapshot() -> None:
    """The entry fills while the daemon restarts and its push is handled before the exchange
    snapshot: the symbol is not rebuilt yet, so the fill must not be taken for a fill after a
    cancel (which would close a good short at market). The snapshot then shows the short."""
    runner = _entry_order()
    runner.now_ms = T0_MS + 3000
    (recovery,) = runner.step_events({"restart": True})
    engine = runner.engine
    assert cmd.QueryExchange(purpose="recovery") in engine.handle(recovery)
    pushed = list(runner.step_events({"fill": {"cid": ENTRY_CID}}))
    assert [type(e) for e in pushed] == [ev.OrderUpdated, ev.PositionChanged]
    out = [c for e in pushed for c in engine.handle(e)]
    assert _order_commands(out) == []
    assert [c for c in out if isinstance(c, cmd.Log)] == [
        cmd.Log(kind="fill_deferred", symbol=BTC, reason="recovery_snapshot", data=(("cid", ENTRY_CID),))
    ]
    assert engine.state_of(BTC) == "IDLE"
    # The snapshot (asked again 5 s later) rebuilds PHASE1 from the short.
    at = T0_MS + 8000
    mark = ev.MarkPriceTick(now_ms=at, symbol=BTC, price=D("100.9"), event_time_ms=at)
    out = runner.feed([ev.Tick(now_ms=at), mark, ev.Tick(now_ms=at)])
    assert engine.state_of(BTC) == "PHASE1"
    assert engine.symbols[BTC].position() == D("4.950")
    assert _order_commands(out) == []  # no close at market; the TP waits for its trigger


def _manual_market_fill(runner: Runner, symbol: str = "ETHUSDT") -> ev.OrderUpdated:
    return ev.OrderUpdated(
        now_ms=runner.now_ms,
        symbol=symbol,
        client_order_id="web_manual_mkt",
        order_id=555,
        side="SELL",
        order_type="MARKET",
        status="FILLED",
        price=D(0),
        orig_qty=D("1.00"),
        cum_qty=D("1.00"),
        last_qty=D("1.00"),
        last_price=D("2000.00"),
        avg_price=D("2000.00"),
    )


@pytest.mark.spec("G01", "N-21", "W46")
def test_a_manual_market_fill_locks_entries_before_its_position_update_arrives() -> None:
    """A manual MARKET sell is pushed as NEW then FILLED, and its ACCOUNT_UPDATE comes after: between
    the two neither an open order nor a position holds the entry lock. A Tick landing there must not
    let a monitored symbol enter."""
    runner = _monitoring()
    engine = runner.engine
    runner.now_ms = T0_MS + 1000
    out = engine.handle(_manual_market_fill(runner))
    assert _locks(engine)["entry_lock"] == "GLOBAL_LOCKED"
    locked = next(c for c in out if isinstance(c, cmd.Transitioned) and c.machine == "entry_lock")
    assert locked.reason == "fill on ETHUSDT awaiting its position update"
    assert engine.state_of(BTC) == "IDLE"  # W46: monitoring dropped by the lock
    # The BTC mark crosses the trigger on a Tick before the position update: nothing is ordered.
    out = engine.handle(
        ev.MarkPriceTick(now_ms=runner.now_ms, symbol=BTC, price=D("100.9"), event_time_ms=runner.now_ms)
    )
    out += engine.handle(ev.Tick(now_ms=runner.now_ms + 500))
    assert _order_commands(out) == []
    # The position update takes over; the lock stays until the position is gone.
    out = engine.handle(
        ev.PositionChanged(
            now_ms=runner.now_ms + 600, symbol="ETHUSDT", amount=D("-1.00"), entry_price=D("2000")
        )
    )
    assert engine.unconfirmed_fills == {} and _locks(engine)["entry_lock"] == "GLOBAL_LOCKED"
    engine.handle(
        ev.PositionChanged(now_ms=runner.now_ms + 900, symbol="ETHUSDT", amount=D(0), entry_price=D(0))
    )
    assert _locks(engine)["entry_lock"] == "GLOBAL_IDLE"


@pytest.mark.spec("N-21")
def test_a_fill_whose_position_update_never_comes_holds_the_lock_only_for_the_grace() -> None:
    runner = _monitoring()
    engine = runner.engine
    runner.now_ms = T0_MS + 1000
    engine.handle(_manual_market_fill(runner))
    assert engine.next_deadline_ms() is not None and engine.next_deadline_ms() <= T0_MS + 3000
    engine.handle(ev.Tick(now_ms=T0_MS + 2999))
    assert _locks(engine)["entry_lock"] == "GLOBAL_LOCKED"
    out = engine.handle(ev.Tick(now_ms=T0_MS + 3000))  # position_sync_grace_seconds = 2
    assert _locks(engine)["entry_lock"] == "GLOBAL_IDLE" and engine.unconfirmed_fills == {}
    assert [c.reason for c in out if isinstance(c, cmd.Transitioned)] == [
        "no position and no open entry order"
    ]
    # A duplicate of the same fill does not lock again.
    engine.handle(_manual_market_fill(runner))
    assert _locks(engine)["entry_lock"] == "GLOBAL_IDLE"


@pytest.mark.parametrize(
    ("cid", "kind"),
    [("sf1001-MD1-BTCUSDT", "late_algo_update"), ("manual-stop-1", "foreign_algo_order")],
)
def test_an_untracked_algo_update_is_named_ours_or_foreign_by_its_id(cid: str, kind: str) -> None:
    """#13 problem 13: the decision log called our own MDD stop a ``foreign_algo_order``."""
    runner = _phase1()
    engine = runner.engine
    out = engine.handle(
        ev.AlgoOrderUpdated(
            now_ms=_now(engine), symbol="ETHUSDT", client_algo_id=cid, algo_id=9, status="CANCELED"
        )
    )
    assert out == [cmd.Log(kind=kind, symbol="ETHUSDT", reason="CANCELED", data=(("cid", cid),))]


# ---------------------------------------------------------------------------------------------
# Found by the exhaustive enumeration (tests/test_enumeration.py)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [-4116, -2022, -1001])
def test_a_refusal_of_an_entry_the_venue_reported_live_changes_nothing(code: int) -> None:
    """The venue's NEW push came first (or a resend met the original, D-26): a refusal answered
    after it is moot. Before, it raised IllegalOrderStep inside the engine (refused from NEW): a
    critical engine error and a rebuild from the exchange for a contradiction the venue can produce."""
    runner = _entry_order()
    engine = runner.engine
    before = engine.snapshot()
    out = engine.handle(
        ev.OrderRejected(
            now_ms=_now(engine), symbol=BTC, client_order_id=ENTRY_CID, code=code, message="refused",
            retryable=code == -1001, category="retry" if code == -1001 else "rejected",
        )
    )  # fmt: skip
    assert [render(c) for c in out if isinstance(c, cmd.Log) and c.kind != "order_failed"] == [
        f"Log(kind=order_failure_moot symbol={BTC} reason=NEW data=cid={ENTRY_CID})"
    ]
    assert _order_commands(out) == []
    assert not [c for c in out if isinstance(c, cmd.Notify)]
    assert engine.symbols[BTC].orders[ENTRY_CID].status == "NEW"
    assert engine.snapshot() == before


def test_a_failed_query_answer_nobody_asked_for_keeps_an_integer_schedule() -> None:
    """An OrderResolved 'failed' for an UNKNOWN order the engine had not queried yet (attempts 0):
    the next query was due at now + 500.0 ms, a float the snapshot could not encode (the daemon
    saves a snapshot after each event). It is due after the first delay, an integer."""
    engine = _monitoring().engine
    now = _now(engine) + 1_000
    engine.handle(ev.MarkPriceTick(now_ms=now, symbol=BTC, price=D("100.9"), event_time_ms=now))
    engine.handle(ev.Tick(now_ms=now))  # W17-2: the entry trigger fires, the setup is asked for
    placed = engine.handle(
        ev.OrderPrepared(
            now_ms=now, symbol=BTC, leg="ENTRY1", ok=True, position_mode="ONE_WAY",
            wallet_balance=D(1000), available_balance=D(1000),
        )
    )  # fmt: skip
    assert [c.client_order_id for c in placed if isinstance(c, cmd.PlaceOrder)] == [ENTRY_CID]
    engine.handle(
        ev.OrderOutcomeUnknown(
            now_ms=now, symbol=BTC, client_order_id=ENTRY_CID, resolve_after_ms=now + 5_000
        )
    )
    order = engine.symbols[BTC].orders[ENTRY_CID]
    assert (order.status, order.resolve_attempts) == ("UNKNOWN", 0)
    engine.handle(
        ev.OrderResolved(now_ms=now, symbol=BTC, client_order_id=ENTRY_CID, outcome="failed", message="503")
    )
    assert order.resolve_at_ms == now + 1_000
    assert type(order.resolve_at_ms) is int
    assert Engine.restore(engine.snapshot()).snapshot() == engine.snapshot()


def test_a_stop_the_venue_keeps_ending_is_placed_again_four_times_then_told_missing() -> None:
    """D-69: a protective stop ended outside shortfsm is placed again, but a venue that ends every
    one is not fed forever: after the fifth generation a person is told the position has no stop."""
    runner = Runner({**DOC, "venue": {**DOC["venue"], "available": "400"}})
    for at_s, step in enumerate(
        [
            {"leading": {"id": 1001, "ticker": "BTC"}},
            {"mark": {BTC: "101"}},
            {"fill": {"leg": "ENTRY1"}},
            {"mark": {BTC: "116.1"}},
            {"fill": {"leg": "ENTRY2"}},
        ]
    ):
        _step(runner, at_s, **step)
    assert runner.engine.state_of(BTC) == "PHASE2"
    notes: list[str] = []
    for generation in range(1, 6):
        out = _step(runner, 10 + generation, venue_cancel={"cid": f"sf1001-MD{generation}-BTCUSDT"})
        notes += [c.kind for c in out if isinstance(c, cmd.Notify)]
        placed = [c.client_algo_id for c in out if isinstance(c, cmd.PlaceAlgoOrder)]
        assert placed == ([f"sf1001-MD{generation + 1}-BTCUSDT"] if generation < 5 else [])
    assert notes == ["stop_replaced"] * 4 + ["stop_not_replaced"]
    assert runner.engine.state_of(BTC) == "PHASE2"
