"""Operator controls: ``shortfsm check`` against a simulated venue on loopback, ``pause`` / ``resume``
and ``flatten`` against a running daemon (sim profile) or straight through REST (demo profile)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import runtime_kit as kit
from telethon import errors
from telethon.tl import types

from binance.sim.server import RestFault
from fsm.ops import daemon_cli
from fsm.ops.cli import main
from telegram_ingest.listener import open_session_path

ENV_KEYS = {
    "BINANCE_API_KEY": kit.VenueThread.API_KEY,
    "BINANCE_API_SECRET": kit.VenueThread.API_SECRET,
    "TELEGRAM_API_ID": "12345",
    "TELEGRAM_API_HASH": "test-hash",
}


ENTRY_CHANNEL, RISK_CHANNEL = -1002171239233, -1003096527269  # the config's defaults
DATE = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)


class FakeTelegram:
    """The part of ``TelegramClient`` that ``check`` uses, answering with real Telethon objects:
    ``channels`` maps a marked id to its title and newest message id, or to the error to raise."""

    def __init__(
        self, session: str, api_id: int, api_hash: str, *, channels: dict[int, Any], authorised: bool = True
    ) -> None:
        self.opened = (session, api_id, api_hash)
        self.channels = channels
        self.authorised = authorised
        self.calls: list[str] = []

    async def connect(self) -> None:
        self.calls.append("connect")

    async def is_user_authorized(self) -> bool:
        return self.authorised

    async def disconnect(self) -> None:
        self.calls.append("disconnect")

    async def get_entity(self, chat_id: int) -> types.Channel:
        answer = self.channels.get(chat_id)
        if answer is None:
            raise ValueError(f"Could not find the input entity for PeerChannel(channel_id={chat_id})")
        if isinstance(answer, Exception):
            raise answer
        title, _ = answer
        bare = int(str(chat_id).removeprefix("-100"))
        return types.Channel(id=bare, title=title, photo=types.ChatPhotoEmpty(), date=DATE, access_hash=7)

    async def iter_messages(
        self, entity: types.Channel, limit: int | None = None
    ) -> AsyncIterator[types.Message]:
        _, newest = self.channels[int(f"-100{entity.id}")]
        if isinstance(newest, Exception):
            raise newest
        yield types.Message(id=newest, peer_id=types.PeerChannel(entity.id), date=DATE, message="x")


HEALTHY = {ENTRY_CHANNEL: ("Leading Market", 812), RISK_CHANNEL: ("Risk Management", 77)}


def _telegram(monkeypatch: pytest.MonkeyPatch, **kwargs: Any) -> list[FakeTelegram]:
    made: list[FakeTelegram] = []

    def factory(session: str, api_id: int, api_hash: str) -> FakeTelegram:
        made.append(FakeTelegram(session, api_id, api_hash, **{"channels": HEALTHY, **kwargs}))
        return made[-1]

    monkeypatch.setattr(daemon_cli, "telegram_client_factory", factory)
    return made


@pytest.fixture
def operator_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run the CLI from ``tmp_path`` (its own .env and relative paths) with test venue keys and a
    logged-in Telegram session that reads both channels."""
    monkeypatch.chdir(tmp_path)
    for name, value in ENV_KEYS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("DISCORD_WEBHOOK_URL", raising=False)
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "telegram.session").write_bytes(b"")
    (tmp_path / "var" / "telegram.session").chmod(0o600)
    _telegram(monkeypatch)
    return tmp_path


def _lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().out.splitlines()


def _check(config: Path) -> int:
    return main(["check", "--config", str(config)])


# ---------------------------------------------------------------------------------------------
# check
# ---------------------------------------------------------------------------------------------


