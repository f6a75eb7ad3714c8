"""Hypothesis over the venue payload parsers of ``binance.parse``.

Contract (module docstring): ``decode_frame`` never raises, whatever the frame: garbage is logged
and skipped (an empty list); the REST helpers raise ``ValueError`` on garbage, and ``KeyError`` on a
missing field, the two errors every caller catches. Valid payloads round-trip into the exact events.

Budget: ``max_examples=200`` per test in CI; ``SHORTFSM_FUZZ=long`` selects the long profile
(``SHORTFSM_FUZZ_EXAMPLES``, default 20000) for a run on demand.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from binance import parse
from fsm import events as ev

settings.register_profile(
    "parse-fuzz-ci", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "parse-fuzz-long",
    max_examples=int(os.environ.get("SHORTFSM_FUZZ_EXAMPLES", "20000")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
FUZZ = settings(
    settings.get_profile("parse-fuzz-long" if os.environ.get("SHORTFSM_FUZZ") == "long" else "parse-fuzz-ci")
)
NOW = 1_736_996_475_556
REST_ERRORS = (ValueError, KeyError)

# ---------------------------------------------------------------------------------------------
# strategies
# ---------------------------------------------------------------------------------------------

KEYS = st.sampled_from(
    [
        "e",
        "E",
        "T",
        "s",
        "p",
        "i",
        "P",
        "r",
        "k",
        "o",
        "a",
        "B",
        "c",
        "S",
        "X",
        "q",
        "z",
        "l",
        "L",
        "ap",
        "n",
        "rp",
        "R",
        "cp",
        "ps",
        "t",
        "x",
        "h",
        "caid",
        "aid",
        "ai",
        "rm",
        "wb",
        "pa",
        "ep",
        "listenKey",
        "stream",
        "data",
        "result",
        "id",
        "symbol",
        "markPrice",
        "time",
        "positionAmt",
        "entryPrice",
    ]
)
ATOMS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**300, max_value=10**310)
    | st.floats()
    | st.text(max_size=8)
    | st.sampled_from(["NaN", "nan", "Infinity", "-inf", "1e999999", "0x10", "", " 1", "1_000", "١٢"])
    | st.sampled_from(["markPriceUpdate", "kline", "ORDER_TRADE_UPDATE", "ALGO_UPDATE", "ACCOUNT_UPDATE"])
    | st.sampled_from(["listenKeyExpired", "ACCOUNT_CONFIG_UPDATE", "BUY", "SELL", "NEW", "FILLED", "USDT"])
)
JSON = st.recursive(
    ATOMS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(KEYS | st.text(max_size=4), inner, max_size=6)
    ),
    max_leaves=12,
)
EVENT_TYPES = st.sampled_from(sorted(parse.HANDLERS))
SYMBOLS = st.from_regex(r"[A-Z0-9]{2,10}USDT", fullmatch=True)
IDS = st.integers(min_value=0, max_value=2**63 - 1)
TIMES = st.integers(min_value=0, max_value=4_102_444_800_000)
CIDS = st.from_regex(r"[.A-Z:/a-z0-9_-]{1,36}", fullmatch=True)


def decimals(places: int = 8) -> st.SearchStrategy[Decimal]:
    return st.decimals(
        min_value=Decimal("-1e12"),
        max_value=Decimal("1e12"),
        places=places,
        allow_nan=False,
        allow_infinity=False,
    )


def text(d: Decimal) -> str:
    return format(d, "f")


def mangled(payload: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """The payload with fields dropped, replaced by arbitrary JSON, or extra fields added."""
    keys = sorted(payload)

    def apply(changes: tuple[list[str], dict[str, Any], dict[str, Any]]) -> dict[str, Any]:
        dropped, replaced, extra = changes
        out = {k: v for k, v in payload.items() if k not in dropped}
        out.update({k: v for k, v in replaced.items() if k in payload})
        out.update(extra)
        out["e"] = payload["e"]
        return out

    return st.tuples(
        st.lists(st.sampled_from(keys), max_size=3),
        st.dictionaries(st.sampled_from(keys), JSON, max_size=3),
        st.dictionaries(st.text(max_size=5), JSON, max_size=3),
    ).map(apply)


# ---------------------------------------------------------------------------------------------
# decode_frame never raises
# ---------------------------------------------------------------------------------------------


def _decode(raw: str | bytes, watched: frozenset[str] | None) -> list[parse.Decoded]:
    out = parse.decode_frame(raw, NOW, watched)
    assert isinstance(out, list)
    return out


@FUZZ
@given(
    raw=st.text(max_size=200) | st.binary(max_size=200), watched=st.none() | st.just(frozenset({"BTCUSDT"}))
)
def test_decode_frame_never_raises_on_arbitrary_text(
    raw: str | bytes, watched: frozenset[str] | None
) -> None:
    _decode(raw, watched)


@FUZZ
@given(value=JSON, watched=st.none() | st.just(frozenset({"BTCUSDT"})))
def test_decode_frame_never_raises_on_arbitrary_json(value: Any, watched: frozenset[str] | None) -> None:
    for item in _decode(json.dumps(value), watched):
        assert isinstance(item, (ev.Event, parse.KlineUpdate, parse.ListenKeyExpired, parse.AccountPush))


@FUZZ
@given(kind=EVENT_TYPES, body=st.dictionaries(KEYS, JSON, max_size=10), envelope=st.booleans())
def test_decode_frame_never_raises_on_known_event_types_with_arbitrary_fields(
    kind: str, body: dict[str, Any], envelope: bool
) -> None:
    payload: Any = {**body, "e": kind}
    if envelope:
        payload = {"stream": "x@y", "data": payload}
    _decode(json.dumps(payload), None)


# ---------------------------------------------------------------------------------------------
# valid payloads round-trip into the exact events (and mangled ones never raise)
# ---------------------------------------------------------------------------------------------


@st.composite
def mark_prices(draw: st.DrawFn) -> tuple[dict[str, Any], ev.MarkPriceTick]:
    symbol, price, at = draw(SYMBOLS), draw(decimals(8)), draw(TIMES)
    payload = {"e": "markPriceUpdate", "E": at, "s": symbol, "p": text(price), "i": "1", "P": "1", "r": "0"}
    payload["T"] = draw(TIMES)
    tick = ev.MarkPriceTick(now_ms=NOW, symbol=symbol, price=price, event_time_ms=at, source="WS")
    return payload, tick


@FUZZ
@given(case=mark_prices(), combined=st.booleans())
def test_mark_price_round_trips(case: tuple[dict[str, Any], ev.MarkPriceTick], combined: bool) -> None:
    payload, tick = case
    frame: Any = {"stream": f"{tick.symbol.lower()}@markPrice@1s", "data": payload} if combined else payload
    assert parse.decode_frame(json.dumps(frame), NOW) == [tick]
    assert parse.decode_frame(json.dumps(frame), NOW, frozenset({tick.symbol})) == [tick]
    assert parse.decode_frame(json.dumps(frame), NOW, frozenset()) == []


@FUZZ
@given(cases=st.lists(mark_prices(), max_size=30), pick=st.sets(st.integers(min_value=0, max_value=29)))
def test_all_market_mark_price_array_keeps_the_watched_symbols_in_order(
    cases: list[tuple[dict[str, Any], ev.MarkPriceTick]], pick: set[int]
) -> None:
    frame = {"stream": "!markPrice@arr@1s", "data": [payload for payload, _ in cases]}
    watched = frozenset(cases[i][1].symbol for i in pick if i < len(cases))
    expected = [tick for _, tick in cases if tick.symbol in watched]
    assert parse.decode_frame(json.dumps(frame), NOW, watched) == expected
    assert parse.decode_frame(json.dumps(frame), NOW) == [tick for _, tick in cases]


@st.composite
def klines(draw: st.DrawFn) -> tuple[dict[str, Any], parse.KlineUpdate]:
    symbol, start, closed = draw(SYMBOLS), draw(TIMES), draw(st.booleans())
    o, h, low, c = (draw(decimals(4)) for _ in range(4))
    interval = draw(st.sampled_from(sorted(parse.KLINE_MS)))
    k: dict[str, Any] = {
        "t": start,
        "T": start + 179_999,
        "s": symbol,
        "i": interval,
        "f": 1,
        "L": 2,
        "o": text(o),
    }
    k |= {"c": text(c), "h": text(h), "l": text(low), "v": "1", "n": 3, "x": closed, "q": "1", "B": "0"}
    payload = {"e": "kline", "E": draw(TIMES), "s": symbol, "k": k}
    candle = ev.Candle(open_time_ms=start, close_time_ms=start + 179_999, open=o, high=h, low=low, close=c)
    update = parse.KlineUpdate(now_ms=NOW, symbol=symbol, interval=interval, candle=candle, closed=closed)
    return payload, update


@FUZZ
@given(case=klines())
def test_kline_round_trips(case: tuple[dict[str, Any], parse.KlineUpdate]) -> None:
    payload, update = case
    assert parse.decode_frame(json.dumps(payload), NOW) == [update]


ORDER_STATUSES = st.sampled_from(sorted(parse.ORDER_STATUS))
SIDES: st.SearchStrategy[Any] = st.sampled_from(["BUY", "SELL"])
POSITION_SIDES: st.SearchStrategy[Any] = st.sampled_from(["BOTH", "LONG", "SHORT"])


@st.composite
def order_updates(draw: st.DrawFn) -> tuple[dict[str, Any], ev.OrderUpdated]:
    symbol, cid, oid, side, status = draw(SYMBOLS), draw(CIDS), draw(IDS), draw(SIDES), draw(ORDER_STATUSES)
    price, qty, cum, last, last_price, avg, rp, fee = (draw(decimals(8)) for _ in range(8))
    trade, reduce_only, close, pside = (
        draw(IDS),
        draw(st.booleans()),
        draw(st.booleans()),
        draw(POSITION_SIDES),
    )
    order_type = draw(st.sampled_from(["LIMIT", "MARKET", "STOP_MARKET", "TAKE_PROFIT_MARKET"]))
    o: dict[str, Any] = {
        "s": symbol,
        "c": cid,
        "S": side,
        "o": order_type,
        "f": "GTC",
        "q": text(qty),
        "p": text(price),
    }
    o |= {"ap": text(avg), "sp": "0", "x": "TRADE", "X": status, "i": oid, "l": text(last), "z": text(cum)}
    o |= {
        "L": text(last_price),
        "n": text(fee),
        "N": "USDT",
        "T": draw(TIMES),
        "t": trade,
        "b": "0",
        "a": "0",
    }
    o |= {"m": False, "R": reduce_only, "wt": "CONTRACT_PRICE", "ot": order_type, "ps": pside, "cp": close}
    o |= {"rp": text(rp), "pP": False, "si": 0, "ss": 0, "V": "NONE", "pm": "NONE", "gtd": 0}
    payload = {"e": "ORDER_TRADE_UPDATE", "E": draw(TIMES), "T": draw(TIMES), "o": o}
    event = ev.OrderUpdated(
        now_ms=NOW,
        symbol=symbol,
        client_order_id=cid,
        order_id=oid,
        side=side,
        order_type=order_type,
        status=parse.ORDER_STATUS[status],
        price=price,
        orig_qty=qty,
        cum_qty=cum,
        last_qty=last,
        last_price=last_price,
        avg_price=avg,
        trade_id=trade,
        reduce_only=reduce_only,
        close_position=close,
        position_side=pside,
        realized_pnl=rp,
        commission=fee,
    )
    return payload, event


@FUZZ
@given(case=order_updates())
def test_order_trade_update_round_trips(case: tuple[dict[str, Any], ev.OrderUpdated]) -> None:
    payload, event = case
    assert parse.decode_frame(json.dumps(payload), NOW) == [event]
    assert parse.decode_frame(json.dumps({"stream": "key", "data": payload}), NOW) == [event]


@st.composite
def algo_updates(draw: st.DrawFn) -> tuple[dict[str, Any], ev.AlgoOrderUpdated]:
    symbol, caid, aid, status = (
        draw(SYMBOLS),
        draw(CIDS),
        draw(IDS),
        draw(st.sampled_from(sorted(parse.ALGO_STATUS))),
    )
    actual, reason = draw(st.none() | IDS), draw(st.text(max_size=20))
    o = {
        "caid": caid,
        "aid": aid,
        "at": "CONDITIONAL",
        "o": "STOP_MARKET",
        "s": symbol,
        "S": "BUY",
        "ps": "BOTH",
    }
    o |= {"f": "GTC", "q": "0", "X": status, "ai": "" if actual is None else str(actual), "tp": "101.0"}
    o |= {"wt": "MARK_PRICE", "cp": True, "R": False, "rm": reason}
    payload = {"e": "ALGO_UPDATE", "T": draw(TIMES), "E": draw(TIMES), "o": o}
    event = ev.AlgoOrderUpdated(
        now_ms=NOW,
        symbol=symbol,
        client_algo_id=caid,
        algo_id=aid,
        status=parse.ALGO_STATUS[status],
        actual_order_id=actual or 0,
        reason=reason,
    )
    return payload, event


@FUZZ
@given(case=algo_updates())
def test_algo_update_round_trips(case: tuple[dict[str, Any], ev.AlgoOrderUpdated]) -> None:
    payload, event = case
    assert parse.decode_frame(json.dumps(payload), NOW) == [event]


@st.composite
def account_updates(draw: st.DrawFn) -> tuple[dict[str, Any], list[ev.Event]]:
    wallet = draw(decimals(8))
    balances = [{"a": "USDT", "wb": text(wallet), "cw": text(wallet), "bc": "0"}]
    if draw(st.booleans()):
        balances.insert(draw(st.integers(0, 1)), {"a": "BNB", "wb": "1.5", "cw": "1.5", "bc": "0"})
    rows = draw(st.lists(st.tuples(SYMBOLS, decimals(3), decimals(4), POSITION_SIDES), max_size=4))
    positions = [
        {
            "s": s,
            "pa": text(a),
            "ep": text(p),
            "bep": "0",
            "cr": "0",
            "up": "0",
            "mt": "cross",
            "iw": "0",
            "ps": ps,
        }
        for s, a, p, ps in rows
    ]
    payload: dict[str, Any] = {
        "e": "ACCOUNT_UPDATE",
        "E": draw(TIMES),
        "T": draw(TIMES),
        "a": {"m": "ORDER", "B": balances},
    }
    payload["a"]["P"] = positions
    events: list[ev.Event] = [ev.BalanceChanged(now_ms=NOW, wallet_balance=wallet)]
    venue_time = payload["T"] or payload["E"]  # the transaction time; the event time when absent
    events += [
        ev.PositionChanged(
            now_ms=NOW, symbol=s, amount=a, entry_price=p, position_side=ps, venue_time_ms=venue_time
        )
        for s, a, p, ps in rows
    ]
    return payload, events


@FUZZ
@given(case=account_updates())
def test_account_update_round_trips(case: tuple[dict[str, Any], list[ev.Event]]) -> None:
    payload, events = case
    push = parse.AccountPush(now_ms=NOW, event="ACCOUNT_UPDATE", reason="ORDER")
    assert parse.decode_frame(json.dumps(payload), NOW) == [push, *events]


@FUZZ
@given(key=st.text(min_size=1, max_size=64), at=TIMES, as_text=st.booleans())
def test_listen_key_expired_round_trips(key: str, at: int, as_text: bool) -> None:
    payload = {"e": "listenKeyExpired", "E": str(at) if as_text else at, "listenKey": key}
    expected = parse.ListenKeyExpired(now_ms=NOW, listen_key=key, event_time_ms=at)
    assert parse.decode_frame(json.dumps(payload), NOW) == [expected]


@FUZZ
@given(
    case=st.one_of(
        mark_prices().map(lambda c: c[0]),
        klines().map(lambda c: c[0]),
        order_updates().map(lambda c: c[0]),
        algo_updates().map(lambda c: c[0]),
        account_updates().map(lambda c: c[0]),
    ).flatmap(mangled)
)
def test_mangled_valid_payloads_never_raise(case: dict[str, Any]) -> None:
    _decode(json.dumps(case), None)


# ---------------------------------------------------------------------------------------------
# REST answers: ValueError / KeyError only
# ---------------------------------------------------------------------------------------------

OBJECT_HELPERS: dict[str, Callable[[Any], object]] = {
    "mark_price_from_rest": lambda d: parse.mark_price_from_rest(d, NOW),
    "symbol_info": parse.symbol_info,
    "open_order_from_rest": parse.open_order_from_rest,
    "open_algo_order_from_rest": parse.open_algo_order_from_rest,
    "position_mode_from_rest": parse.position_mode_from_rest,
    "symbol_infos": parse.symbol_infos,
}
ARRAY_HELPERS: dict[str, Callable[[Any], object]] = {
    "positions_from_rest": parse.positions_from_rest,
    "balance_from_rest": parse.balance_from_rest,
    "candles_from_rest": parse.candles_from_rest,
}
OBJECTS = st.dictionaries(KEYS | st.text(max_size=6), JSON, max_size=6)
ROWS = st.lists(OBJECTS | st.lists(JSON, max_size=8), max_size=3)


@pytest.mark.parametrize("name", sorted(OBJECT_HELPERS))
@FUZZ
@given(value=OBJECTS)
def test_rest_object_helpers_raise_only_value_or_key_errors(name: str, value: dict[str, Any]) -> None:
    with contextlib.suppress(REST_ERRORS):
        OBJECT_HELPERS[name](value)


@pytest.mark.parametrize("name", sorted(ARRAY_HELPERS))
@FUZZ
@given(rows=ROWS)
def test_rest_array_helpers_raise_only_value_or_key_errors(name: str, rows: list[Any]) -> None:
    with contextlib.suppress(REST_ERRORS):
        ARRAY_HELPERS[name](rows)


@FUZZ
@given(
    rows=st.lists(st.tuples(SYMBOLS, decimals(3), decimals(4), POSITION_SIDES), max_size=5),
    wallet=decimals(8),
    available=decimals(8),
)
def test_rest_answers_round_trip(
    rows: list[tuple[str, Decimal, Decimal, str]], wallet: Decimal, available: Decimal
) -> None:
    answer = [
        {
            "symbol": s,
            "positionAmt": text(a),
            "entryPrice": text(p),
            "positionSide": ps,
            "unRealizedProfit": "0",
        }
        for s, a, p, ps in rows
    ]
    assert parse.positions_from_rest(answer) == [
        ev.PositionInfo(symbol=s, amount=a, entry_price=p, position_side=ps)  # type: ignore[arg-type]
        for s, a, p, ps in rows
        if a != 0
    ]
    balance = [
        {"asset": "BNB", "balance": "1", "availableBalance": "1"},
        {"asset": "USDT", "balance": text(wallet), "availableBalance": text(available)},
    ]
    assert parse.balance_from_rest(balance) == (wallet, available)


# ---------------------------------------------------------------------------------------------
# The crashes fuzzing found, pinned with their exact inputs
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "watched"),
    [
        ('{"e":"markPriceUpdate","E":1e400,"s":"BTCUSDT","p":"1"}', None),
        ('{"e":"markPriceUpdate","E":Infinity,"s":"BTCUSDT","p":"1"}', frozenset({"BTCUSDT"})),
        ('{"e":"markPriceUpdate","s":["BTCUSDT"],"p":"1","E":1}', frozenset({"BTCUSDT"})),
        ('{"e":[],"s":"BTCUSDT"}', frozenset({"BTCUSDT"})),
        ('[{"e":"markPriceUpdate","s":{},"p":"1","E":1}]', frozenset({"BTCUSDT"})),
        ("[" * 100_000 + "]" * 100_000, None),
    ],
    ids=["1e400", "Infinity", "list-symbol", "list-type", "dict-symbol-in-array", "deep-nesting"],
)
def test_frames_that_used_to_crash_are_skipped(raw: str, watched: frozenset[str] | None) -> None:
    """Found by this fuzzing against the json-based decoder (OverflowError, TypeError: unhashable,
    RecursionError); the orjson decoder skips them: keep it that way."""
    assert parse.decode_frame(raw, NOW, watched) == []


def test_rest_rows_of_the_wrong_type_are_value_errors() -> None:
    """Found by this fuzzing (TypeError / OverflowError escaped the helpers); now ValueError."""
    cases: list[Callable[[], object]] = [
        lambda: parse.positions_from_rest([None]),
        lambda: parse.candles_from_rest([[1e400, "1", "1", "1", "1", "0", 1]]),
        lambda: parse.symbol_infos({"symbols": 5}),
        lambda: parse.symbol_info({"symbol": "X", "filters": 5}),
        lambda: parse.mark_price_from_rest({"symbol": "BTCUSDT", "markPrice": "1", "time": [1]}, NOW),
    ]
    for case in cases:
        with pytest.raises(ValueError, match="malformed answer"):
            case()
