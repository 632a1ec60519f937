"""A procedural captioned dataset of simple scenes, deterministic from a seed.

Each scene is one or two shapes (circle, square, triangle, star, ring, cross) in a named colour,
a size (small or large) and a position (a 3x3 grid) on a plain or gradient background of another
named colour, rendered with Pillow at 256x256 (drawn at 2x and box-filtered, so edges are
anti-aliased) and described in plain English::

    a small red circle at the top left on a blue background
    a large yellow star on the right and a small white ring at the bottom on a purple gradient background

The generator also returns the structured labels, which the evaluation scores against. Sample ``i``
of seed ``s`` depends only on ``(s, i)``, so chunks can be rendered in parallel and in any order.

Held-out captions: a one-shape label tuple (shape, colour, size, position, background, style) is
held out when a hash of it falls in a fixed 1/20th; no training scene contains a held-out tuple,
and ``held_out_scenes`` lists them for evaluation.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

SIZE = 256
"""Rendered image side in pixels."""

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 38, 38),
    "orange": (247, 134, 22),
    "yellow": (250, 214, 30),
    "green": (34, 160, 64),
    "cyan": (36, 200, 222),
    "blue": (36, 76, 214),
    "purple": (132, 52, 184),
    "pink": (246, 128, 186),
    "white": (246, 246, 246),
    "black": (22, 22, 22),
}
EXTRA_COLOURS: dict[str, tuple[int, int, int]] = {
    "teal": (0, 128, 128),
}
"""Colours the demo model was never trained on (concepts for adapter training, train/concepts.py)."""
ALL_COLOURS: dict[str, tuple[int, int, int]] = {**COLOURS, **EXTRA_COLOURS}
SHAPES = ("circle", "square", "triangle", "star", "ring", "cross")
EXTRA_SHAPES = ("heart", "diamond")
"""Shapes the demo model was never trained on (a concept for LoRA training, train/concepts.py)."""
HEART = "heart"
SIZES = ("small", "large")
POSITIONS = (
    "top left",
    "top",
    "top right",
    "left",
    "center",
    "right",
    "bottom left",
    "bottom",
    "bottom right",
)
POSITION_PHRASES = {
    "top left": "at the top left",
    "top": "at the top",
    "top right": "at the top right",
    "left": "on the left",
    "center": "in the center",
    "right": "on the right",
    "bottom left": "at the bottom left",
    "bottom": "at the bottom",
    "bottom right": "at the bottom right",
}
STYLES = ("plain", "gradient")

COLOUR_NAMES = tuple(COLOURS)
_GRID = (0.2, 0.5, 0.8)
_RADIUS = {"small": (20.0, 28.0), "large": (44.0, 54.0)}
_JITTER = 10.0
_SCALE = 2  # supersampling factor for anti-aliased edges

# How often a caption leaves a part out (the image still has one): users write short prompts too.
P_NO_SIZE = 0.25
P_NO_POSITION = 0.25
P_NO_BACKGROUND = 0.15
P_TWO_SHAPES = 0.3


@dataclass(frozen=True)
class Shape:
    """One drawn shape: its labels and its exact geometry (pixels, at 256x256)."""

    kind: str
    colour: str
    size: str
    position: str
    cx: float
    cy: float
    radius: float
    angle: float


@dataclass(frozen=True)
class Scene:
    """A background and one or two shapes (the first is the main one)."""

    background: str
    style: str
    shapes: tuple[Shape, ...]
    gradient_axis: int = 0  # 0: top to bottom, 1: left to right
    gradient_amount: float = 0.3


@dataclass(frozen=True)
class Sample:
    """A scene and its caption."""

    scene: Scene
    caption: str
    parts: dict[str, bool] = field(default_factory=dict)


def words() -> list[str]:
    """Every word a caption can contain."""
    out = {"a", "an", "and", "on", "at", "in", "the", "background", "gradient"}
    out.update(COLOUR_NAMES, SHAPES, SIZES)
    for phrase in POSITION_PHRASES.values():
        out.update(phrase.split())
    return sorted(out)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _shape_phrase(shape: Shape, with_size: bool, with_position: bool) -> str:
    noun = " ".join(([shape.size] if with_size else []) + [shape.colour, shape.kind])
    text = f"{_article(noun)} {noun}"
    if with_position:
        text += " " + POSITION_PHRASES[shape.position]
    return text


def caption(scene: Scene, with_size: bool = True, with_position: bool = True, with_background: bool = True) -> str:
    """The plain-English caption of a scene, optionally leaving parts out."""
    text = " and ".join(_shape_phrase(s, with_size, with_position) for s in scene.shapes)
    if with_background:
        kind = "gradient background" if scene.style == "gradient" else "background"
        text += f" on {_article(scene.background)} {scene.background} {kind}"
    return text


def label_key(shape: Shape, scene: Scene) -> str:
    """The one-shape label tuple that decides whether a caption is held out."""
    return "|".join((shape.kind, shape.colour, shape.size, shape.position, scene.background, scene.style))


def is_held_out(shape: Shape, scene: Scene) -> bool:
    """Whether this shape-on-background combination is reserved for evaluation."""
    return zlib.crc32(label_key(shape, scene).encode()) % 20 == 0


def _place(rng: np.random.Generator, size: str, position: str) -> tuple[float, float, float]:
    radius = float(rng.uniform(*_RADIUS[size]))
    index = POSITIONS.index(position)
    cx = _GRID[index % 3] * SIZE + float(rng.uniform(-_JITTER, _JITTER))
    cy = _GRID[index // 3] * SIZE + float(rng.uniform(-_JITTER, _JITTER))
    lo, hi = radius + 4.0, SIZE - radius - 4.0
    return min(max(cx, lo), hi), min(max(cy, lo), hi), radius


def _shape(
    rng: np.random.Generator,
    background: str,
    kind: str | None = None,
    colour: str | None = None,
    size: str | None = None,
    position: str | None = None,
    avoid: str | None = None,
) -> Shape:
    kind = kind or str(rng.choice(SHAPES))
    colour = colour or str(rng.choice([c for c in COLOUR_NAMES if c != background]))
    size = size or str(rng.choice(SIZES))
    position = position or str(rng.choice([p for p in POSITIONS if p != avoid]))
    cx, cy, radius = _place(rng, size, position)
    angle = float(rng.uniform(-12.0, 12.0))
    return Shape(kind, colour, size, position, cx, cy, radius, angle)


def _scene(rng: np.random.Generator, background: str, style: str, shapes: tuple[Shape, ...]) -> Scene:
    return Scene(
        background=background,
        style=style,
        shapes=shapes,
        gradient_axis=int(rng.integers(0, 2)),
        gradient_amount=float(rng.uniform(0.2, 0.4)),
    )


def make_scene(
    rng: np.random.Generator,
    background: str,
    style: str,
    kind: str | None = None,
    colour: str | None = None,
    size: str | None = None,
    position: str | None = None,
) -> Scene:
    """A one-shape scene; the parts left ``None`` are drawn from ``rng`` (as in training scenes)."""
    shape = _shape(rng, background, kind, colour, size, position)
    return _scene(rng, background, style, (shape,))


def random_scene(rng: np.random.Generator) -> Scene:
    """A random training scene (never one that contains a held-out combination)."""
    while True:
        background = str(rng.choice(COLOUR_NAMES))
        style = str(rng.choice(STYLES))
        first = _shape(rng, background)
        shapes: tuple[Shape, ...] = (first,)
        if rng.random() < P_TWO_SHAPES:
            shapes = (first, _shape(rng, background, avoid=first.position))
        scene = _scene(rng, background, style, shapes)
        if not any(is_held_out(s, scene) for s in shapes):
            return scene


def sample(seed: int, index: int) -> Sample:
    """Training sample ``index`` of the dataset ``seed``: a scene and a caption (parts may be left out)."""
    rng = np.random.default_rng([seed, index])
    scene = random_scene(rng)
    parts = {
        "size": bool(rng.random() >= P_NO_SIZE),
        "position": bool(rng.random() >= P_NO_POSITION),
        "background": bool(rng.random() >= P_NO_BACKGROUND),
    }
    text = caption(scene, parts["size"], parts["position"], parts["background"])
    return Sample(scene, text, parts)


def held_out_scenes(seed: int, count: int) -> list[Scene]:
    """``count`` one-shape scenes whose label tuples never occur in training, spread evenly."""
    keys = [
        (kind, colour, size, position, background, style)
        for kind in SHAPES
        for colour in COLOUR_NAMES
        for size in SIZES
        for position in POSITIONS
        for background in COLOUR_NAMES
        for style in STYLES
        if colour != background
    ]
    rng = np.random.default_rng([seed, 0xE7A1])
    scenes: list[Scene] = []
    for kind, colour, size, position, background, style in keys:
        probe = Shape(kind, colour, size, position, 0.0, 0.0, 0.0, 0.0)
        if is_held_out(probe, Scene(background, style, (probe,))):
            shape = _shape(rng, background, kind, colour, size, position)
            scenes.append(_scene(rng, background, style, (shape,)))
    order = rng.permutation(len(scenes))
    return [scenes[int(i)] for i in order[:count]]


def _background(scene: Scene) -> np.ndarray:
    base = np.array(ALL_COLOURS[scene.background], dtype=np.float32)
    if scene.style == "plain":
        plain = np.empty((SIZE, SIZE, 3), dtype=np.float32)
        plain[:] = base
        return plain
    # Lighter at one end, darker at the other, around the named colour.
    lighter = base + (255.0 - base) * scene.gradient_amount
    darker = base * (1.0 - scene.gradient_amount)
    ramp = np.linspace(0.0, 1.0, SIZE, dtype=np.float32)[:, None]
    line = lighter[None, :] * (1.0 - ramp) + darker[None, :] * ramp  # (SIZE, 3)
    if scene.gradient_axis == 0:
        return np.broadcast_to(line[:, None, :], (SIZE, SIZE, 3)).copy()
    return np.broadcast_to(line[None, :, :], (SIZE, SIZE, 3)).copy()


def _rotate(points: np.ndarray, angle: float) -> np.ndarray:
    a = np.deg2rad(angle)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return np.asarray(points @ rot.T)


def _polygon(shape: Shape) -> np.ndarray | None:
    r = shape.radius
    if shape.kind == "square":
        s = r * 0.85
        pts = np.array([[-s, -s], [s, -s], [s, s], [-s, s]])
    elif shape.kind == "triangle":
        t = np.deg2rad(np.array([-90.0, 30.0, 150.0]))
        pts = np.stack([np.cos(t), np.sin(t)], axis=1) * r
        pts[:, 1] += r * 0.15  # centre the triangle's bounding box
    elif shape.kind == "star":
        t = np.deg2rad(-90.0 + 36.0 * np.arange(10))
        rad = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
        pts = np.stack([np.cos(t) * rad, np.sin(t) * rad], axis=1)
    elif shape.kind == "cross":
        a, b = r * 0.9, r * 0.3
        pts = np.array(
            [[-b, -a], [b, -a], [b, -b], [a, -b], [a, b], [b, b], [b, a], [-b, a], [-b, b], [-a, b], [-a, -b], [-b, -b]]
        )
    elif shape.kind == "diamond":
        s = r * 0.95
        pts = np.array([[0.0, -s], [s * 0.75, 0.0], [0.0, s], [-s * 0.75, 0.0]])
    elif shape.kind == HEART:
        t = np.linspace(0.0, 2.0 * np.pi, 96, endpoint=False)
        x = 16.0 * np.sin(t) ** 3
        y = -(13.0 * np.cos(t) - 5.0 * np.cos(2 * t) - 2.0 * np.cos(3 * t) - np.cos(4 * t))
        pts = np.stack([x, y - 2.5], axis=1) * (r / 15.5)  # the classic heart curve, its box centred
    else:
        return None
    return _rotate(pts, shape.angle) + np.array([shape.cx, shape.cy])


def _box(shape: Shape) -> tuple[int, int, int, int]:
    """The pixel box (x0, y0, x1, y1) that holds the shape, clipped to the image."""
    reach = shape.radius * 1.5 + 2.0
    x0, y0 = max(int(shape.cx - reach), 0), max(int(shape.cy - reach), 0)
    x1, y1 = min(int(shape.cx + reach) + 1, SIZE), min(int(shape.cy + reach) + 1, SIZE)
    return x0, y0, x1, y1


def _mask(shape: Shape, box: tuple[int, int, int, int]) -> np.ndarray:
    """The shape's coverage (0..1) inside ``box``, drawn at 2x and box-filtered."""
    x0, y0, x1, y1 = box
    k = _SCALE
    big = Image.new("L", ((x1 - x0) * k, (y1 - y0) * k), 0)
    draw = ImageDraw.Draw(big)
    cx, cy, r = (shape.cx - x0) * k, (shape.cy - y0) * k, shape.radius * k
    if shape.kind == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    elif shape.kind == "ring":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        inner = r * 0.58
        draw.ellipse((cx - inner, cy - inner, cx + inner, cy + inner), fill=0)
    else:
        pts = _polygon(shape)
        assert pts is not None
        draw.polygon([(float(x - x0) * k, float(y - y0) * k) for x, y in pts], fill=255)
    small = big.resize((x1 - x0, y1 - y0), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32)[:, :, None] / 255.0


