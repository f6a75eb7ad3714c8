"""``shortfsm export``: history of both channels -> the JSONL feed a replay reads.

History is built from Telethon's own offline objects (``types.Message``, ``MessageService``, media)
and served by ``FakeTelegram``, a hand-written double whose ``iter_messages`` honours
``reverse``/``offset_date``/``min_id`` the way Telethon documents them (``offset_date`` exclusive).
Sleeps are recorded, never slept. The argument errors run through the installed ``shortfsm``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from telethon.crypto import AuthKey
from telethon.errors import ChannelPrivateError, FloodWaitError
from telethon.sessions import SQLiteSession
from telethon.tl import types

from telegram_ingest import export
from telegram_ingest.replay import FeedItem, load_feed

ENTRY = -1002171239233
RISK = -1003096527269
PEERS = {ENTRY: 2171239233, RISK: 3096527269}
SINCE = "2026-02-01"
SINCE_MS = 1769904000000  # 2026-02-01T00:00:00Z
MIDNIGHT = dt.datetime(2026, 2, 1, tzinfo=dt.UTC)
ROOT = Path(__file__).resolve().parents[2]


def at(seconds: float) -> dt.datetime:
    """``seconds`` after the --since midnight."""
    return MIDNIGHT + dt.timedelta(seconds=seconds)


def text(chat: int, message_id: int, when: dt.datetime, body: str | None = None, **extra: Any) -> Any:
    return types.Message(
        id=message_id,
        peer_id=types.PeerChannel(PEERS[chat]),
        date=when,
        message=body if body is not None else f"{chat} #{message_id}",
        post=True,
        **extra,
    )


def photo(chat: int, message_id: int, when: dt.datetime, caption: str = "") -> Any:
    return text(chat, message_id, when, caption, media=types.MessageMediaPhoto(photo=types.PhotoEmpty(id=7)))


def pinned(chat: int, message_id: int, when: dt.datetime) -> Any:
    return types.MessageService(
        id=message_id,
        peer_id=types.PeerChannel(PEERS[chat]),
        date=when,
        action=types.MessageActionPinMessage(),
    )


class FakeTelegram:
    """Channel histories plus scripted failures; records every history read."""

    def __init__(
        self, history: dict[int, list[Any]], *, authorised: bool = True, inclusive_offset_date: bool = False
    ) -> None:
        self.history = history
        self.authorised = authorised
        self.inclusive_offset_date = inclusive_offset_date  # what Telegram may well do in reverse
        self.connected = False
        self.disconnects = 0
        self.reads: list[tuple[int, int, dt.datetime | None]] = []  # (chat, min_id, offset_date)
        self.yielded = 0  # messages handed out, over all reads
        self.raise_at: dict[int, BaseException] = {}  # before the n-th message handed out: raise, once
        self.broken_after: int | None = None  # from the n-th message on, every read fails

    def is_connected(self) -> bool:
        return self.connected

    async def connect(self) -> None:
        self.connected = True

    async def disconnect(self) -> None:
        self.disconnects += 1
        self.connected = False

    async def is_user_authorized(self) -> bool:
        return self.authorised

    def iter_messages(
        self,
        entity: Any,
        limit: int | None = None,
        *,
        offset_date: dt.datetime | None = None,
        min_id: int = 0,
        reverse: bool = False,
    ) -> AsyncIterator[Any]:
        return self._iter(entity, limit, offset_date, min_id, reverse)

    async def _iter(
        self, chat: int, limit: int | None, offset_date: dt.datetime | None, min_id: int, reverse: bool
    ) -> AsyncIterator[Any]:
        # Telethon gives min_id priority over offset_date in reverse; Telegram's answer to both is
        # undocumented, so the export must never send both.
        assert not (min_id and offset_date), "min_id and offset_date together"
        self.reads.append((chat, min_id, offset_date))
        found = sorted(self.history.get(chat, []), key=lambda m: m.id, reverse=not reverse)
        found = [m for m in found if m.id > min_id]
        if offset_date is not None and reverse:  # exclusive, as Telethon documents it
            inclusive = self.inclusive_offset_date
            found = [m for m in found if m.date > offset_date or (inclusive and m.date == offset_date)]
        elif offset_date is not None:
            found = [m for m in found if m.date < offset_date]
        for message in found[:limit]:
            if self.broken_after is not None and self.yielded >= self.broken_after:
                raise ConnectionError("Connection to Telegram failed 5 time(s)")
            failure = self.raise_at.pop(self.yielded, None)
            if failure is not None:
                raise failure
            self.yielded += 1
            yield message


class Sleeps:
    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def logged_in_session(path: Path) -> Path:
    """A Telethon session file holding an auth key, as ``shortfsm login`` leaves it."""
    session = SQLiteSession(str(path))
    session.set_dc(2, "149.154.167.51", 443)
    session.auth_key = AuthKey(b"\x01" * 256)
    session.save()
    session.close()
    return path


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A config folder: config.yaml with both channels, a .env, a logged-in session."""
    for name in ("TELEGRAM_API_ID", "TELEGRAM_API_HASH", "TELEGRAM_PHONE"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "config.yaml").write_text(
        f"telegram:\n  entry_chat_id: {ENTRY}\n  risk_chat_id: {RISK}\n  session_path: var/tg.session\n",
        encoding="utf-8",
    )
    (tmp_path / ".env").write_text("TELEGRAM_API_ID=12345\nTELEGRAM_API_HASH=abc\n", encoding="utf-8")
    (tmp_path / "var").mkdir()
    logged_in_session(tmp_path / "var" / "tg.session")
    return tmp_path


