#!/usr/bin/env bash
# The GPU workflow in one call (docs/gpu_workflow.md): build for this GPU's arch with every core,
# run the whole test suite (GPU tests included), compute-sanitizer memcheck on small shapes, and
# the benchmarks. Logs and result tables go to $OUT (default ./gpu_out).
#   TD_COMMIT=<sha> bash scripts/gpu_run.sh [bench suites...]   (default: quant gemm attention sla)
set -uo pipefail
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
SUITES=${*:-quant gemm attention sla}
status=0
step() { echo "=== $1 ($(date +%T))"; }

# Wheels carried in .whl (nvidia-cutlass; the GPU machine has no network).
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export TD_CUDA_ARCHS=${TD_CUDA_ARCHS:-$(python3 -c "import torch; M, m = torch.cuda.get_device_capability(); print(f'{M}{m}' + ('a' if M in (9, 10, 12) else ''))")}
export MAX_JOBS=${MAX_JOBS:-$(nproc)} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$OUT/device.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/device.txt"

step "build for sm_$TD_CUDA_ARCHS with $MAX_JOBS jobs"
start=$(date +%s)
python3 setup.py build_ext --inplace > "$OUT/build.log" 2>&1 || { echo "BUILD FAILED"; tail -50 "$OUT/build.log"; exit 1; }
echo "build: $(( $(date +%s) - start )) s" | tee -a "$OUT/device.txt"
python3 scripts/check_spills.py "$OUT/build.log" || status=1

step "tests"
python3 -m pytest -q -p no:cacheprovider -m "not golden" tests 2>&1 | tee "$OUT/tests.log" | tail -25
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

step "compute-sanitizer memcheck"
PYTHONPATH=$PWD PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck --error-exitcode 9 python3 scripts/sanitize_ops.py > "$OUT/sanitizer.log" 2>&1 \
  || { status=1; echo "SANITIZER FAILED"; }
tail -3 "$OUT/sanitizer.log"

for suite in $SUITES; do
  step "benchmark $suite"
  python3 -m "benchmarks.bench_$suite" --out "$OUT" 2>&1 | tee -a "$OUT/bench.log" | tail -40
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
done
# Logs and the markdown tables travel as one archive (the lent GPU machine returns at most 8 files); the
# JSON tables stay beside it.
(cd "$OUT" && tar czf logs.tgz device.txt build.log tests.log sanitizer.log bench.log ./*.md 2>/dev/null \
  && rm -f device.txt build.log tests.log sanitizer.log bench.log ./*.md)
echo "=== done, status $status"
exit $status
