"""Spec coverage gate: ties ``@pytest.mark.spec(...)`` markers to ``specs/catalog.yaml``.

Every spec marker argument must be a catalog ID (``W17-2``, ``R15``, ``G01``) or a spec note
(``N-09``); anything else fails the run before a test executes, which catches typos. With
``--spec-report PATH`` the plugin also writes, for every catalog ID, the tests that carry it and their
outcomes as JSON, prints ``spec coverage: N/M`` and fails the run when an ID has no test or a test that
did not pass. ``tests/conftest.py`` registers it as ``shortfsm_spec``; ``-p no:shortfsm_spec`` turns it
off.

Under pytest-xdist (``make test`` runs ``-n auto``) the workers collect and validate; each marked test
carries its IDs in ``user_properties``, which its reports bring to the controller, and the controller
writes the report from them (an ID whose tests never reported counts as having none).
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml

PLUGIN_NAME = "shortfsm_spec"
MARKER = "spec"
MARKER_HELP = "spec(*ids): the spec scenario IDs (and spec notes N-xx) a test proves"
DEFAULT_CATALOG = Path("specs") / "catalog.yaml"
MAX_LISTED = 20
PASSED = "passed"
NOT_RUN = "not run"
PROPERTY = "spec_ids"  # the user_properties key carrying a test's IDs to an xdist controller


class CatalogError(ValueError):
    """The catalog file is missing, is not valid YAML or does not have the expected shape."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys instead of silently keeping the last one."""


