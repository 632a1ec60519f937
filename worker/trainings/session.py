"""A training session: a LoRA or a textual-inversion embedding trained on a warm pipeline, then taken off it.

``TrainingSession(pipe, method, examples, hyperparameters, trigger_word=..., initializer_token=...)`` reuses the
warm pipeline's VAE, text encoder(s) and UNet (no weight is loaded or copied):

* ``lora``: a PEFT ``LoraConfig`` on the UNet's attention projections (``to_q``, ``to_k``, ``to_v``,
  ``to_out.0``), added with diffusers' ``unet.add_adapter`` under a name of its own. The text encoder is frozen,
  so every example's latents (the VAE posterior mean × the scaling factor, and of its mirror image with
  ``random_flip``) and text embeddings are computed once. SD 1.x and SDXL (pooled embeddings and size/crop time
  ids as SDXL's own training).
* ``textual_inversion``: the token is added to the tokenizer, the text encoder's embeddings are resized and the
  new row starts from the ``initializer_token``'s embedding (the mean, when it is several tokens). Only that row
  trains: it is a float32 parameter of its own that a forward hook on the embedding puts where the token is (a
  mask), so no other row can move and the optimiser holds one vector. The text encoder runs every step. SD 1.x
  only: an SDXL embedding needs one vector per text encoder (``NotImplementedError``).

Images are resized so their short side is the resolution (bilinear), then ``center_crop`` takes the centre square
once; otherwise each step takes a random square of the resized image's latents (latent crops: the VAE runs once).

``step()`` is one optimisation step (``worker.trainings.loop``, shared with ``train/``); ``state_dict()`` is a
checkpoint as bytes (adapter, optimiser, schedule, every generator and the data order) from which
``load_state_dict`` continues exactly as an uninterrupted run; ``render`` draws with the adapter as it is now;
``export`` gives the ``.safetensors`` file that ``load_lora_weights`` / ``load_textual_inversion`` load; and
``close`` puts the pipeline back exactly as it was (same modules, weights, tokenizer, modes, ``requires_grad``,
adapters and hooks), so a job drawn after a training matches one drawn before it pixel for pixel.

All randomness comes from the session's own generator (seeded from ``seed``); the process's torch, numpy and
Python generators are saved in checkpoints and restored too, for library code that draws from them.
"""

from __future__ import annotations

import io
import json
import random
import tempfile
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from PIL import Image

from worker.models.speed import is_fused
from worker.trainings.loop import OptimizerConfig, Step, StepHook, Trainer, diffusion_loss, run_loop

if TYPE_CHECKING:
    from sdserve.trainings.requests import Hyperparameters as RequestHyperparameters

Method = Literal["lora", "textual_inversion"]
TrainFamily = Literal["sd1", "sdxl"]

LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
"""The UNet attention projections a LoRA adapts."""
CHECKPOINT_VERSION = 1


@dataclass(frozen=True)
class CompileOptions:
    """How a session compiles its training forward (``torch.compile``; the backward follows through AOTAutograd).

    ``scope``: ``regional`` compiles each of the UNet's repeated blocks (diffusers' ``_repeated_blocks``: its
    transformer blocks) with ``fullgraph``, so one compilation serves every block of a shape and compile time stays
    short; ``full`` compiles the whole UNet's forward. ``mode`` is torch.compile's (``reduce-overhead`` adds CUDA
    graphs; ``max-autotune-no-cudagraphs``), ``backend`` its backend (``aot_eager`` traces without generating code:
    the CPU tests' check that a compiled step works). Shapes are static (``dynamic=False``): a session's batch and
    resolution do not change. Validation renders run the blocks uncompiled.
    """

    scope: Literal["regional", "full"] = "regional"
    mode: str | None = None
    backend: str = "inductor"


