"""Attack: a hostile exchange, through the real daemon against binance/sim on loopback.

Every test drives the whole daemon (``runtime_kit``) and asserts what a trader needs on the venue:
the exact orders, nothing of ours left live once flat, no duplicate client id, no close beyond the
position, and fills booked once."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import runtime_kit as kit

from binance.sim.server import RestFault

D = Decimal
ETH_LEADING = (1000, kit.ENTRY_CHAT, 1001, kit.LEADING.format(ticker="ETH"))
RISK_ETH = kit.RISK.format(symbol="ETHUSDT")
UNKNOWN_2011 = '{"code":-2011,"msg":"Unknown order sent."}'

W56_PATH = kit.PricePath(
    base={"ETHUSDT": D("3500.00")},
    points=kit.points(
        [
            (3, "ETHUSDT", "3532.00"),
            (5, "ETHUSDT", "3536.00"),
            (8, "ETHUSDT", "4062.00"),
            (10, "ETHUSDT", "4066.00"),
            (13, "ETHUSDT", "3800.00"),
            (16, "ETHUSDT", "3759.00"),
        ]
    ),
)


def live(exchange: Any) -> list[str]:
    """Client ids of every order and algo order of ours still working on the venue."""
    orders = [o.client_id for o in exchange.orders.values() if o.is_open]
    algos = [a.client_algo_id for a in exchange.algos.values() if a.status in ("NEW", "TRIGGERING")]
    return orders + algos


async def settle(cond: Any, run: kit.Run, venue: kit.Venue, timeout: float = 8.0) -> None:
    """``kit.wait_until``, but a timeout says what the daemon and the venue were left with."""
    try:
        await kit.wait_until(cond, timeout)
    except TimeoutError:
        await run.stop()
        raise AssertionError(
            f"transitions: {run.seen.transitions()}\norders: {kit.venue_orders(venue.exchange)}\n"
            f"algos: {kit.venue_algos(venue.exchange)}\n"
            f"position: {venue.exchange.positions.get(('ETHUSDT', 'BOTH'))}"
        ) from None


def flat(exchange: Any) -> bool:
    pos = exchange.positions.get(("ETHUSDT", "BOTH"))
    return pos is None or pos.amount == 0


# ---------------------------------------------------------------------------------------------
# Cancels answered "-2011 Unknown order sent." while the order is still live (real answers: the
# venue says so of an order already gone; a hostile or lagging venue says it of a live one)
# ---------------------------------------------------------------------------------------------


def test_mdd_stop_cancel_answered_2011_while_still_live_is_not_left_on_the_venue(tmp_path: Path) -> None:
    """W56 / R15 / real answers (-2011 on algo cancel). The breakeven limit fills; the OCO cancel of
    the MDD stop is answered -2011 "Unknown order sent." while the stop is still NEW. "Already gone"
    must be checked by querying the algo order: once flat, no stop of ours may stay on the venue
    (the next short on ETHUSDT would be closed by it, or refused -4130)."""
    feed = kit.write_feed(tmp_path, [ETH_LEADING])

    async def scenario() -> None:
        async with kit.Venue(W56_PATH) as venue:
            venue.harness.venue.faults.add(
                RestFault("DELETE", "/fapi/v1/algoOrder", "status", status=400, body=UNKNOWN_2011)
            )
            run = await venue.start_daemon(tmp_path, feed)
            await settle(lambda: run.seen.has("entry_lock GLOBAL_LOCKED->GLOBAL_IDLE"), run, venue)
            await settle(lambda: live(venue.exchange) == [], run, venue, timeout=6)
            assert await run.stop() == 0
            assert flat(venue.exchange) and venue.harness.venue.faults.queue == []
            assert kit.venue_algos(venue.exchange) == [
                ("sf1001-MD1-ETHUSDT", "BUY", "STOP_MARKET", D("4323.10"), "CANCELED", True)
            ]

    kit.run(scenario())


def test_risk_cancel_of_the_entry_rest_answered_2011_while_live_leaves_nothing_open(tmp_path: Path) -> None:
    """W57 / R03. The entry has filled 0.500 of 1.414; the risk message's cancel of the rest is
    answered -2011 while the rest (0.914 SELL LIMIT) is still working. After the loss-cut the daemon
    says flat; the entry rest must not stay live (it would open an unmanaged short)."""
    feed = kit.write_feed(tmp_path, [ETH_LEADING, (9000, kit.RISK_CHAT, 5001, RISK_ETH)])
    path = kit.PricePath(
        base={"ETHUSDT": D("3500.00")},
        points=kit.points([(3, "ETHUSDT", "3532.00"), (5, "ETHUSDT", "3536.00"), (7, "ETHUSDT", "3545.00")]),
        fill_policies={"sf1001-E11-ETHUSDT": (D("0.500"),)},
    )

    async def scenario() -> None:
        async with kit.Venue(path) as venue:
            ex = venue.exchange
            venue.harness.venue.faults.add(
                RestFault("DELETE", "/fapi/v1/order", "status", status=400, body=UNKNOWN_2011)
            )
            run = await venue.start_daemon(tmp_path, feed)
            await settle(lambda: run.seen.has("entry_lock GLOBAL_LOCKED->GLOBAL_IDLE"), run, venue)
            await settle(lambda: live(ex) == [], run, venue, timeout=4)
            assert await run.stop() == 0
            assert flat(ex) and venue.harness.venue.faults.queue == []
            assert [(o.client_id, o.type, o.executed, o.status) for o in ex.orders.values()] == [
                ("sf1001-E11-ETHUSDT", "LIMIT", D("0.500"), "CANCELED"),
                ("sf1001-CL1-ETHUSDT", "MARKET", D("0.500"), "FILLED"),
            ]

    kit.run(scenario())


# ---------------------------------------------------------------------------------------------
# -4509 ("no position") on the MDD stop while the position is open (the venue's view lagging the fill)
# ---------------------------------------------------------------------------------------------

FLAT_4509 = (
    '{"code":-4509,"msg":"Time in Force (TIF) GTE can only be used with open positions. '
    'Please ensure that positions are available."}'
)


def test_mdd_stop_refused_4509_while_the_position_is_open_is_placed_again(tmp_path: Path) -> None:
    """W43-1 / D-33. The MDD stop is refused -4509 ("no position") while the 2.450 short is open (a
    venue whose position view lags, or lies). D-33: with the position still there it is a refusal
    like any other; the stop must be working within 3 s, and the flow must end flat with nothing
    live (found in the attack pass: the stop was never placed, PHASE2 ran with no exchange stop)."""
    feed = kit.write_feed(tmp_path, [ETH_LEADING])

    async def scenario() -> None:
        async with kit.Venue(W56_PATH) as venue:
            ex = venue.exchange
            venue.harness.venue.faults.add(
                RestFault("POST", "/fapi/v1/algoOrder", "status", status=400, body=FLAT_4509)
            )
            run = await venue.start_daemon(tmp_path, feed)
            await settle(lambda: run.daemon.engine.state_of("ETHUSDT") == "PHASE2", run, venue)
            await settle(
                lambda: any(a.status == "NEW" and a.trigger == D("4323.10") for a in ex.algos.values()),
                run,
                venue,
                timeout=3,
            )
            await settle(lambda: run.seen.has("entry_lock GLOBAL_LOCKED->GLOBAL_IDLE"), run, venue)
            assert await run.stop() == 0
            assert flat(ex) and live(ex) == []

    kit.run(scenario())


# ---------------------------------------------------------------------------------------------
# A user stream that stays connected and says nothing
# ---------------------------------------------------------------------------------------------


def test_a_user_stream_that_stays_connected_but_says_nothing_still_gets_the_position_managed(
    tmp_path: Path,
) -> None:
    """W35 / W41. Every user push is lost after the entry is accepted; the stream stays connected
    (a stalled stream, a listenKey that died without its listenKeyExpired reaching us). The mark
    crossed the entry limit at 5 s and the venue filled it; the fill must be learnt by reading the
    order back (D-42) and the TP must go out and fill (found in the attack pass: the daemon sat in
    ENTRY_ORDER and the price passed the TP with no TP on the venue)."""
    feed = kit.write_feed(tmp_path, [ETH_LEADING])
    path = kit.PricePath(
        base={"ETHUSDT": D("3500.00")},
        points=kit.points(
            [
                (3, "ETHUSDT", "3532.00"),
                (5, "ETHUSDT", "3536.00"),
                (30, "ETHUSDT", "3360.00"),
                (32, "ETHUSDT", "3358.00"),
            ]
        ),
    )

    async def scenario() -> None:
        async with kit.Venue(path) as venue:
            ex = venue.exchange
            run = await venue.start_daemon(tmp_path, feed)
            await settle(lambda: run.seen.accepted("sf1001-E11-ETHUSDT"), run, venue)
            venue.harness.venue.silence_ws("private")
            await settle(lambda: venue.at(40), run, venue, timeout=6)
            await run.stop()
            assert [(o.client_id, o.status) for o in ex.orders.values()] == [
                ("sf1001-E11-ETHUSDT", "FILLED"),
                ("sf1001-TP1-ETHUSDT", "FILLED"),
            ]
            assert flat(ex)

    kit.run(scenario())


# ---------------------------------------------------------------------------------------------
# The IP weight at 83 % for a while (another tool on the same IP): D-10 holds the entry trigger
# ---------------------------------------------------------------------------------------------

# The trigger (3531.465) is reached at 3 s and the mark stays above it; TP zone from 125 s. The
# used weight is per minute (X-MBX-USED-WEIGHT-1M): once the venue said 83 %, the pacer waits for the
# next minute, so the held entry goes out after a minute boundary (within 60 s + 3 probes).
HELD_TRIGGER_PATH = kit.PricePath(
    base={"ETHUSDT": D("3500.00")},
    points=kit.points(
        [
            (3, "ETHUSDT", "3532.00"),
            (120, "ETHUSDT", "3536.00"),
            (125, "ETHUSDT", "3360.00"),
            (130, "ETHUSDT", "3358.00"),
        ]
    ),
)


def heavy_weight(venue: kit.Venue, start_s: float, end_s: float) -> None:
    """The venue's ``X-MBX-USED-WEIGHT-1M`` reads 2,000 more (83 % of 2,400) between two venue times."""
    sim = venue.harness.venue
    real = sim._used_weight
    start, end = venue.origin + int(start_s * 1000), venue.origin + int(end_s * 1000)

    def used_weight(add: int) -> int:
        used: int = real(add)
        return used + 2000 if start <= venue.clock.now_ms() < end else used

    sim._used_weight = used_weight  # type: ignore[method-assign]


