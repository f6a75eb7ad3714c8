"""The buy-and-hold BTCUSDT benchmark of ``shortfsm report``: hand-computed from a few cached candles."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from decimal import Decimal
from pathlib import Path

import pytest
from backtest_kit import shortfsm

from binance.history.archive import Parsed
from binance.history.cli import BENCHMARK_SYMBOL, Window, benchmark_plan
from binance.history.store import Store
from fsm.ops import benchmark
from fsm.runtime.ledger import parse_day

MINUTE = 60_000
T0 = parse_day("2026-01-05")
KEYS = {"symbol", "start", "end", "open", "close", "return_pct", "not_available"}


def shortfsm_wide(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return shortfsm(*args, cwd=cwd, columns=200)


def write_candles(root: Path, candles: dict[int, tuple[float, float, float, float]]) -> Path:
    """BTCUSDT 1m klines (open time -> open, high, low, close) into a cache at ``root``."""
    times = sorted(candles)
    columns: dict[str, list[float | None]] = {
        name: [candles[t][i] for t in times] for i, name in enumerate(("open", "high", "low", "close"))
    }
    store = Store(root)
    try:
        store.write(BENCHMARK_SYMBOL, "klines", Parsed(times, columns, dict.fromkeys(columns, 1)))
    finally:
        store.close()
    return root


def test_the_return_runs_from_the_first_open_after_the_start_to_the_last_close_before_the_end(
    tmp_path: Path,
) -> None:
    cache = write_candles(
        tmp_path / "cache",
        {
            T0: (90.0, 91.0, 89.0, 90.5),  # opens before the start (00:00:30): left out
            T0 + MINUTE: (100.0, 101.0, 99.0, 100.5),  # the first open at/after the start: 100
            T0 + 2 * MINUTE: (100.5, 120.0, 100.0, 118.0),
            T0 + 3 * MINUTE: (118.0, 118.0, 112.0, 112.5),  # closes at 00:04:00 <= the end: 112.5
            T0 + 4 * MINUTE: (112.5, 150.0, 112.0, 150.0),  # closes at 00:05:00, after the end: left out
        },
    )
    got = benchmark.compute(cache, T0 + 30_000, T0 + 4 * MINUTE + 59_000)
    assert (got.open, got.close, got.start_ms, got.end_ms) == (
        Decimal("100.0"),
        Decimal("112.5"),
        T0 + MINUTE,
        T0 + 4 * MINUTE,
    )
    assert got.return_pct == Decimal("12.5")  # 112.5 / 100 - 1
    assert got.as_dict() == {
        "symbol": "BTCUSDT",
        "start": "2026-01-05T00:01:00Z",
        "end": "2026-01-05T00:04:00Z",
        "open": "100",
        "close": "112.5",
        "return_pct": "12.5000",
        "not_available": None,
    }
    assert got.row()[:2] == ("Buy and hold BTCUSDT", "12.5000 %")
    # The scaled curve starts at the first open and ends at the last close.
    assert (got.curve[0], got.curve[-1]) == (
        (T0 + MINUTE, Decimal("100.0")),
        (T0 + 4 * MINUTE, Decimal("112.5")),
    )


@pytest.mark.parametrize(
    ("cache", "start", "end", "why"),
    [
        (None, T0, T0 + MINUTE, "no market data cache (the daemon keeps none: give --cache DIR)"),
        ("cache", None, None, "no closed trade, so no period"),
        ("nowhere", T0, T0 + MINUTE, "no market data cache at {root}/nowhere"),
        ("empty", T0, T0 + MINUTE, "no BTCUSDT klines in {root}/empty (shortfsm data --feed fetches them)"),
        (
            "cache",
            T0 + 10 * MINUTE,
            T0 + 20 * MINUTE,
            "no BTCUSDT 1m kline in {root}/cache from 2026-01-05T00:10:00Z to 2026-01-05T00:20:00Z",
        ),
        ("cache", T0 + 1000, T0 + MINUTE, "the period is shorter than one minute"),
    ],
)
def test_not_available_says_why(
    tmp_path: Path, cache: str | None, start: int | None, end: int | None, why: str
) -> None:
    write_candles(tmp_path / "cache", {T0: (1.0, 1.0, 1.0, 1.0)})
    (tmp_path / "empty").mkdir()
    got = benchmark.compute(tmp_path / cache if cache else None, start, end)
    assert got.why == why.format(root=tmp_path)
    assert got.as_dict() == {
        "symbol": "BTCUSDT",
        "start": None,
        "end": None,
        "open": None,
        "close": None,
        "return_pct": None,
        "not_available": why.format(root=tmp_path),
    }
    assert got.row() == ("Buy and hold BTCUSDT", "—", f"not available: {why.format(root=tmp_path)}")


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("demo")
    done = shortfsm_wide("backtest", "--demo", "--out", str(where / "demo.db"), cwd=where)
    assert done.returncode == 0, done.stderr
    return where / "demo.db"


def test_the_demo_report_shows_the_benchmark_from_its_own_cache(demo_db: Path, tmp_path: Path) -> None:
    done = shortfsm_wide("report", "--db", str(demo_db), "--capital", "1000", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    bench = doc["benchmark"]
    assert set(bench) == KEYS and bench["not_available"] is None
    # The demo's synthetic BTCUSDT: 92000 at its first minute, up to 95000, flat, up to 98000.
    assert (bench["start"], bench["end"]) == ("2026-01-06T10:02:00Z", "2026-02-26T08:12:00Z")
    assert doc["period"]["start"].startswith("2026-01-06T10:01:")  # the first open after it: 10:02
    expected = (Decimal(bench["close"]) / Decimal(bench["open"]) - 1) * 100
    assert Decimal(bench["return_pct"]) == expected.quantize(Decimal("0.0001"))
    assert (
        Decimal("92000")
        < Decimal(bench["open"])
        < Decimal("95000")
        < Decimal(bench["close"])
        < Decimal("98000")
    )
    page = demo_db.with_name("demo-report.html").read_text(encoding="utf-8")
    assert 'data-series="benchmark"' in page and "Buy and hold BTCUSDT" in page


def test_report_cache_overrides_the_recorded_one(demo_db: Path, tmp_path: Path) -> None:
    """A hand-made cache under the demo's period (2026-01-06T10:01:34 to 2026-02-26T08:12:10)."""
    start, end = parse_day("2026-01-06") + 10 * 60 * MINUTE, parse_day("2026-02-26") + 8 * 60 * MINUTE
    cache = write_candles(
        tmp_path / "mine",
        {
            start + MINUTE: (50.0, 50.0, 50.0, 50.0),  # 10:01 opens before 10:01:34: left out
            start + 2 * MINUTE: (40.0, 44.0, 40.0, 44.0),  # the first open: 40
            end + 10 * MINUTE: (44.0, 46.0, 43.0, 46.0),  # 08:10, closes 08:11: the last close, 46
            end + 11 * MINUTE: (46.0, 60.0, 46.0, 60.0),  # 08:11, closes 08:12:00 <= 08:12:10: 60
            end + 12 * MINUTE: (60.0, 99.0, 60.0, 99.0),  # closes 08:13: left out
        },
    )
    done = shortfsm_wide(
        "report", "--db", str(demo_db), "--capital", "1000", "--json", "--cache", str(cache), cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["benchmark"] == {
        "symbol": "BTCUSDT",
        "start": "2026-01-06T10:02:00Z",
        "end": "2026-02-26T08:12:00Z",
        "open": "40",
        "close": "60",
        "return_pct": "50.0000",  # 60 / 40 - 1
        "not_available": None,
    }
    table = shortfsm_wide(
        "report", "--db", str(demo_db), "--capital", "1000", "--cache", str(cache), cwd=tmp_path
    )
    assert "Buy and hold BTCUSDT" in table.stdout and "50.00 %" in table.stdout


def test_a_database_without_a_recorded_cache_says_not_available(demo_db: Path, tmp_path: Path) -> None:
    """The daemon's database records no cache: "not available" unless --cache is given."""
    daemon_like = tmp_path / "daemon.db"
    daemon_like.write_bytes(demo_db.read_bytes())
    with sqlite3.connect(daemon_like) as conn:
        conn.execute("DELETE FROM status WHERE key = ?", [benchmark.SOURCE_KEY])
    conn.close()
    done = shortfsm_wide("report", "--db", str(daemon_like), "--capital", "1000", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    bench = json.loads(done.stdout)["benchmark"]
    assert bench["not_available"] == "no market data cache (the daemon keeps none: give --cache DIR)"
    assert bench["return_pct"] is None


def test_data_with_a_feed_also_plans_btc_klines_over_the_whole_span() -> None:
    windows = [
        Window("ETHUSDT", T0, T0 + 86_400_000),
        Window("SOLUSDT", T0 + 5 * 86_400_000, T0 + 9 * 86_400_000),
    ]
    assert benchmark_plan(windows, ["klines", "markPriceKlines"]) == [
        (Window("BTCUSDT", T0, T0 + 9 * 86_400_000), "klines")
    ]
    assert benchmark_plan(windows, ["fundingRate"]) == []
