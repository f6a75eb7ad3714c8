"""``shortfsm backtest``: the real engine, the real client and binance/sim over a cache written through
binance.history's store, into a real SQLite that ``shortfsm trades`` / ``report`` read unchanged."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from backtest_kit import (
    MINUTE,
    SIGNAL_MS,
    SINCE_MS,
    ambiguous_bars,
    feed_line,
    leading_text,
    mdd_bars,
    tp_bars,
    write_cache,
    write_feed,
    write_funding,
)

from fsm.harness import backtest
from fsm.harness.backtest import BacktestError, BacktestResult, run_backtest
from fsm.harness.journal_replay import replay_journal
from fsm.journal import ENGINE_ROW
from fsm.ops.backtest_cli import apply_settings
from fsm.runtime.config import AppConfig
from fsm.runtime.ledger import Trade

D = Decimal
ROOT = Path(__file__).resolve().parents[2]
SHORTFSM = Path(sys.executable).parent / "shortfsm"


@pytest.fixture
def tp_case(tmp_path: Path) -> tuple[Path, Path]:
    write_cache(tmp_path / "cache", "ETHUSDT", tp_bars())
    feed = write_feed(tmp_path / "feed.jsonl", [feed_line(101, SIGNAL_MS, leading_text("ETH"))])
    return feed, tmp_path / "cache"


def run(feed: Path, cache: Path, db: Path, **kwargs: object) -> BacktestResult:
    return run_backtest(feed, cache, since_ms=SINCE_MS, capital=D("1000"), db_path=db, **kwargs)  # type: ignore[arg-type]


def shape(t: Trade) -> tuple[object, ...]:
    """A trade without its times (a dense run fills at other seconds of the same minute)."""
    return (
        t.symbol,
        t.message_id,
        t.legs,
        t.entry_qty,
        t.exit_qty,
        t.entry_avg,
        t.exit_avg,
        t.realized_pnl,
        t.fees,
        t.close_reason,
    )


def test_leading_signal_entry_then_take_profit_exact(tp_case: tuple[Path, Path], tmp_path: Path) -> None:
    feed, cache = tp_case
    r = run(feed, cache, tmp_path / "bt.db")
    assert [t.status for t in r.trades] == ["closed"]
    (t,) = r.trades
    # Target: the high of the last closed 3m candle (00:57-00:59) = 3010; trigger 3010 x 0.999 = 3006.99.
    # Size: 50% of 1000 / 3010 = 0.16611 -> 0.166 (step 0.001). Both legs rest, so both are makers (0.02%).
    # TP = 3010 x 0.95 = 2859.50, placed at mark <= 2859.50 x 1.001 = 2862.3595, filled at 2859.50.
    assert (t.entry_avg, t.exit_avg, t.entry_qty, t.exit_qty) == (
        D("3010.00"),
        D("2859.50"),
        D("0.166"),
        D("0.166"),
    )
    assert t.legs == ("ENTRY1", "TP")
    assert t.close_reason is not None and "TP" in t.close_reason
    assert t.realized_pnl == (D("3010.00") - D("2859.50")) * D("0.166") == D("24.983")
    fees = (D("0.166") * D("3010.00") * D("0.0002")).quantize(D("1e-8")) + (
        D("0.166") * D("2859.50") * D("0.0002")
    ).quantize(D("1e-8"))
    assert t.fees == fees == D("0.19486740")
    assert r.ambiguous_trades == 0 and not r.data_problems
    assert r.events > 0 and r.events < 400  # decision points, not seconds: ~75 watched minutes


def test_fees_and_slippage_overrides(tp_case: tuple[Path, Path], tmp_path: Path) -> None:
    from fsm.harness.backtest import Fees

    feed, cache = tp_case
    r = run(
        feed, cache, tmp_path / "bt.db", fees=Fees(maker=D("0.0001"), taker=D("0.0004")), slippage_bps=D(5)
    )
    (t,) = r.trades  # both legs are resting LIMITs: maker fee, no slippage
    assert t.fees == (D("0.166") * (D("3010.00") + D("2859.50")) * D("0.0001")).quantize(D("1e-8"))
    assert t.exit_avg == D("2859.50")


def test_mdd_stop_triggers_on_the_mark_and_fills_with_slippage(tmp_path: Path) -> None:
    write_cache(tmp_path / "cache", "ETHUSDT", mdd_bars())
    feed = write_feed(tmp_path / "feed.jsonl", [feed_line(101, SIGNAL_MS, leading_text("ETH"))])
    r = run(feed, tmp_path / "cache", tmp_path / "bt.db", path="optimistic", slippage_bps=D(10))
    (t,) = r.trades
    assert t.legs == ("ENTRY1", "ENTRY2", "MDD") and t.close_reason is not None and "MDD" in t.close_reason
    # ENTRY2: 99% of the available balance after ENTRY1 at 3461.50 -> 0.121; average 3200.3537.
    avg = (D("0.166") * D("3010.00") + D("0.121") * D("3461.50")) / D("0.287")
    trigger = (avg * D("1.15")).quantize(D("0.01"))
    assert trigger == D("3680.41")
    assert any("trigger_price=3680.41 working_type=MARK_PRICE" in line for _, line in r.decisions)
    # Triggered on the mark at 3680.41; its MARKET child fills at the traded price + 10 bps, up to the tick.
    assert t.exit_avg == D("3684.10")  # 3680.41 x 1.001 = 3684.09041
    fees = [
        (D("0.166") * D("3010.00") * D("0.0002")).quantize(D("1e-8")),
        (D("0.121") * D("3461.50") * D("0.0002")).quantize(D("1e-8")),
        (D("0.287") * D("3684.10") * D("0.0005")).quantize(D("1e-8")),  # the stop's child: a taker
    ]
    assert t.fees == sum(fees)
    assert t.realized_pnl == ((avg.quantize(D("1e-6")) - D("3684.10")) * D("0.287")).quantize(D("1e-8"))


def test_funding_at_a_settlement_inside_the_trade(tp_case: tuple[Path, Path], tmp_path: Path) -> None:
    feed, cache = tp_case
    # 01:05 falls inside the trade (01:01 .. 01:09), 00:00 and 08:00 outside it.
    write_funding(
        cache,
        "ETHUSDT",
        [(SINCE_MS, 0.0005), (SINCE_MS + 65 * MINUTE, 0.0001), (SINCE_MS + 480 * MINUTE, 0.0005)],
    )
    r = run(feed, cache, tmp_path / "bt.db")
    # Short 0.166 at the 01:04 mark close (2951): a positive rate is received.
    assert r.funding == D("0.166") * D("2951") * D("0.0001") == D("0.0489866")
    # It is in the database: the trade open at 01:05 carries it, and its net includes it.
    (trade,) = r.trades
    assert trade.funding == D("0.0489866")
    assert trade.net == trade.realized_pnl - trade.fees + D("0.0489866")


def test_ambiguous_minute_brackets_the_outcome(tmp_path: Path) -> None:
    write_cache(tmp_path / "cache", "ETHUSDT", ambiguous_bars())
    feed = write_feed(tmp_path / "feed.jsonl", [feed_line(101, SIGNAL_MS, leading_text("ETH"))])
    bad = run(feed, tmp_path / "cache", tmp_path / "p.db", path="pessimistic")
    good = run(feed, tmp_path / "cache", tmp_path / "o.db", path="optimistic")
    # 01:02 holds the second-entry level (3458.0385 / 3461.50) above and the TP levels below.
    assert bad.ambiguous_trades == good.ambiguous_trades == 1
    (p,), (o,) = bad.trades, good.trades
    # Optimistic (low first): the TP fills at 2859.50 before the high is reached.
    assert o.legs == ("ENTRY1", "TP") and o.exit_avg == D("2859.50") and o.realized_pnl == D("24.983")
    # Pessimistic (high first): the second entry fills at 3461.50, the breakeven exit closes at the average.
    assert p.legs[:2] == ("ENTRY1", "ENTRY2") and "BE" in p.legs
    assert p.close_reason is not None and "BE" in p.close_reason
    assert p.net < o.net
    assert p.entry_avg is not None and p.exit_avg is not None and abs(p.exit_avg - p.entry_avg) < D("0.01")


def test_no_look_ahead_a_stopped_run_decides_as_the_full_run(
    tp_case: tuple[Path, Path], tmp_path: Path
) -> None:
    feed, cache = tp_case
    full = run(feed, cache, tmp_path / "full.db")
    for cut in (SIGNAL_MS + 66_000, SIGNAL_MS + 3 * MINUTE + 7_000, SINCE_MS + 69 * MINUTE + 30_000):
        part = run(feed, cache, tmp_path / f"cut{cut}.db", until_ms=cut)
        assert part.decisions == [d for d in full.decisions if d[0] < cut]
        assert part.decisions  # the cut falls inside the trade


def test_dense_replay_gives_the_same_ledger(tp_case: tuple[Path, Path], tmp_path: Path) -> None:
    feed, cache = tp_case
    compressed = run(feed, cache, tmp_path / "c.db")
    dense = run(feed, cache, tmp_path / "d.db", dense=True)
    assert [shape(t) for t in dense.trades] == [shape(t) for t in compressed.trades]
    assert len(compressed.trades) == 1
    assert dense.events > 5 * compressed.events  # a mark every second against the decision points


def test_bad_line_unknown_symbol_and_symbol_without_data_are_reported(
    tp_case: tuple[Path, Path], tmp_path: Path
) -> None:
    _, cache = tp_case
    feed = write_feed(
        tmp_path / "mixed.jsonl",
        [
            '{"at_ms": 5, "chat_id": 1, "message_id": 7, "text": "half a line',
            feed_line(99, SIGNAL_MS - 30 * MINUTE, leading_text("XRP")),  # the sim does not list XRPUSDT
            feed_line(100, SIGNAL_MS - 20 * MINUTE, leading_text("SOL")),  # listed, nothing cached
            feed_line(101, SIGNAL_MS, leading_text("ETH")),
        ],
    )
    r = run(feed, cache, tmp_path / "bt.db")
    assert len(r.bad_lines) == 1 and "mixed.jsonl:1" in r.bad_lines[0]
    assert len(r.skipped) == 2
    assert "XRPUSDT" in r.skipped[0] and "unknown" in r.skipped[0]
    assert "SOLUSDT" in r.skipped[1] and "no cached market data" in r.skipped[1]
    assert [t.symbol for t in r.trades] == ["ETHUSDT"]  # the run went on
    assert r.messages == 3 and r.data_problems


def test_missing_minutes_are_reported(tmp_path: Path) -> None:
    bars = tp_bars()
    for k in range(3):
        del bars[SINCE_MS + (64 + k) * MINUTE]
    write_cache(tmp_path / "cache", "ETHUSDT", bars)
    feed = write_feed(tmp_path / "feed.jsonl", [feed_line(101, SIGNAL_MS, leading_text("ETH"))])
    r = run(feed, tmp_path / "cache", tmp_path / "bt.db")
    assert r.missing == {"ETHUSDT": [(SINCE_MS + 64 * MINUTE, SINCE_MS + 67 * MINUTE)]}
    assert r.data_problems


def test_missing_inputs_and_bad_settings(tp_case: tuple[Path, Path], tmp_path: Path) -> None:
    feed, cache = tp_case
    with pytest.raises(BacktestError) as missing:
        run(feed, tmp_path / "nowhere", tmp_path / "bt.db")
    assert missing.value.exit_code == 3
    with pytest.raises(BacktestError) as no_feed:
        run(tmp_path / "none.jsonl", cache, tmp_path / "bt.db")
    assert no_feed.value.exit_code == 3
    foreign = tmp_path / "daemon.db"
    sqlite3.connect(foreign).execute("CREATE TABLE status (key TEXT)").connection.commit()
    with pytest.raises(BacktestError) as daemon_db:
        run(feed, cache, foreign)
    assert daemon_db.value.exit_code == 2 and foreign.exists()  # never replaced
    run(feed, cache, tmp_path / "again.db")
    run(feed, cache, tmp_path / "again.db")  # a backtest's own database is replaced
    assert apply_settings(AppConfig(), ["strategy.tp_pct=4"]).tp_pct == D("4")
    for bad in ("strategy.tp_pct=abc", "strategy.tp_pct=150", "strategy.tp_pc=4", "tp_pct=4"):
        with pytest.raises(ValueError) as exc:
            apply_settings(AppConfig(), [bad])
        assert "\n" not in str(exc.value)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [str(SHORTFSM), *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=120
    )


@pytest.mark.parametrize("batch", [7, 10_000], ids=["batches-and-a-tail", "all-at-close"])
def test_the_journal_holds_every_event_once_in_order(
    tp_case: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, batch: int
) -> None:
    """The backtest's store inserts journal rows a batch at a time and the rest at close: every
    event the run handled is one row, numbered without a gap, and the journal replays identically
    through its last event."""
    monkeypatch.setattr(backtest, "JOURNAL_BATCH", batch)
    db = tmp_path / "out.db"
    result = run(*tp_case, db)
    conn = sqlite3.connect(db)
    rows = conn.execute("SELECT seq, type FROM journal ORDER BY seq").fetchall()
    conn.close()
    assert [seq for seq, _ in rows] == list(range(1, len(rows) + 1))
    assert sum(kind != ENGINE_ROW for _, kind in rows) == result.events == 103
    replayed = replay_journal(db)
    assert replayed.identical
    assert [(r.events, r.end_seq) for r in replayed.runs] == [(result.events, len(rows))]
    conn = sqlite3.connect(db)
    (covered,) = conn.execute("SELECT journal_seq FROM snapshots ORDER BY id DESC LIMIT 1").fetchone()
    conn.close()
    assert covered == len(rows)  # the last snapshot covers the whole journal (rows held went in first)


def _rewrite_month(cache: Path, month: str, change: Any) -> None:
    """Both klines datasets' ``month`` file of ETHUSDT rewritten through ``change(table)``."""
    import pyarrow.parquet as pq

    for dataset in ("klines", "markPriceKlines"):
        path = cache / dataset / "ETHUSDT" / f"{month}.parquet"
        pq.write_table(change(pq.read_table(path)), path)


