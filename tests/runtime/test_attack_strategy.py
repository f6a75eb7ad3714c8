"""Attack: strategy paths through the real daemon against binance/sim on loopback, where the venue
answers honestly but the flow takes a turn the happy paths do not: the price already in the
breakeven band when the scale-in fills (W43, R14), a restart with a part-filled TP or breakeven
limit (R19, N-28)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import runtime_kit as kit

from binance.sim.exchange import FillPolicy

D = Decimal
ETH_LEADING = (1000, kit.ENTRY_CHAT, 1001, kit.LEADING.format(ticker="ETH"))


def scale_in_then(*moves: tuple[float, str], scale_in_fills: Decimal | None = None) -> kit.PricePath:
    """W56 up to the scale-in (filled at 10 s, all of it or ``scale_in_fills``), then ``moves``."""
    policies: dict[str, FillPolicy] = (
        {} if scale_in_fills is None else {"sf1001-E21-ETHUSDT": (scale_in_fills,)}
    )
    return kit.PricePath(
        base={"ETHUSDT": D("3500.00")},
        points=kit.points(
            [
                (3, "ETHUSDT", "3532.00"),
                (5, "ETHUSDT", "3536.00"),
                (8, "ETHUSDT", "4062.00"),
                (10, "ETHUSDT", "4066.00"),
                *[(at, "ETHUSDT", price) for at, price in moves],
            ]
        ),
        fill_policies=policies,
    )


async def run_until(tmp_path: Path, path: kit.PricePath, seconds: float) -> kit.Venue:
    feed = kit.write_feed(tmp_path, [ETH_LEADING])
    venue = kit.Venue(path)
    await venue.__aenter__()
    run = await venue.start_daemon(tmp_path, feed)
    try:
        await kit.wait_until(lambda: venue.at(seconds), timeout=seconds / kit.SPEED + 4)
    finally:
        assert await run.stop() == 0
        await venue.__aexit__()
    return venue


def test_full_scale_in_then_price_at_once_in_the_breakeven_band_exits_at_breakeven(tmp_path: Path) -> None:
    """W43 / R14. Average (1.414 x 3535 + 1.036 x 4065.25) / 2.45 = 3759.22, breakeven trigger
    3762.98. The scale-in fills at 4066 and, in the same venue instant, the mark drops to 3760 (in
    the band), then 3759 at 20 s: the breakeven limit must go out and fill."""
    path = scale_in_then((10, "3760.00"), (20, "3759.00"))
    venue = kit.run(run_until(tmp_path, path, 26))
    ex = venue.exchange
    assert [(o.client_id, o.type, o.price, o.executed, o.status) for o in ex.orders.values()] == [
        ("sf1001-E11-ETHUSDT", "LIMIT", D("3535.00"), D("1.414"), "FILLED"),
        ("sf1001-E21-ETHUSDT", "LIMIT", D("4065.25"), D("1.036"), "FILLED"),
        ("sf1001-BE1-ETHUSDT", "LIMIT", D("3759.22"), D("2.450"), "FILLED"),
    ]
    assert kit.venue_algos(ex) == [
        ("sf1001-MD1-ETHUSDT", "BUY", "STOP_MARKET", D("4323.10"), "CANCELED", True)
    ]
    assert ex.positions[("ETHUSDT", "BOTH")].amount == 0


def test_part_filled_scale_in_then_price_at_once_in_the_breakeven_band_exits_at_breakeven(
    tmp_path: Path,
) -> None:
    """W43 / R14. The scale-in fills 0.500 of 1.036: average 3673.52, breakeven trigger 3677.19.
    In the same venue instant the mark drops to 3675 (in the band), then 3673 at 20 s: the rest of
    the scale-in is cancelled and the breakeven limit goes out and fills (W43)."""
    path = scale_in_then((10, "3675.00"), (20, "3673.00"), scale_in_fills=D("0.500"))
    venue = kit.run(run_until(tmp_path, path, 26))
    ex = venue.exchange
    assert [(o.client_id, o.type, o.price, o.executed, o.status) for o in ex.orders.values()] == [
        ("sf1001-E11-ETHUSDT", "LIMIT", D("3535.00"), D("1.414"), "FILLED"),
        ("sf1001-E21-ETHUSDT", "LIMIT", D("4065.25"), D("0.500"), "CANCELED"),
        ("sf1001-BE1-ETHUSDT", "LIMIT", D("3673.52"), D("1.914"), "FILLED"),
    ]
    assert ex.positions[("ETHUSDT", "BOTH")].amount == 0


def test_restart_with_a_part_filled_tp_keeps_the_whole_rest_covered(tmp_path: Path) -> None:
    """R19 / N-28. The TP (1.414 at 3358.25) fills 0.500 and stalls; the daemon is stopped cleanly
    (SIGTERM path) at once and started again on the same database. The rest, 0.914, must be covered
    and closed: nothing short may be left once the daemon says flat."""
    feed = kit.write_feed(tmp_path, [ETH_LEADING])
    path = kit.PricePath(
        base={"ETHUSDT": D("3500.00")},
        points=kit.points(
            [
                (3, "ETHUSDT", "3532.00"),
                (5, "ETHUSDT", "3536.00"),
                (8, "ETHUSDT", "3360.00"),
                (9, "ETHUSDT", "3358.00"),
            ]
        ),
        fill_policies={"sf1001-TP1-ETHUSDT": (D("0.500"),)},
    )

    async def scenario() -> None:
        async with kit.Venue(path) as venue:
            ex = venue.exchange
            run = await venue.start_daemon(tmp_path, feed)
            await kit.wait_until(
                lambda: any(
                    o.client_id == "sf1001-TP1-ETHUSDT" and o.executed > 0 for o in ex.orders.values()
                )
            )
            assert await run.stop() == 0
            run = await venue.start_daemon(tmp_path, feed)
            try:
                await kit.wait_until(lambda: venue.at(30), timeout=6)
            finally:
                assert await run.stop() == 0
            assert ex.positions[("ETHUSDT", "BOTH")].amount == 0
            closing = [(o.side, o.reduce_only) for o in ex.orders.values() if o.side == "BUY"]
            assert all(reduce_only for _, reduce_only in closing)
            assert sum(o.executed for o in ex.orders.values() if o.side == "BUY") == D("1.414")
            assert [o.status for o in ex.orders.values() if o.is_open] == []

    kit.run(scenario())


def test_restart_with_a_part_filled_breakeven_covers_the_whole_rest(tmp_path: Path) -> None:
    """W43 / N-28. W56 to the breakeven limit (2.450 at 3759.22), which fills 1.000 and stalls; a
    clean stop and a restart on the same database; the price comes back into the breakeven band
    (3761.00, trigger 3762.98) for 6 s, then falls to 3700: the rest, 1.450, must be closed and the
    MDD stop cancelled."""
    path = scale_in_then((13, "3800.00"), (16, "3759.00"), (24, "3761.00"), (30, "3700.00"))
    path = kit.PricePath(
        base=path.base, points=path.points, fill_policies={"sf1001-BE1-ETHUSDT": (D("1.000"),)}
    )
    feed = kit.write_feed(tmp_path, [ETH_LEADING])

    async def scenario() -> None:
        async with kit.Venue(path) as venue:
            ex = venue.exchange
            run = await venue.start_daemon(tmp_path, feed)
            await kit.wait_until(
                lambda: any(
                    o.client_id == "sf1001-BE1-ETHUSDT" and o.executed > 0 for o in ex.orders.values()
                )
            )
            assert await run.stop() == 0
            run = await venue.start_daemon(tmp_path, feed)
            try:
                await kit.wait_until(lambda: venue.at(36), timeout=6)
            finally:
                assert await run.stop() == 0
            assert ex.positions[("ETHUSDT", "BOTH")].amount == 0
            assert [o.client_id for o in ex.orders.values() if o.is_open] == []
            assert [a.status for a in ex.algos.values()] == ["CANCELED"]

    kit.run(scenario())
