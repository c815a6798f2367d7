"""Writes the demo's sample scene (gnr/data/sample_scene.npy + .json): the
first held-out scene (seeds from scenes.EVAL_SEED_BASE + 1000, past the 20
evaluation scenes, never used in training) with a circle on a blue
background, its object recoloured red; the demo edits it to green. A .npy
(uint8 H x W x 3), so the demo needs no image library.

    python tools/make_sample_scene.py
"""
import json
from pathlib import Path

import numpy as np

import scenes

DATA = Path(__file__).resolve().parents[1] / "gnr" / "data"


def main():
    seed = scenes.EVAL_SEED_BASE + 1000
    while True:
        s = scenes.make_scene(seed)
        if s.shape == "circle" and s.background == "blue" and s.colour not in ("red", "green"):
            break
        seed += 1
    s = scenes.make_scene(seed, colour="red")
    np.save(DATA / "sample_scene.npy", s.image, allow_pickle=False)
    meta = {"image": "sample_scene.npy", "size": scenes.SIZE, "seed": seed, "source": s.caption,
            "target": scenes.caption("green", s.shape, s.background)}
    (DATA / "sample_scene.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(meta)


if __name__ == "__main__":
    main()
