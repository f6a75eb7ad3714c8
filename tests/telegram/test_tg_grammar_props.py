"""Properties of the grammar: total on any input, and a parsed symbol is always well-formed."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fsm.events import EntrySignal, LeadingMarket, RiskSignal, Unrecognised
from telegram_ingest.grammar import clean_token, parse_message

pytestmark = pytest.mark.spec("N-01", "N-03")

TICKER = re.compile(r"[A-Z0-9]+")
ANY_CHAR = st.characters(exclude_categories=())  # includes surrogates, controls, unassigned
LINE_BREAKS = set("\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029")
PARENS = set("()（）")

TEMPLATE = (
    "🔥 실시간 주도 마켓 분석 ({ticker})\n\n📈 주도 마켓: 바이낸스\n\n"
    "⏱️Binance 펀딩비 및 카운트다운 : {funding} / 01:23:45 (4h)\n\n"
    "🥇지난 24H 등락률 및 순위 : +12.34% / (상승) 상위 {rank}위\n\n🏷️카테고리 : {category}\n"
)
FRAGMENTS = st.sampled_from(
    [
        "🔥 실시간 주도 마켓 분석 (",
        ")",
        "(",
        "Binance : ",
        "펀딩비 : ",
        "-0.0250%",
        "순위 : ",
        "(상승) 상위 ",
        "위",
        "카테고리 : ",
        "정보없음",
        "리스크관리",
        "진입 신호",
        "USDT.P",
        "에서",
        "\n",
        "\r\n",
        "\u200b",
        "\ufe0f",
        ":",
    ]
)


def _check(result: object) -> None:
    assert isinstance(result, LeadingMarket | RiskSignal | EntrySignal | Unrecognised)
    if isinstance(result, LeadingMarket):
        assert TICKER.fullmatch(result.ticker)
        assert result.symbol == result.ticker + "USDT"
    if isinstance(result, RiskSignal):
        assert re.fullmatch(r"[A-Z0-9]+USDT", result.symbol)
    if isinstance(result, EntrySignal) and result.symbol is not None:
        assert re.fullmatch(r"[A-Z0-9]+USDT", result.symbol)


@settings(max_examples=500)
@given(st.text(ANY_CHAR, max_size=400))
def test_any_unicode_text_parses_without_raising(text: str) -> None:
    _check(parse_message(text))


@settings(max_examples=300)
@given(st.binary(max_size=600))
def test_any_bytes_decoded_with_replace_parse_without_raising(data: bytes) -> None:
    _check(parse_message(data.decode("utf-8", errors="replace")))


@settings(max_examples=500)
@given(st.lists(st.one_of(FRAGMENTS, st.text(ANY_CHAR, max_size=6)), max_size=40).map("".join))
def test_grammar_shaped_noise_parses_without_raising(text: str) -> None:
    _check(parse_message(text))


@settings(max_examples=500)
@given(raw=st.text(ANY_CHAR, max_size=20))
@example(raw="btc")
@example(raw="\u200bsol\u0000")
@example(raw="ﬁl")
def test_title_ticker_follows_the_normalisation_rule(raw: str) -> None:
    text = TEMPLATE.format(ticker=raw, funding="-0.0250%", rank=11, category="AI")
    result = parse_message(text)
    _check(result)
    cleaned = clean_token(raw)
    if LINE_BREAKS.isdisjoint(raw) and PARENS.isdisjoint(raw):
        if re.fullmatch(r"[A-Za-z0-9]+", cleaned):
            assert isinstance(result, LeadingMarket)
            assert result.ticker == cleaned.upper()
            assert result.raw_ticker == raw
        else:
            assert isinstance(result, Unrecognised)
            assert result.kind == "leading"
            assert result.reason == ("ticker_missing" if cleaned == "" else "ticker_invalid")


@settings(max_examples=300)
@given(
    funding=st.decimals(min_value=Decimal("-5"), max_value=Decimal("5"), places=4, allow_nan=False),
    rank=st.integers(min_value=1, max_value=999_999),
    category=st.text(st.characters(categories=["L", "N", "Zs"]), min_size=1, max_size=30),
)
def test_fields_round_trip_exactly(funding: Decimal, rank: int, category: str) -> None:
    text = TEMPLATE.format(ticker="ETH", funding=f"{funding:+.4f}%", rank=rank, category=category)
    result = parse_message(text)
    assert isinstance(result, LeadingMarket)
    assert result.funding_pct == funding
    assert result.rank == rank
    stripped = category.strip()
    if "".join(stripped.split()) == "정보없음":
        assert result.field_error == "category_unknown"
    elif stripped:
        assert (result.category, result.field_error) == (stripped, None)
    else:
        assert result.field_error == "category_missing"


@settings(max_examples=300)
@given(token=st.text(ANY_CHAR, max_size=20))
def test_risk_token_yields_a_usdt_symbol_or_the_failure_code(token: str) -> None:
    result = parse_message(f"🥈 Binance : {token} 에서 숏 리스크관리 권장")
    _check(result)
    assert isinstance(result, RiskSignal) or result == Unrecognised(reason="risk_symbol_invalid", kind="risk")
