"""Issue #13, the configuration and CLI part: profiles decide the URLs, configuration fails loudly,
alerts that cannot arrive are named, and every subcommand explains itself. Each test runs the real
``shortfsm`` CLI in a subprocess, the way an operator does: files, environment, exit codes."""

from __future__ import annotations

import importlib.metadata
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import runtime_kit as kit

ROOT = Path(__file__).resolve().parents[2]
DEMO_URLS = (
    "REST https://demo-fapi.binance.com, market WS wss://demo-fstream.binance.com/market, "
    "private WS wss://demo-fstream.binance.com/private"
)
FAKE_KEYS = {
    "BINANCE_API_KEY": "fake-key",
    "BINANCE_API_SECRET": "fake-secret",
    "TELEGRAM_API_ID": "12345",
    "TELEGRAM_API_HASH": "fake-hash",
}
SECRET_LOOKING = "sk-9f3b2c-never-shown"


class RecordingProxy:
    """An HTTP(S) proxy on loopback that records the host of every request and forwards nothing:
    each is answered 502, or with ``hold`` left unanswered (the client waits; nothing leaves)."""

    def __init__(self, *, hold: bool = False) -> None:
        self.hold = hold
        self._server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        self.hosts: list[str] = []
        self.seen = threading.Event()
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            data = b""
            while b"\r\n" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
            parts = data.split(b"\r\n", 1)[0].decode("latin-1").split()
            if len(parts) >= 2:
                target = parts[1]
                host = target if parts[0] == "CONNECT" else target.split("/")[2]
                self.hosts.append(host)
                self.seen.set()
            if self.hold:
                self._held.append(conn)
            else:
                with conn:
                    conn.sendall(
                        b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    )

    def close(self) -> None:
        self._server.close()
        for conn in self._held:
            conn.close()


@pytest.fixture
def proxy() -> Iterator[RecordingProxy]:
    recording = RecordingProxy()
    yield recording
    recording.close()


def _env(home: Path, proxy: RecordingProxy | None = None, **extra: str) -> dict[str, str]:
    """A clean environment: no keys unless given; with ``proxy``, every HTTP(S)/WS request goes to it."""
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home), "PYTHONPATH": str(ROOT), "NO_PROXY": ""}
    if proxy is not None:
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
            env[name] = proxy.url
    env.update(extra)
    return env


