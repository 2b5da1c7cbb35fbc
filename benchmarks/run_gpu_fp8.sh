#!/usr/bin/env bash
# GPU measurements of the FP8-linear and 8-bit-attention speed work (issue #24), one call under 8 minutes on
# one H100: the GPU tests of the sage kernel and FP8 linears (tests-fp8); the sage config and P V sweep against cuDNN (sweep);
# the 14B GEMMs bf16 vs FP8 (linear14b); 3 Wan2.1-I2V-14B blocks at 32760 tokens, bf16 / FP8 / sage /
# FP8+sage, eager and compiled, with the 40-block step they imply (block14b). Results: $OUT/speed.jsonl.
set -uo pipefail
SECTIONS="tests-fp8 sweep linear14b block14b" exec bash benchmarks/run_gpu_speed.sh