class Run:
    def __init__(self, code: int, out: str, err: str, sleeps: list[float], factory_calls: list[Any]) -> None:
        self.code, self.out, self.err, self.sleeps, self.factory_calls = code, out, err, sleeps, factory_calls

    @property
    def err_lines(self) -> list[str]:
        return self.err.splitlines()


def run(home: Path, client: FakeTelegram | None, *argv: str) -> Run:
    root = argparse.ArgumentParser(prog="shortfsm")
    export.register(root.add_subparsers(dest="command", required=True))
    args = root.parse_args(["export", "--config", str(home / "config.yaml"), *argv])
    calls: list[Any] = []

    def factory(session: str, api_id: int, api_hash: str) -> FakeTelegram:
        calls.append((session, api_id, api_hash))
        assert client is not None, "no client expected"
        return client

    sleeps = Sleeps()
    out, err = io.StringIO(), io.StringIO()
    code = export.cmd_export(args, client_factory=factory, sleep=sleeps, stdout=out, stderr=err)
    return Run(code, out.getvalue(), err.getvalue(), sleeps.calls, calls)


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def two_channels() -> dict[int, list[Any]]:
    return {
        ENTRY: [text(ENTRY, 41, at(60)), text(ENTRY, 42, at(3 * 3600 + 5)), text(ENTRY, 43, at(9 * 3600))],
        RISK: [text(RISK, 7, at(2 * 3600)), text(RISK, 8, at(10 * 3600))],
    }


# -- the feed ---------------------------------------------------------------------------------------