def _construct_unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise CatalogError(f"duplicate key {key!r} at line {key_node.start_mark.line + 1}")
        seen.add(key)
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def _read_catalog(path: Path) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CatalogError(f"spec catalog {path} cannot be read: {exc}") from exc
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        raise CatalogError(f"spec catalog {path} is not valid YAML: {exc}") from exc
    except CatalogError as exc:
        raise CatalogError(f"spec catalog {path}: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("ids"), dict):
        raise CatalogError(f"spec catalog {path} must be a mapping with a top-level 'ids' mapping")
    return data


def load_catalog(path: Path | str) -> dict[str, dict[str, Any]]:
    """Return the catalog's ``ids`` mapping (spec order preserved): ID -> {title, summary, section, notes}."""
    ids = _read_catalog(Path(path))["ids"]
    catalog: dict[str, dict[str, Any]] = {}
    for key, entry in ids.items():
        if not isinstance(key, str) or not isinstance(entry, dict):
            raise CatalogError(f"spec catalog {path}: entry {key!r} must be a string key with a mapping")
        catalog[key] = entry
    return catalog


def load_notes(path: Path | str) -> dict[str, str]:
    """Return the catalog's ``notes`` mapping: SPEC-NOTES id (``N-01``) -> short title; empty if absent."""
    notes = _read_catalog(Path(path)).get("notes") or {}
    if not isinstance(notes, dict):
        raise CatalogError(f"spec catalog {path}: 'notes' must be a mapping")
    return {str(key): str(value) for key, value in notes.items()}


def add_options(parser: pytest.Parser) -> None:
    """Command-line and ini options of the gate (registered even when the plugin is disabled)."""
    group = parser.getgroup("shortfsm spec coverage")
    group.addoption(
        "--spec-report",
        metavar="PATH",
        default=None,
        help="write per-ID test outcomes as JSON to PATH and fail unless every catalog ID has passing tests",
    )
    group.addoption(
        "--spec-catalog",
        metavar="PATH",
        default=None,
        help="spec catalog YAML (default: ini spec_catalog, else <rootdir>/specs/catalog.yaml)",
    )
    parser.addini("spec_catalog", "spec catalog YAML, relative to the rootdir", default="")


def register_marker(config: pytest.Config) -> None:
    """Declare the ``spec`` marker unless an ini file already does."""
    declared = config.getini("markers")
    if not any(line.split("(", 1)[0].split(":", 1)[0].strip() == MARKER for line in declared):
        config.addinivalue_line("markers", MARKER_HELP)


def catalog_path(config: pytest.Config) -> Path:
    """--spec-catalog, else the ``spec_catalog`` ini value, else ``<rootdir>/specs/catalog.yaml``."""
    option = config.getoption("--spec-catalog")
    if option:
        return Path(option).expanduser().resolve()
    ini_value = str(config.getini("spec_catalog") or "").strip()
    if ini_value:
        base = config.inipath.parent if config.inipath else config.rootpath
        return (base / ini_value).resolve()
    return config.rootpath / DEFAULT_CATALOG


def _marker_ids(item: pytest.Item) -> tuple[list[str], list[str]]:
    """IDs named by the item's spec markers (in order, once each) and descriptions of malformed ones."""
    ids: list[str] = []
    problems: list[str] = []
    for mark in item.iter_markers(name=MARKER):
        if mark.kwargs:
            problems.append(f"keyword arguments are not allowed: {sorted(mark.kwargs)}")
        if not mark.args:
            problems.append("spec marker without IDs")
        for arg in mark.args:
            if not isinstance(arg, str):
                problems.append(f"IDs must be strings, got {arg!r}")
            elif arg not in ids:
                ids.append(arg)
    return ids, problems


class SpecPlugin:
    """Validates spec markers; with a report path, gates the run on full catalog coverage."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.catalog_file = catalog_path(config)
        report = config.getoption("--spec-report")
        self.report_path: Path | None = Path(report).expanduser().resolve() if report else None
        self.catalog: dict[str, dict[str, Any]] = {}
        self.notes: dict[str, str] = {}
        self.tests_by_id: dict[str, list[str]] = {}
        self.outcomes: dict[str, str] = {}
        self.collected = False
        self.failures: list[tuple[str, str]] = []
        self.result: tuple[int, int] | None = None
        self.bad_items: dict[str, list[str]] = {}  # nodeid -> its marker errors (failed at setup on xdist)
        self.controller = False  # an xdist controller collects nothing: it learns tests from reports

    def _load(self) -> None:
        try:
            self.catalog = load_catalog(self.catalog_file)
            self.notes = load_notes(self.catalog_file)
        except CatalogError as exc:
            raise pytest.UsageError(str(exc)) from exc

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        marked = {item.nodeid: _marker_ids(item) for item in items}
        for item in items:
            ids = marked[item.nodeid][0]
            if ids:
                item.user_properties.append((PROPERTY, tuple(ids)))
        if not any(ids or problems for ids, problems in marked.values()) and self.report_path is None:
            return
        self._load()
        known = set(self.catalog) | set(self.notes)
        errors: list[str] = []
        for nodeid, (ids, problems) in marked.items():
            found = [f"{nodeid}: {problem}" for problem in problems]
            for spec_id in ids:
                if spec_id not in known:
                    close = difflib.get_close_matches(spec_id, sorted(known), n=3)
                    hint = f" (did you mean {', '.join(close)}?)" if close else ""
                    found.append(f"{nodeid}: unknown spec ID {spec_id!r}{hint}")
            if found:
                self.bad_items[nodeid] = found
            errors.extend(found)
        if hasattr(self.config, "workerinput"):
            return  # a worker's UsageError is an xdist crash that loses the message: the tests fail instead
        if errors:
            shown = errors[:MAX_LISTED]
            more = [f"... and {len(errors) - MAX_LISTED} more"] if len(errors) > MAX_LISTED else []
            raise pytest.UsageError(
                f"invalid spec markers (catalog: {self.catalog_file}):\n  " + "\n  ".join(shown + more)
            )

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        # xdist registers its controller ("dsession") in a late pytest_configure: known only now.
        self.controller = self.config.pluginmanager.hasplugin("dsession")
        if self.controller and self.report_path is not None:
            self._load()
            self.tests_by_id = {spec_id: [] for spec_id in self.catalog}
            self.collected = True

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        if self.report_path is None or self.controller:
            return
        self.tests_by_id = {spec_id: [] for spec_id in self.catalog}
        for item in session.items:
            ids, _ = _marker_ids(item)
            for spec_id in ids:
                if spec_id in self.tests_by_id:
                    self.tests_by_id[spec_id].append(item.nodeid)
            if ids:
                self.outcomes.setdefault(item.nodeid, NOT_RUN)
        self.collected = True

    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        if item.nodeid in self.bad_items:
            found = "; ".join(self.bad_items[item.nodeid])
            pytest.fail(f"invalid spec markers (catalog: {self.catalog_file}): {found}", pytrace=False)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if self.controller and self.collected and report.nodeid not in self.outcomes:
            ids = next((v for k, v in report.user_properties if k == PROPERTY), ())
            if ids:
                self.outcomes[report.nodeid] = NOT_RUN
                for spec_id in ids:
                    if spec_id in self.tests_by_id:
                        self.tests_by_id[spec_id].append(report.nodeid)
        if report.nodeid not in self.outcomes:
            return
        xfail = hasattr(report, "wasxfail")
        if report.when == "setup":
            if report.failed:
                self.outcomes[report.nodeid] = "error"
            elif report.skipped:
                self.outcomes[report.nodeid] = "xfailed" if xfail else "skipped"
        elif report.when == "call":
            if report.failed:
                self.outcomes[report.nodeid] = "failed"
            elif report.skipped:
                self.outcomes[report.nodeid] = "xfailed" if xfail else "skipped"
            else:
                self.outcomes[report.nodeid] = "xpassed" if xfail else PASSED
        elif report.failed and self.outcomes[report.nodeid] == PASSED:
            self.outcomes[report.nodeid] = "error"

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.report_path is None or not self.collected:
            return
        order = sorted if self.controller else list  # workers report in completion order
        report = {
            spec_id: [{"nodeid": nodeid, "outcome": self.outcomes[nodeid]} for nodeid in order(nodeids)]
            for spec_id, nodeids in self.tests_by_id.items()
        }
        self.report_path.parent.mkdir(parents=True, exist_ok=True)
        self.report_path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        collect_only = bool(self.config.option.collectonly)
        reasons = [(spec_id, _why_uncovered(entries, collect_only)) for spec_id, entries in report.items()]
        self.failures = [(spec_id, why) for spec_id, why in reasons if why]
        self.result = (len(report) - len(self.failures), len(report))
        if self.failures and not collect_only and session.exitstatus == 0:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.result is None:
            return
        covered, total = self.result
        if self.config.option.collectonly:
            title = f"spec coverage (collect-only, IDs with tests): {covered}/{total}"
            heading = "without tests"
        else:
            title = f"spec coverage: {covered}/{total}"
            heading = "without all-passing tests"
        failing = bool(self.failures)
        terminalreporter.write_sep("-", title, red=failing, green=not failing)
        if not self.failures:
            return
        terminalreporter.write_line(f"spec IDs {heading} ({len(self.failures)}):")
        for spec_id, why in self.failures[:MAX_LISTED]:
            terminalreporter.write_line(f"  {spec_id}: {why}")
        if len(self.failures) > MAX_LISTED:
            terminalreporter.write_line(f"  ... and {len(self.failures) - MAX_LISTED} more")
        terminalreporter.write_line(f"spec report: {self.report_path}")


def _why_uncovered(entries: Iterable[dict[str, str]], collect_only: bool = False) -> str:
    """Empty when the ID has tests and all of them passed (or, collecting only, has any test)."""
    entries = list(entries)
    if not entries:
        return "no test"
    if collect_only:
        return ""
    bad = [f"{entry['outcome']} {entry['nodeid']}" for entry in entries if entry["outcome"] != PASSED]
    return "; ".join(bad)
