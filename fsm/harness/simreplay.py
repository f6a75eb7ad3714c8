"""Scenario replay through the real engine, the real Binance client and the simulated venue.

``SimRunner`` keeps the scenario semantics of ``fsm.harness.scenario.Runner`` (same YAML, same step
kinds, same expectations, checked by the same code) but swaps the venue double for a real
``binance.sim`` exchange, in process and on one simulated clock:

- the engine's venue commands go through the real ``binance.executor.Executor`` and
  ``binance.rest.BinanceRest``, whose httpx client carries an ``InProcessTransport``: each request
  is routed, signed and checked, weighted and answered by ``SimVenue`` exactly as over TCP;
- what the exchange pushes on the user-data stream (ORDER_TRADE_UPDATE, ALGO_UPDATE,
  ACCOUNT_UPDATE) is decoded by ``binance.parse`` and fed back to the engine in order, after the
  REST outcome of the command that caused it;
- mark prices move the exchange (``set_mark``: stops trigger on the mark as on Binance) and reach
  the engine as decoded ``markPriceUpdate`` pushes; REST marks and their failures come from the
  real ``PremiumIndexPoller``; messages are enriched from REST exchangeInfo and 3m klines as the
  daemon does;
- scripted venue behaviour maps onto the exchange: ``fill`` trades against the order at a price
  (LIMIT orders never fill by themselves: fills are scripted), ``venue_cancel`` / ``manual_order``
  / ``position`` are what a person does on the web, ``reject_next`` / ``cancel_fail`` /
  ``prepare_fail`` / ``no_answer`` / ``venue_error`` / ``exchange_info: down`` are ``RestFault`` s
  injected for exactly the request they concern, ``restart`` rebuilds the engine (and the client)
  from what storage keeps, as the daemon does.

Balances are scenario inputs, as with the double: the account's REST balance reads report the
declared wallet and available balance (``ScenarioExchange``), so sizing reads the same numbers;
margin checks use the larger of the declared and the simulated available balance.

Each scenario runs in its own ``asyncio.run``; nothing sleeps (a request the venue never answers
times out at once in the transport).
"""

from __future__ import annotations

import asyncio
import copy
import difflib
import json
import logging
import secrets
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

from binance import parse
from binance.errors import BinanceError
from binance.executor import Executor, observed
from binance.rest import BinanceRest
from binance.sim.clock import SimClock
from binance.sim.exchange import SimAlgo, SimError, SimExchange, SimOrder, SimSymbol
from binance.sim.inproc import Exchanged, InProcessTransport
from binance.sim.server import RestFault, SimVenue
from binance.streams import PremiumIndexPoller
from fsm import commands as cmd
from fsm import events as ev
from fsm.harness.scenario import (
    ENTRY_TEMPLATE,
    ORDER_TYPES,
    RISK_TEMPLATE,
    RULE_KEYS,
    T0_MS,
    Rule,
    Runner,
    ScenarioError,
    ScenarioResult,
    StepResult,
    _describe,
    transition_line,
)
from fsm.journal import render
from telegram_ingest.grammar import parse_message

log = logging.getLogger(__name__)

Json = dict[str, Any]
KLINE_COUNT = 200  # the daemon reads the last 200 closed 3m candles at receipt (N-08)
BIG = Decimal("1000000000")
ORDER_PATH = "/fapi/v1/order"
ALGO_PATH = "/fapi/v1/algoOrder"
UNKNOWN_1007 = (  # binance-real-answers.md: POST /fapi/v1/algoOrder, HTTP 408
    "Timeout waiting for response from backend server. Send status unknown; execution status unknown."
)
# Scenarios that stay on the double: they script a venue state or answer Binance cannot produce.
DOUBLE_ONLY: dict[str, str] = {
    "G01": "a resting reduce-only BUY with no position to reduce: Binance refuses it (-2022)",
    "R22": "a position of 0.0004 with a 0.001 lot step: no trade on Binance can leave it",
    # The simulated venue pushes every order it takes on the user stream, so these stay silent only on
    # the double; tests/runtime/test_unknown_outcome.py drops the push through the real daemon.
    "U02-entry-found": "the user stream stays silent about an order the venue took",
    "U04-query-fails": "the user stream stays silent about an order the venue took",
    "U05-tp-unknown-then-loss-cut": "the user stream stays silent about an order the venue took",
    "R11-close-after-cancel-race": "a trade scripted inside the cancel's own round trip",
    "R20-lost-fill-push": "one push lost while the others arrive (the sim drops all or none)",
    "R21-close-refused-venue-flat": "a position gone from the venue with no push at all",
}


# ---------------------------------------------------------------------------------------------
# The exchange, shaped by the scenario
# ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class ScenarioSymbol(SimSymbol):
    """A symbol whose MARKET_LOT_SIZE may differ from its LOT_SIZE (as on Binance)."""

    market_step: Decimal | None = None
    market_min_qty: Decimal | None = None

    def entry(self) -> Json:
        out = SimSymbol.entry(self)
        for f in out["filters"]:
            if f["filterType"] == "MARKET_LOT_SIZE":
                if self.market_step is not None:
                    f["stepSize"] = format(self.market_step, "f")
                if self.market_min_qty is not None:
                    f["minQty"] = format(self.market_min_qty, "f")
        return out


