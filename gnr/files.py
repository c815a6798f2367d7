"""Reading a Stable Diffusion 1.x or 2.x model folder (diffusers layout).

Everything here treats the files as untrusted input: a folder from the internet
may be incomplete, truncated or crafted. Every error names the file (and the
tensor, where there is one), says what was found and what is allowed.

Layout read::

    model_index.json
    unet/config.json          unet/diffusion_pytorch_model[.fp16].safetensors
    vae/config.json           vae/diffusion_pytorch_model[.fp16].safetensors
    text_encoder/config.json  text_encoder/model[.fp16].safetensors
    tokenizer/                vocab.json + merges.txt, or tokenizer.json
    scheduler/                scheduler_config.json (optional; its prediction_type only,
                              read by gnr._model_config)

Weights are read from safetensors only. Pickle checkpoints (`.bin`, `.ckpt`,
`.pt`, `.pth`) can run code when loaded and are never opened. Sharded
checkpoints (`*.safetensors.index.json` with a `weight_map`) are supported.
Every tensor is returned as a C-contiguous float32 NumPy array, whatever the
file's dtype (F32, F16 or BF16).
"""
from __future__ import annotations

import json
import math
import os
import re
import struct
from pathlib import Path

import numpy as np

__all__ = [
    "COMPONENTS",
    "WEIGHT_NAMES",
    "read_json",
    "find_weights_file",
    "load_safetensors",
    "read_safetensors_header",
    "load_component",
    "iter_weights_folder",
    "component_dtypes",
    "safetensors_dtypes",
    "check_model_dir",
    "default_model_dir",
]

# Component folder -> base name of its weights file (diffusers' and transformers' names).
WEIGHT_NAMES = {
    "unet": "diffusion_pytorch_model",
    "vae": "diffusion_pytorch_model",
    "text_encoder": "model",
}
COMPONENTS = tuple(WEIGHT_NAMES)

PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth")

# The bundled default model ships inside the package, in the layout above.
_DEFAULT_MODEL = Path(__file__).resolve().parent / "data" / "default_model"

# safetensors dtype -> (little-endian NumPy dtype of the stored bits, bytes per element)
_DTYPES = {"F32": ("<f4", 4), "F16": ("<f2", 2), "BF16": ("<u2", 2)}
_ALLOWED_DTYPES = ", ".join(_DTYPES)
_DTYPE_NAMES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}
# Bytes per element of the other safetensors dtypes: a single-file checkpoint
# may carry integer buffers (CLIP's position_ids, EMA counters) beside its
# float weights. Such tensors can be listed and skipped, never read.
_OTHER_DTYPES = {"F64": 8, "I64": 8, "U64": 8, "I32": 4, "U32": 4, "I16": 2, "U16": 2, "I8": 1, "U8": 1, "BOOL": 1,
                 "F8_E4M3": 1, "F8_E5M2": 1}

# The safetensors format caps the header at 100 MB; so do we (a header length is untrusted).
MAX_HEADER_BYTES = 100 * 1000 * 1000

_VARIANT_RE = re.compile(r"^[A-Za-z0-9_-]+$")


# --------------------------------------------------------------------------- JSON


