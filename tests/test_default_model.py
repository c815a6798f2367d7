"""Does the bundled default model make colour edits measurable?

The bar (issue: default model): on the 20 held-out evaluation scenes,
gnr.configs.NONSTYLE turns the object's dominant colour into the target in at
least 16, with its centroid moved at most 2 pixels and the background within
10/255 (tools/scenes.py scores them; tools/eval_default_model.py prints the
table of benchmarks/RESULTS.md). The colour and background parts hold; the
whole bar does not yet, and its test says so: it is expected to fail, and
strictly, so that meeting the bar turns it red until the marker goes.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

import gnr

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import scenes  # noqa: E402

N = 20
BAR = 16


@pytest.fixture(scope="module")
def scores():
    editor = gnr.Editor()
    out = []
    for i in range(N):
        s, target = scenes.eval_scene(i)
        edited = editor.edit(s.image, s.caption, scenes.caption(target, s.shape, s.background),
                             config=gnr.configs.NONSTYLE, progress=False)
        out.append(scenes.score_colour_edit(s.image, edited, s.mask, target))
    return out


def test_colour_changes_and_background_stays(scores):
    assert sum(r["colour_ok"] for r in scores) >= BAR
    assert sum(r["bg_ok"] for r in scores) >= BAR


@pytest.mark.xfail(strict=True, reason="bar not met: 11 of 20 (the object moves more than 2 px in 8) "
                                       "(see benchmarks/RESULTS.md, the default model)")
def test_sixteen_of_twenty_edits_succeed(scores):
    assert sum(r["success"] for r in scores) >= BAR
