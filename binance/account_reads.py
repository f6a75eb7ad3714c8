"""W24's account reads made while a first entry is monitored, so that its order leaves at the
trigger without waiting for them (issue #11 step 9, specs/DECISIONS.md D-72).

W24 reads the position mode (weight 30), the symbol's leverage and margin type (symbolConfig, 5)
and the wallet balance (5) right after the 0.1 % trigger, before the order: three round trips
(one, sent together) between the trigger and the order. W17-1 forbids *changes* while monitoring,
not reads, so the daemon reads the three ahead (``refresh``) and the executor takes them at the
trigger (``usable``) while they are fresh:

- younger than ``max_age_ms`` (the operator's ``binance.account_read_max_age_seconds``; 0, the
  default, turns this off and every first entry reads at its trigger, as W24 says);
- read while the user-data stream was connected, on the same connection as now: every change of
  the wallet is pushed there (ACCOUNT_UPDATE), and so is a leverage change (ACCOUNT_CONFIG_UPDATE),
  so a push that the daemon handles (``invalidate``) or a gap in the stream voids the facts;
- read in one piece, after the last invalidation: a read in flight while a push is handled is
  thrown away, since its answer may predate the push.

The position mode has no push: a switch in the app in the last ``max_age_ms`` is not seen before
the order (refused -4061, which voids the facts). A margin type change is pushed by Binance's
documentation (ACCOUNT_UPDATE, reason MARGIN_TYPE_CHANGE), not confirmed live for a flat symbol. A
push that arrives after the trigger is not seen either: the reason it is off by default (D-72).
Leverage and margin changes themselves are still made only at the trigger (W17-1): when the facts
say they differ, the executor sets them before the order, as W24 says.

Nothing here decides: a fact that is missing, stale or unreadable means the trigger reads, as
without this module. Reads start at least ``MIN_GAP_MS`` apart (``NEW_SYMBOL_GAP_MS`` for a symbol
that has just started monitoring: leading messages are few), and a failed one is tried again
after 15 s, doubling to 2 minutes: neither a stream of pushes nor a venue refusing every read makes
it spend the IP's weight (40 a read).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal

from binance import parse
from binance.parse import SymbolConfig
from binance.rest import BinanceRest
from fsm.events import PositionMode

log = logging.getLogger(__name__)
MIN_GAP_MS = 10_000  # between two reads' starts: a stream of pushes costs at most 240 weight a minute
NEW_SYMBOL_GAP_MS = 1_000  # ... when a symbol has just started monitoring
RETRY_FIRST_MS = 15_000  # after a failed read; doubling ...
RETRY_MAX_MS = 120_000  # ... up to this: a venue refusing every read is not asked every second


@dataclass(frozen=True, slots=True)
class AccountFacts:
    """One complete read of what W24 needs, and when and on which user-stream connection."""

    read_at_ms: int
    epoch: int
    position_mode: PositionMode
    wallet_balance: Decimal
    available_balance: Decimal
    configs: Mapping[str, SymbolConfig]


class AccountReads:
    """The facts of the last complete read, voided by any account push or stream gap."""

    def __init__(
        self,
        rest: BinanceRest,
        *,
        max_age_ms: int,
        stream_epoch: Callable[[], int | None],
        asset: str = "USDT",
    ) -> None:
        """``stream_epoch`` returns the user stream's connection number while it is connected,
        None while it is not."""
        self.rest = rest
        self.asset = asset
        self.max_age_ms = max_age_ms
        self._stream_epoch = stream_epoch
        self._facts: AccountFacts | None = None
        self._generation = 0  # bumped by every invalidation: a read that began before is void
        self.reads = 0  # complete reads stored (the operator's and the tests' count)
        self.served = 0  # first entries that took them (the bench's count)
        self.problem = ""  # why the last read failed, "" after a good one
        self._started_ms: int | None = None  # when the last read started (venue ms)
        self._retry_ms = 0  # after a failure, no read starts before this
        self._failures = 0  # reads failed in a row

    @property
    def enabled(self) -> bool:
        return self.max_age_ms > 0

    @property
    def facts(self) -> AccountFacts | None:
        return self._facts

    def invalidate(self, why: str) -> None:
        self._generation += 1
        if self._facts is not None:
            log.debug("account facts void: %s", why)
            self._facts = None

    def due(self, now_ms: int, *, new_symbol: bool = False) -> bool:
        """Time to read again: none held, or half their life gone (a read never ages past the
        limit while the next is due), a user stream is there to watch them, and the last read
        started long enough ago (``MIN_GAP_MS``, or ``NEW_SYMBOL_GAP_MS`` for ``new_symbol``; after
        failures, the back-off)."""
        if not self.enabled or self._stream_epoch() is None or now_ms < self._retry_ms:
            return False
        gap = NEW_SYMBOL_GAP_MS if new_symbol else MIN_GAP_MS
        if self._started_ms is not None and 0 <= now_ms - self._started_ms < gap:
            return False
        facts = self._facts
        return facts is None or now_ms - facts.read_at_ms >= self.max_age_ms // 2

    def usable(self, symbol: str, now_ms: int) -> AccountFacts | None:
        facts = self._facts
        if facts is None or symbol not in facts.configs:
            return None
        if not 0 <= now_ms - facts.read_at_ms < self.max_age_ms:
            return None
        if self._stream_epoch() != facts.epoch:  # the stream dropped since: a push may be lost
            self.invalidate("user stream reconnected or down")
            return None
        self.served += 1
        return facts

    async def refresh(self, now_ms: int) -> bool:
        """Read the three together (weight 40); store them only if nothing voided them meanwhile.
        A failed read leaves none (the trigger then reads for itself) and says why in ``problem``."""
        epoch = self._stream_epoch()
        if not self.enabled or epoch is None:
            return False
        generation = self._generation
        self._started_ms = now_ms
        mode_res, config_res, balance_res = await asyncio.gather(
            self.rest.position_mode(), self.rest.symbol_config(), self.rest.balance(), return_exceptions=True
        )
        try:
            for res in (mode_res, config_res, balance_res):
                if isinstance(res, BaseException):
                    raise res
            mode = parse.position_mode_from_rest(mode_res)
            configs = _usable_rows(config_res)
            wallet, available = parse.balance_from_rest(balance_res, self.asset)
        except Exception as exc:  # a venue error, a malformed answer, or anything unforeseen
            self.invalidate("read failed")
            self.problem = f"{type(exc).__name__}: {exc}"
            self._failures += 1
            self._retry_ms = now_ms + min(RETRY_FIRST_MS << min(self._failures - 1, 8), RETRY_MAX_MS)
            return False
        self._failures = 0
        if generation != self._generation or self._stream_epoch() != epoch:
            return False  # a push was handled (or the stream dropped) while it was read
        self._facts = AccountFacts(
            read_at_ms=now_ms,
            epoch=epoch,
            position_mode=mode,
            wallet_balance=wallet,
            available_balance=available,
            configs=configs,
        )
        self.reads += 1
        self.problem = ""
        return True


def _usable_rows(rows: object) -> dict[str, SymbolConfig]:
    """The symbols whose row reads; a row that does not (another contract's, say) is left out on
    its own: its symbol's trigger reads for itself, the others keep their facts."""
    if not isinstance(rows, list):
        raise ValueError("symbolConfig answer is not a list")
    out: dict[str, SymbolConfig] = {}
    for row in rows:
        try:
            out.update(parse.symbol_configs_from_rest([row]))
        except (KeyError, ValueError, TypeError):
            log.debug("symbolConfig row left out: %r", row)
    return out