def read_json(path) -> dict:
    """Parse a JSON file whose top level must be an object.

    FileNotFoundError naming the path when it is missing (or not a file);
    ValueError naming the path when it is not UTF-8, not JSON or not an object."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not a file (expected a JSON file)")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not valid UTF-8 ({e})") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON ({e})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object at the top level, found {type(value).__name__}")
    return value


# --------------------------------------------------------------------------- finding weights


def _check_variant(variant):
    if variant is None:
        return None
    if not isinstance(variant, str):
        raise TypeError(f"variant must be a str such as 'fp16' or None, got {type(variant).__name__}")
    if not _VARIANT_RE.match(variant):
        raise ValueError(f"variant {variant!r} is not allowed: use letters, digits, '_' or '-' (for example 'fp16')")
    return variant


def _shards_from_index(index_path: Path) -> list[Path]:
    """Shard files listed by a `*.safetensors.index.json`, in order of first appearance."""
    index = read_json(index_path)
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"{index_path}: expected a non-empty 'weight_map' object (tensor name -> shard file)")
    shards: list[Path] = []
    seen = set()
    for tensor, shard in weight_map.items():
        if not isinstance(shard, str) or not shard:
            raise ValueError(f"{index_path}: weight_map entry for tensor {tensor!r} must be a file name, found {shard!r}")
        # Shards live beside the index: a bare file name, never a path that leaves the folder.
        if shard != os.path.basename(shard) or shard in (".", "..") or "/" in shard or "\\" in shard:
            raise ValueError(
                f"{index_path}: weight_map entry for tensor {tensor!r} names {shard!r}; "
                "only a file name in the same folder is allowed"
            )
        if not shard.endswith(".safetensors"):
            raise ValueError(
                f"{index_path}: weight_map entry for tensor {tensor!r} names {shard!r}; "
                "shards must be .safetensors files (pickle files are never loaded)"
            )
        if shard not in seen:
            seen.add(shard)
            shards.append(index_path.parent / shard)
    for shard in shards:
        if not shard.is_file():
            raise FileNotFoundError(f"{shard}: shard listed in {index_path} does not exist")
    return shards


def _candidates(base: str, variant: str | None) -> list[tuple[str, bool]]:
    """(file name, is_index) pairs in the order they are tried."""
    plain = [(f"{base}.safetensors", False), (f"{base}.safetensors.index.json", True)]
    if variant is None:
        return plain + _variant_names(base, "fp16")
    return _variant_names(base, variant) + plain


def _variant_names(base: str, variant: str) -> list[tuple[str, bool]]:
    return [
        (f"{base}.{variant}.safetensors", False),
        # diffusers and transformers put the variant before ".json" in an index name
        (f"{base}.safetensors.index.{variant}.json", True),
        (f"{base}.{variant}.safetensors.index.json", True),
    ]


def find_weights_file(component_dir, variant: str | None = None, *, base_name: str | None = None) -> list[Path]:
    """The safetensors file(s) holding the weights of the component folder
    `component_dir` (e.g. `<model>/unet`).

    The base name is `diffusion_pytorch_model` for `unet` and `vae`, `model` for
    `text_encoder` (taken from the folder's name; for another folder both are
    tried unless `base_name` is given). Order: with `variant=None`, the plain
    `<base>.safetensors` (or its sharded index), else the `<base>.fp16.safetensors`
    variant; with a variant (e.g. "fp16"), that variant first, then the plain file.

    Returns a list of paths: one file, or the shards of a sharded checkpoint.
    FileNotFoundError naming the folder and the names looked for when nothing is
    there; ValueError when only pickle files (.bin/.ckpt/.pt/.pth) are present."""
    return _find_weights(component_dir, variant, base_name)[0]


def _find_weights(component_dir, variant, base_name) -> tuple[list[Path], Path | None]:
    """(files, index file or None)."""
    folder = Path(component_dir)
    variant = _check_variant(variant)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder (expected a model component folder)")
    if base_name is not None:
        bases = [base_name]
    elif folder.name in WEIGHT_NAMES:
        bases = [WEIGHT_NAMES[folder.name]]
    else:
        bases = list(dict.fromkeys(WEIGHT_NAMES.values()))
    tried = []
    for base in bases:
        for name, is_index in _candidates(base, variant):
            tried.append(name)
            path = folder / name
            if path.is_file():
                return (_shards_from_index(path), path) if is_index else ([path], None)
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES and p.is_file())
    if pickles:
        raise ValueError(
            f"{folder}: only pickle checkpoints found ({', '.join(pickles)}); safetensors is required "
            f"(looked for {', '.join(tried)}). Pickle files are never loaded: they can run code. "
            "Convert the model to safetensors (diffusers: save_pretrained(..., safe_serialization=True))."
        )
    raise FileNotFoundError(f"{folder}: no weights file found (looked for {', '.join(tried)})")


# --------------------------------------------------------------------------- safetensors


def _no_duplicate_keys(pairs):
    out = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _parse_header(path: Path, size: int, raw: bytes,
                  other_dtypes: bool = False) -> tuple[int, list[tuple[str, str, tuple, int, int]]]:
    """Validate the header bytes; return (offset of the data area, [(name, dtype, shape, begin, end)]).
    `other_dtypes`: also accept the non-float dtypes of _OTHER_DTYPES (for tensors to be skipped)."""
    if size < 8:
        raise ValueError(f"{path}: file is {size} bytes, too short for the 8-byte header length (truncated?)")
    (n,) = struct.unpack("<Q", raw[:8])
    if n > size - 8:
        raise ValueError(
            f"{path}: header length {n} bytes is larger than the rest of the file ({size - 8} bytes): "
            "truncated or not a safetensors file"
        )
    if n > MAX_HEADER_BYTES:
        raise ValueError(f"{path}: header length {n} bytes exceeds the {MAX_HEADER_BYTES}-byte limit")
    data_size = size - 8 - n
    try:
        text = raw[8 : 8 + n].decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: header is not valid UTF-8 ({e})") from None
    try:
        header = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except ValueError as e:  # JSONDecodeError is a ValueError, so is a duplicate key
        raise ValueError(f"{path}: header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: header must be a JSON object, found {type(header).__name__}")

    entries = []
    for name, info in header.items():
        if name == "__metadata__":  # free-form string map; allowed and ignored
            continue
        where = f"{path}: tensor {name!r}"
        if not isinstance(info, dict):
            raise ValueError(f"{where}: entry must be an object with dtype, shape, data_offsets; found {info!r}")
        for key in ("dtype", "shape", "data_offsets"):
            if key not in info:
                raise ValueError(f"{where}: entry has no {key!r} (expected dtype, shape, data_offsets)")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in _DTYPES and not (other_dtypes and dtype in _OTHER_DTYPES):
            raise ValueError(f"{where}: dtype {dtype!r} is not supported; allowed dtypes: {_ALLOWED_DTYPES}")
        if not isinstance(shape, list) or not all(_is_int(d) for d in shape):
            raise ValueError(f"{where}: shape must be a list of integers, found {shape!r}")
        if any(d < 0 for d in shape):
            raise ValueError(f"{where}: shape {shape} has a negative dimension; dimensions must be >= 0")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
            raise ValueError(f"{where}: data_offsets must be a list of two integers [begin, end], found {offsets!r}")
        begin, end = offsets
        if begin < 0 or end < begin:
            raise ValueError(f"{where}: data_offsets [{begin}, {end}] must satisfy 0 <= begin <= end")
        if end > data_size:
            raise ValueError(
                f"{where}: data_offsets [{begin}, {end}] end past the data area ({data_size} bytes): "
                "the file is truncated or its header is wrong"
            )
        itemsize = _DTYPES[dtype][1] if dtype in _DTYPES else _OTHER_DTYPES[dtype]
        expected = math.prod(shape) * itemsize
        if end - begin != expected:
            raise ValueError(
                f"{where}: data_offsets [{begin}, {end}] hold {end - begin} bytes, "
                f"expected {expected} for shape {shape} and dtype {dtype}"
            )
        entries.append((name, dtype, tuple(shape), begin, end))

    # No two tensors may share bytes (empty tensors occupy none).
    spans = sorted((e for e in entries if e[4] > e[3]), key=lambda e: (e[3], e[4]))
    for prev, cur in zip(spans, spans[1:]):
        if cur[3] < prev[4]:
            raise ValueError(
                f"{path}: tensor {cur[0]!r} data_offsets [{cur[3]}, {cur[4]}] overlap those of tensor "
                f"{prev[0]!r} [{prev[3]}, {prev[4]}]; tensors must not share bytes"
            )
    return 8 + n, entries


def _to_float32(bits: np.ndarray, dtype: str, shape: tuple) -> np.ndarray:
    """A new C-contiguous float32 array (owning its memory) from the stored bits."""
    out = np.empty(shape, dtype=np.float32)
    flat = out.reshape(-1)
    if dtype == "BF16":  # bfloat16 is the upper half of a float32: exact
        u = flat.view(np.uint32)
        u[...] = bits
        u <<= 16
    else:  # float32 copy, or float16 widened (exact)
        flat[...] = bits
    return out


def load_safetensors(path) -> dict[str, np.ndarray]:
    """Read the .safetensors file at `path` into {name: C-contiguous float32 array}
    (iter_safetensors one tensor at a time).

    The header is validated before any tensor is read: header length within the
    file, a UTF-8 JSON object, each entry with a supported dtype (F32, F16, BF16),
    non-negative integer shape and data_offsets inside the data area whose length
    matches shape x itemsize, and no two tensors overlapping. `__metadata__` is
    ignored. F16 and BF16 values convert to float32 exactly.
    Any violation is a ValueError naming the file and the tensor."""
    return dict(iter_safetensors(path))


def _read_header(path: Path, other_dtypes: bool = False) -> tuple[int, int, list[tuple[str, str, tuple, int, int]]]:
    """(file size, offset of the data area, validated header entries) of a
    .safetensors file (see load_safetensors for the checks; `other_dtypes`:
    see _parse_header)."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not a file (expected a .safetensors file)")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) == 8:
            (n,) = struct.unpack("<Q", head)
            if n <= min(size - 8, MAX_HEADER_BYTES):
                head += f.read(n)
    data_start, entries = _parse_header(path, size, head, other_dtypes)
    return size, data_start, entries


