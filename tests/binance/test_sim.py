"""The simulated venue itself: answers shaped like the official examples, fill policies, errors, CLI."""

from __future__ import annotations

import argparse
import asyncio
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from binance_simkit import KEY, SECRET, run, venue, wait_for

from binance.sim import cli
from binance.sim.clock import SimClock, WallClock
from binance.sim.exchange import SimError, SimExchange

FIX = Path(__file__).parent / "fixtures"


def load(name: str) -> Any:
    return json.loads((FIX / name).read_text())


def same_shape(
    ours: dict[str, Any], reference: dict[str, Any], skip: frozenset[str] = frozenset()
) -> list[str]:
    """Keys of ``reference`` missing in ``ours`` or with another JSON type (None matches anything)."""
    problems = []
    for key, value in reference.items():
        if key in skip:
            continue
        if key not in ours:
            problems.append(f"missing {key}")
        elif value is not None and ours[key] is not None and type(ours[key]) is not type(value):
            problems.append(f"{key}: {type(ours[key]).__name__} != {type(value).__name__}")
        elif isinstance(value, dict):
            problems += [f"{key}.{p}" for p in same_shape(ours[key], value)]
    return problems


def order(ex: SimExchange, **kw: str) -> dict[str, Any]:
    p = {
        "symbol": "BTCUSDT",
        "side": "SELL",
        "type": "LIMIT",
        "quantity": "0.010",
        "price": "96000.0",
        "timeInForce": "GTC",
        "newClientOrderId": "c1",
    }
    p.update(kw)
    return ex.new_order(p)


def test_answers_have_the_reference_fields_and_types() -> None:
    ex = SimExchange()
    events: list[dict[str, Any]] = []
    ex.user_listeners.append(lambda payload, key: events.append(payload))
    entry = ex.exchange_info({})["symbols"][0]
    assert (
        same_shape(entry, load("exchange_info_symbol_blzusdt.json"), frozenset({"underlyingSubType"})) == []
    )
    assert [f["filterType"] for f in entry["filters"]] == [
        f["filterType"] for f in load("exchange_info_symbol_blzusdt.json")["filters"]
    ]
    assert same_shape(ex.premium_index({"symbol": "BTCUSDT"}), load("premium_index_btcusdt.json")) == []
    assert same_shape(ex.mark_payload("BTCUSDT"), load("mark_price_update.json")) == []
    ex.set_mark("BTCUSDT", Decimal("95000.1"))
    kline = ex.kline_payload("BTCUSDT", "3m")
    assert kline is not None and same_shape(kline, load("kline_3m_ws.json")) == []
    order(ex, price="95000.0")  # marketable: fills
    otu = next(e for e in events if e["e"] == "ORDER_TRADE_UPDATE")
    assert same_shape(otu, load("order_trade_update_capture.json")) == []
    acct = next(e for e in events if e["e"] == "ACCOUNT_UPDATE")
    ref_acct = load("account_update_capture.json")
    assert same_shape(acct["a"]["P"][0], ref_acct["a"]["P"][0]) == []
    assert same_shape(acct["a"]["B"][0], ref_acct["a"]["B"][0]) == []
    algo = ex.new_algo_order(
        {
            "algoType": "CONDITIONAL",
            "symbol": "BTCUSDT",
            "side": "BUY",
            "type": "STOP_MARKET",
            "triggerPrice": "99000.0",
            "closePosition": "true",
            "clientAlgoId": "a1",
        }
    )
    assert same_shape(algo, load("new_algo_order_response.json")) == []
    ex.set_mark("BTCUSDT", Decimal("99000"))
    triggered = next(e for e in events if e["e"] == "ALGO_UPDATE" and e["o"]["X"] == "TRIGGERED")
    assert same_shape(triggered, load("algo_update_triggered_capture.json")["data"]) == []
    ex.expire_listen_key(ex.new_listen_key({})["listenKey"])
    assert same_shape(events[-1], load("listen_key_expired.json")) == []


def test_fill_policies_full_partial_slices_and_never() -> None:
    ex = SimExchange()
    ex.set_fill_policy("sliced", (Decimal("0.003"), Decimal("0.004")))
    ex.set_fill_policy("stuck", "never")
    order(ex, newClientOrderId="sliced")
    order(ex, newClientOrderId="stuck")
    order(ex, newClientOrderId="full")
    for price in ("96000", "96100", "96200"):
        ex.set_mark("BTCUSDT", Decimal(price))
    got = {o.client_id: (o.status, o.executed) for o in ex.orders.values()}
    assert got == {
        "sliced": ("PARTIALLY_FILLED", Decimal("0.007")),
        "stuck": ("NEW", Decimal("0")),
        "full": ("FILLED", Decimal("0.010")),
    }
    (pos,) = [p for p in ex.positions.values() if p.amount]
    assert (pos.amount, pos.entry) == (Decimal("-0.017"), Decimal("96000.00000"))


