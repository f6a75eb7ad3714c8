"""The decision log: one JSON line per decision (W51-1..3), rotated daily, kept 7 days.

Each line has ``ts_ms``, ``kind`` and the fields of what was decided: the engine's ``Log`` records
(input, decision, reason, data), ``Transitioned`` (machine, symbol, source, dest, trigger, reason)
and order outcomes (the order's parameters, the venue's error code and message, the attempt
number). Known secret values are scrubbed from every line before it is written.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fsm import commands as cmd
from fsm import events as ev
from fsm.runtime.store import to_jsonable

LOGGER_NAME = "shortfsm.decisions"
LOG_FILE = "shortfsm.jsonl"


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
        self.logger.info("%s", json.dumps(to_jsonable(record), ensure_ascii=False, separators=(",", ":")))

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
