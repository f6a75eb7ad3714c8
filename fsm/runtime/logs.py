"""The decision log: one JSON line per decision (W51-1..3), rotated daily, kept 7 days.

Each line starts with ``ts`` (ISO-8601 UTC, milliseconds, ``Z``), ``ts_ms`` (the same instant in
epoch milliseconds) and ``kind``, then the fields of what was decided: the engine's ``Log`` records
(input, decision, reason, data), ``transition`` (machine, symbol, source->dest, trigger, reason),
``order`` outcomes (the order's parameters, the venue's error code and message, the attempt
number), ``fill`` (symbol, cid, qty, price, realised PnL, fee), ``position_closed`` (realised PnL,
fees, net), ``alert`` (every operator alert), ``operator`` (pause/resume/flatten: command id, result,
lines) and ``config_reload`` (requested, refused with the reason, restart needed, unchanged).
Known secret values are scrubbed from every line before it is written.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from fsm import commands as cmd
from fsm import events as ev
from fsm.runtime.store import to_jsonable

LOGGER_NAME = "shortfsm.decisions"
LOG_FILE = "shortfsm.jsonl"


def iso_utc(ms: int) -> str:
    """Epoch milliseconds as ISO-8601 UTC: ``2026-03-01T12:00:00.250Z``."""
    text = datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def plain(value: Decimal) -> str:
    """A Decimal as positional text without trailing zeros (``0E-8`` is ``0``)."""
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


class SecretScrubber(logging.Filter):
    """Replaces every known secret value in a record's message with ``***``."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s and len(s) >= 4]

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            text = record.getMessage()
            for secret in self.secrets:
                text = text.replace(secret, "***")
            record.msg, record.args = text, None
        return True


class DecisionLog:
    """Writes decision records to ``<log_dir>/shortfsm.jsonl`` (midnight rotation)."""

    def __init__(
        self,
        log_dir: str | Path | None,
        *,
        retention_days: int = 7,
        secrets: Iterable[str] = (),
        utc: bool = True,
    ) -> None:
        self.logger = logging.getLogger(f"{LOGGER_NAME}.{id(self)}")
        self.logger.propagate = False
        self.logger.setLevel(logging.INFO)
        self.handler: logging.Handler | None = None
        self.lines = 0
        if log_dir is not None:
            path = Path(log_dir)
            path.mkdir(parents=True, exist_ok=True)
            handler = logging.handlers.TimedRotatingFileHandler(
                path / LOG_FILE, when="midnight", backupCount=retention_days, encoding="utf-8", utc=utc
            )
            handler.setFormatter(logging.Formatter("%(message)s"))
            handler.addFilter(SecretScrubber(secrets))
            self.logger.addHandler(handler)
            self.handler = handler

    def close(self) -> None:
        if self.handler is not None:
            self.logger.removeHandler(self.handler)
            self.handler.close()
            self.handler = None

    def write(self, record: dict[str, Any]) -> None:
        if self.handler is None:
            return
        self.lines += 1
        if isinstance(record.get("ts_ms"), int):
            record = {"ts": iso_utc(record["ts_ms"]), **record}
        self.logger.info("%s", json.dumps(to_jsonable(record), ensure_ascii=False, separators=(",", ":")))

    def fill(self, now_ms: int, event: ev.OrderUpdated, qty: Decimal, *, leg: str | None = None) -> None:
        """A fill booked on one of our orders: ``qty`` is what the engine newly booked."""
        self.write(
            {
                "ts_ms": now_ms,
                "kind": "fill",
                "symbol": event.symbol,
                "cid": event.client_order_id,
                "leg": leg,
                "side": event.side,
                "qty": plain(qty),
                "price": plain(event.last_price if event.last_qty > 0 else event.avg_price),
                "realised_pnl": plain(event.realized_pnl),
                "fee": plain(event.commission),
                "trade_id": event.trade_id or None,
                "status": event.status,
            }
        )

    def position_closed(
        self, now_ms: int, symbol: str, *, reason: str, message_id: int, realised: Decimal, fees: Decimal
    ) -> None:
        """A position of ours is flat again: its realised PnL and fees over all its orders."""
        self.write(
            {
                "ts_ms": now_ms,
                "kind": "position_closed",
                "symbol": symbol,
                "message_id": message_id,
                "reason": reason,
                "realised_pnl": plain(realised),
                "fees": plain(fees),
                "net": plain(realised - fees),
            }
        )

    def alert(self, now_ms: int, kind: str, severity: str, text: str, symbol: str | None) -> None:
        self.write(
            {
                "ts_ms": now_ms,
                "kind": "alert",
                "alert": kind,
                "severity": severity,
                "symbol": symbol,
                "text": text,
            }
        )

    def operator(
        self, now_ms: int, command: str, request_id: str, result: str, lines: Sequence[str] = ()
    ) -> None:
        """An operator command (pause, resume, flatten) and what came of it."""
        self.write(
            {
                "ts_ms": now_ms,
                "kind": "operator",
                "command": command,
                "id": request_id,
                "result": result,
                "lines": list(lines),
            }
        )

    def config_reload(self, now_ms: int, path: str, result: str, **fields: Any) -> None:
        """A config reload: ``requested`` (strategy changes sent to the engine, whose
        ``settings_applied``/``settings_refused`` follows), ``refused`` (with ``reason``),
        ``restart_needed`` (``keys``) or ``unchanged``."""
        self.write({"ts_ms": now_ms, "kind": "config_reload", "file": path, "result": result, **fields})

    def decisions(self, now_ms: int, event: ev.Event, commands: Iterable[cmd.Command]) -> None:
        """Log/Transitioned commands of one handled event, with the input that caused them."""
        source = type(event).__name__
        for c in commands:
            if isinstance(c, cmd.Log):
                self.write(
                    {
                        "ts_ms": now_ms,
                        "kind": c.kind,
                        "input": source,
                        "symbol": c.symbol,
                        "decision": c.reason,
                        "data": dict(c.data),
                    }
                )
            elif isinstance(c, cmd.Transitioned):
                self.write(
                    {
                        "ts_ms": now_ms,
                        "kind": "transition",
                        "input": source,
                        "machine": c.machine,
                        "symbol": c.symbol,
                        "transition": f"{c.source}->{c.dest}",
                        "trigger": c.trigger,
                        "reason": c.reason,
                    }
                )

    def order_outcome(self, now_ms: int, command: cmd.Command, outcomes: Iterable[ev.Event]) -> None:
        """W51-3: what was sent (parameters, attempt) and what the venue answered."""
        result = "no_answer"
        code: int | None = None
        error = ""
        for o in outcomes:
            if isinstance(o, (ev.OrderAccepted, ev.AlgoOrderAccepted)):
                result = "accepted"
            elif isinstance(o, ev.OrderRejected):
                result, code, error = "rejected", o.code, o.message
            elif isinstance(o, ev.CancelResult):
                result = "cancelled" if o.ok else ("gone" if o.gone else "cancel_failed")
                code, error = o.code, o.message
            elif isinstance(o, ev.OrderPrepared):
                result = "prepared" if o.ok else "prepare_failed"
                code, error = o.error_code, o.reason
            elif isinstance(o, ev.ExchangeSnapshot):
                result = "snapshot" if o.complete else "snapshot_incomplete"
        self.write(
            {
                "ts_ms": now_ms,
                "kind": "order",
                "command": type(command).__name__,
                "params": to_jsonable(command),
                "attempt": getattr(command, "attempt", 1),
                "result": result,
                "error_code": code,
                "error": error,
            }
        )
