#!/usr/bin/env bash
# Everything that needs a GPU, in one run on a machine with one (the `device` machine's image has
# torch, pytest, numpy, safetensors, rich, matplotlib and scikit-learn; the CLI is not needed):
# the CUDA tests, torch's sync debug mode over a whole fit, and the GPU benchmark.
# Results go to $OUT (or bench/gpu-results): tests.txt, speed.txt, speed.json, device.txt.
#     bash bench/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-bench/gpu-results}
mkdir -p "$out"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
python3 - <<'PY' | tee "$out/device.txt"
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name())
PY
python3 -m pytest -p no:cacheprovider -rs -o addopts="" tests/test_cuda.py \
    "tests/test_doctor_owners.py::test_the_cuda_rng_is_left_as_found_even_when_the_doctor_initializes_cuda" \
    "tests/test_averaging.py::test_ema_update_makes_no_host_sync_on_cuda" 2>&1 | tee "$out/tests.txt"
tests=${PIPESTATUS[0]}
python3 bench/gpu_speed.py --compile --json "$out/speed.json" 2>&1 | tee "$out/speed.txt"
speed=${PIPESTATUS[0]}
echo "tests exit $tests, benchmark exit $speed" | tee -a "$out/device.txt"
exit $(( tests || speed ))
