"""``shortfsm backtest`` beyond the simulator's four symbols: the venue's symbols and filters come
from the cache's ``exchangeInfo.json`` (D-62)."""

from __future__ import annotations

import json
import sqlite3
from decimal import Decimal
from pathlib import Path

from backtest_kit import (
    MINUTE,
    SIGNAL_MS,
    SINCE_MS,
    feed_line,
    leading_text,
    tp_bars,
    write_cache,
    write_feed,
)

from binance.history.archive import Parsed
from binance.history.store import Store
from fsm.harness.backtest import BacktestResult, run_backtest

D = Decimal
READ_MS = SINCE_MS + 280 * 86_400_000  # exchangeInfo read months after the signals (today)
XRP_ONBOARD_MS = 1_578_355_200_000  # 2020-01-07


def xrp_entry(**changes: object) -> dict[str, object]:
    """XRPUSDT as the venue lists it (filters as on fapi.binance.com in 2026)."""
    entry: dict[str, object] = {
        "symbol": "XRPUSDT",
        "pair": "XRPUSDT",
        "contractType": "PERPETUAL",
        "deliveryDate": 4133404800000,
        "onboardDate": XRP_ONBOARD_MS,
        "status": "TRADING",
        "baseAsset": "XRP",
        "quoteAsset": "USDT",
        "marginAsset": "USDT",
        "pricePrecision": 4,
        "quantityPrecision": 1,
        "filters": [
            {"filterType": "PRICE_FILTER", "minPrice": "0.0143", "maxPrice": "100000", "tickSize": "0.0001"},
            {"filterType": "LOT_SIZE", "minQty": "0.1", "maxQty": "10000000", "stepSize": "0.1"},
            {"filterType": "MARKET_LOT_SIZE", "minQty": "0.1", "maxQty": "2000000", "stepSize": "0.1"},
            {"filterType": "MAX_NUM_ORDERS", "limit": 200},
            {"filterType": "MIN_NOTIONAL", "notional": "5"},
            {
                "filterType": "PERCENT_PRICE",
                "multiplierUp": "1.0500",
                "multiplierDown": "0.9500",
                "multiplierDecimal": "4",
            },
        ],
        "orderTypes": ["LIMIT", "MARKET", "STOP", "STOP_MARKET", "TAKE_PROFIT", "TAKE_PROFIT_MARKET"],
        "timeInForce": ["GTC", "IOC", "FOK", "GTX", "GTD"],
    }
    entry.update(changes)
    return entry


def eth_entry() -> dict[str, object]:
    filters = [
        {"filterType": "PRICE_FILTER", "minPrice": "39.86", "maxPrice": "306177", "tickSize": "0.01"},
        {"filterType": "LOT_SIZE", "minQty": "0.001", "maxQty": "10000", "stepSize": "0.001"},
        {"filterType": "MARKET_LOT_SIZE", "minQty": "0.001", "maxQty": "2000", "stepSize": "0.001"},
        {"filterType": "MIN_NOTIONAL", "notional": "20"},
        {"filterType": "PERCENT_PRICE", "multiplierUp": "1.0500", "multiplierDown": "0.9500"},
    ]
    return {
        "symbol": "ETHUSDT",
        "contractType": "PERPETUAL",
        "onboardDate": 1569398400000,
        "status": "TRADING",
        "quoteAsset": "USDT",
        "marginAsset": "USDT",
        "filters": filters,
    }