def test_both_channels_are_exported_oldest_first_and_replay_at_their_telegram_time(home: Path) -> None:
    client = FakeTelegram(two_channels())
    done = run(home, client, "--since", SINCE, "--until", SINCE)
    out = home / "var" / "feed-export.jsonl"
    assert done.code == 0
    assert done.out == f"{out}\n"
    assert done.err_lines == [
        f"chat {ENTRY}: 3 messages, 0 skipped (no text), 2026-02-01 00:01:00 .. 2026-02-01 09:00:00 UTC",
        f"chat {RISK}: 2 messages, 0 skipped (no text), 2026-02-01 02:00:00 .. 2026-02-01 10:00:00 UTC",
    ]
    assert [(line["chat_id"], line["message_id"]) for line in lines(out)] == [
        (ENTRY, 41),
        (ENTRY, 42),
        (ENTRY, 43),
        (RISK, 7),
        (RISK, 8),
    ]
    assert lines(out)[0] == {
        "at_ms": 60_000,
        "chat_id": ENTRY,
        "message_id": 41,
        "date_ms": SINCE_MS + 60_000,
        "text": f"{ENTRY} #41",
    }
    # load_feed merges the channels on the replay clock: at_ms is the offset from the --since midnight.
    assert [(i.at_ms, i.chat_id, i.message_id, i.date_ms) for i in load_feed(out)] == [
        (60_000, ENTRY, 41, SINCE_MS + 60_000),
        (7_200_000, RISK, 7, SINCE_MS + 7_200_000),
        (10_805_000, ENTRY, 42, SINCE_MS + 10_805_000),
        (32_400_000, ENTRY, 43, SINCE_MS + 32_400_000),
        (36_000_000, RISK, 8, SINCE_MS + 36_000_000),
    ]
    assert load_feed(out)[1].to_raw(SINCE_MS).received_at_ms == SINCE_MS + 7_200_000
    first_offset = MIDNIGHT - dt.timedelta(seconds=1)
    assert client.reads == [(ENTRY, 0, first_offset), (RISK, 0, first_offset)]
    assert done.factory_calls == [(str(home / "var" / "tg.session"), 12345, "abc")]
    assert client.disconnects == 1
    assert done.sleeps == []


def test_an_edited_message_is_still_the_message_and_carries_its_edit_date(home: Path) -> None:
    edited_at = at(120)
    client = FakeTelegram(
        {
            ENTRY: [
                text(ENTRY, 1, at(60), "fixed typo", edit_date=edited_at),
                text(ENTRY, 2, at(90), "keyboard only", edit_date=edited_at, edit_hide=True),
            ]
        }
    )
    out = home / "feed.jsonl"
    assert run(home, client, "--since", SINCE, "--out", str(out)).code == 0
    assert lines(out) == [
        {
            "at_ms": 60_000,
            "chat_id": ENTRY,
            "message_id": 1,
            "date_ms": SINCE_MS + 60_000,
            "text": "fixed typo",
            "edit_date_ms": SINCE_MS + 120_000,
        },
        {
            "at_ms": 90_000,
            "chat_id": ENTRY,
            "message_id": 2,
            "date_ms": SINCE_MS + 90_000,
            "text": "keyboard only",
        },
    ]
    item = load_feed(out)[0]
    assert item == FeedItem(
        at_ms=60_000,
        chat_id=ENTRY,
        message_id=1,
        text="fixed typo",
        date_ms=SINCE_MS + 60_000,
        edit_date_ms=SINCE_MS + 120_000,
    )
    # Not an edit event: the daemon ignores `edited` lines (N-27) but acted on this message live.
    assert item.to_raw(SINCE_MS).edited is False


@pytest.mark.parametrize("inclusive", [False, True], ids=["offset-date-exclusive", "offset-date-inclusive"])
def test_since_and_until_are_whole_utc_days_midnight_in_next_midnight_out(
    home: Path, inclusive: bool
) -> None:
    day = 86_400
    client = FakeTelegram(
        {
            ENTRY: [
                text(ENTRY, 10, at(-1)),  # 23:59:59 the day before
                text(ENTRY, 11, at(0)),  # exactly the --since midnight
                text(ENTRY, 12, at(2 * day - 1)),  # the last second of the --until day
                text(ENTRY, 13, at(2 * day)),  # the midnight that ends the --until day
                text(ENTRY, 14, at(2 * day + 5)),
            ],
            RISK: [text(RISK, 3, at(2 * day))],
        },
        inclusive_offset_date=inclusive,
    )
    out = home / "feed.jsonl"
    done = run(home, client, "--since", SINCE, "--until", "2026-02-02", "--out", str(out))
    assert done.code == 0
    assert [(line["message_id"], line["at_ms"]) for line in lines(out)] == [(11, 0), (12, 172_799_000)]
    assert done.err_lines == [
        f"chat {ENTRY}: 2 messages, 0 skipped (no text), 2026-02-01 00:00:00 .. 2026-02-02 23:59:59 UTC",
        f"chat {RISK}: 0 messages, 0 skipped (no text)",
    ]
    # Past --until the read looks ahead (``UNTIL_LOOKAHEAD``) for a late in-window message: 11, 12,
    # 13, 14, then RISK's 3; 10 as well when Telegram counts the offset date in (dropped here).
    assert client.yielded == (6 if inclusive else 5)


