"""The local store says what it did: deletions are counted as they happen, and a failed write leaves nothing."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from sdserve.contract.problems import StorageFull
from sdserve.storage.local import LocalStore


def test_delete_prefix_counts_only_what_it_deleted(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "objects")
    for name in ("a/1/0.png", "a/1/manifest.json", "a/2/0.png", "b/1/0.png"):
        store.put(name, b"x", "image/png")
    assert store.delete_prefix("a") == 3
    assert store.delete_prefix("a") == 0  # nothing left: it says so
    assert store.exists("b/1/0.png") and not (tmp_path / "objects" / "a").exists()
    assert store.delete("b/1/0.png") and not store.delete("b/1/0.png")


def test_a_write_to_a_full_store_is_storage_full_and_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalStore(tmp_path / "objects")
    real_replace = __import__("os").replace

    def full(src: object, dst: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("sdserve.storage.local.os.replace", full)
    with pytest.raises(StorageFull):
        store.put("outputs/j/1/0.png", b"data", "image/png")
    monkeypatch.setattr("sdserve.storage.local.os.replace", real_replace)
    assert [p.name for p in (tmp_path / "objects").rglob("*") if p.is_file()] == []
