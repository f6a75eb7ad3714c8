"""W24's account reads made ahead of the trigger (D-72), through the real REST client and executor
against the simulated venue on loopback: what is read while monitoring, what a first entry then
calls (nothing, or only W24's changes), and every way the facts read ahead are voided."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest
from binance_simkit import run, venue
from test_executor import ENTRY

from binance.account_reads import AccountReads
from binance.executor import Executor
from binance.sim.server import RestFault
from fsm.commands import PrepareOrder
from fsm.events import OrderPrepared, OrderRejected, VenueCallSucceeded

NOW = 1_767_225_600_000
AGE_MS = 30_000
READS = [
    ("GET", "/fapi/v1/positionSide/dual"),
    ("GET", "/fapi/v1/symbolConfig"),
    ("GET", "/fapi/v3/balance"),
]
ENTRY1 = PrepareOrder(symbol="BTCUSDT", leg="ENTRY1", configure_margin=True)


class Stream:
    """The user stream as the reads see it: its connection number, None while down."""

    def __init__(self) -> None:
        self.epoch: int | None = 1

    def __call__(self) -> int | None:
        return self.epoch


def prepared(wallet: str, available: str | None = None, mode: str = "ONE_WAY") -> OrderPrepared:
    return OrderPrepared(
        now_ms=NOW + 1_000,
        symbol="BTCUSDT",
        leg="ENTRY1",
        ok=True,
        position_mode=mode,  # type: ignore[arg-type]
        wallet_balance=Decimal(wallet),
        available_balance=Decimal(available or wallet),
    )


def calls(v: object) -> list[tuple[str, str]]:
    """The venue's requests but the client's clock sync."""
    return [r for r in v.requests if r != ("GET", "/fapi/v1/time")]  # type: ignore[attr-defined]


def set_up(ex: object) -> None:
    """BTCUSDT traded before: leverage 1, isolated (W25)."""
    ex.leverage["BTCUSDT"] = 1  # type: ignore[attr-defined]
    ex.margin_type["BTCUSDT"] = "isolated"  # type: ignore[attr-defined]


@pytest.mark.spec("W24", "W25", "W17-1")
def test_a_first_entry_on_facts_read_ahead_calls_nothing_before_its_order() -> None:
    async def go() -> None:
        async with venue() as (ex, v, rest):
            set_up(ex)
            reads = AccountReads(rest, max_age_ms=AGE_MS, stream_epoch=Stream())
            assert reads.due(NOW)
            assert await reads.refresh(NOW)
            assert sorted(calls(v)) == sorted(READS)  # reads only while monitoring (W17-1)
            assert not reads.due(NOW + AGE_MS // 2 - 1) and reads.due(NOW + AGE_MS // 2)
            v.requests.clear()
            ex.wallet = Decimal("777")  # unseen: no push was handled, the facts stand
            out = await Executor(rest, reads=reads).execute(ENTRY1, NOW + 1_000)
            assert out == [prepared("10000.00000000")]  # no VenueCallSucceeded: no call was made
            assert calls(v) == []

    run(go())


@pytest.mark.spec("W24", "W17-1")
def test_a_symbol_to_set_up_gets_its_changes_after_the_trigger_only() -> None:
    async def go() -> None:
        async with venue() as (ex, v, rest):
            ex.leverage["BTCUSDT"], ex.margin_type["BTCUSDT"] = 20, "cross"
            reads = AccountReads(rest, max_age_ms=AGE_MS, stream_epoch=Stream())
            assert await reads.refresh(NOW)
            assert sorted(calls(v)) == sorted(READS)  # nothing changed while monitoring
            assert (ex.leverage["BTCUSDT"], ex.margin_type["BTCUSDT"]) == (20, "cross")
            v.requests.clear()
            out = await Executor(rest, reads=reads).execute(ENTRY1, NOW + 1_000)
            assert out == [prepared("10000.00000000"), VenueCallSucceeded(now_ms=NOW + 1_000)]
            assert calls(v) == [("POST", "/fapi/v1/leverage"), ("POST", "/fapi/v1/marginType")]
            assert (ex.leverage["BTCUSDT"], ex.margin_type["BTCUSDT"]) == (1, "isolated")
            assert reads.facts is None  # what it set is read again, not assumed

    run(go())


@pytest.mark.spec("W24", "W26")
def test_a_change_refused_at_the_trigger_fails_the_setup_as_before() -> None:
    async def go() -> None:
        async with venue() as (ex, v, rest):
            ex.leverage["BTCUSDT"] = 20
            reads = AccountReads(rest, max_age_ms=AGE_MS, stream_epoch=Stream())
            assert await reads.refresh(NOW)
            body = '{"code":-4028,"msg":"Leverage is not valid"}'
            v.faults.add(RestFault("POST", "/fapi/v1/leverage", "status", status=400, body=body))
            out = await Executor(rest, reads=reads).execute(ENTRY1, NOW + 1_000)
            assert len(out) == 1 and isinstance(out[0], OrderPrepared)
            assert (out[0].ok, out[0].error_code, out[0].position_mode) == (False, -4028, "ONE_WAY")
            assert out[0].reason == "margin_config_failed: Leverage is not valid"

    run(go())


@pytest.mark.spec("W24")
@pytest.mark.parametrize(
    ("why", "at_ms", "leg"),
    [
        ("too old", NOW + AGE_MS, "ENTRY1"),
        ("before the read", NOW - 1, "ENTRY1"),
        ("a scale-in sizes on the available balance of the moment (W32-3)", NOW + 1_000, "ENTRY2"),
    ],
)
def test_facts_that_do_not_serve_mean_the_trigger_reads(why: str, at_ms: int, leg: str) -> None:
    async def go() -> None:
        async with venue() as (ex, v, rest):
            set_up(ex)
            reads = AccountReads(rest, max_age_ms=AGE_MS, stream_epoch=Stream())
            assert await reads.refresh(NOW)
            v.requests.clear()
            ex.wallet = Decimal("777")
            command = PrepareOrder(symbol="BTCUSDT", leg=leg, configure_margin=leg == "ENTRY1")  # type: ignore[arg-type]
            out = await Executor(rest, reads=reads).execute(command, at_ms)
            assert isinstance(out[0], OrderPrepared) and out[0].wallet_balance == Decimal("777.00000000"), why
            assert ("GET", "/fapi/v3/balance") in v.requests

    run(go())


@pytest.mark.spec("W24")
def test_a_stream_gap_or_a_handled_push_voids_the_facts() -> None:
    async def go() -> None:
        async with venue() as (ex, _v, rest):
            set_up(ex)
            stream = Stream()
            reads = AccountReads(rest, max_age_ms=AGE_MS, stream_epoch=stream)
            assert await reads.refresh(NOW)
            stream.epoch = 2  # the stream dropped and came back: a push may have been lost
            assert reads.usable("BTCUSDT", NOW + 1) is None and reads.facts is None
            assert await reads.refresh(NOW)
            stream.epoch = None  # down: nothing is read ahead, nothing served
            assert not reads.due(NOW + AGE_MS) and not await reads.refresh(NOW)
            assert reads.usable("BTCUSDT", NOW + 1) is None
            stream.epoch = 2
            assert await reads.refresh(NOW)
            reads.invalidate("ACCOUNT_UPDATE DEPOSIT")
            assert reads.usable("BTCUSDT", NOW + 1) is None
            assert reads.reads == 3

    run(go())


@pytest.mark.spec("W24")
def test_a_read_in_flight_when_a_push_is_handled_is_thrown_away() -> None:
    async def go() -> None:
        async with venue() as (_ex, v, rest):
            v.faults.add(RestFault("GET", "/fapi/v3/balance", "slow", hang_s=0.3))
            reads = AccountReads(rest, max_age_ms=AGE_MS, stream_epoch=Stream())
            task = asyncio.create_task(reads.refresh(NOW))
            while ("GET", "/fapi/v3/balance") not in v.requests:
                await asyncio.sleep(0.005)
            reads.invalidate("ACCOUNT_UPDATE ORDER")  # its answer may predate the push
            assert await task is False
            assert reads.facts is None and reads.reads == 0

    run(go())


@pytest.mark.spec("W24", "W26")
def test_a_failed_read_ahead_leaves_nothing_and_says_why() -> None:
    async def go() -> None:
        async with venue() as (ex, v, rest):
            set_up(ex)
            reads = AccountReads(rest, max_age_ms=AGE_MS, stream_epoch=Stream())
            assert await reads.refresh(NOW)
            v.faults.add(RestFault("GET", "/fapi/v1/positionSide/dual", "status", status=500))
            assert not await reads.refresh(NOW + 20_000)
            assert reads.facts is None and "positionSide" not in reads.problem and reads.problem
            # The trigger reads for itself; W26 still applies to that read.
            v.faults.add(RestFault("GET", "/fapi/v1/positionSide/dual", "status", status=500))
            out = await Executor(rest, reads=reads).execute(ENTRY1, NOW + 21_000)
            assert isinstance(out[0], OrderPrepared) and not out[0].ok
            assert (out[0].reason or "").startswith("position_mode_read_failed")

    run(go())


@pytest.mark.spec("W24", "W27")
def test_an_order_refused_for_its_position_side_voids_the_facts() -> None:
    """The position mode is the one fact no push tells: a -4061 says it changed."""

    async def go() -> None:
        async with venue() as (ex, _v, rest):
            set_up(ex)
            reads = AccountReads(rest, max_age_ms=AGE_MS, stream_epoch=Stream())
            assert await reads.refresh(NOW)
            ex.hedge_mode = True  # switched in the app while flat
            out = await Executor(rest, reads=reads).execute(ENTRY, NOW + 1_000)  # no positionSide
            assert isinstance(out[0], OrderRejected) and out[0].code == -4061
            assert reads.facts is None
            assert await reads.refresh(NOW + 2_000)
            assert reads.facts is not None and reads.facts.position_mode == "HEDGE"

    run(go())


def test_max_age_zero_reads_nothing_ahead() -> None:
    async def go() -> None:
        async with venue() as (_ex, v, rest):
            reads = AccountReads(rest, max_age_ms=0, stream_epoch=Stream())
            assert not reads.enabled and not reads.due(NOW)
            assert not await reads.refresh(NOW)
            assert calls(v) == []

    run(go())


def test_reads_start_apart_and_failed_ones_back_off() -> None:
    """Neither a stream of pushes nor a venue refusing every read makes it read every second."""

    async def go() -> None:
        async with venue() as (_ex, v, rest):
            reads = AccountReads(rest, max_age_ms=AGE_MS, stream_epoch=Stream())
            assert await reads.refresh(NOW)
            reads.invalidate("ACCOUNT_UPDATE ORDER")  # a push: read again, but not at once
            assert not reads.due(NOW + 9_999) and reads.due(NOW + 10_000)
            at = NOW + 10_000
            waits = []
            for _ in range(5):
                v.faults.add(RestFault("GET", "/fapi/v3/balance", "status", status=500))
                assert not await reads.refresh(at)
                wait = next(w for w in range(0, 200_001, 1_000) if reads.due(at + w))
                waits.append(wait)
                at += wait
            assert waits == [15_000, 30_000, 60_000, 120_000, 120_000]
            assert await reads.refresh(at)  # a good read ends the back-off
            reads.invalidate("ACCOUNT_UPDATE ORDER")
            assert reads.due(at + 10_000)

    run(go())


@pytest.mark.spec("W24")
def test_an_unreadable_row_of_another_contract_leaves_the_others_usable() -> None:
    """One row of the all-symbols answer the parser refuses (a contract we never trade) is left
    out on its own: the read stands, that symbol's trigger would read for itself (attack on D-72:
    it used to fail every read, retried each second at weight 40)."""

    async def go() -> None:
        async with venue() as (ex, v, rest):
            set_up(ex)
            security, handler = v._routes[("GET", "/fapi/v1/symbolConfig")]

            def answer(params: dict[str, str]) -> object:
                rows = handler(params)
                extra = {"symbol": "OLDUSDT", "marginType": "", "isAutoAddMargin": False, "leverage": 0}
                return rows if params.get("symbol") else [*rows, extra]

            v._routes[("GET", "/fapi/v1/symbolConfig")] = (security, answer)
            reads = AccountReads(rest, max_age_ms=AGE_MS, stream_epoch=Stream())
            assert await reads.refresh(NOW), reads.problem
            assert reads.usable("BTCUSDT", NOW + 1) is not None
            assert reads.usable("OLDUSDT", NOW + 1) is None

    run(go())


def test_a_symbol_that_starts_monitoring_is_read_for_one_second_after_the_last_read() -> None:
    """A trade's fills void the facts; a symbol that starts monitoring right after may trigger soon:
    its read may start 1 s after the last one (not 10 s), and only while the facts are void."""

    async def go() -> None:
        async with venue() as (_ex, _v, rest):
            reads = AccountReads(rest, max_age_ms=AGE_MS, stream_epoch=Stream())
            assert await reads.refresh(NOW)
            assert not reads.due(NOW + 1_000, new_symbol=True)  # fresh facts: nothing to read
            reads.invalidate("ACCOUNT_UPDATE ORDER")
            assert not reads.due(NOW + 999, new_symbol=True) and reads.due(NOW + 1_000, new_symbol=True)
            assert not reads.due(NOW + 9_999) and reads.due(NOW + 10_000)

    run(go())


def test_an_unforeseen_error_in_a_read_backs_off_like_any_failure() -> None:
    async def go() -> None:
        async with venue() as (_ex, _v, rest):
            reads = AccountReads(rest, max_age_ms=AGE_MS, stream_epoch=Stream())

            async def broken() -> list[object]:
                raise RuntimeError("unforeseen")

            rest.balance = broken  # type: ignore[method-assign]
            assert not await reads.refresh(NOW)
            assert reads.problem == "RuntimeError: unforeseen"
            assert not reads.due(NOW + 14_999, new_symbol=True) and reads.due(NOW + 15_000)

    run(go())


@pytest.mark.spec("W24")
def test_the_trigger_own_setting_of_leverage_voids_a_read_ahead() -> None:
    """A read ahead that is too old to serve, then the trigger reads and sets leverage itself: the
    read ahead (which says 20x) is voided, never served afterwards."""

    async def go() -> None:
        async with venue() as (ex, _v, rest):
            ex.leverage["BTCUSDT"] = 20
            ex.margin_type["BTCUSDT"] = "isolated"
            reads = AccountReads(rest, max_age_ms=AGE_MS, stream_epoch=Stream())
            assert await reads.refresh(NOW)
            assert reads.facts is not None and reads.facts.configs["BTCUSDT"].leverage == 20
            out = await Executor(rest, reads=reads).execute(ENTRY1, NOW + AGE_MS)  # too old: live path
            assert isinstance(out[0], OrderPrepared) and out[0].ok and ex.leverage["BTCUSDT"] == 1
            assert reads.facts is None

    run(go())
