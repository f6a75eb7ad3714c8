"""The status board: the daemon's BoardView rendered with rich, read-only on its SQLite database.

The daemon writes the BoardView JSON (``fsm.runtime.view``) into ``status["board"]`` every second
and appends transitions and alerts to their tables (RUNTIME.md). The board opens the file with
``mode=ro`` and never writes; every failure to read (no file, a locked or foreign file, an older
schema, no status row yet) becomes a "no daemon" panel with the reason, never an exception.

One frame is one read: the view, the transitions, the alerts and the book (realised PnL, the last
trades and skipped signals, ``fsm.runtime.ledger``) come from one read transaction, and rows the
daemon recorded after the view it last wrote are left for the next frame, so a frame never shows a
state beside a transition that already left it.

``render_board`` is pure: the same inputs give the same text, which is what the tests compare. It fits
the terminal: when the full board is taller than the console, a compact board of one line per item
keeps every section and gives the transitions the lines that are left (80x24 shows them).
"""

from __future__ import annotations

import copy
import io
import json
import logging
import sqlite3
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from fsm import commands as cmd
from fsm.engine import Engine
from fsm.runtime import ledger
from fsm.runtime.liveness import liveness
from fsm.runtime.view import board_view

log = logging.getLogger("shortfsm.ops.board")

DEFAULT_DB = Path("var/shortfsm.db")
SVG_PATH = Path(__file__).resolve().parents[2] / "specs" / "img" / "board.svg"
TRANSITION_ROWS = 8
# An entry's setup moves twice within a second on every entry: the log keeps it, the board does not.
QUIET_MACHINE = "setup"
ALERT_ROWS = 5
TRADE_ROWS = 5  # the book's last trades (status --json shows as many)
SKIPPED_ROWS = 10  # the book's last skipped signals (the board shows the first five)
COMPACT_MIN_TRANSITIONS = 3
NOT_UPDATING_AFTER_S = 5.0
ORDER_ID_MIN_WIDTH = 90
DASH = "—"

# (lock name, label, its normal state)
LOCKS: tuple[tuple[str, str, str], ...] = (
    ("entry_lock", "entry", "GLOBAL_IDLE"),
    ("safety_lock", "safety", "PRICE_OK"),
    ("recovery_lock", "recovery", "READY"),
    ("exit_cancel_lock", "exit-cancel", "CLEAR"),
    ("rate_limit", "rate-limit", "NORMAL"),
    ("auth", "auth", "AUTH_OK"),
)
# Lock states that are alerts in their own right: (lock, state, severity, text).
CONDITIONS: tuple[tuple[str, str, str, str], ...] = (
    (
        "exit_cancel_lock",
        "CANCEL_FAILED",
        "critical",
        "EXIT CANCEL FAILED: an exit order could not be cancelled; new orders blocked, re-querying",
    ),
    ("auth", "AUTH_LOCKED", "critical", "AUTH LOCK: the API key was refused; no new entries"),
    ("safety_lock", "PRICE_STALE", "critical", "SAFETY LOCK: no fresh mark price; no new entries"),
    ("rate_limit", "PROTECT", "warning", "RATE-LIMIT MODE: monitoring goes on, no new entries"),
    ("recovery_lock", "RECOVERING", "warning", "RECOVERING: reconciling with the exchange"),
)
SEVERITY_STYLE = {"critical": "bold red", "warning": "bold yellow", "info": "cyan"}
# A lock away from its normal state: red when it blocks trading, yellow when it is routine.
_LOCK_STYLE = {"entry_lock": "yellow"}


# =============================================================================================
# Reading the daemon's database (read-only)
# =============================================================================================


@dataclass(frozen=True, slots=True, kw_only=True)
class BoardState:
    """What the board read: the view (None without a daemon), recent rows, and why a view is missing."""

    view: dict[str, Any] | None
    transitions: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    problem: str | None = None


def read_board_state(
    db_path: str | Path, *, timeout_s: float = 0.25
) -> tuple[dict[str, Any] | None, list[dict[str, Any]], list[dict[str, Any]]]:
    """(view or None, last transitions newest first, last alerts newest first); never raises."""
    state = load_board_state(db_path, timeout_s=timeout_s)
    return state.view, state.transitions, state.alerts


def load_board_state(db_path: str | Path, *, timeout_s: float = 0.25, live: bool = True) -> BoardState:
    """Like ``read_board_state`` with the reason when there is no view. ``live`` False (no daemon
    alive): its last rows are shown even if they came after its last view, which no daemon will
    rewrite."""
    path = Path(db_path)
    if not path.is_file():
        return BoardState(view=None, problem=f"no database at {db_path}")
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=timeout_s)
    except sqlite3.Error as exc:
        log.warning("board: cannot open %s: %s", path, exc)
        return BoardState(view=None, problem=f"cannot open {db_path}: {exc}")
    try:
        conn.execute("PRAGMA query_only = 1")
        return _read(conn, str(db_path), live)
    except sqlite3.Error as exc:  # not a database, locked, corrupt
        log.warning("board: cannot read %s: %s", path, exc)
        return BoardState(view=None, problem=_explain(exc, str(db_path)))
    finally:
        conn.close()


