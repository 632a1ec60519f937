"""Pixel work around the pipelines: masks, canvases, fitting, compositing. Exact where it must be.

The contract these functions keep:

* the *final mask* is ``blur(grow(binary(mask)))``: binarised at 128, dilated by ``mask_grow`` px
  (square, i.e. Chebyshev distance), then Gaussian-blurred with radius ``mask_blur``;
* the model may repaint wherever the final mask is above 0, and the result is composited in 8-bit
  with ``Image.composite(generated, original, final_mask)``: where the final mask is 0 the output *is*
  the input pixel, bit for bit; where it is 255 it is the generated pixel; in between, a blend.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from PIL import Image, ImageFilter

from sdserve.contract.limits import MASK_THRESHOLD


def binary_mask(mask: Image.Image) -> Image.Image:
    """255 where the mask is at least 128, else 0."""
    return mask.convert("L").point(lambda v: 255 if v >= MASK_THRESHOLD else 0)


def alpha_mask(image: Image.Image) -> Image.Image:
    """255 where the image is transparent (alpha below 128): the part to repaint."""
    return image.getchannel("A").point(lambda a: 255 if a < MASK_THRESHOLD else 0)


def grow(mask: Image.Image, pixels: int) -> Image.Image:
    """Dilate a binary mask by ``pixels`` (square neighbourhood), in O(width × height)."""
    if pixels <= 0:
        return mask
    on = np.asarray(mask) > 0
    size = 2 * pixels + 1
    padded = np.pad(on.astype(np.int32), pixels)
    table = np.pad(padded.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    h, w = on.shape
    window = (
        table[size : size + h, size : size + w]
        - table[:h, size : size + w]
        - table[size : size + h, :w]
        + table[:h, :w]
    )
    return Image.fromarray(np.where(window > 0, 255, 0).astype(np.uint8), mode="L")


def final_mask(mask: Image.Image, *, grow_px: int, blur_px: int) -> Image.Image:
    """``blur(grow(binary(mask)))``: the mask a job actually uses."""
    result = grow(binary_mask(mask), grow_px)
    if blur_px > 0:
        result = result.filter(ImageFilter.GaussianBlur(blur_px))
    return result


def repaint_region(mask: Image.Image) -> Image.Image:
    """Binary mask of every pixel the model may change (final mask above 0)."""
    return mask.point(lambda v: 255 if v > 0 else 0)


def composite(original: Image.Image, generated: Image.Image, mask: Image.Image) -> Image.Image:
    """Blend in 8-bit: the original where the mask is 0 (exactly), the generated image where it is 255."""
    return Image.composite(generated.convert("RGB"), original.convert("RGB"), mask)


def pad_to_multiple(image: Image.Image, multiple: int = 8) -> Image.Image:
    """Extend right and bottom edges (repeating the border) up to a multiple of ``multiple``."""
    w, h = image.size
    pw, ph = -w % multiple, -h % multiple
    if not pw and not ph:
        return image
    array = np.asarray(image)
    pad = ((0, ph), (0, pw)) + (((0, 0),) if array.ndim == 3 else ())
    return Image.fromarray(np.pad(array, pad, mode="edge"), mode=image.mode)


def fit(image: Image.Image, size: tuple[int, int], mode: Literal["resize", "crop", "fill"]) -> Image.Image:
    """Bring an image to ``size``: stretch (resize), cover and centre-crop (crop), or fit and fill (fill)."""
    image = image.convert("RGB")
    if image.size == size:
        return image
    tw, th = size
    if mode == "resize":
        return image.resize(size, Image.Resampling.LANCZOS)
    w, h = image.size
    scale = max(tw / w, th / h) if mode == "crop" else min(tw / w, th / h)
    sw, sh = max(1, round(w * scale)), max(1, round(h * scale))
    scaled = image.resize((sw, sh), Image.Resampling.LANCZOS)
    if mode == "crop":
        left, top = (sw - tw) // 2, (sh - th) // 2
        return scaled.crop((left, top, left + tw, top + th))
    # fill: the scaled image in the middle, its edges stretched and blurred into the rest
    background = image.resize(size, Image.Resampling.BILINEAR).filter(ImageFilter.GaussianBlur(max(tw, th) / 16))
    background.paste(scaled, ((tw - sw) // 2, (th - sh) // 2))
    return background


def working_size(crop: tuple[int, int], native: int) -> tuple[int, int]:
    """The size a crop is inpainted at: about ``native²`` pixels, the crop's aspect, multiples of 8."""
    cw, ch = crop
    scale = native / math.sqrt(cw * ch)
    return max(64, round(cw * scale / 8) * 8), max(64, round(ch * scale / 8) * 8)


def padded_box(mask: Image.Image, padding: int) -> tuple[int, int, int, int]:
    """The box around the mask's non-zero pixels, grown by ``padding`` and clamped to the image."""
    box = mask.getbbox()
    assert box is not None, "an empty mask was refused at the gateway"
    left, top, right, bottom = box
    w, h = mask.size
    return max(0, left - padding), max(0, top - padding), min(w, right + padding), min(h, bottom + padding)


def outpaint_canvas(
    image: Image.Image,
    *,
    left: int,
    right: int,
    top: int,
    bottom: int,
    fill: Literal["edge", "blur", "noise"],
    feather: int,
    seed: int,
) -> tuple[Image.Image, Image.Image]:
    """The extended canvas (new area pre-filled) and its final mask (255 new, feathered seam, 0 original)."""
    array = np.asarray(image.convert("RGB"))
    h, w = array.shape[:2]
    canvas = np.pad(array, ((top, bottom), (left, right), (0, 0)), mode="edge")
    new_area = np.ones(canvas.shape[:2], dtype=bool)
    new_area[top : top + h, left : left + w] = False
    if fill == "blur":
        radius = max(4.0, max(left, right, top, bottom) / 4)
        blurred = np.asarray(Image.fromarray(canvas).filter(ImageFilter.GaussianBlur(radius)))
        canvas = np.where(new_area[..., None], blurred, canvas)
    elif fill == "noise":
        rng = np.random.default_rng(seed)
        noise = rng.normal(0.0, 48.0, canvas.shape)
        canvas = np.where(new_area[..., None], np.clip(canvas + noise, 0, 255), canvas).astype(np.uint8)
    mask = np.where(new_area, 255.0, 0.0)
    if feather > 0:
        ys, xs = np.mgrid[0:h, 0:w]
        distance = np.full((h, w), np.inf)
        for margin, dist in ((left, xs), (right, w - 1 - xs), (top, ys), (bottom, h - 1 - ys)):
            if margin > 0:
                distance = np.minimum(distance, dist)
        ramp = np.clip(1.0 - distance / feather, 0.0, 1.0) * 255.0
        mask[top : top + h, left : left + w] = ramp
    return (
        Image.fromarray(canvas.astype(np.uint8), mode="RGB"),
        Image.fromarray(np.rint(mask).astype(np.uint8), mode="L"),
    )
