"""Binance's public archive (data.binance.vision): file names, checksums, CSV rows, resumable downloads.

Layout (binance/binance-public-data ``python/utility.py`` ``get_path`` and
``python/download-futures-fundingRates.py``; README "What data is available")::

    data/futures/um/{daily|monthly}/{dataset}/{SYMBOL}/{interval}/{SYMBOL}-{interval}-{YYYY-MM-DD|YYYY-MM}.zip
    data/futures/um/monthly/fundingRate/{SYMBOL}/{SYMBOL}-fundingRate-{YYYY-MM}.zip   (no interval level)

each with ``<name>.zip.CHECKSUM`` beside it holding ``<sha256 hex>  <name>.zip``. Daily files appear the
next day, monthly ones from the beginning of the next month (same README). fundingRate is published as
monthly files only (the repository's docs/FUNDING_RATE_DOWNLOAD.md says so; its downloader also builds
daily fundingRate names, which we never ask for - unsure whether they exist).

CSV columns: klines and markPriceKlines are the REST kline row (open_time, open, high, low, close,
volume, close_time, quote_volume, count, taker_buy_volume, taker_buy_quote_volume, ignore); newer
files start with that header line, older ones have none. fundingRate files hold
``calc_time,funding_interval_hours,last_funding_rate`` (several public projects that downloaded them
quote this header; unsure whether headerless funding files exist, both are read) - no mark price.
Spot files switched to microsecond timestamps in 2025; USD-M files are not known to, but a
microsecond time is recognised and divided down anyway (unsure).

The parsing here is pure; ``Downloader`` does the I/O (httpx, one file at a time, HTTP Range resume).
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import math
import re
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import httpx

log = logging.getLogger(__name__)

DEFAULT_ARCHIVE_URL = "https://data.binance.vision"
KLINE_DATASETS = ("klines", "markPriceKlines")
FUNDING = "fundingRate"
DATASETS = (*KLINE_DATASETS, FUNDING)
INTERVAL = "1m"
MINUTE_MS = 60_000
DAY_MS = 86_400_000
# A price with at most this many significant digits goes through float64 and back unchanged
# (IEEE 754 double: any decimal of <= 15 significant digits round-trips via the shortest repr).
FLOAT_EXACT_DIGITS = 15


# USD-M symbols are upper-case ASCII letters and digits; the name becomes a path part and a URL part,
# so nothing else (no "/", "..", spaces or look-alike Unicode) ever gets that far.
SYMBOL_RE = re.compile(r"[A-Z0-9]{2,30}")


def check_symbol(symbol: str) -> str:
    """``symbol`` upper-cased; ValueError when it is not 2-30 ASCII letters and digits."""
    sym = symbol.strip().upper() if symbol.isascii() else symbol
    if not SYMBOL_RE.fullmatch(sym):
        raise ValueError(f"not a symbol: {symbol!r} (2-30 ASCII letters and digits, e.g. BTCUSDT)")
    return sym


def archive_path(dataset: str, symbol: str, period: str) -> str:
    """The archive path of one file; ``period`` is ``YYYY-MM`` (monthly) or ``YYYY-MM-DD`` (daily)."""
    kind = "monthly" if len(period) == 7 else "daily"
    if dataset == FUNDING:
        return f"data/futures/um/{kind}/{FUNDING}/{symbol}/{symbol}-{FUNDING}-{period}.zip"
    return f"data/futures/um/{kind}/{dataset}/{symbol}/{INTERVAL}/{symbol}-{INTERVAL}-{period}.zip"


def parse_checksum(text: str) -> str | None:
    """The sha256 hex of a ``.CHECKSUM`` file (``<sha256>  <filename>``), None when unreadable."""
    first = text.strip().split()
    if not first:
        return None
    digest = first[0].lower()
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        return None
    return digest


class BadData(ValueError):
    """A file or answer whose content cannot be stored (named for the operator: it is refetched or
    reported, never stored)."""


def faithful(text: str) -> bool:
    """True when ``float(text)`` keeps the exact decimal value of ``text``.

    Binance sends prices and rates as decimal strings with at most 8 decimals; with at most 15
    significant digits (every USD-M price below 10 million at 8 decimals) the float64 holds a value
    whose shortest repr is the same decimal, so ``Decimal(repr(x))`` gives back the exact string.
    Storing float64 is therefore lossless for these, and float64 is what backtest arithmetic wants.
    """
    body = text.strip().lstrip("+-")
    if "e" in body or "E" in body:
        return _exact_by_decimal(text)
    digits = body.replace(".", "").lstrip("0")
    if "." in body:
        digits = digits.rstrip("0") or digits
    return len(digits) <= FLOAT_EXACT_DIGITS or _exact_by_decimal(text)


def _exact_by_decimal(text: str) -> bool:
    try:
        return Decimal(repr(float(text))) == Decimal(text)
    except (InvalidOperation, ValueError):
        return False


def decimals_of(text: str) -> int:
    """Places after the decimal point as written (``"95000.10"`` -> 2)."""
    _, dot, frac = text.strip().partition(".")
    return len(frac) if dot else 0


def to_ms(value: str) -> int:
    """A CSV time cell as epoch milliseconds (microseconds recognised by size)."""
    t = int(value)
    return t // 1000 if t > 100_000_000_000_000 else t


def price_of(text: str, where: str, *, positive: bool = True) -> float:
    """A finite float (``positive``: also > 0) holding ``text`` exactly, else BadData."""
    try:
        x = float(text)
    except (TypeError, ValueError):
        raise BadData(f"{where}: {text!r} is not a number") from None
    if not math.isfinite(x) or (positive and x <= 0):
        raise BadData(
            f"{where}: {text!r} is not a positive finite number"
            if positive
            else f"{where}: {text!r} is not finite"
        )
    if not faithful(str(text)):
        raise BadData(f"{where}: {text!r} is not exactly representable as float64")
    return x


@dataclass(slots=True)
class Parsed:
    """Rows of one file or answer: ``times`` plus value columns, and the decimals seen per column."""

    times: list[int]
    columns: dict[str, list[float | None]]
    decimals: dict[str, int]


def parse_kline_rows(rows: list[list[str]], where: str) -> Parsed:
    """Kline CSV rows (or REST rows as strings): open_time, open, high, low, close (rest ignored)."""
    times: list[int] = []
    cols: dict[str, list[float | None]] = {"open": [], "high": [], "low": [], "close": []}
    decimals = dict.fromkeys(cols, 0)
    for n, row in enumerate(rows, start=1):
        if len(row) < 5:
            raise BadData(f"{where} row {n}: {len(row)} columns, expected 12")
        try:
            t = to_ms(row[0])
        except (TypeError, ValueError):
            raise BadData(f"{where} row {n}: open_time {row[0]!r} is not an integer") from None
        if t % MINUTE_MS:
            raise BadData(f"{where} row {n}: open_time {t} is not on the minute")
        o, h, lo, c = (price_of(cell, f"{where} row {n}") for cell in row[1:5])
        if h < lo:
            raise BadData(f"{where} row {n}: high {h} < low {lo}")
        if not (lo <= o <= h and lo <= c <= h):
            raise BadData(f"{where} row {n}: open {o} or close {c} outside [low, high] = [{lo}, {h}]")
        times.append(t)
        for name, x, cell in zip(("open", "high", "low", "close"), (o, h, lo, c), row[1:5], strict=True):
            cols[name].append(x)
            decimals[name] = max(decimals[name], decimals_of(cell))
    return dedupe(Parsed(times, cols, decimals), where)


def dedupe(parsed: Parsed, where: str) -> Parsed:
    """Rows sorted by time, a row repeated identically kept once. The same time twice with
    different values is BadData: one source contradicting itself cannot say which is right, so the
    whole file or answer is refused (and the next source asked) rather than one row guessed."""
    names = list(parsed.columns)
    seen: dict[int, tuple[float | None, ...]] = {}
    for i, t in enumerate(parsed.times):
        row = tuple(parsed.columns[n][i] for n in names)
        old = seen.setdefault(t, row)
        if old != row:
            raise BadData(f"{where}: open_time {t} twice with different values")
    order = sorted(seen)
    return Parsed(order, {n: [seen[t][k] for t in order] for k, n in enumerate(names)}, parsed.decimals)


def clip(parsed: Parsed, lo: int, hi: int) -> tuple[Parsed, int]:
    """The rows with ``lo <= time < hi`` and how many were outside."""
    keep = [i for i, t in enumerate(parsed.times) if lo <= t < hi]
    if len(keep) == len(parsed.times):
        return parsed, 0
    cols = {n: [v[i] for i in keep] for n, v in parsed.columns.items()}
    return Parsed([parsed.times[i] for i in keep], cols, parsed.decimals), len(parsed.times) - len(keep)


def parse_funding_rows(rows: list[list[str]], where: str) -> Parsed:
    """Archive funding rows: calc_time, funding_interval_hours, last_funding_rate (no mark price)."""
    times: list[int] = []
    rates: list[float | None] = []
    decimals = {"funding_rate": 0, "mark_price": 0}
    for n, row in enumerate(rows, start=1):
        if len(row) < 3:
            raise BadData(f"{where} row {n}: {len(row)} columns, expected 3")
        try:
            times.append(to_ms(row[0]))
        except ValueError:
            raise BadData(f"{where} row {n}: calc_time {row[0]!r} is not an integer") from None
        rates.append(price_of(row[2], f"{where} row {n}", positive=False))  # a rate may be <= 0
        decimals["funding_rate"] = max(decimals["funding_rate"], decimals_of(row[2]))
    return dedupe(Parsed(times, {"funding_rate": rates, "mark_price": [None] * len(times)}, decimals), where)


def csv_rows(payload: bytes, where: str) -> list[list[str]]:
    """The data rows of the single CSV inside an archive zip, the header line (if any) dropped."""
    try:
        with zipfile.ZipFile(io.BytesIO(payload)) as zf:
            names = [n for n in zf.namelist() if n.lower().endswith(".csv")]
            if len(names) != 1:
                raise BadData(f"{where}: {len(names)} CSV files in the zip, expected 1")
            text = zf.read(names[0]).decode("utf-8-sig")
    except (zipfile.BadZipFile, OSError, UnicodeDecodeError) as exc:
        raise BadData(f"{where}: unreadable zip: {exc}") from None
    rows = [row for row in csv.reader(io.StringIO(text)) if row and any(cell.strip() for cell in row)]
    if rows and not rows[0][0].strip().isdigit():
        rows = rows[1:]  # newer files carry a header line (open_time,... / calc_time,...)
    return rows


def parse_archive_file(dataset: str, payload: bytes, where: str) -> Parsed:
    rows = csv_rows(payload, where)
    return parse_funding_rows(rows, where) if dataset == FUNDING else parse_kline_rows(rows, where)


def month_of(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m")


def day_of(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d")


# ---------------------------------------------------------------------------------------------
# downloads
# ---------------------------------------------------------------------------------------------


class NotInArchive(Exception):
    """The archive has no such file (404): a gap to fill from REST."""


class ChecksumMismatch(Exception):
    """The zip's sha256 differs from its ``.CHECKSUM`` twice: not stored, reported as a gap."""


