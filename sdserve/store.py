"""Object storage for job inputs, outputs and manifests.

``ObjectStore`` is the one interface; ``LocalStore`` keeps objects as files and lets the gateway
serve them through HMAC-signed, expiring URLs. (An S3 implementation with presigned URLs sits
behind the same interface.) Keys look like ``outputs/<job>/0.png``; they are validated so that no
key can climb out of the store.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import quote, urlencode

from sdserve.errors import InvalidRequest, NotFound, Unavailable

KEY_PATTERN = re.compile(r"^(?:[A-Za-z0-9_][A-Za-z0-9._-]*/)*[A-Za-z0-9_][A-Za-z0-9._-]*$")


def check_key(key: str) -> str:
    """Refuse keys that could name anything outside the store (``..``, absolute, empty parts)."""
    if len(key) > 512 or not KEY_PATTERN.fullmatch(key) or ".." in key.split("/"):
        raise InvalidRequest(f"invalid object key {key!r}")
    return key


def output_key(job_id: str, name: str) -> str:
    """Where a job's output object lives."""
    return check_key(f"outputs/{job_id}/{name}")


def input_key(job_id: str, name: str) -> str:
    """Where a job's input object lives."""
    return check_key(f"inputs/{job_id}/{name}")


@dataclass(frozen=True)
class SignedUrl:
    """A URL that works until ``expires_at`` (Unix seconds)."""

    url: str
    expires_at: int


class ObjectStore(Protocol):
    """What the gateway and the worker need from object storage."""

    def put(self, key: str, data: bytes, content_type: str) -> None:
        """Write an object; writing the same key again replaces it atomically."""

    def get(self, key: str) -> bytes:
        """Read an object; NotFound if absent."""

    def exists(self, key: str) -> bool:
        """Whether an object exists."""

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix/``; returns how many went."""

    def signed_url(self, key: str, *, expires_in: int, base_url: str) -> SignedUrl:
        """A URL a client can GET without credentials until it expires."""

    def check(self) -> None:
        """Raise Unavailable if the store cannot be written."""


class LocalStore:
    """Objects as files under one directory; URLs signed with HMAC-SHA256 and served by the gateway."""

    def __init__(self, root: Path, signing_key: bytes | None = None) -> None:
        self.root = root
        self._key = signing_key

    def path(self, key: str) -> Path:
        """The file that holds an object."""
        return self.root / check_key(key)

    def put(self, key: str, data: bytes, content_type: str) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def get(self, key: str) -> bytes:
        try:
            return self.path(key).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"no object {key!r}") from None

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def delete_prefix(self, prefix: str) -> int:
        folder = self.path(prefix.rstrip("/"))
        if not folder.is_dir():
            return 0
        count = sum(1 for p in folder.rglob("*") if p.is_file())
        shutil.rmtree(folder, ignore_errors=True)
        return count

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".ready-{secrets.token_hex(4)}"
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as exc:
            raise Unavailable(f"local store {self.root} is not writable: {exc}") from exc

    # --- signed URLs ------------------------------------------------------------------------
    def _signature(self, key: str, expires: int) -> str:
        if self._key is None:
            raise RuntimeError("this LocalStore has no signing key (workers never sign URLs)")
        message = f"{key}\n{expires}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def signed_url(self, key: str, *, expires_in: int, base_url: str) -> SignedUrl:
        check_key(key)
        expires = int(time.time()) + expires_in
        query = urlencode({"expires": expires, "signature": self._signature(key, expires)})
        return SignedUrl(url=f"{base_url.rstrip('/')}/v1/files/{quote(key)}?{query}", expires_at=expires)

    def verify(self, key: str, expires: int, signature: str) -> bool:
        """Whether a signature is valid for this key and has not expired."""
        if expires < time.time():
            return False
        return hmac.compare_digest(self._signature(key, expires).encode(), signature.encode())
