#!/usr/bin/env bash
# GPU check of fastvideo-sta (issue #19), one H100 or H200, under 9 minutes (each part bounded by timeout):
# 0. launch-config sweep of the Triton kernels (benchmarks/sta_config_sweep.py, <= 3 min): forward
#    (and backward) at HunyuanVideo's 30x48x80 + 256 and Wan's 21x30x52 over a grid of
#    BLOCK_M,BLOCK_N,num_warps,num_stages against the autotuned default and cuDNN dense x kept fraction
#    ($OUT/sta_sweep.json, $OUT/sta_sweep.txt);
# 1. the plugin's gpu tests: test_ops.py (forward and every gradient at medium shapes against the
#    reference; sampled rows at HunyuanVideo's 30x48x80 and 32x45x80 grids + text against the reference
#    over every key; the whole-grid window against cuDNN), test_configs.py (the TMA variant against the
#    reference, whole and partial tiles);
# 2. kernel timings with the default (autotuned) configs (forward, forward+backward) at 30x48x80+256 (24 heads), 32x45x80+256 (24 heads) and
#    Wan's 21x30x52 (12 heads), the paper's windows and a ~91 % sparse window, against SDPA cuDNN and
#    flash in the same run: kept fraction and time / (cuDNN dense x kept);
# 3. HunyuanVideo 13B DiT forward (random weights, bf16) at 125x720x1280 with sta at the anchor's
#    published strategy (a sparse step) against dense sdpa.
# STA_ARGS pass through to bench_sta.py (e.g. STA_ARGS="--num-layers 10 --num-single-layers 20").
# Results go to $OUT (and rows to docs/benchmarks.md).
set -uo pipefail
source benchmarks/gpu_env.sh
out=${OUT:-/tmp/out}
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/card.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$out/card.txt"

echo "== sta: fv doctor"
fv doctor 2>&1 | grep -A3 "^  sta" | tee "$out/doctor.txt"

echo "== sta launch-config sweep"
timeout 180 python3 benchmarks/sta_config_sweep.py --out "$out" --budget-s ${STA_SWEEP_BUDGET:-140} 2>&1 | grep -v -i "warning" | tee "$out/sta_sweep.txt"

echo "== sta kernel tests (GPU)"
timeout 120 python3 -m pytest -q -m gpu -p no:cacheprovider plugins/fastvideo-sta/tests/test_ops.py plugins/fastvideo-sta/tests/test_configs.py 2>&1 | tail -5 | tee "$out/sta_gpu_tests.txt"

echo "== sta kernels and HunyuanVideo DiT"
timeout 210 python3 benchmarks/bench_sta.py --out "$out" ${STA_ARGS:-} 2>&1 | grep -v -i "warning" | tee "$out/bench_sta.txt"
cp docs/benchmarks.md "$out/benchmarks.md" 2>/dev/null || true
