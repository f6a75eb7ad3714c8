"""``shortfsm report --html/--csv`` and the funnel on a database written by the daemon's own store.

Two months of trades, the messages behind them and the decisions about the others; every figure
below is computed by hand from the table in the comment.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sqlite3
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from fsm import commands as cmd
from fsm import events as ev
from fsm.ops import html_report
from fsm.ops.cli import main
from fsm.runtime import ledger, metrics
from fsm.runtime.ledger import DAY_MS
from fsm.runtime.store import Store, connect

D = Decimal
H = 3_600_000
JAN10 = 1_767_225_600_000 + 9 * DAY_MS  # 2026-01-10T00:00:00Z
LEADING, RISK = -100111, -100222
SCRIPT = "flat: <script>alert(1)</script>"
SCRIPT_REASON = 'bad <script>alert("x")</script>'
SHORTFSM = str(Path(sys.executable).parent / "shortfsm")

# Trades (message id, symbol, opened, closed or None, exit leg, entry / exit price, exit rp, fee a fill,
# close reason), capital 1000:
#   301 ETHUSDT 01-10 00:00-06:00  100 -> 97   rp  30    fees 2 x 1    net  28
#   302 SOLUSDT 01-20 00:00-08:00   50 -> 51.2 rp -12    fees 2 x 0.5  net -13   (reason with <script>)
#   303 ETHUSDT 02-15 00:00-12:00  110 -> 107.7 rp 25    fees 2 x 1    net  23
#   304 BTCUSDT 02-19 open                                                        (counted, not measured)
# Months in % of the capital: January (28 - 13) / 1000 = 1.50 %, February 23 / 1000 = 2.30 %, 2026 3.80 %.
TRADES = [
    (301, "ETHUSDT", JAN10, JAN10 + 6 * H, "TP", "100", "97", "30", "1", "flat: TP filled"),
    (
        302,
        "SOLUSDT",
        JAN10 + 10 * DAY_MS,
        JAN10 + 10 * DAY_MS + 8 * H,
        "CLOSE",
        "50",
        "51.2",
        "-12",
        "0.5",
        SCRIPT,
    ),
    (
        303,
        "ETHUSDT",
        JAN10 + 36 * DAY_MS,
        JAN10 + 36 * DAY_MS + 12 * H,
        "TP",
        "110",
        "107.7",
        "25",
        "1",
        "flat: TP filled",
    ),
    (304, "BTCUSDT", JAN10 + 40 * DAY_MS, None, "", "90000", "", "0", "2", ""),
]
CODES = {"ENTRY1": "E1", "TP": "TP", "CLOSE": "CL"}
# The leading channel's messages (id, what they parsed as, what the engine decided at receipt):
#   301..304 monitored and entered (above); 305 monitored, then reset by a timeout; 306 still monitored;
#   307 rejected (funding), 308 dropped (cooldown), 309 rejected (a reason with <script>); 312 no decision;
#   310 unrecognised (ticker_invalid), 311 an entry signal. The risk channel's 900 is not counted.
# Funnel: received 12 = parsed 10 + not parsed 2; parsed 10 = monitored 6 + not traded 3 + no decision 1;
#   monitored 6 = entered 4 + not entered 2; entered 4 = closed 3 + open 1.
FUNNEL = {
    "leading_chat_id": LEADING,
    "received": 12,
    "parsed": 10,
    "not_parsed": {"entry_signal": 1, "ticker_invalid": 1},
    "not_traded": {
        f"leading_rejected: {SCRIPT_REASON}": 1,
        "leading_dropped: cooldown": 1,
        "leading_rejected: funding_too_negative": 1,
    },
    "no_decision": 1,
    "monitored": 6,
    "not_entered": {"monitoring timeout": 1, "still monitoring": 1},
    "entered": 4,
    "closed": {"flat: TP filled": 2, SCRIPT: 1},
    "open": 1,
}


def _leading(symbol: str) -> ev.LeadingMarket:
    return ev.LeadingMarket(raw_ticker=symbol[:-4], ticker=symbol[:-4], symbol=symbol)


def _fill(
    now: int, cid: str, symbol: str, side: str, price: str, rp: str, fee: str, n: int
) -> ev.OrderUpdated:
    return ev.OrderUpdated(
        now_ms=now,
        symbol=symbol,
        client_order_id=cid,
        order_id=n,
        side=side,  # type: ignore[arg-type]
        order_type="LIMIT",
        status="FILLED",
        price=D(price),
        orig_qty=D(1),
        cum_qty=D(1),
        last_qty=D(1),
        last_price=D(price),
        avg_price=D(price),
        trade_id=n,
        realized_pnl=D(rp),
        commission=D(fee),
    )


def _order(symbol: str, message_id: int, leg: str, side: str, price: str) -> cmd.PlaceOrder:
    return cmd.PlaceOrder(
        symbol=symbol,
        client_order_id=f"sf{message_id}-{CODES[leg]}1-{symbol}",
        leg=leg,  # type: ignore[arg-type]
        side=side,  # type: ignore[arg-type]
        order_type="LIMIT",
        quantity=D(1),
        price=D(price),
        time_in_force="GTC",
    )


def _moved(symbol: str, trigger: str, source: str, dest: str, reason: str) -> cmd.Transitioned:
    return cmd.Transitioned(
        machine="symbol", symbol=symbol, source=source, dest=dest, trigger=trigger, reason=reason
    )


async def _write(path: Path) -> None:
    store = await Store.open(path)

    async def message(chat: int, message_id: int, at: int, parsed: ev.ParsedMessage) -> None:
        await store.record_message(
            chat_id=chat, message_id=message_id, date_ms=at - 500, received_ms=at, text="...", parsed=parsed
        )

    n = 0
    for message_id, symbol, opened, closed, leg, entry, exit_, rp, fee, reason in TRADES:
        seen = opened - H
        await message(LEADING, message_id, seen, _leading(symbol))
        await store.record_commands(
            seen,
            [
                cmd.Log(kind="symbol_mapping", symbol=symbol, reason="ok"),
                _moved(symbol, "start_monitoring", "IDLE", "MONITORING", "aggressive target 1"),
            ],
        )
        order = _order(symbol, message_id, "ENTRY1", "SELL", entry)
        await store.record_commands(opened, [order])
        n += 1
        await store.record_outcome(_fill(opened, order.client_order_id, symbol, "SELL", entry, "0", fee, n))
        if closed is None:
            continue
        close = _order(symbol, message_id, leg, "BUY", exit_)
        await store.record_commands(opened + 1, [close])
        n += 1
        await store.record_outcome(_fill(closed, close.client_order_id, symbol, "BUY", exit_, rp, fee, n))
        await store.record_commands(closed + 5, [_moved(symbol, "reset", "EXITING", "IDLE", reason)])
    # The journal's mark prices: three of ETHUSDT while 301 was open, one of another symbol, one of
    # ETHUSDT days away from any trade (neither drawn).
    for at, symbol, price in [
        (JAN10 + H, "ETHUSDT", "99"),
        (JAN10 + 3 * H, "ETHUSDT", "101.5"),
        (JAN10 + 3 * H, "BNBUSDT", "600"),
        (JAN10 + 5 * H, "ETHUSDT", "98"),
        (JAN10 + 5 * DAY_MS, "ETHUSDT", "80"),
    ]:
        await store.journal(ev.MarkPriceTick(now_ms=at, symbol=symbol, price=D(price), event_time_ms=at), "")
    later = JAN10 + 43 * DAY_MS
    for i, symbol in enumerate(("XRPUSDT", "DOGEUSDT")):
        at = later + i * H
        await message(LEADING, 305 + i, at, _leading(symbol))
        await store.record_commands(at, [_moved(symbol, "start_monitoring", "IDLE", "MONITORING", "t")])
    await store.record_commands(
        later + 2 * H, [_moved("XRPUSDT", "reset", "MONITORING", "IDLE", "monitoring timeout")]
    )
    for i, (symbol, kind, reason) in enumerate(
        [
            ("ADAUSDT", "leading_rejected", "funding_too_negative"),
            ("LINKUSDT", "leading_dropped", "cooldown"),
            ("PEPEUSDT", "leading_rejected", SCRIPT_REASON),
        ]
    ):
        at = later + (3 + i) * H
        await message(LEADING, 307 + i, at, _leading(symbol))
        await store.record_commands(
            at,
            [
                cmd.Log(kind="symbol_mapping", symbol=symbol, reason="ok"),
                cmd.Log(kind=kind, symbol=symbol, reason=reason),
            ],
        )
    at = later + 6 * H
    await message(LEADING, 310, at, ev.Unrecognised(reason="ticker_invalid", kind="leading"))
    await store.record_commands(at, [cmd.Log(kind="symbol_mapping", reason="ticker_invalid")])
    await message(LEADING, 311, at + 1, ev.EntrySignal(raw_token="ETH", symbol="ETHUSDT"))
    await store.record_commands(at + 1, [cmd.Log(kind="message_ignored", symbol="ETHUSDT", reason="entry")])
    await message(LEADING, 312, at + 2, _leading("OPUSDT"))  # the daemon stopped before handling it
    await message(RISK, 900, at + 3, ev.RiskSignal(raw_token="SOL", symbol="SOLUSDT"))
    await store.close()


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("html") / "shortfsm.db"
    asyncio.run(_write(path))
    return path


@pytest.fixture(scope="module")
def page(db: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, object], str]:
    """The page, the JSON (with the funnel) and the CSV of one run through the installed command."""
    out = tmp_path_factory.mktemp("out")
    result = run(
        "report",
        "--db",
        str(db),
        "--capital",
        "1000",
        "--json",
        "--html",
        "r.html",
        "--csv",
        "t.csv",
        cwd=out,
    )
    assert (result.returncode, result.stderr) == (0, "")
    doc = json.loads(result.stdout)
    assert isinstance(doc, dict)
    return (out / "r.html").read_text(encoding="utf-8"), doc, (out / "t.csv").read_text(encoding="utf-8")


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_SOCKET", "WATCHDOG_", "LINES"))}
    env.update({"COLUMNS": "160", "PYTHONUNBUFFERED": "1"})
    return subprocess.run(
        [SHORTFSM, *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


def cell(html: str, label: str) -> str:
    match = re.search(rf'<tr><td>{re.escape(label)}</td><td class="num">([^<]*)</td>', html)
    assert match, label
    return match.group(1)


def test_the_page_shows_the_json_figures_exactly(page: tuple[str, dict[str, object], str], db: Path) -> None:
    html, doc, _ = page
    assert doc["trades"] == {"closed": 3, "open": 1, "wins": 2, "losses": 1}
    assert (doc["net"], doc["total_return_pct"]) == ("38.0000", "3.8000")  # 28 - 13 + 23
    drawdown = doc["max_drawdown"]
    assert isinstance(drawdown, dict)
    for label, key, suffix in [
        ("Total return", "total_return_pct", " %"),
        ("CAGR", "cagr_pct", " %"),  # 36.5 days: annualised
        ("Calmar", "calmar", ""),
        ("Win rate", "win_rate_pct", " %"),
        ("Profit factor", "profit_factor", ""),
        ("Expectancy", "expectancy", " USDT"),
        ("Average R:R", "average_rr", ""),
        ("Sharpe (daily)", "sharpe", ""),
        ("Sortino (daily)", "sortino", ""),
        ("Time in the market", "time_in_market_pct", " %"),
        ("Fees", "fees", " USDT"),
        ("Final equity", "final_equity", " USDT"),
    ]:
        assert doc[key] is not None, key
        assert cell(html, label) == f"{doc[key]}{suffix}", label
    assert cell(html, "Max drawdown") == f"{drawdown['pct']} %"
    assert cell(html, "Longest losing streak") == str(doc["longest_losing_streak"])
    # What, from where, on what, when: the database, the capital, the period, the time it was made.
    assert f"<code>{db}</code>" in html
    assert "capital 1000.0000 USDT" in html
    assert "period 2026-01-10T00:00:00Z to 2026-02-15T12:00:00Z" in html
    assert re.search(r"made \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \(UTC\)", html)


def test_one_svg_per_chart_and_one_small_chart_per_trade(page: tuple[str, dict[str, object], str]) -> None:
    html, _, _ = page
    charts = re.findall(r'<svg class="chart" data-chart="([a-z_]+)"', html)
    assert sorted(charts) == sorted(
        [
            "equity",
            "drawdown",
            "daily_pnl",
            "monthly",
            "exit_reasons",
            "funnel",
            "trade",
            "trade",
            "trade",
            "trade",
        ]
    )
    assert html.count("<svg") == len(charts)
    # Each trade's chart marks its fills: three trades entered and exited, one only entered.
    trade_svgs = re.findall(r'<svg class="chart" data-chart="trade".*?</svg>', html)
    assert [svg.count("data-fill=") for svg in trade_svgs] == [2, 2, 2, 1]
    # The mark path where the journal holds it (301's three ticks), "fills only" where it does not.
    assert [re.findall(r'data-marks="(\d+)"', svg) for svg in trade_svgs] == [["3"], [], [], []]
    assert html.count("<b>fills only</b>") == 1 and html.count('<i class="note">fills only</i>') == 3
    assert "fills, not the market's path" in html
    # Self-contained: no script, no link, nothing fetched.
    assert "<script" not in html.lower() and "<link" not in html and "src=" not in html
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in html


def test_the_heatmap_has_one_cell_a_month_in_percent_of_the_capital(
    page: tuple[str, dict[str, object], str],
) -> None:
    html, _, _ = page
    months = re.findall(r'<g data-month="([0-9-]+)" data-pct="([0-9.-]+)">.*?<text[^>]*>([^<]*)</text>', html)
    assert months == [("2026-01", "1.5000", "1.50"), ("2026-02", "2.3000", "2.30")]
    assert '<g data-year="2026" data-pct="3.8000">' in html


def test_the_funnel_is_hand_computed_and_adds_up(page: tuple[str, dict[str, object], str], db: Path) -> None:
    html, doc, _ = page
    funnel = doc["funnel"]
    assert funnel == FUNNEL
    assert isinstance(funnel, dict)
    parts = {key: sum(value.values()) if isinstance(value, dict) else value for key, value in funnel.items()}
    assert parts["received"] == parts["parsed"] + parts["not_parsed"]
    assert parts["parsed"] == parts["monitored"] + parts["not_traded"] + parts["no_decision"]
    assert parts["monitored"] == parts["entered"] + parts["not_entered"]
    assert parts["entered"] == parts["closed"] + parts["open"]
    assert "<li>received 12 = parsed 10 + not parsed 2 (entry_signal 1, ticker_invalid 1)</li>" in html
    assert (
        "<li>monitored 6 = entered 4 + not entered 2 (monitoring timeout 1, still monitoring 1)</li>" in html
    )
    # The same rows read for the risk channel: its one message is not a leading one.
    conn = ledger.open_readonly(db)
    try:
        risk = html_report.read_funnel(conn, ledger.read_ledger(conn).trades, leading_chat_id=RISK)
    finally:
        conn.close()
    assert (risk.received, risk.parsed, risk.not_parsed, risk.problems()) == (1, 0, {"risk_signal": 1}, [])


def test_text_from_the_database_is_escaped(page: tuple[str, dict[str, object], str]) -> None:
    html, _, _ = page
    assert "<script" not in html
    assert "flat: &lt;script&gt;alert(1)&lt;/script&gt;" in html  # the close reason, in the table and charts
    assert "leading_rejected: bad &lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; 1" in html  # the funnel


def test_the_csv_is_what_shortfsm_trades_prints(
    page: tuple[str, dict[str, object], str], db: Path, tmp_path: Path
) -> None:
    _, _, written = page
    trades = run("trades", "--db", str(db), "--format", "csv", cwd=tmp_path)
    assert (trades.returncode, trades.stderr) == (0, "")
    assert written == trades.stdout
    assert len(written.splitlines()) == 5  # the header and four trades, the open one included


def test_the_table_and_json_end_with_the_funnel(
    db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["report", "--db", str(db), "--capital", "1000", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["funnel"]["received"] == 12
    assert main(["report", "--db", str(db), "--capital", "1000"]) == 0
    out = capsys.readouterr().out
    assert (
        "Signal funnel:\n  received 12 = parsed 10 + not parsed 2 (entry_signal 1, ticker_invalid 1)\n" in out
    )
    assert "  entered 4 = closed 3 (flat: TP filled 2, flat: <script>alert(1)</script> 1) + open 1\n" in out
    # --since: the messages received from that day on (XRP..OP), the trades closed then.
    assert main(["report", "--db", str(db), "--capital", "1000", "--since", "2026-02-22", "--json"]) == 0
    captured = capsys.readouterr()
    funnel = json.loads(captured.out)["funnel"]
    assert (funnel["received"], funnel["parsed"], funnel["monitored"], funnel["entered"]) == (8, 6, 2, 0)
    assert captured.err == "no trade closed since 2026-02-22 (1 open)\n"


def test_an_existing_page_is_replaced_whole(
    db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    target = tmp_path / "r.html"
    target.write_text("old page", encoding="utf-8")
    before = target.stat().st_ino
    assert main(["report", "--db", str(db), "--capital", "1000", "--html", "r.html"]) == 0
    assert target.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert target.stat().st_ino != before  # renamed over, never rewritten in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.html"]  # no temporary file left


def test_an_empty_ledger_still_makes_a_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    connect(tmp_path / "fresh.db").conn.close()
    assert main(["report", "--db", "fresh.db", "--capital", "500", "--html", "r.html"]) == 0
    assert capsys.readouterr().out == "no closed trade yet\n"
    html = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "No closed trade yet: nothing to chart." in html
    assert re.findall(r'data-chart="([a-z_]+)"', html) == ["funnel"]


def test_the_installed_command_exits_0_and_a_bad_path_is_one_line_exit_2(db: Path, tmp_path: Path) -> None:
    ok = run("report", "--db", str(db), "--capital", "1000", "--html", "out.html", cwd=tmp_path)
    assert (ok.returncode, ok.stderr) == (0, "")
    assert (tmp_path / "out.html").is_file()
    (tmp_path / "plain").write_text("a file, not a directory", encoding="utf-8")
    for target, why in [
        ("missing/out.html", "No such file or directory"),
        ("plain/out.html", "Not a directory"),
        (".", "Is a directory"),
    ]:
        bad = run("report", "--db", str(db), "--capital", "1000", "--html", target, cwd=tmp_path)
        assert (bad.returncode, bad.stdout) == (2, ""), target
        assert bad.stderr == f"shortfsm report: cannot write {target}: {why}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.html", "plain"]


def test_the_fills_of_each_trade_follow_the_ledgers_grouping(db: Path) -> None:
    conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
    try:
        book = ledger.read_ledger(conn)
    finally:
        conn.close()
    assert [[f.leg for f in t.fills] for t in book.trades] == [
        ["ENTRY1", "TP"],
        ["ENTRY1", "CLOSE"],
        ["ENTRY1", "TP"],
        ["ENTRY1"],
    ]


def test_the_chart_series_agree_with_the_reports_figures(db: Path) -> None:
    conn = ledger.open_readonly(db)
    try:
        trades = ledger.read_ledger(conn).trades
    finally:
        conn.close()
    result = metrics.compute(trades, D(1000))
    counted = metrics.counted_trades(trades)
    assert [t.message_id for t in counted] == [301, 302, 303]
    assert result.start_ms is not None and result.end_ms is not None
    closes = [(t.closed_ms or 0, t.net) for t in counted]
    curve = metrics.equity_curve(D(1000), closes, result.start_ms)
    falls = metrics.drawdown_curve(curve)
    assert [pct for _, pct in falls] == [
        0,
        0,
        D(13) / D(1028) * 100,
        0,
    ]  # 13 below the 1028 peak, then a new peak
    assert max(pct for _, pct in falls) == result.max_drawdown.pct
    days = metrics.daily_nets(closes, result.start_ms, result.end_ms)
    assert len(days) == 37 and sum((net for _, net in days), D(0)) == result.net  # 01-10 .. 02-15
    assert [net for _, net in days if net] == [D(28), D(-13), D(23)]
    assert metrics.monthly_return_pct(D(1000), closes) == {(2026, 1): D("1.5"), (2026, 2): D("2.3")}
