"""``shortfsm trades`` through the real CLI on a database the demo wrote (issue #13 item 10)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from fsm.runtime.store import connect

REPO = Path(__file__).resolve().parents[2]
ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
# The bundled demo's story: which signal traded which symbol, through which legs, and why it ended
# (test_demo.py proves it). Prices and fees depend on whether an entry met the book as a maker, which
# a loaded machine changes: the figures are checked against the fills the daemon recorded.
DEMO_STORY = [
    (105, "LINKUSDT", ["ENTRY1", "ENTRY2", "BE"], "flat: BE filled"),
    (107, "AVAXUSDT", ["ENTRY1", "TP"], "flat: TP filled"),
    (108, "ADAUSDT", ["ENTRY1", "CLOSE"], "flat: risk_pnl_negative"),
]
CENT = Decimal("0.0001")


def recorded(db: Path, message_id: int) -> dict[str, Decimal]:
    """Sums over the fills table of one signal's orders (the oracle the ledger must agree with)."""
    conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT client_order_id, qty, price, realized_pnl, commission FROM fills "
            "WHERE client_order_id LIKE ?",
            [f"sf{message_id}-%"],
        ).fetchall()
    finally:
        conn.close()
    entries = [(Decimal(q), Decimal(p)) for cid, q, p, _, _ in rows if cid.split("-")[1].startswith("E")]
    exits = [(Decimal(q), Decimal(p)) for cid, q, p, _, _ in rows if not cid.split("-")[1].startswith("E")]
    pnl = sum((Decimal(r[3]) for r in rows), Decimal(0))
    fees = sum((Decimal(r[4]) for r in rows), Decimal(0))
    return {
        "quantity": sum((q for q, _ in entries), Decimal(0)),
        "exit_quantity": sum((q for q, _ in exits), Decimal(0)),
        "entry_avg": sum((q * p for q, p in entries), Decimal(0)) / sum((q for q, _ in entries), Decimal(0)),
        "exit_avg": sum((q * p for q, p in exits), Decimal(0)) / sum((q for q, _ in exits), Decimal(0)),
        "realized_pnl": pnl.quantize(CENT),
        "fees": fees.quantize(CENT),
        "net": (pnl - fees).quantize(CENT),
    }


def recorded_totals(db: Path) -> tuple[Decimal, Decimal, Decimal]:
    """Realised PnL, fees and net over every recorded fill, to 0.0001."""
    conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT realized_pnl, commission FROM fills").fetchall()
    finally:
        conn.close()
    pnl = sum((Decimal(r[0]) for r in rows), Decimal(0))
    fees = sum((Decimal(r[1]) for r in rows), Decimal(0))
    return pnl.quantize(CENT), fees.quantize(CENT), (pnl - fees).quantize(CENT)


