"""board_view from engines driven through the catalog's scenarios: the exact BoardView of RUNTIME.md."""

from __future__ import annotations

import json

import pytest
from board_kit import scenario_engine

from fsm import events as ev
from fsm.harness.scenario import T0_MS
from fsm.runtime.view import board_view

VIEW_KEYS = {
    "now_ms",
    "profile",
    "paused",
    "locks",
    "price_source",
    "balance",
    "position_mode",
    "monitoring",
    "position",
    "streams",
    "last_event",
    "symbols",
    "cooldowns",
    "settings",
}
MONITORING_KEYS = {
    "symbol",
    "mode",
    "stage",
    "planned_price",
    "trigger_price",
    "mark",
    "distance_pct",
    "received_at_ms",
    "message_id",
}
POSITION_KEYS = {
    "symbol",
    "state",
    "phase",
    "average",
    "quantity",
    "mark",
    "roi_pct",
    "orders",
    "next_triggers",
    "countdown",
}
ORDER_KEYS = {"client_order_id", "leg", "side", "type", "price", "quantity", "filled", "status"}
CLEAR_LOCKS = {
    "entry_lock": "GLOBAL_IDLE",
    "safety_lock": "PRICE_OK",
    "recovery_lock": "READY",
    "exit_cancel_lock": "CLEAR",
    "rate_limit": "NORMAL",
    "auth": "AUTH_OK",
}


def view_after(scenario_id: str, steps: int, extras: dict[str, object] | None = None) -> dict[str, object]:
    engine, now = scenario_engine(scenario_id, steps)
    return board_view(engine, now, extras)


# -- the monitoring list (W45, W46, W47) ----------------------------------------------------------


@pytest.mark.spec("W45")
def test_a_monitored_symbol_is_listed_with_mode_stage_and_planned_price() -> None:
    view = view_after("W45", 1)
    assert view["monitoring"] == [
        {
            "symbol": "BTCUSDT",
            "mode": "aggressive",
            "stage": "1st",
            "planned_price": "101.0",
            "trigger_price": "100.899",
            "mark": None,
            "distance_pct": None,
            "received_at_ms": T0_MS,
            "message_id": 1001,
        }
    ]
    assert view["position"] is None


@pytest.mark.spec("W45")
def test_the_distance_to_the_trigger_is_measured_from_the_mark() -> None:
    # T1 = 101.0 x 0.999 = 100.899; (100.899 - 100.8) / 100.8 = 0.0982 %
    view = view_after("W55", 2)
    assert view["monitoring"] == [
        {
            "symbol": "BTCUSDT",
            "mode": "aggressive",
            "stage": "1st",
            "planned_price": "101.0",
            "trigger_price": "100.899",
            "mark": "100.8",
            "distance_pct": "0.098",
            "received_at_ms": T0_MS,
            "message_id": 1001,
        }
    ]


@pytest.mark.spec("W45")
def test_a_conservative_signal_is_listed_as_conservative() -> None:
    view = view_after("W16", 1)  # the ATR(3) upper band 104.34 at tick 0.01
    assert [(r["symbol"], r["mode"], r["stage"], r["planned_price"]) for r in view["monitoring"]] == [
        ("BTCUSDT", "conservative", "1st", "104.34")
    ]


@pytest.mark.spec("W45")
def test_a_reached_trigger_blocked_by_rate_limit_protection_shows_a_negative_distance() -> None:
    view = view_after("W50", 4)  # mark 101 >= 100.899 but protection allows no entry
    assert view["locks"]["rate_limit"] == "PROTECT"
    assert [(r["symbol"], r["mark"], r["distance_pct"]) for r in view["monitoring"]] == [
        ("BTCUSDT", "101.0", "-0.100")
    ]


@pytest.mark.spec("W45", "W46")
def test_several_symbols_are_listed_newest_first_and_leave_when_one_orders() -> None:
    engine, now = scenario_engine("W46", 3)
    for symbol, price in (("BTCUSDT", "100.5"), ("ETHUSDT", "47"), ("SOLUSDT", "18")):
        engine.handle(ev.MarkPriceTick(now_ms=now, symbol=symbol, price=ev.Decimal(price), event_time_ms=now))
    rows = board_view(engine, now)["monitoring"]
    assert [
        (r["symbol"], r["message_id"], r["planned_price"], r["mark"], r["distance_pct"]) for r in rows
    ] == [
        ("SOLUSDT", 1003, "20.00", "18.00", "11.000"),  # (19.98 - 18) / 18
        ("ETHUSDT", 1002, "50.00", "47.00", "6.277"),  # (49.95 - 47) / 47 = 6.2766
        ("BTCUSDT", 1001, "101.0", "100.5", "0.397"),  # (100.899 - 100.5) / 100.5 = 0.3970
    ]
    view = view_after("W46", 4)  # BTC's entry order went out: the others are gone from the list
    assert view["monitoring"] == []
    assert view["position"] is not None
    assert (view["position"]["symbol"], view["position"]["phase"]) == ("BTCUSDT", "ENTRY_ORDER")


