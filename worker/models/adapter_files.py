"""Adapter files from the object store (``store:<key>``), cached on the worker by their SHA-256.

A job names a key's own adapter by its object key and digest (the gateway resolved both). The first job that
needs it downloads it into ``<models_dir>/adapters/<sha256>.safetensors`` (written aside, checked, then renamed:
a file there always has the digest of its name); later jobs reuse it. Two owners' adapters of one name never
meet: their files differ, and so do their digests.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from sdserve.contract.problems import WEIGHTS_LOAD_FAILED, JobFailed, NotFound
from sdserve.registry.specs import STORE_FILE_PREFIX
from sdserve.storage.base import ObjectStore

log = logging.getLogger(__name__)


class AdapterFileFailed(JobFailed):
    """An adapter's file could not be had from the object store (gone, or not what the job named)."""

    problem = WEIGHTS_LOAD_FAILED


def digest_of(path: Path) -> str:
    """SHA-256 of a file (read in 1 MiB blocks): LoRA and embedding files, registry or owned."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class StoredAdapterFiles:
    """The local copies of adapter files from the object store."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.downloads = 0

    def path(self, sha256: str) -> Path:
        """Where the copy of the file with this digest lies (present or not)."""
        return self.folder / f"{sha256}.safetensors"

    def local(self, file: str, sha256: str | None) -> Path:
        """The local copy of a ``store:`` file, fetched before (``fetch``)."""
        if sha256 is None:
            raise AdapterFileFailed(f"{file} names no SHA-256: an object store file is used only by its digest")
        path = self.path(sha256)
        if not path.exists():
            raise AdapterFileFailed(f"{file} was not fetched from the object store")
        return path

    def fetch(self, store: ObjectStore, file: str, sha256: str) -> Path:
        """The local copy of a ``store:`` file with this digest, downloaded the first time."""
        path = self.path(sha256)
        if path.exists():
            return path
        key = file.removeprefix(STORE_FILE_PREFIX)
        try:
            data = store.get(key)
        except NotFound:  # a store that cannot be reached now raises as it does for any job's input
            raise AdapterFileFailed(f"the adapter file {key} is gone from the object store") from None
        got = hashlib.sha256(data).hexdigest()
        if got != sha256:
            raise AdapterFileFailed(f"the adapter file {key} is not the one the job named (SHA-256 {got[:12]}…)")
        self.folder.mkdir(parents=True, exist_ok=True)
        staging = self.folder / f".{sha256}.{os.getpid()}.tmp"
        staging.write_bytes(data)
        os.replace(staging, path)  # several workers may race: each writes the same bytes, one rename wins
        self.downloads += 1
        log.info("fetched adapter file %s (%d bytes) from the object store", key, len(data))
        return path
