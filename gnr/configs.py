"""Guide-and-Rescale configurations: the four published ones, and the one
validation function every config goes through before any work.

Published configurations (GNR_SPEC.md section 8), as plain dicts with the
reference implementation's keys plus ``num_steps: 50`` and ``seed: 0``:

    NONSTYLE         ours_nonstyle_best        local edits
    NONSTYLE_LOWMEM  ours_nonstyle_best_colab  same, fewer layers, checkpointing
    STYLE            ours_style_best           stylisation
    STYLE_LOWMEM     ours_style_best_colab     same, fewer layers, checkpointing

Each access to one of these module attributes returns a fresh deep copy, so a
caller may edit it freely. ``get(name)`` looks one up by name (the short names
of ``names()`` or the reference file stems, case-insensitive).

Presets at any number of steps: ``get(name, num_steps=N)`` resamples every
per-step schedule of the preset from its 50 steps to N by relative position:
step k of N (k = 0..N-1) takes the preset's entry at step

    i(k) = floor((k + 1/2) * 50 / N)

the preset step whose span holds the middle of step k's span, (k + 1/2) / N
of the way through the edit. Per-step ``g_scale`` lists are resampled so; a
``total_first_steps = n`` becomes the number of k with i(k) < n and a
``total_last_steps = n`` the number of k with i(k) >= 50 - n (the same
schedules, resampled). At N = 50 the preset is unchanged. STYLE's
``[1e5] * 25 + [0] * 25`` becomes ``[1e5] * 12 + [0] * 13`` at N = 25 and
``[1e5] * 50 + [0] * 50`` at N = 100; NONSTYLE's ``total_first_steps = 30``
becomes 15 at N = 25. ``resample(schedule, N)`` applies the same rule to any
list. A per-step list given by hand must still have exactly ``num_steps``
entries (``normalize`` raises otherwise).

``normalize(config)`` checks a user config and returns the engine's
normalised form. Wrong types raise TypeError, wrong values ValueError; the
message names the key and says what is allowed. The normalised form, with
N = num_steps and k = 0..N-1 the editing step:

    {
      "num_steps": N,                       # int >= 1, 1000 // N >= 1
      "seed": int,                          # 0 <= seed < 2**64
      "inversion_type": "dummy" | "npinv" | "ntinv",
      "start_latent": "inversion" | "random",
      "gradient_checkpointing": bool,
      "layers": [[a, b], [c, d], [e, f]],   # half-open block ranges: down, mid, up
      "guiders": [                          # in config order
        {"name": "cfg",  "scale": [N floats], "source": bool},
        {"name": "latents_diff", "scale": [N floats]},
        {"name": "features_map_l2", "scale": [N floats], "block": "up" | "down" | "mid"},
        {"name": "self_attn_map_l2", "scale": [N floats]},
        {"name": "self_attn_map_l2_appearance", "scale": [N floats],
         "self_attn": [N floats], "app": [N floats], "new_features": bool},
      ],
      "rescaler": {"type": "identity_rescaler"}
                | {"type": "range_other_on_cfg_norm", "lo": float, "hi": float},
      "ntinv_guidance": float | None,       # g_scale of the first guider when ntinv
    }

- ``scale[k]`` is the guider's ``g_scale`` at step k (a scalar repeated, or the
  given per-step list). The term of a gradient-free guider is
  ``scale[k] * term``; an energy guider contributes ``scale[k] * E``.
- For ``self_attn_map_l2_appearance``,
  ``E(k) = self_attn[k] * sum_layers mean((A_cur_inv - A_inv_inv)^2)
           + app[k] * mean(|F_cur_inv - F_inv_inv|)``,
  so its weighted energy is ``scale[k] * E(k)``. ``self_attn[k]`` and ``app[k]``
  are ``self_attn_gs`` and ``app_gs`` with the step schedule already applied:
  ``total_first_steps = n`` keeps k < n; ``total_last_steps = n`` keeps
  k >= N - n (it wins when both are given); neither keeps every step. Defined
  for any N, equal to the reference's 50-entry lists at N = 50.
- ``source`` is the cfg guider's ``is_source_guidance``.
- Every float is a Python float (double). Integers are accepted wherever the
  reference wants a float; bools never count as numbers.

Keys accepted and ignored (bookkeeping of the reference): scheduler_type,
model_name, pipeline_type, verbose, edit_types.
"""
from __future__ import annotations

import copy
import math
import numbers
from typing import Any, Mapping

from .captures import DEFAULT_LAYERS, normalize_layer_ranges

