"""The columnar store and its coverage manifest.

Rows live in Parquet, one file per symbol, dataset and UTC month:
``<root>/{dataset}/{SYMBOL}/{YYYY-MM}.parquet`` with ``open_time, open, high, low, close`` (1m klines
and markPriceKlines) or ``funding_time, funding_rate, mark_price`` (fundingRate), sorted, one row per
time. Prices are float64: every Binance decimal string with at most 15 significant digits (all USD-M
prices and rates, <= 8 decimals) survives the round trip exactly (``archive.faithful`` checks each
one), and ``exact(x)`` gives the Decimal back. The most decimals seen per column are kept in the
file's metadata (``decimals``). A month file is rewritten whole: written to a temp file named for
the process, fsynced, renamed over the old one, and the folder fsynced, so a reader never meets half
a file and a crash leaves the old file or the new one. ``audit`` runs before each fetch: a month file
that cannot be read is moved aside (``.corrupt``) and its days forgotten; a day with fewer stored rows
than the manifest counts (a deleted or replaced file) is forgotten too, so the next fetch repairs it.

``manifest.sqlite`` (sqlite-utils) records the gaps found by the last scan of each window (``gaps``:
start, end, reason) and per UTC day what is known: ``complete`` (fetched; its
missing minutes are known gaps, not fetched again), ``partial`` (the current day, up to
``covered_until_ms``) or ``failed`` (a checksum mismatch or an unreachable source; tried again next
time), with the source and a note. ``ensure`` consults it, so a window already covered sends nothing.
aggTrades (the backtest's ambiguous minutes, D-74) are covered per minute, not per day: their rows
go to ``<root>/aggTrades/{SYMBOL}/{YYYY-MM}.parquet`` (``AGG_COLUMNS``: ids and times int64, price and
quantity float64 held exactly as above, ``buyer_maker`` bool; one row per aggregate trade id; a
minute written again replaces its rows, and an id already stored for another minute refuses the
answer), written first; then ``agg_minutes`` records the minute with the count of its rows actually
stored. A minute is covered only when that row exists and exactly that many trades are stored in
it, so a minute without a trade (count 0) is covered and empty, and a minute never fetched, or
whose file was lost or replaced, is not. A month file that cannot be read or has other columns is
``CorruptMonth``; ``audit_agg`` moves it aside (``.corrupt``) and forgets its minutes.
pyarrow is imported inside the functions: the CLI starts without it.
"""

from __future__ import annotations

import json
import os
import sqlite3
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlite_utils

from binance.history.archive import AGG_TRADES, FUNDING, AggTrades, BadData, Parsed, month_of

MINUTE_KEY_MS = 60_000
# Funding settlements are deduplicated by their nearest minute: archive calc_time values such as
# ...000001 have been seen next to REST fundingTime ...000000 for the same settlement (unsure how
# often; the first one stored wins).
FUNDING_KEY_ROUND_MS = 30_000

COLUMNS: dict[str, tuple[str, ...]] = {
    "klines": ("open_time", "open", "high", "low", "close"),
    "markPriceKlines": ("open_time", "open", "high", "low", "close"),
    FUNDING: ("funding_time", "funding_rate", "mark_price"),
}
# aggTrades month files (their own writer: ids and times are int64, ``buyer_maker`` a bool).
AGG_COLUMNS = ("agg_id", "price", "qty", "first_id", "last_id", "time", "buyer_maker")
AGG_TYPES = ("int64", "double", "double", "int64", "int64", "int64", "bool")  # anything else: CorruptMonth


_EXACT: dict[float, Decimal] = {}  # prices repeat (a tick grid): each float's decimal made once
_EXACT_MAX = 1 << 18