def _read(conn: sqlite3.Connection, name: str, live: bool) -> BoardState:
    conn.execute("BEGIN")  # one snapshot of the database for the whole frame (WAL readers never block)
    try:
        return _read_frame(conn, name, live)
    finally:
        conn.rollback()


def _read_frame(conn: sqlite3.Connection, name: str, live: bool) -> BoardState:
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    row = (
        conn.execute("SELECT value FROM status WHERE key = 'board'").fetchone()
        if "status" in tables
        else None
    )
    view: Any = None
    if row is not None:
        try:
            view = json.loads(row[0])
        except (TypeError, ValueError) as exc:
            log.warning("board: unreadable status JSON: %s", exc)
    # Rows recorded after the view the daemon last wrote belong to the next frame.
    until = view.get("now_ms") if isinstance(view, dict) and live else None
    upto = f"WHERE now_ms <= {until} " if isinstance(until, int) and not isinstance(until, bool) else ""
    quiet = f"{'AND' if upto else 'WHERE'} machine != '{QUIET_MACHINE}' "
    transitions = _rows(
        conn,
        tables,
        "transitions",
        "SELECT now_ms, machine, symbol, source, dest, trigger, reason FROM transitions "
        f"{upto}{quiet}ORDER BY id DESC LIMIT {TRANSITION_ROWS}",
    )
    alerts = _rows(
        conn,
        tables,
        "alerts",
        f"SELECT now_ms, kind, severity, symbol, text FROM alerts {upto}ORDER BY id DESC LIMIT {ALERT_ROWS}",
    )
    if "status" not in tables:
        version = _schema_version(conn, tables)
        if not tables:
            problem = f"{name} is empty: the daemon has not created its tables yet"
        else:
            problem = (
                f"{name} has no status table (schema version {version or 'unknown'}): it was written by "
                "an older shortfsm; start the daemon once to migrate it"
            )
        return BoardState(view=None, transitions=transitions, alerts=alerts, problem=problem)
    if row is None:
        return BoardState(
            view=None,
            transitions=transitions,
            alerts=alerts,
            problem="no board status yet: the daemon is starting or has never run on this database",
        )
    if not isinstance(view, dict):
        return BoardState(
            view=None, transitions=transitions, alerts=alerts, problem="the board status is unreadable"
        )
    frame = until if isinstance(until, int) and not isinstance(until, bool) else None
    stamp = view.get("now_ms")  # "today" is the daemon's day (its clock runs fast in the demo)
    now = stamp if isinstance(stamp, int) and not isinstance(stamp, bool) else int(time.time() * 1000)
    try:
        book = read_book(conn, now, until=frame)
    except (sqlite3.OperationalError, ledger.LedgerError) as exc:  # an older layout, a garbled row: no book
        log.warning("board: cannot read the book: %s", exc)
        return BoardState(view=view, transitions=transitions, alerts=alerts)
    return BoardState(view={**view, "book": book}, transitions=transitions, alerts=alerts)


def read_book(conn: sqlite3.Connection, now_ms: int, *, until: int | None = None) -> dict[str, Any]:
    """Realised PnL (today is the UTC day of ``now_ms``), the last trades and the last skipped
    signals, newest first, as JSON-ready values; rows recorded after ``until`` (ms) are left out."""
    book = ledger.read_ledger(conn, until_ms=until)
    recent = sorted(book.trades, key=lambda t: (t.closed_ms or t.opened_ms, t.opened_ms), reverse=True)
    return {
        **book.totals(now_ms).as_dict(),
        "trades": [t.as_dict() for t in recent[:TRADE_ROWS]],
        "skipped": ledger.skipped_signals(conn, SKIPPED_ROWS, until_ms=until),
    }


def _rows(conn: sqlite3.Connection, tables: set[str], table: str, query: str) -> list[dict[str, Any]]:
    if table not in tables:
        return []
    try:
        cursor = conn.execute(query)
    except sqlite3.OperationalError as exc:  # an older layout of the table
        log.warning("board: cannot read %s: %s", table, exc)
        return []
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _schema_version(conn: sqlite3.Connection, tables: set[str]) -> str | None:
    if "meta" not in tables:
        return None
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    except sqlite3.OperationalError:
        return None
    return str(row[0]) if row else None


def _explain(exc: sqlite3.Error, name: str) -> str:
    text = str(exc)
    if "locked" in text or "busy" in text:
        return f"{name} is locked by another process; retrying"
    if "not a database" in text or "malformed" in text or "encrypted" in text:
        return f"{name} is not a shortfsm database ({text})"
    return f"cannot read {name}: {text}"


# =============================================================================================
# Rendering (pure)
# =============================================================================================


