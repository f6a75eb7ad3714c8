"""``MarketCache`` against a loopback archive (stdlib HTTP server) and the simulated venue's REST."""

from __future__ import annotations

import asyncio
import io
import zipfile
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import pytest
from test_history_kit import DAY, MIN, Archive, funding_csv, kline_csv, kline_prices, ms, serve

from binance.history import MarketCache, exact
from binance.history.archive import BadData, csv_rows, faithful, parse_archive_file
from binance.history.cache import Gap, funding_gaps, minute_gaps
from binance.history.store import DayState
from binance.sim.clock import SimClock
from binance.sim.exchange import SimExchange
from binance.sim.server import SimVenue

T = TypeVar("T")
NOW = ms("2026-01-03T12:00")


def run(coro: Coroutine[Any, Any, T], timeout: float = 15.0) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout))


@asynccontextmanager
async def sim_venue() -> AsyncIterator[tuple[SimExchange, SimVenue]]:
    """The simulated venue on loopback, its clock at NOW: every candle before NOW is its seeded history."""
    ex = SimExchange(clock=SimClock(NOW))
    async with SimVenue(ex) as v:
        yield ex, v


def rest_paths(v: SimVenue) -> list[str]:
    return [p for _, p in v.requests if "/fapi/" in p]


def cache_for(tmp_path: Path, archive: Archive, v: SimVenue) -> MarketCache:
    return MarketCache(tmp_path / "cache", archive_url=archive.url, rest=v.rest_url, clock_ms=lambda: NOW)


def btc_archive() -> Archive:
    """December as a monthly zip WITH a header and three minutes missing on the 31st; January 1st as
    a daily zip WITHOUT a header; January 2nd missing (404); the 3rd is today."""
    a = Archive()
    hole = frozenset(range(ms("2025-12-31T05:00"), ms("2025-12-31T05:03"), MIN))
    a.add(
        "klines", "BTCUSDT", "2025-12", kline_csv(ms("2025-12-01"), ms("2026-01-01"), header=True, skip=hole)
    )
    a.add("klines", "BTCUSDT", "2026-01-01", kline_csv(ms("2026-01-01"), ms("2026-01-02"), header=False))
    a.add("fundingRate", "BTCUSDT", "2025-12", funding_csv(ms("2025-12-01"), ms("2026-01-01"), header=True))
    return a


