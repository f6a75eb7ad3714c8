"""The operator's flatten as the engine sees it (D-63): between ``FlattenStarted`` and
``FlattenFinished`` the symbols the engine holds are the operator's to close. Driven through the
property harness's engine and venue double; the operator's cancels and close are played on the
double as the daemon's ``flatten_account`` does them."""

from __future__ import annotations

from decimal import Decimal

from test_properties import Harness

from fsm import events as ev
from fsm import rules
from fsm.journal import decode_event, encode_event

BTC = "BTCUSDT"


def _phase1_with_its_tp() -> Harness:
    """BTCUSDT short in PHASE1 with its TP live (the shape of test_attack5's venue-expired TP)."""
    harness = Harness(mode="conservative", position_mode="ONE_WAY")
    harness.run(
        [("advance", 40, 24, 0), ("advance", 36, 54, 0), ("advance", 19, 58, 0), ("advance", 23, 37, 0)]
    )
    assert harness.engine.symbols[BTC].state == "PHASE1"
    assert _live(harness) == {"TP"}
    return harness


def _live(harness: Harness) -> set[str]:
    return {
        o.leg
        for o in harness.runner.venue.orders.values()
        if o.symbol == BTC and o.status in ("NEW", "PARTIALLY_FILLED")
    }


def _now(harness: Harness, seconds: float = 0) -> int:
    harness.clock_ms += int(seconds * 1000)
    harness.runner.now_ms = harness.clock_ms
    return harness.clock_ms


def _operator_cancels_everything(harness: Harness) -> list[str]:
    """flatten_account's first half on the double: every open order of ours cancelled."""
    cids = [cid for cid, o in harness.runner.venue.orders.items() if o.status in ("NEW", "PARTIALLY_FILLED")]
    for cid in cids:
        harness.feed(harness.runner.step_events({"venue_cancel": {"cid": cid, "status": "CANCELED"}}))
    return cids


def _ticks(harness: Harness, seconds: int) -> None:
    runner = harness.runner
    for _ in range(seconds):
        _now(harness, 1)
        harness.feed(runner.step_events({"mark": {BTC: str(runner.venue.marks[BTC])}, "tick": True}))


def _operator_close(harness: Harness, price: str) -> tuple[str, Decimal, ev.OrderUpdated]:
    """flatten_account's close on the double: the position goes to 0; its fill report is returned."""
    now = _now(harness, 0.1)
    amount, _ = harness.runner.venue.positions[BTC]
    harness.runner.venue.positions[BTC] = (Decimal(0), Decimal(0))
    cid = rules.flatten_client_order_id(BTC, now)
    report = ev.OrderUpdated(
        now_ms=now, symbol=BTC, client_order_id=cid, order_id=9_000_001, side="BUY", order_type="MARKET",
        status="FILLED", price=Decimal(0), orig_qty=-amount, cum_qty=-amount, last_qty=-amount,
        last_price=Decimal(price), avg_price=Decimal(price), trade_id=77, reduce_only=True,
        commission=Decimal("0.02"),
    )  # fmt: skip
    return cid, -amount, report


def _notes(harness: Harness, kind: str) -> list[str]:
    return [r for r in harness.rendered if r.startswith("Notify(") and f"kind={kind} " in r]


def _placed(harness: Harness, since: int) -> list[str]:
    return [r for r in harness.rendered[since:] if r.startswith(("PlaceOrder(", "PlaceAlgoOrder("))]


def test_the_operators_cancel_arms_nothing_and_its_close_is_booked_from_the_fill_report() -> None:
    """Before D-63 the TP the flatten cancelled was read as "cancelled by the venue" and armed again:
    with the mark at the TP threshold a new TP went out while the flatten was closing the short."""
    harness = _phase1_with_its_tp()
    since = len(harness.rendered)
    harness.feed([ev.FlattenStarted(now_ms=_now(harness), request_id="flatten-1")])
    assert harness.engine.symbols[BTC].state == "EXITING"
    assert _operator_cancels_everything(harness) == ["sf1001-TP1-BTCUSDT"]
    _ticks(harness, 8)  # the mark stays at the TP threshold; the five-second rule's time passes
    assert _placed(harness, since) == []
    cid, qty, report = _operator_close(harness, "99.5")
    harness.feed(
        [
            report,
            ev.PositionChanged(now_ms=report.now_ms, symbol=BTC, amount=Decimal(0), entry_price=Decimal(0)),
        ]
    )
    model = harness.engine.symbols.get(BTC)
    assert model is None or model.state == "IDLE"
    (note,) = _notes(harness, "position_closed")
    assert "BTCUSDT closed (operator flatten)" in note and "(fees 0.0200)" in note
    harness.feed([ev.FlattenFinished(now_ms=_now(harness, 0.1), cancelled=("sf1001-TP1-BTCUSDT",),
                                     closed=((BTC, cid, qty, Decimal("99.5")),))])  # fmt: skip
    assert _placed(harness, since) == []
    assert [r for r in harness.rendered[since:] if "kind=unknown_order" in r or "foreign_order" in r] == []


