"""Built-in models: real Stable Diffusion architectures with small random weights, made offline.

``tiny`` is an SD 1.x pipeline (UNet2DConditionModel, AutoencoderKL with 8x downsampling, a CLIP
text encoder and a byte-level CLIP BPE tokenizer) whose UNet and text encoder weights come from a
fixed seed. Its VAE is a small trained one (``worker/tiny_vae``, shared with ``tiny-sdxl``): a random
VAE would turn every image into noise, and image-to-image work must keep what it is given. It is
generated once into ``<data_dir>/models/<name>-<version>`` with ``save_pretrained`` (safetensors)
and then loaded through diffusers' normal ``from_pretrained`` path, so the production loading code
is what runs in tests and on a laptop. Generation takes well under a second.
"""

from __future__ import annotations

import fcntl
import json
import logging
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

TINY_VERSION = "v4"
"""Bump when the tiny architecture or its generator changes: a new folder is generated."""

# Word pieces the tiny tokenizer merges (the rest falls back to single bytes, as real BPE does).
_MERGE_WORDS = (
    "a an the of in on at with and to by from red green "
    "blue yellow white black orange purple pink brown grey gray cat dog fox bird "
    "house tree sky sea lighthouse dusk dawn night day sun moon star circle square "
    "triangle ring small large big photo painting portrait landscape city street forest mountain river "
    "flower car boat snow rain light dark detailed blurry "
).split()


def _bytes_to_unicode() -> list[str]:
    """The 256 printable stand-ins for bytes that CLIP's byte-level BPE uses."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def tiny_tokenizer_files() -> tuple[dict[str, int], list[str]]:
    """A real (small) CLIP BPE vocabulary and merge list: every byte, plus merges for common words."""
    chars = _bytes_to_unicode()
    vocab: dict[str, int] = {}
    for c in chars:
        vocab[c] = len(vocab)
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    merges: list[str] = []
    for word in _MERGE_WORDS:
        pieces = [*word[:-1], word[-1] + "</w>"]
        while len(pieces) > 1:
            left, right = pieces[0], pieces[1]
            merged = left + right
            merge = f"{left} {right}"
            if merge not in merges:
                merges.append(merge)
            vocab.setdefault(merged, len(vocab))
            pieces = [merged, *pieces[2:]]
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return vocab, merges


def _tokenizer(folder: Path) -> Any:
    from transformers import CLIPTokenizer

    vocab, merges = tiny_tokenizer_files()
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return CLIPTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"), model_max_length=77)


def _text_encoder(tokenizer: Any, *, hidden: int, projection: int | None = None) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_act="quick_gelu" if projection is None else "gelu",
        projection_dim=projection or hidden,
    )
    return CLIPTextModel(config) if projection is None else CLIPTextModelWithProjection(config)


TINY_VAE_DIR = Path(__file__).resolve().parent / "tiny_vae"
"""A small AutoencoderKL (8x downsampling, 4 latent channels) trained by tools/train_tiny_vae.py."""


def _vae(scaling_factor: float) -> Any:
    """The tiny models' VAE: trained (not random), so image-to-image work keeps what it is given."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(TINY_VAE_DIR, torch_dtype=torch.float32, use_safetensors=True)
    vae.register_to_config(scaling_factor=scaling_factor)
    return vae


def _scheduler() -> Any:
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,
        timestep_spacing="leading",
        prediction_type="epsilon",
    )


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.random.set_rng_state(state)


def _build_sd1(target: Path, *, in_channels: int) -> None:
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionPipeline, UNet2DConditionModel

    tokenizer = _tokenizer(target / "_tok")
    with _seeded(20261125 + in_channels):
        text_encoder = _text_encoder(tokenizer, hidden=32)
        unet = UNet2DConditionModel(
            sample_size=32,
            in_channels=in_channels,  # 9 for a dedicated inpainting UNet: latents, mask, masked-image latents
            out_channels=4,
            block_out_channels=(32, 64, 64),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=8,
            norm_num_groups=8,
        )
        vae = _vae(0.18215)
    cls = StableDiffusionInpaintPipeline if in_channels == 9 else StableDiffusionPipeline
    pipe = cls(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(target, safe_serialization=True)
    shutil.rmtree(target / "_tok")


def _build_tiny(target: Path) -> None:
    _build_sd1(target, in_channels=4)


def _build_tiny_inpaint(target: Path) -> None:
    _build_sd1(target, in_channels=9)


def _build_tiny_sdxl(target: Path) -> None:
    """SDXL's architecture in small: two text encoders (the second with a projection), pooled text
    embeddings and size/crop conditioning added to the time embedding (``text_time``)."""
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel

    tokenizer = _tokenizer(target / "_tok")
    time_embed = 8
    with _seeded(20261126):
        text_encoder = _text_encoder(tokenizer, hidden=32)
        text_encoder_2 = _text_encoder(tokenizer, hidden=32, projection=32)
        unet = UNet2DConditionModel(
            sample_size=32,
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 64, 64),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 1, 2),
            attention_head_dim=(2, 4, 4),
            use_linear_projection=True,
            cross_attention_dim=64,  # both encoders' hidden states side by side
            addition_embed_type="text_time",
            addition_time_embed_dim=time_embed,
            projection_class_embeddings_input_dim=32 + 6 * time_embed,  # pooled text + 6 size/crop numbers
            norm_num_groups=8,
        )
        vae = _vae(0.13025)
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=_scheduler(),
        force_zeros_for_empty_prompt=True,
    )
    pipe.save_pretrained(target, safe_serialization=True)
    shutil.rmtree(target / "_tok")


BUILDERS: dict[str, tuple[str, Callable[[Path], None]]] = {
    "tiny": (TINY_VERSION, _build_tiny),
    "tiny-inpaint": (TINY_VERSION, _build_tiny_inpaint),
    "tiny-sdxl": (TINY_VERSION, _build_tiny_sdxl),
}


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


DEMO_DIR = Path(__file__).parent / "assets" / "demo"
"""The trained ``demo`` model, shipped in the repository as a diffusers folder (docs/demo-model.md)."""


def ensure_builtin(name: str, models_dir: Path) -> Path:
    """The folder of a built-in model, generated on first use (safe with several workers at once).

    ``demo`` is not generated: its trained weights ship with the package.
    """
    if name == "demo":
        return DEMO_DIR
    try:
        version, build = BUILDERS[name]
    except KeyError:
        raise ValueError(f"no built-in model {name!r}") from None
    target = models_dir / f"{name}-{version}"
    if (target / "model_index.json").exists():
        return target
    with _locked(models_dir / f".{name}.lock"):
        if (target / "model_index.json").exists():
            return target
        log.info("generating built-in model %s into %s", name, target)
        staging = models_dir / f".{name}-{version}.building"
        shutil.rmtree(staging, ignore_errors=True)
        build(staging)
        staging.rename(target)
    return target
