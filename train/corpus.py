"""The training corpus in memory: rendered images (in parallel processes) and token ids."""

from __future__ import annotations

import multiprocessing as mp
from typing import Any

import numpy as np

from train.dataset import SIZE, render_chunk

CHUNK = 500


def _render(args: tuple[int, int, int]) -> tuple[int, np.ndarray, list[str]]:
    seed, start, count = args
    images, captions = render_chunk(seed, start, count)
    return start, images, captions


def render_corpus(seed: int, count: int, workers: int) -> tuple[np.ndarray, list[str]]:
    """Samples ``0 .. count-1`` of dataset ``seed`` as a (count, 256, 256, 3) uint8 array and captions.

    Call this before CUDA is initialised: the worker processes are forked.
    """
    images = np.empty((count, SIZE, SIZE, 3), dtype=np.uint8)
    captions: list[str] = [""] * count
    jobs = [(seed, start, min(CHUNK, count - start)) for start in range(0, count, CHUNK)]
    if workers <= 1:
        results: Any = map(_render, jobs)
        for start, chunk, caps in results:
            images[start : start + len(caps)] = chunk
            captions[start : start + len(caps)] = caps
        return images, captions
    with mp.get_context("fork").Pool(workers) as pool:
        for start, chunk, caps in pool.imap_unordered(_render, jobs):
            images[start : start + len(caps)] = chunk
            captions[start : start + len(caps)] = caps
    return images, captions


def tokenize(tokenizer: Any, captions: list[str]) -> np.ndarray:
    """Token ids padded to the tokenizer's 77, exactly as StableDiffusionPipeline encodes a prompt."""
    out = tokenizer(
        captions,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="np",
    )
    return np.asarray(out.input_ids, dtype=np.int64)
