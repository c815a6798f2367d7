"""Image files in and out: the reference's loader (centre square crop,
bicubic resize to a size the model accepts) and saving, both with Pillow."""
from __future__ import annotations

import os
import tempfile

import numpy as np

__all__ = ["load_image", "save_image", "check_output_path"]


def _pil():
    from PIL import Image

    Image.init()  # every format plugin, so that the extension tables are complete
    return Image


def load_image(path_or_array, size=None, model=None) -> np.ndarray:
    """An image file or array -> uint8 (size, size, 3), as the reference
    prepares its inputs: convert to RGB, crop the centre square (offset
    (long - short) // 2), resize with Pillow's bicubic filter.

    path_or_array: a file path (any format Pillow reads) or a uint8 array
    (H, W), (H, W, 3) or (H, W, 4).
    size: the output height and width in pixels; None (the default) is the
    model's native size (gnr.sizes: 64 for the bundled default model, 512
    for SD 1.x). A size the model does not accept (not a positive multiple
    of its `size_multiple`) is a ValueError naming the nearest valid sizes.
    model: the model the image is for: a `gnr.Model`, a `gnr.Editor`, a
    model folder or single-file checkpoint, or None for the bundled default
    model (`Editor.load_image` passes its own).
    """
    from .sizes import check_size, model_sizes

    native, multiple = model_sizes(model)
    size = native if size is None else check_size(size, multiple)
    Image = _pil()
    if isinstance(path_or_array, (str, os.PathLike)):
        path = os.fspath(path_or_array)
        if not os.path.exists(path):
            raise FileNotFoundError(f"no such image file: {path}")
        if os.path.isdir(path):
            raise IsADirectoryError(f"{path} is a folder, not an image file")
        try:
            img = Image.open(path)
            img.load()
        except (OSError, SyntaxError, ValueError) as e:  # UnidentifiedImageError is an OSError
            raise ValueError(f"cannot read {path} as an image ({e})") from None
    elif isinstance(path_or_array, np.ndarray):
        a = path_or_array
        if a.dtype != np.uint8 or a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (1, 3, 4)):
            raise TypeError(f"an image array must be uint8 (H, W), (H, W, 3) or (H, W, 4); got {a.dtype} {a.shape}")
        if a.shape[0] == 0 or a.shape[1] == 0:
            raise ValueError(f"an image array must not be empty, got shape {a.shape}")
        img = Image.fromarray(a[..., 0] if a.ndim == 3 and a.shape[2] == 1 else a)
    else:
        raise TypeError(f"load_image takes a file path or a uint8 array, got {type(path_or_array).__name__}")
    img = img.convert("RGB")
    w, h = img.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    img = img.crop((left, top, left + s, top + s)).resize((size, size), Image.BICUBIC)
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))


_COMMON = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".ppm")


def _writes_rgb(Image, fmt) -> bool:
    """Whether Pillow writes an RGB image in format `fmt` (a trial save of
    one pixel to memory: some formats Pillow saves take other modes only)."""
    import io

    if fmt is None or fmt not in Image.SAVE:
        return False
    try:
        Image.new("RGB", (1, 1)).save(io.BytesIO(), format=fmt)
    except Exception:  # noqa: BLE001 - any failure means: not this format
        return False
    return True


def check_output_path(path) -> str:
    """The Pillow format that `save_image(path, ...)` would write, after
    checking that the file can be written there: its folder exists and is
    writable, the path is not a folder, and the extension is one Pillow
    writes. Raises ValueError / FileNotFoundError / PermissionError saying
    which, before any work is done."""
    Image = _pil()
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"an output path must be a str or os.PathLike, got {type(path).__name__}")
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    fmt = Image.registered_extensions().get(ext)
    if fmt is None or not _writes_rgb(Image, fmt):
        common = [e for e in _COMMON if _writes_rgb(Image, Image.registered_extensions().get(e))]
        what = f"{ext} is not an image format Pillow writes" if ext else "the file name has no extension"
        raise ValueError(f"cannot write {path}: {what}; use one of {', '.join(common)} (or another extension "
                         f"Pillow writes RGB images to)")
    if os.path.isdir(path):
        raise IsADirectoryError(f"cannot write {path}: it is a folder; give a file name such as "
                                f"{os.path.join(path, 'out' + '.png')}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"cannot write {path}: the folder {folder} does not exist")
    try:  # a trial file says more than permission bits (read-only mounts, /proc, ...)
        with tempfile.TemporaryFile(dir=folder, prefix=".gnr-"):
            pass
        if os.path.exists(path):
            with open(path, "ab"):
                pass
    except OSError as e:
        raise PermissionError(f"cannot write {path}: no file can be written in {folder} ({e.strerror or e})") from None
    return fmt


def save_image(path, image: np.ndarray) -> None:
    """Writes `image`, a uint8 (H, W, 3) array, to `path` in the format its
    extension names (any format Pillow writes RGB to: .png, .jpg, .webp, ...);
    `check_output_path` runs first, so nothing is written on a bad path."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise TypeError(f"save_image takes a uint8 (H, W, 3) array, got {got}")
    fmt = check_output_path(path)
    _pil().fromarray(image).save(path, format=fmt)
