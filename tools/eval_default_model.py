"""Colour-edit evaluation of the bundled default model on held-out scenes.

    python tools/eval_default_model.py [--model DIR] [--n 20] [--save edits.png]
    python tools/eval_default_model.py --model CKPT --first 1000 --n 30 --methods gnr   # validation

For each of n scenes from seeds scenes.EVAL_SEED_BASE + i (a range training
never uses; i from --first: 0 for the test, the 20 scenes the bar is about,
on which checkpoints are never chosen; 1000 and up for validation), edits
"a {c1} {shape} on a {bg} background" -> "a {c2} {shape} on a {bg} background" with gnr, once with
gnr.configs.NONSTYLE (Guide-and-Rescale, 50 steps) and once with plain DDIM
inversion + classifier-free guidance (the same config with only its cfg
guider), and scores each edit with scenes.score_colour_edit: success when
the object's dominant colour is the target, its centroid moved at most
2 pixels, and the median background colour changed at most 10/255.
--breakdown also counts the successes by background colour, by the
distance of the old and new object colours in the latent space (each
colour's latent: the encoder's mean over a flat image of it, in the UNet's
units) and by that distance over the old colour's distance to the
background: where this small model's edits fail (benchmarks/RESULTS.md).
Needs only numpy, Pillow and gnr (no PyTorch).
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import scenes  # noqa: E402


def cfg_only(config: dict) -> dict:
    """`config` with every guider but cfg removed and no noise rescaling:
    plain DDIM inversion + classifier-free guidance."""
    c = copy.deepcopy(config)
    c["guiders"] = [g for g in c["guiders"] if g["name"] == "cfg"]
    c["noise_rescaling_setup"] = {"type": "identity_rescaler", "init_setup": None}
    return c


def colour_latents(model) -> dict:
    """Each scene colour's latent (mean over a flat 64 x 64 image), in the UNet's units."""
    return {name: model.encode_image(np.full((scenes.SIZE, scenes.SIZE, 3), rgb, np.uint8))[0].mean(axis=(1, 2))
            for name, rgb in scenes.COLOURS.items()}


DISTANCE_BINS = (0.0, 12.0, 18.0, 24.0, float("inf"))
RATIO_BINS = (0.0, 1.0, 1.5, 2.0, float("inf"))


def breakdown(model, rows: dict) -> dict:
    """Where the edits fail: {"background": {colour: (|latent|, {method: (successes, edits)})},
    "distance": {(lo, hi): {...}}, "ratio": {(lo, hi): {...}}}, the second grouped by
    how far apart the old and new object colours lie in the latent space, the
    third by that distance over the one between the old colour and the background."""
    lat = colour_latents(model)

    def count(keep):
        return {name: (sum(r["success"] for r in rs if keep(r)), sum(bool(keep(r)) for r in rs))
                for name, rs in rows.items()}

    def dist(a, b):
        return float(np.linalg.norm(lat[a] - lat[b]))

    out = {"background": {}, "distance": {}, "ratio": {}}
    for b in sorted({r["background"] for rs in rows.values() for r in rs}):
        out["background"][b] = (float(np.linalg.norm(lat[b])), count(lambda r: r["background"] == b))
    for lo, hi in zip(DISTANCE_BINS[:-1], DISTANCE_BINS[1:]):
        out["distance"][(lo, hi)] = count(lambda r: lo <= dist(r["source_colour"], r["target"]) < hi)
    for lo, hi in zip(RATIO_BINS[:-1], RATIO_BINS[1:]):
        out["ratio"][(lo, hi)] = count(
            lambda r: lo <= dist(r["source_colour"], r["target"]) / dist(r["source_colour"], r["background"]) < hi)
    return out


def print_breakdown(model, rows: dict) -> None:
    groups = breakdown(model, rows)
    names = list(rows)

    def table(title, head, cells_by_label):
        print(title)
        print(f"{head:19s} " + " ".join(f"{name:>8s}" for name in names))
        for label, cells in cells_by_label:
            print(f"{label:19s} " + " ".join(f"{'%d/%d' % cells[name]:>8s}" for name in names))

    table("\nsuccesses / edits, by background (|latent|: its latent's distance from the origin)",
          "background |latent|", ((f"{b:10s} {norm:8.1f}", c) for b, (norm, c) in groups["background"].items()))
    table("by the distance between the old and the new colour's latents", "distance",
          ((f"[{lo:g}, {hi:g})", c) for (lo, hi), c in groups["distance"].items()))
    table("by that distance over the one between the old colour's and the background's latents", "ratio",
          ((f"[{lo:g}, {hi:g})", c) for (lo, hi), c in groups["ratio"].items()))


def run(model_dir=None, n: int = 20, save: str | None = None, threads: int | None = None, first: int = 0,
        methods=("gnr", "cfg"), show_breakdown: bool = False) -> dict:
    import gnr

    editor = gnr.Editor(model_dir, threads=threads) if model_dir else gnr.Editor()
    configs = {"gnr": gnr.configs.NONSTYLE, "cfg": cfg_only(gnr.configs.NONSTYLE)}
    unknown = [m for m in methods if m not in configs]
    if unknown or not methods:
        raise ValueError(f"methods {list(methods)}: allowed are {list(configs)} (at least one)")
    methods = {name: configs[name] for name in methods}
    rows = {name: [] for name in methods}
    tiles = []
    t0 = time.time()
    for i in range(first, first + n):
        s, target = scenes.eval_scene(i)
        tgt_prompt = scenes.caption(target, s.shape, s.background)
        inv = editor.invert(s.image, s.caption, config=gnr.configs.NONSTYLE, progress=False)
        row_tiles = [s.image, editor.model.decode_latent(editor.model.encode_image(s.image))] if save else []
        for name, cfg in methods.items():
            out = editor.edit(inv, target_prompt=tgt_prompt, config=cfg, progress=False)
            r = scenes.score_colour_edit(s.image, out, s.mask, target)
            r.update(i=i, seed=s.seed, source=s.caption, target=target, source_colour=s.colour,
                     background=s.background)
            rows[name].append(r)
            row_tiles.append(out)
        if save:
            tiles.append(np.concatenate(row_tiles, axis=1))
        print(f"{i:2d} {s.caption:42s} -> {target:6s} | " + " | ".join(
            f"{name} {str(rs[-1]['colour']):6s} shift {rs[-1]['centroid_shift']:5.2f} "
            f"bg {rs[-1]['bg_change']:5.1f} {'OK' if rs[-1]['success'] else 'no'}" for name, rs in rows.items()),
            flush=True)
    print(f"\n{n} held-out scenes (seeds {scenes.EVAL_SEED_BASE + first}..{scenes.EVAL_SEED_BASE + first + n - 1}), "
          f"{time.time() - t0:.0f} s")
    print(f"{'method':8s} {'colour ok':>9s} {'shift<=2':>9s} {'bg<=10':>7s} {'all three':>9s} "
          f"{'median shift':>12s} {'median bg':>9s}")
    for name, rs in rows.items():
        print(f"{name:8s} {sum(r['colour_ok'] for r in rs):9d} {sum(r['shift_ok'] for r in rs):9d} "
              f"{sum(r['bg_ok'] for r in rs):7d} {sum(r['success'] for r in rs):9d} "
              f"{np.median([r['centroid_shift'] for r in rs]):12.2f} {np.median([r['bg_change'] for r in rs]):9.1f}")
    if save:
        from PIL import Image

        grid = np.concatenate(tiles, axis=0)
        Image.fromarray(grid).save(save)
        print(f"columns: scene, VAE reconstruction, {', '.join(rows)}; saved {save}")
    if show_breakdown:
        print_breakdown(editor.model, rows)
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model folder (default: the bundled model)")
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--save", default=None, help="write a PNG grid of the edits")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--first", type=int, default=0,
                    help="first scene index: 0 is the test set; use 1000 and up to choose checkpoints")
    ap.add_argument("--methods", default="gnr,cfg", help="comma-separated, from gnr, cfg")
    ap.add_argument("--breakdown", action="store_true",
                    help="also count successes by background colour and by where the old and new colours lie "
                         "in the latent space")
    args = ap.parse_args(argv)
    methods = tuple(m for m in args.methods.split(",") if m)
    rows = run(args.model, args.n, args.save, args.threads, args.first, methods, args.breakdown)
    if "gnr" in rows:
        wins = sum(r["success"] for r in rows["gnr"])
        bar = "16/20" if (args.first, args.n) == (0, 20) else "16/20 on the 20 test scenes"
        print(f"GnR: {wins}/{args.n} successful colour edits ({100 * wins / args.n:.0f} %; bar: {bar})")


if __name__ == "__main__":
    sys.path.insert(1, str(ROOT))    # run from a checkout: use its gnr
    main()
