"""Time gnr's forward passes beside PyTorch (diffusers/transformers) on one model folder.

    python benchmarks/bench_forward.py MODEL_DIR [--size 512] [--runs 5] [--rounds 1] [--threads N]
                                       [--parts text,unet,vae_encode,vae_decode] [--skip-torch]
                                       [--batch N] [--profile N]

Each side runs in its own process (so neither's memory or thread pools affect
the other), on the same inputs, with the same thread count. Prints a table:
part, median and min seconds of --runs runs (after one warm-up), process peak
RSS, gnr's activation-arena peak, the part's FLOPs (counted by torch's
FlopCounterMode on the reference modules) and the floor FLOPs / peak rate, the
peak rate being a measured single-precision GEMM on this machine. --batch N
runs the UNet on N latents (each with its own context) as one batched pass
on both sides; the other parts stay single. --rounds R runs the sides R
times taking turns and reports each part's medians over the rounds and each
round's ratio: on a machine whose speed drifts over minutes, a round
compares neighbouring runs.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

PARTS = ("text", "unet", "vae_encode", "vae_decode")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def timed(fn, runs: int):
    fn()  # warm-up: first-touch of weights and arena growth
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times)


def inputs(size: int, latent_channels: int = 4, factor: int = 8, ctx_dim: int = 768, seed: int = 0,
           batch: int = 1):
    """image (size, size, 3); latents (batch, C, h, h); contexts (batch, 77, D)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    h = size // factor
    latent = rng.standard_normal((batch, latent_channels, h, h)).astype(np.float32)
    context = rng.standard_normal((batch, 77, ctx_dim)).astype(np.float32)
    return image, latent, context


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


# PyTorch's own vector code (ATen), its convolutions (oneDNN) and its GEMM
# (MKL) each pick the widest instruction set the CPU has, as do gnr's own
# vector kernels (softmax, products against few columns). On a CPU with
# AVX-512 whose environment pins OpenBLAS, and so gnr's other products, to
# AVX2 kernels (OPENBLAS_CORETYPE=Haswell), --isa avx2 holds both sides to
# AVX2, as on a CPU without AVX-512.
TORCH_ISA_ENV = {
    "native": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "DNNL_MAX_CPU_ISA": "AVX2",
             "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
}


def add_torch_isa_arg(ap) -> None:
    ap.add_argument("--isa", "--torch-isa", dest="torch_isa", choices=sorted(TORCH_ISA_ENV), default="native",
                    help="native: each side picks its kernels; avx2: both held to AVX2 (as gnr's BLAS when pinned)")


def side_isa_args(isa: str) -> list:
    return ["--isa", isa]


def hold_gnr_isa(gnr, isa: str) -> None:
    """gnr's own vector kernels at the level --isa asks for (OpenBLAS follows OPENBLAS_CORETYPE)."""
    if isa == "avx2" and gnr._C._cpu_vector_level() == "avx512":
        gnr._C._cpu_vector_level("avx2")


def torch_side_env(isa: str) -> dict:
    """The environment of the PyTorch side's process for --isa."""
    return dict(os.environ, **TORCH_ISA_ENV[isa])


def torch_isa_line(isa: str) -> str:
    pins = " ".join(f"{k}={v}" for k, v in TORCH_ISA_ENV[isa].items())
    return f"PyTorch: instruction set {isa}{f' ({pins})' if pins else ' (its own choice)'}"


def kernels_line(info: dict) -> str:
    """What gnr's CPU backend runs on: the BLAS (OpenBLAS names the kernels it picked; OPENBLAS_CORETYPE, when
    set, overrides its choice) and the vector level of gnr's own kernels."""
    pinned = os.environ.get("OPENBLAS_CORETYPE")
    return f"{info['blas']}{f' (OPENBLAS_CORETYPE={pinned})' if pinned else ''}, gnr vector kernels {info['cpu_vector']}"


