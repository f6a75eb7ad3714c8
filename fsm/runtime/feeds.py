"""Message sources for the daemon and the simulated price paths of the sim profile and the demo.

* ``ReplaySource`` plays a JSONL feed (``telegram_ingest.replay``) on the run's clock: each line
  at ``origin + at_ms``; lines already in the past when it starts are the backfill; ids at or
  below the saved cursor are skipped (the engine would drop them anyway, N-28 step 9).
* ``TelegramSource`` runs the Telethon listener (headless: connect and check, never log in).
* ``PricePath`` is what the simulated venue's marks do: a flat history with a 1 % spike per minute
  before the run (so the last closed 3m candle's high, the aggressive target, is ``base x 1.01``),
  timed marks during the run and per-order fill policies (partial fills). ``demo_path`` is the
  bundled story that matches ``specs/feeds/demo.jsonl``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from telegram_ingest.adapter import RawMessage
from telegram_ingest.replay import FeedItem, load_feed

if TYPE_CHECKING:  # Telethon costs ~50 MB resident: imported only by the Telegram profiles
    from binance.sim.exchange import FillPolicy, SimExchange, SimSymbol  # the demo's: never `run`'s
    from telegram_ingest.listener import Backoff, SessionLock, TelegramListener

log = logging.getLogger(__name__)

Deliver = Callable[[RawMessage], Awaitable[None]]
REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO_FEED = REPO_ROOT / "specs" / "feeds" / "demo.jsonl"
HISTORY_MS = 15 * 60_000
HISTORY_STEP_MS = 20_000
SPIKE = Decimal("1.01")


class Clock(Protocol):
    def now_ms(self) -> int: ...

    async def sleep_until(self, target_ms: int, wake: asyncio.Event | None = None) -> None: ...


class MessageSource(Protocol):
    kind: str  # "replay" | "telegram": shown on the board

    async def run(self, deliver: Deliver, cursors: Mapping[int, int]) -> None: ...

    def stop(self) -> None: ...

    @property
    def finished(self) -> bool: ...


class ReplaySource:
    """A JSONL feed on the run's clock (the sim profile's Telegram)."""

    kind = "replay"

    def __init__(self, items: Sequence[FeedItem], *, origin_ms: int, clock: Clock) -> None:
        self.items = list(items)
        self.origin_ms = origin_ms
        self.clock = clock
        self.delivered = 0
        self._stop = asyncio.Event()
        self._finished = False

    @classmethod
    def from_file(cls, path: str | Path, *, origin_ms: int, clock: Clock) -> ReplaySource:
        return cls(load_feed(path), origin_ms=origin_ms, clock=clock)

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def last_at_ms(self) -> int:
        return self.items[-1].at_ms if self.items else 0

    def stop(self) -> None:
        self._stop.set()

    async def run(self, deliver: Deliver, cursors: Mapping[int, int]) -> None:
        for item in self.items:
            if self._stop.is_set():
                return
            if item.message_id <= cursors.get(item.chat_id, 0):
                continue
            due = self.origin_ms + item.at_ms
            if due > self.clock.now_ms():
                await self.clock.sleep_until(due, self._stop)
                if self._stop.is_set():
                    return
            raw = item.to_raw(self.origin_ms)
            await deliver(raw)
            self.delivered += 1
        self._finished = True


class TelegramUnavailable(RuntimeError):
    """The Telegram session cannot be used at start (missing, not logged in, held by another
    process): ``run`` must not start. The message is one line with the remedy."""


ClientFactory = Callable[[str, int, str], Any]  # (session path, api id, api hash) -> client
StateCallback = Callable[[str, str], None]  # (state, detail): "up" | "reconnecting" | "down"
AlertCallback = Callable[[str, str], None]  # (severity, text)
# The client every ``TelegramSource`` without its own factory uses; None: telethon.TelegramClient.
telegram_client_factory: ClientFactory | None = None


def describe_error(exc: BaseException) -> str:
    """``Type: message`` on one line (the type alone when the message is empty)."""
    text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class LiveCursors(Mapping[int, int]):
    """The engine's cursors as they are NOW (a backfill must never read from a stale copy)."""

    def __init__(self, read: Callable[[], Mapping[int, int]]) -> None:
        self._read = read

    def __getitem__(self, chat_id: int) -> int:
        return self._read()[chat_id]

    def __iter__(self) -> Iterator[int]:
        return iter(dict(self._read()))

    def __len__(self) -> int:
        return len(self._read())


