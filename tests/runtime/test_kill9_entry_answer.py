"""kill -9 of a real daemon process at the moment the venue has accepted an entry order (ENTRY1 or
the scale-in ENTRY2) and before the daemon has its answer: since D-72 the event that sends it (its
OrderPrepared moves only the ``setup`` machine) does not save the snapshot first, so the restart finds
the snapshot of the trigger and the order on the venue. It adopts the order, nothing is sent twice
and the run ends as an uncrashed one (from the second attack on D-72), with the read ahead off and on."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
import test_kill9 as k9


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


@pytest.mark.parametrize("read_ahead", [0, 30])
@pytest.mark.parametrize(
    ("director", "prefix"),
    [
        # ENTRY1: the restart finds ENTRY_ORDER (the trigger's snapshot) and the order on the venue.
        pytest.param(k9.w55_director, "sf1001-E1", marks=pytest.mark.spec("W55", "N-28"), id="entry1"),
        # The scale-in fills while no daemon runs: the restart finds PHASE2 (MDD stop, breakeven).
        pytest.param(k9.w56_director, "sf1001-E2", marks=pytest.mark.spec("W56", "N-28"), id="entry2"),
    ],
)
def test_kill9_when_the_venue_accepts_an_entry_before_its_answer(
    tmp_path: Path, director: Any, prefix: str, read_ahead: int
) -> None:
    label = f"{prefix[-2:]} accepted, no answer"

    async def plan(d: k9.Daemon) -> None:
        await killed_and_restarted(d, label, kill_on_accept(d, prefix), hold=False)

    binance = {"account_read_max_age_seconds": read_ahead}
    ref, crashed, daemon = k9._go(k9._both(director, [k9.LEADING], tmp_path, plan, binance=binance))
    assert daemon.kills == [label]
    assert crashed == ref  # both runs also met every venue invariant (k9._run)
