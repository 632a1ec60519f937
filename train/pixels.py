"""Exact pixel analysis of a scene image (numpy only): background colour, main shape colour, position.

The synthetic scenes have flat colours, so plain measurements read them back: the background is the
nearest named colour to the median of the image border, the shape is every pixel far from the
background model, its colour the nearest named colour to their median, its position the 3x3 cell of
their centroid. Used by the CPU tests (no trained classifier needed) and as a cross-check in the
evaluation. For a gradient background the border median sits near the named colour too.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from train.dataset import ALL_COLOURS, COLOURS, POSITIONS, Scene

_PALETTE = np.array(list(COLOURS.values()), dtype=np.float32)
_NAMES = list(COLOURS)
_ALL_PALETTE = np.array(list(ALL_COLOURS.values()), dtype=np.float32)
_ALL_NAMES = list(ALL_COLOURS)


@dataclass(frozen=True)
class Reading:
    """What the pixels say (``mask``: the pixels that are not background)."""

    background: str
    colour: str | None
    position: str | None
    area: float
    background_rgb: np.ndarray
    shape_rgb: np.ndarray | None = None
    mask: np.ndarray | None = None


def nearest_colour(rgb: np.ndarray) -> str:
    """The named colour nearest to an RGB triple."""
    distances = np.linalg.norm(_PALETTE - rgb.astype(np.float32)[None, :], axis=1)
    return _NAMES[int(np.argmin(distances))]


def _background_model(image: np.ndarray) -> np.ndarray:
    """Per-pixel expected background: a least-squares plane per channel through the border pixels."""
    h, w, _ = image.shape
    border = np.zeros((h, w), dtype=bool)
    border[:6, :] = border[-6:, :] = border[:, :6] = border[:, -6:] = True
    ys, xs = np.nonzero(border)
    design = np.stack([np.ones_like(xs), xs / w, ys / h], axis=1).astype(np.float32)
    values = image[ys, xs].astype(np.float32)
    # A robust fit: drop border pixels far from the median (a shape touching the border).
    keep = np.linalg.norm(values - np.median(values, axis=0), axis=1) < 60.0
    if keep.sum() > 20:
        design, values = design[keep], values[keep]
    coef, *_ = np.linalg.lstsq(design, values, rcond=None)
    gy, gx = np.mgrid[0:h, 0:w].astype(np.float32)
    full = np.stack([np.ones_like(gx), gx / w, gy / h], axis=-1)
    return np.asarray(full @ coef)


def read(image: np.ndarray, threshold: float = 60.0) -> Reading:
    """Read background colour, main shape colour and position from a (H, W, 3) uint8 image."""
    pixels = image.astype(np.float32)
    h, w, _ = pixels.shape
    ring = np.concatenate([pixels[:6].reshape(-1, 3), pixels[-6:].reshape(-1, 3), pixels[:, :6].reshape(-1, 3),
                           pixels[:, -6:].reshape(-1, 3)])  # fmt: skip
    background = nearest_colour(np.median(ring, axis=0))
    expected = _background_model(image)
    mask = np.linalg.norm(pixels - expected, axis=-1) > threshold
    area = float(mask.mean())
    background_rgb = np.median(ring, axis=0)
    if mask.sum() < 20:
        return Reading(background, None, None, area, background_rgb, None, mask)
    shape_rgb = np.median(pixels[mask], axis=0)
    colour = nearest_colour(shape_rgb)
    ys, xs = np.nonzero(mask)
    col = min(int(xs.mean() / w * 3), 2)
    row = min(int(ys.mean() / h * 3), 2)
    return Reading(background, colour, POSITIONS[row * 3 + col], area, background_rgb, shape_rgb, mask)


def silhouette(mask: np.ndarray, side: int = 32) -> tuple[np.ndarray, float]:
    """The mask cropped to a square around the shape and resized to ``side``; and the square's side.

    The crop spans the 1st to 99th percentile of the mask's pixel coordinates (robust to stray
    pixels), so the silhouette is centred and scale-free: its kind can be read regardless of size.
    """
    ys, xs = np.nonzero(mask)
    if len(xs) < 20:
        return np.zeros((side, side), dtype=np.float32), 0.0
    x0, x1 = np.percentile(xs, [1, 99])
    y0, y1 = np.percentile(ys, [1, 99])
    extent = max(x1 - x0, y1 - y0) + 1.0
    cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, extent * 0.55
    from PIL import Image

    crop = Image.fromarray((mask * 255).astype(np.uint8)).crop(
        (int(cx - half), int(cy - half), int(np.ceil(cx + half)), int(np.ceil(cy + half)))
    )
    small = crop.resize((side, side), Image.Resampling.BILINEAR)
    return np.asarray(small, dtype=np.float32) / 255.0, float(extent)


def nearest_of_all_colours(rgb: np.ndarray) -> str:
    """The nearest colour among the named ones and the extra ones (``teal``) the model never saw."""
    distances = np.linalg.norm(_ALL_PALETTE - rgb.astype(np.float32)[None, :], axis=1)
    return _ALL_NAMES[int(np.argmin(distances))]


def main_shape_colour(image: np.ndarray) -> str | None:
    """The main shape's colour (as ``read``) among every colour, the extra ones included; None: no shape."""
    reading = read(image)
    return None if reading.shape_rgb is None else nearest_of_all_colours(reading.shape_rgb)


