"""The rows of one inversion group run on one Editor: the work both batch
engines do, in this process (local) or inside a Ray actor.

A group is the rows that share an image, a source prompt and inversion
settings. The image is read and inverted once, then each row's target is an
edit of that `Inversion` (bit-identical to a fresh `Editor.edit` of the
image). A group travels as a plain, JSON-serialisable dict:

    {"image": path, "source_prompt": str, "size": int or None,
     "rows": [{"config": normalised config, "record": the row's output record
               so far (its fields, row, output path, fingerprint)}, ...]}
"""
from __future__ import annotations

import os
import socket
import time
from typing import Iterator, Optional

from ._batch_output import png_bytes
from .editor import Editor

__all__ = ["make_editor", "run_group", "worker_name", "TIME_FIELDS"]

TIME_FIELDS = ("load_s", "encode_s", "inversion_s", "guided_steps_s", "unguided_steps_s", "decode_s", "total_s")


def worker_name() -> str:
    """host:pid of the process that edits (tells Ray actors apart)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def make_editor(model, device: str, dtype: Optional[str], threads: Optional[int]) -> Editor:
    """The one Editor a worker keeps for all its rows. `threads` is passed
    explicitly: CPU results are bit-identical only at one thread count
    (DECISIONS.md section 5), and a Ray actor's default would be its
    machine's core count."""
    return Editor(model, device=device, dtype=dtype, threads=threads)


def _failure(stage: str, err: BaseException) -> str:
    return f"{stage}: {type(err).__name__}: {err}"


def _finish(entry: dict, editor: Editor, error: Optional[str], times: dict, inverted: bool) -> dict:
    record = dict(entry["record"])
    record.update(error=error, device=editor.model.device, worker=worker_name(), inverted=inverted)
    if error is not None:
        record["output"] = None  # no file was written
    record.update({k: float(times.get(k, 0.0)) for k in TIME_FIELDS})
    return record


def run_group(editor: Editor, group: dict) -> Iterator[tuple[dict, Optional[bytes]]]:
    """(record, PNG bytes) for each row of `group`, in its order, as each is
    done. A row that fails has its `error` set and no PNG; the next rows go
    on. A failure of the whole group (the image cannot be read, the
    inversion fails) is every row's error, found once. KeyboardInterrupt is
    not caught: it stops the job."""
    rows = group["rows"]
    t0 = time.perf_counter()
    try:
        image = editor.load_image(group["image"], size=group["size"])
    except Exception as e:  # noqa: BLE001 - any failure of one input is that input's error
        error = _failure("image", e)
        for entry in rows:
            yield _finish(entry, editor, error, {}, False), None
        return
    load_s = time.perf_counter() - t0
    inversion = None
    inversion_error = None
    for i, entry in enumerate(rows):
        t_row = time.perf_counter()
        times = {"load_s": load_s if i == 0 else 0.0}
        inverted = False
        if inversion is None and inversion_error is None:
            try:
                inversion = editor.invert(image, group["source_prompt"], config=entry["config"], progress=False)
                inverted = True
                times.update(editor.last_timings)
            except Exception as e:  # noqa: BLE001
                inversion_error = _failure("inversion", e)
        if inversion_error is not None:
            yield _finish(entry, editor, inversion_error, times, inverted), None
            continue
        try:
            out = editor.edit(inversion, target_prompt=entry["record"]["target_prompt"], config=entry["config"],
                              progress=False)
        except Exception as e:  # noqa: BLE001
            yield _finish(entry, editor, _failure("edit", e), times, inverted), None
            continue
        t = editor.last_timings
        for key, name in (("guided_steps", "guided_steps_s"), ("unguided_steps", "unguided_steps_s"),
                          ("decode", "decode_s")):
            times[name] = t[key]
        times["encode_s"] = times.get("encode", 0.0) + t["encode"]
        times["inversion_s"] = times.get("inversion", 0.0)
        png = png_bytes(out)
        times["total_s"] = time.perf_counter() - t_row + times["load_s"]
        yield _finish(entry, editor, None, times, inverted), png
