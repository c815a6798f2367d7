"""Time one UNet pass with gradients (dE/dz of the self-attention map energy
over the selected layers plus the appearance term, the L1 distance of the
last up block's features, as NONSTYLE's appearance guider has them) in gnr
and in PyTorch (torch.autograd through the diffusers UNet with explicit
attention maps, as the reference implementation computes it), with and
without gradient checkpointing.

    python benchmarks/bench_grad.py MODEL_DIR [--size 512] [--runs 3] [--rounds 1] [--threads N]
                                    [--layers all|lowmem] [--skip-torch] [--profile N]

Each side runs in its own process. Reports the median of --runs runs (after a
warm-up; with --rounds R, the sides take turns R times and the medians and the
gnr / torch ratio are the medians over rounds: on a machine whose speed drifts
over minutes, each round's ratio compares neighbouring runs), gnr's
activation-arena peak (what the engine allocated for the pass: inputs,
activations kept for the backward, captures, gradients), each process's peak
RSS (weights included) and the resident memory a pass adds over what the
process held before it: gnr's first pass (its weights are resident once
loaded; its arena keeps what a pass reserved, so later passes add nothing),
PyTorch's pass after the warm-up (its weights are paged in from the mapped
file by the first pass, and it frees activations after each). gnr's first pass
also derives the Winograd form of its 3 x 3 convolution weights, which it
keeps like weights (Model.weight_cache_bytes): reported beside the figure, and
subtracted in the "activations" figure.

The resident memory is measured in a process of its own per side, with
glibc's malloc told to return every freed block of 64 KiB or more to the
system (MALLOC_MMAP_THRESHOLD_, MEMORY_ENV), so that the peak counts what a
pass holds at once. With the default, blocks the warm-up freed stay in the
heap and the measured pass reuses them without adding to the resident set:
PyTorch's pass at 256 x 256 then seemed to add 256-463 MiB from run to run,
where it holds 826. That setting slows PyTorch's many allocations, so the
timed runs use the default.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_forward import (add_torch_isa_arg, cpu_name, hold_gnr_isa, kernels_line, side_isa_args,  # noqa: E402
                           take_turns, torch_isa_line, torch_side_env)

LAYERS = {"all": [[0, 6], [0, 1], [0, 9]], "lowmem": [[2, 6], [0, 1], [0, 4]]}
SCALE = 3e5
APP_SCALE = 500.0  # NONSTYLE's app_gs
# the memory measurement's processes: freed blocks of 64 KiB or more go back to the system at once
MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def energy_terms(layers: str, last_up: str) -> list:
    return [{"kind": "attn_map_l2", "scale": SCALE, "layers": LAYERS[layers]},
            {"kind": "feature_l1", "scale": APP_SCALE, "at": last_up}]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def extra_rss_mib(fn) -> float:
    """The resident memory one call adds at its peak over what the process
    held before it: Linux's peak-RSS mark is reset first
    (/proc/self/clear_refs), then read after the call."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = _status_kib("VmRSS")
    fn()
    return (_status_kib("VmHWM") - base) / 1024.0


def timed(fn, runs):
    fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times)


def inputs(size, factor=8, ctx_dim=768):
    import numpy as np

    rng = np.random.default_rng(0)
    h = size // factor
    z = rng.standard_normal((1, 4, h, h)).astype(np.float32)
    z_ref = (z + 0.1 * rng.standard_normal(z.shape)).astype(np.float32)
    c = rng.standard_normal((77, ctx_dim)).astype(np.float32)
    return z, z_ref, c


def run_gnr(args) -> dict:
    import gnr

    if args.threads:
        gnr.set_num_threads(args.threads)
    hold_gnr_isa(gnr, args.torch_isa)
    m = gnr.load_model(args.model)
    z, z_ref, c = inputs(args.size, m.vae_factor, m.config["unet"]["cross_attention_dim"])
    terms = energy_terms(args.layers, "up_blocks.-1")
    if args.memory:
        return {"extra_rss_mib": extra_rss_mib(lambda: m.energy_grad(z, 501, c, z_ref, c, terms)),
                "weight_cache_mib": m.weight_cache_bytes / 2**20}
    out = {}
    for cp in (False, True):
        m.reset_peak()
        med, best = timed(lambda: m.energy_grad(z, 501, c, z_ref, c, terms, checkpointing=cp), args.runs)
        out["checkpointing" if cp else "plain"] = {"median_s": med, "min_s": best,
                                                   "arena_peak_mib": m.peak_bytes / 2**20}
    if args.profile:  # one more plain pass, op by op (after the timed ones, so it changes none)
        with gnr.profile() as prof:
            m.energy_grad(z, 501, c, z_ref, c, terms)
        out["profile"] = prof.table(top=args.profile)
    out["rss_mib"] = peak_rss_mib()
    out["kernels"] = kernels_line(gnr.build_info())
    return out


