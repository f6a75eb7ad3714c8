"""Performance metrics of closed trades: what ``shortfsm report`` shows (issue #14 item 4).

Pure functions: ``Trade`` objects (``fsm.runtime.ledger``) and a starting capital in, ``Decimal``
(or ``None`` where a figure has no meaning) out; no I/O and no clock, so the same ledger always gives
the same report. Money is USDT.

Which trades count
    Only closed trades (flat again). Open trades are left out of every figure and only counted
    (``open_trades``). With ``since_ms``, a closed trade counts when it closed at or after that time
    (the rule of ``shortfsm trades --since``).

Words used below
    net: a trade's realised PnL minus its fees plus the funding received while it was open
    (``Trade.net``; fees are the commission Binance charges, positive when paid, so they lower the
    net; funding paid is negative). A win has net > 0, a loss net < 0; a trade
    with net exactly 0 is neither (it still counts as a trade).
    order of trades: by close time (then open time); the equity curve follows it.
    equity: the starting capital plus the nets of the trades closed so far. PnL is realised at the
    close only (the ledger holds no mark prices), so an open position moves no equity.
    period: from the first counted trade's opening (or ``since_ms`` when earlier) to the last counted
    trade's close. It ends at the last close, not "now", so the report never reads the clock.
    day: a UTC calendar day. Every day of the period counts, also a day with no close (return 0):
    crypto futures trade every day of the year, hence 365 days a year below.

The figures
    total return (%): (final equity - capital) / capital x 100.
    CAGR (%): ((final equity / capital) ^ (365 / days of the period) - 1) x 100; None under 30 days
    of history (annualising a few days turns noise into an absurd rate) and -100 when the equity
    ends at or below zero.
    win rate (%): wins / closed trades x 100.
    profit factor: sum of the wins' nets / |sum of the losses' nets|; None when no trade lost.
    expectancy: the average net per closed trade (USDT).
    average R:R: average win / |average loss|; None unless there is at least one win and one loss.
    daily Sharpe: mean / sample standard deviation (n - 1) of the daily returns x sqrt(365), with no
    risk-free rate. A day's return is the net of the trades closed that day divided by the equity
    at the end of the previous day (the capital on the first day). None under 2 days, when every
    day returned the same, or when the equity fell to zero or below on some day.
    daily Sortino: mean of the daily returns / downside deviation x sqrt(365); the downside
    deviation is sqrt(sum of the squared negative daily returns / number of days). None under 2
    days, with no negative day, or under the same ruin rule as Sharpe.
    Calmar: CAGR (%) / maximum drawdown (%); None when CAGR is None or there was no drawdown.
    maximum drawdown: on the equity curve (the capital, then the equity after each closed trade),
    the deepest fall from a running peak, in percent of that peak; with its amount in USDT, its
    start (the time of the peak: the period's start when the peak is the capital) and its end (the
    time of the trough). The amount is the one of that deepest-in-percent fall.
    longest losing streak: the most consecutive losses in the order of trades (a win or a zero net
    ends a streak).
    time in the market (%): the part of the period during which at least one counted trade was open
    (overlapping trades count once) / the period's length x 100; None for a period of zero length.
    exit-reason mix: closed trades counted by ``close_reason`` (``unknown`` when missing).
    fees: the sum of the counted trades' fees; realised PnL and net likewise.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, localcontext

from fsm.runtime.ledger import DAY_MS, Trade

ZERO = Decimal(0)
HUNDRED = Decimal(100)
DAYS_PER_YEAR = 365  # crypto futures trade every calendar day
MIN_CAGR_DAYS = 30  # below this the period is too short to annualise
SQRT_YEAR = Decimal(DAYS_PER_YEAR).sqrt()


@dataclass(frozen=True, slots=True, kw_only=True)
class Drawdown:
    """The deepest fall of the equity curve from a running peak."""

    pct: Decimal = ZERO
    amount: Decimal = ZERO
    start_ms: int | None = None  # the peak
    end_ms: int | None = None  # the trough


@dataclass(frozen=True, slots=True, kw_only=True)
class Metrics:
    """Every figure of the report (definitions in the module docstring)."""

    capital: Decimal
    closed_trades: int
    open_trades: int
    wins: int
    losses: int
    start_ms: int | None
    end_ms: int | None
    final_equity: Decimal
    realized_pnl: Decimal
    fees: Decimal
    funding: Decimal
    net: Decimal
    total_return_pct: Decimal
    cagr_pct: Decimal | None
    win_rate_pct: Decimal | None
    profit_factor: Decimal | None
    expectancy: Decimal | None
    average_rr: Decimal | None
    sharpe: Decimal | None
    sortino: Decimal | None
    calmar: Decimal | None
    max_drawdown: Drawdown
    longest_losing_streak: int
    time_in_market_pct: Decimal | None
    exit_reasons: dict[str, int] = field(default_factory=dict)

    @property
    def days(self) -> Decimal | None:
        """The period's length in days."""
        if self.start_ms is None or self.end_ms is None:
            return None
        return Decimal(self.end_ms - self.start_ms) / DAY_MS