async def w55_under_heavy_weight(tmp_path: Path, start_s: float) -> Any:
    feed = kit.write_feed(tmp_path, [ETH_LEADING])
    async with kit.Venue(HELD_TRIGGER_PATH) as venue:
        heavy_weight(venue, start_s, 30)
        run = await venue.start_daemon(tmp_path, feed)
        await settle(lambda: venue.at(140), run, venue, timeout=25)
        assert await run.stop() == 0
        return venue.exchange


def test_an_entry_held_by_the_weight_pacer_goes_out_once_the_weight_falls(tmp_path: Path) -> None:
    """W50 / D-10 / D-39. The weight reads 83 % from 2 s to 30 s; the trigger comes at 3 s and stays.
    The entry must go out once the weight falls, then the TP: the W55 orders."""
    ex = kit.run(w55_under_heavy_weight(tmp_path, 2), timeout=45)
    assert [(o.client_id, o.status) for o in ex.orders.values()] == [
        ("sf1001-E11-ETHUSDT", "FILLED"),
        ("sf1001-TP1-ETHUSDT", "FILLED"),
    ]


def test_rate_limit_protection_met_at_start_lifts_once_the_weight_falls(tmp_path: Path) -> None:
    """W50 / D-10. The same, with the weight high from the daemon's start (0 s to 30 s)."""
    ex = kit.run(w55_under_heavy_weight(tmp_path, 0), timeout=45)
    assert [(o.client_id, o.status) for o in ex.orders.values()] == [
        ("sf1001-E11-ETHUSDT", "FILLED"),
        ("sf1001-TP1-ETHUSDT", "FILLED"),
    ]


