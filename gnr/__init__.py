"""gnr: Guide-and-Rescale real-image editing with Stable Diffusion 1.x and 2.x.

A C engine (CPU backend always, CUDA when built) behind a small Python API.
"""
import ctypes as _ctypes
import os as _os


def _preload_openblas():
    """The engine links OpenBLAS from the `scipy-openblas32` wheel. Loading it
    globally first lets the dynamic linker resolve `_C`'s dependency by soname,
    wherever pip put that wheel (the same way NumPy and SciPy load theirs)."""
    import scipy_openblas32 as ob

    path = _os.path.join(ob.get_lib_dir(), ob.get_library(fullname=True))
    _ctypes.CDLL(path, mode=_ctypes.RTLD_GLOBAL)


_preload_openblas()


def _find_engine():
    """In a source checkout that was installed with `pip install .` but not
    built in place, the checkout's gnr/ shadows the installed package for
    commands run in the repository root (`python -m gnr demo`, as the README
    says); only the installed copy has the compiled engine. Import the rest of
    the package from that copy then. A missing engine anywhere is an
    ImportError that says how to build it."""
    import importlib.machinery
    import sys

    def has_engine(folder):
        return any(_os.path.exists(_os.path.join(folder, "_C" + suffix))
                   for suffix in importlib.machinery.EXTENSION_SUFFIXES)

    here = _os.path.dirname(_os.path.abspath(__file__))
    if has_engine(here):
        return
    for entry in sys.path:
        folder = _os.path.join(_os.path.abspath(entry or _os.curdir), "gnr")
        if folder != here and has_engine(folder):
            __path__[:] = [folder]
            return
    raise ImportError(f"gnr's compiled engine (gnr/_C) is not built: install the package with `pip install .`, "
                      f"or build it in this checkout with `python setup.py build_ext --inplace` ({here})")


_find_engine()
from . import _C  # noqa: E402
from ._C import DeviceError, OutOfMemoryError  # noqa: E402
from ._backends import build_info, cuda_available  # noqa: E402
from .model import Model, load_model  # noqa: E402
from . import configs  # noqa: E402
from .editor import EditCancelled, Editor, Inversion  # noqa: E402
from .images import load_image, save_image  # noqa: E402
from .profiling import profile  # noqa: E402
from . import batch, captures, demo, files, images, profiling, single_file, sizes, tokenizer  # noqa: E402,F401  every public submodule

__version__ = _C.build_info()["version"]


def set_num_threads(n: int) -> None:
    """Sets to `n` the CPU threads of models made from now on (a model's
    `threads` argument overrides it; models already made keep theirs).
    Default: all cores."""
    _C.set_num_threads(int(n))


__all__ = ["build_info", "set_num_threads", "cuda_available", "load_model", "Model", "Editor", "Inversion",
           "EditCancelled", "configs", "load_image", "save_image", "profile", "OutOfMemoryError", "DeviceError"]
