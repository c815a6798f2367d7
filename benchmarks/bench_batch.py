"""Rows per second of batch jobs (gnr.batch): the local engine against Ray
Data with 1 and 2 workers, and the time Ray adds per row.

    python benchmarks/bench_batch.py [--model DIR] [--rows 12] [--images 4] [--steps 50] [--size N]
                                     [--threads 1] [--workers 1,2] [--device cpu] [--dtype float32]

Writes a manifest of ROWS edits over IMAGES images (the bundled sample
scene, mirrored, flipped and turned; ROWS / IMAGES targets each) into a
temporary folder, then runs the same job with the local engine (at
--threads, and at every core) and with Ray on a local instance started
once (its start-up time is printed apart) for each worker count, each
into a fresh output folder. Per job: wall time, rows per second, the sum of
the rows' own times (`total_s` in the output manifest: load, inversion,
edit, PNG), and the overhead per row: wall time less the rows' own time
spread over the workers, divided by the rows. Ray's overhead over the
local engine is the difference of the two overheads (not of the wall
times, which move with the machine's load between jobs). Needs `pip install '.[ray]'`
for the Ray rows (--workers "" runs the local engine only).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

TARGETS = ["a green circle on a blue background", "a yellow circle on a blue background",
           "a purple circle on a blue background", "a red square on a blue background",
           "a red circle on a green background", "a white circle on a blue background"]


def make_manifest(folder: Path, rows: int, images: int, size) -> Path:
    import gnr
    from PIL import Image

    scene, source, _ = gnr.demo.sample_scene()
    variants = [scene, scene[:, ::-1], scene[::-1], np.rot90(scene), np.rot90(scene, 2), np.rot90(scene, 3),
                np.rot90(scene[:, ::-1]), np.rot90(scene[::-1])]
    if images > len(variants):
        raise SystemExit(f"--images: at most {len(variants)}")
    for i in range(images):
        img = Image.fromarray(np.ascontiguousarray(variants[i]))
        if size:
            img = img.resize((size, size), Image.BICUBIC)
        img.save(folder / f"image{i}.png")
    lines = [{"image": f"image{r % images}.png", "source_prompt": source,
              "target_prompt": TARGETS[(r // images) % len(TARGETS)], "id": f"row{r}"} for r in range(rows)]
    path = folder / "manifest.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def job(manifest, out, **kwargs) -> dict:
    import gnr.batch

    result = gnr.batch.run(manifest, out, progress=False, **kwargs)
    assert result.failed == 0, [r["error"] for r in result.records if r["error"]]
    workers = kwargs.get("workers") or 1
    own = sum(r["total_s"] for r in result.records)
    return {"wall": result.seconds, "rows": result.rows, "own": own, "inversions": result.inversions,
            "overhead": (result.seconds - own / workers) / result.rows}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model folder (default: the bundled model)")
    ap.add_argument("--rows", type=int, default=12)
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--size", type=int, default=None, help="image size (default: the model's native size)")
    ap.add_argument("--threads", type=int, default=1, help="threads per editor (each Ray actor's CPUs)")
    ap.add_argument("--workers", default="1,2", help="Ray worker counts, comma-separated; empty: no Ray")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None)
    args = ap.parse_args()

    import gnr

    cfg = gnr.configs.get("nonstyle", num_steps=args.steps)
    common = {"model": args.model, "config": cfg, "device": args.device, "dtype": args.dtype, "size": args.size}
    cores = os.cpu_count()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        manifest = make_manifest(tmp, args.rows, args.images, args.size)
        for threads in sorted({args.threads, cores}):
            results.append((f"local, {threads} thread(s)", job(manifest, tmp / f"local{threads}", threads=threads,
                                                                 **common)))
        counts = [int(w) for w in args.workers.split(",") if w.strip()]
        if counts:
            import ray

            t0 = time.perf_counter()
            root = str(Path(gnr.__file__).resolve().parent.parent)
            ray.init(num_cpus=cores, include_dashboard=False, logging_level="WARNING",
                     runtime_env={"env_vars": {"PYTHONPATH": root}})
            startup = time.perf_counter() - t0
            try:
                for w in counts:
                    name = f"ray, {w} worker(s) x {args.threads} thread(s)"
                    results.append((name, job(manifest, tmp / f"ray{w}", engine="ray", workers=w,
                                              threads=args.threads, **common)))
            finally:
                ray.shutdown()
    model = args.model or "bundled default"
    print(f"model {model}  size {args.size or 'native'}  steps {args.steps}  rows {args.rows} over {args.images} "
          f"images  device {args.device}  {platform.processor() or platform.machine()}, {cores} cores")
    if counts:
        print(f"Ray instance start-up (once, not in the rows below): {startup:.1f} s")
    print(f"{'engine':<34} {'wall s':>7} {'rows/s':>7} {'rows own s':>10} {'overhead s/row':>15} {'inversions':>10}")
    local = next(r for n, r in results if n.startswith(f"local, {args.threads} "))
    for name, r in results:
        print(f"{name:<34} {r['wall']:>7.2f} {r['rows'] / r['wall']:>7.2f} {r['own']:>10.2f} {r['overhead']:>15.3f} "
              f"{r['inversions']:>10}")
    # Wall times of jobs run one after another are not compared directly: on
    # a shared machine the rows' own time moves with the load. The time
    # outside the rows is the engine's own.
    for name, r in results:
        if name.startswith("ray, "):
            print(f"Ray's overhead per row over the local engine ({name[5:]}): "
                  f"{r['overhead'] - local['overhead']:.3f} s")


if __name__ == "__main__":
    main()
