"""End-to-end flows through the whole daemon against the simulated venue on loopback (compressed clock):
W56, W57, the stale-price safety lock with a position, a manual order while idle, a venue that refuses
everything, and storage trouble (corrupt, missing, full)."""

from __future__ import annotations

import json
import logging
import re
from decimal import Decimal
from pathlib import Path
from typing import TypeVar

import pytest
import runtime_kit as kit

from binance.sim.server import RestFault
from fsm import commands as cmd
from fsm import events as ev
from fsm import rules
from fsm.ops.cli import main
from fsm.runtime.config import Secrets
from fsm.runtime.daemon import RunOptions, run_daemon
from fsm.runtime.store import SCHEMA_VERSION

ETH = kit.LEADING.format(ticker="ETH")
D = Decimal


C = TypeVar("C", bound=cmd.Command)


def _commands(seen: kit.Seen, kind: type[C]) -> list[C]:
    return [c for _, cs in seen.items for c in cs if isinstance(c, kind)]


# ---------------------------------------------------------------------------------------------
# W56: entry, scale-in into PHASE2, breakeven exit
# ---------------------------------------------------------------------------------------------

W56_PATH = kit.PricePath(
    base={"ETHUSDT": D("3500.00")},
    points=kit.points(
        [
            (3, "ETHUSDT", "3532.00"),  # >= 3531.465: entry SELL 1.414 @ 3535.00 (50% of 10000)
            (5, "ETHUSDT", "3536.00"),  # entry filled: PHASE1, scale-in at 3535.00 x 1.15 = 4065.25
            (8, "ETHUSDT", "4062.00"),  # >= 4061.18: second entry for 99% of availableBalance
            (10, "ETHUSDT", "4066.00"),  # second entry filled: PHASE2, MDD stop at 3759.22 x 1.15
            (13, "ETHUSDT", "3800.00"),  # <= the breakeven trigger: BE limit at the average
            (16, "ETHUSDT", "3759.00"),  # BE filled: MDD stop cancelled (OCO), flat
        ]
    ),
)


@pytest.mark.spec("W56", "W41", "W43", "W43-1", "R15")
def test_w56_entry_scale_in_phase2_breakeven_exit(tmp_path: Path) -> None:
    feed = kit.write_feed(tmp_path, [(1000, kit.ENTRY_CHAT, 1001, ETH)])

    async def scenario() -> None:
        async with kit.Venue(W56_PATH) as venue:
            run = await venue.start_daemon(tmp_path, feed)
            await kit.wait_until(lambda: run.seen.has("entry_lock GLOBAL_LOCKED->GLOBAL_IDLE"))
            assert await run.stop() == 0
            assert run.seen.transitions() == [
                "recovery_lock RECOVERING->READY",
                "ETHUSDT IDLE->MONITORING",
                "ETHUSDT MONITORING->ENTRY_ORDER",
                "entry_lock GLOBAL_IDLE->GLOBAL_LOCKED",
                "ETHUSDT ENTRY_ORDER->PHASE1",
                "ETHUSDT PHASE1->PHASE2",
                "ETHUSDT PHASE2->EXITING",
                "ETHUSDT close OPEN->CLOSING",  # the breakeven filled the position away (R15)
                "ETHUSDT EXITING->IDLE",
                "entry_lock GLOBAL_LOCKED->GLOBAL_IDLE",
            ]
            assert run.seen.triggers() == [
                "ETHUSDT setup NONE->ENTRY1",  # W24: the account is read, the entry sized
                "ETHUSDT setup ENTRY1->NONE",
                "ETHUSDT tp OFF->ARMED",  # W40: the TP goes out at its level (never reached here)
                "ETHUSDT add OFF->ARMED",  # W41
                "ETHUSDT add ARMED->OFF",  # 4062 >= 4061.18: the scale-in's setup starts
                "ETHUSDT setup NONE->ENTRY2",
                "ETHUSDT setup ENTRY2->NONE",
                "ETHUSDT tp ARMED->OFF",  # W42: PHASE2 has no TP
                "ETHUSDT be OFF->ARMED",  # W43
                "ETHUSDT be ARMED->OFF",  # the breakeven limit goes out
            ]
            assert kit.venue_orders(venue.exchange) == [
                (
                    "sf1001-E11-ETHUSDT",
                    "SELL",
                    "LIMIT",
                    D("3535.00"),
                    D("1.414"),
                    "FILLED",
                    False,
                    D("1.414"),
                ),
                (
                    "sf1001-E21-ETHUSDT",
                    "SELL",
                    "LIMIT",
                    D("4065.25"),
                    D("1.036"),
                    "FILLED",
                    False,
                    D("1.036"),
                ),
                ("sf1001-BE1-ETHUSDT", "BUY", "LIMIT", D("3759.22"), D("2.450"), "FILLED", True, D("2.450")),
            ]
            # W43-1: the MDD stop goes through the algo API once, when the scale-in is fully filled.
            assert kit.venue_algos(venue.exchange) == [
                ("sf1001-MD1-ETHUSDT", "BUY", "STOP_MARKET", D("4323.10"), "CANCELED", True)
            ]
            algo = next(iter(venue.exchange.algos.values()))
            assert (algo.working_type, algo.position_side) == ("MARK_PRICE", "BOTH")
            assert venue.exchange.positions[("ETHUSDT", "BOTH")].amount == 0
            placed = _commands(run.seen, cmd.PlaceAlgoOrder)
            assert [(c.client_algo_id, c.trigger_price) for c in placed] == [
                ("sf1001-MD1-ETHUSDT", D("4323.10"))
            ]

    kit.run(scenario())
    assert kit.rows(tmp_path, "SELECT client_order_id, leg, status FROM orders ORDER BY created_ms, 1") == [
        ("sf1001-E11-ETHUSDT", "ENTRY1", "FILLED"),
        ("sf1001-E21-ETHUSDT", "ENTRY2", "FILLED"),
        ("sf1001-MD1-ETHUSDT", "MDD", "CANCELED"),
        ("sf1001-BE1-ETHUSDT", "BE", "FILLED"),
    ]
    assert kit.rows(tmp_path, "SELECT client_order_id, qty, price FROM fills ORDER BY now_ms") == [
        ("sf1001-E11-ETHUSDT", "1.414", "3535.00"),
        ("sf1001-E21-ETHUSDT", "1.036", "4065.25"),
        ("sf1001-BE1-ETHUSDT", "2.45", "3759.22"),
    ]
    kinds = [r[0] for r in kit.rows(tmp_path, "SELECT kind FROM alerts ORDER BY id")]
    assert kinds == ["entry_filled", "scale_in", "position_closed"]