class ScenarioExchange(SimExchange):
    """``SimExchange`` whose balance reads report the scenario's declared wallet and available
    balance (margin held elsewhere on the account), plus scripted direct fills."""

    def __init__(self, *, wallet: Decimal, available: Decimal, **kwargs: Any) -> None:
        super().__init__(balance=wallet, **kwargs)
        self.declared_wallet = wallet
        self.declared_available = available

    def balance(self, params: dict[str, str]) -> list[Json]:
        rows = super().balance(params)
        for row in rows:
            row["balance"] = row["crossWalletBalance"] = format(self.declared_wallet, "f")
            row["availableBalance"] = row["maxWithdrawAmount"] = format(self.declared_available, "f")
        return rows

    def available_balance(self) -> Decimal:
        return max(super().available_balance(), self.declared_available)

    def fill_order(self, order: SimOrder, qty: Decimal, price: Decimal) -> None:
        """A trade against ``order`` now, whatever its fill policy (a scripted fill).

        A fill of an order our cancel already removed is the race Binance has: the trade was matched
        just before the cancel and its push arrives after the cancel's answer.
        """
        status = order.status
        if status == "CANCELED":
            order.status = "PARTIALLY_FILLED" if order.executed else "NEW"
        elif not order.is_open:
            raise SimError(-2013, f"order {order.client_id} is {order.status}: nothing left to fill")
        self._fill(order, min(qty, order.remaining), price, maker=True)
        if status == "CANCELED":
            order.status = status

    def mark_payload(self, symbol: str) -> Json:
        """The push with the mark at 8 decimals, as Binance writes it."""
        payload = super().mark_payload(symbol)
        payload["p"] = format(self.marks[symbol].quantize(Decimal("1e-8")), "f")
        return payload


def _http_status(code: int) -> int:
    """The HTTP status Binance answers a given error code with."""
    if code in (-1003, -1015):
        return 429
    if code in (-1002, -1022, -2014, -2015):
        return 401
    if code in (-1000, -1001, -1006, -1007):
        return 500
    return 400


def _error_fault(
    method: str, path: str, code: int, message: str, count: int = 1, retry_after_s: int | None = None
) -> RestFault:
    body = json.dumps({"code": code, "msg": message or f"error {code}"}, separators=(",", ":"))
    return RestFault(
        method, path, "status", status=_http_status(code), body=body, count=count, retry_after_s=retry_after_s
    )


# ---------------------------------------------------------------------------------------------
# The runner
# ---------------------------------------------------------------------------------------------


