"""The demo (`python -m gnr demo`): a picture large enough to see."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

import gnr
from gnr.demo import before_after

M = 8  # the picture's margin


def dark(region) -> int:
    return int((region.max(axis=2) < 128).sum())


def test_before_after_enlarges_each_pixel_to_a_block_and_writes_the_prompts():
    rng = np.random.default_rng(0)
    a, b = (rng.integers(128, 256, (64, 64, 3), dtype=np.uint8) for _ in range(2))  # light: text stands out
    pic, scale = before_after(a, b, "a red circle", "a green circle")
    assert scale == 4 and pic.dtype == np.uint8 and pic.shape[0] > 256 + 2 * M
    s = 64 * scale
    left, right = pic[M:M + s, M:M + s], pic[M:M + s, 2 * M + s:2 * M + 2 * s]
    np.testing.assert_array_equal(left, np.kron(a, np.ones((scale, scale, 1), np.uint8)))
    np.testing.assert_array_equal(right, np.kron(b, np.ones((scale, scale, 1), np.uint8)))
    below = pic[M + s:]
    assert dark(below[:, :M + s]) > 50 and dark(below[:, M + s:]) > 50      # a caption under each panel
    other, _ = before_after(a, b, "a red circle", "a purple square")
    np.testing.assert_array_equal(other[:, :M + s], pic[:, :M + s])
    assert not np.array_equal(other[:, M + s:], pic[:, M + s:])            # the text is the prompt's


def test_before_after_scales_to_at_least_256_high():
    for size, scale in ((48, 6), (64, 4), (256, 1), (512, 1), (100, 3)):
        img = np.zeros((size, size, 3), np.uint8)
        pic, got = before_after(img, img, "a", "b")
        assert got == scale and pic.shape[1] == 3 * M + 2 * size * scale, size
        assert size * scale >= 256


def test_demo_writes_a_picture_large_enough_to_see(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(Path(gnr.__file__).resolve().parent.parent))
    r = subprocess.run([sys.executable, "-m", "gnr", "demo", "--quiet", "-o", "demo.png"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    pic = np.asarray(Image.open(tmp_path / "demo.png").convert("RGB"))
    assert pic.shape[0] >= 256 + 2 * M
    assert f"({pic.shape[1]} x {pic.shape[0]} pixels: before | after, each 64 x 64 edit enlarged 4x to 256 x 256, " \
           f"the prompts under them)" in r.stdout
    scene, _, _ = gnr.demo.sample_scene()
    np.testing.assert_array_equal(pic[M:M + 256, M:M + 256], np.kron(scene, np.ones((4, 4, 1), np.uint8)))
