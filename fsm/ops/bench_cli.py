"""``shortfsm bench``: benchmark table, fault matrix (``--faults``), crash matrix (``--crash``)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fsm.harness import bench, daemon_faults, faults


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="benchmarks with their targets; --faults runs the fault matrix, --crash the crash matrix",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--quick", action="store_true", help="tiny repetition counts (proves it runs)")
    parser.add_argument(
        "--faults",
        action="store_true",
        help="run the fault matrices (engine level, then the daemon against the simulated venue); "
        "exit 1 on any failure",
    )
    parser.add_argument(
        "--crash",
        action="store_true",
        help="crash and recover at every event boundary of W55, W56, W57; exit 1 if any does not converge",
    )
    parser.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    if args.faults or args.crash:
        status = 0
        payload: dict[str, Any] = {}
        if args.faults:
            matrix = faults.run_matrix()
            payload["faults"] = matrix.as_json()
            if not args.json:
                print_matrix(matrix)
            status |= 0 if matrix.passed else 1
            live = daemon_faults.run_matrix()
            payload["daemon_faults"] = live.as_json()
            if not args.json:
                print_daemon_matrix(live)
            status |= 0 if live.passed else 1
        if args.crash:
            crash = faults.run_crash_matrix()
            payload["crash"] = crash.as_json()
            if not args.json:
                print_crash(crash)
            status |= 0 if crash.passed else 1
        if args.json:
            print(json.dumps(payload, indent=2))
        return status
    console = Console(stderr=True, highlight=False)
    rows = bench.run_bench(
        quick=args.quick,
        progress=None if args.json else lambda name: console.print(f"[dim]measuring {name}...[/]"),
    )
    if args.json:
        print(json.dumps({"quick": args.quick, "rows": [r.as_json() for r in rows]}, indent=2))
    else:
        print_rows(rows, quick=args.quick)
    return 0


def print_rows(rows: list[bench.Row], *, quick: bool) -> None:
    title = "shortfsm bench" + (" (quick: tiny counts, the figures mean nothing)" if quick else "")
    table = Table(title=title, title_justify="left")
    table.add_column("measurement")
    table.add_column("figure", justify="right")
    table.add_column("target")
    table.add_column("", justify="center")
    notes: list[str] = []
    for row in rows:
        met = {True: "[green]met[/]", False: "[red]missed[/]", None: "[yellow]-[/]"}[row.met]
        if row.measured:
            figure = f"{bench.stat_names(row)}: {bench.format_stats(row)} {row.unit}"
        else:
            figure = "[yellow]not measured[/]"
        name = f"[dim]{row.group}:[/] {row.name}"
        if row.note:
            notes.append(row.note)
            name += f" [dim]({len(notes)})[/]"
        table.add_row(name, figure, row.target.text(row.unit), met)
    console = Console(highlight=False)
    console.print(table)
    for number, note in enumerate(notes, 1):
        console.print(f"[dim]({number}) {note}[/]")


def print_matrix(matrix: faults.MatrixResult) -> None:
    table = Table(title="fault matrix: fault x scenario (engine level, venue double)", title_justify="left")
    table.add_column("fault")
    for scenario in matrix.scenarios:
        table.add_column(scenario, justify="center")
    for fault in matrix.faults:
        cells = []
        for scenario in matrix.scenarios:
            cell = matrix.cell(scenario, fault)
            bad = len(cell.failed_runs)
            cells.append("[green]pass[/]" if cell.passed else f"[red]FAIL {bad}/{len(cell.runs)}[/]")
        table.add_row(fault, *cells)
    console = Console(highlight=False)
    console.print(table)
    for cell in matrix.cells:
        for run in cell.failed_runs:
            console.print(f"[red]FAIL[/] {escape(f'{cell.scenario} x {cell.fault} [{run.variant}]')}")
            for violation in run.violations:
                console.print(f"    {violation}", markup=False)
    passed = sum(c.passed for c in matrix.cells)
    runs = sum(len(c.runs) for c in matrix.cells)
    console.print(f"{passed}/{len(matrix.cells)} cells passed ({runs} runs)")


def print_daemon_matrix(matrix: daemon_faults.DaemonMatrixResult) -> None:
    title = (
        f"fault matrix: fault x scenario (the daemon against the simulated venue, {matrix.speed:g}x clock, "
        f"{matrix.wall_s:.0f} s)"
    )
    table = Table(title=title, title_justify="left")
    table.add_column("fault")
    for scenario in matrix.scenarios:
        table.add_column(scenario, justify="center")
    for fault in matrix.faults:
        cells = []
        for scenario in matrix.scenarios:
            found = [c for c in matrix.cells if c.scenario == scenario and c.fault == fault]
            if not found:
                cells.append("-")
            else:
                known = "*" if (scenario, fault) in daemon_faults.FINDINGS else ""
                cells.append("[green]pass[/]" if found[0].passed else f"[red]FAIL{known}[/]")
        table.add_row(fault, *cells)
    console = Console(highlight=False)
    console.print(table)
    for cell in matrix.cells:
        if not cell.passed:
            fired = escape(", ".join(cell.fired))
            console.print(f"[red]FAIL[/] {escape(f'{cell.scenario} x {cell.fault}')} (fired: {fired})")
            for violation in cell.violations:
                console.print(f"    {violation}", markup=False)
    passed = sum(c.passed for c in matrix.cells)
    console.print(f"{passed}/{len(matrix.cells)} daemon cells passed")
    if any(not c.passed and (c.scenario, c.fault) in daemon_faults.FINDINGS for c in matrix.cells):
        console.print("[dim]* a known daemon bug, pinned in tests/bench/test_fault_matrix_findings.py[/]")


def print_crash(result: faults.CrashMatrixResult) -> None:
    table = Table(title="crash recovery at every event boundary", title_justify="left")
    table.add_column("scenario")
    table.add_column("boundaries", justify="right")
    table.add_column("converged", justify="right")
    table.add_column("not converged", justify="right")
    for scenario in result.scenarios:
        runs = [r for r in result.runs if r.scenario == scenario]
        bad = [r for r in runs if not r.passed]
        table.add_row(scenario, str(len(runs)), str(len(runs) - len(bad)), str(len(bad)) if bad else "0")
    console = Console(highlight=False)
    console.print(table)
    for run in result.runs:
        if not run.passed:
            console.print(f"[red]NOT CONVERGED[/] {escape(f'{run.scenario} {run.variant}')}")
            for violation in run.violations:
                console.print(f"    {violation}", markup=False)
    if not result.passed:
        print("crash matrix: some boundaries did not converge", file=sys.stderr)
