"""The ``parse`` and ``login`` subcommands."""

from __future__ import annotations

import argparse
import io
import json

import pytest

from telegram_ingest import cli

LEADING = (
    "🔥 실시간 주도 마켓 분석 (btc)\n\n📈 주도 마켓: 바이낸스\n\n"
    "⏱️Binance 펀딩비 및 카운트다운 : -0.0250% / 01:23:45 (4h)\n\n"
    "🥇지난 24H 등락률 및 순위 : +12.34% / (상승) 상위 11위\n\n"
    "🏷️카테고리 : AI\n\n🔗Liq HeatMap : 히트맵 링크\n"
)


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="shortfsm")
    cli.register(root.add_subparsers(dest="command", required=True))
    return root


def run(argv: list[str], stdin: str = "") -> tuple[int, dict[str, object]]:
    args = parser().parse_args(argv)
    out = io.StringIO()
    code = cli.run_parse(args, stdin=io.StringIO(stdin), stdout=out)
    return code, json.loads(out.getvalue())


def test_parse_leading_from_text_option() -> None:
    assert run(["parse", "--text", LEADING]) == (
        0,
        {
            "kind": "leading",
            "fields": {
                "raw_ticker": "btc",
                "ticker": "BTC",
                "symbol": "BTCUSDT",
                "funding_pct": "-0.0250",
                "change_pct": "12.34",
                "rank_direction": "UP",
                "rank": 11,
                "category": "AI",
                "field_error": None,
            },
            "reason": None,
        },
    )


def test_parse_risk_from_stdin() -> None:
    assert run(["parse"], stdin="🥈 Binance : btcusdt.p 에서 숏 리스크관리 권장\n") == (
        0,
        {"kind": "risk", "fields": {"raw_token": "btcusdt.p", "symbol": "BTCUSDT"}, "reason": None},
    )


def test_parse_entry() -> None:
    assert run(["parse", "--text", "💥 Binance : OOOUSDT.P 에서 숏 진입 신호 발생!"]) == (
        0,
        {"kind": "entry", "fields": {"raw_token": "OOOUSDT.P", "symbol": "OOOUSDT"}, "reason": None},
    )


def test_parse_junk_exits_1() -> None:
    assert run(["parse", "--text", "\x00\x01 junk"]) == (
        1,
        {"kind": "unrecognised", "fields": {"kind": "unknown"}, "reason": "unknown_format"},
    )


def test_parse_field_error_is_the_reason() -> None:
    code, result = run(["parse", "--text", LEADING.replace("AI", "정보없음")])
    assert (code, result["kind"], result["reason"]) == (0, "leading", "category_unknown")


def test_parse_reads_binary_stdin_with_replacement() -> None:
    args = parser().parse_args(["parse"])
    stdin = io.TextIOWrapper(io.BytesIO(b"\xff\xfe\x00garbage"), encoding="utf-8")
    out = io.StringIO()
    assert cli.run_parse(args, stdin=stdin, stdout=out) == 1
    assert json.loads(out.getvalue())["reason"] == "unknown_format"


def test_subcommands_set_func() -> None:
    args = parser().parse_args(["parse", "--text", "x"])
    assert args.func is cli.run_parse
    args = parser().parse_args(["login", "--session", "var/a.session"])
    assert (args.func, args.session) == (cli.run_login, "var/a.session")
    assert parser().parse_args(["login"]).session is None  # the config's telegram.session_path


def test_login_without_environment_explains_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TELEGRAM_API_ID", "TELEGRAM_API_HASH", "TELEGRAM_PHONE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TELEGRAM_API_HASH", "0" * 32)
    err = io.StringIO()
    assert cli.run_login(parser().parse_args(["login"]), stderr=err) == 2
    assert "TELEGRAM_API_ID, TELEGRAM_PHONE" in err.getvalue()


def test_login_with_non_numeric_api_id(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TELEGRAM_API_ID", "abc")
    monkeypatch.setenv("TELEGRAM_API_HASH", "0" * 32)
    monkeypatch.setenv("TELEGRAM_PHONE", "+10000000000")
    err = io.StringIO()
    assert cli.run_login(parser().parse_args(["login"]), stderr=err) == 2
    assert "TELEGRAM_API_ID" in err.getvalue()
