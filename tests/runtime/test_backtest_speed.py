"""The backtest's shortcuts read the same numbers as the decimals they stand for (issue #14 speed)."""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from backtest_kit import MINUTE, SIGNAL_MS, feed_line, leading_text, tp_bars, write_cache, write_feed
from backtest_kit import SINCE_MS as KIT_SINCE
from hypothesis import given, settings
from hypothesis import strategies as st

from binance import parse as parse_module
from binance.history.archive import Parsed
from binance.history.store import Store as ParquetStore
from binance.history.store import exact
from binance.sim.exchange import LiveIndex
from fsm import events as ev
from fsm.harness.backtest import (
    KLINE_COUNT,
    KLINE_MS,
    MINUTE_MS,
    SPIKE_FACTOR,
    Backtest,
    Bars,
    MinuteData,
    _all_good,
    _all_good_table,
    _InlineStore,
    run_backtest,
)

START = 1_772_323_200_000  # 2026-03-01 00:00 UTC


@st.composite
def prices(draw: st.DrawFn) -> str:
    """A USD-M price as Binance writes it: at most 8 decimals, at most 15 significant digits."""
    places = draw(st.integers(0, 8))
    digits = draw(st.integers(1, 15))
    units = draw(st.integers(1, 10**digits - 1))
    return str(Decimal(units).scaleb(-places))


@given(st.lists(prices(), min_size=1, max_size=40))
@settings(max_examples=60, deadline=None)
def test_stored_floats_give_back_the_archive_decimals_and_their_order(
    tmp_path_factory: Any, texts: list[str]
) -> None:
    root = tmp_path_factory.mktemp("cache")
    times = [START + i * MINUTE_MS for i in range(len(texts))]
    values = [float(t) for t in texts]
    columns: dict[str, list[float | None]] = {n: list(values) for n in ("open", "high", "low", "close")}
    store = ParquetStore(Path(root))
    try:
        store.write("ETHUSDT", "klines", Parsed(times, columns, dict.fromkeys(columns, 8)))
        read = store.read("ETHUSDT", "klines", times[0], times[-1] + 1)
    finally:
        store.close()
    assert [exact(x) for x in read["close"]] == [Decimal(t) for t in texts]
    for a, b in zip(read["close"], read["close"][1:], strict=False):
        assert (a < b) == (exact(a) < exact(b)) and (a == b) == (exact(a) == exact(b))


def _reference_checked(raw: dict[int, tuple[Any, ...]]) -> tuple[list[int], list[int]]:
    """The check as the decimals read it (the code before the float shortcut): (kept, dropped)."""
    kept: list[int] = []
    bad: list[int] = []
    previous: Decimal | None = None
    for t in sorted(raw):
        o, h, lo, c = (exact(v) for v in raw[t])
        spike = previous is not None and (h > previous * SPIKE_FACTOR or lo * SPIKE_FACTOR < previous)
        if lo <= 0 or h < lo or not (lo <= o <= h and lo <= c <= h) or spike:
            bad.append(t)
            continue
        kept.append(t)
        previous = c
    return kept, bad


@dataclass
class _Result:
    notes: list[str] = field(default_factory=list)


@dataclass
class _Checker:
    """What ``Backtest._checked`` uses of the run."""

    result: _Result = field(default_factory=_Result)
    missing_minutes: dict[str, list[int]] = field(default_factory=dict)


@st.composite
def candle_series(draw: st.DrawFn) -> dict[int, tuple[float, float, float, float]]:
    """Candles around x10 jumps of the previous close: exactly x10 or /10, one last digit off, far."""
    bars: dict[int, tuple[float, float, float, float]] = {}
    close = Decimal(draw(prices()))
    for i in range(draw(st.integers(1, 12))):
        kind = draw(st.sampled_from(["plain", "up", "down", "zero", "inverted"]))
        exponent = close.as_tuple().exponent
        unit = Decimal(1).scaleb(exponent if isinstance(exponent, int) else 0)
        nudge = draw(st.sampled_from([-unit, Decimal(0), unit]))
        lo = hi = close
        if kind == "up":
            hi = close * SPIKE_FACTOR + nudge
        elif kind == "down":
            lo = close / SPIKE_FACTOR + nudge
        elif kind == "zero":
            lo = Decimal(0)
        elif kind == "inverted":
            lo, hi = close, close - unit
        if lo > hi and kind != "inverted":
            lo, hi = hi, lo
        new_close = hi if draw(st.booleans()) else lo
        bars[START + i * MINUTE_MS] = (float(close), float(hi), float(lo), float(new_close))
        if lo > 0:
            close = new_close
    return bars


