"""The evaluation's scene reader: exact pixel analysis plus a small silhouette classifier.

Background colour, main shape colour and position are read exactly from the pixels
(train/pixels.py). The shape's kind is read by a small CNN from its silhouette: the non-background
mask cropped to a square around the shape and resized to 32x32, so kind is learnt independently of
size and position. The CNN is trained on renders of the procedural dataset (its own seed) with
blur before the mask is taken, so it also reads the softer edges a diffusion model draws. Size is
the crop's side (small shapes span under 68 px, large ones over).

The Fréchet distance uses the reader's feature vector: the CNN's 64-d penultimate features, the
shape's and the background's mean colours, the shape's centre and its extent (73 numbers).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from PIL import Image, ImageFilter
from safetensors.torch import load_file, save_file
from torch import nn

from train.dataset import SHAPES, Scene, render_array, sample
from train.pixels import read, silhouette

SIDE = 32
SIZE_THRESHOLD = 68.0
FEATURES = 64


class SilhouetteNet(nn.Module):
    """Three conv stages on a 32x32 silhouette, one hidden layer, one head over the shape kinds."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )  # fmt: skip
        self.hidden = nn.Linear(64 * 4 * 4, FEATURES)
        self.head = nn.Linear(FEATURES, len(SHAPES))

    def features(self, silhouettes: torch.Tensor) -> torch.Tensor:
        """(N, 32, 32) float silhouettes → (N, 64) features."""
        return torch.relu(self.hidden(self.body(silhouettes[:, None]).flatten(1)))

    def forward(self, silhouettes: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(silhouettes))  # type: ignore[no-any-return]


def one_shape_scenes(seed: int, count: int) -> list[Scene]:
    """``count`` one-shape training scenes of dataset ``seed`` (two-shape scenes are skipped)."""
    out: list[Scene] = []
    index = 0
    while len(out) < count:
        scene = sample(seed, index).scene
        index += 1
        if len(scene.shapes) == 1:
            out.append(scene)
    return out


def _blurred_silhouette(scene: Scene, radius: float) -> np.ndarray:
    image = Image.fromarray(render_array(scene))
    if radius > 0:
        image = image.filter(ImageFilter.GaussianBlur(float(radius)))
    mask = read(np.asarray(image)).mask
    assert mask is not None
    return silhouette(mask, SIDE)[0]


def train_silhouettes(seed: int = 7, count: int = 6000, epochs: int = 8, batch: int = 64) -> SilhouetteNet:
    """Train the kind classifier on CPU (about a minute)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    scenes = one_shape_scenes(seed, count)
    radii = rng.choice([0.0, 0.0, 1.0, 2.0, 3.0], size=count)
    x = torch.from_numpy(np.stack([_blurred_silhouette(s, r) for s, r in zip(scenes, radii, strict=True)]))
    y = torch.tensor([SHAPES.index(s.shapes[0].kind) for s in scenes])
    model = SilhouetteNet()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = epochs * (count // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)
    started = time.monotonic()
    for epoch in range(epochs):
        order = torch.randperm(count, generator=gen)
        correct = 0
        for start in range(0, count - batch + 1, batch):
            idx = order[start : start + batch]
            logits = model(x[idx])
            loss = F.cross_entropy(logits, y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            correct += int((logits.argmax(1) == y[idx]).sum())
        accuracy = correct / (count // batch * batch)
        print(f"silhouette epoch {epoch + 1}/{epochs} train accuracy {accuracy:.3f} "
              f"{time.monotonic() - started:.0f}s", flush=True)  # fmt: skip
    return model.eval()


def load_or_train(path: Path) -> SilhouetteNet:
    """The cached kind classifier at ``path``, trained and saved there first if missing."""
    model = SilhouetteNet()
    if path.exists():
        model.load_state_dict(load_file(str(path)))
        return model.eval()
    model = train_silhouettes()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model


@dataclass(frozen=True)
class SceneReading:
    """Everything the reader says about one image, and its feature vector."""

    background: str
    colour: str | None
    position: str | None
    kind: str | None
    size: str | None
    features: np.ndarray


@torch.no_grad()
def read_scenes(model: SilhouetteNet, images: np.ndarray) -> list[SceneReading]:
    """Read (N, 256, 256, 3) uint8 images."""
    out: list[SceneReading] = []
    for image in images:
        r = read(image)
        assert r.mask is not None
        sil, extent = silhouette(r.mask, SIDE)
        emb = model.features(torch.from_numpy(sil)[None])[0].numpy()
        kind = SHAPES[int(model.head(torch.from_numpy(emb)[None]).argmax())] if r.colour else None
        size = ("large" if extent > SIZE_THRESHOLD else "small") if r.colour else None
        shape_rgb = r.shape_rgb if r.shape_rgb is not None else r.background_rgb
        if r.colour:
            ys, xs = np.nonzero(r.mask)
            centre = np.array([xs.mean(), ys.mean()]) / image.shape[1]
        else:
            centre = np.array([0.5, 0.5])
        extras = np.concatenate([shape_rgb / 255.0, r.background_rgb / 255.0, centre, [extent / image.shape[1]]])
        out.append(SceneReading(r.background, r.colour, r.position, kind, size, np.concatenate([emb, extras])))
    return out


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (numpy only).

    ``|mu_a - mu_b|^2 + tr(Sa) + tr(Sb) - 2 tr((Sa^1/2 Sb Sa^1/2)^1/2)``; the last trace is the sum
    of the square roots of the eigenvalues of the symmetric matrix ``Sa^1/2 Sb Sa^1/2``.
    """
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(cov_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    middle = root_a @ cov_b @ root_a
    eig = np.linalg.eigvalsh((middle + middle.T) / 2)
    trace_root = float(np.sqrt(np.clip(eig, 0, None)).sum())
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_root)
