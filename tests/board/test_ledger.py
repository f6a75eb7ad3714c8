"""The ledger's grouping of fills into trades and its daily totals (pure functions)."""

from __future__ import annotations

from decimal import Decimal

from fsm.runtime.ledger import DAY_MS, Fill, Funding, build_trades, totals

DAY = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def fill(cid: str, side: str, qty: str, price: str, at: int, *, pnl: str = "0", fee: str = "0.1") -> Fill:
    code = cid.split("-")[1][:2] if cid.startswith("sf") else ""
    leg = {"E1": "ENTRY1", "E2": "ENTRY2", "CL": "CLOSE", "TP": "TP"}.get(code, "EXTERNAL")
    return Fill(
        client_order_id=cid,
        symbol="BTCUSDT",
        qty=Decimal(qty),
        price=Decimal(price),
        realized_pnl=Decimal(pnl),
        commission=Decimal(fee),
        now_ms=at,
        leg=leg,
        side=side,
    )


def test_a_fill_that_is_not_ours_joins_the_trade_open_on_its_symbol() -> None:
    fills = [
        fill("sf7-E11-BTCUSDT", "SELL", "10", "100.0", DAY + 1_000),
        fill("web_child_123", "BUY", "4", "95.0", DAY + 2_000, pnl="20"),  # a stop's child, a hand close
        fill("sf7-CL1-BTCUSDT", "BUY", "6", "96.0", DAY + 3_000, pnl="24"),
        fill("web_other_9", "BUY", "1", "90.0", DAY + 9_000, pnl="1"),  # nothing of ours is open
    ]
    closings = [(DAY + 3_000, "BTCUSDT", "flat: market close"), (DAY + 9_500, "BTCUSDT", "flat: later")]
    first, other = build_trades(fills, closings)
    assert (first.message_id, first.legs, first.closed_ms) == (
        7,
        ("ENTRY1", "EXTERNAL", "CLOSE"),
        DAY + 3_000,
    )
    assert (first.entry_avg, first.exit_avg, first.entry_qty, first.exit_qty) == (
        Decimal("100.0"),
        Decimal("95.6"),
        Decimal("10"),
        Decimal("10"),
    )
    assert (first.realized_pnl, first.fees, first.net, first.close_reason) == (
        Decimal("44"),
        Decimal("0.3"),
        Decimal("43.7"),
        "flat: market close",
    )
    assert first.as_dict()["exit_avg"] == "95.6"
    assert (other.message_id, other.status, other.close_reason) == (None, "closed", "flat: later")


def test_a_position_still_held_is_an_open_trade_and_a_later_entry_reopens_it() -> None:
    fills = [
        fill("sf8-E11-BTCUSDT", "SELL", "5", "100.0", DAY),
        fill("sf8-TP1-BTCUSDT", "BUY", "5", "95.0", DAY + 10, pnl="25"),
        fill("sf8-E11-BTCUSDT", "SELL", "2", "101.0", DAY + 20),  # a late fill raced the cancel
    ]
    (trade,) = build_trades(fills)
    assert (trade.status, trade.closed_ms, trade.close_reason) == ("open", None, None)
    assert trade.as_dict()["closed"] is None
    assert trade.as_dict()["entry_avg"] == "100.28571"  # 702 / 7 to the price's decimals (1) + 4


def test_today_is_the_utc_day_of_now() -> None:
    fills = [
        fill("sf1-CL1-BTCUSDT", "BUY", "1", "1", DAY - 1, pnl="5", fee="1"),
        fill("sf2-CL1-BTCUSDT", "BUY", "1", "1", DAY, pnl="-2", fee="0.5"),
        fill("sf3-CL1-BTCUSDT", "BUY", "1", "1", DAY + DAY_MS - 1, pnl="1", fee="0.25"),
    ]
    day = totals(fills, DAY + 5_000).as_dict()
    assert day == {
        "day": "2026-01-01",
        "today": {"realized_pnl": "-1.0000", "fees": "0.7500", "funding": "0.0000", "net": "-1.7500"},
        "total": {"realized_pnl": "4.0000", "fees": "1.7500", "funding": "0.0000", "net": "2.2500"},
    }


def test_funding_belongs_to_the_trade_open_on_its_symbol_and_always_to_the_totals() -> None:
    """A funding payment inside a trade's life is part of its net; one before it, after it, or on a
    symbol with no trade is no trade's, yet the day's and the total figures count it (money moved)."""
    fills = [
        fill("sf7-E11-BTCUSDT", "SELL", "10", "100.0", DAY + 1_000),
        fill("sf7-TP1-BTCUSDT", "BUY", "10", "96.0", DAY + 30_000_000, pnl="40"),
    ]
    funding = [
        Funding(symbol="BTCUSDT", amount=Decimal("-0.5"), at_ms=DAY),  # before the entry
        Funding(symbol="BTCUSDT", amount=Decimal("0.25"), at_ms=DAY + 28_800_000),  # 08:00, held
        Funding(symbol="ETHUSDT", amount=Decimal("-1"), at_ms=DAY + 28_800_000),  # no trade of ours
        Funding(symbol="BTCUSDT", amount=Decimal("2"), at_ms=DAY + DAY_MS),  # after it closed
    ]
    (trade,) = build_trades(fills, [(DAY + 30_000_000, "BTCUSDT", "flat: TP filled")], funding)
    assert trade.funding == Decimal("0.25")
    assert trade.net == Decimal("40") - Decimal("0.2") + Decimal("0.25")
    assert trade.as_dict()["funding"] == "0.2500"
    day = totals(fills, DAY + 5_000, funding).as_dict()
    assert day["today"] == {
        "realized_pnl": "40.0000",
        "fees": "0.2000",
        "funding": "-1.2500",
        "net": "38.5500",
    }
    assert day["total"]["funding"] == "0.7500"
    assert day["total"]["net"] == "40.5500"
