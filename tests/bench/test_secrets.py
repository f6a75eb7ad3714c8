"""Secrets never reach disk: the demo runs with recognisable fake secrets in the environment, then
every file it wrote (decision log, process log, SQLite database and its WAL, heartbeat, alerts and
control rows) is scanned for them, raw and URL-encoded.

The Discord webhook is switched on and points at a loopback HTTP server that accepts every post, so
the alert sender really uses the secret URL during the run (and httpx logs its requests).
"""

from __future__ import annotations

import argparse
import logging
import sqlite3
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar
from urllib.parse import quote, quote_plus

import pytest

from fsm.ops import daemon_cli
from fsm.runtime.config import Secrets, load_config
from fsm.runtime.daemon import Endpoints

FAKE = {
    "BINANCE_API_KEY": "sfkFAKEapikey7f3c9e1d2b4a6c8e",
    "BINANCE_API_SECRET": "sfkFAKEapisecret0c1d2e3f4a5b6c7d",
    "TELEGRAM_API_HASH": "sfkFAKEhash0a1b2c3d4e5f60718293",
    "TELEGRAM_SESSION": "1sfkFAKEsessionBQAAAAAAAzZ9yXwV+u/t==",
    "TELEGRAM_PHONE": "+15550100999",
    "DISCORD_WEBHOOK_URL": "http://127.0.0.1:9/api/webhooks/4242424242/sfkFAKEwebhookToken_9f8e7d-6c5b",
}
WEBHOOK_TOKEN = "sfkFAKEwebhookToken_9f8e7d-6c5b"


class _Webhook(BaseHTTPRequestHandler):
    posts: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", "0")))
        _Webhook.posts.append(self.path)
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return


def _needles(webhook_url: str = FAKE["DISCORD_WEBHOOK_URL"]) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    values = {**FAKE, "DISCORD_WEBHOOK_URL": webhook_url, "webhook token": WEBHOOK_TOKEN}
    for name, value in values.items():
        for form, text in (("raw", value), ("url", quote(value, safe="")), ("form", quote_plus(value))):
            found[f"{name} ({form})"] = text.encode()
    return found


def _scan(root: Path, webhook_url: str) -> dict[str, list[str]]:
    """{file: [secret names found]} over every file under ``root`` and a logical dump of each database."""
    hits: dict[str, list[str]] = {}
    needles = _needles(webhook_url)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        blobs = [path.read_bytes()]
        if path.suffix in (".db", ".sqlite") and not path.name.endswith(("-wal", "-shm")):
            conn = sqlite3.connect(path)
            blobs.append("\n".join(conn.iterdump()).encode())
            conn.close()
        names = sorted({name for name, needle in needles.items() for blob in blobs if needle in blob})
        if names:
            hits[str(path.relative_to(root))] = names
    return hits


@pytest.mark.spec("N-26")
def test_demo_with_fake_secrets_writes_none_of_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Webhook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = FAKE["DISCORD_WEBHOOK_URL"].replace(":9/", f":{server.server_address[1]}/")
    for name, value in FAKE.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DISCORD_WEBHOOK_URL", url)
    monkeypatch.setenv("TELEGRAM_API_ID", "1234567")
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "config.yaml"
    config.write_text(
        "alerts:\n  discord: true\n  max_attempts: 2\n"
        "storage:\n  database: var/demo.db\n  log_dir: var/log\n  heartbeat_path: var/heartbeat.json\n",
        encoding="utf-8",
    )
    process_log = tmp_path / "var" / "process.log"
    process_log.parent.mkdir()
    handler = logging.FileHandler(process_log, encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        args = argparse.Namespace(config=str(config), speed=25.0, db=None, no_board=True)
        assert daemon_cli.cmd_demo(args) == 0
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)
        handler.close()
        server.shutdown()
        server.server_close()
    out = capsys.readouterr()
    (tmp_path / "var" / "stdout.txt").write_text(out.out + out.err, encoding="utf-8")

    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    # The demo keeps its own log and heartbeat beside its database, never the production ones.
    for expected in (
        "var/demo.db",
        "var/demo.db-heartbeat.json",
        "var/demo.db-log/shortfsm.jsonl",
        "var/process.log",
    ):
        assert expected in written
    db = sqlite3.connect(tmp_path / "var" / "demo.db")
    assert db.execute("SELECT count(*) FROM journal").fetchone()[0] > 0
    delivered = dict(db.execute("SELECT delivered, count(*) FROM alerts GROUP BY delivered").fetchall())
    assert delivered == {1: len(_Webhook.posts)} and _Webhook.posts  # every alert went to the webhook
    assert set(_Webhook.posts) == {"/api/webhooks/4242424242/" + WEBHOOK_TOKEN}
    db.close()
    # Nothing the daemon writes holds a secret: database (+ WAL), journal, alerts, control and status
    # rows, heartbeat, decision log, the process log, the demo's output. (The process log used to get
    # httpx's INFO request line with the full webhook URL; httpx now logs at WARNING only.)
    assert _scan(tmp_path, url) == {}
    process_log = (tmp_path / "var" / "process.log").read_text(encoding="utf-8")
    assert "alert" in process_log  # the log was written while alerts went out: the scan saw real lines


def test_config_and_secret_objects_never_show_the_values(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name, value in FAKE.items():
        monkeypatch.setenv(name, value)
    secrets = Secrets(_env_file=None)  # type: ignore[call-arg]
    assert secrets.binance_api_secret.get_secret_value() == FAKE["BINANCE_API_SECRET"]
    assert secrets.discord_webhook_url.get_secret_value() == FAKE["DISCORD_WEBHOOK_URL"]
    config = load_config(tmp_path / "missing.yaml")
    endpoints = Endpoints(
        rest_url="http://127.0.0.1:1",
        market_ws_url="ws://127.0.0.1:1/market",
        private_ws_url="ws://127.0.0.1:1/private",
        api_key=FAKE["BINANCE_API_KEY"],
        api_secret=FAKE["BINANCE_API_SECRET"],
    )
    shown = "\n".join(
        [
            *(repr(secrets), str(secrets), repr(config), str(config), repr(endpoints), str(endpoints)),
            *(repr(secrets.model_dump()), secrets.model_dump_json(), config.model_dump_json()),
        ]
    )
    leaked = sorted(name for name, needle in _needles().items() if needle.decode() in shown)
    assert leaked == []
