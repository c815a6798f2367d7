"""Loading a Stable Diffusion 1.x or 2.x model folder or single-file
checkpoint (gnr.single_file) into the engine, and the low-level passes:
text encoder, UNet, VAE encoder and decoder.

The folder is in diffusers layout (model_index.json; unet/, vae/,
text_encoder/ with config.json and safetensors weights; tokenizer/ with
vocab.json and merges.txt; optionally scheduler/scheduler_config.json, whose
prediction_type says whether the UNet predicts the noise or, as SD 2.x 768-v
does, the velocity). Every size comes from the config files, so tiny random
models, SD 1.4/1.5 and SD 2.0/2.1 load through the same code.
"""
from __future__ import annotations

import math
import numbers
import os
from pathlib import Path

import numpy as np

from . import _C
from ._backends import check_device_name, require_device
from ._model_config import PREDICTION_TYPES, model_family, read_model_configs, resolve_configs
from .captures import DEFAULT_LAYERS, resolve_feature, select_attention_maps
from .files import COMPONENTS, component_dtypes, default_model_dir, iter_component
from .single_file import is_single_file, open_single_file
from .sizes import check_size, native_size
from .tokenizer import ClipTokenizer

__all__ = ["Model", "load_model", "read_model_configs"]

# Buffers some checkpoints carry that are not parameters.
_IGNORED_SUFFIXES = ("position_ids",)


