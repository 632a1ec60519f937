"""Textual-inversion embeddings, loaded with their model: their tokens simply work in its prompts.

``load_textual_inversion`` teaches the tokenizer(s) and text encoder(s) each embedding's token; an SDXL
embedding holds one vector set per text encoder (``clip_l``, ``clip_g``).
"""

from __future__ import annotations

import logging
from typing import Any

from safetensors.torch import load_file

from sdserve.contract.problems import WEIGHTS_LOAD_FAILED, JobFailed
from sdserve.registry import EmbeddingSpec
from worker.models.loras import FileResolver

log = logging.getLogger(__name__)


class EmbeddingLoadFailed(JobFailed):
    """An embedding file could not be loaded."""

    problem = WEIGHTS_LOAD_FAILED


def load_embeddings(pipe: Any, embeddings: list[EmbeddingSpec], resolve: FileResolver) -> None:
    """Teach a pipeline's tokenizer(s) and text encoder(s) the embeddings' tokens."""
    for spec in embeddings:
        path = resolve(spec.file)
        try:
            tensors = load_file(str(path))
            if "clip_l" in tensors and "clip_g" in tensors:  # SDXL: one vector set per text encoder
                pipe.load_textual_inversion(
                    tensors["clip_l"], token=spec.token, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer
                )
                pipe.load_textual_inversion(
                    tensors["clip_g"], token=spec.token, text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2
                )
            else:
                pipe.load_textual_inversion(str(path), token=spec.token)
        except Exception as exc:
            log.exception("loading embedding %s from %s failed", spec.name, path)
            raise EmbeddingLoadFailed(f"embedding {spec.name!r} could not be loaded") from exc
        log.info("loaded embedding %s (token %s)", spec.name, spec.token)