def shortfsm(
    *args: str, cwd: Path, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fsm.ops.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


def _shipped_config(folder: Path) -> Path:
    """The repository's config.yaml, unchanged, in ``folder`` (its relative paths then live there)."""
    return _write(folder / "config.yaml", (ROOT / "config.yaml").read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------
# 1. Profiles decide URLs everywhere
# ---------------------------------------------------------------------------------------------


def test_check_profile_demo_with_the_shipped_config_prints_the_demo_urls(
    tmp_path: Path, proxy: RecordingProxy
) -> None:
    config = _shipped_config(tmp_path)
    result = shortfsm("check", "--profile", "demo", cwd=tmp_path, env=_env(tmp_path, proxy, **FAKE_KEYS))
    lines = result.stdout.splitlines()
    assert lines[:2] == [
        f"OK    config {config.name}: valid (profile demo)",
        f"OK    profile demo: {DEMO_URLS}",
    ]
    assert "OK    keys: present" in lines
    assert result.returncode == 1  # nothing answers: the venue check fails, nothing else is reached
    assert set(proxy.hosts) <= {"demo-fapi.binance.com:443"}
    assert "Traceback" not in result.stderr


def test_run_profile_demo_on_a_mainnet_file_never_talks_to_mainnet(tmp_path: Path) -> None:
    proxy = RecordingProxy(hold=True)  # the daemon waits on its first request until it is killed
    config = _write(
        tmp_path / "config.yaml",
        "binance:\n  profile: mainnet\n  allow_mainnet: false\n"
        "telegram:\n  session_path: tg.session\n  feed_path: none.jsonl\n",
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "fsm.ops.cli", "run", "--profile", "demo", "--config", str(config)],
        cwd=tmp_path,
        env=_env(tmp_path, proxy, **FAKE_KEYS),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while process.poll() is None and not proxy.seen.is_set() and time.monotonic() < deadline:
            proxy.seen.wait(0.1)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)  # held at its first request: nothing went anywhere
        _, err = process.communicate(timeout=10)
        proxy.close()
    assert f"shortfsm run: profile demo: {DEMO_URLS}" in err
    assert proxy.hosts, "the daemon made no request at all"
    assert all(
        host.startswith(("demo-fapi.binance.com:", "demo-fstream.binance.com:")) for host in proxy.hosts
    )


@pytest.mark.parametrize(
    ("binance", "refusal"),
    [
        (
            "  profile: demo\n  rest_url: https://fapi.binance.com\n",
            "refusing to start: the demo profile points at Binance mainnet (https://fapi.binance.com), "
            "real money; fix binance.rest_url / market_ws_url / private_ws_url in the config file, or use "
            "--profile mainnet with binance.allow_mainnet: true",
        ),
        (
            "  profile: sim\n  rest_url: http://127.0.0.1:9\n  market_ws_url: wss://FSTREAM.binance.com/market\n"
            "  private_ws_url: wss://fstream.binance.com./private\n",
            "refusing to start: the sim profile points at Binance mainnet (wss://FSTREAM.binance.com/market, "
            "wss://fstream.binance.com./private), real money; fix binance.rest_url / market_ws_url / "
            "private_ws_url in the config file, or use --profile mainnet with binance.allow_mainnet: true",
        ),
        (
            "  profile: mainnet\n",
            "refusing to start on mainnet: real money. Set binance.allow_mainnet: true in the config "
            "file if you mean it (and run `shortfsm check` first).",
        ),
    ],
    ids=["demo-with-mainnet-rest", "sim-with-mainnet-streams", "mainnet-not-allowed"],
)
def test_the_mainnet_guard_checks_the_effective_urls(
    tmp_path: Path, proxy: RecordingProxy, binance: str, refusal: str
) -> None:
    config = _write(tmp_path / "config.yaml", "binance:\n" + binance)
    env = _env(tmp_path, proxy, **FAKE_KEYS)
    run = shortfsm("run", "--config", str(config), cwd=tmp_path, env=env)
    assert (run.returncode, run.stderr.splitlines()[-1]) == (2, f"shortfsm: {refusal}")
    check = shortfsm("check", "--config", str(config), cwd=tmp_path, env=env)
    assert (check.returncode, check.stdout.splitlines()[-1]) == (1, f"FAIL  {refusal}")
    assert proxy.hosts == []


# ---------------------------------------------------------------------------------------------
# 6. Configuration that fails loudly
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["check", "run", "pause", "resume", "demo", "flatten"])
def test_a_named_config_that_does_not_exist_is_an_error(tmp_path: Path, command: str) -> None:
    extra = ["--yes"] if command == "flatten" else []
    result = shortfsm(command, "--config", "nope.yaml", *extra, cwd=tmp_path, env=_env(tmp_path))
    assert (result.returncode, result.stdout, result.stderr) == (
        2,
        "",
        "shortfsm: configuration file nope.yaml does not exist\n",
    )
    assert list(tmp_path.iterdir()) == []  # no database, no folder made


def test_without_config_yaml_only_the_demo_runs_on_defaults(tmp_path: Path) -> None:
    result = shortfsm("check", cwd=tmp_path, env=_env(tmp_path))
    assert (result.returncode, result.stdout, result.stderr) == (
        2,
        "",
        f"shortfsm: no config.yaml in {tmp_path}: pass --config PATH, or run from the folder that holds it\n",
    )
    demo = shortfsm("demo", "--help", cwd=tmp_path, env=_env(tmp_path))
    assert "without config.yaml it uses the built-in defaults" in " ".join(demo.stdout.split())


