"""Batch editing of a whole dataset: `gnr.batch.run(manifest, out_dir)`,
`python -m gnr batch MANIFEST --out DIR`.

    import gnr.batch
    result = gnr.batch.run("pie_bench.jsonl", "edited/")                 # here, in this process
    result = gnr.batch.run("pie_bench.jsonl", "edited/", engine="ray",   # on Ray Data
                           workers=8)

The manifest (JSONL, CSV or Parquet) has one row per edit: `image` (a path;
relative paths are taken from the manifest's folder), `source_prompt`,
`target_prompt`, and optionally `config` (a preset name or a dict; CSV and
Parquet cells may hold the dict as JSON text), `seed` (replaces the config's
seed) and `id` (names the output file). Rows that share an image, a source
prompt and inversion settings share one inversion, wherever they are in the
file.

Both engines write the same outputs into `out_dir`: `<id>.png` per row
(else `<row number>.png`, zero-padded, rows counted from 0), and the output
manifest `results.jsonl` plus `results.parquet` (when pyarrow is importable:
it comes with `gnr[ray]`): each row's fields, `row`, `output` (the PNG's
path), `error` (None on success), `device`, `worker`, `inverted` (whether
this row computed its group's inversion), per-phase times in seconds
(`load_s`, `encode_s`, `inversion_s`, `guided_steps_s`, `unguided_steps_s`,
`decode_s`, `total_s`) and `fingerprint` (what the output depends on).

A row that fails records its error and the job goes on. A job started again
over the same folder skips the rows whose outputs are complete and
unchanged (same model, size, image, prompts and config) and does the rest;
rows that failed are tried again. Ctrl-C stops it with the finished rows
kept, and both output manifests list them.
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from . import configs
from ._backends import build_info, cuda_available
from ._batch_output import JOURNAL, OUTPUT_FIELDS, PARQUET, BatchOutput, parquet_available, read_journal
from ._batch_ray import RayJobError, check_ray_options, import_ray, ray_results
from ._batch_runner import make_editor, run_group
from ._manifest import read_manifest
from .model import compute_dtype
from .sizes import check_size, model_sizes

__all__ = ["run", "BatchResult", "RayJobError", "ENGINES"]

ENGINES = ("local", "ray")


@dataclass
class BatchResult:
    """What one `run` did.

    records: the output manifest's rows in row order (dicts; see the module
      docstring): the rows finished by this run and those kept from an
      earlier one.
    rows: the number of rows in the manifest.
    done: rows edited by this run (with or without an error).
    kept: rows an earlier run had completed, not redone.
    failed: rows whose `error` is set.
    inversions: inversions this run computed (one per group of rows that
      share an image, a source prompt and inversion settings).
    stopped: True when `callback` stopped the job before every row was done.
    seconds: the job's wall time.
    out_dir: the output folder; manifests: the output manifest files written
      (results.jsonl, and results.parquet when pyarrow is importable)."""

    records: list
    rows: int
    done: int
    kept: int
    failed: int
    inversions: int
    stopped: bool
    seconds: float
    out_dir: str
    manifests: list = field(default_factory=list)


@dataclass
class _Job:
    groups: list           # runner groups (see gnr._batch_runner), in the order of their first row
    failed_early: list     # records of rows refused before any work (bad fields, config, name)
    kept: list             # records of rows an earlier run completed
    rows: int


# ----------------------------------------------------------------- checks --

def _check_choice(value, allowed, name: str) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")


def _positive_int(value, name: str, none_ok: bool = False) -> None:
    if value is None and none_ok:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer{' or None' if none_ok else ''}, got {value!r}")


def _check_out_dir(out_dir) -> str:
    if not isinstance(out_dir, (str, os.PathLike)):
        raise TypeError(f"out_dir must be a folder path, got {type(out_dir).__name__}")
    out_dir = os.path.abspath(os.fspath(out_dir))
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise NotADirectoryError(f"out_dir {out_dir} is a file, not a folder")
    probe = out_dir if os.path.isdir(out_dir) else os.path.dirname(out_dir)
    if not os.path.isdir(probe):
        raise FileNotFoundError(f"cannot make the output folder {out_dir}: its parent {probe} does not exist")
    try:  # a trial file says more than permission bits
        with tempfile.TemporaryFile(dir=probe, prefix=".gnr-"):
            pass
    except OSError as e:
        raise PermissionError(f"cannot write in {probe} ({e.strerror or e})") from None
    return out_dir


def _local_device(device) -> str:
    """None: a real GPU when one is usable, else the CPU (the emulated test
    device is never chosen on its own)."""
    if device is None:
        return "cuda" if cuda_available() and build_info().get("cuda") is True else "cpu"
    _check_choice(device, ("cpu", "cuda"), "device")
    if device == "cuda" and not cuda_available():
        raise ValueError("device 'cuda': no usable GPU here (see gnr.build_info()); use device='cpu'")
    return device


def _resolve_config(base, seed: Optional[int]) -> dict:
    """A row's config as the Editor takes it (reference keys), with the
    row's seed in it."""
    cfg = configs.get(base) if isinstance(base, str) else copy.deepcopy(base)
    if not isinstance(cfg, dict):
        raise TypeError(f"config must be a preset name or a dict, got {type(base).__name__}")
    if seed is not None:
        cfg["seed"] = seed
    return cfg


