"""``shortfsm run | demo | check | pause | resume | flatten``: the daemon and its operator controls."""

from __future__ import annotations

import argparse
import asyncio
import logging
import secrets
import sqlite3
import stat
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live

from binance import parse
from binance.errors import AuthFailed, BinanceError
from binance.rest import BinanceRest
from fsm import commands as cmd
from fsm import events as ev
from fsm.runtime.config import (
    AppConfig,
    ConfigError,
    ConfigMissing,
    Secrets,
    env_file_for,
    load_cli_config,
    load_secrets,
)
from fsm.runtime.daemon import (
    DEMO_MARKER,
    Daemon,
    RunOptions,
    StartupRefused,
    account_exposure,
    check_profile,
    flatten_account,
    run_daemon,
)
from fsm.runtime.feeds import DEMO_FEED, REPO_ROOT, PricePath, demo_path
from fsm.runtime.keys import can_withdraw, spot_api_url
from fsm.runtime.liveness import Liveness, liveness, lock_held, utc
from fsm.runtime.store import Store, StoreError, read_control_ack, request_control

log = logging.getLogger(__name__)
DEMO_DEFAULT_SPEED = 2.0
TELEGRAM_CHECK_S = 30.0
# ``(session path, api id, api hash) -> client``; None: telethon.TelegramClient (tests set a double).
telegram_client_factory: Callable[[str, int, str], Any] | None = None


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    profile_help = "override binance.profile (the file's URL overrides then do not apply)"
    run = subparsers.add_parser(
        "run",
        help="run the daemon (headless, JSON decision log)",
        description="Run the trading daemon in the foreground until SIGTERM/SIGINT (SIGHUP re-reads the "
        "config file). Prints the profile and venue URLs it uses; refuses mainnet unless allowed.",
    )
    _common(run)
    run.add_argument("--profile", choices=("sim", "demo", "mainnet"), help=profile_help)
    run.add_argument("--speed", type=float, default=1.0, help="sim profile only: compress time N x")
    run.add_argument(
        "--feed-origin-ms",
        type=int,
        help="sim profile only: epoch ms the feed's at_ms count from (default: the start; a restart "
        "against an external sim venue passes the venue's origin)",
    )
    run.set_defaults(func=cmd_run)

    demo = subparsers.add_parser(
        "demo",
        help="the whole story on the simulated venue, in about a minute",
        description="Replay the bundled feed against the simulated venue on loopback and print the "
        "story and its PnL. Needs no keys; without config.yaml it uses the built-in defaults.",
    )
    _common(demo)
    demo.add_argument("--speed", type=float, default=DEMO_DEFAULT_SPEED, help="compress time N x")
    demo.add_argument("--db", help="database to (re)create (default: storage.database)")
    demo.add_argument("--no-board", action="store_true", help="print transitions instead of the board")
    demo.set_defaults(func=cmd_demo, config_optional=True)

    check = subparsers.add_parser(
        "check",
        help="preflight: config, keys, position mode, clock, permissions",
        description="Check everything `run` needs without trading: the config and its effective profile "
        "and URLs, file permissions, the database, keys, clock skew, position mode, balance, the "
        "withdrawal permission and both Telegram channels. Exit 0 when nothing failed, 1 otherwise.",
    )
    _common(check)
    check.add_argument("--profile", choices=("sim", "demo", "mainnet"), help=profile_help)
    check.set_defaults(func=cmd_check)

    for name, helptext, text in (
        (
            "pause",
            "no new entries (exits keep working)",
            "Ask the running daemon to take no new entries; open positions keep their exits.",
        ),
        ("resume", "allow entries", "Ask the running daemon to take new entries again."),
    ):
        p = subparsers.add_parser(name, help=helptext, description=text)
        _common(p)
        _wait(p)
        p.set_defaults(func=cmd_pause if name == "pause" else cmd_resume)

    flatten = subparsers.add_parser(
        "flatten",
        help="cancel every order and close every position at market",
        description="Cancel every open order and close every position at market, then keep entries "
        "paused until `shortfsm resume`. Asks for confirmation unless --yes.",
    )
    _common(flatten)
    flatten.add_argument("--profile", choices=("sim", "demo", "mainnet"), help=profile_help)
    flatten.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    flatten.add_argument(
        "--direct",
        action="store_true",
        help="with no daemon running: cancel and close on the profile's venue from this command",
    )
    _wait(flatten, FLATTEN_WAIT_S)
    flatten.set_defaults(func=cmd_flatten)


