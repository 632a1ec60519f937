"""One problem catalogue, and nothing else spells a slug: a misspelt problem type anywhere fails here.

* every problem type of the catalogue has its row in the problem table of ``docs/api.md``, and every row is
  one of the catalogue (slug, status, title);
* every ``/problems/<slug>`` written in the code, the docs or the README names a catalogue slug;
* no code makes a problem type except through ``problem(...)`` (which enters it in the catalogue, so the docs
  table must have it; kinds of work define theirs in their own modules), and no job error is given a ``type``
  that does not come from a problem type (``JobError(type=<problem>.type, ...)``);
* every domain error carries a problem type of the catalogue, and the HTTP layer's table is made of it.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import app.main
import sdserve.kinds
import worker.models.embeddings
import worker.models.loras
from app.errors import HTTP_PROBLEMS
from sdserve.contract import problems
from sdserve.contract.problems import (
    ON_JOB,
    PROBLEM_BASE,
    JobCanceled,
    JobFailed,
    ProblemType,
    SdserveError,
    catalogue,
)

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("sdserve", "app", "worker", "dispatcher")
LOADED = (app.main, sdserve.kinds, worker.models.loras, worker.models.embeddings)
"""Every module that defines problem types or domain errors is loaded (the catalogue fills at import)."""

CATALOGUE_MODULE = ROOT / "sdserve/contract/problems.py"
TEXT_SUFFIXES = {".py", ".md", ".js", ".html", ".css", ".toml", ".txt"}
PROBLEM_URI = re.compile(r"/problems/([A-Za-z0-9_.-]*[A-Za-z0-9_-])")
"""A problem type URI as written anywhere (``/problems/{slug}`` and ``/problems/<slug>`` are templates)."""
ON_JOB_STATUS = "on a job"
"""The status column of problems recorded on jobs, never answered over HTTP."""


def shipped() -> dict[str, ProblemType]:
    """The catalogue as sdserve ships it: without what a test's own kind of work adds (``tests/echo_kind.py``,
    imported when the integration tests run in the same session)."""
    types = catalogue()
    assert all(p.origin.partition(".")[0] in {*PACKAGES, "tests"} for p in types.values()), types
    return {slug: p for slug, p in types.items() if p.origin.partition(".")[0] in PACKAGES}


def _subclasses(cls: type) -> set[type]:
    found = set(cls.__subclasses__())
    for sub in list(found):
        found |= _subclasses(sub)
    return found


def _python_sources() -> list[Path]:
    sources = [path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))]
    assert len(sources) > 50
    return sources


def _relative(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name


# --- the docs' table -------------------------------------------------------------------------------------
def docs_problem_table() -> dict[str, tuple[str, str, str]]:
    """The rows of docs/api.md's problem table: slug → (status, title, meaning)."""
    lines = (ROOT / "docs/api.md").read_text().splitlines()
    header = "| slug | status | title | meaning |"
    assert lines.count(header) == 1, f"docs/api.md has no single problem table starting {header!r}"
    start = lines.index(header)
    assert lines[start + 1] == "|---|---|---|---|"
    rows: dict[str, tuple[str, str, str]] = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        assert len(cells) == 4, line
        slug, status, title, meaning = cells
        assert re.fullmatch(r"`[a-z0-9-]+`", slug), line
        assert meaning, line
        assert slug.strip("`") not in rows, f"{slug} has two rows"
        rows[slug.strip("`")] = (status, title, meaning)
    return rows


def test_the_docs_table_is_the_catalogue() -> None:
    table = docs_problem_table()
    types = shipped()
    assert sorted(set(types) - set(table)) == [], "problem types missing from docs/api.md's problem table"
    assert sorted(set(table) - set(types)) == [], "docs/api.md's problem table has rows the catalogue lacks"
    for slug, problem in types.items():
        status, title, _ = table[slug]
        assert status == (ON_JOB_STATUS if problem.status == ON_JOB else str(problem.status)), slug
        assert title == problem.title, slug


# --- slugs written anywhere --------------------------------------------------------------------------------
def _written_slugs() -> dict[str, set[str]]:
    """Every /problems/<slug> written in the packages, the docs and the README: slug → where."""
    files = [
        *(path for package in PACKAGES for path in (ROOT / package).rglob("*") if path.suffix in TEXT_SUFFIXES),
        *sorted((ROOT / "docs").glob("*.md")),
        ROOT / "README.md",
    ]
    written: dict[str, set[str]] = {}
    for path in files:
        for slug in PROBLEM_URI.findall(path.read_text(encoding="utf-8")):
            written.setdefault(slug, set()).add(_relative(path))
    return written


def test_every_slug_written_anywhere_is_in_the_catalogue() -> None:
    written = _written_slugs()
    seen_in = set().union(*written.values())
    assert {"README.md", "docs/api.md", "app/errors.py"} <= seen_in  # the scan reads the docs and the code
    unknown = {slug: sorted(where) for slug, where in written.items() if slug not in shipped()}
    assert unknown == {}


