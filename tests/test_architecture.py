"""The direction of imports (ARCHITECTURE.md): the pure core imports no I/O library and no edge package."""

from __future__ import annotations

import ast
from pathlib import Path

FSM = Path(__file__).resolve().parents[1] / "fsm"
FORBIDDEN = {
    "binance",
    "telegram_ingest",
    "asyncio",
    "httpx",
    "websockets",
    "telethon",
    "rich",
    "sqlite_utils",
    "sqlite3",
    "socket",
    "time",
    "datetime",
    "pydantic",
    "pydantic_settings",
    "yaml",
    "random",
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_core_modules_import_nothing_from_the_edges() -> None:
    core = [p for p in FSM.glob("*.py")]
    assert len(core) >= 8
    for path in core:
        bad = _imports(path) & FORBIDDEN
        assert not bad, f"{path.name} imports {sorted(bad)}"


def test_the_check_would_catch_a_violation(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import asyncio\nfrom binance.rest import Client\n", encoding="utf-8")
    assert _imports(sample) & FORBIDDEN == {"asyncio", "binance"}