# ---------------------------------------------------------------------------------------------
# W57: risk message while the entry is partially filled, price above the entry: loss cut
# ---------------------------------------------------------------------------------------------


@pytest.mark.spec("W57", "R03", "R04")
def test_w57_risk_during_a_partial_fill_cancels_the_rest_and_closes_at_market(tmp_path: Path) -> None:
    feed = kit.write_feed(
        tmp_path,
        [(1000, kit.ENTRY_CHAT, 1001, ETH), (9000, kit.RISK_CHAT, 5001, kit.RISK.format(symbol="ETHUSDT"))],
    )
    path = kit.PricePath(
        base={"ETHUSDT": D("3500.00")},
        # 3535.00 at 5 s, the entry's own price: an entry that reaches the venue late (a loaded machine)
        # crosses and fills at the book, which is then the same price.
        points=kit.points([(3, "ETHUSDT", "3532.00"), (5, "ETHUSDT", "3535.00"), (7, "ETHUSDT", "3545.00")]),
        fill_policies={"sf1001-E11-ETHUSDT": (D("0.500"),)},  # 0.500 of 1.414 fills, the rest never
    )

    async def scenario() -> None:
        async with kit.Venue(path) as venue:
            run = await venue.start_daemon(tmp_path, feed)
            await kit.wait_until(lambda: run.seen.has("entry_lock GLOBAL_LOCKED->GLOBAL_IDLE"))
            assert await run.stop() == 0
            assert run.seen.transitions()[1:] == [
                "ETHUSDT IDLE->MONITORING",
                "ETHUSDT MONITORING->ENTRY_ORDER",
                "entry_lock GLOBAL_IDLE->GLOBAL_LOCKED",
                "ETHUSDT close OPEN->CLOSING",  # the loss-cut is decided, then goes out
                "ETHUSDT ENTRY_ORDER->EXITING",
                "ETHUSDT EXITING->IDLE",
                "entry_lock GLOBAL_LOCKED->GLOBAL_IDLE",
            ]
            risk = [
                cs for e, cs in run.seen.items if isinstance(e, ev.MessageReceived) and e.message_id == 5001
            ]
            orders = [c for c in risk[0] if isinstance(c, (cmd.CancelOrder, cmd.PlaceOrder))]
            assert [(type(c).__name__, c.client_order_id) for c in orders] == [
                ("CancelOrder", "sf1001-E11-ETHUSDT"),  # the rest of the entry first (R03)
                ("PlaceOrder", "sf1001-CL1-ETHUSDT"),
            ]
            close = orders[1]
            assert isinstance(close, cmd.PlaceOrder)
            assert (close.side, close.order_type, close.quantity, close.reduce_only) == (
                "BUY",
                "MARKET",
                D("0.500"),
                True,
            )
            assert kit.venue_orders(venue.exchange) == [
                (
                    "sf1001-E11-ETHUSDT",
                    "SELL",
                    "LIMIT",
                    D("3535.00"),
                    D("1.414"),
                    "CANCELED",
                    False,
                    D("0.500"),
                ),
                ("sf1001-CL1-ETHUSDT", "BUY", "MARKET", D("0"), D("0.500"), "FILLED", True, D("0.500")),
            ]
            position = venue.exchange.positions[("ETHUSDT", "BOTH")]
            assert (position.amount, position.realized) == (0, D("-5.00"))  # (3535 - 3545) x 0.5

    kit.run(scenario())
    fills = kit.rows(tmp_path, "SELECT client_order_id, qty, price, realized_pnl FROM fills ORDER BY now_ms")
    assert [(cid, D(q), D(p), D(r)) for cid, q, p, r in fills] == [
        ("sf1001-E11-ETHUSDT", D("0.5"), D("3535"), D("0")),
        ("sf1001-CL1-ETHUSDT", D("0.5"), D("3545"), D("-5")),
    ]
    assert kit.rows(tmp_path, "SELECT kind, reason FROM decisions WHERE kind LIKE 'risk%' ORDER BY id") == [
        ("risk_received", "ENTRY_ORDER"),
        ("risk_pnl", "computed"),
    ]
    assert kit.rows(tmp_path, "SELECT chat_id, message_id FROM cursors ORDER BY chat_id") == [
        (kit.RISK_CHAT, 5001),
        (kit.ENTRY_CHAT, 1001),
    ]


