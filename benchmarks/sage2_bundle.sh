#!/usr/bin/env bash
# SageAttention 2 (thu-ml/SageAttention, its CUDA kernels; PyPI's `sageattention` 1.0.6 is Triton only) as a
# source tarball for the GPU machine, which has nvcc (CUDA 13) but no network: run here, then
#   carry [".sage"], timeout_s 600:  bash benchmarks/run_gpu_sage2.sh
# which builds a wheel of its Hopper kernels against the machine's torch and times them (issue #24).
# Only the Hopper extensions are built (`_qattn_sm90`, `_fused`): the setup's sm80 / sm89 extensions, which it
# also builds for sm_90, are dropped from the build to keep it within one call. Needs a clone of the
# repository: `fetch github:thu-ml/SageAttention` gives one under /work/.mirror (SAGE_REPO overrides).
set -euo pipefail
repo=${SAGE_REPO:-/work/.mirror/thu-ml+SageAttention/repo}
out=$(cd "$(dirname "$0")/.." && pwd)/.sage
rm -rf "$out" /tmp/sage2-src && mkdir -p "$out" /tmp/sage2-src
git --git-dir="$repo" archive HEAD setup.py pyproject.toml LICENSE MANIFEST.in README.md csrc sageattention \
    | tar -x -C /tmp/sage2-src 2>/dev/null || git -C "$repo" archive HEAD setup.py pyproject.toml LICENSE MANIFEST.in README.md csrc sageattention | tar -x -C /tmp/sage2-src
python3 - /tmp/sage2-src/setup.py <<'PY'
import sys
path = sys.argv[1]
s = open(path).read()
for old in ("if HAS_SM80 or HAS_SM86 or HAS_SM89 or HAS_SM90 or", "if HAS_SM89 or HAS_SM90 or"):
    assert old in s, old
    s = s.replace(old, old.replace(" or HAS_SM90", ""))
open(path, "w").write(s)
PY
(cd /tmp/sage2-src && git --git-dir="$repo" rev-parse HEAD > SOURCE_COMMIT 2>/dev/null || git -C "$repo" rev-parse HEAD > SOURCE_COMMIT)
tar -czf "$out/sage2-src.tar.gz" -C /tmp/sage2-src .
ls -la "$out"