def test_months_stored_with_other_schemas_are_read_as_before(
    tp_case: tuple[Path, Path], tmp_path: Path
) -> None:
    """One month's minutes stored as float64 (the months' schemas differ: the Arrow table is
    declined) or one month's prices as float32: the run reads the lists and trades as on a clean
    cache (a differential attack found a crash here)."""
    import pyarrow as pa

    feed, cache = tp_case
    clean = run(feed, cache, tmp_path / "clean.db")
    _rewrite_month(cache, "2026-02", lambda t: t.set_column(0, "open_time", t.column(0).cast(pa.float64())))
    _rewrite_month(cache, "2026-03", lambda t: t.set_column(1, "open", t.column(1).cast(pa.float32())))
    odd = run(feed, cache, tmp_path / "odd.db")
    assert [shape(t) for t in odd.trades] == [shape(t) for t in clean.trades]
    assert [round(t.net, 4) for t in odd.trades] == [D("24.7881")]


def test_a_row_out_of_order_and_out_of_the_window_is_never_read(
    tp_case: tuple[Path, Path], tmp_path: Path
) -> None:
    """A month file with a row of 20 days before the window appended at its end (out of order):
    neither read path reads it (the list path's bisection read it, and a x10 'jump' to it dropped
    783 candles and the trade), so the run trades as on a clean cache."""
    import pyarrow as pa

    from binance.history.store import Store as ParquetStore

    feed, cache = tp_case
    clean = run(feed, cache, tmp_path / "clean.db")
    early = SINCE_MS - 20 * 86_400_000

    def append(t: Any) -> Any:
        row = pa.table({n: pa.array([early if n == "open_time" else 100000.0], t.schema.field(n).type)
                        for n in t.column_names}, schema=t.schema)  # fmt: skip
        return pa.concat_tables([t, row])

    _rewrite_month(cache, "2026-02", append)
    store = ParquetStore(cache)
    try:
        lo, hi = SINCE_MS - 11 * 3_600_000, SINCE_MS + 3 * 3_600_000
        listed = store.read("ETHUSDT", "klines", lo, hi)
        table = store.read_table("ETHUSDT", "klines", lo, hi)
        assert early not in listed["open_time"]
        assert {n: table.column(n).to_pylist() for n in table.column_names} == listed
    finally:
        store.close()
    odd = run(feed, cache, tmp_path / "odd.db")
    assert [shape(t) for t in odd.trades] == [shape(t) for t in clean.trades]
    assert not any("corrupt candle" in n for n in odd.notes)


