"""Every problem ``type`` the service can answer with resolves at ``GET /problems/{slug}``."""

from __future__ import annotations

import re
from pathlib import Path

from app.errors import HTTP_SLUGS
from app.routes.problems import PROBLEMS
from sdserve import errors

ROOT = Path(__file__).resolve().parents[2]


def _subclasses(cls: type) -> set[type]:
    found = set(cls.__subclasses__())
    for sub in list(found):
        found |= _subclasses(sub)
    return found


def test_every_slug_the_gateway_names_is_explained() -> None:
    named = {slug for slug, _ in HTTP_SLUGS.values()}
    assert named - PROBLEMS.keys() == set()
    for status, (slug, _) in HTTP_SLUGS.items():
        assert PROBLEMS[slug][0] == status, slug


def test_every_domain_error_slug_is_explained() -> None:
    slugs = {cls.slug for cls in _subclasses(errors.SdserveError) | {errors.SdserveError}}
    assert slugs - PROBLEMS.keys() == set()


def test_every_slug_written_in_the_code_is_explained() -> None:
    """Slugs passed as strings (the worker's and janitor's failures, the docs' problem table)."""
    sources = [
        *ROOT.glob("sdserve/*.py"),
        *ROOT.glob("worker/**/*.py"),
        *ROOT.glob("app/**/*.py"),
        ROOT / "docs/api.md",
    ]
    written = {m for path in sources for m in re.findall(r"/problems/([a-z][a-z-]+[a-z])", path.read_text())}
    assert written - PROBLEMS.keys() == set()
