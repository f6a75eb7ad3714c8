"""``fsm.runtime.metrics`` against figures computed by hand on small fixed ledgers (issue #14 item 4)."""

from __future__ import annotations

import dataclasses
from decimal import Decimal

import pytest

from fsm.runtime import metrics
from fsm.runtime.ledger import DAY_MS, Trade

D = Decimal
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z, a UTC midnight
H = 3_600_000
CAPITAL = D(1000)


def trade(
    opened: int,
    closed: int | None,
    pnl: str,
    fees: str = "0",
    reason: str | None = "flat: TP filled",
    symbol: str = "ETHUSDT",
) -> Trade:
    return Trade(
        message_id=1,
        symbol=symbol,
        opened_ms=opened,
        closed_ms=closed,
        legs=("ENTRY1", "TP"),
        entry_qty=D(1),
        exit_qty=D(1) if closed is not None else D(0),
        entry_avg=D(100),
        exit_avg=D(100) if closed is not None else None,
        realized_pnl=D(pnl),
        fees=D(fees),
        close_reason=reason if closed is not None else None,
    )


def near(value: Decimal | None, expected: str, places: str = "0.000001") -> bool:
    assert value is not None
    return abs(value - D(expected)) < D(places)


# Three days, one close a day, capital 1000 (the ledger the CLI test rebuilds in SQLite):
#   t1 day 1 00:00-06:00 pnl 12      fees 2    net  10      equity 1010      return  10/1000    =  0.01
#   t2 day 2 02:00-08:00 pnl -10     fees 0.1  net -10.1    equity  999.9    return -10.1/1010  = -0.01
#   t3 day 3 00:00-12:00 pnl 20.998  fees 1    net  19.998  equity 1019.898  return 19.998/999.9 =  0.02
THREE_DAYS = [
    trade(T0, T0 + 6 * H, "12", "2"),
    trade(T0 + DAY_MS + 2 * H, T0 + DAY_MS + 8 * H, "-10", "0.1", "flat: risk_pnl_negative"),
    trade(T0 + 2 * DAY_MS, T0 + 2 * DAY_MS + 12 * H, "20.998", "1"),
]


def test_three_days_every_figure_by_hand() -> None:
    m = metrics.compute(reversed(THREE_DAYS), CAPITAL)  # order given does not matter: close time does
    assert (m.closed_trades, m.open_trades, m.wins, m.losses) == (3, 0, 2, 1)
    assert (m.start_ms, m.end_ms) == (T0, T0 + 2 * DAY_MS + 12 * H)  # first open to last close: 2.5 days
    assert m.days == D("2.5")
    # realised 12 - 10 + 20.998 = 22.998; fees 2 + 0.1 + 1 = 3.1; net 19.898
    assert (m.realized_pnl, m.fees, m.net) == (D("22.998"), D("3.1"), D("19.898"))
    assert m.final_equity == D("1019.898")
    assert m.total_return_pct == D("1.9898")  # 19.898 / 1000 x 100
    assert m.cagr_pct is None  # 2.5 days < 30
    assert near(m.win_rate_pct, "66.666667")  # 2 / 3 x 100
    assert near(m.profit_factor, "2.970099")  # (10 + 19.998) / 10.1 = 29.998 / 10.1
    assert near(m.expectancy, "6.632667")  # 19.898 / 3
    assert near(m.average_rr, "1.485050")  # (29.998 / 2) / 10.1 = 14.999 / 10.1
    # daily returns 0.01, -0.01, 0.02: mean 1/150; sample variance ((1/300)^2 + (1/60)^2 + (2/150)^2) / 2
    # = 7/30000; Sharpe = (1/150) / sqrt(7/30000) x sqrt(365) = sqrt(4/21 x 365) = sqrt(1460/21) = 8.338094
    assert near(m.sharpe, "8.338094")
    # downside deviation sqrt(0.01^2 / 3) = sqrt(1/30000); Sortino = (1/150) / sqrt(1/30000) x sqrt(365)
    # = sqrt(4/3 x 365) = sqrt(1460/3) = 22.060523
    assert near(m.sortino, "22.060523")
    assert m.calmar is None  # no CAGR
    # peak 1010 after t1 (day 1 06:00), trough 999.9 after t2 (day 2 08:00): 10.1 = 1 % of 1010
    assert m.max_drawdown == metrics.Drawdown(
        pct=D(1), amount=D("10.1"), start_ms=T0 + 6 * H, end_ms=T0 + DAY_MS + 8 * H
    )
    assert m.longest_losing_streak == 1
    assert m.time_in_market_pct == D(40)  # open 6 h + 6 h + 12 h = 24 h of 60 h
    assert m.exit_reasons == {"flat: TP filled": 2, "flat: risk_pnl_negative": 1}


