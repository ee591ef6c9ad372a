#!/usr/bin/env bash
# The prepared GPU check (issue 16): the CUDA test suite, then the benchmarks on CUDA, in one call of
# the device tool, writing everything under $OUT (or ./gpu-out):
#
#   bash benchmarks/gpu_wheels.sh                                  # here, once: the missing wheels
#   device run: command "bash benchmarks/gpu_check.sh", carry [".whl"], timeout_s 540
#
# Budget: about 8 minutes on one H200 (tests ~2, bench_vs_monai ~2, the train-step sweep ~1, the main
# job ~3). Each part is time-boxed, so a slow part cannot eat the others' time.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"; } 2>&1 | tee "$out/machine.txt"
part() {  # part NAME SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  echo "== $name (at most ${limit} s): $*"
  local t0=$SECONDS
  timeout "$limit" "$@" > "$out/$name.log" 2>&1
  echo "   rc $? in $((SECONDS - t0)) s"; tail -25 "$out/$name.log"
}
part cuda_tests 180 python3 -m pytest -q -p no:cacheprovider -m cuda -x tests/test_cuda.py tests/test_random.py tests/test_seg_shapes.py
part device_tests 60 python3 -m pytest -q -p no:cacheprovider tests/test_device.py
part bench_vs_monai 150 python3 benchmarks/bench_vs_monai.py --device cuda --out "$out/bench_vs_monai.json"
part bench_train_step 90 python3 benchmarks/bench_train_step.py --device cuda --tasks unet-transformer paraformer-sim2real --no-compile --out "$out/bench_train_step.json"
part main_job 240 python3 experiments/main.py --device cuda --runs-dir /tmp/gpu-runs
cp /tmp/gpu-runs/main-summary.json "$out/" 2>/dev/null || true