def test_media_without_text_and_service_messages_are_skipped_and_counted(home: Path) -> None:
    client = FakeTelegram(
        {
            ENTRY: [
                photo(ENTRY, 1, at(10)),  # a chart without caption
                photo(ENTRY, 2, at(20), caption="🔥 caption is text"),
                pinned(ENTRY, 3, at(30)),
                text(ENTRY, 4, at(40), "  \n"),
                text(ENTRY, 5, at(50), "plain"),
            ],
            RISK: [pinned(RISK, 9, at(5))],
        }
    )
    out = home / "feed.jsonl"
    done = run(home, client, "--since", SINCE, "--out", str(out))
    assert done.code == 0
    assert [(line["message_id"], line["text"]) for line in lines(out)] == [
        (2, "🔥 caption is text"),
        (5, "plain"),
    ]
    assert done.err_lines == [
        f"chat {ENTRY}: 2 messages, 3 skipped (no text), 2026-02-01 00:00:20 .. 2026-02-01 00:00:50 UTC",
        f"chat {RISK}: 0 messages, 1 skipped (no text)",
    ]


# -- Telegram trouble -------------------------------------------------------------------------------


def reference(home: Path, history: dict[int, list[Any]]) -> bytes:
    """The file an undisturbed export of ``history`` writes."""
    out = home / "reference.jsonl"
    assert run(home, FakeTelegram(history), "--since", SINCE, "--out", str(out)).code == 0
    return out.read_bytes()


def test_flood_wait_mid_channel_is_waited_out_then_the_read_goes_on_without_gap(home: Path) -> None:
    def history() -> dict[int, list[Any]]:
        entry = [
            text(ENTRY, 41, at(60)),
            photo(ENTRY, 42, at(61)),
            text(ENTRY, 43, at(62)),
            text(ENTRY, 44, at(63)),
        ]
        return {ENTRY: entry, RISK: [text(RISK, 7, at(30))]}

    client = FakeTelegram(history())
    client.raise_at[2] = FloodWaitError(request=None, capture=36)  # after 41 and the skipped 42
    out = home / "feed.jsonl"
    done = run(home, client, "--since", SINCE, "--out", str(out))
    assert done.code == 0
    assert done.sleeps == [37]
    assert done.err_lines == [
        "waiting 37 s (Telegram flood limit)",
        f"chat {ENTRY}: 3 messages, 1 skipped (no text), 2026-02-01 00:01:00 .. 2026-02-01 00:01:03 UTC",
        f"chat {RISK}: 1 messages, 0 skipped (no text), 2026-02-01 00:00:30 .. 2026-02-01 00:00:30 UTC",
    ]
    assert [line["message_id"] for line in lines(out)] == [41, 43, 44, 7]
    assert client.reads[:2] == [(ENTRY, 0, MIDNIGHT - dt.timedelta(seconds=1)), (ENTRY, 42, None)]
    assert out.read_bytes() == reference(home, history())


def test_a_dropped_connection_is_retried_after_a_back_off(home: Path) -> None:
    client = FakeTelegram(two_channels())
    client.raise_at[4] = ConnectionError("Connection reset by peer")  # in RISK, after its 7
    out = home / "feed.jsonl"
    done = run(home, client, "--since", SINCE, "--out", str(out))
    assert done.code == 0
    assert done.sleeps == [1.0]
    assert done.err_lines[0] == f"chat {RISK}: ConnectionError: Connection reset by peer; retrying in 1 s"
    assert len(done.err_lines) == 3  # and the two channel lines
    assert client.reads[-1] == (RISK, 7, None)
    assert out.read_bytes() == reference(home, two_channels())


