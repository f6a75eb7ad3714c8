"""Historical market data cache: Binance's public archive first, REST for the rest (issue #14).

``MarketCache(root).ensure(symbol, dataset, start_ms, end_ms)`` fetches what is missing;
``read(...)`` returns sorted columns. ``shortfsm data`` is its command line (``cli.py``).
Nothing here imports pyarrow at import time.
"""

from binance.history.archive import DATASETS
from binance.history.cache import CacheBusy, CoverageReport, Gap, MarketCache, ProgressEvent
from binance.history.store import exact

__all__ = ["DATASETS", "CacheBusy", "CoverageReport", "Gap", "MarketCache", "ProgressEvent", "exact"]