def render_board(
    view: dict[str, Any] | None,
    transitions: list[dict[str, Any]],
    alerts: list[dict[str, Any]],
    *,
    problem: str | None = None,
    height: int | None = None,
) -> RenderableType:
    """The whole board; ``view`` None gives the "no daemon" panel. ``problem`` explains it (or, with
    a view, is shown as a warning). Tolerates any shape of input. The board fits ``height`` lines
    (default: the console's height; the compact board when the full one is taller)."""
    transitions = [t for t in transitions if isinstance(t, dict)] if isinstance(transitions, list) else []
    alerts = [a for a in alerts if isinstance(a, dict)] if isinstance(alerts, list) else []
    if not isinstance(view, dict):
        parts: list[RenderableType] = [_no_daemon(problem)]
        if alerts:
            parts.append(_alerts_panel({}, alerts, None))
        if transitions:
            parts.append(_transitions_panel(transitions))
        return Group(*parts)
    panels: list[RenderableType] = [
        _header(view),
        _alerts_panel(view, alerts, problem),
        _monitoring_panel(view),
        _position_panel(view),
    ]
    book = _book_panel(view)
    if book is not None:
        panels.append(book)
    panels.append(_transitions_panel(transitions))
    return _Fitted(Group(*panels), view, transitions, alerts, problem, height)


class _Fitted:
    """The full board when it fits the height, else the compact board (one line per item)."""

    def __init__(
        self,
        full: Group,
        view: dict[str, Any],
        transitions: list[dict[str, Any]],
        alerts: list[dict[str, Any]],
        problem: str | None,
        height: int | None,
    ) -> None:
        self.full = full
        self.parts = (view, transitions, alerts, problem)
        self.height = height

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        limit = self.height if self.height is not None else options.max_height
        if limit is None or len(console.render_lines(self.full, options, pad=False)) <= limit:
            yield self.full
            return
        view, transitions, alerts, problem = self.parts
        yield _compact(view, transitions, alerts, problem, max(limit, 1))


def _line(*parts: str | tuple[str, str] | Text) -> Text:
    text = Text.assemble(*parts)
    text.no_wrap = True
    text.overflow = "ellipsis"
    return text


def _compact(
    view: dict[str, Any],
    transitions: list[dict[str, Any]],
    alerts: list[dict[str, Any]],
    problem: str | None,
    limit: int,
) -> Group:
    """Every section of the board in as few lines as it takes; the transitions get what is left."""
    paused = view.get("paused") is True
    run = Text("PAUSED", style="bold yellow") if paused else Text("running", style="green")
    if view.get("daemon") in ("stopped", "hung"):
        run = Text(str(view.get("daemon")).upper(), style="bold red")
    balance = _dict(view.get("balance"))
    last = _dict(view.get("last_event"))
    header = [
        _line(
            (f"shortfsm · {_s(view.get('profile')).upper()}", "bold blue"),
            "  ",
            _clock(_int(view.get("now_ms")), date=True),
            "  ",
            run,
            "  price ",
            _price_source(_dict(view.get("price_source"))),
        ),
        _line(
            ("balance ", "dim"),
            (_s(balance.get("wallet"), "unknown"), "bold"),
            " wallet · ",
            (_s(balance.get("available"), "unknown"), "bold"),
            f" available USDT · mode {_s(view.get('position_mode'))}",
        ),
        _line(
            ("streams ", "dim"),
            _streams(_dict(view.get("streams"))),
            ("  last event ", "dim"),
            f"{_s(last.get('type'))} {_clock(_int(last.get('now_ms')))}" if last else DASH,
        ),
        _line(("locks ", "dim"), _abnormal_locks(_dict(view.get("locks")))),
    ]
    conditions = [
        _line(("● ", SEVERITY_STYLE[sev]), (text, SEVERITY_STYLE[sev]))
        for sev, text in _conditions(view, problem)
    ]
    recent = [
        _line(
            (f"{_clock(_int(a.get('now_ms')))} ", "dim"),
            (_s(a.get("severity")).upper(), SEVERITY_STYLE.get(_s(a.get("severity")), "")),
            " ",
            (_s(a.get("kind")), "bold"),
            f"  {_s(a.get('text'))}",
        )
        for a in alerts[:ALERT_ROWS]
    ]
    book = _dict(view.get("book"))
    money = [_line(("PnL ", "dim"), _pnl_text(book))] if book else []
    cooldowns = [_line(("cooldowns ", "dim"), _cooldowns_text(view))] if _dicts(view.get("cooldowns")) else []
    position = _dict(view.get("position"))
    held: list[Text] = []
    orders: list[Text] = []
    if position:
        triggers = _dict(position.get("next_triggers"))
        held = [
            _line(
                (f"{_s(position.get('symbol'))} {_s(position.get('phase'))}", "bold magenta"),
                f"  avg {_s(position.get('average'))} · qty {_s(position.get('quantity'))}"
                f" · mark {_s(position.get('mark'))} · ROI ",
                _roi(position.get("roi_pct")),
            ),
            _line(
                "  next: "
                + " · ".join(f"{leg} {_s(triggers.get(leg))}" for leg in ("tp", "add", "breakeven", "mdd"))
            ),
        ]
        countdown = _countdown_text(position.get("countdown"))
        if countdown is not None:
            held.append(_line("  ", countdown))
        orders = [
            _line(
                f"  {_s(o.get('leg'))} {_s(o.get('type'))} {_s(o.get('side'))} {_s(o.get('price'))} × "
                f"{_s(o.get('quantity'))} filled {_s(o.get('filled'))} {_s(o.get('status'))}"
            )
            for o in _dicts(position.get("orders"))
        ]
    else:
        held = [_line(("flat: no position", "dim"))]
    monitoring = [
        _line(
            ("watch ", "dim"),
            (_s(r.get("symbol")), "bold"),
            f" {_s(r.get('stage'))} order at {_s(r.get('planned_price'))}"
            f" trigger {_s(r.get('trigger_price'))} mark {_s(r.get('mark'))}",
            " to trigger ",
            _distance(r.get("distance_pct")),
        )
        for r in _dicts(view.get("monitoring"))
    ]
    trades = [
        _line(("trade ", "dim"), *_trade_cells(t))
        for t in _dicts(book.get("trades"))[:COMPACT_MIN_TRANSITIONS]
    ]
    skipped = [
        _line(("skip  ", "dim"), *_skipped_cells(k))
        for k in _dicts(book.get("skipped"))[:COMPACT_MIN_TRANSITIONS]
    ]
    sections = [header, conditions, recent, money, cooldowns, held, orders, monitoring, trades, skipped]
    # What gives way first when the height is short: (section, lines it keeps at this pass).
    for section, floor in (
        (skipped, 1),
        (trades, 1),
        (recent, 1),
        (monitoring, 1),
        (orders, 1),
        (skipped, 0),
        (trades, 0),
        (recent, 0),
        (cooldowns, 0),
        (monitoring, 0),
        (orders, 0),
    ):
        while len(section) > floor and sum(map(len, sections)) + 1 + COMPACT_MIN_TRANSITIONS > limit:
            section.pop()
    rows = max(COMPACT_MIN_TRANSITIONS, limit - sum(map(len, sections)) - 1)
    changes = [
        _line(
            (f"{_clock(_int(t.get('now_ms')))} ", "dim"),
            (_transition_who(t), "bold"),
            f" {_s(t.get('source'))}→{_s(t.get('dest'))} ",
            (_s(t.get("reason"), default=""), "dim"),
        )
        for t in transitions[: min(rows, TRANSITION_ROWS)]
    ]
    title = _line(("Last transitions", "bold"), ("" if changes else "  none recorded", "dim"))
    return Group(*(line for section in sections for line in section), title, *changes)


