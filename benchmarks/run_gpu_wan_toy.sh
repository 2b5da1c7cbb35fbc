#!/usr/bin/env bash
# GPU session that trains the wan-toy demo model with the committed recipe
# (examples/train/wan-toy/recipe.sh) and sends back what it made as tarballs.
#
#   bash benchmarks/run_gpu_wan_toy.sh                 # the whole recipe
#   STAGES="data init vae" bash benchmarks/run_gpu_wan_toy.sh          # split across calls: the VAE ...
#   VAE_TGZ=.gpu/vae.tgz STAGES="data latents dit eval" bash ...      # ... then the rest from that VAE
#
# VAE_TGZ: a vae.tgz that an earlier call sent back (vae/export and its logs), unpacked into the
# work folder first. VAE_ARGS / DIT_ARGS pass through to the recipe.
set -uo pipefail
source benchmarks/gpu_env.sh
out=${OUT:-/tmp/out}
mkdir -p "$out"
work=/tmp/wan-toy
rm -rf "$work" && mkdir -p "$work"  # a warm machine keeps the last call's folder
nvidia-smi --query-gpu=name --format=csv,noheader | tee "$out/card.txt"
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$out/card.txt"
if [[ -n ${VAE_TGZ:-} ]]; then tar -xzf "$VAE_TGZ" -C "$work"; fi
start=$(date +%s)
bash examples/train/wan-toy/recipe.sh "$work" 2>&1 | grep -v -i "warning" | tee "$out/recipe-stdout.log"
echo "recipe wall: $(($(date +%s) - start)) s" | tee -a "$out/recipe-stdout.log"
if [[ " ${STAGES:-vae} " == *" vae "* ]]; then
    fv wan toy-eval "$work/vae/export" --autoencoder --json >"$work/vae-eval.json" 2>/dev/null
    cat "$work/vae-eval.json"
    tar -C "$work" -czf "$out/vae.tgz" vae/export vae/metrics.jsonl vae/config.yaml vae-eval.json recipe.log
fi
if [[ -d $work/dit/export ]]; then
    tar -C "$work/dit" -czhf "$out/wan-toy-model.tgz" export
    tar -C "$work" -czf "$out/wan-toy-logs.tgz" recipe.log eval.json vae-eval.json dit/metrics.jsonl \
        dit/config.yaml latents/manifest.json 2>/dev/null
    cat "$work/eval.json" | head -c 600
fi
ls -la "$out"
