#!/usr/bin/env bash
# Step-Video-T2V on the GPU (issue #22): the 30B DiT with random weights (bf16), one forward at the
# official 204x544x992 (75,888 video tokens). One GPU: a layer subset timed and extrapolated to 48
# layers, then all 48 layers if they fit (58.7 GB of weights). Several GPUs: FSDP2 + Ulysses over all of
# them (torchrun), the wrapping `fv generate --num-gpus N --fsdp` applies. Then a tiny end-to-end
# generation on CUDA (bf16) against CPU (fp32), and the VAE decode at 204x544x992 untiled vs tiled. Results go to $OUT (and rows to docs/benchmarks.md).
# Under 8 minutes on one H100. BENCH_ARGS pass through (e.g. "--subset 4 --no-full" for a short run).
set -uo pipefail
source benchmarks/gpu_env.sh
out=${OUT:-/tmp/out}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/card.txt"
gpus=$(nvidia-smi -L | wc -l)

echo "== fastvideo-stepvideo GPU tests (tiny DiT on CUDA vs the official outputs)"
timeout 120 python3 -m pytest -q -m gpu plugins/fastvideo-stepvideo/tests/test_gpu.py 2>&1 | tail -3 | tee "$out/stepvideo_gpu_tests.txt"

echo "== Step-Video DiT forward, $gpus GPU(s)"
if [ "$gpus" -gt 1 ]; then
  timeout 420 torchrun --nproc-per-node "$gpus" benchmarks/bench_stepvideo_dit.py ${BENCH_ARGS:-} 2>&1 | grep -v -i warning | tee "$out/stepvideo_dit.txt"
else
  timeout 420 python3 benchmarks/bench_stepvideo_dit.py ${BENCH_ARGS:-} 2>&1 | grep -v -i warning | tee "$out/stepvideo_dit.txt"
fi

echo "== Step-Video VAE decode at 204x544x992: untiled vs spatially tiled (peak memory, time)"
timeout 150 python3 benchmarks/bench_stepvideo_vae.py 2>&1 | grep -v -i warning | tee "$out/stepvideo_vae.txt"

echo "== tiny Step-Video pipeline on CUDA (bf16) vs CPU (fp32)"
timeout 120 python3 - <<'PY' 2>&1 | grep -v -i warning | tee "$out/stepvideo_e2e.txt"
import time

import numpy as np

from fastvideo import VideoGenerator
from fastvideo_stepvideo.tiny import make_tiny_stepvideo

path = make_tiny_stepvideo("/tmp/stepvideo-tiny")
kw = dict(num_frames=34, height=64, width=64, num_inference_steps=4, seed=3)
t0 = time.time()
g = VideoGenerator.from_pretrained(str(path), device="cuda", dtype="bf16", compile=False, progress=False).generate_video("a cat", **kw)
t1 = time.time()
c = VideoGenerator.from_pretrained(str(path), device="cpu", progress=False).generate_video("a cat", **kw)
err = np.abs(g.frames.astype(float) - c.frames.astype(float)).mean()
print(f"cuda(bf16) vs cpu(fp32): mean |diff| {err:.2f}/255, frames {g.frames.shape}; cuda {t1 - t0:.1f} s; stages {g.timings}")
PY
cp docs/benchmarks.md "$out/benchmarks.md" 2>/dev/null || true
