"""The golden master (issue #11 step 1): what every scenario did, recorded, so a refactor that changes
behaviour shows up as a diff of named files instead of passing silently.

``tests/golden/<venue>/<scenario id>.json`` holds the rendered command log, the engine's final
``snapshot()`` and, on the double, the snapshot taken before the middle step (written by the engine of
the day: a later engine must restore it and continue identically).

A change of behaviour made on purpose is recorded with ``SHORTFSM_UPDATE_GOLDEN=1 make test`` (or the
same variable on a pytest run of the scenario tests), and its commit says which scenarios moved and why.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

GOLDEN = Path(__file__).parent / "golden"


def updating() -> bool:
    return os.environ.get("SHORTFSM_UPDATE_GOLDEN") == "1"


def plain(value: Any) -> Any:
    """A value as it reads back from the golden file (tuples become lists)."""
    return json.loads(json.dumps(value, sort_keys=True))


def load(venue: str, scenario_id: str) -> dict[str, Any]:
    path = GOLDEN / venue / f"{scenario_id}.json"
    if not path.exists():
        raise AssertionError(f"no golden master {path}: record it with SHORTFSM_UPDATE_GOLDEN=1")
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def check(venue: str, scenario_id: str, record: dict[str, Any]) -> None:
    """Compare ``record`` with the golden file (or write it when updating); a difference fails with
    the first command line that moved."""
    record = plain(record)
    path = GOLDEN / venue / f"{scenario_id}.json"
    if updating():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            json.dumps(record, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        return
    golden = load(venue, scenario_id)
    for key in sorted(set(golden) | set(record)):
        if key == "log" and golden.get("log") != record.get("log"):
            old, new = golden.get("log", []), record.get("log", [])
            at = next(
                (i for i, (a, b) in enumerate(zip(old, new, strict=False)) if a != b), min(len(old), len(new))
            )
            raise AssertionError(
                f"{scenario_id} ({venue}): command log differs from the golden master at line {at}:\n"
                f"  golden: {old[at] if at < len(old) else '<end>'}\n"
                f"  now:    {new[at] if at < len(new) else '<end>'}"
            )
        assert golden.get(key) == record.get(key), (
            f"{scenario_id} ({venue}): {key} differs from the golden master"
        )
