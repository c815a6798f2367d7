"""Image sizes a model accepts, read from its config files.

- VAE factor f = 2 ** (number of VAE blocks - 1): image size / latent size
  (8 for Stable Diffusion, 4 for the bundled default model).
- Size multiple m = f * 2 ** (number of UNet blocks - 1): every image height
  and width must be a positive multiple of m (64 for SD 1.x, 16 for the
  bundled model), so that each UNet downsampling halves an even size.
- Native resolution = the UNet's `sample_size` (its training latent size)
  times f: 64 for the bundled default model, 512 for SD 1.x, 768 for
  SD 2.1-v. Every default image size in gnr is this number. A UNet config
  without `sample_size` is taken to have SD's 64; a native size that is not a
  multiple of m is rounded up to one.

These are plain functions of the config dicts, so a size can be checked
before any weights are read (the CLI does).
"""
from __future__ import annotations

import numbers
import os
from pathlib import Path

from ._model_config import read_model_configs
from .files import default_model_dir

__all__ = ["vae_factor", "size_multiple", "native_size", "model_sizes", "check_size", "nearest_sizes"]

_DEFAULT_SAMPLE_SIZE = 64  # SD 1.x's latent size, for a UNet config that does not say


def _blocks(cfg: dict, default: int, where: str) -> int:
    boc = cfg.get("block_out_channels")
    n = default if boc is None else len(boc) if isinstance(boc, (list, tuple)) else 0
    if n < 1:
        raise ValueError(f"{where}: block_out_channels must be a non-empty list, got {boc!r}")
    return n


def vae_factor(vae_config: dict) -> int:
    """Image size / latent size of `vae_config` (the parsed vae/config.json)."""
    return 2 ** (_blocks(vae_config, 1, "vae/config.json") - 1)


def size_multiple(unet_config: dict, vae_config: dict) -> int:
    """Image heights and widths must be multiples of this, for the parsed
    `unet_config` and `vae_config` (unet/ and vae/config.json)."""
    return vae_factor(vae_config) * 2 ** (_blocks(unet_config, 4, "unet/config.json") - 1)


def native_size(unet_config: dict, vae_config: dict) -> int:
    """The model's native image size in pixels (square): the sample_size of
    `unet_config` times the VAE factor of `vae_config`."""
    s = unet_config.get("sample_size", _DEFAULT_SAMPLE_SIZE)
    if isinstance(s, (list, tuple)) and len(s) == 2 and s[0] == s[1]:
        s = s[0]
    if s is None:
        s = _DEFAULT_SAMPLE_SIZE
    if isinstance(s, bool) or not isinstance(s, int) or s < 1:
        raise ValueError(f"unet/config.json: sample_size = {s!r} must be a positive integer")
    m = size_multiple(unet_config, vae_config)
    return -(-s * vae_factor(vae_config) // m) * m


def model_sizes(model=None) -> tuple[int, int]:
    """(native size, size multiple) of a model: a `gnr.Model`, a `gnr.Editor`,
    a model folder or single-file checkpoint, or None / "default" for the
    bundled default model. A folder is read for its config files only (no
    weights), a single file for its header (at the default image size, 512),
    and both are checked as loading checks them."""
    # A loaded model knows its sizes; an Editor holds one as `.model`. Asked
    # by attribute, so that this module stays below model.py and editor.py.
    inner = getattr(model, "model", model)
    if hasattr(inner, "native_size") and hasattr(inner, "size_multiple"):
        return inner.native_size, inner.size_multiple
    if model is None or (isinstance(model, str) and model == "default"):
        model = default_model_dir()
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"model must be a gnr.Model, a gnr.Editor, a model folder or None (the bundled default "
                        f"model), got {type(model).__name__}")
    configs, _ = read_model_configs(Path(model))  # also every check loading makes before the weights
    return native_size(configs["unet"], configs["vae"]), size_multiple(configs["unet"], configs["vae"])


def nearest_sizes(size: int, multiple: int) -> list[int]:
    """The valid sizes nearest to `size`: the multiples of `multiple` just
    below (when positive) and just above it."""
    below = size // multiple * multiple
    return [s for s in (below, below + multiple) if s > 0]


def check_size(size, multiple: int, what: str = "size") -> int:
    """`size` as an int when it is a positive multiple of `multiple`; else a
    TypeError / ValueError that names the nearest valid sizes. `what` names
    the size in the message ("size", "image height", ...)."""
    if isinstance(size, bool) or not isinstance(size, numbers.Integral):
        raise TypeError(f"{what} must be an integer number of pixels, got {size!r} of type {type(size).__name__}")
    size = int(size)
    if size < 1 or size % multiple:
        near = " or ".join(str(s) for s in nearest_sizes(max(size, 0), multiple))
        raise ValueError(f"{what} = {size} is not a positive multiple of {multiple}, which this model needs; "
                         f"nearest valid sizes: {near}")
    return size