def test_a_year_gives_cagr_calmar_and_a_drawdown_from_the_starting_capital() -> None:
    # t1 loses 50 over the first 100 days (equity 950), t2 gains 150 to day 365 (equity 1100).
    ledger = [
        trade(T0, T0 + 100 * DAY_MS, "-50", reason="flat: MDD"),
        trade(T0 + 100 * DAY_MS, T0 + 365 * DAY_MS, "150"),
    ]
    m = metrics.compute(ledger, CAPITAL)
    assert m.days == 365
    assert m.cagr_pct == D(10)  # (1100 / 1000) ^ (365 / 365) - 1 = 10 %
    # the peak is the capital itself, at the period's start: 50 / 1000 = 5 %
    assert m.max_drawdown == metrics.Drawdown(pct=D(5), amount=D(50), start_ms=T0, end_ms=T0 + 100 * DAY_MS)
    assert m.calmar == D(2)  # 10 % / 5 %
    assert m.time_in_market_pct == D(100)  # back to back
    assert m.profit_factor == D(3)  # 150 / 50
    assert m.average_rr == D(3)
    assert m.win_rate_pct == D(50)


def test_cagr_compounds_over_two_years_and_needs_thirty_days() -> None:
    # 1.1 ^ (365 / 730) - 1 = sqrt(1.1) - 1 = 0.04880885
    assert near(metrics.cagr_pct(CAPITAL, D(1100), D(730)), "4.880885")
    # 1.01 ^ (365 / 30) - 1 = 1.01 ^ 12.1667 - 1 = 0.1286953
    assert near(metrics.cagr_pct(CAPITAL, D(1010), D(30)), "12.869529")
    assert metrics.cagr_pct(CAPITAL, D(1010), D("29.99")) is None
    assert metrics.cagr_pct(CAPITAL, D(0), D(365)) == -100  # ruined
    assert metrics.cagr_pct(CAPITAL, D(-5), D(365)) == -100


def test_time_in_the_market_counts_overlapping_trades_once() -> None:
    # period 0-100: [0, 30] and [20, 50] cover 0-50, [40, 45] adds nothing, [80, 90] adds 10 -> 60 %
    assert metrics.time_in_market_pct([(0, 30), (20, 50), (40, 45), (80, 90)], 0, 100) == D(60)
    assert metrics.time_in_market_pct([(5, 5)], 5, 5) is None  # a period of zero length


def test_the_longest_losing_streak_is_ended_by_a_win_or_a_zero_net() -> None:
    nets = [D(n) for n in ("5", "-1", "-2", "0", "-3", "-4", "-5", "1", "-1")]
    assert metrics.longest_losing_streak(nets) == 3  # -3, -4, -5 (the 0 ended -1, -2)
    assert metrics.longest_losing_streak([]) == 0


def test_a_zero_net_trade_is_neither_win_nor_loss_but_counts() -> None:
    m = metrics.compute([trade(T0, T0 + H, "1", "1"), trade(T0 + 2 * H, T0 + 3 * H, "4")], CAPITAL)
    assert (m.wins, m.losses, m.closed_trades) == (1, 0, 2)
    assert m.win_rate_pct == D(50)  # 1 / 2
    assert m.expectancy == D(2)  # (0 + 4) / 2


def test_no_trade_at_all() -> None:
    m = metrics.compute([], CAPITAL)
    assert (m.closed_trades, m.open_trades, m.start_ms, m.end_ms, m.days) == (0, 0, None, None, None)
    assert (m.final_equity, m.total_return_pct, m.net, m.fees) == (CAPITAL, D(0), D(0), D(0))
    assert [
        m.cagr_pct,
        m.win_rate_pct,
        m.profit_factor,
        m.expectancy,
        m.average_rr,
        m.sharpe,
        m.sortino,
        m.calmar,
        m.time_in_market_pct,
    ] == [None] * 9
    assert (m.max_drawdown, m.longest_losing_streak, m.exit_reasons) == (metrics.Drawdown(), 0, {})