__all__ = ["get", "names", "normalize", "resample", "NONSTYLE", "NONSTYLE_LOWMEM", "STYLE", "STYLE_LOWMEM",
           "GUIDERS", "ENERGY_GUIDERS", "RESCALERS", "INVERSION_TYPES", "START_LATENTS"]

# ------------------------------------------------------------------ published --

_LOWMEM_LAYERS = [[2, 6], [0, 1], [0, 4]]

_NONSTYLE = {
    "scheduler_type": "ddim_50_eps",
    "inversion_type": "dummy",
    "model_name": "stable-diffusion-v1-4",
    "pipeline_type": "ours",
    "start_latent": "inversion",
    "verbose": False,
    "guiders": [
        {"name": "cfg", "g_scale": 7.5, "kwargs": {"is_source_guidance": False}},
        {"name": "self_attn_map_l2_appearance", "g_scale": 1.0,
         "kwargs": {"self_attn_gs": 300000.0, "app_gs": 500.0, "new_features": True, "total_first_steps": 30}},
    ],
    "noise_rescaling_setup": {"type": "range_other_on_cfg_norm", "init_setup": [0.33, 3.0]},
    "edit_types": ["animal-2-animal", "face-in-the-wild", "person-in-the-wild"],
    "num_steps": 50,
    "seed": 0,
}

_NONSTYLE_LOWMEM = dict(copy.deepcopy(_NONSTYLE), gradient_checkpointing=True,
                        self_attn_layers_num=copy.deepcopy(_LOWMEM_LAYERS))

_STYLE = {
    "scheduler_type": "ddim_50_eps",
    "inversion_type": "dummy",
    "model_name": "stable-diffusion-v1-4",
    "pipeline_type": "ours",
    "start_latent": "inversion",
    "verbose": False,
    "edit_types": "stylisation",
    "guiders": [
        {"name": "cfg", "g_scale": 7.5, "kwargs": {"is_source_guidance": False}},
        {"name": "self_attn_map_l2", "g_scale": [100000.0] * 25 + [0.0] * 25, "kwargs": {}},
        {"name": "features_map_l2", "g_scale": [2.5] * 25 + [0.0] * 25, "kwargs": {}},
    ],
    "noise_rescaling_setup": {"type": "range_other_on_cfg_norm", "init_setup": [1.5, 1.5]},
    "num_steps": 50,
    "seed": 0,
}

_STYLE_LOWMEM = dict(copy.deepcopy(_STYLE), gradient_checkpointing=True,
                     self_attn_layers_num=copy.deepcopy(_LOWMEM_LAYERS))

_PUBLISHED = {
    "nonstyle": _NONSTYLE,
    "nonstyle_lowmem": _NONSTYLE_LOWMEM,
    "style": _STYLE,
    "style_lowmem": _STYLE_LOWMEM,
}
_STEMS = {
    "ours_nonstyle_best": "nonstyle",
    "ours_nonstyle_best_colab": "nonstyle_lowmem",
    "ours_style_best": "style",
    "ours_style_best_colab": "style_lowmem",
}
_ATTRS = {name.upper(): name for name in _PUBLISHED}


def names() -> list[str]:
    """Short names of the published configs."""
    return list(_PUBLISHED)


def get(name: str, num_steps: int | None = None) -> dict:
    """A fresh copy of a published config, by short name ("nonstyle", ...) or
    reference file stem ("ours_nonstyle_best", ...), case-insensitive.

    num_steps: None keeps the preset's 50 steps; an integer N in [1, 1000]
    resamples every per-step schedule of the preset to N steps by relative
    position (step k takes the preset's step floor((k + 1/2) * 50 / N); see
    the module docstring) and sets ``num_steps`` to N."""
    if not isinstance(name, str):
        raise TypeError(f"config name must be a string, got {type(name).__name__}")
    key = name.strip().lower()
    if key.endswith(".yaml"):
        key = key[:-5]
    key = _STEMS.get(key, key)
    if key not in _PUBLISHED:
        raise ValueError(f"unknown config {name!r}; known: {', '.join(list(_PUBLISHED) + list(_STEMS))}")
    cfg = copy.deepcopy(_PUBLISHED[key])
    return cfg if num_steps is None else _at_steps(cfg, _num_steps(num_steps))


def _resample_index(k: int, n: int, n0: int) -> int:
    """i(k) = floor((k + 1/2) * n0 / n), in integers."""
    return (2 * k + 1) * n0 // (2 * n)


