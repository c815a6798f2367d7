#!/usr/bin/env bash
# Builds gnr from this tree with its CUDA backend (sm_90), runs every GPU test
# (tests/gpu and the "cuda" cases of tests/test_ops.py: the CUDA backend
# against the CPU backend and PyTorch) and the GPU benchmarks
# when present, and writes under $OUT:
#   run_all.log   everything printed
#   junit.xml     pytest's report
#   results.md    a table: test, outcome, seconds, the outcome of the same test
#                 on the emulated device (+ the device and the totals)
# Everything must finish within 10 minutes; each step has its own time limit.
# GNR_GPU_TIME_S (default 570) is the whole run's budget in seconds: the
# benchmarks get what the build and the tests leave of it.
# Nothing is downloaded: wheels the machine lacks (diffusers, scipy-openblas32,
# ...) are installed from $GNR_WHEELS (default: .whl/ in the tree) with --no-index.
# The emulated device's outcomes come from a junit report of the same tests
# under GNR_CUDA=emulate ($GNR_EMU_JUNIT, default .ci-junit-emu.xml as .ci/run
# writes it; git ignores it, so name it among the paths carried to the GPU
# machine).
set -u
cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=${OUT:-$ROOT/gpu-out}
mkdir -p "$OUT"
LOG=$OUT/run_all.log
: >"$LOG"
START=$(date +%s)
log() { echo "[$(( $(date +%s) - START ))s] $*" | tee -a "$LOG"; }
PY=${PYTHON:-python3}
export NVIDIA_TF32_OVERRIDE=0   # parity mode: no TF32 anywhere (cuBLAS, torch)
export GNR_CUDA_ARCHS=${GNR_CUDA_ARCHS:-90}

log "host: $(uname -n); python: $($PY --version 2>&1)"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >>"$LOG" 2>&1 || log "nvidia-smi failed"

