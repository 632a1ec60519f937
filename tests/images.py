"""Test images: made in memory, deterministic."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image


def pattern(width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth colourful RGB pattern (compresses well, survives a VAE better than noise)."""
    ys, xs = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(seed)
    fx, fy = rng.uniform(0.01, 0.05, 2)
    r = 128 + 100 * np.sin(xs * fx)
    g = 128 + 100 * np.cos(ys * fy)
    b = 128 + 100 * np.sin((xs + ys) * (fx + fy) / 2)
    return Image.fromarray(np.stack([r, g, b], -1).astype(np.uint8), "RGB")


def encode(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{b64(data)}"


def rect_mask(width: int, height: int, box: tuple[int, int, int, int]) -> Image.Image:
    mask = Image.new("L", (width, height), 0)
    mask.paste(255, box)
    return mask


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image
