"""Prompts longer than the text encoder reads: encoded in chunks, as AUTOMATIC1111 and ComfyUI do.

A CLIP text encoder reads 77 tokens; a pipeline given a longer prompt cuts the rest off. When any prompt or
negative prompt of a call is longer than that, the call is given embeddings instead of text: each prompt is
split into chunks the encoder can read (at sentence, then phrase, then word boundaries), each chunk encoded,
and the chunks' embeddings laid end to end (the negative prompts padded to the same length). The encoding is
compel's (``compel.EmbeddingsProvider``), fed each prompt as one fragment of weight 1, so no prompt syntax is
interpreted here. Calls whose prompts all fit run exactly as before: the pipeline encodes them itself.
"""

from __future__ import annotations

from typing import Any

import torch


def token_count(pipe: Any, text: str) -> int:
    """Tokens of a prompt as the pipeline's first tokenizer reads it (embedding tokens expanded)."""
    if hasattr(pipe, "maybe_convert_prompt"):
        text = pipe.maybe_convert_prompt(text, pipe.tokenizer)
    return len(pipe.tokenizer(text, truncation=False, verbose=False).input_ids)


def too_long(pipe: Any, texts: list[str]) -> bool:
    """Whether some prompt of a call is longer than the text encoder reads."""
    limit = int(pipe.tokenizer.model_max_length)
    return any(text and token_count(pipe, text) > limit for text in texts)


def _compel(pipe: Any, sdxl: bool) -> Any:
    from compel import Compel, DiffusersTextualInversionManager, ReturnedEmbeddingsType

    if sdxl:
        return Compel(
            tokenizer=[pipe.tokenizer, pipe.tokenizer_2],
            text_encoder=[pipe.text_encoder, pipe.text_encoder_2],
            textual_inversion_manager=DiffusersTextualInversionManager(pipe),
            returned_embeddings_type=ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED,
            requires_pooled=[False, True],
            truncate_long_prompts=False,
            device=str(pipe.text_encoder.device),
        )
    return Compel(
        tokenizer=pipe.tokenizer,
        text_encoder=pipe.text_encoder,
        textual_inversion_manager=DiffusersTextualInversionManager(pipe),
        truncate_long_prompts=False,
        device=str(pipe.text_encoder.device),
    )


@torch.inference_mode()
def long_prompt_embeddings(pipe: Any, prompts: list[str], negatives: list[str], *, sdxl: bool) -> dict[str, Any]:
    """The pipeline arguments that stand for ``prompt`` and ``negative_prompt`` for prompts of any length."""
    compel = _compel(pipe, sdxl)
    provider = compel.conditioning_provider
    device = pipe.text_encoder.device

    def embed(text: str) -> torch.Tensor:
        embeddings: torch.Tensor = provider.get_embeddings_for_weighted_prompt_fragments(
            text_batch=[[text]], fragment_weights_batch=[[1.0]], device=device
        )
        return embeddings

    positive = [embed(p) for p in prompts]
    negative = [embed(n) for n in negatives]
    # Shorter prompts are padded with the empty prompt's embedding, one encoder window at a time.
    padded = compel.pad_conditioning_tensors_to_same_length([*positive, *negative], precomputed_padding=embed(""))
    prompt_embeds = torch.cat(padded[: len(prompts)])
    negative_embeds = torch.cat(padded[len(prompts) :])
    args: dict[str, Any] = {"prompt_embeds": prompt_embeds, "negative_prompt_embeds": negative_embeds}
    if sdxl:
        pooled = torch.cat([provider.get_pooled_embeddings([p], device=device) for p in prompts])
        negative_pooled = torch.cat([provider.get_pooled_embeddings([n], device=device) for n in negatives])
        if getattr(pipe.config, "force_zeros_for_empty_prompt", False):  # as SDXL's pipeline does for no negative
            for i, text in enumerate(negatives):
                if not text:
                    negative_embeds[i].zero_()
                    negative_pooled[i].zero_()
        args["pooled_prompt_embeds"] = pooled
        args["negative_pooled_prompt_embeds"] = negative_pooled
    return args