def compute(trades: Iterable[Trade], capital: Decimal, *, since_ms: int | None = None) -> Metrics:
    """The report's figures over the closed trades (closed at or after ``since_ms`` when given);
    ``ValueError`` unless ``capital`` is a positive finite amount."""
    check_capital(capital)
    trades = list(trades)
    closed = counted_trades(trades, since_ms=since_ms)
    open_count = sum(1 for t in trades if t.closed_ms is None)
    nets = [t.net for t in closed]
    start_ms: int | None = None
    end_ms: int | None = None
    if closed:
        start_ms = min(t.opened_ms for t in closed)
        if since_ms is not None:
            start_ms = min(start_ms, since_ms)
        end_ms = max(t.closed_ms or 0 for t in closed)
    curve = equity_curve(capital, [(t.closed_ms or 0, t.net) for t in closed], start_ms or 0)
    final = curve[-1][1]
    cagr = (
        cagr_pct(capital, final, Decimal(end_ms - start_ms) / DAY_MS)
        if start_ms is not None and end_ms is not None
        else None
    )
    returns = (
        daily_returns(capital, [(t.closed_ms or 0, t.net) for t in closed], start_ms, end_ms)
        if start_ms is not None and end_ms is not None
        else None
    )
    drawdown = max_drawdown(curve)
    pnl = sum((t.realized_pnl for t in closed), ZERO)
    fees = sum((t.fees for t in closed), ZERO)
    funding = sum((t.funding for t in closed), ZERO)
    return Metrics(
        capital=capital,
        closed_trades=len(closed),
        open_trades=open_count,
        wins=sum(1 for n in nets if n > 0),
        losses=sum(1 for n in nets if n < 0),
        start_ms=start_ms,
        end_ms=end_ms,
        final_equity=final,
        realized_pnl=pnl,
        fees=fees,
        funding=funding,
        net=pnl - fees + funding,
        total_return_pct=total_return_pct(capital, final),
        cagr_pct=cagr,
        win_rate_pct=win_rate_pct(nets),
        profit_factor=profit_factor(nets),
        expectancy=expectancy(nets),
        average_rr=average_rr(nets),
        sharpe=sharpe(returns) if returns is not None else None,
        sortino=sortino(returns) if returns is not None else None,
        calmar=calmar(cagr, drawdown.pct),
        max_drawdown=drawdown,
        longest_losing_streak=longest_losing_streak(nets),
        time_in_market_pct=(
            time_in_market_pct([(t.opened_ms, t.closed_ms or 0) for t in closed], start_ms, end_ms)
            if start_ms is not None and end_ms is not None
            else None
        ),
        exit_reasons=exit_reasons(closed),
    )


def check_capital(capital: Decimal) -> None:
    """``ValueError`` unless the starting capital is a positive finite amount (returns divide by it)."""
    if not capital.is_finite() or capital <= 0:
        raise ValueError(f"the starting capital must be a positive amount of USDT, not {capital}")


