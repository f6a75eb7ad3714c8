"""WebSocket streams and the REST price poller; each hands parsed items to an async callback.

* ``MarketStream``: ``<base>/market/stream?streams=<sym>@markPrice@1s/<sym>@kline_3m...``, or the
  ``!markPrice@arr@1s`` array filtered to the watched symbols above ``ALL_MARKS_ABOVE`` of them; symbols
  are added/removed live with SUBSCRIBE/UNSUBSCRIBE (paced to at most 10 control messages per
  second); reconnects with exponential back-off, rotates the connection before the 24 h cut, and
  reports ``WsStatusChanged``. Pings are answered by ``websockets`` itself.
* ``UserStream``: ``<base>/private/ws/<listenKey>``; PUT keepalive every 30 min; on -1125 or
  ``listenKeyExpired`` it takes a new key, reconnects and calls the reconciliation callback (also
  after every reconnect, since events may have been missed).
* ``PremiumIndexPoller``: while the core says ``UsePriceSource("REST")``, polls premiumIndex every
  second and produces ``MarkPriceTick(source="REST")`` or ``RestPriceFailed``.

One reader task per connection only parses and awaits the callback; the callback should enqueue.

Supervision: each ``run()`` survives an unexpected exception (a callback that raises, a malformed
answer in a reconciliation, a bug): it is logged with its traceback, reported to the ``on_crash``
hook (``CrashHook``: name, exception, restart count; the daemon turns it into an alert) and the
task restarts after an exponential back-off (0.5 s doubling to 30 s, reset after a run that lasted
a minute). Only ``stop()`` or cancellation ends a ``run()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Iterable
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from binance import parse
from binance.errors import BinanceError, Rejected
from binance.parse import Decoded, ListenKeyExpired
from binance.rest import BinanceRest, host_of, hosts_only, wall_clock_ms
from fsm.commands import UsePriceSource
from fsm.events import Event, RestPriceFailed, WsStatusChanged

log = logging.getLogger(__name__)

OnItem = Callable[[Decoded], Awaitable[None]]
MAX_CONTROL_PER_S = 10
MAX_STREAMS_PER_CONNECTION = 1024  # Binance's limit per /market connection
ALL_MARKS_ABOVE = 100  # more watched symbols than this: one ``!markPrice@arr@1s`` instead of one each
ALL_MARKS_STREAM = "!markPrice@arr@1s"
ROTATE_AFTER_S = 23 * 3600 + 30 * 60  # before Binance's 24 h cut
KEEPALIVE_S = 30 * 60
_CONNECT_ERRORS = (OSError, InvalidHandshake, InvalidURI, TimeoutError, ConnectionClosed)


class ControlPacer:
    """At most ``limit`` control messages per rolling second (the venue disconnects above 10)."""

    def __init__(
        self, limit: int = MAX_CONTROL_PER_S, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self._sent: deque[float] = deque()
        self._monotonic = monotonic

    def delay(self) -> float:
        """Seconds to wait before the next message may go out (0 when it may go now)."""
        now = self._monotonic()
        while self._sent and self._sent[0] <= now - 1.0:
            self._sent.popleft()
        if len(self._sent) < self.limit:
            return 0.0
        return self._sent[0] + 1.0 - now

    def note(self) -> None:
        self._sent.append(self._monotonic())

    async def wait(self) -> None:
        while (d := self.delay()) > 0:
            await asyncio.sleep(d)
        self.note()


class Backoff:
    """Exponential reconnect delays: base, 2x base, ... capped; ``reset`` after a good connection."""

    def __init__(self, base_s: float = 0.5, cap_s: float = 30.0) -> None:
        self.base_s = base_s
        self.cap_s = cap_s
        self.attempt = 0

    def next(self) -> float:
        d = min(self.cap_s, self.base_s * (2.0**self.attempt))
        self.attempt += 1
        return d

    def reset(self) -> None:
        self.attempt = 0


CrashHook = Callable[[str, BaseException, int], Awaitable[None]]
HEALTHY_RUN_S = 60.0  # a run that lasted this long resets the crash back-off
STABLE_S = 60.0  # a user-stream connection that lasted this long resets the reconnect back-off


async def supervise(
    name: str,
    run_once: Callable[[], Awaitable[None]],
    stop: asyncio.Event,
    on_crash: Callable[[], CrashHook | None],
    backoff: Backoff | None = None,
) -> None:
    """Run ``run_once`` until it returns (after ``stop``) or is cancelled; an unexpected exception
    is logged, reported to the hook (a hook that fails is logged, never fatal) and the run restarts
    after a back-off that ``stop`` interrupts."""
    backoff = backoff or Backoff()
    restarts = 0
    while not stop.is_set():
        started = time.monotonic()
        try:
            await run_once()
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if stop.is_set():
                return
            if time.monotonic() - started >= HEALTHY_RUN_S:
                backoff.reset()
            restarts += 1
            delay = backoff.next()
            log.exception("%s crashed (restart %d in %.2f s)", name, restarts, delay)
            hook = on_crash()
            if hook is not None:
                try:
                    await hook(name, exc, restarts)
                except Exception:
                    log.exception("%s: crash hook failed", name)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)


def _problem(exc: BaseException) -> str:
    """A connection failure for messages: its type and text, any URL in it cut to the host."""
    return hosts_only(f"{type(exc).__name__}: {exc}")


def _down_text(host: str, reason: str) -> str:
    """``fstream.binance.com unreachable: OSError: ...`` or ``fstream.binance.com down (closed: ...)``."""
    return f"{host} {reason}" if reason.startswith("unreachable") else f"{host} down ({reason})"


def market_streams(symbol: str, kline_interval: str = "3m") -> tuple[str, str]:
    low = symbol.lower()
    return f"{low}@markPrice@1s", f"{low}@kline_{kline_interval}"


def kline_stream(symbol: str, kline_interval: str = "3m") -> str:
    return f"{symbol.lower()}@kline_{kline_interval}"


def wanted_streams(
    symbols: Collection[str],
    kline_symbols: Collection[str] | None,
    *,
    kline_interval: str = "3m",
    all_marks_above: int = ALL_MARKS_ABOVE,
) -> set[str]:
    """The streams a connection should carry for these watched symbols.

    Up to ``all_marks_above`` symbols: ``<s>@markPrice@1s`` and ``<s>@kline_<i>`` per symbol (klines for
    the symbols in ``kline_symbols``, every watched symbol when it is None). Above: the one
    ``!markPrice@arr@1s`` stream (filtered to the watched set when decoded) plus klines only for the
    watched symbols in ``kline_symbols`` (none when it is None).
    """
    if len(symbols) > all_marks_above:
        klines = set(symbols) & set(kline_symbols or ())
        return {ALL_MARKS_STREAM} | {kline_stream(s, kline_interval) for s in klines}
    with_klines = symbols if kline_symbols is None else set(symbols) & set(kline_symbols)
    out = {f"{s.lower()}@markPrice@1s" for s in symbols}
    out.update(kline_stream(s, kline_interval) for s in with_klines)
    return out


class MarketStream:
    """``/market`` combined stream for a live-changing symbol set.

    The streams follow ``wanted_streams``: one mark-price stream per symbol for a small set, the
    ``!markPrice@arr@1s`` array above ``all_marks_above`` symbols (600 symbols would need 1200
    per-symbol streams, over the 1024 a connection may carry). Kline streams: every watched symbol
    while per-symbol; above the threshold only the symbols given to ``watch_klines`` (none by
    default: the daemon reads klines by REST when a signal arrives and drops ``KlineUpdate``).
    Each change is one SUBSCRIBE and/or one UNSUBSCRIBE of the difference, paced.
    """

    def __init__(
        self,
        base_url: str,
        on_item: OnItem,
        *,
        clock_ms: Callable[[], int] = wall_clock_ms,
        kline_interval: str = "3m",
        backoff: Backoff | None = None,
        rotate_after_s: float = ROTATE_AFTER_S,
        pacer: ControlPacer | None = None,
        all_marks_above: int = ALL_MARKS_ABOVE,
        on_crash: CrashHook | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.host = host_of(self.base_url)
        self.problem = ""  # why the last connection ended (host named), "" while none failed
        self._on_item = on_item
        self.on_crash = on_crash
        self._clock_ms = clock_ms
        self.kline_interval = kline_interval
        self.backoff = backoff or Backoff()
        self.rotate_after_s = rotate_after_s
        self.pacer = pacer or ControlPacer()
        self.all_marks_above = all_marks_above
        self.symbols: set[str] = set()
        self.kline_symbols: set[str] | None = None
        self.streams: set[str] = set()  # what the open connection carries
        self._ws: ClientConnection | None = None
        self._ids = itertools.count(1)
        self._stop = asyncio.Event()
        self._control = asyncio.Lock()
        self.connections = 0

    def wanted(self) -> set[str]:
        return wanted_streams(
            self.symbols,
            self.kline_symbols,
            kline_interval=self.kline_interval,
            all_marks_above=self.all_marks_above,
        )

    def url(self) -> str:
        streams = sorted(self.wanted())
        return f"{self.base_url}/stream?streams={'/'.join(streams)}" if streams else f"{self.base_url}/stream"

    async def _sync(self) -> None:
        """Bring the open connection to ``wanted()``: SUBSCRIBE what is missing first (no gap while
        switching to the array stream), then UNSUBSCRIBE what is no longer wanted."""
        async with self._control:
            ws = self._ws
            if ws is None:
                return
            want = self.wanted()
            for method, params in (
                ("SUBSCRIBE", sorted(want - self.streams)),
                ("UNSUBSCRIBE", sorted(self.streams - want)),
            ):
                if not params:
                    continue
                await self.pacer.wait()
                if self._ws is not ws:
                    return  # reconnected meanwhile: the new URL already carries ``wanted()``
                with contextlib.suppress(ConnectionClosed):
                    await ws.send(json.dumps({"method": method, "params": params, "id": next(self._ids)}))
            self.streams = want

    async def subscribe(self, symbols: Iterable[str]) -> None:
        self.symbols |= {s.upper() for s in symbols}
        await self._sync()

    async def unsubscribe(self, symbols: Iterable[str]) -> None:
        self.symbols -= {s.upper() for s in symbols}
        await self._sync()

    async def watch_klines(self, symbols: Iterable[str]) -> None:
        """Ask for kline streams of exactly these symbols (when watched), whatever the set size."""
        self.kline_symbols = {s.upper() for s in symbols}
        await self._sync()

    def stop(self) -> None:
        self._stop.set()
        if self._ws is not None:
            self._ws.transport.abort()

    async def _status(self, connected: bool, reason: str) -> None:
        await self._on_item(WsStatusChanged(now_ms=self._clock_ms(), connected=connected, reason=reason))

    async def run(self) -> None:
        """Connect, read, reconnect until ``stop()``; supervised (restarted after a crash)."""
        await supervise("market stream", self._run_once, self._stop, lambda: self.on_crash)

    async def _run_once(self) -> None:
        while not self._stop.is_set():
            reason = "closed"
            try:
                streams = self.wanted()
                async with connect(self.url(), proxy=None, open_timeout=10, max_size=2**22) as ws:
                    self._ws = ws
                    self.problem = ""
                    self.streams = streams
                    self.connections += 1
                    self.backoff.reset()
                    await self._sync()  # changes made while connecting
                    await self._status(True, "connected")
                    reason = await self._read(ws)
            except _CONNECT_ERRORS as exc:
                reason = f"unreachable: {_problem(exc)}" if self._ws is None else _problem(exc)
            finally:
                self._ws = None
                self.streams = set()
            if self._stop.is_set():
                break
            self.problem = _down_text(self.host, reason)
            await self._status(False, reason)
            delay = 0.0 if reason == "rotation" else self.backoff.next()
            log.warning("market stream %s; reconnecting in %.2f s", self.problem, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)

    async def _read(self, ws: ClientConnection) -> str:
        started = time.monotonic()
        while True:
            remaining = self.rotate_after_s - (time.monotonic() - started)
            if remaining <= 0:
                return "rotation"
            try:
                frame = await asyncio.wait_for(ws.recv(decode=False), remaining)
            except TimeoutError:
                return "rotation"
            except ConnectionClosed as exc:
                return f"closed: {exc}"
            for item in parse.decode_frame(frame, self._clock_ms(), watched=self.symbols):
                await self._on_item(item)


class UserStream:
    """``/private`` user-data stream with listenKey lifecycle and reconciliation on every gap."""

    def __init__(
        self,
        rest: BinanceRest,
        base_url: str,
        on_item: OnItem,
        on_reconcile: Callable[[], Awaitable[None]],
        *,
        clock_ms: Callable[[], int] = wall_clock_ms,
        keepalive_s: float = KEEPALIVE_S,
        backoff: Backoff | None = None,
        rotate_after_s: float = ROTATE_AFTER_S,
        on_crash: CrashHook | None = None,
    ) -> None:
        self.rest = rest
        self.base_url = base_url.rstrip("/")
        self.host = host_of(self.base_url)
        self.problem = ""  # why the last connection ended (host named), "" while none failed
        self._on_item = on_item
        self._on_reconcile = on_reconcile
        self.on_crash = on_crash
        self._first = True  # the first connection reconciles only if ``reconcile_first``
        self._clock_ms = clock_ms
        self.keepalive_s = keepalive_s
        self.backoff = backoff or Backoff()
        self.rotate_after_s = rotate_after_s
        self.listen_key: str | None = None
        self._ws: ClientConnection | None = None
        self._stop = asyncio.Event()
        self._renew = asyncio.Event()
        self.connections = 0
        self.keys_created = 0
        # Set once the first socket is open. A caller that reads the exchange by REST waits for it,
        # so no push can fall between its read and the stream; if it could not wait, it sets
        # ``reconcile_first`` and the first connection reconciles like every later one.
        self.opened = asyncio.Event()
        self.reconcile_first = False

    @property
    def connected(self) -> bool:
        """True while the user-data WebSocket is open (the board and the heartbeat show it)."""
        return self._ws is not None

    def stop(self) -> None:
        self._stop.set()
        if self._ws is not None:
            self._ws.transport.abort()

    async def _new_key(self) -> str:
        self.listen_key = await self.rest.new_listen_key()
        self.keys_created += 1
        return self.listen_key

    async def keepalive_once(self) -> None:
        """PUT the key; -1125 means it is gone: ask for a new key and a reconnect."""
        try:
            await self.rest.keepalive_listen_key()
        except Rejected as err:
            if err.code != -1125:
                raise
            log.warning("listenKey gone (-1125); renewing")
            self.listen_key = None
            self._renew.set()
            if self._ws is not None:
                await self._ws.close()

    async def _keepalive_loop(self) -> None:
        while True:
            await asyncio.sleep(self.keepalive_s)
            try:
                await self.keepalive_once()
            except BinanceError as err:
                log.warning("listenKey keepalive failed: %s", err)

    async def run(self) -> None:
        """Connect, read, reconcile after every gap, until ``stop()``; supervised: a crash (in the
        reconciliation or a callback) restarts it, and the next connection reconciles."""
        await supervise("user stream", self._run_once, self._stop, lambda: self.on_crash)

    async def _run_once(self) -> None:
        keepalive = asyncio.create_task(self._keepalive_loop())
        connected_at: float | None = None
        try:
            while not self._stop.is_set():
                reason = "closed"
                try:
                    key = self.listen_key or await self._new_key()
                    async with connect(f"{self.base_url}/ws/{key}", proxy=None, open_timeout=10) as ws:
                        self._ws = ws
                        self.problem = ""
                        self.connections += 1
                        connected_at = time.monotonic()
                        if not self._first or self.reconcile_first:
                            self._first = False  # a crash below still leaves a gap to read back
                            await self._on_reconcile()
                        self._first = False
                        self.opened.set()
                        reason = await self._read(ws)
                except BinanceError as err:
                    where, text = getattr(self.rest, "host", ""), hosts_only(str(err))
                    reason = (
                        f"listenKey from {where}: {text}"
                        if where and where not in text
                        else f"listenKey: {text}"
                    )
                except _CONNECT_ERRORS as exc:
                    reason = f"unreachable: {_problem(exc)}" if self._ws is None else _problem(exc)
                finally:
                    self._ws = None
                if self._stop.is_set():
                    break
                renew = self._renew.is_set()
                self._renew.clear()
                # Each reconnect costs REST weight (listenKey, the gap read-back): the back-off
                # starts over only after a connection that held, so a storm of short-lived
                # connections slows down instead of reading back twice a second.
                if connected_at is not None and time.monotonic() - connected_at >= STABLE_S:
                    self.backoff.reset()
                connected_at = None
                delay = 0.0 if renew or reason == "rotation" else self.backoff.next()
                self.problem = _down_text(self.host, reason)
                log.warning("user stream %s; reconnecting in %.2f s", self.problem, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
        finally:
            keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keepalive

    async def _read(self, ws: ClientConnection) -> str:
        started = time.monotonic()
        while True:
            remaining = self.rotate_after_s - (time.monotonic() - started)
            if remaining <= 0:
                return "rotation"
            try:
                frame = await asyncio.wait_for(ws.recv(), remaining)
            except TimeoutError:
                return "rotation"
            except ConnectionClosed as exc:
                return f"closed: {exc}"
            for item in parse.decode_frame(frame, self._clock_ms()):
                if isinstance(item, ListenKeyExpired):
                    log.warning("listenKeyExpired for %s…; renewing", item.listen_key[:8])
                    self.listen_key = None
                    self._renew.set()
                    return "listenKeyExpired"
                await self._on_item(item)


class PremiumIndexPoller:
    """REST mark-price fallback (N-22): active only while the core asks for the REST source."""

    def __init__(
        self,
        rest: BinanceRest,
        on_event: Callable[[Event], Awaitable[None]],
        *,
        clock_ms: Callable[[], int] = wall_clock_ms,
        interval_s: float = 1.0,
        on_crash: CrashHook | None = None,
    ) -> None:
        self.rest = rest
        self._on_event = on_event
        self.on_crash = on_crash
        self._clock_ms = clock_ms
        self.interval_s = interval_s
        self.symbols: set[str] = set()
        self.active = asyncio.Event()
        self._stop = asyncio.Event()

    def use_source(self, cmd: UsePriceSource) -> None:
        """Follow the core's ``UsePriceSource`` command."""
        log.info("price source -> %s (%s)", cmd.source, cmd.reason)
        if cmd.source == "REST":
            self.active.set()
        else:
            self.active.clear()

    def set_symbols(self, symbols: Iterable[str]) -> None:
        self.symbols = {s.upper() for s in symbols}

    async def poll_once(self) -> list[Event]:
        """One poll of every watched symbol (one request when several: the all-symbols answer)."""
        if not self.symbols:
            return []
        try:
            if len(self.symbols) == 1:
                answer: Any = [await self.rest.premium_index(next(iter(self.symbols)))]
            else:
                answer = await self.rest.premium_index()
            rows = {str(r.get("symbol")): r for r in answer if isinstance(r, dict)}
        except BinanceError as err:
            now = self._clock_ms()
            return [RestPriceFailed(now_ms=now, reason=f"{type(err).__name__} {err.code}: {err.msg}")]
        except (TypeError, AttributeError) as exc:
            now = self._clock_ms()
            return [RestPriceFailed(now_ms=now, reason=f"unreadable premiumIndex: {exc}")]
        now = self._clock_ms()  # the answer's arrival: what the engine learns, it learns now
        out: list[Event] = []
        for symbol in sorted(self.symbols):
            row = rows.get(symbol)
            if row is None:
                out.append(RestPriceFailed(now_ms=now, reason=f"{symbol} missing from premiumIndex"))
                continue
            try:
                out.append(parse.mark_price_from_rest(row, now))
            except (KeyError, ValueError, TypeError) as exc:
                out.append(RestPriceFailed(now_ms=now, reason=f"{symbol}: unreadable premiumIndex: {exc}"))
        return out

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Poll while active, until ``stop()``; supervised (restarted after a crash)."""
        await supervise("price poller", self._run_once, self._stop, lambda: self.on_crash)

    async def _run_once(self) -> None:
        while not self._stop.is_set():
            if not self.active.is_set():
                stop_task = asyncio.ensure_future(self._stop.wait())
                active_task = asyncio.ensure_future(self.active.wait())
                await asyncio.wait({stop_task, active_task}, return_when=asyncio.FIRST_COMPLETED)
                stop_task.cancel()
                active_task.cancel()
                continue
            for ev in await self.poll_once():
                await self._on_event(ev)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.interval_s)
