"""The message grammar against the corpus of real formats and variants (N-01..N-03)."""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from fsm.events import EntrySignal, LeadingMarket, RiskSignal, Unrecognised
from telegram_ingest.cli import parsed_to_json
from telegram_ingest.grammar import MAX_TEXT_BYTES, normalise_futures_symbol, normalise_ticker, parse_message

pytestmark = pytest.mark.spec("N-01", "N-02", "N-03")

CORPUS = yaml.safe_load((Path(__file__).parent / "message_corpus.yaml").read_text(encoding="utf-8"))
REAL_LEADING = CORPUS["cases"][0]["text"]


def _expected(case: dict[str, Any]) -> dict[str, Any]:
    fields = dict(CORPUS["leading_defaults"]) if case["kind"] == "leading" else {}
    fields.update(case.get("fields") or {})
    return {"kind": case["kind"], "fields": fields, "reason": case.get("reason")}


@pytest.mark.parametrize("case", CORPUS["cases"], ids=[c["name"] for c in CORPUS["cases"]])
def test_corpus_case(case: dict[str, Any]) -> None:
    assert parsed_to_json(parse_message(case["text"])) == _expected(case)


def test_corpus_covers_every_reason_code() -> None:
    reasons = {case.get("reason") for case in CORPUS["cases"]}
    assert reasons >= {
        "ticker_missing",
        "ticker_invalid",
        "funding_missing",
        "funding_invalid",
        "rank_missing",
        "rank_invalid",
        "category_missing",
        "category_unknown",
        "risk_symbol_invalid",
        "unknown_format",
        "empty",
    }
    assert len(CORPUS["cases"]) >= 40


def test_real_leading_message_as_typed_objects() -> None:
    assert parse_message(REAL_LEADING) == LeadingMarket(
        raw_ticker="btc",
        ticker="BTC",
        symbol="BTCUSDT",
        funding_pct=Decimal("-0.0250"),
        change_pct=Decimal("12.34"),
        rank_direction="UP",
        rank=11,
        category="AI",
        field_error=None,
    )


def test_risk_and_entry_as_typed_objects() -> None:
    assert parse_message("🥈 Binance : OOOUSDT.P 에서 숏 리스크관리 권장") == RiskSignal(
        raw_token="OOOUSDT.P", symbol="OOOUSDT"
    )
    assert parse_message("💥 Binance : OOOUSDT.P 에서 숏 진입 신호 발생!") == EntrySignal(
        raw_token="OOOUSDT.P", symbol="OOOUSDT"
    )
    assert parse_message("💥 Binance : BTC-USDT.P 에서 숏 진입 신호 발생!") == EntrySignal(
        raw_token="BTC-USDT.P", symbol=None
    )


def test_bad_ticker_is_told_apart_from_foreign_chatter_w03() -> None:
    assert parse_message("🔥 실시간 주도 마켓 분석 (BT C)") == Unrecognised(
        reason="ticker_invalid", kind="leading"
    )
    assert parse_message("hello") == Unrecognised(reason="unknown_format", kind="unknown")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("btc", "BTC"),
        (" 1000pepe ", "1000PEPE"),
        ("\u200bE\u2060TH\ufeff", "ETH"),
        ("B T", None),
        ("ß", None),
        ("", None),
    ],
)
def test_normalise_ticker(raw: str, expected: str | None) -> None:
    assert normalise_ticker(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("BTCUSDT.P", "BTCUSDT"),
        ("btcusdt.p", "BTCUSDT"),
        ("ETHUSDT", "ETHUSDT"),
        ("BTC-USDT.P", None),
        ("USDT.P", None),
        ("BTCUSD.P", None),
        ("BTCUSDT.P.P", None),
        ("BTCUSDT.X", None),
    ],
)
def test_normalise_futures_symbol(raw: str, expected: str | None) -> None:
    assert normalise_futures_symbol(raw) == expected


def test_text_over_64_kib_is_cut_before_parsing() -> None:
    head = "🔥 실시간 주도 마켓 분석 (btc)\n⏱️Binance 펀딩비 및 카운트다운 : -0.0250% / 01:23:45 (4h)\n"
    rank = "🥇지난 24H 등락률 및 순위 : +12.34% / (상승) 상위 11위\n"
    filler = "x" * MAX_TEXT_BYTES + "\n"
    # The rank and category lines sit beyond the first 64 KiB, so they are not read.
    result = parse_message(head + filler + rank + "🏷️카테고리 : AI\n")
    assert isinstance(result, LeadingMarket)
    assert (result.ticker, result.funding_pct, result.rank, result.field_error) == (
        "BTC",
        Decimal("-0.0250"),
        None,
        "rank_missing",
    )


def test_multi_byte_cut_never_splits_a_character() -> None:
    # 3-byte characters: 64 KiB is not a multiple of 3, the partial character is dropped, not mangled.
    result = parse_message("가" * 40_000)
    assert result == Unrecognised(reason="unknown_format", kind="unknown")


@pytest.mark.parametrize(
    "text",
    [
        "(" * 3_000_000,
        "🔥 실시간 주도 마켓 분석 " + "(" * 2_000_000,
        "실시간 주도 마켓 분석 " * 300_000,
        "🔥 실시간 주도 마켓 분석 (A)\n🏷️카테고리 :" + " " * 2_000_000 + "x",
        "🔥 실시간 주도 마켓 분석 (A)\n🏷️카테고리 :" + "(" * 40_000 + ")" * 40_000,
        "🔥 실시간 주도 마켓 분석 (A)\n펀딩비 : -" + "9" * 2_000_000 + "%",
        "🔥 실시간 주도 마켓 분석 (A)\n순위 : " + "상위 " * 1_000_000,
        "리스크관리 " + "Binance : " * 500_000,
        "💥 진입 신호 Binance :" + " " * 3_000_000,
        "\n" * 3_000_000,
    ],
    ids=[
        "parens",
        "title-parens",
        "titles",
        "spaces",
        "nested",
        "digits",
        "ranks",
        "binance",
        "entry",
        "newlines",
    ],
)
def test_adversarial_megabytes_parse_quickly(text: str) -> None:
    started = time.perf_counter()
    result = parse_message(text)
    elapsed = time.perf_counter() - started
    assert isinstance(result, LeadingMarket | RiskSignal | EntrySignal | Unrecognised)
    assert elapsed < 1.0, f"took {elapsed:.3f} s"


def test_non_string_input_does_not_raise() -> None:
    assert parse_message(b"\xff\x00" * 10) == Unrecognised(reason="unknown_format")  # type: ignore[arg-type]
    assert parse_message(None) == Unrecognised(reason="unknown_format")  # type: ignore[arg-type]