def test_relative_paths_and_env_are_read_beside_the_config_file(tmp_path: Path) -> None:
    home, elsewhere = tmp_path / "deploy", tmp_path / "elsewhere"
    elsewhere.mkdir()
    with kit.VenueThread() as venue:
        venue.add_route("GET", "/sapi/v1/account/apiRestrictions", {"enableWithdrawals": False})
        config = _write(
            home / "config.yaml",
            venue.config_text()
            + "storage:\n  database: data/db.sqlite\n  log_dir: data/log\n  heartbeat_path: data/hb.json\n"
            "telegram:\n  session_path: secrets/tg.session\n",
        )
        _write(
            home / ".env",
            f"BINANCE_API_KEY={kit.VenueThread.API_KEY}\nBINANCE_API_SECRET={kit.VenueThread.API_SECRET}\n"
            "TELEGRAM_API_ID=12345\nTELEGRAM_API_HASH=from-dotenv\n",
        )
        result = shortfsm("check", "--config", str(config), cwd=elsewhere, env=_env(tmp_path))
    lines = result.stdout.splitlines()
    assert lines[2:4] == [
        f"OK    database {home / 'data' / 'db.sqlite'} does not exist yet: "
        "`run` creates it (nothing to restore)",
        "OK    keys: present",
    ]
    assert "OK    USDT balance: wallet 10000.00000000, available 10000.00000000" in lines
    assert lines[-1] == (
        f"FAIL  Telegram session {home / 'secrets' / 'tg.session'} does not exist: run `shortfsm login` first"
    )
    assert result.returncode == 1
    assert list(elsewhere.iterdir()) == []


def test_login_reads_the_env_beside_the_config_file(tmp_path: Path) -> None:
    home = tmp_path / "deploy"
    config = _write(home / "config.yaml", "")
    env_file = _write(home / ".env", "TELEGRAM_API_ID=12345\nTELEGRAM_API_HASH=from-dotenv\n")
    result = shortfsm("login", "--config", str(config), cwd=tmp_path, env=_env(tmp_path))
    assert (result.returncode, result.stderr) == (
        2,
        f"login needs TELEGRAM_PHONE in the environment or {env_file} "
        "(api id and hash from https://my.telegram.org, phone in international format)\n",
    )


@pytest.mark.parametrize("command", ["check", "run", "login", "flatten"])
def test_an_invalid_variable_is_one_line_that_never_shows_its_value(
    tmp_path: Path, proxy: RecordingProxy, command: str
) -> None:
    config = _write(tmp_path / "config.yaml", "binance:\n  profile: demo\n")
    env_file = _write(tmp_path / ".env", f"TELEGRAM_API_ID={SECRET_LOOKING}\nTELEGRAM_API_HASH=x\n")
    extra = ["--yes", "--direct"] if command == "flatten" else []  # flatten with no daemon: on the venue
    result = shortfsm(command, "--config", str(config), *extra, cwd=tmp_path, env=_env(tmp_path, proxy))
    assert proxy.hosts == []
    prefix = "login: " if command == "login" else "shortfsm: "
    assert (result.returncode, result.stdout, result.stderr) == (
        2,
        "",
        f"{prefix}TELEGRAM_API_ID (from the environment or {env_file}) must be the numeric api id from "
        "https://my.telegram.org; its value is not shown\n",
    )


@pytest.mark.parametrize("broken", ["directory", "not-utf8"])
def test_an_unreadable_env_is_one_line_not_a_traceback(tmp_path: Path, broken: str) -> None:
    config = _write(tmp_path / "config.yaml", "")
    env_file = tmp_path / ".env"
    if broken == "directory":
        env_file.mkdir()
        expected = (
            f"shortfsm: {env_file}: cannot be read (Is a directory): it must be readable by the user "
            "running shortfsm (chmod 600, owned by that user)\n"
        )
    else:
        env_file.write_bytes(b"BINANCE_API_KEY=\xff\xfe\n")
        expected = f"shortfsm: {env_file}: not UTF-8 text\n"
    for command in ("check", "run"):
        result = shortfsm(command, "--config", str(config), cwd=tmp_path, env=_env(tmp_path))
        assert (result.returncode, result.stdout, result.stderr) == (2, "", expected)