def test_an_export_that_keeps_failing_stops_with_one_line_and_a_rerun_finishes_it(home: Path) -> None:
    out = home / "feed.jsonl"
    broken = FakeTelegram(two_channels())
    broken.broken_after = 2  # the network goes away after ENTRY's 41 and 42
    done = run(home, broken, "--since", SINCE, "--out", str(out))
    assert done.code == 1
    assert done.out == ""
    assert done.sleeps == [1.0, 2.0, 4.0, 8.0, 16.0]
    assert len(done.err_lines) == 6  # five "retrying in" lines, then why it stopped
    assert done.err_lines[-1] == (
        f"shortfsm export: chat {ENTRY}: Telegram failed 6 times in a row (ConnectionError: Connection "
        f"to Telegram failed 5 time(s)); {out} holds everything read so far: run the same command again "
        "to resume"
    )
    assert [line["message_id"] for line in lines(out)] == [41, 42]

    again = FakeTelegram(two_channels())
    rerun = run(home, again, "--since", SINCE, "--out", str(out))
    assert rerun.code == 0
    assert rerun.err_lines[0].endswith("(resumed after message 42)")
    assert again.reads[0] == (ENTRY, 42, None)
    assert out.read_bytes() == reference(home, two_channels())


def test_ctrl_c_mid_export_then_rerun_gives_the_same_file_as_an_undisturbed_run(home: Path) -> None:
    out = home / "feed.jsonl"
    client = FakeTelegram(two_channels())
    client.raise_at[4] = KeyboardInterrupt()  # in RISK, after its 7
    done = run(home, client, "--since", SINCE, "--out", str(out))
    assert (done.code, done.err_lines) == (
        1,
        [f"shortfsm export: interrupted; {out} holds everything read so far: run the same command to resume"],
    )
    assert client.disconnects == 1
    assert run(home, FakeTelegram(two_channels()), "--since", SINCE, "--out", str(out)).code == 0
    assert out.read_bytes() == reference(home, two_channels())


@pytest.mark.parametrize("cut", ["mid-line", "all-but-newline"])
def test_a_torn_last_line_is_cut_before_appending(home: Path, cut: str) -> None:
    whole = reference(home, two_channels())
    out = home / "feed.jsonl"
    kept = b"".join(whole.splitlines(keepends=True)[:2])
    third = whole.splitlines(keepends=True)[2]  # ENTRY's 43
    torn = third[:25] if cut == "mid-line" else third[:-1]  # the second one parses: still re-read
    out.write_bytes(kept + torn)
    client = FakeTelegram(two_channels())
    done = run(home, client, "--since", SINCE, "--out", str(out))
    assert done.code == 0
    assert done.err_lines[0] == (
        f"{out}: dropped a partial last line ({len(torn)} bytes) left by an interrupted run"
    )
    assert client.reads[0] == (ENTRY, 42, None)
    assert out.read_bytes() == whole


def test_a_file_exported_with_another_since_is_refused_untouched(home: Path) -> None:
    whole = reference(home, two_channels())
    out = home / "reference.jsonl"
    done = run(home, FakeTelegram(two_channels()), "--since", "2026-01-31", "--out", str(out))
    assert (done.code, done.err_lines) == (
        2,
        [
            f"shortfsm export: {out} was exported with --since 2026-02-01, not 2026-01-31: run with that "
            "--since to finish it, or choose another --out"
        ],
    )
    assert out.read_bytes() == whole


def test_a_hand_written_feed_is_refused_untouched_even_with_a_torn_end(home: Path) -> None:
    out = home / "demo.jsonl"
    out.write_bytes(b'{"at_ms": 0, "chat_id": -1002171239233, "message_id": 1, "text": "x"}\n{"at_ms": 5')
    done = run(home, FakeTelegram(two_channels()), "--since", SINCE, "--out", str(out))
    assert (done.code, done.err_lines) == (
        2,
        [
            f"shortfsm export: {out} is not a `shortfsm export` file (line 1 has no date_ms): "
            "choose another --out"
        ],
    )
    assert out.read_bytes().endswith(b'{"at_ms": 5')


