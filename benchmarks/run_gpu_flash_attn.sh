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
#   7. after 1, carry [".fa4b", ".sage"] with the sageattention wheel copied into .sage/: `... sage-probe`
#      (the package's Hopper kernel against cuDNN, FA4 and ours; its GPU tests); then 4 with I2V_VARIANTS
#   6. after 1, carry [".fa4b"]: `... unpack`, then carry [".whl"], timeout_s 600: `... e2e` (Wan2.1-T2V-1.3B
#      81x480x832, 50 steps, whole generation: diffusers, ours bf16 on SDPA, and ours on the flash-attn backend
#      (FA4) without and with MagCache, FP8 + FA4 + MagCache; bench_speed.py --section e2e)
#   5. (instead of 2, for #19) carry [".fa4b", ".sdist"], timeout_s 600:  bash benchmarks/run_gpu_flash_attn.sh sta
#      (unpack; a clean install of fastvideo-core and fastvideo-sta from their sdists with this machine's torch
#      into /tmp/sta_site, its `fv doctor`, the sta GPU tests against the installed package, then
#      bench_sta.py recorded: every kernel row with the Triton kernels and, where flash-attn-4 takes the
#      grid, the same forward through it, side by side; the DiT row with the default path). `.sdist/`:
#      the two sdists and a setuptools wheel, written here by
#      `python -c "from setuptools import build_meta as b; b.build_sdist('../../.sdist')"` in each package.
set -uo pipefail
out=${OUT:-/tmp/out}
mkdir -p "$out"
unpack() {
    [ -f /tmp/fa4parts/part.00 ] || { echo "part 1 is not on this machine: run 'stash' first (same warm machine)"; return 3; }
    rm -rf /tmp/fa4site && mkdir -p /tmp/fa4site
    cat /tmp/fa4parts/part.00 .fa4b/part.01 | xz -d | tar -x -C /tmp/fa4site || return 4
}
fa4_path() { export PYTHONPATH=/tmp/fa4site:/tmp/fa4site/nvidia_cutlass_dsl/dsl_packages${PYTHONPATH:+:$PYTHONPATH}; }
case "${1:-}" in
stash)
    mkdir -p /tmp/fa4parts && cp .fa4a/part.00 /tmp/fa4parts/ && ls -la /tmp/fa4parts ;;
probe)
    unpack || exit $?
    export PYTHONPATH=$PWD/core/src
    fa4_path
    nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/card.txt"
    FASTVIDEO_FLASH_ATTN=fa4 timeout 200 python3 benchmarks/flash_attn_probe.py 2>&1 | tee "$out/flash_attn_probe.txt"
    # STA through flash-attn-4's block-sparse kernel: its GPU test, then the kernel timings (the "fwd" rows
    # run it; "fwd+bwd" needs a gradient and runs the Triton kernels)
    export PYTHONPATH=$PYTHONPATH:$PWD/plugins/fastvideo-sta/src
    timeout 90 python3 -m pytest -q -m gpu -p no:cacheprovider plugins/fastvideo-sta/tests/test_fa4.py 2>&1 \
        | tail -5 | tee "$out/sta_fa4_test.txt"
    # bench_sta.py times each row with the Triton kernels and, where flash-attn-4 takes the grid, through it
    timeout 250 python3 benchmarks/bench_sta.py --skip-dit --no-record --out "$out" 2>&1 \
        | tee "$out/sta_fa4_bench.txt" ;;
unpack)
    unpack && ls /tmp/fa4site ;;
sta-dit)  # after stash, carry [".fa4b"]: HunyuanVideo DiT at the anchor's 117x768x1280, sta via flash-attn-4 and Triton
    [ -d /tmp/fa4site/flash_attn ] || unpack || exit $?
    mkdir -p .whl  # no wheels needed: gpu_env.sh for the plugins' entry points
    EXTRA_PYTHONPATH=/tmp/fa4site:/tmp/fa4site/nvidia_cutlass_dsl/dsl_packages source benchmarks/gpu_env.sh 2>/dev/null
    timeout 120 python3 -m pytest -q -m gpu -p no:cacheprovider plugins/fastvideo-sta/tests/test_fa4.py 2>&1 \
        | tail -3 | tee "$out/sta_fa4_test.txt"
    timeout 400 python3 benchmarks/bench_sta.py --skip-kernels --dit-shape 117x768x1280 --out "$out" 2>&1 \
        | grep -v "Warning\|exe_args" | tee "$out/sta_dit.txt"
    cp docs/benchmarks.md "$out/benchmarks.md" ;;
