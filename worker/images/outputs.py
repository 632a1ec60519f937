"""Encode result images and write them, with the job's manifest, under the run's own attempt.

Keys are ``outputs/<job>/<attempt>/<n>.<ext>`` and ``.../manifest.json`` (``worker.engine.artifacts``): they
become the job's only in the step that marks it succeeded. The PNG text chunks carry only generation
parameters (no job id, no time), so the same request with the same seed gives byte-identical files.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import platform
import threading
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from typing import Any

from PIL import Image, PngImagePlugin

from sdserve.images.params import GenerationParams, OutputOptions
from sdserve.images.view import StoredImage
from worker.engine.artifacts import Artifacts
from worker.images.generation import GeneratedImage

CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _encoders() -> ThreadPoolExecutor:
    """The image encoders' threads, made on first use (zlib, libjpeg and libwebp release the GIL)."""
    global _pool  # noqa: PLW0603 - one pool per process, made lazily
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1), thread_name_prefix="encode")
        return _pool


def parameters_text(params: GenerationParams, seed: int, prompt: str, negative: str) -> str:
    """The A1111-style ``parameters`` text that many tools read from PNGs."""
    lines = [prompt]
    if negative:
        lines.append(f"Negative prompt: {negative}")
    lines.append(
        f"Steps: {params.steps}, Sampler: {params.scheduler}, CFG scale: {params.guidance_scale}, "
        f"Seed: {seed}, Size: {params.width}x{params.height}, Model: {params.model}"
    )
    return "\n".join(lines)


def encode_image(image: Image.Image, options: OutputOptions, text: dict[str, str]) -> bytes:
    """Encode one image in the requested format, with the generation parameters embedded."""
    buffer = io.BytesIO()
    if options.format == "png":
        info = PngImagePlugin.PngInfo()
        for key, value in text.items():
            info.add_itxt(key, value)
        image.save(buffer, format="PNG", pnginfo=info, compress_level=4)
    else:
        exif = Image.Exif()
        exif[0x010E] = text.get("parameters", "")  # ImageDescription
        rgb = image.convert("RGB")
        rgb.save(buffer, format="JPEG" if options.format == "jpeg" else "WEBP", quality=options.quality, exif=exif)
    return buffer.getvalue()


@functools.cache
def library_versions() -> dict[str, str]:
    """Versions that decide what a seed produces (read once per process: package metadata is slow)."""
    versions = {"python": platform.python_version()}
    for dist in ("sdserve", "torch", "diffusers", "transformers", "pillow"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "unknown"
    return versions


def write_images(
    artifacts: Artifacts, params: GenerationParams, images: list[GeneratedImage], prompts: tuple[str, str]
) -> tuple[list[StoredImage], list[str]]:
    """Encode and store every image; returns where each one lies and its SHA-256."""
    fmt = params.output.format
    settings = params.model_dump(mode="json", exclude={"webhook", "metadata", "output"})

    def encode(item: GeneratedImage) -> bytes:
        text = {
            "parameters": parameters_text(params, item.seed, *prompts),
            "sdserve": json.dumps({**settings, "seed": item.seed}, sort_keys=True, separators=(",", ":")),
        }
        return encode_image(item.image, params.output, text)

    encoded = list(_encoders().map(encode, images)) if len(images) > 1 else [encode(i) for i in images]
    stored: list[StoredImage] = []
    digests: list[str] = []
    for item, data in zip(images, encoded, strict=True):
        key = artifacts.put(f"{item.index}.{EXTENSIONS[fmt]}", data, CONTENT_TYPES[fmt])
        digests.append(hashlib.sha256(data).hexdigest())
        stored.append(
            StoredImage(
                index=item.index, key=key, seed=item.seed, width=item.image.width, height=item.image.height,
                content_type=CONTENT_TYPES[fmt],
            )
        )  # fmt: skip
    return stored, digests


def write_mask(artifacts: Artifacts, mask: Image.Image) -> str:
    """Store the final mask a job used (``return_mask``); returns its key."""
    buffer = io.BytesIO()
    mask.convert("L").save(buffer, format="PNG", compress_level=4)
    return artifacts.put("mask.png", buffer.getvalue(), "image/png")


def write_manifest(artifacts: Artifacts, manifest: dict[str, Any]) -> str:
    """Store ``manifest.json`` beside the outputs; returns its key."""
    return artifacts.put("manifest.json", json.dumps(manifest, indent=2, sort_keys=True).encode(), "application/json")
