"""The local object store: safe keys, atomic writes, HMAC-signed expiring URLs."""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from sdserve.contract.problems import InvalidRequest, NotFound
from sdserve.storage.base import attempt_prefix, check_key, outputs_prefix
from sdserve.storage.local import LocalStore


@pytest.mark.parametrize("key", ["../x", "/abs", "a//b", "a/../b", "", "a/", ".hidden", "a\\b", "a b"])
def test_unsafe_keys_are_refused(key: str) -> None:
    with pytest.raises(InvalidRequest):
        check_key(key)


def test_put_get_overwrite_delete(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    key = f"{attempt_prefix('job1', 1)}/0.png"
    assert key == "outputs/job1/1/0.png"
    store.put(key, b"one", "image/png")
    store.put(key, b"two", "image/png")
    assert store.get(key) == b"two"
    assert store.exists(key)
    assert [p.name for p in (tmp_path / "outputs/job1/1").iterdir()] == ["0.png"]  # no temp files left
    assert store.delete_prefix(outputs_prefix("job1")) == 1
    assert not (tmp_path / "outputs/job1").exists()
    with pytest.raises(NotFound):
        store.get(key)


def test_signatures(tmp_path: Path) -> None:
    store = LocalStore(tmp_path, b"k")
    signed = store.signed_url("outputs/j/0.png", expires_in=60, base_url="http://h:1/")
    parts = urlsplit(signed.url)
    assert parts.path == "/v1/files/outputs/j/0.png"
    q = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert int(q["expires"]) == signed.expires_at > time.time()
    assert store.verify("outputs/j/0.png", int(q["expires"]), q["signature"])
    assert not store.verify("outputs/j/1.png", int(q["expires"]), q["signature"])
    assert not store.verify("outputs/j/0.png", int(q["expires"]) + 1, q["signature"])
    assert not LocalStore(tmp_path, b"other").verify("outputs/j/0.png", int(q["expires"]), q["signature"])
    old = store.signed_url("outputs/j/0.png", expires_in=-5, base_url="http://h")
    q = {k: v[0] for k, v in parse_qs(urlsplit(old.url).query).items()}
    assert not store.verify("outputs/j/0.png", int(q["expires"]), q["signature"])
