"""`shortfsm replay` through the real engine, the real Binance client and binance/sim in process."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections import defaultdict
from decimal import Decimal
from pathlib import Path

import golden_kit
import pytest

from binance.errors import AuthFailed, UnknownOutcome
from binance.rest import BinanceRest
from binance.sim.clock import SimClock
from binance.sim.exchange import SimExchange
from binance.sim.inproc import InProcessTransport
from binance.sim.server import RestFault, SimVenue
from fsm.harness.scenario import SCENARIO_DIR, load_scenarios
from fsm.harness.simreplay import DOUBLE_ONLY, SimRunner, check_file, replay
from fsm.ops import cli

SCENARIOS = load_scenarios()


@pytest.mark.parametrize(
    "scenario_id",
    [
        pytest.param(sid, marks=pytest.mark.spec(*doc.get("spec", [])), id=sid)
        for sid, doc in SCENARIOS.items()
    ],
)
def test_catalog_scenario_passes_on_the_simulated_venue(scenario_id: str) -> None:
    run = replay(SCENARIOS[scenario_id])
    assert run.result.passed, "\n".join(run.result.failures)
    golden_kit.check(
        "sim", scenario_id, {"venue": run.venue, "log": run.result.log, "final": run.result.final}
    )
    if scenario_id in DOUBLE_ONLY:
        assert (run.venue, run.reason) == ("double", DOUBLE_ONLY[scenario_id])
        return
    assert run.venue == "sim"
    assert run.requests, "the scenario never reached the simulated venue"
    sent: dict[str, set[tuple[tuple[str, str], ...]]] = defaultdict(set)
    for request in run.requests:
        if request.places_order:
            sent[request.client_id].add(request.params)
    repeated = {cid: params for cid, params in sent.items() if len(params) > 1}
    assert repeated == {}, "a client order id reached the venue twice with different orders"


def test_double_only_scenarios_exist_and_really_differ_on_the_sim() -> None:
    assert set(DOUBLE_ONLY) <= set(SCENARIOS)
    for sid in DOUBLE_ONLY:
        assert not SimRunner(SCENARIOS[sid]).run().passed, (
            f"{sid} passes on the sim: drop it from DOUBLE_ONLY"
        )


def test_most_of_the_catalog_runs_on_the_sim() -> None:
    assert len(SCENARIOS) == 123
    assert len(SCENARIOS) - len(DOUBLE_ONLY) == 115


def test_a_scripted_rejection_is_a_real_venue_answer() -> None:
    run = replay(SCENARIOS["R12"])
    orders = [(r.method, r.path, r.client_id, r.status) for r in run.requests if r.places_order]
    assert orders == [
        ("POST", "/fapi/v1/order", "sf1001-E11-BTCUSDT", 200),
        ("POST", "/fapi/v1/order", "sf1001-TP1-BTCUSDT", 400),
        ("POST", "/fapi/v1/order", "sf1001-CL1-BTCUSDT", 200),
    ]
    rejected = next(r for r in run.requests if r.status == 400)
    assert json.loads(rejected.body) == {"code": -2022, "msg": "ReduceOnly Order is rejected."}


R12_TRACE = """
R12 A rejected limit exit falls back to a market close at once  PASS
  proves: R12; venue: binance/sim
  ✓ t=     0.0s  leading message #1001 (BTC)
        BTCUSDT IDLE->MONITORING
  ✓ t=     1.0s  mark BTCUSDT=101
        BTCUSDT MONITORING->ENTRY_ORDER
        BTCUSDT setup NONE->ENTRY1
        entry_lock GLOBAL_IDLE->GLOBAL_LOCKED
        BTCUSDT setup ENTRY1->NONE
        PrepareOrder(symbol=BTCUSDT leg=ENTRY1 configure_margin=True leverage=1 margin_type=ISOLATED)
          => ready ONE_WAY wallet 1000 available 1000  [GET v1/time 200, GET v1/positionSide/dual 200, \
GET v1/symbolConfig 200, GET v3/balance 200, POST v1/leverage 200, POST v1/marginType 200]
        PlaceOrder(symbol=BTCUSDT client_order_id=sf1001-E11-BTCUSDT leg=ENTRY1 side=SELL order_type=LIMIT \
quantity=4.950 price=101.0 time_in_force=GTC)
          => accepted #8389765001  [POST v1/order 200]
  ✓ t=     2.0s  venue fills ENTRY1 rest
        venue: fills sf1001-E11-BTCUSDT 4.95 @ 101 -> sf1001-E11-BTCUSDT FILLED 4.95@101.0; \
