"""Funding on the simulated venue, as Binance settles it (00, 08, 16 UTC): the wallet moves, an
ACCOUNT_UPDATE with reason FUNDING_FEE is pushed, and ``GET /fapi/v1/income`` lists the row, which
the real client reads over loopback (``binance.reconcile.missed_funding``)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from binance_simkit import run, venue

from binance import parse, reconcile
from binance.sim.exchange import FUNDING_PERIOD_MS, SimExchange
from fsm.events import FundingFee

T0 = 1_767_225_600_000  # 2026-01-01 00:00 UTC: a settlement instant, the sim's start (not charged)


def _short(ex: SimExchange, qty: str = "0.010") -> None:
    ex.new_order({"symbol": "BTCUSDT", "side": "SELL", "type": "MARKET", "quantity": qty})


def _pushes(ex: SimExchange) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    ex.user_listeners.append(lambda payload, key: seen.append(payload))
    return seen


def test_a_short_receives_a_positive_rate_at_the_settlement_and_is_told_on_the_stream() -> None:
    async def body() -> None:
        async with venue() as (ex, _, rest):
            _short(ex)
            pushes = _pushes(ex)
            wallet, mark = ex.wallet, ex.marks["BTCUSDT"]
            at = T0 + FUNDING_PERIOD_MS
            rate = ex.funding_rate_at("BTCUSDT", at)
            assert rate > 0
            ex.advance(FUNDING_PERIOD_MS - 1)
            assert (ex.wallet, pushes) == (wallet, [])  # 07:59:59.999: nothing yet
            ex.advance(1)
            income = (Decimal("0.010") * mark * rate).quantize(Decimal("0.00000001"))
            assert ex.wallet == wallet + income
            assert pushes == [
                {
                    "e": "ACCOUNT_UPDATE",
                    "T": at,
                    "E": at,
                    "a": {
                        "m": "FUNDING_FEE",
                        "S": "BTCUSDT",
                        "B": [
                            {
                                "a": "USDT",
                                "wb": f"{ex.wallet:.8f}",
                                "cw": f"{ex.wallet:.8f}",
                                "bc": f"{income:.8f}",
                            }
                        ],
                    },
                }
            ]
            pushed = [e for e in parse.account_update(pushes[0], at + 5) if isinstance(e, FundingFee)]
            assert pushed == [
                FundingFee(now_ms=at + 5, symbol="BTCUSDT", asset="USDT", amount=income, venue_time_ms=at)
            ]
            # The income history says the same, read by the real client over loopback.
            rows = await rest.income("FUNDING_FEE", T0, ex.now())
            assert [(r["symbol"], r["income"], r["time"]) for r in rows] == [("BTCUSDT", f"{income:.8f}", at)]
            read = await reconcile.missed_funding(rest, T0, ex.now(), at + 5)
            assert read == reconcile.FundingRead(events=pushed, complete=True)

    run(body())


def test_an_isolated_position_is_pushed_with_the_balance_and_nothing_is_charged_when_flat() -> None:
    async def body() -> None:
        async with venue() as (ex, _, _rest):
            ex.set_margin_type({"symbol": "BTCUSDT", "marginType": "ISOLATED"})
            _short(ex)
            pushes = _pushes(ex)
            ex.advance(FUNDING_PERIOD_MS)
            assert [p["a"]["P"][0]["pa"] for p in pushes] == ["-0.010"]
            ex.new_order({"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "0.010"})
            pushes.clear()
            wallet = ex.wallet
            ex.advance(FUNDING_PERIOD_MS)
            assert (ex.wallet, pushes) == (wallet, [])  # flat: nothing to pay or receive

    run(body())


def test_settlements_switched_off_are_skipped_not_charged_later() -> None:
    async def body() -> None:
        async with venue() as (ex, _, rest):
            _short(ex)
            ex.settle_funding = False
            ex.advance(FUNDING_PERIOD_MS)
            ex.settle_funding = True
            ex.advance(FUNDING_PERIOD_MS)
            rows = await rest.income("FUNDING_FEE", T0, ex.now())
            assert [r["time"] for r in rows] == [T0 + 2 * FUNDING_PERIOD_MS]

    run(body())


def test_a_long_funding_history_is_read_page_by_page_once_each(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reconcile, "INCOME_PAGE", 2)

    async def body() -> None:
        async with venue() as (ex, _, rest):
            _short(ex)
            ex.advance(5 * FUNDING_PERIOD_MS)
            read = await reconcile.missed_funding(rest, T0, ex.now(), ex.now())
            assert [e.venue_time_ms for e in read.events] == [T0 + i * FUNDING_PERIOD_MS for i in range(1, 6)]
            assert read.complete

    run(body())


def test_rows_that_cannot_be_used_are_skipped_one_by_one_and_the_good_ones_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A hostile or broken answer: rows out of the window asked for (one beyond SQLite's integers),
    of another income type, or malformed are logged and skipped; the real settlement is kept."""

    async def body() -> None:
        async with venue() as (ex, v, rest):
            _short(ex)
            ex.advance(FUNDING_PERIOD_MS)
            (good,) = ex.income({"incomeType": "FUNDING_FEE"})
            bad = [
                {**good, "tranId": 1, "time": 2**63},
                {**good, "tranId": 2, "time": 10**17},
                {**good, "tranId": 3, "incomeType": "COMMISSION"},
                {"incomeType": "FUNDING_FEE"},
                "not a row",
            ]
            v._routes[("GET", "/fapi/v1/income")] = ("SIGNED", lambda params: [*bad, good])
            read = await reconcile.missed_funding(rest, T0, ex.now(), ex.now())
            assert (len(read.events), read.skipped, read.complete) == (1, 5, True)
            assert read.events[0].venue_time_ms == T0 + FUNDING_PERIOD_MS

    run(body())
    assert sum("funding history: a row skipped" in r.getMessage() for r in caplog.records) == 5


def test_a_failing_answer_or_a_venue_that_repeats_its_page_ends_the_read_incomplete(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(reconcile, "INCOME_PAGE", 2)

    async def body() -> None:
        async with venue() as (ex, v, rest):
            _short(ex)
            ex.advance(3 * FUNDING_PERIOD_MS)
            rows = ex.income({"incomeType": "FUNDING_FEE"})
            calls: list[dict[str, str]] = []

            def same_page(params: dict[str, str]) -> list[dict[str, object]]:
                calls.append(params)
                return rows[:2]  # startTime ignored

            v._routes[("GET", "/fapi/v1/income")] = ("SIGNED", same_page)
            read = await reconcile.missed_funding(rest, T0, ex.now(), ex.now())
            assert (len(read.events), read.complete, len(calls)) == (2, False, 2)
            assert read.error == "the venue answered the same page again"
            v._routes[("GET", "/fapi/v1/income")] = ("SIGNED", lambda params: {"code": 0})
            broken = await reconcile.missed_funding(rest, T0, ex.now(), ex.now())
            assert (broken.events, broken.complete) == ([], False)
            assert broken.error.startswith("malformed answer")

    run(body())
