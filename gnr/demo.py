"""The bundled default model and the demo edit (`python -m gnr demo`).

The default model is a small Stable Diffusion 1.x-family model this project
trained on synthetic scenes (coloured shapes on coloured backgrounds; see
tools/train_default_model.py). It ships in gnr/data/default_model in diffusers
layout and loads like any other: `gnr.load_model("default")`, `gnr.Editor()`.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

# Re-exported: the bundled model's location belongs with the file layout
# (gnr.files), which every layer may use; the demo only runs it.
from .files import default_model_dir

DATA = Path(__file__).resolve().parent / "data"

__all__ = ["default_model_dir", "sample_scene", "before_after", "run_demo"]


def sample_scene() -> tuple[np.ndarray, str, str]:
    """(image uint8 (H, W, 3), source prompt, target prompt) of the demo's
    scene: a generated scene the default model never saw in training."""
    meta = json.loads((DATA / "sample_scene.json").read_text())
    image = np.load(DATA / meta["image"], allow_pickle=False)     # the exact pixels, no decoding
    size = meta["size"]
    if image.dtype != np.uint8 or image.shape != (size, size, 3):
        raise ValueError(f"{DATA / meta['image']}: expected uint8 ({size}, {size}, 3), got {image.dtype} {image.shape}")
    return image, meta["source"], meta["target"]


PANEL_MIN_HEIGHT = 256  # the demo's before and after panels are enlarged to at least this many pixels
_MARGIN = 8
_BACKGROUND = (255, 255, 255)
_INK = (20, 20, 20)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)   # scalable (Pillow >= 10.1 with FreeType)
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()            # Pillow's small bitmap font


def _wrap(draw, text: str, font, width: int) -> list[str]:
    """Greedy word wrap of `text` to lines at most `width` pixels wide."""
    lines, line = [], ""
    for word in text.split():
        candidate = f"{line} {word}".strip()
        if line and draw.textlength(candidate, font=font) > width:
            lines.append(line)
            line = word
        else:
            line = candidate
    return lines + [line] if line else lines


def before_after(before: np.ndarray, after: np.ndarray, source: str, target: str,
                 min_height: int = PANEL_MIN_HEIGHT) -> tuple[np.ndarray, int]:
    """The demo's picture: `before` and `after` (uint8 (H, W, 3) each, the
    same shape) side by side, each enlarged by the smallest whole factor
    that makes it at least `min_height` pixels high (nearest neighbour:
    every pixel becomes a square block), with "before: <source>" and
    "after: <target>" written under them. Returns (uint8 image, factor)."""
    from PIL import Image, ImageDraw

    if before.shape != after.shape or before.dtype != np.uint8 or before.ndim != 3:
        raise ValueError(f"before and after must be uint8 (H, W, 3) of one shape, got {before.shape} and "
                         f"{after.shape}")
    scale = max(1, -(-min_height // before.shape[0]))
    panels = [np.repeat(np.repeat(a, scale, axis=0), scale, axis=1) for a in (before, after)]
    h, w = panels[0].shape[:2]
    font = _font(max(12, h // 20))
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    captions = [_wrap(measure, text, font, w) for text in (f"before: {source}", f"after: {target}")]
    top, bottom = measure.textbbox((0, 0), "Ag", font=font)[1::2]
    line_height = bottom - top + 4
    text_height = line_height * max(len(c) for c in captions)
    canvas = Image.new("RGB", (3 * _MARGIN + 2 * w, 3 * _MARGIN + h + text_height), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for i, (panel, lines) in enumerate(zip(panels, captions)):
        x = _MARGIN + i * (w + _MARGIN)
        canvas.paste(Image.fromarray(panel), (x, _MARGIN))
        for j, line in enumerate(lines):
            draw.text((x, 2 * _MARGIN + h + j * line_height - top), line, fill=_INK, font=font)
    return np.asarray(canvas, dtype=np.uint8).copy(), scale


def run_demo(output="gnr_demo.png", progress: bool = True) -> Path:
    """Edits the sample scene with the nonstyle config, writes the before
    and after pictures side by side, enlarged to at least 256 pixels high
    with the prompts under them (`before_after`), to `output` (any format
    Pillow writes), and prints where, how large, and how long each phase
    took. progress: show tqdm bars (when tqdm is installed)."""
    from . import configs
    from .editor import Editor
    from .images import check_output_path, save_image

    check_output_path(output)
    t0 = time.perf_counter()
    editor = Editor()
    load = time.perf_counter() - t0
    image, source, target = sample_scene()
    print(f"editing the sample scene: {source!r} -> {target!r}")
    t0 = time.perf_counter()
    out = editor.edit(image, source, target, config=configs.NONSTYLE, progress=progress)
    total = time.perf_counter() - t0
    picture, scale = before_after(image, out, source, target)
    output = Path(output)
    save_image(output, picture)
    t = editor.last_timings
    size = image.shape[0]
    print(f"wrote {output.resolve()} ({picture.shape[1]} x {picture.shape[0]} pixels: before | after, each "
          f"{size} x {size} edit enlarged {scale}x to {size * scale} x {size * scale}, the prompts under them)")
    print(f"load {load:.2f} s, encode {t['encode']:.2f} s, inversion {t['inversion']:.2f} s, "
          f"guided steps {t['guided_steps']:.2f} s ({t['guided_count']}), "
          f"unguided steps {t['unguided_steps']:.2f} s ({t['unguided_count']}), decode {t['decode']:.2f} s, "
          f"edit total {total:.2f} s")
    return output
