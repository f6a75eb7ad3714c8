"""Attack 3 on the balance read after ACCOUNT_UPDATE (issue #13, daemon ``_read_balance``).

Real daemon against ``binance/sim`` on loopback. The venue's answer to the balance read is held in
transit (a slow network) while a second ACCOUNT_UPDATE arrives: the push is newer than the read.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path
from typing import Any

import runtime_kit as kit


def _push(exchange: Any, wallet: Decimal) -> None:
    """The venue's wallet moves (a fee, a funding payment, a transfer) and it says so."""
    exchange.wallet = wallet
    now = exchange.now()
    exchange._emit(
        {
            "e": "ACCOUNT_UPDATE",
            "T": now,
            "E": now,
            "a": {
                "m": "FUNDING_FEE",
                "B": [{"a": "USDT", "wb": f"{wallet:.8f}", "cw": f"{wallet:.8f}", "bc": "0"}],
                "P": [],
            },
        }
    )


def test_a_balance_read_overtaken_by_a_newer_account_update_is_read_again(tmp_path: Path) -> None:
    feed = kit.write_feed(tmp_path, [])
    path = kit.PricePath(base={"ETHUSDT": Decimal("3500.00")}, points=())

    async def scenario() -> None:
        async with kit.Venue(path) as venue:
            sim = venue.harness.venue
            exchange = venue.exchange
            gate = asyncio.Event()
            held: list[str] = []
            dispatch = sim._dispatch

            async def slow_balance(method: str, target: str, headers: dict[str, str], body: str) -> Any:
                answer = await dispatch(method, target, headers, body)  # the venue's state now
                if target.startswith("/fapi/v3/balance") and not gate.is_set():
                    held.append(target)
                    await gate.wait()  # the answer is late on the wire
                return answer

            run = await venue.start_daemon(tmp_path, feed)
            daemon = run.daemon
            engine = daemon.engine
            await kit.wait_until(lambda: daemon.user is not None and daemon.user.connected, timeout=10)
            await kit.wait_until(lambda: engine.wallet_balance == exchange.wallet, timeout=10)
            sim._dispatch = slow_balance

            w1 = exchange.wallet + Decimal("100")
            _push(exchange, w1)  # schedules one read, 500 ms of venue time later
            await kit.wait_until(lambda: bool(held), timeout=10)  # the read has been answered (W1)...
            w2 = w1 + Decimal("250")
            _push(exchange, w2)  # ...and a newer update arrives before its answer
            await kit.wait_until(lambda: engine.wallet_balance == w2, timeout=10)
            gate.set()
            await kit.wait_until(lambda: daemon._balance_read is not None and daemon._balance_read.done())
            # the read's event through the queue, and a read the second update may have scheduled
            later = (venue.clock.now_ms() - venue.origin) / 1000 + 2  # 2 s of venue time
            await kit.wait_until(lambda: venue.at(later) and daemon.queue.empty())
            await kit.wait_until(lambda: daemon._balance_read.done() and daemon.queue.empty())
            assert (engine.wallet_balance, engine.available_balance) == (w2, exchange.available_balance())
            assert await run.stop() == 0

    kit.run(scenario(), timeout=40)
