"""The year-long backtest benchmark's data (``fsm.harness.backtest_year``) and its bench rows."""

from __future__ import annotations

import itertools
from collections import Counter
from decimal import Decimal
from pathlib import Path

from binance.history import exchange_info
from binance.parse import symbol_infos
from fsm.harness import backtest_demo, backtest_year, bench
from fsm.harness.backtest import run_backtest


def test_year_stories_spread_messages_over_symbols_and_days() -> None:
    stories = backtest_year.year_stories(5000, 300, 365)
    assert len(stories) == 5000
    assert len({s.symbol for s in stories}) == 300
    assert all(s.symbol.startswith("SYN") and s.symbol.endswith("USDT") for s in stories)
    assert min(s.day for s in stories) == 0 and max(s.day for s in stories) == 364
    assert all(1 <= s.hour <= 20 and s.minute % 3 == 0 for s in stories)
    shapes = Counter(s.shape for s in stories)
    assert set(shapes) == set(backtest_demo.SHAPES) == set(backtest_year.YEAR_SHAPES)
    by_symbol: dict[str, list[int]] = {}
    for s in stories:
        by_symbol.setdefault(s.symbol, []).append(backtest_demo.signal_ms(s))
    gaps = [b - a for times in by_symbol.values() for a, b in itertools.pairwise(times)]
    assert min(gaps) > 2 * backtest_demo.DAY  # each story is over long before the next on its symbol


def test_write_year_gives_a_feed_a_cache_and_binance_shaped_symbols(tmp_path: Path) -> None:
    stories = backtest_year.year_stories(16, 8, 4)
    feed, cache = backtest_year.write_year(tmp_path, stories, 8)
    lines = feed.read_text(encoding="utf-8").splitlines()
    assert lines[0] == f"# {backtest_year.LABEL}"
    risk = sum(s.shape == "risk_close" for s in stories)
    assert len(lines) == 1 + 16 + risk
    saved = exchange_info.load(cache)
    assert saved is not None
    infos = symbol_infos(saved.answer)
    assert sorted(infos) == [f"SYN{i:03d}USDT" for i in range(1, 9)]
    assert all(i.status == "TRADING" and i.tick_size > 0 and i.step_size > 0 for i in infos.values())
    assert not (tmp_path / "demo-feed.jsonl").exists()  # the demo's files are not touched
    result = run_backtest(
        feed,
        cache,
        since_ms=backtest_demo.SINCE_MS,
        until_ms=backtest_demo.SINCE_MS + 5 * backtest_demo.DAY,
        db_path=tmp_path / "bt.db",
        capital=Decimal("100000"),
    )
    assert not any("unknown to the venue" in line for line in result.skipped)
    assert len(result.trades) >= 12  # every shape but the funding-filtered one trades
    assert {t.symbol for t in result.trades} <= set(infos)


def test_year_row_reports_wall_time_events_and_peak_memory() -> None:
    rows = bench.bench_backtest_year(bench.QUICK)
    assert [r.unit for r in rows] == ["s", "events/s", "MB"]
    assert all(r.name.startswith("backtest of 4 days: 16 leading messages over 8 symbols") for r in rows)
    assert rows[2].target.value == bench.BACKTEST_YEAR_RSS_TARGET_MB
    assert all(r.measured and r.stat("median") > 0 for r in rows)