class TelegramSource:
    """The real channels through ``telegram_ingest.listener`` (demo and mainnet profiles).

    ``open`` (before the daemon starts) refuses a missing, never logged-in or locked session
    with ``TelegramUnavailable``; a Telegram that cannot be reached at start is only a warning.
    ``run`` then supervises the listener forever: whatever ends it (a connection error, an
    exception from Telethon, the listener returning) is followed by a reconnect after a capped
    back-off. ``on_state`` hears each change of state; ``on_alert`` gets a critical alert once
    Telegram has been down for ``down_alert_s`` (at once when the session itself is refused)
    and a second one when it is back.
    """

    kind = "telegram"

    def __init__(
        self,
        *,
        session_path: str,
        api_id: int,
        api_hash: str,
        chat_ids: Sequence[int],
        backfill_interval_s: float,
        quiet_reconnect_s: float,
        clock: Clock,
        client_factory: ClientFactory | None = None,
        backoff: Backoff | None = None,
        down_alert_s: float = 60.0,
        start_timeout_s: float = 30.0,
        watchdog_interval_s: float = 5.0,
        dedupe_size: int = 4096,
    ) -> None:
        from telegram_ingest.listener import Backoff, session_file

        self.session_path = session_file(session_path)
        self.api_id = api_id
        self.api_hash = api_hash
        self.chat_ids = tuple(chat_ids)
        self.backfill_interval_s = backfill_interval_s
        self.quiet_reconnect_s = quiet_reconnect_s
        self.clock = clock
        self.backoff = backoff or Backoff()
        self.down_alert_s = down_alert_s
        self.start_timeout_s = start_timeout_s
        self.watchdog_interval_s = watchdog_interval_s
        self.dedupe_size = dedupe_size
        self.on_state: StateCallback | None = None
        self.on_alert: AlertCallback | None = None
        self.state = "down"
        self.detail = "not started"
        self.attempts = 0  # connection attempts made by ``run``
        self._factory = client_factory
        self._lock: SessionLock | None = None
        self._client: Any = None
        self._listener: TelegramListener | None = None
        self._stop = asyncio.Event()
        self._down_since_ms: int | None = None
        self._alerted = False
        self._alarm: asyncio.Task[None] | None = None

    @property
    def finished(self) -> bool:
        return False

    def stop(self) -> None:
        self._stop.set()
        if self._listener is not None:
            self._listener.stop()

    # -- start ---------------------------------------------------------------------------------

    async def open(self) -> None:
        """Lock the session and check it is logged in, before anything can trade."""
        from telegram_ingest.listener import (
            NotAuthorised,
            SessionLocked,
            SessionUnusable,
            ensure_authorised,
            login_remedy,
            open_session_path,
            session_problem,
        )

        session = self.session_path
        problem = session_problem(session)
        if problem is not None and not session.exists():
            raise TelegramUnavailable(problem)
        try:
            self._lock = open_session_path(session)
        except SessionLocked as exc:
            holder = f"process {exc.pid}" if exc.pid is not None else "another process"
            raise TelegramUnavailable(
                f"Telegram session {session} is held by {holder}: stop it first (a session must never be "
                "used by two processes at once)"
            ) from None
        try:
            if problem is not None:
                raise TelegramUnavailable(problem)
            try:
                self._client = self._new_client()
            except sqlite3.OperationalError as exc:
                raise TelegramUnavailable(
                    f"Telegram session {session} is in use by another program ({exc})"
                ) from None
            try:
                async with asyncio.timeout(self.start_timeout_s):
                    await ensure_authorised(self._client, session)
            except NotAuthorised as exc:
                raise TelegramUnavailable(str(exc)) from None
            except SessionUnusable as exc:
                raise TelegramUnavailable(
                    f"Telegram refused session {session} ({type(exc).__name__}): {login_remedy(session)}"
                ) from None
            except TimeoutError:
                log.warning(
                    "Telegram did not answer within %.0f s: starting anyway, reconnecting until it does "
                    "(no signal is seen until then)",
                    self.start_timeout_s,
                )
            except Exception as exc:  # unreachable is not refused: ``run`` reconnects and alerts
                log.warning(
                    "Telegram unreachable at start (%s: %s): starting anyway, reconnecting until it is "
                    "(no signal is seen until then)",
                    type(exc).__name__,
                    exc,
                )
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Disconnect and release the session lock (idempotent)."""
        self.stop()
        if self._alarm is not None:
            self._alarm.cancel()
            self._alarm = None
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.disconnect()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _new_client(self) -> Any:
        factory = self._factory or telegram_client_factory
        if factory is None:
            from telethon import TelegramClient

            # FloodWait always reaches the listener, which never sleeps on it holding the delivery lock.
            return TelegramClient(str(self.session_path), self.api_id, self.api_hash, flood_sleep_threshold=0)
        return factory(str(self.session_path), self.api_id, self.api_hash)

    # -- supervised run ------------------------------------------------------------------------

    async def run(self, deliver: Deliver, cursors: Mapping[int, int]) -> None:
        from telegram_ingest.listener import (
            ListenerConfig,
            NotAuthorised,
            SessionUnusable,
            TelegramListener,
            login_remedy,
        )

        if self._client is None and self._lock is None:
            await self.open()

        class _Cursors:
            def get(self, chat_id: int) -> int:
                return cursors.get(chat_id, 0)

        self._listener = TelegramListener(
            self._client,
            chat_ids=self.chat_ids,
            cursors=_Cursors(),
            on_raw=deliver,
            config=ListenerConfig(
                backfill_interval_s=self.backfill_interval_s,
                quiet_reconnect_s=self.quiet_reconnect_s,
                watchdog_interval_s=self.watchdog_interval_s,
                dedupe_size=self.dedupe_size,
                reconnect_backoff=self.backoff,
            ),
            clock=self.clock.now_ms,
            sleep=self._sleep,
            on_state=self._report,
        )
        failures = 0
        try:
            while not self._stop.is_set():
                self.attempts += 1
                up_since: int | None = None
                urgent = False
                try:
                    await self._client.connect()
                    if not await self._client.is_user_authorized():
                        raise NotAuthorised(
                            f"the Telegram session is not logged in: {login_remedy(self.session_path)}"
                        )
                    if self._stop.is_set():
                        break
                    up_since = self.clock.now_ms()
                    self._report("up", "connected")
                    await self._listener.run()
                    reason = "the listener stopped"
                except asyncio.CancelledError:
                    raise
                except (NotAuthorised, *SessionUnusable) as exc:
                    urgent = True
                    remedy = login_remedy(self.session_path)
                    reason = (
                        str(exc)
                        if isinstance(exc, NotAuthorised)
                        else (f"Telegram refused the session ({type(exc).__name__}): {remedy}")
                    )
                except Exception as exc:  # supervised: nothing ends the source but ``stop``
                    reason = describe_error(exc)
                if self._stop.is_set():
                    break
                if up_since is not None and self.clock.now_ms() - up_since >= self.backoff.cap_s * 1000:
                    failures = 0
                delay = self.backoff.delay(failures)
                failures += 1
                log.warning("telegram: %s; reconnecting in %.0f s", reason, delay)
                self._report("down" if urgent else "reconnecting", reason, urgent=urgent)
                with contextlib.suppress(Exception):
                    await self._client.disconnect()
                await self._sleep(delay)
        finally:
            self._report("down", "stopped")
            if self._alarm is not None:
                self._alarm.cancel()
                self._alarm = None

    async def _sleep(self, seconds: float) -> None:
        """Sleep on the run's clock; ``stop`` wakes it."""
        await self.clock.sleep_until(self.clock.now_ms() + int(seconds * 1000), self._stop)

    def _report(self, state: str, detail: str, *, urgent: bool = False) -> None:
        """A change of state: board, and the down / back alerts."""
        changed = state != self.state
        self.state, self.detail = state, detail
        now = self.clock.now_ms()
        if changed and self.on_state is not None:
            self.on_state(state, detail)
        if detail == "stopped":
            return
        if state == "up":
            if self._alarm is not None:
                self._alarm.cancel()
                self._alarm = None
            if self._alerted and self._down_since_ms is not None:
                self._alert(
                    "info",
                    f"Telegram is back after {(now - self._down_since_ms) / 1000:.0f} s down; "
                    "the messages missed meanwhile are read from the channels' history",
                )
            self._down_since_ms = None
            self._alerted = False
            return
        if self._down_since_ms is None:
            self._down_since_ms = now
        if urgent and not self._alerted:
            self._alerted = True
            self._alert("critical", f"Telegram session refused: {detail}; no signal is seen until then")
        elif not self._alerted and self._alarm is None:
            self._alarm = asyncio.create_task(self._alarm_after(self._down_since_ms), name="telegram-alarm")

    async def _alarm_after(self, since_ms: int) -> None:
        await self.clock.sleep_until(since_ms + int(self.down_alert_s * 1000), self._stop)
        self._alarm = None
        if self._stop.is_set() or self.state == "up" or self._alerted:
            return
        self._alerted = True
        self._alert(
            "critical",
            f"Telegram down for {self.down_alert_s:.0f} s ({self.detail}): no signal "
            "or risk message is seen until it is back; reconnecting",
        )

    def _alert(self, severity: str, text: str) -> None:
        if self.on_alert is not None:
            self.on_alert(severity, text)
        else:
            log.warning("telegram alert (%s): %s", severity, text)


