"""Procedural "shapes" scenes rendered in two styles (domain A and domain B).

A scene is a background plus 1-3 coloured shapes whose bounding circles do not overlap.
An object's *size* ``s`` is the radius of the circle with its area, so a triangle and a circle of
one size cover the same number of pixels. The first object is the *primary* object: its size is
at least 1.75x that of any other (>= 3x the area), and its class is the scene's ``label``.
Both styles are rendered from the same geometry, so a scene's semantic and instance masks are
shared by its A and B images (a ground-truth pair).

Classes (semantic mask value = 1 + class index, 0 = background)::

    0 circle   1 square   2 triangle (apex up)   3 cross (plus sign)

Colours (name of the A colour; B uses a fixed bijection so content is recoverable)::

    red -> cyan   green -> magenta   blue -> orange   yellow -> purple

Attributes (binary, CelebA-style; all describe the primary object or the scene)::

    red, green, blue, yellow   primary colour, one-hot
    large                      primary size in [0.22, 0.27]*S (else [0.15, 0.18]*S)
    multiple_objects           more than one object was placed
    left                       primary centre lies in the left half of the image
    warm_background            cream background (else a cool grey-blue one) - kept in B
                               as dark brown vs dark navy, so it is a style-invariant fact

Style A: flat colours on a pale, near-white background.
Style B: dark noisy background, re-coloured shapes with diagonal stripes, Gaussian pixel noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
COLORS: tuple[str, ...] = ("red", "green", "blue", "yellow")
ATTRIBUTES: tuple[str, ...] = (
    "red",
    "green",
    "blue",
    "yellow",
    "large",
    "multiple_objects",
    "left",
    "warm_background",
)

PALETTE_A: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (35, 160, 60),
    "blue": (40, 70, 215),
    "yellow": (235, 195, 25),
}
#: Domain-B colour of each A colour; a bijection, so B content maps back to A uniquely.
COLOR_MAP_B: dict[str, str] = {
    "red": "cyan",
    "green": "magenta",
    "blue": "orange",
    "yellow": "purple",
}
PALETTE_B: dict[str, tuple[int, int, int]] = {
    "cyan": (40, 215, 225),
    "magenta": (220, 50, 200),
    "orange": (245, 140, 30),
    "purple": (145, 70, 215),
}
BACKGROUND_A = {True: (246, 238, 218), False: (226, 234, 244)}  # keyed by warm_background
BACKGROUND_B = {True: (52, 32, 24), False: (18, 24, 52)}

# Sizes (equal-area radii) as fractions of the image side; the gap between the primary's
# smallest and the secondaries' largest size is what makes "the primary is the largest"
# unambiguous whatever the classes.
LARGE_SIZE = (0.22, 0.27)
SMALL_SIZE = (0.15, 0.18)
SECONDARY_SIZE = (0.06, 0.085)
# Keeps a secondary cross's arms a pixel thick at 24 px.
MIN_SECONDARY_PIXELS = 1.5
# Area of each shape drawn by _shape_mask with circumradius r, in units of r**2; the
# circumradius of an object of size s is s * sqrt(pi / AREA_PER_R2[class]).
AREA_PER_R2 = (np.pi, (2 * 0.71) ** 2, 3 * np.sqrt(3) / 4, 2 * (1.9 * 0.6) - 0.6**2)
PLACEMENT_TRIES = 40


@dataclass
class SceneRender:
    """One scene in both styles.

    Attributes:
        a: Domain-A image, ``(S, S, 3)`` uint8.
        b: Domain-B image of the same geometry, ``(S, S, 3)`` uint8.
        semantic: ``(S, S)`` uint8, 0 = background, ``1 + class index`` on objects.
        instance: ``(S, S)`` uint8, 0 = background, ``i`` on the i-th object (1 = primary).
        label: Class index of the primary object.
        attributes: ``{name: 0/1}`` for every name in ``ATTRIBUTES``.
        objects: Per object ``{"class": int, "color": str, "bbox": [x0, y0, x1, y1]}`` with
            exclusive ``x1``/``y1`` (numpy slicing convention), primary first.
    """

    a: np.ndarray
    b: np.ndarray
    semantic: np.ndarray
    instance: np.ndarray
    label: int
    attributes: dict[str, int]
    objects: list[dict[str, Any]] = field(default_factory=list)


def _shape_mask(cls: int, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Boolean mask of a shape of circumradius ``r`` on centred coordinate grids."""
    if cls == 0:  # circle
        return dx * dx + dy * dy <= r * r
    if cls == 1:  # square, corners just inside the circumcircle
        half = 0.71 * r
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    if cls == 2:  # equilateral triangle, apex up: inside the three edge half-planes
        inside = dy <= 0.5 * r
        for angle in (np.pi * 7 / 6, np.pi * 11 / 6):
            inside &= dx * np.cos(angle) + dy * np.sin(angle) <= 0.5 * r
        return inside
    if cls == 3:  # cross (plus sign)
        arm, half_width = 0.95 * r, 0.3 * r
        horizontal = (np.abs(dx) <= arm) & (np.abs(dy) <= half_width)
        vertical = (np.abs(dy) <= arm) & (np.abs(dx) <= half_width)
        return horizontal | vertical
    raise ValueError(f"unknown shape class {cls}; expected 0..{len(CLASSES) - 1}")


