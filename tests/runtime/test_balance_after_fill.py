"""Issue #13 (the board's balance lagged): ACCOUNT_UPDATE carries the wallet balance, not the
available one, so after a fill the board showed the available balance from before the entry until
the next recovery. The daemon now reads ``/fapi/v3/balance`` once after each account update (weight
5). Real daemon against ``binance/sim`` on loopback."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import runtime_kit as kit

from fsm.runtime.view import board_view


def test_the_available_balance_follows_a_fill(tmp_path: Path) -> None:
    """ETHUSDT enters (1.414 @ 3535.00 at 10x leverage: about 500 USDT of margin): the engine's
    available balance becomes the venue's (less than the wallet), and the board's view says the
    same; the balance was read once per account update, not polled."""
    feed = kit.write_feed(tmp_path, [(1000, kit.ENTRY_CHAT, 1001, kit.LEADING.format(ticker="ETH"))])
    path = kit.PricePath(
        base={"ETHUSDT": Decimal("3500.00")},
        points=kit.points([(3, "ETHUSDT", "3532.00"), (5, "ETHUSDT", "3536.00")]),
    )

    async def scenario() -> None:
        async with kit.Venue(path) as venue:
            run = await venue.start_daemon(tmp_path, feed)
            engine = run.daemon.engine
            await kit.wait_until(lambda: run.seen.has("ETHUSDT ENTRY_ORDER->PHASE1"))
            exchange = venue.exchange
            before = engine.available_balance
            await kit.wait_until(lambda: engine.available_balance == exchange.available_balance(), timeout=5)
            assert engine.available_balance < engine.wallet_balance
            assert engine.available_balance < before  # it moved with the fill, not only at start
            await kit.wait_until(lambda: venue.at(9))
            view = board_view(engine, venue.clock.now_ms(), {})
            assert Decimal(view["balance"]["available"]) == exchange.available_balance()
            reads = venue.harness.venue.requests.count(("GET", "/fapi/v3/balance"))
            assert 1 <= reads <= 4  # the pre-order setup's read and one per account update
            assert await run.stop() == 0

    kit.run(scenario(), timeout=40)