@given(candle_series())
@settings(max_examples=300, deadline=None)
def test_candle_checks_on_floats_agree_with_the_decimals(raw: dict[int, tuple[float, ...]]) -> None:
    kept, bad = _reference_checked(raw)
    checker = _Checker()
    bars = Backtest._checked(checker, "ETHUSDT", "klines", dict(raw))  # type: ignore[arg-type]
    assert list(bars) == kept
    assert checker.missing_minutes.get("ETHUSDT", []) == bad


def test_a_value_that_is_not_a_float_is_read_as_the_decimals_read_it() -> None:
    raw = {START: (3000, 3010, 2990, 3000), START + MINUTE_MS: (3000.0, 30001.0, 2990.0, 3000.0)}
    checker = _Checker()
    bars = Backtest._checked(checker, "ETHUSDT", "klines", dict(raw))  # type: ignore[arg-type]
    assert list(bars) == [START] and checker.missing_minutes["ETHUSDT"] == [START + MINUTE_MS]


def test_bars_become_decimals_once_and_3m_candles_match_the_decimal_build() -> None:
    raw = {}
    for i in range(3 * (KLINE_COUNT + 3)):
        base = 2000 + (i * 37 % 101) / 100
        raw[START + i * MINUTE_MS] = (base, base + 0.37, base - 0.29, base + 0.01)
    del raw[START + 7 * MINUTE_MS]  # an incomplete slot: left out, its minute missing
    lasts = Bars(dict(raw))
    data = MinuteData.load(Bars({}), lasts)
    first = lasts.get(START)
    assert first == tuple(exact(v) for v in raw[START]) and lasts.get(START) is first
    received = START + len(raw) * MINUTE_MS + 5_000
    candles, missing = data.candles_3m(received)
    end = received // KLINE_MS * KLINE_MS
    expected = []
    for start in range(end - KLINE_COUNT * KLINE_MS, end, KLINE_MS):
        parts = [raw.get(start + i * MINUTE_MS) for i in range(3)]
        if any(p is None for p in parts):
            continue
        dec = [tuple(exact(v) for v in p) for p in parts if p is not None]
        expected.append(
            ev.Candle(
                open_time_ms=start,
                close_time_ms=start + KLINE_MS - 1,
                open=dec[0][0],
                high=max(b[1] for b in dec),
                low=min(b[2] for b in dec),
                close=dec[-1][3],
            )
        )
    assert list(candles) == expected and missing == [START + 7 * MINUTE_MS]
    assert data.close_before(START + 2 * MINUTE_MS + 1) == exact(raw[START + MINUTE_MS][3])


@dataclass
class _Order:
    status: str


def test_live_index_follows_the_working_entries_in_id_order() -> None:
    table: dict[int, _Order] = {1: _Order("NEW"), 2: _Order("FILLED"), 3: _Order("NEW")}
    live = LiveIndex[_Order](lambda o: o.status in ("NEW", "PARTIALLY_FILLED"))
    for key, order in table.items():
        live.add(key, order)
    assert live.values() == [table[1], table[3]]
    table[1].status = "CANCELED"
    table[4] = _Order("PARTIALLY_FILLED")
    live.add(4, table[4])
    assert live.values() == [table[3], table[4]]
    table[3].status = "NEW"  # still working: kept
    assert live.values() == [table[3], table[4]]


def test_inline_store_writes_in_order_and_keeps_a_failing_write_on_its_future(tmp_path: Path) -> None:
    async def go() -> tuple[list[tuple[Any, ...]], int, bool]:
        store = await _InlineStore.open(tmp_path / "b.db")
        store.set_status("a", {"x": 1}, 1)
        failed = store.submit(lambda db: db.execute("INSERT INTO nowhere VALUES (1)"))
        store.set_status("b", {"x": 2}, 2)
        await store.close()
        with sqlite3.connect(tmp_path / "b.db") as conn:
            rows = conn.execute("SELECT key, updated_ms FROM status ORDER BY updated_ms").fetchall()
        return rows, store.errors, failed.done() and failed.exception() is not None

    rows, errors, failed = asyncio.run(go())
    assert rows == [("a", 1), ("b", 2)] and errors == 1 and failed


