"""Command line: `python -m gnr {demo, edit, batch, info}`.

    python -m gnr edit --image in.png --source "..." --target "..." -o out.png [--model DIR_OR_FILE]
    python -m gnr batch manifest.jsonl --out DIR [--model DIR_OR_FILE] [--ray [ADDRESS]] [--workers N]

Everything a command is given is checked before any work (the model folder or file
and its configs, the config with --steps, the size, the device, the input
image, the output path), and every user error is one line on stderr,
`error: ...`, with exit status 2, never a traceback.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings

EXIT_USAGE = 2


class UserError(Exception):
    """A bad command line: reported as `error: ...`, exit status 2."""


class UserInterrupt(Exception):
    """Ctrl-C during a command: its message, exit status 130."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own usage errors, in the same style as ours
        raise UserError(f"{message} (see: {self.prog} --help)")


def _check(option: str, check, *args, **kwargs):
    """check(*args, **kwargs), with a user error naming the option on failure."""
    try:
        return check(*args, **kwargs)
    except (ValueError, TypeError, OSError) as e:
        raise UserError(f"{option}: {e}") from None


def _check_device(device: str) -> None:
    import gnr

    if device == "cpu":
        return
    if device != "cuda":
        raise UserError(f"--device: {device!r} is not a device gnr knows; use cpu or cuda")
    if not gnr.cuda_available():
        info = gnr.build_info()
        why = ("this build has no CUDA backend" if info.get("cuda") is False
               else "no usable CUDA device or driver was found")
        raise UserError(f"--device cuda: no usable GPU ({why}); use --device cpu, or see `python -m gnr info`")


def _plan_edit(args) -> dict:
    """Every check of `edit` before any work: what the work needs."""
    import gnr
    from gnr.images import check_output_path, load_image
    from gnr.sizes import check_size, model_sizes

    cfg = _check("--config/--steps", gnr.configs.get, args.config, num_steps=args.steps)
    if args.seed is not None:
        cfg["seed"] = args.seed
    _check("--config/--steps/--seed", gnr.configs.normalize, cfg)
    _check_device(args.device)
    native, multiple = _check("--model", model_sizes, args.model)
    size = native if args.size is None else _check("--size", check_size, args.size, multiple)
    image = _check("--image", load_image, args.image, size=size, model=args.model)
    _check("--output", check_output_path, args.output)
    return {"config": cfg, "image": image, "size": size}


def _edit(args) -> int:
    import gnr
    from gnr.images import save_image

    plan = _plan_edit(args)
    t0 = time.perf_counter()
    editor = gnr.Editor(args.model, device=args.device)
    load = time.perf_counter() - t0
    size = plan["size"]
    print(f"editing {args.image} at {size} x {size} ({plan['config']['num_steps']} steps): "
          f"{args.source!r} -> {args.target!r}")
    t0 = time.perf_counter()
    out = editor.edit(plan["image"], args.source, args.target, config=plan["config"], progress=not args.quiet)
    total = time.perf_counter() - t0
    save_image(args.output, out)
    t = editor.last_timings
    print(f"wrote {args.output}")
    print(f"load {load:.1f} s, encode {t['encode']:.1f} s, inversion {t['inversion']:.1f} s, "
          f"guided steps {t['guided_steps']:.1f} s, unguided steps {t['unguided_steps']:.1f} s, "
          f"decode {t['decode']:.1f} s, edit total {total:.1f} s")
    return 0


def _batch(args) -> int:
    """Exit status 0 when every row succeeded, 1 when some rows failed (the
    job ran; their errors are in the output manifest)."""
    import gnr.batch

    cfg = _check("--config/--steps", gnr.configs.get, args.config, num_steps=args.steps)
    if args.ray is None:
        for option, value in (("--workers", args.workers), ("--gpus-per-worker", args.gpus_per_worker)):
            if value is not None:
                raise UserError(f"{option} needs --ray: the local engine runs one worker in this process")
    if args.device is not None and args.ray is None:  # on Ray, the cluster's devices count, not this machine's
        _check_device(args.device)
    engine = "local" if args.ray is None else "ray"
    try:
        result = gnr.batch.run(args.manifest, args.out, model=args.model, config=cfg, device=args.device,
                               threads=args.threads, workers=args.workers, gpus_per_worker=args.gpus_per_worker,
                               engine=engine, address=args.ray or None, size=args.size, progress=not args.quiet)
    except KeyboardInterrupt:
        raise UserInterrupt(f"interrupted: the finished rows are kept in {args.out} (results.jsonl); run the same "
                            f"command again to do the rest") from None
    print(f"{result.rows} rows: {result.done} edited now, {result.kept} kept from an earlier run, "
          f"{result.failed} failed, {result.inversions} inversions, {result.seconds:.1f} s")
    print(f"wrote {', '.join(result.manifests)}")
    if result.failed:
        failed = [r for r in result.records if r["error"] is not None]
        for r in failed[:5]:
            print(f"row {r['row']}: {r['error']}", file=sys.stderr)
        if len(failed) > 5:
            print(f"... and {len(failed) - 5} more: see the error column of results.jsonl", file=sys.stderr)
    return 1 if result.failed else 0