def safetensors_dtypes(path) -> list[str]:
    """The distinct dtypes of the tensors of the .safetensors file at `path`
    as stored ("float32", "float16", "bfloat16"), sorted; the header alone
    is read (and validated as load_safetensors validates it)."""
    return sorted({_DTYPE_NAMES[dtype] for _, dtype, *_ in _read_header(Path(path))[2]})


def read_safetensors_header(path) -> dict[str, tuple[str, tuple]]:
    """{name: (dtype, shape)} of every tensor of a .safetensors file, in file
    order, without reading any tensor data. The header is validated as
    load_safetensors validates it (a truncated file fails here), except that
    non-float dtypes (I64, I32, U8, BOOL, F64 ...) are listed too: they can
    be skipped by iter_safetensors(path, only=...), never read."""
    _, _, entries = _read_header(Path(path), other_dtypes=True)
    return {name: (dtype, shape) for name, dtype, shape, _, _ in entries}


def iter_safetensors(path, only=None):
    """(name, float32 array) for each tensor of a .safetensors file, in file
    order, holding one converted tensor at a time. The whole header is
    validated (see load_safetensors) before the first tensor is yielded.
    `only`: None (every tensor) or a container of names; the other tensors
    are skipped without being read, whatever their dtype (see
    read_safetensors_header); a named tensor must be F32, F16 or BF16."""
    path = Path(path)
    size, data_start, entries = _read_header(path, other_dtypes=only is not None)
    if only is not None:
        entries = [e for e in entries if e[0] in only]
        for name, dtype, *_ in entries:
            if dtype not in _DTYPES:
                raise ValueError(f"{path}: tensor {name!r}: dtype {dtype!r} is not supported for a weight; "
                                 f"allowed dtypes: {_ALLOWED_DTYPES}")
    if not entries:
        return
    # Read tensor by tensor (no mapping of the whole file): the process holds
    # one tensor's bytes at a time, however large the file.
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size != size:  # the file changed under us
            raise ValueError(f"{path}: file size changed while reading")
        for name, dtype, shape, begin, end in entries:
            np_dtype, itemsize = _DTYPES[dtype]
            count = (end - begin) // itemsize
            f.seek(data_start + begin)
            bits = np.fromfile(f, dtype=np_dtype, count=count)
            if bits.size != count:
                raise ValueError(f"{path}: tensor {name!r} is cut off (the file is truncated or its header is wrong)")
            yield name, _to_float32(bits, dtype, shape)


