"""The registry: what can be asked for (models, LoRAs, embeddings, styles), and the process's holder of it."""

from sdserve.registry.holder import RegistryHolder
from sdserve.registry.registry import Registry
from sdserve.registry.specs import EmbeddingSpec, Family, LoraSpec, ModelSpec

__all__ = ["EmbeddingSpec", "Family", "LoraSpec", "ModelSpec", "Registry", "RegistryHolder"]