class Model:
    """A Stable Diffusion 1.x or 2.x model loaded into the gnr engine.

    Use :func:`load_model`: its arguments (path, device, variant, threads,
    max_memory, dtype) are this constructor's, and a single file's options
    (vae, text_encoder, tokenizer, image_size, prediction_type, ema) are its
    `single_file_options`. Arrays in and out are NumPy;
    outputs are new C-contiguous arrays.

    Attributes:
      path: the model folder or single file (pathlib.Path).
      device: "cpu" or "cuda".
      dtype: the compute dtype, "float32", "float16" or "bfloat16".
      config: the parsed configs, {"text_encoder", "unet", "vae"} (each
        component's config.json) and "scheduler" (scheduler_config.json, {}
        when the folder has none); for a single file, the configs inferred
        from it in the same form.
      tokenizer: the `gnr.tokenizer.ClipTokenizer` of the folder (a single
        file: the bundled one of its family, or the `tokenizer` folder given).
      latent_channels, scaling_factor: the VAE's latent channels and
        latent scale (0.18215 for SD 1.x and 2.x).
      prediction_type: "epsilon" (the UNet predicts the noise) or
        "v_prediction" (the velocity; SD 2.x 768-v). `unet()` returns the raw
        prediction; inversion and editing turn v into noise after every pass.
      family: "SD 1.x" or "SD 2.x" (see gnr._model_config.model_family).
      file_dtypes: the stored dtypes of each component's weight files,
        {"text_encoder": ["float16"], ...}; the weights are held in float32
        whatever these are.
      source_format: where the weights came from: "diffusers" (a folder in
        diffusers layout) or "single_file" (a checkpoint with the original
        key names).
      native_size, size_multiple, vae_factor: image sizes (properties; see
        gnr.sizes).

    `info()` gathers the model's identity in one dict; `repr(model)` shows it.
    """

    def __init__(self, path: str | os.PathLike, device: str = "cpu", variant: str | None = None,
                 threads: int | None = None, max_memory: int = 0, dtype=None, **single_file_options):
        # Registers the CUDA backend when device="cuda": a Model made
        # directly must not depend on an earlier cuda_available() call.
        require_device(device)
        root = Path(path)
        if is_single_file(root):
            if variant is not None:
                raise ValueError(f"{root}: variant={variant!r} applies to model folders; a single file holds one "
                                 f"set of weights (allowed here: variant=None)")
            single = open_single_file(root, **single_file_options)
            configs = single.configs
            resolved = resolve_configs(configs, single.config_files)
            weights = single.weights()
            tokenizer_dir, pad_token = single.tokenizer_dir, single.pad_token
        else:
            configs, resolved = read_model_configs(root, **single_file_options)
            weights = _folder_weights(root, variant)
            tokenizer_dir, pad_token = root / "tokenizer", None
        self.path = root
        self.device = device
        self.dtype = compute_dtype(dtype, device)
        self.config = configs
        self._c = _C.Model(resolved, device, int(threads or 0), int(max_memory), self.dtype)
        expected = {name for name, _ in self._c.weight_specs()}
        # The identity's source fields (info()).
        if is_single_file(root):
            self.file_dtypes, self.source_format = single.stored_dtypes(), "single_file"
        else:
            self.file_dtypes = {comp: component_dtypes(root, comp, variant=variant) for comp in COMPONENTS}
            self.source_format = "diffusers"
        # Weights stream in one tensor at a time: host memory holds the
        # engine's weight block plus one tensor, never a second model copy.
        for comp, name, array, origin in weights:
            if comp == "text_encoder" and not name.startswith("text_model."):
                # transformers 5 saves the bare text transformer without
                # the "text_model." prefix that SD 1.x checkpoints carry.
                name = "text_model." + name
            full = f"{comp}.{name}"
            if full not in expected and name.endswith(_IGNORED_SUFFIXES):
                continue
            try:
                self._c.set_weight(full, array)
            except ValueError as e:
                raise ValueError(f"{origin}: {e}") from None
        try:
            self._c.finalize()
        except ValueError as e:
            raise ValueError(f"{root}: {e}") from None
        self.tokenizer = ClipTokenizer(tokenizer_dir, length=resolved["text"]["max_positions"], pad_token=pad_token)
        self.latent_channels = resolved["vae"]["latent_channels"]
        self.scaling_factor = resolved["vae"]["scaling_factor"]
        self.prediction_type = PREDICTION_TYPES[resolved["unet"]["prediction"]]
        self.family = model_family(configs)

    # ------------------------------------------------------------ passes --

    def encode_prompt(self, prompt: str) -> np.ndarray:
        """CLIP text embedding of `prompt` (a str): float32 (77, D), the last hidden state after the
        final LayerNorm. A prompt longer than 75 tokens is cut with a PromptTruncatedWarning
        (gnr.tokenizer) quoting the part dropped."""
        ids = self.tokenizer.encode(prompt)
        return self._c.encode_text(ids)

    def unet(self, latent, t: int, context) -> np.ndarray:
        """The UNet's raw prediction, as diffusers' UNet2DConditionModel returns it: latent (N, 4, h, w),
        integer timestep t in [0, 1000), context (77, D) or (1, 77, D) shared by the N latents, or (N, 77, D)
        one each -> float32 (N, 4, h, w). The N latents run as one batched pass (the weights are read once).
        It is the noise when :attr:`prediction_type` is "epsilon" and the velocity when it is "v_prediction"."""
        return self._c.unet(latent, t, context)

    def encode_image(self, image) -> np.ndarray:
        """`image` uint8 (H, W, 3) -> float32 (1, 4, H/f, W/f): the mean of the VAE posterior times
        the scaling factor. H and W must be multiples of :attr:`size_multiple`."""
        x = self._check_image(image)
        x = (x.astype(np.float32) / np.float32(127.5) - np.float32(1.0)).transpose(2, 0, 1)[None]
        return self._c.vae_encode(np.ascontiguousarray(x))

    def decode_latent(self, latent) -> np.ndarray:
        """float (1, 4, h, w) -> uint8 (h*f, w*f, 3): decode(latent / scaling_factor), then
        clamp(y / 2 + 0.5, 0, 1) * 255 truncated toward zero, as the reference."""
        y = self._c.vae_decode(latent)
        y = np.clip(y / np.float32(2) + np.float32(0.5), 0, 1)
        y = y[0].transpose(1, 2, 0) * np.float32(255)
        return np.ascontiguousarray(y.astype(np.uint8))

    def _check_image(self, image) -> np.ndarray:
        if not isinstance(image, np.ndarray):
            raise TypeError(f"image must be a NumPy uint8 array of shape (H, W, 3), got {type(image).__name__}")
        if image.dtype != np.uint8:
            raise TypeError(f"image must be uint8 of shape (H, W, 3), got dtype {image.dtype}")
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image must have shape (H, W, 3) (RGB), got {image.shape}")
        h, w = image.shape[:2]
        try:
            check_size(h, self.size_multiple, "image height")
            check_size(w, self.size_multiple, "image width")
        except ValueError as e:
            raise ValueError(f"{e} (the image is {h} x {w}; this model's native size is {self.native_size}: "
                             f"Editor.load_image or gnr.load_image(..., model=...) crops and resizes to it)") from None
        return image

    # ------------------------------------------------------ reverse mode --

    def energy_grad(self, latent, t: int, context, ref_latent, ref_context, terms, wrt=("latent",),
                    checkpointing: bool = False):
        """Energy E of captured UNet internals and its gradient.

        A pass on (latent, context) at integer timestep t in [0, 1000) is recorded; a gradient-free pass on
        (ref_latent, ref_context) gives the reference captures. `terms` is a list of
        {"kind": "attn_map_l2", "scale": s, "layers": [[a,b],[c,d],[e,f]]} (sum over the
        selected self-attention layers of mean((A - A_ref)^2), all heads) or
        {"kind": "feature_l2" | "feature_l1", "scale": s, "at": "up_blocks.-1"}.
        Returns (E: float, grads: dict) with grads["latent"] (1, 4, h, w) and/or
        grads["context"] shaped like `context`, as asked by `wrt`. checkpointing
        re-runs each block in the backward instead of keeping its internals.
        """
        if isinstance(wrt, str):
            wrt = (wrt,)
        if not wrt or set(wrt) - {"latent", "context"}:
            raise ValueError(f"wrt must name 'latent' and/or 'context', got {tuple(wrt)!r}")
        resolved = _resolve_terms(terms, self._c.attention_names(), self._c.feature_names())
        e, dz, dc = self._c.energy_grad(latent, t, context, ref_latent, ref_context, resolved,
                                        "latent" in wrt, "context" in wrt, bool(checkpointing))
        grads = {}
        if dz is not None:
            grads["latent"] = dz
        if dc is not None:
            grads["context"] = dc if np.ndim(context) == 2 else dc[None]
        return e, grads

    @property
    def attention_maps(self) -> tuple[list[str], list[str], list[str]]:
        """Capture names of the self-attention maps: (down, mid, up), forward order."""
        return tuple(self._c.attention_names())

    @property
    def feature_captures(self) -> list[str]:
        """Feature capture points (block and resnet outputs, mid_block, conv_norm_out)."""
        return list(self._c.feature_names())

    # ------------------------------------------------------------ memory --

    @property
    def size_multiple(self) -> int:
        """Image sizes must be multiples of this (VAE factor x 2^(UNet downsamplings); 64 for SD 1.x and 2.x)."""
        return self._c.size_multiple

    @property
    def vae_factor(self) -> int:
        """Image size / latent size (8 for SD 1.x and 2.x, 4 for the bundled default model)."""
        return self._c.vae_factor

    @property
    def native_size(self) -> int:
        """The image size (square, pixels) the model was made for: the UNet's sample_size times
        :attr:`vae_factor` (64 for the bundled default model, 512 for SD 1.x, 768 for SD 2.1-v).
        Every default image size in gnr is this; see gnr.sizes."""
        return native_size(self.config["unet"], self.config["vae"])

    @property
    def peak_bytes(self) -> int:
        """Peak activation bytes of the passes since the last :meth:`reset_peak`."""
        return self._c.peak_bytes

    @property
    def weight_cache_bytes(self) -> int:
        """Host memory of weights kept in a kernel-ready form beside the weights themselves: on
        the CPU, the UNet's 3 x 3 convolution weights in Winograd's domain (16 floats for 9),
        derived on a weight's first use and kept while the model lives. The environment variable
        ``GNR_WEIGHT_CACHE_MIB`` (read once per process; default 1024, 0 turns it off) bounds
        it; a form not kept is derived again per call, with the same results."""
        return self._c.weight_cache_bytes

    def reset_peak(self) -> None:
        """Starts a new count for :attr:`peak_bytes`."""
        self._c.reset_peak()

    # ---------------------------------------------------------- identity --

    def info(self) -> dict:
        """The model's identity (`repr(model)` shows the main fields), from its attributes only, so
        every way of loading a model fills it the same way:
        {"family": "SD 1.x" | "SD 2.x", "prediction_type": "epsilon" | "v_prediction",
        "native_size": int (pixels), "size_multiple": int, "vae_factor": int,
        "latent_channels": int, "context_length": int (tokens), "context_dim": int,
        "device": str, "dtype": the compute dtype, "file_dtypes": {component: [stored dtypes]},
        "source": str (where it was loaded from), "format": :attr:`source_format`}."""
        text = self.config["text_encoder"]
        return {
            "family": self.family,
            "prediction_type": self.prediction_type,
            "native_size": self.native_size,
            "size_multiple": self.size_multiple,
            "vae_factor": self.vae_factor,
            "latent_channels": self.latent_channels,
            "context_length": self.tokenizer.length,
            "context_dim": int(text.get("hidden_size", 512)),
            "device": self.device,
            "dtype": self.dtype,
            "file_dtypes": {comp: list(d) for comp, d in self.file_dtypes.items()},
            "source": str(self.path),
            "format": self.source_format,
        }

    def __repr__(self) -> str:
        stored = sorted({d for ds in self.file_dtypes.values() for d in ds})
        return (f"gnr.Model({str(self.path)!r}, {self.family}, {self.prediction_type}, "
                f"native_size={self.native_size}, device={self.device!r}, dtype={self.dtype!r}, "
                f"files={'+'.join(stored)})")


_DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16", "half": "float16",
           "bfloat16": "bfloat16", "bf16": "bfloat16"}


def _folder_weights(root: Path, variant):
    """(component, name, array, origin) for every weight of a model folder, one tensor at a time."""
    for comp in COMPONENTS:
        for name, array in iter_component(root, comp, variant=variant):
            yield comp, name, array, str(root / comp)


def compute_dtype(dtype, device: str) -> str:
    """The engine's compute dtype from a user's `dtype` (None, a name, or a
    NumPy float32/float16 dtype): "float32" (parity mode, every device) or,
    on cuda only, "float16" / "bfloat16" (speed mode: the inputs of every
    matrix product rounded to 16 bits on tensor cores with fp32
    accumulation; softmax statistics, norms, activations and energies stay
    float32)."""
    if dtype is None:
        name = "float32"
    else:
        try:
            key = np.dtype(dtype).name if not isinstance(dtype, str) else dtype.lower()
        except TypeError:
            key = repr(dtype)
        name = _DTYPES.get(key)
        if name is None:
            raise ValueError(f"dtype must be None, 'float32', 'float16' or 'bfloat16', got {dtype!r}")
    if name != "float32" and device != "cuda":
        raise ValueError(f"dtype {name!r} needs device='cuda'; on {device!r} gnr computes in 'float32' "
                         f"(allowed there: None, 'float32')")
    return name


