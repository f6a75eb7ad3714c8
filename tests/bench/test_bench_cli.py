"""``shortfsm bench``: every row is produced with numbers and a target (no timing assertions)."""

from __future__ import annotations

import contextlib
import io
import json
import math
from decimal import Decimal

import pytest

from binance.parse import decode_frame
from fsm import events as ev
from fsm.harness import bench, daemon_faults, faults
from fsm.ops.bench_cli import print_daemon_matrix, print_rows
from fsm.ops.cli import main

EXPECTED_ROWS = {
    ("engine", "Engine.handle MessageReceived (leading -> MONITORING)"),
    ("engine", "Engine.handle MarkPriceTick (1 monitored)"),
    ("engine", "Engine.handle Tick (1 monitored)"),
    ("engine", "Engine.handle OrderUpdated (entry FILLED -> PHASE1)"),
    ("engine", "Engine.handle OrderPrepared (-> PlaceOrder ENTRY1)"),
    ("evaluator", "1 s evaluation (Tick), 10 monitored"),
    ("evaluator", "1 s evaluation (Tick), 100 monitored"),
    ("evaluator", "1 s evaluation (Tick), 600 monitored"),
    ("evaluator", "1 s of engine work, 600 monitored (600 MarkPriceTick + Tick)"),
    ("ingest", "decode !markPrice@arr@1s, 600 symbols, all converted"),
    ("ingest", "decode !markPrice@arr@1s, 600 symbols, watched=10"),
    ("ingest", "parse_message, leading-market message"),
    ("replay", "market replay: engine + simulated venue (in process, real REST client)"),
    ("replay", "catalog replay: engine + simulated venue (order-heavy)"),
    ("replay", "catalog replay: engine + venue double (no REST client)"),
}
DAEMON_ROWS = {
    ("tick-to-order, take-profit: Tick handled -> order at the venue (loopback sim)", "ms"),
    ("tick-to-order, first entry, account read ahead (W25): Tick -> order at the venue", "ms"),
    ("tick-to-order, first entry, account read ahead, symbol to set up (W24): Tick -> POSTs -> order", "ms"),
    ("tick-to-order, first entry, default (W24 reads at the trigger): Tick -> reads -> order", "ms"),
    ("daemon at rest, 20 symbols streaming: resident memory", "MB"),  # --quick monitors 20, not 600
    ("daemon at rest, 20 symbols streaming: CPU of one core", "%"),
}
WEIGHT_ROWS = {
    ("REST weight, a position open at rest: share of the 2,400/min IP limit", "%"),
    ("REST weight, recovery after a restart: share of the 2,400/min IP limit", "%"),
    ("REST weight, user-stream reconnect storm: share of the 2,400/min IP limit", "%"),
}


