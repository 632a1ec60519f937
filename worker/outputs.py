"""Encode result images and write them, with the job's manifest, to the object store.

Keys are deterministic (``outputs/<job>/<n>.<ext>``, ``outputs/<job>/manifest.json``), so a job
that runs twice overwrites the same objects instead of leaving two sets of results. The PNG text
chunks carry only generation parameters (no job id, no time), so the same request with the same
seed gives byte-identical files.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import platform
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from typing import Any

from PIL import Image, PngImagePlugin

from sdserve.params import GenerationParams, OutputOptions
from sdserve.records import StoredImage
from sdserve.store import ObjectStore, output_key
from worker.generation import GeneratedImage

_ENCODERS = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1), thread_name_prefix="encode")

CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}


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


def write_outputs(
    store: ObjectStore,
    job_id: str,
    params: GenerationParams,
    images: list[GeneratedImage],
    prompts: tuple[str, str],
) -> tuple[list[StoredImage], list[str]]:
    """Encode and store every image; returns where each one lies and its SHA-256."""
    stored: list[StoredImage] = []
    digests: list[str] = []
    fmt = params.output.format

    def encode(item: GeneratedImage) -> bytes:
        text = {
            "parameters": parameters_text(params, item.seed, *prompts),
            "sdserve": json.dumps(
                {**params.model_dump(mode="json", exclude={"webhook", "metadata", "output"}), "seed": item.seed},
                sort_keys=True,
                separators=(",", ":"),
            ),
        }
        return encode_image(item.image, params.output, text)

    # Encoding (zlib, libjpeg, libwebp) releases the GIL: a batch's images encode in parallel.
    encoded = list(_ENCODERS.map(encode, images)) if len(images) > 1 else [encode(i) for i in images]
    for item, data in zip(images, encoded, strict=True):
        key = output_key(job_id, f"{item.index}.{EXTENSIONS[fmt]}")
        store.put(key, data, CONTENT_TYPES[fmt])
        digests.append(hashlib.sha256(data).hexdigest())
        stored.append(
            StoredImage(
                index=item.index,
                key=key,
                seed=item.seed,
                width=item.image.width,
                height=item.image.height,
                content_type=CONTENT_TYPES[fmt],
            )
        )
    return stored, digests


def write_mask(store: ObjectStore, job_id: str, mask: Image.Image) -> str:
    """Store the final mask a job used (``return_mask``); returns its key."""
    buffer = io.BytesIO()
    mask.convert("L").save(buffer, format="PNG", compress_level=4)
    key = output_key(job_id, "mask.png")
    store.put(key, buffer.getvalue(), "image/png")
    return key


def write_manifest(store: ObjectStore, job_id: str, manifest: dict[str, Any]) -> str:
    """Store ``manifest.json`` beside the outputs; returns its key."""
    key = output_key(job_id, "manifest.json")
    store.put(key, json.dumps(manifest, indent=2, sort_keys=True).encode(), "application/json")
    return key