def equity_curve(
    capital: Decimal, closes: Sequence[tuple[int, Decimal]], start_ms: int
) -> list[tuple[int, Decimal]]:
    """``(time, equity)``: the capital at ``start_ms``, then the equity after each ``(close time,
    net)`` in the order given."""
    check_capital(capital)
    curve = [(start_ms, capital)]
    equity = capital
    for at, net in closes:
        equity += net
        curve.append((at, equity))
    return curve


def total_return_pct(capital: Decimal, final_equity: Decimal) -> Decimal:
    check_capital(capital)
    return (final_equity - capital) / capital * HUNDRED


def cagr_pct(capital: Decimal, final_equity: Decimal, days: Decimal) -> Decimal | None:
    """Compound annual growth in percent; None under ``MIN_CAGR_DAYS`` days, -100 after ruin."""
    check_capital(capital)
    if days < MIN_CAGR_DAYS:
        return None
    if final_equity <= 0:
        return -HUNDRED
    with localcontext() as ctx:
        ctx.prec = 34
        growth = (final_equity / capital) ** (Decimal(DAYS_PER_YEAR) / days)
        return (growth - 1) * HUNDRED


def win_rate_pct(nets: Sequence[Decimal]) -> Decimal | None:
    if not nets:
        return None
    return Decimal(sum(1 for n in nets if n > 0)) / len(nets) * HUNDRED


def profit_factor(nets: Sequence[Decimal]) -> Decimal | None:
    """Gross win / |gross loss|; None when nothing lost."""
    lost = sum((n for n in nets if n < 0), ZERO)
    if lost == 0:
        return None
    return sum((n for n in nets if n > 0), ZERO) / -lost


def expectancy(nets: Sequence[Decimal]) -> Decimal | None:
    """The average net per trade."""
    if not nets:
        return None
    return sum(nets, ZERO) / len(nets)


def average_rr(nets: Sequence[Decimal]) -> Decimal | None:
    """Average win / |average loss|; None without at least one win and one loss."""
    wins = [n for n in nets if n > 0]
    losses = [n for n in nets if n < 0]
    if not wins or not losses:
        return None
    return (sum(wins, ZERO) / len(wins)) / (-sum(losses, ZERO) / len(losses))


