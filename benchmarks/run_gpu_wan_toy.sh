#!/usr/bin/env bash
# GPU session that trains the wan-toy demo model with the committed recipe
# (examples/train/wan-toy/recipe.sh) and sends back the model and the training logs as two tarballs.
# Usage on the GPU machine: bash benchmarks/run_gpu_wan_toy.sh   (VAE_ARGS / DIT_ARGS pass through)
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/core/src:$PWD/plugins/fastvideo-wan/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 \
    FASTVIDEO_PROGRESS=0
# entry points without an install (the machine has no network and maybe no setuptools)
for d in "fastvideo_core:console_scripts:fv = fastvideo.cli:main" "fastvideo_wan:fastvideo:wan = fastvideo_wan.plugin"; do
    IFS=: read -r name group entry <<<"$d"
    info=/tmp/site/$name-0.1.0.dist-info
    mkdir -p "$info"
    printf 'Metadata-Version: 2.1\nName: %s\nVersion: 0.1.0\n' "${name//_/-}" >"$info/METADATA"
    printf '[%s]\n%s\n' "$group" "$entry" >"$info/entry_points.txt"
done
mkdir -p /tmp/bin && printf '#!/bin/sh\nexec python3 -m fastvideo.cli "$@"\n' >/tmp/bin/fv && chmod +x /tmp/bin/fv
export PATH=/tmp/bin:$PATH
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
