"""Whether the API key can withdraw funds: ``check`` fails on it and ``run`` refuses to trade with it.

Binance answers this on the spot API (``GET /sapi/v1/account/apiRestrictions``, ``enableWithdrawals``),
not on the futures one; demo trading has no such endpoint, so there the answer is unknown.
"""

from __future__ import annotations

import logging

import httpx

from binance.rest import signed_query
from fsm.runtime.config import AppConfig

log = logging.getLogger(__name__)
MAINNET_SPOT_URL = "https://api.binance.com"


def spot_api_url(config: AppConfig, profile: str) -> str | None:
    """Where ``apiRestrictions`` lives: the configured REST URL when it is overridden (a proxy or
    the simulated venue), the spot API on mainnet, otherwise nowhere. ``profile`` is resolved as
    every command resolves it (``AppConfig.for_profile``), so a flag never borrows another
    profile's URL."""
    binance = config.for_profile(profile).binance
    if binance.rest_url:
        return binance.rest_url
    return MAINNET_SPOT_URL if binance.profile == "mainnet" else None


async def can_withdraw(
    spot_url: str | None, api_key: str, api_secret: str, *, timestamp_ms: int, recv_window_ms: int
) -> bool | None:
    """``enableWithdrawals`` for this key; None when it cannot be known (no URL, any failure)."""
    if spot_url is None:
        return None
    try:
        query = signed_query({}, api_secret, timestamp_ms, recv_window_ms)
        async with httpx.AsyncClient(base_url=spot_url, timeout=10) as client:
            resp = await client.get(
                f"/sapi/v1/account/apiRestrictions?{query}", headers={"X-MBX-APIKEY": api_key}
            )
        data = resp.json() if resp.status_code == 200 else None
    except (httpx.HTTPError, ValueError) as exc:
        log.info("apiRestrictions unavailable: %s", type(exc).__name__)
        return None
    value = data.get("enableWithdrawals") if isinstance(data, dict) else None
    return value if isinstance(value, bool) else None
