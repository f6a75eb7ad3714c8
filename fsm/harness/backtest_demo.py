"""``shortfsm backtest --demo``: a small bundled dataset, **synthetic and labelled so**, that shows what
a backtest gives in seconds without a Telegram session or a download.

Nine leading-market signals over two months on the four symbols the simulated venue lists, each
followed by a hand-drawn price story that exercises one of the strategy's ways out: a take-profit, a
scale-in that comes back to breakeven, the MDD stop, a risk-management close at a loss, a minute
whose high and low both decide (so the pessimistic and optimistic paths differ), and a signal the
funding filter refuses. Prices are flat around each story (no market data elsewhere: nothing is
watched there) and funding settles at 0.01 % every 8 h.

The stories are drawn for the default strategy (aggressive target: the high of the last closed 3m
candle; 0.1 % trigger buffer; TP 5 %; scale-in +15 %; MDD 15 %). Nothing here is a market fact.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

from binance.history import exchange_info
from binance.history.archive import Parsed
from binance.history.store import Store
from binance.sim.clock import SimClock
from binance.sim.exchange import SimExchange, default_symbols
from fsm.harness.scenario import LEADING_TEMPLATE, RISK_TEMPLATE
from fsm.strategy import Strategy

MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR
DEMO_SINCE = "2026-01-05"
DEMO_UNTIL = "2026-03-06"
DEMO_CAPITAL = Decimal("1000")
SINCE_MS = int(datetime(2026, 1, 5, tzinfo=UTC).timestamp() * 1000)
LABEL = "SYNTHETIC DEMO DATA: drawn by hand to show the backtest; not market history"

# Symbol -> (base price, price decimals): the simulator's symbols and tick sizes.
SYMBOLS: dict[str, tuple[float, int]] = {
    "BTCUSDT": (95000.0, 1),
    "ETHUSDT": (3500.0, 2),
    "SOLUSDT": (150.0, 2),
    "DOGEUSDT": (0.16, 5),
}

Bar = tuple[float, float, float, float]


@dataclass(frozen=True, slots=True)
class Story:
    symbol: str
    day: int  # days after DEMO_SINCE
    hour: int  # UTC time of the signal (a 3m boundary: the last 3m candle is closed)
    shape: str  # tp, breakeven, mdd, risk_close, ambiguous, filtered
    minute: int = 0


STORIES: tuple[Story, ...] = (
    Story("ETHUSDT", 1, 10, "tp"),
    Story("SOLUSDT", 6, 14, "breakeven"),
    Story("BTCUSDT", 11, 7, "tp", minute=48),  # held across the 08:00 funding settlement
    Story("DOGEUSDT", 17, 15, "mdd"),
    Story("ETHUSDT", 24, 11, "risk_close"),
    Story("SOLUSDT", 31, 13, "ambiguous"),
    Story("BTCUSDT", 38, 10, "filtered"),
    Story("ETHUSDT", 45, 16, "breakeven"),
    Story("DOGEUSDT", 52, 8, "tp"),
)


SHAPES = ("tp", "breakeven", "tp", "mdd", "risk_close", "ambiguous", "tp", "filtered")


def many_stories(days: int) -> tuple[Story, ...]:
    """A story a day on each symbol, six hours apart (each trade is over before the next signal):
    the benchmark's dataset (``shortfsm bench``), built from the demo's shapes in turn."""
    out = []
    for day in range(days):
        for i, symbol in enumerate(SYMBOLS):
            out.append(Story(symbol, day, 2 + 6 * i, SHAPES[(day * len(SYMBOLS) + i) % len(SHAPES)]))
    return tuple(out)


def signal_ms(story: Story) -> int:
    return SINCE_MS + story.day * DAY + story.hour * HOUR + story.minute * MINUTE


def _path(shape: str, target: float) -> list[Bar]:
    """The minutes after the signal's, as fractions of nothing: absolute prices from ``target``."""
    t = target
    entry: list[Bar] = [(t * 0.9985, t * 1.001, t * 0.998, t * 1.0005)]  # the trigger and the limit
    if shape == "tp":  # down 6 % in 12 minutes: the TP (avg x 0.95) fills
        walk = [t * (1.0005 - 0.005 * k) for k in range(13)]
        rest = t * 0.94
    elif shape == "breakeven":  # up 16 % (scale-in at +15 %), then back under the average
        up = [t * (1.0005 + 0.0133 * k) for k in range(13)]
        down = [t * (1.16 - 0.008 * k) for k in range(21)]
        walk = up + down
        rest = t * 0.99
    elif shape == "mdd":  # up 16 % (scale-in), then on to +40 %: the MDD stop
        walk = [t * (1.0005 + 0.0133 * k) for k in range(13)] + [t * (1.16 + 0.012 * k) for k in range(21)]
        rest = t * 1.40
    elif shape == "risk_close":  # a little up: the risk message finds a loss and closes at market
        walk = [t * (1.0005 + 0.001 * k) for k in range(20)]
        rest = t * 1.02
    else:  # ambiguous: one minute spans the scale-in above and the TP below
        flat = t * 0.97
        return [*entry, (t * 1.0005, t * 1.16, t * 0.94, flat), *[(flat, flat, flat, flat)] * 240]
    bars = list(entry)
    for a, b in itertools.pairwise(walk):
        bars.append((a, max(a, b) * 1.0002, min(a, b) * 0.9998, b))
    bars.extend([(rest, rest, rest, rest)] * 240)
    return bars