def is_teal(image: np.ndarray) -> bool:
    """Whether the main shape is teal: its median colour is nearer to teal than to any named colour."""
    return main_shape_colour(image) == "teal"


@functools.cache
def _templates(side: int = 32) -> tuple[tuple[str, np.ndarray], ...]:
    """Silhouettes of every shape kind (the extra ones too), drawn large in the centre at a few angles."""
    from train.dataset import EXTRA_SHAPES, SHAPES, Scene, Shape, render_array

    out = []
    for kind in (*SHAPES, *EXTRA_SHAPES):
        for angle in (-12.0, -6.0, 0.0, 6.0, 12.0):
            shape = Shape(kind, "black", "large", "center", 128.0, 128.0, 50.0, angle)
            mask = read(render_array(Scene("white", "plain", (shape,)))).mask
            assert mask is not None
            out.append((kind, silhouette(mask, side)[0]))
    return tuple(out)


def shape_kind(image: np.ndarray) -> str | None:
    """The main shape's kind, by the best overlap (IoU) of its silhouette with each kind's; None: no shape.

    A plain template match (no trained classifier): right on renders of every kind, the heart included, and
    meant for the demo model's clean one-shape drawings.
    """
    mask = read(image).mask
    if mask is None or mask.sum() < 20:
        return None
    sil = silhouette(mask)[0] > 0.5
    best, kind = -1.0, None
    for name, template in _templates():
        t = template > 0.5
        iou = float((sil & t).sum() / max((sil | t).sum(), 1))
        if iou > best:
            best, kind = iou, name
    return kind


def has_heart(image: np.ndarray) -> bool:
    """Whether the main shape is a heart (``shape_kind``)."""
    return shape_kind(image) == "heart"


ATTRIBUTES = ("background", "colour", "kind", "position")
"""What ``adherence`` reads back of a one-shape scene."""


def adherence(images: list[np.ndarray], scenes: list[Scene]) -> dict[str, float]:
    """The fraction of images whose background, shape colour, shape kind and position (``read``, ``shape_kind``)
    are their one-shape scene's, per attribute, and their mean as ``overall``."""
    if len(images) != len(scenes) or not scenes:
        raise ValueError("one image per scene, at least one")
    hits = dict.fromkeys(ATTRIBUTES, 0)
    for image, scene in zip(images, scenes, strict=True):
        reading, shape = read(image), scene.shapes[0]
        hits["background"] += reading.background == scene.background
        hits["colour"] += reading.colour == shape.colour
        hits["kind"] += shape_kind(image) == shape.kind
        hits["position"] += reading.position == shape.position
    out = {name: count / len(scenes) for name, count in hits.items()}
    out["overall"] = sum(out.values()) / len(ATTRIBUTES)
    return out
