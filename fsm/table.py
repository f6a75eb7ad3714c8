"""The state machines of shortfsm as data: read this file to learn the whole strategy's shape.

Per symbol (spec 2.2): IDLE -> MONITORING -> ENTRY_ORDER -> PHASE1 -> PHASE2 -> EXITING, with the
resets the spec describes. Global (spec 2.1 and section 1): the entry lock, the stale-price safety
lock, the recovery lock, the exit-cancel-failed lock, and the two protection modes of N-24/N-25.

Every source is explicit (no ``'*'``) and ``auto_transitions`` is off, so a trigger that is not
in a table is illegal in that state and the engine leaves the state and its outbox unchanged.
The engine does the work (orders, cancels) around the triggers; the tables say what is legal.
"""

from __future__ import annotations

from typing import Final, NotRequired, TypedDict


class Row(TypedDict):
    trigger: str
    source: list[str]
    dest: str | None  # None: an internal transition (the state stays; ``transitions``' convention)
    # The model's predicates that refuse the row although its source matches (``transitions``'
    # ``unless``): the engine treats a refusal as its own error (``core.RefusedTransition``).
    unless: NotRequired[list[str]]


SYMBOL_STATES: Final = ["IDLE", "MONITORING", "ENTRY_ORDER", "PHASE1", "PHASE2", "EXITING"]
ACTIVE_STATES: Final = ["MONITORING", "ENTRY_ORDER", "PHASE1", "PHASE2", "EXITING"]
HOLDING_STATES: Final = ["ENTRY_ORDER", "PHASE1", "PHASE2", "EXITING"]

SYMBOL_TRANSITIONS: Final[list[Row]] = [
    # W15/W16/W17: a leading message passed every check; the target is fixed at receipt.
    {"trigger": "start_monitoring", "source": ["IDLE"], "dest": "MONITORING"},
    # W17-2/W19: the 0.1% entry trigger fired (and won the W18 tie-break).
    {"trigger": "entry_triggered", "source": ["MONITORING"], "dest": "ENTRY_ORDER"},
    # D-10, D-43: an entry whose setup or order the rate limits held back (nothing reached the book)
    # goes back to waiting for its trigger instead of dropping the signal.
    {"trigger": "entry_held", "source": ["ENTRY_ORDER"], "dest": "MONITORING"},
    # W39: the first entry is completely filled.
    {"trigger": "entry_filled", "source": ["ENTRY_ORDER"], "dest": "PHASE1"},
    # W43: any fill of the second entry (partial included) is PHASE2; later fills stay there.
    {"trigger": "add_filled", "source": ["PHASE1", "PHASE2"], "dest": "PHASE2"},
    # N-18: an exit order filled (partly), a stop fired, or a market close is in flight.
    # ENTRY_ORDER is a source because a partly filled entry can be closed by a risk signal (W38/W57).
    {"trigger": "exit_started", "source": ["ENTRY_ORDER", "PHASE1", "PHASE2"], "dest": "EXITING"},
    # Internal: another exit filling, a stop firing or a close going out while already EXITING.
    {"trigger": "exit_started", "source": ["EXITING"], "dest": None},
    # Every way back to the start: filters, risk, flat position, dust, stale lock, failures. Never
    # while an order of ours may be live on the venue (issue #11 step 2): forgetting it would leave it
    # working unseen. No decision of the engine asks for that; if one did, the refusal is contained
    # (D-32): entries locked, the exchange re-read and the symbol rebuilt with its orders (D-67).
    {"trigger": "reset", "source": list(ACTIVE_STATES), "dest": "IDLE", "unless": ["may_have_live_order"]},
    # N-28 step 5: recovery rebuilds a symbol from the exchange without replaying its history.
    {"trigger": "restore_entry_order", "source": ["IDLE"], "dest": "ENTRY_ORDER"},
    {"trigger": "restore_phase1", "source": ["IDLE"], "dest": "PHASE1"},
    {"trigger": "restore_phase2", "source": ["IDLE"], "dest": "PHASE2"},
    {"trigger": "restore_exiting", "source": ["IDLE"], "dest": "EXITING"},
]

