#!/usr/bin/env bash
# GPU measurements of issue #24 (speed options): the GPU tests of the sage kernel, FP8 linears and offload;
# the sage kernel against SDPA (cuDNN, flash) at Wan shapes; Wan2.1-T2V-1.3B 81x480x832 per-forward time
# (bf16, compiled, FP8, FP8+sage) against diffusers; each lossy option's latents and frames against bf16 on
# random-weight 1.3B (33x480x832, 12 steps, CFG) with the step caches' DiT calls saved; layerwise offload's
# peak memory while the DiT loads from a safetensors folder and while it runs, and time (resident, offload,
# offload with an FP8 checkpoint; 1.3B, and 14B at 81x720x1280 with 8 of 40 blocks, extrapolated); Wan2.1-I2V-14B-480P
# seconds per step (CFG) at 81x480x832; wan-toy accuracy with FP8 and sage on the GPU; and (e2e) the whole
# Wan2.1-T2V-1.3B generation, 81x480x832, 50 steps with CFG (text encoder, DiT, VAE timed), diffusers'
# WanPipeline against ours without and with TeaCache and FP8 + sage (random umT5-XXL, DiT and VAE).
# sweep: the sage kernel's launch configs and P V recipes (fp16, fp8) against cuDNN at Wan 1.3B / 14B shapes,
# with accuracy (about 2 min); linear14b: the 14B block's GEMMs at 32760 tokens, bf16 against FP8 (fused
# Triton or PyTorch activation quantization, fast or exact accumulation; 20 s); block14b: 3 blocks of
# Wan2.1-I2V-14B-480P at 32760 tokens, bf16 / FP8 / sage / FP8+sage, eager and compiled, with the 40-block
# forward and CFG step they imply (about 3 min, eager variants first; BLOCK_VARIANTS="bf16,fp8 compiled" picks).
# All random weights. Results: $OUT/speed.jsonl (one JSON line per measurement) and $OUT/*.txt.
# SECTIONS picks the parts (default: all, about 24 min on one H100); five calls that each fit 8 minutes:
#   SECTIONS="tests-fp8 sweep linear14b block14b" bash benchmarks/run_gpu_speed.sh   (= benchmarks/run_gpu_fp8.sh;
#   tests-fp8: the GPU tests of the sage kernel and FP8 linears only)
#   SECTIONS="tests kernel dit quality toy" bash benchmarks/run_gpu_speed.sh
#   SECTIONS="offload" bash benchmarks/run_gpu_speed.sh    (load and run peaks; writes ~6 GB under BENCH_TMP or /tmp)
#   SECTIONS="i2v14b" bash benchmarks/run_gpu_speed.sh
#   SECTIONS="e2e" bash benchmarks/run_gpu_speed.sh     (E2E_STEPS=50 by default; fewer to fit a budget;
#   E2E_VARIANTS picks runs: diffusers,bf16,teacache,fp8+sage+teacache,magcache,fp8+sage+magcache,bf16+vae-bf16)
set -uo pipefail
source benchmarks/gpu_env.sh
out=${OUT:-/tmp/out}
mkdir -p "$out"
export OUT=$out
sections=${SECTIONS:-"tests sweep linear14b block14b kernel dit quality toy offload i2v14b e2e"}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/card.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$out/card.txt"
python3 -c "import torchao; print('torchao', torchao.__version__)" 2>/dev/null | tee -a "$out/card.txt" || echo "torchao: not installed (FP8 math through torch._scaled_mm)" | tee -a "$out/card.txt"

run() {  # run NAME SECONDS CMD...: one part, time-limited, its output kept
    local name=$1 limit=$2
    shift 2
    echo "== $name"
    local t0=$SECONDS
    timeout "$limit" "$@" 2>&1 | grep -v -i "warning\|Failed to load" | tee "$out/$name.txt" | tail -25
    echo "   ($name: $((SECONDS - t0)) s)"
}

for s in $sections; do
    case $s in
    tests) run tests 150 python3 -m pytest -q core/tests/test_attention_sage.py core/tests/test_optimize_fp8.py core/tests/test_optimize_offload.py core/tests/test_optimize_load.py ;;
    tests-fp8) run tests-fp8 120 python3 -m pytest -q core/tests/test_attention_sage.py core/tests/test_optimize_fp8.py ;;
    sweep) run sweep 160 python3 benchmarks/sage_config_sweep.py ;;
    linear14b) run linear14b 45 python3 benchmarks/bench_speed.py --section linear14b --iters 5 ;;
    block14b) run block14b 200 python3 benchmarks/bench_speed.py --section block14b --iters 3 ;;
    kernel) run kernel 90 python3 benchmarks/bench_speed.py --section kernel ;;
    dit) run dit 240 python3 benchmarks/bench_speed.py --section dit --iters 3 ;;
    quality) run quality 150 python3 benchmarks/bench_speed.py --section quality --steps 12 ;;
    toy) run toy 150 python3 benchmarks/speed_toy_eval.py --device cuda --configs baseline,fp8,sage,fp8+sage,teacache,firstblock,magcache ;;
    offload) run offload 420 python3 benchmarks/bench_speed.py --section offload --iters 2 ;;
    i2v14b) run i2v14b "${I2V_LIMIT:-420}" python3 benchmarks/bench_speed.py --section i2v14b --iters 2 ;;
    e2e) run e2e 470 python3 benchmarks/bench_speed.py --section e2e --steps "${E2E_STEPS:-50}" \
        --variants "${E2E_VARIANTS:-diffusers,bf16,teacache,fp8+sage+teacache,magcache}" ;;
    *) echo "unknown section $s" ;;
    esac
done