def _abnormal_locks(locks: dict[str, Any]) -> Text:
    text = Text()
    for name, label, normal in LOCKS:
        state = _s(locks.get(name))
        if state != normal:
            if text:
                text.append(" · ")
            text.append(f"{label} ")
            text.append(state, style=_LOCK_STYLE.get(name, "bold red"))
    return text if text else Text("all normal", style="green")


def _transition_who(row: dict[str, Any]) -> str:
    symbol = row.get("symbol")
    return cmd.who_moved(_s(row.get("machine")), symbol if isinstance(symbol, str) and symbol else None)


def _signed(value: Any) -> Text:
    number = _dec(value)
    if number is None:
        return Text(DASH)
    sign = "+" if number > 0 else ""
    return Text(f"{sign}{value}", style="green" if number > 0 else "red" if number < 0 else "")


def _pnl_text(book: dict[str, Any]) -> Text:
    today = _dict(book.get("today"))
    total = _dict(book.get("total"))
    return Text.assemble(
        "today ",
        _signed(today.get("realized_pnl")),
        " · total ",
        _signed(total.get("realized_pnl")),
        f" · fees {_s(total.get('fees'))} · net ",
        _signed(total.get("net")),
        " USDT",
    )


def _duration(ms: Any) -> str:
    seconds = max(0, _int(ms)) // 1000
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def _cooldowns_text(view: dict[str, Any]) -> Text:
    rows = _dicts(view.get("cooldowns"))
    if not rows:
        return Text("none", style="dim")
    return Text(" · ".join(f"{_s(r.get('symbol'))} {_duration(r.get('remaining_ms'))}" for r in rows))


def _countdown_text(value: Any) -> Text | None:
    countdown = _dict(value)
    if not countdown:
        return None
    left = _int(countdown.get("remaining_ms")) / 1000
    return Text(
        f"5 s rule: {_s(countdown.get('leg'))} part-filled {_s(countdown.get('filled'))} of "
        f"{_s(countdown.get('quantity'))}, the rest closes at market in {left:.1f} s",
        style="bold yellow",
    )


def _iso_clock(value: Any) -> str:
    """``HH:MM:SS`` of a ledger ISO time (``2026-12-04T05:26:53Z``)."""
    text = _s(value)
    return text[11:19] if len(text) >= 19 else text