def write_exchange_info(root: Path, symbols: list[dict[str, object]]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    answer = {"timezone": "UTC", "serverTime": READ_MS, "symbols": symbols}
    doc = {"read_ms": READ_MS, "source": "https://fapi.binance.com", "exchangeInfo": answer}
    (root / "exchangeInfo.json").write_text(json.dumps(doc), encoding="utf-8")


def xrp_bars() -> dict[int, tuple[float, float, float, float]]:
    """``tp_bars`` (ETH around 3000) divided by 1200: XRP around 2.5, four decimals."""
    return {t: tuple(round(p / 1200, 4) for p in bar) for t, bar in tp_bars().items()}  # type: ignore[misc]


def write_xrp_cache(root: Path) -> None:
    bars = xrp_bars()
    times = sorted(bars)
    columns: dict[str, list[float | None]] = {
        name: [bars[t][i] for t in times] for i, name in enumerate(("open", "high", "low", "close"))
    }
    store = Store(root)
    try:
        for dataset in ("klines", "markPriceKlines"):
            store.write("XRPUSDT", dataset, Parsed(times, dict(columns), dict.fromkeys(columns, 4)))
    finally:
        store.close()


def run(feed: Path, cache: Path, db: Path) -> BacktestResult:
    return run_backtest(feed, cache, since_ms=SINCE_MS, capital=D("1000"), db_path=db)


def orders(db: Path) -> list[tuple[str, str, str, str, str | None, str]]:
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute(
            "SELECT symbol, side, type, price, trigger_price, quantity FROM orders ORDER BY created_ms, rowid"
        ).fetchall()
    finally:
        conn.close()
    return [tuple(r) for r in rows]


def test_a_fifth_symbol_from_the_saved_exchange_info_trades_at_its_own_tick_and_step(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    write_xrp_cache(cache)
    write_exchange_info(cache, [eth_entry(), xrp_entry()])
    feed = write_feed(tmp_path / "feed.jsonl", [feed_line(101, SIGNAL_MS, leading_text("XRP"))])
    r = run(feed, cache, tmp_path / "bt.db")
    assert r.skipped == []
    (t,) = r.trades
    assert t.symbol == "XRPUSDT" and t.legs == ("ENTRY1", "TP") and t.status == "closed"
    # Target: the 00:59 candle's high 3010 / 1200 = 2.5083 (tick 0.0001). Size: 50% of 1000 / 2.5083
    # = 199.338... -> 199.3 (step 0.1). TP = 2.5083 x 0.95 = 2.382885 -> 2.3829 at the tick.
    assert orders(tmp_path / "bt.db") == [
        ("XRPUSDT", "SELL", "LIMIT", "2.5083", None, "199.3"),
        ("XRPUSDT", "BUY", "LIMIT", "2.3829", None, "199.3"),
    ]
    assert (t.entry_avg, t.exit_avg, t.entry_qty) == (D("2.5083"), D("2.3829"), D("199.3"))
    assert any("exchangeInfo read" in n and "no history" in n for n in r.notes)
    assert not any("simulator's" in n for n in r.notes)  # the file had every value


def test_a_symbol_missing_from_the_file_is_skipped_with_one_line(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    write_cache(cache, "ETHUSDT", tp_bars())
    write_exchange_info(cache, [eth_entry()])
    feed = write_feed(
        tmp_path / "feed.jsonl",
        [
            feed_line(99, SIGNAL_MS - 30 * MINUTE, leading_text("XRP")),
            feed_line(101, SIGNAL_MS, leading_text("ETH")),
        ],
    )
    r = run(feed, cache, tmp_path / "bt.db")
    assert r.skipped == [
        "2026-03-01T00:30:05Z message 99: XRPUSDT unknown to the venue "
        "(not a USDT perpetual in its exchangeInfo read 2026-12-06T00:00:00Z)"
    ]
    assert [t.symbol for t in r.trades] == ["ETHUSDT"]  # the run went on, ETH at the file's filters


def test_onboarded_after_the_signal_or_not_trading_today_is_skipped(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    write_xrp_cache(cache)
    write_cache(cache, "ETHUSDT", tp_bars())
    late = SIGNAL_MS + 86_400_000
    eth = eth_entry() | {"status": "SETTLING"}
    write_exchange_info(cache, [eth, xrp_entry(onboardDate=late)])
    feed = write_feed(
        tmp_path / "feed.jsonl",
        [
            feed_line(100, SIGNAL_MS - 30 * MINUTE, leading_text("ETH")),
            feed_line(101, SIGNAL_MS, leading_text("XRP")),
        ],
    )
    r = run(feed, cache, tmp_path / "bt.db")
    assert r.skipped == [
        "2026-03-01T00:30:05Z message 100: ETHUSDT is SETTLING on the venue (exchangeInfo read "
        "2026-12-06T00:00:00Z; today's status stands for the past)",
        "2026-03-01T01:00:05Z message 101: XRPUSDT was not listed yet: onboarded 2026-03-02T01:00:05Z",
    ]
    assert r.trades == []


def test_values_the_file_lacks_come_from_the_simulator_each_named_once(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    write_xrp_cache(cache)
    bare = xrp_entry()
    bare["filters"] = [
        f
        for f in bare["filters"]  # type: ignore[attr-defined]
        if f["filterType"] not in ("PERCENT_PRICE", "MIN_NOTIONAL")
    ]
    write_exchange_info(cache, [bare])
    feed = write_feed(tmp_path / "feed.jsonl", [feed_line(101, SIGNAL_MS, leading_text("XRP"))])
    r = run(feed, cache, tmp_path / "bt.db")
    defaults = [n for n in r.notes if "the simulator's used" in n]
    assert defaults == [
        "exchangeInfo has no MIN_NOTIONAL notional (5) for XRPUSDT: the simulator's used",
        "exchangeInfo has no PERCENT_PRICE multiplierUp (1.0500) for XRPUSDT: the simulator's used",
        "exchangeInfo has no PERCENT_PRICE multiplierDown (0.9500) for XRPUSDT: the simulator's used",
    ]
    assert [t.symbol for t in r.trades] == ["XRPUSDT"]


def test_without_the_file_the_four_defaults_and_one_line_saying_to_run_data(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    write_cache(cache, "ETHUSDT", tp_bars())
    feed = write_feed(tmp_path / "feed.jsonl", [feed_line(101, SIGNAL_MS, leading_text("ETH"))])
    r = run(feed, cache, tmp_path / "bt.db")
    lines = [n for n in r.notes if "exchangeInfo" in n]
    assert lines == [
        "no exchangeInfo in the cache: only the simulator's four symbols trade (BTCUSDT, ETHUSDT, "
        "DOGEUSDT, SOLUSDT), with its filters; run `shortfsm data --feed` to save the venue's"
    ]
    assert [t.symbol for t in r.trades] == ["ETHUSDT"]
