"""binance.parse: every fixture payload to exact fsm values, malformed input, command params."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from binance import parse
from fsm.commands import CancelAlgoOrder, CancelOrder, PlaceAlgoOrder, PlaceOrder
from fsm.events import (
    AlgoOrderUpdated,
    BalanceChanged,
    Candle,
    FundingFee,
    MarkPriceTick,
    OrderUpdated,
    PositionChanged,
    SymbolInfo,
)

FIX = Path(__file__).parent / "fixtures"
NOW = 1_800_000_000_000


def load(name: str) -> Any:
    return json.loads((FIX / name).read_text())


def raw(name: str) -> str:
    return (FIX / name).read_text()


def test_mark_price_ws() -> None:
    assert parse.decode_frame(raw("mark_price_update.json"), NOW) == [
        MarkPriceTick(
            now_ms=NOW,
            symbol="BTCUSDT",
            price=Decimal("11794.15000000"),
            event_time_ms=1562305380000,
            source="WS",
        )
    ]


def test_mark_price_ws_combined_envelope_and_array() -> None:
    data = load("mark_price_update.json")
    env = json.dumps({"stream": "btcusdt@markPrice@1s", "data": data})
    arr = json.dumps([data, {**data, "s": "ETHUSDT", "p": "2000.5"}])
    assert [e.symbol for e in parse.decode_frame(env, NOW)] == ["BTCUSDT"]  # type: ignore[union-attr]
    out = parse.decode_frame(arr, NOW)
    assert [(e.symbol, e.price) for e in out] == [  # type: ignore[union-attr]
        ("BTCUSDT", Decimal("11794.15000000")),
        ("ETHUSDT", Decimal("2000.5")),
    ]


def test_mark_price_rest() -> None:
    assert parse.mark_price_from_rest(load("premium_index_btcusdt.json"), NOW) == MarkPriceTick(
        now_ms=NOW,
        symbol="BTCUSDT",
        price=Decimal("11793.63104562"),
        event_time_ms=1597370495002,
        source="REST",
    )


def test_klines_rest() -> None:
    assert parse.candles_from_rest(load("klines_rest.json")) == [
        Candle(
            open_time_ms=1638747660000,
            close_time_ms=1638747839999,
            open=Decimal("0.0010"),
            high=Decimal("0.0025"),
            low=Decimal("0.0015"),
            close=Decimal("0.0020"),
        ),
        Candle(
            open_time_ms=1638747840000,
            close_time_ms=1638748019999,
            open=Decimal("0.0020"),
            high=Decimal("0.0030"),
            low=Decimal("0.0019"),
            close=Decimal("0.0028"),
        ),
    ]


def test_klines_rest_bad_row_skipped() -> None:
    rows = load("klines_rest.json")
    rows.insert(1, ["x"])
    assert len(parse.candles_from_rest(rows)) == 2
    with pytest.raises(ValueError):
        parse.candles_from_rest({"code": -1121})


def test_kline_ws() -> None:
    (k,) = parse.decode_frame(raw("kline_3m_ws.json"), NOW)
    assert k == parse.KlineUpdate(
        now_ms=NOW,
        symbol="BNBUSDT",
        interval="3m",
        closed=False,
        candle=Candle(
            open_time_ms=1638747660000,
            close_time_ms=1638747839999,
            open=Decimal("0.0010"),
            high=Decimal("0.0025"),
            low=Decimal("0.0015"),
            close=Decimal("0.0020"),
        ),
    )


def test_symbol_info_from_exchange_info_entry() -> None:
    assert parse.symbol_info(load("exchange_info_symbol_blzusdt.json")) == SymbolInfo(
        symbol="BLZUSDT",
        status="TRADING",
        tick_size=Decimal("0.0001"),
        min_price=Decimal("0.0001"),
        max_price=Decimal("300"),
        step_size=Decimal("1"),
        min_qty=Decimal("1"),
        max_qty=Decimal("10000000"),
        market_step_size=Decimal("1"),
        market_min_qty=Decimal("1"),
        market_max_qty=Decimal("590119"),
        min_notional=Decimal("5.0"),
    )


def test_symbol_infos_skips_broken_entries() -> None:
    good = load("exchange_info_symbol_blzusdt.json")
    infos = parse.symbol_infos({"symbols": [good, {"symbol": "BADUSDT", "filters": []}]})
    assert list(infos) == ["BLZUSDT"]


def test_order_trade_update_capture() -> None:
    assert parse.decode_frame(raw("order_trade_update_capture.json"), NOW) == [
        OrderUpdated(
            now_ms=NOW,
            symbol="ETHUSDC",
            client_order_id="xNzvN00fwGYcj0DLc9EThL",
            order_id=81873278124,
            side="SELL",
            order_type="LIMIT",
            status="NEW",
            price=Decimal("2463.26"),
            orig_qty=Decimal("0.473"),
            cum_qty=Decimal("0"),
            last_qty=Decimal("0"),
            last_price=Decimal("0"),
            avg_price=Decimal("0"),
            trade_id=0,
            reduce_only=False,
            close_position=False,
            position_side="SHORT",
            realized_pnl=Decimal("0"),
            commission=Decimal("0"),
        )
    ]


def test_order_trade_update_doc_and_fill() -> None:
    (ev,) = parse.decode_frame(raw("order_trade_update_doc.json"), NOW)
    assert isinstance(ev, OrderUpdated)
    assert (ev.client_order_id, ev.order_id, ev.order_type, ev.position_side) == (
        "TEST",
        8886774,
        "TRAILING_STOP_MARKET",
        "LONG",
    )
    d = load("order_trade_update_capture.json")
    d["o"].update(
        {
            "x": "TRADE",
            "X": "PARTIALLY_FILLED",
            "l": "0.2",
            "z": "0.2",
            "L": "2463.26",
            "t": 871685788,
            "n": "0.1",
            "rp": "-1.5",
            "ap": "2463.26",
        }
    )
    (fill,) = parse.decode_message(d, NOW)
    assert isinstance(fill, OrderUpdated)
    assert (fill.status, fill.last_qty, fill.cum_qty, fill.trade_id, fill.commission, fill.realized_pnl) == (
        "PARTIALLY_FILLED",
        Decimal("0.2"),
        Decimal("0.2"),
        871685788,
        Decimal("0.1"),
        Decimal("-1.5"),
    )
    d["o"]["X"] = "EXPIRED_IN_MATCH"
    (exp,) = parse.decode_message(d, NOW)
    assert isinstance(exp, OrderUpdated) and exp.status == "EXPIRED"


def test_trade_lite_is_ignored() -> None:
    assert parse.decode_frame(raw("trade_lite.json"), NOW) == []


def test_account_update_capture_usdc_balance_not_usdt() -> None:
    assert parse.decode_frame(raw("account_update_capture.json"), NOW) == [
        parse.AccountPush(now_ms=NOW, event="ACCOUNT_UPDATE", reason="ORDER"),
        PositionChanged(
            now_ms=NOW,
            symbol="ETHUSDC",
            amount=Decimal("-0.473"),
            entry_price=Decimal("2463.26"),
            position_side="SHORT",
            venue_time_ms=1788231624647,
        ),
    ]
    d = load("account_update_capture.json")
    assert parse.account_update(d, NOW, asset="USDC")[0] == BalanceChanged(
        now_ms=NOW, wallet_balance=Decimal("291")
    )


def test_account_update_doc() -> None:
    assert parse.decode_frame(raw("account_update_doc.json"), NOW) == [
        parse.AccountPush(now_ms=NOW, event="ACCOUNT_UPDATE", reason="ORDER"),
        BalanceChanged(now_ms=NOW, wallet_balance=Decimal("122624.12345678")),
        PositionChanged(
            now_ms=NOW,
            symbol="BTCUSDT",
            amount=Decimal("0"),
            entry_price=Decimal("0.00000"),
            position_side="BOTH",
            venue_time_ms=1564745798938,
        ),
        PositionChanged(
            now_ms=NOW,
            symbol="BTCUSDT",
            amount=Decimal("20"),
            entry_price=Decimal("6563.66500"),
            position_side="LONG",
            venue_time_ms=1564745798938,
        ),
        PositionChanged(
            now_ms=NOW,
            symbol="BTCUSDT",
            amount=Decimal("-10"),
            entry_price=Decimal("6563.86000"),
            position_side="SHORT",
            venue_time_ms=1564745798938,
        ),
    ]


def test_algo_update_doc() -> None:
    assert parse.decode_frame(raw("algo_update_doc.json"), NOW) == [
        AlgoOrderUpdated(
            now_ms=NOW,
            symbol="BNBUSDT",
            client_algo_id="Q5xaq5EGKgXXa0fD7fs0Ip",
            algo_id=2148719,
            status="CANCELED",
            actual_order_id=0,
            reason="Reduce Only reject",
        )
    ]


def test_algo_update_triggered_capture_in_envelope() -> None:
    assert parse.decode_frame(raw("algo_update_triggered_capture.json"), NOW) == [
        AlgoOrderUpdated(
            now_ms=NOW,
            symbol="DOGEUSDT",
            client_algo_id="O-20251211-053131-ZYWR-000-9",
            algo_id=1000000033225453,
            status="TRIGGERED",
            actual_order_id=88937381063,
            reason="",
        )
    ]


def test_listen_key_expired_string_and_int_e() -> None:
    expected = parse.ListenKeyExpired(
        now_ms=NOW,
        listen_key="WsCMN0a4KHUPTQuX6IUnqEZfB1inxmv1qR4kbf1LuEjur5VdbzqvyxqG9TSjVVxv",
        event_time_ms=1736996475556,
    )
    assert parse.decode_frame(raw("listen_key_expired.json"), NOW) == [expected]
    d = load("listen_key_expired.json")
    d["E"] = 1736996475556
    assert parse.decode_message(d, NOW) == [expected]


def test_account_config_update_carries_no_position_mode() -> None:
    """Binance sends only ``ac{s,l}`` and ``ai{j}``: a ``d`` field (which the simulator used to
    invent) is not read as a position-mode change; the mode is re-read by REST after a reconnect."""
    invented = {"e": "ACCOUNT_CONFIG_UPDATE", "E": 1, "T": 1, "ai": {"j": False, "d": True}}
    multi = {"e": "ACCOUNT_CONFIG_UPDATE", "E": 1, "T": 1, "ai": {"j": True}}
    lev = {"e": "ACCOUNT_CONFIG_UPDATE", "E": 1, "T": 1, "ac": {"s": "BTCUSDT", "l": 25}}
    # Only the shell's AccountPush comes out (it voids the facts read ahead, D-72).
    config_push = parse.AccountPush(now_ms=NOW, event="ACCOUNT_CONFIG_UPDATE", reason="multi_assets")
    assert parse.decode_message(invented, NOW) == [config_push]
    assert parse.decode_message(multi, NOW) == [config_push]
    assert parse.decode_message(lev, NOW) == [
        parse.AccountPush(now_ms=NOW, event="ACCOUNT_CONFIG_UPDATE", reason="leverage", symbol="BTCUSDT")
    ]


@pytest.mark.parametrize(
    "frame",
    [
        "",
        "{",
        '{"e":"markPriceUpdate","E":1,"s":"BTCUSDT"',  # truncated
        "<html><body><h1>502 Bad Gateway</h1></body></html>",
        "null",
        "42",
        '"text"',
        '{"e":"SOMETHING_NEW","x":1}',
        '{"e":null}',
        '{"e":"markPriceUpdate","E":1,"s":"BTCUSDT","p":"abc"}',
        '{"e":"markPriceUpdate","E":1,"s":"BTCUSDT","p":"NaN"}',
        '{"e":"ORDER_TRADE_UPDATE","E":1,"o":{"s":"X"}}',
        '{"e":"ORDER_TRADE_UPDATE","E":1,"o":{"s":"X","c":"a","i":1,"S":"BUY","o":"LIMIT","X":"WEIRD","q":"1"}}',
        '{"e":"ALGO_UPDATE","E":1,"o":[]}',
        '{"e":"ACCOUNT_UPDATE","E":1,"a":{"P":[{"s":"X"}]}}',
        '{"stream":"x","data":"y"}',
        '{"result":null,"id":1}',
        '{"no_e":1}',
    ],
)
def test_malformed_frames_are_skipped(frame: str) -> None:
    assert parse.decode_frame(frame, NOW) == []


def test_bytes_frame_and_bad_utf8() -> None:
    assert len(parse.decode_frame(raw("mark_price_update.json").encode(), NOW)) == 1
    assert parse.decode_frame(b"\xff\xfe", NOW) == []


def test_unknown_fields_are_tolerated() -> None:
    d = load("mark_price_update.json")
    d["newField"] = {"nested": [1, 2]}
    assert len(parse.decode_message(d, NOW)) == 1


def test_rest_helpers() -> None:
    assert parse.position_mode_from_rest({"dualSidePosition": True}) == "HEDGE"
    assert parse.position_mode_from_rest({"dualSidePosition": False}) == "ONE_WAY"
    with pytest.raises(ValueError):
        parse.position_mode_from_rest({"dualSidePosition": "yes"})
    bal = [
        {"asset": "BNB", "balance": "1", "availableBalance": "1"},
        {"asset": "USDT", "balance": "100.5", "availableBalance": "90.25"},
    ]
    assert parse.balance_from_rest(bal) == (Decimal("100.5"), Decimal("90.25"))
    pos = [
        {"symbol": "BTCUSDT", "positionSide": "BOTH", "positionAmt": "0", "entryPrice": "0"},
        {"symbol": "ETHUSDT", "positionSide": "SHORT", "positionAmt": "-0.5", "entryPrice": "2000.1"},
    ]
    (p,) = parse.positions_from_rest(pos)
    assert (p.symbol, p.amount, p.entry_price, p.position_side) == (
        "ETHUSDT",
        Decimal("-0.5"),
        Decimal("2000.1"),
        "SHORT",
    )
    algo = parse.open_algo_order_from_rest(load("new_algo_order_response.json"))
    assert (algo.client_order_id, algo.order_id, algo.order_type, algo.trigger_price, algo.is_algo) == (
        "6B2I9XVcJpCjqPAJ4YoFX7",
        2146760,
        "TAKE_PROFIT",
        Decimal("750.000"),
        True,
    )


def test_order_params_one_way_limit_reduce_only() -> None:
    cmd = PlaceOrder(
        symbol="BTCUSDT",
        client_order_id="s1-TP-0",
        leg="TP",
        side="BUY",
        order_type="LIMIT",
        quantity=Decimal("0.0100"),
        price=Decimal("1E+2"),
        reduce_only=True,
    )
    assert parse.order_params(cmd) == {
        "symbol": "BTCUSDT",
        "side": "BUY",
        "type": "LIMIT",
        "quantity": "0.01",
        "price": "100",
        "timeInForce": "GTC",
        "reduceOnly": "true",
        "newClientOrderId": "s1-TP-0",
        "newOrderRespType": "RESULT",
    }


def test_order_params_hedge_market_never_reduce_only() -> None:
    cmd = PlaceOrder(
        symbol="BTCUSDT",
        client_order_id="c",
        leg="CLOSE",
        side="BUY",
        order_type="MARKET",
        quantity=Decimal("3"),
        reduce_only=True,
        position_side="SHORT",
    )
    p = parse.order_params(cmd)
    assert p == {
        "symbol": "BTCUSDT",
        "side": "BUY",
        "type": "MARKET",
        "quantity": "3",
        "positionSide": "SHORT",
        "newClientOrderId": "c",
        "newOrderRespType": "RESULT",
    }
    with pytest.raises(ValueError):
        parse.order_params(
            PlaceOrder(
                symbol="X",
                client_order_id="c",
                leg="TP",
                side="BUY",
                order_type="LIMIT",
                quantity=Decimal("1"),
            )
        )


def test_algo_params() -> None:
    one_way = PlaceAlgoOrder(
        symbol="BTCUSDT",
        client_algo_id="s1-MDD-0",
        leg="MDD",
        side="BUY",
        order_type="STOP_MARKET",
        trigger_price=Decimal("115.50"),
    )
    assert parse.algo_params(one_way) == {
        "algoType": "CONDITIONAL",
        "symbol": "BTCUSDT",
        "side": "BUY",
        "type": "STOP_MARKET",
        "triggerPrice": "115.5",
        "workingType": "MARK_PRICE",
        "closePosition": "true",
        "clientAlgoId": "s1-MDD-0",
    }
    hedge = PlaceAlgoOrder(
        symbol="BTCUSDT",
        client_algo_id="a",
        leg="BE_STOP",
        side="BUY",
        order_type="STOP_MARKET",
        trigger_price=Decimal("100"),
        position_side="SHORT",
    )
    p = parse.algo_params(hedge)
    assert p["positionSide"] == "SHORT"
    assert "quantity" not in p and "reduceOnly" not in p


def test_cancel_params() -> None:
    assert parse.cancel_params(CancelOrder(symbol="BTCUSDT", client_order_id="c1")) == {
        "symbol": "BTCUSDT",
        "origClientOrderId": "c1",
    }
    assert parse.cancel_params(CancelAlgoOrder(symbol="BTCUSDT", client_algo_id="a1")) == {
        "clientAlgoId": "a1"
    }


def test_dec_helpers() -> None:
    assert parse.dec_str(Decimal("0.000100")) == "0.0001"
    assert parse.dec_str(Decimal("1200")) == "1200"
    assert parse.int_field("") == 0
    assert parse.int_field("88937381063") == 88937381063
    with pytest.raises(ValueError):
        parse.dec(None)
    with pytest.raises(ValueError):
        parse.dec("Infinity")


def test_watched_filter_drops_other_symbols_market_pushes_only() -> None:
    d = load("mark_price_update.json")
    arr = json.dumps([{**d, "s": f"S{i}USDT"} for i in range(600)] + [d])
    out = parse.decode_frame(arr, NOW, watched={"BTCUSDT"})
    assert [(e.symbol, e.price) for e in out] == [("BTCUSDT", Decimal("11794.15000000"))]  # type: ignore[union-attr]
    assert parse.decode_frame(raw("kline_3m_ws.json"), NOW, watched={"BTCUSDT"}) == []
    assert len(parse.decode_frame(raw("order_trade_update_capture.json"), NOW, watched={"BTCUSDT"})) == 1
    env = json.dumps({"stream": "btcusdt@markPrice@1s", "data": d})
    assert len(parse.decode_frame(env, NOW, watched={"BTCUSDT"})) == 1


def test_a_funding_fee_push_names_its_symbol_and_amount() -> None:
    """ACCOUNT_UPDATE with reason FUNDING_FEE: ``bc`` is the funding; the symbol is ``a.S`` (2026-08),
    else the one isolated position pushed with it, else unknown (cross margin pushes no position)."""
    base = {"e": "ACCOUNT_UPDATE", "E": 1788231600001, "T": 1788231600000}
    balance = [{"a": "USDT", "wb": "100.5", "cw": "100.5", "bc": "-0.0123"}]
    with_s = {**base, "a": {"m": "FUNDING_FEE", "S": "ETHUSDT", "B": balance, "P": []}}
    assert parse.decode_message(with_s, NOW) == [
        parse.AccountPush(now_ms=NOW, event="ACCOUNT_UPDATE", reason="FUNDING_FEE"),
        BalanceChanged(now_ms=NOW, wallet_balance=Decimal("100.5")),
        FundingFee(
            now_ms=NOW, symbol="ETHUSDT", asset="USDT", amount=Decimal("-0.0123"), venue_time_ms=1788231600000
        ),
    ]
    isolated = {
        **base,
        "a": {
            "m": "FUNDING_FEE",
            "B": balance,
            "P": [{"s": "SOLUSDT", "pa": "-2", "ep": "150", "mt": "isolated", "iw": "10", "ps": "BOTH"}],
        },
    }
    assert parse.decode_message(isolated, NOW)[2] == FundingFee(
        now_ms=NOW, symbol="SOLUSDT", asset="USDT", amount=Decimal("-0.0123"), venue_time_ms=1788231600000
    )
    cross = {**base, "a": {"m": "FUNDING_FEE", "B": balance, "P": []}}
    assert parse.decode_message(cross, NOW)[2] == FundingFee(
        now_ms=NOW, symbol="", asset="USDT", amount=Decimal("-0.0123"), venue_time_ms=1788231600000
    )
    order = {**base, "a": {"m": "ORDER", "B": [{**balance[0], "bc": "5"}], "P": []}}
    assert not any(isinstance(e, FundingFee) for e in parse.decode_message(order, NOW))
