"""The year-long backtest benchmark of issue #14 (``shortfsm bench``): **synthetic data, labelled so**.

``year_stories`` spreads N leading-market signals over M synthetic symbols (``SYN001USDT`` ...) and
a year, one of the demo's price stories each (``fsm.harness.backtest_demo``: take-profit, breakeven,
MDD stop, risk-management close with its risk message, ambiguous minute, funding-filtered) in the
order of ``YEAR_SHAPES``.
A symbol's signals are ``M`` apart in the sequence (about 22 days for 5,000 over 300), so each story
is over long before the next on its symbol. ``write_year`` writes the feed and a cache holding only
the candles the signals need (the demo's window: 11 h before the signal, the story, 4 h after), the
funding settlements of those windows, and an ``exchangeInfo.json`` in Binance's shape for the
synthetic symbols (the simulator's ``SimSymbol.entry``), with filters modelled on four real tiers.
Nothing here is a market fact; ``--demo`` is untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from binance.history import exchange_info
from binance.history.store import Store
from binance.sim.clock import SimClock
from binance.sim.exchange import SimExchange, SimSymbol
from fsm.harness.backtest_demo import (
    SINCE_MS,
    Bar,
    Story,
    feed_lines,
    story_bars_at,
    write_bars,
)

YEAR_DAYS = 365
YEAR_MESSAGES = 5000
YEAR_SYMBOLS = 300
# The demo's shapes, winners more often than in ``backtest_demo.SHAPES`` (there, one MDD stop in eight
# signals: the balance falls ~8 % a round and after ~70 days nothing can be sized any more). Here
# seven take-profits pay for one MDD stop a round: the account keeps trading all year.
YEAR_SHAPES = (
    "tp", "breakeven", "tp", "risk_close", "tp", "ambiguous", "tp", "filtered",
    "tp", "breakeven", "tp", "mdd", "tp", "ambiguous", "breakeven", "risk_close",
)  # fmt: skip
LABEL = "SYNTHETIC BENCHMARK DATA: the demo's price stories on made-up symbols; not market history"


@dataclass(frozen=True, slots=True)
class Tier:
    """Filters modelled on one of the simulator's real-looking symbols (tick, step, limits)."""

    base: float  # the tier's first price; symbols of the tier spread up from it
    tick: str
    step: str
    min_qty: str
    max_qty: str
    market_max_qty: str
    min_notional: str


TIERS = (
    Tier(60000.0, "0.10", "0.001", "0.001", "1000", "120", "100"),  # as BTCUSDT
    Tier(2500.0, "0.01", "0.001", "0.001", "10000", "2000", "20"),  # as ETHUSDT
    Tier(120.0, "0.0100", "1", "1", "1000000", "5000", "5"),  # as SOLUSDT
    Tier(0.12, "0.00001", "1", "1", "50000000", "30000000", "5"),  # as DOGEUSDT
)


@dataclass(frozen=True, slots=True)
class YearSymbol:
    sim: SimSymbol
    base: float  # the flat price around its stories
    places: int


def year_symbol(index: int) -> YearSymbol:
    """``SYN001USDT`` for index 0; tiers in turn, prices spread within a tier."""
    tier = TIERS[index % len(TIERS)]
    places = -Decimal(tier.tick).normalize().as_tuple().exponent  # type: ignore[operator]
    base = round(tier.base * (1 + (index // len(TIERS)) % 9 / 10), int(places))
    sim = SimSymbol(
        f"SYN{index + 1:03d}USDT",
        Decimal(tier.tick),
        Decimal(tier.step),
        Decimal(tier.min_qty),
        Decimal(tier.max_qty),
        Decimal(tier.market_max_qty),
        Decimal(tier.min_notional),
        min_price=Decimal(tier.tick),
        max_price=Decimal(repr(round(base * 50, int(places)))),
    )
    return YearSymbol(sim, base, int(places))


def year_stories(
    messages: int = YEAR_MESSAGES, symbols: int = YEAR_SYMBOLS, days: int = YEAR_DAYS
) -> tuple[Story, ...]:
    """``messages`` leading signals spread evenly over ``days``, symbol ``n % symbols`` for the n-th,
    at a 3m boundary between 01:00 and 20:57 UTC, the demo's shapes in turn."""
    out = []
    for n in range(messages):
        at_minute = n * days * 1440 // messages  # minutes after the first day's start
        day, hour = divmod(at_minute // 60, 24)
        hour = 1 + hour * 20 // 24  # 01..20: every story (and its 4 h tail) ends in its day's data
        minute = (n * 7 % 20) * 3
        symbol = year_symbol(n % symbols).sim.symbol
        out.append(Story(symbol, day, hour, YEAR_SHAPES[n % len(YEAR_SHAPES)], minute=minute))
    return tuple(out)


def story_bars(story: Story, symbol: YearSymbol) -> dict[int, Bar]:
    """As ``backtest_demo.story_bars`` at this symbol's price."""
    return story_bars_at(story, symbol.base, symbol.places)


def write_year(folder: Path, stories: tuple[Story, ...], symbols: int = YEAR_SYMBOLS) -> tuple[Path, Path]:
    """The feed (``year-feed.jsonl``) and cache (``year-cache``) of ``stories`` under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    feed, cache = folder / "year-feed.jsonl", folder / "year-cache"
    (folder / "README.txt").write_text(LABEL + "\n", encoding="utf-8")
    lines = feed_lines(stories)
    lines[0] = f"# {LABEL}"
    feed.write_text("\n".join(lines) + "\n", encoding="utf-8")
    listed = [year_symbol(i) for i in range(symbols)]
    by_name = {s.sim.symbol: s for s in listed}
    venue = SimExchange(clock=SimClock(SINCE_MS), symbols=[(s.sim, Decimal(repr(s.base))) for s in listed])
    exchange_info.save(
        cache, venue.exchange_info({}), read_ms=SINCE_MS, source="bench: synthetic symbols (SYN*USDT)"
    )
    by_symbol: dict[str, list[Story]] = {}
    for story in stories:
        by_symbol.setdefault(story.symbol, []).append(story)
    store = Store(cache)
    try:
        for name, own in sorted(by_symbol.items()):  # one symbol's bars in memory at a time
            minutes: dict[int, Bar] = {}
            for story in own:
                minutes.update(story_bars(story, by_name[name]))
            # Each window's settlements and the next one after it (a trade's funding is read on).
            write_bars(store, name, minutes, by_name[name].places, following_settlements=1)
    finally:
        store.close()
    return feed, cache
