"""After a registry reload, every part of a worker reads the new registry: its runtime, its pipelines and its
batcher (which once kept the registry it was built with, and batched on stale styles)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import redis

from sdserve.keys import Keys
from sdserve.registry import Registry, RegistryHolder
from sdserve.settings import Settings
from worker.images.batching import Batcher, batch_key
from worker.main import RegistryWatch

STYLE_WITHOUT_NEGATIVE = """
[styles.house]
prompt = "{prompt}, in the house style"
"""
STYLE_WITH_NEGATIVE = """
[styles.house]
prompt = "{prompt}, in the house style"
negative_prompt = "blurry"
"""


def test_a_reload_reaches_the_batcher(settings: Settings, redis_client: redis.Redis, tmp_path: Path) -> None:
    from sdserve.images.requests import Txt2ImgRequest

    registry_file = tmp_path / "registry.toml"
    registry_file.write_text(STYLE_WITHOUT_NEGATIVE)
    holder = RegistryHolder(lambda: Registry.load(registry_file, "tiny"))
    keys = Keys(settings.key_prefix)
    batcher = Batcher(redis_client, keys, holder, max_images=4, linger_ms=0)
    styled = Txt2ImgRequest(prompt="x", model="tiny", width=64, height=64, steps=2, scheduler="euler",
                            guidance_scale=7.0, seed=1, style="house")  # fmt: skip
    plain = styled.model_copy(update={"style": None})
    assert batch_key(styled, holder.current) == batch_key(plain, holder.current)  # no negative prompt either way

    registry_file.write_text(STYLE_WITH_NEGATIVE)
    watch = RegistryWatch(redis_client, keys, holder)
    redis_client.incr(keys.registry_version())  # what POST /v1/admin/registry/reload does
    watch.check()
    assert batcher.holder.current is holder.current
    assert batch_key(styled, batcher.holder.current) != batch_key(plain, batcher.holder.current)


def test_the_admin_reload_reaches_a_running_worker(
    settings: Settings, redis_client: redis.Redis, tmp_path: Path, pipelines: Any
) -> None:
    from app.main import create_app
    from tests.conftest import LiveServer, worker_parts
    from worker.main import make_worker

    registry_file = tmp_path / "registry.toml"
    registry_file.write_text("")
    local = settings.model_copy(update={"registry_file": registry_file, "api_keys": []})
    parts = worker_parts(local, pipelines)
    parts.holder = RegistryHolder(lambda: Registry.load(registry_file, "tiny"))
    worker = make_worker(parts, redis_client)
    watch = next(chore for _, chore in worker.ticks if getattr(chore, "__self__", None).__class__ is RegistryWatch)
    with LiveServer(create_app(local)) as server, httpx.Client(base_url=server.url) as client:
        assert "house" not in {s["name"] for s in client.get("/v1/styles").json()["data"]}
        registry_file.write_text(STYLE_WITH_NEGATIVE)
        assert client.post("/v1/admin/registry/reload").status_code == 200
        assert "house" in {s["name"] for s in client.get("/v1/styles").json()["data"]}
    watch()
    assert "house" in parts.holder.current.styles
    from worker.engine import slot

    slot.install(None)
