"""Microbenchmark of the fused Triton kernels (:mod:`fastvideo.kernels`, issues #20 / #21 / #23).

At the DiTs' real widths and token counts, bf16 on CUDA, each elementwise step of a block three ways:
the PyTorch code the model files run without the kernels (the reference), the fused kernel, and
``torch.compile`` of the reference (what regional compile gets). Reports milliseconds, the fused kernel's
effective bandwidth (the bytes it must move: one read of each input row, one write) and the largest
difference from the reference. ``--tiny``: a CPU dry run at tiny sizes (kernels under
``TRITON_INTERPRET=1``; the compile column uses the eager backend), nothing recorded.

    python benchmarks/bench_fused.py [--tokens 84480] [--tiny] [--no-record]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if "--tiny" in sys.argv:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fastvideo import kernels
from fastvideo.layers import rope_apply, rope_tables

SECTION = "Fused elementwise kernels vs PyTorch and torch.compile (bench_fused.py)"
HEADER = [
    "op",
    "shape",
    "reference ms",
    "fused ms",
    "compiled ms",
    "fused vs ref",
    "fused GB/s",
    "max |diff|",
    "card",
]


def timed(fn: Callable[[], Any], device: torch.device, iters: int) -> float:
    """Median ms of ``fn()`` after two warm-up calls (CUDA events on the GPU)."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


# --------------------------------------------------------------------------------------------------
# The reference code of the model files (copied from their blocks' unfused path)
# --------------------------------------------------------------------------------------------------


def cosmos_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    h = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)
    return h.to(weight.dtype) * weight if weight.dtype != torch.float32 else (h * weight).to(x.dtype)


def cosmos_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.float().chunk(2, dim=-1)
    return (x.float() * cos + torch.cat([-x2, x1], dim=-1) * sin).to(x.dtype)