def _trade_cells(trade: dict[str, Any]) -> list[str | tuple[str, str] | Text]:
    closed = trade.get("closed")
    when = _iso_clock(closed) if closed else "open"
    return [
        (f"{when} ", "dim"),
        (_s(trade.get("symbol")), "bold"),
        " ",
        _signed(trade.get("net")),
        f" {_s(trade.get('close_reason'), 'open')}",
    ]


def _skipped_cells(row: dict[str, Any]) -> list[str | tuple[str, str] | Text]:
    return [
        (f"{_clock(_int(row.get('now_ms')))} ", "dim"),
        (_s(row.get("symbol"), "?"), "bold"),
        f" {_s(row.get('kind'))}: {_s(row.get('reason'))}",
    ]


def _no_daemon(problem: str | None) -> Panel:
    body = Text()
    body.append("no daemon\n", style="bold red")
    body.append(problem or "no board status to show")
    body.append("\nStart one with `shortfsm run` (or `shortfsm demo`); this board only reads its database.")
    return Panel(body, title="shortfsm status", title_align="left", border_style="red")


def _header(view: dict[str, Any]) -> Panel:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="dim", no_wrap=True)
    grid.add_column()
    now = _int(view.get("now_ms"))
    paused = view.get("paused") is True
    run = Text("PAUSED", style="bold yellow") if paused else Text("running", style="green")
    daemon = view.get("daemon")  # set by ``shortfsm status`` when no daemon is alive on the database
    if daemon in ("stopped", "hung"):
        run = Text(str(daemon).upper(), style="bold red")
    grid.add_row("time", Text.assemble(_clock(now, date=True), "   ", run))
    grid.add_row("price", _price_source(_dict(view.get("price_source"))))
    balance = _dict(view.get("balance"))
    grid.add_row(
        "balance",
        Text.assemble(
            (_s(balance.get("wallet"), "unknown"), "bold"),
            " wallet · ",
            (_s(balance.get("available"), "unknown"), "bold"),
            " available USDT · mode ",
            (_s(view.get("position_mode")), "bold"),
        ),
    )
    grid.add_row("streams", _streams(_dict(view.get("streams"))))
    last = _dict(view.get("last_event"))
    grid.add_row(
        "last event",
        f"{_s(last.get('type'))} at {_clock(_int(last.get('now_ms')))}" if last else DASH,
    )
    grid.add_row("locks", _locks(_dict(view.get("locks"))))
    profile = _s(view.get("profile")).upper()
    return Panel(grid, title=f"shortfsm · {profile}", title_align="left", border_style="blue")


def _price_source(source: dict[str, Any]) -> Text:
    name = _s(source.get("source"))
    age = source.get("age_ms")
    age_text = f"{_int(age) / 1000:.1f} s" if isinstance(age, int) else "no price yet"
    if source.get("stale") is True:
        return Text.assemble(("STALE", "bold red"), f" ({name}) · age {age_text}")
    return Text.assemble((name, "bold green"), f" · age {age_text}")


def _streams(streams: dict[str, Any]) -> Text:
    text = Text()
    for i, name in enumerate(("market", "user", "telegram")):
        value = _s(streams.get(name))
        if i:
            text.append(" · ")
        text.append(f"{name} ")
        text.append(value, style="green" if value in ("up", "replay") else "bold red")
    return text


def _locks(locks: dict[str, Any]) -> Table:
    grid = Table.grid(padding=(0, 2))
    for _ in range(3):
        grid.add_column(no_wrap=True)
    cells: list[Text] = []
    for name, label, normal in LOCKS:
        state = _s(locks.get(name))
        style = "green" if state == normal else _LOCK_STYLE.get(name, "bold red")
        cells.append(Text.assemble(f"{label} ", (state, style)))
    grid.add_row(*cells[:3])
    grid.add_row(*cells[3:])
    return grid


def _conditions(view: dict[str, Any], notice: str | None) -> list[tuple[str, str]]:
    """(severity, text) of the standing conditions: locks away from normal, pause, a stale price."""
    locks = _dict(view.get("locks"))
    conditions: list[tuple[str, str]] = []
    for lock, state, severity, text in CONDITIONS:
        if locks.get(lock) == state:
            if lock == "safety_lock":  # say what it did: there may be nothing to close
                held = _dict(view.get("position"))
                text += f", closing {held.get('symbol')} at market" if held else ", no position to close"
            conditions.append((severity, text))
    if view.get("paused") is True:
        conditions.append(("warning", "PAUSED by the operator: no new signals"))
    source = _dict(view.get("price_source"))
    if source.get("stale") is True and locks.get("safety_lock") != "PRICE_STALE":
        conditions.append(("warning", "PRICE STALE: the mark price is old"))
    if notice:
        conditions.append(("warning", notice))
    return conditions