def test_check_passes_on_a_healthy_venue(operator_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with kit.VenueThread() as venue:
        venue.add_route("GET", "/sapi/v1/account/apiRestrictions", {"enableWithdrawals": False})
        config = kit.write_config(operator_env, venue.config_text())
        assert _check(config) == 0
        url, ws = venue.venue.rest_url, venue.venue.ws_url
    lines = _lines(capsys)
    assert lines[:4] == [
        f"OK    config {config}: valid (profile demo)",
        f"OK    profile demo: REST {url}, market WS {ws}/market, private WS {ws}/private",
        f"OK    database {operator_env / 'db.sqlite'} does not exist yet: "
        "`run` creates it (nothing to restore)",
        "OK    keys: present",
    ]
    assert re.fullmatch(rf"OK    clock skew vs {url}/fapi/v1/time: -?\d+ ms", lines[4])
    assert lines[5:] == [
        "OK    position mode: ONE_WAY (N-15: orders without positionSide, exits reduceOnly)",
        "OK    USDT balance: wallet 10000.00000000, available 10000.00000000",
        "OK    the API key cannot withdraw",
        "OK    leading-market channel -1002171239233 (Leading Market): readable, newest message 812",
        "OK    risk-management channel -1003096527269 (Risk Management): readable, newest message 77",
    ]


def test_check_accepts_hedge_mode_and_says_how_orders_are_sent(
    operator_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Both position modes are supported (N-15, W27/W28): hedge mode is reported, not refused."""
    with kit.VenueThread(hedge=True) as venue:
        config = kit.write_config(operator_env, venue.config_text())
        assert _check(config) == 0
    lines = _lines(capsys)
    assert "OK    position mode: HEDGE (N-15: every order carries positionSide=SHORT)" in lines
    assert lines[-3] == "SKIP  the venue does not say whether the key can withdraw"


@pytest.mark.parametrize(
    ("env", "code", "message"),
    [
        (
            {"BINANCE_API_KEY": "not-a-key-of-this-venue"},
            -2015,
            "Invalid API-key, IP, or permissions for action.",
        ),
        ({"BINANCE_API_SECRET": "wrong-secret"}, -1022, "Signature for this request is not valid."),
    ],
)
def test_check_fails_on_a_refused_api_key(
    operator_env: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    code: int,
    message: str,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with kit.VenueThread() as venue:
        config = kit.write_config(operator_env, venue.config_text())
        assert _check(config) == 1
        url = venue.venue.rest_url
        assert venue.venue.requests[-1] == ("GET", "/fapi/v1/positionSide/dual")
    assert _lines(capsys)[-3] == (
        f"FAIL  API key refused by {url} ({code} {message}): check BINANCE_API_KEY and BINANCE_API_SECRET, "
        "the key's IP restriction and its Futures permission"
    )


def test_check_fails_on_clock_skew(operator_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with kit.VenueThread(clock_offset_ms=4_000) as venue:
        config = kit.write_config(operator_env, venue.config_text())
        assert _check(config) == 1
        url = venue.venue.rest_url
    lines = _lines(capsys)
    skew = [line for line in lines if "clock skew" in line]
    assert len(skew) == 1
    match = re.fullmatch(
        rf"FAIL  clock skew vs {url}/fapi/v1/time: (\d+) ms \(more than 1000 ms\): "
        r"synchronise the system clock \(NTP\)",
        skew[0],
    )
    assert match is not None and 3_900 <= int(match.group(1)) <= 4_100
    # The other checks still run (signed requests are stamped with the measured offset).
    assert "OK    position mode: ONE_WAY (N-15: orders without positionSide, exits reduceOnly)" in lines


def test_check_fails_on_a_key_that_can_withdraw(
    operator_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with kit.VenueThread() as venue:
        venue.add_route("GET", "/sapi/v1/account/apiRestrictions", {"enableWithdrawals": True})
        config = kit.write_config(operator_env, venue.config_text())
        assert _check(config) == 1
        assert ("GET", "/sapi/v1/account/apiRestrictions") in venue.venue.requests
    assert _lines(capsys)[-3] == (
        "FAIL  this API key can withdraw funds: create a key without the withdrawal permission"
    )


def test_check_warns_on_files_readable_by_others(
    operator_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with kit.VenueThread() as venue:
        config = kit.write_config(
            operator_env, venue.config_text() + "telegram:\n  session_path: tg.session\n"
        )
        env = operator_env / ".env"
        env.write_text("DISCORD_WEBHOOK_URL=\n", encoding="utf-8")
        session = operator_env / "tg.session"
        session.write_bytes(b"")
        env.chmod(0o644)
        config.chmod(0o640)
        session.chmod(0o604)
        assert _check(config) == 0  # a warning, not a failure
    session = operator_env / "tg.session"
    warnings = [line for line in _lines(capsys) if line.startswith("WARN")]
    assert warnings == [
        f"WARN  {env} is readable by group/others (0o644): chmod 600 {env}",
        f"WARN  {config} is readable by group/others (0o640): chmod 600 {config}",
        f"WARN  {session} is readable by group/others (0o604): chmod 600 {session}",
    ]


@pytest.mark.parametrize(
    ("channels", "authorised", "expected"),
    [
        (
            {ENTRY_CHANNEL: HEALTHY[ENTRY_CHANNEL]},
            True,
            [
                HEALTHY_ENTRY_LINE := "OK    leading-market channel -1002171239233 (Leading Market): "
                "readable, newest message 812",
                "FAIL  risk-management channel -1003096527269: not known to this session: join the channel "
                "with this account, then run `shortfsm login` again (it caches the channels)",
            ],
        ),
        (
            {**HEALTHY, RISK_CHANNEL: errors.ChannelPrivateError(request=None)},
            True,
            [
                HEALTHY_ENTRY_LINE,
                "FAIL  risk-management channel -1003096527269: refused by Telegram: ChannelPrivateError",
            ],
        ),
        (
            {**HEALTHY, ENTRY_CHANNEL: ("Leading Market", errors.ChannelPrivateError(request=None))},
            True,
            [
                "FAIL  leading-market channel -1002171239233: history not readable: ChannelPrivateError",
                "OK    risk-management channel -1003096527269 (Risk Management): readable, newest message 77",
            ],
        ),
        (
            HEALTHY,
            False,
            ["FAIL  Telegram session {session} is not logged in: run `shortfsm login`"],
        ),
    ],
    ids=["channel-not-in-session", "channel-private", "history-refused", "not-logged-in"],
)
def test_check_fails_when_a_channel_cannot_be_read(
    operator_env: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    channels: dict[int, Any],
    authorised: bool,
    expected: list[str],
) -> None:
    made = _telegram(monkeypatch, channels=channels, authorised=authorised)
    with kit.VenueThread() as venue:
        venue.add_route("GET", "/sapi/v1/account/apiRestrictions", {"enableWithdrawals": False})
        config = kit.write_config(operator_env, venue.config_text())
        assert _check(config) == 1
    session = operator_env / "var" / "telegram.session"
    lines = _lines(capsys)
    assert lines[-len(expected) :] == [line.replace("{session}", str(session)) for line in expected]
    assert lines[-len(expected) - 1] == "OK    the API key cannot withdraw"  # the venue checks all ran
    (client,) = made
    assert client.opened == (str(session), 12345, "test-hash")  # relative to the config file's folder
    assert client.calls[0] == "connect" and client.calls[-1] == "disconnect"


def test_check_without_a_session_says_to_log_in(
    operator_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (operator_env / "var" / "telegram.session").unlink()
    with kit.VenueThread() as venue:
        config = kit.write_config(operator_env, venue.config_text())
        assert _check(config) == 1
    assert _lines(capsys)[-1] == (
        f"FAIL  Telegram session {operator_env / 'var' / 'telegram.session'} does not exist: "
        "run `shortfsm login` first"
    )
    assert not (operator_env / "var" / "telegram.session").exists()  # check never creates it


def test_check_skips_the_channels_while_a_daemon_holds_the_session(
    operator_env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    made = _telegram(monkeypatch)
    with kit.VenueThread() as venue, open_session_path(operator_env / "var" / "telegram.session"):
        venue.add_route("GET", "/sapi/v1/account/apiRestrictions", {"enableWithdrawals": False})
        config = kit.write_config(operator_env, venue.config_text())
        assert _check(config) == 0
    assert _lines(capsys)[-1] == (
        "SKIP  Telegram channels: the session is in use (a running daemon?), not opened twice"
    )
    assert made == []  # the session file was never opened by a second client


def test_run_refuses_to_trade_with_a_key_that_can_withdraw(
    operator_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with kit.VenueThread() as venue:
        venue.add_route("GET", "/sapi/v1/account/apiRestrictions", {"enableWithdrawals": True})
        config = kit.write_config(operator_env, venue.config_text())
        assert main(["run", "--config", str(config)]) == 2
        requests = list(venue.venue.requests)
    assert requests == [("GET", "/fapi/v1/time"), ("GET", "/sapi/v1/account/apiRestrictions")]
    assert capsys.readouterr().err.splitlines()[-1] == (
        "shortfsm: this API key can withdraw funds: create a key without the withdrawal permission "
        "(a trading daemon never needs it)"
    )


def test_check_fails_on_a_corrupt_database_without_touching_it(
    operator_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = kit.write_config(operator_env)
    garbage = b"this is not an sqlite database" * 100
    (operator_env / "db.sqlite").write_bytes(garbage)
    assert _check(config) == 1
    lines = _lines(capsys)
    assert lines[1] == (
        f"FAIL  database {operator_env / 'db.sqlite'}: not a usable shortfsm database "
        "(file is not a database); move it aside to start fresh"
    )
    assert lines[2] == "OK    sim profile: the simulated venue runs inside the daemon and needs no keys"
    assert (operator_env / "db.sqlite").read_bytes() == garbage


# ---------------------------------------------------------------------------------------------
# pause / resume against a running daemon
# ---------------------------------------------------------------------------------------------

ETH = kit.LEADING.format(ticker="ETH")


def test_pause_releases_monitoring_and_resume_never_enters_on_the_old_signal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Paused: the monitored signal is released (D-41) and the mark crossing its 0.1% trigger
    (3531.465 for the 3535.00 target) sends nothing; the board says paused. Resumed: the old signal
    stays released, so still nothing goes out (only new signals enter)."""
    feed = kit.write_feed(tmp_path, [(1000, kit.ENTRY_CHAT, 1001, ETH)])
    config = kit.write_config(tmp_path)
    path = kit.PricePath(
        base={"ETHUSDT": Decimal("3500.00")}, points=kit.points([(12, "ETHUSDT", "3532.00")])
    )

    async def scenario() -> None:
        async with kit.Venue(path) as venue:
            run = await venue.start_daemon(tmp_path, feed)
            await kit.wait_until(lambda: run.seen.has("ETHUSDT IDLE->MONITORING"))
            await kit.wait_until(lambda: bool(kit.board(tmp_path)))  # its heartbeat is written
            assert await asyncio.to_thread(main, ["pause", "--config", str(config)]) == 0
            assert run.daemon.engine.paused  # acknowledged once applied
            await kit.wait_until(lambda: kit.board(tmp_path).get("paused") is True)
            assert not venue.at(12)  # the pause is in force before the trigger price arrives
            await kit.wait_until(lambda: venue.at(16))
            assert venue.exchange.orders == {}
            assert run.daemon.engine.state_of("ETHUSDT") == "IDLE"
            assert run.seen.has("ETHUSDT MONITORING->IDLE")
            assert await asyncio.to_thread(main, ["resume", "--config", str(config)]) == 0
            await kit.wait_until(lambda: venue.at(20))
            assert await run.stop() == 0
            assert venue.exchange.orders == {}  # the signal from before the pause never enters
            assert kit.logs(run.seen, "pause") == [(None, "paused", {}), (None, "resumed", {})]

    kit.run(scenario(), timeout=30)
    lines = _lines(capsys)
    db = tmp_path / "db.sqlite"
    assert len(lines) == 6
    for command, state, (sent, done, applied) in (
        ("pause", "paused: no new entries", lines[:3]),
        ("resume", "resumed: new entries allowed", lines[3:]),
    ):
        request = re.fullmatch(
            rf"{command} ({command}-\d+-[0-9a-f]{{6}}) sent to daemon pid {os.getpid()} on {db}", sent
        )
        assert request is not None, sent
        assert done == f"  {state}"
        assert re.fullmatch(
            rf"{command} {request[1]} applied at \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d UTC", applied
        )
    assert kit.rows(tmp_path, "SELECT reason FROM decisions WHERE kind = 'pause' ORDER BY id") == [
        ("paused",),
        ("resumed",),
    ]
    board = kit.board(tmp_path)
    assert board["paused"] is False


def test_exits_keep_working_while_paused(tmp_path: Path) -> None:
    """Paused with a position: the TP is still placed at its trigger and fills; the symbol ends flat."""
    feed = kit.write_feed(tmp_path, [(1000, kit.ENTRY_CHAT, 1001, ETH)])
    config = kit.write_config(tmp_path)
    path = kit.PricePath(
        base={"ETHUSDT": Decimal("3500.00")},
        points=kit.points(
            [
                (3, "ETHUSDT", "3532.00"),
                (5, "ETHUSDT", "3536.00"),
                (14, "ETHUSDT", "3360.00"),
                (16, "ETHUSDT", "3358.00"),
            ]
        ),
    )

    async def scenario() -> None:
        async with kit.Venue(path) as venue:
            run = await venue.start_daemon(tmp_path, feed)
            await kit.wait_until(lambda: run.seen.has("ETHUSDT ENTRY_ORDER->PHASE1"))
            await kit.wait_until(lambda: bool(kit.board(tmp_path)))  # its heartbeat is written
            assert await asyncio.to_thread(main, ["pause", "--config", str(config)]) == 0
            assert run.daemon.engine.paused
            assert not venue.at(14)
            await kit.wait_until(lambda: run.seen.has("ETHUSDT EXITING->IDLE"))
            assert run.daemon.engine.paused
            assert await run.stop() == 0
            assert kit.venue_orders(venue.exchange) == [
                (
                    "sf1001-E11-ETHUSDT",
                    "SELL",
                    "LIMIT",
                    Decimal("3535.00"),
                    Decimal("1.414"),
                    "FILLED",
                    False,
                    Decimal("1.414"),
                ),
                (
                    "sf1001-TP1-ETHUSDT",
                    "BUY",
                    "LIMIT",
                    Decimal("3358.25"),
                    Decimal("1.414"),
                    "FILLED",
                    True,
                    Decimal("1.414"),
                ),
            ]
            assert venue.exchange.positions[("ETHUSDT", "BOTH")].amount == 0

    kit.run(scenario(), timeout=30)
    control = json.loads(kit.rows(tmp_path, "SELECT value FROM status WHERE key = 'control'")[0][0])
    assert (control["paused"], control["by"]) == (True, "pause")
    assert re.fullmatch(r"pause-\d+-[0-9a-f]{6}", control["id"])


# ---------------------------------------------------------------------------------------------
# flatten
# ---------------------------------------------------------------------------------------------

# ETHUSDT into PHASE2: entry 1.414 @ 3535.00, scale-in 1.036 @ 4065.25, MDD stop (algo) at 4323.10 and
# the breakeven limit at the 3759.22 average both working at 3800.
PHASE2_PATH = kit.PricePath(
    base={"ETHUSDT": Decimal("3500.00")},
    points=kit.points(
        [
            (3, "ETHUSDT", "3532.00"),
            (5, "ETHUSDT", "3536.00"),
            (8, "ETHUSDT", "4062.00"),
            (10, "ETHUSDT", "4066.00"),
            (13, "ETHUSDT", "3800.00"),
        ]
    ),
)


def _heartbeat(tmp: Path) -> dict[str, Any]:
    """The daemon's heartbeat row (``{}`` before the first one)."""
    found = kit.rows(tmp, "SELECT value FROM status WHERE key = 'heartbeat'")
    return json.loads(found[0][0]) if found else {"exposure": {"orders": []}}


@contextlib.asynccontextmanager
async def phase2_daemon(tmp: Path) -> AsyncIterator[tuple[kit.Venue, kit.Run]]:
    """The simulated venue and a daemon on it whose ETHUSDT short (the one leading message) is in
    PHASE2 with its breakeven and MDD stop working."""
    feed = kit.write_feed(tmp, [(1000, kit.ENTRY_CHAT, 1001, ETH)])
    async with kit.Venue(PHASE2_PATH) as venue:
        yield venue, await _in_phase2(venue, tmp, feed)


async def _in_phase2(venue: kit.Venue, tmp: Path, feed: Path) -> kit.Run:
    """A daemon on ``venue`` whose ETHUSDT short is in PHASE2 with its breakeven and MDD stop working."""
    run = await venue.start_daemon(tmp, feed)
    await kit.wait_until(lambda: run.seen.accepted("sf1001-BE1-ETHUSDT"), 12)
    await kit.wait_until(lambda: len(_heartbeat(tmp)["exposure"]["orders"]) == 2)
    return run


def test_flatten_cancels_every_order_and_closes_the_position(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    feed = kit.write_feed(tmp_path, [(1000, kit.ENTRY_CHAT, 1001, ETH)])
    config = kit.write_config(tmp_path)

    async def scenario() -> None:
        async with kit.Venue(PHASE2_PATH) as venue:
            run = await venue.start_daemon(tmp_path, feed)
            await kit.wait_until(lambda: run.seen.accepted("sf1001-BE1-ETHUSDT"))
            assert [o.client_id for o in venue.exchange.orders.values() if o.is_open] == [
                "sf1001-BE1-ETHUSDT"
            ]
            assert [a.client_algo_id for a in venue.exchange.algos.values() if a.status == "NEW"] == [
                "sf1001-MD1-ETHUSDT"
            ]
            await kit.wait_until(lambda: len(_heartbeat(tmp_path)["exposure"]["orders"]) == 2)
            assert await asyncio.to_thread(main, ["flatten", "--yes", "--config", str(config)]) == 0
            await kit.wait_until(lambda: run.seen.has("ETHUSDT EXITING->IDLE"))
            await kit.wait_until(lambda: run.daemon.engine.lock_state("entry_lock") == "GLOBAL_IDLE")
            assert run.daemon.engine.paused
            assert await run.stop() == 0
            orders = kit.venue_orders(venue.exchange)
            assert orders[:3] == [
                (
                    "sf1001-E11-ETHUSDT",
                    "SELL",
                    "LIMIT",
                    Decimal("3535.00"),
                    Decimal("1.414"),
                    "FILLED",
                    False,
                    Decimal("1.414"),
                ),
                (
                    "sf1001-E21-ETHUSDT",
                    "SELL",
                    "LIMIT",
                    Decimal("4065.25"),
                    Decimal("1.036"),
                    "FILLED",
                    False,
                    Decimal("1.036"),
                ),
                (
                    "sf1001-BE1-ETHUSDT",
                    "BUY",
                    "LIMIT",
                    Decimal("3759.22"),
                    Decimal("2.450"),
                    "CANCELED",
                    True,
                    0,
                ),
            ]
            assert len(orders) == 4, orders
            cid, side, otype, _, qty, status, reduce_only, executed = orders[3]
            assert re.fullmatch(r"flat-\d+-ETHUSDT", cid)
            assert (side, otype, qty, status, reduce_only, executed) == (
                "BUY",
                "MARKET",
                Decimal("2.450"),
                "FILLED",
                True,
                Decimal("2.450"),
            )
            assert kit.venue_algos(venue.exchange) == [
                ("sf1001-MD1-ETHUSDT", "BUY", "STOP_MARKET", Decimal("4323.10"), "CANCELED", True)
            ]
            assert venue.exchange.positions[("ETHUSDT", "BOTH")].amount == 0
            assert ("DELETE", "/fapi/v1/algoOrder") in venue.harness.venue.requests

    kit.run(scenario(), timeout=30)
    db = tmp_path / "db.sqlite"
    lines = _lines(capsys)
    assert re.fullmatch(
        rf"daemon pid {os.getpid()} on {db} \(sim, http://127\.0\.0\.1:\d+\) will cancel every open order "
        "and close",
        lines[0],
    )
    assert lines[1:5] == [
        "every position on the account at market, then keep entries paused. It holds:",
        "  cancel sf1001-MD1-ETHUSDT (ETHUSDT BUY STOP_MARKET 2.450 trigger 4323.10)",
        "  cancel sf1001-BE1-ETHUSDT (ETHUSDT BUY LIMIT 2.450 @ 3759.22)",
        "  close ETHUSDT -2.450 at market",
    ]
    sent = re.fullmatch(
        rf"flatten (flatten-\d+-[0-9a-f]{{6}}) sent to daemon pid {os.getpid()} on {db}", lines[5]
    )
    assert sent is not None
    assert lines[6:9] == [
        "  cancelled sf1001-BE1-ETHUSDT",
        "  cancelled sf1001-MD1-ETHUSDT",
        "  closed ETHUSDT -2.450",
    ]
    assert re.fullmatch(rf"flatten {sent[1]} applied at \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d UTC", lines[9])
    assert len(lines) == 10
    (text,) = kit.rows(tmp_path, "SELECT text FROM alerts WHERE kind = 'flatten'")[0]
    assert re.fullmatch(
        r"cancelled sf1001-BE1-ETHUSDT; cancelled sf1001-MD1-ETHUSDT; closed ETHUSDT -2\.450", text
    )


def test_flatten_whose_close_is_refused_leaves_the_close_to_the_engine(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """D-63: while the flatten runs the engine arms nothing again (its orders' cancels are the
    operator's); the venue refuses the flatten's close (-4131), so the engine closes the short
    itself once the flatten has finished, and says so. Before, the breakeven went out again and
    the short stayed open with no stop."""
    config = kit.write_config(tmp_path)

    async def scenario() -> None:
        async with phase2_daemon(tmp_path) as (venue, run):
            venue.harness.venue.faults.add(
                RestFault(
                    "POST",
                    "/fapi/v1/order",
                    "status",
                    status=400,
                    body='{"code":-4131,"msg":"The counterparty\'s best price does not meet the '
                    'PERCENT_PRICE filter limit."}',
                )
            )
            assert await asyncio.to_thread(main, ["flatten", "--yes", "--config", str(config)]) == 1
            await kit.wait_until(lambda: run.seen.has("ETHUSDT EXITING->IDLE"))
            assert await run.stop() == 0
            orders = kit.venue_orders(venue.exchange)
            assert [(o[0], o[5]) for o in orders] == [
                ("sf1001-E11-ETHUSDT", "FILLED"),
                ("sf1001-E21-ETHUSDT", "FILLED"),
                ("sf1001-BE1-ETHUSDT", "CANCELED"),
                ("sf1001-CL1-ETHUSDT", "FILLED"),
            ], orders
            assert orders[3][1:] == (
                "BUY", "MARKET", Decimal(0), Decimal("2.450"), "FILLED", True, Decimal("2.450"),
            )  # fmt: skip
            assert kit.venue_algos(venue.exchange) == [
                ("sf1001-MD1-ETHUSDT", "BUY", "STOP_MARKET", Decimal("4323.10"), "CANCELED", True)
            ]
            assert venue.exchange.positions[("ETHUSDT", "BOTH")].amount == 0

    kit.run(scenario(), timeout=30)
    out = "\n".join(_lines(capsys))
    assert "  FAILED close ETHUSDT -2.450: " in out
    texts = [t for (t,) in kit.rows(tmp_path, "SELECT text FROM alerts WHERE kind = 'flatten'")]
    assert "ETHUSDT: the flatten left 2.450 open; the engine closes it at market" in texts


def test_flatten_without_confirmation_does_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no daemon (and no database) nothing is asked, written or created."""
    config = kit.write_config(tmp_path)
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))
    assert main(["flatten", "--config", str(config)]) == 3
    db = tmp_path / "db.sqlite"
    assert capsys.readouterr().err == (
        f"shortfsm: no daemon is running on {db}: there is no database at {db}\n"
        "shortfsm: `shortfsm flatten --direct` cancels and closes on the sim venue from here\n"
    )
    assert not db.exists()  # no control row was written anywhere


def test_flatten_over_rest_on_a_venue_profile(
    operator_env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """demo/mainnet profiles: the CLI itself cancels the orders (classic and algo) and closes at market."""
    with kit.VenueThread() as venue:
        ex = venue.exchange
        ex.new_order(
            {
                "symbol": "ETHUSDT",
                "side": "SELL",
                "type": "MARKET",
                "quantity": "0.500",
                "newClientOrderId": "e1",
            }
        )
        ex.new_order(
            {
                "symbol": "ETHUSDT",
                "side": "BUY",
                "type": "LIMIT",
                "timeInForce": "GTC",
                "price": "3300.00",
                "quantity": "0.500",
                "reduceOnly": "true",
                "newClientOrderId": "tp1",
            }
        )
        ex.new_algo_order(
            {
                "symbol": "ETHUSDT",
                "side": "BUY",
                "algoType": "CONDITIONAL",
                "type": "STOP_MARKET",
                "triggerPrice": "4000.00",
                "workingType": "MARK_PRICE",
                "closePosition": "true",
                "clientAlgoId": "stop1",
            }
        )
        config = kit.write_config(operator_env, venue.config_text())
        monkeypatch.setattr("sys.stdin", io.StringIO("n\n"))
        assert main(["flatten", "--direct", "--config", str(config)]) == 1  # listed, refused
        assert capsys.readouterr().out.splitlines()[-1].endswith("[y/N] nothing done")
        assert [o[5] for o in kit.venue_orders(ex)] == ["FILLED", "NEW"]
        monkeypatch.setattr("sys.stdin", io.StringIO("yes\n"))
        assert main(["flatten", "--direct", "--config", str(config)]) == 0
        orders = kit.venue_orders(ex)
        algos = kit.venue_algos(ex)
        position = ex.positions[("ETHUSDT", "BOTH")].amount
    out = capsys.readouterr().out.splitlines()
    db = operator_env / "db.sqlite"
    assert out[0] == f"no daemon is running on {db}; on the demo venue {venue.venue.rest_url}:"
    assert out[1:4] == [
        "  cancel tp1 (ETHUSDT BUY LIMIT 0.500 @ 3300.00)",
        "  cancel stop1 (ETHUSDT BUY STOP_MARKET trigger 4000.00)",
        "  close ETHUSDT -0.500 at market",
    ]
    assert out[4:] == [
        "Cancel and close all of the above on demo at market? [y/N] cancelled tp1",
        "cancelled stop1",
        "closed ETHUSDT -0.500",
    ]
    assert [(o[0], o[5]) for o in orders[:2]] == [("e1", "FILLED"), ("tp1", "CANCELED")]
    assert orders[2][1:] == (
        "BUY",
        "MARKET",
        Decimal("0"),
        Decimal("0.500"),
        "FILLED",
        True,
        Decimal("0.500"),
    )
    assert algos == [("stop1", "BUY", "STOP_MARKET", Decimal("4000.00"), "CANCELED", True)]
    assert position == 0
    assert not db.exists()  # nothing to apply at a later start


def test_flatten_refused_without_keys(
    operator_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("BINANCE_API_SECRET")
    config = kit.write_config(operator_env, "binance:\n  profile: demo\n")
    assert main(["flatten", "--yes", "--direct", "--config", str(config)]) == 2
    assert capsys.readouterr().err == (
        "shortfsm: flatten on demo needs BINANCE_API_SECRET in the environment or .env\n"
    )


def test_pause_on_an_unusable_database_fails_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = kit.write_config(tmp_path)
    (tmp_path / "db.sqlite").write_bytes(b"garbage" * 200)
    assert main(["pause", "--config", str(config)]) == 3
    err = capsys.readouterr().err
    assert (
        err
        == f"shortfsm: no daemon is running on {tmp_path / 'db.sqlite'}: it has never written a heartbeat\n"
    )
    assert (tmp_path / "db.sqlite").read_bytes() == b"garbage" * 200