class SimRunner(Runner):
    """Runs one scenario document against ``binance.sim``; see the module docstring."""

    def __init__(self, doc: dict[str, Any]) -> None:
        super().__init__(doc)
        history = [c.open_time_ms for candles in self.venue.klines.values() for c in candles]
        self.clock = SimClock(min([T0_MS, *history]))
        self.api_key = f"replay-{secrets.token_hex(4)}"
        self._secret = secrets.token_hex(16)  # a throwaway credential for the in-process venue
        self.exchange = ScenarioExchange(
            wallet=self.venue.wallet,
            available=self.venue.available,
            clock=self.clock,
            api_keys={self.api_key: self._secret},
            hedge_mode=self.venue.position_mode == "HEDGE",
            symbols=[(self._sim_symbol(s), self._first_mark(s)) for s in self.venue.symbols],
        )
        self.exchange.default_fill_policy = "never"  # LIMIT fills are scripted by the scenario
        self.sim = SimVenue(self.exchange)
        self.transport = InProcessTransport(self.sim)
        self.exchange.user_listeners.append(self._on_user)
        self.pending: list[Json] = []
        self.legs: dict[str, str] = {}  # our client ids -> leg
        self.outcomes: list[tuple[cmd.Command, str]] = []  # this step's commands and venue results
        self.venue_lines: list[str] = []  # this step's direct venue actions
        self.foreign = 0
        self.events_handled = 0  # every event the engine took, answers included (the replay bench)
        self.future: list[tuple[int, str, Decimal]] = []
        self.verdicts: list[Verdicts] = []
        self.rest: BinanceRest | None = None
        self.executor: Executor | None = None
        self._install_history()

    # -- setup -------------------------------------------------------------------------------------

    def _sim_symbol(self, symbol: str) -> ScenarioSymbol:
        info = self.venue.symbols[symbol]
        spec = (self.doc.get("venue") or {}).get("symbols", {}).get(symbol) or {}
        max_qty = info.max_qty if info.max_qty > 0 else BIG
        return ScenarioSymbol(
            symbol,
            info.tick_size,
            info.step_size,
            info.min_qty,
            max_qty,
            info.market_max_qty or max_qty,
            info.min_notional,
            info.tick_size,  # minPrice: a multiple of the tick, as on Binance
            BIG,
            info.status,
            market_step=info.market_step_size,
            market_min_qty=info.market_min_qty if "market_min_qty" in spec else None,
            # Listed when the scenario's history begins: klines answer exactly the declared candles,
            # as Binance answers nothing before a symbol's onboard date.
            onboard_ms=self.clock.now_ms(),
        )

    def _first_mark(self, symbol: str) -> Decimal:
        candles = self.venue.klines.get(symbol)
        if candles:
            return candles[0].open
        for step in self.doc.get("steps") or []:
            for key in ("mark", "rest_mark"):
                value = (step.get(key) or {}).get(symbol)
                if value is not None:
                    return Decimal(str(value["price"] if isinstance(value, dict) else value))
        return Decimal(1)

    def _install_history(self) -> None:
        """The scenario's 3m candles become the exchange's price history before t=0."""
        points: list[tuple[int, str, Decimal]] = []
        for symbol, candles in self.venue.klines.items():
            for c in candles:
                t = c.open_time_ms
                points += [(t, symbol, c.open), (t + 1, symbol, c.high), (t + 2, symbol, c.low)]
                points.append((t + 3, symbol, c.close))
        points = sorted((p for p in points if p[1] in self.exchange.symbols), key=lambda p: p[0])
        self.future = [p for p in points if p[0] >= T0_MS]  # candles at or after t=0: a price path
        for at, symbol, price in points:
            if at < T0_MS:
                self.clock.set(at)
                self.exchange.set_mark(symbol, price)
        self.clock.set(T0_MS)
        self.pending.clear()

    def _advance(self, target_ms: int) -> list[ev.Event]:
        """Move the clock to ``target_ms``, applying the price path's points on the way."""
        while self.future and self.future[0][0] <= target_ms:
            at, symbol, price = self.future.pop(0)
            self.clock.set(max(at, self.clock.now_ms()))
            self.exchange.set_mark(symbol, price)
        self.clock.set(target_ms)
        self.now_ms = target_ms
        self.exchange.pump()
        return self._venue_action("price path") if self.pending else []

    def _open_client(self) -> None:
        self.rest = BinanceRest(
            api_key=self.api_key,
            api_secret=self._secret,
            base_url="http://sim.invalid",
            clock_ms=self.clock.now_ms,
            transport=self.transport,
        )
        self.executor = Executor(self.rest)

    async def _close_client(self) -> None:
        if self.rest is not None:
            await self.rest.aclose()

    def _client(self) -> BinanceRest:
        if self.rest is None:
            raise ScenarioError("the REST client is not open")
        return self.rest

    # -- user stream ---------------------------------------------------------------------------------

    def _on_user(self, payload: Json, only_key: str | None) -> None:
        self.pending.append(payload)

    def _drain(self) -> list[ev.Event]:
        payloads, self.pending = self.pending, []
        out: list[ev.Event] = []
        for payload in payloads:
            out.extend(e for e in parse.decode_message(payload, self.now_ms) if isinstance(e, ev.Event))
        return out

    def _venue_action(self, what: str) -> list[ev.Event]:
        """The user-stream events a direct venue action produced, with a trace line."""
        lines = [_payload_line(p) for p in self.pending]
        self.venue_lines.append(f"venue: {what}" + (f" -> {'; '.join(lines)}" if lines else ""))
        return self._drain()

    @contextmanager
    def _faults(self, faults: list[RestFault]) -> Iterator[None]:
        """Inject ``faults`` for the duration of one call; whatever was not consumed is withdrawn."""
        for f in faults:
            self.sim.faults.add(f)
        try:
            yield
        finally:
            for f in faults:
                if f in self.sim.faults.queue:
                    self.sim.faults.queue.remove(f)

    # -- steps -----------------------------------------------------------------------------------------

    async def sim_step_events(self, step: dict[str, Any]) -> list[ev.Event]:
        s = self.strategy
        now = self.now_ms
        out: list[ev.Event] = []
        if "ws" in step:
            self.ws_alive = step["ws"] == "up"
            out.append(
                ev.WsStatusChanged(now_ms=now, connected=self.ws_alive, reason=str(step.get("ws_reason", "")))
            )
        if "restart" in step:
            out.extend(self._restart())
            await self._close_client()
            self._open_client()
        if "settings" in step:
            changes = tuple((k, str(v)) for k, v in step["settings"].items())
            out.append(ev.SettingsChangeRequested(now_ms=now, changes=changes))
        if "pause" in step:
            out.append(ev.PauseRequested(now_ms=now, paused=bool(step["pause"])))
        if "exchange_info" in step:
            self.venue.exchange_info_ok = step["exchange_info"] == "up"
        if "leading" in step:
            spec = step["leading"]
            out.append(
                await self._sim_message(
                    int(spec.get("chat", s.entry_chat_id)), spec, self._leading_text(spec)
                )
            )
        if "risk" in step:
            spec = step["risk"]
            text = str(spec.get("text") or RISK_TEMPLATE.format(symbol=spec.get("symbol", "BTCUSDT")))
            out.append(await self._sim_message(int(spec.get("chat", s.risk_chat_id)), spec, text))
        if "entry_signal" in step:
            spec = step["entry_signal"]
            text = str(spec.get("text") or ENTRY_TEMPLATE.format(symbol=spec.get("symbol", "BTCUSDT")))
            out.append(await self._sim_message(int(spec.get("chat", s.entry_chat_id)), spec, text))
        if "message" in step:
            spec = step["message"]
            chat = {"entry": s.entry_chat_id, "risk": s.risk_chat_id}.get(str(spec.get("chat")))
            out.append(
                await self._sim_message(
                    int(chat if chat is not None else spec["chat"]), spec, str(spec["text"])
                )
            )
        for key in RULE_KEYS:
            if key in step:
                spec = dict(step[key])
                kind = {"reject_next": "reject"}.get(key, key)
                leg = spec.pop("leg", None)
                self.venue.rules.append(Rule(kind, leg, int(spec.pop("times", 1)), spec))
        if "balance" in step:
            self.venue.wallet = Decimal(str(step["balance"].get("wallet", self.venue.wallet)))
            self.venue.available = Decimal(str(step["balance"].get("available", self.venue.available)))
            self.exchange.declared_wallet = self.venue.wallet
            self.exchange.declared_available = self.venue.available
        if "manual_order" in step:
            out.extend(self._sim_manual_order(step["manual_order"]))
        if "fill" in step:
            out.extend(self._sim_fill(step["fill"]))
        if "venue_cancel" in step:
            out.extend(self._sim_venue_cancel(step["venue_cancel"]))
        if "algo_trigger" in step:
            out.extend(self._sim_algo_trigger(step["algo_trigger"], step.get("mark") or {}))
        if "position" in step:
            for symbol, amount in step["position"].items():
                out.extend(self._sim_position(str(symbol), Decimal(str(amount))))
        if "venue_error" in step:
            out.extend(await self._sim_venue_error(step["venue_error"]))
        if "venue_ok" in step:
            for _ in range(int(step["venue_ok"])):
                await self._client().balance()
                out.append(ev.VenueCallSucceeded(now_ms=now))
            self.venue_lines.append(f"venue: {int(step['venue_ok'])} account reads answered")
        if "rest_fail" in step:
            out.extend(await self._sim_rest_fail(str(step["rest_fail"])))
        if "rest_mark" in step:
            for symbol, spec in step["rest_mark"].items():
                out.extend(await self._sim_rest_mark(str(symbol), spec))
        if "mark" in step:
            for symbol, price in step["mark"].items():
                self.venue.marks[symbol] = Decimal(str(price))
                self.exchange.set_mark(str(symbol), Decimal(str(price)))
                if self.ws_alive:
                    out.append(parse.mark_price_from_ws(self.exchange.mark_payload(str(symbol)), now))
                if self.pending:
                    out.extend(self._venue_action(f"mark {symbol} {price}"))
        if step.get("tick", "mark" in step or "rest_mark" in step):
            if self.ws_alive and "mark" not in step:
                self.exchange.publish_marks()  # the 1 s push repeats every mark
                for symbol in sorted(self.venue.marks):
                    out.append(parse.mark_price_from_ws(self.exchange.mark_payload(symbol), now))
            out.append(ev.Tick(now_ms=now))
        return out

    async def _sim_message(self, chat_id: int, spec: dict[str, Any], text: str) -> ev.MessageReceived:
        """Enriched as the daemon does: exchangeInfo entry, then the closed 3m candles at receipt."""
        now = self.now_ms
        parsed = parse_message(text)
        symbol = getattr(parsed, "symbol", None)
        rest = self._client()
        faults: list[RestFault] = []
        if not self.venue.exchange_info_ok or spec.get("exchange_info_down"):
            faults.append(_error_fault("GET", "/fapi/v1/exchangeInfo", -1001, "Internal error", count=5))
        if spec.get("klines_unavailable"):
            faults.append(_error_fault("GET", "/fapi/v1/klines", -1001, "Internal error", count=5))
        info_ok, info = True, None
        klines: tuple[ev.Candle, ...] | None = None
        with self._faults(faults):
            if isinstance(symbol, str):
                try:
                    info = parse.symbol_infos(await rest.exchange_info(refresh=True)).get(symbol)
                except (BinanceError, KeyError, ValueError, TypeError) as exc:
                    log.info("exchangeInfo unavailable: %s", exc)
                    info_ok = False
            if isinstance(parsed, ev.LeadingMarket) and info is not None and info.status == "TRADING":
                try:
                    rows = await rest.klines(parsed.symbol, "3m", end_ms=now, limit=KLINE_COUNT + 1)
                    candles = [c for c in parse.candles_from_rest(rows) if c.close_time_ms < now]
                    klines = tuple(candles[-KLINE_COUNT:])
                except (BinanceError, ValueError) as exc:
                    log.info("klines of %s unavailable: %s", parsed.symbol, exc)
        return ev.MessageReceived(
            now_ms=now,
            chat_id=chat_id,
            message_id=int(spec["id"]),
            telegram_date_ms=now - int(float(spec.get("age_s", 1)) * 1000),
            parsed=parsed,
            exchange_info_ok=info_ok,
            symbol_info=info,
            klines=klines,
        )

    # -- direct venue actions ------------------------------------------------------------------------

    def _sim_order(self, spec: dict[str, Any]) -> SimOrder:
        if "cid" in spec:
            cids = [str(spec["cid"])]
        else:
            leg = str(spec["leg"])
            cids = [c for c, lg in self.legs.items() if lg == leg]
        symbol = spec.get("symbol")
        found = [
            o
            for o in self.exchange.orders.values()
            if o.client_id in cids and (symbol is None or o.symbol == symbol)
        ]
        if not found:
            raise ScenarioError(f"no venue order for {spec.get('cid', spec.get('leg'))}")
        # The last one placed; an open one before a finished one with the same id.
        return max(found, key=lambda o: (cids.index(o.client_id), o.is_open, o.order_id))

    def _sim_algo(self, spec: dict[str, Any]) -> SimAlgo:
        if "cid" in spec:
            cids = [str(spec["cid"])]
        else:
            cids = [c for c, lg in self.legs.items() if lg == str(spec["leg"])]
        found = [a for a in self.exchange.algos.values() if a.client_algo_id in cids]
        if not found:
            raise ScenarioError(f"no venue stop for {spec.get('cid', spec.get('leg'))}")
        return max(found, key=lambda a: (cids.index(a.client_algo_id), a.algo_id))

    def _sim_fill(self, spec: dict[str, Any]) -> list[ev.Event]:
        order = self._sim_order(spec)
        qty = Decimal(str(spec["qty"])) if "qty" in spec else order.remaining
        mark = self.exchange.marks[order.symbol]
        price = Decimal(str(spec.get("price", order.price if order.price > 0 else mark)))
        if spec.get("duplicate"):
            self.exchange.user_faults.duplicate_next += 1
        try:
            self.exchange.fill_order(order, qty, price)
        except SimError as err:
            raise ScenarioError(f"the venue cannot fill {order.client_id}: {err.msg}") from err
        events = self._venue_action(f"fills {order.client_id} {qty} @ {price}")
        if spec.get("unseen"):  # the daemon is down (killed): nobody hears the pushes
            return []
        if not spec.get("position_event", True):
            events = [e for e in events if not isinstance(e, ev.PositionChanged)]
        return events

    def _sim_venue_cancel(self, spec: dict[str, Any]) -> list[ev.Event]:
        cid = str(spec.get("cid", ""))
        is_algo = any(a.client_algo_id == cid for a in self.exchange.algos.values()) or (
            "leg" in spec and any(lg == spec["leg"] for c, lg in self.legs.items() if c in self._algo_ids())
        )
        try:
            if is_algo:
                stop = self._sim_algo(spec)
                cid = stop.client_algo_id
                self.exchange.cancel_algo_order({"algoId": str(stop.algo_id)})
            else:
                order = self._sim_order(spec)
                cid = order.client_id
                self.exchange.cancel_order({"symbol": order.symbol, "orderId": str(order.order_id)})
        except SimError as err:
            raise ScenarioError(f"the venue cannot cancel {cid}: {err.msg}") from err
        told = self._venue_action(
            f"a person cancels {cid}" + (" (its push lost)" if spec.get("silent") else "")
        )
        return [] if spec.get("silent") else told

    def _algo_ids(self) -> set[str]:
        return {a.client_algo_id for a in self.exchange.algos.values()}

    def _sim_manual_order(self, spec: dict[str, Any]) -> list[ev.Event]:
        params = {
            "symbol": str(spec["symbol"]),
            "side": str(spec.get("side", "SELL")),
            "type": "LIMIT",
            "timeInForce": "GTC",
            "quantity": str(spec.get("qty", "1")),
            "price": str(spec.get("price", "1")),
            "newClientOrderId": str(spec.get("cid", "web_manual_1")),
        }
        if spec.get("reduce_only"):
            params["reduceOnly"] = "true"
        try:
            self.exchange.new_order(params)
        except SimError as err:
            raise ScenarioError(f"the venue refuses the manual order: {err.code} {err.msg}") from err
        return self._venue_action(f"a person places {params['newClientOrderId']} on the web")

    def _sim_position(self, symbol: str, target: Decimal) -> list[ev.Event]:
        """The position changes from outside the bot: a market order placed on the web."""
        pos = self.exchange.positions.get((symbol, "BOTH"))
        delta = target - (pos.amount if pos else Decimal(0))
        if delta == 0:
            return []
        self.foreign += 1
        params = {
            "symbol": symbol,
            "side": "BUY" if delta > 0 else "SELL",
            "type": "MARKET",
            "quantity": format(abs(delta), "f"),
            "newClientOrderId": f"web_{self.foreign}",
        }
        try:
            self.exchange.new_order(params)
        except SimError as err:
            raise ScenarioError(f"the venue refuses the manual market order: {err.code} {err.msg}") from err
        return self._venue_action(f"a person trades {params['side']} {abs(delta)} {symbol} on the web")

    def _sim_algo_trigger(self, spec: dict[str, Any], step_marks: dict[str, Any]) -> list[ev.Event]:
        """The stop fires on the mark: the step's mark when it crosses, else the trigger price."""
        stop = self._sim_algo(spec)
        if stop.status == "NEW":
            price = stop.trigger
            if stop.symbol in step_marks:
                candidate = Decimal(str(step_marks[stop.symbol]))
                crosses = candidate >= stop.trigger if stop.side == "BUY" else candidate <= stop.trigger
                price = candidate if crosses else price
            self.exchange.set_mark(stop.symbol, price)
        events = self._venue_action(f"stop {stop.client_algo_id} triggers")
        if spec.get("fill_first"):  # the child's fill can arrive before ALGO_UPDATE names it
            events.sort(key=lambda e: isinstance(e, ev.AlgoOrderUpdated))
        return events

    async def _sim_venue_error(self, spec: dict[str, Any]) -> list[ev.Event]:
        """Failures answered to the runtime's account reads, classified by the real client."""
        code = int(spec.get("code", 0))
        category = str(spec["category"])
        if category == "rate_limited" and code >= 0:
            code = -1003
        elif category == "auth" and code >= 0:
            code = -2015
        elif category == "timestamp" and code >= 0:
            code = -1021
        out: list[ev.Event] = []
        # A 1 s Retry-After: without one the client backs off to the next venue minute (issue #12).
        wait = 1 if category == "rate_limited" else None
        for _ in range(int(spec.get("times", 1))):
            count = 2 if category == "timestamp" else 1  # the client re-syncs and retries once
            with self._faults(
                [_error_fault("GET", "/fapi/v3/balance", code, str(spec.get("message", "")), count, wait)]
            ):
                try:
                    await self._client().balance()
                except BinanceError as err:
                    out.extend(observed(err, self.now_ms))
                    self.venue_lines.append(f"venue: account read -> {err.http_status} {err.code} {err.msg}")
                    continue
            raise ScenarioError(f"the account read did not fail with {code}")
        return out

    async def _poll(self, symbol: str) -> list[ev.Event]:
        poller = PremiumIndexPoller(self._client(), _ignore_event, clock_ms=self.clock.now_ms)
        poller.set_symbols([symbol])
        return await poller.poll_once()

    async def _sim_rest_fail(self, reason: str) -> list[ev.Event]:
        symbol = next(iter(sorted(self.venue.marks)), next(iter(self.venue.symbols), "BTCUSDT"))
        status = int(reason.split()[-1]) if reason.split()[-1].isdigit() else 503
        fault = RestFault("GET", "/fapi/v1/premiumIndex", "html", status=status)
        with self._faults([fault]):
            events = await self._poll(symbol)
        self.venue_lines.append(f"venue: premiumIndex -> HTTP {status}")
        return events

    async def _sim_rest_mark(self, symbol: str, spec: Any) -> list[ev.Event]:
        price = Decimal(str(spec["price"] if isinstance(spec, dict) else spec))
        age_ms = int(float(spec.get("age_s", 0)) * 1000) if isinstance(spec, dict) else 0
        self.venue.marks[symbol] = price
        self.exchange.set_mark(symbol, price)
        out = self._venue_action(f"mark {symbol} {price}") if self.pending else []
        if age_ms:  # the venue's premiumIndex still shows an older mark time
            frozen = self.exchange.premium_index({"symbol": symbol})
            self.exchange.stale_premium[symbol] = {**frozen, "time": self.now_ms - age_ms}
        try:
            out = [*await self._poll(symbol), *out]
        finally:
            self.exchange.stale_premium.pop(symbol, None)
        return out

    # -- commands --------------------------------------------------------------------------------------

    def _command_faults(self, command: cmd.Command) -> list[RestFault]:
        """The scripted venue behaviour for this command, as faults on the request it makes."""
        venue = self.venue
        if isinstance(command, (cmd.PlaceOrder, cmd.PlaceAlgoOrder)):
            path = ORDER_PATH if isinstance(command, cmd.PlaceOrder) else ALGO_PATH
            if venue.take_rule("no_answer", command.leg):
                return [RestFault("POST", path, "hang", after_accept=True, hang_s=0.0)]
            unknown = venue.take_rule("unknown", command.leg)
            if unknown:  # the answer is lost: 408 / -1007, with or without the order taken
                body = json.dumps({"code": -1007, "msg": UNKNOWN_1007}, separators=(",", ":"))
                accepted = bool(unknown.params.get("accepted", True))
                return [RestFault("POST", path, "status", status=408, body=body, after_accept=accepted)]
            rule = venue.take_rule("reject", command.leg)
            if rule:
                code = int(rule.params.get("code", -1001))
                count = 2 if code in (-1021, -5028) else 1  # the client re-syncs time and retries once
                wait = rule.params.get("retry_after_s")
                message = str(rule.params.get("message", "rejected"))
                return [_error_fault("POST", path, code, message, count, None if wait is None else int(wait))]
        if isinstance(command, (cmd.CancelOrder, cmd.CancelAlgoOrder)):
            cid = command.client_order_id if isinstance(command, cmd.CancelOrder) else command.client_algo_id
            rule = venue.take_rule("cancel_fail", self.legs.get(cid))
            if rule:
                path = ORDER_PATH if isinstance(command, cmd.CancelOrder) else ALGO_PATH
                message = str(rule.params.get("message", "Internal error; unable to process your request."))
                return [_error_fault("DELETE", path, int(rule.params.get("code", -1001)), message)]
        if isinstance(command, cmd.ProbeVenue) and venue.take_rule("auth_probe_fail", None):
            message = "Invalid API-key, IP, or permissions for action."
            return [_error_fault("GET", "/fapi/v3/balance", -2015, message)]
        if isinstance(command, cmd.ResolveOrder):
            if venue.take_rule("resolve_fail", self.legs.get(command.client_order_id)):
                path = ALGO_PATH if command.is_algo else ORDER_PATH
                return [_error_fault("GET", path, -1001, "Internal error; unable to process your request.")]
        if isinstance(command, cmd.PrepareOrder):
            rule = venue.take_rule("prepare_fail", command.leg)
            if rule:
                return self._prepare_faults(command, rule.params)
        return []

    def _prepare_faults(self, command: cmd.PrepareOrder, params: dict[str, Any]) -> list[RestFault]:
        mode = params.get("position_mode", "ONE_WAY")
        if mode == "HEDGE":
            self.exchange.hedge_mode = True  # the account really is in hedge mode
            return []
        reason = str(params.get("reason", ""))
        if ("position_mode" in params and mode is None) or "code" not in params:
            return [_error_fault("GET", "/fapi/v1/positionSide/dual", -1001, reason or "Internal error")]
        code = int(params["code"])
        ex = self.exchange
        if command.configure_margin and ex.margin_type.get(command.symbol) != command.margin_type.lower():
            path = "/fapi/v1/marginType"
        elif command.configure_margin and ex.leverage.get(command.symbol) != command.leverage:
            path = "/fapi/v1/leverage"
        else:
            return [_error_fault("GET", "/fapi/v3/balance", code, reason)]
        return [_error_fault("POST", path, code, reason, count=2)]  # the executor retries -4047 once

    async def answer_async(self, command: cmd.Command) -> list[ev.Event]:
        executor = self.executor
        if executor is None or not executor.handles(command):
            return []
        if isinstance(command, cmd.PlaceOrder):
            self.legs[command.client_order_id] = command.leg
        elif isinstance(command, cmd.PlaceAlgoOrder):
            self.legs[command.client_algo_id] = command.leg
        start = len(self.transport.log)
        with self._faults(self._command_faults(command)):
            events = await executor.execute(command, self.now_ms)
        calls = self.transport.log[start:]
        user = self._drain()
        self.outcomes.append((command, _outcome(events, user, calls)))
        return [*events, *user]

    async def feed_async(self, events: list[ev.Event]) -> list[cmd.Command]:
        """Feed events and the venue's answers until nothing is left; return every command, in the
        daemon's order (answers first in, first out, before the next outside event: ``Runner.feed``)."""
        outside = deque(events)
        front: deque[ev.Event] = deque()
        emitted: list[cmd.Command] = []
        guard = 0
        while front or outside:
            guard += 1
            if guard > 10_000:
                raise ScenarioError("runaway command/answer loop")
            event = front.popleft() if front else outside.popleft()
            commands = self.engine.handle(event)
            self.events_handled += 1
            emitted.extend(commands)
            for command in commands:
                front.extend(await self.answer_async(command))
        return emitted

    # -- driving -----------------------------------------------------------------------------------------

    async def run_async(self) -> ScenarioResult:
        self._open_client()
        try:
            return await self._run_steps()
        finally:
            await self._close_client()

    async def _run_steps(self) -> ScenarioResult:
        results: list[StepResult] = []
        for index, step in enumerate(self.doc.get("steps") or []):
            summary = _describe(step) or f"step {index}"
            label = f"{summary} -- {step['label']}" if step.get("label") else summary
            self.outcomes, self.venue_lines = [], []
            try:
                moved = self._advance(T0_MS + int(float(step.get("at", 0)) * 1000))
                commands = await self.feed_async([*moved, *await self.sim_step_events(step)])
            except (ScenarioError, KeyError, ValueError, TypeError) as exc:
                results.append(
                    StepResult(self.now_ms, label, list(self.venue_lines), [f"scenario error: {exc!r}"])
                )
                self.verdicts.append([])
                break
            rendered = [render(c) for c in commands if not isinstance(c, cmd.Log)]
            self.log.extend(rendered)
            failures = self.check(step.get("expect") or {}, commands)
            results.append(StepResult(self.now_ms, label, self._trace(commands), failures))
        spec = [str(s) for s in self.doc.get("spec") or []]
        return ScenarioResult(
            str(self.doc.get("id", "?")),
            str(self.doc.get("title", "")),
            spec,
            results,
            self.log,
            self.engine.snapshot(),
        )

    def _trace(self, commands: list[cmd.Command]) -> list[str]:
        trace = list(self.venue_lines)
        trace += [transition_line(c) for c in commands if isinstance(c, cmd.Transitioned)]
        outcomes = self.outcomes
        for c in commands:
            if type(c) not in ORDER_TYPES:
                continue
            trace.append(render(c))
            result = next((r for o, r in outcomes if o is c), None)
            if result:
                trace.append(f"  => {result}")
        return trace

    def run(self) -> ScenarioResult:
        return asyncio.run(self.run_async())

    def check(self, expect: dict[str, Any], commands: list[cmd.Command]) -> list[str]:
        self.verdicts += _check_each(self, expect, commands)
        return [f for _, failures in self.verdicts[-1] for f in failures]


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


