"""The spec catalog mirrors the seed's scenario headings, and the spec coverage gate enforces it."""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from spec_plugin import CatalogError, load_catalog, load_notes

pytest_plugins = ["pytester"]

TESTS_DIR = Path(__file__).resolve().parent
REPO = TESTS_DIR.parent
CATALOG = REPO / "specs" / "catalog.yaml"
SEED_NAME = "004_fd564976819f1fc1.txt"
GLOBAL_IDS = ["G01", "G02", "G03", "G04", "G05", "G06"]
NOTE_IDS = [f"N-{n:02d}" for n in range(1, 29)]
ENTRY_KEYS = {"title", "summary", "section", "notes"}

SCENARIO_HEADING = re.compile(r"^#{3,5} ([WR]\d{2}(?:-\d+)?)\. ")
SECTION_HEADING = re.compile(r"^#{2,4} (\d+(?:\.\d+)?(?:-\d+)?)\.? ")
HANGUL = re.compile(r"[\uac00-\ud7a3]")


@cache
def catalog() -> dict[str, dict[str, Any]]:
    return load_catalog(CATALOG)


def shared_dir() -> Path:
    """`shared/` beside the clone (CI: <clone>/../shared), else the workstation's /work/shared."""
    beside = Path(__file__).resolve().parents[2] / "shared"
    return beside if (beside / "seeds" / SEED_NAME).exists() else Path("/work/shared")


def seed_scenarios() -> list[tuple[str, str]]:
    """(ID, section number) for every scenario heading of the seed, in order."""
    seed = shared_dir() / "seeds" / SEED_NAME
    assert seed.exists(), f"seed not found beside the clone nor at {seed}"
    section = ""
    found: list[tuple[str, str]] = []
    for line in seed.read_text(encoding="utf-8").splitlines():
        scenario = SCENARIO_HEADING.match(line)
        if scenario:
            found.append((scenario.group(1), section))
            continue
        numbered = SECTION_HEADING.match(line)
        if numbered:
            section = numbered.group(1)
    return found


def test_catalog_has_exactly_the_seed_heading_ids_in_order() -> None:
    seed_ids = [spec_id for spec_id, _ in seed_scenarios()]
    catalog_ids = [spec_id for spec_id in load_catalog(CATALOG) if not spec_id.startswith("G")]
    assert len(seed_ids) == 104
    assert len(set(seed_ids)) == 104
    assert catalog_ids == seed_ids


def test_catalog_starts_with_the_global_rules() -> None:
    catalog = load_catalog(CATALOG)
    assert list(catalog)[:6] == GLOBAL_IDS
    assert [spec_id for spec_id in catalog if spec_id.startswith("G")] == GLOBAL_IDS
    assert {catalog[spec_id]["section"] for spec_id in GLOBAL_IDS} == {"1"}
    assert len(catalog) == 110


def test_catalog_sections_match_the_seed() -> None:
    catalog = load_catalog(CATALOG)
    sections = {spec_id: entry["section"] for spec_id, entry in catalog.items()}
    expected = dict(seed_scenarios())
    assert {spec_id: sections[spec_id] for spec_id in expected} == expected
    assert expected["W17-2"] == "3.4"
    assert expected["W32-1"] == "3.6-1"
    assert expected["R15"] == "3.11-6"
    assert expected["W55"] == "4"


def test_catalog_file_has_no_duplicate_keys() -> None:
    keys = re.findall(r"^  ([A-Z]\d{2}(?:-\d+)?):\s*$", CATALOG.read_text(encoding="utf-8"), re.MULTILINE)
    assert len(keys) == 110
    assert len(set(keys)) == len(keys)


def test_loader_rejects_duplicate_ids(tmp_path: Path) -> None:
    path = tmp_path / "catalog.yaml"
    path.write_text("ids:\n  W01: {title: a}\n  W01: {title: b}\n", encoding="utf-8")
    with pytest.raises(CatalogError, match="duplicate key 'W01' at line 3"):
        load_catalog(path)


