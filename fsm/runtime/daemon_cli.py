"""``shortfsm run | demo | check | pause | resume | flatten``: the daemon and its operator controls."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sqlite3
import stat
import sys
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live

from binance import parse
from binance.errors import AuthFailed, BinanceError
from binance.rest import BinanceRest
from fsm import commands as cmd
from fsm import events as ev
from fsm.runtime.config import AppConfig, ConfigError, Secrets, load_config
from fsm.runtime.daemon import Daemon, RunOptions, StartupRefused, check_profile, flatten_account, run_daemon
from fsm.runtime.feeds import DEMO_FEED, REPO_ROOT, PricePath, demo_path
from fsm.runtime.keys import can_withdraw, spot_api_url
from fsm.runtime.store import Store, StoreError, write_control

log = logging.getLogger(__name__)
DEMO_MARKER = "meta.demo"
DEMO_DEFAULT_SPEED = 2.0
TELEGRAM_CHECK_S = 30.0
# ``(session path, api id, api hash) -> client``; None: telethon.TelegramClient (tests set a double).
telegram_client_factory: Callable[[str, int, str], Any] | None = None


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = subparsers.add_parser("run", help="run the daemon (headless, JSON decision log)")
    _common(run)
    run.add_argument("--profile", choices=("sim", "demo", "mainnet"), help="override binance.profile")
    run.add_argument("--speed", type=float, default=1.0, help="sim profile only: compress time N x")
    run.add_argument(
        "--feed-origin-ms",
        type=int,
        help="sim profile only: epoch ms the feed's at_ms count from (default: the start; a restart "
        "against an external sim venue passes the venue's origin)",
    )
    run.set_defaults(func=cmd_run)

    demo = subparsers.add_parser("demo", help="the whole story on the simulated venue, in about a minute")
    _common(demo)
    demo.add_argument("--speed", type=float, default=DEMO_DEFAULT_SPEED, help="compress time N x")
    demo.add_argument("--db", help="database to (re)create (default: storage.database)")
    demo.add_argument("--no-board", action="store_true", help="print transitions instead of the board")
    demo.set_defaults(func=cmd_demo)

    check = subparsers.add_parser("check", help="preflight: config, keys, position mode, clock, permissions")
    _common(check)
    check.add_argument("--profile", choices=("sim", "demo", "mainnet"))
    check.set_defaults(func=cmd_check)

    for name, helptext in (("pause", "no new entries (exits keep working)"), ("resume", "allow entries")):
        p = subparsers.add_parser(name, help=helptext)
        _common(p)
        p.set_defaults(func=cmd_pause if name == "pause" else cmd_resume)

    flatten = subparsers.add_parser("flatten", help="cancel every order and close every position at market")
    _common(flatten)
    flatten.add_argument("--profile", choices=("sim", "demo", "mainnet"))
    flatten.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    flatten.set_defaults(func=cmd_flatten)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="config.yaml", help="configuration file (default: config.yaml)")


def _load(args: argparse.Namespace) -> AppConfig | None:
    try:
        return load_config(args.config)
    except ConfigError as exc:
        print(f"configuration error:\n{exc}", file=sys.stderr)
        return None


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
    config = _load(args)
    if config is None:
        return 2
    profile = args.profile or config.binance.profile
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
    try:
        return asyncio.run(run_daemon(config, Secrets(), options))
    except StartupRefused as exc:
        print(f"shortfsm: {exc}", file=sys.stderr)
        return 2
    except StoreError as exc:
        print(f"shortfsm: database: {exc}", file=sys.stderr)
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
    """Trades (positions closed), realised PnL, fees and the net, from the demo's database."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        trades = conn.execute(
            "SELECT symbol, reason FROM transitions WHERE machine = 'symbol' AND source = 'EXITING' "
            "AND dest = 'IDLE' ORDER BY id"
        ).fetchall()
        fills = conn.execute("SELECT realized_pnl, commission FROM fills").fetchall()
        filtered = conn.execute(
            "SELECT symbol, reason FROM decisions WHERE kind IN ('leading_rejected', 'symbol_mapping') "
            "AND reason NOT IN ('ok') ORDER BY id"
        ).fetchall()
    finally:
        conn.close()
    realised = sum((Decimal(r[0] or "0") for r in fills), Decimal(0))
    fees = sum((Decimal(r[1] or "0") for r in fills), Decimal(0))
    return {
        "trades": [{"symbol": s, "reason": r} for s, r in trades],
        "filtered": [{"symbol": s, "reason": r} for s, r in filtered],
        "realised_pnl": str(realised.quantize(Decimal("0.0001"))),
        "fees": str(fees.quantize(Decimal("0.0001"))),
        "net": str((realised - fees).quantize(Decimal("0.0001"))),
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
            lines.append(f"{c.symbol or c.machine:<14} {c.source} -> {c.dest}  ({c.reason})")
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
    )
    console.print(f"shortfsm demo: simulated venue on loopback, bundled feed, {args.speed:g}x time")
    code = asyncio.run(_demo(config, db_path, options, board, console))
    summary = demo_summary(db_path)
    console.print(summary_text(summary, time.monotonic() - started, db_path), markup=False)
    return code


