"""Build of gnr's C extension.

`gnr._C` is the engine with its CPU backend: every .c file under csrc/ except
csrc/cuda/. BLAS is OpenBLAS from the `scipy-openblas32` wheel (the build NumPy
and SciPy ship); at run time gnr/__init__.py loads that library before `_C`.

`gnr._C_cuda` is the CUDA backend, built when nvcc is found (CUDA_HOME, else
/usr/local/cuda, else PATH) unless GNR_CUDA=0. It is a separate module loaded
only when a CUDA device is asked for, so `import gnr` works on machines without
a GPU driver.

GNR_CUDA=emulate builds the same `gnr._C_cuda` from the unchanged .cu sources
with the host C++ compiler against the CPU emulator of the CUDA runtime,
launches and cuBLAS (csrc/cuda/emu): every device="cuda" path then runs, and is
checked, without a GPU. A test target, never a product (build_info()["cuda"]
says "emulated"). GNR_SANITIZE=address adds AddressSanitizer and
UndefinedBehaviorSanitizer to every C, C++ and emulated CUDA file (not with a
real CUDA build: nvcc's device code cannot be instrumented).
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


def engine_headers():
    """Headers, and ops.def (the op list they expand), that a change to must
    rebuild the modules."""
    return sorted(str(p.relative_to(ROOT)) for ext in ("h", "def") for p in CSRC.rglob("*." + ext))


def emulator_sources():
    return sorted(str(p.relative_to(ROOT)) for p in (CSRC / "cuda" / "emu").glob("*.cpp"))


def cuda_mode():
    """"nvcc" (the default: a real CUDA build when nvcc is found), "emulate" or "off"."""
    v = os.environ.get("GNR_CUDA", "1").strip().lower()
    if v == "0":
        return "off"
    if v == "emulate":
        return "emulate"
    if v not in ("", "1"):
        sys.exit(f"GNR_CUDA={v!r}: use 0 (CPU only), 1 (CUDA when nvcc is found; the default) or emulate")
    return "nvcc"


def sanitize_flags():
    """Compiler and linker flags of GNR_SANITIZE=address (empty without it)."""
    v = os.environ.get("GNR_SANITIZE", "").strip().lower()
    if not v:
        return []
    if v != "address":
        sys.exit(f"GNR_SANITIZE={v!r}: the only sanitizer build is 'address' (AddressSanitizer + UBSan)")
    if cuda_mode() == "nvcc" and find_cuda_home() is not None:
        sys.exit("GNR_SANITIZE=address needs GNR_CUDA=emulate or GNR_CUDA=0: device code built by nvcc "
                 "cannot be instrumented")
    return ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer", "-g"]


def find_cuda_home():
    if cuda_mode() != "nvcc":
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


def build_variant():
    """What the compiled objects depend on besides the sources: the CUDA mode
    and the sanitizer."""
    return cuda_mode() + ("-asan" if sanitize_flags() else "")


class BuildExt(build_ext):
    """Objects of each build variant in a folder of their own, and a full
    relink when the variant changes: a source that did not change since an
    nvcc build is still compiled again for the emulator or the sanitizer (its
    macros, include path and flags differ), never reused."""

    def finalize_options(self):
        super().finalize_options()
        self.variant_stamp = Path(self.build_temp) / "gnr-build-variant"
        self.build_temp = os.path.join(self.build_temp, build_variant())
        if not self.variant_stamp.exists() or self.variant_stamp.read_text() != build_variant():
            self.force = True

    def run(self):
        super().run()
        self.variant_stamp.parent.mkdir(parents=True, exist_ok=True)
        self.variant_stamp.write_text(build_variant())

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
        """The .cu files to objects (nvcc, or the host C++ compiler against the
        emulator, which also compiles its own .cpp files); the C linker links them."""
        build = Path(self.build_temp) / "cuda"
        build.mkdir(parents=True, exist_ok=True)
        # include dirs given to build_ext (-I, e.g. where cublas_v2.h lives) reach the compiler too
        includes = ["-I" + d for d in [*ext.include_dirs, str(CSRC), *(self.include_dirs or [])]]
        jobs = []
        if ext.cuda_home is None:  # the emulator
            cxx = os.environ.get("CXX", "c++")
            flags = ["-O2", "-std=c++17", "-fPIC", "-fvisibility=hidden", "-Wall", "-Wno-unused-function",
                     *sanitize_flags(), *includes]
            for src in ext.cuda_sources + emulator_sources():
                obj = build / (Path(src).stem + (".cu.o" if src.endswith(".cu") else ".o"))
                jobs.append([cxx, "-x", "c++", "-c", src, "-o", str(obj), *flags])
        else:
            nvcc = str(Path(ext.cuda_home) / "bin" / "nvcc")
            archs = os.environ.get("GNR_CUDA_ARCHS", "80;90").split(";")
            gencode = []
            for a in archs:
                gencode += ["-gencode", f"arch=compute_{a},code=sm_{a}"]
            # PTX of the newest architecture too, so GPUs newer than the list JIT-compile it
            gencode += ["-gencode", f"arch=compute_{archs[-1]},code=compute_{archs[-1]}"]
            for src in ext.cuda_sources:
                obj = build / (Path(src).stem + ".o")
                jobs.append([nvcc, "-c", src, "-o", str(obj), "-O3", "-std=c++17", "-Xcompiler", "-fPIC",
                             "-Xcompiler", "-fvisibility=hidden", "-lineinfo", *includes,
                             "--expt-relaxed-constexpr", *gencode])

        def run(cmd):
            print(" ".join(cmd), flush=True)
            subprocess.run(cmd, check=True)

        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max(1, min(len(jobs), os.cpu_count() or 1))) as pool:
            list(pool.map(run, jobs))
        objects = [cmd[cmd.index("-o") + 1] for cmd in jobs]
        ext.extra_objects = list(ext.extra_objects or []) + objects


def cuda_extension(macros, cflags, ldflags):
    """(the gnr._C_cuda Extension or None, what the build says about CUDA:
    "nvcc" / "emulated" / "none", and why a CUDA backend is missing)."""
    # The core files the kernels call (gnr_error, tensor helpers, the arena)
    # are compiled in: _C hides its symbols, and a failure must be recorded in
    # this module's own message (the table's last_error).
    sources = ["csrc/python/cuda_module.c", "csrc/core/status.c", "csrc/core/tensor.c", "csrc/core/arena.c"]
    # relink when a kernel or header changes (the kernels' objects are extra_objects)
    depends = cuda_sources() + emulator_sources() + engine_headers()
    mode = cuda_mode()
    if mode == "off":
        return None, "none", "built with GNR_CUDA=0 (CPU only); rebuild without it to get the CUDA backend"
    if mode == "emulate":
        inc, libdir, lib = openblas()
        ext = Extension("gnr._C_cuda", sources=sources, include_dirs=[str(CSRC / "cuda" / "emu"), str(CSRC), inc],
                        library_dirs=[libdir], libraries=[lib, "stdc++", "m", "pthread"], depends=depends,
                        define_macros=macros, extra_compile_args=cflags, extra_link_args=ldflags)
        ext.cuda_home = None
        ext.cuda_sources = cuda_sources()
        return ext, "emulated", ("built with GNR_CUDA=emulate: the CUDA backend runs on the CPU emulator, "
                                 "for tests only (never for speed)")
    cuda = find_cuda_home()
    if cuda is None:
        return None, "none", ("nvcc was not found when gnr was built (looked in CUDA_HOME, CUDA_PATH, "
                              "/usr/local/cuda and PATH): install the CUDA toolkit and rebuild with `pip install .`")
    cublas = find_cublas(cuda)
    if cublas is None:
        note = ("nvcc was found but cuBLAS was not: `pip install nvidia-cublas` (or set GNR_CUBLAS_HOME to a "
                "folder with include/cublas_v2.h and lib/libcublas.so) and rebuild with `pip install .`")
        print("gnr: " + note + "; building the CPU backend only", file=sys.stderr)
        return None, "none", note
    blas_inc, blas_lib, blas_name = cublas
    libdirs = [str(cuda / d) for d in ("lib64", "lib", "targets/x86_64-linux/lib") if (cuda / d).exists()]
    libdirs.append(blas_lib)
    ext = Extension(
        "gnr._C_cuda",
        sources=sources,
        include_dirs=[str(CSRC), str(cuda / "include"), blas_inc],
        library_dirs=libdirs,
        libraries=[blas_name, "cudart", "stdc++"],  # nvcc's objects are C++
        depends=depends,
        runtime_library_dirs=libdirs,
        define_macros=macros,
        extra_compile_args=cflags,
        extra_link_args=ldflags,
    )
    ext.cuda_home = str(cuda)
    ext.cuda_sources = cuda_sources()
    return ext, "nvcc", ""


def c_string(text):
    return '"%s"' % text.replace("\\", "\\\\").replace('"', '\\"')


def extensions():
    inc, libdir, lib = openblas()
    omp = openmp_works()
    san = sanitize_flags()
    cflags = ["-O3", "-std=gnu11", "-fvisibility=hidden", "-Wall", "-Wno-unused-function", *san]
    ldflags = list(san)
    macros = [("NPY_NO_DEPRECATED_API", "NPY_1_20_API_VERSION"), ("GNR_VERSION", c_string(VERSION))]
    if omp:
        cflags.append("-fopenmp")
        ldflags.append("-fopenmp")
    cuda_ext, cuda_build, cuda_note = cuda_extension(macros, cflags, ldflags)
    exts = [
        Extension(
            "gnr._C",
            sources=c_sources(),
            depends=engine_headers(),
            include_dirs=[str(CSRC), numpy_include(), inc],
            library_dirs=[libdir],
            libraries=[lib, "m"],
            define_macros=macros + [("GNR_OPENBLAS", "1"), ("GNR_CUDA_BUILD", c_string(cuda_build)),
                                    ("GNR_CUDA_NOTE", c_string(cuda_note))],
            extra_compile_args=cflags,
            extra_link_args=ldflags,
        )
    ]
    if cuda_ext is not None:
        exts.append(cuda_ext)
    return exts


VERSION = "0.1.0"

setup(version=VERSION, ext_modules=extensions(), cmdclass={"build_ext": BuildExt})
