"""``shortfsm data`` as a subprocess against a loopback archive: exact exit codes, never a traceback."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_history_kit import Archive, funding_csv, kline_csv, ms, serve

SHORTFSM = Path(sys.executable).parent / "shortfsm"
LEADING = (
    "🔥 실시간 주도 마켓 분석 (DOGE)\n\n📈 주도 마켓: 바이낸스\n\n⏱️Binance 펀딩비 및 카운트다운 : -0.0100% / "
    "01:23:45 (4h)\n\n🥇지난 24H 등락률 및 순위 : +8.50% / (상승) 상위 15위\n\n🏷️카테고리 : Meme"
)


@pytest.fixture(scope="module")
def archive() -> Iterator[Archive]:
    a = Archive()
    a.add("klines", "BTCUSDT", "2025-11", kline_csv(ms("2025-11-01"), ms("2025-12-01"), header=True))
    a.add("fundingRate", "DOGEUSDT", "2025-11", funding_csv(ms("2025-11-01"), ms("2025-12-01"), header=False))
    with serve(a) as served:
        yield served


def shortfsm(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SHORTFSM), "data", *args], capture_output=True, text=True, cwd=cwd, timeout=60, check=False
    )


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_covered_window_exits_0_and_the_second_run_sends_nothing(archive: Archive, tmp_path: Path) -> None:
    args = ["--symbol", "btcusdt", "--since", "2025-11-02", "--until", "2025-11-03", "--datasets", "klines"]
    args += ["--cache", str(tmp_path / "c"), "--archive-url", archive.url, "--rest-url", archive.url]
    before = len(archive.paths())
    first = shortfsm(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert len(archive.paths()) == before + 2  # the month's .CHECKSUM and zip
    assert "BTCUSDT" in first.stdout and "klines" in first.stdout
    assert (tmp_path / "c" / "klines" / "BTCUSDT" / "2025-11.parquet").is_file()
    second = shortfsm(*args, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert len(archive.paths()) == before + 2
    assert "Traceback" not in first.stderr + second.stderr


def test_gaps_exit_1_and_are_listed_with_their_times(archive: Archive, tmp_path: Path) -> None:
    # Nothing in the archive for this symbol, and the "REST" URL answers 404 to /fapi/v1/klines.
    args = ["--symbol", "GAPUSDT", "--since", "2025-11-05", "--until", "2025-11-05", "--datasets", "klines"]
    args += ["--cache", str(tmp_path / "c"), "--archive-url", archive.url, "--rest-url", archive.url]
    done = shortfsm(*args, cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert (
        "gap GAPUSDT klines 2025-11-05T00:00:00Z .. 2025-11-06T00:00:00Z (1 d): REST klines GAPUSDT"
        in done.stdout
    )
    assert "Traceback" not in done.stderr


def test_network_down_is_one_line_and_exit_1(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    done = shortfsm(
        *("--symbol", "BTCUSDT", "--since", "2025-11-05", "--until", "2025-11-06"),
        *("--cache", str(tmp_path / "c"), "--archive-url", url, "--rest-url", url),
        cwd=tmp_path,
    )
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("network down: archive unreachable"), done.stderr
    assert done.stdout == ""
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--symbol", "BTCUSDT", "--since", "2025-13-01"], "dates are YYYY-MM-DD"),
        (["--symbol", "BTCUSDT", "--since", "2025-11-05", "--until", "2025-11-01"], "is before --since"),
        (
            ["--symbol", "BTCUSDT", "--since", "2025-11-01", "--datasets", "trades"],
            "unknown dataset(s) trades",
        ),
        (["--symbol", "BTCUSDT"], "--since is required"),
        ([], "give --symbol"),
        (["--feed", "missing.jsonl"], "no feed file"),
        (["--symbol", "BTCUSDT", "--since", "2025-11-01", "--horizon-days", "x"], "invalid int value"),
        (["--symbol", "../../x", "--since", "2025-11-01"], "not a symbol: '../../x'"),
        (["--symbol", "ＢＴＣUSDT", "--since", "2025-11-01"], "not a symbol"),
        (["--symbol", "BTCUSDT", "--since", "0001-01-01"], "shortfsm data: "),
        (["--symbol", "BTCUSDT", "--since", "2019-08-31"], "--since is before 2019-09-01"),
        (["--symbol", "BTCUSDT", "--since", "9999-12-31"], "--since 9999-12-31 is in the future"),
    ],
)
def test_bad_arguments_exit_2(tmp_path: Path, args: list[str], says: str) -> None:
    done = shortfsm(*args, "--cache", str(tmp_path / "c"), cwd=tmp_path)
    assert done.returncode == 2
    assert says in done.stderr
    assert "Traceback" not in done.stderr


def test_feed_symbols_and_dates_give_the_windows(archive: Archive, tmp_path: Path) -> None:
    feed = tmp_path / "feed.jsonl"
    message = {"at_ms": 0, "chat_id": -1, "message_id": 1, "text": LEADING, "date_ms": ms("2025-11-03T10:00")}
    undated = {"at_ms": 5, "chat_id": -1, "message_id": 2, "text": LEADING}
    feed.write_text(json.dumps(message) + "\n" + json.dumps(undated) + "\n", encoding="utf-8")
    done = shortfsm(
        *("--feed", str(feed), "--horizon-days", "1", "--datasets", "fundingRate"),
        *("--cache", str(tmp_path / "c"), "--archive-url", archive.url, "--rest-url", archive.url),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (
        "DOGEUSDT" in done.stdout and "2025-11-03T00:00" in done.stdout and "2025-11-05T00:00" in done.stdout
    )
    assert "1 feed message(s) without date_ms skipped" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_second_shortfsm_data_on_one_cache_says_so_in_one_line_and_exits_1(tmp_path: Path) -> None:
    import fcntl

    cache = tmp_path / "c"
    cache.mkdir()
    url = f"http://127.0.0.1:{closed_port()}"  # nothing may be sent anyway
    with (cache / ".lock").open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("777\n")
        held.flush()
        done = shortfsm(
            *("--symbol", "BTCUSDT", "--since", "2025-11-05", "--until", "2025-11-06"),
            *("--cache", str(cache), "--archive-url", url, "--rest-url", url),
            cwd=tmp_path,
        )
    assert done.returncode == 1
    assert done.stderr.splitlines() == [f"the cache {cache} is in use by another shortfsm data (pid 777)"]
    assert done.stdout == ""


def test_a_feed_date_out_of_range_is_skipped_and_reported(archive: Archive, tmp_path: Path) -> None:
    feed = tmp_path / "feed.jsonl"
    good = {"at_ms": 0, "chat_id": -1, "message_id": 1, "text": LEADING, "date_ms": ms("2025-11-03T10:00")}
    far = {"at_ms": 5, "chat_id": -1, "message_id": 2, "text": LEADING, "date_ms": 10**18}
    feed.write_text(json.dumps(good) + "\n" + json.dumps(far) + "\n", encoding="utf-8")
    done = shortfsm(
        *("--feed", str(feed), "--horizon-days", "1", "--datasets", "fundingRate"),
        *("--cache", str(tmp_path / "c"), "--archive-url", archive.url, "--rest-url", archive.url),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "problem: feed message 2: symbol 'DOGEUSDT' date_ms 1000000000000000000 skipped" in done.stderr
    assert "Traceback" not in done.stderr