# ---- wheels carried by the caller
WHEELS=${GNR_WHEELS:-$ROOT/.whl}
if compgen -G "$WHEELS/*.whl" >/dev/null; then
    log "installing carried wheels from $WHEELS"
    timeout 120 $PY -m pip install --no-index --no-deps --disable-pip-version-check -q "$WHEELS"/*.whl >>"$LOG" 2>&1 \
        || log "pip install of carried wheels failed (see log)"
fi

# ---- CUDA toolkit and cuBLAS
CUDA_HOME=${CUDA_HOME:-}
if [ -z "$CUDA_HOME" ]; then
    if [ -x /usr/local/cuda/bin/nvcc ]; then CUDA_HOME=/usr/local/cuda
    elif command -v nvcc >/dev/null; then CUDA_HOME=$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")
    fi
fi
if [ -z "$CUDA_HOME" ] || [ ! -x "$CUDA_HOME/bin/nvcc" ]; then
    log "FAIL: nvcc not found (set CUDA_HOME)"
    echo "| build | FAIL: nvcc not found |" >"$OUT/results.md"
    exit 1
fi
export CUDA_HOME
log "nvcc: $("$CUDA_HOME/bin/nvcc" --version | tail -1)"
EXTRA=()
if [ ! -f "$CUDA_HOME/include/cublas_v2.h" ]; then
    # cuBLAS from the nvidia-cublas wheel that PyTorch installs
    HDR=$($PY - <<'PYEOF'
import glob, os, site, sys
roots = site.getsitepackages() + [site.getusersitepackages()] + sys.path
for r in roots:
    for h in glob.glob(os.path.join(r, "nvidia", "*", "include", "cublas_v2.h")):
        print(h); raise SystemExit
PYEOF
)
    if [ -z "$HDR" ]; then
        log "FAIL: cuBLAS headers not found in $CUDA_HOME or in the nvidia pip wheels"
        echo "| build | FAIL: cuBLAS not found |" >"$OUT/results.md"
        exit 1
    fi
    CB=$(dirname "$(dirname "$HDR")")
    LINKDIR=$ROOT/build/cublas-link
    mkdir -p "$LINKDIR"
    LIB=$(ls "$CB"/lib/libcublas.so* | head -1)
    ln -sf "$LIB" "$LINKDIR/libcublas.so"
    EXTRA=(-I "$CB/include" -L "$LINKDIR" -R "$CB/lib")
    log "cuBLAS from $CB"
fi

# ---- build in place
log "building gnr (sm_$GNR_CUDA_ARCHS)"
if ! timeout 300 $PY setup.py build_ext --inplace --force "${EXTRA[@]}" >>"$LOG" 2>&1; then
    log "FAIL: build (see log)"
    echo "| build | FAIL |" >"$OUT/results.md"
    exit 1
fi
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
$PY -c "import gnr; print('cuda_available:', gnr.cuda_available()); from gnr import _C_cuda; print('device:', _C_cuda.device_name())" \
    >>"$LOG" 2>&1 || log "WARNING: the CUDA backend did not load (see log)"
log "built"

# ---- GPU tests: whole passes and edits (tests/gpu) and every op's "cuda" case (tests/test_ops.py)
log "pytest tests/gpu tests/test_ops.py"
timeout 300 $PY -m pytest tests/gpu tests/test_ops.py -q -rA --junitxml="$OUT/junit.xml" -p no:cacheprovider \
    >>"$LOG" 2>&1
TEST_RC=$?
log "pytest exit code $TEST_RC"

# ---- GPU benchmarks, if the tree has them and time is left
for b in benchmarks/bench_gpu*.py; do
    [ -f "$b" ] || continue
    LEFT=$(( ${GNR_GPU_TIME_S:-570} - ($(date +%s) - START) ))
    if [ "$LEFT" -lt 30 ]; then log "skipping $b: out of time"; continue; fi
    log "benchmark $b (limit ${LEFT}s)"
    timeout "$LEFT" $PY "$b" --out "$OUT" --time-limit $(( LEFT - 10 )) >>"$LOG" 2>&1 || log "$b failed or timed out"
done

# ---- results table
$PY - "$OUT" "${GNR_EMU_JUNIT:-$ROOT/.ci-junit-emu.xml}" <<'PYEOF' | tee -a "$LOG"
import os, sys
import xml.etree.ElementTree as ET
out, emu_path = sys.argv[1], sys.argv[2]
path = os.path.join(out, "junit.xml")


def outcomes(junit):
    """(test id, outcome, seconds, message) of every case of a junit report."""
    for case in ET.parse(junit).getroot().iter("testcase"):
        outcome, msg = "passed", ""
        for tag in ("failure", "error", "skipped"):
            el = case.find(tag)
            if el is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                msg = (el.get("message") or "").splitlines()[0][:120] if el.get("message") else ""
        yield case.get("classname", "") + "::" + case.get("name", ""), outcome, float(case.get("time", 0)), msg


emulated = {name: o for name, o, _, _ in outcomes(emu_path)} if os.path.exists(emu_path) else {}
rows, counts = [], {"passed": 0, "failed": 0, "skipped": 0, "error": 0}
if os.path.exists(path):
    for name, outcome, secs, msg in outcomes(path):
        counts[outcome] += 1
        rows.append((name, outcome, secs, emulated.get(name, "not run"), msg))
try:
    sys.path.insert(0, os.getcwd())
    from gnr import _C_cuda
    device = _C_cuda.device_name()
except Exception as e:  # reported, not fatal
    device = f"unknown ({e})"
lines = [f"# GPU test results", "", f"device: {device}", "",
         f"{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped, {counts['error']} errors", "",
         f"emulated device: {'outcomes from ' + os.path.basename(emu_path) if emulated else 'no report of an emulated run'}",
         "", "| test | outcome | s | emulated | message |", "|---|---|---|---|---|"]
lines += [f"| {n} | {o} | {t:.2f} | {e} | {m.replace('|', '/')} |" for n, o, t, e, m in rows]
text = "\n".join(lines) + "\n"
open(os.path.join(out, "results.md"), "w").write(text)
print(text)
PYEOF
log "done in $(( $(date +%s) - START ))s"
exit $TEST_RC