def shortfsm(*args: str, cwd: Path, columns: int = 80) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_SOCKET", "WATCHDOG_", "LINES"))}
    env.update({"COLUMNS": str(columns), "PYTHONUNBUFFERED": "1"})
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
def demo_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The bundled demo run once on a compressed clock: a database the daemon itself wrote."""
    folder = tmp_path_factory.mktemp("demo")
    result = shortfsm("demo", "--speed", "25", "--db", str(folder / "demo.db"), "--no-board", cwd=folder)
    assert result.returncode == 0, result.stderr
    yield folder / "demo.db"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def without_times(row: dict[str, object]) -> dict[str, object]:
    assert isinstance(row["opened"], str) and ISO.fullmatch(row["opened"])
    assert isinstance(row["closed"], str) and ISO.fullmatch(row["closed"])
    assert row["opened"] <= row["closed"]
    return {k: v for k, v in row.items() if k not in ("opened", "closed")}


def test_trades_as_json_are_the_demo_positions_from_entry_to_flat(demo_db: Path, tmp_path: Path) -> None:
    before = digest(demo_db)
    result = shortfsm("trades", "--db", str(demo_db), "--format", "json", cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, "")
    rows = [without_times(row) for row in json.loads(result.stdout)]
    assert [(r["message_id"], r["symbol"], r["legs"], r["close_reason"]) for r in rows] == DEMO_STORY
    for row in rows:
        truth = recorded(demo_db, int(str(row["message_id"])))
        assert row["status"] == "closed"
        assert row["quantity"] == row["exit_quantity"] and Decimal(str(row["quantity"])) == truth["quantity"]
        for key in ("realized_pnl", "fees", "net"):
            assert row[key] == str(truth[key]), key
        for key in ("entry_avg", "exit_avg"):  # rounded to the price's decimals + 4
            assert abs(Decimal(str(row[key])) - truth[key]) < Decimal("0.00001"), key
    assert digest(demo_db) == before  # read-only


def test_trades_as_csv_with_a_limit_keep_the_most_recent(demo_db: Path, tmp_path: Path) -> None:
    result = shortfsm("trades", "--db", str(demo_db), "--format", "csv", "--limit", "2", cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, "")
    lines = result.stdout.splitlines()
    assert lines[0] == (
        "message_id,symbol,status,opened,closed,legs,entry_avg,exit_avg,quantity,realized_pnl,fees,funding,net,"
        "close_reason"
    )
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [(r["symbol"], r["legs"], r["net"], r["close_reason"]) for r in rows] == [
        ("AVAXUSDT", "ENTRY1+TP", str(recorded(demo_db, 107)["net"]), "flat: TP filled"),
        ("ADAUSDT", "ENTRY1+CLOSE", str(recorded(demo_db, 108)["net"]), "flat: risk_pnl_negative"),
    ]


def test_trades_table_fits_80_columns_and_ends_with_the_realised_pnl(demo_db: Path, tmp_path: Path) -> None:
    result = shortfsm("trades", "--db", str(demo_db), cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, "")
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines[:-2]) <= 80
    assert re.fullmatch(r"Closed \(UTC\)\s+Symbol\s+Entry\s+Exit\s+Net\s+Why\s*", lines[0])
    link = recorded(demo_db, 105)
    assert re.fullmatch(
        rf"\d\d-\d\d \d\d:\d\d\s+LINKUSDT\s+[\d.]+\s+[\d.]+\s+{re.escape(str(link['net']))}"
        r"\s+flat: BE filled\s*",
        lines[2],
    )
    pnl, fees, net = recorded_totals(demo_db)
    assert re.fullmatch(
        rf"today \(\d{{4}}-\d\d-\d\d UTC\): realised {pnl} USDT, fees {fees}, net {net}", lines[-2]
    )
    assert lines[-1] == f"in total: realised {pnl} USDT, fees {fees}, net {net}"


def test_trades_since_a_later_day_leaves_the_closed_ones_out(demo_db: Path, tmp_path: Path) -> None:
    result = shortfsm(
        "trades", "--db", str(demo_db), "--format", "json", "--since", "2999-01-01", cwd=tmp_path
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "[]\n", "")
    result = shortfsm(
        "trades", "--db", str(demo_db), "--format", "json", "--since", "2000-01-01", cwd=tmp_path
    )
    assert len(json.loads(result.stdout)) == 3


def test_trades_reads_the_database_the_config_names(demo_db: Path, tmp_path: Path) -> None:
    folder = tmp_path / "etc"
    folder.mkdir()
    (folder / "config.yaml").write_text(f"storage:\n  database: {demo_db}\n", encoding="utf-8")
    result = shortfsm("trades", "--config", str(folder / "config.yaml"), "--format", "json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert [row["symbol"] for row in json.loads(result.stdout)] == ["LINKUSDT", "AVAXUSDT", "ADAUSDT"]


def test_an_empty_ledger_says_no_trades_yet(tmp_path: Path) -> None:
    connect(tmp_path / "fresh.db").conn.close()  # the daemon's own schema, nothing traded
    table = shortfsm("trades", "--db", "fresh.db", cwd=tmp_path)
    assert (table.returncode, table.stdout, table.stderr) == (0, "no trades yet\n", "")
    as_json = shortfsm("trades", "--db", "fresh.db", "--format", "json", cwd=tmp_path)
    assert (as_json.returncode, as_json.stdout, as_json.stderr) == (0, "[]\n", "no trades yet\n")
    as_csv = shortfsm("trades", "--db", "fresh.db", "--format", "csv", cwd=tmp_path)
    assert (as_csv.returncode, as_csv.stdout.count("\n"), as_csv.stderr) == (0, 1, "no trades yet\n")


def test_a_missing_database_is_one_line_with_status_exit_code_and_is_never_created(tmp_path: Path) -> None:
    result = shortfsm("trades", "--db", "var/shortfsm.db", cwd=tmp_path)
    assert (result.returncode, result.stdout) == (3, "")
    assert result.stderr == "shortfsm trades: no database at var/shortfsm.db\n"
    assert list(tmp_path.iterdir()) == []
    status = shortfsm("status", "--db", "var/shortfsm.db", cwd=tmp_path)
    assert status.returncode == 3  # the same code as `status` for "no database"


@pytest.mark.parametrize(
    ("args", "line", "code"),
    [
        (("--db", "junk.db"), "shortfsm trades: cannot read junk.db: file is not a database\n", 1),
        (
            ("--db", "junk.db", "--since", "2026-13-01"),
            "shortfsm trades: --since wants a day as YYYY-MM-DD, not '2026-13-01'\n",
            2,
        ),
        (("--config", "nowhere.yaml"), "shortfsm: configuration file nowhere.yaml does not exist\n", 2),
    ],
)
def test_bad_input_is_one_line_never_a_traceback(
    tmp_path: Path, args: tuple[str, ...], line: str, code: int
) -> None:
    (tmp_path / "junk.db").write_text("not sqlite at all\n" * 100, encoding="utf-8")
    result = shortfsm("trades", *args, cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (code, "", line)