def _wait(p: argparse.ArgumentParser, default: float | None = None) -> None:
    seconds = CONTROL_WAIT_S if default is None else default
    p.add_argument(
        "--wait",
        type=float,
        default=seconds,
        metavar="SECONDS",
        help=f"how long to wait for the daemon's acknowledgement (default {seconds:g})",
    )


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        default=None,
        help="configuration file (default: config.yaml in the working directory); relative paths "
        "in it and the .env beside it are read from its folder",
    )


def _load(args: argparse.Namespace) -> AppConfig | None:
    """The config file, validated, with its paths resolved; None (after one clear message) when it
    cannot be used (``load_cli_config``: ``demo`` alone runs without a config.yaml)."""
    try:
        config, path = load_cli_config(args.config, optional=getattr(args, "config_optional", False))
    except ConfigMissing as exc:
        print(f"shortfsm: {exc}", file=sys.stderr)
        return None
    except ConfigError as exc:
        print(f"configuration error:\n{exc}", file=sys.stderr)
        return None
    args.config = str(path)
    return config


def _secrets(args: argparse.Namespace) -> Secrets | None:
    """Credentials from the environment and the ``.env`` beside the config file; None (after one
    line that never shows a value) when that file cannot be read or a variable is invalid."""
    try:
        return load_secrets(env_file_for(args.config))
    except ConfigError as exc:
        print(f"shortfsm: {exc}", file=sys.stderr)
        return None


def _venue_text(config: AppConfig) -> str:
    """The effective profile and where it trades, as ``check`` and ``run`` print it."""
    binance = config.binance
    rest, market, private = binance.urls()
    if binance.profile == "sim" and not rest:
        return "profile sim: the simulated venue inside the daemon (loopback)"
    return f"profile {binance.profile}: REST {rest}, market WS {market or '-'}, private WS {private or '-'}"


def _warnings(config: AppConfig, config_path: Path, secrets_: Secrets) -> list[str]:
    """What ``check`` and ``run`` warn about without refusing: readable secrets, alerts that cannot arrive."""
    session = Path(config.telegram.session_path)
    if not session.name.endswith(".session"):
        session = session.with_name(session.name + ".session")
    warnings = loose_permissions([env_file_for(config_path), config_path, session])
    if config.alerts.discord and not secrets_.discord_webhook_url.get_secret_value():
        warnings.append(
            "alerts.discord is true but DISCORD_WEBHOOK_URL is not set (environment or "
            f"{env_file_for(config_path)}): alerts reach only the board and the decision log"
        )
    return warnings


def _feed_path(config: AppConfig) -> Path:
    path = Path(config.telegram.feed_path)
    if not path.exists() and not path.is_absolute() and (REPO_ROOT / path).exists():
        return REPO_ROOT / path
    return path


def _price_path(feed: Path) -> PricePath | None:
    try:
        return demo_path() if feed.resolve() == DEMO_FEED.resolve() else None
    except OSError:
        return None