def run_gnr(args) -> dict:
    import gnr

    if args.threads:
        gnr.set_num_threads(args.threads)
    hold_gnr_isa(gnr, args.torch_isa)
    m = gnr.load_model(args.model)
    image, latent, context = inputs(args.size, factor=m.vae_factor, ctx_dim=m.config["unet"]["cross_attention_dim"],
                                    batch=args.batch)
    results = {}
    calls = {
        "text": lambda: m.encode_prompt("a photograph of an astronaut riding a horse"),
        "unet": lambda: m.unet(latent, 500, context),
        "vae_encode": lambda: m.encode_image(image),
        "vae_decode": lambda: m.decode_latent(latent[:1]),
    }
    for part in args.parts:
        m.reset_peak()
        med, best = timed(calls[part], args.runs)
        results[part] = {"median_s": med, "min_s": best, "arena_peak_mib": m.peak_bytes / 2**20}
        if args.profile:  # one more run, op by op (after the timed ones, so it changes none)
            with gnr.profile() as prof:
                calls[part]()
            results[part]["profile"] = prof.table(top=args.profile)
    results["rss_mib"] = peak_rss_mib()
    results["kernels"] = kernels_line(gnr.build_info())
    return results


def run_torch(args) -> dict:
    import numpy as np
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import CLIPTextModel, CLIPTokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    unet = UNet2DConditionModel.from_pretrained(os.path.join(args.model, "unet")).eval()
    vae = AutoencoderKL.from_pretrained(os.path.join(args.model, "vae")).eval()
    text = CLIPTextModel.from_pretrained(os.path.join(args.model, "text_encoder")).eval()
    tok = CLIPTokenizer.from_pretrained(os.path.join(args.model, "tokenizer"))
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    image, latent, context = inputs(args.size, factor=factor, ctx_dim=unet.config.cross_attention_dim,
                                    batch=args.batch)
    x = torch.from_numpy(image).float().div(127.5).sub(1).permute(2, 0, 1)[None]
    z = torch.from_numpy(latent)
    c = torch.from_numpy(context)
    ids = tok("a photograph of an astronaut riding a horse", padding="max_length", max_length=77,
              truncation=True, return_tensors="pt").input_ids
    calls = {
        "text": lambda: text(ids)[0],
        "unet": lambda: unet(z, 500, encoder_hidden_states=c).sample,
        "vae_encode": lambda: vae.encode(x).latent_dist.mean,
        "vae_decode": lambda: vae.decode(z[:1] / vae.config.scaling_factor).sample,
    }
    results = {}
    for part in args.parts:
        with FlopCounterMode(display=False) as fc:
            calls[part]()
        med, best = timed(calls[part], args.runs)
        results[part] = {"median_s": med, "min_s": best, "flops": fc.get_total_flops()}
    results["rss_mib"] = peak_rss_mib()
    # The machine's single-precision GEMM rate, for the floor.
    n = 2048
    a = torch.randn(n, n)
    b = torch.randn(n, n)
    _, best = timed(lambda: a @ b, 5)
    results["sgemm_gflops"] = 2 * n**3 / best / 1e9
    return results


