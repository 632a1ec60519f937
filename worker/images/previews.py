"""Small preview images of a job in progress, decoded cheaply from the latents (no VAE).

A fixed linear map takes the 4 latent channels to RGB (the coefficients approximate what the SD 1.x
and SDXL VAEs decode a latent pixel to); the result is one pixel per latent pixel (1/8 of the image's
size), shrunk to at most 64 px and sent as a JPEG data URI of about a kilobyte.
"""

from __future__ import annotations

import base64
import io

import torch
from PIL import Image

_FACTORS = {
    "sd1": torch.tensor(
        [[0.3512, 0.2297, 0.3227], [0.3250, 0.4974, 0.2350], [-0.2829, 0.1762, 0.2721], [-0.2120, -0.2616, -0.7177]]
    ),
    "sdxl": torch.tensor(
        [[0.3651, 0.4232, 0.4341], [-0.2533, -0.0042, 0.1068], [0.1076, 0.1111, -0.0362], [-0.3165, -0.2492, -0.2188]]
    ),
}
PREVIEW_SIDE = 64


def preview_data_uri(latents: torch.Tensor, family: str) -> str:
    """A JPEG data URI previewing the first image of a batch of latents."""
    factors = _FACTORS.get(family, _FACTORS["sd1"])
    first = latents[0].detach().float().cpu()[:4]
    rgb = torch.einsum("chw,cr->hwr", first, factors)
    pixels = ((rgb + 1.0) * 127.5).clamp(0, 255).to(torch.uint8).numpy()
    image = Image.fromarray(pixels, "RGB")
    image.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=70)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
