"""Image helpers: the reference's loader (centre square crop, resize) and
saving. Pillow is an optional dependency used only here and in the CLI."""
from __future__ import annotations

import os

import numpy as np

__all__ = ["load_image", "save_image"]


def _pil():
    try:
        from PIL import Image
    except ImportError:
        raise ImportError("reading and writing image files needs Pillow: pip install pillow") from None
    return Image


def load_image(path_or_array, size: int = 512) -> np.ndarray:
    """An image file or array -> uint8 (size, size, 3), as the reference
    prepares its inputs: convert to RGB, crop the centre square (offset
    (long - short) // 2), resize with Pillow's bicubic filter."""
    Image = _pil()
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    if isinstance(path_or_array, (str, os.PathLike)):
        if not os.path.exists(path_or_array):
            raise FileNotFoundError(f"no such image file: {os.fspath(path_or_array)}")
        img = Image.open(path_or_array)
    elif isinstance(path_or_array, np.ndarray):
        a = path_or_array
        if a.dtype != np.uint8 or a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (1, 3, 4)):
            raise TypeError(f"an image array must be uint8 (H, W), (H, W, 3) or (H, W, 4); got {a.dtype} {a.shape}")
        img = Image.fromarray(a[..., 0] if a.ndim == 3 and a.shape[2] == 1 else a)
    else:
        raise TypeError(f"load_image takes a file path or a uint8 array, got {type(path_or_array).__name__}")
    img = img.convert("RGB")
    w, h = img.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    img = img.crop((left, top, left + s, top + s)).resize((size, size), Image.BICUBIC)
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))


def save_image(path, image: np.ndarray) -> None:
    """Writes a uint8 (H, W, 3) array (format from the file name). A .png
    needs only the standard library when Pillow is absent (so the demo runs
    on a bare install); other formats need Pillow."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise TypeError("save_image takes a uint8 (H, W, 3) array")
    try:
        Image = _pil()
    except ImportError:
        if os.fspath(path).lower().endswith(".png"):
            _write_png(path, image)
            return
        raise
    Image.fromarray(image).save(path)


def _write_png(path, image: np.ndarray) -> None:
    """The smallest valid PNG of a uint8 (H, W, 3) array: 8-bit RGB, no
    row filters, one zlib-compressed IDAT chunk."""
    import struct
    import zlib

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    h, w, _ = image.shape
    rows = np.concatenate([np.zeros((h, 1), np.uint8), np.ascontiguousarray(image).reshape(h, w * 3)], axis=1)
    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)       # 8 bits, colour type 2 (RGB)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
                + chunk(b"IEND", b""))
