#!/usr/bin/env bash
# LTX-2 (issue #23) on one H100/H200 with random weights at 121x768x1280: our audio-video DiT against
# diffusers' eager LTX2VideoTransformer3DModel (same tensors, one forward, bf16), then the two-stage
# text-to-audio-video generation end to end, stage by stage. Results: $OUT/ltx2_bench.json and
# $OUT/ltx2_rows.md (rows for docs/benchmarks.md). Falls back to 24 DiT layers if 48 do not fit.
# Last, our DiT again with compiled blocks (--compile). LTX2_ARGS passes extra flags to benchmarks/bench_ltx2.py (e.g. "--steps 20").
set -uo pipefail
source benchmarks/gpu_env.sh
out=${OUT:-/tmp/out}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/card.txt"
cd benchmarks
if ! timeout 420 python3 bench_ltx2.py --frames 121 --height 768 --width 1280 --compile ${LTX2_ARGS:-} 2>&1 \
    | grep -v -i -E "warning|torchao|it/s" | tee "$out/ltx2.log"; then
  echo "48-layer run failed (see ltx2.log)" | tee -a "$out/ltx2.log"
fi
if grep -q -i "out of memory" "$out/ltx2.log"; then
  timeout 240 python3 bench_ltx2.py --frames 121 --height 768 --width 1280 --layers 24 ${LTX2_ARGS:-} 2>&1 \
    | grep -v -i -E "warning|torchao|it/s" | tee "$out/ltx2_24layers.log"
fi
