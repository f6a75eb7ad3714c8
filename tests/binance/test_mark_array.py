"""The hot decode path: ``!markPrice@arr`` frames through orjson and the fast ``MarkPriceTick`` maker."""

from __future__ import annotations

import dataclasses
import json
from decimal import Decimal
from pathlib import Path

import pytest

from binance import parse
from binance.parse import KlineUpdate, decode_frame
from fsm.events import MarkPriceTick
from fsm.harness.bench import T0_MS, bench_symbol, mark_price_frame


def item(symbol: str, price: object, event_ms: object = 1_700_000_000_000) -> dict[str, object]:
    return {"e": "markPriceUpdate", "E": event_ms, "s": symbol, "p": price, "i": "0", "r": "0.0001", "T": 0}


def test_fast_tick_is_indistinguishable_from_a_constructed_one() -> None:
    assert parse._mark_tick is not parse._plain_mark_tick  # the contract matches: fast path active
    fast = parse._mark_tick(5, "BTCUSDT", Decimal("95000.10"), 1234)
    plain = MarkPriceTick(
        now_ms=5, symbol="BTCUSDT", price=Decimal("95000.10"), event_time_ms=1234, source="WS"
    )
    assert type(fast) is MarkPriceTick
    assert fast == plain
    assert hash(fast) == hash(plain)
    assert repr(fast) == repr(plain)
    assert dataclasses.asdict(fast) == dataclasses.asdict(plain)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.price = Decimal("1")  # type: ignore[misc]


def test_array_items_take_the_fast_path_or_the_validating_one_and_bad_items_go_alone() -> None:
    kline = json.loads((Path(__file__).parent / "fixtures" / "kline_3m_ws.json").read_text())
    frame = json.dumps(
        {
            "stream": "!markPrice@arr@1s",
            "data": [
                item("AAAUSDT", "1.50"),
                item("BBBUSDT", 2.25, "1700000000001"),  # number price, string time: the slow path
                item("CCCUSDT", "not-a-price"),
                item("DDDUSDT", "NaN"),
                ["not", "an", "object"],
                {"e": "markPriceUpdate", "s": "EEEUSDT", "p": "1"},  # no E
                item("FFFUSDT", "0.00012300"),
                kline,
            ],
        }
    )
    decoded = decode_frame(frame, 9)
    assert [(d.symbol, d.price, d.event_time_ms) for d in decoded if isinstance(d, MarkPriceTick)] == [
        ("AAAUSDT", Decimal("1.50"), 1_700_000_000_000),
        ("BBBUSDT", Decimal("2.25"), 1_700_000_000_001),
        ("FFFUSDT", Decimal("0.000123"), 1_700_000_000_000),
    ]
    assert [type(d) for d in decoded] == [MarkPriceTick, MarkPriceTick, MarkPriceTick, KlineUpdate]
    watched = decode_frame(frame, 9, watched={"FFFUSDT", "CCCUSDT"})
    assert [(d.symbol, d.price) for d in watched if isinstance(d, MarkPriceTick)] == [
        ("FFFUSDT", Decimal("0.000123"))
    ]
    odd_symbols = json.dumps([item("GGGUSDT", "1"), {"e": "markPriceUpdate", "s": ["x"], "p": "1", "E": 1}])
    assert [d.symbol for d in decode_frame(odd_symbols, 9, watched={"GGGUSDT"})] == ["GGGUSDT"]  # type: ignore[union-attr]


def test_frames_as_bytes_or_text_decode_the_same_and_garbage_is_skipped() -> None:
    frame = mark_price_frame(3)
    assert decode_frame(frame.encode(), 1) == decode_frame(frame, 1)
    assert len(decode_frame(frame, 1)) == 3
    assert decode_frame(frame[:-20], 1) == []  # truncated
    assert decode_frame(b"\xff\xfe{not utf-8", 1) == []
    assert decode_frame("<html><body>502 Bad Gateway</body></html>", 1) == []
    assert decode_frame('{"e": [1], "s": {}}', 1, watched={"X"}) == []
    assert decode_frame("NaN", 1) == []
    nested = '{"stream":"x","data":' * 1000 + "{}" + "}" * 1000
    assert decode_frame(nested, 1) == []


def test_the_bench_frame_decodes_whole_and_filtered() -> None:
    frame = mark_price_frame(600)
    everything = decode_frame(frame, T0_MS)
    assert len(everything) == 600
    assert everything[0] == MarkPriceTick(
        now_ms=T0_MS, symbol=bench_symbol(0), price=Decimal("100.00000000"), event_time_ms=T0_MS
    )
    assert everything[599].price == Decimal("321.63000000")  # 100 + 599 * 0.37
    watched = frozenset(bench_symbol(i) for i in range(0, 600, 60))
    assert [t.symbol for t in decode_frame(frame, T0_MS, watched)] == [  # type: ignore[union-attr]
        bench_symbol(i) for i in range(0, 600, 60)
    ]
