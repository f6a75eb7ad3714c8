"""The models the transition tables drive, and exact (de)serialisation for snapshot()/restore().

Models compare by identity (``eq=False``): ``transitions``' ``add_model`` compares with ``==`` and
would silently skip a second symbol whose fields happen to be equal.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from fsm import events
from fsm.orders import OPEN_STATUSES, TERMINAL_STATUSES, OrderTrack
from fsm.rules import OPERATOR_FLATTEN

__all__ = ["OPEN_STATUSES", "TERMINAL_STATUSES", "LockModel", "OrderTrack", "SymbolModel", "decode", "encode"]

ZERO = Decimal(0)

ENTRY_LEGS = frozenset({"ENTRY1", "ENTRY2"})
LIMIT_EXIT_LEGS = frozenset({"TP", "BE"})
STOP_LEGS = frozenset({"BE_STOP", "MDD"})


@dataclass(eq=False, kw_only=True)
class SymbolModel:
    """Everything the engine knows about one symbol; ``state`` is driven by the symbol table."""

    symbol: str
    state: str = "IDLE"
    info: events.SymbolInfo | None = None
    # The signal that started it (N-10: tie-break on receipt time, then message id).
    message_id: int = 0
    received_at_ms: int = 0
    mode: str = ""
    target: Decimal = ZERO
    entry_trigger: Decimal = ZERO  # target x (1 - buffer), fixed at receipt like the target
    # Orders by client id, and the next generation per leg (N-13).
    orders: dict[str, OrderTrack] = field(default_factory=dict)
    generations: dict[str, int] = field(default_factory=dict)
    algo_children: dict[int, str] = field(default_factory=dict)
    orphan_updates: list[events.OrderUpdated] = field(default_factory=list)
    # The price triggers (W37/W40 take-profit, W41 scale-in, W43 breakeven), OFF or ARMED, each
    # driven by its table in fsm/table.py; the scale-in's level is fixed when PHASE1 begins.
    tp_trigger: str = "OFF"
    add_trigger: str = "OFF"
    be_trigger: str = "OFF"
    add_price: Decimal = ZERO
    risk_mode: str = "NORMAL"  # PROTECTED once a risk message in profit protected the trade (R06)
    # The entry whose setup (PrepareOrder) is in flight (NONE, ENTRY1, ENTRY2), and W35-1's retry.
    setup: str = "NONE"
    margin_retry_done: bool = False
    # Whether a close is decided (OPEN, CLOSING, DEFERRED, FLATTENING), driven by the close table
    # (fsm/table.py CLOSE_TRANSITIONS), with its reason and its timed-retry schedule (D-19).
    close_state: str = "OPEN"
    close_reason: str = ""
    close_attempts: int = 0
    close_retry_at_ms: int = 0  # after the attempts ran out: when the next timed close goes out
    exit_cancels: str = "CLEAN"  # FAILED: an exit of this symbol resisted three cancels (R15)
    # Position as last reported by the venue (ACCOUNT_UPDATE / positionRisk) and since when it
    # disagrees with our fills (R20).
    venue_position: Decimal | None = None
    venue_entry_price: Decimal = ZERO
    mismatch_since_ms: int = 0
    mismatch_readback: bool = False  # our open orders were read back for the current mismatch
    readback_cids: tuple[str, ...] = ()  # ... and these answers are still awaited
    unmanaged: bool = False

    @property
    def closing(self) -> bool:
        """A close is decided: every order of ours is being cancelled and the position closed."""
        return self.close_state != "OPEN"

    @property
    def close_deferred(self) -> bool:
        """The decided market close waits for the answers to its exit cancels (R11)."""
        return self.close_state == "DEFERRED"

    @property
    def tp_armed(self) -> bool:
        return self.tp_trigger == "ARMED"

    @property
    def add_armed(self) -> bool:
        return self.add_trigger == "ARMED"

    @property
    def be_armed(self) -> bool:
        return self.be_trigger == "ARMED"

    @property
    def risk_protected(self) -> bool:
        return self.risk_mode == "PROTECTED"

    @property
    def preparing(self) -> str:
        """The leg whose setup is in flight, or "" when none is."""
        return "" if self.setup == "NONE" else self.setup

    @property
    def cancel_failed(self) -> bool:
        return self.exit_cancels == "FAILED"

    def reset_to(self, symbol: str) -> None:
        """Become a fresh IDLE model of ``symbol``, keeping the trigger methods the machine bound."""
        self.__dict__.update(SymbolModel(symbol=symbol).__dict__)

    # -- derived position -------------------------------------------------------------------
    def entry_filled_qty(self) -> Decimal:
        return sum((o.filled for o in self.orders.values() if o.leg in ENTRY_LEGS), ZERO)

    def exit_filled_qty(self) -> Decimal:
        return sum((o.filled for o in self.orders.values() if o.leg not in ENTRY_LEGS), ZERO)

    def position(self) -> Decimal:
        return self.entry_filled_qty() - self.exit_filled_qty()

    def average(self) -> Decimal:
        qty = self.entry_filled_qty()
        if qty <= 0:
            return ZERO
        cost = sum((o.avg_price * o.filled for o in self.orders.values() if o.leg in ENTRY_LEGS), ZERO)
        return cost / qty

    def may_have_live_order(self) -> bool:
        """The symbol table's ``reset`` is refused while this holds (``OrderTrack.may_be_live``)."""
        return any(o.may_be_live for o in self.orders.values())

    def open_orders(self, *legs: str) -> list[OrderTrack]:
        return [o for o in self.orders.values() if o.is_open and (not legs or o.leg in legs)]

    def latest(self, leg: str) -> OrderTrack | None:
        found = [o for o in self.orders.values() if o.leg == leg]
        return found[-1] if found else None

    def next_generation(self, leg: str) -> int:
        gen = self.generations.get(leg, 0) + 1
        self.generations[leg] = gen
        return gen


