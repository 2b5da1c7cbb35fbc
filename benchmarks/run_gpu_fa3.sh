#!/usr/bin/env bash
# Builds FlashAttention-3's Hopper forward (bf16 and FP8 e4m3, head dims 128 and 64; nothing else) on the GPU machine
# and times it beside cuDNN FP8 and SageAttention 2 (issue #24). After `bash benchmarks/flash_attn3_bundle.sh
# FA_GIT CUTLASS_GIT` and `bash benchmarks/fp8_carry.sh` here: carry [".fp8c", ".fa3"], timeout_s 600. The
# wheel (flash_attn_3-*.whl) comes back under $OUT: put it in .fa3/ (benchmarks/gpu_env.sh installs it).
# Head dims 128 and 64 (wan-toy; FA3_HDIM64=0 skips 64 for a shorter build); BUILD_LIMIT seconds.
set -uo pipefail
out=${OUT:-/tmp/out}
mkdir -p "$out" /tmp/fa3
xz -dc .fa3/fa3-src.tar.xz | tar -x -C /tmp/fa3 || exit 3
[ -f /tmp/fa3/README.md ] || echo "FlashAttention-3" >/tmp/fa3/README.md  # setup.py reads it
if ! command -v git >/dev/null; then  # setup.py runs `git submodule update` (unchecked) before building
    mkdir -p /tmp/fa3/bin && printf '#!/bin/sh\nexit 0\n' >/tmp/fa3/bin/git && chmod +x /tmp/fa3/bin/git
    export PATH=/tmp/fa3/bin:$PATH
fi
cat /tmp/fa3/SOURCES.txt | tee "$out/fa3_sources.txt"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/card.txt"
which nvcc || export PATH=$PATH:/usr/local/cuda/bin
nvcc --version | tail -2 | tee -a "$out/card.txt"
for f in BACKWARD SPLIT PAGEDKV APPENDKV LOCAL SOFTCAP PACKGQA FP16 VARLEN CLUSTER HDIM96 HDIM192 HDIM256 \
    HDIMDIFF64 HDIMDIFF192 SM80; do export "FLASH_ATTENTION_DISABLE_$f=TRUE"; done
[ "${FA3_HDIM64:-1}" = 1 ] || export FLASH_ATTENTION_DISABLE_HDIM64=TRUE
start=$(date +%s)
(cd /tmp/fa3/hopper && FLASH_ATTENTION_FORCE_BUILD=TRUE MAX_JOBS=${MAX_JOBS:-8} NVCC_THREADS=${NVCC_THREADS:-2} \
    timeout "${BUILD_LIMIT:-420}" python3 -m pip wheel --no-deps --no-build-isolation --no-index -w "$out" . 2>&1 \
    | tee "$out/fa3_build_full.txt" | grep -v "arning\|ptxas info\|bytes stack frame\|Remark\|^ *$\|detected during" \
    | grep -v "^ *instantiation of\|^ *\^\|^ *\[ [0-9]* instantiation" | tail -30) | tee "$out/fa3_build.txt"
echo "build: $(( $(date +%s) - start )) s" | tee -a "$out/fa3_build.txt"
whl=$(ls "$out"/flash_attn_3-*.whl 2>/dev/null | head -1)
[ -n "$whl" ] || exit 4
python3 -m pip install -q --no-index --no-deps --target /tmp/fa3-site "$whl" || exit 5
source benchmarks/gpu_env.sh
export PYTHONPATH=/tmp/fa3-site:$PYTHONPATH
(cd benchmarks && timeout 90 python3 fp8_attn_probe.py 2>&1 | grep -v -i warning | tee "$out/fp8_attn_probe.txt")