def test_archive_then_rest_fills_the_window_and_a_second_ensure_sends_nothing(tmp_path: Path) -> None:
    async def scenario() -> None:
        with serve(btc_archive()) as archive:
            async with sim_venue() as (ex, v):
                cache = cache_for(tmp_path, archive, v)
                start, end = ms("2025-12-30"), ms("2026-01-04")
                report = await cache.aensure("BTCUSDT", "klines", start, end)
                await cache.aclose()
                # Monthly zip (checksum + zip), daily zip (checksum + zip), Jan 2nd's checksum 404.
                assert archive.paths() == [
                    "/data/futures/um/monthly/klines/BTCUSDT/1m/BTCUSDT-1m-2025-12.zip.CHECKSUM",
                    "/data/futures/um/monthly/klines/BTCUSDT/1m/BTCUSDT-1m-2025-12.zip",
                    "/data/futures/um/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2026-01-01.zip.CHECKSUM",
                    "/data/futures/um/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2026-01-01.zip",
                    "/data/futures/um/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2026-01-02.zip.CHECKSUM",
                ]
                # Jan 2nd and today up to 12:00 in one run: 1440 + 720 closed candles, two pages.
                assert rest_paths(v) == ["/fapi/v1/klines", "/fapi/v1/klines"]
                assert report.archive_files == 2
                assert report.rest_rows == 1440 + 720
                assert report.end_ms == NOW
                assert report.rows == 4 * 1440 + 720 - 3  # Dec 30th, 31st, Jan 1st, 2nd, half the 3rd
                assert report.requests == 7
                assert report.gaps == [
                    Gap(
                        start_ms=ms("2025-12-31T05:00"),
                        end_ms=ms("2025-12-31T05:03"),
                        reason="missing minutes in the archive data",
                    )
                ]
                assert (
                    report.gaps[0]
                    .describe()
                    .startswith("2025-12-31T05:00:00Z .. 2025-12-31T05:03:00Z (3 min)")
                )

                cols = cache.read("BTCUSDT", "klines", start, end)
                times = cols["open_time"]
                assert times == sorted(set(times)) and len(times) == report.rows
                # Archive rows are the CSV's decimals exactly.
                i = times.index(ms("2025-12-30T07:13"))
                expected = kline_prices(ms("2025-12-30T07:13"))
                got = tuple(exact(cols[c][i]) for c in ("open", "high", "low", "close"))
                assert got == tuple(Decimal(x) for x in expected)
                # REST rows are the venue's answer exactly.
                t = ms("2026-01-02T18:41")
                venue_row = ex.klines(
                    {"symbol": "BTCUSDT", "interval": "1m", "startTime": str(t), "limit": "1"}
                )[0]
                i = times.index(t)
                assert [exact(cols[c][i]) for c in ("open", "high", "low", "close")] == [
                    Decimal(x) for x in venue_row[1:5]
                ]
                assert times[-1] == NOW - MIN  # the open candle at NOW is not stored

                seen_archive, seen_rest = len(archive.paths()), len(v.requests)
                again = await cache.aensure("BTCUSDT", "klines", start, end)
                await cache.aclose()
                assert (len(archive.paths()), len(v.requests), again.requests) == (seen_archive, seen_rest, 0)
                assert again.gaps == report.gaps and again.rows == report.rows
                assert cache.known_gaps("BTCUSDT", "klines", start, end) == report.gaps
                cache.close()

    run(scenario())


def test_checksum_mismatch_is_fetched_twice_never_stored_reported_and_the_days_come_from_elsewhere(
    tmp_path: Path,
) -> None:
    a = Archive()
    path = a.add(
        "klines",
        "ETHUSDT",
        "2025-11",
        kline_csv(ms("2025-11-01"), ms("2025-12-01"), header=True),
        bad_checksum=True,
    )
    daily = "/data/futures/um/daily/klines/ETHUSDT/1m/ETHUSDT-1m-2025-11-1{}.zip.CHECKSUM"

    async def scenario() -> None:
        with serve(a) as archive:
            async with sim_venue() as (_, v):
                cache = cache_for(tmp_path, archive, v)
                report = await cache.aensure("ETHUSDT", "klines", ms("2025-11-10"), ms("2025-11-12"))
                await cache.aclose()
                # The bad monthly zip twice, then each day's daily zip (404), then REST for both days.
                assert archive.paths() == [path + ".CHECKSUM", path, path, daily.format(0), daily.format(1)]
                assert rest_paths(v) == ["/fapi/v1/klines", "/fapi/v1/klines"]
                assert report.problems == [path[1:] + ": sha256 differs from its .CHECKSUM twice; not stored"]
                assert report.gaps == [] and report.rest_rows == 2 * 1440
                times = cache.read("ETHUSDT", "klines", ms("2025-11-01"), ms("2025-12-01"))["open_time"]
                assert times == list(range(ms("2025-11-10"), ms("2025-11-12"), MIN))
                again = await cache.aensure("ETHUSDT", "klines", ms("2025-11-10"), ms("2025-11-12"))
                await cache.aclose()
                assert again.requests == 0
                cache.close()

    run(scenario())


