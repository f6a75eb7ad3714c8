"""``shortfsm backtest`` against the adversary's findings (/tmp/attack_bt): each case a real run over a
cache written through binance.history's store, its numbers computed by hand."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

from backtest_kit import (
    MINUTE,
    SIGNAL_MS,
    SINCE_MS,
    feed_line,
    flat,
    history,
    leading_text,
    tp_bars,
    write_cache,
    write_feed,
)

from fsm.harness.backtest import BacktestResult, run_backtest

D = Decimal
SHORTFSM = Path(sys.executable).parent / "shortfsm"
RISK_CHAT = -1003096527269
RISK_TEXT = "🥈 Binance : ETHUSDT.P 에서 숏 리스크관리 권장"
END = SINCE_MS + 180 * MINUTE


def run(feed: Path, cache: Path, db: Path, **kwargs: object) -> BacktestResult:
    return run_backtest(feed, cache, since_ms=SINCE_MS, capital=D("1000"), db_path=db, **kwargs)  # type: ignore[arg-type]


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SHORTFSM), *args], capture_output=True, text=True, cwd=cwd, timeout=300, check=False
    )


def same_minute_case(tmp_path: Path) -> Path:
    """01:01 holds the entry (3006.99 / 3010) and the take-profit (2862.3595 / 2859.50): O 3000,
    H 3012, L 2850, C 2900, then flat 2900."""
    bars = history(END)
    bars[SINCE_MS + 61 * MINUTE] = (3000.0, 3012.0, 2850.0, 2900.0)
    for t in range(SINCE_MS + 62 * MINUTE, END, MINUTE):
        bars[t] = flat(2900.0)
    write_cache(tmp_path / "cache", "ETHUSDT", bars)
    return write_feed(tmp_path / "feed.jsonl", [feed_line(101, SIGNAL_MS, leading_text("ETH"))])


def test_entry_and_take_profit_in_one_minute_bracket_the_right_way_and_count_as_ambiguous(
    tmp_path: Path,
) -> None:
    """Finding 1 (t01): flat at the minute's start, the pessimistic path goes to the low first, so the
    entry comes late and earns nothing inside the minute; the optimistic one enters and takes profit."""
    feed = same_minute_case(tmp_path)
    p = run(feed, tmp_path / "cache", tmp_path / "p.db", path="pessimistic")
    o = run(feed, tmp_path / "cache", tmp_path / "o.db", path="optimistic")
    # Pessimistic: the SELL LIMIT at 3010 fills (maker 0.02 %) and the position is still open.
    (pt,) = p.trades
    assert (pt.legs, pt.entry_avg, pt.status) == (("ENTRY1",), D("3010.00"), "open")
    # Finding 9: net counts closed trades only; the open short is marked at the last price (2900).
    assert p.net == 0
    assert p.unrealized == {"ETHUSDT": (D("3010.00") - D("2900")) * D("0.166")}
    assert p.marked_net == D("18.26") - D("0.099932")  # its entry fee, maker 0.02 %
    # Optimistic: entry at 3010, TP at 2859.50 in the same minute.
    (ot,) = o.trades
    assert (ot.legs, ot.exit_avg) == (("ENTRY1", "TP"), D("2859.50"))
    assert o.net == D("24.983") - D("0.19486740")
    assert p.net <= o.net
    assert (p.ambiguous_trades, o.ambiguous_trades) == (1, 1)


def test_path_both_prints_a_bracket_in_order(tmp_path: Path) -> None:
    feed = same_minute_case(tmp_path)
    args = ("backtest", "--feed", str(feed), "--cache", str(tmp_path / "cache"), "--since", "2026-03-01")
    result = cli(
        *args, "--until", "2026-03-01", "--capital", "1000", "--path", "both", "--json", cwd=tmp_path
    )
    assert "Traceback" not in result.stderr
    payload = json.loads(result.stdout)
    assert D(payload["bracket"]["pessimistic"]) <= D(payload["bracket"]["optimistic"])
    assert [r["ambiguous_trades"] for r in payload["runs"]] == [1, 1]
    (open_trade,) = payload["runs"][0]["trades"]
    assert (open_trade["status"], open_trade["unrealized"]) == ("open", "18.2600")
    assert payload["runs"][0]["unrealized"] == "18.2600" and payload["runs"][0]["net"] == "0.0000"


def test_a_risk_message_inside_a_watched_minute_sees_that_moments_price(tmp_path: Path) -> None:
    """Finding 2 (t04b): short from 3010; 01:02 (held: high first) O 3020 :00, H 3100 :20, L 3020 :40.
    The risk message at 01:02:35 closes at market: the path is at 3100 - 80 x 15/20 = 3040 then,
    not at the 3100 of the :20 vertex. Compressed and dense agree."""
    bars = history(END)
    bars[SINCE_MS + 61 * MINUTE] = (3000.0, 3012.0, 2999.0, 3011.0)
    bars[SINCE_MS + 62 * MINUTE] = (3020.0, 3100.0, 3020.0, 3090.0)
    for t in range(SINCE_MS + 63 * MINUTE, END, MINUTE):
        bars[t] = flat(3090.0)
    write_cache(tmp_path / "cache", "ETHUSDT", bars)
    risk_at = SINCE_MS + 62 * MINUTE + 35_000
    feed = write_feed(
        tmp_path / "feed.jsonl",
        [feed_line(101, SIGNAL_MS, leading_text("ETH")), feed_line(5, risk_at, RISK_TEXT, chat_id=RISK_CHAT)],
    )
    for dense in (False, True):
        r = run(feed, tmp_path / "cache", tmp_path / f"{dense}.db", dense=dense)
        (trade,) = r.trades
        assert (trade.legs, trade.exit_avg) == (("ENTRY1", "CLOSE"), D("3040.00"))
        assert trade.realized_pnl == (D("3010.00") - D("3040.00")) * D("0.166")
        # A market exit inside a minute whose high is not its low: its price depends on the path.
        assert r.ambiguous_trades == 1


def test_the_signals_own_minute_starts_at_the_signal_moment(tmp_path: Path) -> None:
    """Finding 3 (t02): 01:00 rises 3000 -> 3100 by :20 (optimistic, flat: high first); the signal at
    01:00:05 sees 3025 (3000 + 100 x 5/20): the SELL LIMIT at 3010 crosses the traded price and fills
    there as a taker, as in the dense run, not at the :20 vertex's 3100."""
    bars = history(END)
    bars[SINCE_MS + 60 * MINUTE] = (3000.0, 3100.0, 3000.0, 3050.0)
    for t in range(SINCE_MS + 61 * MINUTE, END, MINUTE):
        bars[t] = flat(2700.0)
    write_cache(tmp_path / "cache", "ETHUSDT", bars)
    feed = write_feed(tmp_path / "feed.jsonl", [feed_line(101, SIGNAL_MS, leading_text("ETH"))])
    for dense in (False, True):
        r = run(feed, tmp_path / "cache", tmp_path / f"{dense}.db", path="optimistic", dense=dense)
        assert r.trades[0].entry_avg == D("3025.00")


