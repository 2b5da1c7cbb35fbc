"""V packing for the sageattention package's Hopper kernel at Wan 14B's self-attention shape, one GPU
(issue #24): the package's steps (``torch.cat`` to 128 tokens, ``per_channel_fp8``) against ours
(``fastvideo.attention.sage_pack.pack_v_sm90``), compared (the package divides with fast math: a scale's
last bit, a rare value one e4m3 step) and timed.

    bash benchmarks/run_gpu_sage_pack.sh   (or, after source benchmarks/gpu_env.sh: python benchmarks/v_pack_probe.py)
"""

from __future__ import annotations

import torch
from sage2_probe import time_ms
from sage_fused_probe import package_v

from fastvideo.attention.sage_pack import pack_v_sm90


def main() -> None:
    for heads in (40, 12):
        v = torch.randn(1, 32760, heads, 128, device="cuda", dtype=torch.bfloat16)
        (a8, a_s), (b8, b_s) = package_v(v), pack_v_sm90(v)
        differ = int((a8.float() != b8.float()).sum())
        print({"shape": f"1x32760x{heads}x128", "values differing": f"{differ} of {a8.numel()}",
               "scale max rel diff": ((a_s - b_s).abs() / a_s).max().item(),
               "package ms": round(time_ms(lambda v=v: package_v(v), iters=20), 3),
               "ours ms": round(time_ms(lambda v=v: pack_v_sm90(v), iters=20), 3)}, flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