class Unreachable(Exception):
    """A source cannot be reached at all (connection refused, DNS, repeated transport failures)."""


@dataclass(slots=True)
class Downloader:
    """Fetches ``<path>`` and ``<path>.CHECKSUM`` from the archive into ``work_dir``.

    A body cut off mid-way is kept in ``<name>.part`` and continued with ``Range: bytes=N-`` (also by
    a later run); a server that answers a Range request with a plain 200 gets the file rewritten
    from its first byte. A checksum mismatch discards the file and fetches it once more from
    scratch; a second mismatch raises ``ChecksumMismatch``."""

    client: httpx.AsyncClient
    work_dir: Path
    attempts: int = 4  # transport failures per file before giving up (each resumes)
    requests: int = 0

    async def fetch(self, path: str) -> bytes:
        """The verified zip's bytes; raises NotInArchive, ChecksumMismatch or Unreachable."""
        expected = parse_checksum((await self._small(path + ".CHECKSUM")).decode("utf-8", "replace"))
        if expected is None:
            raise ChecksumMismatch(f"{path}.CHECKSUM: unreadable")
        part = self.work_dir / (path.replace("/", "_") + ".part")
        part.parent.mkdir(parents=True, exist_ok=True)
        for attempt in (1, 2):
            await self._download(path, part)
            payload = part.read_bytes()
            part.unlink()
            digest = hashlib.sha256(payload).hexdigest()
            if digest == expected:
                return payload
            log.warning("%s: sha256 %s, .CHECKSUM says %s (attempt %d)", path, digest, expected, attempt)
        raise ChecksumMismatch(f"{path}: sha256 differs from its .CHECKSUM twice; not stored")

    async def _small(self, path: str) -> bytes:
        resp = await self._get(path, {})
        if resp.status_code == 404:
            raise NotInArchive(path)
        if resp.status_code != 200:
            raise Unreachable(f"{path}: HTTP {resp.status_code}")
        return resp.content

    async def _get(self, path: str, headers: dict[str, str]) -> httpx.Response:
        for attempt in range(1, self.attempts + 1):
            try:
                self.requests += 1
                return await self.client.get("/" + path, headers=headers)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                raise Unreachable(f"{_host(self.client)}: connect failed: {type(exc).__name__}") from None
            except httpx.TransportError as exc:
                if attempt == self.attempts:
                    raise Unreachable(f"{path}: {type(exc).__name__} {attempt} times") from None
        raise AssertionError("unreachable")

    async def _download(self, path: str, part: Path) -> None:
        for attempt in range(1, self.attempts + 1):
            have = part.stat().st_size if part.exists() else 0
            headers = {"Range": f"bytes={have}-"} if have else {}
            try:
                self.requests += 1
                async with self.client.stream("GET", "/" + path, headers=headers) as resp:
                    if resp.status_code == 404:
                        raise NotInArchive(path)
                    if resp.status_code == 416:  # our .part is not a prefix of this file: start over
                        part.unlink(missing_ok=True)
                        continue
                    if resp.status_code not in (200, 206):
                        raise Unreachable(f"{path}: HTTP {resp.status_code}")
                    # 206 continues the part; 200 (Range ignored, or no Range sent) is the whole file.
                    mode = "ab" if resp.status_code == 206 and have else "wb"
                    if mode == "ab" and _range_start(resp.headers.get("content-range")) != have:
                        part.unlink(missing_ok=True)  # not the bytes we asked for: start over
                        continue
                    with part.open(mode) as out:
                        async for chunk in resp.aiter_bytes():
                            out.write(chunk)
                            out.flush()  # what arrived is kept if the connection drops next
                return
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                raise Unreachable(f"{_host(self.client)}: connect failed: {type(exc).__name__}") from None
            except httpx.TransportError as exc:
                got = part.stat().st_size if part.exists() else 0
                log.info("%s: %s after %d bytes; resuming", path, type(exc).__name__, got)
                if attempt == self.attempts:
                    raise Unreachable(f"{path}: {type(exc).__name__} {attempt} times") from None
        raise Unreachable(f"{path}: no usable answer after {self.attempts} attempts")


