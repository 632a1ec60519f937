"""Every bound a request has, in one place (the request models and the docs quote these)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import StringConstraints

# --- limits ---------------------------------------------------------------------------------
MIN_SIDE = 64
"""Smallest width or height, in pixels."""
MAX_SIDE = 3072
"""Largest width or height, in pixels (wide or tall images, within the pixel budget)."""
MAX_PIXELS = 2048 * 2048
"""Largest width × height of one image (4,194,304 pixels)."""
MAX_STEPS = 150
"""Most denoising steps a job may ask for."""
MAX_IMAGES = 8
"""Most images one job may generate."""
MAX_PROMPT_CHARS = 2000
"""Longest prompt or negative prompt, in characters (the text encoder reads the first 77 tokens)."""
MAX_SEED = 2**32 - 1
"""Seeds are unsigned 32-bit integers; image *i* of a job uses ``(seed + i) mod 2**32``."""
MAX_LORAS = 4
"""Most LoRA adapters one job may combine."""
MAX_OWNED_EMBEDDINGS = 8
"""Most of a caller's own embeddings (by their tokens) one job may use."""
MAX_METADATA_KEYS = 16
"""Most client metadata entries carried by a job."""

MAX_NAME_CHARS = 64
"""Longest registry name."""

NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
"""The shape of every name: registry entries, API keys, trained results."""

Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
"""A registry name: lower-case letters, digits, '.', '_' and '-'; never a path or URL."""

SchedulerName = Literal["euler", "euler_a", "heun", "dpmpp_2m", "dpmpp_2m_karras", "ddim", "pndm", "unipc", "lcm"]
SCHEDULER_NAMES: tuple[str, ...] = SchedulerName.__args__  # type: ignore[attr-defined]

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
"""Largest encoded input image (PNG, JPEG or WEBP file), in bytes."""
MAX_IMAGE_FIELD_CHARS = 28_000_000
"""Longest base64 / data-URI image in a JSON body (a 20 MiB file in base64, with room for a data-URI header)."""
MAX_OUTPAINT_MARGIN = 1024
"""Most pixels an outpaint may add on any one side."""
MAX_MASK_GROW = 128
"""Most pixels a mask may be grown (dilated) by."""
MAX_MASK_BLUR = 64
"""Largest Gaussian blur radius for a mask's edge, in pixels."""
MAX_INPAINT_PADDING = 512
"""Most context pixels around the mask for `inpaint_area: masked`."""
MAX_FEATHER = 256
"""Widest seam blend for outpainting, in pixels."""
UPLOAD_ID_PATTERN = r"^upl_[0-9a-f]{32}$"
"""Shape of an upload id."""
MASK_THRESHOLD = 128
"""Mask pixels at or above this (and alpha below it, for alpha masks) mean: repaint."""
MIN_INPUT_SIDE = 8
"""Smallest width or height of an input image."""
MAX_METADATA_KEY_CHARS = 64
"""Longest key of a client metadata entry."""
MAX_METADATA_VALUE_CHARS = 512
"""Longest value of a client metadata entry."""
