"""The simulated USDⓈ-M exchange: an in-process, synchronous model of one account.

Theory of operation: every REST endpoint is a method taking the request's string parameters and
returning the JSON value Binance would answer, or raising ``SimError(code, msg, http_status)``.
Prices move only through ``set_mark`` / ``set_last`` (a script, a generator or a test); the mark
and the last (contract) price are kept apart (the last follows the mark unless told otherwise).
Each move updates the 1m price records behind the klines, fills resting LIMIT orders the last price
has reached (according to the order's fill policy), triggers algo orders on the price their
``workingType`` names, and pushes market data to ``market_listeners``. Account changes produce the
user-data events Binance sends (ORDER_TRADE_UPDATE, ACCOUNT_UPDATE, ALGO_UPDATE,
ACCOUNT_CONFIG_UPDATE, listenKeyExpired) to ``user_listeners``, through a small fault stage (delay on
the clock, duplicate, hold-and-release to reorder). Time comes from a ``Clock``; call ``pump()``
after moving a simulated clock.

What is modelled after Binance, with its source ("real" = /work/shared/reference/
binance-real-answers.md, March 2026; "usdm" = binance-usdm-2026.md, its corrections first):
- -4130 a second ``closePosition`` STOP (or TAKE_PROFIT) in one direction (real; usdm corrections);
  one closePosition STOP and one TAKE_PROFIT may coexist (unconfirmed, see ``_check_close_position``).
- -4509 a ``closePosition`` stop on a flat position side (real; usdm corrections).
- -2022 a reduce-only order on a flat position, or larger than the position (real).
- -2021 a conditional order whose trigger the working price has already crossed, STOP_MARKET,
  TAKE_PROFIT_MARKET and the stop-limit STOP / TAKE_PROFIT (real: 61 times on TAKE_PROFIT).
- -1111 more decimals than the tick / step (real: ``price=0.12045000000000002``); -4164 notional
  under MIN_NOTIONAL unless reduce-only, MARKET at the mark (usdm §4, §5); -4005 a MARKET above
  MARKET_LOT_SIZE.maxQty, advertised in exchangeInfo (usdm §4, §7.1a).
- PERCENT_PRICE enforced as advertised: BUY price <= mark x multiplierUp (-4016), SELL price >=
  mark x multiplierDown (-4024) (usdm §4 filters, §5; the message texts are unconfirmed).
- A crossing LIMIT fills at the book (the last price) as a taker; a resting one at its own price as
  a maker; MARKET orders and triggered children fill at the last price (usdm §4).
- ``workingType`` CONTRACT_PRICE (the default) triggers on the last price, MARK_PRICE on the mark
  (usdm §1.3).
- Algo lifecycle NEW, TRIGGERING (``emit_triggering``), TRIGGERED, FINISHED, CANCELED, REJECTED,
  EXPIRED in ALGO_UPDATE; ``algo_lifecycle`` delivers the child's fills before TRIGGERED or drops
  TRIGGERED (usdm §1.4, §1.5 and corrections).
- ACCOUNT_CONFIG_UPDATE carries ``ac{s,l}`` only (leverage); a position-mode change sends nothing
  (usdm corrections, §3); a margin type change pushes ACCOUNT_UPDATE ``m: MARGIN_TYPE_CHANGE``
  (Binance's event page; its content for a flat symbol unconfirmed); ``transfer`` pushes
  ACCOUNT_UPDATE ``DEPOSIT``/``WITHDRAW``. ``E`` is an integer in every event, listenKeyExpired included once
  ``listen_key_expired_e_as_string`` is off (usdm §3: the connector's model since 2026-05).
- History: klines and markPriceKlines for any range back to the onboard date, seeded and
  deterministic before the sim started (``history_seed``, ``full_kline_history``); fundingRate
  every 8 h; income (REALIZED_PNL, COMMISSION, FUNDING_FEE); allOrders; allAlgoOrders (7-day window);
  commissionRate; symbolConfig; ticker/price (usdm §1.2, §4 and corrections).
- aggTrades (``GET /fapi/v1/aggTrades``, see ``agg_trades``): the sim's own market, every change of
  the last price one market trade of the symbol's minimum quantity at that price, and every fill of
  the account one trade at its price and quantity (developers.binance.com USDⓈ-M "Compressed/
  Aggregate Trades List": weight 20, limit <= 1000, startTime..endTime under 1 hour).
- batchOrders (place up to 5, cancel up to 10), PUT order (AMENDMENT), countdownCancelAll.
- Funding settles every 8 h (00, 08, 16 UTC) on every open position at the mark of that moment
  and the rate ``fundingRate`` reports: a short receives a positive rate, a long pays it (Binance's
  "Introduction to Funding Rates": longs pay shorts when the rate is positive; amount = position
  notional x rate). The wallet moves, an ACCOUNT_UPDATE with reason FUNDING_FEE is pushed (``B``
  with ``bc``; ``P`` only for an isolated position; ``a.S`` the symbol, usdm §3.2) and ``income``
  lists a FUNDING_FEE row. Settlements at or before the sim's start are not charged. Assumed, not
  documented: the push's ``T`` and the income row's ``time`` are both the settlement instant.
Not modelled: an order book (one level at the last price, unlimited depth),
liquidation, TRAILING_STOP_MARKET, price protection, self-trade prevention, -4045 and the other
newer codes.

Switches still off by default (older tests expect the kinder answer; ``answer_as_binance()`` turns
them all on): ``reject_close_position_when_flat`` (-4509), ``emit_triggering``,
``full_kline_history``, ``listen_key_expired_e_as_string`` (on = the old string ``E``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal, InvalidOperation
from typing import Any, Generic, Literal, TypeVar

from binance.sim.clock import Clock, SimClock

log = logging.getLogger(__name__)

Json = dict[str, Any]
FillPolicy = Literal["full", "never"] | tuple[Decimal, ...]
UserListener = Callable[[Json, str | None], None]  # (payload, only this listenKey or None for all)
MarketListener = Callable[[str], None]  # symbol whose mark changed
# How a triggered algo order reports itself: "normal" (TRIGGERING, TRIGGERED, child fills, FINISHED),
# "fill_before_triggered" (the child's fills arrive before TRIGGERED), "no_triggered" (no TRIGGERED).
AlgoLifecycle = Literal["normal", "fill_before_triggered", "no_triggered"]

CONDITIONAL_TYPES = frozenset(
    {"STOP", "STOP_MARKET", "TAKE_PROFIT", "TAKE_PROFIT_MARKET", "TRAILING_STOP_MARKET"}
)
CLIENT_ID = re.compile(r"^[\.A-Z\:/a-z0-9_-]{1,36}$")
INTERVAL_MS: dict[str, int] = {
    "1m": 60_000,
    "3m": 180_000,
    "5m": 300_000,
    "15m": 900_000,
    "30m": 1_800_000,
    "1h": 3_600_000,
    "2h": 7_200_000,
    "4h": 14_400_000,
}
LISTEN_KEY_TTL_MS = 3_600_000
FUNDING_PERIOD_MS = 28_800_000  # settlements at 00, 08 and 16 UTC
MAKER_FEE = Decimal("0.0002")
TAKER_FEE = Decimal("0.0005")
ZERO = Decimal("0")


class SimError(Exception):
    """A Binance error answer: ``{"code": code, "msg": msg}`` with ``http_status``."""

    def __init__(self, code: int, msg: str, http_status: int = 400) -> None:
        super().__init__(f"{code} {msg}")
        self.code = code
        self.msg = msg
        self.http_status = http_status


def _fmt(d: Decimal, places: int | None = None) -> str:
    if places is not None:
        d = d.quantize(Decimal(1).scaleb(-places))
    if d == 0:
        d = abs(d)  # no "-0.00"
    return format(d, "f")


def _decimals(d: Decimal) -> int:
    exp = d.normalize().as_tuple().exponent
    return max(0, -exp) if isinstance(exp, int) else 0


@dataclass(slots=True)
class SimSymbol:
    symbol: str
    tick: Decimal
    step: Decimal
    min_qty: Decimal
    max_qty: Decimal
    market_max_qty: Decimal
    min_notional: Decimal = Decimal("5")
    min_price: Decimal = Decimal("0.0001")
    max_price: Decimal = Decimal("1000000")
    status: str = "TRADING"
    onboard_ms: int = 1569398400000
    percent_up: Decimal = Decimal("1.0500")
    percent_down: Decimal = Decimal("0.9500")

    @property
    def base_asset(self) -> str:
        return self.symbol.removesuffix("USDT")

    @property
    def price_places(self) -> int:
        return _decimals(self.tick)

    def entry(self) -> Json:
        """The exchangeInfo ``symbols[]`` entry, shaped like the official example."""
        return {
            "symbol": self.symbol,
            "pair": self.symbol,
            "contractType": "PERPETUAL",
            "deliveryDate": 4133404800000,
            "onboardDate": self.onboard_ms,
            "status": self.status,
            "maintMarginPercent": "2.5000",
            "requiredMarginPercent": "5.0000",
            "baseAsset": self.base_asset,
            "quoteAsset": "USDT",
            "marginAsset": "USDT",
            "pricePrecision": self.price_places,
            "quantityPrecision": _decimals(self.step),
            "baseAssetPrecision": 8,
            "quotePrecision": 8,
            "underlyingType": "COIN",
            "underlyingSubType": [],
            "settlePlan": 0,
            "triggerProtect": "0.0500",
            "filters": [
                {
                    "filterType": "PRICE_FILTER",
                    "maxPrice": _fmt(self.max_price),
                    "minPrice": _fmt(self.min_price),
                    "tickSize": _fmt(self.tick),
                },
                {
                    "filterType": "LOT_SIZE",
                    "maxQty": _fmt(self.max_qty),
                    "minQty": _fmt(self.min_qty),
                    "stepSize": _fmt(self.step),
                },
                {
                    "filterType": "MARKET_LOT_SIZE",
                    "maxQty": _fmt(self.market_max_qty),
                    "minQty": _fmt(self.min_qty),
                    "stepSize": _fmt(self.step),
                },
                {"filterType": "MAX_NUM_ORDERS", "limit": 200},
                {"filterType": "MIN_NOTIONAL", "notional": _fmt(self.min_notional)},
                {
                    "filterType": "PERCENT_PRICE",
                    "multiplierUp": _fmt(self.percent_up, 4),
                    "multiplierDown": _fmt(self.percent_down, 4),
                    "multiplierDecimal": "4",
                },
            ],
            "orderTypes": [
                "LIMIT",
                "MARKET",
                "STOP",
                "STOP_MARKET",
                "TAKE_PROFIT",
                "TAKE_PROFIT_MARKET",
                "TRAILING_STOP_MARKET",
            ],
            "timeInForce": ["GTC", "IOC", "FOK", "GTX", "GTD"],
            "liquidationFee": "0.012500",
            "marketTakeBound": "0.05",
        }


def default_symbols() -> list[tuple[SimSymbol, Decimal]]:
    """Real-looking symbols and starting marks."""
    return [
        (
            SimSymbol(
                "BTCUSDT",
                Decimal("0.10"),
                Decimal("0.001"),
                Decimal("0.001"),
                Decimal("1000"),
                Decimal("120"),
                Decimal("100"),
                Decimal("556.80"),
                Decimal("4529764"),
            ),
            Decimal("95000.00"),
        ),
        (
            SimSymbol(
                "ETHUSDT",
                Decimal("0.01"),
                Decimal("0.001"),
                Decimal("0.001"),
                Decimal("10000"),
                Decimal("2000"),
                Decimal("20"),
                Decimal("39.86"),
                Decimal("306177"),
            ),
            Decimal("3500.00"),
        ),
        (
            SimSymbol(
                "DOGEUSDT",
                Decimal("0.00001"),
                Decimal("1"),
                Decimal("1"),
                Decimal("50000000"),
                Decimal("30000000"),
                Decimal("5"),
                Decimal("0.00244"),
                Decimal("30"),
            ),
            Decimal("0.16000"),
        ),
        (
            SimSymbol(
                "SOLUSDT",
                Decimal("0.0100"),
                Decimal("1"),
                Decimal("1"),
                Decimal("1000000"),
                Decimal("5000"),
                Decimal("5"),
                Decimal("0.4200"),
                Decimal("6857"),
            ),
            Decimal("180.0000"),
        ),
    ]


@dataclass(slots=True)
class SimOrder:
    order_id: int
    symbol: str
    client_id: str
    side: str
    type: str
    tif: str
    price: Decimal
    qty: Decimal
    reduce_only: bool
    position_side: str
    time_ms: int
    update_ms: int
    status: str = "NEW"
    executed: Decimal = ZERO
    cum_quote: Decimal = ZERO
    close_position: bool = False
    policy: FillPolicy = "full"
    slices_used: int = 0

    @property
    def remaining(self) -> Decimal:
        return self.qty - self.executed

    @property
    def is_open(self) -> bool:
        return self.status in ("NEW", "PARTIALLY_FILLED")

    @property
    def avg_price(self) -> Decimal:
        return self.cum_quote / self.executed if self.executed else ZERO


@dataclass(slots=True)
class SimAlgo:
    algo_id: int
    client_algo_id: str
    symbol: str
    side: str
    type: str
    position_side: str
    trigger: Decimal
    working_type: str
    close_position: bool
    quantity: Decimal
    reduce_only: bool
    create_ms: int
    update_ms: int
    status: str = "NEW"
    trigger_ms: int = 0
    actual_order_id: int = 0
    actual_price: Decimal = ZERO
    actual_qty: Decimal = ZERO
    price: Decimal = ZERO  # STOP / TAKE_PROFIT: the child LIMIT order's price
    tif: str = "GTC"


@dataclass(slots=True)
class SimPosition:
    amount: Decimal = ZERO  # signed
    entry: Decimal = ZERO
    realized: Decimal = ZERO
    update_ms: int = 0


_ID_TEXT = re.compile(r"[0-9]{1,20}")


def _id_key(text: str, name: str) -> int:
    """The table key an ``orderId`` / ``algoId`` parameter names. Outside ``^[0-9]{1,20}$`` Binance
    answers -1100 naming the parameter and that range (seen for orderId by python-binance #123 and
    ccxt/php-binance-api #303; assumed the same for algoId, not seen). An id with a leading zero is
    within the range; whether Binance reads it as the number is not known: it finds no order here
    (-1, which no order has), as the simulator always answered."""
    if not _ID_TEXT.fullmatch(text):
        raise SimError(
            -1100, f"Illegal characters found in parameter '{name}'; legal range is '^[0-9]{{1,20}}$'."
        )
    return int(text) if str(int(text)) == text else -1


V = TypeVar("V")


class LiveIndex(Generic[V]):
    """The entries of one order table (``orders``, ``algos``) that may still be working, in id
    order. The tables keep every order of a run (a backtest: thousands) and are read on every mark
    and every request; an order never works again once it has ended, so an ended entry is dropped
    when the index is next read. Every insertion into the table goes through ``add``. (An order
    ended and filled again from inside a listener's callback, which no caller here does, would be
    lost to the index: a differential attack's only finding against the old full scans besides the
    id parsing of ``_id_key``.)"""

    def __init__(self, working: Callable[[V], bool]) -> None:
        self._working = working
        self._live: dict[int, V] = {}

    def add(self, key: int, value: V) -> None:
        self._live[key] = value

    def values(self) -> list[V]:
        working = self._working
        ended = [k for k, v in self._live.items() if not working(v)]
        for k in ended:
            del self._live[k]
        return list(self._live.values())


@dataclass(slots=True)
class _Bucket:
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    count: int = 1


@dataclass(slots=True)
class UserFaults:
    delay_ms: int = 0
    duplicate_next: int = 0
    holding: bool = False
    held: list[tuple[Json, str | None]] = field(default_factory=list)
    delayed: list[tuple[int, int, Json, str | None]] = field(default_factory=list)


class SimExchange:
    """One simulated account on a set of symbols; see the module docstring."""

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        api_keys: dict[str, str] | None = None,
        balance: Decimal = Decimal("10000"),
        hedge_mode: bool = False,
        symbols: Iterable[tuple[SimSymbol, Decimal]] | None = None,
        default_leverage: int = 20,
    ) -> None:
        self.clock: Clock = clock or SimClock()
        self.api_keys: dict[str, str] = dict(api_keys or {})
        self.wallet = balance
        self.hedge_mode = hedge_mode
        self.symbols: dict[str, SimSymbol] = {}
        self.marks: dict[str, Decimal] = {}
        self.lasts: dict[str, Decimal] = {}  # last trade (contract) price; follows the mark by default
        self.mark_time: dict[str, int] = {}
        self.history_start: dict[str, int] = {}  # before this, klines are synthetic (seeded)
        self._first_price: dict[str, Decimal] = {}
        self.leverage: dict[str, int] = {}
        self.margin_type: dict[str, str] = {}
        self.default_leverage = default_leverage
        # The account's commission rates (``commissionRate``; a backtest may set others).
        self.maker_fee = MAKER_FEE
        self.taker_fee = TAKER_FEE
        for sym, mark in symbols if symbols is not None else default_symbols():
            self.add_symbol(sym, mark)
        self.orders: dict[int, SimOrder] = {}
        self.algos: dict[int, SimAlgo] = {}
        self.open_orders_index = LiveIndex[SimOrder](lambda o: o.is_open)
        self.new_algos_index = LiveIndex[SimAlgo](lambda a: a.status in ("NEW", "TRIGGERING"))
        # client id -> its orders, oldest first (ids are unique only among open orders)
        self._orders_by_cid: dict[str, list[SimOrder]] = {}
        self._algos_by_cid: dict[str, list[SimAlgo]] = {}
        self.positions: dict[tuple[str, str], SimPosition] = {}
        self._next_order_id = 8_389_765_001
        self._next_algo_id = 1_000_000_000_000_001
        self._next_trade_id = 5_000_001
        self.trades: list[Json] = []  # every fill, as GET /fapi/v1/userTrades reports it
        # The market's trades for GET /fapi/v1/aggTrades, per symbol: (a, price, qty, T, m), ids
        # from their own counter (not userTrades' ids: unsure how Binance relates the two). A
        # backtest turns this off (it never asks its own venue, and a year of points would pile up).
        self.record_market_trades = True
        self.market_trades: dict[str, list[tuple[int, Decimal, Decimal, int, bool]]] = {}
        self._next_agg_id = 26_000_001
        self.fill_policies: dict[str, FillPolicy] = {}
        self.default_fill_policy: FillPolicy = "full"
        self.listen_keys: dict[str, int] = {}  # key -> expires at
        self.user_listeners: list[UserListener] = []
        self.market_listeners: list[MarketListener] = []
        self.user_faults = UserFaults()
        self.stale_premium: dict[str, Json] = {}
        self._buckets: dict[str, dict[int, _Bucket]] = {}  # mark price, per minute
        self._last_buckets: dict[str, dict[int, _Bucket]] = {}  # last (contract) price, per minute
        self._script: list[tuple[int, str, Decimal]] = []
        self.user_events_sent = 0
        self.history_seed = 0  # seeds the synthetic history before the sim started
        self.countdowns: dict[str, int] = {}  # symbol -> when countdownCancelAll fires
        # Funding settles as on Binance. Off where a run must not see it: a backtest (it pays funding
        # from the real rate history itself) and test harnesses on the wall clock, where a run that
        # happens to cross 00/08/16 UTC would see a settlement at a random moment.
        self.settle_funding = True
        # Funding settled up to this settlement time (the ones at or before the start are not charged).
        self.funding_settled_ms = self.clock.now_ms() // FUNDING_PERIOD_MS * FUNDING_PERIOD_MS
        self.funding_rows: list[Json] = []  # FUNDING_FEE income rows, oldest first
        self._next_funding_tran = 9_000_000_001
        # Fidelity switches, all as Binance answers (see the module docstring); a test may turn
        # one off to reach an older, kinder answer on purpose.
        self.reject_close_position_when_flat = True  # -4509
        self.one_close_position_per_direction = True  # -4130
        self.reduce_only_above_position_rejected = True  # -2022 when the order exceeds the position
        self.enforce_percent_price = True  # -4016 / -4024
        # ``E`` of listenKeyExpired: an int, Binance's current model (the doc example has a string).
        self.listen_key_expired_e_as_string = False
        self.algo_lifecycle: AlgoLifecycle = "normal"
        # TRIGGERING before TRIGGERED (usdm-2026 §1.5, "(TRIGGERING)": observed, not always sent).
        self.emit_triggering = True
        # Klines for every slot of the requested range, synthetic before the sim started.
        self.full_kline_history = True

    # ----------------------------------------------------------------------------------------
    # setup and driving
    # ----------------------------------------------------------------------------------------

    def answer_as_binance(self) -> SimExchange:
        """Switch on every fidelity rule that is still off by default (they stay off only while
        older tests expect the kinder answer): -4509, TRIGGERING, full kline history, integer ``E``."""
        self.reject_close_position_when_flat = True
        self.one_close_position_per_direction = True
        self.reduce_only_above_position_rejected = True
        self.enforce_percent_price = True
        self.listen_key_expired_e_as_string = False
        self.emit_triggering = True
        self.full_kline_history = True
        return self

    def now(self) -> int:
        return self.clock.now_ms()

    def add_symbol(self, sym: SimSymbol, mark: Decimal) -> None:
        self.symbols[sym.symbol] = sym
        self.marks[sym.symbol] = mark
        self.lasts[sym.symbol] = mark
        self._first_price.setdefault(sym.symbol, mark)
        self.mark_time[sym.symbol] = self.clock.now_ms()
        self.history_start.setdefault(sym.symbol, self.clock.now_ms() // 60_000 * 60_000)
        self.leverage.setdefault(sym.symbol, self.default_leverage)
        self.margin_type.setdefault(sym.symbol, "cross")

    def set_fill_policy(self, client_order_id: str, policy: FillPolicy) -> None:
        """How the LIMIT order with this client id fills: ``"full"``, ``"never"`` or slices (one per
        mark update that reaches its price; once the slices are used up the rest never fills)."""
        self.fill_policies[client_order_id] = policy

    def script(self, points: Iterable[tuple[int, str, Decimal]]) -> None:
        """Mark prices to apply at given times: ``(at_ms, symbol, price)``; applied by ``pump``."""
        self._script.extend(points)
        self._script.sort(key=lambda p: p[0])

    def pump(self) -> None:
        """Apply what is due at the clock's current time: scripted marks, delayed events, key expiry."""
        now = self.now()
        while self._script and self._script[0][0] <= now:
            _, symbol, price = self._script.pop(0)
            self.set_mark(symbol, price)
        self._flush_delayed(now)
        for key, expires in list(self.listen_keys.items()):
            if expires <= now:
                self.expire_listen_key(key)
        for symbol, deadline in list(self.countdowns.items()):
            if deadline <= now:
                del self.countdowns[symbol]
                self.cancel_all_orders({"symbol": symbol})
        self._settle_funding(now)

    def _settle_funding(self, now: int) -> None:
        """Every settlement time passed since the last one: each open position pays or receives."""
        while self.funding_settled_ms + FUNDING_PERIOD_MS <= now:
            t = self.funding_settled_ms = self.funding_settled_ms + FUNDING_PERIOD_MS
            if not self.settle_funding:
                continue
            for (symbol, pside), pos in sorted(self.positions.items()):
                if pos.amount == 0:
                    continue
                # Longs pay shorts when the rate is positive: a signed amount times the notional.
                income = (-pos.amount * self.marks[symbol] * self.funding_rate_at(symbol, t)).quantize(
                    Decimal("0.00000001")
                )
                if income == 0:
                    continue
                self.wallet += income
                self.funding_rows.append(
                    {
                        "symbol": symbol,
                        "incomeType": "FUNDING_FEE",
                        "income": _fmt(income, 8),
                        "asset": "USDT",
                        "info": "FUNDING_FEE",
                        "time": t,
                        "tranId": self._next_funding_tran,
                        "tradeId": "",
                    }
                )
                self._next_funding_tran += 1
                self._emit(self._funding_update(symbol, pside, income, t))

    def transfer(self, amount: Decimal) -> None:
        """The account holder moves ``amount`` USDT into (positive) or out of the futures wallet,
        as from the app: the wallet moves and an ACCOUNT_UPDATE with reason DEPOSIT or WITHDRAW is
        pushed, ``B`` only (the reason list of "Event: Balance and Position Update", USDⓈ-M user
        data streams; which of the listed reasons a spot-to-futures transfer carries is not
        confirmed live, DEPOSIT/WITHDRAW are the plain ones)."""
        self.wallet += amount
        wallet, t = _fmt(self.wallet, 8), self.now()
        self._emit(
            {
                "e": "ACCOUNT_UPDATE",
                "T": t,
                "E": t,
                "a": {
                    "m": "DEPOSIT" if amount >= 0 else "WITHDRAW",
                    "B": [{"a": "USDT", "wb": wallet, "cw": wallet, "bc": _fmt(amount, 8)}],
                    "P": [],
                },
            }
        )

    def _funding_update(self, symbol: str, pside: str, income: Decimal, t: int) -> Json:
        wallet = _fmt(self.wallet, 8)
        body: Json = {
            "m": "FUNDING_FEE",
            "S": symbol,
            "B": [{"a": "USDT", "wb": wallet, "cw": wallet, "bc": _fmt(income, 8)}],
        }
        if self.margin_type[symbol] == "isolated":  # usdm §3.2: cross pushes only B
            body["P"] = self._account_update(symbol, pside)["a"]["P"]
        return {"e": "ACCOUNT_UPDATE", "T": t, "E": t, "a": body}

    def advance(self, ms: int) -> None:
        """Move a ``SimClock`` forward and pump."""
        if not isinstance(self.clock, SimClock):
            raise TypeError("advance needs a SimClock")
        self.clock.advance(ms)
        self.pump()

    def set_mark(self, symbol: str, price: Decimal, *, last: Decimal | None = None) -> None:
        """A new mark price (and last price: ``last``, else the mark itself): klines, LIMIT fills at
        the last price, algo triggers on the price their ``workingType`` names, then listeners."""
        if symbol not in self.symbols:
            raise KeyError(symbol)
        now = self.now()
        self.marks[symbol] = price
        self.mark_time[symbol] = now
        self._record_bucket(self._buckets, symbol, price, now)
        self._set_last(symbol, price if last is None else last, now)
        for listener in list(self.market_listeners):
            listener(symbol)

    def set_last(self, symbol: str, price: Decimal) -> None:
        """Trades at ``price`` while the mark stays put: the last price moves apart from the mark."""
        if symbol not in self.symbols:
            raise KeyError(symbol)
        self._set_last(symbol, price, self.now())

    def _set_last(self, symbol: str, price: Decimal, now: int) -> None:
        before = self.lasts[symbol]
        if self.record_market_trades and price != before:
            # A move of the last price is a market trade at the new price; a fall is a seller
            # hitting the bid (the buyer was the maker), a rise a buyer lifting the ask.
            self._market_trade(symbol, price, self.symbols[symbol].min_qty, now, buyer_maker=price < before)
        self.lasts[symbol] = price
        self._record_bucket(self._last_buckets, symbol, price, now)
        self._match_limits(symbol, price)
        self._trigger_algos(symbol)

    def _market_trade(
        self, symbol: str, price: Decimal, qty: Decimal, now: int, *, buyer_maker: bool
    ) -> None:
        self.market_trades.setdefault(symbol, []).append((self._next_agg_id, price, qty, now, buyer_maker))
        self._next_agg_id += 1

    def publish_marks(self) -> None:
        """The 1 s push: re-announce every symbol's current mark (the wall-clock loop calls this)."""
        for symbol in self.symbols:
            self.mark_time[symbol] = self.now()
            for listener in list(self.market_listeners):
                listener(symbol)

    # ----------------------------------------------------------------------------------------
    # user-event fault stage
    # ----------------------------------------------------------------------------------------

    def _emit(self, payload: Json, key: str | None = None) -> None:
        f = self.user_faults
        copies = 1
        if f.duplicate_next > 0:
            f.duplicate_next -= 1
            copies = 2
        for _ in range(copies):
            if f.holding:
                f.held.append((payload, key))
            elif f.delay_ms > 0:
                f.delayed.append((self.now() + f.delay_ms, len(f.delayed), payload, key))
            else:
                self._deliver(payload, key)

    def _deliver(self, payload: Json, key: str | None) -> None:
        self.user_events_sent += 1
        for listener in list(self.user_listeners):
            listener(payload, key)

    def _flush_delayed(self, now: int) -> None:
        f = self.user_faults
        due = sorted(d for d in f.delayed if d[0] <= now)
        f.delayed = [d for d in f.delayed if d[0] > now]
        for _, _, payload, key in due:
            self._deliver(payload, key)

    def hold_user_events(self) -> None:
        self.user_faults.holding = True

    def release_user_events(self, *, reverse: bool = False) -> int:
        """Deliver held events (in reverse order to simulate reordering); returns how many."""
        f = self.user_faults
        held = list(reversed(f.held)) if reverse else list(f.held)
        f.held.clear()
        f.holding = False
        for payload, key in held:
            self._deliver(payload, key)
        return len(held)

    # ----------------------------------------------------------------------------------------
    # helpers
    # ----------------------------------------------------------------------------------------

    def _symbol(self, params: dict[str, str]) -> SimSymbol:
        name = params.get("symbol")
        if not name:
            raise SimError(-1102, "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.")
        sym = self.symbols.get(name)
        if sym is None:
            raise SimError(-1121, "Invalid symbol.")
        return sym

    @staticmethod
    def _dec(params: dict[str, str], name: str, required: bool = True) -> Decimal | None:
        raw = params.get(name)
        if raw is None or raw == "":
            if required:
                raise SimError(
                    -1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed."
                )
            return None
        try:
            value = Decimal(raw)
        except InvalidOperation as exc:
            raise SimError(
                -1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed."
            ) from exc
        if not value.is_finite():
            raise SimError(-1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.")
        return value

    def _position(self, symbol: str, pside: str) -> SimPosition:
        return self.positions.setdefault((symbol, pside), SimPosition())

    def _pside(self, params: dict[str, str]) -> str:
        ps = params.get("positionSide", "BOTH") or "BOTH"
        if ps not in ("BOTH", "LONG", "SHORT"):
            raise SimError(-4060, "Invalid position side.")
        if self.hedge_mode == (ps == "BOTH"):
            raise SimError(-4061, "Order's position side does not match user's setting.")
        return ps

    def _unrealized(self) -> Decimal:
        total = ZERO
        for (symbol, _), pos in self.positions.items():
            if pos.amount:
                total += (self.marks[symbol] - pos.entry) * pos.amount
        return total

    def _position_margin(self) -> Decimal:
        total = ZERO
        for (symbol, _), pos in self.positions.items():
            if pos.amount:
                total += abs(pos.amount) * pos.entry / self.leverage[symbol]
        return total

    def _order_margin(self) -> Decimal:
        return sum(
            (
                o.remaining * o.price / self.leverage[o.symbol]
                for o in self.open_orders_index.values()
                if o.is_open and self._opens(o)
            ),
            ZERO,
        )

    def available_balance(self) -> Decimal:
        return self.wallet - self._position_margin() - self._order_margin() + min(ZERO, self._unrealized())

    def _opens(self, o: SimOrder) -> bool:
        """Whether the order adds exposure (needs margin)."""
        if o.reduce_only or o.close_position:
            return False
        if o.position_side == "SHORT":
            return o.side == "SELL"
        if o.position_side == "LONG":
            return o.side == "BUY"
        pos = self.positions.get((o.symbol, "BOTH"))
        amt = pos.amount if pos else ZERO
        return not ((amt < 0 and o.side == "BUY") or (amt > 0 and o.side == "SELL"))

    def _check_filters(self, sym: SimSymbol, qty: Decimal, price: Decimal | None, market: bool) -> None:
        if qty <= 0:
            raise SimError(-4003, "Quantity less than or equal to zero.")
        if _decimals(qty) > _decimals(sym.step):
            raise SimError(-1111, "Precision is over the maximum defined for this asset.")
        if qty < sym.min_qty:
            raise SimError(-4004, "Quantity less than min quantity.")
        if qty > (sym.market_max_qty if market else sym.max_qty):
            raise SimError(-4005, "Quantity greater than max quantity.")
        if (qty - sym.min_qty) % sym.step != 0:
            raise SimError(-4023, "Quantity not increased by step size.")
        if price is not None:
            if _decimals(price) > _decimals(sym.tick):
                raise SimError(-1111, "Precision is over the maximum defined for this asset.")
            if price < sym.min_price:
                raise SimError(-4013, "Price less than min price.")
            if price > sym.max_price:
                raise SimError(-4016, "Price greater than max price.")
            if (price - sym.min_price) % sym.tick != 0:
                raise SimError(-4014, "Price not increased by tick size.")

    # ----------------------------------------------------------------------------------------
    # public market data
    # ----------------------------------------------------------------------------------------

    def server_time(self, params: dict[str, str]) -> Json:
        return {"serverTime": self.now()}

    def exchange_info(self, params: dict[str, str]) -> Json:
        return {
            "timezone": "UTC",
            "serverTime": self.now(),
            "futuresType": "U_MARGINED",
            "rateLimits": [
                {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 2400},
                {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1, "limit": 1200},
                {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 300},
            ],
            "exchangeFilters": [],
            "assets": [{"asset": "USDT", "marginAvailable": True, "autoAssetExchange": "-10000"}],
            "symbols": [s.entry() for s in self.symbols.values()],
        }

    def _premium(self, symbol: str) -> Json:
        if symbol in self.stale_premium:
            return dict(self.stale_premium[symbol])
        sym = self.symbols[symbol]
        mark = self.marks[symbol]
        now = self.now()
        return {
            "symbol": symbol,
            "markPrice": _fmt(mark, sym.price_places + 4),
            "indexPrice": _fmt(mark, sym.price_places + 4),
            "estimatedSettlePrice": _fmt(mark, sym.price_places + 4),
            "lastFundingRate": "0.00010000",
            "interestRate": "0.00010000",
            "nextFundingTime": (now // 28_800_000 + 1) * 28_800_000,
            "time": self.mark_time[symbol],
        }

    def premium_index(self, params: dict[str, str]) -> Any:
        if params.get("symbol"):
            return self._premium(self._symbol(params).symbol)
        return [self._premium(s) for s in self.symbols]

    def ticker_24hr(self, params: dict[str, str]) -> Any:
        """``GET /fapi/v1/ticker/24hr``: rolling 24 h statistics of the recorded last prices (a symbol
        with no history shows its last price and zero volume)."""
        if params.get("symbol"):
            return self._ticker(self._symbol(params).symbol)
        return [self._ticker(s) for s in self.symbols]

    def _ticker(self, symbol: str) -> Json:
        now = self.now()
        since = now - 86_400_000
        p = self.symbols[symbol].price_places
        buckets = [
            b
            for start, b in sorted(self._last_buckets.get(symbol, {}).items())
            if start >= since // 60_000 * 60_000
        ]
        mark = self.lasts[symbol]  # 24 h statistics are of the last (contract) price
        open_ = buckets[0].open if buckets else mark
        high = max((b.high for b in buckets), default=mark)
        low = min((b.low for b in buckets), default=mark)
        count = sum(b.count for b in buckets)
        volume = Decimal(count)
        quote = sum((Decimal(b.count) * b.close for b in buckets), ZERO)
        change = mark - open_
        return {
            "symbol": symbol,
            "priceChange": _fmt(change, p),
            "priceChangePercent": _fmt(change / open_ * 100 if open_ else ZERO, 3),
            "weightedAvgPrice": _fmt(quote / volume if volume else mark, p),
            "lastPrice": _fmt(mark, p),
            "lastQty": "0",
            "openPrice": _fmt(open_, p),
            "highPrice": _fmt(high, p),
            "lowPrice": _fmt(low, p),
            "volume": _fmt(volume),
            "quoteVolume": _fmt(quote, p),
            "openTime": since,
            "closeTime": now,
            "firstId": 0,
            "lastId": count,
            "count": count,
        }

    def leverage_bracket(self, params: dict[str, str]) -> Any:
        """``GET /fapi/v1/leverageBracket``: one flat bracket per symbol (an object when ``symbol`` is
        sent, else a list); numbers are JSON numbers as in the official example."""
        if params.get("symbol"):
            return self._bracket(self._symbol(params).symbol)
        return [self._bracket(s) for s in self.symbols]

    def _bracket(self, symbol: str) -> Json:
        return {
            "symbol": symbol,
            "brackets": [
                {
                    "bracket": 1,
                    "initialLeverage": 125,
                    "notionalCap": 1_000_000,
                    "notionalFloor": 0,
                    "maintMarginRatio": 0.004,
                    "cum": 0.0,
                }
            ],
        }

    def ticker_price(self, params: dict[str, str]) -> Any:
        """``GET /fapi/v1/ticker/price`` (and v2): the last price, an object with ``symbol`` else a list."""

        def row(name: str) -> Json:
            p = self.symbols[name].price_places
            return {"symbol": name, "price": _fmt(self.lasts[name], p), "time": self.now()}

        if params.get("symbol"):
            return row(self._symbol(params).symbol)
        return [row(s) for s in self.symbols]

    def _price_at(self, symbol: str, t_ms: int) -> Decimal:
        """The mark at ``t_ms``: the recorded minute at or before it, else the synthetic path."""
        recorded = self._buckets.get(symbol, {})
        earlier = [m for m in recorded if m <= t_ms]
        if earlier:
            return recorded[max(earlier)].close
        if t_ms < self.history_start[symbol]:
            return self._synthetic_price(symbol, t_ms)
        return self._first_price.get(symbol, self.marks[symbol])

    def funding_rate_at(self, symbol: str, t_ms: int) -> Decimal:
        """The seeded rate of the settlement at ``t_ms``, around 0.01 %."""
        return Decimal("0.0001") + Decimal(repr(round(self._noise(symbol, "fund", t_ms) - 0.5, 6))) / 5000

    def funding_rate(self, params: dict[str, str]) -> list[Json]:
        """``GET /fapi/v1/fundingRate``: settlements every 8 h (00, 08, 16 UTC) since the onboard date,
        seeded rates around 0.01 %; ``startTime``/``endTime``/``limit`` (default 100, max 1000); the
        most recent ``limit`` without ``startTime``; every symbol when ``symbol`` is absent."""
        names = [self._symbol(params).symbol] if params.get("symbol") else list(self.symbols)
        limit, start, end = self._range_params(params, default_limit=100, max_limit=1000)
        period = FUNDING_PERIOD_MS
        rows: list[Json] = []
        for name in names:
            sym = self.symbols[name]
            first = max(-(-sym.onboard_ms // period) * period, -(-(start or 0) // period) * period)
            last = min(self.now(), end if end is not None else self.now()) // period * period
            if last < first:
                continue
            if start is None:
                first = max(first, last - (limit - 1) * period)
            for t in range(first, min(last, first + (limit - 1) * period) + period, period):
                rate = self.funding_rate_at(name, t)
                rows.append(
                    {
                        "symbol": name,
                        "fundingRate": _fmt(rate, 8),
                        "fundingTime": t,
                        "markPrice": _fmt(self._price_at(name, t), sym.price_places + 4),
                    }
                )
        rows.sort(key=lambda r: (r["fundingTime"], r["symbol"]))
        return rows[:limit] if start is not None else rows[-limit:]

    def commission_rate(self, params: dict[str, str]) -> Json:
        """``GET /fapi/v1/commissionRate``: the rates the sim charges (maker 0.02 %, taker 0.05 %)."""
        name = self._symbol(params).symbol
        return {
            "symbol": name,
            "makerCommissionRate": _fmt(self.maker_fee),
            "takerCommissionRate": _fmt(self.taker_fee),
        }

    def symbol_config(self, params: dict[str, str]) -> list[Json]:
        """``GET /fapi/v1/symbolConfig``: leverage and margin type per symbol (the current home of
        both; v2 ``positionRisk`` still answers them too)."""
        names = [self._symbol(params).symbol] if params.get("symbol") else list(self.symbols)
        return [
            {
                "symbol": name,
                "marginType": "ISOLATED" if self.margin_type[name] == "isolated" else "CROSSED",
                "isAutoAddMargin": False,
                "leverage": self.leverage[name],
                "maxNotionalValue": "1000000",
            }
            for name in names
        ]

    @staticmethod
    def _range_params(
        params: dict[str, str], *, default_limit: int, max_limit: int
    ) -> tuple[int, int | None, int | None]:
        try:
            limit = int(params.get("limit", str(default_limit)))
            start = int(params["startTime"]) if params.get("startTime") else None
            end = int(params["endTime"]) if params.get("endTime") else None
        except ValueError as exc:
            raise SimError(-1100, "Illegal characters found in a parameter.") from exc
        if not 1 <= limit <= max_limit:
            raise SimError(-1130, "Data sent for parameter 'limit' is not valid.")
        return limit, start, end

    def _week_window(self, start: int | None, end: int | None) -> tuple[int, int]:
        week = 7 * 24 * 3_600_000
        if start is not None and end is not None and end - start > week:
            raise SimError(-4166, "Search window is restricted to recent 7 days only.")
        if start is None and end is None:
            return self.now() - week, self.now()
        if start is None:
            assert end is not None
            return end - week, end
        return start, start + week if end is None else end

    def income(self, params: dict[str, str]) -> list[Json]:
        """``GET /fapi/v1/income``: REALIZED_PNL and COMMISSION rows from the sim's fills and the
        FUNDING_FEE rows of its settlements; the last 7 days by default, oldest first."""
        limit, start, end = self._range_params(params, default_limit=100, max_limit=1000)
        if start is None and end is None:
            start = self.now() - 7 * 24 * 3_600_000
        name = self._symbol(params).symbol if params.get("symbol") else None
        kind = params.get("incomeType")
        rows: list[Json] = []
        for t in self.trades:
            if name is not None and t["symbol"] != name:
                continue
            if (start is not None and t["time"] < start) or (end is not None and t["time"] > end):
                continue
            items = [("COMMISSION", -Decimal(t["commission"]), 2)]
            if Decimal(t["realizedPnl"]) != 0:
                items.insert(0, ("REALIZED_PNL", Decimal(t["realizedPnl"]), 1))
            for income_type, amount, n in items:
                if kind and kind != income_type:
                    continue
                rows.append(
                    {
                        "symbol": t["symbol"],
                        "incomeType": income_type,
                        "income": _fmt(amount, 8),
                        "asset": "USDT",
                        "info": income_type,
                        "time": t["time"],
                        "tranId": t["id"] * 10 + n,
                        "tradeId": str(t["id"]),
                    }
                )
        for row in self.funding_rows:
            if (name is None or row["symbol"] == name) and (not kind or kind == "FUNDING_FEE"):
                if (start is None or row["time"] >= start) and (end is None or row["time"] <= end):
                    rows.append(dict(row))
        rows.sort(key=lambda r: int(r["time"]))  # oldest first (stable: a trade's rows keep their order)
        page = max(1, int(params.get("page", "1") or 1))
        return rows[(page - 1) * limit : page * limit]

    def all_orders(self, params: dict[str, str]) -> list[Json]:
        """``GET /fapi/v1/allOrders``: one symbol's orders (open or not), oldest first; ``orderId``
        gives orders from that id on, else the most recent ``limit``; a window of at most 7 days."""
        name = self._symbol(params).symbol
        limit, start, end = self._range_params(params, default_limit=500, max_limit=1000)
        if start is not None or end is not None:
            start, end = self._week_window(start, end)
        found = [
            o
            for o in self.orders.values()
            if o.symbol == name
            and ("orderId" not in params or o.order_id >= int(params["orderId"]))
            and (start is None or o.time_ms >= start)
            and (end is None or o.time_ms <= end)
        ]
        found.sort(key=lambda o: o.order_id)
        chosen = found[:limit] if "orderId" in params or start is not None else found[-limit:]
        return [self._order_json(o, query=True) for o in chosen]

    def all_algo_orders(self, params: dict[str, str]) -> list[Json]:
        """``GET /fapi/v1/allAlgoOrders``: one symbol's algo orders in any status, oldest first;
        ``algoId`` (from that id on), ``startTime``/``endTime`` (a window under 7 days), ``limit``."""
        name = self._symbol(params).symbol
        limit, start, end = self._range_params(params, default_limit=500, max_limit=1000)
        if start is not None or end is not None:
            start, end = self._week_window(start, end)
        found = [
            a
            for a in self.algos.values()
            if a.symbol == name
            and ("algoId" not in params or a.algo_id >= int(params["algoId"]))
            and (start is None or a.create_ms >= start)
            and (end is None or a.create_ms <= end)
        ]
        found.sort(key=lambda a: a.algo_id)
        chosen = found[:limit] if "algoId" in params or start is not None else found[-limit:]
        return [self._algo_json(a) for a in chosen]

    def make_premium_stale(self, symbol: str) -> None:
        """Freeze ``premiumIndex`` for ``symbol`` at its current answer (stale REST fallback)."""
        self.stale_premium[symbol] = self._premium(symbol)

    def mark_payload(self, symbol: str) -> Json:
        """A ``markPriceUpdate`` as pushed on ``<symbol>@markPrice@1s``."""
        sym = self.symbols[symbol]
        mark = _fmt(self.marks[symbol], sym.price_places + 4)
        now = self.now()
        return {
            "e": "markPriceUpdate",
            "E": self.mark_time[symbol],
            "s": symbol,
            "p": mark,
            "i": mark,
            "P": mark,
            "r": "0.00010000",
            "ap": mark,
            "T": (now // 28_800_000 + 1) * 28_800_000,
            "st": 1,
        }

    @staticmethod
    def _record_bucket(store: dict[str, dict[int, _Bucket]], symbol: str, price: Decimal, now: int) -> None:
        buckets = store.setdefault(symbol, {})
        start = now // 60_000 * 60_000
        b = buckets.get(start)
        if b is None:
            buckets[start] = _Bucket(price, price, price, price)
        else:
            b.high = max(b.high, price)
            b.low = min(b.low, price)
            b.close = price
            b.count += 1

    def _candles(
        self, symbol: str, interval_ms: int, store: dict[str, dict[int, _Bucket]] | None = None
    ) -> list[tuple[int, _Bucket]]:
        """Recorded minutes (last price by default) aggregated into ``interval_ms`` candles."""
        recorded = (self._last_buckets if store is None else store).get(symbol, {})
        out: dict[int, _Bucket] = {}
        for start in sorted(recorded):
            b = recorded[start]
            slot = start // interval_ms * interval_ms
            c = out.get(slot)
            if c is None:
                out[slot] = _Bucket(b.open, b.high, b.low, b.close, b.count)
            else:
                c.high = max(c.high, b.high)
                c.low = min(c.low, b.low)
                c.close = b.close
                c.count += b.count
        return sorted(out.items())

    def _kline_row(self, symbol: str, start: int, iv: int, b: _Bucket, *, mark: bool = False) -> list[Any]:
        p = self.symbols[symbol].price_places
        if mark:  # markPriceKlines rows: no volume, trade count kept (official example)
            ohlc = [_fmt(b.open, p), _fmt(b.high, p), _fmt(b.low, p), _fmt(b.close, p)]
            return [start, *ohlc, "0", start + iv - 1, "0", b.count, "0", "0", "0"]
        vol = Decimal(b.count)
        quote = vol * b.close
        return [
            start,
            _fmt(b.open, p),
            _fmt(b.high, p),
            _fmt(b.low, p),
            _fmt(b.close, p),
            _fmt(vol),
            start + iv - 1,
            _fmt(quote, p),
            b.count,
            _fmt(vol / 2),
            _fmt(quote / 2, p),
            "0",
        ]

    def _noise(self, symbol: str, what: str, n: int) -> float:
        """A deterministic uniform number in [0, 1) from the seed, the symbol and ``n``."""
        digest = hashlib.blake2b(f"{self.history_seed}:{symbol}:{what}:{n}".encode(), digest_size=8)
        return int.from_bytes(digest.digest(), "big") / 2**64

    def _synthetic_price(self, symbol: str, t_ms: int) -> Decimal:
        """The seeded price path before the sim started: slow waves plus per-minute noise, scaled so
        that it meets the symbol's first price at ``history_start`` (no jump at the seam)."""

        def shape(t: int) -> float:
            day = t / 86_400_000
            phase = [self._noise(symbol, "phase", i) * 2 * math.pi for i in range(3)]
            waves = (
                0.12 * math.sin(2 * math.pi * day / 29.3 + phase[0])
                + 0.03 * math.sin(2 * math.pi * day / 3.7 + phase[1])
                + 0.006 * math.sin(2 * math.pi * day / 0.37 + phase[2])
            )
            return 1.0 + waves + 0.002 * (self._noise(symbol, "min", t // 60_000) - 0.5)

        t0 = self.history_start[symbol]
        first = self._first_price.get(symbol, self.marks[symbol])
        return first * Decimal(repr(shape(t_ms) / shape(t0)))

    def _synthetic_candle(self, symbol: str, slot: int, iv: int) -> _Bucket:
        tick = self.symbols[symbol].tick
        o = self._synthetic_price(symbol, slot)
        c = self._synthetic_price(symbol, slot + iv)
        reach = Decimal(repr(min(0.05, 0.001 * math.sqrt(iv / 60_000))))
        hi = max(o, c) * (1 + reach * Decimal(repr(self._noise(symbol, "hi", slot))))
        lo = min(o, c) * (1 - reach * Decimal(repr(self._noise(symbol, "lo", slot))))
        o, c = o.quantize(tick), c.quantize(tick)
        hi = max(hi.quantize(tick), o, c)
        lo = max(min(lo.quantize(tick), o, c), tick)
        count = 20 + int(self._noise(symbol, "n", slot) * 480)
        return _Bucket(o, hi, lo, c, count)

    def _kline_rows(self, params: dict[str, str], *, mark: bool) -> list[Any]:
        """``GET /fapi/v1/klines`` / ``markPriceKlines``: every slot in the range, oldest first, from
        the onboard date to the current (open) candle; before the sim started the candles come from
        a seeded synthetic path (``history_seed``), after it from the recorded prices (a slot with no
        price change is a flat candle at the previous close, as Binance sends for no trades)."""
        sym = self._symbol(params)
        iv = INTERVAL_MS.get(params.get("interval", ""))
        if iv is None:
            raise SimError(-1120, "Invalid interval.")
        try:
            limit = int(params.get("limit", "500"))
            start = int(params["startTime"]) if "startTime" in params else None
            end = int(params["endTime"]) if "endTime" in params else None
        except ValueError as exc:
            raise SimError(-1100, "Illegal characters found in a parameter.") from exc
        if not 1 <= limit <= 1500:
            raise SimError(-1130, "Invalid data sent for a parameter.")
        name = sym.symbol
        if not self.full_kline_history:
            recorded_rows = [
                self._kline_row(name, slot, iv, b, mark=mark)
                for slot, b in self._candles(name, iv, self._buckets if mark else self._last_buckets)
                if (start is None or slot >= start) and (end is None or slot <= end)
            ]
            return recorded_rows[:limit] if start is not None else recorded_rows[-limit:]
        current = self.now() // iv * iv
        first_slot = -(-sym.onboard_ms // iv) * iv
        last_slot = current if end is None else min(current, end // iv * iv)
        if start is not None:
            lo = max(first_slot, -(-start // iv) * iv)
            hi = min(last_slot, lo + (limit - 1) * iv)
        else:
            hi = last_slot
            lo = max(first_slot, hi - (limit - 1) * iv)
        if hi < lo:
            return []
        recorded = dict(self._candles(name, iv, self._buckets if mark else self._last_buckets))
        minutes = self._buckets if mark else self._last_buckets
        before = [m for m in sorted(minutes.get(name, {})) if m < lo]
        prev_close = minutes[name][before[-1]].close if before else self._first_price.get(name)
        seam = self.history_start[name]
        rows = []
        for slot in range(lo, hi + 1, iv):
            b = recorded.get(slot)
            if b is None and slot + iv <= seam:
                b = self._synthetic_candle(name, slot, iv)
            elif b is None:
                close = prev_close if prev_close is not None else self.marks[name]
                b = _Bucket(close, close, close, close, 0)
            prev_close = b.close
            rows.append(self._kline_row(name, slot, iv, b, mark=mark))
        return rows

    def klines(self, params: dict[str, str]) -> list[Any]:
        return self._kline_rows(params, mark=False)

    def mark_price_klines(self, params: dict[str, str]) -> list[Any]:
        return self._kline_rows(params, mark=True)

    def kline_payload(self, symbol: str, interval: str, *, closed_slot: int | None = None) -> Json | None:
        """A ``kline`` push for the current candle (or the candle at ``closed_slot``, final)."""
        iv = INTERVAL_MS[interval]
        candles = dict(self._candles(symbol, iv))
        slot = closed_slot if closed_slot is not None else self.now() // iv * iv
        b = candles.get(slot)
        if b is None:
            return None
        row = self._kline_row(symbol, slot, iv, b)
        return {
            "e": "kline",
            "E": self.now(),
            "s": symbol,
            "k": {
                "t": slot,
                "T": slot + iv - 1,
                "s": symbol,
                "i": interval,
                "f": 0,
                "L": 0,
                "o": row[1],
                "c": row[4],
                "h": row[2],
                "l": row[3],
                "v": row[5],
                "n": row[8],
                "x": closed_slot is not None,
                "q": row[7],
                "V": row[9],
                "Q": row[10],
                "B": "0",
            },
        }

    # ----------------------------------------------------------------------------------------
    # account
    # ----------------------------------------------------------------------------------------

    def _balance_row(self) -> Json:
        avail = self.available_balance()
        return {
            "accountAlias": "SgsR",
            "asset": "USDT",
            "balance": _fmt(self.wallet, 8),
            "crossWalletBalance": _fmt(self.wallet, 8),
            "crossUnPnl": _fmt(self._unrealized(), 8),
            "availableBalance": _fmt(avail, 8),
            "maxWithdrawAmount": _fmt(max(ZERO, avail), 8),
            "marginAvailable": True,
            "updateTime": self.now(),
        }

    def balance(self, params: dict[str, str]) -> list[Json]:
        return [self._balance_row()]

    def _position_row(self, symbol: str, pside: str, pos: SimPosition, *, v2: bool) -> Json:
        mark = self.marks[symbol]
        lev = self.leverage[symbol]
        notional = pos.amount * mark
        margin = abs(pos.amount) * pos.entry / lev
        upnl = (mark - pos.entry) * pos.amount
        liq = ZERO
        if pos.amount:
            liq = pos.entry * (1 + Decimal(1) / lev) if pos.amount < 0 else pos.entry * (1 - Decimal(1) / lev)
        row: Json = {
            "symbol": symbol,
            "positionSide": pside,
            "positionAmt": _fmt(pos.amount),
            "entryPrice": _fmt(pos.entry),
            "breakEvenPrice": _fmt(pos.entry),
            "markPrice": _fmt(mark, 8),
            "unRealizedProfit": _fmt(upnl, 8),
            "liquidationPrice": _fmt(liq, 8),
            "isolatedMargin": _fmt(margin if self.margin_type[symbol] == "isolated" else ZERO, 8),
            "notional": _fmt(notional, 8),
            "marginAsset": "USDT",
            "isolatedWallet": _fmt(margin if self.margin_type[symbol] == "isolated" else ZERO, 8),
            "initialMargin": _fmt(margin, 8),
            "maintMargin": _fmt(margin / 10, 8),
            "positionInitialMargin": _fmt(margin, 8),
            "openOrderInitialMargin": "0",
            "adl": 0,
            "bidNotional": "0",
            "askNotional": "0",
            "updateTime": pos.update_ms,
        }
        if v2:
            row.update(
                {
                    "leverage": str(lev),
                    "marginType": self.margin_type[symbol],
                    "isAutoAddMargin": "false",
                    "maxNotionalValue": "1000000",
                }
            )
        return row

    def _position_sides(self) -> tuple[str, ...]:
        return ("LONG", "SHORT") if self.hedge_mode else ("BOTH",)

    def position_risk(self, params: dict[str, str], *, v2: bool = False) -> list[Json]:
        """v3: only positions or symbols with open orders; v2: every requested symbol (with leverage)."""
        names = [self._symbol(params).symbol] if params.get("symbol") else list(self.symbols)
        rows = []
        for name in names:
            has_orders = any(o.is_open and o.symbol == name for o in self.open_orders_index.values())
            for pside in self._position_sides():
                pos = self.positions.get((name, pside)) or SimPosition()
                if v2 or pos.amount or has_orders:
                    rows.append(self._position_row(name, pside, pos, v2=v2))
        return rows

    def position_risk_v2(self, params: dict[str, str]) -> list[Json]:
        return self.position_risk(params, v2=True)

    def account(self, params: dict[str, str], *, v2: bool = False) -> Json:
        upnl = self._unrealized()
        pos_margin = self._position_margin()
        avail = self.available_balance()
        totals = {
            "totalInitialMargin": _fmt(pos_margin + self._order_margin(), 8),
            "totalMaintMargin": _fmt(pos_margin / 10, 8),
            "totalWalletBalance": _fmt(self.wallet, 8),
            "totalUnrealizedProfit": _fmt(upnl, 8),
            "totalMarginBalance": _fmt(self.wallet + upnl, 8),
            "totalPositionInitialMargin": _fmt(pos_margin, 8),
            "totalOpenOrderInitialMargin": _fmt(self._order_margin(), 8),
            "totalCrossWalletBalance": _fmt(self.wallet, 8),
            "totalCrossUnPnl": _fmt(upnl, 8),
            "availableBalance": _fmt(avail, 8),
            "maxWithdrawAmount": _fmt(max(ZERO, avail), 8),
        }
        asset = {
            "asset": "USDT",
            "walletBalance": _fmt(self.wallet, 8),
            "unrealizedProfit": _fmt(upnl, 8),
            "marginBalance": _fmt(self.wallet + upnl, 8),
            "maintMargin": _fmt(pos_margin / 10, 8),
            "initialMargin": _fmt(pos_margin, 8),
            "positionInitialMargin": _fmt(pos_margin, 8),
            "openOrderInitialMargin": _fmt(self._order_margin(), 8),
            "crossWalletBalance": _fmt(self.wallet, 8),
            "crossUnPnl": _fmt(upnl, 8),
            "availableBalance": _fmt(avail, 8),
            "maxWithdrawAmount": _fmt(max(ZERO, avail), 8),
            "updateTime": self.now(),
        }
        positions = []
        for (symbol, pside), pos in self.positions.items():
            if pos.amount:
                positions.append(
                    {
                        "symbol": symbol,
                        "positionSide": pside,
                        "positionAmt": _fmt(pos.amount),
                        "unrealizedProfit": _fmt((self.marks[symbol] - pos.entry) * pos.amount, 8),
                        "isolatedMargin": "0",
                        "notional": _fmt(pos.amount * self.marks[symbol], 8),
                        "isolatedWallet": "0",
                        "initialMargin": _fmt(abs(pos.amount) * pos.entry / self.leverage[symbol], 8),
                        "maintMargin": "0",
                        "updateTime": pos.update_ms,
                    }
                )
        return {**totals, "assets": [asset], "positions": positions}

    def account_v2(self, params: dict[str, str]) -> Json:
        return self.account(params, v2=True)

    def get_position_mode(self, params: dict[str, str]) -> Json:
        return {"dualSidePosition": self.hedge_mode}

    def set_position_mode(self, params: dict[str, str]) -> Json:
        want = params.get("dualSidePosition", "").lower()
        if want not in ("true", "false"):
            raise SimError(
                -1102, "Mandatory parameter 'dualSidePosition' was not sent, was empty/null, or malformed."
            )
        if (want == "true") == self.hedge_mode:
            raise SimError(-4059, "No need to change position side.")
        if any(o.is_open for o in self.open_orders_index.values()) or any(
            a.status == "NEW" for a in self.new_algos_index.values()
        ):
            raise SimError(-4067, "Position side cannot be changed if there exists open orders.")
        if any(p.amount for p in self.positions.values()):
            raise SimError(-4068, "Position side cannot be changed if there exists position.")
        self.hedge_mode = want == "true"
        # usdm-2026 corrections: ACCOUNT_CONFIG_UPDATE has no position-mode field; no event is sent
        return {"code": 200, "msg": "success"}

    def set_leverage(self, params: dict[str, str]) -> Json:
        sym = self._symbol(params)
        try:
            lev = int(params.get("leverage", ""))
        except ValueError as exc:
            raise SimError(
                -1102, "Mandatory parameter 'leverage' was not sent, was empty/null, or malformed."
            ) from exc
        if not 1 <= lev <= 125:
            raise SimError(-4028, "Leverage is not valid")
        self.leverage[sym.symbol] = lev
        self._emit(
            {
                "e": "ACCOUNT_CONFIG_UPDATE",
                "E": self.now(),
                "T": self.now(),
                "ac": {"s": sym.symbol, "l": lev},
            }
        )
        return {"leverage": lev, "maxNotionalValue": "1000000", "symbol": sym.symbol}

    def set_margin_type(self, params: dict[str, str]) -> Json:
        sym = self._symbol(params)
        want = params.get("marginType", "")
        mapped = {"ISOLATED": "isolated", "CROSSED": "cross"}.get(want)
        if mapped is None:
            raise SimError(
                -1102, "Mandatory parameter 'marginType' was not sent, was empty/null, or malformed."
            )
        if self.margin_type[sym.symbol] == mapped:
            raise SimError(-4046, "No need to change margin type.")
        if any(o.is_open and o.symbol == sym.symbol for o in self.open_orders_index.values()):
            raise SimError(-4047, "Margin type cannot be changed if there exists open orders.")
        if any(p.amount for (s, _), p in self.positions.items() if s == sym.symbol):
            raise SimError(-4048, "Margin type cannot be changed if there exists position.")
        self.margin_type[sym.symbol] = mapped
        # "ACCOUNT_UPDATE will be pushed only when update happens on user's account, including
        # changes on balances, positions, or margin type" (USDⓈ-M user data streams, "Event: Balance
        # and Position Update"; MARGIN_TYPE_CHANGE is among its reasons). What it carries for a flat
        # symbol is not confirmed: here the wallet (bc 0) and no position.
        wallet, t = _fmt(self.wallet, 8), self.now()
        balance = [{"a": "USDT", "wb": wallet, "cw": wallet, "bc": "0"}]
        self._emit(
            {"e": "ACCOUNT_UPDATE", "T": t, "E": t, "a": {"m": "MARGIN_TYPE_CHANGE", "B": balance, "P": []}}
        )
        return {"code": 200, "msg": "success"}

    # ----------------------------------------------------------------------------------------
    # regular orders
    # ----------------------------------------------------------------------------------------

    def _order_json(self, o: SimOrder, *, query: bool) -> Json:
        p = self.symbols[o.symbol].price_places
        d: Json = {
            "clientOrderId": o.client_id,
            "cumQty": _fmt(o.executed),
            "executedQty": _fmt(o.executed),
            "orderId": o.order_id,
            "origQty": _fmt(o.qty),
            "price": _fmt(o.price, p),
            "reduceOnly": o.reduce_only,
            "side": o.side,
            "positionSide": o.position_side,
            "status": o.status,
            "stopPrice": "0",
            "closePosition": o.close_position,
            "symbol": o.symbol,
            "timeInForce": o.tif,
            "type": o.type,
            "origType": o.type,
            "updateTime": o.update_ms,
            "workingType": "CONTRACT_PRICE",
            "priceProtect": False,
            "priceMatch": "NONE",
            "selfTradePreventionMode": "EXPIRE_MAKER",
            "goodTillDate": 0,
        }
        if query:
            d.update(
                {"avgPrice": _fmt(o.avg_price, p + 4), "cumQuote": _fmt(o.cum_quote, 8), "time": o.time_ms}
            )
            del d["cumQty"]
        return d

    @staticmethod
    def _check_percent_price(sym: SimSymbol, side: str, price: Decimal, mark: Decimal) -> None:
        """PERCENT_PRICE (usdm-2026 §4 filters): BUY price <= mark x multiplierUp, SELL price >=
        mark x multiplierDown; codes -4016 / -4024 (§5). The message texts are not in the reference:
        these are the error page's descriptions, unconfirmed."""
        if side == "BUY" and price > mark * sym.percent_up:
            raise SimError(-4016, "Price is higher than mark price multiplier cap.")
        if side == "SELL" and price < mark * sym.percent_down:
            raise SimError(-4024, "Price is lower than mark price multiplier floor.")

    def new_order(self, params: dict[str, str]) -> Json:
        sym = self._symbol(params)
        otype = params.get("type", "")
        if otype in CONDITIONAL_TYPES:
            raise SimError(
                -4120,
                "Order type not supported for this endpoint. "
                "Please use the Algo Order API endpoints instead.",
            )
        if otype not in ("LIMIT", "MARKET"):
            raise SimError(-1116, "Invalid orderType.")
        side = params.get("side", "")
        if side not in ("BUY", "SELL"):
            raise SimError(-1117, "Invalid side.")
        pside = self._pside(params)
        reduce_only = params.get("reduceOnly", "false").lower() == "true"
        if reduce_only and self.hedge_mode:
            raise SimError(-1106, "Parameter 'reduceOnly' sent when not required.")
        cid = params.get("newClientOrderId") or f"sim_{secrets.token_hex(8)}"
        if not CLIENT_ID.match(cid):
            raise SimError(-4015, "Client order id is not valid.")
        if any(o.is_open and o.symbol == sym.symbol for o in self._orders_by_cid.get(cid, [])):
            raise SimError(-4116, "ClientOrderId is duplicated.")
        qty = self._dec(params, "quantity")
        assert qty is not None
        price: Decimal | None = None
        tif = "GTC"
        if otype == "LIMIT":
            tif = params.get("timeInForce", "")
            if tif not in ("GTC", "IOC", "FOK", "GTX", "GTD"):
                raise SimError(
                    -1102, "Mandatory parameter 'timeInForce' was not sent, was empty/null, or malformed."
                )
            price = self._dec(params, "price")
        self._check_filters(sym, qty, price, otype == "MARKET")
        mark = self.marks[sym.symbol]
        now = self.now()
        order = SimOrder(
            order_id=self._next_order_id,
            symbol=sym.symbol,
            client_id=cid,
            side=side,
            type=otype,
            tif=tif,
            price=price if price is not None else ZERO,
            qty=qty,
            reduce_only=reduce_only,
            position_side=pside,
            time_ms=now,
            update_ms=now,
            policy=self.fill_policies.get(cid, self.default_fill_policy),
        )
        opens = self._opens(order)
        if reduce_only:
            # real-answers: -2022 when the position is already flat (or smaller than the order)
            pos = self.positions.get((sym.symbol, "BOTH"))
            amt = pos.amount if pos else ZERO
            if amt == 0 or (amt < 0) == (side == "SELL"):
                raise SimError(-2022, "ReduceOnly Order is rejected.")
            if self.reduce_only_above_position_rejected and qty > abs(amt):
                raise SimError(-2022, "ReduceOnly Order is rejected.")
        if price is not None and self.enforce_percent_price:
            self._check_percent_price(sym, side, price, mark)
        notional = qty * (price if price is not None else mark)
        if opens and notional < sym.min_notional:
            raise SimError(
                -4164,
                f"Order's notional must be no smaller than {_fmt(sym.min_notional)} "
                "(unless you choose reduce only).",
            )
        book = self.lasts[sym.symbol]  # the sim's book: one level at the last price
        marketable = price is not None and (
            (side == "SELL" and book >= price) or (side == "BUY" and book <= price)
        )
        if tif == "GTX" and marketable:
            raise SimError(
                -5022,
                "Due to the order could not be executed as maker, the Post Only order will be rejected. "
                "The order will not be recorded in the order history",
            )
        if opens and notional / self.leverage[sym.symbol] > self.available_balance():
            raise SimError(-2019, "Margin is insufficient.")
        self._next_order_id += 1
        self._add_order(order)
        self._emit(self._otu(order, "NEW"))
        if otype == "MARKET":
            self._fill(order, order.qty, book, maker=False)
        elif marketable and order.policy != "never":
            self._fill_by_policy(order, maker=False, price=book)  # a taker fills at the book
        return self._order_json(order, query=False)

    def _find_order(self, params: dict[str, str]) -> SimOrder:
        sym = self._symbol(params)
        oid = params.get("orderId")
        cid = params.get("origClientOrderId")
        if not oid and not cid:
            raise SimError(
                -1102, "Param 'origClientOrderId' or 'orderId' must be sent, but both were empty/null!"
            )
        by_id = self.orders.get(_id_key(oid, "orderId")) if oid else None
        candidates = [*([by_id] if by_id else []), *(self._orders_by_cid.get(cid, []) if cid else [])]
        matches = [o for o in candidates if o.symbol == sym.symbol]
        if not matches:
            raise SimError(-2013, "Order does not exist.")
        # The newest order with that client id (ids are only unique among open orders).
        return max(matches, key=lambda o: (o.is_open, o.order_id))

    def query_order(self, params: dict[str, str]) -> Json:
        return self._order_json(self._find_order(params), query=True)

    def cancel_order(self, params: dict[str, str]) -> Json:
        try:
            o = self._find_order(params)
        except SimError as exc:
            if exc.code == -2013:
                raise SimError(-2011, "Unknown order sent.") from exc
            raise
        if not o.is_open:
            raise SimError(-2011, "Unknown order sent.")
        o.status = "CANCELED"
        o.update_ms = self.now()
        self._emit(self._otu(o, "CANCELED"))
        return self._order_json(o, query=False)

    def user_trades(self, params: dict[str, str]) -> list[Json]:
        """``GET /fapi/v1/userTrades``: one symbol's fills, oldest first; ``orderId``, ``fromId``,
        ``startTime``/``endTime`` (at most 7 days apart; the last 7 days by default), ``limit``."""
        sym = self._symbol(params)
        limit = int(params.get("limit", "500"))
        if not 1 <= limit <= 1000:
            raise SimError(-1130, "Data sent for parameter 'limit' is not valid.")
        week = 7 * 24 * 3_600_000
        start = int(params["startTime"]) if "startTime" in params else None
        end = int(params["endTime"]) if "endTime" in params else None
        if start is not None and end is not None and end - start > week:
            raise SimError(-4166, "Search window is restricted to recent 7 days only.")
        if start is None and end is None and "fromId" not in params and "orderId" not in params:
            start = self.now() - week
        found = [
            t
            for t in self.trades
            if t["symbol"] == sym.symbol
            and ("orderId" not in params or str(t["orderId"]) == params["orderId"])
            and ("fromId" not in params or int(t["id"]) >= int(params["fromId"]))
            and (start is None or int(t["time"]) >= start)
            and (end is None or int(t["time"]) <= end)
        ]
        return [dict(t) for t in found[:limit]]

    def agg_trades(self, params: dict[str, str]) -> list[Json]:
        """``GET /fapi/v1/aggTrades`` (developers.binance.com, USDⓈ-M "Compressed/Aggregate Trades
        List"): rows ``a p q f l T m`` oldest first; ``fromId``, ``startTime`` and ``endTime`` are
        inclusive; ``limit`` default 500, max 1000; with neither, the most recent trades.
        The page says startTime..endTime "must be less than 1 hour"; the answer to a longer window
        is taken as -1127 "More than 1 hours between startTime and endTime." (Binance's error-code
        list names -1127 for a too-big lookup interval; unconfirmed for this route). Unsure, not
        documented: only ``startTime`` (here: from it on), only ``endTime`` (here: the last ``limit``
        up to it), and how Binance numbers ``f``/``l`` (here each row is one trade, ``f = l = a``:
        the sim does not aggregate fills of one taker within 100 ms)."""
        sym = self._symbol(params)
        try:
            limit = int(params.get("limit") or 500)
            from_id = int(params["fromId"]) if params.get("fromId") else None
            start = int(params["startTime"]) if params.get("startTime") else None
            end = int(params["endTime"]) if params.get("endTime") else None
        except ValueError as exc:
            raise SimError(-1100, "Illegal characters found in a parameter.") from exc
        if not 1 <= limit <= 1000:
            raise SimError(-1130, "Data sent for parameter 'limit' is not valid.")
        if start is not None and end is not None and end - start >= 3_600_000:
            raise SimError(-1127, "More than 1 hours between startTime and endTime.")
        rows = [
            r
            for r in self.market_trades.get(sym.symbol, [])
            if (from_id is None or r[0] >= from_id)
            and (start is None or r[3] >= start)
            and (end is None or r[3] <= end)
        ]
        rows = rows[-limit:] if from_id is None and start is None else rows[:limit]
        places = sym.price_places
        return [
            {"a": a, "p": _fmt(price, places), "q": _fmt(qty), "f": a, "l": a, "T": t, "m": m}
            for a, price, qty, t, m in rows
        ]

    def batch_orders(self, params: dict[str, str]) -> list[Json]:
        """``POST /fapi/v1/batchOrders``: up to 5 orders (``batchOrders``, a JSON list); each answer
        is the order or its error object, in order (usdm §1.1: conditional types refused as on
        ``/order``). Whether Binance answers -1130 for more than 5 is an assumption."""
        items = self._json_list(params, "batchOrders")
        if not 1 <= len(items) <= 5:
            raise SimError(-1130, "Data sent for parameter 'batchOrders' is not valid.")
        out: list[Json] = []
        for item in items:
            if not isinstance(item, dict):
                out.append({"code": -1130, "msg": "Data sent for parameter 'batchOrders' is not valid."})
                continue
            try:
                out.append(self.new_order({str(k): str(v) for k, v in item.items()}))
            except SimError as err:
                out.append({"code": err.code, "msg": err.msg})
        return out

    def cancel_batch_orders(self, params: dict[str, str]) -> list[Json]:
        """``DELETE /fapi/v1/batchOrders``: ``orderIdList`` or ``origClientOrderIdList`` (JSON, up to
        10); each answer is the cancelled order or its error object."""
        sym = self._symbol(params)
        if params.get("orderIdList"):
            refs = [("orderId", str(x)) for x in self._json_list(params, "orderIdList")]
        else:
            refs = [("origClientOrderId", str(x)) for x in self._json_list(params, "origClientOrderIdList")]
        if not 1 <= len(refs) <= 10:
            raise SimError(-1130, "Data sent for parameter 'orderIdList' is not valid.")
        out: list[Json] = []
        for name, value in refs:
            try:
                out.append(self.cancel_order({"symbol": sym.symbol, name: value}))
            except SimError as err:
                out.append({"code": err.code, "msg": err.msg})
        return out

    @staticmethod
    def _json_list(params: dict[str, str], name: str) -> list[Any]:
        try:
            value = json.loads(params.get(name, ""))
        except ValueError as exc:
            raise SimError(
                -1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed."
            ) from exc
        if not isinstance(value, list):
            raise SimError(-1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.")
        return value

    def modify_order(self, params: dict[str, str]) -> Json:
        """``PUT /fapi/v1/order``: a new price and quantity for an open LIMIT order, pushed as an
        ORDER_TRADE_UPDATE with ``x`` AMENDMENT (usdm §3.1); a price that now crosses fills at the
        book. Unconfirmed details: -5027 for an unchanged order; a quantity at or below the executed
        quantity cancels the order."""
        o = self._find_order(params)
        if not o.is_open:
            raise SimError(-2013, "Order does not exist.")
        if params.get("side") != o.side:
            raise SimError(-1102, "Mandatory parameter 'side' was not sent, was empty/null, or malformed.")
        qty = self._dec(params, "quantity")
        price = self._dec(params, "price")
        assert qty is not None and price is not None
        sym = self.symbols[o.symbol]
        self._check_filters(sym, qty, price, False)
        if self.enforce_percent_price:
            self._check_percent_price(sym, o.side, price, self.marks[o.symbol])
        if qty == o.qty and price == o.price:
            raise SimError(-5027, "No need to modify the order.")
        o.update_ms = self.now()
        if qty <= o.executed:
            o.status = "CANCELED"
            self._emit(self._otu(o, "CANCELED"))
            return self._order_json(o, query=False)
        o.qty, o.price = qty, price
        self._emit(self._otu(o, "AMENDMENT"))
        book = self.lasts[o.symbol]
        if (o.side == "SELL" and book >= price) or (o.side == "BUY" and book <= price):
            self._fill_by_policy(o, maker=False, price=book)
        return self._order_json(o, query=False)

    def countdown_cancel_all(self, params: dict[str, str]) -> Json:
        """``POST /fapi/v1/countdownCancelAll``: cancel the symbol's open orders when ``countdownTime``
        ms pass without another call (0 stops the timer). Whether algo orders are cancelled too is
        not documented; the sim cancels regular orders only."""
        sym = self._symbol(params)
        try:
            countdown = int(params.get("countdownTime", ""))
        except ValueError as exc:
            raise SimError(
                -1102, "Mandatory parameter 'countdownTime' was not sent, was empty/null, or malformed."
            ) from exc
        if countdown <= 0:
            self.countdowns.pop(sym.symbol, None)
        else:
            self.countdowns[sym.symbol] = self.now() + countdown
        return {"symbol": sym.symbol, "countdownTime": str(countdown)}

    def open_orders(self, params: dict[str, str]) -> list[Json]:
        name = self._symbol(params).symbol if params.get("symbol") else None
        return [
            self._order_json(o, query=True)
            for o in self.open_orders_index.values()
            if o.is_open and (name is None or o.symbol == name)
        ]

    def cancel_all_orders(self, params: dict[str, str]) -> Json:
        sym = self._symbol(params)
        for o in self.open_orders_index.values():
            if o.is_open and o.symbol == sym.symbol:
                o.status = "CANCELED"
                o.update_ms = self.now()
                self._emit(self._otu(o, "CANCELED"))
        return {"code": 200, "msg": "The operation of cancel all open order is done."}

    # ----------------------------------------------------------------------------------------
    # matching
    # ----------------------------------------------------------------------------------------

    def _add_order(self, order: SimOrder) -> None:
        self.orders[order.order_id] = order
        self.open_orders_index.add(order.order_id, order)
        self._orders_by_cid.setdefault(order.client_id, []).append(order)

    def _add_algo(self, algo: SimAlgo) -> None:
        self.algos[algo.algo_id] = algo
        self.new_algos_index.add(algo.algo_id, algo)
        self._algos_by_cid.setdefault(algo.client_algo_id, []).append(algo)

    def _match_limits(self, symbol: str, last: Decimal) -> None:
        """Resting LIMIT orders the last price has reached fill as makers at their own price."""
        for o in self.open_orders_index.values():
            if not (o.is_open and o.symbol == symbol and o.type == "LIMIT"):
                continue
            reached = (o.side == "SELL" and last >= o.price) or (o.side == "BUY" and last <= o.price)
            if reached:
                self._fill_by_policy(o, maker=True)

    def _fill_by_policy(self, o: SimOrder, *, maker: bool, price: Decimal | None = None) -> None:
        if o.policy == "never":
            return
        if o.policy == "full":
            qty = o.remaining
        else:
            if o.slices_used >= len(o.policy):
                return
            qty = min(o.policy[o.slices_used], o.remaining)
            o.slices_used += 1
        if qty > 0:
            self._fill(o, qty, o.price if price is None else price, maker=maker)

    def fill_price(self, o: SimOrder, price: Decimal, *, maker: bool) -> Decimal:
        """The price a fill trades at: the book's here; a backtest moves taker fills by its slippage."""
        return price

    def _fill(self, o: SimOrder, qty: Decimal, price: Decimal, *, maker: bool) -> None:
        if o.reduce_only or o.close_position:
            pos = self.positions.get((o.symbol, o.position_side))
            qty = min(qty, abs(pos.amount) if pos else ZERO)
            if qty <= 0:
                o.status = "EXPIRED"
                o.update_ms = self.now()
                self._emit(self._otu(o, "EXPIRED"))
                return
        price = self.fill_price(o, price, maker=maker)
        now = self.now()
        fee = (qty * price * (self.maker_fee if maker else self.taker_fee)).quantize(Decimal("0.00000001"))
        rp = self._apply_position(o.symbol, o.position_side, o.side, qty, price)
        self.wallet += rp - fee
        o.executed += qty
        o.cum_quote += qty * price
        o.update_ms = now
        o.status = "FILLED" if o.executed >= o.qty else "PARTIALLY_FILLED"
        trade_id = self._next_trade_id
        self._next_trade_id += 1
        if self.record_market_trades:
            # One trade of the market, ours: the maker is the buyer when we bought as a maker, or
            # when we sold as the taker.
            self._market_trade(o.symbol, price, qty, now, buyer_maker=(o.side == "BUY") == maker)
        places = self.symbols[o.symbol].price_places
        self.trades.append(
            {
                "buyer": o.side == "BUY",
                "commission": _fmt(fee, 8),
                "commissionAsset": "USDT",
                "id": trade_id,
                "maker": maker,
                "orderId": o.order_id,
                "price": _fmt(price, places),
                "qty": _fmt(qty),
                "quoteQty": _fmt(qty * price, 8),
                "realizedPnl": _fmt(rp, 8),
                "side": o.side,
                "positionSide": o.position_side,
                "symbol": o.symbol,
                "time": now,
            }
        )
        self._emit(
            self._otu(
                o, "TRADE", last_qty=qty, last_price=price, trade_id=trade_id, fee=fee, rp=rp, maker=maker
            )
        )
        self._emit(self._account_update(o.symbol, o.position_side))

    def _apply_position(self, symbol: str, pside: str, side: str, qty: Decimal, price: Decimal) -> Decimal:
        pos = self._position(symbol, pside)
        signed = qty if side == "BUY" else -qty
        old = pos.amount
        rp = ZERO
        if old == 0 or (old > 0) == (signed > 0):
            total = abs(old) + qty
            pos.entry = (abs(old) * pos.entry + qty * price) / total
            pos.amount = old + signed
        else:
            closed = min(qty, abs(old))
            direction = Decimal(1) if old > 0 else Decimal(-1)
            rp = (price - pos.entry) * closed * direction
            pos.amount = old + signed
            if pos.amount == 0:
                pos.entry = ZERO
            elif (pos.amount > 0) != (old > 0):
                pos.entry = price
        pos.realized += rp
        pos.update_ms = self.now()
        places = self.symbols[symbol].price_places + 4
        pos.entry = pos.entry.quantize(Decimal(1).scaleb(-places)) if pos.entry else ZERO
        return rp.quantize(Decimal("0.00000001"))

    # ----------------------------------------------------------------------------------------
    # algo orders
    # ----------------------------------------------------------------------------------------

    def _algo_json(self, a: SimAlgo) -> Json:
        p = self.symbols[a.symbol].price_places
        return {
            "algoId": a.algo_id,
            "clientAlgoId": a.client_algo_id,
            "algoType": "CONDITIONAL",
            "orderType": a.type,
            "symbol": a.symbol,
            "side": a.side,
            "positionSide": a.position_side,
            "timeInForce": a.tif,
            "quantity": _fmt(a.quantity),
            "algoStatus": a.status,
            "actualOrderId": str(a.actual_order_id) if a.actual_order_id else "",
            "actualPrice": _fmt(a.actual_price, p) if a.actual_order_id else "",
            "actualType": self._child_type(a) if a.actual_order_id else "",
            "actualQty": _fmt(a.actual_qty) if a.actual_order_id else "",
            "triggerPrice": _fmt(a.trigger, p),
            "price": _fmt(a.price, p),
            "icebergQuantity": None,
            "selfTradePreventionMode": "EXPIRE_MAKER",
            "workingType": a.working_type,
            "priceMatch": "NONE",
            "closePosition": a.close_position,
            "priceProtect": False,
            "reduceOnly": a.reduce_only,
            "activatePrice": "",
            "callbackRate": "",
            "createTime": a.create_ms,
            "updateTime": a.update_ms,
            "triggerTime": a.trigger_ms,
            "goodTillDate": 0,
        }

    def _algo_event(self, a: SimAlgo, reason: str = "") -> Json:
        p = self.symbols[a.symbol].price_places
        o: Json = {
            "caid": a.client_algo_id,
            "aid": a.algo_id,
            "at": "CONDITIONAL",
            "o": a.type,
            "s": a.symbol,
            "S": a.side,
            "ps": a.position_side,
            "f": a.tif,
            "q": _fmt(a.quantity),
            "X": a.status,
            "ai": str(a.actual_order_id) if a.actual_order_id else "",
            "ap": _fmt(a.actual_price, p),
            "aq": _fmt(a.actual_qty),
            "act": self._child_type(a) if a.actual_order_id else "0",
            "tp": _fmt(a.trigger, p),
            "p": _fmt(a.price, p) if a.price else "0",
            "V": "EXPIRE_MAKER",
            "wt": a.working_type,
            "pm": "NONE",
            "cp": a.close_position,
            "pP": False,
            "R": a.reduce_only,
            "tt": a.trigger_ms,
            "gtd": 0,
        }
        if reason:
            o["rm"] = reason
        now = self.now()
        return {"e": "ALGO_UPDATE", "T": now, "E": now, "o": o}

    @staticmethod
    def _child_type(a: SimAlgo) -> str:
        return "LIMIT" if a.type in ("STOP", "TAKE_PROFIT") else "MARKET"

    def working_price(self, a: SimAlgo) -> Decimal:
        """usdm-2026 §1.3: ``workingType`` MARK_PRICE triggers on the mark, CONTRACT_PRICE (the
        default) on the last price."""
        return self.marks[a.symbol] if a.working_type == "MARK_PRICE" else self.lasts[a.symbol]

    @staticmethod
    def _would_trigger(a: SimAlgo, price: Decimal) -> bool:
        stop = a.type in ("STOP_MARKET", "STOP")
        if a.side == "BUY":
            return price >= a.trigger if stop else price <= a.trigger
        return price <= a.trigger if stop else price >= a.trigger

    def new_algo_order(self, params: dict[str, str]) -> Json:
        if params.get("algoType") != "CONDITIONAL":
            raise SimError(
                -1102, "Mandatory parameter 'algoType' was not sent, was empty/null, or malformed."
            )
        sym = self._symbol(params)
        otype = params.get("type", "")
        if otype not in ("STOP_MARKET", "TAKE_PROFIT_MARKET", "STOP", "TAKE_PROFIT"):
            raise SimError(-1116, "Invalid orderType.")  # TRAILING_STOP_MARKET is not modelled
        side = params.get("side", "")
        if side not in ("BUY", "SELL"):
            raise SimError(-1117, "Invalid side.")
        pside = self._pside(params)
        close = params.get("closePosition", "false").lower() == "true"
        reduce_only = params.get("reduceOnly", "false").lower() == "true"
        if reduce_only and self.hedge_mode:
            raise SimError(-1106, "Parameter 'reduceOnly' sent when not required.")
        qty = self._dec(params, "quantity", required=False)
        if close and qty is not None:
            raise SimError(-4137, "Quantity must be zero with closePosition equals true.")
        if close and reduce_only:
            raise SimError(-1106, "Parameter 'reduceOnly' sent when not required.")
        if not close and qty is None:
            raise SimError(
                -1102, "Mandatory parameter 'quantity' was not sent, was empty/null, or malformed."
            )
        if close and (pside, side) in (("SHORT", "SELL"), ("LONG", "BUY")):
            raise SimError(-4138, "Reduce only must be true with closePosition equals true.")
        limit_price: Decimal | None = None
        tif = "GTC"
        if otype in ("STOP", "TAKE_PROFIT"):  # stop-limit: a LIMIT child at ``price`` (§1.3)
            if close:
                raise SimError(-1106, "Parameter 'closePosition' sent when not required.")
            limit_price = self._dec(params, "price")
            assert limit_price is not None
            tif = params.get("timeInForce", "GTC") or "GTC"
            if tif not in ("GTC", "IOC", "FOK", "GTX"):
                raise SimError(-1115, "Invalid timeInForce.")
            self._check_filters(sym, qty if qty is not None else sym.min_qty, limit_price, False)
        trigger = self._dec(params, "triggerPrice")
        assert trigger is not None
        self._check_filters(sym, qty if qty is not None else sym.min_qty, trigger, limit_price is None)
        caid = params.get("clientAlgoId") or secrets.token_urlsafe(16)[:22]
        if not CLIENT_ID.match(caid):
            raise SimError(-4015, "Client order id is not valid.")
        if any(a.status == "NEW" for a in self._algos_by_cid.get(caid, [])):
            raise SimError(-4116, "ClientOrderId is duplicated.")
        working = params.get("workingType", "CONTRACT_PRICE") or "CONTRACT_PRICE"
        if working not in ("MARK_PRICE", "CONTRACT_PRICE"):
            raise SimError(
                -1102, "Mandatory parameter 'workingType' was not sent, was empty/null, or malformed."
            )
        now = self.now()
        algo = SimAlgo(
            algo_id=self._next_algo_id,
            client_algo_id=caid,
            symbol=sym.symbol,
            side=side,
            type=otype,
            position_side=pside,
            trigger=trigger,
            working_type=working,
            close_position=close,
            quantity=qty if qty is not None else ZERO,
            reduce_only=reduce_only,
            create_ms=now,
            update_ms=now,
            price=limit_price if limit_price is not None else ZERO,
            tif=tif,
        )
        if self._would_trigger(algo, self.working_price(algo)):
            raise SimError(-2021, "Order would immediately trigger.")  # real-answers, 61 times
        if close:
            self._check_close_position(algo)
        self._next_algo_id += 1
        self._add_algo(algo)
        self._emit(self._algo_event(algo))
        return self._algo_json(algo)

    def _check_close_position(self, algo: SimAlgo) -> None:
        """Real answers (March 2026): -4509 for a ``closePosition`` stop on a flat symbol (position
        side); -4130 when a ``closePosition`` order of the same kind (STOP or TAKE_PROFIT) and the same
        direction (side, position side) is already open, whoever placed it. Unsure: whether a
        closePosition STOP blocks a closePosition TAKE_PROFIT too; the sim allows one of each, as the
        app's position TP/SL does. The order of the two checks on Binance is unknown."""
        pos = self.positions.get((algo.symbol, algo.position_side))
        if self.reject_close_position_when_flat and (pos is None or pos.amount == 0):
            raise SimError(
                -4509,
                "Time in Force (TIF) GTE can only be used with open positions. "
                "Please ensure that positions are available.",
            )
        if not self.one_close_position_per_direction:
            return
        kind = algo.type.removesuffix("_MARKET")
        for other in self.new_algos_index.values():
            if (
                other.status == "NEW"
                and other.close_position
                and other.symbol == algo.symbol
                and other.side == algo.side
                and other.position_side == algo.position_side
                and other.type.removesuffix("_MARKET") == kind
            ):
                raise SimError(
                    -4130,
                    "An open stop or take profit order with GTE and closePosition "
                    "in the direction is existing.",
                )

    def _find_algo(self, params: dict[str, str]) -> SimAlgo:
        aid = params.get("algoId")
        caid = params.get("clientAlgoId")
        if not aid and not caid:
            raise SimError(-1102, "Param 'clientAlgoId' or 'algoId' must be sent, but both were empty/null!")
        by_id = self.algos.get(_id_key(aid, "algoId")) if aid else None
        matches = [*([by_id] if by_id else []), *(self._algos_by_cid.get(caid, []) if caid else [])]
        if not matches:
            raise SimError(-2013, "Order does not exist.")
        return max(matches, key=lambda a: (a.status == "NEW", a.algo_id))

    def query_algo_order(self, params: dict[str, str]) -> Json:
        return self._algo_json(self._find_algo(params))

    def cancel_algo_order(self, params: dict[str, str]) -> Json:
        try:
            a = self._find_algo(params)
        except SimError as exc:
            if exc.code == -2013:
                raise SimError(-2011, "Unknown order sent.") from exc
            raise
        if a.status != "NEW":
            raise SimError(-2011, "Unknown order sent.")
        a.status = "CANCELED"
        a.update_ms = self.now()
        self._emit(self._algo_event(a))
        return {"algoId": a.algo_id, "clientAlgoId": a.client_algo_id, "code": "200", "msg": "success"}

    def open_algo_orders(self, params: dict[str, str]) -> list[Json]:
        name = self._symbol(params).symbol if params.get("symbol") else None
        return [
            self._algo_json(a)
            for a in self.new_algos_index.values()
            if a.status == "NEW" and (name is None or a.symbol == name)
        ]

    def cancel_all_algo_orders(self, params: dict[str, str]) -> Json:
        sym = self._symbol(params)
        for a in self.new_algos_index.values():
            if a.status == "NEW" and a.symbol == sym.symbol:
                a.status = "CANCELED"
                a.update_ms = self.now()
                self._emit(self._algo_event(a))
        return {"code": 200, "msg": "The operation of cancel all open order is done."}

    def _trigger_algos(self, symbol: str) -> None:
        """Algo orders whose working price crossed their trigger. Lifecycle (usdm-2026 §1.5 and the
        corrections): TRIGGERING, TRIGGERED (with ``ai``), the child MARKET order's events, FINISHED;
        ``algo_lifecycle`` moves the child's fills before TRIGGERED or drops TRIGGERED (both seen by
        third parties). A closePosition order with nothing to close ends EXPIRED, a reduce-only one
        REJECTED with ``rm`` "Reduce Only reject" (the doc's example reason); which of the two
        Binance uses in each case is not documented."""
        for a in self.new_algos_index.values():
            if a.status != "NEW" or a.symbol != symbol or not self._would_trigger(a, self.working_price(a)):
                continue
            self._run_trigger(a)

    def _run_trigger(self, a: SimAlgo) -> None:
        symbol = a.symbol
        now = self.now()
        a.trigger_ms = now
        a.update_ms = now
        if self.emit_triggering:
            a.status = "TRIGGERING"
            self._emit(self._algo_event(a))
        pos = self.positions.get((symbol, a.position_side))
        amt = pos.amount if pos else ZERO
        qty = abs(amt) if a.close_position else a.quantity
        closes = (amt < 0 and a.side == "BUY") or (amt > 0 and a.side == "SELL")
        if (a.close_position or a.reduce_only) and (qty == 0 or not closes):
            a.status = "EXPIRED" if a.close_position else "REJECTED"
            reason = "No position to close" if a.close_position else "Reduce Only reject"
            self._emit(self._algo_event(a, reason))
            return
        if a.reduce_only:
            qty = min(qty, abs(amt))
        child = SimOrder(
            order_id=self._next_order_id,
            symbol=symbol,
            client_id=f"{a.client_algo_id}"[:36],
            side=a.side,
            type=self._child_type(a),
            tif=a.tif,
            price=a.price,
            qty=qty,
            reduce_only=a.reduce_only,
            position_side=a.position_side,
            time_ms=now,
            update_ms=now,
            close_position=a.close_position,
            policy=self.fill_policies.get(a.client_algo_id, self.default_fill_policy),
        )
        self._next_order_id += 1
        self._add_order(child)
        a.actual_order_id = child.order_id
        mode = self.algo_lifecycle
        if mode == "normal":
            a.status = "TRIGGERED"
            self._emit(self._algo_event(a))
        self._emit(self._otu(child, "NEW", original_type=a.type, working_type=a.working_type))
        book = self.lasts[symbol]
        if child.type == "MARKET":
            self._fill(child, qty, book, maker=False)
        elif (a.side == "BUY" and book <= a.price) or (a.side == "SELL" and book >= a.price):
            self._fill_by_policy(child, maker=False, price=book)  # a crossing child takes the book
        # A resting LIMIT child fills later (as a maker); the algo order itself is FINISHED once its
        # child is in the book (Binance's exact moment for FINISHED is not documented).
        a.actual_qty = child.executed
        a.actual_price = child.avg_price
        if mode == "fill_before_triggered":
            a.status = "TRIGGERED"
            self._emit(self._algo_event(a))
        a.status = "FINISHED"
        a.update_ms = self.now()
        self._emit(self._algo_event(a))

    # ----------------------------------------------------------------------------------------
    # user events
    # ----------------------------------------------------------------------------------------

    def _otu(
        self,
        o: SimOrder,
        x: str,
        *,
        last_qty: Decimal = ZERO,
        last_price: Decimal = ZERO,
        trade_id: int = 0,
        fee: Decimal = ZERO,
        rp: Decimal = ZERO,
        maker: bool = False,
        original_type: str | None = None,
        working_type: str = "CONTRACT_PRICE",
    ) -> Json:
        p = self.symbols[o.symbol].price_places
        now = self.now()
        body: Json = {
            "s": o.symbol,
            "c": o.client_id,
            "S": o.side,
            "o": o.type,
            "f": o.tif,
            "q": _fmt(o.qty),
            "p": _fmt(o.price, p),
            "ap": _fmt(o.avg_price, p + 4),
            "sp": "0",
            "x": x,
            "X": o.status,
            "i": o.order_id,
            "l": _fmt(last_qty),
            "z": _fmt(o.executed),
            "L": _fmt(last_price, p),
            "N": "USDT",
            "n": _fmt(fee, 8),
            "T": now,
            "t": trade_id,
            "b": "0",
            "a": "0",
            "m": maker,
            "R": o.reduce_only,
            "wt": working_type,
            "ot": original_type or o.type,
            "ps": o.position_side,
            "cp": o.close_position,
            "rp": _fmt(rp, 8),
            "pP": False,
            "si": 0,
            "ss": 0,
            "V": "EXPIRE_MAKER",
            "pm": "NONE",
            "gtd": 0,
            "er": "0",
        }
        return {"e": "ORDER_TRADE_UPDATE", "T": now, "E": now, "o": body}

    def _account_update(self, symbol: str, pside: str) -> Json:
        pos = self._position(symbol, pside)
        now = self.now()
        mark = self.marks[symbol]
        return {
            "e": "ACCOUNT_UPDATE",
            "T": now,
            "E": now,
            "a": {
                "m": "ORDER",
                "B": [{"a": "USDT", "wb": _fmt(self.wallet, 8), "cw": _fmt(self.wallet, 8), "bc": "0"}],
                "P": [
                    {
                        "s": symbol,
                        "pa": _fmt(pos.amount),
                        "ep": _fmt(pos.entry),
                        "bep": _fmt(pos.entry),
                        "cr": _fmt(pos.realized, 8),
                        "up": _fmt((mark - pos.entry) * pos.amount, 8),
                        "mt": self.margin_type[symbol],
                        "iw": "0",
                        "ps": pside,
                        "ma": "USDT",
                    }
                ],
            },
        }

    # ----------------------------------------------------------------------------------------
    # listen keys
    # ----------------------------------------------------------------------------------------

    def new_listen_key(self, params: dict[str, str]) -> Json:
        """Returns the active key (extended) if there is one, like Binance."""
        now = self.now()
        for key, expires in self.listen_keys.items():
            if expires > now:
                self.listen_keys[key] = now + LISTEN_KEY_TTL_MS
                return {"listenKey": key}
        key = secrets.token_urlsafe(48)[:64]
        self.listen_keys[key] = now + LISTEN_KEY_TTL_MS
        return {"listenKey": key}

    def keepalive_listen_key(self, params: dict[str, str]) -> Json:
        now = self.now()
        live = [k for k, exp in self.listen_keys.items() if exp > now]
        if not live:
            raise SimError(-1125, "This listenKey does not exist.")
        for k in live:
            self.listen_keys[k] = now + LISTEN_KEY_TTL_MS
        return {"listenKey": live[0]}

    def close_listen_key(self, params: dict[str, str]) -> Json:
        self.listen_keys.clear()
        return {}

    def listen_key_valid(self, key: str) -> bool:
        return self.listen_keys.get(key, 0) > self.now()

    def expire_listen_key(self, key: str) -> None:
        """The key dies: ``listenKeyExpired`` goes to its connections."""
        if key not in self.listen_keys:
            return
        del self.listen_keys[key]
        # usdm-2026 §3: the connector's model has an integer E since 2026-05 (the old doc: a string)
        e_time: int | str = str(self.now()) if self.listen_key_expired_e_as_string else self.now()
        self._emit({"e": "listenKeyExpired", "E": e_time, "listenKey": key}, key)

    def round_qty(self, symbol: str, qty: Decimal) -> Decimal:
        step = self.symbols[symbol].step
        return (qty / step).to_integral_value(rounding=ROUND_DOWN) * step