def test_4130_whose_cancel_of_the_manual_stop_is_answered_2011_still_places_the_mdd_stop(
    tmp_path: Path,
) -> None:
    """W43-1 / D-33 / real answers (-4130, -2011 on algo cancel). A manual closePosition stop at 9000
    rests on ETHUSDT (from the app) when the scale-in fills; our MDD stop is refused -4130; the
    executor cancels the manual one, the venue answers -2011 although it is still NEW. An "already
    gone" must be checked by querying the algo order: the MDD stop at 4323.10 must be working 30 s
    later, without a placement loop."""
    feed = kit.write_feed(tmp_path, [ETH_LEADING])
    path = kit.PricePath(base=W56_PATH.base, points=W56_PATH.points[:4])

    async def scenario() -> None:
        async with kit.Venue(path) as venue:
            ex = venue.exchange
            sim = venue.harness.venue
            run = await venue.start_daemon(tmp_path, feed)
            await settle(lambda: run.daemon.engine.state_of("ETHUSDT") == "PHASE1", run, venue)
            ex.new_algo_order(
                {
                    "symbol": "ETHUSDT",
                    "side": "BUY",
                    "algoType": "CONDITIONAL",
                    "type": "STOP_MARKET",
                    "triggerPrice": "9000",
                    "closePosition": "true",
                    "workingType": "MARK_PRICE",
                    "clientAlgoId": "manual-app-stop",
                }
            )
            sim.faults.add(RestFault("DELETE", "/fapi/v1/algoOrder", "status", status=400, body=UNKNOWN_2011))
            await settle(lambda: venue.at(40), run, venue)
            posts = sim.requests.count(("POST", "/fapi/v1/algoOrder"))
            await run.stop()
            assert posts <= 4  # no placement loop
            assert any(a.status == "NEW" and a.trigger == D("4323.10") for a in ex.algos.values())

    kit.run(scenario())
