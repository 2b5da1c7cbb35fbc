#!/usr/bin/env bash
# GPU session for the Wan issue: installs the carried wheels, checks a tiny end-to-end generation on
# CUDA, then runs the DiT benchmark (ours vs diffusers) and copies the results to $OUT.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/benchmarks PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e core -e plugins/fastvideo-wan >/dev/null 2>&1 || echo "editable install failed"
out=${OUT:-/tmp}
( fv wan make-tiny /tmp/tiny && fv generate --model /tmp/tiny --prompt "a red ball" --num-frames 9 --height 64 --width 64 \
    --steps 4 --device cuda --dtype bf16 --output $out/tiny_cuda.mp4 --json ) 2>&1 | tail -15
python3 benchmarks/bench_wan_dit.py "$@" 2>&1 | tee $out/bench_wan.log | grep -v Warning
cp docs/benchmarks.md $out/benchmarks.md
