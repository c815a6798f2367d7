"""The Ray engine of batch jobs: Ray Data's `map_batches` with a callable
class, so that each actor of a pool of `workers` loads one Editor and keeps
it for every group of rows it is given; `num_gpus` per actor when the job
runs on GPUs, CPU actors otherwise.

The manifest is read and planned by the driver (gnr.batch), as for the
local engine, so that both engines see the same rows, row numbers, errors
and inversion groups. Ray Data then gets one item per inversion group (its
rows as JSON text: a manifest may mix types within a column, which Arrow's
typed readers refuse), and each actor runs a whole group, so an image is
inverted once whatever the order of its rows in the file. Actors return
each row's record and PNG bytes; the driver writes them, so the output
folder need only exist where the driver runs.

Ray is imported only here and only when a job asks for it: `import gnr`
never imports it.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Iterator, Optional

import numpy as np

from ._batch_runner import make_editor, run_group

__all__ = ["import_ray", "check_ray_options", "EditorActor", "ray_results", "RayJobError"]

INSTALL = "pip install 'gnr[ray]'"
ACTOR_START_TIMEOUT_S = 900  # an autoscaling cluster may take minutes to add GPU nodes


class RayJobError(RuntimeError):
    """A Ray job that could not go on: its actors could not start (gnr not
    installed on a node, a model folder missing there) or died. The rows
    finished before it are kept, as after Ctrl-C."""


def _job_error(err: Exception) -> RayJobError:
    """Ray's error, whose message is a remote traceback, as one line that
    says what to do."""
    text = str(err)
    if "No module named 'gnr'" in text:
        return RayJobError("the Ray workers cannot import gnr: install gnr (this version, with pip install "
                           "'gnr[ray]') on every node of the cluster")
    last = [line.strip() for line in text.splitlines() if line.strip()]
    return RayJobError(f"the Ray job failed: {type(err).__name__}: {last[-1] if last else text}")


def import_ray():
    """The `ray` module with Ray Data, or an ImportError that says how to
    install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise ImportError(f"engine='ray' needs Ray Data, which is not installed here ({e}); install it with "
                          f"{INSTALL} (or pip install 'ray[data]'), or use engine='local'") from None
    return ray


def check_ray_options(device, gpus_per_worker, address) -> None:
    if device is not None and device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu', 'cuda' or None (GPUs when the cluster has them), got {device!r}")
    if gpus_per_worker is not None:
        if isinstance(gpus_per_worker, bool) or not isinstance(gpus_per_worker, (int, float)) or \
                not 0 < gpus_per_worker:
            raise ValueError(f"gpus_per_worker must be a positive number (a fraction packs several actors on "
                             f"one GPU), got {gpus_per_worker!r}")
        if device == "cpu":
            raise ValueError("gpus_per_worker is for GPU actors; device='cpu' runs CPU actors")
    if address is not None and not isinstance(address, str):
        raise TypeError(f"address must be a Ray cluster address (str) or None, got {type(address).__name__}")


class EditorActor:
    """A Ray Data callable class: one Editor per actor, made once, then a
    batch of inversion groups per call.

    model, device, dtype, threads: as `gnr.batch.run` takes them (threads
    explicit: bit-identity needs equal thread counts on every side)."""

    def __init__(self, model, device: str, dtype: Optional[str], threads: Optional[int]):
        self.editor = make_editor(model, device, dtype, threads)

    def __call__(self, batch: dict) -> dict:
        records, pngs = [], []
        for text in batch["group"]:
            for record, png in run_group(self.editor, json.loads(text)):
                records.append(json.dumps(record, default=str))
                pngs.append(b"" if png is None else png)
        return {"record": np.array(records, dtype=object), "png": np.array(pngs, dtype=object)}


def _start(ray, address: Optional[str]) -> bool:
    """Connects to `address`, or starts a local instance when it is None;
    True when this call started or connected (and so must shut down)."""
    if ray.is_initialized():
        return False
    kwargs = {"address": address, "logging_level": logging.WARNING}
    if address is None:
        # A local instance: its workers import this very gnr (a checkout
        # built in place is not on their default path).
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
        kwargs.update(include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": path}})
    ray.init(**kwargs)
    return True


def ray_results(groups: list, model, device: Optional[str], dtype: Optional[str], threads: Optional[int],
                workers: int, gpus_per_worker: Optional[float], address: Optional[str]) -> Iterator[tuple]:
    """(record, PNG bytes or None) of every row of `groups`, as actors
    finish their groups. Closing the iterator early (a stopped job, Ctrl-C)
    stops the actors, and the Ray instance when this call started it."""
    if not groups:
        return
    ray = import_ray()
    started = _start(ray, address)
    try:
        gpus = ray.cluster_resources().get("GPU", 0)
        if device is None:
            if gpus <= 0 and gpus_per_worker is not None:
                raise ValueError(f"gpus_per_worker={gpus_per_worker!r}, but the Ray cluster has no GPUs")
            device = "cuda" if gpus > 0 else "cpu"
        if device == "cuda":
            if gpus <= 0:
                raise ValueError("device 'cuda': the Ray cluster has no GPUs; use device='cpu' (CPU actors)")
            resources = {"num_gpus": 1 if gpus_per_worker is None else gpus_per_worker, "num_cpus": 1}
        else:
            threads = 1 if threads is None else threads
            resources = {"num_cpus": threads}
            cpus = ray.cluster_resources().get("CPU", 0)
            if started and address is None and workers * threads > cpus:
                raise ValueError(f"{workers} workers x {threads} threads need {workers * threads} CPUs; this "
                                 f"machine's Ray instance has {cpus:g}")
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # gnr.batch draws its own, which Ray Data's log lines would break
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        # Every actor up before the first group is handed out (the work is
        # then spread over all of them), and a cluster that cannot host the
        # pool is an error after a while rather than a job that waits forever.
        context.wait_for_min_actors_s = ACTOR_START_TIMEOUT_S
        items = [{"group": json.dumps(g, default=str)} for g in groups]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        # One group at a time per actor: a group is seconds to minutes of
        # work, and an actor that starts first must not queue up groups that
        # a later one could take.
        pool = ray.data.ActorPoolStrategy(size=workers, max_tasks_in_flight_per_actor=1)
        ds = ds.map_batches(EditorActor, batch_size=1, compute=pool,
                            fn_constructor_kwargs={"model": model, "device": device, "dtype": dtype,
                                                   "threads": threads}, **resources)
        batches = iter(ds.iter_batches(batch_size=None, batch_format="numpy"))
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                break
            except ray.exceptions.RayError as e:
                raise _job_error(e) from None
            for text, png in zip(batch["record"], batch["png"]):
                record = json.loads(text)
                yield record, (bytes(png) if record["error"] is None else None)
    finally:
        if started:
            ray.shutdown()
