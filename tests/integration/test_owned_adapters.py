"""Adapters owned by an API key (what a training makes): usable by name by that key at once, by no other.

Real files (a PEFT LoRA for the tiny UNet saved with ``save_lora_weights``, a textual-inversion embedding) in
the test's object store, registered through ``SyncOwnedAdapters`` as a training's commit does, then used over
HTTP and run by a real worker on the warm pipelines. Effects are judged on decoded pixels.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import torch
from safetensors.torch import save_file

from app.main import create_app
from sdserve.access.api_keys import hash_key, new_key
from sdserve.images.requests import parse_request
from sdserve.keys import Keys
from sdserve.registry import Registry
from sdserve.registry.owned import OwnedAdapter, SyncOwnedAdapters
from sdserve.settings import Settings
from sdserve.storage.factory import open_store
from tests.conftest import LiveServer, run_burst
from tests.images import decode
from worker.images.batching import batch_key
from worker.models.builtin import ensure_builtin

ALICE, BOB, CAROL = new_key(), new_key(), new_key()
BASE = {"prompt": "a lighthouse at dusk", "width": 64, "height": 64, "steps": 2, "guidance_scale": 1.0, "seed": 77}
"""Small and without classifier-free guidance (one UNet pass a step): the effects show all the same."""


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def peft_loras(models_dir: Path, folder: Path, seeds: list[int]) -> list[bytes]:
    """Small nonzero LoRAs for the tiny UNet, in diffusers' PEFT layout (as a LoRA training saves them)."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = UNet2DConditionModel.from_pretrained(ensure_builtin("tiny", models_dir), subfolder="unet")
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    made = []
    for seed in seeds:
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, param in unet.named_parameters():
                if "lora_" in name:
                    param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
        layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
        StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=layers, safe_serialization=True)
        made.append((folder / "pytorch_lora_weights.safetensors").read_bytes())
    return made