def compile_options(setting: str, device: torch.device, family: str = "sd1") -> CompileOptions | None:
    """What the worker's ``training_compile`` setting means on ``device`` for a model of ``family``: ``off``
    (eager), ``regional``, ``full`` or ``full-cudagraphs`` (``reduce-overhead``).

    ``auto`` is what docs/benchmarks.md measured best on the H200: ``full-cudagraphs`` for SD 1.x on CUDA (3.3x
    the eager step, about two minutes of compile the first time), eager for SDXL (compiling its whole training
    step took over six minutes there, more than a default training saves) and on every other device (inductor's
    CPU code is no faster than eager for these convolutions and compiles for minutes on a small machine).
    """
    if setting == "auto":
        setting = "full-cudagraphs" if device.type == "cuda" and family == "sd1" else "off"
    if setting == "off":
        return None
    if setting == "regional":
        return CompileOptions("regional")
    if setting == "full":
        return CompileOptions("full")
    if setting == "full-cudagraphs":
        return CompileOptions("full", mode="reduce-overhead")
    raise ValueError(f"unknown training_compile setting {setting!r}")


@dataclass(frozen=True)
class Hyperparameters:
    """How a session trains (``defaults`` gives them per method and family; the schema bounds are in brackets).

    ``rank`` [1, 128] and ``alpha`` (0, 256] are the LoRA's (scale alpha/rank); ``learning_rate`` (0, 1e-2] is
    AdamW's peak, ``lr_scheduler`` one of ``loop.LR_SCHEDULERS`` after ``warmup_steps`` [0, steps] of linear
    warm-up; ``batch_size`` [1, 64] images per step (with replacement across epochs: each epoch is a new
    permutation); ``steps`` [1, 10 000]; ``resolution`` [64, 2048], a multiple of 8; ``center_crop`` (else a
    random square crop each step); ``random_flip`` (mirror left-right half the time: leave it off when captions
    say left and right); ``min_snr_gamma`` [0, 20] or None (off); ``noise_offset`` [0, 0.5]; ``seed``
    [0, 2**32); ``checkpoint_every`` / ``validation_every`` [1, steps] or None (for the caller's hooks);
    ``weight_decay`` [0, 0.1]; ``max_grad_norm`` (0, 100] or None.
    """

    steps: int = 1000
    learning_rate: float = 1e-4
    lr_scheduler: str = "constant_with_warmup"
    warmup_steps: int = 50
    batch_size: int = 4
    rank: int = 8
    alpha: float = 8.0
    resolution: int = 512
    center_crop: bool = True
    random_flip: bool = True
    min_snr_gamma: float | None = 5.0
    noise_offset: float = 0.0
    seed: int = 0
    checkpoint_every: int | None = None
    validation_every: int | None = None
    weight_decay: float = 1e-2
    max_grad_norm: float | None = 1.0


_DEFAULTS: dict[tuple[str, str], Hyperparameters] = {
    # diffusers' train_text_to_image_lora / train_dreambooth_lora: rank 4-16, lr 1e-4, max_grad_norm 1.
    ("lora", "sd1"): Hyperparameters(steps=1000, learning_rate=1e-4, rank=8, alpha=8.0, batch_size=4, resolution=512),
    ("lora", "sdxl"): Hyperparameters(steps=1000, learning_rate=1e-4, rank=8, alpha=8.0, batch_size=4, resolution=1024),
    # diffusers' textual_inversion: 5e-4 (scaled by the batch there), a few thousand steps, constant.
    ("textual_inversion", "sd1"): Hyperparameters(
        steps=2000, learning_rate=2e-3, warmup_steps=100, batch_size=4, resolution=512, rank=0, alpha=0.0
    ),
    ("textual_inversion", "sdxl"): Hyperparameters(
        steps=2000, learning_rate=2e-3, warmup_steps=100, batch_size=2, resolution=1024, rank=0, alpha=0.0
    ),
}

_MODEL_DEFAULTS: dict[tuple[str, str], Hyperparameters] = {
    # The shipped demo model (256 px, 2-core CPU), measured by tests/demo/test_adapter_training.py. Its captions say
    # left and right, so no flips; the LoRA needs a high rate and rank to learn a new shape in 300 steps.
    ("lora", "demo"): Hyperparameters(
        steps=300,
        learning_rate=2e-3,
        warmup_steps=10,
        rank=16,
        alpha=16.0,
        batch_size=4,
        resolution=256,
        random_flip=False,
    ),
    # Offset noise as the demo model was trained with: a colour is the latents' low frequencies.
    ("textual_inversion", "demo"): Hyperparameters(
        steps=120,
        learning_rate=2e-2,
        warmup_steps=10,
        batch_size=4,
        resolution=256,
        random_flip=False,
        noise_offset=0.1,
        rank=0,
        alpha=0.0,
    ),
}