async def _ignore_event(event: ev.Event) -> None:
    return None


def _payload_line(payload: Json) -> str:
    kind = str(payload.get("e", "?"))
    o = payload.get("o") if isinstance(payload.get("o"), dict) else {}
    assert isinstance(o, dict)
    if kind == "ORDER_TRADE_UPDATE":
        fill = f" {o.get('l')}@{o.get('L')}" if o.get("x") == "TRADE" else ""
        return f"{o.get('c')} {o.get('X')}{fill}"
    if kind == "ALGO_UPDATE":
        return f"stop {o.get('caid')} {o.get('X')}"
    if kind == "ACCOUNT_UPDATE":
        rows = payload.get("a", {}).get("P", [])
        return ", ".join(f"position {p.get('s')} {p.get('pa')}" for p in rows) or "balance"
    return kind


def _outcome(events: list[ev.Event], user: list[ev.Event], calls: list[Exchanged]) -> str:
    """What the venue answered one command, in a few words."""
    parts: list[str] = []
    for e in events:
        if isinstance(e, ev.OrderAccepted):
            parts.append(f"accepted #{e.order_id}")
        elif isinstance(e, ev.AlgoOrderAccepted):
            parts.append(f"accepted algo #{e.algo_id}")
        elif isinstance(e, ev.OrderRejected):
            parts.append(f"rejected {e.code} {e.message}")
        elif isinstance(e, ev.CancelResult):
            parts.append("cancelled" if e.ok else f"cancel failed {e.code} {e.message}".rstrip())
        elif isinstance(e, ev.OrderPrepared):
            parts.append(
                f"ready {e.position_mode} wallet {e.wallet_balance} available {e.available_balance}"
                if e.ok
                else f"not ready: {e.reason}"
            )
        elif isinstance(e, ev.ExchangeSnapshot):
            parts.append(f"snapshot: {len(e.positions)} positions, {len(e.open_orders)} open orders")
        elif isinstance(e, ev.VenueErrorObserved):
            parts.append(f"{e.category} {e.code}")
    for e in user:
        if isinstance(e, ev.OrderUpdated) and e.last_qty:
            parts.append(f"filled {e.last_qty} @ {e.last_price}")
    http = ", ".join(f"{c.method} {c.path.removeprefix('/fapi/')} {c.status or 'timeout'}" for c in calls)
    return "; ".join(parts) + (f"  [{http}]" if http else "")