def _range_start(content_range: str | None) -> int | None:
    """N of ``Content-Range: bytes N-M/T``."""
    if not content_range or not content_range.startswith("bytes "):
        return None
    first = content_range[6:].split("-", 1)[0]
    return int(first) if first.isdigit() else None


def _host(client: httpx.AsyncClient) -> str:
    url = client.base_url
    return f"{url.host}:{url.port}" if url.port else str(url.host)


# ---------------------------------------------------------------------------------------------
# aggTrades (GET /fapi/v1/aggTrades rows; fetched per minute for the backtest's ambiguous minutes)
# ---------------------------------------------------------------------------------------------

AGG_TRADES = "aggTrades"


@dataclass(slots=True)
class AggTrades:
    """Aggregate trades, oldest first: Binance's ``a`` (aggregate trade id), ``p`` price, ``q``
    quantity, ``f``/``l`` first and last trade id, ``T`` time (ms), ``m`` buyer was the maker."""

    ids: list[int]
    prices: list[float]
    qtys: list[float]
    first_ids: list[int]
    last_ids: list[int]
    times: list[int]
    buyer_maker: list[bool]
    decimals: dict[str, int]

    @classmethod
    def empty(cls) -> AggTrades:
        return cls([], [], [], [], [], [], [], {"price": 0, "qty": 0})

    @classmethod
    def of_columns(cls, cols: list[list[Any]], decimals: dict[str, int]) -> AggTrades:
        """Columns in ``columns()`` order."""
        ids, prices, qtys, first_ids, last_ids, times, buyer_maker = cols
        return cls(ids, prices, qtys, first_ids, last_ids, times, buyer_maker, decimals)

    def __len__(self) -> int:
        return len(self.ids)

    def columns(self) -> tuple[list[Any], ...]:
        return (
            self.ids, self.prices, self.qtys, self.first_ids, self.last_ids, self.times, self.buyer_maker,
        )  # fmt: skip

    def extend(self, other: AggTrades) -> None:
        """``other``'s rows after these (ids not seen yet only)."""
        seen = set(self.ids)
        for i, agg_id in enumerate(other.ids):
            if agg_id in seen:
                continue
            seen.add(agg_id)
            for mine, theirs in zip(self.columns(), other.columns(), strict=True):
                mine.append(theirs[i])
        for name, d in other.decimals.items():
            self.decimals[name] = max(self.decimals.get(name, 0), d)

    def within(self, lo: int, hi: int) -> AggTrades:
        """The rows with ``lo <= time < hi``."""
        keep = [i for i, t in enumerate(self.times) if lo <= t < hi]
        cols = [[col[i] for i in keep] for col in self.columns()]
        return AggTrades.of_columns(cols, dict(self.decimals))