def _alerts_panel(view: dict[str, Any], alerts: list[dict[str, Any]], notice: str | None) -> Panel:
    conditions = _conditions(view, notice)
    worst = ""
    parts: list[RenderableType] = []
    if conditions:
        grid = Table.grid(padding=(0, 1))
        grid.add_column(no_wrap=True)
        grid.add_column(ratio=1)
        for severity, text in conditions:
            grid.add_row(
                Text("●", style=SEVERITY_STYLE[severity]), Text(text, style=SEVERITY_STYLE[severity])
            )
            worst = _worse(worst, severity)
        parts.append(grid)
    recent = alerts[:ALERT_ROWS]
    if recent:
        grid = Table.grid(padding=(0, 1))
        grid.add_column(style="dim", no_wrap=True)
        grid.add_column(no_wrap=True)
        grid.add_column(ratio=1)
        for alert in recent:
            severity = _s(alert.get("severity"))
            text = _s(alert.get("text"))
            symbol = alert.get("symbol")
            if isinstance(symbol, str) and symbol and not text.startswith(symbol):
                text = f"{symbol}: {text}"
            grid.add_row(
                _clock(_int(alert.get("now_ms"))),
                Text(severity.upper(), style=SEVERITY_STYLE.get(severity, "")),
                Text.assemble((_s(alert.get("kind")), "bold"), "  ", text),
            )
        parts.append(grid)
    if not parts:
        parts.append(Text("none", style="dim"))
    border = {"critical": "red", "warning": "yellow"}.get(worst, "dim")
    return Panel(Group(*parts), title="Alerts", title_align="left", border_style=border)


def _worse(current: str, severity: str) -> str:
    order = {"": 0, "info": 1, "warning": 2, "critical": 3}
    return severity if order.get(severity, 0) > order.get(current, 0) else current


def _monitoring_panel(view: dict[str, Any]) -> Panel:
    rows = _dicts(view.get("monitoring"))
    title = "Monitoring (W45)"
    if not rows:
        return Panel(Text("no symbol monitored", style="dim"), title=title, title_align="left")
    table = _table()
    table.add_column("Symbol", style="bold", no_wrap=True)
    table.add_column("Mode", no_wrap=True)
    table.add_column("Stage", no_wrap=True)
    table.add_column("Order at", justify="right", no_wrap=True)
    table.add_column("Trigger", justify="right", no_wrap=True)
    table.add_column("Mark", justify="right", no_wrap=True)
    table.add_column("To trigger", justify="right", no_wrap=True)
    for row in rows:
        table.add_row(
            _s(row.get("symbol")),
            _s(row.get("mode")),
            _s(row.get("stage")),
            _s(row.get("planned_price")),
            _s(row.get("trigger_price")),
            _s(row.get("mark")),
            _distance(row.get("distance_pct")),
        )
    return Panel(table, title=title, title_align="left")


def _distance(value: Any) -> Text:
    number = _dec(value)
    if number is None:
        return Text(DASH)
    if number <= 0:
        return Text("reached", style="bold green")
    return Text(f"{value}%")


def _position_panel(view: dict[str, Any]) -> Panel:
    position = view.get("position")
    if not isinstance(position, dict):
        return Panel(Text("flat: no position", style="dim"), title="Position", title_align="left")
    stats = Table.grid(padding=(0, 3))
    for _ in range(4):
        stats.add_column(no_wrap=True)
    stats.add_row(
        _pair("average", _s(position.get("average"))),
        _pair("quantity", _s(position.get("quantity"))),
        _pair("mark", _s(position.get("mark"))),
        Text.assemble(("ROI ", "dim"), _roi(position.get("roi_pct"))),
    )
    triggers = _dict(position.get("next_triggers"))
    stats.add_row(
        _pair("tp", _s(triggers.get("tp"))),
        _pair("add", _s(triggers.get("add"))),
        _pair("breakeven", _s(triggers.get("breakeven"))),
        _pair("mdd", _s(triggers.get("mdd"))),
    )
    parts: list[RenderableType] = [stats]
    countdown = _countdown_text(position.get("countdown"))
    if countdown is not None:
        parts.append(countdown)
    orders = _dicts(position.get("orders"))
    parts.append(_Orders(orders) if orders else Text("no working order", style="dim"))
    title = f"Position {_s(position.get('symbol'))} · {_s(position.get('phase'))}"
    return Panel(Group(*parts), title=title, title_align="left", border_style="magenta")


