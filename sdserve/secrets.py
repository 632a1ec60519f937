"""Secrets a deployment may leave unset: generated once, kept in the data directory, read after.

Called from the composition roots (the gateway and the webhook dispatcher), never as a side effect of
reading settings. A generated secret is written once with mode 0600 and never overwritten, so restarts, and
several processes sharing the data directory, agree on it.
"""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import Callable
from pathlib import Path

from sdserve.settings import Settings


def webhook_signing_secret(settings: Settings) -> str:
    """The Standard Webhooks secret: the configured one, or one generated once and kept in data_dir."""
    if settings.webhook_secret is not None:
        return settings.webhook_secret.get_secret_value()
    return "whsec_" + kept_secret(
        settings.data_dir / "webhook-secret.key", lambda: base64.b64encode(secrets.token_bytes(24)).decode()
    )


def url_signing_key(settings: Settings) -> bytes:
    """The HMAC key of the local store's signed URLs: the configured secret, or one kept in data_dir."""
    if settings.url_signing_secret is not None:
        return settings.url_signing_secret.get_secret_value().encode()
    return kept_secret(settings.data_dir / "url-signing.key", lambda: secrets.token_urlsafe(32)).encode()


def kept_secret(path: Path, make: Callable[[], str]) -> str:
    """A secret generated once, written with mode 0600 at ``path``, and read from there after."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        tmp.write_text(make())
        tmp.chmod(0o600)
        try:
            os.link(tmp, path)  # atomic and never overwrites: the first writer wins
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_text().strip()