def defaults(method: str, family: str, model: str | None = None) -> Hyperparameters:
    """The hyperparameters a training of ``method`` on a model of ``family`` (optionally: that model) starts from.

    LoRA: rank 8 (alpha = rank), AdamW at 1e-4, constant after 50 warm-up steps, batch 4 (SDXL 2), 1000 steps,
    the family's native side; textual inversion: 2e-3 (diffusers' 5e-4 × its batch scaling), 2000 steps.
    ``model="demo"`` gives the demo model's, tuned to learn its concepts in a few CPU minutes.
    """
    if (method, family) not in _DEFAULTS:
        raise ValueError(f"no defaults for {method!r} on the {family!r} family")
    if model is not None and (method, model) in _MODEL_DEFAULTS:
        return _MODEL_DEFAULTS[(method, model)]
    return _DEFAULTS[(method, family)]


def hyperparameters_from(
    request: RequestHyperparameters | Mapping[str, Any],
    method: str = "lora",
    family: str = "sd1",
    model: str | None = None,
) -> Hyperparameters:
    """The session's hyperparameters from a request's (resolved by the gateway); a null takes ``defaults``."""
    given = request.model_dump() if hasattr(request, "model_dump") else dict(request)
    base = defaults(method, family, model)
    names = {f.name for f in fields(Hyperparameters)}
    chosen = {k: v for k, v in given.items() if k in names and v is not None}
    if "min_snr_gamma" in given and given["min_snr_gamma"] is None:
        chosen["min_snr_gamma"] = None  # null means off, not "the default"
    hp = replace(base, **chosen)
    if "alpha" not in chosen and "rank" in chosen:
        hp = replace(hp, alpha=float(hp.rank))  # alpha defaults to the rank (scale 1)
    return hp


def family_of(pipe: Any) -> TrainFamily:
    """``sdxl`` for a pipeline with two text encoders, else ``sd1``."""
    return "sdxl" if getattr(pipe, "text_encoder_2", None) is not None else "sd1"


def _autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def _bare(module: Any) -> Any:
    """The module under ``torch.compile`` (training runs eagerly)."""
    return getattr(module, "_orig_mod", module)


@dataclass
class _Example:
    """One example, encoded: latents (and the mirrored image's), the original size and the crop's top left."""

    latents: torch.Tensor
    flipped: torch.Tensor | None
    original_size: tuple[int, int]
    crop_top_left: tuple[int, int]


class _Snapshot:
    """Everything about a pipeline's modules a session may change, to put back exactly."""

    def __init__(self, modules: Sequence[torch.nn.Module]) -> None:
        self.modes = [(m, m.training) for root in modules for m in root.modules()]
        self.grads = [(p, p.requires_grad) for root in modules for p in root.parameters()]

    def restore(self) -> None:
        for module, training in self.modes:
            module.train(training)
        for param, wanted in self.grads:
            param.requires_grad_(wanted)