# ---------------------------------------------------------------------------------------------
# run
# ---------------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    loaded = _load(args)
    secrets_ = _secrets(args) if loaded is not None else None
    if loaded is None or secrets_ is None:
        return 2
    config = loaded.for_profile(args.profile)
    profile = config.binance.profile
    feed = _feed_path(config)
    options = RunOptions(
        profile=profile,
        speed=args.speed,
        feed_path=str(feed),
        path=_price_path(feed),
        config_path=args.config,
        feed_origin_ms=args.feed_origin_ms,
    )
    _daemon_logging()
    log.info("shortfsm run: %s", _venue_text(config))
    for warning in _warnings(config, Path(args.config), secrets_):
        log.warning("%s", warning)
    try:
        return asyncio.run(run_daemon(config, secrets_, options))
    except StartupRefused as exc:
        print(f"shortfsm: {exc}", file=sys.stderr)
        return 2
    except StoreError as exc:
        print(f"shortfsm: database: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a path of the config that cannot be used: one line, never a traceback
        where = exc.filename if exc.filename is not None else ""
        print(f"shortfsm: cannot use {where}: {exc.strerror or exc}", file=sys.stderr)
        return 2


def _daemon_logging() -> None:
    root = logging.getLogger()
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    for handler in root.handlers:
        handler.setLevel(logging.INFO)


# ---------------------------------------------------------------------------------------------
# demo
# ---------------------------------------------------------------------------------------------


def prepare_demo_db(path: Path) -> None:
    """A demo database is recreated; any other database at ``path`` is refused (never clobbered)."""
    if not path.exists():
        return
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            row = conn.execute("SELECT value FROM status WHERE key = ?", [DEMO_MARKER]).fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        row = None
    if row is None:
        raise StoreError(f"{path} exists and is not a demo database: pass --db to choose another file")
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def demo_finished(path: PricePath, grace_ms: int = 3_000, cap_ms: int = 60_000) -> Any:
    """Stop rule: the feed is played, the price path is over and nothing is active (or a hard cap)."""

    def done(daemon: Daemon) -> bool:
        source = daemon.source
        origin = getattr(source, "origin_ms", None)
        if origin is None:
            return False
        now = daemon.clock.now_ms()
        end = origin + max(path.end_ms, getattr(source, "last_at_ms", 0))
        if now > end + cap_ms:
            return True
        return (
            bool(source and source.finished) and not daemon.engine.active_symbols() and now > end + grace_ms
        )

    return done


def demo_summary(db_path: Path) -> dict[str, Any]:
    """Trades (positions closed), realised PnL, fees and the net, from the demo's database (the
    ledger's figures: ``shortfsm trades`` and ``status`` show the same)."""
    from fsm.runtime.ledger import money, open_readonly, read_ledger

    conn = open_readonly(db_path)
    try:
        book = read_ledger(conn)
        filtered = conn.execute(
            "SELECT symbol, reason FROM decisions WHERE kind IN ('leading_rejected', 'symbol_mapping') "
            "AND reason NOT IN ('ok') ORDER BY id"
        ).fetchall()
    finally:
        conn.close()
    total = book.totals(0)
    return {
        "trades": [
            {"symbol": t.symbol, "reason": t.close_reason} for t in book.trades if t.closed_ms is not None
        ],
        "filtered": [{"symbol": s, "reason": r} for s, r in filtered],
        "realised_pnl": money(total.realized_pnl),
        "fees": money(total.fees),
        "net": money(total.net),
    }


def summary_text(summary: dict[str, Any], wall_s: float, db_path: Path) -> str:
    filtered = ", ".join(f"{f['symbol']} ({f['reason']})" for f in summary["filtered"])
    trades = ", ".join(f"{t['symbol']} ({t['reason']})" for t in summary["trades"])
    return "\n".join(
        [
            "",
            f"filtered signals: {filtered or 'none'}",
            f"trades: {len(summary['trades'])}: {trades}",
            f"realised PnL {summary['realised_pnl']} USDT, fees {summary['fees']} USDT, "
            f"net {summary['net']} USDT",
            f"wall time {wall_s:.1f} s; database {db_path} (`shortfsm status` shows it)",
        ]
    )


STORY_LOGS = {"leading_rejected", "leading_dropped", "risk_received", "order_failed"}


def story_lines(event: ev.Event, commands: list[cmd.Command]) -> list[str]:
    """What the demo prints for one handled event: transitions, filtered signals, fills, alerts."""
    lines: list[str] = []
    if isinstance(event, ev.OrderUpdated) and event.status == "PARTIALLY_FILLED" and event.last_qty > 0:
        lines.append(
            f"{event.symbol:<14} partial fill {event.last_qty} @ {event.last_price} ({event.client_order_id})"
        )
    for c in commands:
        if isinstance(c, cmd.Transitioned):
            lines.append(f"{cmd.who_moved(c.machine, c.symbol):<14} {c.source} -> {c.dest}  ({c.reason})")
        elif isinstance(c, cmd.Log) and (
            c.kind in STORY_LOGS or (c.kind == "symbol_mapping" and c.reason != "ok")
        ):
            lines.append(f"{c.symbol or '-':<14} {c.kind}: {c.reason}")
        elif isinstance(c, cmd.Notify):
            lines.append(f"{'alert':<14} {c.text}")
    return lines


def cmd_demo(args: argparse.Namespace) -> int:
    config = _load(args)
    if config is None:
        return 2
    db_path = Path(args.db or config.storage.database)
    if lock_held(db_path) or liveness(db_path).alive:
        print(
            f"shortfsm demo: a daemon is running on {db_path}: the demo never touches it; pass --db to "
            "choose another file",
            file=sys.stderr,
        )
        return 2
    try:
        prepare_demo_db(db_path)
    except StoreError as exc:
        print(f"shortfsm demo: {exc}", file=sys.stderr)
        return 2
    path = demo_path()
    started = time.monotonic()
    board = None if args.no_board or not sys.stdout.isatty() else _board_module()
    console = Console(highlight=False)

    def show(event: ev.Event, commands: list[cmd.Command]) -> None:
        for line in story_lines(event, commands):
            console.print(f"  {time.monotonic() - started:6.1f}s  {line}", markup=False)

    options = RunOptions(
        profile="sim",
        speed=args.speed,
        feed_path=str(DEMO_FEED),
        path=path,
        database=str(db_path),
        stop_when=demo_finished(path),
        observer=show,
        demo=True,
    )
    console.print(f"shortfsm demo: simulated venue on loopback, bundled feed, {args.speed:g}x time")
    try:
        code = asyncio.run(_demo(demo_config(config, db_path), db_path, options, board, console))
    except StartupRefused as exc:  # a daemon took the database in the meantime
        print(f"shortfsm demo: {exc}", file=sys.stderr)
        return 2
    summary = demo_summary(db_path)
    console.print(summary_text(summary, time.monotonic() - started, db_path), markup=False)
    return code


def demo_config(config: AppConfig, db_path: Path) -> AppConfig:
    """The demo writes its own files beside its database: the decision log in ``<db>-log/`` and the
    heartbeat in ``<db>-heartbeat.json``, never the production log or heartbeat."""
    storage = config.storage.model_copy(
        update={
            "database": str(db_path),
            "log_dir": f"{db_path}-log",
            "heartbeat_path": f"{db_path}-heartbeat.json",
        }
    )
    return config.model_copy(update={"storage": storage})


def _board_module() -> Any:
    """``fsm.ops.board`` when it is installed (the live board), else None (plain lines)."""
    try:
        import fsm.ops.board as board
    except ImportError:
        return None
    has_api = hasattr(board, "load_board_state") and hasattr(board, "render_board")
    return board if has_api else None


async def _demo(config: AppConfig, db_path: Path, options: RunOptions, board: Any, console: Console) -> int:
    if not db_path.exists():  # made here: marked as the demo's own (``run`` removes the mark)
        store = await Store.open(db_path)
        await store.set_status(DEMO_MARKER, "1", 0)
        await store.close()
    daemon = asyncio.create_task(run_daemon(config, Secrets(_env_file=None), options))  # type: ignore[call-arg]
    if board is None:
        return await daemon
    with Live(console=console, auto_refresh=False, transient=False) as live:
        while not daemon.done():
            state = board.load_board_state(db_path)
            live.update(
                board.render_board(state.view, state.transitions, state.alerts, problem=state.problem),
                refresh=True,
            )
            await asyncio.wait({daemon}, timeout=1.0)
    return daemon.result()


# ---------------------------------------------------------------------------------------------
# check
# ---------------------------------------------------------------------------------------------


def loose_permissions(paths: list[Path]) -> list[str]:
    """Files readable by group or others (secrets, session, config)."""
    warnings = []
    for path in paths:
        try:
            mode = path.stat().st_mode
        except OSError:
            continue
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            warnings.append(f"{path} is readable by group/others ({oct(mode & 0o777)}): chmod 600 {path}")
    return warnings


def cmd_check(args: argparse.Namespace) -> int:
    loaded = _load(args)
    secrets_ = _secrets(args) if loaded is not None else None
    if loaded is None or secrets_ is None:
        return 2
    config = loaded.for_profile(args.profile)
    ok = asyncio.run(preflight(config, secrets_, config.binance.profile, config_path=Path(args.config)))
    return 0 if ok else 1


async def preflight(config: AppConfig, secrets_: Secrets, profile: str, *, config_path: Path) -> bool:
    """``shortfsm check``: one line per check (``OK``, ``WARN``, ``SKIP`` or ``FAIL``); False when
    any check failed. Against the venue: clock skew, the API key, position mode, balance and the
    withdrawal permission."""
    config = config.for_profile(profile)
    print(f"OK    config {config_path}: valid (profile {profile})")
    if profile != "sim" or config.binance.rest_url:
        print(f"OK    {_venue_text(config)}")
    for warning in _warnings(config, config_path, secrets_):
        print(f"WARN  {warning}")
    ok = _check_database(Path(config.storage.database))
    try:
        check_profile(config, profile, secrets_)
    except StartupRefused as exc:
        print(f"FAIL  {exc}")
        return False
    if profile == "sim":
        print("OK    sim profile: the simulated venue runs inside the daemon and needs no keys")
        return ok
    print("OK    keys: present")
    venue_ok = await _check_venue(config, secrets_, profile)
    telegram_ok = await _check_telegram(config, secrets_)
    return venue_ok and telegram_ok and ok


def _check_database(path: Path) -> bool:
    """Read-only: a corrupt file fails here before ``run`` refuses it."""
    if not path.exists():
        print(f"OK    database {path} does not exist yet: `run` creates it (nothing to restore)")
        return True
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        print(f"FAIL  database {path}: not a usable shortfsm database ({exc}); move it aside to start fresh")
        return False
    print(f"OK    database {path}: schema {row[0] if row else 'none'}")
    return True


MAX_CLOCK_SKEW_MS = 1000  # receipt times decide the closed candle (N-08) and a signal's age (N-27)


async def _check_venue(config: AppConfig, secrets_: Secrets, profile: str) -> bool:
    rest_url, _, _ = config.binance.urls()
    ok = True
    async with BinanceRest(
        api_key=secrets_.binance_api_key.get_secret_value(),
        api_secret=secrets_.binance_api_secret.get_secret_value(),
        base_url=rest_url,
        recv_window_ms=config.binance.recv_window_ms,
    ) as rest:
        try:
            before = int(time.time() * 1000)
            server = await rest.server_time()
            after = int(time.time() * 1000)
        except BinanceError as exc:  # a connection failure names the host: "<host> unreachable: ..."
            print(
                f"FAIL  venue {rest_url}: {exc.msg}"
                + (f" (HTTP {exc.http_status})" if exc.http_status else "")
            )
            return False
        skew = server - (before + after) // 2
        if abs(skew) <= MAX_CLOCK_SKEW_MS:
            print(f"OK    clock skew vs {rest_url}/fapi/v1/time: {skew} ms")
        else:
            print(
                f"FAIL  clock skew vs {rest_url}/fapi/v1/time: {skew} ms (more than {MAX_CLOCK_SKEW_MS} ms): "
                "synchronise the system clock (NTP)"
            )
            ok = False
        try:
            mode = parse.position_mode_from_rest(await rest.position_mode())
        except AuthFailed as exc:
            print(
                f"FAIL  API key refused by {rest_url} ({exc.code} {exc.msg}): check BINANCE_API_KEY and "
                "BINANCE_API_SECRET, the key's IP restriction and its Futures permission"
            )
            return False
        except (BinanceError, KeyError, ValueError) as exc:
            print(f"FAIL  position mode unreadable: {exc}")
            return False
        print(f"OK    position mode: {mode} ({POSITION_MODE_NOTE[mode]})")
        try:
            wallet, available = parse.balance_from_rest(await rest.balance(), "USDT")
            print(f"OK    USDT balance: wallet {wallet}, available {available}")
        except (BinanceError, KeyError, ValueError) as exc:
            print(f"FAIL  balance unreadable: {exc}")
            ok = False
        withdraw = await can_withdraw(
            spot_api_url(config, profile),
            secrets_.binance_api_key.get_secret_value(),
            secrets_.binance_api_secret.get_secret_value(),
            timestamp_ms=rest.server_now_ms(),
            recv_window_ms=rest.recv_window_ms,
        )
        if withdraw is True:
            print("FAIL  this API key can withdraw funds: create a key without the withdrawal permission")
            ok = False
        elif withdraw is False:
            print("OK    the API key cannot withdraw")
        else:
            print("SKIP  the venue does not say whether the key can withdraw")
    return ok


async def _check_telegram(config: AppConfig, secrets_: Secrets) -> bool:
    """The session is logged in and both channels resolve and show their newest message. Skipped
    (not failed) while a running daemon holds the session: it must never be opened twice."""
    from telegram_ingest.listener import (
        NotAuthorised,
        SessionLocked,
        check_channels,
        ensure_authorised,
        open_session_path,
    )

    session = Path(config.telegram.session_path)
    if not session.name.endswith(".session"):
        session = session.with_name(session.name + ".session")
    if not session.exists():
        print(f"FAIL  Telegram session {session} does not exist: run `shortfsm login` first")
        return False
    factory = telegram_client_factory
    if factory is None:
        from telethon import TelegramClient

        factory = TelegramClient
    channels = {
        config.telegram.entry_chat_id: "leading-market channel",
        config.telegram.risk_chat_id: "risk-management channel",
    }
    try:
        with open_session_path(session) as lock:
            client = factory(
                str(lock.path), secrets_.telegram_api_id, secrets_.telegram_api_hash.get_secret_value()
            )
            try:
                async with asyncio.timeout(TELEGRAM_CHECK_S):
                    await ensure_authorised(client)
                    found = await check_channels(client, list(channels))
            finally:
                await client.disconnect()
    except SessionLocked:
        print("SKIP  Telegram channels: the session is in use (a running daemon?), not opened twice")
        return True
    except NotAuthorised:
        print(f"FAIL  Telegram session {session} is not logged in: run `shortfsm login`")
        return False
    except TimeoutError:
        print(f"FAIL  Telegram did not answer within {TELEGRAM_CHECK_S:.0f} s")
        return False
    except Exception as exc:  # network trouble, a damaged session file: say what, never crash
        print(f"FAIL  Telegram unreachable: {type(exc).__name__}: {exc}")
        return False
    ok = True
    for access in found:
        label = f"{channels[access.chat_id]} {access.chat_id}"
        if access.problem is None:
            print(f"OK    {label} ({access.title}): readable, newest message {access.last_message_id}")
        else:
            print(f"FAIL  {label}: {access.problem}")
            ok = False
    return ok


POSITION_MODE_NOTE = {
    "ONE_WAY": "N-15: orders without positionSide, exits reduceOnly",
    "HEDGE": "N-15: every order carries positionSide=SHORT",
}


# ---------------------------------------------------------------------------------------------
# pause / resume / flatten
# ---------------------------------------------------------------------------------------------


CONTROL_WAIT_S = 10.0  # how long pause/resume wait for the daemon's acknowledgement
# A flatten waits up to 12 s for a busy engine (daemon.FLATTEN_WAIT_S), then cancels, closes and
# reads each close back: its acknowledgement can come later than a pause's.
FLATTEN_WAIT_S = 30.0
EXIT_NO_DAEMON = 3  # pause/resume/flatten: no daemon is running on the database


def _control(args: argparse.Namespace, command: str) -> int:
    """``pause`` / ``resume``: sent to the daemon running on the database, and acknowledged; never
    written anywhere when none runs (and no database is ever created)."""
    config = _load(args)
    if config is None:
        return 2
    db = Path(config.storage.database)
    live = liveness(db)
    if not live.alive:
        print(f"shortfsm: {live.text}", file=sys.stderr)
        return EXIT_NO_DAEMON
    return _send(db, command, args.wait, live)


def _send(db: Path, command: str, wait_s: float, live: Liveness) -> int:
    """Write one request and wait (bounded) for its acknowledgement; 0 only when it was applied."""
    request_id = f"{command}-{int(time.time() * 1000)}-{secrets.token_hex(3)}"
    try:
        request_control(db, request_id, command, int(time.time() * 1000))
    except StoreError as exc:
        print(f"shortfsm: database: {exc}", file=sys.stderr)
        return 2
    print(f"{command} {request_id} sent to daemon pid {live.pid} on {db}", flush=True)
    deadline = time.monotonic() + wait_s
    while (ack := read_control_ack(db, request_id)) is None:
        if time.monotonic() >= deadline:
            print(
                f"shortfsm: {command} {request_id} not acknowledged within {wait_s:g} s by daemon pid "
                f"{live.pid}: check `shortfsm status` (the daemon may still apply it)",
                file=sys.stderr,
            )
            return 1
        now = liveness(db)
        if not now.alive:
            print(
                f"shortfsm: {command} {request_id} not applied: {now.text} (a daemon started later "
                "discards it)",
                file=sys.stderr,
            )
            return 1
        time.sleep(0.05)
    for line in ack.get("lines") or []:
        print(f"  {line}")
    applied = ack.get("applied_ms")
    when = utc(applied) if isinstance(applied, int) else "an unknown time"
    failures = ack.get("failures") or 0
    if ack.get("result") == "ok":
        print(f"{command} {request_id} applied at {when}")
        return 0
    print(
        f"shortfsm: {command} {request_id} {ack.get('result')} at {when}: {failures} failure(s)",
        file=sys.stderr,
    )
    return 1


def cmd_pause(args: argparse.Namespace) -> int:
    return _control(args, "pause")


def cmd_resume(args: argparse.Namespace) -> int:
    return _control(args, "resume")


def cmd_flatten(args: argparse.Namespace) -> int:
    """With a daemon running on the database: it flattens (after the list of what it knows and a
    confirmation). Without one: ``--direct`` flattens on the profile's venue from here, every order
    and every failure reported."""
    loaded = _load(args)
    if loaded is None:
        return 2
    config = loaded.for_profile(args.profile)
    profile = config.binance.profile
    db = Path(config.storage.database)
    live = liveness(db)
    if live.alive:
        beat = live.heartbeat or {}
        running = beat.get("profile")
        if args.profile and isinstance(running, str) and running != profile:
            print(
                f"shortfsm: the daemon on {db} (pid {live.pid}) trades the {running} profile, not "
                f"{profile}: nothing done",
                file=sys.stderr,
            )
            return 2
        urls: dict[str, Any] = beat["urls"] if isinstance(beat.get("urls"), dict) else {}
        where = urls.get("rest") or "its venue"
        exposure: dict[str, Any] = beat["exposure"] if isinstance(beat.get("exposure"), dict) else {}
        orders, positions = list(exposure.get("orders") or []), list(exposure.get("positions") or [])
        print(f"daemon pid {live.pid} on {db} ({running}, {where}) will cancel every open order and close")
        print("every position on the account at market, then keep entries paused. It holds:")
        for order in orders:
            print(f"  cancel {order}")
        for position in positions:
            print(f"  close {position} at market")
        if not orders and not positions:
            print("  no order or position of its own (anything else on the account is flattened too)")
        if not args.yes and not _confirmed("Flatten now? [y/N] "):
            print("nothing done")
            return 1
        return _send(db, "flatten", args.wait, live)
    if not args.direct:
        print(f"shortfsm: {live.text}", file=sys.stderr)
        print(
            f"shortfsm: `shortfsm flatten --direct` cancels and closes on the {profile} venue from here",
            file=sys.stderr,
        )
        return EXIT_NO_DAEMON
    return _flatten_direct(args, config, db)


def _flatten_direct(args: argparse.Namespace, config: AppConfig, db: Path) -> int:
    profile = config.binance.profile
    rest_url = config.binance.urls()[0]
    if not rest_url:
        print(
            "shortfsm: the sim profile's venue lives inside the daemon: with no daemon running there is "
            "nothing to flatten",
            file=sys.stderr,
        )
        return 2
    secrets_ = _secrets(args)
    if secrets_ is None:
        return 2
    missing = [
        name
        for name, value in (
            ("BINANCE_API_KEY", secrets_.binance_api_key.get_secret_value()),
            ("BINANCE_API_SECRET", secrets_.binance_api_secret.get_secret_value()),
        )
        if not value
    ]
    if missing:
        print(
            f"shortfsm: flatten on {profile} needs {', '.join(missing)} in the environment or .env",
            file=sys.stderr,
        )
        return 2
    if profile == "mainnet" and not config.binance.allow_mainnet:
        print("shortfsm: mainnet is not allowed by the config (binance.allow_mainnet)", file=sys.stderr)
        return 2
    try:
        plan = asyncio.run(_flatten_rest(config, secrets_, dry_run=True))[0]
    except BinanceError as exc:
        print(f"FAIL  flatten: {rest_url}: {exc}")
        return 1
    print(f"no daemon is running on {db}; on the {profile} venue {rest_url}:")
    for line in plan:
        print(f"  {line}")
    if not plan:
        print("  nothing to cancel or close")
        return 0
    if not args.yes and not _confirmed(f"Cancel and close all of the above on {profile} at market? [y/N] "):
        print("nothing done")
        return 1
    try:
        done, failures = asyncio.run(_flatten_rest(config, secrets_))
    except BinanceError as exc:
        print(f"FAIL  flatten: {rest_url}: {exc}")
        return 1
    for line in done:
        print(line)
    if failures:
        print(f"shortfsm: flatten: {failures} failure(s); the account is NOT flat", file=sys.stderr)
        return 1
    return 0


def _confirmed(question: str) -> bool:
    try:
        answer = input(question)
    except EOFError:
        print()
        return False
    return answer.strip().lower() in ("y", "yes")


async def _flatten_rest(
    config: AppConfig, secrets_: Secrets, *, dry_run: bool = False
) -> tuple[list[str], int]:
    rest_url, _, _ = config.binance.urls()
    async with BinanceRest(
        api_key=secrets_.binance_api_key.get_secret_value(),
        api_secret=secrets_.binance_api_secret.get_secret_value(),
        base_url=rest_url,
        recv_window_ms=config.binance.recv_window_ms,
    ) as rest:
        await rest.sync_time()
        if dry_run:
            return await account_exposure(rest), 0
        outcome = await flatten_account(rest, int(time.time() * 1000))
        return outcome.lines, outcome.failures
