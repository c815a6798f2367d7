"""The layout's promise (ARCHITECTURE section 2): a reader finds any op's CPU
and CUDA forward and backward by file name. Every op listed in csrc/ops.def
is implemented in csrc/cpu/<concept>.c and csrc/cuda/<concept>.cu, with the
same concept name on both sides, and the two backends name their files
alike."""
import re
from pathlib import Path

CSRC = Path(__file__).resolve().parent.parent / "csrc"

# Files only one backend has, each for a reason a reader can see in the name.
CPU_ONLY = {"cpu_backend": "the CPU table of ops (generated from ops.def)",
            "threads": "the CPU thread count and build information",
            "simd": "the CPU's vector kernels, dispatched by what the CPU has (a GPU needs none)",
            "winograd": "Winograd's method for the CPU's 3x3 convolutions (cuDNN-free CUDA uses im2col)",
            "narrow_gemm": "the CPU's products against few columns, weights read in place (cuBLAS has no packing to save)"}
CUDA_ONLY = {"cuda_backend": "the CUDA table of ops and the device context"}


def _ops():
    text = (CSRC / "ops.def").read_text()
    ops = re.findall(r"^GNR_OP\((\w+),", text, flags=re.M)
    assert len(ops) > 30, "ops.def was not parsed"
    return ops


def _definitions(folder: Path, suffix: str, prefix: str) -> dict:
    """op name -> stems of the files that define `<prefix><op>(`."""
    found = {}
    for f in sorted(folder.glob(f"*{suffix}")):
        for name in re.findall(rf"^\w[\w\s\*]*?\b{prefix}(\w+)\(", f.read_text(), flags=re.M):
            found.setdefault(name, set()).add(f.stem)
    return found


def test_every_op_lives_in_the_same_concept_file_on_both_backends():
    cpu = _definitions(CSRC / "cpu", ".c", "cpu_")
    cuda = _definitions(CSRC / "cuda", ".cu", "cuda_")
    problems = []
    for op in _ops():
        c, g = cpu.get(op, set()) - {"cpu_backend"}, cuda.get(op, set()) - {"cuda_backend"}
        if len(c) != 1 or len(g) != 1 or c != g:
            problems.append(f"{op}: cpu {sorted(c) or 'missing'}, cuda {sorted(g) or 'missing'}")
    assert not problems, "ops whose files do not pair up:\n" + "\n".join(problems)


def test_the_backends_name_their_files_alike():
    cpu = {f.stem for f in (CSRC / "cpu").glob("*.c")} - set(CPU_ONLY)
    cuda = {f.stem for f in (CSRC / "cuda").glob("*.cu")} - set(CUDA_ONLY)
    assert cpu == cuda, f"only on the CPU: {sorted(cpu - cuda)}; only on CUDA: {sorted(cuda - cpu)}"