def _inversion_settings(norm: dict) -> dict:
    """What an inversion depends on besides the image and the source prompt
    (the keys `Editor.edit` checks an `Inversion` against)."""
    random = norm["start_latent"] == "random"
    return {"num_steps": norm["num_steps"], "start_latent": norm["start_latent"],
            "inversion_type": None if random else norm["inversion_type"],
            "seed": norm["seed"] if random else None,
            "guidance": norm["ntinv_guidance"] if norm["inversion_type"] == "ntinv" and not random else None}


# --------------------------------------------------------------- planning --

def _plan(manifest: str, out_dir: str, default_config, model_key: str, size: Optional[int],
          dtype: Optional[str]) -> _Job:
    """Reads the manifest and decides everything before any work: each
    row's config and output name (or its error), the inversion groups, and
    which rows an earlier run completed."""
    rows = read_manifest(manifest)
    clash = sorted({k for r in rows for k in r.extra} & set(OUTPUT_FIELDS))
    if clash:
        raise ValueError(f"the manifest's column(s) {', '.join(clash)} would clash with the output manifest's "
                         f"fields of the same name; rename them")
    width = max(5, len(str(len(rows) - 1)))
    previous = {os.path.basename(r.get("output") or ""): r for r in read_journal(out_dir)}
    names: dict = {}
    groups: dict = {}
    failed, kept = [], []
    for r in rows:
        record = {"row": r.row, **r.fields, "output": None, "fingerprint": None}
        error = r.error
        if error is None:
            name = (r.id if r.id is not None else f"{r.row:0{width}d}") + ".png"
            if name in names:
                error = f"id: the output name {name} is taken by row {names[name]}"
            else:
                names[name] = r.row
        if error is None:
            try:
                cfg = _resolve_config(default_config if r.config is None else r.config, r.seed)
                norm = configs.normalize(cfg)
            except (ValueError, TypeError) as e:
                error = f"config: {e}"
        if error is not None:
            failed.append(dict(record, error=error))
            continue
        record["output"] = os.path.join(out_dir, name)
        record["fingerprint"] = hashlib.sha256(json.dumps(
            [model_key, size, dtype, r.image, r.fields["source_prompt"], r.fields["target_prompt"], norm],
            sort_keys=True).encode()).hexdigest()[:20]
        before = previous.get(name)
        if (before is not None and before.get("error") is None and before.get("fingerprint") == record["fingerprint"]
                and os.path.isfile(record["output"])):
            # this row's fields as the manifest has them now, the earlier run's results
            kept.append({**record, **{k: before.get(k) for k in OUTPUT_FIELDS if k not in record}})
            continue
        key = json.dumps([r.image, r.fields["source_prompt"], _inversion_settings(norm)], sort_keys=True)
        group = groups.setdefault(key, {"image": r.image, "source_prompt": r.fields["source_prompt"], "size": size,
                                        "rows": []})
        group["rows"].append({"config": cfg, "record": record})
    return _Job(groups=list(groups.values()), failed_early=failed, kept=kept, rows=len(rows))


