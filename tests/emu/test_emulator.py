"""The CUDA emulator's own checks, each shown catching what it is for: the
race check (a kernel with a __syncthreads removed), AddressSanitizer (a write
one element past a buffer, a read of released arena memory), barrier and warp
rules, overlapping copies, NaN fill of unwritten memory. tests/emu/selftest.cu
is built against csrc/cuda/emu with the host C++ compiler (plain and with
AddressSanitizer) and run one case per process, since some checks end the
process."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "csrc"
EMU = CSRC / "cuda" / "emu"
ASAN = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer"]


def compiler(env_name, default):
    exe = shutil.which(os.environ.get(env_name, default))
    if exe is None:
        raise RuntimeError(f"the emulator's tests need a C/C++ compiler ({env_name} or {default})")
    return exe


def build(out: Path, sanitize: bool) -> Path:
    cc, cxx = compiler("CC", "cc"), compiler("CXX", "c++")
    flags = ["-O1", "-g", "-I", str(EMU), "-I", str(CSRC), *(ASAN if sanitize else [])]
    objects = []
    jobs = [[cxx, "-x", "c++", "-std=c++17", str(ROOT / "tests" / "emu" / "selftest.cu")]]
    jobs += [[cxx, "-std=c++17", str(EMU / f)] for f in ("runtime.cpp", "launch.cpp", "fiber.cpp")]
    jobs += [[cc, "-std=gnu11", str(CSRC / "core" / f)] for f in ("arena.c", "status.c")]
    procs = []
    for i, cmd in enumerate(jobs):
        obj = out / f"{i}.o"
        objects.append(str(obj))
        procs.append(subprocess.Popen([*cmd, "-c", "-o", str(obj), *flags], stderr=subprocess.PIPE, text=True))
    for p in procs:
        _, err = p.communicate()
        assert p.returncode == 0, err
    exe = out / "selftest"
    subprocess.run([cxx, *objects, "-o", str(exe), "-lpthread", *(ASAN if sanitize else [])], check=True)
    return exe


@pytest.fixture(scope="module")
def selftest(tmp_path_factory):
    """{"plain": executable, "asan": executable}"""
    d = tmp_path_factory.mktemp("emu")
    (d / "plain").mkdir()
    (d / "asan").mkdir()
    return {"plain": build(d / "plain", False), "asan": build(d / "asan", True)}


def run(exe, case, **env):
    e = {k: v for k, v in os.environ.items() if not k.startswith(("GNR_EMU_", "GNR_NANFILL", "ASAN_OPTIONS"))}
    e.update(env)
    e.setdefault("ASAN_OPTIONS", "detect_leaks=0")
    r = subprocess.run([str(exe), case], capture_output=True, text=True, timeout=120, env=e)
    return r.returncode, r.stdout + r.stderr


MODES = {
    "plain": {},
    "reversed": {"GNR_EMU_ORDER": "reverse"},
    "race check": {"GNR_EMU_RACECHECK": "1"},
    "race check, shuffled": {"GNR_EMU_RACECHECK": "1", "GNR_EMU_ORDER": "shuffle:7"},
    "nan fill": {"GNR_NANFILL": "1"},
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", ["sum", "warps", "shared_and_atomics", "half"])
def test_correct_kernels_pass_every_mode(selftest, case, mode):
    rc, out = run(selftest["plain"], case, **MODES[mode])
    assert rc == 0 and out.startswith("ok"), out


@pytest.mark.parametrize("case", ["sum", "warps", "shared_and_atomics"])
def test_correct_kernels_pass_under_asan(selftest, case):
    rc, out = run(selftest["asan"], case)
    assert rc == 0 and out.startswith("ok"), out


def test_missing_syncthreads_fails_the_race_check(selftest):
    rc, out = run(selftest["plain"], "sum_missing_sync", GNR_EMU_RACECHECK="1")
    assert rc != 0
    assert "kernel block_sum_missing_sync, race: the result depends on the order" in out, out
    # the same kernel with its barrier passes (test_correct_kernels_pass_every_mode), and the shuffled order
    # finds it too
    rc, out = run(selftest["plain"], "sum_missing_sync", GNR_EMU_RACECHECK="1", GNR_EMU_ORDER="shuffle:3")
    assert rc != 0 and "race:" in out, out


def test_write_past_the_end_fails_under_asan(selftest):
    rc, out = run(selftest["asan"], "write_past_end")
    assert rc != 0
    assert "heap-buffer-overflow" in out and "write_past_end" in out, out


def test_reading_released_arena_memory_fails_under_asan(selftest):
    rc, out = run(selftest["asan"], "arena_after_release")
    assert rc != 0
    assert "use-after-poison" in out and "add_one" in out, out


def test_skipped_barrier_is_reported(selftest):
    rc, out = run(selftest["plain"], "barrier_skipped")
    assert rc != 0
    assert "kernel barrier_skipped, block (0,0,0): barrier skipped" in out, out
    assert "threads 0-127 (128 of 256) wait at __syncthreads at selftest.cu" in out, out
    assert "threads 128-255 (128 of 256) exited" in out, out


def test_divergent_barrier_is_reported(selftest):
    rc, out = run(selftest["plain"], "divergent_barrier")
    assert rc != 0 and "kernel divergent_barrier, block (0,0,0): divergent barrier" in out, out


def test_shuffle_with_an_exited_lane_is_reported(selftest):
    rc, out = run(selftest["plain"], "warp_lane_exited")
    assert rc != 0 and "__shfl_sync" in out and "thread 31 of the mask has exited" in out, out


def test_overlapping_copy_is_reported(selftest):
    rc, out = run(selftest["plain"], "overlap_copy")
    assert rc != 0 and "cudaErrorInvalidValue" in out and "overlap" in out, out


def test_unwritten_memory_reads_as_nan_in_nan_fill_mode(selftest):
    rc, out = run(selftest["plain"], "unwritten_read", GNR_NANFILL="1")
    assert rc == 0 and "ok nans 4096 of 4096" in out, out
    rc, out = run(selftest["plain"], "unwritten_read")
    assert rc == 0 and "ok nans 0 of 4096" in out, out  # without the mode the bug goes unseen


def test_fault_is_reported_by_the_next_wait_like_a_gpu(selftest):
    rc, out = run(selftest["plain"], "injected_fault", GNR_EMU_FAULT="add_one")
    assert rc != 0
    assert out.startswith("launched\nerror in cudaStreamSynchronize(0)"), out
    assert "cudaErrorIllegalAddress" in out and "kernel add_one" in out, out
    rc, out = run(selftest["plain"], "injected_fault")
    assert rc == 0 and "ok synchronised" in out, out


def test_launch_outside_the_limits_is_reported(selftest):
    rc, out = run(selftest["plain"], "bad_launch")
    assert rc != 0 and "cudaErrorInvalidConfiguration" in out and "2048" in out, out