def test_loader_rejects_a_file_without_ids(tmp_path: Path) -> None:
    path = tmp_path / "catalog.yaml"
    path.write_text("W01: {title: a}\n", encoding="utf-8")
    with pytest.raises(CatalogError, match="top-level 'ids' mapping"):
        load_catalog(path)


@pytest.mark.parametrize("spec_id", list(catalog()))
def test_entry_is_a_complete_english_record(spec_id: str) -> None:
    entry = catalog()[spec_id]
    assert set(entry) == ENTRY_KEYS
    for key in ("title", "summary", "section"):
        assert isinstance(entry[key], str) and entry[key].strip() == entry[key] and entry[key]
    assert "\n" not in entry["summary"]
    assert len(entry["summary"].split()) >= 5
    letters = [char for char in entry["summary"] if char.isalpha()]
    hangul = [char for char in letters if HANGUL.match(char)]
    assert len(hangul) * 5 < len(letters), f"{spec_id} summary is not English: {entry['summary']}"
    assert HANGUL.search(entry["title"]) is None
    assert isinstance(entry["notes"], list)
    assert all(note in NOTE_IDS for note in entry["notes"]), entry["notes"]
    assert len(set(entry["notes"])) == len(entry["notes"])


def test_catalog_notes_are_the_spec_notes() -> None:
    notes = load_notes(CATALOG)
    assert list(notes) == NOTE_IDS
    assert all(title.strip() for title in notes.values())
    spec_notes = shared_dir() / "SPEC-NOTES.md"
    assert spec_notes.exists(), f"SPEC-NOTES.md not found beside the clone nor at {spec_notes}"
    written = re.findall(r"^(N-\d{2}) ", spec_notes.read_text(encoding="utf-8"), re.MULTILINE)
    assert written == NOTE_IDS


def test_every_spec_note_except_channel_config_is_referenced() -> None:
    used = {note for entry in load_catalog(CATALOG).values() for note in entry["notes"]}
    assert set(NOTE_IDS) - used == {"N-04"}


# --- the coverage gate, exercised in a throwaway project through pytester ---------------------------

MINI_CATALOG = """\
ids:
  W01:
    title: "one"
    summary: "first behaviour of the small catalog"
    section: "3.1"
    notes: [N-01]
  W02:
    title: "two"
    summary: "second behaviour of the small catalog"
    section: "3.1"
    notes: []
notes:
  N-01: "a note"
"""


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A project with this repo's conftest and plugin and a two-ID catalog at specs/catalog.yaml."""
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")  # inner runs see only the plugin under test
    pytester.makeconftest((TESTS_DIR / "conftest.py").read_text(encoding="utf-8"))
    pytester.makepyfile(spec_plugin=(TESTS_DIR / "spec_plugin.py").read_text(encoding="utf-8"))
    pytester.makeini("[pytest]\n")
    (pytester.path / "specs").mkdir()
    (pytester.path / "specs" / "catalog.yaml").write_text(MINI_CATALOG, encoding="utf-8")
    return pytester


XDIST = ("-p", "xdist", "-n", "2")  # `make test` runs -n auto: the workers' IDs reach the controller
RUNS = pytest.mark.parametrize("run", [(), XDIST], ids=["serial", "xdist"])


def read_report(pytester: pytest.Pytester) -> dict[str, list[dict[str, str]]]:
    report: dict[str, list[dict[str, str]]] = json.loads(
        (pytester.path / "out" / "report.json").read_text(encoding="utf-8")
    )
    return report


