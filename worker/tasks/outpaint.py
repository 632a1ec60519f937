"""outpaint: extend the canvas by exact margins and paint the new area; the original stays."""

from __future__ import annotations

from typing import cast

from sdserve.tasks import OutpaintRequest
from worker.imaging import outpaint_canvas
from worker.tasks.base import TaskContext, TaskOutput, numbered
from worker.tasks.inpaint import repaint


def run(ctx: TaskContext, request: OutpaintRequest) -> TaskOutput:
    """Extend the image by left/right/top/bottom pixels."""
    # 1. Validate: the gateway checked margins and the output size against the limits.
    assert request.seed is not None
    image = ctx.input_image("image").convert("RGB")

    # 2. The canvas: the image at (left, top), the new area pre-filled; the mask: new area + feathered seam.
    canvas, mask = outpaint_canvas(
        image,
        left=request.left,
        right=request.right,
        top=request.top,
        bottom=request.bottom,
        fill=request.fill,
        feather=request.feather,
        seed=request.seed,
    )

    # 3. Inpaint the canvas (padded to a multiple of 8 and cropped back), composite with the mask.
    images, details = repaint(ctx, request, canvas, mask, strength=request.strength)

    # 4. Number the images; hand back the mask if asked for.
    details.update(fill=request.fill, margins=[request.left, request.right, request.top, request.bottom])
    return TaskOutput(
        images=numbered(images, cast("list[int]", details["seeds"])),
        details=details,
        mask=mask if request.return_mask else None,
    )
