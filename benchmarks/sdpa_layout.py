"""cuDNN SDPA time against the storage layout of q, k, v (issue #21), for self-attention and for
cross-attention to a short text: rows as a model's linears write them, ``(B, L, H, D)`` storage seen as
``(B, H, L, D)``, or head-major ``(B, H, L, D)`` storage, as diffusers' Cosmos processor leaves its keys
and values (``repeat_interleave`` copies them). One H100, 2026-12-06: self-attention at Cosmos-2B's
84480 tokens x 16 heads took 94.3 ms in all four layouts below.

    python benchmarks/sdpa_layout.py                      # Cosmos-Predict2-2B at 93x704x1280
    python benchmarks/sdpa_layout.py --kv-tokens 512      # its cross-attention to 512 text tokens
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F


def _time(fn, iters: int) -> float:  # type: ignore[no-untyped-def]
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def _make(layout: str, b: int, n: int, h: int, d: int, unit_rms: bool) -> torch.Tensor:
    """(B, H, n, D) bf16 in ``layout`` storage; ``unit_rms``: rows RMS-normalised as q and k are."""
    x = torch.randn(b, n, h, d, device="cuda", dtype=torch.float32)
    if unit_rms:
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
    x = x.to(torch.bfloat16)
    return x.transpose(1, 2) if layout == "rows" else x.transpose(1, 2).contiguous()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=84480)
    ap.add_argument("--kv-tokens", type=int, default=None, help="key/value length (default: --tokens)")
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--iters", type=int, default=20)
    a = ap.parse_args()
    b, h, n, d = 1, a.heads, a.tokens, a.head_dim
    m = a.kv_tokens or n
    print(torch.cuda.get_device_name(), torch.__version__, f"B={b} H={h} Lq={n} Lkv={m} D={d}", flush=True)
    for ql, kl, vl in [("rows",) * 3, ("rows", "heads", "heads"), ("heads", "heads", "rows"), ("heads",) * 3]:
        q, k = _make(ql, b, n, h, d, True), _make(kl, b, m, h, d, True)
        v = _make(vl, b, m, h, d, False)
        ms = _time(lambda: F.scaled_dot_product_attention(q, k, v), a.iters)  # noqa: B023
        print(f"q {ql:5s} k {kl:5s} v {vl:5s}: {ms:.3f} ms", flush=True)


if __name__ == "__main__":
    main()