def run_torch(args) -> dict:
    import torch
    from diffusers import UNet2DConditionModel

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from torch_reference import Recorder, energy_and_grads

    if args.threads:
        torch.set_num_threads(args.threads)
    unet = UNet2DConditionModel.from_pretrained(os.path.join(args.model, "unet")).eval()
    for p in unet.parameters():
        p.requires_grad_(False)
    last_up = f"up_blocks.{len(unet.config.block_out_channels) - 1}"
    rec = Recorder(unet, [last_up])
    z, z_ref, c = inputs(args.size, 8, unet.config.cross_attention_dim)
    terms = energy_terms(args.layers, last_up)
    def run():
        return energy_and_grads(unet, rec, z, 501, c[None], z_ref, c[None], terms)

    if args.memory:
        run()  # the warm-up: weights paged in from the mapped file, lazy setup done
        return {"extra_rss_mib": extra_rss_mib(run)}
    med, best = timed(run, args.runs)
    return {"plain": {"median_s": med, "min_s": best}, "rss_mib": peak_rss_mib()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=1,
                    help="timed runs of the two sides, taking turns (gnr, torch, gnr, ...): the medians over "
                         "rounds, and the median of each round's ratio")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--layers", choices=sorted(LAYERS), default="all")
    ap.add_argument("--skip-torch", action="store_true")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="after the timed runs, one more gnr pass op by op (gnr.profile): its N slowest ops")
    add_torch_isa_arg(ap)
    ap.add_argument("--side", choices=("gnr", "torch"), help=argparse.SUPPRESS)
    ap.add_argument("--memory", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        print("RESULT " + json.dumps(run_gnr(args) if args.side == "gnr" else run_torch(args)))
        return

    def side(name, memory=False, profile=0):
        cmd = [sys.executable, __file__, args.model, "--size", str(args.size), "--runs", str(args.runs),
               "--threads", str(args.threads), "--layers", args.layers, "--profile", str(profile), "--side", name,
               *side_isa_args(args.torch_isa)]
        env = torch_side_env(args.torch_isa) if name == "torch" else dict(os.environ)
        if memory:
            cmd.append("--memory")
            env.update(MEMORY_ENV)
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if out.returncode != 0:
            sys.exit(f"{name} side failed:\n{out.stderr[-3000:]}")
        return json.loads([l for l in out.stdout.splitlines() if l.startswith("RESULT ")][-1][7:])

    g_rounds, t_rounds = take_turns(side, args.rounds, args.skip_torch, args.profile)
    g = {**g_rounds[0], **side("gnr", memory=True)}
    t = None if args.skip_torch else {**t_rounds[0], **side("torch", memory=True)}
    for k in ("plain", "checkpointing"):  # new dicts: the rounds' own stay as they were
        g[k] = {**g[k], "median_s": statistics.median(x[k]["median_s"] for x in g_rounds)}
    if t:
        t["plain"] = {**t["plain"], "median_s": statistics.median(x["plain"]["median_s"] for x in t_rounds)}
    print(f"model {args.model}  size {args.size}  layers {args.layers}  runs {args.runs}  rounds {args.rounds}  "
          f"threads {args.threads or os.cpu_count()}  cpu {cpu_name()} x{os.cpu_count()}")
    print(f"gnr: {g['kernels']}")
    if t:
        print(torch_isa_line(args.torch_isa))
    if args.rounds > 1:
        for r, x in enumerate(g_rounds):
            line = (f"round {r + 1}: gnr plain {x['plain']['median_s']:.2f} s, "
                    f"checkpointing {x['checkpointing']['median_s']:.2f}")
            if t:
                y = t_rounds[r]["plain"]["median_s"]
                line += f", torch {y:.2f}: gnr / torch {x['plain']['median_s'] / y:.3f}"
            print(line)
    print(f"{'variant':<22} {'median s':>9} {'arena MiB':>10}")
    for k in ("plain", "checkpointing"):
        print(f"{'gnr ' + k:<22} {g[k]['median_s']:>9.2f} {g[k]['arena_peak_mib']:>10.0f}")
    if t:
        print(f"{'torch autograd':<22} {t['plain']['median_s']:>9.2f} {'':>10}")
        ratios = [x["plain"]["median_s"] / y["plain"]["median_s"] for x, y in zip(g_rounds, t_rounds)]
        print(f"gnr / torch: {statistics.median(ratios):.3f}"
              + (" (the median of the rounds' ratios)" if args.rounds > 1 else ""))
    print(f"peak RSS MiB: gnr {g['rss_mib']:.0f}" + (f", torch {t['rss_mib']:.0f}" if t else ""))
    act = g["extra_rss_mib"] - g["weight_cache_mib"]
    print(f"resident memory a pass adds, MiB: gnr {g['extra_rss_mib']:.0f} of which {g['weight_cache_mib']:.0f} "
          f"weights kept in Winograd's form, {act:.0f} activations"
          + (f"; torch {t['extra_rss_mib']:.0f} (gnr activations / torch {act / t['extra_rss_mib']:.2f})"
             if t else ""))
    if "profile" in g:
        print(f"\ngnr plain pass, op by op (one more pass):\n{g['profile']}")


if __name__ == "__main__":
    main()
