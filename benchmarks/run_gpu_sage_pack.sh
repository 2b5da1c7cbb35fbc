#!/usr/bin/env bash
# Issue #24, our V packing for the sageattention package's Hopper kernel (the default; FASTVIDEO_SAGE_V_PACK=0 off,
# core/src/fastvideo/attention/sage_pack.py), on one H100 in one call (carry [".whl"]: it holds the
# sageattention wheel built by benchmarks/run_gpu_sage2.sh; about 8 minutes):
#   1. the sage GPU tests (the packing against the package's per_channel_fp8; both paths against SDPA);
#   2. benchmarks/v_pack_probe.py: the package's V packing against ours, timed, at Wan 14B / 1.3B shapes;
#   3. benchmarks/gemm_probe.py: the FP8 block linears' shapes, row-wise against tensor-wise scaling;
#   4. Wan2.1-I2V-14B-480P s/step: diffusers, FP8 + sage compiled with our packing and with the package's;
#   5. wan-toy's held-out prompts with sage and FP8 + sage (speed_toy_eval.py; the package kernel now takes
#      wan-toy's self-attention, since only cross-attention runs exact).
# Made the default after its first run (docs/benchmarks.md, sixth run).
set -uo pipefail
source benchmarks/gpu_env.sh
out=${OUT:-/tmp/out}
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/card.txt"
timeout 120 python3 -m pytest -q -m gpu -p no:cacheprovider core/tests/test_attention_sage.py 2>&1 | tail -4 \
    | tee "$out/sage_gpu_tests.txt"
timeout 60 python3 benchmarks/v_pack_probe.py 2>&1 | grep -v -i warning | tee "$out/v_pack_probe.txt"
(cd benchmarks && timeout 60 python3 gemm_probe.py 2>&1 | grep -v -i warning | tee "$out/gemm_probe.txt")
SECTIONS=i2v14b I2V_LIMIT=300 PROFILE_TOP=${PROFILE_TOP:-8} \
    I2V_VARIANTS="diffusers;fp8+sage compiled;fp8+sage compiled, package V packing" \
    bash benchmarks/run_gpu_speed.sh 2>&1 | grep '"section"'
timeout 120 python3 benchmarks/speed_toy_eval.py --device cuda --configs baseline,sage,fp8+sage 2>&1 \
    | grep -v -i warning | tail -5 | tee "$out/toy_eval.txt"
