#!/usr/bin/env bash
# Makes .fp8c/ (git-ignored): the wheels of .whl/ that the fp8-attention GPU runs need (diffusers and its missing
# dependencies, sageattention, nvidia-cudnn-frontend), without imageio-ffmpeg (29 MB; these runs write no
# video), so that carrying it with .fa3/ (FlashAttention-3's sources and wheel) stays under the device's 64 MiB.
#     bash benchmarks/fp8_carry.sh      (after benchmarks/cudnn_frontend_bundle.sh)
set -euo pipefail
ls .whl/nvidia_cudnn_frontend-*.whl >/dev/null  # run benchmarks/cudnn_frontend_bundle.sh first
rm -rf .fp8c && mkdir -p .fp8c
for w in .whl/*.whl; do
    case $(basename "$w") in imageio_ffmpeg-*) ;; *) cp "$w" .fp8c/ ;; esac
done
du -sh .fp8c .fa3 2>/dev/null
