"""Helpers for the test_history_* modules (no tests here): a loopback stand-in for data.binance.vision,
in the test, with ``.CHECKSUM`` files, Range support and injected faults; plus CSV builders."""

from __future__ import annotations

import hashlib
import io
import json
import threading
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

from binance.history.archive import archive_path

KLINE_HEADER = (
    "open_time,open,high,low,close,volume,close_time,quote_volume,count,taker_buy_volume,"
    "taker_buy_quote_volume,ignore"
)
FUNDING_HEADER = "calc_time,funding_interval_hours,last_funding_rate"
MIN = 60_000
DAY = 86_400_000


def ms(text: str) -> int:
    """``2026-01-03`` or ``2026-01-03T12:00`` (UTC) as epoch ms."""
    fmt = "%Y-%m-%dT%H:%M" if "T" in text else "%Y-%m-%d"
    return int(datetime.strptime(text, fmt).replace(tzinfo=UTC).timestamp() * 1000)


def kline_prices(t: int, *, mark: bool = False) -> tuple[str, str, str, str]:
    """Deterministic decimal strings for the candle opening at ``t`` (8 decimals for marks)."""
    i = t // MIN
    if mark:
        o = f"{(9_500_000_000_000 + i % 99_991 * 1_234) / 100_000_000:.8f}"
        h = f"{(9_500_000_000_000 + i % 99_991 * 1_234 + 777) / 100_000_000:.8f}"
        lo = f"{(9_500_000_000_000 + i % 99_991 * 1_234 - 555) / 100_000_000:.8f}"
        c = f"{(9_500_000_000_000 + i % 99_991 * 1_234 + 123) / 100_000_000:.8f}"
        return o, h, lo, c
    o = f"{95000 + (i % 997) / 10:.1f}"
    h = f"{95001 + (i % 997) / 10:.1f}"
    lo = f"{94999 + (i % 997) / 10:.1f}"
    c = f"{95000.5 + (i % 997) / 10:.1f}"
    return o, h, lo, c


def kline_csv(
    start: int, end: int, *, header: bool, skip: frozenset[int] = frozenset(), mark: bool = False
) -> str:
    lines = [KLINE_HEADER] if header else []
    for t in range(start, end, MIN):
        if t in skip:
            continue
        o, h, lo, c = kline_prices(t, mark=mark)
        lines.append(f"{t},{o},{h},{lo},{c},12.345,{t + MIN - 1},1171234.5,321,6.1,585617.2,0")
    return "\n".join(lines) + "\n"


def funding_csv(start: int, end: int, *, header: bool) -> str:
    lines = [FUNDING_HEADER] if header else []
    for n, t in enumerate(range(start, end, 8 * 3_600_000)):
        lines.append(f"{t},8,{0.0001 + n * 0.00000123:.8f}")
    return "\n".join(lines) + "\n"


