"""A key's own adapters at resolution: found by name after the registry, carried by file and digest."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.images.resolve import Owned, check_request, owned_lora_names, owned_token_candidates, resolve_request
from sdserve.contract.problems import InvalidRequest, UnknownName
from sdserve.images.requests import Txt2ImgRequest
from sdserve.registry import Registry
from sdserve.registry.owned import OwnedAdapter, registry_conflict

REGISTRY = Registry.load(None, "tiny")


def adapter(name: str, **fields: object) -> OwnedAdapter:
    values: dict[str, object] = {
        "kind": "lora", "name": name, "owner": "alice", "training_id": f"t-{name}", "family": "sd1",
        "file": f"store:trainings/t-{name}/{name}.safetensors", "sha256": "ab" * 32, "size_bytes": 10,
    }  # fmt: skip
    return OwnedAdapter.model_validate(values | fields)


def test_an_owned_lora_resolves_with_its_file_digest_and_default_scale() -> None:
    mine = adapter("mystyle", default_scale=0.6)
    loras = [{"name": "mystyle"}, {"name": "tiny-detail"}]
    request = Txt2ImgRequest.model_validate({"prompt": "a cat", "loras": loras})
    assert owned_lora_names(request, REGISTRY) == ["mystyle"]
    owned = Owned(loras={"mystyle": mine})
    out = resolve_request(request, check_request(request, REGISTRY, owned), REGISTRY, owned=owned)
    assert [(r.name, r.scale) for r in out.loras] == [("mystyle", 0.6), ("tiny-detail", 1.0)]
    assert [(r.kind, r.name, r.file, r.sha256) for r in out.owned_adapters] == [
        ("lora", "mystyle", mine.file, mine.sha256)
    ]


def test_without_it_the_name_is_unknown_and_a_sent_file_is_replaced() -> None:
    request = Txt2ImgRequest.model_validate(
        {
            "prompt": "a cat",
            "owned_adapters": [{"kind": "lora", "name": "x", "file": "store:a/x.safetensors", "sha256": "0" * 64}],
        }
    )
    assert resolve_request(request, check_request(request, REGISTRY), REGISTRY).owned_adapters == []
    named = Txt2ImgRequest.model_validate({"prompt": "a cat", "loras": [{"name": "mystyle"}]})
    with pytest.raises(UnknownName) as refused:
        check_request(named, REGISTRY)
    assert refused.value.errors[0].field == "body.loras.0.name"
    with pytest.raises(UnknownName):  # an embedding of that name is no LoRA
        check_request(named, REGISTRY, Owned(loras={"mystyle": adapter("mystyle", kind="embedding", token="<m>")}))
    with pytest.raises(InvalidRequest):  # made for another family
        check_request(named, REGISTRY, Owned(loras={"mystyle": adapter("mystyle", family="sdxl")}))


def test_embeddings_by_their_tokens_in_the_prompts() -> None:
    request = Txt2ImgRequest(prompt="a <glint> cat <tiny-sparkle>", negative_prompt="<dull>, <glint>")
    assert owned_token_candidates(request, REGISTRY) == ["<dull>", "<glint>"]  # the registry's token is not asked
    glint = adapter("glint", kind="embedding", token="<glint>")
    other = adapter("xl", kind="embedding", token="<dull>", family="sdxl")  # fits no tiny job: plain text
    owned = Owned(embeddings=[glint, other])
    out = resolve_request(request, check_request(request, REGISTRY, owned), REGISTRY, owned=owned)
    assert [(r.kind, r.token) for r in out.owned_adapters] == [("embedding", "<glint>")]


def test_the_record_and_the_registry_conflicts() -> None:
    with pytest.raises(ValidationError):
        adapter("x", file="/etc/passwd.safetensors")  # only the object store
    with pytest.raises(ValidationError):
        adapter("x", file="store:../x.safetensors")
    with pytest.raises(ValidationError):
        adapter("x", kind="embedding")  # an embedding has a token
    with pytest.raises(ValidationError):
        adapter("x", token="<x>")  # a LoRA has none
    assert registry_conflict(REGISTRY, "tiny-detail", None)
    assert registry_conflict(REGISTRY, "tiny-sparkle", None)
    assert registry_conflict(REGISTRY, "mine", "<tiny-sparkle>")
    assert registry_conflict(REGISTRY, "mine", "<mine>") is None
