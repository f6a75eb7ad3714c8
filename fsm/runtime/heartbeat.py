"""The heartbeat file (``var/heartbeat.json``): rewritten atomically every second by the daemon.

Content (``notes/RUNTIME.md``): ``now_ms``, ``pid``, ``price_source``, ``price_age_ms``, ``streams``,
``locks``, ``database`` ("ok" or "error") and ``last_event``. A watchdog (systemd, a cron job)
reads ``now_ms`` to tell a live daemon from a hung one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from fsm.engine import Engine

log = logging.getLogger(__name__)


def heartbeat_payload(
    engine: Engine,
    *,
    now_ms: int,
    streams: dict[str, str],
    database_ok: bool,
    last_event: dict[str, Any] | None,
    pid: int | None = None,
) -> dict[str, Any]:
    last = engine.last_ws_ms if engine.price_source == "WS" else engine.last_rest_ms
    return {
        "now_ms": now_ms,
        "pid": os.getpid() if pid is None else pid,
        "price_source": engine.price_source,
        "price_age_ms": None if last is None else max(0, now_ms - last),
        "streams": dict(streams),
        "locks": {name: model.state for name, model in engine.locks.items()},
        "database": "ok" if database_ok else "error",
        "last_event": last_event,
    }


def write_atomic(path: str | Path, payload: dict[str, Any]) -> bool:
    """Write JSON to a temporary file in the same directory and rename it over ``path``."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".heartbeat-", dir=target.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(payload, handle, separators=(",", ":"))
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as exc:
        log.error("heartbeat %s not written: %s", target, exc)
        return False
    return True