# Per symbol, beside its phase: whether a close is decided, and who carries it out (issue #11 step 3).
# The phase says what the symbol holds; this machine says what the engine has decided to do with it.
# Its state is in the snapshot, so a restart carries out a decided close (D-27); the reason and the
# timed-retry schedule (D-19) are the CLOSING state's data (``close_reason``, ``close_retry_at_ms``).
#   OPEN        the trade runs: exits and the scale-in work as their phase says.
#   CLOSING     every order of ours is being cancelled and the position closed at market (or by the
#               exit that filled); the symbol resets once flat with nothing of ours open.
#   DEFERRED    CLOSING, but the market close waits for unanswered exit cancels: an exit may still
#               trade until its cancel is answered, and a close sized before could exceed the position (R11).
#   FLATTENING  the operator's flatten cancels and closes on the venue itself (D-22, D-63): no close
#               of ours goes out; whatever it leaves, the engine closes once it is finished.
CLOSE_STATES: Final = ["OPEN", "CLOSING", "DEFERRED", "FLATTENING"]
CLOSE_TRANSITIONS: Final[list[Row]] = [
    # R02/R04/R05 (risk), R12, N-19 (five-second rule), N-20, R21/R22, the stale lock, D-19, D-27: the
    # engine decides to close; its reason replaces the operator's (the flatten no longer covers it).
    {"trigger": "decide_close", "source": ["OPEN", "FLATTENING"], "dest": "CLOSING"},
    {"trigger": "decide_close", "source": ["CLOSING", "DEFERRED"], "dest": None},
    # R15, N-18: an exit order filled the position away or a stop fired: close everything else. The
    # reason already decided (the operator's included) stays.
    {"trigger": "close_by_exit", "source": ["OPEN"], "dest": "CLOSING"},
    {"trigger": "close_by_exit", "source": ["CLOSING", "DEFERRED", "FLATTENING"], "dest": None},
    # R11: the close waits for the answers to its exit cancels, then goes out sized by what they traded.
    {"trigger": "defer_close", "source": ["CLOSING"], "dest": "DEFERRED"},
    {"trigger": "defer_close", "source": ["DEFERRED"], "dest": None},
    {"trigger": "resume_close", "source": ["DEFERRED"], "dest": "CLOSING"},
    {"trigger": "resume_close", "source": ["CLOSING"], "dest": None},
    # R02 -> R03: a fill raced the cancel of an unfilled entry; the position is protected, not closed.
    {"trigger": "withdraw_close", "source": ["CLOSING"], "dest": "OPEN"},
    # D-22, D-63: the operator's flatten takes over every held symbol, then hands back what it left.
    {"trigger": "flatten_started", "source": ["OPEN", "CLOSING", "DEFERRED"], "dest": "FLATTENING"},
    {"trigger": "flatten_started", "source": ["FLATTENING"], "dest": None},
    {"trigger": "flatten_finished", "source": ["FLATTENING"], "dest": "CLOSING"},
]

# Per symbol, the price triggers the 1-second evaluation fires, each OFF or ARMED (issue #11):
#   tp   W37, W40: the take-profit limit goes out when the mark reaches Ptp + 0.1% (ENTRY_ORDER after a
#        fill, PHASE1); off while R06 protects the trade, while its TP works, and from PHASE2 on (W42).
#   add  W41: the scale-in's setup starts when the mark reaches P2 - 0.1% (PHASE1, not R06-protected).
#   be   W43, N-17: the breakeven limit goes out at the average once PHASE2 begins.
# ``arm``/``disarm`` rows are internal from the state they lead to: the engine says what it wants
# and the table tells only a change. ``fired`` is the level crossed (its order or setup goes out).
TRIGGER_STATES: Final = ["OFF", "ARMED"]
TP_TRIGGER: Final[list[Row]] = [
    {"trigger": "arm_tp", "source": ["OFF"], "dest": "ARMED"},
    {"trigger": "arm_tp", "source": ["ARMED"], "dest": None},
    {"trigger": "tp_fired", "source": ["ARMED"], "dest": "OFF"},
    {"trigger": "disarm_tp", "source": ["ARMED"], "dest": "OFF"},
    {"trigger": "disarm_tp", "source": ["OFF"], "dest": None},
]
ADD_TRIGGER: Final[list[Row]] = [
    {"trigger": "arm_add", "source": ["OFF"], "dest": "ARMED"},
    {"trigger": "arm_add", "source": ["ARMED"], "dest": None},
    {"trigger": "add_fired", "source": ["ARMED"], "dest": "OFF"},
    {"trigger": "disarm_add", "source": ["ARMED"], "dest": "OFF"},
    {"trigger": "disarm_add", "source": ["OFF"], "dest": None},
]
BE_TRIGGER: Final[list[Row]] = [
    {"trigger": "arm_be", "source": ["OFF"], "dest": "ARMED"},
    {"trigger": "arm_be", "source": ["ARMED"], "dest": None},
    {"trigger": "be_fired", "source": ["ARMED"], "dest": "OFF"},
    {"trigger": "disarm_be", "source": ["ARMED"], "dest": "OFF"},
    {"trigger": "disarm_be", "source": ["OFF"], "dest": None},
]
# Per symbol: the entry whose setup (W24 account reads, sizing; W35-1's margin retry) is in flight.
# While ENTRY1 is set up the symbol holds the entry lock (N-21); no second setup starts meanwhile.
SETUP_STATES: Final = ["NONE", "ENTRY1", "ENTRY2"]
SETUP_TRANSITIONS: Final[list[Row]] = [
    {"trigger": "prepare_entry1", "source": ["NONE"], "dest": "ENTRY1"},
    {"trigger": "prepare_entry2", "source": ["NONE"], "dest": "ENTRY2"},
    {"trigger": "prepared", "source": ["ENTRY1", "ENTRY2"], "dest": "NONE"},
]
# Per symbol, R06 (R23, N-16): a risk message in profit before the scale-in protects the trade with
# a breakeven stop; from then on no scale-in and no TP trigger. Only the end of the trade lifts it.
RISK_STATES: Final = ["NORMAL", "PROTECTED"]
RISK_TRANSITIONS: Final[list[Row]] = [
    {"trigger": "protect", "source": ["NORMAL"], "dest": "PROTECTED"},
    {"trigger": "protect", "source": ["PROTECTED"], "dest": None},
]
# Per symbol, R15/R16: an exit of this symbol could not be cancelled in three attempts. The global
# exit-cancel lock holds while any symbol is FAILED; the periodic re-query or a late cancel clears it.
CANCEL_STATES: Final = ["CLEAN", "FAILED"]
CANCEL_TRANSITIONS: Final[list[Row]] = [
    {"trigger": "cancel_stuck", "source": ["CLEAN"], "dest": "FAILED"},
    {"trigger": "cancel_stuck", "source": ["FAILED"], "dest": None},
    {"trigger": "cancels_clean", "source": ["FAILED"], "dest": "CLEAN"},
]


