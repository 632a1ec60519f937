"""Where a run writes its outputs: under its own attempt (``outputs/<job>/<attempt>/``), never another's.

A run's files become the job's outputs only in the step that marks it succeeded (the result names them); a
run that is canceled, fails, or finds itself superseded deletes its own files and nothing else.
"""

from __future__ import annotations

from sdserve.contract.problems import NotFound, UnusableInput
from sdserve.storage.base import ObjectStore, attempt_prefix, check_key


class Artifacts:
    """One run's view of the object store."""

    def __init__(self, store: ObjectStore, job_id: str, attempt: int, inputs: dict[str, str]) -> None:
        self.store = store
        self.prefix = attempt_prefix(job_id, attempt)
        self.inputs = inputs
        self.written: list[str] = []

    def key(self, name: str) -> str:
        """The key of one of this run's outputs."""
        return check_key(f"{self.prefix}/{name}")

    def put(self, name: str, data: bytes, content_type: str) -> str:
        """Write one output of this run; returns its key."""
        key = self.key(name)
        self.store.put(key, data, content_type)
        self.written.append(key)
        return key

    def read_input(self, name: str) -> bytes:
        """One of the job's inputs (deleted with its job, or expired: the job cannot run)."""
        try:
            return self.store.get(self.inputs[name])
        except (KeyError, NotFound):
            raise UnusableInput(f"body.{name}", "the input is gone (its upload was deleted or expired)") from None

    def discard(self) -> int:
        """Delete everything this run wrote (its own attempt's files only)."""
        self.written.clear()
        return self.store.delete_prefix(self.prefix)