def _book_panel(view: dict[str, Any]) -> Panel | None:
    """Realised PnL, cooldowns, the last trades and the last skipped signals (the view's ``book``
    is read from the database with the frame)."""
    book = view.get("book")
    if not isinstance(book, dict):
        return None
    today = _dict(book.get("today"))
    total = _dict(book.get("total"))
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="dim", no_wrap=True)
    grid.add_column()
    for label, figures in ((f"today {_s(book.get('day'))}", today), ("total", total)):
        grid.add_row(
            label,
            Text.assemble(
                "realised ",
                _signed(figures.get("realized_pnl")),
                f" · fees {_s(figures.get('fees'))} · net ",
                _signed(figures.get("net")),
                " USDT",
            ),
        )
    grid.add_row("cooldowns", _cooldowns_text(view))
    parts: list[RenderableType] = [grid]
    trades = _dicts(book.get("trades"))
    if trades:
        table = _table()
        table.add_column("Closed", style="dim", no_wrap=True)
        table.add_column("Symbol", style="bold", no_wrap=True)
        table.add_column("Legs", no_wrap=True)
        table.add_column("Net", justify="right", no_wrap=True)
        table.add_column("Why", overflow="fold", ratio=1)
        for trade in trades:
            closed = trade.get("closed")
            legs = trade.get("legs")
            table.add_row(
                _iso_clock(closed) if closed else "open",
                _s(trade.get("symbol")),
                ",".join(str(leg) for leg in legs) if isinstance(legs, list) else DASH,
                _signed(trade.get("net")),
                _s(trade.get("close_reason"), "open"),
            )
        parts.append(table)
    skipped = _dicts(book.get("skipped"))[:ALERT_ROWS]
    if skipped:
        table = _table()
        table.add_column("Skipped", style="dim", no_wrap=True)
        table.add_column("Symbol", style="bold", no_wrap=True)
        table.add_column("Why", overflow="fold", ratio=1)
        for row in skipped:
            table.add_row(
                _clock(_int(row.get("now_ms"))),
                _s(row.get("symbol"), "?"),
                f"{_s(row.get('kind'))}: {_s(row.get('reason'))}",
            )
        parts.append(table)
    return Panel(Group(*parts), title="Book", title_align="left")


class _Orders:
    """The working orders; the client id column only where it fits (wider than 80 columns)."""

    def __init__(self, orders: list[dict[str, Any]]) -> None:
        self.orders = orders

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        with_id = options.max_width >= ORDER_ID_MIN_WIDTH
        table = _table()
        table.add_column("Leg", style="bold", no_wrap=True)
        table.add_column("Type", no_wrap=True)
        table.add_column("Side", no_wrap=True)
        table.add_column("Price", justify="right", no_wrap=True)
        table.add_column("Qty", justify="right", no_wrap=True)
        table.add_column("Filled", justify="right", no_wrap=True)
        table.add_column("Status", no_wrap=True)
        if with_id:
            table.add_column("Client id", no_wrap=True)
        for order in self.orders:
            cells = [
                _s(order.get("leg")),
                _s(order.get("type")),
                _s(order.get("side")),
                _s(order.get("price")),
                _s(order.get("quantity")),
                _s(order.get("filled")),
                _s(order.get("status")),
            ]
            if with_id:
                cells.append(_s(order.get("client_order_id")))
            table.add_row(*cells)
        yield table


def _table() -> Table:
    return Table(box=box.SIMPLE_HEAD, expand=True, show_edge=False, pad_edge=False, collapse_padding=True)


def _pair(label: str, value: str) -> Text:
    return Text.assemble((f"{label} ", "dim"), (value, "bold"))


def _roi(value: Any) -> Text:
    number = _dec(value)
    if number is None:
        return Text(DASH)
    sign = "+" if number > 0 else ""
    return Text(f"{sign}{value}%", style="bold green" if number > 0 else "bold red" if number < 0 else "bold")


def _transitions_panel(transitions: list[dict[str, Any]]) -> Panel:
    title = "Last transitions"
    if not transitions:
        return Panel(Text("none recorded", style="dim"), title=title, title_align="left")
    table = _table()
    table.add_column("Time", style="dim", no_wrap=True)
    table.add_column("Who", style="bold", no_wrap=True)
    table.add_column("Change", no_wrap=True)
    table.add_column("Reason", overflow="fold", ratio=1)
    for row in transitions[:TRANSITION_ROWS]:
        symbol = row.get("symbol")
        who = cmd.who_moved(_s(row.get("machine")), symbol if isinstance(symbol, str) else None)
        table.add_row(
            _clock(_int(row.get("now_ms"))),
            who,
            f"{_s(row.get('source'))}→{_s(row.get('dest'))}",
            _s(row.get("reason"), default=""),
        )
    return Panel(table, title=title, title_align="left")


# -- tolerant accessors -----------------------------------------------------------------------


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _s(value: Any, default: str = DASH) -> str:
    if value is None or value == "":
        return default
    return value if isinstance(value, str) else str(value)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _dec(value: Any) -> Decimal | None:
    if not isinstance(value, str):
        return None
    try:
        number = Decimal(value)
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


def _clock(ms: int, *, date: bool = False) -> str:
    if ms <= 0:
        return DASH
    try:
        moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return DASH
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC" if date else "%H:%M:%S")


# =============================================================================================
# Snapshot and live view
# =============================================================================================


def print_snapshot(db_path: str | Path, console: Console) -> None:
    """Print the board once."""
    state = load_board_state(db_path)
    console.print(render_board(state.view, state.transitions, state.alerts, problem=state.problem))


