"""The synthetic scene generator of the default model and the scores of a colour edit."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import scenes  # noqa: E402


def test_deterministic_and_seed_dependent():
    a, b = scenes.make_scene(3), scenes.make_scene(3)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask) and a.caption == b.caption
    others = [scenes.make_scene(s) for s in range(4, 10)]
    assert all(not np.array_equal(a.image, o.image) for o in others)


@pytest.mark.parametrize("seed", [0, 1, 2, 17, scenes.EVAL_SEED_BASE, scenes.EVAL_SEED_BASE + 5])
def test_caption_matches_pixels(seed):
    s = scenes.make_scene(seed)
    assert s.image.shape == (scenes.SIZE, scenes.SIZE, 3) and s.image.dtype == np.uint8
    assert s.caption == f"a {s.colour} {s.shape} on a {s.background} background"
    assert s.colour != s.background and s.shape in scenes.SHAPES
    assert scenes.nearest_colour(np.median(s.image[s.mask], axis=0)) == s.colour
    assert scenes.nearest_colour(np.median(s.image[~s.mask], axis=0)) == s.background
    assert 150 < s.mask.sum() < 0.5 * scenes.SIZE ** 2
    cx, cy = s.centroid
    assert abs(cx - s.centre[0]) < 4 and abs(cy - s.centre[1]) < 4


def test_same_scene_scores_as_unchanged():
    s = scenes.make_scene(4)
    r = scenes.score_colour_edit(s.image, s.image, s.mask, s.colour)
    assert r["success"] and r["centroid_shift"] == 0 and r["bg_change"] == 0


def test_score_detects_a_colour_change():
    s, target = scenes.eval_scene(0)
    assert target not in (s.colour, s.background)
    edited = scenes.make_scene(s.seed, colour=target)
    assert np.array_equal(edited.mask, s.mask)
    r = scenes.score_colour_edit(s.image, edited.image, s.mask, target)
    assert r["colour"] == target and r["success"]
    assert r["centroid_shift"] < 0.5 and r["bg_change"] <= 1
    # the unedited image does not count as an edit
    assert not scenes.score_colour_edit(s.image, s.image, s.mask, target)["colour_ok"]


def test_score_detects_a_shift_and_a_background_change():
    s, target = scenes.eval_scene(1)
    recoloured = scenes.make_scene(s.seed, colour=target)
    shifted, _ = scenes.render(s.shape, recoloured.rgb, s.bg_rgb, (s.centre[0] + 3, s.centre[1]), s.radius, s.angle)
    r = scenes.score_colour_edit(s.image, shifted, s.mask, target)
    assert r["colour_ok"] and not r["shift_ok"] and 2.5 < r["centroid_shift"] < 3.5 and not r["success"]
    darker = np.clip(recoloured.image.astype(int) - 12 * (~s.mask)[..., None], 0, 255).astype(np.uint8)
    r = scenes.score_colour_edit(s.image, darker, s.mask, target)
    assert r["colour_ok"] and r["shift_ok"] and not r["bg_ok"] and not r["success"]


def test_vanished_object_fails():
    s, target = scenes.eval_scene(2)
    blank = np.broadcast_to(np.asarray(s.bg_rgb, np.uint8), s.image.shape).copy()
    r = scenes.score_colour_edit(s.image, blank, s.mask, target)
    assert r["colour"] is None and not r["success"]


def test_eval_seeds_are_held_out():
    assert scenes.EVAL_SEED_BASE not in scenes.TRAIN_SEEDS
    assert all(scenes.eval_scene(i)[0].seed >= scenes.EVAL_SEED_BASE for i in range(20))
