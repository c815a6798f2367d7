"""Synthetic scenes for the bundled default model, and the scores of a colour edit.

A scene is one flat-coloured object (circle, square, triangle or star) on a
plain background, 64 x 64 RGB, with the caption "a red circle on a blue
background". Everything is a pure function of an integer seed:

    s = make_scene(seed)            # Scene(image, mask, caption, colour, shape, background, ...)
    s = make_scene(seed, colour="green")   # same geometry and background, another colour

Seeds are split: training uses TRAIN_SEEDS, the evaluation EVAL_SEED_BASE + i,
a range training never touches.

Scoring an edit (`score_colour_edit`) looks only at pixels:
- the background colour is the median of the pixels far from the original
  object (its mask dilated by 3 pixels), before and after;
- the object after the edit is the set of pixels whose colour differs from that
  background by more than a threshold (a colour segmentation), restricted to
  the original object's neighbourhood (mask dilated by 6 pixels) so stray
  background noise elsewhere cannot pull the centroid;
- its dominant colour is the named colour nearest to its median pixel;
- the centroid shift is the distance between the centroids of the segmented
  masks before and after.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

SIZE = 64
SUPERSAMPLE = 4
# Named colours, well apart from each other in RGB so "nearest named colour" is unambiguous.
COLOURS = {
    "red": (215, 35, 35),
    "green": (35, 170, 55),
    "blue": (35, 70, 215),
    "yellow": (240, 215, 35),
    "purple": (140, 50, 190),
    "cyan": (35, 200, 210),
    "white": (240, 240, 240),
    "black": (25, 25, 25),
}
COLOUR_NAMES = tuple(COLOURS)
SHAPES = ("circle", "square", "triangle", "star")
JITTER = 8          # per-channel uniform jitter of every colour, in 0..255 units
TRAIN_SEEDS = range(0, 1_000_000)
EVAL_SEED_BASE = 10_000_000

# Edit criteria (the project's bar; scores are reported against these, never loosened).
MAX_CENTROID_SHIFT = 2.0      # pixels
MAX_BACKGROUND_CHANGE = 10    # 0..255 units, max abs difference of the median background pixel


@dataclass
class Scene:
    image: np.ndarray = field(repr=False)   # uint8 (SIZE, SIZE, 3)
    mask: np.ndarray = field(repr=False)    # bool (SIZE, SIZE): object coverage >= 1/2
    caption: str
    colour: str
    shape: str
    background: str
    centre: tuple          # (x, y) in pixels, the shape's nominal centre
    radius: float          # pixels
    angle: float           # degrees
    rgb: tuple             # the object's actual colour after jitter
    bg_rgb: tuple          # the background's actual colour after jitter
    seed: int

    @property
    def centroid(self) -> tuple:
        return mask_centroid(self.mask)


def caption(colour: str, shape: str, background: str) -> str:
    return f"a {colour} {shape} on a {background} background"


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list:
    a0 = math.radians(angle)
    if shape == "square":
        # r is the half side; corners at 45 degrees
        pts = [(a0 + math.pi / 4 + k * math.pi / 2, r * math.sqrt(2)) for k in range(4)]
    elif shape == "triangle":
        pts = [(a0 - math.pi / 2 + k * 2 * math.pi / 3, r * 1.25) for k in range(3)]
    elif shape == "star":
        pts = [(a0 - math.pi / 2 + k * math.pi / 5, r * 1.3 if k % 2 == 0 else r * 0.55) for k in range(10)]
    else:
        raise ValueError(f"no polygon for shape {shape!r}")
    return [(cx + rho * math.cos(t), cy + rho * math.sin(t)) for t, rho in pts]


def render(shape: str, rgb, bg_rgb, centre, radius: float, angle: float = 0.0, size: int = SIZE):
    """uint8 image and bool mask of one object (4x supersampled, box-filtered)."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; allowed: {SHAPES}")
    s = SUPERSAMPLE
    cov = Image.new("L", (size * s, size * s), 0)
    d = ImageDraw.Draw(cov)
    cx, cy = centre[0] * s, centre[1] * s
    r = radius * s
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    else:
        d.polygon(_polygon(shape, cx, cy, r, angle), fill=255)
    a = np.asarray(cov, np.float32).reshape(size, s, size, s).mean(axis=(1, 3)) / 255.0
    img = a[..., None] * np.asarray(rgb, np.float32) + (1 - a[..., None]) * np.asarray(bg_rgb, np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), a >= 0.5


def _jitter(rng: np.random.Generator, rgb) -> tuple:
    return tuple(int(np.clip(v + rng.integers(-JITTER, JITTER + 1), 0, 255)) for v in rgb)