@pytest.mark.spec("W47")
def test_first_entry_filled_moves_the_list_to_the_second_stage_with_the_scale_in_price() -> None:
    before = view_after("W55", 3)  # the entry order is out: not monitored any more
    assert before["monitoring"] == []
    view = view_after("W55", 4)  # ENTRY1 filled: PHASE1 waits for the add at 101.0 x 1.15 = 116.15 -> 116.2
    assert view["monitoring"] == [
        {
            "symbol": "BTCUSDT",
            "mode": "aggressive",
            "stage": "2nd",
            "planned_price": "116.2",  # where the add's limit sells
            "trigger_price": "116.0838",  # the mark that places it: 116.2 x 0.999
            "mark": "100.9",
            "distance_pct": "15.048",  # (116.2 x 0.999 - 100.9) / 100.9
            "received_at_ms": T0_MS,
            "message_id": 1001,
        }
    ]
    # One number for one thing (issue #13): the position's next add is the same mark trigger.
    assert view["position"]["next_triggers"]["add"] == view["monitoring"][0]["trigger_price"]


@pytest.mark.spec("W47")
def test_the_second_stage_stays_listed_while_the_add_order_rests() -> None:
    view = view_after("W56", 4)  # mark 116.1 reached the add trigger; its limit SELL rests at 116.2
    assert [(r["stage"], r["planned_price"], r["mark"], r["distance_pct"]) for r in view["monitoring"]] == [
        ("2nd", "116.2", "116.1", "-0.014")
    ]
    assert view["position"]["next_triggers"]["add"] == "116.2"
    view = view_after("W56", 5)  # the add filled: PHASE2, nothing is waited for any more
    assert view["monitoring"] == []


# -- the position panel -----------------------------------------------------------------------------


def test_entry_order_shows_the_working_first_entry_and_no_roi_before_a_fill() -> None:
    view = view_after("W55", 3)
    assert view["position"] == {
        "symbol": "BTCUSDT",
        "state": "ENTRY_ORDER",
        "phase": "ENTRY_ORDER",
        "average": "0.0",
        "quantity": "0",
        "mark": "100.9",
        "roi_pct": None,
        "orders": [
            {
                "client_order_id": "sf1001-E11-BTCUSDT",
                "leg": "ENTRY1",
                "side": "SELL",
                "type": "LIMIT",
                "price": "101.0",
                "quantity": "4.950",
                "filled": "0",
                "status": "NEW",
            }
        ],
        "next_triggers": {"tp": None, "add": None, "breakeven": None, "mdd": None},
        "countdown": None,
    }
    assert view["locks"]["entry_lock"] == "GLOBAL_LOCKED"
    assert view["balance"] == {"wallet": "1000", "available": "1000"}
    assert view["position_mode"] == "ONE_WAY"


def test_phase1_shows_average_roi_and_the_tp_and_add_triggers() -> None:
    view = view_after("W55", 4)
    assert view["position"] == {
        "symbol": "BTCUSDT",
        "state": "PHASE1",
        "phase": "PHASE1",
        "average": "101.0",
        "quantity": "4.950",
        "mark": "100.9",
        "roi_pct": "0.10",  # (101.0 - 100.9) / 101.0 = 0.099 %
        "orders": [],
        # TP 101 x 0.95 = 95.95 -> 96.0, placed when mark <= 96.0 x 1.001; the add when mark >= 116.2 x 0.999
        "next_triggers": {"tp": "96.096", "add": "116.0838", "breakeven": None, "mdd": None},
        "countdown": None,
    }


def test_phase1_with_the_tp_placed_shows_the_resting_tp_price() -> None:
    view = view_after("W55", 6)
    position = view["position"]
    assert position["roi_pct"] == "4.86"  # (101.0 - 96.09) / 101.0 = 4.861 %
    assert position["next_triggers"] == {"tp": "96.0", "add": "116.0838", "breakeven": None, "mdd": None}
    assert [(o["leg"], o["side"], o["price"], o["quantity"], o["status"]) for o in position["orders"]] == [
        ("TP", "BUY", "96.0", "4.950", "NEW")
    ]