def test_run_warns_on_a_readable_env_and_on_alerts_that_cannot_arrive(tmp_path: Path) -> None:
    config = _write(tmp_path / "config.yaml", "binance:\n  profile: demo\nalerts:\n  discord: true\n")
    env_file = _write(tmp_path / ".env", "DISCORD_WEBHOOK_URL=\n", mode=0o644)
    result = shortfsm("run", "--config", str(config), cwd=tmp_path, env=_env(tmp_path))
    assert result.returncode == 2  # no keys: refused before anything starts
    assert result.stderr.splitlines() == [
        f"INFO fsm.ops.daemon_cli shortfsm run: profile demo: {DEMO_URLS}",
        f"WARNING fsm.ops.daemon_cli {env_file} is readable by group/others (0o644): chmod 600 {env_file}",
        "WARNING fsm.ops.daemon_cli alerts.discord is true but DISCORD_WEBHOOK_URL is not set "
        f"(environment or {env_file}): alerts reach only the board and the decision log",
        "shortfsm: the demo profile needs BINANCE_API_KEY, BINANCE_API_SECRET, TELEGRAM_API_HASH, "
        "TELEGRAM_API_ID in the environment or .env",
    ]


def test_check_warns_when_discord_alerts_have_no_webhook(tmp_path: Path) -> None:
    config = _write(tmp_path / "config.yaml", "alerts:\n  discord: true\n")
    result = shortfsm("check", "--config", str(config), cwd=tmp_path, env=_env(tmp_path))
    assert result.returncode == 0
    assert result.stdout.splitlines()[1] == (
        "WARN  alerts.discord is true but DISCORD_WEBHOOK_URL is not set (environment or "
        f"{tmp_path / '.env'}): alerts reach only the board and the decision log"
    )
    with_hook = shortfsm(
        "check",
        "--config",
        str(config),
        cwd=tmp_path,
        env=_env(tmp_path, DISCORD_WEBHOOK_URL="https://discord.invalid/hook"),
    )
    assert not [line for line in with_hook.stdout.splitlines() if line.startswith("WARN")]


def test_a_typo_names_the_nearest_valid_key(tmp_path: Path) -> None:
    config = _write(tmp_path / "config.yaml", "strategy:\n  tp_pctt: 3\nbinance:\n  alow_mainnet: true\n")
    result = shortfsm("check", "--config", str(config), cwd=tmp_path, env=_env(tmp_path))
    assert (result.returncode, result.stderr) == (
        2,
        "configuration error:\n"
        f"{config}: strategy.tp_pctt: Extra inputs are not permitted; did you mean strategy.tp_pct?\n"
        f"{config}: binance.alow_mainnet: Extra inputs are not permitted; "
        "did you mean binance.allow_mainnet?\n",
    )


# ---------------------------------------------------------------------------------------------
# 9. alerts.telegram_operator_chat: refused with what to use instead (null still loads)
# ---------------------------------------------------------------------------------------------


def test_telegram_operator_chat_is_refused_unless_null(tmp_path: Path) -> None:
    config = _write(tmp_path / "config.yaml", "alerts:\n  telegram_operator_chat: -100123\n")
    result = shortfsm("check", "--config", str(config), cwd=tmp_path, env=_env(tmp_path))
    assert (result.returncode, result.stderr) == (
        2,
        "configuration error:\n"
        f"{config}: alerts.telegram_operator_chat: alert delivery to a Telegram chat is not supported: "
        "set it to null and use alerts.discord with DISCORD_WEBHOOK_URL "
        "(alerts also show on `shortfsm status` and in the log)\n",
    )
    _write(config, "alerts:\n  telegram_operator_chat: null\n")
    assert shortfsm("check", "--config", str(config), cwd=tmp_path, env=_env(tmp_path)).returncode == 0


# ---------------------------------------------------------------------------------------------
# 11/14. Clear words on the command line
# ---------------------------------------------------------------------------------------------

SUBCOMMANDS = [
    "replay",
    "report",
    "export",
    "data",
    "backtest",
    "diagram",
    "parse",
    "login",
    "sim-venue",
    "run",
    "demo",
    "check",
    "pause",
    "resume",
    "flatten",
    "status",
    "trades",
    "bench",
]


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_describes_itself(tmp_path: Path, command: str) -> None:
    result = shortfsm(command, "--help", cwd=ROOT, env=_env(tmp_path))
    assert result.returncode == 0
    blocks = result.stdout.split("\n\n")
    assert blocks[0].startswith(f"usage: shortfsm {command}")
    assert not blocks[1].startswith(("options:", "positional arguments:")), result.stdout