def make_scene(seed: int, colour: str | None = None) -> Scene:
    """The scene of `seed`. `colour` overrides the object colour only (the
    geometry, background and jitter draws are unchanged)."""
    rng = np.random.Generator(np.random.PCG64(seed))
    c = COLOUR_NAMES[rng.integers(len(COLOUR_NAMES))]
    others = [n for n in COLOUR_NAMES if n != c]
    b = others[rng.integers(len(others))]
    shape = SHAPES[rng.integers(len(SHAPES))]
    radius = float(rng.uniform(9.0, 16.0))
    margin = radius * 1.35 + 2
    cx = float(rng.uniform(margin, SIZE - margin))
    cy = float(rng.uniform(margin, SIZE - margin))
    angle = float(rng.uniform(-20.0, 20.0))
    rgb = _jitter(rng, COLOURS[c])
    bg_rgb = _jitter(rng, COLOURS[b])
    if colour is not None:
        if colour not in COLOURS:
            raise ValueError(f"unknown colour {colour!r}; allowed: {COLOUR_NAMES}")
        rgb = tuple(int(np.clip(v + (rgb[i] - COLOURS[c][i]), 0, 255)) for i, v in enumerate(COLOURS[colour]))
        c = colour
    img, mask = render(shape, rgb, bg_rgb, (cx, cy), radius, angle)
    return Scene(img, mask, caption(c, shape, b), c, shape, b, (cx, cy), radius, angle, rgb, bg_rgb, seed)


def eval_scene(i: int) -> tuple:
    """Held-out evaluation case i: (scene, target colour). The target differs
    from the object's and the background's colour."""
    s = make_scene(EVAL_SEED_BASE + i)
    rng = np.random.Generator(np.random.PCG64(EVAL_SEED_BASE + i + 7_777_777))
    options = [n for n in COLOUR_NAMES if n not in (s.colour, s.background)]
    return s, options[rng.integers(len(options))]


# ------------------------------------------------------------------ scoring --

def nearest_colour(rgb) -> str:
    rgb = np.asarray(rgb, np.float32)
    return min(COLOUR_NAMES, key=lambda n: float(np.sum((rgb - np.asarray(COLOURS[n], np.float32)) ** 2)))


def mask_centroid(mask: np.ndarray) -> tuple:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return (float("nan"), float("nan"))
    return (float(xs.mean()), float(ys.mean()))


def dilate(mask: np.ndarray, r: int) -> np.ndarray:
    """Binary dilation by a (2r+1)^2 square."""
    m = np.pad(mask, r)
    out = np.zeros_like(mask)
    h, w = mask.shape
    for dy in range(2 * r + 1):
        for dx in range(2 * r + 1):
            out |= m[dy:dy + h, dx:dx + w]
    return out


def background_median(image: np.ndarray, object_mask: np.ndarray) -> np.ndarray:
    """Median colour (float32 RGB) of the pixels more than 3 pixels away from the object."""
    far = ~dilate(object_mask, 3)
    return np.median(image[far].astype(np.float32), axis=0)


def segment_object(image: np.ndarray, bg_rgb, near: np.ndarray, threshold: float = 50.0) -> np.ndarray:
    """Pixels within `near` whose colour is more than `threshold` (RGB
    Euclidean) from the background colour."""
    dist = np.sqrt(np.sum((image.astype(np.float32) - np.asarray(bg_rgb, np.float32)) ** 2, axis=-1))
    return (dist > threshold) & near


def score_colour_edit(before: np.ndarray, after: np.ndarray, object_mask: np.ndarray, target: str) -> dict:
    """Scores of an edit that should turn the object's colour into `target` and change nothing else.

    before/after: uint8 (H, W, 3); object_mask: bool mask of the object in `before`."""
    bg0 = background_median(before, object_mask)
    bg1 = background_median(after, object_mask)
    near = dilate(object_mask, 6)
    m0 = segment_object(before, bg0, near)
    m1 = segment_object(after, bg1, near)
    c0 = mask_centroid(m0)
    c1 = mask_centroid(m1)
    if m1.any():
        med = np.median(after[m1].astype(np.float32), axis=0)
        colour = nearest_colour(med)
        shift = math.hypot(c1[0] - c0[0], c1[1] - c0[1])
    else:
        med = np.full(3, np.nan, np.float32)
        colour = None
        shift = float("inf")
    bg_change = float(np.max(np.abs(bg1 - bg0)))
    colour_ok = colour == target
    return {
        "colour": colour,
        "object_rgb": tuple(float(v) for v in med),
        "colour_ok": colour_ok,
        "centroid_shift": shift,
        "shift_ok": shift <= MAX_CENTROID_SHIFT,
        "bg_change": bg_change,
        "bg_ok": bg_change <= MAX_BACKGROUND_CHANGE,
        "area_before": int(m0.sum()),
        "area_after": int(m1.sum()),
        "success": bool(colour_ok and shift <= MAX_CENTROID_SHIFT and bg_change <= MAX_BACKGROUND_CHANGE),
    }