# ---------------------------------------------------------------------------------------------
# W23-1: WS silent and REST stale with a position: safety lock, position closed at market
# ---------------------------------------------------------------------------------------------


@pytest.mark.spec("W23-1", "G03", "W22", "W23")
def test_stale_price_with_a_position_locks_and_closes_at_market(tmp_path: Path) -> None:
    feed = kit.write_feed(tmp_path, [(1000, kit.ENTRY_CHAT, 1001, ETH)])
    path = kit.PricePath(
        base={"ETHUSDT": D("3500.00")},
        points=kit.points([(3, "ETHUSDT", "3532.00"), (5, "ETHUSDT", "3536.00")]),
    )

    async def scenario() -> None:
        async with kit.Venue(path) as venue:
            run = await venue.start_daemon(tmp_path, feed)
            await kit.wait_until(lambda: run.seen.has("ETHUSDT ENTRY_ORDER->PHASE1"))
            sim = venue.harness.venue
            sim.silence_ws("market")  # connected, but no mark price any more
            for symbol in ("ETHUSDT", "BTCUSDT"):
                venue.exchange.make_premium_stale(symbol)  # premiumIndex answers with a frozen time
            silenced_at = venue.clock.now_ms()
            await kit.wait_until(lambda: run.seen.has("ETHUSDT EXITING->IDLE"))
            locked = [
                e for e, cs in run.seen.items if any(getattr(c, "dest", "") == "PRICE_STALE" for c in cs)
            ]
            last_ws = max(
                e.now_ms for e, _ in run.seen.items if isinstance(e, ev.MarkPriceTick) and e.source == "WS"
            )
            assert len(locked) == 1 and locked[0].now_ms - last_ws >= 15_000
            assert locked[0].now_ms - silenced_at < 17_000
            assert ("GET", "/fapi/v1/premiumIndex") in sim.requests  # the REST fallback was polled (W22)
            sim.silence_ws("market", False)
            venue.exchange.stale_premium.clear()
            await kit.wait_until(lambda: run.seen.has("safety_lock PRICE_STALE->PRICE_OK"))
            # W23: the first WS message switches the source back at once.
            await kit.wait_until(
                lambda: any(getattr(c, "source", "") == "WS" for c in _commands(run.seen, cmd.UsePriceSource))
            )
            assert run.daemon.engine.state_of("ETHUSDT") == "IDLE"  # states stay reset (N-22)
            assert await run.stop() == 0
            assert run.seen.transitions()[4:] == [
                "ETHUSDT ENTRY_ORDER->PHASE1",
                "safety_lock PRICE_OK->PRICE_STALE",
                "ETHUSDT close OPEN->CLOSING",
                "ETHUSDT PHASE1->EXITING",
                "ETHUSDT EXITING->IDLE",
                "entry_lock GLOBAL_LOCKED->GLOBAL_IDLE",
                "safety_lock PRICE_STALE->PRICE_OK",
            ]
            sources = [(c.source, c.reason) for c in _commands(run.seen, cmd.UsePriceSource)]
            assert [s for s, _ in sources] == ["REST", "WS"]
            assert re.fullmatch(r"no websocket message for 50\d\d ms \(connected\)", sources[0][1])
            assert kit.venue_orders(venue.exchange) == [
                (
                    "sf1001-E11-ETHUSDT",
                    "SELL",
                    "LIMIT",
                    D("3535.00"),
                    D("1.414"),
                    "FILLED",
                    False,
                    D("1.414"),
                ),
                ("sf1001-CL1-ETHUSDT", "BUY", "MARKET", D("0"), D("1.414"), "FILLED", True, D("1.414")),
            ]
            assert venue.exchange.positions[("ETHUSDT", "BOTH")].amount == 0

    kit.run(scenario())
    severity, text = kit.rows(
        tmp_path, "SELECT severity, text FROM alerts WHERE kind = 'safety_lock' ORDER BY id"
    )[0]
    assert severity == "critical"
    # The alert says what the lock did: here it closes the one position held.
    assert re.fullmatch(
        r"safety lock on: no fresh mark price (for \d+ ms|of ETHUSDT for 15 s or more); "
        r"closing ETHUSDT at market",
        text,
    ), text
    assert ("price_source", "rest_fallback") in kit.rows(tmp_path, "SELECT kind, reason FROM decisions")