@pytest.mark.parametrize("ignores_range", [False, True], ids=["resumed-with-range", "server-ignores-range"])
def test_a_body_cut_mid_way_is_resumed(tmp_path: Path, ignores_range: bool) -> None:
    a = Archive()
    text = kline_csv(ms("2026-01-01"), ms("2026-01-02"), header=True)
    path = a.add("klines", "SOLUSDT", "2026-01-01", text)
    size = len(a.files[path])
    cut = size // 3
    a.drop_after[path] = cut
    if ignores_range:
        a.ignore_range.add(path)

    async def scenario() -> None:
        with serve(a) as archive:
            async with sim_venue() as (_, v):
                cache = cache_for(tmp_path, archive, v)
                report = await cache.aensure("SOLUSDT", "klines", ms("2026-01-01"), ms("2026-01-02"))
                await cache.aclose()
                zips = [s for s in archive.seen if s.path == path]
                assert [s.range for s in zips] == [None, f"bytes={cut}-"]
                assert report.complete and report.rows == 1440 and report.archive_files == 1
                assert rest_paths(v) == []
                cols = cache.read("SOLUSDT", "klines", ms("2026-01-01"), ms("2026-01-02"))
                assert [exact(x) for x in cols["close"][:2]] == [
                    Decimal(kline_prices(ms("2026-01-01"))[3]),
                    Decimal(kline_prices(ms("2026-01-01") + MIN)[3]),
                ]
                assert not list((tmp_path / "cache" / ".downloads").glob("*.part"))
                cache.close()

    run(scenario())


def test_funding_from_the_archive_then_rest_and_mark_klines_from_rest(tmp_path: Path) -> None:
    a = btc_archive()

    async def scenario() -> None:
        with serve(a) as archive:
            async with sim_venue() as (ex, v):
                cache = cache_for(tmp_path, archive, v)
                start, end = ms("2025-12-31"), ms("2026-01-04")
                funding = await cache.aensure("BTCUSDT", "fundingRate", start, end)
                marks = await cache.aensure("BTCUSDT", "markPriceKlines", ms("2026-01-02"), ms("2026-01-03"))
                await cache.aclose()
                assert funding.complete and funding.archive_files == 1
                assert funding.rest_rows == 3 + 3 + 2  # Jan 1st, 2nd, 3rd until 12:00
                cols = cache.read("BTCUSDT", "fundingRate", start, end)
                eight_h = 8 * 3_600_000
                assert cols["funding_time"] == [start + n * eight_h for n in range(3 + 8)]
                assert cols["mark_price"][:3] == [None, None, None]  # archive funding has no mark price
                rest_rows = ex.funding_rate({"symbol": "BTCUSDT", "startTime": str(ms("2026-01-01"))})
                assert [str(exact(x)) for x in cols["mark_price"][3:]] == [
                    str(Decimal(r["markPrice"]).normalize()) for r in rest_rows
                ]
                assert [exact(x) for x in cols["funding_rate"][3:]] == [
                    Decimal(r["fundingRate"]) for r in rest_rows
                ]
                # Dec 31st 00:00 is the month's 91st settlement in the built file (0.0001 + 90 x 0.00000123).
                assert exact(cols["funding_rate"][0]) == Decimal("0.00021070")

                assert marks.complete and marks.archive_files == 0 and marks.rest_rows == 1440
                assert "/fapi/v1/markPriceKlines" in rest_paths(v)
                got = cache.read("BTCUSDT", "markPriceKlines", ms("2026-01-02"), ms("2026-01-03"))
                want = ex.mark_price_klines(
                    {
                        "symbol": "BTCUSDT",
                        "interval": "1m",
                        "startTime": str(ms("2026-01-02")),
                        "limit": "1440",
                    }
                )
                assert got["open_time"] == [r[0] for r in want]
                assert [exact(x) for x in got["high"]] == [Decimal(r[2]) for r in want]
                cache.close()

    run(scenario())


def test_a_symbol_the_venue_does_not_list_is_a_gap_with_the_venue_message(tmp_path: Path) -> None:
    async def scenario() -> None:
        with serve(Archive()) as archive:
            async with sim_venue() as (_, v):
                cache = cache_for(tmp_path, archive, v)
                report = await cache.aensure("NOPEUSDT", "klines", ms("2026-01-01"), ms("2026-01-02"))
                await cache.aclose()
                assert [(g.start_ms, g.end_ms) for g in report.gaps] == [(ms("2026-01-01"), ms("2026-01-02"))]
                assert "Invalid symbol" in report.gaps[0].reason
                cache.close()

    run(scenario())


