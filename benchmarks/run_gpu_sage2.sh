#!/usr/bin/env bash
# Build SageAttention 2's Hopper kernels on the GPU machine and time them (issue #24). After
# `bash benchmarks/sage2_bundle.sh` here: carry [".sage"], timeout_s 600. The wheel comes back under $OUT
# (carry it later as .whl/ to skip the build); the timings compare `sageattn_qk_int8_pv_fp8_cuda` (sm90)
# with cuDNN SDPA at Wan 14B / 1.3B shapes in the same process (benchmarks/sage2_probe.py).
set -uo pipefail
out=${OUT:-/tmp/out}
mkdir -p "$out" /tmp/sage2-src
tar -xzf .sage/sage2-src.tar.gz -C /tmp/sage2-src || exit 3
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/card.txt"
which nvcc || export PATH=$PATH:/usr/local/cuda/bin
nvcc --version | tail -2 | tee -a "$out/card.txt"
start=$(date +%s)
(cd /tmp/sage2-src && TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 EXT_PARALLEL=2 timeout "${BUILD_LIMIT:-420}" \
    python3 -m pip wheel --no-deps --no-build-isolation --no-index -w "$out" . 2>&1 | grep -v "Warning\|warning #\|ptxas info\|bytes stack frame\|^ *$" | tail -30) | tee "$out/build.txt"
echo "build: $(( $(date +%s) - start )) s" | tee -a "$out/build.txt"
ls -la "$out"
whl=$(ls "$out"/sageattention-*.whl 2>/dev/null | head -1)
[ -n "$whl" ] || exit 4
python3 -m pip install -q --no-index --no-deps --target /tmp/sage2-site "$whl" && \
    PYTHONPATH=/tmp/sage2-site:$PWD/core/src timeout 120 python3 benchmarks/sage2_probe.py 2>&1 | tee "$out/sage2_probe.txt"
