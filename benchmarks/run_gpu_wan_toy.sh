#!/usr/bin/env bash
# GPU session that trains the wan-toy demo model with the committed recipe
# (examples/train/wan-toy/recipe.sh) and sends back the model and the training logs as two tarballs.
# Usage on the GPU machine: bash benchmarks/run_gpu_wan_toy.sh   (VAE_ARGS / DIT_ARGS pass through)
set -uo pipefail
source benchmarks/gpu_env.sh
fv --version 2>/dev/null; fv plugins list 2>&1 | head -5
out=${OUT:-/tmp/out}
mkdir -p "$out"
work=/tmp/wan-toy
nvidia-smi --query-gpu=name --format=csv,noheader | tee "$out/card.txt"
bash examples/train/wan-toy/recipe.sh "$work" 2>&1 | grep -v -i "warning" | tee "$out/recipe-stdout.log"
tar -C "$work/dit" -czhf "$out/wan-toy-model.tgz" export
tar -C "$work" -czf "$out/wan-toy-logs.tgz" recipe.log eval.json vae/metrics.jsonl vae/config.yaml vae17/metrics.jsonl \
    dit/metrics.jsonl dit/config.yaml latents/manifest.json clips/captions.json 2>/dev/null
ls -la "$out"