def resample(schedule, num_steps: int) -> list:
    """A per-step list of any length resampled to `num_steps` entries by
    relative position: entry k is schedule[floor((k + 1/2) * len / num_steps)]."""
    if not _is_sequence(schedule) or len(schedule) == 0:
        raise TypeError(f"schedule must be a non-empty list of per-step values, got {schedule!r}")
    items = schedule.tolist() if hasattr(schedule, "tolist") else list(schedule)
    n = _num_steps(num_steps)
    return [items[_resample_index(k, n, len(items))] for k in range(n)]


def _at_steps(cfg: dict, n: int) -> dict:
    """A published config (its lists have cfg["num_steps"] entries) at n steps."""
    n0 = cfg["num_steps"]
    for g in cfg["guiders"]:
        if _is_sequence(g["g_scale"]):
            g["g_scale"] = resample(g["g_scale"], n)
        kw = g.get("kwargs") or {}
        for key in ("self_attn_gs", "app_gs"):
            if _is_sequence(kw.get(key)):
                kw[key] = resample(kw[key], n)
        first, last = kw.get("total_first_steps"), kw.get("total_last_steps")
        if first is not None:
            kw["total_first_steps"] = sum(_resample_index(k, n, n0) < first for k in range(n))
        if last is not None:
            kw["total_last_steps"] = sum(_resample_index(k, n, n0) >= n0 - last for k in range(n))
    cfg["num_steps"] = n
    if cfg.get("scheduler_type") == f"ddim_{n0}_eps":
        cfg["scheduler_type"] = f"ddim_{n}_eps"
    return cfg


def __getattr__(attr: str) -> Any:
    if attr in _ATTRS:
        return copy.deepcopy(_PUBLISHED[_ATTRS[attr]])
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_ATTRS))


# ----------------------------------------------------------------- validation --

# Guider name -> {kwarg: default}; a default of _REQUIRED must be given.
_REQUIRED = object()
GUIDERS = {
    "cfg": {"is_source_guidance": False},
    "latents_diff": {},
    "features_map_l2": {"block": "up"},
    "self_attn_map_l2": {},
    "self_attn_map_l2_appearance": {"self_attn_gs": _REQUIRED, "app_gs": _REQUIRED, "new_features": False,
                                    "total_first_steps": None, "total_last_steps": None},
}
ENERGY_GUIDERS = ("features_map_l2", "self_attn_map_l2", "self_attn_map_l2_appearance")
RESCALERS = ("identity_rescaler", "range_other_on_cfg_norm")
INVERSION_TYPES = ("dummy", "npinv", "ntinv")
START_LATENTS = ("inversion", "random")
FEATURE_BLOCKS = ("up", "down", "mid")

_USED_KEYS = ("guiders", "noise_rescaling_setup", "inversion_type", "start_latent", "self_attn_layers_num",
              "gradient_checkpointing", "num_steps", "seed")
_IGNORED_KEYS = ("scheduler_type", "model_name", "pipeline_type", "verbose", "edit_types")
_GUIDER_KEYS = ("name", "g_scale", "kwargs")
_RESCALER_KEYS = ("type", "init_setup", "kwargs")
TRAIN_STEPS = 1000


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool) and type(x).__name__ != "bool_"


def _is_real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and type(x).__name__ != "bool_"


def _real(x, key: str) -> float:
    """A finite real number as a Python float."""
    if not _is_real(x):
        raise TypeError(f"{key} must be a real number (int or float, not bool), got {x!r} "
                        f"of type {type(x).__name__}")
    v = float(x)
    if not math.isfinite(v):
        raise ValueError(f"{key} must be finite, got {x!r}")
    return v


def _is_sequence(x) -> bool:
    if isinstance(x, (str, bytes, Mapping)):
        return False
    if hasattr(x, "ndim") and hasattr(x, "tolist"):  # NumPy arrays
        return x.ndim == 1
    return isinstance(x, (list, tuple))


def _per_step(value, n: int, key: str) -> list[float]:
    """A scalar repeated n times, or a list of exactly n reals."""
    if _is_sequence(value):
        items = value.tolist() if hasattr(value, "tolist") else list(value)
        if len(items) != n:
            raise ValueError(f"{key} has {len(items)} entries; a per-step list needs one per step, "
                             f"num_steps = {n}")
        return [_real(v, f"{key}[{i}]") for i, v in enumerate(items)]
    if _is_real(value):
        return [_real(value, key)] * n
    raise TypeError(f"{key} must be a real number or a list of num_steps ({n}) real numbers, "
                    f"got {value!r} of type {type(value).__name__}")


