"""The message grammar of the two signal channels (SPEC-NOTES N-01..N-03).

Theory of operation: ``parse_message`` is a pure, total function. It cuts oversized input, splits
it into lines and classifies the text by its landmark phrase: the leading-market title
(``실시간 주도 마켓 분석``), the risk phrase (``리스크관리``) or the entry phrase (``진입 신호``).
A leading message is then read field by field from ``label : value`` lines, keyed by a word in the
label, so emoji, variation selectors, spacing, extra lines and trailing marks never matter. Every
regular expression is anchored or bounded so the work stays linear in the input size.

The grammar only extracts fields. Filters (N-06, N-07), cursors and age checks belong to the engine.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from decimal import Decimal, InvalidOperation

from fsm.events import EntrySignal, LeadingMarket, ParsedMessage, RankDirection, RiskSignal, Unrecognised

logger = logging.getLogger(__name__)

MAX_TEXT_BYTES = 64 * 1024
QUOTE = "USDT"

_ZERO_WIDTH = frozenset("\u200b\u200c\u200d\u2060\ufeff")
_OPEN = "(（"
_CLOSE = ")）"

_TITLE = re.compile(r"실시간\s*주도\s*마켓\s*분석")
_RISK = re.compile(r"리스크\s*관리")
_ENTRY = re.compile(r"진입\s*신호")
_BINANCE = re.compile(r"binance|바이낸스", re.IGNORECASE)
_COLON = re.compile(r"[:：]")
_PERCENT = re.compile(r"\s*([+\-−]?)\s*([0-9]{1,30}(?:\.[0-9]{1,30})?)\s*%")
_DIRECTION = re.compile(r"(상승|하락)")
_RANK = re.compile(r"상위\s*([0-9]{1,6})\s*위")
_TICKER_OK = re.compile(r"[A-Za-z0-9]+")
_TRAILING_MARKS = frozenset("✅❌✔☑⭕\ufe0f")

_DIRECTIONS: dict[str, RankDirection] = {"상승": "UP", "하락": "DOWN"}
_UNKNOWN_CATEGORY = "정보없음"


def parse_message(text: str) -> ParsedMessage:
    """Classify one channel message and extract its fields; never raises."""
    if not isinstance(text, str):
        logger.warning("message text is %s, not str", type(text).__name__)
        return Unrecognised(reason="unknown_format")
    text = _cut(text)
    lines = text.splitlines()
    if not any(clean_token(line) for line in lines):
        return Unrecognised(reason="empty")
    for index, line in enumerate(lines):
        title = _TITLE.search(line)
        if title is not None:
            return _parse_leading(lines, index, title.end())
    for line in lines:
        if _RISK.search(line):
            return _parse_risk(line)
    for line in lines:
        if _ENTRY.search(line):
            return _parse_entry(line)
    return Unrecognised(reason="unknown_format")


def clean_token(raw: str) -> str:
    """Trim, drop zero-width and control characters, trim again (N-01 normalisation, before case)."""
    kept = "".join(c for c in raw.strip() if c not in _ZERO_WIDTH and unicodedata.category(c) != "Cc")
    return kept.strip()


def normalise_ticker(raw: str) -> str | None:
    """N-01 ticker rules: the upper-cased ASCII ticker, or None when anything else is left inside."""
    cleaned = clean_token(raw)
    if not _TICKER_OK.fullmatch(cleaned):
        return None
    return cleaned.upper()


def normalise_futures_symbol(raw: str) -> str | None:
    """N-03 token rules: ``btcusdt.p`` -> ``BTCUSDT``; None unless it is ``[A-Z0-9]+USDT``."""
    cleaned = clean_token(raw)
    if cleaned[-2:].upper() == ".P":
        cleaned = cleaned[:-2]
    symbol = normalise_ticker(cleaned)
    if symbol is None or not symbol.endswith(QUOTE) or len(symbol) == len(QUOTE):
        return None
    return symbol


def _cut(text: str) -> str:
    if len(text) * 4 <= MAX_TEXT_BYTES:
        return text
    encoded = text.encode("utf-8", "surrogatepass")
    if len(encoded) <= MAX_TEXT_BYTES:
        return text
    logger.warning("message text of %d bytes cut to the first %d bytes", len(encoded), MAX_TEXT_BYTES)
    return encoded[:MAX_TEXT_BYTES].decode("utf-8", "ignore")


# ---------------------------------------------------------------------------------------------
# Leading market (N-01)
# ---------------------------------------------------------------------------------------------


def _parse_leading(lines: list[str], title_index: int, title_end: int) -> ParsedMessage:
    rest = lines[title_index][title_end:]
    raw_ticker, failure = _title_ticker(rest, lines[title_index + 1 : title_index + 2])
    if failure is not None:
        logger.info("leading-market ticker parse failed: %s (title %r)", failure, _preview(rest))
        return Unrecognised(reason=failure, kind="leading")
    ticker = normalise_ticker(raw_ticker)
    if ticker is None:
        logger.info("leading-market ticker parse failed: ticker_invalid (raw %r)", _preview(raw_ticker))
        return Unrecognised(reason="ticker_invalid", kind="leading")

    fields = [_label_value(line) for i, line in enumerate(lines) if i != title_index]
    funding, funding_error = _funding(fields)
    change, direction, rank, rank_error = _rank(fields)
    category, category_error = _category(fields)
    field_error = funding_error or rank_error or category_error
    return LeadingMarket(
        raw_ticker=raw_ticker,
        ticker=ticker,
        symbol=ticker + QUOTE,
        funding_pct=funding,
        change_pct=change,
        rank_direction=direction,
        rank=rank,
        category=category,
        field_error=field_error,
    )


def _title_ticker(rest: str, next_line: list[str]) -> tuple[str, str | None]:
    """The raw text inside the title's one pair of parentheses, or a failure code."""
    opens = [i for i, c in enumerate(rest) if c in _OPEN]
    closes = [i for i, c in enumerate(rest) if c in _CLOSE]
    if not opens:
        return "", "ticker_missing"
    if len(opens) > 1 or len(closes) > 1:
        return "", "ticker_invalid"
    if not closes:
        # "(BTC" on the title and "ETH)" on the next line: a newline inside the ticker (W03).
        follow = next_line[0] if next_line else ""
        if any(c in _CLOSE for c in follow) and not any(c in _OPEN for c in follow):
            return "", "ticker_invalid"
        return "", "ticker_missing"
    if closes[0] < opens[0]:
        return "", "ticker_invalid"
    raw = rest[opens[0] + 1 : closes[0]]
    if not clean_token(raw):
        return raw, "ticker_missing"
    return raw, None