class Freshness:
    """Notices a daemon that stopped rewriting the board. Its clock may be simulated (demo), so the
    view's ``now_ms`` is compared with itself across refreshes, not with the wall clock."""

    def __init__(self, limit_s: float = NOT_UPDATING_AFTER_S) -> None:
        self.limit_s = limit_s
        self._seen: int | None = None
        self._since = 0.0

    def observe(self, view: dict[str, Any] | None, monotonic_s: float) -> str | None:
        stamp = view.get("now_ms") if isinstance(view, dict) else None
        if not isinstance(stamp, int) or stamp != self._seen:
            self._seen = stamp if isinstance(stamp, int) else None
            self._since = monotonic_s
            return None
        idle = monotonic_s - self._since
        if idle >= self.limit_s:
            return f"the daemon has not updated the board for {int(idle)} s (stopped?)"
        return None


def watch(
    db_path: str | Path,
    refresh_s: float = 1.0,
    stop: Callable[[], bool] | None = None,
    *,
    console: Console | None = None,
) -> None:
    """Redraw the board every ``refresh_s`` seconds until ``stop()`` is true (or Ctrl-C).

    ``Live(auto_refresh=False)`` and updates from this loop: rich's own refresh thread would call
    back into the reader from another thread.
    """
    console = console or Console()
    freshness = Freshness(max(NOT_UPDATING_AFTER_S, 3 * refresh_s))
    with Live(console=console, auto_refresh=False) as live:
        while True:
            started = time.monotonic()
            alive = liveness(db_path)
            state = load_board_state(db_path, live=alive.state not in ("stopped", "hung"))
            problem = state.problem or freshness.observe(state.view, started)
            view = state.view
            if view is not None and alive.state in ("stopped", "hung"):
                view = {**view, "daemon": alive.state}  # never "running" for a dead daemon
                problem = problem or alive.text
            live.update(render_board(view, state.transitions, state.alerts, problem=problem), refresh=True)
            if stop is not None and stop():
                return
            if refresh_s > 0:
                time.sleep(max(0.0, refresh_s - (time.monotonic() - started)))


# =============================================================================================
# The README picture
# =============================================================================================


def drive_scenario(scenario_id: str, steps: int) -> tuple[Engine, list[tuple[int, cmd.Command]], int]:
    """Run the first ``steps`` steps of a catalog scenario (checking their expectations): the engine,
    every (time, command) and the time of the last step."""
    from fsm.harness.scenario import T0_MS, Runner, ScenarioError, load_scenarios

    doc = load_scenarios()[scenario_id]
    runner = Runner(copy.deepcopy(doc))
    emitted: list[tuple[int, cmd.Command]] = []
    for index, step in enumerate((doc.get("steps") or [])[:steps]):
        runner.now_ms = T0_MS + int(float(step.get("at", 0)) * 1000)
        commands = runner.feed(runner.step_events(step))
        failures = runner.check(step.get("expect") or {}, commands)
        if failures:
            raise ScenarioError(f"{scenario_id} step {index}: {failures}")
        emitted.extend((runner.now_ms, c) for c in commands)
    return runner.engine, emitted, runner.now_ms


def rows_from_commands(
    commands: Iterable[tuple[int, cmd.Command]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(transitions, alerts) as the board reads them from the daemon's tables, newest first."""
    transitions: list[dict[str, Any]] = []
    alerts: list[dict[str, Any]] = []
    for now_ms, c in commands:
        if isinstance(c, cmd.Transitioned) and c.machine != QUIET_MACHINE:
            transitions.append(
                {
                    "now_ms": now_ms,
                    "machine": c.machine,
                    "symbol": c.symbol,
                    "source": c.source,
                    "dest": c.dest,
                    "trigger": c.trigger,
                    "reason": c.reason,
                }
            )
        elif isinstance(c, cmd.Notify):
            alerts.append(
                {"now_ms": now_ms, "kind": c.kind, "severity": c.severity, "symbol": c.symbol, "text": c.text}
            )
    return transitions[::-1], alerts[::-1]


def demo_board() -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """A realistic board: W56 up to PHASE2 with the MDD stop and the breakeven limit working."""
    engine, commands, last = drive_scenario("W56", 7)
    transitions, alerts = rows_from_commands(commands)
    extras = {
        "profile": "sim",
        "streams": {"market": "up", "user": "up", "telegram": "replay"},
        "last_event": {"type": "MarkPriceTick", "now_ms": last},
    }
    return board_view(engine, last + 400, extras), transitions, alerts


def export_board_svg(path: str | Path = SVG_PATH) -> str:
    """Write the README picture of the board (100 columns) to ``path``; return the SVG text."""
    view, transitions, alerts = demo_board()
    console = Console(
        record=True, width=100, height=200, file=io.StringIO(), color_system="truecolor", legacy_windows=False
    )
    console.print(render_board(view, transitions, alerts))
    svg = console.export_svg(title="shortfsm status")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(svg, encoding="utf-8")
    return svg


if __name__ == "__main__":  # regenerate the committed picture: python -m fsm.ops.board
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else SVG_PATH
    export_board_svg(target)
    print(f"wrote {target}")
