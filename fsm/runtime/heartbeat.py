"""The heartbeat file (``var/heartbeat.json``): rewritten atomically every second by the daemon.

Content (``notes/RUNTIME.md``): ``now_ms`` (the run's clock, compressed in sim), ``wall_ms`` (the
system clock when written), ``pid``, ``started_ms`` (wall), ``profile``, ``urls`` (the venue's REST
and WebSocket URLs), ``price_source``, ``price_age_ms``, ``streams`` (state of each connection),
``locks``, ``database`` (its path; ``database_ok``) and ``last_event``. The same payload is the
``heartbeat`` status row of the database, which ``shortfsm status`` reads (``fsm.runtime.liveness``):
alive when ``pid`` runs and ``wall_ms`` is fresh.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from fsm.reader import EngineReader

log = logging.getLogger(__name__)


def heartbeat_payload(
    engine: EngineReader,
    *,
    now_ms: int,
    streams: dict[str, str],
    database_ok: bool,
    last_event: dict[str, Any] | None,
    pid: int | None = None,
    profile: str | None = None,
    urls: dict[str, str] | None = None,
    started_ms: int | None = None,
    database: str | None = None,
) -> dict[str, Any]:
    last = engine.last_ws_ms if engine.price_source == "WS" else engine.last_rest_ms
    return {
        "now_ms": now_ms,
        "wall_ms": int(time.time() * 1000),
        "pid": os.getpid() if pid is None else pid,
        "started_ms": started_ms,
        "profile": profile,
        "urls": dict(urls or {}),
        "price_source": engine.price_source,
        "price_age_ms": None if last is None else max(0, now_ms - last),
        "streams": dict(streams),
        "locks": {name: model.state for name, model in engine.locks.items()},
        "database": "ok" if database_ok else "error",
        "database_path": database,
        "last_event": last_event,
        "exposure": exposure(engine),
    }


def exposure(engine: EngineReader) -> dict[str, list[str]]:
    """The engine's open orders and positions, one line each (what ``flatten`` lists first)."""
    orders = [
        f"{o.cid} ({symbol} {o.side} {o.kind} {o.qty}"
        + (f" trigger {o.price})" if o.is_algo else f" @ {o.price})" if o.price > 0 else ")")
        for symbol, model in sorted(engine.symbols.items())
        for o in model.open_orders()
    ]
    positions = [
        f"{symbol} -{model.position()}"
        for symbol, model in sorted(engine.symbols.items())
        if model.position() > 0
    ]
    return {"orders": orders, "positions": positions}


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