e2e)
    [ -d /tmp/fa4site/flash_attn ] || { echo "flash-attn-4 is not unpacked here: run 'stash' and 'unpack' first"; exit 3; }
    EXTRA_PYTHONPATH=/tmp/fa4site:/tmp/fa4site/nvidia_cutlass_dsl/dsl_packages FASTVIDEO_FLASH_ATTN=fa4 SECTIONS=e2e \
        E2E_VARIANTS="diffusers,bf16,flash-attn,flash-attn+magcache,fp8+flash-attn+magcache" bash benchmarks/run_gpu_speed.sh ;;
sta)
    unpack || exit $?
    repo=$PWD
    nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/card.txt"
    python3 -c "import setuptools" 2>/dev/null || python3 -m pip install -q --no-index --no-deps --target /tmp/setuptools_site .sdist/setuptools-*.whl
    rm -rf /tmp/sta_site
    PYTHONPATH=/tmp/setuptools_site python3 -m pip install --no-index --no-deps --no-build-isolation \
        --target /tmp/sta_site .sdist/fastvideo_core-*.tar.gz .sdist/fastvideo_sta-*.tar.gz 2>&1 | tail -3 | tee "$out/sdist_install.txt"
    export PYTHONPATH=/tmp/sta_site
    fa4_path
    cd /tmp || exit 5
    python3 -c "import torch, fastvideo, fastvideo_sta; print('installed from the sdists:', fastvideo.__file__, fastvideo_sta.__file__, 'torch', torch.__version__)" 2>&1 | tee -a "$out/sdist_install.txt"
    /tmp/sta_site/bin/fv doctor 2>&1 | grep -v Warning | tee "$out/fv_doctor.txt"
    timeout 200 python3 -m pytest -q -m gpu -p no:cacheprovider -W "ignore::DeprecationWarning" \
        "$repo/plugins/fastvideo-sta/tests/test_fa4.py" "$repo/plugins/fastvideo-sta/tests/test_ops.py" 2>&1 \
        | tail -4 | tee "$out/sta_gpu_tests.txt"
    cd "$repo" || exit 5
    export PYTHONPATH=$PYTHONPATH:$repo/plugins/fastvideo-hunyuan/src
    timeout 330 python3 benchmarks/bench_sta.py --skip-dit --out "$out" 2>&1 | grep -v "Warning\|exe_args" | tee "$out/sta_bench.txt"
    cp docs/benchmarks.md "$out/benchmarks.md" ;;
sage-probe)  # after stash, carry [".fa4b", ".sage"] (.sage holding the sageattention wheel): the package's
    # Hopper kernel (per_thread and per_warp Q/K scales, its parts timed one by one) against cuDNN, FA4 and our
    # Triton kernel at the Wan shapes (benchmarks/sage2_probe.py), and the sage GPU tests with the package
    [ -d /tmp/fa4site/flash_attn ] || unpack || exit $?
    python3 -m pip install -q --no-index --no-deps --target /tmp/sage2-site .sage/sageattention-*.whl || exit 6
    export PYTHONPATH=/tmp/sage2-site:$PWD/core/src
    fa4_path
    nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/card.txt"
    timeout 120 python3 -m pytest -q -m gpu -p no:cacheprovider core/tests/test_attention_sage.py 2>&1 | tail -3 \
        | tee "$out/sage_gpu_tests.txt"
    FASTVIDEO_FLASH_ATTN=fa4 timeout 240 python3 benchmarks/sage2_probe.py 2>&1 | grep -v "Warning" \
        | tee "$out/sage2_probe.txt" ;;
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
    echo "usage: bash benchmarks/run_gpu_flash_attn.sh stash|probe|unpack|sage-probe|sta|sta-dit|e2e|cosmos|i2v14b (see the header)"; exit 2 ;;
esac