def take_turns(side, rounds: int, skip_torch: bool, profile: int) -> tuple[list, list]:
    """Each side's results, round by round: the sides take turns (gnr, torch,
    gnr, ...) so that a machine whose speed drifts over minutes slows both
    alike, and each round's ratio compares neighbouring runs. Only the first
    gnr run profiles."""
    g_rounds, t_rounds = [], []
    for r in range(rounds):
        g_rounds.append(side("gnr", profile=profile if r == 0 else 0))
        if not skip_torch:
            t_rounds.append(side("torch"))
    return g_rounds, t_rounds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--size", type=int, default=512, help="image size in pixels (square)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=1,
                    help="timed runs of the two sides, taking turns (gnr, torch, gnr, ...): each part's medians "
                         "over rounds, and the median of each round's ratio")
    ap.add_argument("--threads", type=int, default=0, help="0: all cores")
    ap.add_argument("--parts", default=",".join(PARTS))
    ap.add_argument("--skip-torch", action="store_true")
    ap.add_argument("--batch", type=int, default=1, help="latents in the UNet's batched pass")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="after the timed runs, one more gnr run of each part op by op (gnr.profile): its N slowest ops")
    add_torch_isa_arg(ap)
    ap.add_argument("--side", choices=("gnr", "torch"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.parts = [p for p in args.parts.split(",") if p]
    for p in args.parts:
        if p not in PARTS:
            ap.error(f"unknown part {p!r}; choose from {', '.join(PARTS)}")

    if args.side:
        res = run_gnr(args) if args.side == "gnr" else run_torch(args)
        print("RESULT " + json.dumps(res))
        return

    def side(name, profile=0):
        cmd = [sys.executable, __file__, args.model, "--size", str(args.size), "--runs", str(args.runs),
               "--threads", str(args.threads), "--parts", ",".join(args.parts), "--batch", str(args.batch),
               "--profile", str(profile), "--side", name, *side_isa_args(args.torch_isa)]
        env = torch_side_env(args.torch_isa) if name == "torch" else None
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if out.returncode != 0:
            sys.exit(f"{name} side failed:\n{out.stderr[-3000:]}")
        line = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")][-1]
        return json.loads(line[len("RESULT "):])

    g_rounds, t_rounds = take_turns(side, args.rounds, args.skip_torch, args.profile)
    g = dict(g_rounds[0])
    t = dict(t_rounds[0]) if t_rounds else None
    for p in args.parts:  # new dicts: the rounds' own stay as they were
        g[p] = {**g[p], "median_s": statistics.median(x[p]["median_s"] for x in g_rounds)}
        if t:
            t[p] = {**t[p], "median_s": statistics.median(x[p]["median_s"] for x in t_rounds)}
    print(f"model {args.model}  size {args.size}x{args.size}  runs {args.runs}  rounds {args.rounds}  "
          f"threads {args.threads or os.cpu_count()}  unet batch {args.batch}  cpu {cpu_name()} x{os.cpu_count()}")
    print(f"gnr: {g['kernels']}")
    if t:
        print(torch_isa_line(args.torch_isa))
        print(f"measured sgemm peak: {t['sgemm_gflops']:.1f} GFLOP/s")
    print(f"{'part':<11} {'gnr med s':>10} {'torch med s':>11} {'torch/gnr':>9} {'GFLOP':>8} {'floor s':>8} "
          f"{'gnr/floor':>9} {'arena MiB':>9}")
    for p in args.parts:
        gm = g[p]["median_s"]
        row = f"{p:<11} {gm:>10.4f} "
        if t:
            tm = t[p]["median_s"]
            fl = t[p]["flops"]
            floor = fl / (t["sgemm_gflops"] * 1e9)
            row += f"{tm:>11.4f} {tm / gm:>9.2f} {fl / 1e9:>8.1f} {floor:>8.4f} {gm / floor:>9.2f} "
        else:
            row += f"{'':>11} {'':>9} {'':>8} {'':>8} {'':>9} "
        row += f"{g[p]['arena_peak_mib']:>9.1f}"
        print(row)
    if t and args.rounds > 1:
        for p in args.parts:
            ratios = [y[p]["median_s"] / x[p]["median_s"] for x, y in zip(g_rounds, t_rounds)]
            print(f"{p}, torch/gnr round by round: " + ", ".join(f"{r:.2f}" for r in ratios)
                  + f" (median {statistics.median(ratios):.2f})")
    print(f"peak RSS MiB: gnr {g['rss_mib']:.0f}" + (f", torch {t['rss_mib']:.0f}" if t else ""))
    for p in args.parts:
        if "profile" in g[p]:
            print(f"\ngnr {p}, op by op (one more run):\n{g[p]['profile']}")


if __name__ == "__main__":
    main()