# ---------------------------------------------------------------------------------------------
# Replays with one verdict per expectation
# ---------------------------------------------------------------------------------------------

Verdicts = list[tuple[str, list[str]]]  # (expectation key, its failures) of one step


def _check_each(runner: Runner, expect: dict[str, Any], commands: list[cmd.Command]) -> list[Verdicts]:
    """Every expectation key checked on its own (``Runner.check`` treats them independently)."""
    return [[(str(key), Runner.check(runner, {key: expect[key]}, commands)) for key in expect]]


class DoubleRunner(Runner):
    """The venue double, recording one verdict per expectation."""

    def __init__(self, doc: dict[str, Any]) -> None:
        super().__init__(doc)
        self.verdicts: list[Verdicts] = []

    def check(self, expect: dict[str, Any], commands: list[cmd.Command]) -> list[str]:
        self.verdicts += _check_each(self, expect, commands)
        return [f for _, failures in self.verdicts[-1] for f in failures]


@dataclass
class Replay:
    """One scenario's run: the result, where it ran, and a verdict per expectation of every step."""

    result: ScenarioResult
    venue: str  # "sim" (binance/sim) or "double" (the scenario venue double)
    reason: str  # why it ran on the double, if it did
    verdicts: list[Verdicts]  # one list per step of the result
    requests: list[Exchanged]  # every REST request that reached the simulated venue