# ---------------------------------------------------------------------------------------------
# G01 / N-21: a manual order or position on the account blocks every entry
# ---------------------------------------------------------------------------------------------


@pytest.mark.spec("G01", "W36-2", "N-21")
def test_manual_order_and_position_on_the_venue_hold_the_entry_lock(tmp_path: Path) -> None:
    feed = kit.write_feed(
        tmp_path,
        [
            (6000, kit.ENTRY_CHAT, 1001, ETH),  # a manual entry order is open: dropped
            (11000, kit.ENTRY_CHAT, 1002, ETH),  # a manual short position is open: dropped
            (16000, kit.ENTRY_CHAT, 1003, ETH),  # the account is clean again: monitored, entered
        ],
    )
    path = kit.PricePath(base={"ETHUSDT": D("3500.00")}, points=kit.points([(18, "ETHUSDT", "3532.00")]))
    manual = {"symbol": "ETHUSDT", "side": "SELL", "type": "LIMIT", "timeInForce": "GTC", "quantity": "0.100"}

    async def scenario() -> None:
        async with kit.Venue(path) as venue:
            run = await venue.start_daemon(tmp_path, feed)
            await kit.wait_until(lambda: run.seen.has("recovery_lock RECOVERING->READY"))
            ex = venue.exchange
            ex.new_order({**manual, "price": "3600.00", "newClientOrderId": "web_manual_1"})  # the web UI
            await kit.wait_until(lambda: run.seen.has("entry_lock GLOBAL_IDLE->GLOBAL_LOCKED"))
            await kit.wait_until(lambda: venue.at(8))
            ex.cancel_order({"symbol": "ETHUSDT", "origClientOrderId": "web_manual_1"})
            ex.new_order({"symbol": "ETHUSDT", "side": "SELL", "type": "MARKET", "quantity": "0.100"})
            await kit.wait_until(lambda: venue.at(13))
            assert run.daemon.engine.lock_state("entry_lock") == "GLOBAL_LOCKED"
            ex.new_order(
                {
                    "symbol": "ETHUSDT",
                    "side": "BUY",
                    "type": "MARKET",
                    "quantity": "0.100",
                    "reduceOnly": "true",
                }
            )
            await kit.wait_until(lambda: run.seen.accepted("sf1003-E11-ETHUSDT"))
            assert await run.stop() == 0
            assert kit.logs(run.seen, "leading_dropped") == [
                (None, "locked:entry_lock", {}),
                (None, "locked:entry_lock", {}),
            ]
            ours = [o for o in ex.orders.values() if o.client_id.startswith("sf")]
            assert [(o.client_id, o.side, o.price, o.qty, o.status) for o in ours] == [
                ("sf1003-E11-ETHUSDT", "SELL", D("3535.00"), D("1.414"), "NEW")
            ]
            lock = [
                (c.dest, c.reason)
                for _, cs in run.seen.items
                for c in cs
                if isinstance(c, cmd.Transitioned) and c.machine == "entry_lock"
            ]
            # The manual market order is an open entry order until it fills, its fill holds the lock
            # until the position update arrives (D-25: no idle gap between the two pushes), then the
            # position holds it; our own entry takes the lock last.
            assert [re.sub(r":\d+$", ":<id>", reason) for _, reason in lock] == [
                "open entry order ETHUSDT:<id>",
                "no position and no open entry order",
                "open entry order ETHUSDT:<id>",
                "no position and no open entry order",
                "ETHUSDT entry order",
            ]
            assert [d for d, _ in lock] == ["GLOBAL_LOCKED", "GLOBAL_IDLE"] * 2 + ["GLOBAL_LOCKED"]

    kit.run(scenario())
    # Dropped messages advance the cursor but record no cooldown (N-05 step 2).
    assert kit.rows(tmp_path, "SELECT message_id FROM cursors") == [(1003,)]
    assert [r[0] for r in kit.rows(tmp_path, "SELECT symbol FROM cooldowns")] == ["ETHUSDT"]