def _num_steps(n) -> int:
    if not _is_int(n):
        raise TypeError(f"num_steps must be a positive integer, got {n!r}")
    if n < 1 or TRAIN_STEPS // n < 1:
        raise ValueError(f"num_steps must be between 1 and {TRAIN_STEPS}, got {n}")
    return int(n)


def _step_count(value, key: str):
    if value is None:
        return None
    if not _is_int(value):
        raise TypeError(f"{key} must be a non-negative integer or None, got {value!r}")
    if value < 0:
        raise ValueError(f"{key} must be a non-negative integer, got {value}")
    return int(value)


def _bool(value, key: str) -> bool:
    if not isinstance(value, bool) and type(value).__name__ != "bool_":
        raise TypeError(f"{key} must be true or false, got {value!r}")
    return bool(value)


def _choice(value, allowed, key: str) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{key} must be one of {', '.join(allowed)}; got {value!r}")
    return value


def _mapping(value, key: str) -> Mapping:
    if not isinstance(value, Mapping):
        raise TypeError(f"{key} must be a dict, got {type(value).__name__}")
    return value


def _unknown(keys, allowed, where: str) -> None:
    extra = [k for k in keys if k not in allowed]
    if extra:
        raise ValueError(f"unknown key {extra[0]!r} in {where}; allowed: {', '.join(allowed)}")


def _schedule(gs, first, last, n: int, key: str) -> list[float]:
    """sa(k) / ap(k): GNR_SPEC.md section 6, DECISIONS.md section 3."""
    if last is not None:  # total_last_steps wins when both are given
        if last == 0:
            raise ValueError("total_last_steps = 0 is not allowed (the reference reads it as 'every step' by "
                             "accident); use a positive count, or leave both schedules out for every step")
        v = _real(gs, key)
        return [v if k >= n - last else 0.0 for k in range(n)]
    if first is not None:
        v = _real(gs, key)
        return [v if k < first else 0.0 for k in range(n)]
    return _per_step(gs, n, key)


def _guider(entry, i: int, n: int) -> dict:
    where = f"guiders[{i}]"
    entry = _mapping(entry, where)
    _unknown(entry, _GUIDER_KEYS, where)
    if "name" not in entry:
        raise ValueError(f"{where} has no 'name'; allowed names: {', '.join(GUIDERS)}")
    name = entry["name"]
    if not isinstance(name, str) or name not in GUIDERS:
        raise ValueError(f"{where}.name: unknown guider {name!r}; allowed: {', '.join(GUIDERS)}")
    if "g_scale" not in entry:
        raise ValueError(f"{where} ({name}) has no 'g_scale' (a real number or a list of num_steps of them)")
    out = {"name": name, "scale": _per_step(entry["g_scale"], n, f"{where}.g_scale")}
    kwargs = entry.get("kwargs")
    kwargs = {} if kwargs is None else _mapping(kwargs, f"{where}.kwargs")
    spec = GUIDERS[name]
    extra = [k for k in kwargs if k not in spec]
    if extra:
        allowed = ", ".join(spec) if spec else "none"
        raise ValueError(f"{where}.kwargs: unknown key {extra[0]!r} for guider {name}; allowed: {allowed}")
    for k, default in spec.items():
        if default is _REQUIRED and k not in kwargs:
            raise ValueError(f"{where}.kwargs.{k} is required for guider {name}")
    kw = {k: kwargs.get(k, default) for k, default in spec.items()}

    if name == "cfg":
        out["source"] = _bool(kw["is_source_guidance"], f"{where}.kwargs.is_source_guidance")
    elif name == "features_map_l2":
        block = kw["block"]
        if block == "whole":
            raise ValueError(f"{where}.kwargs.block = 'whole' is not supported (the reference records nothing "
                             f"for it); allowed: {', '.join(FEATURE_BLOCKS)}")
        out["block"] = _choice(block, FEATURE_BLOCKS, f"{where}.kwargs.block")
    elif name == "self_attn_map_l2_appearance":
        first = _step_count(kw["total_first_steps"], f"{where}.kwargs.total_first_steps")
        last = _step_count(kw["total_last_steps"], f"{where}.kwargs.total_last_steps")
        out["self_attn"] = _schedule(kw["self_attn_gs"], first, last, n, f"{where}.kwargs.self_attn_gs")
        out["app"] = _schedule(kw["app_gs"], first, last, n, f"{where}.kwargs.app_gs")
        out["new_features"] = _bool(kw["new_features"], f"{where}.kwargs.new_features")
    return out