@dataclass(eq=False, kw_only=True)
class LockModel:
    """The model of one global machine; ``state`` is driven by its table."""

    name: str
    state: str


# ---------------------------------------------------------------------------------------------
# Exact JSON-able encoding: Decimal keeps its digits, dataclasses keep their type.
# ---------------------------------------------------------------------------------------------

_REGISTRY: dict[str, type[Any]] = {cls.__name__: cls for cls in (OrderTrack, SymbolModel, LockModel)}
# Every event and every value an event carries (the journal's exact codec, ``fsm.journal``).
_REGISTRY.update(
    {
        name: cls
        for name, cls in vars(events).items()
        if isinstance(cls, type) and dataclasses.is_dataclass(cls)
    }
)


_FIELDS: dict[type, tuple[str, ...]] = {}  # a registered dataclass -> its field names, in order


def encode(value: Any) -> Any:
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if kind is Decimal:
        return {"$d": str(value)}
    names = _FIELDS.get(kind)
    if names is not None:  # the journal's hot path: scalar fields are encoded here, without a call
        out: dict[str, Any] = {"$t": kind.__name__}
        for n in names:
            v = getattr(value, n)
            t = type(v)
            if t is str or t is int or t is bool or v is None:
                out[n] = v
            elif t is Decimal:
                out[n] = {"$d": str(v)}
            else:
                out[n] = encode(v)
        return out
    if kind is tuple:  # before the dataclass test: a signal's 200 candles come this way
        return {"$u": [encode(v) for v in value]}
    if isinstance(value, Decimal):
        return {"$d": str(value)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        name = type(value).__name__
        if name not in _REGISTRY:
            raise TypeError(f"cannot encode {name}")
        if _REGISTRY[name] is kind:
            _FIELDS[kind] = tuple(f.name for f in dataclasses.fields(value))
        body = {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {"$t": name, **body}
    if isinstance(value, dict):
        return {"$m": [[encode(k), encode(v)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {"$u": [encode(v) for v in value]}
    if isinstance(value, list):
        return [encode(v) for v in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    raise TypeError(f"cannot encode {type(value).__name__}")


def decode(value: Any) -> Any:
    if isinstance(value, list):
        return [decode(v) for v in value]
    if isinstance(value, dict):
        if "$d" in value:
            return Decimal(value["$d"])
        if "$m" in value:
            return {decode(k): decode(v) for k, v in value["$m"]}
        if "$u" in value:
            return tuple(decode(v) for v in value["$u"])
        if "$t" in value:
            cls = _REGISTRY[value["$t"]]
            fields = {k: decode(v) for k, v in value.items() if k != "$t"}
            if cls is SymbolModel:
                _upgrade_symbol(fields)
            return cls(**fields)
        raise ValueError(f"unknown encoded mapping {sorted(value)}")
    return value


# Flags a snapshot written before the trigger tables holds, and the (attribute, state when set) each became.
_OLD_FLAGS: dict[str, tuple[str, str, str]] = {
    "tp_armed": ("tp_trigger", "ARMED", "OFF"),
    "add_armed": ("add_trigger", "ARMED", "OFF"),
    "be_armed": ("be_trigger", "ARMED", "OFF"),
    "risk_protected": ("risk_mode", "PROTECTED", "NORMAL"),
    "cancel_failed": ("exit_cancels", "FAILED", "CLEAN"),
}


def _upgrade_symbol(fields: dict[str, Any]) -> None:
    """A symbol saved before its flags became tables decodes to the states they meant: a daemon
    upgraded in the middle of a trade or of a close carries it on."""
    for flag, (attribute, on, off) in _OLD_FLAGS.items():
        if flag in fields:  # a state written beside its old flag is the newer word: it stays
            fields.setdefault(attribute, on if fields.pop(flag) else off)
    if "preparing" in fields:
        fields.setdefault("setup", fields.pop("preparing") or "NONE")
    if "closing" not in fields:
        return
    closing, deferred = fields.pop("closing"), fields.pop("close_deferred", False)
    if not closing:
        fields["close_state"] = "OPEN"
    elif fields.get("close_reason") == OPERATOR_FLATTEN:
        fields["close_state"] = "FLATTENING"
    else:
        fields["close_state"] = "DEFERRED" if deferred else "CLOSING"
