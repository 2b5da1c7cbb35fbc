#!/usr/bin/env bash
# Packs FlashAttention-3's Hopper sources (flash-attention's hopper/, its FP8 forward among them) and the CUTLASS
# headers they build against into .fa3/ (git-ignored), for benchmarks/run_gpu_fa3.sh to build on the GPU
# machine (no network there). Arguments: a flash-attention git directory and a CUTLASS git directory (bare
# repositories are fine); CUTLASS is taken at the commit flash-attention pins as its csrc/cutlass submodule.
#     bash benchmarks/flash_attn3_bundle.sh /path/to/flash-attention.git /path/to/cutlass.git [FA_REV]
set -euo pipefail
fa=${1:?a flash-attention git directory}
cutlass=${2:?a CUTLASS git directory}
rev=${3:-HEAD}
pin=$(git -C "$fa" ls-tree "$rev" csrc/cutlass | awk '{print $3}')
[ -n "$pin" ] || { echo "no csrc/cutlass submodule at $rev of $fa" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/src/csrc/cutlass"
git -C "$fa" archive "$rev" hopper README.md | tar -x -C "$work/src"  # setup.py reads ../README.md
git -C "$cutlass" archive "$pin" include | tar -x -C "$work/src/csrc/cutlass"
# the FP8 forward needs neither tests nor benchmarks nor the other architectures' instantiations
rm -f "$work"/src/hopper/test_*.py "$work"/src/hopper/benchmark_*.py
find "$work/src/hopper/instantiations" -name '*.cu' ! -name '*hdim128_bf16_sm90.cu' ! -name '*hdim128_e4m3_sm90.cu' \
    ! -name '*hdim64_bf16_sm90.cu' ! -name '*hdim64_e4m3_sm90.cu' -delete
printf 'flash-attention %s (%s)\ncutlass %s\n' "$(git -C "$fa" rev-parse "$rev")" "$rev" "$pin" >"$work/src/SOURCES.txt"
rm -rf .fa3 && mkdir -p .fa3
tar -C "$work/src" -cf - . | xz -T0 -6 >.fa3/fa3-src.tar.xz
du -sh .fa3/fa3-src.tar.xz
cat "$work/src/SOURCES.txt"
