"""Checkpoints small enough to travel back from the device machine.

A checkpoint is a folder: ``pipeline/`` (the EMA weights as the fp16 diffusers folder that ships),
``raw/`` (the optimiser's own fp16 weights of the text encoder and UNet, to resume from) and
``state.json`` (progress and losses). It travels as an uncompressed tar split into parts of at most
15 MiB (the device tool returns files of up to 16 MiB).
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

PART_BYTES = 15 * 1024 * 1024
PREFIX = "ckpt.tar.part"


def save_raw(module: torch.nn.Module, path: Path) -> None:
    """A module's weights as fp16 safetensors."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in module.state_dict().items()}
    save_file(tensors, str(path))


def load_raw(module: torch.nn.Module, path: Path) -> None:
    """Load fp16 safetensors weights into a module (cast to the module's dtype)."""
    module.load_state_dict(load_file(str(path)))


def write_parts(folder: Path, out: Path) -> list[Path]:
    """Pack ``folder`` into ``out/ckpt.tar.partNN`` files, replacing any older parts atomically."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(folder, arcname="ckpt")
    data = buffer.getvalue()
    out.mkdir(parents=True, exist_ok=True)
    parts: list[Path] = []
    for n, start in enumerate(range(0, len(data), PART_BYTES)):
        final = out / f"{PREFIX}{n:02d}"
        tmp = out / f".{final.name}.tmp"
        tmp.write_bytes(data[start : start + PART_BYTES])
        tmp.replace(final)
        parts.append(final)
    for stale in out.glob(f"{PREFIX}*"):
        if stale not in parts:
            stale.unlink()
    return parts


def read_parts(source: Path, target: Path) -> Path:
    """Unpack the parts found in ``source`` into ``target``; returns the checkpoint folder."""
    parts = sorted(source.glob(f"{PREFIX}*"))
    if not parts:
        raise FileNotFoundError(f"no {PREFIX}* files in {source}")
    data = b"".join(p.read_bytes() for p in parts)
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        tar.extractall(target, filter="data")
    return target / "ckpt"


def write_state(folder: Path, state: dict[str, Any]) -> None:
    """Write ``state.json`` into a checkpoint folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "state.json").write_text(json.dumps(state, indent=1))


def read_state(folder: Path) -> dict[str, Any]:
    """Read a checkpoint's ``state.json``."""
    state: dict[str, Any] = json.loads((folder / "state.json").read_text())
    return state
