"""Does the bundled default model make colour edits measurable?

The bar (issue: default model): on the 20 held-out evaluation scenes,
gnr.configs.NONSTYLE turns the object's dominant colour into the target in at
least 16, with its centroid moved at most 2 pixels and the background within
10/255 (tools/scenes.py scores them; tools/eval_default_model.py prints the
table of benchmarks/RESULTS.md): the bundled model makes 18 of 20
(inversion + classifier-free guidance alone: 14). Guide-and-Rescale must
also beat the same inversion with classifier-free guidance alone on these
scenes (DECISIONS: the bundled default model): more successful edits, more
objects held within 2 pixels, a smaller median centroid shift.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import eval_default_model  # noqa: E402

N = 20
BAR = 16


@pytest.fixture(scope="module")
def scores():
    """{"gnr": [...], "cfg": [...]}: the scores of tools/eval_default_model.py
    on the bundled model, GnR and inversion + CFG alone."""
    return eval_default_model.run(n=N)


def test_the_bar(scores):
    wins = sum(r["success"] for r in scores["gnr"])
    assert wins >= BAR, f"{wins} of {N} successful colour edits (bar: {BAR})"


def test_guidance_beats_cfg_alone(scores):
    wins = {k: sum(r["success"] for r in rs) for k, rs in scores.items()}
    held = {k: sum(r["shift_ok"] for r in rs) for k, rs in scores.items()}
    shift = {k: np.median([r["centroid_shift"] for r in rs]) for k, rs in scores.items()}
    assert wins["gnr"] > wins["cfg"]
    assert held["gnr"] > held["cfg"]
    assert shift["gnr"] < shift["cfg"]


def test_breakdown_accounts_for_every_edit(scores):
    """tools/eval_default_model.py --breakdown: each grouping splits the edits
    and their successes without losing or double-counting one."""
    import gnr

    groups = eval_default_model.breakdown(gnr.load_model("default"), scores)
    by_background = [cells for _, cells in groups["background"].values()]
    for cells in (by_background, list(groups["distance"].values()), list(groups["ratio"].values())):
        for name, rs in scores.items():
            assert sum(c[name][1] for c in cells) == len(rs)
            assert sum(c[name][0] for c in cells) == sum(r["success"] for r in rs)
    assert len(by_background) >= 5            # the 20 scenes span most backgrounds
