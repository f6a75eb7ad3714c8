"""``shortfsm demo`` end to end on a compressed clock: the whole bundled story and its summary."""

from __future__ import annotations

import argparse
import sqlite3
from pathlib import Path

import pytest

from fsm.ops import daemon_cli
from fsm.runtime.store import StoreError


@pytest.mark.spec("W18")
def test_demo_tells_the_whole_story(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # var/ (logs, heartbeat) goes to the temporary directory
    db = tmp_path / "demo.db"
    # No config.yaml in the working directory: the demo runs on the built-in defaults.
    # 10x: the story's fills follow the compressed clock; 25x lost them under a loaded 2-core run.
    args = argparse.Namespace(config=None, config_optional=True, speed=10.0, db=str(db), no_board=True)
    assert daemon_cli.cmd_demo(args) == 0
    out = capsys.readouterr().out
    for line in (
        "DOGEUSDT       leading_rejected: category_excluded:meme",
        "SOLUSDT        leading_rejected: rank_top_rising",
        "ETHUSDT        MONITORING -> IDLE  (W18 tie-break lost to LINKUSDT)",
        "LINKUSDT       partial fill 100 @ 20.200 (sf105-E11-LINKUSDT)",
        "LINKUSDT       PHASE1 -> PHASE2  (second entry filled)",
        "ADAUSDT        risk_received: PHASE1",
    ):
        assert line in out
    summary = daemon_cli.demo_summary(db)
    assert summary == {
        "trades": [
            {"symbol": "LINKUSDT", "reason": "flat: BE filled"},
            {"symbol": "AVAXUSDT", "reason": "flat: TP filled"},
            {"symbol": "ADAUSDT", "reason": "flat: risk_pnl_negative"},
        ],
        "filtered": [
            {"symbol": "DOGEUSDT", "reason": "category_excluded:meme"},
            {"symbol": "XRPUSDT", "reason": "symbol_not_trading"},
            {"symbol": "SOLUSDT", "reason": "rank_top_rising"},
        ],
        "realised_pnl": "242.1251",
        "fees": "9.2104",
        "net": "232.9146",
    }
    assert "trades: 3: LINKUSDT (flat: BE filled)" in out
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT value FROM status WHERE key = 'meta.demo'").fetchone() == ("1",)
    # A second run recreates its own demo database; any other database is never clobbered.
    daemon_cli.prepare_demo_db(db)
    assert not db.exists()


def test_demo_refuses_a_daemon_database(tmp_path: Path) -> None:
    other = tmp_path / "real.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE status (key TEXT PRIMARY KEY, value TEXT, updated_ms INT)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="is not a demo database"):
        daemon_cli.prepare_demo_db(other)
    assert other.exists()
