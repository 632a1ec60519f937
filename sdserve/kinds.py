"""The kinds of work this build of sdserve carries (the composition roots hand them to the engine)."""

from __future__ import annotations

from sdserve.images.kind import IMAGE
from sdserve.jobs.kind import Kinds
from sdserve.trainings.kind import TRAINING


def builtin_kinds() -> Kinds:
    """Every built-in kind of work."""
    return Kinds([IMAGE, TRAINING])
