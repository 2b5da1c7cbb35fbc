#!/usr/bin/env bash
# GPU session of the wan-toy architecture sweep (benchmarks/wan_toy_sweep.py): every variant at once
# on one GPU; sends back summary.json, the logs and each variant's model as tarballs.
# Usage on the GPU machine: bash benchmarks/run_gpu_wan_toy_sweep.sh [sweep options]
set -uo pipefail
source benchmarks/gpu_env.sh
out=${OUT:-/tmp/out}
mkdir -p "$out"
work=/tmp/sweep
rm -rf "$work"  # a warm machine keeps the last run's folder
nvidia-smi --query-gpu=name --format=csv,noheader | tee "$out/card.txt"
timeout "${SWEEP_SECONDS:-540}" python3 benchmarks/wan_toy_sweep.py "$work" "$@" 2>&1 | grep -v -i "warning" | tee "$out/sweep-stdout.log"
cp "$work/summary.json" "$out/" 2>/dev/null || python3 - "$work" "$out" <<'PY'
import json, sys
sys.path.insert(0, "benchmarks")
from pathlib import Path
from wan_toy_sweep import summarize
work = Path(sys.argv[1])
names = [p.name for p in work.iterdir() if (p / "log.txt").exists()]
Path(sys.argv[2], "summary.json").write_text(json.dumps(summarize(work, names), indent=1))
PY
(cd "$work" && tar -czf "$out/sweep-logs.tgz" --exclude=checkpoints --exclude=export --exclude=latents \
    --exclude=clips --exclude=init -- */log.txt */*.json */vae/metrics.jsonl */dit/metrics.jsonl 2>/dev/null)
(cd "$work" && tar -czhf "$out/sweep-models.tgz" -- */dit/export 2>/dev/null)
ls -la "$out"
