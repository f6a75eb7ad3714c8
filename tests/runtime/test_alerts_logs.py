"""Alerts (bounded, retried, never blocking, stored) and the JSON decision log."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import runtime_kit as kit

from fsm import commands as cmd
from fsm import events as ev
from fsm.runtime.alerts import Alert, Alerts
from fsm.runtime.logs import DecisionLog
from fsm.runtime.store import Store


def _alert(n: int) -> Alert:
    return Alert(now_ms=n, kind=f"k{n}", text=f"alert {n}")


def test_full_queue_drops_without_waiting(tmp_path: Path) -> None:
    async def never(url: str, body: dict[str, str]) -> int:
        await asyncio.Event().wait()
        return 204

    async def scenario() -> tuple[list[bool], int, list[tuple[object, ...]]]:
        store = await Store.open(tmp_path / "a.db")
        alerts = Alerts(store=store, queue_limit=2, poster=never)  # the worker is not even started
        results = [alerts.submit(_alert(n)) for n in range(4)]  # synchronous: submit never awaits
        rows = await store.rows("SELECT kind, delivered FROM alerts ORDER BY id")
        await store.close()
        return results, alerts.dropped, rows

    results, dropped, rows = kit.run(scenario())
    assert results == [True, True, False, False]
    assert dropped == 2
    assert rows == [("k0", 0), ("k1", 0), ("k2", 0), ("k3", 0)]  # every alert is stored all the same


def test_retries_with_backoff_then_delivers(tmp_path: Path) -> None:
    answers = [500, 502, 204]
    delays: list[float] = []

    async def poster(url: str, body: dict[str, str]) -> int:
        assert body == {"content": "🚨 **auth_lock** API key refused"}
        return answers.pop(0)

    async def sleep(s: float) -> None:
        delays.append(s)

    async def scenario() -> list[tuple[object, ...]]:
        store = await Store.open(tmp_path / "a.db")
        alerts = Alerts(store=store, poster=poster, sleep=sleep, max_attempts=5)
        alerts.start()
        alerts.notify(cmd.Notify(kind="auth_lock", text="API key refused", severity="critical"), 5)
        await asyncio.wait_for(alerts.queue.join(), 2)
        await alerts.stop()
        rows = await store.rows("SELECT kind, severity, delivered FROM alerts")
        await store.close()
        assert alerts.sent == 1
        return rows

    assert kit.run(scenario()) == [("auth_lock", "critical", 1)]
    assert delays == [0.5, 1.0]


def test_gives_up_after_max_attempts(tmp_path: Path) -> None:
    calls: list[int] = []

    async def poster(url: str, body: dict[str, str]) -> int:
        calls.append(1)
        return 503

    async def sleep(s: float) -> None:
        return None

    async def scenario() -> tuple[int, list[tuple[object, ...]]]:
        store = await Store.open(tmp_path / "a.db")
        alerts = Alerts(store=store, poster=poster, sleep=sleep, max_attempts=3)
        alerts.start()
        alerts.submit(_alert(1))
        await asyncio.wait_for(alerts.queue.join(), 2)
        await alerts.stop()
        rows = await store.rows("SELECT delivered FROM alerts WHERE kind = 'k1'")  # not alert_channel
        await store.close()
        return alerts.failed, rows

    assert kit.run(scenario()) == (1, [(-1,)])
    assert len(calls) == 3


def test_decision_log_lines_and_secret_scrubbing(tmp_path: Path) -> None:
    log = DecisionLog(tmp_path, secrets=["sekret-value-123"])
    event = ev.Tick(now_ms=1)
    log.decisions(
        1,
        event,
        [
            cmd.Log(kind="leading_rejected", symbol="DOGEUSDT", reason="category_excluded:meme"),
            cmd.Transitioned(
                machine="symbol",
                symbol="ETHUSDT",
                source="IDLE",
                dest="MONITORING",
                trigger="start_monitoring",
            ),
            cmd.Log(kind="anomaly", reason="leak", data=(("detail", "key=sekret-value-123"),)),
        ],
    )
    rejected = ev.OrderRejected(
        now_ms=2,
        symbol="ETHUSDT",
        client_order_id="c1",
        code=-2019,
        message="Margin is insufficient.",
        retryable=False,
        category="margin",
    )
    log.order_outcome(2, cmd.CancelOrder(symbol="ETHUSDT", client_order_id="c1", attempt=2), [rejected])
    log.close()
    lines = [json.loads(x) for x in (tmp_path / "shortfsm.jsonl").read_text().splitlines()]
    assert lines[0] == {
        "ts": "1970-01-01T00:00:00.001Z",
        "ts_ms": 1,
        "kind": "leading_rejected",
        "input": "Tick",
        "symbol": "DOGEUSDT",
        "decision": "category_excluded:meme",
        "data": {},
    }
    assert lines[1]["transition"] == "IDLE->MONITORING"
    assert lines[2]["data"] == {"detail": "key=***"}
    assert (lines[3]["result"], lines[3]["error_code"], lines[3]["attempt"]) == ("rejected", -2019, 2)
