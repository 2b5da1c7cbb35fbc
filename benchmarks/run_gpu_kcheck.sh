#!/usr/bin/env bash
# The Triton kernels on the GPU machine's own compiler (triton 3.6, CUDA 13) and on one H100, about 3 to 5
# minutes (timeouts sum to 8):
# 1. benchmarks/compile_check.py: every kernel and autotune config compiled for sm_90 (registers, spills);
# 2. the `gpu` tests with FASTVIDEO_FUSED_STRICT=1 (a kernel that fails to build raises instead of falling
#    back to PyTorch, so a broken kernel cannot pass as its reference): each fused op at the models'
#    widths (test_kernels_fallback.py), the bf16 kernel tests, FP8 and sage;
# 3. the fused model forwards (Cosmos, LTX-Video, LTX-2, Wan, HunyuanVideo) fused vs unfused, strict.
set -uo pipefail
source benchmarks/gpu_env.sh
out=${OUT:-/tmp/out}
mkdir -p "$out"
export FASTVIDEO_FUSED_STRICT=1 TRITON_DEFAULT_FP_FUSION=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/card.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$out/card.txt"
echo "== compile_check.py (sm_90, this machine's triton)"
timeout 200 python3 benchmarks/compile_check.py 2>&1 | grep -v -i warn | tee "$out/compile_check.txt"
echo "== gpu tests: kernels (strict)"
timeout 150 python3 -m pytest -q -m gpu -p no:cacheprovider core/tests/test_kernels_fallback.py \
    core/tests/test_kernels.py core/tests/test_optimize_fp8.py $(ls core/tests/test_*sage*.py 2>/dev/null) \
    2>&1 | tail -30 | tee "$out/gpu_kernel_tests.log"
echo "== gpu tests: fused model forwards (strict)"
timeout 130 python3 -m pytest -q -m gpu -p no:cacheprovider plugins/fastvideo-cosmos/tests/test_fused.py \
    plugins/fastvideo-ltx/tests/test_fused.py plugins/fastvideo-ltx/tests/ltx2/test_ltx2_fused.py \
    plugins/fastvideo-wan/tests/test_fused.py plugins/fastvideo-hunyuan/tests/test_fused.py \
    2>&1 | tail -25 | tee "$out/gpu_fused_tests.log"