# ---------------------------------------------------------------------------------------------
# N-28 step 3: the user stream is open before recovery reads the venue
# ---------------------------------------------------------------------------------------------


@pytest.mark.spec("N-28")
def test_recovery_reads_the_venue_only_once_the_user_stream_is_open(tmp_path: Path) -> None:
    """A fill landing after the snapshot's REST read must arrive as a push: every read of the
    recovery snapshot happens with the private WebSocket already connected."""
    feed = kit.write_feed(tmp_path, [])
    open_at_read: list[int] = []

    async def scenario() -> None:
        async with kit.Venue(W56_PATH) as venue:
            sim = venue.harness.venue
            security, handler = sim._routes[("GET", "/fapi/v1/openOrders")]

            def reading(params: dict[str, str]) -> object:
                open_at_read.append(sim.ws_connections("private"))
                return handler(params)

            sim._routes[("GET", "/fapi/v1/openOrders")] = (security, reading)
            # A slow listenKey answer (0.1 s, well within the wait): a reader that did not wait for
            # the stream would read the venue before it opened.
            sim.faults.add(RestFault(method="POST", path="/fapi/v1/listenKey", kind="slow", hang_s=0.1))
            run = await venue.start_daemon(tmp_path, feed)
            await kit.wait_until(lambda: run.seen.has("recovery_lock RECOVERING->READY"))
            assert await run.stop() == 0
            assert open_at_read == [1]
            # Opened first, so not reconciled: the snapshot is the only read of the positions.
            assert sim.requests.count(("GET", "/fapi/v3/positionRisk")) == 1

    kit.run(scenario())