def replay(doc: dict[str, Any], *, venue: str = "sim") -> Replay:
    """Run one scenario document on ``venue`` ("sim" or "double"); ``DOUBLE_ONLY`` ones stay on the
    double whatever is asked."""
    sid = str(doc.get("id"))
    runner: DoubleRunner | SimRunner
    if venue == "double" or sid in DOUBLE_ONLY:
        runner = DoubleRunner(copy.deepcopy(doc))
        reason = DOUBLE_ONLY.get(sid, "") if venue != "double" else ""
        result = runner.run()
        requests: list[Exchanged] = []
        where = "double"
    else:
        runner = SimRunner(copy.deepcopy(doc))
        result = runner.run()
        requests, reason, where = runner.transport.log, "", "sim"
    verdicts = runner.verdicts + [[] for _ in range(len(result.steps) - len(runner.verdicts))]
    return Replay(result, where, reason, verdicts[: len(result.steps)], requests)


def run_sim_scenario(doc: dict[str, Any]) -> ScenarioResult:
    """One scenario through the simulated venue (the double for ``DOUBLE_ONLY`` scenarios)."""
    return replay(doc).result


# ---------------------------------------------------------------------------------------------
# Scenario file checks: typos reported with file and line
# ---------------------------------------------------------------------------------------------

