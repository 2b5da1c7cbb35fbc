#!/usr/bin/env bash
# flash-attn-4 on the GPU machine (issues #21, #24): three `run` calls back to back (the machine stays warm
# 30 s between calls, and keeps /tmp while warm), after `bash benchmarks/flash_attn4_bundle.sh` here:
#   1. carry [".fa4a"]:  bash benchmarks/run_gpu_flash_attn.sh stash      (part 1 to /tmp/fa4parts)
#   2. carry [".fa4b"], timeout_s 600:  bash benchmarks/run_gpu_flash_attn.sh probe      (unpack to /tmp/fa4site; the flash-attn
#      backend, FA4, against cuDNN SDPA at Cosmos, Wan and HunyuanVideo shapes: benchmarks/flash_attn_probe.py;
#      then STA through FA4's block-sparse kernel: its GPU test and bench_sta.py's kernel rows, FASTVIDEO_STA_FA4=1)
#   3. carry [".whl"]:   bash benchmarks/run_gpu_flash_attn.sh cosmos     (Cosmos-Predict2-2B DiT eager with the
#      flash-attn backend against diffusers (cuDNN SDPA), benchmarks/bench_cosmos.py --backend flash-attn)
#   4. carry [".whl"]:   bash benchmarks/run_gpu_flash_attn.sh i2v14b     (Wan2.1-I2V-14B-480P s/step: the usual
#      variants plus bf16 / FP8 compiled with the flash-attn backend on FA4; about 7 minutes)
set -uo pipefail
out=${OUT:-/tmp/out}
mkdir -p "$out"
fa4_path() { export PYTHONPATH=/tmp/fa4site:/tmp/fa4site/nvidia_cutlass_dsl/dsl_packages${PYTHONPATH:+:$PYTHONPATH}; }
case "${1:-}" in
stash)
    mkdir -p /tmp/fa4parts && cp .fa4a/part.00 /tmp/fa4parts/ && ls -la /tmp/fa4parts ;;
probe)
    [ -f /tmp/fa4parts/part.00 ] || { echo "part 1 is not on this machine: run 'stash' first (same warm machine)"; exit 3; }
    rm -rf /tmp/fa4site && mkdir -p /tmp/fa4site
    cat /tmp/fa4parts/part.00 .fa4b/part.01 | xz -d | tar -x -C /tmp/fa4site || exit 4
    export PYTHONPATH=$PWD/core/src
    fa4_path
    nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/card.txt"
    FASTVIDEO_FLASH_ATTN=fa4 timeout 200 python3 benchmarks/flash_attn_probe.py 2>&1 | tee "$out/flash_attn_probe.txt"
    # STA through flash-attn-4's block-sparse kernel: its GPU test, then the kernel timings (the "fwd" rows
    # run it; "fwd+bwd" needs a gradient and runs the Triton kernels)
    export PYTHONPATH=$PYTHONPATH:$PWD/plugins/fastvideo-sta/src
    timeout 90 python3 -m pytest -q -m gpu -p no:cacheprovider plugins/fastvideo-sta/tests/test_fa4.py 2>&1 \
        | tail -5 | tee "$out/sta_fa4_test.txt"
    # warnings kept: "sta: ... runs the Triton kernel" says which rows did not go through flash-attn-4
    FASTVIDEO_STA_FA4=1 timeout 250 python3 benchmarks/bench_sta.py --skip-dit --no-record --out "$out" 2>&1 \
        | tee "$out/sta_fa4_bench.txt" ;;
cosmos)
    [ -d /tmp/fa4site/flash_attn ] || { echo "flash-attn-4 is not unpacked here: run 'stash' and 'probe' first"; exit 3; }
    EXTRA_PYTHONPATH=/tmp/fa4site:/tmp/fa4site/nvidia_cutlass_dsl/dsl_packages source benchmarks/gpu_env.sh
    FASTVIDEO_FLASH_ATTN=fa4 timeout 300 python3 benchmarks/bench_cosmos.py --no-compile --skip-generation \
        --backend flash-attn 2>&1 | tee "$out/cosmos_flash_attn.txt"
    cp docs/benchmarks.md "$out/benchmarks.md" ;;
i2v14b)
    [ -d /tmp/fa4site/flash_attn ] || { echo "flash-attn-4 is not unpacked here: run 'stash' and 'probe' first"; exit 3; }
    EXTRA_PYTHONPATH=/tmp/fa4site:/tmp/fa4site/nvidia_cutlass_dsl/dsl_packages FASTVIDEO_FLASH_ATTN=fa4 \
        SECTIONS=i2v14b bash benchmarks/run_gpu_speed.sh ;;
*)
    echo "usage: bash benchmarks/run_gpu_flash_attn.sh stash|probe|cosmos|i2v14b (see the header)"; exit 2 ;;
esac
