#!/usr/bin/env bash
# GPU check after the seams redesign (issue #17) and the hardening (issue #26): the VSA kernel tests,
# the Wan DiT on the new DiT base against diffusers (eager and compiled blocks), a training step through
# the split trainer (dense and vsa with its gate attached as a backend layer module), and a tiny
# end-to-end generation on CUDA with each built-in sampler. Results go to $OUT.
# WAN_ARGS (default --compile) and TRAIN_ARGS pass through to the two benchmarks (a short run:
# WAN_ARGS="" TRAIN_ARGS="--warmup 1 --iters 3").
set -uo pipefail
source benchmarks/gpu_env.sh
out=${OUT:-/tmp/out}
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/card.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$out/card.txt"

echo "== VSA kernel tests (GPU)"
python3 -m pytest -q -m gpu plugins/fastvideo-vsa/tests/test_ops.py 2>&1 | tail -3 | tee "$out/vsa_gpu_tests.txt"

echo "== tiny Wan pipeline on CUDA (bf16, compiled blocks) vs CPU fp32, per sampler"
python3 - <<'PY' 2>&1 | grep -v -i warning | tee "$out/e2e.txt"
import time

import numpy as np

from fastvideo import VideoGenerator
from fastvideo_wan.tiny import make_tiny_wan

path = make_tiny_wan("/tmp/tiny")
kw = dict(num_frames=9, height=64, width=64, num_inference_steps=4, seed=3)
for sampler in ("checkpoint", "flow-euler", "unipc"):
    t0 = time.time()
    gpu = VideoGenerator.from_pretrained(str(path), device="cuda", dtype="bf16", progress=False, sampler=sampler)
    g = gpu.generate_video("a red ball", **kw)
    t1 = time.time()
    cpu = VideoGenerator.from_pretrained(str(path), device="cpu", progress=False, sampler=sampler)
    c = cpu.generate_video("a red ball", **kw)
    err = np.abs(g.frames.astype(float) - c.frames.astype(float)).mean()
    print(f"{sampler:10s} cuda(bf16, compiled) vs cpu(fp32): mean |diff| {err:.2f}/255; cuda {t1 - t0:.1f} s incl. compile; "
          f"stages {({k: round(v, 3) for k, v in g.timings.items()})}")
PY

echo "== Wan DiT forward: ours (DiT base) vs diffusers"
python3 benchmarks/bench_wan_dit.py ${WAN_ARGS---compile} 2>&1 | grep -v -i warning | tee "$out/bench_wan_dit.txt" | tail -12

echo "== training step through the split trainer: dense and vsa"
python3 benchmarks/bench_train_step.py ${TRAIN_ARGS-} 2>&1 | grep -v -i warning | tee "$out/bench_train_step.txt" | tail -12
cp docs/benchmarks.md "$out/benchmarks.md"
