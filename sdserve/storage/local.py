"""The local object store: objects as files under one directory, served by the gateway through HMAC-signed,
expiring URLs (``GET /v1/files/<key>?expires=…&signature=…``)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path
from urllib.parse import quote, urlencode

from sdserve.contract.problems import NotFound, StorageFull, Unavailable
from sdserve.storage.base import SignedUrl, check_key

_FULL = {errno.ENOSPC, errno.EDQUOT}


def _failure(exc: OSError, what: str) -> Exception:
    if exc.errno in _FULL:
        return StorageFull(f"the local store is full: cannot write {what}", retry_after=30)
    return Unavailable(f"the local store cannot write {what}: {exc.strerror}", retry_after=5)


class LocalStore:
    """Objects as files under one directory; URLs signed with HMAC-SHA256 and served by the gateway."""

    def __init__(self, root: Path, signing_key: bytes | None = None) -> None:
        self.root = root
        self._key = signing_key

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def path(self, key: str) -> Path:
        """The file that holds an object."""
        return self.root / check_key(key)

    def put(self, key: str, data: bytes, content_type: str) -> None:
        path = self.path(key)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tmp.open("wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)  # a failed write leaves nothing behind
            raise _failure(exc, repr(key)) from exc

    def get(self, key: str) -> bytes:
        try:
            return self.path(key).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"no object {key!r}") from None

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def delete(self, key: str) -> bool:
        try:
            self.path(key).unlink()
        except FileNotFoundError:
            return False
        return True

    def delete_prefix(self, prefix: str) -> int:
        folder = self.path(prefix.rstrip("/"))
        if not folder.is_dir():
            return 0
        deleted = 0
        for path in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            try:
                if path.is_dir() and not path.is_symlink():
                    path.rmdir()
                else:
                    path.unlink()
                    deleted += 1
            except FileNotFoundError:
                continue  # deleted meanwhile by someone else: not ours to count
        with contextlib.suppress(FileNotFoundError):
            folder.rmdir()
        return deleted

    def check(self) -> None:
        probe = self.root / f".ready-{secrets.token_hex(4)}"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"ok")
        except OSError as exc:
            with contextlib.suppress(OSError):  # the root may be no folder at all (then there is no probe)
                probe.unlink(missing_ok=True)
            if exc.errno in _FULL:
                raise StorageFull(f"local store {self.root} is full", retry_after=30) from exc
            raise Unavailable(f"local store {self.root} is not writable: {exc}") from exc
        probe.unlink()

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
