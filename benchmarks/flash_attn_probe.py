"""The ``flash-attn`` backend (FA3, FA4 or FA2: ``fastvideo.attention.backends.load_flash_attn``)
against cuDNN SDPA at the shapes our families run, on one GPU: accuracy on 256 query rows against fp32
attention, and the median time per call, the two kernels' calls interleaved (``harness.time_interleaved``). Issue #21:
attention is 85 % of Cosmos-2B's eager forward; issue #24: Wan2.1-I2V-14B's step.

    python benchmarks/flash_attn_probe.py                   # every shape
    FASTVIDEO_FLASH_ATTN=fa4 python benchmarks/flash_attn_probe.py --only cosmos

``benchmarks/run_gpu_flash_attn.sh`` brings flash-attn-4 to a GPU machine that lacks it.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from harness import time_interleaved

from fastvideo.attention.backends import FlashAttnBackend, load_flash_attn

SHAPES = {  # name: (heads, query tokens, key tokens, head dim)
    "cosmos-2b 93x704x1280 self": (16, 84480, 84480, 128),
    "cosmos-2b cross (512 text)": (16, 84480, 512, 128),
    "wan-14b 81x480x832 self": (40, 32760, 32760, 128),
    "wan-1.3b 81x480x832 self": (12, 32760, 32760, 128),
    "hunyuan 125x720x1280 self": (24, 115456, 115456, 128),
}


def probe(name: str, h: int, n: int, m: int, d: int, iters: int) -> dict:
    backend = FlashAttnBackend()
    q = torch.randn(1, n, h, d, device="cuda", dtype=torch.bfloat16)  # (B, L, H, D), as the seam passes it
    k, v = (torch.randn(1, m, h, d, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    t = time.perf_counter()
    out = backend.forward(q, k, v)
    torch.cuda.synchronize()
    first_s = time.perf_counter() - t

    def sdpa() -> torch.Tensor:
        return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))

    ref = F.scaled_dot_product_attention(*(x.transpose(1, 2).float() for x in (q[:, :256], k, v))).transpose(
        1, 2
    )
    err_fa = (out[:, :256].float() - ref).abs().max().item()
    err_sdpa = (sdpa().transpose(1, 2)[:, :256].float() - ref).abs().max().item()
    timed = time_interleaved(
        {"flash": lambda: backend.forward(q, k, v), "cudnn": sdpa}, warmup=1, iters=iters
    )
    flops = 4 * n * m * h * d
    fa, sd = timed["flash"][0].median_ms, timed["cudnn"][0].median_ms
    return dict(shape=name, impl=load_flash_attn()[0], flash_ms=round(fa, 2), cudnn_ms=round(sd, 2),
                ratio=round(fa / sd, 3), flash_tflops=round(flops / fa / 1e9), cudnn_tflops=round(flops / sd / 1e9),
                first_call_s=round(first_s, 1), max_err_flash=err_fa, max_err_cudnn=err_sdpa)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=7)
    ap.add_argument("--only", default="", help="shapes whose name contains this")
    a = ap.parse_args()
    reason = FlashAttnBackend.unavailable_reason()
    if reason:
        raise SystemExit(f"flash-attn backend unavailable: {reason}")
    print(
        torch.cuda.get_device_name(),
        "torch",
        torch.__version__,
        "flash-attn impl",
        load_flash_attn()[0],
        flush=True,
    )
    for name, (h, n, m, d) in SHAPES.items():
        if a.only in name:
            try:
                print(probe(name, h, n, m, d, a.iters), flush=True)
            except Exception as exc:  # a probe: say what failed and go on
                print(f"{name}: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
