#!/usr/bin/env bash
# Fused Triton kernels of fastvideo.kernels (issues #20, #21, #23) on one H100, about 5 to 6 minutes
# (timeouts sum to 9):
# 1. the `gpu` tests: bf16 CUDA kernels vs the PyTorch reference (gated_residual_adaln and
#    rms_norm_rope_pair included), Cosmos / LTX-Video / LTX-2 / Wan forwards fused vs unfused (eager);
# 2. bench_fused.py, the steps fused since the last run: residual + next adaLN (two kernels before,
#    one now), LTX-2's q and k norm + split RoPE (two launches before, one pair now), and a probe of
#    cuBLASLt's GELU epilogue for LTX-2's fc1 (not used by the model); reference vs fused vs compiled;
# 3. the Cosmos-Predict2-2B DiT eager forward at 93x704x1280 (84480 tokens) with the kernels, against
#    diffusers, the calls interleaved
#    (the "eager, fused kernels" rows are recorded in docs/benchmarks.md), profiled per input shape; before
#    it, benchmarks/sdpa_layout.py: cuDNN SDPA at Cosmos' self- and cross-attention shapes against the
#    storage layout of q, k, v, and benchmarks/sdpa_power.py: the card's clock with and without elementwise
#    work between attention calls (what is left of the gap to diffusers' attention time, issue #21);
# 4. the LTX-2 19B DiT eager forward (48 layers) at 121x768x1280 against diffusers, the DiT alone
#    (--skip-generation builds nothing else): $OUT/ltx2_bench.json and $OUT/ltx2_rows.md.
set -uo pipefail
source benchmarks/gpu_env.sh
out=${OUT:-/tmp/out}
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/card.txt"
echo "== gpu tests"
timeout 100 python3 -m pytest -q -m gpu -p no:cacheprovider core/tests/test_kernels.py \
    plugins/fastvideo-cosmos/tests/test_fused.py plugins/fastvideo-ltx/tests/test_fused.py \
    plugins/fastvideo-ltx/tests/ltx2/test_ltx2_fused.py plugins/fastvideo-wan/tests/test_fused.py 2>&1 \
    | tail -25 | tee "$out/gpu_tests.log"
echo "== bench_fused.py (reference vs fused vs compiled, bf16): the new fusions"
timeout 110 python3 benchmarks/bench_fused.py --only "two kernels" gated_residual_adaln rms_norm_rope_pair probe \
    2>&1 | grep -v -i warn | tee "$out/bench_fused.log"
echo "== SDPA (cuDNN) against q/k/v storage layout: Cosmos-2B self-attention and cross-attention to 512 tokens"
timeout 60 python3 benchmarks/sdpa_layout.py 2>&1 | tee "$out/sdpa_layout.log"
timeout 30 python3 benchmarks/sdpa_layout.py --kv-tokens 512 2>&1 | tee -a "$out/sdpa_layout.log"
echo "== the same self-attention back to back and with elementwise work between calls (SM clock, power)"
timeout 45 python3 benchmarks/sdpa_power.py 2>&1 | tee "$out/sdpa_power.log"
echo "== Cosmos-Predict2-2B DiT eager forward: fused kernels (profiled: \$OUT/prof/dit_*_shapes.txt)"
export BENCH_PROFILE="$out/prof"
timeout 120 python3 benchmarks/bench_cosmos.py --no-compile --skip-generation \
    2>&1 | grep -v -i warn | tee "$out/cosmos_fused.log"
unset BENCH_PROFILE
echo "== LTX-2 DiT eager forward (48 layers): fused kernels"
(cd benchmarks && timeout 150 python3 bench_ltx2.py --frames 121 --height 768 --width 1280 --skip-generation \
    2>&1 | grep -v -i -E "warning|torchao|it/s" | tee "$out/ltx2_fused.log")
cp docs/benchmarks.md "$out/benchmarks.md"