def _place(
    rng: np.random.Generator, size: int, classes: np.ndarray, large: bool
) -> list[tuple[float, float, float]]:
    """Centres and circumradii: primary first, then secondaries by rejection sampling.

    A secondary that finds no free spot is dropped, so crowded scenes have fewer objects.
    """
    circum = [np.sqrt(np.pi / AREA_PER_R2[c]) for c in classes]
    r = rng.uniform(*(LARGE_SIZE if large else SMALL_SIZE)) * size * circum[0]
    placed = [(rng.uniform(r + 1, size - r - 1), rng.uniform(r + 1, size - r - 1), r)]
    margin = max(1.0, 0.03 * size)
    for factor in circum[1:]:
        r = max(rng.uniform(*SECONDARY_SIZE) * size, MIN_SECONDARY_PIXELS) * factor
        for _ in range(PLACEMENT_TRIES):
            cx, cy = rng.uniform(r + 1, size - r - 1, size=2)
            if all(np.hypot(cx - px, cy - py) > r + pr + margin for px, py, pr in placed):
                placed.append((cx, cy, r))
                break
    return placed


def _as_rng(seed: int | Sequence[int] | np.random.Generator) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(np.random.SeedSequence(seed))


def render_scene(
    seed: int | Sequence[int] | np.random.Generator, image_size: int = 64
) -> SceneRender:
    """Render one random scene in both styles.

    Args:
        seed: An int, a sequence of ints (e.g. ``(dataset_seed, split, index)``) or a numpy
            ``Generator``. The same seed always gives the same arrays.
        image_size: Side length ``S`` of the square images, in pixels.
    """
    if image_size < 24:
        # Below 24 px a small primary is no longer clearly larger than a legible secondary.
        raise ValueError(f"image_size must be >= 24 pixels, got {image_size}")
    rng = _as_rng(seed)
    size = image_size
    large = bool(rng.integers(2))
    warm = bool(rng.integers(2))
    classes = rng.integers(len(CLASSES), size=int(rng.integers(1, 4)))
    colors = [COLORS[i] for i in rng.integers(len(COLORS), size=len(classes))]
    placed = _place(rng, size, classes, large)
    classes, colors = classes[: len(placed)], colors[: len(placed)]

    # Pixel centres, so a shape is symmetric about its centre at any resolution.
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    semantic = np.zeros((size, size), np.uint8)
    instance = np.zeros((size, size), np.uint8)
    objects: list[dict[str, Any]] = []
    for i, ((cx, cy, r), cls) in enumerate(zip(placed, classes), start=1):
        mask = _shape_mask(int(cls), xx - cx, yy - cy, r) & (instance == 0)
        semantic[mask] = 1 + cls
        instance[mask] = i
        ys, xs = np.nonzero(mask)
        bbox = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
        objects.append({"class": int(cls), "color": colors[i - 1], "bbox": bbox})

    a = _style_a(instance, colors, warm)
    b = _style_b(instance, colors, warm, xx, yy, rng)
    attributes = {name: int(colors[0] == name) for name in COLORS}
    attributes.update(
        large=int(large),
        multiple_objects=int(len(placed) > 1),
        left=int(placed[0][0] < size / 2),
        warm_background=int(warm),
    )
    return SceneRender(a, b, semantic, instance, int(classes[0]), attributes, objects)


def _style_a(instance: np.ndarray, colors: list[str], warm: bool) -> np.ndarray:
    # A lookup table indexed by instance id paints every object in one vectorised step.
    table = np.array([BACKGROUND_A[warm]] + [PALETTE_A[c] for c in colors], np.uint8)
    return table[instance]


def _style_b(
    instance: np.ndarray,
    colors: list[str],
    warm: bool,
    xx: np.ndarray,
    yy: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    size = instance.shape[0]
    table = np.array([BACKGROUND_B[warm]] + [PALETTE_B[COLOR_MAP_B[c]] for c in colors], np.float32)
    image = table[instance]
    # Stripes 1/16 of the image wide survive a 2x downscale (64 -> 32 px) without aliasing away.
    stripe = max(2, round(size / 16))
    dark_band = ((xx + yy) // stripe % 2 == 1) & (instance > 0)
    image[dark_band] *= 0.6
    image += rng.normal(0.0, 7.0, size=image.shape).astype(np.float32)
    return np.clip(image + 0.5, 0, 255).astype(np.uint8)