# --------------------------------------------------------------------------- components


def _component_dir(model_dir, component) -> Path:
    if component not in WEIGHT_NAMES:
        raise ValueError(f"component {component!r} is not one of {', '.join(COMPONENTS)}")
    root = Path(model_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such model folder")
    folder = root / component
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder (the model has no {component} component)")
    return folder


def load_component(model_dir, component: str, variant: str | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    """(config, weights) of one `component` ("unet", "vae" or "text_encoder") of the
    diffusers model folder `model_dir`. `config` is the parsed `config.json`; `weights` maps
    tensor names to float32 arrays (shards merged). See find_weights_file for the
    variant rule."""
    folder = _component_dir(model_dir, component)
    config = read_json(folder / "config.json")
    return config, dict(iter_component(model_dir, component, variant))


def iter_component(model_dir, component: str, variant: str | None = None):
    """(name, float32 array) for every weight of one component, one tensor
    in memory at a time (shards in turn; the shard index checked at the end).
    Same files and checks as load_component."""
    folder = _component_dir(model_dir, component)
    yield from iter_weights_folder(folder, WEIGHT_NAMES[component], variant)


def iter_weights_folder(folder, base_name: str, variant: str | None = None):
    """(name, float32 array) for every weight of the component folder `folder`
    whose weights file is `<base_name>[.variant].safetensors` (or its shards),
    one tensor in memory at a time. The folder may have any name (a VAE folder
    given beside a single-file checkpoint, for example)."""
    files, index = _find_weights(Path(folder), variant, base_name)
    origin: dict[str, Path] = {}
    for file in files:
        for name, arr in iter_safetensors(file):
            if name in origin:
                raise ValueError(f"{file}: tensor {name!r} is also in {origin[name]}; a tensor must be in one shard only")
            origin[name] = file
            yield name, arr
    if index is not None:
        for name, shard in read_json(index)["weight_map"].items():
            if origin.get(name) is None or origin[name].name != shard:
                raise ValueError(f"{index}: tensor {name!r} is mapped to shard {shard!r}, which does not contain it")


def component_dtypes(model_dir, component: str, variant: str | None = None) -> list[str]:
    """The distinct stored dtypes ("float32", "float16", "bfloat16") of the
    weight files of one `component` of the folder `model_dir`, as
    load_component would read them (same files and `variant` rule), sorted.
    Headers only."""
    folder = _component_dir(model_dir, component)
    files, _ = _find_weights(folder, variant, WEIGHT_NAMES[component])
    return sorted({d for file in files for d in safetensors_dtypes(file)})


def check_model_dir(path) -> dict:
    """Check that a diffusers Stable Diffusion folder has what gnr reads:
    model_index.json, and unet/, vae/, text_encoder/ (each with config.json) and
    tokenizer/. Returns the parsed model_index.json. FileNotFoundError naming the
    first missing path; ValueError for an unreadable JSON file."""
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such model folder")
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a folder (expected a diffusers model folder)")
    index = read_json(root / "model_index.json")
    for component in COMPONENTS:
        folder = root / component
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no such folder (the model needs a {component} component)")
        config = folder / "config.json"
        if not config.is_file():
            raise FileNotFoundError(f"{config}: no such file (every component folder needs its config.json)")
    tokenizer = root / "tokenizer"
    if not tokenizer.is_dir():
        raise FileNotFoundError(f"{tokenizer}: no such folder (the model needs a tokenizer)")
    return index


def default_model_dir() -> Path:
    """Folder of the bundled default model (gnr/data/default_model, in the
    layout above); FileNotFoundError when the installation lacks it."""
    if not (_DEFAULT_MODEL / "model_index.json").is_file():
        raise FileNotFoundError(f"{_DEFAULT_MODEL}: the bundled default model is missing from this installation")
    return _DEFAULT_MODEL