# --------------------------------------------------------------- progress --

class _Progress:
    """Rows done, failures and the rate: a tqdm bar when tqdm is installed,
    else a line on stderr every few seconds."""

    def __init__(self, enabled: bool, total: int, initial: int):
        self.bar = None
        self.enabled = enabled
        self.total, self.count, self.failed = total, initial, 0
        self.t0 = self.last = time.perf_counter()
        if not enabled:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return
        self.bar = tqdm(total=total, initial=initial, desc="batch", unit="row")

    def update(self, record: dict) -> None:
        self.count += 1
        self.failed += record.get("error") is not None
        if self.bar is not None:
            self.bar.set_postfix(failed=self.failed, refresh=False)
            self.bar.update(1)
        elif self.enabled and (time.perf_counter() - self.last > 5 or self.count == self.total):
            self.last = time.perf_counter()
            rate = self.count / max(self.last - self.t0, 1e-9)
            print(f"batch: {self.count}/{self.total} rows, {self.failed} failed, {rate:.2f} rows/s", file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# -------------------------------------------------------------------- run --

def _local_results(job: _Job, model, device, dtype, threads):
    if not job.groups:
        return
    editor = make_editor(model, device, dtype, threads)
    for group in job.groups:
        yield from run_group(editor, group)


def run(manifest, out_dir, model=None, config="nonstyle", device: Optional[str] = None, dtype: Optional[str] = None,
        threads: Optional[int] = None, workers: Optional[int] = None, gpus_per_worker: Optional[float] = None,
        engine: str = "local", address: Optional[str] = None, size: Optional[int] = None, progress=None,
        callback: Optional[Callable] = None) -> BatchResult:
    """Edits every row of `manifest` and writes the results into `out_dir`
    (see the module docstring for the files). Everything is checked, and
    the manifest read and planned, before any work; a bad argument raises
    TypeError / ValueError / FileNotFoundError / ImportError naming it.

    manifest: a .jsonl, .csv or .parquet file (Parquet needs pyarrow).
    out_dir: the output folder; created if missing (its parent must exist).
      Outputs of an earlier run there are kept when complete and unchanged.
    model: a model folder (diffusers layout) or single-file .safetensors checkpoint, or None / "default" for the
      bundled default model. With engine="ray" the folder must be readable
      at the same path on every Ray node, as must the images.
    config: the config of rows that name none: a preset name ("nonstyle",
      ...) or a dict with the reference's keys.
    device: "cpu", "cuda", or None: a GPU when one is there (local: a usable
      GPU in this process; Ray: GPUs in the cluster), else the CPU.
    dtype: None or "float32"; on "cuda" also "float16" / "bfloat16".
    threads: CPU threads of each Editor. None: every core for the local
      engine, 1 for each Ray CPU actor. Ray CPU actors reserve `threads`
      CPUs each. Results are bit-identical between engines, and to
      `gnr.Editor(threads=...).edit`, at equal thread counts.
    workers: engine="ray": the number of actors (default 1), each with one
      Editor; all of them start before work is handed out, and a cluster
      that cannot host them within 15 minutes is a `RayJobError`. The
      local engine runs one worker in this process: None or 1.
    gpus_per_worker: engine="ray" on GPUs: the GPUs each actor reserves
      (default 1; a fraction packs several actors on one GPU).
    engine: "local" (this process; Ray need not be installed) or "ray" (Ray
      Data: an actor pool of `workers` Editors; `pip install 'gnr[ray]'`).
    address: engine="ray": a Ray cluster to connect to ("auto",
      "ray://host:10001", ...); None starts a local Ray instance for this
      job and stops it after, unless this process already called
      `ray.init`.
    size: the size images are prepared at (centre square crop, bicubic
      resize, as `gnr.load_image`); None: the model's native size.
    progress: None or True shows a progress bar (tqdm when installed, else
      a line on stderr every 5 s) with rows done, failures and the rate;
      False shows none.
    callback: None, or callable(record) called after each finished row with
      its output record; returning False stops the job after that row
      (`BatchResult.stopped`).

    Returns a `BatchResult`. Ctrl-C (KeyboardInterrupt) stops the job: the
    output manifests are written for the rows finished so far and the
    KeyboardInterrupt goes on to the caller. So does a Ray job whose actors
    cannot start or die (`RayJobError`, saying why), and a failure to write
    an output (OSError).
    """
    t0 = time.perf_counter()
    _check_choice(engine, ENGINES, "engine")
    if engine == "local":
        if workers not in (None, 1):
            raise ValueError(f"the local engine runs one worker, in this process; got workers={workers!r} "
                             f"(engine='ray' runs several)")
        for name, value in (("gpus_per_worker", gpus_per_worker), ("address", address)):
            if value is not None:
                raise ValueError(f"{name} is for engine='ray'; the local engine takes None, got {value!r}")
        device = _local_device(device)
        compute_dtype(dtype, device)  # a dtype the device cannot run, refused before any work
    else:
        import_ray()
        workers = 1 if workers is None else workers
        _positive_int(workers, "workers")
        check_ray_options(device, gpus_per_worker, address)
        compute_dtype(dtype, "cpu" if device == "cpu" else "cuda")  # None: GPU actors when the cluster has GPUs
    _positive_int(threads, "threads", none_ok=True)
    if progress is not None and not isinstance(progress, bool):
        raise TypeError(f"progress must be None, True or False, got {progress!r}")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be None or a callable(record), got {type(callback).__name__}")
    model = "default" if model is None else model
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"model must be a model folder or single-file checkpoint path, or None (the bundled default model), got "
                        f"{type(model).__name__}")
    model = model if model == "default" else os.path.abspath(os.fspath(model))
    _, multiple = model_sizes(model)  # the model's configs, checked before any work
    if size is not None:
        size = check_size(size, multiple)
    configs.normalize(_resolve_config(config, None))
    out_dir = _check_out_dir(out_dir)
    if isinstance(manifest, (str, os.PathLike)) and os.path.abspath(manifest) in (
            os.path.join(out_dir, JOURNAL), os.path.join(out_dir, PARQUET)):
        raise ValueError(f"the manifest {manifest} is where this job writes its output manifest; move it or "
                         f"choose another out_dir")
    job = _plan(manifest, out_dir, config, model, size, dtype)

    output = BatchOutput(out_dir, job.kept)
    pending = sum(len(g["rows"]) for g in job.groups) + len(job.failed_early)
    bar = _Progress(progress is not False, len(job.kept) + pending, len(job.kept))
    done = inversions = 0
    stopped = False
    results = None
    try:
        if engine == "local":
            results = _local_results(job, model, device, dtype, threads)
        else:
            results = ray_results(job.groups, model, device, dtype, threads, workers, gpus_per_worker, address)
        # the rows refused while planning first: they need no editor
        for record, png in itertools.chain(((r, None) for r in job.failed_early), results):
            output.add(record, png)
            bar.update(record)
            done += 1
            inversions += bool(record.get("inverted"))
            if callback is not None and callback(record) is False:
                stopped = True
                break
    finally:
        if results is not None:
            results.close()  # a Ray engine stops its actors (and its local instance) here
        bar.close()
        records = output.close()
    manifests = [output.path(JOURNAL)] + ([output.path(PARQUET)] if parquet_available() else [])
    return BatchResult(records=records, rows=job.rows, done=done, kept=len(job.kept),
                       failed=sum(r.get("error") is not None for r in records), inversions=inversions,
                       stopped=stopped, seconds=time.perf_counter() - t0, out_dir=out_dir, manifests=manifests)
