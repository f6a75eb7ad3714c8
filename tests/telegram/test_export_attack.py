"""Breaks found by an adversary in ``shortfsm export``, each pinned with the fake Telegram of
``test_export`` (no test here reaches Telegram: every client is ``FakeTelegram``)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from telethon.errors import FloodWaitError
from test_export import ENTRY, RISK, SINCE, FakeTelegram, at, home, lines, run, shortfsm, text

__all__ = ["home"]  # the fixture, shared


def test_a_second_export_to_the_same_file_is_refused_with_one_line(home: Path) -> None:
    out = home / "feed.jsonl"
    with open(str(out) + ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("4242\n")
        held.flush()
        client = FakeTelegram({ENTRY: [text(ENTRY, 1, at(5))], RISK: []})
        done = run(home, client, "--since", SINCE, "--out", str(out))
    assert done.code == 1
    assert done.err_lines == [
        f"shortfsm export: {out} is being written by another shortfsm export (pid 4242)"
    ]
    assert client.reads == [] and not out.exists()
    again = run(home, client, "--since", SINCE, "--out", str(out))
    assert again.code == 0 and [m["message_id"] for m in lines(out)] == [1]


def test_an_id_going_backwards_is_written_not_dropped(home: Path) -> None:
    out = home / "feed.jsonl"
    history = {ENTRY: [text(ENTRY, 10, at(5)), text(ENTRY, 12, at(6)), text(ENTRY, 11, at(7))], RISK: []}

    class OutOfOrder(FakeTelegram):
        async def _iter(self, chat, limit, offset_date, min_id, reverse):  # type: ignore[no-untyped-def]
            self.reads.append((chat, min_id, offset_date))
            for m in self.history.get(chat, []):  # as stored: 10, 12, 11
                if m.id > min_id:
                    yield m

    done = run(home, OutOfOrder(history), "--since", SINCE, "--out", str(out))
    assert done.code == 0
    assert [m["message_id"] for m in lines(out)] == [10, 12, 11]
    again = run(home, OutOfOrder(history), "--since", SINCE, "--out", str(out))
    assert again.code == 0 and [m["message_id"] for m in lines(out)] == [10, 12, 11]


def test_a_message_dated_after_until_does_not_end_the_channel(home: Path) -> None:
    out = home / "feed.jsonl"
    day = 86_400
    history = {
        ENTRY: [
            text(ENTRY, 1, at(5)),
            text(ENTRY, 2, at(day + 5)),
            text(ENTRY, 3, at(10)),
            text(ENTRY, 4, at(day + 9)),
        ],
        RISK: [],
    }
    done = run(home, FakeTelegram(history), "--since", SINCE, "--until", SINCE, "--out", str(out))
    assert done.code == 0
    assert [m["message_id"] for m in lines(out)] == [1, 3]


def test_a_flood_wait_over_an_hour_stops_resumable_with_one_line(home: Path) -> None:
    out = home / "feed.jsonl"
    client = FakeTelegram({ENTRY: [text(ENTRY, 1, at(5)), text(ENTRY, 2, at(6))], RISK: []})
    client.raise_at[1] = FloodWaitError(request=None, capture=86_400)
    done = run(home, client, "--since", SINCE, "--out", str(out))
    assert done.code == 1 and done.sleeps == []
    assert done.err_lines == [
        f"shortfsm export: chat {ENTRY}: Telegram asks to wait 86401 s (over 3600 s); {out} holds "
        "everything read so far: run the same command again later to resume"
    ]
    assert [m["message_id"] for m in lines(out)] == [1]


def test_out_a_directory_exits_2(home: Path) -> None:
    done = run(home, None, "--since", SINCE, "--out", str(home))
    assert done.code == 2
    assert done.err_lines == [f"shortfsm export: --out {home} is a directory"]


def test_since_year_one_exits_2_through_the_real_entry_point(tmp_path: Path) -> None:
    done = shortfsm(tmp_path, "export", "--since", "0001-01-01")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == "shortfsm export: --since 0001-01-01 is before Telegram existed (2013-08-14)\n"
    assert os.listdir(tmp_path) == []
