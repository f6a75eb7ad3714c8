"""The ``shortfsm`` command line."""

from __future__ import annotations

import argparse
import difflib
import importlib
import importlib.metadata
import json
import logging
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from rich.console import Console
from rich.text import Text

from fsm.harness.scenario import SCENARIO_DIR, T0_MS, ScenarioError, load_scenarios

if TYPE_CHECKING:
    from fsm.harness.simreplay import Replay


def _load_catalog() -> dict[str, dict[str, Any]]:
    """The catalog by scenario id; a malformed file stops the run naming file and line."""
    from fsm.harness.simreplay import check_file

    problems = [p for path in sorted(SCENARIO_DIR.glob("*.yaml")) for p in check_file(path)]
    if problems:
        raise SystemExit("\n".join(problems))
    try:
        return load_scenarios()
    except ScenarioError as exc:
        raise SystemExit(str(exc)) from exc


def _load_file(path: Path) -> list[dict[str, Any]]:
    from fsm.harness.simreplay import check_file

    problems = check_file(path)
    if problems:
        raise SystemExit("\n".join(problems))
    docs = [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]
    for doc in docs:
        doc.setdefault("_file", str(path))
    return docs


def _select(args: argparse.Namespace) -> list[dict[str, Any]]:
    file_targets = [t for t in args.targets if Path(t).suffix in (".yaml", ".yml")]
    scenarios = _load_catalog() if args.all or len(file_targets) < len(args.targets) else {}
    if args.all:
        return list(scenarios.values())
    chosen: list[dict[str, Any]] = []
    for target in args.targets:
        path = Path(target)
        if path.suffix in (".yaml", ".yml"):
            if not path.exists():
                raise SystemExit(f"no scenario file {target}")
            chosen.extend(_load_file(path))
            continue
        # A spec ID runs every scenario that proves it; otherwise a scenario id runs that one.
        # Both are matched without regard to case (`replay w55` is W55).
        wanted = target.casefold()
        proving = [
            doc for doc in scenarios.values() if wanted in {str(s).casefold() for s in doc.get("spec", [])}
        ]
        by_id = {str(key).casefold(): doc for key, doc in scenarios.items()}
        if not proving and wanted in by_id:
            proving = [by_id[wanted]]
        if not proving:
            known = set(scenarios) | {str(s) for doc in scenarios.values() for s in doc.get("spec", [])}
            close = difflib.get_close_matches(target, sorted(known), n=5, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise SystemExit(f"no scenario or spec ID {target!r}{hint} (scenarios live in {SCENARIO_DIR})")
        chosen.extend(proving)
    unique: dict[str, dict[str, Any]] = {str(d["id"]): d for d in chosen}
    return list(unique.values())


def _print_trace(console: Console, run: Replay) -> None:
    result = run.result
    status = "[green]PASS[/]" if result.passed else "[red]FAIL[/]"
    where = "binance/sim" if run.venue == "sim" else "venue double"
    console.print(f"\n[bold]{result.scenario_id}[/] {result.title}  {status}", soft_wrap=True)
    console.print(f"  proves: {', '.join(result.spec)}; venue: {where}", style="dim", soft_wrap=True)
    if run.reason:
        console.print(f"  kept on the double: {run.reason}", style="dim", soft_wrap=True)
    for step, verdicts in zip(result.steps, run.verdicts, strict=True):
        mark = "[green]✓[/]" if not step.failures else "[red]✗[/]"
        console.print(f"  {mark} t={(step.at_ms - T0_MS) / 1000:>8.1f}s  {step.label}", soft_wrap=True)
        for line in step.trace:
            style = "cyan" if "->" in line and not line.startswith(("venue", " ")) else "yellow"
            console.print(Text(f"        {line}", style=style), soft_wrap=True)
        for name, failures in verdicts:
            if not failures:
                console.print(Text(f"        ✓ expect {name}", style="green"), soft_wrap=True)
            for failure in failures:
                console.print(Text(f"        ✗ expect {name}: {failure}", style="red"), soft_wrap=True)
        if not verdicts:
            for failure in step.failures:
                console.print(Text(f"        ✗ {failure}", style="red"), soft_wrap=True)


def _as_json(run: Replay) -> dict[str, Any]:
    r = run.result
    return {
        "id": r.scenario_id,
        "title": r.title,
        "spec": r.spec,
        "venue": run.venue,
        "kept_on_double": run.reason or None,
        "passed": r.passed,
        "steps": [
            {
                "at_ms": s.at_ms,
                "t_s": (s.at_ms - T0_MS) / 1000,
                "label": s.label,
                "trace": s.trace,
                "expectations": [{"name": n, "passed": not f, "failures": f} for n, f in verdicts],
                "failures": s.failures,
            }
            for s, verdicts in zip(r.steps, run.verdicts, strict=True)
        ],
    }


def cmd_replay(args: argparse.Namespace) -> int:
    from fsm.harness.simreplay import replay

    if args.journal is not None:
        if args.targets or args.all:
            print("--journal replays a database's journal: name no scenario with it", file=sys.stderr)
            return 2
        return cmd_replay_journal(Path(args.journal), as_json=args.json)
    docs = _select(args)
    if not docs:
        print("nothing to replay: name scenario ids, spec IDs or files, or use --all", file=sys.stderr)
        return 2
    if not args.verbose:  # the trace shows every venue answer; the client's warnings would repeat it
        logging.getLogger("binance").setLevel(logging.ERROR)
    runs = [replay(doc, venue=args.venue) for doc in docs]
    if args.json:
        print(json.dumps([_as_json(run) for run in runs], ensure_ascii=False, indent=2))
    else:
        console = Console(highlight=False)
        for run in runs:
            _print_trace(console, run)
        passed = sum(run.result.passed for run in runs)
        console.print(f"\n{passed} passed, {len(runs) - passed} failed", soft_wrap=True)
        kept = [run for run in runs if run.reason]
        if kept:
            console.print(f"{len(kept)} kept on the venue double:", soft_wrap=True)
            for run in kept:
                console.print(f"  {run.result.scenario_id}: {run.reason}", soft_wrap=True)
    return 0 if all(run.result.passed for run in runs) else 1


def cmd_replay_journal(path: Path, *, as_json: bool) -> int:
    """Exit 0: every run re-made identically; 1: a difference; 2: nothing replayable."""
    from fsm.harness.journal_replay import JournalError, replay_journal

    try:
        result = replay_journal(path)
    except JournalError as exc:
        print(f"replay: {exc}", file=sys.stderr)
        return 2
    if not result.runs:
        print(f"replay: {path} holds no journaled run to replay", file=sys.stderr)
        return 2
    if as_json:
        payload: dict[str, Any] = {"identical": result.identical, "skipped_rows": result.skipped_rows}
        payload["runs"] = [run.as_json() for run in result.runs]
        print(json.dumps(payload, ensure_ascii=False, indent=2))
        return 0 if result.identical else 1
    for run in result.runs:
        when = datetime.fromtimestamp(run.started_ms / 1000, tz=UTC).isoformat(timespec="seconds")
        head = f"run from journal seq {run.start_seq} ({when}"
        head += ")" if run.run_start else ", its start pruned: from a later checkpoint)"
        if run.divergence is None:
            print(
                f"{head}: {run.events} events re-fed, {run.commands} commands and "
                f"{run.checkpoints} checkpoint(s) re-made identically"
            )
            continue
        d = run.divergence
        print(f"{head}: DIFFERS at journal seq {d.seq} ({d.what}) after {run.events} identical events")
        print(f"  recorded: {d.recorded or '<nothing>'}")
        print(f"  replayed: {d.replayed or '<nothing>'}")
    if result.skipped_rows:
        print(f"{result.skipped_rows} journal row(s) before the first checkpoint were not replayed")
    return 0 if result.identical else 1


def cmd_diagram(args: argparse.Namespace) -> int:
    from fsm.ops.diagram import DIAGRAM_PATH, render_diagrams, write_diagrams

    if args.check:
        current = DIAGRAM_PATH.read_text(encoding="utf-8") if DIAGRAM_PATH.exists() else ""
        if current != render_diagrams():
            print(f"{DIAGRAM_PATH} is out of date: run `shortfsm diagram`", file=sys.stderr)
            return 1
        return 0
    print(write_diagrams())
    return 0


def version() -> str:
    """The installed package's version ("unknown" when run from a tree that was never installed)."""
    try:
        return importlib.metadata.version("shortfsm")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shortfsm", description="Short-only Binance USD-M futures daemon")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging to stderr")
    parser.add_argument("--version", action="version", version=f"shortfsm {version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    replay = sub.add_parser(
        "replay",
        help="replay spec scenarios through the engine on a simulated clock",
        description="Replay catalog scenarios (by scenario id or spec ID, any case) or scenario files "
        "through the engine and the real client against binance/sim, printing each step's trace. "
        "Exit 0 when every scenario passes, 1 otherwise.",
    )
    replay.add_argument("targets", nargs="*", help="scenario ids, spec IDs (W55, R15-...) or scenario files")
    replay.add_argument("--all", action="store_true", help="every scenario of the catalog")
    replay.add_argument("--json", action="store_true", help="machine-readable output")
    replay.add_argument(
        "--journal",
        metavar="DB",
        help="re-feed a daemon's journal (its database) to the engine and check every answer is re-made",
    )
    replay.add_argument(
        "--venue",
        choices=("sim", "double"),
        default="sim",
        help="sim: the real client against binance/sim in process (default); double: the fast venue double",
    )
    replay.set_defaults(func=cmd_replay)

    diagram = sub.add_parser(
        "diagram",
        help="write the state diagrams (mermaid) into specs/diagrams.md",
        description="Generate the mermaid state diagrams from the transition tables into "
        "specs/diagrams.md; --check only says whether the committed file is current (exit 1 if not).",
    )
    diagram.add_argument("--check", action="store_true", help="only check that the committed file is current")
    diagram.set_defaults(func=cmd_diagram)

    # Subcommands contributed by the edge packages (each module exposes register(subparsers)).
    for module in (
        "telegram_ingest.cli",
        "binance.sim.cli",
        "fsm.ops.daemon_cli",
        "fsm.ops.board_cli",
        "fsm.ops.trades_cli",
        "fsm.ops.report_cli",
        "fsm.ops.bench_cli",
        "telegram_ingest.export",
        "binance.history.cli",
        "fsm.ops.backtest_cli",
    ):
        try:
            importlib.import_module(module).register(sub)
        except ModuleNotFoundError as exc:
            if exc.name is None or not (module + ".").startswith(exc.name + "."):
                raise  # a module this one imports is missing: a real error
    # Every subcommand's --help describes it: one registered without a description shows its help line.
    for action in sub._choices_actions:
        command = sub.choices[action.dest]
        if command.description is None and action.help:
            command.description = action.help[0].upper() + action.help[1:] + "."
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
