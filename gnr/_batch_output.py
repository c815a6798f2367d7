"""A batch job's outputs in its folder: one PNG per row, written atomically
(a temporary file, then a rename), and the output manifest.

The output manifest is `results.jsonl` (always) and `results.parquet` (when
pyarrow is importable). While a job runs, results.jsonl is a journal: one
line is appended as each row finishes, after its PNG is in place, so a job
killed at any moment leaves a journal that names only complete outputs.
When the job ends (finished, stopped or interrupted) both files are
rewritten in row order. A job started again reads the journal to find the
rows it need not redo.
"""
from __future__ import annotations

import io
import json
import os
import tempfile
from typing import Iterable, Optional

import numpy as np

__all__ = ["JOURNAL", "PARQUET", "OUTPUT_FIELDS", "png_bytes", "BatchOutput", "read_journal", "parquet_available"]

JOURNAL = "results.jsonl"
PARQUET = "results.parquet"
_TEMP_SUFFIX = ".gnr-tmp"
# Fields the job adds to a row's own; a manifest column may not take these names.
OUTPUT_FIELDS = ("row", "output", "error", "device", "worker", "inverted", "load_s", "encode_s", "inversion_s",
                 "guided_steps_s", "unguided_steps_s", "decode_s", "total_s", "fingerprint")


def png_bytes(image: np.ndarray) -> bytes:
    """`image` (uint8 (H, W, 3)) as PNG file bytes: lossless, and the same
    bytes wherever it is encoded (so both engines write identical files)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_atomically(path: str, data: bytes) -> None:
    folder, name = os.path.split(path)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=_TEMP_SUFFIX)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would hide the outputs from other users
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _parquet_column(values: list):
    """A pyarrow array of `values`. Dicts and lists (a config given as a
    dict) are stored as JSON text, and so is every value of a column Arrow
    cannot give one type (a field that is text in one row and a number in
    another)."""
    import pyarrow as pa

    try:
        return pa.array([json.dumps(v, sort_keys=True, default=str) if isinstance(v, (dict, list)) else v
                         for v in values])
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError):
        text = [None if v is None else json.dumps(v, sort_keys=True, default=str) for v in values]
        return pa.array(text, type=pa.string())


def parquet_available() -> bool:
    try:
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        return False
    return True


class BatchOutput:
    """The output folder of one job: PNGs, the journal, the final manifests.

    folder: the job's output folder (created if missing; its parent must
      exist).
    kept: records of a previous run of the job whose outputs are complete;
      they open the journal and the final manifests."""

    def __init__(self, folder: str, kept: Iterable[dict] = ()):
        self.folder = folder
        os.makedirs(folder, exist_ok=True)
        for name in os.listdir(folder):  # temporary files of a run that was killed mid-write
            if name.endswith(_TEMP_SUFFIX):
                os.unlink(os.path.join(folder, name))
        self.records = {r["row"]: r for r in kept}
        _write_atomically(self.path(JOURNAL), "".join(_line(r) for r in self._ordered()).encode())
        self._journal = open(self.path(JOURNAL), "a", encoding="utf-8")

    def path(self, name: str) -> str:
        return os.path.join(self.folder, name)

    def add(self, record: dict, png: Optional[bytes]) -> None:
        """Writes the row's PNG (when it has one: rows with an error have
        none), then its journal line."""
        record = {**record, **{k: record.get(k) for k in OUTPUT_FIELDS}}  # every field in every record
        if png is not None:
            _write_atomically(record["output"], png)
        self._journal.write(_line(record))
        self._journal.flush()
        self.records[record["row"]] = record

    def _ordered(self) -> list:
        return [self.records[k] for k in sorted(self.records)]

    def close(self) -> list:
        """Rewrites the journal in row order and writes the Parquet manifest
        when pyarrow is importable. Returns the records in row order."""
        self._journal.close()
        records = self._ordered()
        _write_atomically(self.path(JOURNAL), "".join(_line(r) for r in records).encode())
        if parquet_available():
            self._write_parquet(records)
        return records

    def _write_parquet(self, records: list) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        names = []
        for r in records:
            names.extend(k for k in r if k not in names)
        table = pa.table({k: _parquet_column([r.get(k) for r in records]) for k in names})
        buf = pa.BufferOutputStream()
        pq.write_table(table, buf)
        _write_atomically(self.path(PARQUET), buf.getvalue().to_pybytes())


def _line(record: dict) -> str:
    # default=str: a Parquet manifest may hold dates and other values JSON has no type for
    return json.dumps(record, ensure_ascii=False, default=str) + "\n"


def read_journal(folder: str) -> list:
    """The records of an earlier run's journal in `folder` (none when there
    is no journal). A torn last line, from a job killed mid-write, is
    ignored: its row is simply done again."""
    path = os.path.join(folder, JOURNAL)
    if not os.path.isfile(path):
        return []
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("row"), int):
                records.append(record)
    return records
