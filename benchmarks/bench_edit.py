"""Wall time of whole Guide-and-Rescale edits, split by phase (encode,
inversion, guided steps, unguided steps, decode), and peak memory.

    python benchmarks/bench_edit.py MODEL_DIR [--config nonstyle] [--size 512] [--num-steps 50]
                                    [--runs 1] [--device cpu] [--dtype float32] [--threads N]

Prints one row per run and the median. Memory: gnr's activation-arena peak
over the edit and the process's peak RSS (weights included).
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import time

import numpy as np


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--config", default="nonstyle")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--num-steps", type=int, default=50)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", help="float32; on cuda also float16 or bfloat16 (speed mode)")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()

    import gnr

    if args.threads:
        gnr.set_num_threads(args.threads)
    cfg = gnr.configs.get(args.config)
    if args.num_steps != 50:
        cfg["num_steps"] = args.num_steps
        for g in cfg["guiders"]:
            if isinstance(g["g_scale"], list):
                g["g_scale"] = g["g_scale"][: args.num_steps]
    t0 = time.perf_counter()
    editor = gnr.Editor(args.model, device=args.device, dtype=args.dtype)
    load = time.perf_counter() - t0
    image = np.random.default_rng(0).integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)
    rows = []
    for _ in range(args.runs):
        editor.model.reset_peak()
        t0 = time.perf_counter()
        editor.edit(image, "a photo of a cat", "a photo of a tiger", config=cfg, progress=False)
        total = time.perf_counter() - t0
        t = dict(editor.last_timings, total=total, arena_mib=editor.model.peak_bytes / 2**20)
        rows.append(t)
    keys = ["encode", "inversion", "guided_steps", "unguided_steps", "decode", "total"]
    print(f"model {args.model}  config {args.config}  size {args.size}  steps {args.num_steps}  "
          f"device {args.device}  dtype {args.dtype}  threads {args.threads or os.cpu_count()}  load {load:.1f} s")
    print(" ".join(f"{k:>15}" for k in keys + ["arena MiB"]))
    for r in rows:
        print(" ".join(f"{r[k]:>15.2f}" for k in keys) + f" {r['arena_mib']:>15.0f}")
    med = {k: statistics.median(r[k] for r in rows) for k in keys}
    print("median " + " ".join(f"{k}={med[k]:.2f}s" for k in keys))
    r = rows[-1]
    print(f"guided steps: {r['guided_count']} ({r['guided_steps'] / max(r['guided_count'], 1):.2f} s each), "
          f"unguided: {r['unguided_count']} ({r['unguided_steps'] / max(r['unguided_count'], 1):.2f} s each)")
    print(f"peak RSS MiB: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}")


if __name__ == "__main__":
    main()