# ---------------------------------------------------------------------------------------------
# Price paths for the simulated venue
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class PricePath:
    """Marks of the simulated venue: ``base`` history before the run, ``points`` during it."""

    base: dict[str, Decimal]
    points: tuple[tuple[int, str, Decimal], ...] = ()  # (at_ms after the origin, symbol, mark)
    fill_policies: dict[str, FillPolicy] = field(default_factory=dict)
    extra_symbols: tuple[tuple[SimSymbol, Decimal], ...] = ()

    @property
    def end_ms(self) -> int:
        return max((p[0] for p in self.points), default=0)

    def install(self, exchange: SimExchange, set_clock: Callable[[int], None], origin_ms: int) -> None:
        """Add the symbols, write the history (moving a manual clock) and schedule the run's marks."""
        for sym, mark in self.extra_symbols:
            if sym.symbol not in exchange.symbols:
                exchange.add_symbol(sym, mark)
        for step in range(HISTORY_MS // HISTORY_STEP_MS):
            at = origin_ms - HISTORY_MS + step * HISTORY_STEP_MS
            set_clock(at)
            for symbol, base in self.base.items():
                tick = exchange.symbols[symbol].tick
                price = (base * SPIKE).quantize(tick) if step % 3 == 1 else base
                exchange.set_mark(symbol, price)
        set_clock(origin_ms)
        for symbol, base in self.base.items():
            exchange.set_mark(symbol, base)
        exchange.script((origin_ms + at, symbol, price) for at, symbol, price in self.points)
        for cid, policy in self.fill_policies.items():
            exchange.set_fill_policy(cid, policy)


def _sym(name: str, tick: str, step: str, min_qty: str) -> SimSymbol:
    from binance.sim.exchange import SimSymbol  # the demo's symbols: loaded only when drawn

    return SimSymbol(
        name,
        Decimal(tick),
        Decimal(step),
        Decimal(min_qty),
        Decimal("10000000"),
        Decimal("1000000"),
        min_price=Decimal(tick),
    )


def _points(rows: Sequence[tuple[float, str, str]]) -> tuple[tuple[int, str, Decimal], ...]:
    return tuple((int(at * 1000), symbol, Decimal(price)) for at, symbol, price in rows)


def demo_path() -> PricePath:
    """The story of ``specs/feeds/demo.jsonl`` (times in seconds after the start):

    3-12 s leading messages: DOGE (meme: filtered), XRP (not listed: mapping failure), SOL (rising
    rank 3: filtered), ETH and LINK (monitoring; targets 3535.00 and 20.200). 16 s both cross their
    0.1% trigger in the same second: W18 tie-break, LINK (latest receipt) wins, ETH is reset.
    19 s / 22 s the LINK limit entry fills 100 then the rest (partial fill, then PHASE1). 26-30 s the
    mark reaches avg +15 %: scale-in fills, PHASE2 with its MDD stop; the breakeven limit rests at
    the new average and fills at 35 s (breakeven exit). 40-53 s AVAX: monitoring, entry, TP placed
    at the 0.1 % trigger, TP filled (take-profit). 60-70 s ADA: entry filled, then a risk message
    with the price above the average: closed at market (risk signal).
    """
    return PricePath(
        base={
            "ETHUSDT": Decimal("3500.00"),
            "DOGEUSDT": Decimal("0.16000"),
            "SOLUSDT": Decimal("180.0000"),
            "LINKUSDT": Decimal("20.000"),
            "AVAXUSDT": Decimal("30.000"),
            "ADAUSDT": Decimal("0.8000"),
        },
        extra_symbols=(
            (_sym("LINKUSDT", "0.001", "0.01", "0.01"), Decimal("20.000")),
            (_sym("AVAXUSDT", "0.001", "1", "1"), Decimal("30.000")),
            (_sym("ADAUSDT", "0.0001", "1", "1"), Decimal("0.8000")),
        ),
        points=_points(
            [
                (16, "ETHUSDT", "3532.00"),
                (16, "LINKUSDT", "20.185"),
                (19, "LINKUSDT", "20.210"),
                (22, "LINKUSDT", "20.220"),
                (24, "LINKUSDT", "21.800"),
                (26, "LINKUSDT", "23.210"),
                (30, "LINKUSDT", "23.250"),
                (33, "LINKUSDT", "22.400"),
                (35, "LINKUSDT", "21.400"),
                (43, "AVAXUSDT", "30.280"),
                (45, "AVAXUSDT", "30.310"),
                (48, "AVAXUSDT", "29.500"),
                (50, "AVAXUSDT", "28.800"),
                (53, "AVAXUSDT", "28.700"),
                (63, "ADAUSDT", "0.8075"),
                (65, "ADAUSDT", "0.8085"),
                (68, "ADAUSDT", "0.8090"),
            ]
        ),
        fill_policies={"sf105-E11-LINKUSDT": (Decimal("100"), Decimal("100000000"))},
    )
