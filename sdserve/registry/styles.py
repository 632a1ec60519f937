"""Style presets: named wrappers around the prompt and negative prompt (in the spirit of
Stability's style presets). Operators add their own in the registry file."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator


class StylePreset(BaseModel):
    """A named wrapper around the prompt and negative prompt."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    prompt: str = Field(description="Template; `{prompt}` is replaced by the request's prompt.")
    negative_prompt: str = ""
    description: str = ""

    @field_validator("prompt")
    @classmethod
    def _has_placeholder(cls, value: str) -> str:
        if "{prompt}" not in value:
            raise ValueError("a style prompt must contain {prompt}")
        return value

    def apply(self, prompt: str, negative_prompt: str) -> tuple[str, str]:
        """Wrap a request's prompts in this style."""
        styled = self.prompt.replace("{prompt}", prompt)
        negative = ", ".join(part for part in (negative_prompt, self.negative_prompt) if part)
        return styled, negative


_NEG = "lowres, blurry, jpeg artifacts, watermark, text"
BUILTIN_STYLES: dict[str, StylePreset] = {
    s.name: s
    for s in (
        StylePreset(
            name="photographic",
            prompt="cinematic photo of {prompt}, 35mm photograph, film grain, bokeh, professional, highly detailed",
            negative_prompt=f"drawing, painting, anime, {_NEG}",
        ),
        StylePreset(
            name="cinematic",
            prompt="cinematic film still of {prompt}, shallow depth of field, vignette, highly detailed, moody, epic",
            negative_prompt=f"cartoon, painting, {_NEG}",
        ),
        StylePreset(
            name="anime",
            prompt="anime artwork of {prompt}, anime style, key visual, vibrant, studio anime, highly detailed",
            negative_prompt=f"photo, realistic, {_NEG}",
        ),
        StylePreset(
            name="digital-art",
            prompt="concept art of {prompt}, digital artwork, illustrative, painterly, matte painting, highly detailed",
            negative_prompt=f"photo, realistic, {_NEG}",
        ),
        StylePreset(
            name="pixel-art",
            prompt="pixel-art {prompt}, low-res, blocky, pixel art style, 8-bit graphics",
            negative_prompt=f"smooth, realistic, photographic, {_NEG}",
        ),
        StylePreset(
            name="comic-book",
            prompt="comic book panel of {prompt}, graphic illustration, comic art, bold lines, vibrant",
            negative_prompt=f"photograph, realistic, {_NEG}",
        ),
        StylePreset(
            name="fantasy-art",
            prompt="ethereal fantasy concept art of {prompt}, magnificent, celestial, painterly, epic",
            negative_prompt=f"photographic, realistic, {_NEG}",
        ),
        StylePreset(
            name="line-art",
            prompt="line art drawing of {prompt}, professional, sleek, modern, minimalist, graphic, vector",
            negative_prompt=f"photo, colorful, shading, {_NEG}",
        ),
        StylePreset(
            name="isometric",
            prompt="isometric style {prompt}, vibrant, beautiful, crisp, detailed, ultra detailed, intricate",
            negative_prompt=f"deformed, perspective, {_NEG}",
        ),
        StylePreset(
            name="watercolor",
            prompt="watercolor painting of {prompt}, vibrant, beautiful, painterly, detailed, textural, artistic",
            negative_prompt=f"photo, anime, {_NEG}",
        ),
        StylePreset(
            name="3d-model",
            prompt="professional 3d model of {prompt}, octane render, highly detailed, volumetric, dramatic lighting",
            negative_prompt=f"painting, sketch, {_NEG}",
        ),
        StylePreset(
            name="neon-punk",
            prompt="neonpunk style {prompt}, cyberpunk, vaporwave, neon, vibes, vibrant, stunningly beautiful, crisp",
            negative_prompt=f"painting, drawing, {_NEG}",
        ),
    )
}