def _demo(args) -> int:
    from gnr.demo import run_demo
    from gnr.images import check_output_path

    _check("--output", check_output_path, args.output)
    run_demo(args.output, progress=not args.quiet)
    return 0


def _info(args) -> int:
    import gnr

    info = gnr.build_info()
    note = info.get("cuda_note")
    print(f"gnr {info.get('version', gnr.__version__)}")
    print("build:")
    for key, value in info.items():
        if key != "cuda_note":
            print(f"  {key}: {value}")
    if info.get("cuda") == "emulated":
        usable = "no (device='cuda' runs on the CPU emulator of this test build)"
    else:
        usable = "yes" if gnr.cuda_available() else "no"
    print(f"GPU usable: {usable}")
    if note:
        print(f"CUDA backend: {note}")
    return 0


def _parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="python -m gnr", description="Guide-and-Rescale image editing.")
    sub = ap.add_subparsers(dest="command", required=True, metavar="{demo,edit,batch,info}")
    d = sub.add_parser("demo", help="edit the bundled sample scene with the bundled default model")
    d.add_argument("-o", "--output", default="gnr_demo.png",
                   help="before/after picture, any format Pillow writes (default: gnr_demo.png)")
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    e = sub.add_parser("edit", help="edit one image")
    e.add_argument("--model", default="default",
                   help="Stable Diffusion 1.x or 2.x folder (diffusers layout) or single-file .safetensors "
                        "checkpoint; default: the bundled model")
    e.add_argument("--image", required=True, help="input image file (any format Pillow reads)")
    e.add_argument("--source", required=True, help="prompt describing the input image")
    e.add_argument("--target", required=True, help="prompt describing the wanted result")
    e.add_argument("--config", default="nonstyle",
                   help="preset: nonstyle (default), nonstyle_lowmem, style, style_lowmem")
    e.add_argument("-o", "--output", required=True, help="output image file (any format Pillow writes)")
    e.add_argument("--size", type=int,
                   help="image size in pixels (square); default: the model's native size (sample_size x VAE "
                        "factor: 64 for the bundled model, 512 for SD 1.x, 768 for SD 2.1-v); must be a multiple "
                        "the model accepts")
    e.add_argument("--steps", type=int,
                   help="num_steps (default: the preset's 50); the preset's per-step schedules are resampled "
                        "to it by relative position (gnr.configs.get)")
    e.add_argument("--seed", type=int, help="seed (start_latent random only)")
    e.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    e.add_argument("--quiet", action="store_true", help="no progress bars")
    b = sub.add_parser("batch", help="edit every row of a manifest (JSONL, CSV or Parquet), here or on Ray",
                       description="Edits every row of MANIFEST (columns image, source_prompt, target_prompt; "
                                   "optional config, seed, id) into DIR: one PNG per row and results.jsonl / "
                                   "results.parquet. Run again over the same DIR to finish an interrupted job. "
                                   "Exit status 1 when some rows failed.")
    b.add_argument("manifest", metavar="MANIFEST", help=".jsonl, .csv or .parquet file; relative image paths are "
                                                        "taken from its folder")
    b.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    b.add_argument("--model", default="default", metavar="PATH",
                   help="Stable Diffusion 1.x folder (diffusers layout); default: the bundled model")
    b.add_argument("--config", default="nonstyle", metavar="NAME",
                   help="preset of rows that name none: nonstyle (default), nonstyle_lowmem, style, style_lowmem")
    b.add_argument("--steps", type=int, help="num_steps of that preset (default: its 50)")
    b.add_argument("--size", type=int, help="image size in pixels (square); default: the model's native size")
    b.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                   help="run on Ray Data (pip install 'gnr[ray]'): alone, a local Ray instance; with an "
                        "address (auto, ray://host:10001), that cluster")
    b.add_argument("--workers", type=int, metavar="N", help="with --ray: the number of actors, each with one editor "
                                               "(default 1)")
    b.add_argument("--gpus-per-worker", type=float, metavar="G", help="with --ray: GPUs each actor reserves (default 1 when "
                                                         "the cluster has GPUs)")
    b.add_argument("--device", help="cpu or cuda (default: a GPU when there is one, else the CPU)")
    b.add_argument("--threads", type=int, help="CPU threads per editor (default: every core here, 1 per Ray "
                                               "CPU actor)")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    sub.add_parser("info", help="what this build contains and whether a GPU is usable")
    return ap


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {message}", file=sys.stderr)


def main(argv=None) -> int:
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            import gnr

            args = _parser().parse_args(argv)
            return {"demo": _demo, "edit": _edit, "batch": _batch, "info": _info}[args.command](args)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            return EXIT_USAGE
        except (ImportError, ValueError, TypeError, OSError, MemoryError, gnr.DeviceError, gnr.EditCancelled,
                gnr.batch.RayJobError) as err:
            # Reported by gnr during the work (a weights file that does not
            # load, memory, the device): one line too.
            print(f"error: {err}", file=sys.stderr)
            return EXIT_USAGE
        except UserInterrupt as err:
            print(str(err), file=sys.stderr)
            return 130
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130


if __name__ == "__main__":
    sys.exit(main())
