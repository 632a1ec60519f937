"""Textual-inversion embeddings: the registry's loaded with their model (their tokens simply work in its
prompts), a key's own loaded for one job and forgotten after it.

``load_textual_inversion`` teaches the tokenizer(s) and text encoder(s) each embedding's token; an SDXL
embedding holds one vector set per text encoder (``clip_l``, ``clip_g``). A job's own embeddings live in an
``EmbeddingScope``: their tokens (a multi-vector one's ``<t>_1``, ``<t>_2``, … too) are unloaded when the
scope ends, whatever happened, so the warm pipeline never keeps another key's token and the next job runs on
exactly the vocabulary it had before.
"""

from __future__ import annotations

import logging
import re
from types import TracebackType
from typing import Any

from safetensors.torch import load_file

from sdserve.contract.problems import WEIGHTS_LOAD_FAILED, JobFailed
from sdserve.registry import EmbeddingSpec
from worker.models.loras import FileResolver

log = logging.getLogger(__name__)


class EmbeddingLoadFailed(JobFailed):
    """An embedding file could not be loaded."""

    problem = WEIGHTS_LOAD_FAILED


def load_embedding(pipe: Any, spec: EmbeddingSpec, resolve: FileResolver) -> None:
    """Teach a pipeline's tokenizer(s) and text encoder(s) one embedding's token."""
    path = resolve(spec.file, spec.sha256)
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


def load_embeddings(pipe: Any, embeddings: list[EmbeddingSpec], resolve: FileResolver) -> None:
    """Teach a pipeline's tokenizer(s) and text encoder(s) the embeddings' tokens."""
    for spec in embeddings:
        load_embedding(pipe, spec, resolve)


def _encoders(pipe: Any) -> list[tuple[Any, Any]]:
    pairs = [(pipe.tokenizer, pipe.text_encoder)]
    if getattr(pipe, "tokenizer_2", None) is not None and getattr(pipe, "text_encoder_2", None) is not None:
        pairs.append((pipe.tokenizer_2, pipe.text_encoder_2))
    return pairs


def forget_embeddings(pipe: Any, embeddings: list[EmbeddingSpec]) -> None:
    """Unload embeddings' tokens (and a multi-vector one's ``<t>_<i>``) from every tokenizer and text encoder."""
    for tokenizer, text_encoder in _encoders(pipe):
        added = set(tokenizer.get_added_vocab())
        tokens = [
            word
            for spec in embeddings
            for word in added
            if word == spec.token or re.fullmatch(re.escape(spec.token) + r"_\d+", word)
        ]
        if tokens:
            pipe.unload_textual_inversion(tokens, tokenizer=tokenizer, text_encoder=text_encoder)


class EmbeddingScope:
    """A job's own embeddings, known to the pipeline for the length of a ``with`` block only."""

    def __init__(self, pipe: Any, embeddings: list[EmbeddingSpec], resolve: FileResolver) -> None:
        self.pipe = pipe
        self.embeddings = embeddings
        self.resolve = resolve
        self.loaded: list[EmbeddingSpec] = []

    def __enter__(self) -> EmbeddingScope:
        try:
            for spec in self.embeddings:
                if any(spec.token in tokenizer.get_vocab() for tokenizer, _ in _encoders(self.pipe)):
                    raise EmbeddingLoadFailed(f"embedding {spec.name!r}: its token {spec.token} is taken already")
                self.loaded.append(spec)  # before loading: a half-taught token is unloaded too
                load_embedding(self.pipe, spec, self.resolve)
        except BaseException:
            self._forget()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._forget()

    def _forget(self) -> None:
        if self.loaded:
            forget_embeddings(self.pipe, self.loaded)
            self.loaded = []