@pytest.fixture(scope="module")
def quick_json() -> dict[str, object]:
    """``shortfsm bench --quick --json``, run once for the module."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["bench", "--quick", "--json"])
    assert code == 0
    return dict(json.loads(out.getvalue()))


def test_quick_json_has_every_row_with_numbers_and_a_target(quick_json: dict[str, object]) -> None:
    rows = quick_json["rows"]
    assert isinstance(rows, list)
    assert quick_json["quick"] is True
    names = {(r["group"], r["name"]) for r in rows}
    assert names >= EXPECTED_ROWS
    assert {(r["name"], r["unit"]) for r in rows if r["group"] == "daemon"} == DAEMON_ROWS
    assert {(r["name"], r["unit"]) for r in rows if r["group"] == "rest weight"} == WEIGHT_ROWS
    for row in rows:
        target = row["target"]
        assert target["op"] in ("<", ">")
        assert isinstance(target["value"], float) and target["value"] > 0
        if row["status"] == "measured":
            assert target["stat"] in row["stats"], row
            assert row["samples"] > 0
            for value in row["stats"].values():
                assert isinstance(value, float) and math.isfinite(value) and value >= 0
            assert row["met"] in (True, False)
        else:  # only the daemon rows may be missing, and they must say why
            assert row["group"] in ("daemon", "rest weight")
            assert row["stats"] == {} and row["met"] is None
            assert row["note"].startswith("not measured (")


def test_latency_rows_report_p50_p99_max_and_runs_report_min_median_max(
    quick_json: dict[str, object],
) -> None:
    rows = quick_json["rows"]
    assert isinstance(rows, list)
    for row in rows:
        if row["status"] != "measured":
            continue
        if row["unit"] in ("events/s", "MB", "%", "s"):  # whole runs or 1 s samples
            assert list(row["stats"]) == ["min", "median", "max"]
            assert row["stats"]["min"] <= row["stats"]["median"] <= row["stats"]["max"]
        else:  # single-call latencies
            assert row["unit"] in ("us", "ms")
            assert list(row["stats"]) == ["p50", "p99", "max"]
            assert row["stats"]["p50"] <= row["stats"]["p99"] <= row["stats"]["max"]


def test_the_table_prints_each_row_with_its_target(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    rows = [
        bench.latency_row("engine", "a measured row", [1_000, 2_000, 3_000], 100.0, note="a note"),
        bench.not_measured(
            "daemon", "a missing row", "ms", bench.Target(stat="p99", op="<", value=2.0), "why"
        ),
    ]
    print_rows(rows, quick=False)
    out = capsys.readouterr().out
    assert "a measured row" in out and "a missing row" in out
    assert "p99 < 100.0 us" in out and "p99 < 2.00 ms" in out
    assert "p50/p99/max: 2.00 / 3.00 / 3.00 us" in out
    assert "not measured" in out and "(1) a note" in out


def test_nearest_rank_percentiles() -> None:
    values = [float(v) for v in range(1, 101)]
    assert bench.percentile(values, 50) == 50.0
    assert bench.percentile(values, 99) == 99.0
    assert bench.percentile(values, 100) == 100.0
    assert bench.percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError):
        bench.percentile([], 50)


def test_latency_row_converts_nanoseconds_and_judges_the_p99() -> None:
    row = bench.latency_row("g", "n", [50_000] * 98 + [150_000, 200_000], 100.0)
    assert dict(row.stats) == {"p50": 50.0, "p99": 150.0, "max": 200.0}
    assert row.met is False
    assert bench.latency_row("g", "n", [50_000] * 100, 100.0).met is True
    throughput = bench.run_row(
        "replay",
        "r",
        [60_000.0, 40_000.0, 55_000.0],
        "events/s",
        bench.Target(stat="median", op=">", value=50_000.0),
        "",
    )
    assert dict(throughput.stats) == {"min": 40_000.0, "median": 55_000.0, "max": 60_000.0}
    assert throughput.met is True


def test_the_generated_frame_is_a_real_600_symbol_mark_price_array() -> None:
    frame = bench.mark_price_frame(600)
    items = decode_frame(frame, 0)
    assert len(items) == 600
    assert all(isinstance(i, ev.MarkPriceTick) for i in items)
    first = items[0]
    assert isinstance(first, ev.MarkPriceTick)
    assert first.symbol == "B0000USDT" and first.price == Decimal("100.00000000")
    watched = {"B0005USDT", "B0599USDT"}
    assert [i.symbol for i in decode_frame(frame, 0, watched) if isinstance(i, ev.MarkPriceTick)] == [
        "B0005USDT",
        "B0599USDT",
    ]


def test_bench_fixtures_build_the_states_they_claim() -> None:
    engine = bench.monitoring_engine(3)
    assert engine.active_symbols() == {f"B000{i}USDT": "MONITORING" for i in range(3)}
    working = bench.entry_working()
    assert working.engine.state_of(working.symbol) == "ENTRY_ORDER"
    assert working.place is not None and working.place.price == Decimal("101.0")
    working.engine.handle(bench.full_fill(working))
    assert working.engine.state_of(working.symbol) == "PHASE1"


def test_the_daemon_fault_table_has_a_row_per_fault(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``bench --faults`` prints one row per fault of ``daemon_faults.FAULTS`` (the real venue's answers
    included) and lists them all in its JSON."""
    monkeypatch.setenv("COLUMNS", "250")
    names = tuple(f.name for f in daemon_faults.FAULTS)
    assert {"408-after", "-4130", "-4509", "algo-fill-first", "algo-no-triggered"} <= set(names)
    assert {"ban-growing", "ban-exit", "user-reconnect"} <= set(names)
    final = faults.FinalState(states=(), locks=(), positions=(), open_orders=())
    cells = tuple(
        daemon_faults.CellRun(
            scenario=s.name,
            fault=fault,
            violations=() if fault != "-4509" else ("boom",),
            outcome="same",
            final=final,
            fired=(),
            venue_requests=0,
            events=0,
            wall_s=0.0,
        )
        for s in daemon_faults.SCENARIOS
        for fault in ("none", *names)
    )
    matrix = daemon_faults.DaemonMatrixResult(
        scenarios=tuple(s.name for s in daemon_faults.SCENARIOS), faults=("none", *names), cells=cells
    )
    print_daemon_matrix(matrix)
    out = capsys.readouterr().out
    table = [[part.strip() for part in line.split("│")[1:-1]] for line in out.splitlines() if "│" in line]
    assert [row[0] for row in table] == ["none", *names]
    scenarios = [s.name for s in daemon_faults.SCENARIOS]
    assert next(row for row in table if row[0] == "-4509")[1:] == [
        "FAIL*" if (s, "-4509") in daemon_faults.FINDINGS else "FAIL" for s in scenarios
    ]
    assert ("known daemon bug" in out) == any((s, "-4509") in daemon_faults.FINDINGS for s in scenarios)
    assert matrix.as_json()["faults"] == ["none", *names]
    assert [c["fault"] for c in matrix.as_json()["cells"] if not c["passed"]] == ["-4509"] * len(scenarios)