def daily_returns(
    capital: Decimal, closes: Sequence[tuple[int, Decimal]], start_ms: int, end_ms: int
) -> list[Decimal] | None:
    """One return per UTC day from ``start_ms``'s day to ``end_ms``'s day inclusive: the nets closed
    that day over the equity at the end of the previous day. None once the equity is at or below
    zero at the start of a day (a return on nothing has no meaning)."""
    check_capital(capital)
    first = start_ms // DAY_MS
    per_day: dict[int, Decimal] = {}
    for at, net in closes:
        per_day[at // DAY_MS] = per_day.get(at // DAY_MS, ZERO) + net
    returns: list[Decimal] = []
    equity = capital
    for day in range(first, end_ms // DAY_MS + 1):
        if equity <= 0:
            return None
        pnl = per_day.get(day, ZERO)
        returns.append(pnl / equity)
        equity += pnl
    return returns


def sharpe(returns: Sequence[Decimal]) -> Decimal | None:
    """Annualised (sqrt 365) mean / sample standard deviation of daily returns, risk-free rate 0."""
    if len(returns) < 2:
        return None
    mean = sum(returns, ZERO) / len(returns)
    variance = sum(((r - mean) ** 2 for r in returns), ZERO) / (len(returns) - 1)
    if variance == 0:
        return None
    return mean / variance.sqrt() * SQRT_YEAR


def sortino(returns: Sequence[Decimal]) -> Decimal | None:
    """Annualised (sqrt 365) mean / downside deviation of daily returns (target 0)."""
    if len(returns) < 2:
        return None
    downside = sum((r * r for r in returns if r < 0), ZERO) / len(returns)
    if downside == 0:
        return None
    mean = sum(returns, ZERO) / len(returns)
    return mean / downside.sqrt() * SQRT_YEAR


def calmar(cagr: Decimal | None, drawdown_pct: Decimal) -> Decimal | None:
    if cagr is None or drawdown_pct <= 0:
        return None
    return cagr / drawdown_pct


def max_drawdown(curve: Sequence[tuple[int, Decimal]]) -> Drawdown:
    """The deepest fall in percent of its running peak, on ``(time, equity)`` points in order."""
    if not curve:
        return Drawdown()
    peak_ms, peak = curve[0]
    worst = Drawdown()
    for at, equity in curve[1:]:
        if equity > peak:
            peak_ms, peak = at, equity
            continue
        fall = peak - equity
        if fall > 0 and fall / peak * HUNDRED > worst.pct:
            worst = Drawdown(pct=fall / peak * HUNDRED, amount=fall, start_ms=peak_ms, end_ms=at)
    return worst


def longest_losing_streak(nets: Sequence[Decimal]) -> int:
    longest = run = 0
    for net in nets:
        run = run + 1 if net < 0 else 0
        longest = max(longest, run)
    return longest


def time_in_market_pct(intervals: Iterable[tuple[int, int]], start_ms: int, end_ms: int) -> Decimal | None:
    """The share of ``[start_ms, end_ms]`` covered by at least one ``(opened, closed)`` interval."""
    if end_ms <= start_ms:
        return None
    covered = 0
    reach = start_ms
    for opened, closed in sorted(intervals):
        opened, closed = max(opened, reach), min(closed, end_ms)
        if closed > opened:
            covered += closed - opened
            reach = closed
    return Decimal(covered) / (end_ms - start_ms) * HUNDRED


def exit_reasons(trades: Iterable[Trade]) -> dict[str, int]:
    """Closed trades by close reason, most frequent first (then by name)."""
    counts = Counter(t.close_reason or "unknown" for t in trades if t.closed_ms is not None)
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


# ---------------------------------------------------------------------------------------------
# Series for charts (the HTML report): the same trades and rules as ``compute``
# ---------------------------------------------------------------------------------------------


def counted_trades(trades: Iterable[Trade], *, since_ms: int | None = None) -> list[Trade]:
    """The trades ``compute`` measures, in its order: closed (at or after ``since_ms`` when given),
    by close time then open time."""
    return sorted(
        (t for t in trades if t.closed_ms is not None and (since_ms is None or t.closed_ms >= since_ms)),
        key=lambda t: (t.closed_ms or 0, t.opened_ms),
    )


def drawdown_curve(curve: Sequence[tuple[int, Decimal]]) -> list[tuple[int, Decimal]]:
    """``(time, fall below the running peak in percent of that peak)`` for each equity point (0 at a
    new peak); its deepest point is ``max_drawdown``'s ``pct``."""
    out: list[tuple[int, Decimal]] = []
    peak: Decimal | None = None
    for at, equity in curve:
        peak = equity if peak is None or equity > peak else peak
        out.append((at, (peak - equity) / peak * HUNDRED if peak > 0 else ZERO))
    return out


def daily_nets(
    closes: Sequence[tuple[int, Decimal]], start_ms: int, end_ms: int
) -> list[tuple[int, Decimal]]:
    """``(UTC midnight, sum of the nets closed that day)`` for every day from ``start_ms``'s day to
    ``end_ms``'s day inclusive, days without a close included (0): the days of ``daily_returns``."""
    per_day: dict[int, Decimal] = {}
    for at, net in closes:
        per_day[at // DAY_MS] = per_day.get(at // DAY_MS, ZERO) + net
    return [(day * DAY_MS, per_day.get(day, ZERO)) for day in range(start_ms // DAY_MS, end_ms // DAY_MS + 1)]


def monthly_return_pct(
    capital: Decimal, closes: Iterable[tuple[int, Decimal]]
) -> dict[tuple[int, int], Decimal]:
    """``(year, month) -> the nets closed in that UTC month / capital x 100``, for the months with at
    least one close, in calendar order. In percent of the starting capital (not of the equity at the
    month's start), so the months of a year add up to that year's share of the total return."""
    check_capital(capital)
    months: dict[tuple[int, int], Decimal] = {}
    for at, net in closes:
        moment = datetime.fromtimestamp(at / 1000, tz=UTC)
        key = (moment.year, moment.month)
        months[key] = months.get(key, ZERO) + net
    return {key: months[key] / capital * HUNDRED for key in sorted(months)}