class Region(TypedDict):
    """A machine beside a symbol's phase, on the same model: its attribute, states and rows."""

    attribute: str
    states: list[str]
    initial: str  # the first of ``states``
    rows: list[Row]


# Every machine beside the phase, by the name its transitions are told under ("BTCUSDT tp OFF->ARMED").
def _region(attribute: str, states: list[str], rows: list[Row]) -> Region:
    return {"attribute": attribute, "states": states, "initial": states[0], "rows": rows}


SYMBOL_REGIONS: Final[dict[str, Region]] = {
    "close": _region("close_state", CLOSE_STATES, CLOSE_TRANSITIONS),
    "tp": _region("tp_trigger", TRIGGER_STATES, TP_TRIGGER),
    "add": _region("add_trigger", TRIGGER_STATES, ADD_TRIGGER),
    "be": _region("be_trigger", TRIGGER_STATES, BE_TRIGGER),
    "setup": _region("setup", SETUP_STATES, SETUP_TRANSITIONS),
    "risk": _region("risk_mode", RISK_STATES, RISK_TRANSITIONS),
    "cancels": _region("exit_cancels", CANCEL_STATES, CANCEL_TRANSITIONS),
}
# The machines a scenario file lists under ``triggers:`` (the close has ``close:``, the phase and the
# global locks ``transitions:``).
DETAIL_REGIONS: Final = tuple(name for name in SYMBOL_REGIONS if name != "close")
TRIGGERS: Final = ("tp", "add", "be")  # the price triggers, in the order the evaluation looks at them

# Global machines: name -> (states, initial, rows).
ENTRY_LOCK: Final = "entry_lock"
SAFETY_LOCK: Final = "safety_lock"
RECOVERY_LOCK: Final = "recovery_lock"
EXIT_CANCEL_LOCK: Final = "exit_cancel_lock"
RATE_LIMIT: Final = "rate_limit"
AUTH: Final = "auth"