def _count(value, name: str, allowed: str, none_ok: bool = False) -> None:
    if value is None and none_ok:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be {allowed}, got {value!r} of type {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be {allowed}, got {value}")


def load_model(path: str | os.PathLike, device: str = "cpu", variant: str | None = None,
               threads: int | None = None, max_memory: int = 0, dtype=None, *, vae=None, text_encoder=None,
               tokenizer=None, image_size: int | None = None, prediction_type: str | None = None,
               ema: bool | None = None) -> Model:
    """Load a Stable Diffusion 1.x or 2.x model: a folder in diffusers layout
    (safetensors weights), a single-file `.safetensors` checkpoint with the
    original key names (model.diffusion_model.*, first_stage_model.*,
    cond_stage_model.*), or "default", the bundled default model.

    path: the folder, the .safetensors file, or "default". Pickle checkpoints
    (.ckpt, .pt, .bin) are refused with how to convert them.
    device: "cpu", or "cuda" where the CUDA backend is built and a GPU is
    usable (`gnr.cuda_available()`; otherwise a RuntimeError saying why).
    variant: None, or "fp16" to prefer the `*.fp16.safetensors` files;
    without it the plain files are used when present. Weights are held in
    float32 whatever the files hold.
    threads: CPU threads for this model's passes; None or 0 takes the
    process default (every core unless gnr.set_num_threads changed it).
    The count belongs to the model: other models keep theirs.
    max_memory: cap on the activation arena in bytes (0: no cap); a pass
    that needs more raises gnr.OutOfMemoryError before it allocates.
    dtype: None / "float32" computes in float32 (parity with the
    reference); on device="cuda", "float16" or "bfloat16" is the speed mode
    (matrix products on tensor cores with 16-bit inputs and fp32
    accumulation; everything else float32).

    For a single file only (gnr.single_file says what is inferred from it):
    vae, text_encoder: a diffusers component folder (config.json +
    safetensors) for a file without that component (or to replace it);
    vae also takes a VAE .safetensors file with the original key names.
    tokenizer: a tokenizer folder; None takes the CLIP vocabulary bundled
    with gnr (SD 2.x: padded with "!").
    image_size: the native image size in pixels (None: 512; 768 for SD 2.x
    768-v models).
    prediction_type: None / "epsilon" (the default), or "v_prediction"
    (SD 2.x 768-v models).
    ema: None / False takes the UNet's non-EMA weights of a file that has
    both (as diffusers), True the EMA ones.
    The file is read one tensor at a time: host memory holds the engine's
    weights plus the largest tensor of the file, never a second copy.
    """
    check_device_name(device)
    _count(threads, "threads", "None or an integer >= 0 (None or 0: every core)", none_ok=True)
    _count(max_memory, "max_memory", "an integer number of bytes >= 0 (0: no cap)")
    compute_dtype(dtype, device)
    if isinstance(path, str) and path == "default":
        path = default_model_dir()
    options = {k: v for k, v in dict(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, image_size=image_size,
                                     prediction_type=prediction_type, ema=ema).items() if v is not None}
    return Model(path, device=device, variant=variant, threads=threads, max_memory=max_memory, dtype=dtype,
                 **options)


_ENERGY_KINDS = {"attn_map_l2": 0, "feature_l2": 1, "feature_l1": 2}
_TERM_KEYS = {"attn_map_l2": {"kind", "scale", "layers"}, "feature_l2": {"kind", "scale", "at"},
              "feature_l1": {"kind", "scale", "at"}}


def _resolve_terms(terms, parts, features) -> list[tuple[int, float, list[str]]]:
    """The user's energy terms as (kind, scale, capture names) for the engine."""
    if not isinstance(terms, (list, tuple)) or not terms:
        raise ValueError("terms must be a non-empty list of dicts")
    resolved = []
    for i, term in enumerate(terms):
        if not isinstance(term, dict):
            raise TypeError(f"terms[{i}] must be a dict, got {type(term).__name__}")
        kind = term.get("kind")
        if kind not in _ENERGY_KINDS:
            raise ValueError(f"terms[{i}]: unknown kind {kind!r}; allowed: {sorted(_ENERGY_KINDS)}")
        extra = set(term) - _TERM_KEYS[kind]
        if extra:
            raise ValueError(f"terms[{i}]: unknown keys {sorted(extra)} for {kind}; allowed: {sorted(_TERM_KEYS[kind])}")
        scale = term.get("scale", 1.0)
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
            raise ValueError(f"terms[{i}]: scale must be a finite real number, got {scale!r}")
        if kind == "attn_map_l2":
            names = select_attention_maps(term.get("layers", DEFAULT_LAYERS), parts)
        else:
            if "at" not in term:
                raise ValueError(f"terms[{i}]: {kind} needs 'at' (one of: {', '.join(features)})")
            names = [resolve_feature(term["at"], features)]
        resolved.append((_ENERGY_KINDS[kind], float(scale), names))
    return resolved
