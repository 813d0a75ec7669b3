#!/usr/bin/env bash
# The whole GPU check of a session with a lent GPU, as one command on the device machine.
#
# The H200 image has numba-cuda 0.30.4 with numpy 2.5, which it cannot compile kernels with
# (it refers to np.row_stack): a numpy 2.4 wheel for Python 3.12 travels in .whl/. Once, here:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 -d .whl "numpy==2.4.*"
# Then the device tool's run, with carry [".whl"] and timeout_s 540:
#   bash scripts/gpu_session.sh
# Results: $OUT/gpu_check.log and $OUT/gpu_check.json. Every rule (Adam/AdamW/AMSGrad, SGD,
# Adagrad, RMSprop) is checked for exactness in the one run, with full state and with bfloat16
# and 8-bit state (scripts/gpu_formats.py, which also times them at 1e8). Both launchers are
# checked for full state (Numba's, the default, and the opt-in driver launch; compressed state
# uses Numba's only); the "driver launch, overall" row says whether
# the driver launch passed everything, the condition for making it the default. Extra
# arguments go to gpu_check.py (--quick: checks without timings; --smoke: tiny sizes, for the
# CUDA simulator).
set -o pipefail
cd "$(dirname "$0")/.." || exit 1
out=${OUT:-$(mktemp -d)}
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee "$out/gpu.txt"
timeout "${GPU_CHECK_TIMEOUT:-480}" python3 scripts/gpu_check.py --out "$out" "$@" 2>&1 \
  | tee "$out/gpu_check.log"
