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

DATA = Path(__file__).resolve().parent / "data"

__all__ = ["default_model_dir", "sample_scene", "run_demo"]


def default_model_dir() -> Path:
    """Folder of the bundled default model."""
    path = DATA / "default_model"
    if not (path / "model_index.json").is_file():
        raise FileNotFoundError(f"{path}: the bundled default model is missing from this installation")
    return path


def sample_scene() -> tuple[np.ndarray, str, str]:
    """(image uint8 (H, W, 3), source prompt, target prompt) of the demo's
    scene: a generated scene the default model never saw in training."""
    meta = json.loads((DATA / "sample_scene.json").read_text())
    image = np.load(DATA / meta["image"], allow_pickle=False)     # a .npy: the demo needs no image library
    size = meta["size"]
    if image.dtype != np.uint8 or image.shape != (size, size, 3):
        raise ValueError(f"{DATA / meta['image']}: expected uint8 ({size}, {size}, 3), got {image.dtype} {image.shape}")
    return image, meta["source"], meta["target"]


def run_demo(output="gnr_demo.png", progress: bool = True) -> Path:
    """Edits the sample scene with the nonstyle config, writes before | after
    side by side to `output`, prints where and how long each phase took.
    progress: show tqdm bars (when tqdm is installed)."""
    from . import configs
    from .editor import Editor
    from .images import save_image

    t0 = time.perf_counter()
    editor = Editor()
    load = time.perf_counter() - t0
    image, source, target = sample_scene()
    print(f"editing the sample scene: {source!r} -> {target!r}")
    t0 = time.perf_counter()
    out = editor.edit(image, source, target, config=configs.NONSTYLE, progress=progress)
    total = time.perf_counter() - t0
    gap = np.full((image.shape[0], 4, 3), 255, np.uint8)
    output = Path(output)
    save_image(output, np.concatenate([image, gap, out], axis=1))
    t = editor.last_timings
    print(f"wrote {output.resolve()} (before | after)")
    print(f"load {load:.2f} s, encode {t['encode']:.2f} s, inversion {t['inversion']:.2f} s, "
          f"guided steps {t['guided_steps']:.2f} s ({t['guided_count']}), "
          f"unguided steps {t['unguided_steps']:.2f} s ({t['unguided_count']}), decode {t['decode']:.2f} s, "
          f"edit total {total:.2f} s")
    return output