position BTCUSDT -4.95
        BTCUSDT tp OFF->ARMED
        BTCUSDT ENTRY_ORDER->PHASE1
        BTCUSDT add OFF->ARMED
  ✓ t=     3.0s  reject_next leg=TP code=-2022 message=ReduceOnly Order is rejected. category=flat; \
mark BTCUSDT=96.0 -- -2022 with the position still there (read at once): a refusal, so R12's market fallback
        BTCUSDT tp ARMED->OFF
        BTCUSDT close OPEN->CLOSING
        BTCUSDT add ARMED->OFF
        BTCUSDT PHASE1->EXITING
        BTCUSDT EXITING->IDLE
        entry_lock GLOBAL_LOCKED->GLOBAL_IDLE
        PlaceOrder(symbol=BTCUSDT client_order_id=sf1001-TP1-BTCUSDT leg=TP side=BUY order_type=LIMIT \
quantity=4.950 price=96.0 time_in_force=GTC reduce_only=True)
          => rejected -2022 ReduceOnly Order is rejected.  [POST v1/order 400, GET v3/positionRisk 200]
        PlaceOrder(symbol=BTCUSDT client_order_id=sf1001-CL1-BTCUSDT leg=CLOSE side=BUY order_type=MARKET \
quantity=4.950 reduce_only=True)
          => accepted #8389765002; filled 4.95 @ 96.0  [POST v1/order 200]
        ✓ expect orders
        ✓ expect logs
        ✓ expect states