class TrainingSession:
    """Trains one adapter on a warm pipeline (see the module's docstring); ``close()`` it in a ``finally``."""

    def __init__(
        self,
        pipe: Any,
        method: str,
        examples: Sequence[tuple[Image.Image, str]],
        hyperparameters: Hyperparameters,
        *,
        trigger_word: str,
        initializer_token: str | None = None,
        adapter_name: str | None = None,
        compile_with: CompileOptions | None = None,
    ) -> None:
        if method not in ("lora", "textual_inversion"):
            raise ValueError(f"unknown training method {method!r}")
        if not examples:
            raise ValueError("a training needs at least one example")
        self.pipe = pipe
        self.method = method
        self.hp = hyperparameters
        self.trigger_word = trigger_word
        self.family = family_of(pipe)
        if method == "textual_inversion" and self.family == "sdxl":
            raise NotImplementedError("textual inversion on SDXL (one vector per text encoder) is not implemented")
        if hyperparameters.resolution % 8:
            raise ValueError("the resolution must be a multiple of 8")
        self.unet = _bare(pipe.unet)
        self.vae = pipe.vae
        self.text_encoders = [m for m in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)) if m is not None]
        self.device = self.unet.device
        self.dtype = self.unet.dtype
        half = self.device.type == "cuda" and self.dtype in (torch.float16, torch.bfloat16)
        self.autocast = self.dtype if half else None
        self.adapter_name = adapter_name or f"training_{uuid.uuid4().hex[:12]}"
        self.generator = torch.Generator("cpu").manual_seed(hyperparameters.seed)
        from diffusers import DDPMScheduler

        train_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        self.alphas_cumprod = train_scheduler.alphas_cumprod.to(self.device, torch.float32)
        self.prediction_type = str(train_scheduler.config.get("prediction_type", "epsilon"))
        self._snapshot = _Snapshot([self.unet, self.vae, *self.text_encoders])
        self._closed = False
        self._undo: list[Callable[[], None]] = []  # what close() runs, last first
        self._order = torch.empty(0, dtype=torch.long)
        self._cursor = 0
        self.vector: torch.nn.Parameter | None = None
        self._forward: Any = None  # the UNet as the loss calls it (compiled or not); set below
        self._regions: list[torch.nn.Module] = []
        self._cudagraphs = compile_with is not None and compile_with.mode == "reduce-overhead"
        try:
            for module in (self.unet, self.vae, *self.text_encoders):
                module.requires_grad_(False)
            self.examples = self._encode_images([image for image, _ in examples])
            captions = [caption for _, caption in examples]
            if method == "lora":
                params = self._add_lora()
                self._contexts = self._encode_captions(captions)
            else:
                params = [self._add_token(initializer_token or "")]
                self._token_ids = self._tokenize(captions)
            self.trainer = Trainer(
                params,
                OptimizerConfig(
                    learning_rate=hyperparameters.learning_rate,
                    lr_scheduler=hyperparameters.lr_scheduler,
                    warmup_steps=hyperparameters.warmup_steps,
                    weight_decay=hyperparameters.weight_decay,
                    max_grad_norm=hyperparameters.max_grad_norm,
                ),
                hyperparameters.steps,
                grad_scaler=self.autocast is torch.float16,
            )
            self._forward = self._compiled(compile_with) if compile_with is not None else self.unet
        except BaseException:
            self.close()
            raise

    # setting up ----------------------------------------------------------------------------------------
    def _fit(self, image: Image.Image) -> tuple[Image.Image, tuple[int, int], tuple[int, int]]:
        """Resize (short side = resolution), then the centre square, or a size of multiples of 8 to crop from."""
        size = self.hp.resolution
        image = image.convert("RGB")
        w, h = image.size
        scale = size / min(w, h)
        new = (max(size, round(w * scale)), max(size, round(h * scale)))
        if new != (w, h):
            image = image.resize(new, Image.Resampling.BILINEAR)
        if self.hp.center_crop:
            cw, ch = size, size
        else:
            cw, ch = new[0] // 8 * 8, new[1] // 8 * 8
        left, top = (new[0] - cw) // 2, (new[1] - ch) // 2
        if (cw, ch) != new:
            image = image.crop((left, top, left + cw, top + ch))
        return image, (h, w), (top, left)

    @torch.no_grad()
    def _encode_images(self, images: Sequence[Image.Image]) -> list[_Example]:
        vae = self.vae
        upcast = vae.dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", False))
        if upcast:
            vae.to(dtype=torch.float32)
        try:
            dtype = vae.dtype
            scale = float(vae.config.scaling_factor)
            shift = float(getattr(vae.config, "shift_factor", None) or 0.0)

            def encode(img: Image.Image) -> torch.Tensor:
                pixels = torch.from_numpy(np.asarray(img, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1.0
                mean = vae.encode(pixels[None].to(self.device, dtype)).latent_dist.mean
                encoded: torch.Tensor = ((mean.float() - shift) * scale)[0]
                return encoded

            out = []
            for image in images:
                fitted, original, top_left = self._fit(image)
                flipped = encode(fitted.transpose(Image.Transpose.FLIP_LEFT_RIGHT)) if self.hp.random_flip else None
                out.append(_Example(encode(fitted), flipped, original, top_left))
            return out
        finally:
            if upcast:
                vae.to(dtype=torch.float16)

    @torch.no_grad()
    def _encode_captions(self, captions: list[str]) -> list[torch.Tensor]:
        """Each caption's text embeddings (SDXL: and its pooled one): once, the text encoder being frozen."""
        out = self.pipe.encode_prompt(
            prompt=captions, device=self.device, num_images_per_prompt=1, do_classifier_free_guidance=False
        )
        if self.family == "sdxl":
            return [out[0].detach(), out[2].detach()]
        return [out[0].detach()]

    def _tokenize(self, captions: list[str]) -> torch.Tensor:
        tokenizer = self.pipe.tokenizer
        ids = tokenizer(
            captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids
        return torch.as_tensor(ids)

    def _add_lora(self) -> list[torch.nn.Parameter]:
        from peft import LoraConfig
        from peft.tuners.tuners_utils import BaseTunerLayer

        unet, pipe = self.unet, self.pipe
        if self.hp.rank < 1:
            raise ValueError("a LoRA's rank is at least 1")
        if is_fused(pipe):  # LoRA layers wrap to_q/to_k/to_v, which fused attention skips
            pipe.unfuse_qkv_projections()
            self._undo.append(pipe.fuse_qkv_projections)
        had_peft = getattr(unet, "_hf_peft_config_loaded", None)
        prior = list(getattr(unet, "peft_config", {}) or {}) if had_peft else []
        if prior:
            active = list(unet.active_adapters())
            layers = [m for m in unet.modules() if isinstance(m, BaseTunerLayer)]
            disabled = bool(layers) and all(m.disable_adapters for m in layers)

            def back_to_prior() -> None:
                unet.delete_adapters(self.adapter_name)
                unet.set_adapter(active or prior)
                if disabled:
                    unet.disable_lora()

            self._undo.append(back_to_prior)
        else:
            from diffusers.utils import recurse_remove_peft_layers

            def bare_again() -> None:
                recurse_remove_peft_layers(unet)
                if hasattr(unet, "peft_config"):
                    del unet.peft_config
                unet._hf_peft_config_loaded = had_peft

            self._undo.append(bare_again)
        config = LoraConfig(
            r=self.hp.rank,
            lora_alpha=self.hp.alpha,  # type: ignore[arg-type]  # peft scales by alpha / r: a float is fine
            init_lora_weights="gaussian",
            target_modules=list(LORA_TARGETS),
        )
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.hp.seed)  # the LoRA's initial weights follow the seed too
            unet.add_adapter(config, adapter_name=self.adapter_name)
        unet.enable_lora()  # a LoraCache leaves its layers disabled between jobs
        unet.requires_grad_(False)
        marker = f".{self.adapter_name}."
        params = [p for name, p in unet.named_parameters() if marker in name]
        for p in params:
            p.data = p.data.float()  # train in float32 on a float16 UNet
            p.requires_grad_(True)
        return params

    def _add_token(self, initializer: str) -> torch.nn.Parameter:
        tokenizer, text_encoder = self.pipe.tokenizer, self.pipe.text_encoder
        token = self.trigger_word
        if not hasattr(tokenizer, "_tokenizer"):
            raise NotImplementedError("textual inversion needs a tokenizers-backed (fast) tokenizer")
        if token in tokenizer.get_vocab():
            raise ValueError(f"the tokenizer already has the token {token!r}")
        init_ids = tokenizer.encode(initializer, add_special_tokens=False)
        if not init_ids:
            raise ValueError(f"the initializer token {initializer!r} tokenises to nothing")
        from tokenizers import Tokenizer

        saved = tokenizer._tokenizer.to_str()
        original = text_encoder.get_input_embeddings()
        # transformers resizes the embedding module in place (its weight's data is swapped): keep the old data
        rows, weights, padding = original.num_embeddings, original.weight.data, original.padding_idx
        vocab_size = text_encoder.config.vocab_size

        def untokenize() -> None:
            tokenizer._tokenizer = Tokenizer.from_str(saved)
            original.weight.data, original.num_embeddings, original.padding_idx = weights, rows, padding
            text_encoder.set_input_embeddings(original)
            text_encoder.config.vocab_size = vocab_size

        self._undo.append(untokenize)
        if tokenizer.add_tokens([token]) != 1:
            raise ValueError(f"the token {token!r} could not be added")
        self.token_id = int(tokenizer.convert_tokens_to_ids(token))
        with torch.random.fork_rng(devices=[]):  # it draws the new row from torch's generator: leave that alone
            text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        embedding = text_encoder.get_input_embeddings()
        embedding.requires_grad_(False)
        with torch.no_grad():
            start = weights[torch.tensor(init_ids, device=weights.device)].float().mean(dim=0)
            embedding.weight[self.token_id] = start.to(embedding.weight.dtype)
        self.vector = torch.nn.Parameter(start.clone())
        token_id, vector = self.token_id, self.vector

        def put_vector(module: torch.nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
            mask = (args[0] == token_id).unsqueeze(-1)
            return torch.where(mask, vector.to(output.dtype), output)

        handle = embedding.register_forward_hook(put_vector)
        self._undo.append(handle.remove)
        return self.vector

    def _compiled(self, options: CompileOptions) -> Any:
        """The UNet's forward as the loss calls it, compiled as ``options`` say (after the adapter is added)."""
        kwargs: dict[str, Any] = {"dynamic": False, "backend": options.backend}
        if options.mode is not None:
            kwargs["mode"] = options.mode
        if options.scope == "full":
            return torch.compile(self.unet, **kwargs)
        names = set(getattr(self.unet, "_repeated_blocks", None) or ())
        self._regions = [m for m in self.unet.modules() if type(m).__name__ in names]
        if not self._regions:
            raise ValueError(f"{type(self.unet).__name__} names no repeated blocks to compile regionally")
        for region in self._regions:
            region.compile(fullgraph=True, **kwargs)

        def uncompile() -> None:
            for region in self._regions:
                region._compiled_call_impl = None

        self._undo.append(uncompile)
        return self.unet

    # training --------------------------------------------------------------------------------------------
    def _next_indices(self) -> list[int]:
        out: list[int] = []
        n = len(self.examples)
        while len(out) < self.hp.batch_size:
            if self._cursor >= len(self._order):
                self._order = torch.randperm(n, generator=self.generator)
                self._cursor = 0
            out.append(int(self._order[self._cursor]))
            self._cursor += 1
        return out

    def _batch(self) -> tuple[torch.Tensor, list[int], list[tuple[int, int, int, int, int, int]]]:
        """The batch's latents, example indices and SDXL time ids (original size, crop top left, target size)."""
        side = self.hp.resolution // 8
        latents, time_ids = [], []
        indices = self._next_indices()
        for i in indices:
            example = self.examples[i]
            flip = self.hp.random_flip and bool(torch.rand((), generator=self.generator) < 0.5)
            source = example.flipped if flip and example.flipped is not None else example.latents
            _, lh, lw = source.shape
            top = int(torch.randint(0, lh - side + 1, (), generator=self.generator)) if lh > side else 0
            left = int(torch.randint(0, lw - side + 1, (), generator=self.generator)) if lw > side else 0
            latents.append(source[:, top : top + side, left : left + side])
            crop_top, crop_left = example.crop_top_left
            time_ids.append(
                (
                    *example.original_size,
                    crop_top + top * 8,
                    crop_left + left * 8,
                    self.hp.resolution,
                    self.hp.resolution,
                )
            )
        return torch.stack(latents), indices, time_ids

    def _loss(self) -> torch.Tensor:
        if self._cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()  # type: ignore[no-untyped-call]  # a new step: the graphs' last outputs may be reused
        latents, indices, time_ids = self._batch()
        added: dict[str, torch.Tensor] | None = None
        if self.method == "lora":
            self.unet.train()
            context = self._contexts[0][indices]
            if self.family == "sdxl":
                ids = torch.tensor(time_ids, dtype=context.dtype, device=self.device)
                added = {"text_embeds": self._contexts[1][indices], "time_ids": ids}
        else:
            text_encoder = self.pipe.text_encoder
            text_encoder.train()
            ids = self._token_ids[indices].to(self.device)
            mask = None
            if getattr(text_encoder.config, "use_attention_mask", False):
                mask = (ids != self.pipe.tokenizer.pad_token_id).long()
            with _autocast(self.device, self.autocast):
                context = text_encoder(ids, attention_mask=mask)[0]
        loss, _ = diffusion_loss(
            self._forward, latents, context, self.alphas_cumprod, min_snr_gamma=self.hp.min_snr_gamma,
            noise_offset=self.hp.noise_offset, prediction_type=self.prediction_type, generator=self.generator,
            added_cond_kwargs=added, autocast_dtype=self.autocast,
        )  # fmt: skip
        return loss

    @property
    def step_count(self) -> int:
        """Steps taken so far (a resumed session counts on from its checkpoint)."""
        return self.trainer.step

    def step(self) -> dict[str, float]:
        """One optimisation step: ``{"step": n, "loss": ..., "lr": ...}`` (reading the loss waits for the device)."""
        info = self.step_async()
        return {"step": info.step, "loss": float(info.loss), "lr": info.lr}

    def step_async(self) -> Step:
        """One optimisation step, its loss left on the device (queued work runs on while the caller goes on)."""
        self._check_open()
        return self.trainer.train_step(self._loss)

    def run(self, hooks: Sequence[StepHook] = (), should_stop: Callable[[int], bool] | None = None) -> int:
        """Train until ``steps`` (or ``should_stop``), calling the hooks after every step; returns the step."""
        self._check_open()
        return run_loop(self.trainer, self._loss, total_steps=self.hp.steps, hooks=hooks, should_stop=should_stop)

    # checkpoints -------------------------------------------------------------------------------------------
    def _adapter_state(self) -> dict[str, torch.Tensor]:
        if self.method == "lora":
            from peft.utils import get_peft_model_state_dict

            state = get_peft_model_state_dict(self.unet, adapter_name=self.adapter_name)
            return {k: v.detach().float().cpu().clone() for k, v in state.items()}
        assert self.vector is not None
        return {"vector": self.vector.detach().cpu().clone()}

    def state_dict(self) -> bytes:
        """A checkpoint (``torch.save`` bytes, tensors and plain values only): adapter, optimiser, schedule,
        generators, data order, step."""
        self._check_open()
        np_state: Any = np.random.get_state()
        state = {
            "version": CHECKPOINT_VERSION,
            "method": self.method,
            "hyperparameters": asdict(self.hp),
            "adapter": self._adapter_state(),
            "trainer": self.trainer.state_dict(),
            "data": {"order": self._order.clone(), "cursor": self._cursor},
            "rng": {
                "session": self.generator.get_state(),
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "numpy": [str(np_state[0]), torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
                "python": list(random.getstate()),
            },
        }
        buffer = io.BytesIO()
        torch.save(state, buffer)
        return buffer.getvalue()

    def load_state_dict(self, data: bytes) -> None:
        """Continue from a checkpoint of a session with the same method, examples and hyperparameters."""
        self._check_open()
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        if state.get("version") != CHECKPOINT_VERSION or state.get("method") != self.method:
            raise ValueError("not a checkpoint of this kind of training")
        if self.method == "lora":
            from peft.utils import set_peft_model_state_dict

            result = set_peft_model_state_dict(self.unet, state["adapter"], adapter_name=self.adapter_name)
            if getattr(result, "unexpected_keys", None):
                raise ValueError("the checkpoint's LoRA does not fit this model")
        else:
            assert self.vector is not None
            with torch.no_grad():
                self.vector.copy_(state["adapter"]["vector"])
        self.trainer.load_state_dict(state["trainer"])
        self._order = state["data"]["order"].clone()
        self._cursor = int(state["data"]["cursor"])
        rng = state["rng"]
        self.generator.set_state(rng["session"])
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        name, keys, pos, has_gauss, cached = rng["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
        version, internal, gauss = rng["python"]
        random.setstate((version, tuple(internal), gauss))

    # using it ------------------------------------------------------------------------------------------------
    def _view(self) -> Any:
        """A pipeline sharing every module (the UNet without ``torch.compile``) with a fresh scheduler."""
        import inspect

        pipe = self.pipe
        cls = type(pipe)
        accepted = inspect.signature(cls.__init__).parameters
        options = {k: v for k, v in pipe.config.items() if k in accepted and k not in pipe.components}
        fresh = type(pipe.scheduler).from_config(pipe.scheduler.config)
        view = cls(**{**pipe.components, **options, "unet": self.unet, "scheduler": fresh})
        view.set_progress_bar_config(disable=True)
        return view

    @torch.no_grad()
    def render(self, prompts: Sequence[str], seed: int, steps: int, guidance: float, size: int) -> list[Image.Image]:
        """The prompts drawn with the adapter as it is now; prompt i from a CPU generator seeded ``seed + i``."""
        self._check_open()
        for module in (self.unet, *self.text_encoders):
            module.eval()
        compiled = [(region, region._compiled_call_impl) for region in self._regions]
        for region, _ in compiled:
            region._compiled_call_impl = None  # drawn eagerly: no compilation for inference shapes
        try:
            return self._draw(prompts, seed, steps, guidance, size)
        finally:
            for region, impl in compiled:
                region._compiled_call_impl = impl

    def _draw(self, prompts: Sequence[str], seed: int, steps: int, guidance: float, size: int) -> list[Image.Image]:
        generators = [torch.Generator("cpu").manual_seed(seed + i) for i in range(len(prompts))]
        out = self._view()(
            list(prompts), num_inference_steps=steps, guidance_scale=guidance, height=size, width=size,
            generator=generators,
        )  # fmt: skip
        return [image.convert("RGB") for image in out.images]

    def metadata(self) -> dict[str, Any]:
        """What the exported file is (also written into its safetensors header, as strings)."""
        hp = self.hp
        meta: dict[str, Any] = {"method": self.method, "family": self.family, "steps": self.trainer.step,
                                "resolution": hp.resolution, "trigger_word": self.trigger_word}  # fmt: skip
        if self.method == "lora":
            meta.update(rank=hp.rank, alpha=hp.alpha, target_modules=list(LORA_TARGETS))
        else:
            meta.update(token=self.trigger_word, vectors=1)
        return meta

    def export(self) -> tuple[bytes, dict[str, Any]]:
        """The adapter as ``.safetensors`` bytes, and its metadata.

        LoRA: diffusers' layout (``save_lora_weights``, with the LoRA config in the header), which
        ``pipe.load_lora_weights`` loads. Embedding: ``{token: (1, dim) float32}``, which
        ``pipe.load_textual_inversion(path, token=...)`` loads.
        """
        self._check_open()
        meta = self.metadata()
        if self.method == "lora":
            from diffusers.utils import convert_state_dict_to_diffusers
            from peft.utils import get_peft_model_state_dict

            layers = convert_state_dict_to_diffusers(
                get_peft_model_state_dict(self.unet, adapter_name=self.adapter_name)
            )
            layers = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in layers.items()}
            config = self.unet.peft_config[self.adapter_name].to_dict()
            with tempfile.TemporaryDirectory() as folder:
                type(self.pipe).save_lora_weights(
                    folder, unet_lora_layers=layers, safe_serialization=True, unet_lora_adapter_metadata=config
                )
                return (Path(folder) / "pytorch_lora_weights.safetensors").read_bytes(), meta
        from safetensors.torch import save

        assert self.vector is not None
        tensors = {self.trigger_word: self.vector.detach().to("cpu", torch.float32).reshape(1, -1).contiguous()}
        header = {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}
        return save(tensors, metadata=header), meta

    # leaving -----------------------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the training session is closed")

    def close(self) -> None:
        """Take the adapter off and put the pipeline back exactly as it was (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            while self._undo:
                self._undo.pop()()
        finally:
            self._snapshot.restore()
            self.vector = None
            self.trainer = None  # type: ignore[assignment]
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
