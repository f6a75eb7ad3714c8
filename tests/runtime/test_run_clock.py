"""``RunClock``: compressed venue time, and a host stall that is not counted as venue time."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from fsm.runtime.daemon import RunClock


def _wall(readings: list[float]) -> Callable[[], float]:
    values = iter(readings)
    return lambda: next(values)


def test_a_compressed_clock_counts_every_wall_second_times_the_speed() -> None:
    clock = RunClock(speed=25, origin_ms=0, monotonic=_wall([100.0, 100.0, 100.0, 100.5, 102.0]))
    clock.start(1_000)
    assert [clock.now_ms(), clock.now_ms(), clock.now_ms()] == [1_000, 13_500, 51_000]


def test_a_stall_between_two_readings_counts_only_max_gap() -> None:
    """Readings 4 ms apart count in full; a 400 ms gap (the host stalled the process) counts as
    50 ms, so 25x venue time moves 1.25 s, not 10 s; time never goes back."""
    wall = _wall([100.0, 100.0, 100.004, 100.404, 100.408, 100.408])
    clock = RunClock(speed=25, origin_ms=0, max_gap_s=0.05, monotonic=wall)
    clock.start(0)
    assert clock.now_ms() == 100
    assert clock.now_ms() == 100 + 1_250
    assert clock.now_ms() == 100 + 1_250 + 100
    assert clock.now_ms() == 1_450
    assert clock.stalled_s == pytest.approx(0.35)