def test_unknown_id_fails_the_run_even_without_a_report(project: pytest.Pytester) -> None:
    project.makepyfile(
        test_typo="""
        import pytest

        @pytest.mark.spec("W1")
        def test_a():
            assert 1 + 1 == 2
        """
    )
    result = project.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*test_typo.py::test_a: unknown spec ID 'W1' (did you mean W01*"])
    result.stdout.no_fnmatch_line("*1 passed*")


def test_unknown_id_in_a_param_mark_fails_the_run(project: pytest.Pytester) -> None:
    project.makepyfile(
        test_params="""
        import pytest

        @pytest.mark.parametrize("x", [1, pytest.param(2, marks=pytest.mark.spec("R99"))])
        def test_p(x):
            assert x in (1, 2)
        """
    )
    result = project.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*test_params.py::test_p[[]2[]]: unknown spec ID 'R99'*"])


@RUNS
def test_failing_spec_test_is_reported_and_fails_the_run(
    project: pytest.Pytester, run: tuple[str, ...]
) -> None:
    project.makepyfile(
        test_mix="""
        import pytest

        @pytest.mark.spec("W01", "N-01")
        def test_ok():
            assert "W01".startswith("W")

        @pytest.mark.spec("W02")
        def test_broken():
            assert 2 + 2 == 5
        """
    )
    result = project.runpytest(*run, "--spec-report", "out/report.json")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert read_report(project) == {
        "W01": [{"nodeid": "test_mix.py::test_ok", "outcome": "passed"}],
        "W02": [{"nodeid": "test_mix.py::test_broken", "outcome": "failed"}],
    }
    result.stdout.fnmatch_lines(["*spec coverage: 1/2*", "  W02: failed test_mix.py::test_broken"])


@RUNS
def test_full_coverage_passes_and_counts_param_marks(project: pytest.Pytester, run: tuple[str, ...]) -> None:
    project.makepyfile(
        test_all="""
        import pytest

        pytestmark = pytest.mark.spec("W01")

        @pytest.mark.parametrize("x", [1, pytest.param(2, marks=pytest.mark.spec("W02", "N-01"))])
        def test_p(x):
            assert x * 2 in (2, 4)

        def test_plain():
            assert "a" * 2 == "aa"
        """
    )
    result = project.runpytest(*run, "--spec-report", "out/report.json")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["*spec coverage: 2/2*"])
    assert read_report(project) == {
        "W01": [
            {"nodeid": "test_all.py::test_p[1]", "outcome": "passed"},
            {"nodeid": "test_all.py::test_p[2]", "outcome": "passed"},
            {"nodeid": "test_all.py::test_plain", "outcome": "passed"},
        ],
        "W02": [{"nodeid": "test_all.py::test_p[2]", "outcome": "passed"}],
    }


@RUNS
def test_id_without_a_test_fails_the_run(project: pytest.Pytester, run: tuple[str, ...]) -> None:
    project.makepyfile(
        test_one="""
        import pytest

        @pytest.mark.spec("W01")
        def test_ok():
            assert 3 > 2
        """
    )
    result = project.runpytest(*run, "--spec-report", "out/report.json")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*spec coverage: 1/2*", "  W02: no test", "*1 passed*"])
    assert read_report(project)["W02"] == []


def test_skipped_and_xfailed_tests_do_not_cover(project: pytest.Pytester) -> None:
    project.makepyfile(
        test_skips="""
        import pytest

        @pytest.mark.spec("W01")
        def test_skip():
            pytest.skip("not yet")

        @pytest.mark.spec("W02")
        @pytest.mark.xfail(reason="known")
        def test_xfail():
            assert 1 == 2
        """
    )
    result = project.runpytest("--spec-report", "out/report.json")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert read_report(project) == {
        "W01": [{"nodeid": "test_skips.py::test_skip", "outcome": "skipped"}],
        "W02": [{"nodeid": "test_skips.py::test_xfail", "outcome": "xfailed"}],
    }
    result.stdout.fnmatch_lines(["*spec coverage: 0/2*"])


def test_deselected_tests_leave_their_ids_uncovered(project: pytest.Pytester) -> None:
    project.makepyfile(
        test_sel="""
        import pytest

        @pytest.mark.spec("W01")
        def test_one():
            assert 1 == 1

        @pytest.mark.spec("W02")
        def test_two():
            assert 2 == 2
        """
    )
    result = project.runpytest("--spec-report", "out/report.json", "-k", "one")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert read_report(project)["W02"] == []
    result.stdout.fnmatch_lines(["*spec coverage: 1/2*", "  W02: no test"])


