"""Carries out the core's order commands against the REST client and returns the outcome events.

``Executor.execute(cmd, now_ms)`` never raises for venue trouble: every failure becomes an event
(``OrderRejected``, ``CancelResult(ok=False)``, ``OrderPrepared(ok=False)``, an incomplete
``ExchangeSnapshot``) plus ``VenueErrorObserved`` for rate-limit/auth/timestamp failures, so the core
can run its protection modes (N-23..N-25). A successful signed call adds ``VenueCallSucceeded``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from binance import parse, reconcile
from binance.account_reads import AccountFacts, AccountReads
from binance.errors import (
    AlreadyFlat,
    AuthFailed,
    BinanceError,
    CloseStopExists,
    RateLimited,
    Rejected,
    TimestampRejected,
    UnknownOutcome,
    category,
    should_retry,
)
from binance.rest import BinanceRest
from fsm.commands import (
    CancelAlgoOrder,
    CancelOrder,
    Command,
    PlaceAlgoOrder,
    PlaceOrder,
    PrepareOrder,
    ProbeVenue,
    QueryExchange,
    ResolveOrder,
)
from fsm.events import (
    AlgoOrderAccepted,
    CancelResult,
    Event,
    ExchangeSnapshot,
    OpenOrderInfo,
    OrderAccepted,
    OrderOutcomeUnknown,
    OrderPrepared,
    OrderRejected,
    OrderResolved,
    PositionChanged,
    PositionInfo,
    PositionMode,
    SymbolInfo,
    VenueCallSucceeded,
    VenueErrorObserved,
)

log = logging.getLogger(__name__)
ZERO = Decimal(0)
POSITION_SIDE_MISMATCH = -4061  # "Order's position side does not match user's setting."


async def _nothing() -> list[Any]:
    return []


MIN_RATE_WAIT_MS = 1_000  # a rate-limit refusal with no known end waits at least this long


def _wait_ms(err: BinanceError) -> int:
    """How long the venue asked us to wait before sending again (429 Retry-After, 418 ban)."""
    if isinstance(err, RateLimited) and err.retry_after_s:
        return int(err.retry_after_s * 1000)
    return 0


def _raise_if_failed(result: Any) -> Any:
    """One result of ``gather(return_exceptions=True)``: re-raise what the call raised."""
    if isinstance(result, BaseException):
        raise result
    return result


GONE_CODES = frozenset({-2011, -2013})  # unknown order sent / order does not exist
NOT_FOUND_CODES = frozenset({-2013})  # a query of an id the venue does not know
# What Binance answers a query of an unknown algo id is undocumented (binance-usdm-2026.md: only
# -2011 on DELETE was seen live); -2013 is what the classic endpoint says, -2011 is taken as the same.
ALGO_NOT_FOUND_CODES = frozenset({-2013, -2011})
CLOSE_STOP_CANCEL_ATTEMPTS = 3  # -4130: tries to remove the stop that holds the place
RESOLVE_MARGIN_MS = 1_000  # past timestamp + recvWindow: room for the clock offset between us and the venue
OPEN_ORDERS_BLOCK_CODES = frozenset({-4047})  # margin type cannot change with open orders
ObservedCategory = Literal["rate_limited", "auth", "timestamp", "other"]


def observed(err: BinanceError, now_ms: int) -> list[Event]:
    """``VenueErrorObserved`` for the failures the core tracks globally; nothing for the rest."""
    cat: ObservedCategory | None = None
    if isinstance(err, RateLimited):
        cat = "rate_limited"
    elif isinstance(err, AuthFailed):
        cat = "auth"
    elif isinstance(err, TimestampRejected):
        cat = "timestamp"
    if cat is None:
        return []
    return [VenueErrorObserved(now_ms=now_ms, category=cat, code=err.code, message=err.msg)]


class Executor:
    """Maps one fsm command to REST calls; see the module docstring for the failure contract."""

    def __init__(self, rest: BinanceRest, *, asset: str = "USDT", reads: AccountReads | None = None) -> None:
        """``reads``: the account facts read ahead for a first entry (D-72); None reads at the trigger."""
        self.rest = rest
        self.asset = asset
        self.reads = reads
        self._handlers: dict[type[Command], Callable[[Any, int], Awaitable[list[Event]]]] = {
            PrepareOrder: self._prepare,
            PlaceOrder: self._place,
            PlaceAlgoOrder: self._place_algo,
            CancelOrder: self._cancel,
            CancelAlgoOrder: self._cancel_algo,
            QueryExchange: self._query,
            ResolveOrder: self._resolve,
            ProbeVenue: self._probe,
        }

    def handles(self, cmd: Command) -> bool:
        return type(cmd) in self._handlers

    async def execute(self, cmd: Command, now_ms: int) -> list[Event]:
        handler = self._handlers.get(type(cmd))
        if handler is None:
            log.warning("executor: no handler for %s", type(cmd).__name__)
            return []
        return await handler(cmd, now_ms)

    # ----------------------------------------------------------------------------------------

    async def _prepare(self, cmd: PrepareOrder, now_ms: int) -> list[Event]:
        def failed(err: BinanceError | None, reason: str, mode: PositionMode | None = None) -> list[Event]:
            ev: Event = OrderPrepared(
                now_ms=now_ms,
                symbol=cmd.symbol,
                leg=cmd.leg,
                ok=False,
                position_mode=mode,
                error_code=err.code if err else None,
                reason=reason,
            )
            return [ev, *(observed(err, now_ms) if err else [])]

        facts = (
            self.reads.usable(cmd.symbol, now_ms) if self.reads is not None and cmd.leg == "ENTRY1" else None
        )
        if facts is not None:
            return await self._prepare_from(cmd, facts, now_ms, failed)
        # The three reads are independent: sent together, the trigger-to-order path costs one
        # round trip for them instead of three (W24 runs right after the 0.1 % trigger).
        mode_res, risk_res, balance_res = await asyncio.gather(
            self.rest.position_mode(),
            self.rest.symbol_config(cmd.symbol) if cmd.configure_margin else _nothing(),
            self.rest.balance(),
            return_exceptions=True,
        )
        try:
            mode = parse.position_mode_from_rest(_raise_if_failed(mode_res))
        except BinanceError as err:
            return failed(err, f"position_mode_read_failed: {err.msg}")
        except (KeyError, ValueError, TypeError) as exc:
            return failed(None, f"position_mode_unreadable: {exc}")
        if cmd.configure_margin:
            try:
                rows = _raise_if_failed(risk_res)
                row = next((r for r in rows if r.get("symbol") == cmd.symbol), None)
                leverage = int(row["leverage"]) if row else None
                margin = str(row.get("marginType", "")).lower() if row else ""
                await self._configure(cmd, leverage, margin)
            except BinanceError as err:
                return failed(err, f"margin_config_failed: {err.msg}", mode)
            except (KeyError, ValueError, TypeError) as exc:
                return failed(None, f"margin_config_unreadable: {exc}", mode)
        try:
            wallet, available = parse.balance_from_rest(_raise_if_failed(balance_res), self.asset)
        except BinanceError as err:
            return failed(err, f"balance_read_failed: {err.msg}", mode)
        except (KeyError, ValueError, TypeError) as exc:
            return failed(None, f"balance_unreadable: {exc}", mode)
        return [
            OrderPrepared(
                now_ms=now_ms,
                symbol=cmd.symbol,
                leg=cmd.leg,
                ok=True,
                position_mode=mode,
                wallet_balance=wallet,
                available_balance=available,
            ),
            VenueCallSucceeded(now_ms=now_ms),
        ]

    async def _prepare_from(
        self,
        cmd: PrepareOrder,
        facts: AccountFacts,
        now_ms: int,
        failed: Callable[[BinanceError | None, str, PositionMode | None], list[Event]],
    ) -> list[Event]:
        """W24 on the facts read while monitoring (D-72): no read at the trigger; a leverage or
        margin type that differs is still set here, after the trigger (W17-1), then the order."""
        config = facts.configs[cmd.symbol]
        changed = config.leverage != cmd.leverage or config.margin_type.lower() != cmd.margin_type.lower()
        if changed:
            try:
                await self._configure(cmd, config.leverage, config.margin_type.lower())
            except BinanceError as err:
                return failed(err, f"margin_config_failed: {err.msg}", facts.position_mode)
            except (KeyError, ValueError, TypeError) as exc:
                return failed(None, f"margin_config_unreadable: {exc}", facts.position_mode)
        prepared = OrderPrepared(
            now_ms=now_ms,
            symbol=cmd.symbol,
            leg=cmd.leg,
            ok=True,
            position_mode=facts.position_mode,
            wallet_balance=facts.wallet_balance,
            available_balance=facts.available_balance,
        )
        # Only a call made now is told as one: the facts' own read was not the engine's.
        return [prepared, VenueCallSucceeded(now_ms=now_ms)] if changed else [prepared]

    async def _configure(self, cmd: PrepareOrder, leverage: int | None, margin: str) -> None:
        """W24/W25: set leverage and ISOLATED only when they differ (``margin`` in lower case); on
        "open orders" cancel that symbol's open orders and retry once."""
        if leverage != cmd.leverage:
            await self._with_order_cleanup(
                cmd.symbol, lambda: self.rest.set_leverage(cmd.symbol, cmd.leverage)
            )
        if margin != cmd.margin_type.lower():
            await self._with_order_cleanup(
                cmd.symbol, lambda: self.rest.set_margin_type(cmd.symbol, cmd.margin_type)
            )

    async def _with_order_cleanup(self, symbol: str, change: Callable[[], Awaitable[object]]) -> None:
        if self.reads is not None:  # a read ahead in flight or held may say the old setting (D-72)
            self.reads.invalidate(f"{symbol} leverage or margin type set")
        try:
            await change()
            return
        except Rejected as err:
            if err.code not in OPEN_ORDERS_BLOCK_CODES:
                raise
            log.warning(
                "%s: config change blocked by open orders (%d); cancelling them and retrying",
                symbol,
                err.code,
            )
        for order in await self.rest.open_orders(symbol):
            try:
                await self.rest.cancel_order(symbol, str(order["clientOrderId"]))
            except Rejected as err:
                if err.code not in GONE_CODES:
                    raise
        await change()

    # ----------------------------------------------------------------------------------------

    async def _place(self, cmd: PlaceOrder, now_ms: int) -> list[Event]:
        try:
            res = await self.rest.place_order(parse.order_params(cmd))
            order_id = parse.int_field(res["orderId"])
        except UnknownOutcome as err:
            return [self._unknown(cmd.symbol, cmd.client_order_id, False, now_ms, err.msg)]
        except AlreadyFlat as err:  # a reduce-only close refused: is the position still there?
            position = await self._position_now(cmd.symbol, now_ms)
            return [*position, self._rejected(cmd.symbol, cmd.client_order_id, err, now_ms)]
        except BinanceError as err:
            if err.code == POSITION_SIDE_MISMATCH and self.reads is not None:
                self.reads.invalidate("position mode changed on the venue")  # no push tells it
            return [self._rejected(cmd.symbol, cmd.client_order_id, err, now_ms)]
        except (KeyError, ValueError, TypeError) as exc:  # a 200 without a usable body: accepted or not?
            log.error("order %s: unusable answer (%s)", cmd.client_order_id, exc)
            return [self._unknown(cmd.symbol, cmd.client_order_id, False, now_ms, f"unusable answer: {exc}")]
        return [
            OrderAccepted(
                now_ms=now_ms, symbol=cmd.symbol, client_order_id=cmd.client_order_id, order_id=order_id
            ),
            VenueCallSucceeded(now_ms=now_ms),
        ]

    async def _place_algo(self, cmd: PlaceAlgoOrder, now_ms: int) -> list[Event]:
        params = parse.algo_params(cmd)
        try:
            try:
                res = await self.rest.place_algo_order(params)
            except CloseStopExists as err:
                # -4130: one closePosition stop per direction. Whatever holds the place (an older
                # stop of ours whose cancel has not landed, or a manual one) is replaced by ours:
                # R20 hands every exit order of the symbol to us (binance-real-answers.md).
                log.warning(
                    "algo order %s: %s; replacing the existing closePosition stop", cmd.client_algo_id, err
                )
                await self._cancel_close_stops(cmd.symbol, cmd.side)
                res = await self.rest.place_algo_order(params)
            algo_id = parse.int_field(res["algoId"])
        except UnknownOutcome as err:
            return [self._unknown(cmd.symbol, cmd.client_algo_id, True, now_ms, err.msg)]
        except AlreadyFlat as err:  # -4509: a closePosition stop on a flat symbol
            position = await self._position_now(cmd.symbol, now_ms)
            return [*position, self._rejected(cmd.symbol, cmd.client_algo_id, err, now_ms)]
        except BinanceError as err:
            return [self._rejected(cmd.symbol, cmd.client_algo_id, err, now_ms)]
        except (KeyError, ValueError, TypeError) as exc:
            log.error("algo order %s: unusable answer (%s)", cmd.client_algo_id, exc)
            return [self._unknown(cmd.symbol, cmd.client_algo_id, True, now_ms, f"unusable answer: {exc}")]
        return [
            AlgoOrderAccepted(
                now_ms=now_ms, symbol=cmd.symbol, client_algo_id=cmd.client_algo_id, algo_id=algo_id
            ),
            VenueCallSucceeded(now_ms=now_ms),
        ]

    async def _still_open(self, symbol: str, client_id: str, is_algo: bool) -> bool:
        """A cancel answered "unknown order" (-2011/-2013) is trusted only once the order's own
        status says it ended: the codes are not documented for algo orders and a cancel can race the
        order's acceptance (binance-usdm-2026.md, corrections). Unreadable: taken as still open, so
        the cancel is tried again rather than an order left live."""
        try:
            if is_algo:
                status = await self.rest.algo_order_status(client_id)
                return status == "NEW"
            answer = await self.rest.query_order(symbol, client_id)
            return str(answer.get("status")) in ("NEW", "PARTIALLY_FILLED")
        except Rejected as err:
            return err.code not in GONE_CODES  # the venue does not know it at all: gone
        except (BinanceError, KeyError, ValueError, TypeError) as exc:
            log.warning("cancel of %s: status unreadable after 'unknown order' (%s)", client_id, exc)
            return True

    async def _cancel_close_stops(self, symbol: str, side: str) -> None:
        """Cancel the open closePosition stops of ``symbol`` on ``side`` (the -4130 direction)."""
        for raw in await self.rest.open_algo_orders(symbol):
            try:
                order = parse.open_algo_order_from_rest(raw)
            except (KeyError, ValueError, TypeError) as exc:
                log.warning("openAlgoOrders row skipped: %s", exc)
                continue
            if order.close_position and order.side == side:
                for _ in range(CLOSE_STOP_CANCEL_ATTEMPTS):
                    try:
                        await self.rest.cancel_algo_order(order.client_order_id)
                        break
                    except Rejected as err:
                        # "Unknown order" is believed only once the stop's own status says it ended.
                        if err.code not in GONE_CODES or not await self._still_open(
                            symbol, order.client_order_id, True
                        ):
                            log.warning("cancel of %s: %s", order.client_order_id, err)
                            break

    async def _position_now(self, symbol: str, now_ms: int) -> list[Event]:
        """The venue's position of ``symbol`` now (our leg), fed before a refusal that says "no
        position" so that the engine decides on the venue's word; nothing when it cannot be read."""
        try:
            rows = await self.rest.position_risk(symbol)
            legs = parse.positions_by_key(rows)
        except (BinanceError, KeyError, ValueError, TypeError) as exc:
            log.warning("position of %s unreadable after a refused close: %s", symbol, exc)
            return []
        ours = [p for (s, side), p in legs.items() if s == symbol and side != "LONG"]
        amount = sum((p.amount for p in ours), ZERO)
        entry = ours[0].entry_price if ours else ZERO
        side = ours[0].position_side if ours else "BOTH"
        return [
            PositionChanged(
                now_ms=now_ms, symbol=symbol, amount=amount, entry_price=entry, position_side=side
            )
        ]

    def _unknown(self, symbol: str, client_id: str, is_algo: bool, now_ms: int, why: str) -> Event:
        """The request may have executed: the engine holds the order as UNKNOWN and asks for it once
        the request can no longer execute (its timestamp + recvWindow has passed)."""
        log.warning(
            "order %s %s: outcome unknown (%s); resolved by query, never resent first", symbol, client_id, why
        )
        return OrderOutcomeUnknown(
            now_ms=now_ms,
            symbol=symbol,
            client_order_id=client_id,
            is_algo=is_algo,
            resolve_after_ms=now_ms + self.rest.recv_window_ms + RESOLVE_MARGIN_MS,
            reason=why,
        )

    async def _probe(self, cmd: ProbeVenue, now_ms: int) -> list[Event]:
        """A signed read (the balance, weight 5): does the key work again, does the venue answer?"""
        try:
            await self.rest.balance()
        except BinanceError as err:
            log.warning("%s probe %d: %s", cmd.purpose, cmd.attempt, err)
            return observed(err, now_ms)
        return [VenueCallSucceeded(now_ms=now_ms, signed=True)]

    async def _resolve(self, cmd: ResolveOrder, now_ms: int) -> list[Event]:
        """Ask the venue for an order of unknown outcome: its fills and status (as the stream would
        have pushed them), then ``OrderResolved``."""

        def resolved(outcome: Literal["found", "absent", "failed"], **kw: Any) -> OrderResolved:
            return OrderResolved(
                now_ms=now_ms,
                symbol=cmd.symbol,
                client_order_id=cmd.client_order_id,
                is_algo=cmd.is_algo,
                outcome=outcome,
                **kw,
            )

        not_found = ALGO_NOT_FOUND_CODES if cmd.is_algo else NOT_FOUND_CODES
        try:
            if cmd.is_algo:
                answer = await self.rest.query_algo_order(cmd.client_order_id)
                status = str(answer["algoStatus"])
                order_id = parse.int_field(answer["algoId"])
                found = await reconcile.algo_events(self.rest, cmd.symbol, answer, ZERO, now_ms)
            else:
                answer = await self.rest.query_order(cmd.symbol, cmd.client_order_id)
                status = str(answer["status"])
                order_id = parse.int_field(answer["orderId"])
                found = await reconcile.order_events(self.rest, answer, ZERO, "UNKNOWN", now_ms)
        except Rejected as err:
            if err.code in not_found:
                return [
                    resolved("absent", message=f"{err.code} {err.msg}"),
                    VenueCallSucceeded(now_ms=now_ms),
                ]
            return [resolved("failed", message=f"{err.code} {err.msg}"), *observed(err, now_ms)]
        except BinanceError as err:
            return [resolved("failed", message=f"{err.code} {err.msg}"), *observed(err, now_ms)]
        except (KeyError, ValueError, TypeError) as exc:
            log.warning("resolving %s: unusable answer (%s)", cmd.client_order_id, exc)
            return [resolved("failed", message=f"unusable answer: {exc}")]
        return [
            *found,
            resolved("found", order_id=order_id, status=status),
            VenueCallSucceeded(now_ms=now_ms),
        ]

    @staticmethod
    def _rejected(symbol: str, client_id: str, err: BinanceError, now_ms: int) -> OrderRejected:
        log.warning("order %s %s rejected: %s", symbol, client_id, err)
        return OrderRejected(
            now_ms=now_ms,
            symbol=symbol,
            client_order_id=client_id,
            code=err.code,
            message=err.msg,
            retryable=should_retry(err),
            category=category(err),
            retry_after_ms=_wait_ms(err),
        )

    # ----------------------------------------------------------------------------------------

    async def _cancel(self, cmd: CancelOrder, now_ms: int) -> list[Event]:
        return await self._cancel_common(
            cmd.symbol,
            cmd.client_order_id,
            lambda: self.rest.cancel_order(cmd.symbol, cmd.client_order_id),
            False,
            now_ms,
        )

    async def _cancel_algo(self, cmd: CancelAlgoOrder, now_ms: int) -> list[Event]:
        return await self._cancel_common(
            cmd.symbol,
            cmd.client_algo_id,
            lambda: self.rest.cancel_algo_order(cmd.client_algo_id),
            True,
            now_ms,
        )

    def _cancel_wait_ms(self, err: BinanceError) -> int:
        """A cancel refused by the rate limits waits for their end as this client knows it: the
        venue's Retry-After, else the ban's end from its message, else the 429 back-off to the next
        minute (at least 1 s): never 0, which would make it one of R15's refusals (D-52)."""
        if not isinstance(err, RateLimited):
            return 0
        return max(_wait_ms(err), self.rest.limit_left_ms(), MIN_RATE_WAIT_MS)

    async def _cancel_common(
        self, symbol: str, client_id: str, call: Callable[[], Awaitable[object]], is_algo: bool, now_ms: int
    ) -> list[Event]:
        try:
            answer = await call()
        except BinanceError as err:
            gone = err.code in GONE_CODES and not await self._still_open(symbol, client_id, is_algo)
            result = CancelResult(
                now_ms=now_ms,
                symbol=symbol,
                client_order_id=client_id,
                ok=False,
                gone=gone,
                code=err.code,
                message=err.msg,
                is_algo=is_algo,
                retry_after_ms=self._cancel_wait_ms(err),
            )
            return [result, *observed(err, now_ms)]
        executed: Decimal | None = None
        if isinstance(answer, dict) and "executedQty" in answer:
            # The DELETE answer says how much filled before the cancel: a fill can race it.
            try:
                executed = Decimal(str(answer["executedQty"]))
            except (InvalidOperation, ValueError):
                executed = None
        return [
            CancelResult(
                now_ms=now_ms,
                symbol=symbol,
                client_order_id=client_id,
                ok=True,
                is_algo=is_algo,
                executed_qty=executed,
            ),
            VenueCallSucceeded(now_ms=now_ms),
        ]

    # ----------------------------------------------------------------------------------------

    async def _query(self, cmd: QueryExchange, now_ms: int) -> list[Event]:
        """Snapshot: mode, balance, positions, open orders AND open algo orders, their symbols' info."""
        complete = True
        extra: list[Event] = []

        def note(what: str, exc: Exception) -> None:
            nonlocal complete
            complete = False
            log.warning("snapshot: %s failed: %s", what, exc)
            if isinstance(exc, BinanceError):
                extra.extend(observed(exc, now_ms))

        mode: PositionMode | None = None
        wallet = available = Decimal("0")
        positions: list[PositionInfo] = []
        orders: list[OpenOrderInfo] = []
        infos: list[SymbolInfo] = []
        try:
            mode = parse.position_mode_from_rest(await self.rest.position_mode())
        except (BinanceError, KeyError, ValueError) as exc:
            note("position mode", exc)
        try:
            wallet, available = parse.balance_from_rest(await self.rest.balance(), self.asset)
        except (BinanceError, KeyError, ValueError) as exc:
            note("balance", exc)
        try:
            positions = parse.positions_from_rest(await self.rest.position_risk(cmd.symbol))
        except (BinanceError, KeyError, ValueError) as exc:
            note("positions", exc)
        try:
            orders.extend(parse.open_order_from_rest(o) for o in await self.rest.open_orders(cmd.symbol))
        except (BinanceError, KeyError, ValueError) as exc:
            note("open orders", exc)
        try:
            orders.extend(
                parse.open_algo_order_from_rest(o) for o in await self.rest.open_algo_orders(cmd.symbol)
            )
        except (BinanceError, KeyError, ValueError) as exc:
            note("open algo orders", exc)
        wanted = {p.symbol for p in positions} | {o.symbol for o in orders}
        if wanted:
            try:
                all_infos = parse.symbol_infos(await self.rest.exchange_info())
                infos = [all_infos[s] for s in sorted(wanted) if s in all_infos]
            except (BinanceError, KeyError, ValueError) as exc:
                note("exchange info", exc)
        snapshot = ExchangeSnapshot(
            now_ms=now_ms,
            position_mode=mode,
            wallet_balance=wallet,
            available_balance=available,
            positions=tuple(positions),
            open_orders=tuple(orders),
            symbols=tuple(infos),
            complete=complete,
            purpose=cmd.purpose,
            symbol=cmd.symbol,
        )
        tail: list[Event] = [VenueCallSucceeded(now_ms=now_ms)] if complete else []
        return [snapshot, *extra, *tail]
