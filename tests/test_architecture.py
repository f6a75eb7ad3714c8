"""The direction of imports (ARCHITECTURE.md): the pure core imports no I/O library and no edge package."""

from __future__ import annotations

import ast
import subprocess
import sys
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


# The shell reads the engine through its queries and changes it only through ``handle`` (issue #11
# step 4): every change is an event, so the journal replays it.
SHELL = [
    *sorted((FSM / "runtime").rglob("*.py")),
    *sorted((FSM / "ops").rglob("*.py")),
    *sorted((FSM / "harness").rglob("*.py")),
    *sorted((FSM.parent / "binance").rglob("*.py")),
    *sorted((FSM.parent / "telegram_ingest").rglob("*.py")),
]
_MUTATORS = {"update", "pop", "popitem", "clear", "append", "extend", "insert", "setdefault", "add", "remove"}


def _through_engine(node: ast.expr) -> bool:
    """Whether an attribute/subscript chain passes through something named ``engine``."""
    while isinstance(node, ast.Attribute | ast.Subscript):
        if isinstance(node, ast.Attribute) and node.attr == "engine":
            return True
        node = node.value
    return isinstance(node, ast.Name) and node.id == "engine"


def _engine_writes(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[str] = []
    for node in ast.walk(tree):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = list(node.targets)
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        elif isinstance(node, ast.Delete):
            targets = list(node.targets)
        for target in targets:
            if isinstance(target, ast.Attribute | ast.Subscript) and _through_engine(target.value):
                found.append(f"{path.name}:{node.lineno} writes {ast.unparse(target)}")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            func = node.func
            private = func.attr.startswith("_") and not func.attr.startswith("__")
            if _through_engine(func.value) and (private or func.attr in _MUTATORS):
                found.append(f"{path.name}:{node.lineno} calls {ast.unparse(func)}")
    return found


def test_the_shell_never_writes_engine_state() -> None:
    assert len(SHELL) > 30
    found = [line for path in SHELL for line in _engine_writes(path)]
    assert found == []


def test_the_write_check_would_catch_each_kind(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "self.engine.strategy = s\n"
        "engine.cursors[1] = 2\n"
        "run.engine.paused += 1\n"
        "self.engine.cursors.update(x)\n"
        "engine._reset(m, 'x')\n"
        "y = self.engine.strategy\n"
        "self.engine.handle(e)\n",
        encoding="utf-8",
    )
    assert [line.split(" ", 1)[0] for line in _engine_writes(sample)] == [
        "sample.py:1",
        "sample.py:2",
        "sample.py:3",
        "sample.py:4",
        "sample.py:5",
    ]


# The daemon a trader runs (``shortfsm run``) never loads the simulator, the market-history tools or
# the harness (scenario runner, replays, fault and crash matrices, benchmarks, backtest): the layer
# contract of ARCHITECTURE.md, checked on what importing it really loads.
DAEMON_MODULES = ("fsm.runtime.daemon", "fsm.ops.daemon_cli")
NOT_IN_THE_DAEMON = (
    "binance.sim",
    "binance.history",
    "fsm.harness.sim_harness",
    "fsm.harness.scenario",
    "fsm.harness.simreplay",
    "fsm.harness.faults",
    "fsm.harness.daemon_faults",
    "fsm.harness.bench",
    "fsm.harness.backtest",
    "fsm.harness.journal_replay",
)


def _loaded_by(modules: tuple[str, ...]) -> list[str]:
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in modules)
        + f"print('\\n'.join(sorted(m for m in sys.modules if m.startswith({NOT_IN_THE_DAEMON!r}))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout.split()


def test_the_daemon_loads_neither_the_simulator_nor_the_harness() -> None:
    assert _loaded_by(DAEMON_MODULES) == []


def test_the_layer_check_sees_what_an_import_loads() -> None:
    assert "binance.sim" in _loaded_by(("fsm.harness.sim_harness",))


# The shell's layers (ARCHITECTURE.md): ``fsm.runtime`` (the daemon) imports neither ``fsm.harness``
# nor ``fsm.ops``; ``fsm.harness`` (scenario runner, replays, matrices, bench, backtest) may use the
# daemon but not the operator's tools; ``fsm.ops`` (CLI, board, reports, diagrams) sits on top. The
# core (files directly in ``fsm/``) imports no layer at all. Imports inside functions count too.
ALLOWED_LAYERS = {"core": set(), "runtime": set(), "harness": {"runtime"}, "ops": {"runtime", "harness"}}
# The one seam: the ``sim`` profile (``shortfsm demo``) starts its simulated venue from inside the
# daemon's startup. Those imports are lazy (in a function, or for type checking only), named here,
# and ``test_the_daemon_loads_neither_the_simulator_nor_the_harness`` proves ``run`` never loads them.
DEMO_SEAM = {
    ("daemon.py", "fsm.harness.sim_harness"),
    ("feeds.py", "binance.sim.exchange"),
}


def _module_imports(path: Path) -> list[tuple[str, bool]]:
    """(module, lazy) for every import of a file; lazy: inside a function or ``if TYPE_CHECKING``.
    ``from fsm import x`` imports the module ``fsm.x``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                inner = True
            if isinstance(child, ast.Import):
                found.extend((alias.name, lazy) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                if child.module == "fsm":
                    found.extend((f"fsm.{alias.name}", lazy) for alias in child.names)
                else:
                    found.append((child.module, lazy))
            visit(child, inner)

    visit(tree, False)
    return found


def _fsm_layers(path: Path) -> set[str]:
    """The layers of ``fsm`` a module imports, the demo seam left out."""
    layers: set[str] = set()
    for module, lazy in _module_imports(path):
        parts = module.split(".")
        if lazy and (path.name, module) in DEMO_SEAM:
            continue
        if parts[0] == "fsm" and len(parts) > 1 and parts[1] in ALLOWED_LAYERS:
            layers.add(parts[1])
    return layers


def test_each_layer_imports_only_the_layers_below_it() -> None:
    checked = 0
    for layer, allowed in ALLOWED_LAYERS.items():
        paths = sorted(FSM.glob("*.py")) if layer == "core" else sorted((FSM / layer).rglob("*.py"))
        for path in paths:
            bad = _fsm_layers(path) - allowed - {layer}
            assert not bad, f"{path.relative_to(FSM.parent)} ({layer}) imports fsm.{sorted(bad)}"
            checked += 1
    assert checked > 50


def test_the_layer_check_would_catch_an_upward_import(tmp_path: Path) -> None:
    sample = tmp_path / "daemon.py"
    sample.write_text(
        "from fsm.harness.scenario import Runner\n"
        "from fsm import ops\n"
        "import fsm.harness.sim_harness\n"  # the seam's module, but not lazy: it counts
        "def later():\n"
        "    import fsm.runtime.store\n"
        "    from fsm.harness.sim_harness import SimHarness\n",  # the seam: left out
        encoding="utf-8",
    )
    assert _fsm_layers(sample) == {"harness", "ops", "runtime"}
    sample.write_text("def later():\n    from fsm.harness.sim_harness import SimHarness\n", encoding="utf-8")
    assert _fsm_layers(sample) == set()


def test_the_daemon_never_imports_the_simulator_or_the_market_history_tools_eagerly() -> None:
    for path in sorted((FSM / "runtime").rglob("*.py")):
        for module, lazy in _module_imports(path):
            if module.startswith(("binance.sim", "binance.history")):
                assert lazy and (path.name, module) in DEMO_SEAM, f"{path.name} imports {module}"
