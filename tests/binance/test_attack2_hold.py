"""Attack pass 2, D-48: a request that meets the client's own 429 back-off or 418 ban within 1 s of its
end (``LIMIT_END_TOLERANCE_MS``) is held to the end and then sent; earlier, it fails fast, nothing sent."""

from __future__ import annotations

import pytest
from binance_simkit import run
from test_adapter_real import CLOSE, MINUTE, ORDER_ACK, T0, FakeClock, FakeVenue, client

from binance import errors as E
from binance.rest import BAN_END_MARGIN_MS


def test_a_read_600_ms_before_the_end_of_a_429_back_off_is_held_and_sent() -> None:
    async def go() -> None:
        venue = FakeVenue(FakeClock(T0 + 1_000))
        venue.routes[("GET", "/fapi/v1/premiumIndex")] = (
            429,
            {"code": -1003, "msg": "x"},
            {"Retry-After": "3"},
        )
        async with client(venue) as rest:
            with pytest.raises(E.RateLimited):
                await rest.premium_index("BTCUSDT")
            until = rest.rate.backoff_until_ms
            assert until == T0 + 4_000
            venue.routes[("GET", "/fapi/v1/premiumIndex")] = (200, {"symbol": "BTCUSDT"}, {})
            venue.clock.now = until - 600
            assert await rest.premium_index("BTCUSDT") == {"symbol": "BTCUSDT"}
            assert venue.seen[-1][3] >= until  # sent only once the back-off was over

    run(go())


def test_a_close_600_ms_before_the_end_of_a_ban_is_held_and_sent_at_its_end() -> None:
    async def go() -> None:
        until = T0 + 7 * MINUTE
        venue = FakeVenue(FakeClock(T0 + 5_000))
        venue.routes[("GET", "/fapi/v1/premiumIndex")] = (
            418,
            {"code": -1003, "msg": f"Way too many requests; IP(203.0.113.9) banned until {until}."},
            {},
        )
        async with client(venue) as rest:
            await rest.sync_time()
            with pytest.raises(E.RateLimited):
                await rest.premium_index("BTCUSDT")
            sent = len(venue.seen)
            venue.routes[("POST", "/fapi/v1/order")] = ORDER_ACK
            venue.clock.now = until - 600
            assert (await rest.place_order(CLOSE))["orderId"] == 7
            assert len(venue.seen) == sent + 1 and venue.seen[-1][3] >= until  # nothing during the ban

    run(go())


def test_a_close_3_s_before_the_end_of_a_ban_fails_fast_and_sends_nothing() -> None:
    async def go() -> None:
        until = T0 + 7 * MINUTE
        venue = FakeVenue(FakeClock(T0 + 5_000))
        venue.routes[("GET", "/fapi/v1/premiumIndex")] = (
            418,
            {"code": -1003, "msg": f"Way too many requests; IP(203.0.113.9) banned until {until}."},
            {},
        )
        async with client(venue) as rest:
            await rest.sync_time()
            with pytest.raises(E.RateLimited):
                await rest.premium_index("BTCUSDT")
            sent = len(venue.seen)
            venue.routes[("POST", "/fapi/v1/order")] = ORDER_ACK
            venue.clock.now = until - 3_000
            with pytest.raises(E.RateLimited) as fast:
                await rest.place_order(CLOSE)
            assert fast.value.banned_until_ms == until + BAN_END_MARGIN_MS and len(venue.seen) == sent

    run(go())