def test_subset_without_report_ignores_missing_ids(project: pytest.Pytester) -> None:
    project.makepyfile(
        test_sub="""
        import pytest

        @pytest.mark.spec("W01")
        def test_ok():
            assert [1, 2][-1] == 2
        """
    )
    result = project.runpytest()
    assert result.ret == pytest.ExitCode.OK
    result.stdout.no_fnmatch_line("*spec coverage*")
    assert not (project.path / "out").exists()


def test_plugin_can_be_disabled(project: pytest.Pytester) -> None:
    project.makepyfile(
        test_off="""
        import pytest

        @pytest.mark.spec("NOT-AN-ID")
        def test_ok():
            assert 5 // 2 == 2
        """
    )
    result = project.runpytest("-p", "no:shortfsm_spec", "--spec-report", "out/report.json")
    assert result.ret == pytest.ExitCode.OK
    assert not (project.path / "out").exists()


def test_long_failure_lists_are_capped(project: pytest.Pytester) -> None:
    ids = "".join(f'  W{n:02d}: {{title: "t", summary: "s", section: "3", notes: []}}\n' for n in range(25))
    (project.path / "specs" / "big.yaml").write_text("ids:\n" + ids, encoding="utf-8")
    project.makepyfile(test_none="def test_nothing():\n    assert len('ab') == 2\n")
    result = project.runpytest("--spec-catalog", "specs/big.yaml", "--spec-report", "out/report.json")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "*spec coverage: 0/25*",
            "spec IDs without all-passing tests (25):",
            "  W19: no test",
            "  ... and 5 more",
        ]
    )
    result.stdout.no_fnmatch_line("  W20: no test")
    assert len(read_report(project)) == 25


def test_catalog_path_from_ini(project: pytest.Pytester) -> None:
    (project.path / "specs" / "catalog.yaml").unlink()
    (project.path / "alt.yaml").write_text(MINI_CATALOG.replace("W02", "W03"), encoding="utf-8")
    project.makeini("[pytest]\nspec_catalog = alt.yaml\n")
    project.makepyfile(
        test_ini="""
        import pytest

        @pytest.mark.spec("W01")
        def test_a():
            assert 1 < 2

        @pytest.mark.spec("W03")
        def test_b():
            assert 2 < 3
        """
    )
    result = project.runpytest("--spec-report", "out/report.json")
    assert result.ret == pytest.ExitCode.OK
    assert list(read_report(project)) == ["W01", "W03"]


def test_missing_catalog_is_a_clear_error(project: pytest.Pytester) -> None:
    (project.path / "specs" / "catalog.yaml").unlink()
    project.makepyfile(test_x="def test_x():\n    assert 1 == 1\n")
    result = project.runpytest("--spec-report", "out/report.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*spec catalog *catalog.yaml cannot be read*"])


def test_collect_only_reports_ids_without_tests_and_does_not_fail(project: pytest.Pytester) -> None:
    project.makepyfile(
        test_co="""
        import pytest

        @pytest.mark.spec("W02")
        def test_two():
            assert 2 == 2
        """
    )
    result = project.runpytest("--collect-only", "--spec-report", "out/report.json")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["*spec coverage (collect-only, IDs with tests): 1/2*", "  W01: no test"])
    assert read_report(project)["W02"] == [{"nodeid": "test_co.py::test_two", "outcome": "not run"}]


# --- the same gate under pytest-xdist (`make test` runs -n auto) -------------------------------------


def test_under_workers_an_unknown_id_fails_the_run(project: pytest.Pytester) -> None:
    project.makepyfile(
        test_typo="""
        import pytest

        @pytest.mark.spec("W1")
        def test_a():
            assert 1 + 1 == 2
        """
    )
    result = project.runpytest(*XDIST)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        ["*test_typo.py::test_a: unknown spec ID 'W1' (did you mean W01*", "*1 error*"]
    )
    result.stdout.no_fnmatch_line("*1 passed*")