def test_a_close_whose_report_never_came_is_booked_from_the_venues_answer() -> None:
    harness = _phase1_with_its_tp()
    harness.feed([ev.FlattenStarted(now_ms=_now(harness))])
    cancelled = _operator_cancels_everything(harness)
    cid, qty, report = _operator_close(harness, "99.5")  # its report is lost
    since = len(harness.rendered)
    harness.feed(
        [
            ev.FlattenFinished(
                now_ms=_now(harness, 0.1),
                cancelled=tuple(cancelled),
                closed=((BTC, cid, qty, Decimal("99.5")),),
            )
        ]
    )
    model = harness.engine.symbols.get(BTC)
    assert model is None or model.state == "IDLE"
    assert _placed(harness, since) == []
    (note,) = _notes(harness, "position_closed")
    assert "BTCUSDT closed (operator flatten)" in note
    harness.feed([report])  # the report arrives late: nothing is booked twice
    assert len(_notes(harness, "position_closed")) == 1
    assert _placed(harness, since) == []


def test_what_the_flatten_left_open_the_engine_closes() -> None:
    """The flatten's close was refused (or it failed before acting): the short is not left behind
    with its exits cancelled; the engine closes it at market and says so."""
    harness = _phase1_with_its_tp()
    harness.feed([ev.FlattenStarted(now_ms=_now(harness))])
    cancelled = _operator_cancels_everything(harness)
    _ticks(harness, 3)
    since = len(harness.rendered)
    position = harness.engine.symbols[BTC].position()
    harness.feed([ev.FlattenFinished(now_ms=_now(harness, 0.1), cancelled=tuple(cancelled))])
    closes = _placed(harness, since)
    assert len(closes) == 1 and "leg=CLOSE" in closes[0] and f"quantity={position}" in closes[0]
    (note,) = _notes(harness, "flatten")
    assert f"the flatten left {position} open; the engine closes it at market" in note
    assert "severity=critical" in note


def test_an_order_the_flatten_did_not_list_is_cancelled_by_the_engine() -> None:
    """An order accepted after the flatten read the venue's open orders is nobody's to cancel but
    ours: once the operator's close has made the symbol flat, the engine cancels it, once."""
    harness = _phase1_with_its_tp()
    harness.feed([ev.FlattenStarted(now_ms=_now(harness))])
    cid, qty, report = _operator_close(harness, "99.5")
    since = len(harness.rendered)
    harness.feed([report])
    harness.feed([ev.FlattenFinished(now_ms=_now(harness, 0.1), closed=((BTC, cid, qty, Decimal("99.5")),))])
    assert [r for r in harness.rendered[since:] if r.startswith("Cancel")] == [
        "CancelOrder(symbol=BTCUSDT client_order_id=sf1001-TP1-BTCUSDT)"
    ]
    assert _live(harness) == set()
    model = harness.engine.symbols.get(BTC)
    assert model is None or model.state == "IDLE"


def test_the_flatten_events_survive_the_journal() -> None:
    for event in (
        ev.FlattenStarted(now_ms=1, request_id="flatten-1-abcdef"),
        ev.FlattenFinished(
            now_ms=2,
            request_id="flatten-1-abcdef",
            cancelled=("sf1001-TP1-BTCUSDT",),
            closed=((BTC, "flat-1-BTCUSDT", Decimal("0.120"), Decimal("99.50")),),
        ),
    ):
        assert decode_event(encode_event(event)) == event


def test_only_the_flattens_own_client_id_is_taken_for_its_close() -> None:
    assert rules.flatten_client_order_id(BTC, 1796416499965) == "flat-1796416499965-BTCUSDT"
    assert rules.is_flatten_close("flat-1796416499965-BTCUSDT", BTC)
    assert not rules.is_flatten_close("flat-1796416499965-ETHUSDT", BTC)
    assert not rules.is_flatten_close("flat-x-BTCUSDT", BTC)
    assert not rules.is_flatten_close("web_flat-1-BTCUSDT", BTC)
