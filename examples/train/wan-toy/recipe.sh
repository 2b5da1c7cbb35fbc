#!/usr/bin/env bash
# The wan-toy recipe: everything that produces the demo model shipped as the `wan-toy` preset.
#
#   examples/train/wan-toy/recipe.sh [WORKDIR]        (default outputs/wan-toy)
#
# The shipped weights came from this script on a 2-core CPU (about 55 minutes; docs/wan-toy.md).
#
# 1. procedural clips (17 frames, 64x64, moving coloured shapes; held-out combinations excluded)
# 2. the untrained checkpoint (`fv wan toy-init`: Wan VAE / DiT / UMT5 at toy size + caption tokenizer)
# 3. `fv train` algorithm vae on the clips (9 frames)            -> WORKDIR/vae/export
#    then on all 17 frames                                        -> WORKDIR/vae17/export
# 4. `fv preprocess` with that VAE and the frozen text encoder   -> WORKDIR/latents
# 5. `fv train` algorithm finetune (from scratch) on the latents  -> WORKDIR/dit/export  (the model)
# 6. `fv wan toy-eval` on the 56 held-out prompts                 -> WORKDIR/eval.json
#
# Environment: CLIPS (number of training clips, 4096), VAE_ARGS / DIT_ARGS (extra `fv train`
# overrides, e.g. "--max_steps 10" for a smoke test), EVAL_NUM (held-out prompts to score, 56).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=${1:-outputs/wan-toy}
clips=${CLIPS:-4096}
mkdir -p "$work"
stamp() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$work/recipe.log"; }

stamp "clips: $clips"
fv wan toy-dataset "$work/clips" --num "$clips" --format npy --seed 0 --overwrite
stamp "untrained checkpoint"
fv wan toy-init "$work/init" --seed 0 --overwrite
stamp "train the VAE"
# shellcheck disable=SC2086
fv train --config "$here/vae.yaml" --model.path "$work/init" --data.path "$work/clips" \
    --output_dir "$work/vae" ${VAE_ARGS:-}
stamp "train the VAE on 17 frames"
# shellcheck disable=SC2086
fv train --config "$here/vae-17f.yaml" --model.path "$work/vae/export" --data.path "$work/clips" \
    --output_dir "$work/vae17" ${VAE_ARGS:-}
stamp "encode latents and captions"
fv preprocess -m "$work/vae17/export" --videos "$work/clips" --captions "$work/clips/captions.json" \
    -o "$work/latents" --num-frames 17 --height 64 --width 64 --max-sequence-length 16 \
    --shard-size 1024 --encode-batch-size 64 --overwrite --no-progress
stamp "train the DiT"
# shellcheck disable=SC2086
fv train --config "$here/dit.yaml" --model.path "$work/vae17/export" --data.path "$work/latents" \
    --output_dir "$work/dit" ${DIT_ARGS:-}
stamp "evaluate on held-out prompts"
fv wan toy-eval "$work/dit/export" --num "${EVAL_NUM:-56}" --device "${EVAL_DEVICE:-cpu}" --json > "$work/eval.json"
stamp "done: the model is $work/dit/export"