def test_version(tmp_path: Path) -> None:
    result = shortfsm("--version", cwd=tmp_path, env=_env(tmp_path))
    assert (result.returncode, result.stdout) == (0, f"shortfsm {importlib.metadata.version('shortfsm')}\n")


def test_sim_venue_on_a_busy_port_is_one_line(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        result = shortfsm(
            "sim-venue",
            "--port",
            str(port),
            "--api-key",
            "k",
            "--api-secret",
            "s",
            cwd=tmp_path,
            env=_env(tmp_path),
        )
    assert (result.returncode, result.stdout, result.stderr) == (
        2,
        "",
        f"shortfsm sim-venue: cannot listen on 127.0.0.1 (ports {port} and {port + 1}): Address already in "
        "use; choose another --port (or --host)\n",
    )


def test_replay_spec_ids_ignore_case(tmp_path: Path) -> None:
    lower = shortfsm("replay", "w55", "--venue", "double", "--json", cwd=tmp_path, env=_env(tmp_path))
    upper = shortfsm("replay", "W55", "--venue", "double", "--json", cwd=tmp_path, env=_env(tmp_path))
    assert (lower.returncode, lower.stdout) == (0, upper.stdout)
    assert '"W55"' in lower.stdout


# ---------------------------------------------------------------------------------------------
# The pieces the daemon reuses: a reload under --profile, the bundled feed
# ---------------------------------------------------------------------------------------------


def test_a_reload_under_a_profile_flag_reads_the_file_under_the_same_flag(tmp_path: Path) -> None:
    from fsm.runtime.config import load_config, restart_changes

    path = _write(
        tmp_path / "config.yaml", "binance:\n  profile: mainnet\n  rest_url: https://proxy.example\n"
    )
    running = load_config(path).for_profile("demo")
    assert running.binance.urls()[0] == "https://demo-fapi.binance.com"
    assert restart_changes(running, load_config(path)) == ()  # nothing changed: no "restart" warning
    _write(path, "binance:\n  profile: mainnet\n  recv_window_ms: 6000\n")
    assert restart_changes(running, load_config(path)) == ("binance.recv_window_ms",)
    # Started without a flag, the file's own profile change still says "restart".
    assert restart_changes(load_config(path), load_config(path).for_profile("demo")) == ("binance.profile",)


def test_paths_resolve_beside_the_file_and_the_bundled_feed_is_found(tmp_path: Path) -> None:
    from fsm.runtime.config import load_config

    path = _write(tmp_path / "conf" / "config.yaml", "storage:\n  database: /abs/db.sqlite\n")
    config = load_config(path)
    assert (config.storage.database, config.storage.log_dir, config.telegram.session_path) == (
        "/abs/db.sqlite",
        str(tmp_path / "conf" / "var" / "log"),
        str(tmp_path / "conf" / "var" / "telegram.session"),
    )
    assert config.telegram.feed_path == str(ROOT / "specs" / "feeds" / "demo.jsonl")
    _write(tmp_path / "conf" / "specs" / "feeds" / "demo.jsonl", "")
    assert load_config(path).telegram.feed_path == str(tmp_path / "conf" / "specs" / "feeds" / "demo.jsonl")


@pytest.mark.parametrize("age", ["5", "301", "-1", "soon"])
def test_a_read_ahead_age_that_would_spend_the_weight_or_make_no_sense_is_refused(
    tmp_path: Path, age: str
) -> None:
    """D-72: 0 reads at the trigger; 20 to 300 s reads ahead (a read every 10 s at most, so a
    shorter life would rarely serve). Anything else stops the run with the key named, no traceback."""
    config = _write(tmp_path / "config.yaml", f"binance:\n  account_read_max_age_seconds: {age}\n")
    result = shortfsm("run", "--config", str(config), cwd=tmp_path, env=_env(tmp_path))
    assert result.returncode == 2 and result.stdout == ""
    assert "binance.account_read_max_age_seconds" in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[0] == "configuration error:"
