"""Command line: `python -m gnr edit --model DIR --image in.png --source "..." --target "..." -o out.png`."""
from __future__ import annotations

import argparse
import sys
import time


def _edit(args) -> int:
    import gnr
    from gnr.images import load_image, save_image

    cfg = gnr.configs.get(args.config)
    if args.steps is not None:
        cfg["num_steps"] = args.steps
        for g in cfg["guiders"]:
            if isinstance(g["g_scale"], list):
                g["g_scale"] = g["g_scale"][: args.steps]
    if args.seed is not None:
        cfg["seed"] = args.seed
    t0 = time.perf_counter()
    editor = gnr.Editor(args.model, device=args.device)
    load = time.perf_counter() - t0
    image = load_image(args.image, size=args.size)
    t0 = time.perf_counter()
    out = editor.edit(image, args.source, args.target, config=cfg, progress=not args.quiet)
    total = time.perf_counter() - t0
    save_image(args.output, out)
    t = editor.last_timings
    print(f"wrote {args.output}")
    print(f"load {load:.1f} s, encode {t['encode']:.1f} s, inversion {t['inversion']:.1f} s, "
          f"guided steps {t['guided_steps']:.1f} s, unguided steps {t['unguided_steps']:.1f} s, "
          f"decode {t['decode']:.1f} s, edit total {total:.1f} s")
    return 0


def _demo(args) -> int:
    from gnr.demo import run_demo

    run_demo(args.output, progress=not args.quiet)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gnr", description="Guide-and-Rescale image editing.")
    sub = ap.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="edit the bundled sample scene with the bundled default model")
    d.add_argument("-o", "--output", default="gnr_demo.png", help="before/after PNG (default: gnr_demo.png)")
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    e = sub.add_parser("edit", help="edit one image")
    e.add_argument("--model", default="default",
                   help="Stable Diffusion 1.x folder (diffusers layout); default: the bundled model")
    e.add_argument("--image", required=True)
    e.add_argument("--source", required=True, help="prompt describing the input image")
    e.add_argument("--target", required=True, help="prompt describing the wanted result")
    e.add_argument("--config", default="nonstyle", help="nonstyle, nonstyle_lowmem, style, style_lowmem")
    e.add_argument("-o", "--output", required=True)
    e.add_argument("--size", type=int, default=512)
    e.add_argument("--steps", type=int, help="num_steps (default: the config's, 50)")
    e.add_argument("--seed", type=int)
    e.add_argument("--device", default="cpu")
    e.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    try:
        return _demo(args) if args.command == "demo" else _edit(args)
    except (ValueError, TypeError, FileNotFoundError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
