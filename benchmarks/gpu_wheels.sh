#!/usr/bin/env bash
# Fetch (here, where pip reaches the index) the wheels the GPU machine lacks, into .whl/ (git-ignored
# through .git/info/exclude), for benchmarks/gpu_check.sh. The GPU image has torch, numpy, einops,
# safetensors, pillow, matplotlib, tqdm, pyyaml, httpx, pytest, orbax and jax; funcml also needs tyro
# (and its small dependencies), the service's fastapi / starlette / uvicorn / python-multipart, espeak-ng
# for the speech corpus, and monai for bench_vs_monai. Versions: constraints.txt's.
#
#   bash benchmarks/gpu_wheels.sh          # then: device run with carry [".whl"] (see gpu_check.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
pin() { grep -i "^$1==" constraints.txt | head -1; }
names=(tyro docstring_parser shtab typeguard typing_extensions fastapi starlette uvicorn python-multipart
       annotated-types pydantic pydantic_core annotated-doc espeakng-loader monai)
rm -rf .whl && mkdir -p .whl
for n in "${names[@]}"; do
  spec=$(pin "$n" || true)
  spec=${spec:-$n}
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "$spec"
done
du -sh .whl && ls .whl
