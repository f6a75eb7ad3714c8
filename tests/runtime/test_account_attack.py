"""The attack on D-72 (W24's account reads made while monitoring), through the real daemon against the
simulated venue on loopback. Each test failed on the first version of the read ahead. With the read
ahead on: a failing or unreadable read backs off instead of spending the IP's weight; a stream of
pushes costs one read per 10 s; a margin type changed in the app is pushed (Binance's docs) and set
back. By default (the read ahead off, W24 as the spec says): a position mode switched, a withdrawal
or a leverage change told late, are all read at the trigger."""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import runtime_kit as kit

from binance.sim.server import RestFault
from fsm import commands as cmd
from fsm import events as ev
from fsm.runtime.config import AppConfig, BinanceConfig

D = Decimal
ETH = kit.LEADING.format(ticker="ETH")
MINUTE = 60_000
# A venue clock that starts on a minute boundary: the weight window is the run's first minute.
ORIGIN = (int(time.time() * 1000) // MINUTE - 5) * MINUTE - 16_000  # venue minutes turn at 16 s, 76 s...
WEIGHTS = {"/fapi/v1/positionSide/dual": 30, "/fapi/v1/symbolConfig": 5, "/fapi/v3/balance": 5}


def path_with_trigger_at(t: float) -> kit.PricePath:
    """Target 3535.00; the trigger (3531.465) is crossed at ``t`` s, the entry fills 2 s later."""
    return kit.PricePath(
        base={"ETHUSDT": D("3500.00")},
        points=kit.points([(t, "ETHUSDT", "3532.00"), (t + 2, "ETHUSDT", "3536.00")]),
    )


def entries(run: kit.Run) -> list[cmd.PlaceOrder]:
    return [c for _, cs in run.seen.items for c in cs if isinstance(c, cmd.PlaceOrder) and c.leg == "ENTRY1"]


def prepared(run: kit.Run) -> list[ev.OrderPrepared]:
    return [e for e, _ in run.seen.items if isinstance(e, ev.OrderPrepared) and e.leg == "ENTRY1"]


def read_ahead(tmp: Path, seconds: int = 30) -> AppConfig:
    base = kit.config_for(tmp)
    return base.model_copy(update={"binance": BinanceConfig(account_read_max_age_seconds=seconds)})


def traded_before(venue: kit.Venue) -> None:
    venue.exchange.leverage["ETHUSDT"] = 1
    venue.exchange.margin_type["ETHUSDT"] = "isolated"


@pytest.mark.spec("W24")
def test_a_read_ahead_outage_backs_off_and_the_entry_goes_out_at_its_trigger(tmp_path: Path) -> None:
    """GET positionSide/dual answers 503 from about 1 s to 68 s while ETHUSDT is monitored; then the
    venue is healthy again. The read ahead retried every venue second (weight 40: the whole IP
    limit) and the trigger's own W24 read at 72 s was refused locally for the spent budget. Now it
    backs off (15, 30, 60 s): the entry goes out at its trigger."""

    async def scenario() -> None:
        async with kit.Venue(path_with_trigger_at(72), origin_ms=ORIGIN) as venue:
            traded_before(venue)
            v = venue.harness.venue
            feed = kit.write_feed(tmp_path, [(1000, kit.ENTRY_CHAT, 1001, ETH)])
            run = await venue.start_daemon(tmp_path, feed, config=read_ahead(tmp_path))
            await kit.wait_until(
                lambda: any(m.state == "MONITORING" for m in run.daemon.engine.symbols.values())
            )
            v.faults.add(RestFault("GET", "/fapi/v1/positionSide/dual", "status", status=503, count=10_000))
            await kit.wait_until(lambda: venue.at(68), timeout=12)
            assert "503" in run.daemon.account_reads.problem
            v.faults.queue.clear()  # the venue is healthy again
            await kit.wait_until(lambda: bool(prepared(run)) or venue.at(76), timeout=5)
            await kit.wait_until(lambda: venue.at(75), timeout=5)
            weight = sum(WEIGHTS.get(p, 0) for _, p in v.requests)
            reads = sum(1 for _, p in v.requests if p == "/fapi/v1/positionSide/dual")
            code = await run.stop()
            assert code == 0
            got = prepared(run)
            detail = f"positionSide reads={reads}, W24-route weight in all={weight}, prepared={got}"
            assert got and got[0].ok, detail
            assert len(entries(run)) == 1, detail
            assert reads < 20, detail  # a failing read is not retried every second

    kit.run(scenario(), timeout=25)


def one_malformed_row(venue: kit.Venue) -> None:
    """GET symbolConfig without a symbol (all of them, as the read-ahead asks) carries one row the
    parser refuses, for a contract we never trade; a symbol's own row (the trigger's read) is fine."""
    v = venue.harness.venue
    security, handler = v._routes[("GET", "/fapi/v1/symbolConfig")]

    def answer(params: dict[str, str]) -> Any:
        rows = handler(params)
        if params.get("symbol"):
            return rows
        return [*rows, {"symbol": "OLDUSDT", "marginType": "", "isAutoAddMargin": False, "leverage": 0}]

    v._routes[("GET", "/fapi/v1/symbolConfig")] = (security, answer)


@pytest.mark.spec("W24", "W50")
def test_one_unreadable_symbol_config_row_costs_nothing_and_delays_nothing(tmp_path: Path) -> None:
    """A symbolConfig answer with one row the parser refuses (another contract's) failed every read
    ahead, retried every venue second (2,400 weight a minute): the trigger's W24 read at 68 s was
    refused locally for the spent budget. Now the row is left out on its own."""

    async def scenario() -> None:
        async with kit.Venue(path_with_trigger_at(68), origin_ms=ORIGIN) as venue:
            traded_before(venue)
            one_malformed_row(venue)
            v = venue.harness.venue
            feed = kit.write_feed(tmp_path, [(1000, kit.ENTRY_CHAT, 1001, ETH)])
            run = await venue.start_daemon(tmp_path, feed, config=read_ahead(tmp_path))
            await kit.wait_until(lambda: bool(prepared(run)) or venue.at(75), timeout=12)
            await kit.wait_until(lambda: venue.at(75), timeout=5)
            weight = sum(WEIGHTS.get(p, 0) for _, p in v.requests)
            code = await run.stop()
            assert code == 0
            got = prepared(run)
            limits = kit.logs(run.seen, "order_blocked")
            detail = f"W24-route weight sent={weight}, prepared={[(p.ok, p.reason) for p in got]}, {limits}"
            assert weight < 1000, detail  # ~20 s at rest would be 4 reads (weight 160)
            assert got and got[0].ok, detail
            assert len(entries(run)) == 1, detail

    kit.run(scenario(), timeout=25)


def move(exchange: Any, amount: Decimal) -> None:
    """``SimExchange.transfer`` (D-72's sim); the same push by hand on the tree before it."""
    if hasattr(exchange, "transfer"):
        exchange.transfer(amount)
        return
    exchange.wallet += amount
    wallet, t = f"{exchange.wallet:.8f}", exchange.now()
    balance = [{"a": "USDT", "wb": wallet, "cw": wallet, "bc": f"{amount:.8f}"}]
    push = {"e": "ACCOUNT_UPDATE", "T": t, "E": t, "a": {"m": "WITHDRAW", "B": balance, "P": []}}
    exchange._emit(push)


# Target 3535.00 (1.01 x 3500), trigger at 3531.465: reached at 8 s, seven seconds of monitoring.
PATH8 = path_with_trigger_at(8)


async def monitoring_with_facts(venue: kit.Venue, tmp: Path, *, ahead: bool = True) -> kit.Run:
    """ETHUSDT monitored; with ``ahead`` the read ahead on and done, else the default config."""
    feed = kit.write_feed(tmp, [(1000, kit.ENTRY_CHAT, 1001, ETH)])
    run = await venue.start_daemon(tmp, feed, config=read_ahead(tmp) if ahead else kit.config_for(tmp))
    await kit.wait_until(lambda: any(m.state == "MONITORING" for m in run.daemon.engine.symbols.values()))
    if ahead:
        await kit.wait_until(lambda: run.daemon.account_reads.facts is not None)
    else:
        await kit.wait_until(lambda: venue.at(2))
    assert not venue.at(6)
    return run


@pytest.mark.spec("W24")
def test_margin_type_switched_to_cross_in_the_app_while_monitoring_is_set_back(tmp_path: Path) -> None:
    """ETHUSDT was isolated at 1x (traded before); while it is monitored the holder switches it to
    CROSS in the app. Binance pushes ACCOUNT_UPDATE for a margin type change (its docs; the sim
    did not): the read ahead is voided and W24 sets ISOLATED again after the trigger."""

    async def scenario() -> None:
        async with kit.Venue(PATH8) as venue:
            traded_before(venue)
            run = await monitoring_with_facts(venue, tmp_path)
            venue.exchange.set_margin_type({"symbol": "ETHUSDT", "marginType": "CROSSED"})  # the app
            await kit.wait_until(lambda: bool(prepared(run)) and bool(venue.exchange.orders), timeout=6)
            await kit.wait_until(lambda: venue.at(12), timeout=5)
            assert await run.stop() == 0
            orders = kit.venue_orders(venue.exchange)
            assert orders, "no entry"
            assert venue.exchange.margin_type["ETHUSDT"] == "isolated", f"entry on CROSS margin: {orders}"

    kit.run(scenario(), timeout=20)


@pytest.mark.spec("W24", "W27", "W28")
def test_by_default_a_position_mode_switched_while_monitoring_is_read_at_the_trigger(tmp_path: Path) -> None:
    """The holder switches the account to HEDGE while ETHUSDT is monitored (flat: allowed; no push
    exists for it). By default W24 reads the mode at the trigger: the entry goes out SHORT (W27)."""

    async def scenario() -> None:
        async with kit.Venue(PATH8) as venue:
            traded_before(venue)
            run = await monitoring_with_facts(venue, tmp_path, ahead=False)
            venue.exchange.hedge_mode = True
            await kit.wait_until(lambda: bool(entries(run)) and bool(venue.exchange.orders), timeout=8)
            assert await run.stop() == 0
            assert not [e for e, _ in run.seen.items if isinstance(e, ev.OrderRejected)]
            assert [(o[0], o[1], o[4]) for o in kit.venue_orders(venue.exchange)] == [
                ("sf1001-E11-ETHUSDT", "SELL", D("1.414"))
            ]
            assert entries(run)[0].position_side == "SHORT"

    kit.run(scenario(), timeout=20)


@pytest.mark.spec("W24", "W27")
def test_read_ahead_a_position_mode_switched_while_monitoring_costs_the_entry_and_nothing_else(
    tmp_path: Path,
) -> None:
    """With the read ahead on, the mode switched in the app after the read is not known (D-72 says
    so): the entry goes without positionSide and is refused -4061. Nothing of ours is left on the
    venue, the symbol resets, and the facts are voided, so the next read says HEDGE."""

    async def scenario() -> None:
        async with kit.Venue(PATH8) as venue:
            traded_before(venue)
            run = await monitoring_with_facts(venue, tmp_path)
            venue.exchange.hedge_mode = True
            await kit.wait_until(lambda: run.seen.has("ETHUSDT ENTRY_ORDER->IDLE"), timeout=8)
            assert (
                run.daemon.account_reads.facts is None
                or run.daemon.account_reads.facts.position_mode == "HEDGE"
            )
            assert await run.stop() == 0
            rejected = [e for e, _ in run.seen.items if isinstance(e, ev.OrderRejected)]
            assert [(e.code, e.client_order_id) for e in rejected] == [(-4061, "sf1001-E11-ETHUSDT")]
            assert kit.venue_orders(venue.exchange) == []
            assert (
                venue.exchange.positions.get(("ETHUSDT", "SHORT")) is None
                or not venue.exchange.positions[("ETHUSDT", "SHORT")].amount
            )

    kit.run(scenario(), timeout=20)


@pytest.mark.spec("W24", "W32-1")
def test_by_default_a_withdrawal_told_late_sizes_the_entry_on_the_wallet_at_the_trigger(
    tmp_path: Path,
) -> None:
    """The holder withdraws 6,000 of the 10,000 USDT at 6 s; the user stream stays connected but
    its pushes run 4 s late. By default W32-1 sizes the entry on the wallet read at the trigger:
    4,000 x 50 % / 3535 = 0.565. (With the read ahead on it would be sized on the read made before
    the withdrawal, 1.414: D-72's residual window, as long as the push is late.)"""

    async def scenario() -> None:
        async with kit.Venue(PATH8) as venue:
            traded_before(venue)
            run = await monitoring_with_facts(venue, tmp_path, ahead=False)
            await kit.wait_until(lambda: venue.at(6), timeout=5)
            venue.exchange.user_faults.delay_ms = 4_000
            move(venue.exchange, D("-6000"))
            await kit.wait_until(lambda: bool(entries(run)) or venue.at(13), timeout=8)
            assert await run.stop() == 0
            assert [e.quantity for e in entries(run)] == [D("0.565")]

    kit.run(scenario(), timeout=20)


@pytest.mark.spec("W24", "W50")
def test_a_steady_stream_of_account_pushes_costs_one_read_per_ten_seconds(tmp_path: Path) -> None:
    """While ETHUSDT is monitored the account gets an ACCOUNT_UPDATE every 200 ms for 10 s (here
    transfers of 0.01 USDT; fills of another order or funding of many positions do the same). Each
    push voided the facts and woke the read ahead, which read again at once: 41 reads (weight
    1,725) in 10 venue seconds. Now reads start at least 10 s apart."""

    async def scenario() -> None:
        async with kit.Venue(path_with_trigger_at(40)) as venue:
            traded_before(venue)
            v = venue.harness.venue
            run = await monitoring_with_facts(venue, tmp_path)
            await kit.wait_until(lambda: venue.at(2), timeout=5)
            start = len(v.requests)
            for i in range(50):  # 10 venue seconds
                move(venue.exchange, D("0.01"))
                await kit.wait_until(lambda i=i: venue.at(2 + (i + 1) * 0.2), timeout=5)
            during = v.requests[start:]
            assert await run.stop() == 0
            reads = sum(1 for _, p in during if p == "/fapi/v1/positionSide/dual")
            assert 1 <= reads <= 2, f"{reads} position-mode reads in 10 venue seconds"

    kit.run(scenario(), timeout=20)


@pytest.mark.spec("W24")
def test_by_default_a_leverage_raised_just_before_the_trigger_is_set_back_even_told_late(
    tmp_path: Path,
) -> None:
    """The holder sets ETHUSDT to 5x in the app at 7.5 s; its push runs 1.5 s late. By default W24
    reads leverage 5 at the trigger (8 s) and sets it back to 1 before the order. (With the read
    ahead on, the read made before the change would stand until its push: D-72's residual window.)"""

    async def scenario() -> None:
        async with kit.Venue(PATH8) as venue:
            traded_before(venue)
            run = await monitoring_with_facts(venue, tmp_path, ahead=False)
            await kit.wait_until(lambda: venue.at(7.5), timeout=5)
            assert not entries(run)
            venue.exchange.user_faults.delay_ms = 1_500
            venue.exchange.set_leverage({"symbol": "ETHUSDT", "leverage": "5"})
            await kit.wait_until(lambda: bool(entries(run)) or venue.at(13), timeout=8)
            await kit.wait_until(lambda: venue.at(12), timeout=8)
            assert await run.stop() == 0
            assert entries(run), "no entry"
            assert venue.exchange.leverage["ETHUSDT"] == 1

    kit.run(scenario(), timeout=20)
