#!/usr/bin/env bash
# Fused Triton kernels of fastvideo.kernels (issues #20, #21, #23) on one H100, about 4 minutes:
# 1. the `gpu` tests: bf16 CUDA kernels vs the PyTorch reference, Cosmos / LTX-Video / Wan blocks fused vs
#    unfused (eager);
# 2. bench_fused.py: each elementwise step at Cosmos / LTX / Wan widths and 84480 tokens, reference vs fused
#    vs torch.compile of the reference (rows to docs/benchmarks.md);
# 3. the Cosmos-Predict2-2B DiT eager forward at 93x704x1280 (84480 tokens), ours with FASTVIDEO_FUSED=0,
#    then with the kernels, each against diffusers (the "eager, fused kernels" row is recorded).
set -uo pipefail
source benchmarks/gpu_env.sh
out=${OUT:-/tmp/out}
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/card.txt"
echo "== gpu tests"
timeout 150 python3 -m pytest -q -m gpu -p no:cacheprovider core/tests/test_kernels.py \
    plugins/fastvideo-cosmos/tests/test_fused.py plugins/fastvideo-ltx/tests/test_fused.py \
    plugins/fastvideo-wan/tests/test_fused.py 2>&1 | tail -25 | tee "$out/gpu_tests.log"
echo "== bench_fused.py (reference vs fused vs compiled, bf16)"
timeout 170 python3 benchmarks/bench_fused.py 2>&1 | grep -v -i warn | tee "$out/bench_fused.log"
echo "== Cosmos-Predict2-2B DiT eager forward: FASTVIDEO_FUSED=0"
FASTVIDEO_FUSED=0 timeout 120 python3 benchmarks/bench_cosmos.py --no-compile --skip-generation --no-record \
    2>&1 | grep -v -i warn | tee "$out/cosmos_unfused.log"
echo "== Cosmos-Predict2-2B DiT eager forward: fused kernels"
timeout 120 python3 benchmarks/bench_cosmos.py --no-compile --skip-generation \
    2>&1 | grep -v -i warn | tee "$out/cosmos_fused.log"
cp docs/benchmarks.md "$out/benchmarks.md"