def zipped(name: str, text: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(name, text)
    return buf.getvalue()


@dataclass
class Seen:
    path: str
    range: str | None


@dataclass
class Archive:
    """Files by URL path (``/data/...``); faults by path."""

    files: dict[str, bytes] = field(default_factory=dict)
    drop_after: dict[str, int] = field(default_factory=dict)  # cut the body after N bytes, once
    ignore_range: set[str] = field(default_factory=set)
    seen: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def add(self, dataset: str, symbol: str, period: str, text: str, *, bad_checksum: bool = False) -> str:
        path = "/" + archive_path(dataset, symbol, period)
        name = path.rsplit("/", 1)[-1]
        payload = zipped(name.replace(".zip", ".csv"), text)
        digest = hashlib.sha256(b"tampered" if bad_checksum else payload).hexdigest()
        self.files[path] = payload
        self.files[path + ".CHECKSUM"] = f"{digest}  {name}\n".encode()
        return path

    def paths(self) -> list[str]:
        with self.lock:
            return [s.path for s in self.seen]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    archive: Archive

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        a = self.archive
        path = self.path.split("?", 1)[0]
        rng = self.headers.get("Range")
        with a.lock:
            a.seen.append(Seen(path, rng))
            body = a.files.get(path)
            cut = a.drop_after.pop(path, None) if body is not None else None
        if body is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        status, start = 200, 0
        if rng and path not in a.ignore_range and rng.startswith("bytes="):
            start = int(rng[6:].split("-", 1)[0])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        part = body[start:]
        self.send_response(status)
        self.send_header("Content-Length", str(len(part)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.end_headers()
        if cut is not None:
            self.wfile.write(part[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(part)


@contextmanager
def serve(archive: Archive) -> Iterator[Archive]:
    handler = type("Handler", (_Handler,), {"archive": archive})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    archive.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield archive
    finally:
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------------------------------------
# Archive + USD-M REST on one loopback port, scriptable (test_history_attack.py)
# ---------------------------------------------------------------------------------------------

RestHook = Callable[[str, dict[str, str]], "tuple[int, bytes, dict[str, str]] | None"]


def kline_row(t: int) -> list[Any]:
    """A REST kline row for the candle at ``t`` with the same prices as ``kline_csv``."""
    o, h, lo, c = kline_prices(t)
    return [t, o, h, lo, c, "12.345", t + MIN - 1, "1171234.5", 321, "6.1", "585617.2", "0"]


@dataclass
class Venue:
    """``Archive`` files plus ``/fapi/v1/klines|markPriceKlines|fundingRate`` answered from
    ``kline_prices`` (every minute, minus ``rest_missing``); ``rest_hook(path, query)`` may answer
    first with ``(status, body, headers)``."""

    archive: Archive = field(default_factory=Archive)
    rest_hook: RestHook | None = None
    rest_missing: set[int] = field(default_factory=set)
    rest_calls: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    url: str = ""

    def answer(self, path: str, qs: dict[str, str]) -> tuple[int, bytes, dict[str, str]]:
        with self.archive.lock:
            self.rest_calls.append((path, qs))
        if self.rest_hook is not None:
            got = self.rest_hook(path, qs)
            if got is not None:
                return got
        if path == "/fapi/v1/time":
            return 200, b'{"serverTime": 0}', {}
        if path in ("/fapi/v1/klines", "/fapi/v1/markPriceKlines"):
            s, e, lim = int(qs["startTime"]), int(qs["endTime"]), int(qs.get("limit", 500))
            out: list[Any] = []
            t = -(-s // MIN) * MIN
            while t <= e and len(out) < lim:
                if t not in self.rest_missing:
                    out.append(kline_row(t))
                t += MIN
            return 200, json.dumps(out).encode(), {"X-MBX-USED-WEIGHT-1M": "10"}
        if path == "/fapi/v1/fundingRate":
            s, e, lim = int(qs["startTime"]), int(qs["endTime"]), int(qs.get("limit", 100))
            eight = 8 * 3_600_000
            rows: list[dict[str, Any]] = []
            t = -(-s // eight) * eight
            while t <= e and len(rows) < lim:
                rows.append(
                    {
                        "symbol": qs["symbol"],
                        "fundingTime": t,
                        "fundingRate": "0.0001",
                        "markPrice": "95000.1",
                    }
                )
                t += eight
            return 200, json.dumps(rows).encode(), {}
        return 404, b'{"code":-1121,"msg":"Invalid symbol."}', {}


@contextmanager
def serve_venue(venue: Venue) -> Iterator[Venue]:
    archive = venue.archive

    class Handler(_Handler):
        def do_GET(self) -> None:
            u = urlparse(self.path)
            if not u.path.startswith("/fapi/"):
                super().do_GET()
                return
            status, body, headers = venue.answer(u.path, {k: v[0] for k, v in parse_qs(u.query).items()})
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    Handler.archive = archive
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    venue.url = archive.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield venue
    finally:
        server.shutdown()
        server.server_close()
