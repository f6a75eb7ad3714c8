"""``shortfsm backtest --sweep``: the grid on the demo data, ranked, each run readable on its own."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
from backtest_kit import shortfsm

from fsm.ops.backtest_sweep import (
    MAX_RUNS,
    SweepError,
    SweepRow,
    combinations,
    parse_grid,
    rank_key,
    ranked,
)


@pytest.fixture(scope="module")
def demo_sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    """``--demo --sweep strategy.tp_pct=3,4,5`` on two processes, with run 3 (tp 5 %)
    made to fail (its lock path is a folder): the other runs go on."""
    where = tmp_path_factory.mktemp("sweep")
    (where / "demo.sweep" / "run-003.db.lock").mkdir(parents=True)
    done = shortfsm(
        *("backtest", "--demo", "--sweep", "strategy.tp_pct=3,4,5", "--jobs", "2"),
        *("--out", str(where / "demo.db"), "--json"),
        cwd=where,
    )
    assert done.returncode == 4, done.stderr  # a run of the grid failed
    assert "Traceback" not in done.stderr
    failed = [line for line in done.stderr.splitlines() if line.startswith("backtest: run 3")]
    assert failed == [
        f"backtest: run 3 (strategy.tp_pct=5) failed: --out {where}/demo.sweep/run-003.db: cannot be "
        "written: Is a directory"
    ]
    return where, json.loads(done.stdout)


def _report(db: str, cwd: Path) -> dict[str, object]:
    done = shortfsm("report", "--db", db, "--capital", "1000", "--json", cwd=cwd)
    assert done.returncode == 0, done.stderr
    doc: dict[str, object] = json.loads(done.stdout)
    return doc


def test_the_sweep_rows_are_the_individual_runs_ranked(demo_sweep: tuple[Path, dict[str, object]]) -> None:
    where, doc = demo_sweep
    folder = where / "demo.sweep"
    assert doc["sweep"] == {
        "keys": ["strategy.tp_pct"],
        "values": {"strategy.tp_pct": ["3", "4", "5"]},
        "runs": 3,
        "jobs": 2,
        "path": "pessimistic",
        "rank_by": "net_return",
        "folder": str(folder),
    }
    rows = doc["rows"]
    assert isinstance(rows, list)
    assert [(r["rank"], r["run"], r["settings"], r["status"]) for r in rows] == [
        (1, 2, {"strategy.tp_pct": "4"}, "ok"),
        (2, 1, {"strategy.tp_pct": "3"}, "ok"),
        (3, 3, {"strategy.tp_pct": "5"}, "failed"),
    ]
    assert set(rows[0]) == {
        *("rank", "run", "settings", "status", "error", "return_pct", "net", "max_drawdown_pct"),
        *("profit_factor", "trades", "closed_trades", "ambiguous_trades", "ambiguous_pct", "db"),
        "data_problems",
    }
    for row in rows[:2]:  # each row is its own database's report, and readable by `report`
        assert row["db"] == str(folder / f"run-{row['run']:03d}.db")
        measured = _report(row["db"], where)
        drawdown = measured["max_drawdown"]
        assert isinstance(drawdown, dict)
        assert (row["return_pct"], row["net"], row["max_drawdown_pct"], row["profit_factor"]) == (
            measured["total_return_pct"],
            measured["net"],
            drawdown["pct"],
            measured["profit_factor"],
        )
        trades = measured["trades"]
        assert isinstance(trades, dict)
        assert (row["closed_trades"], row["trades"], row["ambiguous_trades"]) == (trades["closed"], 8, 2)
        assert row["ambiguous_pct"] == "25.0000"
        assert row["error"] is None
    # The ranking: net return, highest first (the demo's TP at 4 % beats 3 %).
    assert Decimal(rows[0]["return_pct"]) > Decimal(rows[1]["return_pct"])
    assert rows[2]["return_pct"] is None and "Is a directory" in rows[2]["error"]
    assert json.loads((folder / "sweep.json").read_text(encoding="utf-8")) == doc


def test_a_sweep_run_is_the_same_run_as_a_plain_backtest(
    demo_sweep: tuple[Path, dict[str, object]], tmp_path: Path
) -> None:
    _, doc = demo_sweep
    rows = doc["rows"]
    assert isinstance(rows, list)
    done = shortfsm(
        *("backtest", "--demo", "--set", "strategy.tp_pct=4"), *("--out", str(tmp_path / "one.db")), "--json",
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    pessimistic = json.loads(done.stdout)["runs"][0]
    assert pessimistic["path"] == "pessimistic"
    assert rows[0]["net"] == pessimistic["net"]  # the sweep runs the pessimistic path


def test_the_table_lists_every_run_in_rank_order(tmp_path: Path) -> None:
    done = shortfsm(
        *("backtest", "--demo", "--sweep", "strategy.tp_pct=3,4", "--rank-by", "drawdown", "--jobs", "1"),
        *("--out", str(tmp_path / "d.db")),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("sweep: 2 run(s) on 1 process(es) in ")
    assert "ranked by max drawdown, smallest first; ties: smaller drawdown, then higher return" in lines[0]
    assert lines[1].split() == [
        *("rank", "strategy.tp_pct", "return", "%", "net", "USDT", "max", "DD", "%", "PF", "trades"),
        *("ambiguous", "%", "status", "db"),
    ]
    # Equal drawdowns: the higher return (tp 4 %) first.
    assert [line.split()[:2] for line in lines[2:4]] == [["1", "4"], ["2", "3"]]
    assert lines[2].split()[-2:] == ["ok", f"{tmp_path}/d.sweep/run-002.db"]


@pytest.mark.parametrize(
    ("sweep", "line"),
    [
        (["strategy.tp_pct=3,500"], "backtest: --sweep strategy.tp_pct=500: Input should be less than 100"),
        (["strategy.tp_pct=3,x"], "backtest: --sweep strategy.tp_pct=x: Input should be a valid decimal"),
        (["strategy.nope=1,2"], "backtest: --sweep strategy.nope=1: Extra inputs are not permitted"),
        (
            ["binance.price_heartbeat_symbol=BTCUSDT,ETHUSDT"],
            "backtest: --sweep binance.price_heartbeat_symbol: its values do not change the strategy a "
            "backtest runs",
        ),
        (
            ["tp_pct=3,4"],
            "backtest: --sweep 'tp_pct=3,4': expected SECTION.KEY=V1,V2,... (e.g. strategy.tp_pct=3,4,5)",
        ),
        (
            ["strategy.tp_pct=3", "strategy.tp_pct=4"],
            "backtest: --sweep strategy.tp_pct: given twice; put all its values in one KEY=V1,V2,...",
        ),
        (
            [f"strategy.tp_pct={','.join(str(v) for v in range(1, 18))}",
             f"strategy.second_entry_pct={','.join(str(v) for v in range(1, 17))}"],
            f"backtest: --sweep: 17 x 16 = 272 runs, more than {MAX_RUNS}; narrow the grid",
        ),
    ],
)  # fmt: skip
def test_a_bad_sweep_is_one_line_and_exit_2_before_any_run(
    tmp_path: Path, sweep: list[str], line: str
) -> None:
    done = shortfsm("backtest", "--demo", "--sweep", *sweep, "--out", str(tmp_path / "d.db"), cwd=tmp_path)
    assert (done.returncode, done.stderr.splitlines(), done.stdout) == (2, [line], "")
    assert list(tmp_path.iterdir()) == []  # nothing written: no demo data, no sweep folder


def _row(index: int, ret: str | None, dd: str = "1", pf: str | None = "1", wins: int = 1) -> SweepRow:
    return SweepRow(
        index=index,
        settings=(("strategy.tp_pct", str(index)),),
        db=f"run-{index:03d}.db",
        error=None if ret is not None else "boom",
        return_pct=Decimal(ret) if ret is not None else None,
        max_drawdown_pct=Decimal(dd),
        profit_factor=Decimal(pf) if pf is not None else None,
        wins=wins,
        trades=4,
        closed_trades=4,
        ambiguous_trades=index % 3,
    )


def test_ranking_rules_and_ties() -> None:
    rows = [_row(1, "5", dd="3"), _row(2, "5", dd="2"), _row(3, None), _row(4, "7", dd="9", pf=None)]
    assert [r.index for r in ranked(rows, "net_return")] == [4, 2, 1, 3]
    assert [r.index for r in ranked(rows, "drawdown")] == [2, 1, 4, 3]
    assert [r.index for r in ranked(rows, "profit_factor")] == [4, 2, 1, 3]  # no loss with a win: infinite
    assert [r.index for r in ranked(rows, "ambiguous")] == [1, 4, 2, 3]  # 25 % (dd 3, 9), then 50 %
    assert rank_key(_row(5, "1", pf=None, wins=0), "profit_factor") > rank_key(_row(6, "-9"), "profit_factor")


def test_the_grid_is_the_cartesian_product_in_order() -> None:
    grid = parse_grid(["strategy.tp_pct=3,4", "strategy.second_entry_pct=10,15,20"])
    combos = combinations(grid)
    assert combos[:4] == [
        (("strategy.tp_pct", "3"), ("strategy.second_entry_pct", "10")),
        (("strategy.tp_pct", "3"), ("strategy.second_entry_pct", "15")),
        (("strategy.tp_pct", "3"), ("strategy.second_entry_pct", "20")),
        (("strategy.tp_pct", "4"), ("strategy.second_entry_pct", "10")),
    ]
    assert len(combos) == 6
    with pytest.raises(SweepError, match="an empty value"):
        parse_grid(["strategy.tp_pct=3,,4"])
    with pytest.raises(SweepError, match="a value is given twice"):
        parse_grid(["strategy.tp_pct=3,3"])
