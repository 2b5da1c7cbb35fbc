#!/usr/bin/env bash
# Cosmos-Predict2-2B Video2World (issue #21) on one H100, random weights, 93 x 704 x 1280 (84480 tokens):
# the DiT forward, ours vs diffusers' CosmosTransformer3DModel on the same tensors, eager and each with its
# regional compile; then one generation end to end (T5-11B-sized encoder, Wan VAE, 2B DiT) stage by stage,
# 3 denoising steps with CFG (per-step time given, 35 steps extrapolated). About 6 minutes.
# Extra arguments pass through to bench_cosmos.py (e.g. --skip-generation, --steps 5).
set -uo pipefail
source benchmarks/gpu_env.sh
out=${OUT:-/tmp/out}
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/card.txt"
# bounded so that the copy below runs; each recorded row is also in $out/bench_rows.jsonl at once
timeout 540 python3 benchmarks/bench_cosmos.py "$@" 2>&1 | grep -v -i warning | tee "$out/bench_cosmos.log"
cp docs/benchmarks.md "$out/benchmarks.md"