TOP_KEYS = frozenset(
    {"id", "title", "spec", "config", "start_recovering", "manual_market_fills", "venue", "steps"}
)
VENUE_KEYS = frozenset({"position_mode", "wallet", "available", "symbols", "klines"})
STEP_KEYS = frozenset(
    {
        "at", "label", "expect", "ws", "ws_reason", "restart", "settings", "pause", "exchange_info",
        "leading", "risk", "entry_signal", "message", "balance", "manual_order", "fill", "venue_cancel",
        "algo_trigger", "position", "venue_position", "venue_error", "venue_ok", "rest_fail", "rest_mark",
        "mark", "tick",
        *RULE_KEYS,
    }
)  # fmt: skip
EXPECT_KEYS = frozenset(
    {
        "transitions", "close", "triggers", "armed", "orders", "commands", "absent", "states", "close_states",
        "locks", "position", "logs", "notify", "cooldown", "cursor", "price_source", "strategy",
    }
)  # fmt: skip


def check_file(path: Path) -> list[str]:
    """Problems of one scenario file as ``file:line: message`` (YAML errors, unknown keys)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return [f"{path}: cannot read: {exc}"]
    try:
        documents = list(yaml.compose_all(text))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
        if context and context_mark is not None:
            problem += f" ({context} started at line {context_mark.line + 1})"
        return [f"{where}: YAML error: {problem}"]
    problems: list[str] = []

    def keys(node: yaml.Node, allowed: frozenset[str], what: str) -> dict[str, yaml.Node]:
        found: dict[str, yaml.Node] = {}
        if not isinstance(node, yaml.MappingNode):
            problems.append(f"{path}:{node.start_mark.line + 1}: {what} must be a mapping")
            return found
        for key_node, value_node in node.value:
            key = str(key_node.value)
            found[key] = value_node
            if key not in allowed:
                close = difflib.get_close_matches(key, sorted(allowed), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                problems.append(f"{path}:{key_node.start_mark.line + 1}: unknown {what} key {key!r}{hint}")
        return found

    for doc in documents:
        if doc is None:
            continue
        top = keys(doc, TOP_KEYS, "scenario")
        if "venue" in top:
            keys(top["venue"], VENUE_KEYS, "venue")
        steps = top.get("steps")
        if isinstance(steps, yaml.SequenceNode):
            for step in steps.value:
                fields = keys(step, STEP_KEYS, "step")
                if "expect" in fields:
                    keys(fields["expect"], EXPECT_KEYS, "expect")
    return problems
