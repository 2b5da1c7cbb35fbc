#!/usr/bin/env bash
# Packs flash-attn-4 (FlashAttention's CuTe-DSL kernels) and what it imports for the GPU machine, which has
# no network and takes at most 64 MiB of carried files a call: the wheels (Python 3.12, x86-64, CUDA 13
# libraries) unpacked into one tree, xz-compressed and split into two parts, .fa4a/ and .fa4b/ (git-ignored).
# benchmarks/run_gpu_flash_attn.sh then moves them over in two calls. Run here, with network:
#     bash benchmarks/flash_attn4_bundle.sh
# CUDA_BINDINGS="==13.0.3" pins cuda-bindings to the GPU machine's driver (CUDA 13.0) if the newest one
# (13.5, checked to import here) refuses that driver.
set -euo pipefail
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
pip_dl() { python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$work/whl" "$@"; }
# flash-attn-4 and its requirements (nvidia-cutlass-dsl is a meta package: its libs-base, libs-core and the
# CUDA 13 compiler library are what it installs for torch cu13x; libs-core holds the `cutlass` front end)
pip_dl flash-attn-4==4.0.0b36 nvidia-cutlass-dsl==4.8.1 nvidia-cutlass-dsl-libs-base==4.8.1 \
    nvidia-cutlass-dsl-libs-core==4.8.1 nvidia-cutlass-dsl-libs-cu13==4.8.1 "apache-tvm-ffi>=0.1.11,<0.2" \
    quack-kernels==0.6.5 torch-c-dlpack-ext einops "cuda-bindings${CUDA_BINDINGS:->=13,<14}" cuda-pathfinder
mkdir -p "$work/site"
for w in "$work"/whl/*.whl; do unzip -q -o "$w" -d "$work/site"; done  # unzip keeps the modes
rm -rf "$work"/site/nvidia_cutlass_dsl/cu13/lib/stubs "$work"/site/einops/tests
ls "$work"/site/nvidia_cutlass_dsl/dsl_packages/cutlass/cute/__init__.py >/dev/null  # the front end is there
tar -C "$work/site" -cf - . | xz -T0 -6 >"$work/fa4.tar.xz"
rm -rf .fa4a .fa4b && mkdir -p .fa4a .fa4b
size=$(stat -c %s "$work/fa4.tar.xz")
split -b $(((size + 1) / 2 + 1)) -d "$work/fa4.tar.xz" "$work/part."
mv "$work/part.00" .fa4a/ && mv "$work/part.01" .fa4b/
du -sh .fa4a .fa4b
