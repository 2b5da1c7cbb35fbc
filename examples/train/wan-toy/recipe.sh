#!/usr/bin/env bash
# The wan-toy recipe: everything that produces the demo model shipped as the `wan-toy` preset.
#
#   examples/train/wan-toy/recipe.sh [WORKDIR]        (default outputs/wan-toy)
#
# The shipped weights came from this script on one H100 (about 13 minutes; docs/wan-toy.md).
#
# 1. data:    procedural clips (17 frames, 64x64, moving coloured shapes; held-out combinations excluded)
# 2. init:    the untrained checkpoint (`fv wan toy-init`: Wan VAE / DiT / UMT5 at toy size + caption tokenizer)
# 3. vae:     `fv train` algorithm vae on the clips                  -> WORKDIR/vae/export
# 4. latents: `fv preprocess` with that VAE and the frozen text encoder -> WORKDIR/latents
# 5. dit:     `fv train` algorithm finetune (from scratch) on the latents -> WORKDIR/dit/export  (the model)
# 6. eval:    `fv wan toy-eval` of the VAE alone and of the model on the 56 held-out prompts
# 7. distill (not in the default stages; needs fastvideo-dmd2): DMD2 of the model into the 3-step student
#    `wan-toy-fast` (dmd2.yaml; its latents: 1024 clips with the empty negative prompt), then its eval
#    (STAGES="distill" after the others, or DISTILL_TEACHER=wan-toy STAGES="distill" for the shipped one)
#
# Environment: STAGES (the stages to run, default "data init vae latents dit eval"; a later stage reads
# what the earlier ones left in WORKDIR), CLIPS (training clips, 8192), VAE_ARGS / DIT_ARGS (extra
# `fv train` overrides, e.g. "--max_steps 10" for a smoke test), EVAL_NUM (held-out prompts, 56),
# EVAL_DEVICE (best available).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=${1:-outputs/wan-toy}
clips=${CLIPS:-8192}
stages=" ${STAGES:-data init vae latents dit eval} "
mkdir -p "$work"
stamp() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$work/recipe.log"; }
want() { [[ $stages == *" $1 "* ]]; }
device=()
[[ -n ${EVAL_DEVICE:-} ]] && device=(--device "$EVAL_DEVICE")

if want data; then
    stamp "clips: $clips"
    fv wan toy-dataset "$work/clips" --num "$clips" --format npy --seed 0 --overwrite
fi
if want init; then
    stamp "untrained checkpoint"
    fv wan toy-init "$work/init" --seed 0 --overwrite
fi
if want vae; then
    stamp "train the VAE"
    # shellcheck disable=SC2086
    fv train --config "$here/vae.yaml" --model.path "$work/init" --data.path "$work/clips" \
        --output_dir "$work/vae" ${VAE_ARGS:-}
fi
if want latents; then
    stamp "encode latents and captions"
    fv preprocess -m "$work/vae/export" --videos "$work/clips" --captions "$work/clips/captions.json" \
        -o "$work/latents" --num-frames 17 --height 64 --width 64 --max-sequence-length 16 \
        --shard-size 2048 --encode-batch-size 128 --overwrite --no-progress
fi
if want dit; then
    stamp "train the DiT"
    # shellcheck disable=SC2086
    fv train --config "$here/dit.yaml" --model.path "$work/vae/export" --data.path "$work/latents" \
        --output_dir "$work/dit" ${DIT_ARGS:-}
fi
if want eval; then
    stamp "evaluate the VAE alone"
    fv wan toy-eval "$work/vae/export" --autoencoder --num "${EVAL_NUM:-56}" "${device[@]}" --json \
        >"$work/vae-eval.json"
    stamp "evaluate the model on held-out prompts"
    fv wan toy-eval "$work/dit/export" --num "${EVAL_NUM:-56}" "${device[@]}" --json >"$work/eval.json"
fi
if want distill; then
    teacher=${DISTILL_TEACHER:-$work/dit/export}
    stamp "distill $teacher into a 3-step student (DMD2)"
    fv wan toy-dataset "$work/distill-clips" --num 1024 --format npy --seed 1 --overwrite
    fv preprocess -m "$teacher" --videos "$work/distill-clips" --captions "$work/distill-clips/captions.json" \
        -o "$work/distill-latents" --num-frames 17 --height 64 --width 64 --max-sequence-length 16 \
        --shard-size 1024 --encode-batch-size 64 --overwrite --no-progress --negative-prompt ""
    # shellcheck disable=SC2086
    fv train --config "$here/dmd2.yaml" --model.path "$teacher" --data.path "$work/distill-latents" \
        --output_dir "$work/distill" ${DISTILL_ARGS:-}
    fv wan toy-eval "$work/distill/export" --num "${EVAL_NUM:-56}" "${device[@]}" --json >"$work/distill-eval.json"
fi
stamp "done"
