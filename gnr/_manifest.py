"""A batch job's manifest: rows of `image`, `source_prompt`, `target_prompt`
and optional `config`, `seed`, `id`, read from a JSONL, CSV or Parquet file.

A file that cannot be a manifest (missing, another format, a required column
absent from every row) is an error before any work. A single row that is
wrong (a prompt that is not text, a seed that is not an integer, an id that
is not a file name) is not: the row carries its error and the job goes on.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Optional

__all__ = ["ManifestRow", "read_manifest", "FORMATS", "REQUIRED", "OPTIONAL"]

REQUIRED = ("image", "source_prompt", "target_prompt")
OPTIONAL = ("config", "seed", "id")
# The file name decides the format (no guessing from the content).
FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
_MAX_ID = 200  # characters; a file name must stay well under common 255-byte limits


@dataclass
class ManifestRow:
    """One row of a manifest.

    row: its number in the file, from 0 (a JSONL line, a CSV record, a
      Parquet row; blank JSONL lines are not rows).
    fields: the row's values as read (what the output manifest repeats):
      `image`, `source_prompt`, `target_prompt`, `config`, `seed`, `id`
      (missing optional ones are None) and any other column.
    image: the image path, relative paths taken from the manifest's folder.
    config: None (the job's default), a preset name or a dict.
    seed: None or an int that replaces the config's seed.
    id: None or the file name stem of the row's output.
    error: None, or why the row cannot run (it is then not run)."""

    row: int
    fields: dict
    image: Optional[str] = None
    config: Any = None
    seed: Optional[int] = None
    id: Optional[str] = None
    error: Optional[str] = None
    extra: dict = field(default_factory=dict)


def _format(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    if ext not in FORMATS:
        raise ValueError(f"cannot read the manifest {path}: {ext or 'no extension'} is not a manifest format; "
                         f"use .jsonl (one JSON object a line), .csv or .parquet")
    return FORMATS[ext]


def _read_jsonl(path: str) -> list:
    """Rows as dicts; a line that is not a JSON object becomes the error
    string of its row."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                rows.append(f"line {lineno} is not JSON ({e.msg})")
                continue
            rows.append(value if isinstance(value, dict) else
                        f"line {lineno} is a JSON {type(value).__name__}, not an object")
    return rows


def _read_csv(path: str) -> list:
    import csv

    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None:
            return []
        rows = []
        for record in reader:
            if None in record:  # more cells than the header names
                rows.append(f"line {reader.line_num} has more cells than the header's {len(reader.fieldnames)}")
                continue
            # An empty cell is a missing value; CSV cannot tell them apart.
            rows.append({k: (None if v == "" and k not in ("source_prompt", "target_prompt") else v)
                         for k, v in record.items()})
        return rows


def _read_parquet(path: str) -> list:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError("reading a Parquet manifest needs pyarrow: pip install pyarrow (or gnr[ray], which "
                          "brings it), or write the manifest as .jsonl or .csv") from None
    try:
        return pq.read_table(path).to_pylist()
    except Exception as e:  # noqa: BLE001 - pyarrow's errors have no common base worth naming
        raise ValueError(f"cannot read the manifest {path} as Parquet ({e})") from None


def _text(value, name: str):
    if not isinstance(value, str):
        raise ValueError(f"{name} must be text, got {_describe(value)}")
    return value


def _describe(value) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


def _config(value):
    if value is None or isinstance(value, dict):
        return value
    if isinstance(value, str):
        if value.lstrip().startswith("{"):  # a dict written as JSON text (CSV and Parquet cells)
            try:
                parsed = json.loads(value)
            except json.JSONDecodeError as e:
                raise ValueError(f"config looks like a JSON object but is not valid JSON ({e.msg})") from None
            if not isinstance(parsed, dict):
                raise ValueError("config must be a preset name or a JSON object")
            return parsed
        return value
    raise ValueError(f"config must be a preset name or a dict, got {_describe(value)}")


def _seed(value):
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):  # a missing value in a float column
        return None
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():  # CSV cells are text
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ValueError(f"seed must be an integer, got {_describe(value)}")


def _id(value):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise ValueError(f"id must be text or an integer (it names the output file), got {_describe(value)}")
    bad = [c for c in ("/", "\\", "\0") if c in value]
    if not value or value in (".", "..") or value.startswith(".") or bad or len(value) > _MAX_ID:
        raise ValueError(f"id {value!r} cannot name a file: it must be 1 to {_MAX_ID} characters, without "
                         f"/, \\ or a leading dot")
    return value


def _row(number: int, raw, folder: str) -> ManifestRow:
    if isinstance(raw, str):  # the reader's own error for this row
        return ManifestRow(row=number, fields={}, error=raw)
    fields = {k: raw.get(k) for k in REQUIRED + OPTIONAL}
    extra = {k: v for k, v in raw.items() if k not in fields}
    fields.update(extra)
    row = ManifestRow(row=number, fields=fields, extra=extra)
    try:
        for name in REQUIRED:
            if raw.get(name) is None:
                raise ValueError(f"{name} is missing")
            _text(raw[name], name)
        image = raw["image"]
        if not image.strip():
            raise ValueError("image is an empty path")
        row.image = os.path.normpath(os.path.join(folder, os.path.expanduser(image)))
        row.config = _config(raw.get("config"))
        row.seed = _seed(raw.get("seed"))
        row.id = _id(raw.get("id"))
    except ValueError as e:
        row.error = str(e)
    return row


def read_manifest(path) -> list[ManifestRow]:
    """The rows of the manifest at `path` (.jsonl, .csv or .parquet; Parquet
    needs pyarrow), each checked on its own (`ManifestRow.error`).

    Raises FileNotFoundError for a missing file, ValueError for a file that
    cannot be a manifest: another extension, unreadable content, no rows, or
    a required column (image, source_prompt, target_prompt) that no row has.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"the manifest must be a file path, got {type(path).__name__}")
    path = os.fspath(path)
    fmt = _format(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such manifest file: {path}")
    if os.path.isdir(path):
        raise IsADirectoryError(f"the manifest {path} is a folder, not a file")
    try:
        raws = {"jsonl": _read_jsonl, "csv": _read_csv, "parquet": _read_parquet}[fmt](path)
    except UnicodeDecodeError as e:
        raise ValueError(f"cannot read the manifest {path}: it is not UTF-8 text ({e.reason})") from None
    if not raws:
        raise ValueError(f"the manifest {path} has no rows")
    seen = set()
    for raw in raws:
        if isinstance(raw, dict):
            seen.update(raw)
    missing = [name for name in REQUIRED if name not in seen]
    if missing:
        raise ValueError(f"the manifest {path} has no {', '.join(missing)} column; a row needs image (a path), "
                         f"source_prompt and target_prompt, and may have config, seed and id "
                         f"(columns found: {', '.join(sorted(seen)) or 'none'})")
    folder = os.path.dirname(os.path.abspath(path))
    return [_row(i, raw, folder) for i, raw in enumerate(raws)]
