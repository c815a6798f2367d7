"""GPU benchmark of whole edits: gnr's CUDA backend beside the plain PyTorch
implementation of the spec (tests/gnr_reference.py: diffusers modules,
explicit attention maps, torch.autograd, as the reference computes) on the
same GPU, on the SD 1.4-shaped random model at 512 x 512.

    python benchmarks/bench_gpu.py --out DIR [--model DIR] [--size 512]
                                   [--configs nonstyle,style]
                                   [--gnr-dtypes float32,float32-flash,float16,float16-unbatched]
                                   [--torch-dtypes float32,float16]
                                   [--profile-dtypes float32,float16]
                                   [--time-limit 300]

Without --model, the random model is written first (benchmarks/make_random_sd.py;
needs diffusers and the clip-anytorch wheel). Each run is its own process.
Writes DIR/bench_gpu.json and DIR/bench_gpu.md (per-phase seconds for gnr,
total seconds for PyTorch, peak GPU memory for both); runs that would pass the
time limit are skipped and listed as such.

First, for each of --profile-dtypes: one UNet pass and one gradient pass
(bench_grad.py's: all 16 maps and the appearance term) timed, then run again
op by op under gnr.profile(); written to DIR/bench_gpu_profile.md.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC, TRG = "a photo of a cat", "a photo of a tiger"


def run_gnr(args) -> dict:
    import numpy as np

    import gnr

    cfg = gnr.configs.get(args.config)
    dtype, _, mode = args.dtype.partition("-")  # "-flash": the flash attention kernel; "-unbatched": one pass at a time
    if mode == "unbatched":
        os.environ["GNR_BATCH_PASSES"] = "0"
    kernel = "flash" if mode == "flash" else "cublas"
    editor = gnr.Editor(args.model, device="cuda", dtype=dtype)
    gnr._C_cuda.attention_kernel(kernel)
    image = np.random.default_rng(0).integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)
    editor.edit(image, SRC, TRG, config=cfg, progress=False)  # warm-up: arena growth, cuBLAS plans
    editor.model.reset_peak()
    t0 = time.perf_counter()
    editor.edit(image, SRC, TRG, config=cfg, progress=False)
    total = time.perf_counter() - t0
    weights = sum(4 * int(np.prod(s)) for _, s in editor.model._c.weight_specs())
    return dict(editor.last_timings, total=total, peak_gib=(weights + editor.model.peak_bytes) / 2**30,
                device=gnr._C_cuda.device_name())


def run_profile(args) -> dict:
    """One UNet pass and one gradient pass: the median of three timed runs,
    then each once more op by op."""
    import gnr
    from bench_grad import energy_terms, inputs, timed

    m = gnr.load_model(args.model, device="cuda", dtype=args.dtype)
    z, z_ref, c = inputs(args.size, m.vae_factor, m.config["unet"]["cross_attention_dim"])
    terms = energy_terms("all", "up_blocks.-1")
    calls = {"unet": lambda: m.unet(z, 500, c), "grad": lambda: m.energy_grad(z, 501, c, z_ref, c, terms)}
    out = {"device": gnr._C_cuda.device_name()}
    for name, fn in calls.items():
        med, _ = timed(fn, 3)  # after a warm-up; fn returns host arrays, so the device work is done
        with gnr.profile() as prof:
            fn()
        out[name] = {"median_s": med, "profile": prof.as_dicts(), "table": prof.table(top=15),
                     "profiled_wall_s": prof.wall}
    return out


def run_torch(args) -> dict:
    import numpy as np
    import torch

    sys.path.insert(0, str(HERE.parent / "tests"))
    import gnr  # only for the config dicts (plain data)
    from gnr_reference import Reference

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    ref = Reference(args.model, dtype=args.dtype, device="cuda")
    cfg = gnr.configs.get(args.config)
    image = np.random.default_rng(0).integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)
    # warm-up: cuBLAS handles and plans, a decode (a whole edit would double the run)
    with torch.no_grad():
        z = ref.encode_image(image)
        ref.eps(z, 999, ref.encode_prompt(SRC))
        ref.decode_latent(z)
    torch.cuda.reset_peak_memory_stats()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    ref.edit(image, SRC, TRG, cfg)
    torch.cuda.synchronize()
    return {"total": time.perf_counter() - t0, "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
            "device": torch.cuda.get_device_name()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--model")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--configs", default="nonstyle,style")
    ap.add_argument("--gnr-dtypes", default="float32,float32-flash,float16,float16-unbatched",
                    help="gnr modes: float32 (parity), float16 / bfloat16 (tensor-core products); "
                         "float32-flash: float32 with the flash attention kernel; float16-unbatched: "
                         "each step's plain passes one at a time (GNR_BATCH_PASSES=0), against the batch")
    ap.add_argument("--torch-dtypes", default="float32,float16")
    ap.add_argument("--profile-dtypes", default="float32,float16",
                    help="gnr modes whose UNet and gradient passes are profiled op by op first")
    ap.add_argument("--time-limit", type=float, default=300)
    ap.add_argument("--side", choices=("gnr", "torch", "profile"), help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    ap.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        run = {"gnr": run_gnr, "torch": run_torch, "profile": run_profile}[args.side]
        print("RESULT " + json.dumps(run(args)))
        return

    start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.model:
        args.model = str(out / "sd14-random")
        subprocess.run([sys.executable, str(HERE / "make_random_sd.py"), args.model], check=True)
    jobs = [("profile", "-", d) for d in args.profile_dtypes.split(",") if d]
    for c in args.configs.split(","):
        jobs += [("gnr", c, d) for d in args.gnr_dtypes.split(",") if d]
        jobs += [("torch", c, d) for d in args.torch_dtypes.split(",") if d]
    rows = []
    for side, config, dtype in jobs:
        left = args.time_limit - (time.perf_counter() - start)
        if left < 20:
            rows.append({"side": side, "config": config, "dtype": dtype, "error": "skipped: out of time"})
            continue
        cmd = [sys.executable, __file__, "--out", args.out, "--model", args.model, "--size", str(args.size),
               "--side", side, "--config", config, "--dtype", dtype]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=left)
            lines = [l for l in r.stdout.splitlines() if l.startswith("RESULT ")]
            res = json.loads(lines[-1][7:]) if r.returncode == 0 and lines else {"error": r.stderr[-800:]}
        except subprocess.TimeoutExpired:
            res = {"error": f"timed out after {left:.0f} s"}
        rows.append({"side": side, "config": config, "dtype": dtype, **res})
        print(rows[-1], flush=True)
    (out / "bench_gpu.json").write_text(json.dumps(rows, indent=2))
    profiles = [r for r in rows if r["side"] == "profile"]
    rows = [r for r in rows if r["side"] != "profile"]
    write_profiles(out / "bench_gpu_profile.md", profiles, args.size)
    keys = ["encode", "inversion", "guided_steps", "unguided_steps", "decode", "total"]
    lines = [f"# Whole edits, {args.size} x {args.size}, SD 1.4 shapes (random weights)", "",
             "| side | config | dtype | " + " | ".join(keys) + " | peak GiB | device / error |",
             "|" + "---|" * (len(keys) + 5)]
    for r in rows:
        vals = [f"{r[k]:.2f}" if isinstance(r.get(k), float) else "" for k in keys]
        peak = f"{r['peak_gib']:.1f}" if "peak_gib" in r else ""
        note = r.get("device", "") or r.get("error", "").replace("\n", " ")[:200]
        lines.append(f"| {r['side']} | {r['config']} | {r['dtype']} | " + " | ".join(vals) + f" | {peak} | {note} |")
    (out / "bench_gpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def write_profiles(path: Path, profiles: list, size: int) -> None:
    lines = [f"# One UNet pass and one gradient pass, {size} x {size}, op by op (gnr.profile)", ""]
    for r in profiles:
        if "error" in r:
            lines += [f"## {r['dtype']}: {r['error'][-300:]}", ""]
            continue
        for name in ("unet", "grad"):
            p = r[name]
            lines += [f"## {r['dtype']}, {name}: {p['median_s'] * 1e3:.1f} ms median of 3 "
                      f"({p['profiled_wall_s'] * 1e3:.1f} ms profiled), {r['device']}", "", "```", p["table"], "```", ""]
    path.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
