"""Capture points of the UNet, named after diffusers modules: which
self-attention maps a layer selection means, and feature names such as
"up_blocks.-1" (negative indices count from the end, as in Python)."""
from __future__ import annotations

import re
from typing import Sequence

# GNR_SPEC.md section 6: all 16 self-attention layers of SD 1.x. These
# literal numbers are the default whatever the model (ranges are clipped).
DEFAULT_LAYERS = [[0, 6], [0, 1], [0, 9]]
PARTS = ("down", "mid", "up")


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def normalize_layer_ranges(layers, key: str = "self_attn_layers_num") -> list[list[int]]:
    """Three half-open ranges [[a_down, b_down], [a_mid, b_mid], [a_up, b_up]]
    of BasicTransformerBlocks, or the bare form [n_down, n_mid, n_up] meaning
    [[0, n_down], [0, n_mid], [0, n_up]]. Ranges past a model's count are
    clipped when applied (Python slice semantics)."""
    allowed = f"{key} must be [[a, b], [c, d], [e, f]] (non-negative integers, a <= b) or [n_down, n_mid, n_up]"
    if not isinstance(layers, (list, tuple)) or len(layers) != 3:
        raise ValueError(f"{allowed}; got {layers!r}")
    if all(_is_int(n) for n in layers):
        if any(n < 0 for n in layers):
            raise ValueError(f"{allowed}; got {layers!r}")
        return [[0, n] for n in layers]
    out = []
    for r in layers:
        if not (isinstance(r, (list, tuple)) and len(r) == 2 and all(_is_int(v) for v in r) and 0 <= r[0] <= r[1]):
            raise ValueError(f"{allowed}; got {layers!r}")
        out.append([r[0], r[1]])
    return out


def select_attention_maps(layers, parts: Sequence[Sequence[str]]) -> list[str]:
    """Capture names of the selected self-attention maps, in forward order.
    `parts` are the model's (down, mid, up) map names."""
    ranges = normalize_layer_ranges(layers)
    names = []
    for (a, b), part in zip(ranges, parts):
        names.extend(part[a:b])
    return names


def resolve_feature(name: str, valid: Sequence[str]) -> str:
    """'up_blocks.-1' -> 'up_blocks.3' for a four-block UNet; ValueError
    listing the valid names when it names nothing."""
    if not isinstance(name, str):
        raise TypeError(f"a capture name must be a string, got {type(name).__name__}")
    tokens = name.split(".")
    resolved: list[str] = []
    for k, tok in enumerate(tokens):
        if re.fullmatch(r"-?\d+", tok):
            prefix = ".".join(resolved) + "."
            indices = set()
            for v in valid:
                vt = v.split(".")
                if len(vt) > k and v.startswith(prefix) and vt[k].isdigit():
                    indices.add(int(vt[k]))
            i = int(tok)
            count = max(indices) + 1 if indices else 0
            if i < 0:
                i += count
            if not 0 <= i < count:
                break
            tok = str(i)
        resolved.append(tok)
    full = ".".join(resolved)
    if len(resolved) != len(tokens) or full not in valid:
        raise ValueError(f"unknown capture point {name!r}; this UNet has: {', '.join(valid)}")
    return full