def test_phase2_before_the_breakeven_trigger_shows_its_threshold_and_the_mdd_stop() -> None:
    view = view_after("W56", 5)
    position = view["position"]
    # avg (4.950 x 101.0 + 3.407 x 116.2) / 8.357 = 107.196769; Pbe 107.2, placed at mark >= 107.2 x 1.001
    assert (position["phase"], position["average"], position["quantity"], position["mark"]) == (
        "PHASE2",
        "107.19677",
        "8.357",
        "116.1",
    )
    assert position["roi_pct"] == "-8.31"
    assert position["next_triggers"] == {"tp": None, "add": None, "breakeven": "107.3072", "mdd": "123.3"}
    assert [(o["leg"], o["type"], o["price"], o["status"]) for o in position["orders"]] == [
        ("MDD", "STOP_MARKET", "123.3", "NEW")
    ]


def test_phase2_with_the_breakeven_limit_working() -> None:
    view = view_after("W56", 7)
    assert view["position"] == {
        "symbol": "BTCUSDT",
        "state": "PHASE2",
        "phase": "PHASE2",
        "average": "107.19677",
        "quantity": "8.357",
        "mark": "110.0",
        "roi_pct": "-2.62",  # (107.196769 - 110) / 107.196769
        "orders": [
            {
                "client_order_id": "sf1001-MD1-BTCUSDT",
                "leg": "MDD",
                "side": "BUY",
                "type": "STOP_MARKET",
                "price": "123.3",
                "quantity": "8.357",
                "filled": "0",
                "status": "NEW",
            },
            {
                "client_order_id": "sf1001-BE1-BTCUSDT",
                "leg": "BE",
                "side": "BUY",
                "type": "LIMIT",
                "price": "107.2",
                "quantity": "8.357",
                "filled": "0",
                "status": "NEW",
            },
        ],
        "next_triggers": {"tp": None, "add": None, "breakeven": "107.2", "mdd": "123.3"},
        "countdown": None,
    }
    assert view["balance"] == {"wallet": "1000", "available": "400"}


def test_exit_cancel_failed_shows_the_lock_and_the_leftover_stop() -> None:
    view = view_after("R15", 6)
    assert view["locks"] == {**CLEAR_LOCKS, "exit_cancel_lock": "CANCEL_FAILED"}
    position = view["position"]
    assert (position["phase"], position["quantity"], position["roi_pct"]) == ("EXITING", "0.000", None)
    assert position["orders"] == [
        {
            "client_order_id": "sf1001-BS1-BTCUSDT",
            "leg": "BE_STOP",
            "side": "BUY",
            "type": "STOP_MARKET",
            "price": "101.0",
            "quantity": "4.950",
            "filled": "0",
            "status": "PENDING_CANCEL",
        }
    ]
    assert position["next_triggers"] == {"tp": None, "add": None, "breakeven": "101.0", "mdd": None}
    cleared = view_after("R15", 9)  # R16: the re-query cancelled it; lock lifted, symbol reset
    assert cleared["locks"] == CLEAR_LOCKS
    assert cleared["position"] is None


# -- header facts -----------------------------------------------------------------------------------


def test_a_stale_price_under_the_safety_lock_is_reported_with_its_age() -> None:
    view = view_after("W23-1-monitoring", 6)
    assert view["locks"]["safety_lock"] == "PRICE_STALE"
    # the REST mark came 20 s old at t=7; at t=16 it is 29 s old
    assert view["price_source"] == {"source": "REST", "stale": True, "age_ms": 29_000}
    assert view["monitoring"] == []
    assert view["streams"] == {"market": "down", "user": "down", "telegram": "down"}


def test_a_fresh_websocket_price_has_its_age_and_pause_is_shown() -> None:
    engine, now = scenario_engine("W55", 2)
    engine.handle(ev.PauseRequested(now_ms=now + 500, paused=True))
    view = board_view(engine, now + 1500)
    assert view["price_source"] == {"source": "WS", "stale": False, "age_ms": 1500}
    assert view["paused"] is True
    assert view["now_ms"] == now + 1500


