"""Breaks found by an adversary in ``MarketCache`` / ``shortfsm data``, each pinned by a loopback test
(archive + fake REST on 127.0.0.1, ``test_history_kit.Venue``): exact rows, requests and lines."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
from test_history_kit import DAY, MIN, Venue, kline_csv, kline_row, ms, serve_venue

import binance.history.cache as cache_mod
from binance.history import MarketCache
from binance.history.archive import BadData, parse_archive_file

T = TypeVar("T")
NOW = ms("2026-03-15T12:00")


def run(coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout))


def cache_at(root: Path, v: Venue) -> MarketCache:
    return MarketCache(root, archive_url=v.url, rest=v.url, clock_ms=lambda: NOW)


def ensure(root: Path, v: Venue, symbol: str, dataset: str, start: int, end: int) -> Any:
    with cache_at(root, v) as c:
        return c.ensure(symbol, dataset, start, end)


def minutes(start: int, end: int) -> list[int]:
    return list(range(start, end, MIN))


def stored(root: Path, symbol: str, dataset: str, start: int, end: int) -> list[int]:
    with MarketCache(root) as c:
        return list(c.read(symbol, dataset, start, end)["open_time"])


def kline_paths(v: Venue) -> list[str]:
    return [p for p, _ in v.rest_calls if p != "/fapi/v1/time"]


# -- 1. one writer per cache ---------------------------------------------------------------


def test_a_second_writer_on_one_cache_is_refused_and_names_the_holder(tmp_path: Path) -> None:
    root = tmp_path / "c"
    root.mkdir()
    with (root / ".lock").open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("4242\n")
        held.flush()
        with serve_venue(Venue()) as v, cache_at(root, v) as c, pytest.raises(cache_mod.CacheBusy) as err:
            c.ensure("BTCUSDT", "klines", ms("2026-03-14"), ms("2026-03-15"))
        assert str(err.value) == f"the cache {root} is in use by another shortfsm data (pid 4242)"
        assert v.rest_calls == [] and v.archive.seen == []


def test_concurrent_aensure_in_one_process_are_serialised_and_lose_nothing(tmp_path: Path) -> None:
    async def both(v: Venue) -> list[Any]:
        c = cache_at(tmp_path / "c", v)
        try:
            return list(
                await asyncio.gather(
                    c.aensure("YUSDT", "klines", ms("2026-03-01"), ms("2026-03-08")),
                    c.aensure("YUSDT", "klines", ms("2026-03-08"), ms("2026-03-15")),
                )
            )
        finally:
            await c.aclose()
            c.close()

    with serve_venue(Venue()) as v:
        reports = run(both(v))
    assert [r.gaps for r in reports] == [[], []]
    assert stored(tmp_path / "c", "YUSDT", "klines", ms("2026-03-01"), ms("2026-03-15")) == minutes(
        ms("2026-03-01"), ms("2026-03-15")
    )


# -- 2. a bad monthly zip costs only what it must ----------------------------------------------


def test_a_bad_monthly_zip_falls_back_to_daily_zips_then_rest(tmp_path: Path) -> None:
    v = Venue()
    v.archive.add(
        "klines",
        "BTCUSDT",
        "2026-02",
        kline_csv(ms("2026-02-01"), ms("2026-03-01"), header=True),
        bad_checksum=True,
    )
    for d in range(ms("2026-02-01"), ms("2026-03-01"), DAY):
        if d != ms("2026-02-10"):  # the 10th: no daily zip either -> REST
            day = f"2026-02-{(d - ms('2026-02-01')) // DAY + 1:02d}"
            v.archive.add("klines", "BTCUSDT", day, kline_csv(d, d + DAY, header=False))
    with serve_venue(v):
        r = ensure(tmp_path / "c", v, "BTCUSDT", "klines", ms("2026-02-01"), ms("2026-03-01"))
        again = ensure(tmp_path / "c", v, "BTCUSDT", "klines", ms("2026-02-01"), ms("2026-03-01"))
    assert r.gaps == [] and r.archive_files == 27 and r.rest_rows == 1440
    assert len(r.problems) == 1 and "sha256 differs" in r.problems[0]
    assert {q["startTime"] for _, q in v.rest_calls} == {str(ms("2026-02-10"))}
    assert stored(tmp_path / "c", "BTCUSDT", "klines", ms("2026-02-01"), ms("2026-03-01")) == minutes(
        ms("2026-02-01"), ms("2026-03-01")
    )
    assert again.requests == 0 and again.gaps == []


def test_a_monthly_zip_missing_days_fetches_exactly_those_days(tmp_path: Path) -> None:
    v = Venue()
    hole = frozenset(minutes(ms("2026-02-10"), ms("2026-02-12")))
    v.archive.add(
        "klines", "BTCUSDT", "2026-02", kline_csv(ms("2026-02-01"), ms("2026-03-01"), header=True, skip=hole)
    )
    v.archive.add(
        "klines", "BTCUSDT", "2026-02-10", kline_csv(ms("2026-02-10"), ms("2026-02-11"), header=True)
    )
    with serve_venue(v):
        r = ensure(tmp_path / "c", v, "BTCUSDT", "klines", ms("2026-02-01"), ms("2026-03-01"))
    assert r.gaps == [] and r.archive_files == 2 and r.rest_rows == 1440
    assert [q["startTime"] for _, q in v.rest_calls] == [str(ms("2026-02-11"))]
    assert len(stored(tmp_path / "c", "BTCUSDT", "klines", ms("2026-02-01"), ms("2026-03-01"))) == 28 * 1440


# -- 3. a short REST page does not end the window ----------------------------------------------


def test_a_short_rest_page_keeps_paging_until_the_window_ends(tmp_path: Path) -> None:
    calls = {"n": 0}

    def short_first(path: str, qs: dict[str, str]) -> tuple[int, bytes, dict[str, str]] | None:
        if path != "/fapi/v1/klines":
            return None
        calls["n"] += 1
        if calls["n"] > 1:
            return None
        s = int(qs["startTime"])
        return 200, json.dumps([kline_row(t) for t in minutes(s, s + 1000 * MIN)]).encode(), {}

    v = Venue(rest_hook=short_first)
    with serve_venue(v):
        r = ensure(tmp_path / "c", v, "BTCUSDT", "klines", ms("2026-03-13"), ms("2026-03-15"))
        again = ensure(tmp_path / "c", v, "BTCUSDT", "klines", ms("2026-03-13"), ms("2026-03-15"))
    assert r.gaps == [] and r.rest_rows == 2 * 1440
    assert [int(q["startTime"]) for _, q in v.rest_calls] == [
        ms("2026-03-13"),
        ms("2026-03-13") + 1000 * MIN,
        ms("2026-03-13") + 2500 * MIN,
    ]
    assert again.requests == 0


def test_an_empty_page_before_the_end_leaves_the_rest_as_the_source_said(tmp_path: Path) -> None:
    v = Venue(rest_missing=set(minutes(ms("2026-03-14T06:00"), ms("2026-03-15"))))
    with serve_venue(v):
        r = ensure(tmp_path / "c", v, "BTCUSDT", "klines", ms("2026-03-14"), ms("2026-03-15"))
    assert [(g.start_ms, g.end_ms) for g in r.gaps] == [(ms("2026-03-14T06:00"), ms("2026-03-15"))]
    assert len(v.rest_calls) == 2  # 360 rows, then an empty page: the source has nothing more


# -- 4. bad content is never stored silently ----------------------------------------------------


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("{t},95000.0,94000.0,95000.0,95000.0,1,0,1,1,1,1,0", "high 94000.0 < low"),
        ("{t},nan,95001.0,94999.0,95000.0,1,0,1,1,1,1,0", "not a positive finite"),
        ("{t},-1,95001.0,94999.0,95000.0,1,0,1,1,1,1,0", "not a positive finite"),
        ("{t},95000.0,95001.0,94999.0,96000.0,1,0,1,1,1,1,0", "outside [low, high]"),
        ("{t1},95000.0,95001.0,94999.0,95000.0,1,0,1,1,1,1,0", "not on the minute"),
    ],
)
def test_impossible_candles_are_bad_data(line: str, why: str) -> None:
    t = ms("2026-02-01")
    text = kline_csv(t, t + 3 * MIN, header=False) + line.format(t=t + 3 * MIN, t1=t + 3 * MIN + 1) + "\n"
    from test_history_kit import zipped

    with pytest.raises(BadData, match=why.replace("[", r"\[").replace("]", r"\]")):
        parse_archive_file("klines", zipped("x.csv", text), "x.zip")


def test_conflicting_duplicates_are_bad_data_identical_ones_collapse() -> None:
    from test_history_kit import zipped

    t = ms("2026-02-01")
    same = kline_csv(t, t + 2 * MIN, header=False) * 2
    assert parse_archive_file("klines", zipped("x.csv", same), "x").times == [t, t + MIN]
    other = kline_csv(t, t + 2 * MIN, header=False) + f"{t},1.0,1.0,1.0,1.0,1,0,1,1,1,1,0\n"
    with pytest.raises(BadData, match=r"open_time .* twice with different values"):
        parse_archive_file("klines", zipped("x.csv", other), "x")


def test_rows_outside_the_file_are_dropped_and_reported(tmp_path: Path) -> None:
    v = Venue()
    stray = kline_csv(ms("2026-02-10"), ms("2026-02-10") + 2 * MIN, header=False)
    v.archive.add(
        "klines", "BTCUSDT", "2026-03-01", kline_csv(ms("2026-03-01"), ms("2026-03-02"), header=True) + stray
    )
    with serve_venue(v):
        r = ensure(tmp_path / "c", v, "BTCUSDT", "klines", ms("2026-03-01"), ms("2026-03-02"))
    assert r.gaps == [] and r.rows == 1440
    assert r.problems == [
        "data/futures/um/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2026-03-01.zip: 2 row(s) outside"
        " 2026-03-01T00:00:00Z .. 2026-03-02T00:00:00Z dropped"
    ]
    assert stored(tmp_path / "c", "BTCUSDT", "klines", ms("2026-02-01"), ms("2026-03-01")) == []


# -- 5. a server ignoring startTime cannot loop us ---------------------------------------------


@pytest.mark.parametrize("dataset", ["klines", "fundingRate"])
def test_a_server_ignoring_start_time_is_bad_data_not_a_loop(tmp_path: Path, dataset: str) -> None:
    def same_page(path: str, qs: dict[str, str]) -> tuple[int, bytes, dict[str, str]] | None:
        s = ms("2026-03-14")
        if path == "/fapi/v1/klines":
            return 200, json.dumps([kline_row(t) for t in minutes(s, s + 100 * MIN)]).encode(), {}
        if path == "/fapi/v1/fundingRate":
            rows = [
                {"fundingTime": s + i * 3 * MIN, "fundingRate": "0.0001", "markPrice": "1"}
                for i in range(100)
            ]
            return 200, json.dumps(rows).encode(), {}
        return None

    v = Venue(rest_hook=same_page)
    with serve_venue(v):
        r = ensure(tmp_path / "c", v, "BTCUSDT", dataset, ms("2026-03-14"), ms("2026-03-15"))
    assert len(kline_paths(v)) <= 3
    assert r.gaps and any("did not advance" in p for p in r.problems)


# -- 6. symbols are symbols ---------------------------------------------------------------------


@pytest.mark.parametrize("symbol", ["../../x", "BTC/USDT", "btc usdt", "ＢＴＣUSDT", "B", ""])
def test_a_symbol_that_is_not_one_is_refused_everywhere(tmp_path: Path, symbol: str) -> None:
    with MarketCache(tmp_path / "c") as c:
        for call in (c.ensure, c.read, c.known_gaps):
            with pytest.raises(ValueError, match="not a symbol"):
                call(symbol, "klines", ms("2026-03-01"), ms("2026-03-02"))
    assert not (tmp_path / "c").exists() and not (tmp_path / "x").exists()


# -- 7. a damaged month is repaired -------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncate", "delete", "fewer rows"])
def test_a_damaged_month_file_is_fetched_again(tmp_path: Path, damage: str) -> None:
    v = Venue()
    v.archive.add("klines", "BTCUSDT", "2026-02", kline_csv(ms("2026-02-01"), ms("2026-03-01"), header=True))
    root = tmp_path / "c"
    with serve_venue(v):
        ensure(root, v, "BTCUSDT", "klines", ms("2026-02-01"), ms("2026-03-01"))
        month = root / "klines" / "BTCUSDT" / "2026-02.parquet"
        if damage == "truncate":
            month.write_bytes(month.read_bytes()[:100])
        elif damage == "delete":
            month.unlink()
        else:
            import pyarrow.parquet as pq

            table = pq.read_table(month)
            pq.write_table(table.slice(0, 1440 * 3), month)
        r = ensure(root, v, "BTCUSDT", "klines", ms("2026-02-01"), ms("2026-03-01"))
    assert r.gaps == [] and r.archive_files == 1
    assert stored(root, "BTCUSDT", "klines", ms("2026-02-01"), ms("2026-03-01")) == minutes(
        ms("2026-02-01"), ms("2026-03-01")
    )
    if damage == "truncate":
        assert (root / "klines" / "BTCUSDT" / "2026-02.parquet.corrupt").exists()
        assert len(r.problems) == 1 and "unreadable" in r.problems[0]
    assert not list(root.rglob("*.tmp"))


# -- 10. malformed REST rows --------------------------------------------------------------------


@pytest.mark.parametrize(
    "rows",
    [[["abc", "1", "1", "1", "1"]], [None], [{"open_time": 1}], [[ms("2026-03-14"), None, "1", "1", "1"]]],
)
def test_malformed_rest_rows_are_bad_data_and_the_run_goes_on(tmp_path: Path, rows: list[Any]) -> None:
    def bad(path: str, qs: dict[str, str]) -> tuple[int, bytes, dict[str, str]] | None:
        if path == "/fapi/v1/klines" and qs["symbol"] == "AUSDT":
            return 200, json.dumps(rows).encode(), {}
        return None

    v = Venue(rest_hook=bad)
    with serve_venue(v), cache_at(tmp_path / "c", v) as c:
        first = c.ensure("AUSDT", "klines", ms("2026-03-14"), ms("2026-03-15"))
        second = c.ensure("BUSDT", "klines", ms("2026-03-14"), ms("2026-03-15"))
    assert len(first.problems) == 1 and first.problems[0].startswith("REST klines AUSDT")
    assert first.gaps and second.gaps == [] and second.rows == 1440


# -- 11. a read-only cache can be read -----------------------------------------------------------


def test_read_needs_no_writable_manifest(tmp_path: Path) -> None:
    v = Venue()
    root = tmp_path / "c"
    with serve_venue(v):
        ensure(root, v, "BTCUSDT", "klines", ms("2026-03-14"), ms("2026-03-15"))
    for name in os.listdir(root):
        if name.startswith("manifest") or name == ".lock":
            (root / name).unlink()
    assert stored(root, "BTCUSDT", "klines", ms("2026-03-14"), ms("2026-03-15")) == minutes(
        ms("2026-03-14"), ms("2026-03-15")
    )
    assert not (root / "manifest.sqlite").exists() and not (root / ".lock").exists()


# -- 12. a ban mid-window keeps what arrived ------------------------------------------------------


def test_pages_fetched_before_a_ban_are_stored(tmp_path: Path) -> None:
    calls = {"n": 0}

    def ban_second(path: str, qs: dict[str, str]) -> tuple[int, bytes, dict[str, str]] | None:
        if path != "/fapi/v1/klines":
            return None
        calls["n"] += 1
        if calls["n"] == 2:
            body = json.dumps({"code": -1003, "msg": "Way too many requests; IP banned until 1893456000000."})
            return 418, body.encode(), {"Retry-After": "60"}
        return None

    v = Venue(rest_hook=ban_second)
    with serve_venue(v):
        r = ensure(tmp_path / "c", v, "BTCUSDT", "klines", ms("2026-03-13"), ms("2026-03-15"))
    assert r.rest_rows == 1500
    assert stored(tmp_path / "c", "BTCUSDT", "klines", ms("2026-03-13"), ms("2026-03-15")) == minutes(
        ms("2026-03-13"), ms("2026-03-13") + 1500 * MIN
    )
    assert [(g.start_ms, g.end_ms) for g in r.gaps] == [(ms("2026-03-13") + 1500 * MIN, ms("2026-03-15"))]


def test_the_rest_rate_limiter_runs_on_the_wall_clock(tmp_path: Path) -> None:
    from binance.rest import wall_clock_ms

    c = MarketCache(tmp_path / "c", rest="http://127.0.0.1:9", clock_ms=lambda: NOW)
    assert c._rest_history().rest._clock_ms is wall_clock_ms
    c.close()


def test_a_server_creeping_a_minute_a_page_is_stopped_by_the_page_cap(tmp_path: Path) -> None:
    def creep(path: str, qs: dict[str, str]) -> tuple[int, bytes, dict[str, str]] | None:
        if path != "/fapi/v1/klines":
            return None
        return 200, json.dumps([kline_row(int(qs["startTime"]))]).encode(), {}

    v = Venue(rest_hook=creep)
    with serve_venue(v):
        r = ensure(tmp_path / "c", v, "BTCUSDT", "klines", ms("2026-03-13"), ms("2026-03-15"))
    # Two days: 2880 minutes = 1.92 full pages -> cap 2 * 1 + 2 = 4 pages, then BadData.
    assert len(kline_paths(v)) == 4
    assert r.problems == ["REST klines BTCUSDT: more than 4 pages for the window; not stored"]
    assert r.rows == 0 and r.gaps
