"""``shortfsm data`` keeps the venue's exchangeInfo in the cache (D-62): read from binance/sim over
loopback, refreshed only when a day old, kept (its age said) when the venue is not asked."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from test_history_kit import ms

from binance.history import MarketCache
from binance.history import exchange_info as xi
from binance.sim.clock import SimClock
from binance.sim.exchange import SimExchange
from binance.sim.server import SimVenue
from fsm.harness.scenario import LEADING_TEMPLATE

T = TypeVar("T")
NOW = ms("2026-01-03T12:00")
HOUR = 3_600_000
SHORTFSM = Path(sys.executable).parent / "shortfsm"


def run(coro: Coroutine[Any, Any, T], timeout: float = 15.0) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout))


def test_data_saves_exchange_info_and_reads_it_again_only_when_a_day_old(tmp_path: Path) -> None:
    now = [NOW]
    root = tmp_path / "cache"

    async def scenario() -> None:
        async with SimVenue(SimExchange(clock=SimClock(NOW))) as v:

            def asked() -> int:
                return sum(p == "/fapi/v1/exchangeInfo" for _, p in v.requests)

            async def once() -> xi.ExchangeInfoStatus:
                cache = MarketCache(root, rest=v.rest_url, clock_ms=lambda: now[0])
                try:
                    return await cache.aexchange_info()
                finally:
                    await cache.aclose()
                    cache.close()

            first = await once()
            assert (first.fetched, asked()) == (True, 1)
            assert first.line == "exchangeInfo: read (4 USDT perpetuals, 1 request(s))"
            saved = xi.load(root)
            assert saved is not None and saved.read_ms == NOW and saved.source == v.rest_url
            assert sorted(saved.entries) == ["BTCUSDT", "DOGEUSDT", "ETHUSDT", "SOLUSDT"]
            assert saved.entries["DOGEUSDT"]["filters"][0]["tickSize"] == "0.00001"

            now[0] = NOW + 23 * HOUR  # fresh: not asked again
            kept = await once()
            assert (kept.fetched, kept.problem, asked()) == (False, False, 1)
            assert kept.line == "exchangeInfo: kept, read 23 h ago (4 USDT perpetuals)"

            now[0] = NOW + 25 * HOUR  # a day old: read again
            again = await once()
            assert (again.fetched, asked()) == (True, 2)
            assert xi.load(root).read_ms == NOW + 25 * HOUR  # type: ignore[union-attr]

    run(scenario())


def test_a_venue_that_cannot_be_reached_keeps_the_old_file_and_says_its_age(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    xi.save(root, {"symbols": []}, read_ms=NOW - 3 * 86_400_000, source="x")

    async def scenario() -> xi.ExchangeInfoStatus:
        cache = MarketCache(root, rest="http://127.0.0.1:9", clock_ms=lambda: NOW)
        cache.down["rest"] = "--offline: not fetched"
        try:
            return await cache.aexchange_info()
        finally:
            await cache.aclose()
            cache.close()

    status = run(scenario())
    assert (status.fetched, status.problem) == (False, True)
    assert status.line == "exchangeInfo: keeping the one read 3 d ago (not read: --offline: not fetched)"
    assert xi.load(root).read_ms == NOW - 3 * 86_400_000  # type: ignore[union-attr]


def test_only_usdt_margined_perpetuals_are_kept() -> None:
    def entry(symbol: str, contract: str, quote: str, margin: str) -> dict[str, str]:
        return {"symbol": symbol, "contractType": contract, "quoteAsset": quote, "marginAsset": margin}

    answer = {
        "timezone": "UTC",
        "symbols": [
            entry("XRPUSDT", "PERPETUAL", "USDT", "USDT"),
            entry("BTCUSDT_260327", "CURRENT_QUARTER", "USDT", "USDT"),
            entry("ETHUSDC", "PERPETUAL", "USDC", "USDC"),
            entry("BTCBUSD", "PERPETUAL", "BUSD", "BUSD"),
        ],
    }
    kept = xi.usdt_perpetuals(answer)
    assert [e["symbol"] for e in kept["symbols"]] == ["XRPUSDT"] and kept["timezone"] == "UTC"


def test_offline_data_run_keeps_the_saved_file_and_says_its_age(tmp_path: Path) -> None:
    cache = tmp_path / "c"
    xi.save(cache, {"symbols": []}, read_ms=NOW, source="x")
    text = LEADING_TEMPLATE.format(
        ticker="DOGE", funding="-0.0100", change="+8.50", direction="상승", rank=15, category="Meme"
    )
    feed = tmp_path / "feed.jsonl"
    message = {"at_ms": 0, "chat_id": -1, "message_id": 1, "text": text, "date_ms": ms("2025-11-03T10:00")}
    feed.write_text(json.dumps(message, ensure_ascii=False) + "\n", encoding="utf-8")
    done = subprocess.run(
        [
            *(str(SHORTFSM), "data", "--feed", str(feed), "--horizon-days", "0", "--datasets", "klines"),
            *("--cache", str(cache), "--offline"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stderr  # the day is not in the cache: a gap
    assert "Traceback" not in done.stderr
    assert json.loads((cache / "exchangeInfo.json").read_text())["read_ms"] == NOW  # untouched
    lines = done.stderr.splitlines()
    assert lines[0] == "offline: no request sent; what the cache lacks is listed as gaps"
    assert len(lines) == 2 and lines[1].startswith("exchangeInfo: keeping the one read ")
    assert lines[1].endswith(" d ago (not read: --offline: not fetched)")
    gap = "gap DOGEUSDT klines 2025-11-03T00:00:00Z .. 2025-11-04T00:00:00Z (1 d): --offline: not fetched"
    assert gap in done.stdout
