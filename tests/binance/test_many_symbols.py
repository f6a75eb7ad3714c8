"""Many watched symbols: one ``/market`` connection on ``!markPrice@arr@1s`` instead of 2 streams each."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from binance_simkit import Sink, run, running, wait_for
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from binance import parse, streams
from binance.parse import KlineUpdate
from binance.sim.clock import SimClock
from binance.sim.exchange import SimExchange, SimSymbol, default_symbols
from binance.sim.server import MAX_STREAMS_PER_CONNECTION, SimVenue
from binance.streams import ALL_MARKS_ABOVE, ALL_MARKS_STREAM, MarketStream, wanted_streams
from fsm.events import MarkPriceTick, WsStatusChanged


def name(i: int) -> str:
    return f"S{i:03d}USDT"


def mark_of(i: int) -> Decimal:
    return Decimal(100 + i) + Decimal(i % 100) / 100


def big_exchange(count: int) -> SimExchange:
    """The four default symbols plus ``count`` generated ones (tick 0.01, step 1)."""
    listed = [
        (
            SimSymbol(
                name(i), Decimal("0.01"), Decimal("1"), Decimal("1"), Decimal("1000000"), Decimal("1000000")
            ),
            mark_of(i),
        )
        for i in range(count)
    ]
    return SimExchange(clock=SimClock(), symbols=[*default_symbols(), *listed])


def market_conns(v: SimVenue) -> list[object]:
    return [c for c in v._ws_conns if c.kind == "market"]


def conn_streams(v: SimVenue) -> set[str]:
    (conn,) = market_conns(v)
    return set(conn.streams)  # type: ignore[attr-defined]


def test_wanted_streams_switch_to_the_array_above_the_threshold() -> None:
    assert ALL_MARKS_ABOVE == 100
    assert streams.MAX_STREAMS_PER_CONNECTION == MAX_STREAMS_PER_CONNECTION == 1024
    hundred = {name(i) for i in range(100)}
    small = wanted_streams(hundred, None)
    assert len(small) == 200
    assert {"s000usdt@markPrice@1s", "s000usdt@kline_3m", "s099usdt@markPrice@1s"} <= small
    assert wanted_streams(hundred | {name(100)}, None) == {ALL_MARKS_STREAM}
    six_hundred = {name(i) for i in range(600)}
    assert wanted_streams(six_hundred, None) == {"!markPrice@arr@1s"}
    assert wanted_streams(six_hundred, {name(3), name(7), "NOTWATCHED"}) == {
        "!markPrice@arr@1s",
        "s003usdt@kline_3m",
        "s007usdt@kline_3m",
    }
    # An explicit kline set applies below the threshold too.
    assert wanted_streams({name(1), name(2)}, {name(2)}) == {
        "s001usdt@markPrice@1s",
        "s002usdt@markPrice@1s",
        "s002usdt@kline_3m",
    }
    assert wanted_streams(set(), None) == set()


def test_600_symbols_share_one_connection_on_the_array_stream() -> None:
    async def go() -> None:
        ex = big_exchange(600)
        async with SimVenue(ex) as v:
            sink = Sink()
            ms = MarketStream(f"{v.ws_url}/market", sink, clock_ms=ex.now)
            await ms.subscribe(name(i) for i in range(600))
            assert ms.url() == f"{v.ws_url}/market/stream?streams=!markPrice@arr@1s"
            async with running(ms.run()):
                await wait_for(lambda: bool(sink.of(WsStatusChanged)))
                assert v.ws_connections("market") == 1
                assert conn_streams(v) == {"!markPrice@arr@1s"}
                assert ms.streams == {"!markPrice@arr@1s"}

                ex.publish_marks()  # the venue's 1 s push: 604 symbols in one array frame
                await wait_for(lambda: len(sink.of(MarkPriceTick)) == 600)
                ticks = sink.of(MarkPriceTick)
                assert [t.symbol for t in ticks] == [name(i) for i in range(600)]  # BTC, ETH, ... not watched
                assert {(t.symbol, t.price) for t in ticks} == {(name(i), mark_of(i)) for i in range(600)}
                assert {(t.source, t.event_time_ms, t.now_ms) for t in ticks} == {("WS", ex.now(), ex.now())}
                assert sink.of(KlineUpdate) == []

                ex.advance(1000)
                ex.set_mark(name(42), Decimal("555.55"))
                ex.set_mark("BTCUSDT", Decimal("96000"))
                await wait_for(lambda: len(sink.of(MarkPriceTick)) == 601)
                last = sink.of(MarkPriceTick)[-1]
                assert (last.symbol, last.price, last.event_time_ms) == (
                    name(42),
                    Decimal("555.55"),
                    ex.now(),
                )
                assert v.ws_connections("market") == 1
                assert ms.connections == 1

    run(go(), timeout=30)


def test_crossing_the_threshold_live_swaps_streams_on_the_same_connection() -> None:
    async def go() -> None:
        ex = big_exchange(101)
        async with SimVenue(ex) as v:
            sink = Sink()
            ms = MarketStream(f"{v.ws_url}/market", sink, clock_ms=ex.now)
            await ms.subscribe(name(i) for i in range(100))
            async with running(ms.run()):
                await wait_for(lambda: bool(sink.of(WsStatusChanged)))
                assert len(conn_streams(v)) == 200

                await ms.subscribe([name(100)])  # 101 symbols: SUBSCRIBE the array, UNSUBSCRIBE 200
                await wait_for(lambda: conn_streams(v) == {"!markPrice@arr@1s"})
                ex.set_mark(name(100), Decimal("300.00"))
                await wait_for(lambda: len(sink.of(MarkPriceTick)) == 1)
                assert sink.of(MarkPriceTick)[0].price == Decimal("300.00")

                await ms.watch_klines([name(100)])
                await wait_for(lambda: conn_streams(v) == {"!markPrice@arr@1s", "s100usdt@kline_3m"})
                ex.set_mark(name(100), Decimal("301.00"))
                await wait_for(lambda: len(sink.of(KlineUpdate)) == 1)
                (kline,) = sink.of(KlineUpdate)
                assert (kline.symbol, kline.interval, kline.candle.high, kline.candle.close) == (
                    name(100),
                    "3m",
                    Decimal("301.00"),
                    Decimal("301.00"),
                )

                await ms.unsubscribe([name(100), name(99)])  # 99 symbols: back to per-symbol streams
                await wait_for(lambda: len(conn_streams(v)) == 99)
                assert all(s.endswith("@markPrice@1s") for s in conn_streams(v))  # klines only as asked
                assert v.ws_connections("market") == 1
                assert ms.connections == 1

    run(go(), timeout=30)


def test_venue_refuses_more_than_1024_streams_per_connection() -> None:
    async def go() -> None:
        ex = big_exchange(0)
        async with SimVenue(ex) as v:
            too_many = "/".join(f"s{i}" for i in range(1025))  # short names: the URL stays under 8 KiB
            with pytest.raises(InvalidStatus) as refused:
                async with connect(f"{v.ws_url}/market/stream?streams={too_many}", proxy=None):
                    pass
            assert refused.value.response.status_code == 400

            async with connect(f"{v.ws_url}/market/ws", proxy=None) as ws:
                params = [f"s{i:04d}usdt@markPrice@1s" for i in range(1024)]
                await ws.send(json.dumps({"method": "SUBSCRIBE", "params": params, "id": 1}))
                assert json.loads(await ws.recv()) == {"result": None, "id": 1}
                await ws.send(json.dumps({"method": "SUBSCRIBE", "params": ["one@markPrice@1s"], "id": 2}))
                assert json.loads(await ws.recv()) == {
                    "code": 2,
                    "msg": "Invalid request: more than 1024 streams on one connection",
                    "id": 2,
                }
                await ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 3}))
                assert len(json.loads(await ws.recv())["result"]) == 1024

    run(go())


def test_array_frame_from_the_venue_decodes_whole_and_filtered() -> None:
    async def go() -> None:
        ex = big_exchange(3)
        async with (
            SimVenue(ex) as v,
            connect(f"{v.ws_url}/market/stream?streams=!markPrice@arr", proxy=None) as ws,
        ):
            await wait_for(lambda: v.ws_connections("market") == 1)
            ex.publish_marks()
            frame = await ws.recv(decode=False)
        envelope = json.loads(frame)
        assert envelope["stream"] == "!markPrice@arr"
        assert [item["s"] for item in envelope["data"]] == [
            "BTCUSDT",
            "ETHUSDT",
            "DOGEUSDT",
            "SOLUSDT",
            "S000USDT",
            "S001USDT",
            "S002USDT",
        ]
        assert envelope["data"][4] == {
            "e": "markPriceUpdate",
            "E": ex.now(),
            "s": "S000USDT",
            "p": "100.000000",
            "i": "100.000000",
            "P": "100.000000",
            "r": "0.00010000",
            "ap": "100.000000",
            "T": (ex.now() // 28_800_000 + 1) * 28_800_000,
            "st": 1,
        }
        everything = parse.decode_frame(frame, 7)
        assert [(t.symbol, t.price) for t in everything if isinstance(t, MarkPriceTick)] == [
            ("BTCUSDT", Decimal("95000.00")),
            ("ETHUSDT", Decimal("3500.00")),
            ("DOGEUSDT", Decimal("0.16")),
            ("SOLUSDT", Decimal("180")),
            ("S000USDT", Decimal("100")),
            ("S001USDT", Decimal("101.01")),
            ("S002USDT", Decimal("102.02")),
        ]
        filtered = parse.decode_frame(frame, 7, watched={"S001USDT", "ETHUSDT"})
        assert filtered == [
            MarkPriceTick(now_ms=7, symbol="ETHUSDT", price=Decimal("3500.000000"), event_time_ms=ex.now()),
            MarkPriceTick(now_ms=7, symbol="S001USDT", price=Decimal("101.010000"), event_time_ms=ex.now()),
        ]

    run(go())