def test_bars_keep_a_bar_that_is_not_floats_as_it_came() -> None:
    raw: dict[int, tuple[Any, Any, Any, Any]] = {
        START: (1.5, 2.0, 1.0, 1.25),
        START + MINUTE_MS: (3000, 3010, 2990, 3000),  # ints: never from the cache, kept as they are
        START + 2 * MINUTE_MS: (2.5, 3.0, 2.0, 2.75),
    }
    bars = Bars(dict(raw))
    assert [bars.raw_at(t) for t in raw] == list(raw.values())
    assert bars.raw_at(START - MINUTE_MS) is None and bars.raw_at(START + 3 * MINUTE_MS) is None
    assert bars.span(START + MINUTE_MS, START + 3 * MINUTE_MS) == {
        t: raw[t] for t in (START + MINUTE_MS, START + 2 * MINUTE_MS)
    }
    assert bars.get(START + MINUTE_MS) == (Decimal(3000), Decimal(3010), Decimal(2990), Decimal(3000))
    assert list(bars) == list(raw) and len(bars) == 3 and START + MINUTE_MS in bars
    assert (bars.first(), bars.last()) == (START, START + 2 * MINUTE_MS)


def test_the_watched_symbols_kept_as_they_change_are_the_ones_a_full_scan_finds(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """A year-generator run of 48 signals over 6 symbols: at every read, the symbols the run keeps
    as the engine transitions and the venue fills are exactly those a scan of every engine symbol
    and every venue position finds (and the exchangeInfo read once a simulated day is parsed only
    when read again)."""
    from fsm.harness import backtest_demo, backtest_year
    from fsm.harness.backtest import run_backtest

    stories = backtest_year.year_stories(48, 6, 12)
    backtest_year.write_year(tmp_path, stories, 6)
    scans: list[tuple[list[str], list[str]]] = []
    parses: list[int] = []
    kept = Backtest.watched
    real_parse = parse_module.symbol_infos

    def checked(self: Backtest) -> list[str]:
        held = {s for (s, _), p in self.exchange.positions.items() if p.amount != 0}
        busy = {s for s, m in self.engine.symbols.items() if m.state != "IDLE"}
        scans.append((kept(self), sorted((held | busy) & set(self.exchange.symbols))))
        return scans[-1][0]

    def counted(answer: Any) -> Any:
        parses.append(1)
        return real_parse(answer)

    monkeypatch.setattr(Backtest, "watched", checked)
    monkeypatch.setattr(parse_module, "symbol_infos", counted)
    result = run_backtest(
        tmp_path / "year-feed.jsonl",
        tmp_path / "year-cache",
        since_ms=backtest_demo.SINCE_MS,
        until_ms=backtest_demo.SINCE_MS + 13 * backtest_demo.DAY,
        db_path=tmp_path / "b.db",
        capital=Decimal("100000"),
    )
    assert len(result.trades) > 20
    assert len(scans) > 1000 and any(kept for kept, _ in scans)
    assert [kept for kept, _ in scans] == [full for _, full in scans]
    # The cache's exchangeInfo.json at the start, then the venue's first read: read again once a
    # simulated day, parsed again only if it said something else.
    assert len(parses) == 2


@given(candle_series(), st.booleans())
@settings(max_examples=300, deadline=None)
def test_the_column_check_answers_only_where_the_candle_by_candle_check_drops_nothing(
    raw: dict[int, tuple[float, ...]], plain: bool
) -> None:
    """``_all_good`` (pyarrow, column-wise) either declines, or gives exactly the bars that
    ``_checked`` (candle by candle, the decimals where floats cannot tell) keeps, with nothing
    dropped. ``plain`` series are ordinary prices, where it must answer."""
    if plain:
        raw = {t: (100.0 + i, 101.0 + i, 99.0 + i, 100.5 + i) for i, t in enumerate(sorted(raw))}
    columns: dict[str, list[Any]] = {"open_time": sorted(raw)}
    for n, name in enumerate(("open", "high", "low", "close")):
        columns[name] = [raw[t][n] for t in columns["open_time"]]
    fast = _all_good(columns)
    checker = _Checker()
    slow = Backtest._checked(checker, "ETHUSDT", "klines", dict(raw))  # type: ignore[arg-type]
    if plain:
        assert fast is not None
    if fast is not None:
        assert checker.missing_minutes == {}
        assert list(fast) == list(slow) == sorted(raw)
        assert (
            [fast.raw_at(t) for t in fast] == [slow.raw_at(t) for t in slow] == [raw[t] for t in sorted(raw)]
        )


def test_huge_corrupt_candles_are_dropped_as_before_not_an_overflow(tmp_path: Path) -> None:
    """Two candles of +-1e308 (high below low): the column check must decline them without a
    sum that overflows in its own order (found by a differential attack: OverflowError from
    math.fsum), and the candle-by-candle check drops both as corrupt, as it always did."""
    bars = tp_bars()
    for m in (80, 81):
        bars[KIT_SINCE + m * MINUTE] = (1e308, -1e308, 1e308, -1e308)
    write_cache(tmp_path / "cache", "ETHUSDT", bars)
    feed = write_feed(tmp_path / "feed.jsonl", [feed_line(101, SIGNAL_MS, leading_text("ETH"))])
    result = run_backtest(
        feed, tmp_path / "cache", since_ms=KIT_SINCE, capital=Decimal(1000), db_path=tmp_path / "b.db"
    )
    assert [t.exit_avg for t in result.trades] == [Decimal("2859.50")]
    assert any("2 corrupt candle(s) dropped" in n and "2026-03-01T01:20:00Z" in n for n in result.notes)


def test_an_open_time_column_stored_as_floats_is_read_as_before(tmp_path: Path) -> None:
    """A cache whose open_time column holds floats (integral values): the column check declines
    it (found by a differential attack: TypeError building the minutes), and the candle-by-candle
    path reads the minutes as integers, as it always did."""
    raw = {START + i * MINUTE_MS: (100.0, 101.0, 99.0, 100.5) for i in range(5)}
    columns: dict[str, list[Any]] = {"open_time": [float(t) for t in sorted(raw)]}
    for n, name in enumerate(("open", "high", "low", "close")):
        columns[name] = [raw[t][n] for t in sorted(raw)]
    assert _all_good(columns) is None
    ints = {**columns, "open_time": sorted(raw)}
    good = _all_good(ints)
    assert good is not None and list(good) == sorted(raw)


@given(candle_series(), st.booleans())
@settings(max_examples=200, deadline=None)
def test_the_table_check_answers_as_the_list_check(raw: dict[int, tuple[float, ...]], plain: bool) -> None:
    """``_all_good_table`` (the cache's Arrow columns as stored) gives what ``_all_good`` gives
    for the same columns as Python lists: both decline, or the same bars, value for value."""
    import pyarrow as pa

    if plain:
        raw = {t: (100.0 + i, 101.0 + i, 99.0 + i, 100.5 + i) for i, t in enumerate(sorted(raw))}
    columns: dict[str, list[Any]] = {"open_time": sorted(raw)}
    for n, name in enumerate(("open", "high", "low", "close")):
        columns[name] = [raw[t][n] for t in columns["open_time"]]
    types = {"open_time": pa.int64(), **dict.fromkeys(("open", "high", "low", "close"), pa.float64())}
    table = pa.table({n: pa.array(v, types[n]) for n, v in columns.items()})
    by_list, by_table = _all_good(columns), _all_good_table(table)
    assert (by_list is None) == (by_table is None)
    if by_list is not None and by_table is not None:
        assert list(by_table) == list(by_list)
        assert [by_table.raw_at(t) for t in by_table] == [by_list.raw_at(t) for t in by_list]
        assert by_table.span(min(raw), max(raw) + 1) == by_list.span(min(raw), max(raw) + 1)


def test_the_cache_table_holds_the_rows_read_gives_across_months(tmp_path: Path) -> None:
    """``read_table`` over three months (a window starting and ending inside them) holds exactly
    ``read``'s rows; a month whose minutes are stored as floats makes it decline (None), and the
    backtest then reads the lists as before."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    start = 1_767_225_600_000  # 2026-01-01
    times = [start + i * 6 * 3_600_000 for i in range(4 * 90)]  # every 6 h over ~90 days
    values: list[float | None] = [100.0 + i / 8 for i in range(len(times))]
    columns = {n: list(values) for n in ("open", "high", "low", "close")}
    store = ParquetStore(tmp_path)
    try:
        store.write("ETHUSDT", "klines", Parsed(times, columns, dict.fromkeys(columns, 3)))
        lo, hi = times[17], times[-23]
        table = store.read_table("ETHUSDT", "klines", lo, hi)
        listed = store.read("ETHUSDT", "klines", lo, hi)
        assert {n: table.column(n).to_pylist() for n in table.column_names} == listed
        assert len(listed["open_time"]) == len(times) - 17 - 23
        assert store.read_table("ETHUSDT", "klines", start - 10**10, start - 10**9).num_rows == 0
        path = store.path("ETHUSDT", "klines", "2026-02")
        month = pq.read_table(path)
        floats = month.set_column(0, "open_time", month.column("open_time").cast(pa.float64()))
        pq.write_table(floats, path)
        assert store.read_table("ETHUSDT", "klines", lo, hi) is None
        assert store.read("ETHUSDT", "klines", lo, hi)["open_time"] == listed["open_time"]
    finally:
        store.close()


def test_an_arrow_slice_is_copied_from_its_offset() -> None:
    import pyarrow as pa

    from fsm.harness.backtest import _array_of

    prices = pa.array([1.5, 2.5, 3.5, 4.5, 5.5], pa.float64()).slice(2, 2)
    minutes = pa.array([10, 20, 30, 40], pa.int64()).slice(1)
    assert list(_array_of("d", prices)) == [3.5, 4.5]
    assert list(_array_of("q", minutes)) == [20, 30, 40]


@pytest.mark.parametrize("first", [1.0, 1, -0.0, 0.0, 2.5, 3000.1])
def test_the_decimal_of_a_float_is_remembered_without_mixing_equal_keys(first: float) -> None:
    """``exact`` keeps each float's decimal: 1 and 1.0, or 0.0 and -0.0, are one dict key but two
    decimals, each read as its own text whichever came first."""
    for x in (first, 1.0, 1, -0.0, 0.0, 2.5, 3000.1, first):
        assert str(exact(x)) == str(Decimal(repr(x)))


def test_an_exchange_info_that_changes_mid_run_is_parsed_again(tmp_path: Path, monkeypatch: Any) -> None:
    """The daily re-read is compared as compact JSON: from the third read on, one symbol's tick
    size differs: parsed once more (and not again while it stays so), each read a new object."""
    import copy

    from binance.rest import BinanceRest
    from fsm.harness import backtest_demo, backtest_year
    from fsm.harness.backtest import run_backtest

    stories = backtest_year.year_stories(12, 3, 6)
    backtest_year.write_year(tmp_path, stories, 3)
    parses: list[int] = []
    reads: list[int] = []
    real_parse, real_read = parse_module.symbol_infos, BinanceRest.exchange_info

    def counted(answer: Any) -> Any:
        parses.append(len(reads))
        return real_parse(answer)

    async def read(self: BinanceRest, *, refresh: bool = False) -> dict[str, Any]:
        answer = await real_read(self, refresh=refresh)
        reads.append(1)
        answer = copy.deepcopy(answer)
        if len(reads) >= 3:
            answer["symbols"][0]["filters"][0]["tickSize"] = "0.50"
        return answer

    monkeypatch.setattr(parse_module, "symbol_infos", counted)
    monkeypatch.setattr(BinanceRest, "exchange_info", read)
    run_backtest(
        tmp_path / "year-feed.jsonl",
        tmp_path / "year-cache",
        since_ms=backtest_demo.SINCE_MS,
        until_ms=backtest_demo.SINCE_MS + 7 * backtest_demo.DAY,
        db_path=tmp_path / "b.db",
        capital=Decimal("100000"),
    )
    assert len(reads) > 3
    assert parses == [0, 1, 3]  # the cache's file at the start, the first read, the changed one