@pytest.fixture(scope="module")
def files(models_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Two different LoRAs and an embedding (``{token: vectors}``, as diffusers' textual-inversion script saves)."""
    alice, bob = peft_loras(models_cache, tmp_path_factory.mktemp("loras"), [1, 2])
    vectors = torch.randn(1, 32, generator=torch.Generator().manual_seed(3)) * 3
    target = tmp_path_factory.mktemp("ti") / "learned_embeds.safetensors"
    save_file({"<glint>": vectors.contiguous()}, str(target))
    return {"alice": alice, "bob": bob, "embedding": target.read_bytes()}


@pytest.fixture
def keyed(settings: Settings) -> Settings:
    keys = [f"alice:{hash_key(ALICE)}", f"bob:{hash_key(BOB)}", f"carol:{hash_key(CAROL)}"]
    return settings.model_copy(update={"api_keys": keys, "worker_models": ["tiny"]})


@pytest.fixture
def url(keyed: Settings, redis_client: redis.Redis) -> Iterator[str]:
    with LiveServer(create_app(keyed)) as server:
        yield server.url


@pytest.fixture
def owned(keyed: Settings, redis_client: redis.Redis) -> SyncOwnedAdapters:
    return SyncOwnedAdapters(redis_client, Keys(keyed.key_prefix))


def register(
    settings: Settings, owned: SyncOwnedAdapters, owner: str, name: str, data: bytes, *, token: str | None = None,
    sha256: str | None = None,
) -> OwnedAdapter:  # fmt: skip
    """What a training does when it succeeds: reserve at submit, store the file, commit."""
    training = f"training-{owner}-{name}"
    kind = "embedding" if token else "lora"
    assert owned.reserve(owner, kind, name, training, token=token)
    key = f"trainings/{training}/{name}.safetensors"
    open_store(settings, signing_key=None).put(key, data, "application/octet-stream")
    adapter = OwnedAdapter(
        kind=kind, name=name, owner=owner, training_id=training, family="sd1", base_models=["tiny"],
        file=f"store:{key}", sha256=sha256 or hashlib.sha256(data).hexdigest(), size_bytes=len(data), token=token,
    )  # fmt: skip
    committed = owned.commit(adapter)
    assert committed is not None and committed.created_at > 0
    return committed


def submit(url: str, key: str, body: dict[str, Any]) -> str:
    answer = httpx.post(f"{url}/v1/txt2img", json=body, headers=auth(key))
    assert answer.status_code == 202, answer.text
    job_id: str = answer.json()["id"]
    return job_id


def job(url: str, key: str, job_id: str) -> dict[str, Any]:
    found: dict[str, Any] = httpx.get(f"{url}/v1/jobs/{job_id}", headers=auth(key)).json()
    return found


def pixels(found: dict[str, Any]) -> bytes:
    assert found["status"] == "succeeded", found
    return decode(httpx.get(found["images"][0]["url"]).content).convert("RGB").tobytes()


def test_an_owned_lora_works_for_its_owner_only(
    url: str, keyed: Settings, owned: SyncOwnedAdapters, files: dict[str, bytes], redis_client: redis.Redis,
    pipelines: Any,
) -> None:  # fmt: skip
    mine = register(keyed, owned, "alice", "mystyle", files["alice"])
    theirs = register(keyed, owned, "bob", "mystyle", files["bob"])  # the same name, another key's own

    listed = httpx.get(f"{url}/v1/loras", headers=auth(ALICE)).json()
    own = [lora for lora in listed["data"] if lora.get("owned")]
    assert [(o["name"], o["training_id"]) for o in own] == [("mystyle", mine.training_id)]
    assert not [lo for lo in listed["data"] if lo["name"] == "tiny-detail" and lo["owned"]]
    assert [(o["name"], o["training_id"]) for o in httpx.get(f"{url}/v1/loras", headers=auth(BOB)).json()["data"]
            if o["owned"]] == [("mystyle", theirs.training_id)]  # fmt: skip
    assert not [o for o in httpx.get(f"{url}/v1/loras", headers=auth(CAROL)).json()["data"] if o["owned"]]

    # Another key naming it gets exactly what an unknown name gets (no existence leak).
    def refused(name: str) -> Any:
        answer = httpx.post(f"{url}/v1/txt2img", json={**BASE, "loras": [{"name": name}]}, headers=auth(CAROL))
        assert answer.status_code == 422
        body = {k: v for k, v in answer.json().items() if k not in ("instance", "request_id")}
        return json.loads(json.dumps(body).replace(name, "NAME"))

    assert refused("mystyle") == refused("nosuchlora")
    assert refused("mystyle")["type"] == "/problems/unknown-name"

    lora = {**BASE, "loras": [{"name": "mystyle"}]}
    ids = [
        submit(url, ALICE, BASE),
        submit(url, ALICE, lora),
        submit(url, ALICE, BASE),  # right after: the bare model again
        submit(url, ALICE, {**BASE, "loras": [{"name": "mystyle", "scale": 0.0}]}),
        submit(url, BOB, lora),
        submit(url, ALICE, lora),  # again: the file is not fetched twice, the LoRA stays resident
    ]
    downloads = pipelines.stored_files.downloads
    run_burst(keyed, redis_client, pipelines)
    base, with_lora, after, zero, bobs, again = (job(url, BOB if i == ids[4] else ALICE, i) for i in ids)
    assert pixels(with_lora) != pixels(base)
    assert pixels(after) == pixels(base)
    assert pixels(zero) == pixels(base)
    assert pixels(bobs) not in (pixels(base), pixels(with_lora))  # bob's own weights, not alice's
    assert pixels(again) == pixels(with_lora)
    assert pipelines.stored_files.downloads - downloads <= 2  # one per file (none if an earlier run fetched it)

    refs = with_lora["request"]["owned_adapters"]
    assert refs == [{"kind": "lora", "name": "mystyle", "token": None, "file": mine.file, "sha256": mine.sha256}]
    assert bobs["request"]["owned_adapters"][0]["sha256"] == theirs.sha256
    assert with_lora["request"]["loras"] == [{"name": "mystyle", "scale": 1.0}]  # its default scale, resolved
    manifest = httpx.get(with_lora["manifest_url"]).json()
    assert [(a["name"], a["sha256"], a["file"]) for a in manifest["loras"]] == [("mystyle", mine.sha256, mine.file)]
    resident = pipelines.load("tiny").loras.resident
    assert {f"sha256-{mine.sha256}", f"sha256-{theirs.sha256}"} <= set(resident)

    # Two keys' adapters of one name never share a batch; the same key's same adapter does.
    registry = Registry.load(None, "tiny")
    keys = Keys(keyed.key_prefix)
    requests = {i: parse_request(json.loads(redis_client.hget(keys.job(i), "request"))) for i in ids}
    assert batch_key(requests[ids[1]], registry) != batch_key(requests[ids[4]], registry)
    assert batch_key(requests[ids[1]], registry) == batch_key(requests[ids[5]], registry)


def test_a_client_cannot_point_a_job_at_a_file(url: str, keyed: Settings, owned: SyncOwnedAdapters) -> None:
    """`owned_adapters` is the service's to fill: whatever a request puts there is replaced."""
    body = {**BASE, "owned_adapters": [
        {"kind": "lora", "name": "x", "file": "store:trainings/other/x.safetensors", "sha256": "0" * 64}
    ]}  # fmt: skip
    answer = httpx.post(f"{url}/v1/txt2img", json=body, headers=auth(ALICE))
    assert answer.status_code == 202, answer.text
    assert answer.json()["request"]["owned_adapters"] == []


def test_an_owned_embedding_works_for_its_owner_only_and_leaves_no_trace(
    url: str, keyed: Settings, owned: SyncOwnedAdapters, files: dict[str, bytes], redis_client: redis.Redis,
    pipelines: Any,
) -> None:  # fmt: skip
    register(keyed, owned, "alice", "glint", files["embedding"], token="<glint>")
    listed = httpx.get(f"{url}/v1/loras", headers=auth(ALICE)).json()["embeddings"]
    assert [(e["token"], e["owned"]) for e in listed if e["owned"]] == [("<glint>", True)]
    assert not [e for e in httpx.get(f"{url}/v1/loras", headers=auth(BOB)).json()["embeddings"] if e["owned"]]

    pipe = pipelines.load("tiny").pipe
    vocabulary = dict(pipe.tokenizer.get_vocab())
    rows = pipe.text_encoder.get_input_embeddings().weight.shape[0]
    glint = {**BASE, "prompt": "a <glint> lighthouse at dusk"}
    ids = [
        (ALICE, submit(url, ALICE, BASE)),
        (ALICE, submit(url, ALICE, glint)),
        (BOB, submit(url, BOB, BASE)),  # right after: the pipeline does not know <glint> any more
        (BOB, submit(url, BOB, glint)),  # to bob, <glint> is plain text
    ]
    run_burst(keyed, redis_client, pipelines)
    before, alices, after, bobs = (job(url, key, i) for key, i in ids)
    assert pixels(alices) != pixels(before)
    assert pixels(after) == pixels(before)
    assert pixels(bobs) not in (pixels(alices), pixels(before))
    assert [r["token"] for r in alices["request"]["owned_adapters"]] == ["<glint>"]
    assert bobs["request"]["owned_adapters"] == []
    assert dict(pipe.tokenizer.get_vocab()) == vocabulary  # the registry's <tiny-sparkle> kept, <glint> gone
    assert pipe.text_encoder.get_input_embeddings().weight.shape[0] == rows


def test_a_file_that_is_not_the_committed_one_fails_the_job(
    url: str, keyed: Settings, owned: SyncOwnedAdapters, files: dict[str, bytes], redis_client: redis.Redis,
    pipelines: Any,
) -> None:  # fmt: skip
    register(keyed, owned, "alice", "tampered", files["alice"], sha256="f" * 64)
    job_id = submit(url, ALICE, {**BASE, "loras": [{"name": "tampered"}]})
    run_burst(keyed, redis_client, pipelines)
    failed = job(url, ALICE, job_id)
    assert failed["status"] == "failed" and failed["error"]["type"] == "/problems/adapter-load-failed", failed


def test_users_are_the_queued_jobs_and_delete_waits_for_them(
    url: str, keyed: Settings, owned: SyncOwnedAdapters, files: dict[str, bytes]
) -> None:
    adapter = register(keyed, owned, "alice", "busy", files["alice"])
    job_id = submit(url, ALICE, {**BASE, "loras": [{"name": "busy"}]})
    assert owned.users("alice", "busy") == [job_id]
    refused = owned.delete("alice", "busy")
    assert refused.deleted is None and refused.users == [job_id]
    canceled = httpx.post(f"{url}/v1/jobs/{job_id}/cancel", headers=auth(ALICE))
    assert canceled.json()["status"] == "canceled"
    assert owned.users("alice", "busy") == []
    assert owned.delete("alice", "busy").deleted == adapter
    gone = httpx.post(f"{url}/v1/txt2img", json={**BASE, "loras": [{"name": "busy"}]}, headers=auth(ALICE))
    assert gone.status_code == 422 and gone.json()["type"] == "/problems/unknown-name"
    assert not [o for o in httpx.get(f"{url}/v1/loras", headers=auth(ALICE)).json()["data"] if o["owned"]]


def test_reservations(owned: SyncOwnedAdapters, redis_client: redis.Redis, keyed: Settings) -> None:
    registry = Registry.load(None, "tiny")
    assert owned.reserve("alice", "lora", "mine", "t1", registry=registry)
    assert owned.reserve("alice", "lora", "mine", "t1", registry=registry)  # the same training again
    second = owned.reserve("alice", "lora", "mine", "t2", registry=registry)
    assert not second and "mine" in second.reason
    assert owned.reserve("bob", "lora", "mine", "t3", registry=registry)  # names are per owner
    assert not owned.reserve("alice", "lora", "tiny-detail", "t4", registry=registry)  # a deployment LoRA's
    assert not owned.reserve("alice", "embedding", "e", "t5", token="<tiny-sparkle>", registry=registry)
    assert owned.reserve("alice", "embedding", "e", "t5", token="<tok>", registry=registry)
    assert not owned.reserve("alice", "embedding", "f", "t6", token="<tok>", registry=registry)  # her token
    assert owned.reserve("bob", "embedding", "f", "t7", token="<tok>", registry=registry)
    assert owned.get("alice", "mine") is None and owned.list_owned("alice") == []  # reserved is not usable

    # A training that failed holds nothing; a released reservation neither; only the holder releases.
    redis_client.hset(Keys(keyed.key_prefix).job("t1"), "status", "failed")
    assert owned.reserve("alice", "lora", "mine", "t8", registry=registry)
    assert not owned.release("alice", "mine", "t1") and owned.release("alice", "mine", "t8")
    assert owned.reserve("alice", "lora", "mine", "t9", registry=registry)
    adapter = OwnedAdapter(
        kind="lora", name="mine", owner="alice", training_id="t2", family="sd1",
        file="store:trainings/t2/mine.safetensors", sha256="a" * 64, size_bytes=1,
    )  # fmt: skip
    assert owned.commit(adapter) is None  # not the training that holds the name
    assert owned.commit(adapter.model_copy(update={"training_id": "t9"})) is not None
    assert [a.name for a in owned.list_owned("alice")] == ["mine"] and owned.list_owned("carol") == []