def test_the_uri_pattern_catches_misspellings() -> None:
    found = PROBLEM_URI.findall("`/problems/worker-lsot`, /problems/Timeout. (/problems/{slug}, /problems/<slug>)")
    assert found == ["worker-lsot", "Timeout"]


# --- no problem type made outside the catalogue --------------------------------------------------------------
def _callee(node: ast.Call) -> str | None:
    if isinstance(node.func, ast.Name):
        return node.func.id
    if isinstance(node.func, ast.Attribute):
        return node.func.attr
    return None


def _imported_from_catalogue(tree: ast.Module) -> dict[str, str]:
    """Local name → name in sdserve.contract.problems, for names a module imports from it."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == problems.__name__:
            names |= {alias.asname or alias.name: alias.name for alias in node.names}
    return names


def catalogue_offences(path: Path) -> list[str]:
    """Where a module makes a problem type, or a job error type, other than through the catalogue."""
    tree = ast.parse(path.read_text(), filename=str(path))
    from_catalogue = _imported_from_catalogue(tree)
    found: list[str] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _callee(node)
        where = f"{_relative(path)}:{node.lineno}"
        bypasses = (isinstance(node.func, ast.Name) and from_catalogue.get(name or "") == "ProblemType") or (
            isinstance(node.func, ast.Attribute) and name == "ProblemType"  # problems.ProblemType(...)
        )
        if bypasses and path != CATALOGUE_MODULE:
            found.append(f"{where}: makes a problem type outside the catalogue")
        if name == "JobError":
            if node.args:
                found.append(f"{where}: JobError with positional arguments")
            given = {kw.arg: kw.value for kw in node.keywords}
            value = given.get("type")
            if None in given or not (isinstance(value, ast.Attribute) and value.attr == "type"):
                found.append(f"{where}: JobError's type= must be a problem type's .type")
    return found


def test_no_problem_type_is_made_outside_the_catalogue() -> None:
    offences = [offence for path in _python_sources() for offence in catalogue_offences(path)]
    assert offences == []


def test_the_scan_catches_a_made_up_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from sdserve.contract.problems import problem, ProblemType as PT\n"
        "from sdserve.jobs.record import JobError\n"
        "X = problem('worker-lsot', 200, 't', 'd')\n"  # in the catalogue, so the docs-table test catches it
        "Y = PT('timeuot', 200, 't', 'd')\n"
        "a = JobError(type='/problems/timeuot', title='t')\n"
        "b = JobError(type=f'/problems/{slug}', title='t')\n"
        "c = JobError(**fields)\n"
        "d = JobError(type=WORKER_LOST.type, title=WORKER_LOST.title)\n"
    )
    assert [offence.split(": ", 1)[1] for offence in catalogue_offences(bad)] == [
        "makes a problem type outside the catalogue",
        "JobError's type= must be a problem type's .type",
        "JobError's type= must be a problem type's .type",
        "JobError's type= must be a problem type's .type",
    ]


# --- errors and the HTTP layer ------------------------------------------------------------------------------
def domain_errors() -> set[type[SdserveError]]:
    """Every domain error sdserve defines (not those of a test's own kind)."""
    found = _subclasses(SdserveError) | {SdserveError}
    return {cls for cls in found if cls.__module__.partition(".")[0] in PACKAGES}


def test_every_domain_error_carries_a_catalogue_problem() -> None:
    errors = domain_errors()
    assert {"LoraLoadFailed", "EmbeddingLoadFailed", "UnsafeWebhookUrl"} <= {cls.__name__ for cls in errors}
    types = shipped()
    assert {cls.__qualname__: cls.problem.slug for cls in errors if cls.problem.slug not in types} == {}
    for cls in errors:
        assert types[cls.problem.slug] is cls.problem, cls  # the catalogue's own object, not a look-alike


@pytest.mark.parametrize("cls", sorted(domain_errors(), key=lambda c: c.__qualname__), ids=lambda c: c.__qualname__)
def test_job_errors_are_on_jobs_and_the_rest_are_http(cls: type[SdserveError]) -> None:
    if issubclass(cls, (JobFailed, JobCanceled)):
        assert cls.problem.status == ON_JOB
    else:
        assert 400 <= cls.problem.status < 600


def test_the_http_layer_names_catalogue_problems_by_their_status() -> None:
    types = shipped()
    for status, problem in HTTP_PROBLEMS.items():
        assert types[problem.slug] is problem
        assert problem.status == status, problem.slug


def test_every_problem_type_is_well_formed() -> None:
    assert len(shipped()) >= 29
    for slug, problem in catalogue().items():
        assert re.fullmatch(r"[a-z][a-z0-9]*(-[a-z0-9]+)*", slug), slug
        assert problem.type == f"{PROBLEM_BASE}{slug}"
        assert problem.status == ON_JOB or 400 <= problem.status < 600, slug
        assert problem.title and problem.description, slug
        assert problems.lookup(problem.type) is problem
