#!/usr/bin/env bash
# Puts the cuDNN Python frontend (nvidia-cudnn-frontend, 2 MB; the `fp8` attention backend's cuDNN kernel's
# requirement) into .whl/ (git-ignored), which benchmarks/gpu_env.sh installs on the GPU machine (no network
# there; Python 3.12, x86-64). It loads the cuDNN library torch ships. Run here, with network:
#     bash benchmarks/cudnn_frontend_bundle.sh
set -euo pipefail
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 -d .whl "nvidia-cudnn-frontend==${CUDNN_FRONTEND:-1.22.1}"
ls -la .whl/nvidia_cudnn_frontend-*.whl