def exact(x: float) -> Decimal:
    """The decimal Binance sent for a stored float64 (the shortest repr is that decimal)."""
    d = _EXACT.get(x)
    if d is None or type(x) is not float or not x:  # 1 == 1.0 and 0.0 == -0.0 share a key
        d = Decimal(repr(x))
        if type(x) is float and x:
            if len(_EXACT) >= _EXACT_MAX:
                _EXACT.clear()
            _EXACT[x] = d
    return d


def _key(dataset: str, t: int) -> int:
    return (t + FUNDING_KEY_ROUND_MS) // MINUTE_KEY_MS if dataset == FUNDING else t


@dataclass(slots=True)
class DayState:
    day: str
    status: str  # complete | partial | failed
    source: str  # archive | rest | none
    rows: int
    covered_until_ms: int
    note: str


class Store:
    """Parquet month files plus the SQLite manifest under ``root``.

    The manifest is opened on first use, not here: ``read`` needs only the Parquet files, so a cache
    on a read-only disk (or without its manifest) can still be read."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._db: sqlite_utils.Database | None = None

    @property
    def db(self) -> sqlite_utils.Database:
        if self._db is None:
            self._db = self._open()
        return self._db

    def _open(self) -> sqlite_utils.Database:
        path = self.root / "manifest.sqlite"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            db = sqlite_utils.Database(sqlite3.connect(path))
            db.execute("PRAGMA journal_mode=WAL")
        except (OSError, sqlite3.OperationalError):
            if not path.exists():
                raise
            # A read-only disk: the manifest as it is, for the read-only questions (``gaps``).
            return sqlite_utils.Database(sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True))
        self._create(db)
        return db

    @staticmethod
    def _create(db: sqlite_utils.Database) -> None:
        db.table("days").create(
            {
                "symbol": str,
                "dataset": str,
                "day": str,
                "status": str,
                "source": str,
                "rows": int,
                "covered_until_ms": int,
                "note": str,
            },
            pk=("symbol", "dataset", "day"),
            if_not_exists=True,
        )
        db.table("gaps").create(
            {"symbol": str, "dataset": str, "start_ms": int, "end_ms": int, "reason": str},
            pk=("symbol", "dataset", "start_ms"),
            if_not_exists=True,
        )
        # aggTrades are fetched per minute (the backtest's ambiguous ones): a row here means the
        # minute's trades are all stored, ``rows`` of them (0: a minute without a trade).
        db.table("agg_minutes").create(
            {"symbol": str, "minute_ms": int, "rows": int, "source": str, "fetched_ms": int},
            pk=("symbol", "minute_ms"),
            if_not_exists=True,
        )

    def close(self) -> None:
        if self._db is not None:
            self._db.conn.close()
            self._db = None

    # -- manifest --------------------------------------------------------------------------

    def days(self, symbol: str, dataset: str) -> dict[str, DayState]:
        rows = self.db.query(
            "select day, status, source, rows, covered_until_ms, note from days"
            " where symbol = ? and dataset = ?",
            [symbol, dataset],
        )
        return {r["day"]: DayState(**r) for r in rows}

    def mark(self, symbol: str, dataset: str, states: list[DayState]) -> None:
        if not states:
            return
        self.db.table("days").upsert_all(
            [{"symbol": symbol, "dataset": dataset, **_as_dict(s)} for s in states],
            pk=("symbol", "dataset", "day"),
        )

    def replace_gaps(
        self, symbol: str, dataset: str, lo: int, hi: int, gaps: list[tuple[int, int, str]]
    ) -> None:
        """The known gaps of ``[lo, hi)`` are now ``gaps``; older ones reaching outside keep their
        outside part."""
        where = "symbol = ? and dataset = ? and start_ms < ? and end_ms > ?"
        old = list(
            self.db.query(
                f"select start_ms, end_ms, reason from gaps where {where}", [symbol, dataset, hi, lo]
            )
        )
        keep = [(o["start_ms"], lo, o["reason"]) for o in old if o["start_ms"] < lo]
        keep += [(hi, o["end_ms"], o["reason"]) for o in old if o["end_ms"] > hi]
        with self.db.conn:
            self.db.execute(f"delete from gaps where {where}", [symbol, dataset, hi, lo])
            rows = [
                {"symbol": symbol, "dataset": dataset, "start_ms": a, "end_ms": b, "reason": r}
                for a, b, r in [*keep, *gaps]
            ]
            if rows:
                self.db.table("gaps").upsert_all(rows, pk=("symbol", "dataset", "start_ms"))

    def gaps(self, symbol: str, dataset: str, lo: int, hi: int) -> list[tuple[int, int, str]]:
        """Known gaps overlapping ``[lo, hi)`` as last scanned, oldest first."""
        rows = self.db.query(
            "select start_ms, end_ms, reason from gaps where symbol = ? and dataset = ? and start_ms < ?"
            " and end_ms > ? order by start_ms",
            [symbol, dataset, hi, lo],
        )
        return [(r["start_ms"], r["end_ms"], r["reason"]) for r in rows]

    # -- rows ------------------------------------------------------------------------------

    def path(self, symbol: str, dataset: str, month: str) -> Path:
        return self.root / dataset / symbol / f"{month}.parquet"

    def write(self, symbol: str, dataset: str, parsed: Parsed) -> int:
        """Merge rows into their month files (existing rows win on an equal time); returns how many
        rows were new."""
        by_month: dict[str, list[int]] = {}
        for i, t in enumerate(parsed.times):
            by_month.setdefault(month_of(t), []).append(i)
        names = COLUMNS[dataset]
        added = 0
        for month, idx in sorted(by_month.items()):
            old = self._read_month(symbol, dataset, month)
            merged: dict[int, tuple[Any, ...]] = {}
            decimals = dict(old[1]) if old else {}
            if old:
                for row in zip(*(old[0][n] for n in names), strict=True):
                    merged[_key(dataset, row[0])] = row
            before = len(merged)
            value_names = names[1:]
            for i in idx:
                merged.setdefault(
                    _key(dataset, parsed.times[i]),
                    (parsed.times[i], *(parsed.columns[n][i] for n in value_names)),
                )
            added += len(merged) - before
            for n, d in parsed.decimals.items():
                decimals[n] = max(decimals.get(n, 0), d)
            rows = sorted(merged.values())
            self._write_month(symbol, dataset, month, rows, decimals)
        return added

    def _write_month(
        self, symbol: str, dataset: str, month: str, rows: list[tuple[Any, ...]], decimals: dict[str, int]
    ) -> None:
        import pyarrow as pa

        names = COLUMNS[dataset]
        cols = list(zip(*rows, strict=True)) if rows else [() for _ in names]
        fields = [pa.field(names[0], pa.int64(), nullable=False)]
        fields += [pa.field(n, pa.float64()) for n in names[1:]]
        schema = pa.schema(fields, metadata={"decimals": json.dumps(decimals, sort_keys=True)})
        table = pa.table([pa.array(c, type=f.type) for c, f in zip(cols, fields, strict=True)], schema=schema)
        _write_atomic(self.path(symbol, dataset, month), table)

    def _month_table(self, symbol: str, dataset: str, month: str) -> Any:
        """The month file as a pyarrow table, or None when there is none; ``CorruptMonth``."""
        import pyarrow.parquet as pq

        path = self.path(symbol, dataset, month)
        if not path.exists():
            return None
        try:
            # Not read_table (its dataset layer), no pre-buffering, no thread pool: a month file is
            # small, and a year's run reads thousands (~0.6 ms a file that way, ~0.1 ms this way).
            with pq.ParquetFile(path, pre_buffer=False) as parquet:
                return parquet.read(use_threads=False)
        except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            raise CorruptMonth(path, exc) from None

    def _read_month(
        self, symbol: str, dataset: str, month: str
    ) -> tuple[dict[str, list[Any]], dict[str, int]] | None:
        table = self._month_table(symbol, dataset, month)
        if table is None:
            return None
        meta = table.schema.metadata or {}
        decimals = json.loads(meta.get(b"decimals", b"{}"))
        return {n: table.column(n).to_pylist() for n in COLUMNS[dataset]}, decimals

    def read_table(self, symbol: str, dataset: str, start_ms: int, end_ms: int) -> Any:
        """``read``'s rows as one pyarrow table of the stored columns, values left in Arrow (a
        year of candles read into Python lists cost seconds); None when the months' files do not
        share one schema (``read`` then gives them)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        names = list(COLUMNS[dataset])
        parts = []
        for month in months_between(start_ms, end_ms):
            table = self._month_table(symbol, dataset, month)
            if table is None:
                continue
            times = table.column(names[0])
            inside = pc.and_(pc.greater_equal(times, start_ms), pc.less(times, end_ms))
            parts.append(table.select(names).filter(inside).replace_schema_metadata(None))
        if not parts:
            fields = [pa.field(names[0], pa.int64())] + [pa.field(n, pa.float64()) for n in names[1:]]
            return pa.schema(fields).empty_table()
        if any(part.schema != parts[0].schema for part in parts):
            return None
        return pa.concat_tables(parts)

    def read(self, symbol: str, dataset: str, start_ms: int, end_ms: int) -> dict[str, list[Any]]:
        """Columns for ``start_ms <= time < end_ms``, in the files' order (sorted, one row per
        time, as this store writes them). A row outside the window is never read, even from a
        month file whose rows are out of order (``read_table`` reads the same rows)."""
        names = COLUMNS[dataset]
        out: dict[str, list[Any]] = {n: [] for n in names}
        for month in months_between(start_ms, end_ms):
            got = self._read_month(symbol, dataset, month)
            if got is None:
                continue
            cols = got[0]
            keep = [start_ms <= t < end_ms for t in cols[names[0]]]
            for n in names:
                out[n].extend(value for value, kept in zip(cols[n], keep, strict=True) if kept)
        return out

    def audit(self, symbol: str, dataset: str, months: list[str]) -> list[str]:
        """Make the manifest agree with the month files of ``months``: an unreadable file is moved
        aside (``.corrupt``) and its days forgotten (one line returned for it); a day the manifest
        counts more rows for than are stored goes back to pending (forgotten)."""
        problems: list[str] = []
        states = self.days(symbol, dataset)
        forget: list[str] = []
        for month in months:
            in_month = [s for d, s in states.items() if d.startswith(month) and s.status != "failed"]
            path = self.path(symbol, dataset, month)
            try:
                got = self._read_month(symbol, dataset, month)
            except CorruptMonth as exc:
                os.replace(path, path.with_name(path.name + ".corrupt"))
                problems.append(
                    f"{path}: unreadable ({exc.why}); moved to {path.name}.corrupt, its days fetched again"
                )
                forget += [s.day for s in in_month]
                continue
            if not in_month:
                continue
            counts: dict[str, int] = {}
            for t in got[0][COLUMNS[dataset][0]] if got else []:
                day = _day(t)
                counts[day] = counts.get(day, 0) + 1
            forget += [s.day for s in in_month if counts.get(s.day, 0) < s.rows]
        if forget:
            with self.db.conn:
                self.db.conn.executemany(
                    "delete from days where symbol = ? and dataset = ? and day = ?",
                    [(symbol, dataset, d) for d in forget],
                )
        return problems

    # -- aggTrades (covered per minute) ------------------------------------------------------

    def has_agg(self, symbol: str) -> bool:
        """Whether any aggTrades were ever stored for ``symbol`` (no manifest opened)."""
        return (self.root / AGG_TRADES / symbol).is_dir()

    def write_agg(self, symbol: str, minute_ms: int, trades: AggTrades, *, source: str, now_ms: int) -> int:
        """Store the whole of one minute's trades (``trades``: all inside it, one row per id; none is
        a minute without a trade) in place of any rows stored for it before, then mark the minute
        covered with the count actually stored (returned). An id already stored for another minute
        is BadData (the answer is not this minute's): nothing is written."""
        end = minute_ms + MINUTE_KEY_MS
        month = month_of(minute_ms)
        old = self._read_agg_month(symbol, month) or AggTrades.empty()
        keep = [i for i, t in enumerate(old.times) if not minute_ms <= t < end]
        elsewhere = {old.ids[i]: old.times[i] for i in keep}
        for agg_id in trades.ids:
            if agg_id in elsewhere:
                at = datetime.fromtimestamp(elsewhere[agg_id] // MINUTE_KEY_MS * 60, UTC)
                raise BadData(
                    f"aggregate trade id {agg_id} is stored for {at:%Y-%m-%dT%H:%M:%SZ}; not stored"
                )
        inside = trades.within(minute_ms, end)
        if len(inside) or len(keep) < len(old):
            merged = AggTrades.of_columns([[col[i] for i in keep] for col in old.columns()], old.decimals)
            merged.extend(inside)
            order = sorted(range(len(merged.ids)), key=lambda i: (merged.times[i], merged.ids[i]))
            cols = [[col[i] for i in order] for col in merged.columns()]
            self._write_agg_month(symbol, month, AggTrades.of_columns(cols, merged.decimals))
        else:
            (self.root / AGG_TRADES / symbol).mkdir(parents=True, exist_ok=True)  # ``has_agg``
        self.db.table("agg_minutes").upsert(
            {
                "symbol": symbol,
                "minute_ms": minute_ms,
                "rows": len(inside),
                "source": source,
                "fetched_ms": now_ms,
            },
            pk=("symbol", "minute_ms"),
        )
        return len(inside)

    def audit_agg(self, symbol: str, month: str) -> str | None:
        """An aggTrades month file that cannot be read (or is not an aggTrades file) is moved aside
        (``.corrupt``) and its minutes forgotten, as ``audit`` does for the other datasets; the line
        saying so, or None."""
        path = self.path(symbol, AGG_TRADES, month)
        try:
            self._read_agg_month(symbol, month)
        except CorruptMonth as exc:
            os.replace(path, path.with_name(path.name + ".corrupt"))
            if (self.root / "manifest.sqlite").exists():
                lo = _month_ms(month)
                hi = _month_ms(months_between(lo, lo + 32 * 86_400_000)[1])
                with self.db.conn:
                    self.db.execute(
                        "delete from agg_minutes where symbol = ? and minute_ms >= ? and minute_ms < ?",
                        [symbol, lo, hi],
                    )
            return f"{path}: unreadable ({exc.why}); moved to {path.name}.corrupt, its minutes fetched again"
        return None

    def agg_minutes(self, symbol: str, start_ms: int, end_ms: int) -> dict[int, int]:
        """Covered minutes of ``[start_ms, end_ms)`` -> their trade count, as the manifest says
        (``agg_trades`` checks the stored rows against it)."""
        if not self.has_agg(symbol) or not (self.root / "manifest.sqlite").exists():
            return {}
        rows = self.db.query(
            "select minute_ms, rows from agg_minutes where symbol = ? and minute_ms >= ? and minute_ms < ?",
            [symbol, start_ms, end_ms],
        )
        return {int(r["minute_ms"]): int(r["rows"]) for r in rows}

    def agg_trades(self, symbol: str, minute_ms: int) -> AggTrades | None:
        """The trades of a covered minute, oldest first, or None when the minute is not covered (never
        fetched, or other than the manifest's count of rows stored: a file deleted or replaced).
        ``CorruptMonth`` when its month file cannot be read."""
        expected = self.agg_minutes(symbol, minute_ms, minute_ms + MINUTE_KEY_MS).get(minute_ms)
        if expected is None:
            return None
        got = self.read_agg(symbol, minute_ms, minute_ms + MINUTE_KEY_MS)
        return got if len(got) == expected else None

    def read_agg(self, symbol: str, start_ms: int, end_ms: int) -> AggTrades:
        """Stored aggTrades with ``start_ms <= time < end_ms``, oldest first."""
        out = AggTrades.empty()
        for month in months_between(start_ms, end_ms):
            got = self._read_agg_month(symbol, month)
            if got is not None:
                out.extend(got.within(start_ms, end_ms))
        return out

    def _write_agg_month(self, symbol: str, month: str, trades: AggTrades) -> None:
        import pyarrow as pa

        types = (pa.int64(), pa.float64(), pa.float64(), pa.int64(), pa.int64(), pa.int64(), pa.bool_())
        fields = [pa.field(n, t, nullable=False) for n, t in zip(AGG_COLUMNS, types, strict=True)]
        meta = {"decimals": json.dumps(trades.decimals, sort_keys=True)}
        arrays = [pa.array(c, type=f.type) for c, f in zip(trades.columns(), fields, strict=True)]
        _write_atomic(self.path(symbol, AGG_TRADES, month), pa.table(arrays, schema=pa.schema(fields, meta)))

    def _read_agg_month(self, symbol: str, month: str) -> AggTrades | None:
        table = self._month_table(symbol, AGG_TRADES, month)
        if table is None:
            return None
        path = self.path(symbol, AGG_TRADES, month)
        if table.schema.names != list(AGG_COLUMNS) or any(
            str(f.type) != t for f, t in zip(table.schema, AGG_TYPES, strict=True)
        ):
            raise CorruptMonth(path, ValueError(f"not an aggTrades file: columns {table.schema.names}"))
        try:
            decimals = json.loads((table.schema.metadata or {}).get(b"decimals", b"{}"))
        except ValueError as exc:
            raise CorruptMonth(path, exc) from None
        cols = [table.column(n).to_pylist() for n in AGG_COLUMNS]
        return AggTrades.of_columns(cols, decimals)

    def decimals(self, symbol: str, dataset: str, month: str) -> dict[str, int]:
        got = self._read_month(symbol, dataset, month)
        return got[1] if got else {}


def _write_atomic(path: Path, table: Any) -> None:
    """Write a pyarrow table to ``path``: a temp file named for the process, fsynced, renamed over the
    old one, and the folder fsynced (a reader never meets half a file)."""
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        pq.write_table(table, tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)  # the bytes are on disk before the name points at them
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)  # and the rename itself survives a crash
    finally:
        os.close(dfd)