def _rescaler(setup) -> dict:
    key = "noise_rescaling_setup"
    if setup is None:
        return {"type": "identity_rescaler"}
    setup = _mapping(setup, key)
    _unknown(setup, _RESCALER_KEYS, key)
    if "type" not in setup:
        raise ValueError(f"{key} has no 'type'; allowed: {', '.join(RESCALERS)}")
    kind = _choice(setup["type"], RESCALERS, f"{key}.type")
    if setup.get("kwargs"):
        raise ValueError(f"{key}.kwargs: the rescalers take no keyword arguments; got {setup['kwargs']!r}")
    if kind == "identity_rescaler":
        return {"type": kind}
    if "init_setup" not in setup:
        raise ValueError(f"{key}.init_setup is required for range_other_on_cfg_norm: [lo, hi]")
    rng = setup["init_setup"]
    if not _is_sequence(rng) or len(rng) != 2:
        raise ValueError(f"{key}.init_setup must be [lo, hi] (two real numbers, 0 < lo <= hi); got {rng!r}")
    lo = _real(rng[0], f"{key}.init_setup[0]")
    hi = _real(rng[1], f"{key}.init_setup[1]")
    if not 0 < lo <= hi:
        raise ValueError(f"{key}.init_setup must satisfy 0 < lo <= hi; got [{lo}, {hi}]")
    return {"type": kind, "lo": lo, "hi": hi}


def normalize(config) -> dict:
    """Validate a Guide-and-Rescale config and return the engine's normalised
    form (see the module docstring). Raises TypeError / ValueError naming the key.

    config: a dict with the reference's keys, or a preset's name (as `get`
    takes it: "nonstyle", "style", ...)."""
    if isinstance(config, str):
        config = get(config)
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a dict or a preset name ({', '.join(_PUBLISHED)}), "
                        f"got {type(config).__name__}")
    _unknown(config, _USED_KEYS + _IGNORED_KEYS, "config")

    n = _num_steps(config.get("num_steps", 50))

    seed = config.get("seed", 0)
    if not _is_int(seed):
        raise TypeError(f"seed must be an integer, got {seed!r}")
    if not 0 <= seed < 2 ** 64:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")

    inversion_type = _choice(config.get("inversion_type", "dummy"), INVERSION_TYPES, "inversion_type")
    start_latent = _choice(config.get("start_latent", "inversion"), START_LATENTS, "start_latent")
    checkpointing = _bool(config.get("gradient_checkpointing", False), "gradient_checkpointing")
    layers = normalize_layer_ranges(config.get("self_attn_layers_num", copy.deepcopy(DEFAULT_LAYERS)))

    if "guiders" not in config:
        raise ValueError(f"config has no 'guiders' (a list of {{name, g_scale, kwargs}}; names: "
                         f"{', '.join(GUIDERS)})")
    entries = config["guiders"]
    if not isinstance(entries, (list, tuple)):
        raise TypeError(f"guiders must be a list of {{name, g_scale, kwargs}} dicts, got {type(entries).__name__}")
    guiders = [_guider(e, i, n) for i, e in enumerate(entries)]
    seen = set()
    for i, g in enumerate(guiders):
        if g["name"] in seen:
            raise ValueError(f"guiders[{i}].name: guider {g['name']!r} is given twice; each guider may appear once")
        seen.add(g["name"])

    rescaler = _rescaler(config.get("noise_rescaling_setup"))
    if rescaler["type"] == "range_other_on_cfg_norm" and "cfg" not in seen \
            and any(g["name"] in ENERGY_GUIDERS for g in guiders):
        raise ValueError("noise_rescaling_setup: range_other_on_cfg_norm rescales the energy gradient against "
                         "the cfg term, but guiders has no 'cfg' guider; add one or use identity_rescaler")

    ntinv_guidance = None
    if inversion_type == "ntinv":
        if not guiders:
            raise ValueError("inversion_type ntinv takes its guidance scale from the first guider's g_scale, "
                             "but guiders is empty")
        first = config["guiders"][0]["g_scale"]
        if not _is_real(first):
            raise ValueError(f"inversion_type ntinv needs guiders[0].g_scale to be a single number (the "
                             f"null-text guidance scale), got {first!r}")
        ntinv_guidance = _real(first, "guiders[0].g_scale")

    return {
        "num_steps": n,
        "seed": int(seed),
        "inversion_type": inversion_type,
        "start_latent": start_latent,
        "gradient_checkpointing": checkpointing,
        "layers": layers,
        "guiders": guiders,
        "rescaler": rescaler,
        "ntinv_guidance": ntinv_guidance,
    }
