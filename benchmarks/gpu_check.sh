#!/usr/bin/env bash
# GPU truth in one command, on a fresh GPU machine with the project tree and no network:
#   bash benchmarks/gpu_check.sh [--phase all|tests|bench|wheel] [--out DIR]
# installs covkernels from the tree (no dependencies fetched; a .whl/ folder of carried wheels, e.g.
# diffusers and its needs, is installed first), runs the whole python_tests suite on the GPU (Triton
# kernels compiled for real, bf16 included, the race checks), every microbenchmark, the JVP-cost and
# step-cost benchmarks and `covkernels bench`, and writes at most 9 files under DIR (default $OUT, else
# benchmarks/results/gpu):
# info.json, tests.log, ops_cuda.json, ops_cuda.md, jvp_cost_cuda.md, step_cost_cuda.md,
# bench_cuda_unet64.json (`covkernels bench`), wheel.log, summary.md.
# Phases fit the device tool's 10-minute call: `--phase tests` then `--phase bench` if needed.
# `--phase wheel` (also part of `all`): the abi3 wheel built on the CPU machine (`pip wheel --no-build-isolation
# --no-deps . -w dist`, carried as dist/) installed beside the image's own torch (2.11), `_C` loaded, and the
# extension and registered-op tests run against it (wheel.log).
set -uo pipefail
cd "$(dirname "$0")/.."
phase=all
out=${OUT:-benchmarks/results/gpu}
while [ $# -gt 0 ]; do
  case "$1" in
    --phase) phase=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
mkdir -p "$out"
export PYTHONUNBUFFERED=1
rev=${COVKERNELS_GIT_REV:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  site=$(mktemp -d)  # carried wheels (diffusers, ...) for an image without network
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" .whl/*.whl
  export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
fi
python3 -m pip install -q --no-build-isolation --no-deps --no-index -e . > "$out/install.tmp" 2>&1 \
  || export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # offline fallback: run from the tree
rm -f "$out/install.tmp"
python3 -m covkernels info --json > "$out/info.json" 2>&1
status_tests=skipped status_bench=skipped status_wheel=skipped
if [ "$phase" = all ] || [ "$phase" = tests ]; then
  timeout 420 python3 -m pytest python_tests -q -p no:cacheprovider -ra > "$out/tests.log" 2>&1
  status_tests=$?
fi
if [ "$phase" = all ] || [ "$phase" = bench ]; then
  status_bench=0
  timeout 240 python3 -m pytest benchmarks/bench_ops.py -q -p no:cacheprovider \
    --benchmark-json="$out/ops_cuda.json" > /dev/null 2>&1 || status_bench=$?
  python3 benchmarks/bench_ops.py --summarize "$out/ops_cuda.json" > "$out/ops_cuda.md" 2>&1 || status_bench=$?
  (cd benchmarks && timeout 120 python3 jvp_cost.py --device cuda --batch 64 --name jvp_cost_cuda \
     && timeout 120 python3 step_cost.py --device cuda --batch 64 --size 64 --guided-batches 1 8 64 --name step_cost_cuda) \
     > /dev/null 2>&1 || status_bench=$?
  cp benchmarks/results/jvp_cost_cuda.md benchmarks/results/step_cost_cuda.md "$out/" 2>/dev/null || true
  # the user-facing per-step overhead on the 64x64 UNet at batch 64 (every sampler, reference vs triton)
  timeout 180 python3 -m covkernels bench --model unet64 --shape 64,3,64,64 --device cuda \
    --out "$out/bench_cuda_unet64.json" > /dev/null 2>&1 || status_bench=$?
fi
if [ "$phase" = all ] || [ "$phase" = wheel ]; then
  status_wheel="no dist/covkernels-*abi3*.whl carried"
  if ls dist/covkernels-*abi3*.whl > /dev/null 2>&1; then
    venv=$(mktemp -d)/venv
    { python3 -m venv --system-site-packages "$venv" \
      && "$venv/bin/pip" install -q --no-index --no-deps dist/covkernels-*abi3*.whl \
      && (cd /tmp && "$venv/bin/python" -m covkernels info) \
      && (cd /tmp && "$venv/bin/python" -m pytest -q -p no:cacheprovider "$OLDPWD/python_tests/ops/test_extension.py" \
          "$OLDPWD/python_tests/ops/test_registered_ops.py"); } > "$out/wheel.log" 2>&1
    status_wheel=$?
  fi
fi
{
  echo "# GPU check"
  echo
  echo "git $rev; $(python3 -c 'import torch, triton; print(torch.cuda.get_device_name(0), "| torch", torch.__version__, "| CUDA", torch.version.cuda, "| triton", triton.__version__)' 2>&1)"
  echo
  echo "- tests: exit status $status_tests ($(tail -n 1 "$out/tests.log" 2>/dev/null))"
  echo "- benchmarks: exit status $status_bench"
  echo "- abi3 wheel on this torch: $status_wheel ($(tail -n 1 "$out/wheel.log" 2>/dev/null))"
  echo
  echo "Reproduce: \`bash benchmarks/gpu_check.sh --phase $phase\`"
} > "$out/summary.md"
cat "$out/summary.md"
