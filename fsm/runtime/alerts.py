"""Operator alerts: stored in the database and, optionally, posted to a Discord webhook.

Alerts never block trading: ``submit`` only records the alert and puts it on a bounded queue
(``alerts.queue_limit``); when the queue is full the alert is dropped with a log line. One worker
task posts them with httpx, retrying with exponential back-off, and gives up (log line, the row is
marked undelivered) after ``alerts.max_attempts``. The webhook URL is a secret: never logged.

A channel that fails says so where the operator looks anyway: the first alert it drops records a
``alert_channel`` warning row (the board's alerts panel, ``shortfsm status``), and ``channel_state``
("off", "ok", "failing") goes into the heartbeat; the first delivery after that records that it
works again and how many alerts were lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx

from fsm import commands as cmd
from fsm.runtime.store import Store

log = logging.getLogger(__name__)
# httpx logs every request line, full URL included, at INFO; a webhook URL carries its token. Kept at
# WARNING whatever level the operator runs at (tests/bench/test_secrets.py scans for it).
logging.getLogger("httpx").setLevel(logging.WARNING)

SEVERITY_PREFIX = {"info": "ℹ️", "warning": "⚠️", "critical": "🚨"}
Poster = Callable[[str, dict[str, str]], Awaitable[int]]


@dataclass(frozen=True, slots=True, kw_only=True)
class Alert:
    now_ms: int
    kind: str
    text: str
    symbol: str | None = None
    severity: str = "info"
    alert_id: int = 0


Queued = tuple[Alert, "asyncio.Future[int] | None"]


class Alerts:
    """Bounded, retrying, never-blocking alert delivery."""

    def __init__(
        self,
        *,
        store: Store | None,
        webhook_url: str = "",
        queue_limit: int = 200,
        max_attempts: int = 5,
        backoff_s: float = 0.5,
        poster: Poster | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.store = store
        self.webhook_url = webhook_url
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.queue: asyncio.Queue[Queued] = asyncio.Queue(maxsize=queue_limit)
        self._poster = poster
        self._sleep = sleep
        self._client: httpx.AsyncClient | None = None
        self._worker: asyncio.Task[None] | None = None
        self.sent = 0
        self.dropped = 0
        self.failed = 0
        self.recent: list[Alert] = []
        self.on_submit: Callable[[Alert], None] | None = None  # the decision log
        self.failing_since_ms: int | None = None
        self.failing_reason = ""
        self.lost_while_failing = 0

    @property
    def channel_state(self) -> str:
        if not self.enabled:
            return "off"
        return "ok" if self.failing_since_ms is None else "failing"

    def channel_status(self) -> dict[str, object]:
        """For the heartbeat and the board: the channel, its state, and counts (never the URL)."""
        return {
            "channel": "discord" if self.enabled else None,
            "state": self.channel_state,
            "failing_since_ms": self.failing_since_ms,
            "problem": self.failing_reason or None,
            "sent": self.sent,
            "failed": self.failed,
            "dropped": self.dropped,
        }

    @property
    def enabled(self) -> bool:
        return bool(self.webhook_url) or self._poster is not None

    def start(self) -> None:
        if self.enabled and self._worker is None:
            self._worker = asyncio.create_task(self._run(), name="alerts")

    async def stop(self, drain_s: float = 2.0) -> None:
        """Give queued alerts ``drain_s`` to go out, then stop the worker."""
        if self._worker is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.queue.join(), drain_s)
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def notify(self, command: cmd.Notify, now_ms: int) -> None:
        self.submit(
            Alert(
                now_ms=now_ms,
                kind=command.kind,
                text=command.text,
                symbol=command.symbol,
                severity=command.severity,
            )
        )

    def submit(self, alert: Alert) -> bool:
        """Record and enqueue; never waits. False when the alert was dropped (queue full)."""
        log.log(
            logging.WARNING if alert.severity != "info" else logging.INFO,
            "alert %s: %s",
            alert.kind,
            alert.text,
        )
        self._log_it(alert)
        stored = self._record(alert)
        if not self.enabled:
            return True
        try:
            self.queue.put_nowait((alert, stored))
        except asyncio.QueueFull:
            self.dropped += 1
            log.warning("alert queue full (%d): dropped %s alert", self.queue.maxsize, alert.kind)
            return False
        return True

    def _record(self, alert: Alert) -> asyncio.Future[int] | None:
        if self.store is None or self.store.closed:
            return None
        return self.store.record_alert(
            now_ms=alert.now_ms,
            kind=alert.kind,
            severity=alert.severity,
            symbol=alert.symbol,
            text=alert.text,
        )

    def _channel_failed(self, alert: Alert, reason: str) -> None:
        """The first alert lost: one warning row on the board (stored only, never posted)."""
        self.lost_while_failing += 1
        if self.failing_since_ms is not None:
            return
        self.failing_since_ms = alert.now_ms
        self.failing_reason = reason
        text = (
            f"alert channel discord failing ({reason}): alerts reach only the board and the log "
            "until it works again; check DISCORD_WEBHOOK_URL and the network"
        )
        log.warning("%s", text)
        self._note(Alert(now_ms=alert.now_ms, kind="alert_channel", text=text, severity="warning"))

    def _channel_works(self, alert: Alert) -> None:
        if self.failing_since_ms is None:
            return
        text = f"alert channel discord works again; {self.lost_while_failing} alert(s) were not delivered"
        self.failing_since_ms, self.failing_reason, self.lost_while_failing = None, "", 0
        log.info("%s", text)
        self._note(Alert(now_ms=alert.now_ms, kind="alert_channel", text=text, severity="info"))

    def _note(self, alert: Alert) -> None:
        """About the channel itself: stored and logged, never posted to the channel that fails."""
        self._log_it(alert)
        self._record(alert)

    def _log_it(self, alert: Alert) -> None:
        self.recent = [*self.recent[-19:], alert]
        if self.on_submit is not None:
            try:
                self.on_submit(alert)
            except Exception:  # a log that fails never stops an alert
                log.exception("alert %s: decision log failed", alert.kind)

    async def _run(self) -> None:
        while True:
            alert, stored = await self.queue.get()
            try:
                delivered = await self._deliver(alert)
                if stored is not None and self.store is not None and not self.store.closed:
                    self.store.mark_alert(await stored, delivered)
            except Exception:  # the worker outlives any single alert
                log.exception("alert delivery crashed")
            finally:
                self.queue.task_done()

    async def _deliver(self, alert: Alert) -> bool:
        content = f"{SEVERITY_PREFIX.get(alert.severity, '')} **{alert.kind}** {alert.text}".strip()
        delay = self.backoff_s
        for attempt in range(1, self.max_attempts + 1):
            try:
                status = await self._post({"content": content[:1900]})
                if 200 <= status < 300:
                    self.sent += 1
                    self._channel_works(alert)
                    return True
                reason = f"HTTP {status}"
            except (httpx.HTTPError, OSError) as exc:
                reason = type(exc).__name__
            if attempt < self.max_attempts:
                log.info("alert %s: attempt %d failed (%s); retrying", alert.kind, attempt, reason)
                await self._sleep(delay)
                delay = min(delay * 2, 30.0)
        self.failed += 1
        log.warning("alert %s dropped after %d attempts (%s)", alert.kind, self.max_attempts, reason)
        self._channel_failed(alert, reason)
        return False

    async def _post(self, body: dict[str, str]) -> int:
        if self._poster is not None:
            return await self._poster(self.webhook_url, body)
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=10.0)
        resp = await self._client.post(self.webhook_url, json=body)
        return resp.status_code