def cases(tokens: int, device: torch.device, dtype: torch.dtype) -> list[tuple[str, str, Any, Any, int]]:
    """(op, shape, reference fn, fused fn, bytes the fused kernel must move)."""
    gen = torch.Generator(device=device).manual_seed(0)

    def randn(*shape: int, dt: torch.dtype = dtype) -> torch.Tensor:
        return torch.randn(*shape, device=device, dtype=dt, generator=gen)

    e = torch.tensor([], dtype=dtype).element_size()
    out: list[tuple[str, str, Any, Any, int]] = []
    # Cosmos-Predict2-2B: D 2048 = 16 x 128, per-frame modulation (Video2World), rotate-half RoPE, fp32 tables
    d, h, dh, frames = 2048, 16, 128, 24
    length = tokens - tokens % frames
    x = randn(1, length, d)
    mod = randn(1, frames, 3 * d) * 0.1
    index = torch.arange(frames, device=device).repeat_interleave(length // frames)
    rows = length * d * e

    def cosmos_sublayer_ref() -> torch.Tensor:
        shift, scale, gate = mod.index_select(1, index).chunk(3, dim=-1)
        hmod = torch.addcmul(shift, F.layer_norm(x, (d,), eps=1e-6), 1 + scale)
        return torch.addcmul(x, gate, hmod)  # the sub-layer's output stands in for y

    def cosmos_sublayer_fused() -> torch.Tensor:
        shift, scale, gate = mod.chunk(3, dim=-1)
        hmod = kernels.adaln_modulate(x, shift, scale, 1e-6, index=index)
        return kernels.gated_residual(x, hmod, gate, index=index)

    shape = f"1x{length}x{d}"
    out.append(
        (
            "cosmos adaLN + gated residual, per-frame",
            shape,
            cosmos_sublayer_ref,
            cosmos_sublayer_fused,
            5 * rows,
        )
    )
    shift, scale = randn(1, 1, d), randn(1, 1, d)
    out.append(
        (
            "LayerNorm + modulate, per-sample",
            shape,
            lambda: torch.addcmul(shift, F.layer_norm(x, (d,), eps=1e-6), 1 + scale),
            lambda: kernels.adaln_modulate(x, shift, scale, 1e-6),
            2 * rows,
        )
    )
    q = randn(1, length, d).unflatten(-1, (h, dh))
    w = 1 + randn(dh) * 0.1
    angles = torch.rand(length, 1, dh // 2, device=device, generator=gen) * 6
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)  # fp32, as Cosmos
    out.append(
        (
            "cosmos per-head RMSNorm + rotate-half RoPE",
            f"1x{length}x{h}x{dh}",
            lambda: cosmos_rope(cosmos_rms_norm(q, w, 1e-5), cos, sin),
            lambda: kernels.rms_norm_rope(q, w, cos, sin, 1e-5, dh, layout="half", signed_sin=False),
            2 * rows + 2 * length * dh * 4,
        )
    )
    out.append(
        (
            "cosmos per-head RMSNorm (cross-attn q)",
            f"1x{length}x{h}x{dh}",
            lambda: cosmos_rms_norm(q, w, 1e-5),
            lambda: kernels.rms_norm(q, w, 1e-5, dh),
            2 * rows,
        )
    )
    # LTX-Video 2B: D 2048 = 32 x 64, RMSNorm + modulate, full-width interleaved RoPE over (1, L, D) tables
    shift, scale = randn(1, 1, d), randn(1, 1, d)
    out.append(
        (
            "ltx RMSNorm + modulate, per-sample",
            shape,
            lambda: torch.addcmul(shift, F.rms_norm(x, (d,), eps=1e-6), 1 + scale),
            lambda: kernels.adaln_modulate(x, shift, scale, 1e-6, norm="rms"),
            2 * rows,
        )
    )
    qf = randn(1, length, d)
    wd = 1 + randn(d) * 0.1
    ang = (torch.rand(1, length, d // 2, device=device, generator=gen) * 6).repeat_interleave(2, -1)
    lcos, lsin = (
        ang.cos().to(dtype),
        (ang.sin() * torch.tensor([-1.0, 1.0], device=device).repeat(d // 2)).to(dtype),
    )
    out.append(
        (
            "ltx RMSNorm across heads + interleaved RoPE (B, L, D) tables",
            shape,
            lambda: rope_apply(F.rms_norm(qf, (d,), wd, 1e-5), lcos, lsin),
            lambda: kernels.rms_norm_rope(qf, wd, lcos, lsin, 1e-5, d),
            4 * rows,
        )
    )
    # Wan2.1-1.3B: D 1536 = 12 x 128, RMSNorm across heads + per-head interleaved RoPE (L, 1, Dh) tables
    dw, hw = 1536, 12
    qw = randn(1, length, dw)
    ww = 1 + randn(dw) * 0.1
    grid = (frames, length // frames // 40, 40) if not length % (frames * 40) else (1, length, 1)
    wcos, wsin = rope_tables(grid, (44, 42, 42), device=device, dtype=dtype)
    out.append(
        (
            "wan RMSNorm across heads + per-head interleaved RoPE",
            f"1x{length}x{hw}x128",
            lambda: rope_apply(F.rms_norm(qw, (dw,), ww, 1e-6).unflatten(-1, (hw, -1)), wcos, wsin),
            lambda: kernels.rms_norm_rope(qw.unflatten(-1, (hw, -1)), ww, wcos, wsin, 1e-6, dw),
            2 * length * dw * e,
        )
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=84480, help="Cosmos-Predict2 93x704x1280: 84480")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--tiny", action="store_true", help="CPU dry run at tiny sizes (interpreter)")
    ap.add_argument("--no-compile", dest="compile", action="store_false")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if args.tiny:
        args.tokens, args.iters = 48, 1
    card = torch.cuda.get_device_name() if device.type == "cuda" else "cpu (interpreter)"
    print(f"{card}: {args.tokens} tokens, {dtype}", flush=True)
    rows = []
    with torch.inference_mode():
        for op, shape, ref_fn, fused_fn, nbytes in cases(args.tokens, device, dtype):
            with kernels.forced(False):
                ref_ms = timed(ref_fn, device, args.iters)
                expected = ref_fn()
            with kernels.forced():
                fused_ms = timed(fused_fn, device, args.iters)
                got = fused_fn()
            diff = (got.float() - expected.float()).abs().max().item()
            comp_ms = float("nan")
            if args.compile:
                backend = "inductor" if device.type == "cuda" else "eager"
                compiled = torch.compile(ref_fn, backend=backend, dynamic=False)
                with kernels.forced(False):
                    comp_ms = timed(compiled, device, args.iters)
            gbs = nbytes / (fused_ms * 1e-3) / 1e9
            row = [op, shape, f"{ref_ms:.3f}", f"{fused_ms:.3f}", f"{comp_ms:.3f}", f"{ref_ms / fused_ms:.2f}x",
                   f"{gbs:.0f}", f"{diff:.2e}", card]  # fmt: skip
            rows.append(row)
            print(" | ".join(str(c) for c in row), flush=True)
            del expected, got
            torch._dynamo.reset()
    if not args.no_record and not args.tiny:
        from harness import append_row

        for row in rows:
            append_row(SECTION, HEADER, row)


if __name__ == "__main__":
    main()
