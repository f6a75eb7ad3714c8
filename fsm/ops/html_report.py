"""The signal funnel and the self-contained HTML page of ``shortfsm report`` (issue #14 item 4).

Everything here is pure except ``read_funnel`` and ``read_marks`` (read an open connection) and
``write_atomic`` (one file): rows and ``Trade`` objects in, a ``Funnel`` or a page of text out.
The page: the report's figures (at the JSON's precision), equity, drawdown, daily PnL, a monthly
heatmap, the exit reasons, the funnel, one small chart per trade (its fills, with the journaled mark
price when the journal still covers the trade, else marked "fills only") and the trades table.
It is one HTML file with inline CSS and inline SVG drawn here: no script, no font, no network, so
it opens offline and shows the same thing everywhere. Every text that came from the database
(symbols, reasons, the database's path) goes through ``html.escape``.

The signal funnel
    It follows the messages of the leading-market channel (the ``messages`` table) to what became of
    them, one message at a time, so each step is split exactly into the next ones:

    received
        messages stored from the leading channel (``--config``'s ``telegram.entry_chat_id``; without
        a configuration, the chat with the most leading-market messages), received at or after
        ``--since`` when given. Edits are not new messages (the table keeps the first text).
    parsed / not parsed
        parsed: the text parsed as a leading-market analysis with a ticker (``LeadingMarket``), a
        field error included (the engine rejects it, below). Not parsed, by what it was: the
        grammar's reason for ``Unrecognised`` text, ``entry_signal`` or ``risk_signal``.
        received = parsed + not parsed.
    not traded / monitored / no decision
        a parsed message is handled by the engine at its receipt time: either a ``start_monitoring``
        transition of its symbol (monitored), or one decision saying why not (``kind: reason``, the
        kinds of ``ledger.SKIPPED_KINDS`` that apply at receipt plus ``message_*``: dropped as a
        duplicate, deferred by recovery, ignored), or neither ("no decision": the daemon stopped
        before handling it, or handled it later than its receipt, as after a recovery).
        parsed = not traded + monitored + no decision.
    entered / not entered
        entered: a trade of that message id and symbol has an entry fill. Not entered, by the
        reason of the symbol's first later return to ``IDLE`` (timeout, risk signal, entry failed
        ...), or ``still monitoring`` when there is none yet. monitored = entered + not entered.
    outcome
        an entered trade is closed (counted by its exit reason, as ``metrics.exit_reasons``) or
        still open. entered = closed + open. This counts trades by the receipt of their message;
        the report's exit-reason mix counts them by their close, so with ``--since`` the two can
        differ, and a trade with no signal (a manual position) is in the report but not here.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sqlite3
import tempfile
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from html import escape
from pathlib import Path
from typing import Any

from fsm import events as ev
from fsm.journal import decode_event
from fsm.ops.benchmark import Benchmark
from fsm.runtime import ledger, metrics
from fsm.runtime.ledger import ENTRY_SIDE, Fill, Trade

ZERO = Decimal(0)
# Decisions that end a parsed leading message at its receipt (fsm/intake.py), besides monitoring it.
RECEIPT_KINDS = (
    "message_ignored",
    "message_dropped",
    "message_deferred",
    "leading_dropped",
    "symbol_mapping",
    "leading_rejected",
    "leading_ignored",
)
NOT_PARSED = {"EntrySignal": "entry_signal", "RiskSignal": "risk_signal"}
STILL_MONITORING = "still monitoring"


# ---------------------------------------------------------------------------------------------
# The signal funnel
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    """One row of ``messages``, with what its parse said."""

    message_id: int
    received_ms: int
    kind: str  # LeadingMarket, Unrecognised, EntrySignal, RiskSignal
    symbol: str | None = None
    reason: str = ""  # an Unrecognised text's reason code


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    id: int
    now_ms: int
    kind: str
    symbol: str | None
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Transition:
    id: int
    now_ms: int
    symbol: str
    trigger: str
    dest: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Funnel:
    """The steps of the module docstring; every ``dict`` is a count by reason, most frequent first."""

    leading_chat_id: int | None = None
    received: int = 0
    parsed: int = 0
    not_parsed: dict[str, int] = field(default_factory=dict)
    not_traded: dict[str, int] = field(default_factory=dict)
    no_decision: int = 0
    monitored: int = 0
    not_entered: dict[str, int] = field(default_factory=dict)
    entered: int = 0
    closed: dict[str, int] = field(default_factory=dict)
    open: int = 0

    def problems(self) -> list[str]:
        """The identities of the docstring that do not hold (none, unless the code is wrong)."""
        sums = [
            ("received", self.received, self.parsed + sum(self.not_parsed.values())),
            ("parsed", self.parsed, sum(self.not_traded.values()) + self.no_decision + self.monitored),
            ("monitored", self.monitored, self.entered + sum(self.not_entered.values())),
            ("entered", self.entered, sum(self.closed.values()) + self.open),
        ]
        return [f"{name} {total} != {parts}" for name, total, parts in sums if total != parts]

    def as_dict(self) -> dict[str, Any]:
        return {
            "leading_chat_id": self.leading_chat_id,
            "received": self.received,
            "parsed": self.parsed,
            "not_parsed": self.not_parsed,
            "not_traded": self.not_traded,
            "no_decision": self.no_decision,
            "monitored": self.monitored,
            "not_entered": self.not_entered,
            "entered": self.entered,
            "closed": self.closed,
            "open": self.open,
        }

    def lines(self) -> list[str]:
        """The funnel as four sums, for the table output."""
        return [
            f"received {self.received} = parsed {self.parsed} + not parsed "
            f"{sum(self.not_parsed.values())}{_reasons(self.not_parsed)}",
            f"parsed {self.parsed} = monitored {self.monitored} + not traded "
            f"{sum(self.not_traded.values())}{_reasons(self.not_traded)}"
            + (f" + no decision {self.no_decision}" if self.no_decision else ""),
            f"monitored {self.monitored} = entered {self.entered} + not entered "
            f"{sum(self.not_entered.values())}{_reasons(self.not_entered)}",
            f"entered {self.entered} = closed {sum(self.closed.values())}{_reasons(self.closed)} "
            f"+ open {self.open}",
        ]


def _reasons(counts: dict[str, int]) -> str:
    return f" ({', '.join(f'{reason} {n}' for reason, n in counts.items())})" if counts else ""


def _ranked(counts: Counter[str]) -> dict[str, int]:
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def build_funnel(
    messages: Sequence[Message],
    decisions: Sequence[Decision],
    transitions: Sequence[Transition],
    trades: Iterable[Trade],
    *,
    leading_chat_id: int | None = None,
) -> Funnel:
    """The funnel of ``messages`` (one chat's, oldest first); ``decisions`` and ``transitions`` (the
    symbol machine's) in id order. Each decision or transition is used for at most one message."""
    entered_by = {(t.message_id, t.symbol): t for t in trades if t.message_id is not None and t.entry_qty > 0}
    # Indexed by time (and symbol): a long-running database has many decisions, each looked at once.
    starts: dict[tuple[int, str], list[Transition]] = {}
    resets: dict[str, list[Transition]] = {}  # a symbol's returns to IDLE, in id order
    for t in transitions:
        if t.trigger == "start_monitoring":
            starts.setdefault((t.now_ms, t.symbol), []).append(t)
        if t.dest == "IDLE":
            resets.setdefault(t.symbol, []).append(t)
    reset_ids = {symbol: [t.id for t in rows] for symbol, rows in resets.items()}
    at_receipt: dict[int, list[Decision]] = {}
    for d in decisions:
        if d.kind in RECEIPT_KINDS and not (d.kind == "symbol_mapping" and d.reason == "ok"):
            at_receipt.setdefault(d.now_ms, []).append(d)
    not_parsed: Counter[str] = Counter()
    not_traded: Counter[str] = Counter()
    not_entered: Counter[str] = Counter()
    closed: Counter[str] = Counter()
    parsed = no_decision = monitored = entered = still_open = 0
    for msg in messages:
        if msg.kind != "LeadingMarket" or msg.symbol is None:
            not_parsed[msg.reason or NOT_PARSED.get(msg.kind, msg.kind)] += 1
            continue
        parsed += 1
        waiting = starts.get((msg.received_ms, msg.symbol))
        if not waiting:
            pending = at_receipt.get(msg.received_ms, [])
            decision = next((d for d in pending if d.symbol in (None, msg.symbol)), None)
            if decision is None:
                no_decision += 1
            else:
                pending.remove(decision)  # used once
                not_traded[f"{decision.kind}: {decision.reason}"] += 1
            continue
        start = waiting.pop(0)
        monitored += 1
        trade = entered_by.get((msg.message_id, msg.symbol))
        if trade is None:
            later = resets.get(msg.symbol, [])
            after = bisect_right(reset_ids.get(msg.symbol, []), start.id)
            end = later[after] if after < len(later) else None
            not_entered[(end.reason or end.trigger) if end is not None else STILL_MONITORING] += 1
            continue
        entered += 1
        if trade.closed_ms is None:
            still_open += 1
        else:
            closed[trade.close_reason or "unknown"] += 1
    return Funnel(
        leading_chat_id=leading_chat_id,
        received=len(messages),
        parsed=parsed,
        not_parsed=_ranked(not_parsed),
        not_traded=_ranked(not_traded),
        no_decision=no_decision,
        monitored=monitored,
        not_entered=_ranked(not_entered),
        entered=entered,
        closed=_ranked(closed),
        open=still_open,
    )


def read_funnel(
    conn: sqlite3.Connection,
    trades: Iterable[Trade],
    *,
    leading_chat_id: int | None = None,
    since_ms: int | None = None,
) -> Funnel:
    """The funnel from an open connection (``sqlite3.Error`` on a foreign file); an empty one when
    the database has no messages table or no leading channel can be told."""
    tables = {str(r[0]) for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "messages" not in tables:
        return Funnel(leading_chat_id=leading_chat_id)
    if leading_chat_id is None:
        leading_chat_id = _leading_chat(conn)
        if leading_chat_id is None:
            return Funnel()
    after = "" if since_ms is None else f" AND received_ms >= {int(since_ms)}"
    messages = [
        _message(message_id, received_ms, kind, parse_json)
        for message_id, received_ms, kind, parse_json in conn.execute(
            "SELECT message_id, received_ms, kind, parse_json FROM messages "
            f"WHERE chat_id = ?{after} ORDER BY received_ms, message_id",
            [leading_chat_id],
        )
    ]
    first = min((m.received_ms for m in messages), default=0)
    decisions: list[Decision] = []
    if "decisions" in tables and messages:
        marks = ", ".join("?" for _ in RECEIPT_KINDS)
        decisions = [
            Decision(id=int(i), now_ms=int(at or 0), kind=str(kind), symbol=symbol, reason=str(reason or ""))
            for i, at, kind, symbol, reason in conn.execute(
                f"SELECT id, now_ms, kind, symbol, reason FROM decisions WHERE kind IN ({marks}) "
                "AND now_ms >= ? ORDER BY id",
                [*RECEIPT_KINDS, first],
            )
        ]
    transitions: list[Transition] = []
    if "transitions" in tables and messages:
        transitions = [
            Transition(
                id=int(i),
                now_ms=int(at or 0),
                symbol=str(symbol or ""),
                trigger=str(trigger or ""),
                dest=str(dest or ""),
                reason=str(reason or ""),
            )
            for i, at, symbol, trigger, dest, reason in conn.execute(
                "SELECT id, now_ms, symbol, trigger, dest, reason FROM transitions "
                "WHERE machine = 'symbol' AND now_ms >= ? ORDER BY id",
                [first],
            )
        ]
    return build_funnel(messages, decisions, transitions, trades, leading_chat_id=leading_chat_id)


def _leading_chat(conn: sqlite3.Connection) -> int | None:
    """The chat with the most leading-market messages (parsed or not), the lowest id on a tie."""
    row = conn.execute(
        "SELECT chat_id, COUNT(*) AS n FROM messages WHERE kind = 'LeadingMarket' "
        "OR (kind = 'Unrecognised' AND parse_json LIKE '%\"kind\":\"leading\"%') "
        "GROUP BY chat_id ORDER BY n DESC, chat_id LIMIT 1"
    ).fetchone()
    return int(row[0]) if row else None


def _message(message_id: Any, received_ms: Any, kind: Any, parse_json: Any) -> Message:
    try:
        parsed = json.loads(parse_json) if parse_json else {}
    except ValueError:
        parsed = {}
    if not isinstance(parsed, dict):
        parsed = {}
    symbol = parsed.get("symbol")
    return Message(
        message_id=int(message_id or 0),
        received_ms=int(received_ms or 0),
        kind=str(kind or ""),
        symbol=str(symbol) if isinstance(symbol, str) and symbol else None,
        reason=str(parsed.get("reason") or "") if kind == "Unrecognised" else "",
    )


# ---------------------------------------------------------------------------------------------
# Fills of each trade (for its chart)
# ---------------------------------------------------------------------------------------------


MARK_BUCKETS = 120  # a trade's chart keeps the lowest and highest mark of each of these time slices
MARK_MARGIN_MS = 60_000  # marks shown before the first fill and after the last


AMBIGUOUS_TABLE = "ambiguous_minutes"  # a backtest's (fsm.harness.backtest.write_ambiguous_minutes)


@dataclass(frozen=True, slots=True, kw_only=True)
class Ambiguity:
    """A backtest's minutes whose order of high and low decided something for a trade (D-57, D-74):
    ``trades`` of ``of_trades`` went through at least one the path rule decided (``minutes`` of
    them); ``resolved`` minutes were decided by cached aggTrades instead."""

    trades: int
    of_trades: int
    minutes: int
    resolved: int

    def as_dict(self) -> dict[str, int]:
        return {
            "trades": self.trades,
            "of_trades": self.of_trades,
            "minutes": self.minutes,
            "resolved_by_aggtrades": self.resolved,
        }

    def row(self) -> tuple[str, str, str]:
        """The report's figure row."""
        return (
            "Ambiguous trades",
            f"{self.trades} of {self.of_trades}",
            f"{self.minutes} minute(s) decided by the path rule, {self.resolved} by aggTrades",
        )


def read_ambiguity(conn: sqlite3.Connection, trades: Sequence[Trade]) -> Ambiguity | None:
    """The backtest's ambiguity of ``trades``, or None for a database without the table (the
    daemon's, a backtest's from before it)."""
    try:
        rows = conn.execute(
            f"SELECT symbol, minute_ms, message_id, decided_by FROM {AMBIGUOUS_TABLE}"
        ).fetchall()
    except sqlite3.OperationalError:
        return None
    keys = {(t.symbol, t.message_id) for t in trades}
    path = [(s, m, mid) for s, m, mid, by in rows if by == "path" and (s, mid) in keys]
    resolved = {(s, m) for s, m, mid, by in rows if by == "aggTrades" and (s, mid) in keys}
    return Ambiguity(
        trades=len({(s, mid) for s, _, mid in path}),
        of_trades=len(trades),
        minutes=len({(s, m) for s, m, _ in path}),
        resolved=len(resolved),
    )


def read_marks(
    conn: sqlite3.Connection, trades: Sequence[Trade], fills: dict[int, list[Fill]]
) -> dict[int, list[tuple[int, Decimal]]]:
    """``id(trade) -> [(time, mark price)]`` from the journal's ``MarkPriceTick`` rows, for the trades
    whose time the journal still covers (the daemon keeps about a week of it); one pass over the
    rows, thinned to ``MARK_BUCKETS`` lows and highs a trade. Rows that do not decode are skipped."""
    if "journal" not in {
        str(r[0]) for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    }:
        return {}
    first = conn.execute("SELECT MIN(now_ms) FROM journal WHERE type = 'MarkPriceTick'").fetchone()[0]
    if first is None:
        return {}
    windows: dict[str, list[tuple[int, int, int]]] = {}
    for trade in trades:
        times = [f.now_ms for f in fills.get(id(trade), [])] or [trade.opened_ms]
        start, end = min(times) - MARK_MARGIN_MS, max([*times, trade.closed_ms or 0]) + MARK_MARGIN_MS
        if trade.closed_ms is None:
            end = 2**62  # open: up to the last mark recorded
        if end >= int(first):
            windows.setdefault(trade.symbol, []).append((start, end, id(trade)))
    if not windows:
        return {}
    begin = min(start for spans in windows.values() for start, _, _ in spans)
    found: dict[int, list[tuple[int, Decimal]]] = {}
    for now_ms, payload in conn.execute(
        "SELECT now_ms, payload FROM journal WHERE type = 'MarkPriceTick' AND now_ms >= ? ORDER BY seq",
        [begin],
    ):
        text = str(payload or "")
        symbol = next((s for s in windows if f'"symbol":"{s}"' in text), None)
        if symbol is None:
            continue
        try:
            tick = decode_event(text)
        except ValueError:
            continue
        if not isinstance(tick, ev.MarkPriceTick) or tick.symbol != symbol:
            continue
        for start, end, key in windows[symbol]:
            if start <= int(now_ms) <= end:
                found.setdefault(key, []).append((int(now_ms), tick.price))
    return {key: _thin(points) for key, points in found.items()}


def _thin(points: list[tuple[int, Decimal]]) -> list[tuple[int, Decimal]]:
    """At most two points (the low and the high, in time order) per slice of ``MARK_BUCKETS``."""
    if len(points) <= 2 * MARK_BUCKETS:
        return points
    t0, t1 = points[0][0], points[-1][0]
    width = max((t1 - t0) / MARK_BUCKETS, 1)
    slices: dict[int, list[tuple[int, Decimal]]] = {}
    for point in points:
        slices.setdefault(min(int((point[0] - t0) / width), MARK_BUCKETS - 1), []).append(point)
    out: list[tuple[int, Decimal]] = []
    for bucket in sorted(slices):
        chunk = slices[bucket]
        low, high = min(chunk, key=lambda p: p[1]), max(chunk, key=lambda p: p[1])
        out += sorted({low, high})
    return out


# ---------------------------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------------------------

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1d2733;background:#f6f7f9;margin:0}
main{max-width:1100px;margin:0 auto;padding:24px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}
.meta{color:#5b6775;margin:0 0 16px}.note{color:#5b6775;font-size:12px}
section{background:#fff;border:1px solid #dde2e8;border-radius:6px;padding:12px 16px;margin:12px 0}
table{border-collapse:collapse;width:100%}
th,td{padding:4px 8px;border-bottom:1px solid #edf0f3;text-align:left}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
.pos{color:#1a7f37}.neg{color:#c0392b}
svg{display:block;max-width:100%;height:auto;font:11px system-ui,sans-serif}
.trades{display:grid;grid-template-columns:repeat(auto-fill,minmax(250px,1fr));gap:10px}
.trade{border:1px solid #edf0f3;border-radius:4px;padding:6px}
.funnel li{margin:2px 0}
"""
POS, NEG, INK, GRID, MUTED = "#1a7f37", "#c0392b", "#2f6fb0", "#e3e7ec", "#5b6775"
BENCH = "#d08c15"  # the buy-and-hold benchmark's line on the equity chart


def render(
    *,
    source: str,
    generated_ms: int,
    headline: str,
    figures: Sequence[tuple[str, str, str]],
    result: metrics.Metrics,
    counted: Sequence[Trade],
    listed: Sequence[Trade],
    fills: dict[int, list[Fill]],
    funnel: Funnel,
    marks: dict[int, list[tuple[int, Decimal]]] | None = None,
    since: str | None = None,
    since_ms: int | None = None,
    benchmark: Benchmark | None = None,
) -> str:
    """The whole page. ``figures`` are the report's rows (label, value, note) at the JSON's
    precision; ``counted`` the trades ``result`` measured (``metrics.counted_trades``); ``listed``
    the trades of the table (``shortfsm trades``'s rule); ``fills`` each trade's own
    (``Trade.fills``), ``marks`` from ``read_marks``; ``benchmark`` adds its price line, scaled to
    the capital, to the equity chart (its figure row is in ``figures``)."""
    closes = [(t.closed_ms or 0, t.net) for t in counted]
    start = result.start_ms if result.start_ms is not None else 0
    curve = metrics.equity_curve(result.capital, closes, start)
    period = (
        f"{ledger.iso_utc(result.start_ms)} to {ledger.iso_utc(result.end_ms)}"
        if result.start_ms is not None and result.end_ms is not None
        else "no closed trade"
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        f"<title>shortfsm report: {escape(Path(source).name)}</title>",
        f"<style>{CSS}</style></head><body><main>",
        "<h1>shortfsm report</h1>",
        f'<p class="meta">Database <code>{escape(source)}</code> &middot; capital '
        f"{escape(ledger.money(result.capital))} USDT &middot; period {escape(period)}"
        + (f" (trades closed since {escape(since)})" if since else "")
        + f" &middot; made {escape(ledger.iso_utc(generated_ms))} (UTC)</p>",
        f"<p>{escape(headline)}</p>",
        "<section><h2>Figures</h2>",
        '<table class="figures"><thead><tr><th>Metric</th><th class="num">Value</th><th>Note</th></tr>'
        "</thead><tbody>",
        *(
            f'<tr><td>{escape(label)}</td><td class="num">{escape(value)}</td><td>{escape(note)}</td></tr>'
            for label, value, note in figures
        ),
        "</tbody></table>",
        '<p class="note">Definitions: fsm/runtime/metrics.py. PnL is realised at each close; open '
        "trades are counted, never measured.</p></section>",
    ]
    if counted and result.start_ms is not None and result.end_ms is not None:
        parts += [
            "<section><h2>Equity</h2>",
            equity_svg(curve, result.capital, benchmark_curve(benchmark, result.capital)),
            "<h2>Drawdown</h2>",
            drawdown_svg(metrics.drawdown_curve(curve)),
            "<h2>Daily PnL (net, UTC days)</h2>",
            daily_svg(metrics.daily_nets(closes, result.start_ms, result.end_ms)),
            "<h2>Monthly returns (% of the starting capital)</h2>",
            heatmap_svg(metrics.monthly_return_pct(result.capital, closes), result.start_ms, result.end_ms),
            "<h2>Exit reasons</h2>",
            bars_svg(list(result.exit_reasons.items()), "exit_reasons"),
            "</section>",
        ]
    else:
        parts.append("<section><p>No closed trade yet: nothing to chart.</p></section>")
    parts += funnel_html(funnel, since_ms)
    parts += trades_html(listed, fills, marks or {})
    parts.append("</main></body></html>")
    return "\n".join(parts) + "\n"


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path`` and rename it over ``path`` (a reader
    never sees half a page); ``OSError`` when that cannot be done, the temporary file removed."""
    if path.is_dir():  # renaming over a directory fails, or worse ("." is busy): say what it is
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# ---------------------------------------------------------------------------------------------
# Charts: inline SVG, coordinates as floats (drawing only; every figure shown is a Decimal's text)
# ---------------------------------------------------------------------------------------------

WIDTH, HEIGHT, LEFT, RIGHT, TOP, BOTTOM = 720, 200, 70, 10, 10, 24


def _svg(kind: str, width: int, height: int, body: Iterable[str], label: str) -> str:
    return (
        f'<svg class="chart" data-chart="{kind}" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" role="img" aria-label="{escape(label)}" xmlns="http://www.w3.org/2000/svg">'
        f"<title>{escape(label)}</title>{''.join(body)}</svg>"
    )


def _scale(lo: float, hi: float, out_lo: float, out_hi: float) -> Any:
    span = hi - lo or 1.0
    return lambda v: out_lo + (float(v) - lo) / span * (out_hi - out_lo)


def _day(ms: int) -> str:
    return ledger.iso_utc(ms)[:10]


def _short(value: Decimal, places: str = "0.01") -> str:
    rounded = value.quantize(Decimal(places), rounding=ROUND_HALF_UP)
    return format(rounded if rounded else abs(rounded), "f")


def _axes(y_labels: Sequence[tuple[float, str]], x_labels: Sequence[tuple[float, str, str]]) -> list[str]:
    out = []
    for y, text in y_labels:
        out.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="{GRID}"/>')
        out.append(
            f'<text x="{LEFT - 4}" y="{y + 4:.1f}" text-anchor="end" fill="{MUTED}">{escape(text)}</text>'
        )
    for x, text, anchor in x_labels:
        out.append(
            f'<text x="{x:.1f}" y="{HEIGHT - 6}" text-anchor="{anchor}" fill="{MUTED}">{escape(text)}</text>'
        )
    return out


def benchmark_curve(benchmark: Benchmark | None, capital: Decimal) -> list[tuple[int, Decimal]]:
    """The capital held in the benchmark's symbol: capital x price / first open, at each point."""
    if benchmark is None or benchmark.open is None or benchmark.open <= 0:
        return []
    return [(at, capital * price / benchmark.open) for at, price in benchmark.curve]


def equity_svg(
    curve: Sequence[tuple[int, Decimal]],
    capital: Decimal,
    benchmark: Sequence[tuple[int, Decimal]] = (),
) -> str:
    """The equity after each close as a step line, the capital as a dashed line; ``benchmark``
    (the capital held in BTCUSDT, ``benchmark_curve``) as a thin line when given."""
    times = [at for at, _ in curve]
    values = [float(v) for _, v in curve] + [float(capital)] + [float(v) for _, v in benchmark]
    lo, hi = min(values), max(values)
    pad = (hi - lo) * 0.08 or abs(hi) * 0.01 or 1.0
    x = _scale(
        min([times[0], *(at for at, _ in benchmark)]),
        max([times[-1], *(at for at, _ in benchmark)]),
        LEFT,
        WIDTH - RIGHT,
    )
    y = _scale(lo - pad, hi + pad, HEIGHT - BOTTOM, TOP)
    path = [f"M{x(times[0]):.1f},{y(curve[0][1]):.1f}"]
    for at, equity in curve[1:]:
        path.append(f"H{x(at):.1f}V{y(equity):.1f}")
    dots = [
        f'<circle cx="{x(at):.1f}" cy="{y(v):.1f}" r="2.5" fill="{INK}"><title>'
        f"{escape(ledger.iso_utc(at))}: {escape(ledger.money(v))} USDT</title></circle>"
        for at, v in curve[1:]
    ]
    body = [
        *_axes(
            [(y(hi), _short(Decimal(str(hi)))), (y(lo), _short(Decimal(str(lo))))],
            [(LEFT, _day(times[0]), "start"), (WIDTH - RIGHT, _day(times[-1]), "end")],
        ),
        f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(capital):.1f}" y2="{y(capital):.1f}" '
        f'stroke="{MUTED}" stroke-dasharray="4 3"/>',
        f'<path d="{"".join(path)}" fill="none" stroke="{INK}" stroke-width="1.8"/>',
        *dots,
    ]
    label = "Equity (USDT) after each closed trade"
    if benchmark:
        line = "".join(
            f"{'M' if i == 0 else 'L'}{x(at):.1f},{y(v):.1f}" for i, (at, v) in enumerate(benchmark)
        )
        body += [
            f'<path data-series="benchmark" d="{line}" fill="none" stroke="{BENCH}" stroke-width="1.2">'
            f"<title>buy and hold BTCUSDT, {escape(ledger.money(benchmark[-1][1]))} USDT at the end</title>"
            "</path>",
            f'<text x="{LEFT + 4}" y="{TOP + 12}" fill="{BENCH}">'
            "buy and hold BTCUSDT (capital scaled)</text>",
        ]
        label += "; buy and hold BTCUSDT scaled to the capital"
    return _svg("equity", WIDTH, HEIGHT, body, label)


def drawdown_svg(points: Sequence[tuple[int, Decimal]]) -> str:
    """The fall below the running peak (percent), drawn downwards from 0."""
    deepest = max((float(p) for _, p in points), default=0.0) or 1.0
    times = [at for at, _ in points]
    x = _scale(times[0], times[-1], LEFT, WIDTH - RIGHT)
    y = _scale(0.0, deepest * 1.1, TOP, HEIGHT - BOTTOM)
    path = [f"M{x(times[0]):.1f},{y(0):.1f}"]
    for at, pct in points:
        path.append(f"H{x(at):.1f}V{y(pct):.1f}")
    path.append(f"H{x(times[-1]):.1f}V{y(0):.1f}Z")
    body = [
        *_axes(
            [(y(0), "0 %"), (y(deepest), f"-{_short(Decimal(str(deepest)))} %")],
            [(LEFT, _day(times[0]), "start"), (WIDTH - RIGHT, _day(times[-1]), "end")],
        ),
        f'<path d="{"".join(path)}" fill="{NEG}" fill-opacity="0.25" stroke="{NEG}" stroke-width="1.2"/>',
    ]
    return _svg("drawdown", WIDTH, HEIGHT, body, "Drawdown (% below the running peak)")


def daily_svg(days: Sequence[tuple[int, Decimal]]) -> str:
    """One bar per UTC day of the period: the net closed that day (USDT)."""
    values = [float(v) for _, v in days]
    lo, hi = min([*values, 0.0]), max([*values, 0.0])
    if lo == hi:
        hi = 1.0
    y = _scale(lo, hi, HEIGHT - BOTTOM, TOP)
    slot = (WIDTH - LEFT - RIGHT) / max(len(days), 1)
    bars = []
    for i, (day, net) in enumerate(days):
        if not net:
            continue  # a day without a close: the zero line says it
        top, base = sorted((y(net), y(0)))
        bars.append(
            f'<rect x="{LEFT + i * slot + slot * 0.15:.1f}" y="{top:.1f}" width="{max(slot * 0.7, 1):.1f}" '
            f'height="{max(base - top, 0.5):.1f}" fill="{NEG if net < 0 else POS}">'
            f"<title>{_day(day)}: {escape(ledger.money(net))} USDT</title></rect>"
        )
    body = [
        *_axes(
            [(y(hi), _short(Decimal(str(hi)))), (y(0), "0"), (y(lo), _short(Decimal(str(lo))))],
            [(LEFT, _day(days[0][0]), "start"), (WIDTH - RIGHT, _day(days[-1][0]), "end")],
        ),
        *bars,
    ]
    return _svg("daily_pnl", WIDTH, HEIGHT, body, "Net PnL per UTC day (USDT)")


MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def heatmap_svg(months: dict[tuple[int, int], Decimal], start_ms: int, end_ms: int) -> str:
    """Year x month: each month of the period with its return (percent of the starting capital;
    0.00 for a month of the period without a close), then the year's sum."""
    first, last = (
        datetime.fromtimestamp(start_ms / 1000, tz=UTC),
        datetime.fromtimestamp(end_ms / 1000, tz=UTC),
    )
    years = list(range(first.year, last.year + 1))
    scale = max((abs(v) for v in months.values()), default=ZERO) or Decimal(1)
    cell_w, cell_h, left, top = 50, 26, 50, 18
    width, height = left + cell_w * 13 + 2, top + cell_h * len(years) + 2
    body = [
        f'<text x="{left + i * cell_w + cell_w / 2}" y="12" text-anchor="middle" fill="{MUTED}">{name}</text>'
        for i, name in enumerate([*MONTHS, "Year"])
    ]
    for row, year in enumerate(years):
        yy = top + row * cell_h
        body.append(f'<text x="4" y="{yy + 17}" fill="{MUTED}">{year}</text>')
        year_sum = ZERO
        for month in range(1, 13):
            inside = (first.year, first.month) <= (year, month) <= (last.year, last.month)
            if not inside:
                continue
            value = months.get((year, month), ZERO)
            year_sum += value
            body.append(_cell(f"{year}-{month:02d}", value, scale, left + (month - 1) * cell_w, yy, cell_w))
        body.append(_cell(f"{year}", year_sum, scale, left + 12 * cell_w, yy, cell_w, kind="year"))
    return _svg("monthly", width, height, body, "Monthly returns, % of the starting capital")


def _cell(
    name: str, value: Decimal, scale: Decimal, x: float, y: float, w: float, kind: str = "month"
) -> str:
    strength = min(float(abs(value) / scale), 1.0) * 0.75 + 0.08 if value else 0.0
    colour = POS if value > 0 else NEG
    shown = _short(value)
    return (
        f'<g data-{kind}="{name}" data-pct="{_short(value, "0.0001")}">'
        f'<rect x="{x + 1}" y="{y + 1}" width="{w - 2}" height="24" fill="{colour}" '
        f'fill-opacity="{strength:.2f}" stroke="{GRID}"/>'
        f'<text x="{x + w / 2}" y="{y + 17}" text-anchor="middle">{shown}</text>'
        f"<title>{name}: {_short(value, '0.0001')} % of the capital</title></g>"
    )


LABEL_CHARS = 44  # what fits left of the bars; the whole label is the tooltip


def bars_svg(rows: Sequence[tuple[str, int]], kind: str) -> str:
    """Horizontal bars: a label and a count per row."""
    if not rows:
        return _svg(kind, WIDTH, 24, [f'<text x="4" y="16" fill="{MUTED}">none</text>'], kind)
    top = max(n for _, n in rows) or 1
    label_w, row_h = 280, 22
    body = []
    for i, (label, n) in enumerate(rows):
        y = i * row_h
        length = (WIDTH - label_w - 50) * n / top
        shown = label if len(label) <= LABEL_CHARS else f"{label[: LABEL_CHARS - 1]}…"
        body.append(
            f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end">{escape(shown)}'
            f"<title>{escape(label)}</title></text>"
            f'<rect x="{label_w}" y="{y + 3}" width="{max(length, 1):.1f}" height="{row_h - 6}" '
            f'fill="{INK}"/>'
            f'<text x="{label_w + length + 4:.1f}" y="{y + 15}">{n}</text>'
        )
    return _svg(kind, WIDTH, row_h * len(rows) + 4, body, kind.replace("_", " "))


def funnel_html(funnel: Funnel, since_ms: int | None) -> list[str]:
    chat = str(funnel.leading_chat_id) if funnel.leading_chat_id is not None else "not known"
    since = f", received since {_day(since_ms)}" if since_ms is not None else ""
    steps = [
        ("received", funnel.received),
        ("parsed as leading market", funnel.parsed),
        ("monitored", funnel.monitored),
        ("entered", funnel.entered),
        ("closed", sum(funnel.closed.values())),
    ]
    return [
        "<section><h2>Signal funnel</h2>",
        f'<p class="note">Messages of the leading channel ({escape(chat)}{since}), each followed to '
        "what became of it; every line is the sum of the ones it splits into (definitions: "
        "fsm/ops/html_report.py).</p>",
        bars_svg(steps, "funnel"),
        '<ul class="funnel">',
        *(f"<li>{escape(line)}</li>" for line in funnel.lines()),
        "</ul></section>",
    ]


def trades_html(
    trades: Sequence[Trade], fills: dict[int, list[Fill]], marks: dict[int, list[tuple[int, Decimal]]]
) -> list[str]:
    out = [
        "<section><h2>Trades</h2>",
        '<p class="note">Each small chart shows the fills of one trade (sell = entry, red; buy = exit, '
        "green) at their prices and times, the entry and exit averages dashed. The grey line is the "
        "mark price where the journal still holds it (the daemon keeps about a week); a chart marked "
        "<b>fills only</b> has no market data: it shows the fills, not the market's path between "
        "them.</p>",
        '<div class="trades">',
    ]
    for trade in trades:
        out.append(
            f'<div class="trade"><b>{escape(trade.symbol)}</b> {escape(_day(trade.opened_ms))} '
            f"&middot; {escape(trade.close_reason or trade.status)}"
            + ("" if marks.get(id(trade)) else ' &middot; <i class="note">fills only</i>')
        )
        out.append(trade_svg(trade, fills.get(id(trade), []), marks.get(id(trade), [])))
        out.append("</div>")
    out.append("</div>")
    head = (
        "Opened (UTC)",
        "Closed (UTC)",
        "Symbol",
        "Legs",
        "Entry",
        "Exit",
        "Qty",
        "PnL",
        "Fees",
        "Net",
        "Why",
    )
    numeric = {"Entry", "Exit", "Qty", "PnL", "Fees", "Net"}
    out.append(
        "<table><thead><tr>"
        + "".join(f'<th class="num">{h}</th>' if h in numeric else f"<th>{h}</th>" for h in head)
        + "</tr></thead><tbody>"
    )
    for trade in trades:
        row = trade.as_dict()
        net = str(row["net"])
        cells = [
            (str(row["opened"]), ""),
            (str(row["closed"] or "open"), ""),
            (str(row["symbol"]), ""),
            ("+".join(row["legs"]), ""),
            (str(row["entry_avg"] or "—"), "num"),
            (str(row["exit_avg"] or "—"), "num"),
            (str(row["quantity"]), "num"),
            (str(row["realized_pnl"]), "num"),
            (str(row["fees"]), "num"),
            (net, "num " + ("neg" if net.startswith("-") else "pos")),
            (str(row["close_reason"] or "open"), ""),
        ]
        out.append(
            "<tr>"
            + "".join(
                f'<td class="{cls}">{escape(text)}</td>' if cls else f"<td>{escape(text)}</td>"
                for text, cls in cells
            )
            + "</tr>"
        )
    out.append("</tbody></table></section>")
    return out


def trade_svg(trade: Trade, fills: Sequence[Fill], marks: Sequence[tuple[int, Decimal]] = ()) -> str:
    """One trade's fills: price against time, entry fills as red down-triangles, exits as green
    up-triangles, the averages dashed, the mark price (when known) as a grey line."""
    width, height, left, right, top, bottom = 250, 110, 52, 8, 8, 18
    if not fills:
        return _svg(
            "trade", width, 30, [f'<text x="4" y="18" fill="{MUTED}">fills not found</text>'], "no fills"
        )
    times = [f.now_ms for f in fills] + [at for at, _ in marks]
    every = [f.price for f in fills] + [p for _, p in marks]
    lo, hi = float(min(every)), float(max(every))
    pad = (hi - lo) * 0.15 or abs(hi) * 0.002 or 1.0
    t0, t1 = min(times), max([*times, trade.closed_ms or 0])
    high, low = _price(max(every)), _price(min(every))
    start, end = (escape(ledger.iso_utc(t)[5:16].replace("T", " ")) for t in (t0, t1))
    inset = 8  # the markers stay inside the frame
    x = (
        _scale(t0, t1, left + inset, width - right - inset)
        if t1 > t0
        else (lambda _v: (left + width - right) / 2)
    )
    y = _scale(lo - pad, hi + pad, height - bottom, top)
    body = [
        f'<line x1="{left}" x2="{width - right}" y1="{y(hi):.1f}" y2="{y(hi):.1f}" stroke="{GRID}"/>',
        f'<line x1="{left}" x2="{width - right}" y1="{y(lo):.1f}" y2="{y(lo):.1f}" stroke="{GRID}"/>',
        f'<text x="{left - 3}" y="{y(hi) + 4:.1f}" text-anchor="end" fill="{MUTED}">{high}</text>',
        f'<text x="{left - 3}" y="{y(lo) + 4:.1f}" text-anchor="end" fill="{MUTED}">{low}</text>',
        f'<text x="{left}" y="{height - 4}" fill="{MUTED}">{start}</text>',
        f'<text x="{width - right}" y="{height - 4}" text-anchor="end" fill="{MUTED}">{end}</text>',
    ]
    if marks:
        line = " ".join(f"{x(at):.1f},{y(p):.1f}" for at, p in marks)
        body.append(
            f'<polyline points="{line}" fill="none" stroke="{MUTED}" stroke-width="1" '
            f'data-marks="{len(marks)}"/>'
        )
    for average, colour in ((trade.entry_avg, NEG), (trade.exit_avg, POS)):
        if average is not None:
            body.append(
                f'<line x1="{left}" x2="{width - right}" y1="{y(average):.1f}" y2="{y(average):.1f}" '
                f'stroke="{colour}" stroke-dasharray="3 3" stroke-opacity="0.7"/>'
            )
    for fill in fills:
        cx, cy = x(fill.now_ms), y(fill.price)
        entry = (fill.side == ENTRY_SIDE) != (fill.position_side == "LONG")
        tip = -5 if not entry else 5
        body.append(
            f'<path d="M{cx - 5:.1f},{cy - tip:.1f}L{cx + 5:.1f},{cy - tip:.1f}L{cx:.1f},{cy + tip:.1f}Z" '
            f'fill="{NEG if entry else POS}" data-fill="{escape(fill.leg)}"><title>'
            f"{escape(fill.leg)} {escape(fill.side)} {escape(_price(fill.qty))} @ "
            f"{escape(_price(fill.price))}, "
            f"{escape(ledger.iso_utc(fill.now_ms))}</title></path>"
        )
    label = f"{trade.symbol} fills"
    return _svg("trade", width, height, body, label)


def _price(value: Decimal) -> str:
    return format(value.normalize(), "f") if value == value.to_integral() else format(value, "f")