def test_error_answers() -> None:
    ex = SimExchange()
    cases = [
        (lambda: order(ex, type="STOP_MARKET"), -4120),
        (lambda: order(ex, type="TAKE_PROFIT"), -4120),
        (lambda: order(ex, type="FOO"), -1116),
        (lambda: order(ex, side="UP"), -1117),
        (lambda: order(ex, symbol="XUSDT"), -1121),
        (lambda: order(ex, quantity="0.0105"), -1111),
        (lambda: order(ex, quantity="0"), -4003),
        (lambda: order(ex, quantity="2000"), -4005),
        (lambda: order(ex, price="96000.05"), -1111),
        (lambda: order(ex, quantity="0.001"), -4164),
        (lambda: order(ex, side="BUY", reduceOnly="true"), -2022),
        (lambda: order(ex, positionSide="SHORT"), -4061),
        (lambda: order(ex, newClientOrderId="bad id!"), -4015),
        (lambda: order(ex, timeInForce="GTX", price="94000.0"), -5022),
        (lambda: ex.set_margin_type({"symbol": "BTCUSDT", "marginType": "CROSSED"}), -4046),
        (lambda: ex.set_position_mode({"dualSidePosition": "false"}), -4059),
        (lambda: ex.keepalive_listen_key({}), -1125),
        (lambda: ex.cancel_order({"symbol": "BTCUSDT", "origClientOrderId": "none"}), -2011),
        (lambda: ex.query_algo_order({"clientAlgoId": "none"}), -2013),
        (lambda: ex.klines({"symbol": "BTCUSDT", "interval": "7m"}), -1120),
    ]
    for call, code in cases:
        with pytest.raises(SimError) as err:
            call()
        assert err.value.code == code
    order(ex)
    with pytest.raises(SimError) as dup:
        order(ex)
    assert dup.value.code == -4116
    with pytest.raises(SimError) as blocked:
        ex.set_margin_type({"symbol": "BTCUSDT", "marginType": "ISOLATED"})
    assert blocked.value.code == -4047


def test_scripted_marks_apply_on_the_sim_clock_and_listen_keys_expire() -> None:
    clock = SimClock(1_000_000)
    ex = SimExchange(clock=clock)
    ex.script([(1_002_000, "BTCUSDT", Decimal("95500")), (1_001_000, "BTCUSDT", Decimal("95100"))])
    seen: list[Decimal] = []
    ex.market_listeners.append(lambda s: seen.append(ex.marks[s]))
    ex.advance(1_000)
    ex.advance(1_000)
    assert seen == [Decimal("95100"), Decimal("95500")]
    key = ex.new_listen_key({})["listenKey"]
    expired: list[dict[str, Any]] = []
    ex.user_listeners.append(lambda p, k: expired.append(p))
    ex.advance(3_600_000)
    assert ex.listen_key_valid(key) is False
    assert expired[-1]["e"] == "listenKeyExpired" and isinstance(expired[-1]["E"], int)
    assert WallClock().now_ms() > 1_700_000_000_000
    with pytest.raises(ValueError):
        clock.advance(-1)


def test_unknown_rest_path_is_404_html_and_missing_key_is_2014() -> None:
    async def go() -> None:
        async with venue() as (ex, v, _rest), httpx.AsyncClient(base_url=v.rest_url) as c:
            r = await c.get("/fapi/v9/nothing")
            assert (r.status_code, r.headers["content-type"]) == (404, "text/html")
            r = await c.get("/fapi/v3/balance", params={"timestamp": ex.now()})
            assert (r.status_code, r.json()["code"]) == (401, -2014)
            r = await c.get(
                "/fapi/v3/balance",
                params={"timestamp": ex.now() - 10_000, "signature": "x"},
                headers={"X-MBX-APIKEY": KEY},
            )
            assert (r.status_code, r.json()) == (
                400,
                {"code": -1021, "msg": "Timestamp for this request is outside of the recvWindow."},
            )

    run(go())


def test_cli_registers_and_serves_on_the_wall_clock(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="shortfsm")
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["sim-venue", "--port", "0", "--api-key", KEY, "--api-secret", SECRET, "--seed", "1"]
    )
    assert args.func is cli.run_cli

    out: list[str] = []

    def printed() -> bool:
        out.append(capsys.readouterr().out)
        return "WS base URL" in "".join(out)

    async def go() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(cli.serve_forever(args, stop))
        await wait_for(printed, 2)
        stop.set()
        await asyncio.wait_for(task, 2)

    run(go())
    lines = "".join(out).splitlines()
    assert lines[0].startswith("REST base URL: http://127.0.0.1:")
    assert lines[1].startswith("WS base URL:   ws://127.0.0.1:")


