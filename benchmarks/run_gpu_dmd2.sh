#!/usr/bin/env bash
# GPU measurements of fastvideo-dmd2 (issue #18), results in $OUT (rows appended to docs/benchmarks.md):
#   1. one DMD2 iteration (critic step + student step) on Wan2.1-1.3B random weights at 81x480x832:
#      time and peak memory per GPU, dense, then with the student on vsa 0.875 (teacher and critic dense);
#      on NUM_GPUS GPUs under torchrun with FSDP2 (default: 1; e.g. `benchmarks/run_gpu_dmd2.sh --num-gpus 4`);
#   2. the 3-step student with vsa 0.875 and compiled blocks end to end on one GPU: umT5-XXL text
#      encoding, 3 DiT forwards and the VAE decode, each timed.
# About 6 minutes on one H100. ITER_ARGS / STUDENT_ARGS pass through (e.g. ITER_ARGS="--iters 2").
set -uo pipefail
num_gpus=${NUM_GPUS:-1}
while [[ $# -gt 0 ]]; do
    case $1 in
        --num-gpus) num_gpus=$2; shift 2 ;;
        *) echo "unknown argument $1 (use --num-gpus N)"; exit 2 ;;
    esac
done
source benchmarks/gpu_env.sh
out=${OUT:-/tmp/out}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/card.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$out/card.txt"
launch=(python3)
if [[ $num_gpus -gt 1 ]]; then
    launch=(python3 -m torch.distributed.run --nproc-per-node "$num_gpus" --master-port 29571)
fi

echo "== DMD2 iteration, $num_gpus GPU(s): dense"
"${launch[@]}" benchmarks/bench_dmd2.py iteration ${ITER_ARGS-} 2>&1 | grep -v -i warning | tee "$out/dmd2_iteration_dense.txt" | tail -3
echo "== DMD2 iteration, $num_gpus GPU(s): student on vsa 0.875"
"${launch[@]}" benchmarks/bench_dmd2.py iteration --sparsity 0.875 ${ITER_ARGS-} 2>&1 | grep -v -i warning | tee "$out/dmd2_iteration_vsa.txt" | tail -3

echo "== 3-step student end to end (vsa 0.875, compiled blocks), one GPU"
python3 benchmarks/bench_dmd2.py student ${STUDENT_ARGS-} 2>&1 | grep -v -i warning | tee "$out/dmd2_student.txt" | tail -3
echo "== the same, dense (for comparison)"
python3 benchmarks/bench_dmd2.py student --sparsity 0 ${STUDENT_ARGS-} 2>&1 | grep -v -i warning | tee "$out/dmd2_student_dense.txt" | tail -3

echo "== the same student with FP8 linears (vsa 0.875, compiled blocks)"
python3 benchmarks/bench_dmd2.py student --quantize fp8 ${STUDENT_ARGS-} 2>&1 | grep -v -i warning | tee "$out/dmd2_student_fp8.txt" | tail -3

echo "== dmd2 tests on CUDA-less paths stay green here too"
python3 -m pytest -q plugins/fastvideo-dmd2/tests/test_algorithm.py -x 2>&1 | tail -2 | tee "$out/dmd2_tests.txt"
cp docs/benchmarks.md "$out/benchmarks.md"