# ---------------------------------------------------------------------------------------------
# pure parts
# ---------------------------------------------------------------------------------------------


def test_csv_with_and_without_header_parse_the_same() -> None:
    body = kline_csv(ms("2026-01-01"), ms("2026-01-01") + 3 * MIN, header=False)
    with_header = zipfile_bytes(
        "KLINE.csv", kline_csv(ms("2026-01-01"), ms("2026-01-01") + 3 * MIN, header=True)
    )
    without = zipfile_bytes("KLINE.csv", body)
    assert csv_rows(with_header, "h") == csv_rows(without, "n")
    parsed = parse_archive_file("klines", without, "n")
    assert parsed.times == [ms("2026-01-01") + k * MIN for k in range(3)]
    assert parsed.decimals == {"open": 1, "high": 1, "low": 1, "close": 1}
    funding = parse_archive_file("fundingRate", zipfile_bytes("F.csv", "1780272000001,8,0.00005703\n"), "f")
    assert funding.times == [1780272000001] and funding.columns["funding_rate"] == [0.00005703]


def test_unusable_files_are_bad_data() -> None:
    with pytest.raises(BadData, match="unreadable zip"):
        csv_rows(b"not a zip", "x")
    with pytest.raises(BadData, match="not exactly representable"):
        parse_archive_file("klines", zipfile_bytes("k.csv", "1767225600000,1.23456789012345678,1,1,1\n"), "k")


def test_faithful_means_the_float_gives_the_decimal_back() -> None:
    for text in ("95000.10", "0.00005703", "34287.54619963", "9999999.99999999", "-0.03750000", "1e-5"):
        assert faithful(text)
        assert exact(float(text)) == Decimal(text)
    assert not faithful("1.23456789012345678")  # 18 digits: the float is 1.2345678901234568


