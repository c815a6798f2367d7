"""Guide-and-Rescale editing from Python: `Editor`, `Inversion`.

    editor = gnr.Editor("path/to/sd-1.4")          # or a single file: "path/to/model.safetensors"
    out = editor.edit(image, "a photo of a cat", "a photo of a tiger", config=gnr.configs.NONSTYLE)

    inv = editor.invert(image, "a photo of a cat")             # once
    for target in ("a tiger", "a dog"):                           # many edits
        outs.append(editor.edit(inv, target_prompt=target))

The whole loop runs in the C engine with the GIL released. Ctrl-C stops it
within one UNet pass (KeyboardInterrupt) and a `callback` returning False
stops it with `EditCancelled`; either way the Editor stays usable.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from . import _C, configs
from .captures import resolve_feature, select_attention_maps
from .images import load_image
from .model import Model, compute_dtype, load_model

__all__ = ["Editor", "Inversion", "EditCancelled"]

_GUIDER_KINDS = {"cfg": 0, "latents_diff": 1, "features_map_l2": 2, "self_attn_map_l2": 3,
                 "self_attn_map_l2_appearance": 4}
# GNR_SPEC.md section 6: features_map_l2's module indices are literal, not from the config.
_FEATURE_BLOCKS = {"up": "up_blocks.1.resnets.1", "down": "down_blocks.1.resnets.1", "mid": "mid_block"}
_PHASE_INVERSION, _PHASE_NULL_TEXT, _PHASE_EDIT = 0, 1, 2


class EditCancelled(RuntimeError):
    """An edit stopped because its callback returned False."""


@dataclass(frozen=True)
class Inversion:
    """A DDIM inversion of one image under one source prompt, reusable by any
    number of edits (GNR_SPEC.md section 4); made by `Editor.invert`.

    Fields: `model` (the gnr.Model it was made with), `image_size` (H, W),
    `source_prompt`, `num_steps`, `inversion_type`, `start_latent`, `seed`
    (start_latent "random" only, else None), `guidance` (the null-text
    guidance scale of ntinv, else None); an edit's config must agree with
    them. `latents` holds z*_0 .. z*_N, float32 (N + 1, 4, h, w);
    `uncond` the per-step unconditional contexts of null-text inversion,
    else None."""

    model: Model
    image_size: tuple
    source_prompt: str
    num_steps: int
    inversion_type: str
    start_latent: str
    seed: Optional[int]
    guidance: Optional[float]
    latents: np.ndarray = field(repr=False)
    uncond: Optional[np.ndarray] = field(repr=False, default=None)


class _Progress:
    """tqdm bars per phase (when enabled), the user's callback, and step
    timings split into guided and unguided steps."""

    def __init__(self, progress, callback: Optional[Callable]):
        self.callback = callback
        self.bar = None
        self.tqdm = None
        if progress is None:
            progress = True
        if progress:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                tqdm = None
            self.tqdm = tqdm
        self.times = {"guided": 0.0, "unguided": 0.0, "inversion": 0.0}
        self.counts = {"guided": 0, "unguided": 0, "inversion": 0}
        self._last = None

    def start(self, desc: str, total: int):
        self.close()
        if self.tqdm is not None:
            self.bar = self.tqdm(total=total, desc=desc, leave=False)
        self._last = time.perf_counter()

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __call__(self, phase: int, done: int, total: int, guided: int, latent) -> bool:
        now = time.perf_counter()
        key = "inversion" if phase != _PHASE_EDIT else ("guided" if guided else "unguided")
        self.times[key] += now - self._last
        self.counts[key] += 1
        self._last = now
        if self.bar is not None:
            self.bar.update(1)
        if phase == _PHASE_EDIT and self.callback is not None:
            if self.callback(done - 1, total, latent) is False:
                raise EditCancelled(f"the callback returned False after step {done - 1} of {total}")
        return False


class Editor:
    """Guide-and-Rescale editor on one Stable Diffusion 1.x or 2.x model.

    Arguments:
      model: a model folder in diffusers layout (safetensors weights), a
        single-file `.safetensors` checkpoint (original key names), a
        `gnr.Model` from `gnr.load_model`, or None / "default" for the
        bundled default model.
      device: "cpu", or "cuda" where the CUDA backend is built and a GPU is
        usable (`gnr.cuda_available()`).
      dtype: None or "float32" (parity mode, every device); on "cuda" also
        "float16" / "bfloat16" (speed mode; see `gnr.load_model`).
      threads: CPU threads for this editor's passes; None or 0 takes the
        process default (every core unless `gnr.set_num_threads` changed
        it). The count belongs to the model: other models keep theirs.
      max_memory: cap on the activation arena in bytes; 0 (the default) sets
        no cap. A pass that would need more raises `gnr.OutOfMemoryError`
        (with the bytes asked and available) before it allocates.
      single_file_options: a single file's vae, text_encoder, tokenizer,
        image_size, prediction_type and ema, as `gnr.load_model` takes them.
    `device`, `threads`, `max_memory` and the single-file options apply
    when the Editor loads the model; a given `gnr.Model` keeps its own.

    Attributes:
      model: the `gnr.Model` the editor runs.
      last_timings: what the last call to `edit` or `invert` spent, in
        seconds, and nothing from earlier calls. After `invert`:
        {"encode", "inversion"}. After `edit`: {"encode", "inversion",
        "guided_steps", "unguided_steps", "guided_count",
        "unguided_count", "decode"}: encode covers the image and the
        prompts; inversion is 0.0 when editing an `Inversion`; the counts
        are the number of editing steps with and without energy guidance.
        A call that stops early (error, Ctrl-C, callback) leaves the phases
        it finished; one refused before any work leaves {}.
    """

    def __init__(self, model=None, device: str = "cpu", dtype: Optional[str] = None, threads: Optional[int] = None,
                 max_memory: int = 0, **single_file_options):
        if model is None:
            model = "default"
        if isinstance(model, Model):
            if dtype is not None and compute_dtype(dtype, model.device) != model.dtype:
                raise ValueError(f"dtype {dtype!r} differs from the given model's dtype {model.dtype!r}; "
                                 f"pass dtype to load_model instead")
            if single_file_options:
                raise ValueError(f"{', '.join(sorted(single_file_options))} apply when the Editor loads a single "
                                 f"file; a given gnr.Model is already loaded (pass them to load_model instead)")
            self.model = model
        elif isinstance(model, (str, os.PathLike)):
            self.model = load_model(model, device=device, threads=threads, max_memory=max_memory, dtype=dtype,
                                    **single_file_options)
        else:
            raise TypeError(f"model must be a model folder or single-file path, a gnr.Model or None (the bundled "
                            f"default model), "
                            f"got {type(model).__name__}")
        self.last_timings: dict = {}
        self._null = None

    def load_image(self, path_or_array, size: Optional[int] = None) -> np.ndarray:
        """An image file or array prepared for this editor's model: uint8
        (size, size, 3), centre square crop and bicubic resize.

        path_or_array: a file path or a uint8 array (H, W), (H, W, 3), (H, W, 4).
        size: None (the default) is the model's native size
        (`self.model.native_size`); another size must be a multiple of
        `self.model.size_multiple` (else a ValueError naming the nearest
        valid sizes). See `gnr.load_image`."""
        return load_image(path_or_array, size=size, model=self.model)

    # ----------------------------------------------------------- contexts --

    def _null_context(self) -> np.ndarray:
        if self._null is None:
            self._null = self.model.encode_prompt("")
        return self._null

    # ---------------------------------------------------------- inversion --

    def invert(self, image, source_prompt: str, config=None, progress=None) -> Inversion:
        """Inverts `image` under `source_prompt` for later edits (`edit(inv, ...)`).

        image: uint8 (H, W, 3), H and W multiples of `model.size_multiple`
          (`load_image` prepares one).
        source_prompt: str describing the image.
        config: a config dict or a preset name (default: "nonstyle"); its
          num_steps, inversion_type, start_latent, seed and (ntinv) first
          g_scale are used, and the edits must agree with them.
        progress: None or True shows a tqdm bar (when tqdm is installed),
          False shows none.
        Every argument is checked before any work."""
        self.last_timings = timings = {}
        cfg = _config(config)
        self._check_image(image)
        _check_prompt(source_prompt, "source_prompt")
        _check_progress(progress)
        return self._invert(image, source_prompt, cfg, _Progress(progress, None), timings)

    def _invert(self, image, source_prompt: str, cfg: dict, prog: _Progress, timings: dict) -> Inversion:
        m = self.model
        t0 = time.perf_counter()
        z0 = m.encode_image(image)
        c_src = m.encode_prompt(source_prompt)
        timings["encode"] = time.perf_counter() - t0
        n = cfg["num_steps"]
        kind = cfg["inversion_type"]
        t0 = time.perf_counter()
        if cfg["start_latent"] == "random":
            chain = self._noise_chain(z0, n, cfg["seed"])
        else:
            prog.start("inverting", n)
            try:
                chain = m._c._invert(z0, c_src, n, prog, False)
            finally:
                prog.close()
        uncond = None
        if kind == "ntinv" and cfg["start_latent"] != "random":
            prog.start("null-text inversion", n)
            try:
                uncond = m._c._null_text(chain, c_src, self._null_context(), cfg["ntinv_guidance"], prog, False)
            finally:
                prog.close()
            uncond.setflags(write=False)
        timings["inversion"] = time.perf_counter() - t0
        chain.setflags(write=False)
        return Inversion(model=m, image_size=tuple(image.shape[:2]), source_prompt=source_prompt, num_steps=n,
                         inversion_type=kind, start_latent=cfg["start_latent"],
                         seed=cfg["seed"] if cfg["start_latent"] == "random" else None,
                         guidance=cfg["ntinv_guidance"] if kind == "ntinv" else None, latents=chain, uncond=uncond)

    @staticmethod
    def _noise_chain(z0: np.ndarray, n: int, seed: int) -> np.ndarray:
        """start_latent 'random' (GNR_SPEC.md section 4): the forward noising
        chain from the clean latent, with gnr's own seeded generator."""
        abar = _C.ddim_alphas_cumprod()
        rng = np.random.Generator(np.random.PCG64(seed))
        step = 1000 // n
        taus = [(n - 1 - k) * step for k in range(n)]
        chain = np.empty((n + 1,) + z0.shape[1:], np.float32)
        chain[0] = z0[0]
        for i in range(n):
            t = taus[n - 1 - i]
            nxt = taus[n - 2 - i] if i < n - 1 else 999
            r = np.float32(abar[nxt] / abar[t])
            noise = rng.standard_normal(z0.shape[1:], dtype=np.float32)
            chain[i + 1] = np.sqrt(r) * chain[i] + np.sqrt(np.float32(1) - r) * noise
        return chain

    # -------------------------------------------------------------- edits --

    def edit(self, image, source_prompt: Optional[str] = None, target_prompt: Optional[str] = None,
             config=None, progress=None, callback: Optional[Callable] = None, return_latent: bool = False):
        """Edits `image` from `source_prompt` toward `target_prompt`.

        image: uint8 (H, W, 3), H and W multiples of `model.size_multiple`
          (`load_image` prepares one), or an `Inversion` from `invert`
          (then source_prompt may be left out; if given it must match).
        source_prompt: str describing the image.
        target_prompt: str describing the wanted result (required).
        config: a dict with the reference's keys, or a preset name
          ("nonstyle", "style", ...; `gnr.configs.names()`); default
          "nonstyle". Checked by `gnr.configs.normalize`.
        progress: None or True shows a tqdm bar per phase (when tqdm is
          installed), False shows none.
        callback: None, or callable(step, total, latent) called after every
          editing step with the current latent (float32 (1, 4, h, w));
          returning False stops the edit with `EditCancelled`.
        return_latent: also return the final latent.

        Returns uint8 (H, W, 3), or (image, final latent float32
        (1, 4, h, w)) with return_latent. Every argument is checked before
        any work; `last_timings` then describes this call.
        """
        self.last_timings = timings = {}
        cfg = _config(config)
        plan = self._plan(cfg)  # every config and model check before any work
        if isinstance(image, Inversion):
            inv = image
            if source_prompt is not None:
                _check_prompt(source_prompt, "source_prompt")
                if source_prompt != inv.source_prompt:
                    raise ValueError(f"source_prompt {source_prompt!r} differs from the inversion's "
                                     f"{inv.source_prompt!r}; invert again for another source prompt")
            self._check_inversion(inv, cfg)
        else:
            self._check_image(image, inversion_allowed=True)
            if source_prompt is None:
                raise ValueError("source_prompt is required when editing an image (or pass an Inversion)")
            _check_prompt(source_prompt, "source_prompt")
            inv = None
        if target_prompt is None:
            raise ValueError("target_prompt is required")
        _check_prompt(target_prompt, "target_prompt")
        _check_progress(progress)
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be None or a callable(step, total, latent), got "
                            f"{type(callback).__name__}")
        if not isinstance(return_latent, bool):
            raise TypeError(f"return_latent must be True or False, got {return_latent!r}")

        prog = _Progress(progress, callback)
        if inv is None:
            inv = self._invert(image, source_prompt, cfg, prog, timings)
        else:
            timings.update(encode=0.0, inversion=0.0)
        m = self.model
        t0 = time.perf_counter()
        c_src = m.encode_prompt(inv.source_prompt)
        c_trg = m.encode_prompt(target_prompt)
        timings["encode"] += time.perf_counter() - t0
        if inv.uncond is not None:
            uncond = inv.uncond
        elif cfg["inversion_type"] == "npinv":
            uncond = c_src
        else:
            uncond = self._null_context()
        prog.times.update(guided=0.0, unguided=0.0)
        prog.start("editing", cfg["num_steps"])
        try:
            z, _ = m._c._edit(plan, inv.latents, uncond, c_src, c_trg, prog, callback is not None)
        finally:
            prog.close()
            timings.update(guided_steps=prog.times["guided"], unguided_steps=prog.times["unguided"],
                           guided_count=prog.counts["guided"], unguided_count=prog.counts["unguided"])
        t0 = time.perf_counter()
        out = m.decode_latent(z)
        timings["decode"] = time.perf_counter() - t0
        return (out, z) if return_latent else out

    def _check_image(self, image, inversion_allowed: bool = False) -> None:
        if not isinstance(image, np.ndarray):
            also = " or a gnr.Inversion" if inversion_allowed else ""
            raise TypeError(f"image must be a NumPy uint8 array of shape (H, W, 3){also}, got "
                            f"{type(image).__name__}")
        self.model._check_image(image)

    def _check_inversion(self, inv: Inversion, cfg: dict) -> None:
        if inv.model is not self.model:
            raise ValueError("this Inversion was made with another model")
        for key, have, want in (("num_steps", inv.num_steps, cfg["num_steps"]),
                                ("start_latent", inv.start_latent, cfg["start_latent"])):
            if have != want:
                raise ValueError(f"config {key} = {want!r} but the inversion was made with {have!r}")
        if inv.start_latent == "random":
            if inv.seed != cfg["seed"]:
                raise ValueError(f"config seed = {cfg['seed']!r} but the inversion was made with {inv.seed!r}")
            return
        if inv.inversion_type != cfg["inversion_type"]:
            raise ValueError(f"config inversion_type = {cfg['inversion_type']!r} but the inversion was made with "
                             f"{inv.inversion_type!r}")
        if inv.inversion_type == "ntinv" and inv.guidance != cfg["ntinv_guidance"]:
            raise ValueError(f"config guiders[0].g_scale = {cfg['ntinv_guidance']!r} but the null-text inversion "
                             f"was made with {inv.guidance!r}")

    def _plan(self, cfg: dict) -> dict:
        """The normalised config in the engine's terms: guider kinds, capture
        names resolved against this model."""
        m = self.model
        features = m.feature_captures
        guiders = []
        for i, g in enumerate(cfg["guiders"]):
            entry = {"kind": _GUIDER_KINDS[g["name"]], "scale": g["scale"], "source": g.get("source", False),
                     "feature": None}
            if g["name"] == "features_map_l2":
                name = _FEATURE_BLOCKS[g["block"]]
                if name not in features:
                    raise ValueError(f"guiders[{i}] features_map_l2 block {g['block']!r} reads {name}, which this "
                                     f"model does not have (its capture points: {', '.join(features)})")
                entry["feature"] = name
            elif g["name"] == "self_attn_map_l2_appearance":
                entry["feature"] = resolve_feature("up_blocks.-1", features) if g["new_features"] else "conv_norm_out"
                entry["self_attn"], entry["app"] = g["self_attn"], g["app"]
            guiders.append(entry)
        rescaler = cfg["rescaler"]
        rng = rescaler["type"] == "range_other_on_cfg_norm"
        return {"num_steps": cfg["num_steps"], "guiders": guiders,
                "maps": select_attention_maps(cfg["layers"], m.attention_maps),
                "range_rescale": rng, "lo": rescaler.get("lo", 1.0), "hi": rescaler.get("hi", 1.0),
                "checkpointing": cfg["gradient_checkpointing"], "begin": 0, "end": cfg["num_steps"]}

    def _steps(self, inv: "Inversion", target_prompt: str, config, begin: int, end: int, z_start=None,
               uncond=None):
        """Runs editing steps [begin, end) only, from z_start (default: the
        inversion latent of step `begin`): (latent after the last step, its
        eps_hat). For testing steps in isolation."""
        cfg = _config(config)
        plan = dict(self._plan(cfg), begin=begin, end=end)
        m = self.model
        c_src, c_trg = m.encode_prompt(inv.source_prompt), m.encode_prompt(target_prompt)
        if uncond is None:
            uncond = (inv.uncond if inv.uncond is not None
                      else c_src if cfg["inversion_type"] == "npinv" else self._null_context())
        return m._c._edit(plan, inv.latents, uncond, c_src, c_trg, None, False, z_start)


def _config(config) -> dict:
    """The normalised form of a config dict or preset name (None: nonstyle)."""
    return configs.normalize("nonstyle" if config is None else config)


def _check_prompt(prompt, name: str) -> None:
    if not isinstance(prompt, str):
        raise TypeError(f"{name} must be a str, got {type(prompt).__name__}")


def _check_progress(progress) -> None:
    if progress is not None and not isinstance(progress, bool):
        raise TypeError(f"progress must be None, True or False, got {progress!r}")
