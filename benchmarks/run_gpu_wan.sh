#!/usr/bin/env bash
# GPU session for the Wan issue: installs the carried wheels, checks a tiny end-to-end generation on
# CUDA, then runs the DiT benchmark (ours vs diffusers) and copies the results to $OUT.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/benchmarks PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e core -e plugins/fastvideo-wan >/dev/null 2>&1 || echo "editable install failed"
out=${OUT:-/tmp}
# End to end on CUDA (bf16, compiled blocks) vs the same pipeline on CPU in fp32 (no mp4: no ffmpeg there).
python3 - <<'PY' 2>&1 | grep -v Warning | tail -5
import numpy as np, time
from fastvideo_wan.tiny import make_tiny_wan
from fastvideo import VideoGenerator
path = make_tiny_wan("/tmp/tiny")
kw = dict(num_frames=9, height=64, width=64, num_inference_steps=4, seed=3)
t0 = time.time(); gpu = VideoGenerator.from_pretrained(str(path), device="cuda", dtype="bf16", progress=False).generate_video("a red ball", **kw)
t1 = time.time(); cpu = VideoGenerator.from_pretrained(str(path), device="cpu", progress=False).generate_video("a red ball", **kw)
err = np.abs(gpu.frames.astype(float) - cpu.frames.astype(float)).mean()
print(f"tiny pipeline cuda(bf16, compiled) vs cpu(fp32): mean |diff| {err:.2f}/255, cuda {t1 - t0:.1f}s incl. compile")
PY
python3 benchmarks/bench_wan_dit.py "$@" 2>&1 | tee $out/bench_wan.log | grep -v Warning
cp docs/benchmarks.md $out/benchmarks.md