def story_bars(story: Story) -> dict[int, Bar]:
    """11 h of flat history before the signal (the 3m target candle's high 0.35 % above), then the
    story, then 4 h flat."""
    base, places = SYMBOLS[story.symbol]
    return story_bars_at(story, base, places)


def story_bars_at(story: Story, base: float, places: int) -> dict[int, Bar]:
    """``story_bars`` at a given flat price and price precision."""
    at = signal_ms(story) // MINUTE * MINUTE
    target = base * 1.0035
    bars: dict[int, Bar] = {m: (base, base, base, base) for m in range(at - 11 * HOUR, at, MINUTE)}
    bars[at - MINUTE] = (base, target, base, base)
    bars[at] = (base, base, base, base)
    if story.shape != "filtered":
        for i, bar in enumerate(_path(story.shape, target)):
            bars[at + (i + 1) * MINUTE] = bar
    else:
        for m in range(at + MINUTE, at + 4 * HOUR, MINUTE):
            bars[m] = (base, base, base, base)
    return {m: _rounded(bar, places) for m, bar in bars.items()}


def _rounded(bar: Bar, places: int) -> Bar:
    o, h, low, c = (float(Decimal(repr(x)).quantize(Decimal(1).scaleb(-places), ROUND_HALF_UP)) for x in bar)
    return (o, max(o, h, low, c), min(o, h, low, c), c)


def feed_lines(stories: tuple[Story, ...] = STORIES) -> list[str]:
    strategy = Strategy()
    lines = [f"# {LABEL}"]
    for number, story in enumerate(stories, start=1):
        at = signal_ms(story) + 5_000
        funding = "-0.1500" if story.shape == "filtered" else "-0.0100"
        text = LEADING_TEMPLATE.format(
            ticker=story.symbol.removesuffix("USDT"),
            funding=funding,
            change="+8.50",
            direction="상승",
            rank=15,
            category="AI",
        )
        lines.append(_line(strategy.entry_chat_id, 100 + number, at, text))
        if story.shape == "risk_close":
            risk = RISK_TEMPLATE.format(symbol=story.symbol)
            lines.append(_line(strategy.risk_chat_id, 100_000 + number, at + 25 * MINUTE, risk))
    return lines


def _line(chat_id: int, message_id: int, at_ms: int, text: str) -> str:
    payload = {"at_ms": at_ms - SINCE_MS, "chat_id": chat_id, "message_id": message_id, "date_ms": at_ms}
    return json.dumps({**payload, "text": text}, ensure_ascii=False)


DATA_FOLDER = "demo-data"  # beside the demo's database: the feed, the cache and README.txt


def demo_paths(folder: Path) -> tuple[Path, Path]:
    """(feed, cache) of the demo written under ``folder``."""
    return folder / "demo-feed.jsonl", folder / "demo-cache"


def check_demo_folder(folder: Path) -> None:
    """Raise ``FileExistsError`` when ``folder`` holds anything and is not a demo's (its README.txt
    is the demo's label): the demo rewrites only its own files."""
    if not folder.exists():
        return
    readme = folder / "README.txt"
    try:
        ours = folder.is_dir() and readme.read_text(encoding="utf-8").startswith(LABEL)
    except OSError:
        ours = False
    if not ours and (not folder.is_dir() or any(folder.iterdir())):
        raise FileExistsError(17, f"{folder} exists and is not the demo's folder; use another --out")