def test_two_symbols_crossing_in_the_same_second_meet_in_one_evaluation(tmp_path: Path) -> None:
    """Finding 5 (t05): BTC (01:00:05) and ETH (01:00:06) cross their triggers in the same second;
    W18: the later-received signal (ETH) enters, BTC is reset; compressed as dense."""
    eth = tp_bars(END)
    btc = {t: (b[0] * 20, b[1] * 20, b[2] * 20, b[3] * 20) for t, b in eth.items()}
    write_cache(tmp_path / "cache", "ETHUSDT", eth)
    write_cache(tmp_path / "cache", "BTCUSDT", btc)
    feed = write_feed(
        tmp_path / "feed.jsonl",
        [
            feed_line(100, SIGNAL_MS, leading_text("BTC")),
            feed_line(101, SIGNAL_MS + 1000, leading_text("ETH")),
        ],
    )
    for dense in (False, True):
        r = run(feed, tmp_path / "cache", tmp_path / f"{dense}.db", dense=dense)
        assert [(t.symbol, t.legs) for t in r.trades] == [("ETHUSDT", ("ENTRY1", "TP"))]
        assert any("BTCUSDT" in line and "W18" in line for _, line in r.decisions)


def tp_case(tmp_path: Path) -> tuple[str, ...]:
    write_cache(tmp_path / "cache", "ETHUSDT", tp_bars())
    feed = write_feed(tmp_path / "feed.jsonl", [feed_line(101, SIGNAL_MS, leading_text("ETH"))])
    return ("backtest", "--feed", str(feed), "--cache", str(tmp_path / "cache"), "--since", "2026-03-01")


