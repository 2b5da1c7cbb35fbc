#!/usr/bin/env bash
# What one GPU can say about multi-GPU runs (when only one is lent): this process plays rank 0 of an
# N-GPU run with PyTorch's fake process group (benchmarks/harness.py simulate_world: collectives return
# at once). Its peak memory is the real run's per GPU (NCCL's own buffers aside); its time is one rank's
# compute without communication. Rows go to docs/benchmarks.md marked "simulated".
#   1. Step-Video-T2V's 30B DiT, one forward at 204x544x992, rank 0 of 8 with FSDP2 + Ulysses 8 (issue #22);
#   2. one DMD2 iteration of Wan2.1-T2V-14B at 81x480x832, rank 0 of 8, Ulysses 8, the student's EMA in
#      CPU memory: dense, then the student on vsa 0.875 (issue #18: "Wan 14B fits on 8"); then with the
#      EMA on the GPU (it did not fit);
#   3. one DMD2 iteration of Wan2.1-T2V-1.3B, rank 0 of 4, FSDP2 only (issue #18: "distills on 4 GPUs");
# About 6 minutes on one H100.
set -uo pipefail
source benchmarks/gpu_env.sh
out=${OUT:-/tmp/out}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/card.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$out/card.txt"
quiet() { grep -v -i -e warning -e "warn(" -e "^  "; }

echo "== Step-Video-T2V 30B forward, rank 0 of 8 (FSDP2 + Ulysses 8)"
timeout 150 python3 benchmarks/bench_stepvideo_dit.py --simulate-world 8 2>&1 | quiet | tee "$out/stepvideo_sim8.txt" | tail -25
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
w14=(--config wan2.1-t2v-14b --simulate-world 8 --sp-size 8 --ema 0.99 --iters 2)
echo "== DMD2 Wan2.1-T2V-14B, rank 0 of 8, Ulysses 8, student EMA in CPU memory: dense"
timeout 170 python3 benchmarks/bench_dmd2.py iteration "${w14[@]}" --ema-offload 2>&1 | quiet | tee "$out/dmd2_14b_sim8_dense.txt" | tail -3
echo "== the same, student on vsa 0.875"
timeout 150 python3 benchmarks/bench_dmd2.py iteration "${w14[@]}" --ema-offload --sparsity 0.875 2>&1 | quiet | tee "$out/dmd2_14b_sim8_vsa.txt" | tail -3
echo "== the same (dense), the EMA on the GPU"
timeout 150 python3 benchmarks/bench_dmd2.py iteration "${w14[@]}" 2>&1 | quiet | tee "$out/dmd2_14b_sim8_ema_gpu.txt" | tail -3
echo "== DMD2 Wan2.1-T2V-1.3B, rank 0 of 4, FSDP2 only"
timeout 100 python3 benchmarks/bench_dmd2.py iteration --simulate-world 4 --iters 2 2>&1 | quiet | tee "$out/dmd2_13b_sim4.txt" | tail -3
cp docs/benchmarks.md "$out/benchmarks.md"
