"""A finished training's adapter becomes its owner's (``sdserve.registry.owned``): usable by name at once."""

from __future__ import annotations

import logging

import redis

from sdserve.keys import Keys
from sdserve.registry.owned import OwnedAdapter, SyncOwnedAdapters
from sdserve.registry.specs import Family
from sdserve.trainings.view import StoredAdapter

log = logging.getLogger(__name__)


def register_adapter(
    connection: redis.Redis,
    keys: Keys,
    *,
    owner: str,
    training_id: str,
    adapter: StoredAdapter,
    family: Family,
    base_model: str,
) -> OwnedAdapter | None:
    """Turn the training's reservation into the adapter; None (and a warning) when it holds none any more (the
    training was deleted meanwhile: its files go with it)."""
    owned = OwnedAdapter(
        kind=adapter.kind, name=adapter.name, owner=owner, training_id=training_id,
        file=f"store:{adapter.key}", sha256=adapter.sha256, size_bytes=adapter.bytes, family=family,
        base_models=[base_model], trigger_words=adapter.trigger_words, token=adapter.token,
        description=f"trained by training {training_id}",
    )  # fmt: skip
    committed = SyncOwnedAdapters(connection, keys).commit(owned)
    if committed is None:
        log.warning("training %s holds no reservation of %r any more: not registered", training_id, adapter.name)
    return committed
