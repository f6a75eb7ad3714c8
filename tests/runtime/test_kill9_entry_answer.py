"""kill -9 of a real daemon process at the moment the venue has accepted an entry order (ENTRY1 or
the scale-in ENTRY2) and before the daemon has its answer: since D-72 the event that sends it (its
OrderPrepared moves only the ``setup`` machine) does not save the snapshot first, so the restart finds
the snapshot of the trigger and the order on the venue. It adopts the order, nothing is sent twice
and the run ends as an uncrashed one (from the second attack on D-72), with the read ahead off and on."""

from __future__ import annotations

import asyncio
import signal
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import test_kill9 as k9
import yaml

ZERO = Decimal(0)


class KillingDaemon(k9.Daemon):
    """A ``k9.Daemon`` whose config can turn the read ahead on."""

    read_ahead: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.read_ahead:
            cfg = yaml.safe_load(self.config.read_text())
            cfg["binance"]["account_read_max_age_seconds"] = self.read_ahead
            self.config.write_text(yaml.safe_dump(cfg), encoding="utf-8")


def kill_on_accept(daemon: k9.Daemon, prefix: str) -> list[bool]:
    """SIGKILL the daemon from inside the venue, the moment the venue has created the order whose
    client id starts with ``prefix`` (the order exists; its answer never reaches the daemon)."""
    routes = daemon.venue.server._routes
    security, original = routes[("POST", "/fapi/v1/order")]
    done: list[bool] = []

    def new_order(params: dict[str, str]) -> Any:
        out = original(params)
        if not done and params.get("newClientOrderId", "").startswith(prefix):
            assert daemon.proc is not None
            daemon.proc.send_signal(signal.SIGKILL)
            done.append(True)
        return out

    routes[("POST", "/fapi/v1/order")] = (security, new_order)
    return done


async def killed_and_restarted(d: k9.Daemon, label: str, done: list[bool], *, hold: bool) -> None:
    await d.wait_for(label, lambda: bool(done))
    assert d.proc is not None
    d.venue.hold = hold
    assert await d.proc.wait() == -signal.SIGKILL
    d.kills.append(label)
    await d.start()
    await d.wait_for(f"recovered after {label}", d.recovered)
    d.known = set(k9._open(d.venue.exchange))
    d.venue.hold = False


async def one_run(director: Any, home: Path, plan: Any, read_ahead: int) -> tuple[dict[str, Any], k9.Daemon]:
    async with k9.Venue(director) as venue:
        # the venue's leverage/margin as a symbol traded before (no W24 change at the trigger)
        daemon = KillingDaemon(venue, home, [k9.LEADING])
        daemon.read_ahead = read_ahead
        daemon.__post_init__()
        await daemon.start()
        try:
            if plan is not None:
                await plan(daemon)
            await daemon.wait_for("flat at the end", daemon.idle)
            await daemon.stop()
        finally:
            if daemon.proc is not None and daemon.proc.returncode is None:
                daemon.proc.kill()
                await daemon.proc.wait()
        problems = k9.invariants(venue.exchange)
        return {**k9.final_state(venue.exchange), "problems": problems}, daemon


async def both(
    director: Any, tmp: Path, plan: Any, read_ahead: int
) -> tuple[dict[str, Any], dict[str, Any], k9.Daemon]:
    (ref, _), (crashed, daemon) = await asyncio.gather(
        one_run(director, tmp / "reference", None, read_ahead),
        one_run(director, tmp / "crashed", plan, read_ahead),
    )
    return ref, crashed, daemon


@pytest.mark.spec("W55", "N-28")
@pytest.mark.parametrize("read_ahead", [0, 30])
def test_kill9_when_the_venue_accepts_entry1_before_its_answer(tmp_path: Path, read_ahead: int) -> None:
    async def plan(d: k9.Daemon) -> None:
        done = kill_on_accept(d, "sf1001-E1")
        await killed_and_restarted(d, "E1 accepted, no answer", done, hold=False)

    ref, crashed, daemon = asyncio.run(
        asyncio.wait_for(both(k9.w55_director, tmp_path, plan, read_ahead), 60)
    )
    assert daemon.kills == ["E1 accepted, no answer"]
    assert crashed == ref
    assert ref["problems"] == []


@pytest.mark.spec("W56", "N-28")
@pytest.mark.parametrize("read_ahead", [0, 30])
def test_kill9_when_the_venue_accepts_entry2_before_its_answer(tmp_path: Path, read_ahead: int) -> None:
    """The scale-in is accepted, the daemon dies before its answer, the scale-in fills while no
    daemon runs (hold=False): the restarted daemon must find PHASE2 (MDD stop, BE) as the uncrashed
    run does."""

    async def plan(d: k9.Daemon) -> None:
        done = kill_on_accept(d, "sf1001-E2")
        await killed_and_restarted(d, "E2 accepted, no answer", done, hold=False)

    ref, crashed, daemon = asyncio.run(
        asyncio.wait_for(both(k9.w56_director, tmp_path, plan, read_ahead), 60)
    )
    assert daemon.kills == ["E2 accepted, no answer"]
    assert crashed == ref
    assert ref["problems"] == []
