#!/usr/bin/env bash
# Issue #24, the `fp8` attention backend (core/src/fastvideo/attention/fp8_attn.py: cuDNN's fused FP8 attention,
# and FlashAttention-3's FP8 forward where its wheel is in .whl/ from benchmarks/run_gpu_fa3.sh) on one H100
# (carry [".fp8c"] from benchmarks/fp8_carry.sh: the .whl wheels but imageio-ffmpeg, with the sageattention
# wheel and nvidia_cudnn_frontend-*.whl from benchmarks/cudnn_frontend_bundle.sh; add ".fa3" once it holds
# FlashAttention-3's wheel from benchmarks/run_gpu_fa3.sh), in two calls that each fit the
# 10-minute limit: `bash benchmarks/run_gpu_fp8_attn.sh` (1-3, about 7 minutes), then
# `STEPS="quality toy" bash benchmarks/run_gpu_fp8_attn.sh` (4, about 5 minutes):
#   1. its tests on the GPU (the quantization kernel against PyTorch; cuDNN against the plain-PyTorch spec and
#      exact attention; eager and compiled seam);
#   2. benchmarks/fp8_attn_probe.py: cuDNN FP8 (and FA3 FP8) against SageAttention 2's Hopper kernel and bf16 at Wan
#      14B / 1.3B self-attention shapes (ms, TFLOPS, the quantization and the kernel apart, error vs fp32);
#   3. Wan2.1-I2V-14B-480P s/step: diffusers, FP8 + sage compiled, FP8 + fp8 attention compiled (each installed
#      kernel; PROFILE_TOP=8);
#   4. random-weight Wan 1.3B quality rows (PSNR against bf16) and wan-toy's held-out prompts with fp8 attention.
# STEPS picks parts (default "tests probe i2v").
set -uo pipefail
source benchmarks/gpu_env.sh
out=${OUT:-/tmp/out}
mkdir -p "$out"
export OUT=$out
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/card.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cudnn', torch.backends.cudnn.version())" | tee -a "$out/card.txt"
for s in ${STEPS:-tests probe i2v}; do
    echo "== $s"
    case $s in
    tests) timeout 120 python3 -m pytest -q -p no:cacheprovider core/tests/test_attention_fp8.py 2>&1 \
        | tee "$out/fp8_attn_gpu_tests.txt" | tail -15 ;;
    probe) (cd benchmarks && timeout 80 python3 fp8_attn_probe.py 2>&1 | grep -v -i warning | tee "$out/fp8_attn_probe.txt") ;;
    i2v) SECTIONS=i2v14b I2V_LIMIT=320 PROFILE_TOP=${PROFILE_TOP:-8} \
        I2V_VARIANTS="diffusers;fp8+sage compiled;fp8+fp8-attn compiled, cudnn;fp8+fp8-attn compiled, fa3" \
        bash benchmarks/run_gpu_speed.sh 2>&1 | grep '"section"' ;;
    quality) timeout 150 python3 benchmarks/bench_speed.py --section quality --steps 12 2>&1 | grep '"section"' \
        | grep -E 'bf16|sage|fp8' | tee "$out/quality.txt" ;;
    toy) timeout 120 python3 benchmarks/speed_toy_eval.py --device cuda --configs baseline,sage,fp8-attn,fp8+fp8-attn \
        2>&1 | grep -v -i warning | tail -6 | tee "$out/toy_eval.txt" ;;
    *) echo "unknown step $s" ;;
    esac
done
