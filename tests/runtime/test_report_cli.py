"""``shortfsm report`` through the real CLI on databases written by the daemon's own store."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from fsm import commands as cmd
from fsm import events as ev
from fsm.runtime.ledger import DAY_MS
from fsm.runtime.store import Store, connect

D = Decimal
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
H = 3_600_000
# The three-day ledger of test_report_metrics.py, as fills (message id, symbol, opened, closed, exit
# leg, realised PnL of the exit fill, commission of each fill, why it closed):
#   net 12 - 2 = 10, -10 - 0.1 = -10.1, 20.998 - 1 = 19.998 on a capital of 1000.
TRADES = [
    (201, "ETHUSDT", T0, T0 + 6 * H, "TP", "12", "1", "flat: TP filled"),
    (
        202,
        "SOLUSDT",
        T0 + DAY_MS + 2 * H,
        T0 + DAY_MS + 8 * H,
        "CLOSE",
        "-10",
        "0.05",
        "flat: risk_pnl_negative",
    ),
    (203, "ETHUSDT", T0 + 2 * DAY_MS, T0 + 2 * DAY_MS + 12 * H, "TP", "20.998", "0.5", "flat: TP filled"),
]
CODES = {"ENTRY1": "E1", "TP": "TP", "CLOSE": "CL"}


def _fill(now: int, cid: str, symbol: str, side: str, rp: str, fee: str, trade_id: int) -> ev.OrderUpdated:
    return ev.OrderUpdated(
        now_ms=now,
        symbol=symbol,
        client_order_id=cid,
        order_id=trade_id,
        side=side,  # type: ignore[arg-type]
        order_type="LIMIT",
        status="FILLED",
        price=D(100),
        orig_qty=D(1),
        cum_qty=D(1),
        last_qty=D(1),
        last_price=D(100),
        avg_price=D(100),
        trade_id=trade_id,
        realized_pnl=D(rp),
        commission=D(fee),
    )


def _order(symbol: str, message_id: int, leg: str, side: str) -> cmd.PlaceOrder:
    return cmd.PlaceOrder(
        symbol=symbol,
        client_order_id=f"sf{message_id}-{CODES[leg]}1-{symbol}",
        leg=leg,  # type: ignore[arg-type]
        side=side,  # type: ignore[arg-type]
        order_type="LIMIT",
        quantity=D(1),
        price=D(100),
        time_in_force="GTC",
    )


async def _write(path: Path, *, with_open: bool) -> None:
    store = await Store.open(path)
    trade_id = 0
    for message_id, symbol, opened, closed, leg, rp, fee, reason in TRADES:
        entry, exit_ = _order(symbol, message_id, "ENTRY1", "SELL"), _order(symbol, message_id, leg, "BUY")
        await store.record_commands(opened, [entry])
        trade_id += 1
        await store.record_outcome(_fill(opened, entry.client_order_id, symbol, "SELL", "0", fee, trade_id))
        await store.record_commands(opened + 1, [exit_])
        trade_id += 1
        await store.record_outcome(_fill(closed, exit_.client_order_id, symbol, "BUY", rp, fee, trade_id))
        done = cmd.Transitioned(
            machine="symbol", symbol=symbol, source="EXITING", dest="IDLE", trigger="flat", reason=reason
        )
        await store.record_commands(closed + 5, [done])
    if with_open:  # an entry with no exit yet: counted, never measured (its fee would change the net)
        entry = _order("BTCUSDT", 204, "ENTRY1", "SELL")
        await store.record_commands(T0 + 2 * DAY_MS + H, [entry])
        await store.record_outcome(
            _fill(T0 + 2 * DAY_MS + H, entry.client_order_id, "BTCUSDT", "SELL", "0", "9", 99)
        )
    await store.close()


def shortfsm(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_SOCKET", "WATCHDOG_", "LINES"))}
    env.update({"COLUMNS": "100", "PYTHONUNBUFFERED": "1"})
    return subprocess.run(
        [sys.executable, "-m", "fsm.ops.cli", *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def ledger_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("report") / "shortfsm.db"
    asyncio.run(_write(db, with_open=True))
    return db


def test_the_json_report_has_the_hand_computed_figures(ledger_db: Path, tmp_path: Path) -> None:
    before = hashlib.sha256(ledger_db.read_bytes()).hexdigest()
    result = shortfsm("report", "--db", str(ledger_db), "--capital", "1000", "--json", cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, "")
    assert json.loads(result.stdout) == {
        "capital": "1000.0000",
        "period": {"start": "2026-01-01T00:00:00Z", "end": "2026-01-03T12:00:00Z", "days": "2.5000"},
        "trades": {"closed": 3, "open": 1, "wins": 2, "losses": 1},
        "final_equity": "1019.8980",  # 1000 + 10 - 10.1 + 19.998
        "realized_pnl": "22.9980",  # 12 - 10 + 20.998
        "fees": "3.1000",  # 2 x (1 + 0.05 + 0.5); the open trade's 9 is not counted
        "funding": "0.0000",  # no settlement in this ledger
        "net": "19.8980",
        "total_return_pct": "1.9898",
        "cagr_pct": None,  # 2.5 days
        "win_rate_pct": "66.6667",  # 2 / 3
        "profit_factor": "2.9701",  # 29.998 / 10.1
        "expectancy": "6.6327",  # 19.898 / 3
        "average_rr": "1.4850",  # 14.999 / 10.1
        "sharpe": "8.3381",  # sqrt(1460 / 21): daily returns 0.01, -0.01, 0.02
        "sortino": "22.0605",  # sqrt(1460 / 3)
        "calmar": None,
        "max_drawdown": {
            "pct": "1.0000",  # 10.1 / 1010
            "amount": "10.1000",
            "start": "2026-01-01T06:00:00Z",
            "end": "2026-01-02T08:00:00Z",
        },
        "longest_losing_streak": 1,
        "time_in_market_pct": "40.0000",  # 24 h of 60 h
        "exit_reasons": {"flat: TP filled": 2, "flat: risk_pnl_negative": 1},
        "funnel": {  # this ledger was written without messages: the funnel is empty, not guessed
            "leading_chat_id": None,
            "received": 0,
            "parsed": 0,
            "not_parsed": {},
            "not_traded": {},
            "no_decision": 0,
            "monitored": 0,
            "not_entered": {},
            "entered": 0,
            "closed": {},
            "open": 0,
        },
        "benchmark": {  # the daemon keeps no market history: none without --cache
            "symbol": "BTCUSDT",
            "start": None,
            "end": None,
            "open": None,
            "close": None,
            "return_pct": None,
            "not_available": "no market data cache (the daemon keeps none: give --cache DIR)",
        },
    }
    assert hashlib.sha256(ledger_db.read_bytes()).hexdigest() == before  # read-only


def test_the_table_shows_the_figures(ledger_db: Path, tmp_path: Path) -> None:
    result = shortfsm("report", "--db", str(ledger_db), "--capital", "1000", cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, "")
    lines = result.stdout.splitlines()
    assert lines[0] == (
        "3 closed trade(s), 1 open (not counted), 2026-01-01 00:00 to 2026-01-03 12:00 UTC, on 1000.0000 USDT"
    )
    text = "\n".join(" ".join(line.split()) for line in lines)
    for row in (
        "Total return 1.99 % 19.8980 USDT net",
        "Win rate 66.67 % 2 won, 1 lost",
        "Sharpe (daily) 8.34 x sqrt(365)",
        "Max drawdown 1.00 % 10.1000 USDT, 2026-01-01 06:00 to 2026-01-02 08:00",
        "Exit: flat: TP filled 2 trades",
    ):
        assert row in text, row
    assert "Traceback" not in result.stdout


def test_since_a_later_day(ledger_db: Path, tmp_path: Path) -> None:
    result = shortfsm(
        "report", "--db", str(ledger_db), "--capital", "1000", "--since", "2026-01-02", "--json", cwd=tmp_path
    )
    assert (result.returncode, result.stderr) == (0, "")
    doc = json.loads(result.stdout)
    assert (doc["trades"]["closed"], doc["net"], doc["max_drawdown"]["pct"]) == (2, "9.8980", "1.0100")
    empty = shortfsm(
        "report", "--db", str(ledger_db), "--capital", "1000", "--since", "2026-02-01", cwd=tmp_path
    )
    assert (empty.returncode, empty.stdout, empty.stderr) == (
        0,
        "no trade closed since 2026-02-01 (1 open)\n",
        "",
    )


def test_an_empty_ledger_says_no_closed_trade_yet(tmp_path: Path) -> None:
    connect(tmp_path / "fresh.db").conn.close()  # the daemon's own schema, nothing traded
    table = shortfsm("report", "--db", "fresh.db", "--capital", "500", cwd=tmp_path)
    assert (table.returncode, table.stdout, table.stderr) == (0, "no closed trade yet\n", "")
    as_json = shortfsm("report", "--db", "fresh.db", "--capital", "500", "--json", cwd=tmp_path)
    assert (as_json.returncode, as_json.stderr) == (0, "no closed trade yet\n")
    doc = json.loads(as_json.stdout)
    assert (doc["trades"], doc["final_equity"], doc["total_return_pct"], doc["sharpe"]) == (
        {"closed": 0, "open": 0, "wins": 0, "losses": 0},
        "500.0000",
        "0.0000",
        None,
    )


def test_a_missing_database_is_one_line_with_status_exit_code_and_is_never_created(tmp_path: Path) -> None:
    result = shortfsm("report", "--db", "var/shortfsm.db", "--capital", "1000", cwd=tmp_path)
    assert (result.returncode, result.stdout) == (3, "")
    assert result.stderr == "shortfsm report: no database at var/shortfsm.db\n"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "line", "code"),
    [
        (
            ("--db", "junk.db", "--capital", "1000"),
            "shortfsm report: cannot read junk.db: file is not a database\n",
            1,
        ),
        (
            ("--db", "junk.db"),
            "shortfsm report: --capital USDT is required "
            "(the starting balance the returns are measured on)\n",
            2,
        ),
        (
            ("--db", "junk.db", "--capital", "0"),
            "shortfsm report: --capital wants a positive amount of USDT, not '0'\n",
            2,
        ),
        (
            ("--db", "junk.db", "--capital", "lots"),
            "shortfsm report: --capital wants a positive amount of USDT, not 'lots'\n",
            2,
        ),
        (
            ("--db", "junk.db", "--capital", "1000", "--since", "2026-13-01"),
            "shortfsm report: --since wants a day as YYYY-MM-DD, not '2026-13-01'\n",
            2,
        ),
        (
            ("--config", "nowhere.yaml", "--capital", "1000"),
            "shortfsm: configuration file nowhere.yaml does not exist\n",
            2,
        ),
    ],
)
def test_bad_input_is_one_line_never_a_traceback(
    tmp_path: Path, args: tuple[str, ...], line: str, code: int
) -> None:
    (tmp_path / "junk.db").write_text("not sqlite at all\n" * 100, encoding="utf-8")
    result = shortfsm("report", *args, cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (code, "", line)
