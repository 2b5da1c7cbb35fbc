#!/usr/bin/env bash
# GPU session for fastvideo-ltx (issue #20), under 8 minutes on one H100:
#   1. LTX-Video 2B DiT forward, ours vs diffusers, random weights, bf16, eager and compiled (ours
#      compile_blocks vs diffusers compile_repeated_blocks), at 161x512x704 (7392 tokens) and at
#      121x704x1216 (13376 tokens);
#   2. the 0.9.8-distilled multi-scale chain end to end (13B DiT, T5-XXL, VAE, latent upsampler; random
#      weights from the real configs) at the preset's 161x512x704, with per-stage timings.
# Rows go to docs/benchmarks.md (copied to $OUT) and $OUT/bench_rows.jsonl; logs to $OUT/*.log.
set -uo pipefail
source benchmarks/gpu_env.sh
export PYTHONPATH=$PYTHONPATH:$PWD/benchmarks
out=${OUT:-/tmp/out}
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/card.txt"

echo "== LTX-Video 2B DiT forward, 161x512x704 and 121x704x1216, eager then compiled"
timeout 290 python3 benchmarks/bench_ltx.py dit --config ltx-video-2b --shapes 161x512x704,121x704x1216 \
    --compile 2>&1 | grep -v -i warn | tee "$out/ltx_dit.log"
echo "== LTX-Video 0.9.8-distilled multi-scale chain (13B), 161x512x704"
timeout 170 python3 benchmarks/bench_ltx.py chain --dit ltx-video-13b --frames 161 --height 512 --width 704 \
    2>&1 | grep -v -i warn | tee "$out/ltx_chain.log"
cp docs/benchmarks.md "$out/benchmarks.md"