def zipfile_bytes(name: str, text: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(name, text)
    return buf.getvalue()


def test_minute_gaps_split_by_reason_with_exact_times() -> None:
    d1, d2 = ms("2026-01-01"), ms("2026-01-02")
    states = {
        "2026-01-01": DayState("2026-01-01", "complete", "archive", 1437, d2, ""),
        "2026-01-02": DayState("2026-01-02", "failed", "rest", 0, 0, "REST down"),
    }
    times = [t for t in range(d1, d2, MIN) if not ms("2026-01-01T10:00") <= t < ms("2026-01-01T10:03")]
    gaps = minute_gaps(times[:-1], d1, d2 + DAY, states)
    assert gaps == [
        Gap(
            start_ms=ms("2026-01-01T10:00"),
            end_ms=ms("2026-01-01T10:03"),
            reason="missing minutes in the archive data",
        ),
        Gap(start_ms=d2 - MIN, end_ms=d2, reason="missing minutes in the archive data"),
        Gap(start_ms=d2, end_ms=d2 + DAY, reason="REST down"),
    ]
    assert minute_gaps(list(range(d1, d2, MIN)), d1, d2, states) == []


def test_funding_gaps_are_long_stretches_without_a_settlement() -> None:
    d = ms("2026-01-01")
    h = 3_600_000
    assert funding_gaps([d, d + 8 * h, d + 16 * h], d, d + DAY, {}) == []
    assert funding_gaps([d, d + 16 * h], d, d + DAY, {}) == [
        Gap(start_ms=d, end_ms=d + 16 * h, reason="no funding settlement for 16.0 h")
    ]


def test_today_is_partial_and_a_later_ensure_fetches_only_the_new_minutes(tmp_path: Path) -> None:
    async def scenario() -> None:
        with serve(Archive()) as archive:
            async with sim_venue() as (ex, v):
                now = [NOW]
                cache = MarketCache(
                    tmp_path / "c", archive_url=archive.url, rest=v.rest_url, clock_ms=lambda: now[0]
                )
                day = ms("2026-01-03")
                first = await cache.aensure("BTCUSDT", "klines", day, day + DAY)
                assert (first.rows, first.rest_rows, first.gaps) == (720, 720, [])
                assert cache.store.days("BTCUSDT", "klines")["2026-01-03"].status == "partial"
                ex.clock.advance(30 * MIN)  # type: ignore[attr-defined]
                now[0] += 30 * MIN
                sent = len(rest_paths(v))
                later = await cache.aensure("BTCUSDT", "klines", day, day + DAY)
                await cache.aclose()
                assert len(rest_paths(v)) == sent + 1
                assert (later.rows, later.rest_rows, later.end_ms) == (750, 750, NOW + 30 * MIN)
                cache.close()

    run(scenario())


def test_a_part_file_left_by_an_earlier_run_is_continued(tmp_path: Path) -> None:
    a = Archive()
    path = a.add(
        "klines", "XRPUSDT", "2026-01-01", kline_csv(ms("2026-01-01"), ms("2026-01-02"), header=True)
    )
    downloads = tmp_path / "c" / ".downloads"
    downloads.mkdir(parents=True)
    (downloads / (path[1:].replace("/", "_") + ".part")).write_bytes(a.files[path][:1000])

    async def scenario() -> None:
        with serve(a) as archive:
            async with sim_venue() as (_, v):
                cache = MarketCache(
                    tmp_path / "c", archive_url=archive.url, rest=v.rest_url, clock_ms=lambda: NOW
                )
                report = await cache.aensure("XRPUSDT", "klines", ms("2026-01-01"), ms("2026-01-02"))
                await cache.aclose()
                assert [s.range for s in archive.seen if s.path == path] == ["bytes=1000-"]
                assert report.complete and report.rows == 1440
                cache.close()

    run(scenario())


def test_rest_waits_out_the_weight_budget_and_stops_at_a_ban() -> None:
    from binance.errors import RateLimited
    from binance.history.rest_history import Banned, RestHistory

    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)

    answers: list[Any] = [
        RateLimited(-1003, "weight budget", 0, retry_after_s=42.0),
        [[1, "2", "3", "1", "2"]],
    ]

    async def call() -> list[Any]:
        got = answers.pop(0)
        if isinstance(got, Exception):
            raise got
        return list(got)

    history = RestHistory(object(), sleep=sleep)  # type: ignore[arg-type]
    assert run(history._paced(call)) == [[1, "2", "3", "1", "2"]]
    assert slept == [42.0]

    async def banned() -> list[Any]:
        raise RateLimited(-1003, "Way too many requests", 418, banned_until_ms=1_767_400_000_000)

    with pytest.raises(Banned, match="banned until 1767400000000"):
        run(history._paced(banned))


def test_a_settlement_from_both_sources_is_stored_once(tmp_path: Path) -> None:
    from binance.history.archive import Parsed
    from binance.history.store import Store

    store = Store(tmp_path)
    t = 1_780_272_000_000
    archive_row = Parsed([t + 1], {"funding_rate": [0.00005703], "mark_price": [None]}, {"funding_rate": 8})
    rest_rows = Parsed(
        [t, t + 28_800_000], {"funding_rate": [0.00005703, 0.0001], "mark_price": [1.5, 1.25]}, {}
    )
    assert store.write("BTCUSDT", "fundingRate", archive_row) == 1
    assert store.write("BTCUSDT", "fundingRate", rest_rows) == 1
    cols = store.read("BTCUSDT", "fundingRate", t - DAY, t + DAY)
    assert cols == {
        "funding_time": [t + 1, t + 28_800_000],
        "funding_rate": [0.00005703, 0.0001],
        "mark_price": [None, 1.25],
    }
    assert store.decimals("BTCUSDT", "fundingRate", "2026-06") == {"funding_rate": 8}
    store.close()