1 passed, 0 failed
"""


@pytest.mark.spec("R12")
def test_trace_text_of_one_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["replay", "R12"]) == 0
    assert capsys.readouterr().out == R12_TRACE


def test_json_shape(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["replay", "R12", "--json"]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    assert list(result) == ["id", "title", "spec", "venue", "kept_on_double", "passed", "steps"]
    assert (result["id"], result["venue"], result["kept_on_double"], result["passed"]) == (
        "R12",
        "sim",
        None,
        True,
    )
    assert [s["t_s"] for s in result["steps"]] == [0.0, 1.0, 2.0, 3.0]
    last = result["steps"][-1]
    assert list(last) == ["at_ms", "t_s", "label", "trace", "expectations", "failures"]
    assert last["expectations"] == [
        {"name": "orders", "passed": True, "failures": []},
        {"name": "logs", "passed": True, "failures": []},
        {"name": "states", "passed": True, "failures": []},
    ]
    assert last["trace"][-1] == "  => accepted #8389765002; filled 4.95 @ 96.0  [POST v1/order 200]"


def test_json_names_the_scenarios_kept_on_the_double(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["replay", "R22", "--json"]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    assert (result["venue"], result["kept_on_double"]) == ("double", DOUBLE_ONLY["R22"])


def test_venue_double_option_runs_the_double(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["replay", "W55", "--venue", "double", "--json"]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    assert (result["venue"], result["kept_on_double"], result["passed"]) == ("double", None, True)


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


GOOD = (
    "id: ok\nspec: [W55]\nvenue: {klines: {BTCUSDT: {high: '101', low: '99', close: '100'}}}\n"
    "steps:\n  - {at: 0, leading: {id: 1}, expect: {states: {BTCUSDT: MONITORING}}}\n"
)


def test_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["replay", str(_write(tmp_path, "ok.yaml", GOOD))]) == 0
    assert "1 passed, 0 failed" in capsys.readouterr().out
    failing = _write(tmp_path, "bad.yaml", GOOD.replace("id: ok", "id: bad").replace("MONITORING", "PHASE2"))
    assert cli.main(["replay", str(failing)]) == 1
    out = capsys.readouterr().out
    assert "✗ expect states: state of BTCUSDT: expected PHASE2, got MONITORING" in out
    assert "0 passed, 1 failed" in out
    assert cli.main(["replay"]) == 2


def test_unknown_id_lists_close_matches() -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(["replay", "W99"])
    assert str(caught.value) == (
        "no scenario or spec ID 'W99'; did you mean W49, W39, W29, W19, W09? "
        f"(scenarios live in {SCENARIO_DIR})"
    )


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = _write(
        tmp_path, "typo.yaml", "id: typo\nspec: [W55]\nsteps:\n  - {at: 0, leading: {id: 1}\n  - {at: 1}\n"
    )
    with pytest.raises(SystemExit) as caught:
        cli.main(["replay", str(path)])
    assert str(caught.value) == (
        f"{path}:5:3: YAML error: expected ',' or '}}', but got '-' "
        "(while parsing a flow mapping started at line 4)"
    )


def test_misspelt_keys_name_file_and_line(tmp_path: Path) -> None:
    text = GOOD + "  - at: 1\n    fil: {leg: ENTRY1}\n    expect: {state: {BTCUSDT: IDLE}}\n"
    path = _write(tmp_path, "keys.yaml", text)
    assert check_file(path) == [
        f"{path}:7: unknown step key 'fil' (did you mean 'fill'?)",
        f"{path}:8: unknown expect key 'state' (did you mean 'states'?)",
    ]
    with pytest.raises(SystemExit) as caught:
        cli.main(["replay", str(path)])
    assert str(caught.value).splitlines() == check_file(path)


def test_catalog_files_have_no_typos() -> None:
    assert [p for path in sorted(SCENARIO_DIR.glob("*.yaml")) for p in check_file(path)] == []


# ---------------------------------------------------------------------------------------------
# The in-process transport: the venue's checks exactly as over TCP, and no waiting
# ---------------------------------------------------------------------------------------------


def _client(secret: str, venue: SimVenue, clock: SimClock) -> BinanceRest:
    return BinanceRest(
        api_key="k-test",
        api_secret=secret,
        base_url="http://sim.invalid",
        clock_ms=clock.now_ms,
        transport=InProcessTransport(venue),
    )


def test_in_process_requests_are_signed_and_checked() -> None:
    async def scenario() -> tuple[Decimal, int]:
        clock = SimClock()
        secret = secrets.token_hex(16)
        venue = SimVenue(SimExchange(clock=clock, api_keys={"k-test": secret}, balance=Decimal("250")))
        good = _client(secret, venue, clock)
        wrong = _client(secrets.token_hex(16), venue, clock)
        try:
            rows = await good.balance()
            with pytest.raises(AuthFailed) as caught:
                await wrong.balance()
            return Decimal(rows[0]["balance"]), caught.value.code
        finally:
            await good.aclose()
            await wrong.aclose()

    assert asyncio.run(scenario()) == (Decimal("250"), -1022)


def test_an_unanswered_order_times_out_at_once_and_is_unknown_never_resent() -> None:
    """In process a hung request times out at once: the order is UNKNOWN (D-26), sent once, and the
    query the engine schedules after recvWindow finds it."""

    async def scenario() -> tuple[int, list[tuple[str, str, int]]]:
        clock = SimClock()
        secret = secrets.token_hex(16)
        venue = SimVenue(SimExchange(clock=clock, api_keys={"k-test": secret}))
        venue.faults.add(RestFault("POST", "/fapi/v1/order", "hang", after_accept=True, hang_s=0.0))
        transport = InProcessTransport(venue)
        rest = BinanceRest(
            api_key="k-test",
            api_secret=secret,
            base_url="http://sim.invalid",
            clock_ms=clock.now_ms,
            transport=transport,
        )
        params = {
            "symbol": "BTCUSDT",
            "side": "SELL",
            "type": "LIMIT",
            "timeInForce": "GTC",
            "quantity": "0.010",
            "price": "99000.00",
            "newClientOrderId": "t-hang-1",
        }
        try:
            with pytest.raises(UnknownOutcome):
                await rest.place_order(params)
            answer = await rest.query_order("BTCUSDT", "t-hang-1")
        finally:
            await rest.aclose()
        return int(answer["orderId"]), [(r.method, r.path, r.status) for r in transport.log[1:]]

    order_id, calls = asyncio.run(scenario())
    assert order_id == 8_389_765_001
    assert calls == [("POST", "/fapi/v1/order", 0), ("GET", "/fapi/v1/order", 200)]