def write_demo(folder: Path, stories: tuple[Story, ...] = STORIES) -> tuple[Path, Path]:
    """The demo's feed and market cache under ``folder`` (rewritten each time; refused with
    ``FileExistsError`` when the folder is not the demo's); returns both paths."""
    check_demo_folder(folder)
    folder.mkdir(parents=True, exist_ok=True)
    feed, cache = demo_paths(folder)
    (folder / "README.txt").write_text(LABEL + "\n", encoding="utf-8")
    feed.write_text("\n".join(feed_lines(stories)) + "\n", encoding="utf-8")
    bars: dict[str, dict[int, Bar]] = {}
    for story in stories:
        bars.setdefault(story.symbol, {}).update(story_bars(story))
    # The venue's symbols as `shortfsm data` would save them: here the simulator's own (synthetic).
    venue = SimExchange(clock=SimClock(SINCE_MS), symbols=default_symbols())
    answer = venue.exchange_info({})
    exchange_info.save(cache, answer, read_ms=SINCE_MS, source="demo: the simulator's symbols")
    store = Store(cache)
    try:
        for symbol, minutes in sorted(bars.items()):
            write_bars(store, symbol, minutes, SYMBOLS[symbol][1], following_settlements=0)
    finally:
        store.close()
    return feed, cache


def write_bars(
    store: Store, symbol: str, minutes: dict[int, Bar], places: int, *, following_settlements: int
) -> None:
    """One symbol's synthetic minutes as its trade and mark klines, and a flat funding rate at each
    8-hour settlement they cover (and the ``following_settlements`` after each)."""
    times = sorted(minutes)
    columns: dict[str, list[float | None]] = {
        name: [minutes[t][i] for t in times] for i, name in enumerate(("open", "high", "low", "close"))
    }
    for dataset in ("klines", "markPriceKlines"):
        store.write(symbol, dataset, Parsed(times, dict(columns), dict.fromkeys(columns, places)))
    settlements = sorted(
        {t - t % (8 * HOUR) + k * 8 * HOUR for t in times for k in range(following_settlements + 1)}
    )
    store.write(
        symbol,
        "fundingRate",
        Parsed(
            settlements,
            {"funding_rate": [0.0001] * len(settlements), "mark_price": [None] * len(settlements)},
            {"funding_rate": 6, "mark_price": 0},
        ),
    )


BENCHMARK_SYMBOL = "BTCUSDT"
BENCHMARK_FROM = 92000.0  # BTCUSDT at the demo's first minute: +3.3 % to its first story's base...
BENCHMARK_TO = 98000.0  # ...flat at the base through the stories, +3.2 % after them: +6.5 % in all


def benchmark_bars(stories: tuple[Story, ...] = STORIES) -> dict[int, Bar]:
    """The demo's BTCUSDT 1m klines for the buy-and-hold benchmark where no story drew one: up from
    ``BENCHMARK_FROM`` to the base before its first story, the base between its stories, on up to
    ``BENCHMARK_TO`` at the end of ``DEMO_UNTIL``. Klines only (no mark candle: nothing is watched
    there), so the stories' runs are unchanged. Synthetic, like the rest."""
    drawn: dict[int, Bar] = {}
    for story in stories:
        if story.symbol == BENCHMARK_SYMBOL:
            drawn.update(story_bars(story))
    base, places = SYMBOLS[BENCHMARK_SYMBOL]
    end = int(datetime.fromisoformat(DEMO_UNTIL).replace(tzinfo=UTC).timestamp() * 1000) + DAY
    first, last = (min(drawn), max(drawn)) if drawn else (end, end)
    out: dict[int, Bar] = {}
    for m in range(SINCE_MS, end, MINUTE):
        if m in drawn:
            continue
        if m < first:
            price = BENCHMARK_FROM + (base - BENCHMARK_FROM) * (m - SINCE_MS) / (first - SINCE_MS)
        elif m > last:
            price = base + (BENCHMARK_TO - base) * (m + MINUTE - last) / (end - last)
        else:
            price = base
        price = round(price, places)  # a flat minute: one price (a float, as the store keeps it)
        out[m] = (price, price, price, price)
    return out


def write_benchmark(cache: Path, stories: tuple[Story, ...] = STORIES) -> None:
    """Add ``benchmark_bars`` to the demo cache's BTCUSDT klines (drawn minutes are kept)."""
    bars = benchmark_bars(stories)
    times = sorted(bars)
    columns: dict[str, list[float | None]] = {
        name: [bars[t][i] for t in times] for i, name in enumerate(("open", "high", "low", "close"))
    }
    places = SYMBOLS[BENCHMARK_SYMBOL][1]
    store = Store(cache)
    try:
        store.write(BENCHMARK_SYMBOL, "klines", Parsed(times, columns, dict.fromkeys(columns, places)))
    finally:
        store.close()
