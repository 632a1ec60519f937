"""API keys: who may call, with which scopes and limits.

Keys are never stored: the keys file (TOML) and the ``SDSERVE_API_KEYS`` setting hold the SHA-256 of
each key, with a name (the owner of the jobs it creates), its scopes and its limits. ``sdserve keys new``
makes a key and prints the entry to paste. A request's ``Authorization: Bearer <key>`` is hashed and
looked up; no key material is ever logged.

Keys file::

    [keys.acme-prod]
    sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    scopes = ["jobs"]          # "jobs": create and follow jobs; "admin": operations endpoints
    rate_per_minute = 600      # job creations and uploads (token bucket); default: the settings'
    burst = 60
    max_active_jobs = 200      # queued + running at once
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import secrets
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sdserve.contract.limits import NAME_PATTERN
from sdserve.contract.problems import InvalidRequest

Scope = Literal["jobs", "admin"]
KEY_PREFIX = "sk_"
_HEX = re.compile(r"^[0-9a-f]{64}$")


def hash_key(key: str) -> str:
    """The SHA-256 (hex) under which a key is configured."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    """A fresh API key: ``sk_`` and 43 URL-safe characters (256 bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


class ApiKey(BaseModel):
    """One configured key (by its hash)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN)
    sha256: str = Field(pattern=_HEX.pattern)
    scopes: frozenset[Scope] = frozenset({"jobs"})
    rate_per_minute: int | None = Field(default=None, ge=1)
    burst: int | None = Field(default=None, ge=1)
    max_active_jobs: int | None = Field(default=None, ge=1)


class KeyRing:
    """Configured keys, looked up by the hash of what a caller presents."""

    def __init__(self, keys: Iterable[ApiKey]) -> None:
        self.by_hash = {key.sha256: key for key in keys}
        names = [key.name for key in self.by_hash.values()]
        if len(names) != len(set(names)):
            raise InvalidRequest("two API keys share a name")

    def __len__(self) -> int:
        return len(self.by_hash)

    def find(self, presented: str) -> ApiKey | None:
        """The key a bearer token is, or None (the lookup is by hash: no timing on the secret)."""
        return self.by_hash.get(hash_key(presented))

    @classmethod
    def load(cls, file: Path | None, inline: Iterable[str]) -> KeyRing:
        """Keys from the keys file and from ``name:sha256[:scope+scope]`` entries of the settings."""
        keys: list[ApiKey] = []
        try:
            if file is not None:
                raw = tomllib.loads(file.read_text())
                for name, fields in raw.get("keys", {}).items():
                    keys.append(ApiKey.model_validate({**fields, "name": name}))
            for entry in inline:
                name, _, rest = entry.partition(":")
                digest, _, scopes = rest.partition(":")
                fields = {"name": name, "sha256": digest.lower(), "scopes": scopes.split("+") if scopes else ["jobs"]}
                keys.append(ApiKey.model_validate(fields))
        except (OSError, tomllib.TOMLDecodeError, ValidationError) as exc:
            raise InvalidRequest(f"API keys: {exc}") from exc
        return cls(keys)


def is_loopback(host: str) -> bool:
    """Whether a bind address only accepts local connections."""
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