def test_one_trade_the_same_day() -> None:
    m = metrics.compute([trade(T0 + H, T0 + 3 * H, "7.5", "0.5")], CAPITAL)
    assert (m.closed_trades, m.wins, m.net) == (1, 1, D(7))
    assert m.total_return_pct == D("0.7")  # 7 / 1000 x 100
    assert (m.win_rate_pct, m.expectancy, m.time_in_market_pct) == (D(100), D(7), D(100))
    assert (m.profit_factor, m.average_rr) == (None, None)  # no loss
    assert (m.sharpe, m.sortino) == (None, None)  # one day of returns
    assert m.max_drawdown == metrics.Drawdown()


def test_all_wins() -> None:
    ledger = [trade(T0 + i * DAY_MS, T0 + i * DAY_MS + H, "10") for i in range(3)]
    m = metrics.compute(ledger, CAPITAL)
    assert (m.wins, m.losses, m.win_rate_pct) == (3, 0, D(100))
    assert (m.profit_factor, m.average_rr, m.sortino, m.calmar) == (None, None, None, None)
    assert m.max_drawdown == metrics.Drawdown() and m.longest_losing_streak == 0
    # returns 10/1000, 10/1010, 10/1020: all positive and unequal, so a Sharpe exists and is large
    assert m.sharpe is not None and m.sharpe > 100


def test_all_losses() -> None:
    # equity 1000 -> 980 -> 960 -> 940
    ledger = [trade(T0 + i * DAY_MS, T0 + i * DAY_MS + H, "-20", reason="flat: MDD") for i in range(3)]
    m = metrics.compute(ledger, CAPITAL)
    assert (m.wins, m.losses, m.win_rate_pct, m.profit_factor) == (0, 3, D(0), D(0))
    assert m.average_rr is None  # no win
    assert (m.expectancy, m.longest_losing_streak, m.total_return_pct) == (D(-20), 3, D(-6))
    # from the capital (period start) to the last close: 60 / 1000 = 6 %
    assert m.max_drawdown == metrics.Drawdown(pct=D(6), amount=D(60), start_ms=T0, end_ms=T0 + 2 * DAY_MS + H)
    assert m.exit_reasons == {"flat: MDD": 3}
    assert m.sharpe is not None and m.sharpe < 0 and m.sortino is not None and m.sortino < 0


@pytest.mark.parametrize("capital", [D(0), D(-1), D("NaN"), D("Infinity")])
def test_a_capital_that_is_not_positive_is_refused(capital: Decimal) -> None:
    with pytest.raises(ValueError, match="positive amount"):
        metrics.compute(THREE_DAYS, capital)


def test_open_trades_are_counted_but_change_no_figure() -> None:
    still_open = trade(T0 + H, None, "0", "50", symbol="BTCUSDT")  # its fees are not in the report
    base = metrics.compute(THREE_DAYS, CAPITAL)
    m = metrics.compute([*THREE_DAYS, still_open], CAPITAL)
    assert (m.open_trades, base.open_trades) == (1, 0)
    assert m == dataclasses.replace(base, open_trades=1)


def test_since_keeps_the_trades_closed_from_that_day_and_starts_the_period_there() -> None:
    m = metrics.compute(THREE_DAYS, CAPITAL, since_ms=T0 + DAY_MS)  # t2 and t3
    assert (m.closed_trades, m.net) == (2, D("9.898"))  # -10.1 + 19.998
    assert (m.start_ms, m.end_ms) == (T0 + DAY_MS, T0 + 2 * DAY_MS + 12 * H)
    # the capital is the peak: 10.1 / 1000
    assert m.max_drawdown.pct == D("1.01") and m.max_drawdown.start_ms == T0 + DAY_MS
    assert m.exit_reasons == {"flat: TP filled": 1, "flat: risk_pnl_negative": 1}


def test_a_ruined_account_has_no_sharpe_and_a_missing_reason_is_unknown() -> None:
    # day 1: -1000 takes the equity to 0; day 2 has no equity to return on
    ledger = [trade(T0, T0 + H, "-1000", reason=None), trade(T0 + DAY_MS, T0 + DAY_MS + H, "5")]
    m = metrics.compute(ledger, CAPITAL)
    assert (m.sharpe, m.sortino) == (None, None)
    assert m.max_drawdown.pct == 100 and m.final_equity == 5
    assert m.exit_reasons == {"flat: TP filled": 1, "unknown": 1}


def test_daily_returns_count_quiet_days_as_zero() -> None:
    # capital 1000; +10 on day 1, nothing on day 2, -10.1 on day 3 (on 1010)
    closes = [(T0 + H, D(10)), (T0 + 2 * DAY_MS + H, D("-10.1"))]
    assert metrics.daily_returns(CAPITAL, closes, T0, T0 + 2 * DAY_MS + H) == [D("0.01"), D(0), D("-0.01")]