def test_ticker_24hr_and_leverage_bracket_answers() -> None:
    clock = SimClock()
    ex = SimExchange(clock=clock)
    ex.set_mark("ETHUSDT", Decimal("3600.00"))
    clock.advance(60_000)
    ex.set_mark("ETHUSDT", Decimal("3400.00"))
    assert ex.ticker_24hr({"symbol": "ETHUSDT"}) == {
        "symbol": "ETHUSDT",
        "priceChange": "-200.00",
        "priceChangePercent": "-5.556",
        "weightedAvgPrice": "3500.00",
        "lastPrice": "3400.00",
        "lastQty": "0",
        "openPrice": "3600.00",
        "highPrice": "3600.00",
        "lowPrice": "3400.00",
        "volume": "2",
        "quoteVolume": "7000.00",
        "openTime": clock.now_ms() - 86_400_000,
        "closeTime": clock.now_ms(),
        "firstId": 0,
        "lastId": 2,
        "count": 2,
    }
    everything = ex.ticker_24hr({})
    assert [t["symbol"] for t in everything] == ["BTCUSDT", "ETHUSDT", "DOGEUSDT", "SOLUSDT"]
    assert (everything[0]["lastPrice"], everything[0]["volume"], everything[0]["count"]) == (
        "95000.0",
        "0",
        0,
    )

    one = ex.leverage_bracket({"symbol": "BTCUSDT"})
    assert one == {
        "symbol": "BTCUSDT",
        "brackets": [
            {
                "bracket": 1,
                "initialLeverage": 125,
                "notionalCap": 1_000_000,
                "notionalFloor": 0,
                "maintMarginRatio": 0.004,
                "cum": 0.0,
            }
        ],
    }
    assert [b["symbol"] for b in ex.leverage_bracket({})] == ["BTCUSDT", "ETHUSDT", "DOGEUSDT", "SOLUSDT"]
    with pytest.raises(SimError) as bad:
        ex.leverage_bracket({"symbol": "NOPEUSDT"})
    assert (bad.value.code, bad.value.msg) == (-1121, "Invalid symbol.")


def _one_order_and_one_stop() -> SimExchange:
    ex = SimExchange()
    order = {"symbol": "BTCUSDT", "side": "SELL", "type": "LIMIT", "quantity": "0.010"}
    ex.new_order({**order, "price": "96000.0", "timeInForce": "GTC", "newClientOrderId": "c1"})
    algo = {"algoType": "CONDITIONAL", "symbol": "BTCUSDT", "side": "SELL", "type": "STOP_MARKET"}
    ex.new_algo_order({**algo, "quantity": "0.010", "triggerPrice": "90000.0", "clientAlgoId": "s1"})
    assert ex.query_order({"symbol": "BTCUSDT", "orderId": "8389765001"})["clientOrderId"] == "c1"
    return ex


@pytest.mark.parametrize(
    "text", ["٨٣٨٩٧٦٥٠٠١", "\u00b2", "9" * 21, "9" * 5000, "8389765001 ", "-1", "1e9", ""]
)
def test_an_order_id_outside_the_legal_range_is_refused_as_binance_does(text: str) -> None:
    """Binance checks an id parameter against ``^[0-9]{1,20}$`` and answers -1100 naming it (seen
    for orderId: python-binance #123, ccxt/php-binance-api #303). Other scripts' digits, a
    superscript, a sign, a space or more than 20 digits: never an exception, never "not found"."""
    ex = _one_order_and_one_stop()
    for call, name in ((ex.query_order, "orderId"), (ex.cancel_order, "orderId")):
        with pytest.raises(SimError) as refused:
            call({"symbol": "BTCUSDT", name: text})
        if text == "":  # an empty id is no id at all: the mandatory-parameter error
            assert refused.value.code == -1102
            continue
        assert (refused.value.code, refused.value.msg) == (
            -1100,
            f"Illegal characters found in parameter '{name}'; legal range is '^[0-9]{{1,20}}$'.",
        )
    if text:
        with pytest.raises(SimError) as algo:
            ex.query_algo_order({"algoId": text})
        assert algo.value.code == -1100 and "'algoId'" in algo.value.msg
    assert [o["clientOrderId"] for o in ex.open_orders({})] == ["c1"]


def test_an_order_id_with_a_leading_zero_finds_no_order() -> None:
    """Within Binance's legal range, but whether it reads "08389765001" as order 8389765001 is not
    known: the simulator keeps answering not found (-2013, -2011 on a cancel)."""
    ex = _one_order_and_one_stop()
    with pytest.raises(SimError) as found:
        ex.query_order({"symbol": "BTCUSDT", "orderId": "08389765001"})
    assert found.value.code == -2013
    with pytest.raises(SimError) as cancelled:
        ex.cancel_order({"symbol": "BTCUSDT", "orderId": "08389765001"})
    assert cancelled.value.code == -2011
    assert [o["clientOrderId"] for o in ex.open_orders({})] == ["c1"]