def test_a_channel_the_session_cannot_resolve_stops_at_once_with_one_line(home: Path) -> None:
    client = FakeTelegram(two_channels())
    client.raise_at[3] = ValueError("Could not find the input entity for PeerChannel(channel_id=3096527269)")
    out = home / "feed.jsonl"
    done = run(home, client, "--since", SINCE, "--out", str(out))
    assert (done.code, done.sleeps) == (1, [])
    assert done.err_lines == [
        f"shortfsm export: chat {RISK} cannot be read (ValueError: Could not find the input entity for "
        "PeerChannel(channel_id=3096527269)): is the account a member? join the channel, then run "
        "`shortfsm login` again (it caches the channels)"
    ]
    assert [line["message_id"] for line in lines(out)] == [41, 42, 43]


def test_a_channel_telegram_refuses_is_not_retried(home: Path) -> None:
    client = FakeTelegram(two_channels())
    client.raise_at[0] = ChannelPrivateError(request=None)
    done = run(home, client, "--since", SINCE, "--out", str(home / "feed.jsonl"))
    assert (done.code, done.sleeps, len(done.err_lines)) == (1, [], 1)
    assert done.err_lines[0].startswith(
        f"shortfsm export: chat {ENTRY}: Telegram refused to read it (ChannelPrivateError: "
    )


# -- the session ------------------------------------------------------------------------------------


def test_a_session_telegram_does_not_accept_exits_3_with_one_line(home: Path) -> None:
    client = FakeTelegram(two_channels(), authorised=False)
    out = home / "feed.jsonl"
    done = run(home, client, "--since", SINCE, "--out", str(out))
    session = home / "var" / "tg.session"
    assert (done.code, done.out, done.err_lines) == (
        3,
        "",
        [
            "shortfsm export: the Telegram session is not logged in: "
            f"run `shortfsm login --session {session}` first"
        ],
    )
    assert client.reads == []
    assert not out.exists()


def test_a_missing_session_exits_3_before_any_client_is_built(home: Path) -> None:
    (home / "var" / "tg.session").unlink()
    done = run(home, None, "--since", SINCE)
    session = home / "var" / "tg.session"
    assert (done.code, done.err_lines, done.factory_calls) == (
        3,
        [
            f"shortfsm export: Telegram session {session} does not exist: "
            f"run `shortfsm login --session {session}`"
        ],
        [],
    )


# -- the real command line --------------------------------------------------------------------------


def shortfsm(cwd: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("shortfsm")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "fsm.ops.cli"]
    return subprocess.run([*command, *argv], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["--since", "nonsense"], "shortfsm export: --since wants a day as YYYY-MM-DD, not 'nonsense'"),
        (["--since", "2026-02-30"], "shortfsm export: --since wants a day as YYYY-MM-DD, not '2026-02-30'"),
        (
            ["--since", SINCE, "--until", "2026-01-31"],
            "shortfsm export: --until 2026-01-31 is before --since 2026-02-01",
        ),
    ],
    ids=["not-a-day", "no-such-day", "until-before-since"],
)
def test_bad_days_exit_2_with_one_line_through_the_real_entry_point(
    tmp_path: Path, argv: list[str], line: str
) -> None:
    done = shortfsm(tmp_path, "export", *argv)
    assert (done.returncode, done.stdout, done.stderr) == (2, "", line + "\n")


def test_the_real_entry_point_names_shortfsm_login_for_a_missing_session(home: Path) -> None:
    (home / "var" / "tg.session").unlink()
    done = shortfsm(home, "export", "--since", SINCE)
    session = home / "var" / "tg.session"
    assert done.returncode == 3
    assert done.stderr.splitlines() == [
        f"shortfsm export: Telegram session {session} does not exist: "
        f"run `shortfsm login --session {session}`"
    ]
    assert "Traceback" not in done.stderr


def test_registering_export_does_not_load_telethon() -> None:
    probe = "import sys, fsm.ops.cli as c; c.build_parser(); print('telethon' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout == "False\n"