def _board_module() -> Any:
    """``fsm.runtime.board`` when it is installed (the live board), else None (plain lines)."""
    try:
        import fsm.runtime.board as board
    except ImportError:
        return None
    has_api = hasattr(board, "load_board_state") and hasattr(board, "render_board")
    return board if has_api else None


async def _demo(config: AppConfig, db_path: Path, options: RunOptions, board: Any, console: Console) -> int:
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
    config = _load(args)
    if config is None:
        return 2
    profile = args.profile or config.binance.profile
    ok = asyncio.run(preflight(config, Secrets(), profile, config_path=Path(args.config)))
    return 0 if ok else 1


async def preflight(config: AppConfig, secrets_: Secrets, profile: str, *, config_path: Path) -> bool:
    """``shortfsm check``: one line per check (``OK``, ``WARN``, ``SKIP`` or ``FAIL``); False when
    any check failed. Against the venue: clock skew, the API key, position mode, balance and the
    withdrawal permission."""
    print(f"OK    config {config_path}: valid (profile {profile})")
    for warning in loose_permissions([Path(".env"), config_path, Path(config.telegram.session_path)]):
        print(f"WARN  {warning}")
    ok = _check_database(Path(config.storage.database))
    if profile == "sim":
        print("OK    sim profile: the simulated venue runs inside the daemon and needs no keys")
        return ok
    try:
        check_profile(config, profile, secrets_)
    except StartupRefused as exc:
        print(f"FAIL  {exc}")
        return False
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
        except BinanceError as exc:
            print(f"FAIL  venue {rest_url} unreachable: {exc}")
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


def _control(args: argparse.Namespace, label: str, what: str, **values: Any) -> int:
    config = _load(args)
    if config is None:
        return 2
    try:
        write_control(config.storage.database, int(time.time() * 1000), **values)
    except StoreError as exc:
        print(f"shortfsm: database: {exc}", file=sys.stderr)
        return 2
    print(f"{label} written to {config.storage.database}: {what}")
    return 0


def cmd_pause(args: argparse.Namespace) -> int:
    return _control(
        args, "pause", "the running daemon takes no new entries within 1 s; exits keep working", paused=True
    )


def cmd_resume(args: argparse.Namespace) -> int:
    return _control(args, "resume", "the running daemon takes new entries again within 1 s", paused=False)


def cmd_flatten(args: argparse.Namespace) -> int:
    config = _load(args)
    if config is None:
        return 2
    profile = args.profile or config.binance.profile
    if not args.yes and not _confirmed(
        f"Cancel every order and close every position on {profile} at market? [y/N] "
    ):
        print("nothing done")
        return 1
    if profile == "sim":
        # The simulated venue lives inside the running daemon: it carries the request out.
        return _control(
            args,
            "flatten",
            "the running daemon cancels every order and closes every position within 1 s; "
            "entries stay paused until `shortfsm resume`",
            paused=True,
            flatten=int(time.time() * 1000),
        )
    secrets_ = Secrets()
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
        done = asyncio.run(_flatten_rest(config, secrets_))
    except BinanceError as exc:
        print(f"FAIL  flatten: {exc}")
        return 1
    print("\n".join(done) or "nothing to flatten")
    # A daemon running on this database must not open a new position right away.
    return _control(args, "pause", "entries stay paused until `shortfsm resume`", paused=True)


def _confirmed(question: str) -> bool:
    try:
        answer = input(question)
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


async def _flatten_rest(config: AppConfig, secrets_: Secrets) -> list[str]:
    rest_url, _, _ = config.binance.urls()
    async with BinanceRest(
        api_key=secrets_.binance_api_key.get_secret_value(),
        api_secret=secrets_.binance_api_secret.get_secret_value(),
        base_url=rest_url,
        recv_window_ms=config.binance.recv_window_ms,
    ) as rest:
        return await flatten_account(rest, int(time.time() * 1000))
