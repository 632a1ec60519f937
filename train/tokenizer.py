"""A small, real CLIP tokenizer (byte-level BPE) learnt from the caption vocabulary, offline.

The vocabulary holds every byte (as CLIP's printable stand-ins, with and without the end-of-word
mark ``</w>``), the pieces that BPE learnt by merging the most frequent adjacent pair of the caption
words until every word is one token, and CLIP's two special tokens. Any other text still encodes,
falling back to smaller pieces and single bytes, exactly as CLIP's own tokenizer does.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from pathlib import Path
from typing import Any

END = "</w>"
BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
MAX_LENGTH = 77


def byte_symbols() -> list[str]:
    """The printable stand-in for each byte 0..255 used by GPT-2/CLIP byte-level BPE."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table: dict[int, int] = {b: b for b in keep}
    shift = 0
    for b in range(256):
        if b not in table:
            table[b] = 256 + shift
            shift += 1
    return [chr(table[b]) for b in range(256)]


def _symbols(word: str) -> tuple[str, ...]:
    stand_in = byte_symbols()
    chars = [stand_in[b] for b in word.encode("utf-8")]
    return (*chars[:-1], chars[-1] + END)


def learn_merges(word_counts: dict[str, int]) -> list[tuple[str, str]]:
    """Byte-pair merges, most frequent pair first, until every word is a single symbol."""
    words = {_symbols(w): n for w, n in word_counts.items()}
    merges: list[tuple[str, str]] = []
    while True:
        pairs: Counter[tuple[str, str]] = Counter()
        for symbols, n in words.items():
            for pair in itertools.pairwise(symbols):
                pairs[pair] += n
        if not pairs:
            return merges
        best = max(pairs, key=lambda p: (pairs[p], p))
        merges.append(best)
        merged: dict[tuple[str, ...], int] = {}
        for symbols, n in words.items():
            out: list[str] = []
            i = 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            merged[tuple(out)] = merged.get(tuple(out), 0) + n
        words = merged


def vocabulary(merges: list[tuple[str, str]]) -> dict[str, int]:
    """Token → id: bytes, bytes with ``</w>``, merged pieces in merge order, then the specials."""
    symbols = byte_symbols()
    vocab: dict[str, int] = {}
    for s in symbols:
        vocab[s] = len(vocab)
    for s in symbols:
        vocab[s + END] = len(vocab)
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    vocab[BOS] = len(vocab)
    vocab[EOS] = len(vocab)
    return vocab


def write_tokenizer_files(word_counts: dict[str, int], folder: Path) -> tuple[Path, Path]:
    """Learn the BPE from caption word counts and write ``vocab.json`` and ``merges.txt``."""
    merges = learn_merges(word_counts)
    vocab = vocabulary(merges)
    folder.mkdir(parents=True, exist_ok=True)
    vocab_file, merges_file = folder / "vocab.json", folder / "merges.txt"
    vocab_file.write_text(json.dumps(vocab, ensure_ascii=False))
    merges_file.write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    return vocab_file, merges_file


def caption_word_counts(captions: list[str]) -> dict[str, int]:
    """How often each word occurs in a list of captions."""
    return dict(Counter(w for c in captions for w in c.lower().split()))


def load_tokenizer(folder: Path) -> Any:
    """The transformers ``CLIPTokenizer`` over ``vocab.json`` + ``merges.txt`` in ``folder``."""
    from transformers import CLIPTokenizer

    if (folder / "tokenizer_config.json").exists():
        return CLIPTokenizer.from_pretrained(str(folder))
    return CLIPTokenizer(
        vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"), model_max_length=MAX_LENGTH
    )


def build_tokenizer(folder: Path, seed: int = 0, samples: int = 5000) -> Any:
    """Learn the tokenizer from the captions of the first ``samples`` training samples."""
    from train.dataset import iterate, words

    counts = caption_word_counts([s.caption for s in iterate(seed, samples)])
    for w in words():  # every vocabulary word, even one the sample happened to miss
        counts.setdefault(w, 1)
    write_tokenizer_files(counts, folder)
    return load_tokenizer(folder)
