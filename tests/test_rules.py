"""Exact unit tests for ``fsm.rules``: normalisation, sizing, thresholds, targets, filters and client ids."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fsm import rules
from fsm.events import Candle, SymbolInfo
from fsm.strategy import DEFAULT_EXCLUDED_SUBSTRINGS, DEFAULT_EXCLUDED_WORDS

D = Decimal
BINANCE_CID = re.compile(r"^[.A-Z:/a-z0-9_-]{1,36}$")
BTC = SymbolInfo(
    symbol="BTCUSDT",
    status="TRADING",
    tick_size=D("0.1"),
    step_size=D("0.001"),
    min_qty=D("0.001"),
    min_notional=D("5"),
)


def _info(**overrides: Decimal | None) -> SymbolInfo:
    fields: dict[str, object] = {
        "symbol": "TESTUSDT",
        "status": "TRADING",
        "tick_size": D("0.1"),
        "step_size": D("0.001"),
        "min_qty": D("0.001"),
        "min_notional": D("5"),
        **overrides,
    }
    return SymbolInfo(**fields)  # type: ignore[arg-type]


def _candle(open_s: int, o: str, h: str, low: str, c: str) -> Candle:
    open_ms = open_s * 1000
    return Candle(
        open_time_ms=open_ms, close_time_ms=open_ms + 179_999, open=D(o), high=D(h), low=D(low), close=D(c)
    )


# ---------------------------------------------------------------------------------------------
# Normalisation (W29, W30, W32-2)
# ---------------------------------------------------------------------------------------------


@pytest.mark.spec("W29", "N-09")
@pytest.mark.parametrize(
    ("price", "tick", "expected"),
    [
        ("95.95", "0.1", "96.0"),  # exactly half a tick: up
        ("95.94", "0.1", "95.9"),
        ("95.9499999", "0.1", "95.9"),
        ("0.00005", "0.0001", "0.0001"),
        ("0.000049", "0.0001", "0.0000"),
        ("101", "0.1", "101.0"),
        ("100.899", "0.01", "100.90"),
        ("12345.5", "1", "12346"),
        ("0.01015", "0.0000001", "0.0101500"),
    ],
)
def test_round_to_tick_is_half_up_to_the_nearest_tick(price: str, tick: str, expected: str) -> None:
    result = rules.round_to_tick(D(price), D(tick))
    assert result == D(expected)
    assert str(result) == expected  # quantised to the tick's exponent
    assert result % D(tick) == 0


@pytest.mark.spec("W29", "N-09")
def test_round_to_tick_with_zero_tick_leaves_the_price() -> None:
    assert str(rules.round_to_tick(D("95.95"), D("0"))) == "95.95"


@pytest.mark.spec("W30", "N-11")
@pytest.mark.parametrize(
    ("qty", "step", "expected"),
    [
        ("4.9504950495", "0.001", "4.950"),
        ("4.9999", "0.001", "4.999"),
        ("0.0009", "0.001", "0.000"),
        ("49504.95", "1", "49504"),
        ("0.25", "0.1", "0.2"),
        ("3", "0.5", "3.0"),
    ],
)
def test_floor_to_step_never_rounds_up(qty: str, step: str, expected: str) -> None:
    result = rules.floor_to_step(D(qty), D(step))
    assert str(result) == expected
    assert result <= D(qty)


@pytest.mark.spec("W32-2", "W30", "N-11")
def test_first_entry_quantity_is_funds_over_normalised_target_floored() -> None:
    # 50% of 1000 USDT at the normalised target 101.0: 4.9504... -> 4.950
    sized = rules.size_order(D("500"), D("101.0"), BTC)
    assert sized.ok
    assert sized.reason == ""
    assert str(sized.quantity) == "4.950"


@pytest.mark.spec("W32-5", "W30", "N-11")
def test_size_order_below_min_qty() -> None:
    info = _info(min_qty=D("0.01"), min_notional=D("0"))
    sized = rules.size_order(D("0.5"), D("100"), info)  # 0.005 after the floor
    assert not sized.ok
    assert sized.reason == "below_min_qty"
    assert sized.quantity == D("0.005")


@pytest.mark.spec("W31", "W32-5", "N-11")
def test_size_order_below_min_notional() -> None:
    sized = rules.size_order(D("4.99"), D("100"), BTC)  # 0.049 x 100 = 4.9 < 5
    assert not sized.ok
    assert sized.reason == "below_min_notional"
    assert sized.quantity == D("0.049")
    at_limit = rules.size_order(D("5"), D("100"), BTC)  # 0.050 x 100 = 5: allowed
    assert at_limit.ok
    assert at_limit.quantity == D("0.050")


@pytest.mark.spec("W32-5", "N-11")
def test_size_order_quantity_zero_after_floor() -> None:
    sized = rules.size_order(D("0.05"), D("100"), BTC)  # 0.0005 -> 0.000
    assert not sized.ok
    assert sized.reason == "quantity_zero"
    assert sized.quantity == 0


@pytest.mark.spec("N-11")
@pytest.mark.parametrize("funds", ["0", "-1"])
def test_size_order_without_funds(funds: str) -> None:
    sized = rules.size_order(D(funds), D("100"), BTC)
    assert sized.reason == "no_funds"
    assert sized.quantity == 0


@pytest.mark.spec("W29")
def test_size_order_refuses_a_non_positive_price() -> None:
    assert rules.size_order(D("500"), D("0"), BTC).reason == "price_not_positive"


def test_size_order_clamps_to_max_qty_and_uses_the_market_lot_for_market_orders() -> None:
    info = _info(max_qty=D("2.5"), market_step_size=D("0.1"), market_min_qty=D("0.1"))
    assert rules.size_order(D("500"), D("100"), info) == rules.Sized(D("2.500"))
    market = rules.size_order(D("499"), D("100"), info, market=True)  # 4.99 -> market step 0.1 -> 4.9 -> 2.5
    assert market == rules.Sized(D("2.5"))


@pytest.mark.spec("R11", "R22")
def test_exit_quantity_and_dust() -> None:
    info = _info(market_step_size=D("0.01"), min_qty=D("0.01"))
    assert str(rules.exit_quantity(D("4.9509"), info)) == "4.950"
    assert str(rules.exit_quantity(D("4.9509"), info, market=True)) == "4.95"
    assert rules.is_dust(D("0.009"), info)
    assert not rules.is_dust(D("0.01"), info)
    assert rules.is_dust(D("0"), None)
    assert not rules.is_dust(D("0.000001"), None)


# ---------------------------------------------------------------------------------------------
# The 0.1% algorithm (W17-2, N-09) and PnL (R04, R05)
# ---------------------------------------------------------------------------------------------


@pytest.mark.spec("W17-2", "W32", "N-09")
def test_entry_threshold_is_exact() -> None:
    threshold = rules.entry_threshold(D("101.0"), D("0.1"))
    assert threshold == D("100.899")
    assert D("100.899") >= threshold
    assert not D("100.8989999") >= threshold


@pytest.mark.spec("W17-2", "W40", "N-09")
def test_take_profit_price_and_threshold() -> None:
    ptp = rules.take_profit_price(D("101.0"), D("5"), D("0.1"))  # 95.95 -> 96.0
    assert str(ptp) == "96.0"
    threshold = rules.take_profit_threshold(ptp, D("0.1"))
    assert threshold == D("96.096")
    assert D("96.096") <= threshold
    assert not D("96.0960001") <= threshold


@pytest.mark.spec("W17-2", "W43", "N-09")
def test_breakeven_threshold_is_above_the_average() -> None:
    assert rules.breakeven_threshold(D("100.0"), D("0.1")) == D("100.1")


@pytest.mark.spec("W41", "W43-1", "N-09", "N-17")
def test_second_entry_and_mdd_prices_are_tick_normalised() -> None:
    assert str(rules.second_entry_price(D("101.0"), D("15"), D("0.1"))) == "116.2"  # 116.15 half-up
    assert str(rules.mdd_stop_price(D("108.6"), D("15"), D("0.1"))) == "124.9"  # 124.89


@pytest.mark.spec("R05")
def test_pnl_sign_is_zero_only_on_exact_equality() -> None:
    assert rules.pnl_sign(D("100.0"), D("100")) == 0
    assert rules.pnl_sign(D("100"), D("100.0000000001")) == -1
    assert rules.pnl_sign(D("100"), D("99.9999999999")) == 1
    assert rules.short_roi_pct(D("100.0"), D("100")) == 0


def test_short_roi_pct() -> None:
    assert rules.short_roi_pct(D("100"), D("95")) == D("5")
    assert rules.short_roi_pct(D("100"), D("102.5")) == D("-2.5")
    assert rules.short_roi_pct(D("0"), D("95")) == 0  # no position: no ROI


# ---------------------------------------------------------------------------------------------
# Targets (W15, W16, N-08)
# ---------------------------------------------------------------------------------------------


@pytest.mark.spec("W15", "N-08")
def test_aggressive_target_uses_only_candles_closed_before_receipt() -> None:
    older = _candle(0, "100", "105", "99", "101")
    last_closed = _candle(180, "101", "103", "100", "102")  # closes at 359_999 ms
    forming = _candle(360, "102", "120", "101", "119")
    klines = (forming, older, last_closed)  # order of arrival must not matter
    assert rules.aggressive_target(klines, 360_000) == D("103")
    # A candle whose close time equals the receipt time is not closed yet.
    assert rules.aggressive_target(klines, 359_999) == D("105")
    assert rules.aggressive_target(klines, 179_999) is None
    assert rules.aggressive_target((), 360_000) is None


ATR_CANDLES = (
    _candle(0, "11", "13", "10", "12"),  # TR = 13 - 10 = 3 (first candle: high - low)
    _candle(180, "12", "15", "12", "13"),  # TR = max(3, |15 - 12|, |12 - 12|) = 3
    _candle(360, "18", "19", "17", "18"),  # gap: TR = max(2, |19 - 13|, |17 - 13|) = 6
    _candle(540, "18", "18.5", "17.5", "18"),  # TR = max(1, 0.5, 0.5) = 1
    _candle(720, "18", "18", "12", "13"),  # TR = max(6, |18 - 18|, |12 - 18|) = 6
)


@pytest.mark.spec("W16", "N-08")
def test_atr_upper_band_wilder_hand_computed() -> None:
    # Seed = mean(3, 3, 6) = 4; ATR = (4 x 2 + 1) / 3 = 3; ATR = (3 x 2 + 6) / 3 = 4; band = 13 + 1 x 4.
    receipt = 900_000
    band = rules.atr_upper_band(ATR_CANDLES, receipt, length=3, multiplier=D("1"), count=200)
    assert band == D("17")
    assert rules.atr_upper_band(ATR_CANDLES, receipt, length=3, multiplier=D("2"), count=200) == D("21")
    # A simple mean of the five true ranges would give 13 + 3.8 = 16.8: the smoothing is Wilder's.
    assert band != D("16.8")


@pytest.mark.spec("W16", "N-08")
def test_atr_upper_band_ignores_the_forming_candle_and_needs_length_candles() -> None:
    forming = _candle(900, "13", "40", "1", "30")
    assert rules.atr_upper_band(
        (*ATR_CANDLES, forming), 900_000, length=3, multiplier=D("1"), count=200
    ) == D("17")
    # Only two candles closed at 360_000 ms: fewer than the length.
    assert rules.atr_upper_band(ATR_CANDLES, 360_000, length=3, multiplier=D("1"), count=200) is None
    # count=3 keeps the last three closed candles; the first of them has no previous close inside the
    # window, so its TR is 19 - 17 = 2 (not 6): TRs 2, 1, 6, ATR 3, band 13 + 3.
    last_three = rules.atr_upper_band(ATR_CANDLES, 900_000, length=3, multiplier=D("1"), count=3)
    assert last_three == D("16")


# ---------------------------------------------------------------------------------------------
# Filters (W09, W11, W12, W13, N-06, N-07, N-27)
# ---------------------------------------------------------------------------------------------


@pytest.mark.spec("W09", "N-06")
@pytest.mark.parametrize(
    ("category", "hit"),
    [
        ("Meme", "meme"),
        ("DeFi", "defi"),
        ("Pump.fun", "pump.fun"),
        ("DEX", "dex"),
        ("탈중앙화 거래소", "탈중앙화 거래소"),
        ("Binance Alpha Spotlight", "binance alpha spotlight"),
        ("Decentralized Finance (DeFi)", "defi"),
        ("Meme, Solana", "meme"),
        ("MEME", "meme"),
        ("BNB Chain 탈중앙화 거래소", "탈중앙화 거래소"),
    ],
)
def test_excluded_categories_match(category: str, hit: str) -> None:
    assert rules.category_excluded(category, DEFAULT_EXCLUDED_WORDS, DEFAULT_EXCLUDED_SUBSTRINGS) == hit


@pytest.mark.spec("W09", "N-06")
@pytest.mark.parametrize("category", ["Index", "Indexing", "AI", "Layer 1", "Memecoin", "Alpha", "Binance"])
def test_other_categories_pass(category: str) -> None:
    assert rules.category_excluded(category, DEFAULT_EXCLUDED_WORDS, DEFAULT_EXCLUDED_SUBSTRINGS) is None


@pytest.mark.spec("W13", "N-07")
@pytest.mark.parametrize(
    ("funding", "rejected"),
    [("-0.1", True), ("-0.1000", True), ("-0.25", True), ("-0.0999", False), ("0", False), ("0.0100", False)],
)
def test_funding_filter_boundary(funding: str, rejected: bool) -> None:
    assert rules.funding_rejected(D(funding), D("-0.1")) is rejected


@pytest.mark.spec("W11", "W12", "N-07")
@pytest.mark.parametrize(
    ("direction", "rank", "rejected"),
    [
        ("UP", 1, True),
        ("UP", 10, True),
        ("UP", 11, False),
        ("UP", 0, False),
        ("DOWN", 1, False),
        ("DOWN", 10, False),
    ],
)
def test_rank_filter(direction: str, rank: int, rejected: bool) -> None:
    assert rules.rank_rejected(direction, rank, 10) is rejected


@pytest.mark.spec("N-27")
def test_signal_age_limit_is_inclusive() -> None:
    assert not rules.signal_too_old(1_000_000, 1_180_000, 180)  # exactly 180 s old: still used
    assert rules.signal_too_old(1_000_000, 1_180_001, 180)


# ---------------------------------------------------------------------------------------------
# Client order ids (N-13)
# ---------------------------------------------------------------------------------------------


@pytest.mark.spec("N-13")
def test_client_order_id_readable_form() -> None:
    cid = rules.client_order_id("BTCUSDT", 1001, "ENTRY1", 1)
    assert cid == "sf1001-E11-BTCUSDT"
    assert rules.client_order_id("BTCUSDT", 1001, "ENTRY1", 1) == cid  # deterministic
    assert rules.parse_client_order_id(cid) == rules.ParsedClientId(1001, "ENTRY1", 1, "BTCUSDT")


@pytest.mark.spec("N-13")
def test_client_order_id_for_long_symbols_and_ten_digit_message_ids() -> None:
    exact = rules.client_order_id("1000000BABYDOGEUSDT", 9_999_999_999, "ENTRY1", 1)
    assert exact == "sf9999999999-E11-1000000BABYDOGEUSDT"  # 36 characters: kept readable
    assert len(exact) == 36
    hashed = rules.client_order_id("1000000BABYDOGEUSDT", 9_999_999_999, "CLOSE", 12)
    assert re.fullmatch(r"sf9999999999-CL12-H[0-9A-F]{8}", hashed)
    assert rules.client_order_id("1000000BABYDOGEUSDT", 9_999_999_999, "CLOSE", 12) == hashed
    assert hashed != rules.client_order_id("1000000SATSUSDT1", 9_999_999_999, "CLOSE", 12)
    parsed = rules.parse_client_order_id(hashed)
    assert parsed is not None
    assert (parsed.message_id, parsed.leg, parsed.generation) == (9_999_999_999, "CLOSE", 12)


@pytest.mark.spec("N-13")
@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(
    base=st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=1, max_size=20),
    message_id=st.integers(min_value=1, max_value=9_999_999_999),
    leg=st.sampled_from(sorted(rules.LEG_CODES)),
    generation=st.integers(min_value=1, max_value=999),
)
def test_client_order_id_fits_binance_and_round_trips(
    base: str, message_id: int, leg: str, generation: int
) -> None:
    symbol = base + "USDT"
    cid = rules.client_order_id(symbol, message_id, leg, generation)
    assert BINANCE_CID.match(cid)
    assert cid == rules.client_order_id(symbol, message_id, leg, generation)
    parsed = rules.parse_client_order_id(cid)
    assert parsed is not None
    assert (parsed.message_id, parsed.leg, parsed.generation) == (message_id, leg, generation)
    assert cid == f"sf{message_id}-{rules.LEG_CODES[leg]}{generation}-{parsed.symbol_part}"
    if len(f"sf{message_id}-{rules.LEG_CODES[leg]}{generation}-{symbol}") <= 36:
        assert parsed.symbol_part == symbol
    else:
        assert re.fullmatch(r"H[0-9A-F]{8}", parsed.symbol_part)


@pytest.mark.spec("N-13", "N-28")
@pytest.mark.parametrize(
    "cid",
    [
        "web_8f2c1a",
        "autoclose-1001",
        "x-AbCd1234",
        "sf1001-XX1-BTCUSDT",  # unknown leg code
        "sf-E11-BTCUSDT",
        "sf1001-E1-BTCUSDT",  # no generation
        "sf1001-E11-btcusdt",
        "SF1001-E11-BTCUSDT",
        "sf1001-E11-",
        "",
    ],
)
def test_foreign_client_ids_are_not_ours(cid: str) -> None:
    assert rules.parse_client_order_id(cid) is None
