"""The request of each task, and their union (discriminated on ``task``)."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from sdserve.params import GenerationParams


class Txt2ImgRequest(GenerationParams):
    """Generate images from a text prompt."""

    task: Literal["txt2img"] = Field(default="txt2img", description="Always `txt2img` on this endpoint.")

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"prompt": "a lighthouse at dusk", "width": 256, "height": 256, "steps": 12},
                {
                    "prompt": "a red fox in the snow, detailed",
                    "negative_prompt": "blurry",
                    "model": "tiny",
                    "num_images": 2,
                    "seed": 42,
                    "scheduler": "dpmpp_2m_karras",
                    "guidance_scale": 6.5,
                    "output": {"format": "png"},
                    "metadata": {"user": "u-123"},
                },
            ]
        },
    )


JobRequest = Txt2ImgRequest
"""Every task's request model (a union, discriminated on ``task``, as tasks are added)."""

Task = Literal["txt2img"]