def render_array(scene: Scene) -> np.ndarray:
    """The scene as a (256, 256, 3) uint8 array."""
    image = _background(scene)
    for shape in scene.shapes:
        box = _box(shape)
        x0, y0, x1, y1 = box
        alpha = _mask(shape, box)
        colour = np.array(ALL_COLOURS[shape.colour], dtype=np.float32)
        region = image[y0:y1, x0:x1]
        image[y0:y1, x0:x1] = region * (1.0 - alpha) + colour * alpha
    return np.rint(image).astype(np.uint8)


def render(scene: Scene) -> Image.Image:
    """The scene as a 256x256 RGB Pillow image."""
    return Image.fromarray(render_array(scene), "RGB")


def render_chunk(seed: int, start: int, count: int) -> tuple[np.ndarray, list[str]]:
    """Images ``start .. start+count-1`` of a dataset as one uint8 array, and their captions."""
    images = np.empty((count, SIZE, SIZE, 3), dtype=np.uint8)
    captions: list[str] = []
    for j in range(count):
        item = sample(seed, start + j)
        images[j] = render_array(item.scene)
        captions.append(item.caption)
    return images, captions


def iterate(seed: int, count: int, start: int = 0) -> Iterator[Sample]:
    """Samples ``start .. start+count-1`` of the dataset ``seed``."""
    for i in range(start, start + count):
        yield sample(seed, i)