class CorruptMonth(Exception):
    """A month file that cannot be read."""

    def __init__(self, path: Path, exc: Exception) -> None:
        self.path = path
        self.why = f"{type(exc).__name__}: {str(exc)[:120]}"
        super().__init__(f"{path}: unreadable ({self.why})")


def _day(ms: int) -> str:
    from binance.history.archive import day_of

    return day_of(ms)


def _month_ms(month: str) -> int:
    """The first millisecond of ``YYYY-MM`` (UTC)."""
    return int(datetime.strptime(month, "%Y-%m").replace(tzinfo=UTC).timestamp() * 1000)


def _as_dict(s: DayState) -> dict[str, Any]:
    return {
        "day": s.day,
        "status": s.status,
        "source": s.source,
        "rows": s.rows,
        "covered_until_ms": s.covered_until_ms,
        "note": s.note,
    }


def months_between(start_ms: int, end_ms: int) -> list[str]:
    """``YYYY-MM`` of every UTC month that ``[start_ms, end_ms)`` touches."""
    if end_ms <= start_ms:
        return []
    first, last = month_of(start_ms), month_of(end_ms - 1)
    y, m = int(first[:4]), int(first[5:])
    out = []
    while f"{y:04d}-{m:02d}" <= last:
        out.append(f"{y:04d}-{m:02d}")
        y, m = (y + 1, 1) if m == 12 else (y, m + 1)
    return out