def test_extras_from_the_daemon_are_carried_and_bad_ones_replaced_by_defaults() -> None:
    engine, now = scenario_engine("W55", 2)
    extras = {
        "profile": "demo",
        "streams": {"market": "up", "user": "up", "telegram": "replay"},
        "last_event": {"type": "MarkPriceTick", "now_ms": now},
    }
    view = board_view(engine, now, extras)
    assert (view["profile"], view["streams"], view["last_event"]) == (
        "demo",
        {"market": "up", "user": "up", "telegram": "replay"},
        {"type": "MarkPriceTick", "now_ms": now},
    )
    bad = {"profile": "prod", "streams": {"market": "sideways", "user": 3}, "last_event": {"type": 1}}
    view = board_view(engine, now, bad)
    assert (view["profile"], view["streams"], view["last_event"]) == (
        "sim",
        {"market": "up", "user": "down", "telegram": "down"},
        None,
    )
    assert board_view(engine, now, "not a dict")["profile"] == "sim"  # type: ignore[arg-type]


def test_the_view_has_exactly_the_runtime_md_shape_and_is_plain_json() -> None:
    for scenario_id, steps in (("W45", 1), ("W55", 4), ("W56", 7), ("R15", 6)):
        view = view_after(scenario_id, steps)
        assert set(view) == VIEW_KEYS
        assert set(view["locks"]) == set(CLEAR_LOCKS)
        assert set(view["price_source"]) == {"source", "stale", "age_ms"}
        assert set(view["balance"]) == {"wallet", "available"}
        assert all(set(row) == MONITORING_KEYS for row in view["monitoring"])
        if view["position"] is not None:
            assert set(view["position"]) == POSITION_KEYS
            assert all(set(o) == ORDER_KEYS for o in view["position"]["orders"])
            assert set(view["position"]["next_triggers"]) == {"tp", "add", "breakeven", "mdd"}
        assert json.loads(json.dumps(view)) == view


def test_a_fresh_engine_gives_an_empty_board() -> None:
    from fsm.engine import Engine

    view = board_view(Engine(), 5)
    assert view == {
        "now_ms": 5,
        "profile": "sim",
        "paused": False,
        "locks": CLEAR_LOCKS,
        "price_source": {"source": "WS", "stale": False, "age_ms": None},
        "balance": {"wallet": "0", "available": "0"},
        "position_mode": None,
        "monitoring": [],
        "position": None,
        "streams": {"market": "up", "user": "down", "telegram": "down"},
        "last_event": None,
        "symbols": [],
        "cooldowns": [],
        "settings": view["settings"],
    }
    assert view["settings"]["source"] == "daemon"
    assert view["settings"]["pending"] == {}
    assert view["settings"]["values"]["tp_pct"] == "5"
    assert view["settings"]["values"]["partial_fill_timeout_seconds"] == 5


# -- what a trader needs to see (issue #13 item 10) ------------------------------------------------


@pytest.mark.spec("R19")
def test_a_part_filled_exit_shows_the_five_second_countdown() -> None:
    engine, now = scenario_engine("R19", 6)  # the TP part-filled twice, the last fill at t=12 s
    view = board_view(engine, now + 1_800)
    countdown = {
        "leg": "TP",
        "client_order_id": "sf1001-TP1-BTCUSDT",
        "filled": "3.000",
        "quantity": "4.950",
        "deadline_ms": now + 5_000,
        "remaining_ms": 3_200,
    }
    assert view["position"]["countdown"] == countdown
    assert view["symbols"] == [
        {
            "symbol": "BTCUSDT",
            "state": "EXITING",
            "next_triggers": {"entry": None, "tp": "96.0", "add": None, "breakeven": None, "mdd": None},
            "countdown": countdown,
        }
    ]
    assert board_view(engine, now + 9_000)["position"]["countdown"]["remaining_ms"] == 0


def test_monitoring_symbols_show_their_entry_trigger_and_the_cooldown_left() -> None:
    engine, now = scenario_engine("W45", 1)
    view = board_view(engine, now + 60_000)
    assert view["symbols"] == [
        {
            "symbol": "BTCUSDT",
            "state": "MONITORING",
            "next_triggers": {"entry": "100.899", "tp": None, "add": None, "breakeven": None, "mdd": None},
            "countdown": None,
        }
    ]
    assert view["cooldowns"] == [
        {"symbol": "BTCUSDT", "received_at_ms": now, "until_ms": now + 600_000, "remaining_ms": 540_000}
    ]
    assert board_view(engine, now + 600_000)["cooldowns"] == []  # ten minutes on: over