@pytest.mark.spec("N-28", "R20")
def test_a_user_stream_late_for_recovery_re_reads_positions_when_it_opens(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The listenKey request fails for a while: recovery does not wait for ever, says so, and the
    stream's first connection then re-reads the positions, as after any gap."""
    caplog.set_level(logging.WARNING, logger="fsm.runtime.daemon")
    feed = kit.write_feed(tmp_path, [])

    async def scenario() -> None:
        async with kit.Venue(W56_PATH) as venue:
            sim = venue.harness.venue
            sim.faults.add(
                RestFault(method="POST", path="/fapi/v1/listenKey", kind="status", status=503, count=3)
            )
            run = await venue.start_daemon(tmp_path, feed)
            await kit.wait_until(
                lambda: run.daemon.user.connected and run.seen.has("recovery_lock RECOVERING->READY")
            )
            await kit.wait_until(lambda: sim.requests.count(("GET", "/fapi/v3/positionRisk")) >= 2)
            assert await run.stop() == 0
            listen = [i for i, r in enumerate(sim.requests) if r == ("POST", "/fapi/v1/listenKey")]
            assert len(listen) == 4  # three refused, the fourth opened the stream
            # The snapshot's read, then the re-read after the stream's late first connection.
            reads = [i for i, r in enumerate(sim.requests) if r == ("GET", "/fapi/v3/positionRisk")]
            assert len(reads) == 2 and reads[0] < listen[-1] < reads[1]

    kit.run(scenario())
    assert any("user stream not open after" in r.getMessage() for r in caplog.records)


@pytest.mark.spec("W55", "R20")
def test_an_entry_fill_missed_by_a_down_user_stream_is_read_back_with_its_trade(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The listenKey expires once the entry order is working and its renewal fails twice, so the
    user stream is down (about 15 venue seconds of back-off) when the entry fills. On reconnect the daemon
    reads the order and its trades back: the engine reaches PHASE1 from the fill itself and the
    fills table holds the venue's trade under the same key a push would have used."""
    caplog.set_level(logging.WARNING, logger="fsm.runtime.daemon")
    feed = kit.write_feed(tmp_path, [(1000, kit.ENTRY_CHAT, 1001, ETH)])
    path = kit.PricePath(
        base={"ETHUSDT": D("3500.00")},
        points=kit.points([(3, "ETHUSDT", "3532.00"), (5, "ETHUSDT", "3536.00")]),
    )
    entry = "sf1001-E11-ETHUSDT"

    async def scenario() -> None:
        async with kit.Venue(path) as venue:
            sim, ex = venue.harness.venue, venue.exchange
            run = await venue.start_daemon(tmp_path, feed)
            await kit.wait_until(lambda: run.seen.accepted(entry))
            assert not venue.at(5)
            refused = RestFault(method="POST", path="/fapi/v1/listenKey", kind="status", status=503, count=2)
            sim.faults.add(refused)
            for key in list(ex.listen_keys):
                ex.expire_listen_key(key)
            await kit.wait_until(lambda: not run.daemon.user.connected)
            await kit.wait_until(lambda: [o.status for o in ex.orders.values()] == ["FILLED"])
            assert not run.daemon.user.connected  # the fill happened with nobody listening
            await kit.wait_until(lambda: run.seen.has("ETHUSDT ENTRY_ORDER->PHASE1"))
            assert await run.stop() == 0
            trade = ex.trades[-1]
            fills = [
                (e.client_order_id, e.status, e.cum_qty, e.last_qty, e.trade_id)
                for e, _ in run.seen.items
                if isinstance(e, ev.OrderUpdated) and e.last_qty > 0
            ]
            assert fills == [(entry, "FILLED", D("1.414"), D("1.414"), trade["id"])]
            assert run.daemon.engine.symbols["ETHUSDT"].position() == D("1.414")

    kit.run(scenario())
    assert kit.rows(tmp_path, "SELECT trade_key, client_order_id, qty, price FROM fills") == [
        (f"ETHUSDT:{5_000_001}", "sf1001-E11-ETHUSDT", "1.414", "3535.00")
    ]
    # Read back once, by whichever comes first: the reconnect's gap read-back or the 15 s order watch.
    missed = "sf1001-E11-ETHUSDT FILLED, 1.414 of 1.414, filled 1.414 @ 3535.00 (trade 5000001)"
    gap = [
        r.getMessage()
        for r in caplog.records
        if r.getMessage().startswith(("user stream gap: ", "order watch: the user stream did not say: "))
    ]
    assert len(gap) == 1 and gap[0].endswith(missed), gap


# ---------------------------------------------------------------------------------------------
# A venue that refuses every request: protection, no tight loop
# ---------------------------------------------------------------------------------------------


@pytest.mark.spec("W50", "N-24")
def test_venue_refusing_everything_with_a_position_protects_without_a_retry_loop(tmp_path: Path) -> None:
    """Every request answers 429 (Retry-After: 1) once the position is open: the exit is tried first
    (TP, then market closes), each resend waits out the venue's back-off (D-20) instead of burning its
    attempts locally, rate-limit protection comes on, the operator is alerted once, and after the
    attempts run out the close is retried on a growing timer (D-19): no tight loop."""
    feed = kit.write_feed(tmp_path, [(1000, kit.ENTRY_CHAT, 1001, ETH)])
    path = kit.PricePath(
        base={"ETHUSDT": D("3500.00")},
        points=kit.points([(3, "ETHUSDT", "3532.00"), (5, "ETHUSDT", "3536.00"), (12, "ETHUSDT", "3360.00")]),
    )

    async def scenario() -> None:
        async with kit.Venue(path) as venue:
            sim = venue.harness.venue
            run = await venue.start_daemon(tmp_path, feed)
            await kit.wait_until(lambda: run.seen.has("ETHUSDT ENTRY_ORDER->PHASE1"))
            before = len(sim.requests)
            sim.faults.rate_limited = 10**9
            start = venue.clock.now_ms()
            await kit.wait_until(lambda: venue.clock.now_ms() >= start + 30_000)
            received = sim.requests[before:]
            assert run.daemon.engine.lock_state("rate_limit") == "PROTECT"
            assert await run.stop() == 0
            # The first request after the fault is the exit (the fill's balance read may come before).
            assert next(r for r in received if r != ("GET", "/fapi/v3/balance")) == ("POST", "/fapi/v1/order")
            # At most about one request per second of back-off: nothing like a tight loop.
            assert 5 <= len(received) <= 30, received
            names = [
                (c.client_order_id, c.attempt)
                for c in _commands(run.seen, cmd.PlaceOrder)
                if not c.client_order_id.startswith("sf1001-E1")
            ]
            assert names[:10] == [
                ("sf1001-TP1-ETHUSDT", 1),
                *[(f"sf1001-CL{g}-ETHUSDT", a) for g in (1, 2, 3) for a in (1, 2, 3)],
            ]
            assert names[10] == ("sf1001-CL4-ETHUSDT", 1)  # the first timed close (D-19)
            rejected = [e for e, _ in run.seen.items if isinstance(e, ev.OrderRejected)]
            assert {(e.code, e.category) for e in rejected} == {(-1003, "rate_limited")}
            assert all(e.retry_after_ms > 0 for e in rejected)
            assert run.daemon.engine.state_of("ETHUSDT") == "EXITING"
            assert venue.exchange.positions[("ETHUSDT", "BOTH")].amount == D("-1.414")  # nothing got through

    kit.run(scenario())
    alerts = kit.rows(
        tmp_path,
        "SELECT kind, severity, text FROM alerts WHERE kind IN ('rate_limit', 'close_failed') ORDER BY id",
    )
    assert alerts[0] == ("rate_limit", "warning", "rate-limit protection on")
    assert [a[0:2] for a in alerts[1:]] == [("close_failed", "critical")]  # once, not per timed retry
    assert re.fullmatch(
        r"ETHUSDT: market close failed: -1003 .+; retrying the close every 5 s or more",
        alerts[1][2],
    )


@pytest.mark.spec("N-28")
def test_venue_failing_every_request_at_start_keeps_recovery_locked_and_retries_slowly(
    tmp_path: Path,
) -> None:
    """503 on every REST path from the first request: the exchange snapshot is retried every 5 s, the
    recovery lock stays on, nothing is ordered, and the venue sees a bounded number of requests."""
    feed = kit.write_feed(tmp_path, [(1000, kit.ENTRY_CHAT, 1001, ETH)])

    async def scenario() -> None:
        async with kit.Venue(kit.W55_PATH) as venue:
            sim = venue.harness.venue
            for method, route in list(sim._routes):
                sim.faults.add(RestFault(method=method, path=route, kind="status", status=503, count=10**9))
            start = venue.clock.now_ms()
            run = await venue.start_daemon(tmp_path, feed)
            await kit.wait_until(lambda: venue.clock.now_ms() >= start + 21_000)
            assert await run.stop() == 0
            requests = list(sim.requests)
            attempts = [e for e, _ in run.seen.items if isinstance(e, ev.ExchangeSnapshot)]
            assert len(attempts) in (4, 5)  # at recovery start, then every 5 s
            assert all(not e.complete for e in attempts)
            # Each snapshot attempt: five signed reads, each stopped at its failing time sync.
            assert requests.count(("GET", "/fapi/v1/time")) == 5 * len(attempts)
            listen = requests.count(("POST", "/fapi/v1/listenKey"))
            assert 1 <= listen <= 5  # the user stream backs off
            assert len(requests) == 5 * len(attempts) + listen  # nothing else was tried
            assert run.seen.transitions() == []
            assert run.daemon.engine.lock_state("recovery_lock") == "RECOVERING"
            assert venue.exchange.orders == {}
            assert [
                e for e, _ in run.seen.items if isinstance(e, ev.MessageReceived)
            ] == []  # Telegram paused

    kit.run(scenario())
    texts = kit.rows(tmp_path, "SELECT kind, text FROM alerts WHERE kind != 'binance_connection'")
    assert len(texts) >= 3 and set(texts) == {("recovery", "exchange snapshot incomplete; retrying")}


# ---------------------------------------------------------------------------------------------
# Storage trouble
# ---------------------------------------------------------------------------------------------


def test_corrupt_database_is_refused_with_a_clear_message_and_left_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = kit.write_config(tmp_path, f"telegram:\n  feed_path: {kit.write_feed(tmp_path, [])}\n")
    db = tmp_path / "db.sqlite"
    garbage = b"SQLite format 3\x00" + b"\xde\xad\xbe\xef" * 1024  # a header, then junk
    db.write_bytes(garbage)
    assert main(["run", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"shortfsm: database: {db}: not a usable shortfsm database (file is not a database); move it aside "
        "to start fresh (cursors and cooldowns in it would be lost)\n"
    )
    assert db.read_bytes() == garbage
    # Only the one-daemon lock beside it (fsm.runtime.liveness), empty once released.
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "config.yaml",
        "db.sqlite",
        "db.sqlite.lock",
        "feed.jsonl",
    ]
    assert (tmp_path / "db.sqlite.lock").read_bytes() == b""


def test_missing_database_starts_fresh_and_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="fsm.runtime.daemon")
    db = tmp_path / "var" / "state.db"  # neither the file nor its directory exists
    config = kit.config_for(tmp_path)
    options = RunOptions(
        profile="sim",
        speed=kit.SPEED,
        feed_path=str(kit.write_feed(tmp_path, [])),
        path=kit.W55_PATH,
        database=str(db),
        install_signals=False,
        stop_when=lambda d: d.engine.lock_state("recovery_lock") == "READY",
    )
    assert kit.run(run_daemon(config, Secrets(_env_file=None), options)) == 0  # type: ignore[call-arg]
    assert f"database {db} does not exist: starting fresh (no saved cursors, cooldowns or snapshot)" in [
        r.getMessage() for r in caplog.records
    ]
    import sqlite3

    conn = sqlite3.connect(db)
    try:
        version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        assert version == (str(SCHEMA_VERSION),)
        assert conn.execute("SELECT count(*) FROM cursors").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM snapshots").fetchone()[0] >= 1
        transitions = conn.execute("SELECT machine, source, dest FROM transitions").fetchall()
        assert transitions == [("recovery_lock", "RECOVERING", "READY")]
    finally:
        conn.close()


def test_full_disk_is_alerted_and_trading_continues_from_memory(tmp_path: Path) -> None:
    """Every write fails ('database or disk is full') from before the signal until the position is
    open: the daemon alerts, the heartbeat says database error, the trade goes on; once writes work
    the cursor, the cooldown and the engine snapshot are written again and the trade finishes."""
    feed = kit.write_feed(tmp_path, [(6000, kit.ENTRY_CHAT, 1001, ETH)])
    path = kit.PricePath(
        base={"ETHUSDT": D("3500.00")},
        points=kit.points(
            [
                (8, "ETHUSDT", "3532.00"),
                (10, "ETHUSDT", "3536.00"),
                (19, "ETHUSDT", "3360.00"),
                (21, "ETHUSDT", "3358.00"),
            ]
        ),
    )
    heartbeat = tmp_path / "hb.json"

    def database_field() -> str | None:
        try:
            return str(json.loads(heartbeat.read_text())["database"])
        except (OSError, ValueError, KeyError):
            return None

    async def scenario() -> None:
        async with kit.Venue(path) as venue:
            run = await venue.start_daemon(tmp_path, feed)
            await kit.wait_until(lambda: run.seen.has("recovery_lock RECOVERING->READY"))
            assert not venue.at(6)
            kit.fill_disk(run.store)
            await kit.wait_until(lambda: run.seen.has("ETHUSDT ENTRY_ORDER->PHASE1"))
            await kit.wait_until(lambda: database_field() == "error")
            critical = [a for a in run.daemon.alerts.recent if a.kind == "database"]
            assert [(a.severity, a.text) for a in critical] == [
                (
                    "critical",
                    "database writes fail: the disk is full (database or disk is full): trading continues "
                    "from memory; free disk space",
                )
            ]
            assert run.store.errors > 0
            assert not venue.at(19)
            kit.free_disk(run.store)
            await kit.wait_until(lambda: database_field() == "ok")
            await kit.wait_until(lambda: run.seen.has("ETHUSDT EXITING->IDLE"))
            assert await run.stop() == 0
            # The entry fills at 3535.00, or at the book's 3536.00 when a slow machine sent it after
            # the price moved on (a crossing limit fills at the book): the TP is 5 % under the fill.
            entry = next(o for o in venue.exchange.orders.values() if o.client_id == "sf1001-E11-ETHUSDT")
            assert entry.avg_price in (D("3535.00"), D("3536.00"))
            tp = rules.take_profit_price(entry.avg_price, D(5), D("0.01"))
            assert kit.venue_orders(venue.exchange) == [
                (
                    "sf1001-E11-ETHUSDT",
                    "SELL",
                    "LIMIT",
                    D("3535.00"),
                    D("1.414"),
                    "FILLED",
                    False,
                    D("1.414"),
                ),
                ("sf1001-TP1-ETHUSDT", "BUY", "LIMIT", tp, D("1.414"), "FILLED", True, D("1.414")),
            ]

    kit.run(scenario())
    assert kit.rows(tmp_path, "SELECT chat_id, message_id FROM cursors") == [(kit.ENTRY_CHAT, 1001)]
    assert [r[0] for r in kit.rows(tmp_path, "SELECT symbol FROM cooldowns")] == ["ETHUSDT"]
    states = [
        json.loads(r[0])["symbols"].get("ETHUSDT", {}).get("state")
        for r in kit.rows(tmp_path, "SELECT engine FROM snapshots ORDER BY id")
    ]
    assert "PHASE1" in states  # written again once the disk had room
    assert states[-1] is None  # flat at the stop: an idle symbol is not in the snapshot
    ((severity, text),) = kit.rows(tmp_path, "SELECT severity, text FROM alerts WHERE kind = 'database'")
    assert severity == "warning"
    assert re.fullmatch(
        r"database writes work again after \d+ s; \d+ writes were lost; cursors, cooldowns and the engine "
        r"snapshot are written again",
        text,
    )
    # The TP's own rows were written after the disk came back.
    assert kit.rows(tmp_path, "SELECT status FROM orders WHERE client_order_id = 'sf1001-TP1-ETHUSDT'") == [
        ("FILLED",)
    ]