def test_cli_run_then_trades_and_report_read_the_database(tp_case: tuple[Path, Path], tmp_path: Path) -> None:
    feed, cache = tp_case
    db = tmp_path / "out.db"
    common = ["--feed", str(feed), "--cache", str(cache), "--since", "2026-03-01", "--capital", "1000"]
    done = _cli("backtest", *common, "--out", str(db), "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (only,) = json.loads(done.stdout)["runs"]
    assert only["trades"][0]["net"] == "24.7881"
    trades = _cli("trades", "--db", str(db), "--format", "json", cwd=tmp_path)
    assert trades.returncode == 0, trades.stderr
    assert "24.7881" in trades.stdout and "2859.5" in trades.stdout
    replayed = _cli("replay", "--journal", str(db), cwd=tmp_path)  # the journal is the daemon's
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    report = _cli("report", "--db", str(db), "--capital", "1000", "--json", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert "24.7881" in report.stdout or "24.79" in report.stdout

    bad = _cli("backtest", *common, "--out", str(db), "--set", "strategy.tp_pct=abc", cwd=tmp_path)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr
    gone = _cli(
        "backtest",
        *common[:2],
        "--cache",
        str(tmp_path / "nowhere"),
        *common[4:],
        "--out",
        str(db),
        cwd=tmp_path,
    )
    assert gone.returncode == 3 and len(gone.stderr.strip().splitlines()) == 1


def test_the_demo_runs_both_paths_on_its_labelled_synthetic_data(tmp_path: Path) -> None:
    """`shortfsm backtest --demo`: no feed, cache or dates; nine signals over two months, one refused
    by the funding filter; each way out of a trade appears once or more; the one ambiguous minute
    makes the optimistic path a TP where the pessimistic one scales in and comes back to breakeven."""
    result = _cli("backtest", "--demo", "--out", "demo/demo.db", "--json", cwd=tmp_path)
    assert (result.returncode, "SYNTHETIC DEMO DATA" in result.stderr, "Traceback" in result.stderr) == (
        0,
        True,
        False,
    )
    runs = json.loads(result.stdout)["runs"]
    reasons = [[t["close_reason"] for t in run["trades"]] for run in runs]
    tp, be = "flat: TP filled", "flat: BE filled"
    common = [tp, be, tp, "flat: MDD stop", "flat: risk_pnl_negative"]
    assert reasons == [[*common, be, be, tp], [*common, tp, be, tp]]
    # The scale-in/TP minute (#106) and the risk message's market exit (#105) inside a moving minute.
    assert [run["ambiguous_trades"] for run in runs] == [2, 2]
    bracket = json.loads(result.stdout)["bracket"]
    assert D(bracket["pessimistic"]) < D(bracket["optimistic"])
    assert D(runs[0]["funding"]) > 0  # the BTC trade held across 08:00 received 0.01 %
    readme = tmp_path / "demo" / "demo-data" / "README.txt"  # the demo's data in a folder of its own
    assert readme.read_text(encoding="utf-8").startswith("SYNTHETIC DEMO DATA")
    assert "<html" in (tmp_path / "demo" / "demo-report.html").read_text(encoding="utf-8").lower()
    report = _cli("report", "--db", "demo/demo.db", "--capital", "1000", "--json", cwd=tmp_path)
    assert report.returncode == 0
    measured = json.loads(report.stdout)
    assert (measured["trades"]["closed"], measured["net"]) == (8, runs[0]["net"])


def test_candles_that_are_no_numbers_are_dropped_as_corrupt_never_a_traceback(
    tp_case: tuple[Path, Path], tmp_path: Path
) -> None:
    """A NaN candle, an infinite high, a null high, and two candles of +-1e308 (their float sum
    overflows) in the hours before the signal: each is a corrupt candle, counted as missing and
    said in one note; the run trades as on a clean cache (all four crashed the run before: found
    by the differential attack, in the old tree too)."""
    feed, cache = tp_case
    clean = run(feed, cache, tmp_path / "clean.db")
    bars: dict[int, Any] = dict(tp_bars())
    nan, inf = float("nan"), float("inf")
    bars[SINCE_MS + 10 * MINUTE] = (nan, nan, nan, nan)
    bars[SINCE_MS + 11 * MINUTE] = (3000.0, inf, 3000.0, 3000.0)
    bars[SINCE_MS + 12 * MINUTE] = (3000.0, None, 3000.0, 3000.0)
    bars[SINCE_MS + 13 * MINUTE] = (1e308, 1e308, 1e308, 1e308)
    bars[SINCE_MS + 14 * MINUTE] = (-1e308, -1e308, -1e308, -1e308)
    odd_cache = tmp_path / "odd-cache"
    write_cache(odd_cache, "ETHUSDT", bars)
    odd = run(feed, odd_cache, tmp_path / "odd.db")
    assert [shape(t) for t in odd.trades] == [shape(t) for t in clean.trades]
    dropped = [n for n in odd.notes if "corrupt candle(s) dropped" in n]
    assert len(dropped) == 2  # klines and markPriceKlines
    assert all(" 5 corrupt candle(s)" in n and "2026-03-01T00:10:00Z" in n for n in dropped)
