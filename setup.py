"""Build of gnr's C extension.

`gnr._C` is the engine with its CPU backend: every .c file under csrc/ except
csrc/cuda/. BLAS is OpenBLAS from the `scipy-openblas32` wheel (the build NumPy
and SciPy ship); at run time gnr/__init__.py loads that library before `_C`.

`gnr._C_cuda` is the CUDA backend, built when nvcc is found (CUDA_HOME, else
/usr/local/cuda, else PATH) unless GNR_CUDA=0. It is a separate module loaded
only when a CUDA device is asked for, so `import gnr` works on machines without
a GPU driver.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
CSRC = ROOT / "csrc"


def c_sources():
    files = [p for p in CSRC.rglob("*.c")
             if "cuda" not in p.relative_to(CSRC).parts and p.name != "cuda_module.c"]
    return sorted(str(p.relative_to(ROOT)) for p in files)


def cuda_sources():
    return sorted(str(p.relative_to(ROOT)) for p in (CSRC / "cuda").rglob("*.cu"))


def find_cuda_home():
    if os.environ.get("GNR_CUDA", "1") == "0":
        return None
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(str(Path(nvcc).resolve().parent.parent))
    for c in candidates:
        if c and (Path(c) / "bin" / "nvcc").exists():
            return Path(c)
    return None


def find_cublas(cuda):
    """(include dir, lib dir, library name) of cuBLAS, or None.

    Looked for in GNR_CUBLAS_HOME (a folder with include/ and lib/, e.g. the
    `nvidia-cublas` wheel's nvidia/cu13), then the CUDA toolkit, then that
    wheel when it is importable by the building interpreter. Toolkits without
    cuBLAS exist (it ships separately on PyPI), so this is not the same test
    as finding nvcc."""
    homes = []
    if os.environ.get("GNR_CUBLAS_HOME"):
        homes.append(Path(os.environ["GNR_CUBLAS_HOME"]))
    homes += [cuda, cuda / "targets" / "x86_64-linux"]
    for entry in sys.path:
        homes += sorted(Path(entry).glob("nvidia/cu*")) + [Path(entry) / "nvidia" / "cublas"]
    for home in homes:
        inc = home / "include"
        if not (inc / "cublas_v2.h").exists():
            continue
        for libdir in (home / "lib64", home / "lib"):
            if (libdir / "libcublas.so").exists():
                return str(inc), str(libdir), "cublas"
            versioned = sorted(libdir.glob("libcublas.so.*"))
            if versioned:  # wheels ship only the soname: link it by file name
                return str(inc), str(libdir), ":" + versioned[0].name
    return None


def numpy_include():
    import numpy

    return numpy.get_include()


def openblas():
    import scipy_openblas32 as ob

    return ob.get_include_dir(), ob.get_lib_dir(), ob.get_library()


def openmp_works():
    """True when the C compiler accepts -fopenmp (gcc and clang with libomp)."""
    import tempfile

    cc = os.environ.get("CC", "cc")
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "t.c"
        src.write_text("#include <omp.h>\nint main(void){return omp_get_max_threads() > 0 ? 0 : 1;}\n")
        r = subprocess.run([cc, "-fopenmp", str(src), "-o", str(Path(d) / "t")], capture_output=True)
        return r.returncode == 0


class BuildExt(build_ext):
    def build_extension(self, ext):
        if ext.name != "gnr._C_cuda":
            super().build_extension(ext)
            return
        # The CUDA module compiles a few core files of its own (see
        # extensions()): keep its objects apart from _C's.
        saved = self.build_temp
        self.build_temp = os.path.join(saved, "cuda_ext")
        try:
            self.compile_cuda(ext)
            super().build_extension(ext)
        finally:
            self.build_temp = saved

    def compile_cuda(self, ext):
        """nvcc compiles the .cu files to objects; the C linker links them."""
        cuda = Path(ext.cuda_home)
        nvcc = str(cuda / "bin" / "nvcc")
        build = Path(self.build_temp) / "cuda"
        build.mkdir(parents=True, exist_ok=True)
        archs = os.environ.get("GNR_CUDA_ARCHS", "80;90").split(";")
        gencode = []
        for a in archs:
            gencode += ["-gencode", f"arch=compute_{a},code=sm_{a}"]
        # include dirs given to build_ext (-I, e.g. where cublas_v2.h lives) reach nvcc too
        includes = ["-I" + d for d in [str(CSRC), *ext.include_dirs, *(self.include_dirs or [])]]
        objects = []
        for src in ext.cuda_sources:
            obj = build / (Path(src).stem + ".o")
            cmd = [nvcc, "-c", src, "-o", str(obj), "-O3", "-std=c++17", "-Xcompiler", "-fPIC",
                   "-Xcompiler", "-fvisibility=hidden", "-lineinfo", *includes, "--expt-relaxed-constexpr",
                   *gencode]
            print(" ".join(cmd))
            subprocess.run(cmd, check=True)
            objects.append(str(obj))
        ext.extra_objects = list(ext.extra_objects or []) + objects


def extensions():
    inc, libdir, lib = openblas()
    omp = openmp_works()
    cflags = ["-O3", "-std=gnu11", "-fvisibility=hidden", "-Wall", "-Wno-unused-function"]
    ldflags = []
    macros = [("NPY_NO_DEPRECATED_API", "NPY_1_20_API_VERSION"), ("GNR_VERSION", '"%s"' % VERSION)]
    if omp:
        cflags.append("-fopenmp")
        ldflags.append("-fopenmp")
    exts = [
        Extension(
            "gnr._C",
            sources=c_sources(),
            include_dirs=[str(CSRC), numpy_include(), inc],
            library_dirs=[libdir],
            libraries=[lib, "m"],
            define_macros=macros + [("GNR_OPENBLAS", "1")],
            extra_compile_args=cflags,
            extra_link_args=ldflags,
        )
    ]
    cuda = find_cuda_home()
    cu = cuda_sources()
    cublas = find_cublas(cuda) if cuda is not None and cu else None
    if cuda is not None and cu and cublas is None:
        print("gnr: nvcc found but no cuBLAS (set GNR_CUBLAS_HOME, or pip install nvidia-cublas): "
              "building the CPU backend only", file=sys.stderr)
    if cublas is not None:
        blas_inc, blas_lib, blas_name = cublas
        libdirs = [str(cuda / d) for d in ("lib64", "lib", "targets/x86_64-linux/lib") if (cuda / d).exists()]
        libdirs.append(blas_lib)
        ext = Extension(
            "gnr._C_cuda",
            # The core files the kernels call (gnr_error, tensor helpers, the
            # arena) are compiled in: _C hides its symbols, and a failure must
            # be recorded in this module's own message (the table's last_error).
            sources=["csrc/python/cuda_module.c", "csrc/core/status.c", "csrc/core/tensor.c", "csrc/core/arena.c"],
            include_dirs=[str(CSRC), str(cuda / "include"), blas_inc],
            library_dirs=libdirs,
            libraries=[blas_name, "cudart", "stdc++"],  # nvcc's objects are C++
            # relink when a kernel or header changes (the .cu objects are extra_objects)
            depends=cu + sorted(str(p.relative_to(ROOT)) for p in CSRC.rglob("*.h")),
            runtime_library_dirs=libdirs,
            define_macros=macros,
            extra_compile_args=cflags,
            extra_link_args=ldflags,
        )
        ext.cuda_home = str(cuda)
        ext.cuda_sources = cu
        exts.append(ext)
    return exts


VERSION = "0.1.0"

setup(version=VERSION, ext_modules=extensions(), cmdclass={"build_ext": BuildExt})