def _label_value(line: str) -> tuple[str, str | None]:
    """Split ``label : value``; the value is None when the line has no colon."""
    colon = _COLON.search(line)
    if colon is None:
        return line, None
    return line[: colon.start()], line[colon.end() :]


def _percent(value: str) -> Decimal | None:
    match = _PERCENT.match(value)
    if match is None:
        return None
    sign = "-" if match.group(1) in ("-", "−") else ""
    try:
        return Decimal(sign + match.group(2))
    except InvalidOperation:  # pragma: no cover - the pattern only admits valid numbers
        return None


def _funding(fields: list[tuple[str, str | None]]) -> tuple[Decimal | None, str | None]:
    funding_lines = [(label, value) for label, value in fields if "펀딩비" in label]
    if not funding_lines:
        return None, "funding_missing"
    binance = [(label, value) for label, value in funding_lines if _BINANCE.search(label)]
    _, value = (binance or funding_lines)[0]
    if value is None:
        return None, "funding_invalid"
    pct = _percent(value)
    if pct is None:
        return None, "funding_invalid"
    return pct, None


def _rank(
    fields: list[tuple[str, str | None]],
) -> tuple[Decimal | None, RankDirection | None, int | None, str | None]:
    rank_lines = [value for label, value in fields if "등락" in label or "순위" in label]
    if not rank_lines:
        return None, None, None, "rank_missing"
    value = rank_lines[0]
    if value is None:
        return None, None, None, "rank_invalid"
    change = _percent(value)
    directions = {_DIRECTIONS[m] for m in _DIRECTION.findall(value)}
    rank_match = _RANK.search(value)
    direction: RankDirection | None = directions.pop() if len(directions) == 1 else None
    rank = int(rank_match.group(1)) if rank_match is not None else None
    if rank == 0:
        rank = None
    if change is None or direction is None or rank is None:
        return change, direction, rank, "rank_invalid"
    return change, direction, rank, None


def _category(fields: list[tuple[str, str | None]]) -> tuple[str | None, str | None]:
    values = [value for label, value in fields if "카테고리" in label]
    if not values or values[0] is None:
        return None, "category_missing"
    category = _strip_wrapping_parentheses(_strip_trailing_marks(clean_token(values[0])))
    if not category:
        return None, "category_missing"
    if "".join(category.split()) == _UNKNOWN_CATEGORY:
        return None, "category_unknown"
    return category, None


def _strip_trailing_marks(value: str) -> str:
    end = len(value)
    while end and (value[end - 1].isspace() or value[end - 1] in _TRAILING_MARKS):
        end -= 1
    return value[:end]


def _strip_wrapping_parentheses(value: str) -> str:
    """``(AI)`` -> ``AI``; ``(Meme) (Solana)`` stays as it is (its outer pair is not one wrap)."""
    if len(value) < 2 or value[0] not in _OPEN or value[-1] not in _CLOSE:
        return value
    depth = 0
    for i, c in enumerate(value):
        if c in _OPEN:
            depth += 1
        elif c in _CLOSE:
            depth -= 1
            if depth == 0 and i != len(value) - 1:
                return value
    return value[1:-1].strip()


# ---------------------------------------------------------------------------------------------
# Risk (N-03) and entry (N-02) signals
# ---------------------------------------------------------------------------------------------


def _binance_token(line: str) -> str | None:
    """The text between ``Binance :`` and ``에서`` (or the first word when ``에서`` is missing)."""
    match = _BINANCE.search(line)
    if match is None:
        return None
    rest = line[match.end() :].lstrip()
    if rest[:1] in (":", "："):
        rest = rest[1:]
    cut = rest.find("에서")
    if cut >= 0:
        return rest[:cut]
    words = rest.split(maxsplit=1)
    return words[0] if words else ""


def _parse_risk(line: str) -> ParsedMessage:
    token = _binance_token(line)
    symbol = normalise_futures_symbol(token) if token is not None else None
    if token is None or symbol is None:
        logger.info("risk message symbol parse failed (token %r)", _preview(token or ""))
        return Unrecognised(reason="risk_symbol_invalid", kind="risk")
    return RiskSignal(raw_token=token.strip(), symbol=symbol)


def _parse_entry(line: str) -> ParsedMessage:
    token = _binance_token(line)
    if token is None:
        return EntrySignal(raw_token="", symbol=None)
    return EntrySignal(raw_token=token.strip(), symbol=normalise_futures_symbol(token))


def _preview(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