def test_a_second_run_on_the_same_out_is_refused_and_a_run_reports_its_own_file(tmp_path: Path) -> None:
    """Finding 4 (t10): a run holds an exclusive lock on --out and writes a temporary file beside it,
    renamed onto --out at the end; another run on that --out meanwhile gets one line, exit 2."""
    import fcntl
    import os

    args = (*tp_case(tmp_path), "--capital", "1000", "--until", "2026-03-01")
    out = tmp_path / "bt.db"
    fd = os.open(f"{out}.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a run in progress holds it
        busy = cli(*args, "--out", str(out), cwd=tmp_path)
    finally:
        os.close(fd)
    assert (busy.returncode, len(busy.stderr.strip().splitlines()), out.exists()) == (2, 1, False)
    assert "another backtest" in busy.stderr
    done = cli(*args, "--out", str(out), "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["runs"][0]["net"] == "24.7881"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith((".bt", "bt"))) == [
        "bt.db",
        "bt.db.lock",
    ]


def test_unusable_out_and_settings_out_of_range_are_one_line_exit_2(tmp_path: Path) -> None:
    """Finding 12/13 (t08, t11, t17): no traceback; a stray -wal beside a missing --out is left alone."""
    base = (*tp_case(tmp_path), "--until", "2026-03-01")
    (tmp_path / "afile").write_text("x", encoding="utf-8")
    (tmp_path / "ghost.db-wal").write_text("precious", encoding="utf-8")
    cases = [
        ("--capital", "1000", "--out", str(tmp_path / "afile" / "x.db")),
        ("--capital", "1000", "--out", str(tmp_path / ("a" * 300 + ".db"))),
        ("--capital", "1000", "--out", "/proc/shortfsm-test.db"),
        ("--capital", "1000", "--out", str(tmp_path / "ghost.db")),
        ("--capital", "1e30"),
        ("--capital", "1000", "--maker-fee", "1e400"),
        ("--capital", "1000", "--maker-fee", "5"),
        ("--capital", "1000", "--slippage-bps", "1e30"),
    ]
    for extra in cases:
        result = cli(*base, *extra, cwd=tmp_path)
        assert (result.returncode, len(result.stderr.strip().splitlines())) == (2, 1), (extra, result.stderr)
        assert "Traceback" not in result.stderr
    assert (tmp_path / "ghost.db-wal").read_text(encoding="utf-8") == "precious"


def test_an_edited_line_is_skipped_as_a_data_problem(tmp_path: Path) -> None:
    """Finding 6 (t06): the feed's text was edited after the message was sent; the daemon acted on the
    original (N-27), which the feed does not hold: the line is skipped and reported, not traded."""
    write_cache(tmp_path / "cache", "ETHUSDT", tp_bars())
    line = json.loads(feed_line(101, SIGNAL_MS, leading_text("ETH")))
    line["edit_date_ms"] = SIGNAL_MS + 4 * 60 * MINUTE
    feed = write_feed(tmp_path / "feed.jsonl", [json.dumps(line, ensure_ascii=False)])
    r = run(feed, tmp_path / "cache", tmp_path / "bt.db")
    assert r.trades == [] and r.data_problems
    assert len(r.skipped) == 1 and "edited" in r.skipped[0]


def test_a_signal_whose_last_3m_candle_is_incomplete_is_skipped(tmp_path: Path) -> None:
    """Finding 7 (t07): 00:58 is missing: the 00:57-00:59 candle (the aggressive target's 3010) cannot
    be built; the signal is skipped with a line and the minute is reported missing."""
    bars = tp_bars()
    del bars[SINCE_MS + 58 * MINUTE]
    write_cache(tmp_path / "cache", "ETHUSDT", bars)
    feed = write_feed(tmp_path / "feed.jsonl", [feed_line(101, SIGNAL_MS, leading_text("ETH"))])
    r = run(feed, tmp_path / "cache", tmp_path / "bt.db")
    assert r.trades == [] and len(r.skipped) == 1 and "3m candle" in r.skipped[0]
    assert r.missing == {"ETHUSDT": [(SINCE_MS + 58 * MINUTE, SINCE_MS + 59 * MINUTE)]}


def test_a_risk_message_in_a_data_hole_is_acted_on_and_flagged(tmp_path: Path) -> None:
    """Finding 8 (t15): holding a short, no minutes 01:03..01:39, a risk message at 01:30: the engine
    acts as the daemon would, at the last known price (01:02's close, 3020), and the run says so."""
    bars = history(END)
    bars[SINCE_MS + 61 * MINUTE] = (3000.0, 3012.0, 2999.0, 3011.0)
    bars[SINCE_MS + 62 * MINUTE] = (3011.0, 3030.0, 3011.0, 3020.0)
    for t in range(SINCE_MS + 63 * MINUTE, SINCE_MS + 100 * MINUTE, MINUTE):
        del bars[t]
    for t in range(SINCE_MS + 100 * MINUTE, END, MINUTE):
        bars[t] = flat(3300.0)
    write_cache(tmp_path / "cache", "ETHUSDT", bars)
    feed = write_feed(
        tmp_path / "feed.jsonl",
        [
            feed_line(101, SIGNAL_MS, leading_text("ETH")),
            feed_line(5, SINCE_MS + 90 * MINUTE, RISK_TEXT, chat_id=RISK_CHAT),
        ],
    )
    r = run(feed, tmp_path / "cache", tmp_path / "bt.db")
    (trade,) = r.trades
    assert (trade.legs, trade.exit_avg) == (("ENTRY1", "CLOSE"), D("3020.00"))
    assert r.skipped == [] and len(r.flagged) == 1 and "last known price 3020" in r.flagged[0]
    assert r.data_problems


def test_the_demo_checks_out_first_and_writes_only_its_own_folder(tmp_path: Path) -> None:
    """Finding 11 (t20): a refused --out leaves the folder as it was; the demo's data goes to
    <out folder>/demo-data/, and a demo-data folder that is not the demo's is not written into."""
    (tmp_path / "README.txt").write_text("my notes", encoding="utf-8")
    (tmp_path / "daemon.db").write_text("not a backtest", encoding="utf-8")
    refused = cli("backtest", "--demo", "--out", "daemon.db", cwd=tmp_path)
    assert (refused.returncode, "Traceback" in refused.stderr) == (2, False)
    assert not (tmp_path / "demo-data").exists()
    foreign = tmp_path / "other"
    (foreign / "demo-data").mkdir(parents=True)
    (foreign / "demo-data" / "demo-feed.jsonl").write_text("mine", encoding="utf-8")
    taken = cli("backtest", "--demo", "--out", "other/demo.db", cwd=tmp_path)
    assert (taken.returncode, len(taken.stderr.strip().splitlines())) == (2, 2)  # the label, then why
    assert (foreign / "demo-data" / "demo-feed.jsonl").read_text(encoding="utf-8") == "mine"
    assert (tmp_path / "README.txt").read_text(encoding="utf-8") == "my notes"


def test_corrupt_candles_are_dropped_and_reported_as_missing(tmp_path: Path) -> None:
    """Finding 13 (t18): a candle with high below low (01:05, inside the trade) is not walked through:
    it is a missing minute with a line, and the trade goes on from the next minute."""
    bars = tp_bars()
    bars[SINCE_MS + 65 * MINUTE] = (2931.0, 2800.0, 3300.0, 2911.0)
    write_cache(tmp_path / "cache", "ETHUSDT", bars)
    feed = write_feed(tmp_path / "feed.jsonl", [feed_line(101, SIGNAL_MS, leading_text("ETH"))])
    r = run(feed, tmp_path / "cache", tmp_path / "bt.db")
    assert r.missing == {"ETHUSDT": [(SINCE_MS + 65 * MINUTE, SINCE_MS + 66 * MINUTE)]}
    assert sum("corrupt candle" in line for line in r.notes) == 2  # the mark and the traded candles
    assert [t.exit_avg for t in r.trades] == [D("2859.50")]


def test_path_both_warns_when_the_pessimistic_run_comes_out_above(tmp_path: Path) -> None:
    """Finding 1 (t13, seed 1): on a random fast path, a risk message's market exit lands at a better
    price on the pessimistic path; the two nets are printed as they are, with a warning."""
    import random

    rng = random.Random(1)
    end = SINCE_MS + 10 * 60 * MINUTE
    bars = history(SINCE_MS + 60 * MINUTE)
    p = 3000.0
    for t in range(SINCE_MS + 60 * MINUTE, end, MINUTE):
        o = p
        c = round(o * (1 + rng.gauss(0, 0.006)), 2)
        h = round(max(o, c) * (1 + abs(rng.gauss(0, 0.004))), 2)
        lo = round(min(o, c) * (1 - abs(rng.gauss(0, 0.004))), 2)
        bars[t] = (o, h, lo, c)
        p = c
    write_cache(tmp_path / "cache", "ETHUSDT", bars)
    lines = []
    for k in range(12):
        at = SIGNAL_MS + k * 40 * MINUTE + rng.randint(0, 50_000)
        lines.append(feed_line(101 + k, at, leading_text("ETH")))
        if rng.random() < 0.5:
            risk_at = at + rng.randint(2 * MINUTE, 35 * MINUTE)
            lines.append(feed_line(5 + k, risk_at, RISK_TEXT, chat_id=RISK_CHAT))
    feed = write_feed(tmp_path / "feed.jsonl", lines)
    args = ("backtest", "--feed", str(feed), "--cache", str(tmp_path / "cache"), "--since", "2026-03-01")
    result = cli(*args, "--until", "2026-03-01", "--capital", "1000", "--slippage-bps", "5", "--path", "both",
                 "--json", cwd=tmp_path)  # fmt: skip
    bracket = json.loads(result.stdout)["bracket"]
    assert D(bracket["pessimistic"]) > D(bracket["optimistic"])
    assert "warning: the pessimistic run came out above the optimistic one" in result.stderr
    runs = json.loads(result.stdout)["runs"]
    assert [r["ambiguous_trades"] for r in runs] == [2, 2]
