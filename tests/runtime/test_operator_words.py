"""Issue #13, clear words: a decision log a trader can read (ISO times, fills, closed positions with
their PnL, operator commands, config reloads), outage messages that name the host and never a URL,
a safety lock that says what it did, alert channels that say when they fail.

The operator paths run the real ``shortfsm`` CLI in subprocesses (files, environment, exit codes):
``demo`` for the trades, ``run`` on the sim profile for the controls and reloads, ``run`` against a
standalone ``sim-venue`` that is killed for the outage.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import runtime_kit as kit
import test_operator_truth as truth

from binance.errors import Retryable
from binance.rest import BinanceRest, host_of, hosts_only
from fsm.runtime.alerts import Alert, Alerts
from fsm.runtime.liveness import liveness
from fsm.runtime.logs import iso_utc
from fsm.runtime.store import Store

ISO_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def _log(path: Path) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    for line in lines:  # every line: ISO-8601 UTC first, the same instant in epoch ms beside it
        assert list(line)[:3] == ["ts", "ts_ms", "kind"], line
        assert ISO_RE.fullmatch(line["ts"]) and line["ts"] == iso_utc(line["ts_ms"]), line
    return lines


def _without_times(line: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in line.items() if k not in ("ts", "ts_ms")}


def _alerts(db: Path) -> list[tuple[str, str, str]]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return conn.execute("SELECT kind, severity, text FROM alerts ORDER BY id").fetchall()


class Proc:
    """A ``shortfsm`` subprocess whose stderr goes to a file (a pipe nobody reads can fill up)."""

    def __init__(self, args: list[str], env: dict[str, str], err: Path) -> None:
        self.err = err
        self._file = err.open("w", encoding="utf-8")
        self.proc = subprocess.Popen(
            [*truth.CLI, *args],
            cwd=truth.REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._file,
            text=True,
        )

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(30)
        self._file.close()
        if self.proc.stdout:
            self.proc.stdout.close()
        return code

    def stderr(self) -> str:
        return self.err.read_text(encoding="utf-8")


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for p in started:
        if p.proc.poll() is None:
            p.proc.kill()
        p.stop()


def _wait_alive(db: Path, p: Proc) -> None:
    deadline = time.monotonic() + truth.START_S
    while not (liveness(db).alive and liveness(db).pid == p.proc.pid):
        assert p.proc.poll() is None, p.stderr()
        assert time.monotonic() < deadline, "the daemon did not start"
        time.sleep(0.1)


# ---------------------------------------------------------------------------------------------
# 1. the decision log: ISO times, fills, closed positions with their PnL
# ---------------------------------------------------------------------------------------------


def test_the_decision_log_records_every_fill_and_each_closed_position_with_its_pnl(tmp_path: Path) -> None:
    config = truth._config(tmp_path)
    db = tmp_path / "demo.db"
    result = truth.shortfsm(
        "demo", "--speed", "40", "--no-board", "--db", str(db), "--config", str(config), timeout=120
    )
    assert result.returncode == 0, result.stderr
    lines = _log(tmp_path / "demo.db-log" / "shortfsm.jsonl")
    closed = [_without_times(line) for line in lines if line["kind"] == "position_closed"]
    assert [(c["symbol"], c["message_id"], c["reason"]) for c in closed] == [
        ("LINKUSDT", 105, "BE filled"),
        ("AVAXUSDT", 107, "TP filled"),
        ("ADAUSDT", 108, "risk_pnl_negative"),
    ]
    fills = [line for line in lines if line["kind"] == "fill"]
    assert set(fills[0]) == {
        "ts", "ts_ms", "kind", "symbol", "cid", "leg", "side", "qty", "price", "realised_pnl", "fee",
        "trade_id", "status",
    }  # fmt: skip
    assert sorted({(f["symbol"], f["cid"], f["leg"], f["side"]) for f in fills}) == [
        ("ADAUSDT", "sf108-CL1-ADAUSDT", "CLOSE", "BUY"),
        ("ADAUSDT", "sf108-E11-ADAUSDT", "ENTRY1", "SELL"),
        ("AVAXUSDT", "sf107-E11-AVAXUSDT", "ENTRY1", "SELL"),
        ("AVAXUSDT", "sf107-TP1-AVAXUSDT", "TP", "BUY"),
        ("LINKUSDT", "sf105-BE1-LINKUSDT", "BE", "BUY"),
        ("LINKUSDT", "sf105-E11-LINKUSDT", "ENTRY1", "SELL"),
        ("LINKUSDT", "sf105-E21-LINKUSDT", "ENTRY2", "SELL"),
    ]
    assert len({(f["symbol"], f["trade_id"]) for f in fills}) == len(fills)  # each fill logged once
    for c in closed:  # a closed position: flat, its PnL and fees the sums of its fills
        mine = [f for f in fills if f["symbol"] == c["symbol"]]
        sold = sum(Decimal(f["qty"]) for f in mine if f["side"] == "SELL")
        assert sold > 0 and sold == sum(Decimal(f["qty"]) for f in mine if f["side"] == "BUY")
        assert sum(Decimal(f["realised_pnl"]) for f in mine) == Decimal(c["realised_pnl"])
        assert sum(Decimal(f["fee"]) for f in mine) == Decimal(c["fees"])
        assert Decimal(c["net"]) == Decimal(c["realised_pnl"]) - Decimal(c["fees"])
    realised = sum(Decimal(c["realised_pnl"]) for c in closed).quantize(Decimal("0.0001"))
    fees = sum(Decimal(c["fees"]) for c in closed).quantize(Decimal("0.0001"))
    assert f"realised PnL {realised} USDT, fees {fees} USDT," in result.stdout  # the demo's own total
    texts = [line["text"] for line in lines if line["kind"] == "alert" and line["alert"] == "position_closed"]
    assert [t.split(" closed (")[0] for t in texts] == ["LINKUSDT", "AVAXUSDT", "ADAUSDT"]
    assert texts[1].endswith(
        f"realised net +{Decimal(closed[1]['net']):.4f} USDT (fees {Decimal(closed[1]['fees']):.4f})"
    )


# ---------------------------------------------------------------------------------------------
# 1. the decision log: operator commands and config reloads
# ---------------------------------------------------------------------------------------------


def _rid(result: subprocess.CompletedProcess[str], command: str) -> str:
    assert result.returncode == 0, result.stderr
    found = re.search(rf"^{command} (\S+) sent to daemon pid", result.stdout, re.MULTILINE)
    assert found, result.stdout
    return found.group(1)


def _append(path: Path, text: str) -> None:
    before = path.stat().st_mtime_ns
    path.write_text(path.read_text(encoding="utf-8") + text, encoding="utf-8")
    os.utime(path, ns=(before + 1_000_000, before + 1_000_000))


def _until_line(path: Path, cond: Any) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 20
    while True:
        lines = _log(path) if path.exists() else []
        if any(cond(line) for line in lines):
            return lines
        assert time.monotonic() < deadline, "the decision log never said it"
        time.sleep(0.1)


def test_the_decision_log_records_operator_commands_and_config_reloads(
    tmp_path: Path, procs: list[Proc]
) -> None:
    config = truth._config(tmp_path)
    db, log_file = tmp_path / "db.sqlite", tmp_path / "log" / "shortfsm.jsonl"
    daemon = Proc(["run", "--config", str(config)], truth._env(), tmp_path / "run.err")
    procs.append(daemon)
    _wait_alive(db, daemon)
    pause = _rid(truth.shortfsm("pause", "--config", str(config)), "pause")
    resume = _rid(truth.shortfsm("resume", "--config", str(config)), "resume")
    flatten = _rid(truth.shortfsm("flatten", "--yes", "--config", str(config)), "flatten")
    _append(config, "strategy:\n  tp_pct: '6'\n")
    _until_line(log_file, lambda line: line["kind"] == "settings_applied")
    _append(config, "  tp_pct: abc\n")  # the later key wins, and it is not a number
    _until_line(log_file, lambda line: line["kind"] == "config_reload" and line["result"] == "refused")
    assert daemon.stop() == 0
    lines = [_without_times(line) for line in _log(log_file)]
    wanted = ("operator", "config_reload", "settings_applied", "settings_refused")
    assert [line for line in lines if line["kind"] in wanted][:5] == [
        {
            "kind": "operator",
            "command": "pause",
            "id": pause,
            "result": "ok",
            "lines": ["paused: no new entries"],
        },
        {
            "kind": "operator",
            "command": "resume",
            "id": resume,
            "result": "ok",
            "lines": ["resumed: new entries allowed"],
        },
        {
            "kind": "operator",
            "command": "flatten",
            "id": flatten,
            "result": "ok",
            "lines": ["nothing to cancel or close"],
        },
        {"kind": "config_reload", "file": str(config), "result": "requested", "changes": {"tp_pct": "6"}},
        {
            "kind": "settings_applied",
            "input": "SettingsChangeRequested",
            "symbol": None,
            "decision": "ok",
            "data": {"keys": "tp_pct"},
        },
    ]
    refused = [line for line in lines if line["kind"] == "config_reload" and line["result"] == "refused"]
    assert len(refused) == 1 and refused[0]["reason"].startswith(f"invalid: {config}: strategy.tp_pct: "), (
        refused
    )


# ---------------------------------------------------------------------------------------------
# 2, 3. an outage names the host (never a URL); the safety lock says what it did
# ---------------------------------------------------------------------------------------------


def _free_pair() -> int:
    for _ in range(50):
        with socket.create_server(("127.0.0.1", 0)) as first:
            port = int(first.getsockname()[1])
            try:
                with socket.create_server(("127.0.0.1", port + 1)):
                    return port
            except OSError:
                continue
    raise AssertionError("no two adjacent free ports")


def test_a_binance_outage_names_the_host_and_the_safety_lock_says_nothing_was_held(
    tmp_path: Path, procs: list[Proc]
) -> None:
    port = _free_pair()
    venue = Proc(
        ["sim-venue", "--port", str(port), "--api-key", "k-outage", "--api-secret", "s-outage-0123456789"],
        truth._env(),
        tmp_path / "venue.err",
    )
    procs.append(venue)
    assert venue.proc.stdout is not None
    assert venue.proc.stdout.readline().startswith("REST base URL: ")
    rest, ws = f"127.0.0.1:{port}", f"127.0.0.1:{port + 1}"
    config = truth._config(tmp_path)
    _append(
        config,
        "binance:\n"
        f"  rest_url: http://{rest}\n"
        f"  market_ws_url: ws://{ws}/market\n"
        f"  private_ws_url: ws://{ws}/private\n",
    )
    env = truth._env(BINANCE_API_KEY="k-outage", BINANCE_API_SECRET="s-outage-0123456789")
    db = tmp_path / "db.sqlite"
    daemon = Proc(["run", "--config", str(config)], env, tmp_path / "run.err")
    procs.append(daemon)
    _wait_alive(db, daemon)
    truth._until(lambda: truth._board(db)["streams"]["market"] == "up")
    venue.stop(signal.SIGKILL)
    truth._until(lambda: any(kind == "safety_lock" for kind, _, _ in _alerts(db)), timeout=40)
    truth._until(lambda: sum(kind == "binance_connection" for kind, _, _ in _alerts(db)) == 2, timeout=20)
    beat = json.loads((tmp_path / "hb.json").read_text(encoding="utf-8"))
    assert daemon.stop() == 0
    alerts = _alerts(db)
    outage = sorted(text for kind, _, text in alerts if kind == "binance_connection")
    assert re.fullmatch(
        rf"Binance market stream down for 1\d s: {ws} unreachable: \w+: .*; reconnecting", outage[0]
    ), outage
    assert re.fullmatch(
        rf"Binance user stream down for 1\d s: {ws} (unreachable: \w+: .*|down \(listenKey: .*{rest} "
        r"unreachable: .*\)); reconnecting",
        outage[1],
    ), outage
    assert beat["connections"]["market"]["host"] == ws
    assert beat["connections"]["market"]["problem"].startswith(f"{ws} unreachable: ")
    assert isinstance(beat["connections"]["market"]["down_since_ms"], int)
    safety = [(severity, text) for kind, severity, text in alerts if kind == "safety_lock"]
    assert len(safety) == 1 and safety[0][0] == "critical"
    assert re.fullmatch(r"safety lock on: no fresh mark price .*; nothing was held", safety[0][1]), safety
    assert not any(w in text.lower() for _, _, text in alerts for w in ("flattening", "positions closed"))
    log = daemon.stderr()
    assert f"market stream {ws} unreachable: " in log
    causes = [
        line["data"]["cause"]
        for line in _log(tmp_path / "log" / "shortfsm.jsonl")
        if line["kind"] == "price_source" and line["decision"] == "rest_failed"
    ]
    assert causes and all(c.startswith(f"Retryable 0: {rest} unreachable: connect failed: ") for c in causes)
    for secret in ("signature=", "/ws/", "?", "s-outage-0123456789"):  # no URL with a query, no key
        assert secret not in "\n".join(text for _, _, text in alerts), secret
    assert "signature=" not in log and "s-outage-0123456789" not in log


def test_rest_errors_name_the_host_and_never_the_url() -> None:
    port = _free_pair()

    async def scenario() -> str:
        async with BinanceRest(api_key="k", api_secret="s" * 16, base_url=f"http://127.0.0.1:{port}") as rest:
            with pytest.raises(Retryable) as caught:
                await rest.position_risk()
        return caught.value.msg

    assert kit.run(scenario()).startswith(f"127.0.0.1:{port} unreachable: connect failed: ")
    assert host_of("https://fapi.binance.com/fapi/v1/order?symbol=X&signature=abc") == "fapi.binance.com"
    assert hosts_only("GET wss://fstream.binance.com/ws/LISTENKEY failed") == "GET fstream.binance.com failed"


# ---------------------------------------------------------------------------------------------
# 4. an alert channel that fails says so on the board, and when it works again
# ---------------------------------------------------------------------------------------------


def test_a_failing_webhook_shows_on_the_board_and_in_the_heartbeat(tmp_path: Path, procs: list[Proc]) -> None:
    with socket.create_server(("127.0.0.1", 0)) as closed:
        hook_port = int(closed.getsockname()[1])  # nothing listens there once closed
    config = truth._config(tmp_path)
    _append(config, "alerts:\n  discord: true\n  max_attempts: 1\n")
    token = "tok-0123456789abcdef"
    env = truth._env(DISCORD_WEBHOOK_URL=f"http://127.0.0.1:{hook_port}/api/webhooks/1/{token}")
    db = tmp_path / "db.sqlite"
    daemon = Proc(["run", "--config", str(config)], env, tmp_path / "run.err")
    procs.append(daemon)
    _wait_alive(db, daemon)
    assert truth.shortfsm("flatten", "--yes", "--config", str(config)).returncode == 0  # alerts "flatten"
    truth._until(lambda: any(kind == "alert_channel" for kind, _, _ in _alerts(db)))
    truth._until(
        lambda: json.loads((tmp_path / "hb.json").read_text(encoding="utf-8"))["alerts"]["state"] == "failing"
    )
    status = truth.shortfsm("status", "--db", str(db))
    beat = json.loads((tmp_path / "hb.json").read_text(encoding="utf-8"))
    assert daemon.stop() == 0
    channel = [(severity, text) for kind, severity, text in _alerts(db) if kind == "alert_channel"]
    assert channel == [
        (
            "warning",
            "alert channel discord failing (ConnectError): alerts reach only the board and the log until it "
            "works again; check DISCORD_WEBHOOK_URL and the network",
        )
    ]
    assert beat["alerts"]["channel"] == "discord"
    assert beat["alerts"]["problem"] == "ConnectError"
    assert beat["alerts"]["failed"] >= 1
    assert "alert channel discord failing" in status.stdout
    logged = [line for line in _log(tmp_path / "log" / "shortfsm.jsonl") if line["kind"] == "alert"]
    assert [
        (line["severity"], line["text"]) for line in logged if line["alert"] == "alert_channel"
    ] == channel
    for text in (daemon.stderr(), (tmp_path / "log" / "shortfsm.jsonl").read_text(encoding="utf-8")):
        assert token not in text and str(hook_port) + "/api" not in text


def test_a_channel_that_works_again_says_how_many_alerts_were_lost(tmp_path: Path) -> None:
    answers = [503, 503, 204]

    async def poster(url: str, body: dict[str, str]) -> int:
        return answers.pop(0)

    async def nap(s: float) -> None:
        return None

    async def scenario() -> tuple[list[tuple[Any, ...]], str, list[str]]:
        store = await Store.open(tmp_path / "a.db")
        alerts = Alerts(store=store, poster=poster, sleep=nap, max_attempts=1)
        alerts.start()
        states = []
        for n in range(3):
            alerts.submit(Alert(now_ms=1000 * n, kind=f"k{n}", text=f"alert {n}"))
            await asyncio.wait_for(alerts.queue.join(), 2)
            states.append(alerts.channel_state)
        await alerts.stop()
        rows = await store.rows("SELECT now_ms, kind, severity, text, delivered FROM alerts ORDER BY id")
        await store.close()
        return rows, alerts.channel_state, states

    rows, state, states = kit.run(scenario())
    assert states == ["failing", "failing", "ok"] and state == "ok"
    assert rows == [
        (0, "k0", "info", "alert 0", -1),  # -1: given up
        (
            0,
            "alert_channel",
            "warning",
            "alert channel discord failing (HTTP 503): alerts reach only the board and the log until it "
            "works again; check DISCORD_WEBHOOK_URL and the network",
            0,
        ),
        (1000, "k1", "info", "alert 1", -1),
        (2000, "k2", "info", "alert 2", 1),
        (
            2000,
            "alert_channel",
            "info",
            "alert channel discord works again; 2 alert(s) were not delivered",
            0,
        ),
    ]
