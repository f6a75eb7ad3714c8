"""The ``shortfsm`` command line."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.text import Text

from fsm.runtime.scenario import SCENARIO_DIR, T0_MS, ScenarioResult, load_scenarios, run_scenario


def _select(args: argparse.Namespace) -> list[dict[str, Any]]:
    scenarios = load_scenarios()
    if args.all:
        return list(scenarios.values())
    chosen: list[dict[str, Any]] = []
    for target in args.targets:
        path = Path(target)
        if path.suffix in (".yaml", ".yml") and path.exists():
            chosen.extend(doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc)
        else:
            # A spec ID runs every scenario that proves it; otherwise a scenario id runs that one.
            proving = [doc for doc in scenarios.values() if target in doc.get("spec", [])]
            if not proving and target in scenarios:
                proving = [scenarios[target]]
            if not proving:
                raise SystemExit(f"no scenario or spec ID {target!r} (scenarios live in {SCENARIO_DIR})")
            chosen.extend(proving)
    unique: dict[str, dict[str, Any]] = {str(d["id"]): d for d in chosen}
    return list(unique.values())


def _print_trace(console: Console, result: ScenarioResult) -> None:
    status = "[green]PASS[/]" if result.passed else "[red]FAIL[/]"
    console.print(f"\n[bold]{result.scenario_id}[/] {result.title}  {status}")
    console.print(f"  proves: {', '.join(result.spec)}", style="dim")
    for step in result.steps:
        mark = "[green]✓[/]" if not step.failures else "[red]✗[/]"
        console.print(f"  {mark} t={(step.at_ms - T0_MS) / 1000:>8.1f}s  {step.label}")
        for line in step.trace:
            console.print(Text(f"        {line}", style="cyan" if "->" in line else "yellow"))
        for failure in step.failures:
            console.print(Text(f"        ✗ {failure}", style="red"))


def cmd_replay(args: argparse.Namespace) -> int:
    docs = _select(args)
    if not docs:
        print("nothing to replay: name scenario ids, spec IDs or files, or use --all", file=sys.stderr)
        return 2
    results = [run_scenario(doc) for doc in docs]
    if args.json:
        payload = [
            {
                "id": r.scenario_id,
                "title": r.title,
                "spec": r.spec,
                "passed": r.passed,
                "steps": [
                    {"at_ms": s.at_ms, "label": s.label, "trace": s.trace, "failures": s.failures}
                    for s in r.steps
                ],
            }
            for r in results
        ]
        print(json.dumps(payload, ensure_ascii=False, indent=2))
    else:
        console = Console(highlight=False)
        for result in results:
            _print_trace(console, result)
        passed = sum(r.passed for r in results)
        console.print(f"\n{passed} passed, {len(results) - passed} failed")
    return 0 if all(r.passed for r in results) else 1


def cmd_diagram(args: argparse.Namespace) -> int:
    from fsm.runtime.diagram import DIAGRAM_PATH, render_diagrams, write_diagrams

    if args.check:
        current = DIAGRAM_PATH.read_text(encoding="utf-8") if DIAGRAM_PATH.exists() else ""
        if current != render_diagrams():
            print(f"{DIAGRAM_PATH} is out of date: run `shortfsm diagram`", file=sys.stderr)
            return 1
        return 0
    print(write_diagrams())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shortfsm", description="Short-only Binance USD-M futures daemon")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging to stderr")
    sub = parser.add_subparsers(dest="command", required=True)

    replay = sub.add_parser("replay", help="replay spec scenarios through the engine on a simulated clock")
    replay.add_argument("targets", nargs="*", help="scenario ids, spec IDs (W55, R15-...) or scenario files")
    replay.add_argument("--all", action="store_true", help="every scenario of the catalog")
    replay.add_argument("--json", action="store_true", help="machine-readable output")
    replay.set_defaults(func=cmd_replay)

    diagram = sub.add_parser("diagram", help="write the state diagrams (mermaid) into specs/diagrams.md")
    diagram.add_argument("--check", action="store_true", help="only check that the committed file is current")
    diagram.set_defaults(func=cmd_diagram)

    # Subcommands contributed by the edge packages (each module exposes register(subparsers)).
    for module in (
        "telegram_ingest.cli",
        "binance.sim.cli",
        "fsm.runtime.daemon_cli",
        "fsm.runtime.board_cli",
        "fsm.runtime.bench_cli",
    ):
        try:
            importlib.import_module(module).register(sub)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s %(message)s"
    )
    result: int = args.func(args)
    return result


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
