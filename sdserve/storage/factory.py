"""``open_store``: the object store the settings name, for every process's composition root."""

from __future__ import annotations

from sdserve.settings import Settings
from sdserve.storage.base import ObjectStore
from sdserve.storage.local import LocalStore


def open_store(settings: Settings, *, signing_key: bytes | None) -> ObjectStore:
    """Local files (URLs signed with ``signing_key``) or S3 (presigned URLs).

    Workers pass ``signing_key=None``: they write objects and never sign URLs. The gateway and the webhook
    dispatcher sign: both must get the same key (``sdserve.secrets.url_signing_key``).
    """
    if settings.store == "local":
        return LocalStore(settings.objects_dir, signing_key)
    from sdserve.storage.s3 import S3Store

    return S3Store.from_settings(settings)