GLOBAL_MACHINES: Final[dict[str, tuple[list[str], str, list[Row]]]] = {
    # Section 1 rule 1, N-21: any position above dust or any open entry order of the account
    # (ours or manual) locks; no TTL, no manual unlock; it clears when both are gone.
    ENTRY_LOCK: (
        ["GLOBAL_IDLE", "GLOBAL_LOCKED"],
        "GLOBAL_IDLE",
        [
            {"trigger": "lock", "source": ["GLOBAL_IDLE"], "dest": "GLOBAL_LOCKED"},
            {"trigger": "unlock", "source": ["GLOBAL_LOCKED"], "dest": "GLOBAL_IDLE"},
        ],
    ),
    # Section 1 rule 3, W23-1, N-22: no WS and a stale or failing REST mark price for 15 s.
    SAFETY_LOCK: (
        ["PRICE_OK", "PRICE_STALE"],
        "PRICE_OK",
        [
            {"trigger": "price_stale", "source": ["PRICE_OK"], "dest": "PRICE_STALE"},
            {"trigger": "price_fresh", "source": ["PRICE_STALE"], "dest": "PRICE_OK"},
        ],
    ),
    # N-28: on until startup reconciliation with the exchange has finished.
    RECOVERY_LOCK: (
        ["RECOVERING", "READY"],
        "RECOVERING",
        [
            {"trigger": "recovered", "source": ["RECOVERING"], "dest": "READY"},
            {"trigger": "restart", "source": ["READY"], "dest": "RECOVERING"},
        ],
    ),
    # R15/R16, N-18: an exit order could not be cancelled in 3 attempts; re-queried until clean.
    EXIT_CANCEL_LOCK: (
        ["CLEAR", "CANCEL_FAILED"],
        "CLEAR",
        [
            {"trigger": "cancel_failed", "source": ["CLEAR"], "dest": "CANCEL_FAILED"},
            {"trigger": "cancel_clean", "source": ["CANCEL_FAILED"], "dest": "CLEAR"},
        ],
    ),
    # N-24: 5 consecutive rate-limit failures enter protection, 3 consecutive successes leave it.
    RATE_LIMIT: (
        ["NORMAL", "PROTECT"],
        "NORMAL",
        [
            {"trigger": "throttle", "source": ["NORMAL"], "dest": "PROTECT"},
            {"trigger": "relax", "source": ["PROTECT"], "dest": "NORMAL"},
        ],
    ),
    # N-25: authorisation errors lock new entries until a signed call succeeds again.
    AUTH: (
        ["AUTH_OK", "AUTH_LOCKED"],
        "AUTH_OK",
        [
            {"trigger": "auth_failed", "source": ["AUTH_OK"], "dest": "AUTH_LOCKED"},
            {"trigger": "auth_restored", "source": ["AUTH_LOCKED"], "dest": "AUTH_OK"},
        ],
    ),
}


# What each global machine's "locked" state is.
LOCKED_STATE: Final[dict[str, str]] = {
    ENTRY_LOCK: "GLOBAL_LOCKED",
    SAFETY_LOCK: "PRICE_STALE",
    RECOVERY_LOCK: "RECOVERING",
    EXIT_CANCEL_LOCK: "CANCEL_FAILED",
    RATE_LIMIT: "PROTECT",
    AUTH: "AUTH_LOCKED",
}
PAUSED: Final = "paused"  # the operator's pause (N-26): a gate, held in the engine's settings
ENTRY_LOCK_OTHERS: Final = "entry_lock_others"  # the entry lock, counting every symbol but this one

# Which locks gate which action, in the order the first one holding is named (one table).
GATES: Final[dict[str, tuple[str, ...]]] = {
    # N-05 step 2, W01: a leading message is dropped while one holds (no cooldown recorded).
    "leading_message": (ENTRY_LOCK, SAFETY_LOCK, RECOVERY_LOCK, EXIT_CANCEL_LOCK, AUTH, PAUSED),
    # W17-2, N-24: a monitored symbol's entry trigger fires only when none holds (monitoring goes on).
    "entry_trigger": (ENTRY_LOCK, SAFETY_LOCK, RECOVERY_LOCK, EXIT_CANCEL_LOCK, AUTH, PAUSED, RATE_LIMIT),
    # W24: the first entry's order after its setup; the symbol's own commitment holds the entry lock.
    "first_entry_order": (
        SAFETY_LOCK, RECOVERY_LOCK, EXIT_CANCEL_LOCK, AUTH, RATE_LIMIT, PAUSED, ENTRY_LOCK_OTHERS,
    ),
    # W41, G04: the scale-in; our own position holds the entry lock by design, so it does not count.
    "second_entry": (SAFETY_LOCK, RECOVERY_LOCK, EXIT_CANCEL_LOCK, AUTH, RATE_LIMIT, PAUSED),
}  # fmt: skip


def symbol_triggers() -> list[str]:
    return sorted({row["trigger"] for row in SYMBOL_TRANSITIONS})


def find_row(rows: list[Row], state: str, trigger: str) -> Row | None:
    """The row ``trigger`` takes from ``state``, or None when it is illegal there."""
    for row in rows:
        if row["trigger"] == trigger and state in row["source"]:
            return row
    return None


def legal_dest(rows: list[Row], state: str, trigger: str) -> str | None:
    """Where ``trigger`` leads from ``state`` (``state`` itself for an internal transition), or
    None when the table has no such row."""
    row = find_row(rows, state, trigger)
    if row is None:
        return None
    return state if row["dest"] is None else row["dest"]