INT64 = (-(2**63), 2**63 - 1)  # the store's ids and times are int64
# Binance writes prices and quantities as plain decimals ("141.49", "1"); float() also takes
# "1_4_1.49", " 141.49 " and "1.5060e2", which no Binance answer holds.
DECIMAL_RE = re.compile(r"[0-9]+(?:\.[0-9]+)?")


def _int_field(row: dict[str, object], key: str, where: str) -> int:
    value = row.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadData(f"{where}: {key!r} is {value!r}, not an integer")
    if not INT64[0] <= value <= INT64[1]:
        raise BadData(f"{where}: {key!r} is {value}, not a 64-bit integer")
    return value


def parse_agg_rows(rows: list[object], where: str) -> AggTrades:
    """REST aggTrades rows ``{"a","p","q","f","l","T","m"}`` (Binance's USD-M page, "Response
    Example"); anything else is BadData (the whole answer refused, never one row guessed)."""
    out = AggTrades.empty()
    for n, row in enumerate(rows, start=1):
        at = f"{where} row {n}"
        if not isinstance(row, dict):
            raise BadData(f"{at}: not an aggTrade object: {str(row)[:120]}")
        ids = [_int_field(row, k, at) for k in ("a", "f", "l", "T")]
        m = row.get("m")
        if not isinstance(m, bool):
            raise BadData(f"{at}: 'm' is {m!r}, not true/false")
        p, q = row.get("p"), row.get("q")
        if not isinstance(p, str) or not isinstance(q, str):
            raise BadData(f"{at}: price {p!r} / quantity {q!r} are not decimal strings")
        for name, text in (("price", p), ("quantity", q)):
            if not DECIMAL_RE.fullmatch(text):
                raise BadData(
                    f"{at}: {name} {text!r} is not a decimal (digits, optionally a point and digits)"
                )
        out.ids.append(ids[0])
        out.prices.append(price_of(p, at))
        out.qtys.append(price_of(q, at))
        out.first_ids.append(ids[1])
        out.last_ids.append(ids[2])
        out.times.append(ids[3])
        out.buyer_maker.append(m)
        out.decimals["price"] = max(out.decimals["price"], decimals_of(p))
        out.decimals["qty"] = max(out.decimals["qty"], decimals_of(q))
    return out
