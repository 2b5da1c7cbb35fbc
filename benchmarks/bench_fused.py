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
import sys
from pathlib import Path
from typing import Any

if "--tiny" in sys.argv:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import time_call

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
    # Cosmos: a sub-layer's gated residual and the next sub-layer's adaLN in one pass (per-frame rows)
    y = randn(1, length, d)

    def cosmos_boundary_ref() -> tuple[torch.Tensor, torch.Tensor]:
        gate, shift, scale = mod.index_select(1, index).chunk(3, dim=-1)
        xs = torch.addcmul(x, gate, y)
        return xs, torch.addcmul(shift, F.layer_norm(xs, (d,), eps=1e-6), 1 + scale)

    def cosmos_boundary_two_kernels() -> tuple[torch.Tensor, torch.Tensor]:
        gate, shift, scale = mod.chunk(3, dim=-1)
        xs = kernels.gated_residual(x, y, gate, index=index)
        return xs, kernels.adaln_modulate(xs, shift, scale, 1e-6, index=index)

    def cosmos_boundary_fused() -> tuple[torch.Tensor, ...]:
        gate, shift, scale = mod.chunk(3, dim=-1)
        return kernels.gated_residual_adaln(x, y, gate, shift, scale, 1e-6, index=index)

    out.append(("cosmos residual + next adaLN, two kernels (before)", shape, cosmos_boundary_ref,
                cosmos_boundary_two_kernels, 5 * rows))  # fmt: skip
    out.append(("cosmos residual + next adaLN, gated_residual_adaln", shape, cosmos_boundary_ref,
                cosmos_boundary_fused, 4 * rows))  # fmt: skip
    # LTX-2 19B video self-attention q and k: RMSNorm across 32 x 128, split RoPE by (B, H, L, 64) fp32 tables
    dl, hl, lt = 4096, 32, min(length, 15360)
    ql, kl = randn(1, lt, dl), randn(1, lt, dl)
    wq, wk = 1 + randn(dl) * 0.1, 1 + randn(dl) * 0.1
    ang = torch.rand(1, hl, lt, dl // hl // 2, device=device, generator=gen) * 6
    scos, ssin = ang.cos(), ang.sin()

    def ltx2_split(t: torch.Tensor, w: torch.Tensor) -> torch.Tensor:  # the model's rms_norm + rope_split
        n = F.rms_norm(t, (dl,), w, 1e-6)
        th = n.reshape(1, lt, hl, 2, -1).float()
        c, sn = scos.transpose(1, 2), ssin.transpose(1, 2)
        first, second = th[..., 0, :], th[..., 1, :]
        return (
            torch.stack((first * c - second * sn, second * c + first * sn), dim=-2)
            .reshape(1, lt, -1)
            .to(t.dtype)
        )

    def ltx2_pair_fused() -> tuple[torch.Tensor, torch.Tensor]:
        c, sn = scos.transpose(1, 2), ssin.transpose(1, 2)
        qo, ko = kernels.rms_norm_rope_pair(ql.unflatten(-1, (hl, -1)), kl.unflatten(-1, (hl, -1)), wq, wk, c, sn,
                                            1e-6, dl, layout="half", signed_sin=False)  # fmt: skip
        return qo.flatten(2), ko.flatten(2)

    def ltx2_two_kernels() -> tuple[torch.Tensor, torch.Tensor]:
        c, sn = scos.transpose(1, 2), ssin.transpose(1, 2)
        kw: dict[str, Any] = {"layout": "half", "signed_sin": False}
        qo = kernels.rms_norm_rope(ql.unflatten(-1, (hl, -1)), wq, c, sn, 1e-6, dl, **kw)
        return qo.flatten(2), kernels.rms_norm_rope(
            kl.unflatten(-1, (hl, -1)), wk, c, sn, 1e-6, dl, **kw
        ).flatten(2)

    lrows, tables = lt * dl * e, 2 * scos.numel() * 4
    out.append(("ltx2 q, k RMSNorm + split RoPE, two kernels (before)", f"2x1x{lt}x{dl}",
                lambda: (ltx2_split(ql, wq), ltx2_split(kl, wk)), ltx2_two_kernels, 4 * lrows + 2 * tables))  # fmt: skip
    out.append(("ltx2 q, k RMSNorm + split RoPE, rms_norm_rope_pair", f"2x1x{lt}x{dl}",
                lambda: (ltx2_split(ql, wq), ltx2_split(kl, wk)), ltx2_pair_fused, 4 * lrows + tables))  # fmt: skip
    # LTX-2 feed-forward fc1 + GELU-tanh (a probe, not used by the model): cuBLASLt's GELU epilogue
    if device.type == "cuda":
        xf = randn(lt, dl)
        w1, b1 = randn(4 * dl, dl) * 0.02, randn(4 * dl) * 0.02
        out.append(("ltx2 ff fc1 + GELU-tanh: addmm + gelu_ vs _addmm_activation (probe)", f"{lt}x{dl}->{4 * dl}",
                    lambda: torch.ops.aten.gelu_(F.linear(xf, w1, b1), approximate="tanh"),
                    lambda: torch._addmm_activation(b1, xf, w1.t(), use_gelu=True), 2 * lt * 4 * dl * e))  # fmt: skip
    return out


def _max_diff(got: Any, expected: Any) -> float:
    if isinstance(got, tuple):
        return max(_max_diff(g, x) for g, x in zip(got, expected, strict=True))
    return (got.float() - expected.float()).abs().max().item()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=84480, help="Cosmos-Predict2 93x704x1280: 84480")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--tiny", action="store_true", help="CPU dry run at tiny sizes (interpreter)")
    ap.add_argument("--no-compile", dest="compile", action="store_false")
    ap.add_argument("--no-record", action="store_true")
    ap.add_argument(
        "--only", nargs="*", default=None, help="run only the ops whose name contains one of these"
    )
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
            if args.only is not None and not any(word in op for word in args.only):
                continue
            with kernels.forced(False):
                ref_ms = time_call(op, ref_fn, device=device, iters=args.iters)[0].median_ms
                expected = ref_fn()
            with kernels.forced():
                fused_ms = time_call(op, fused_fn, device=device, iters=args.iters)[0].median_ms
                got = fused_fn()
            diff = _max_diff(got, expected)
            comp_ms = float("nan")
            if args.compile:
                backend = "inductor" if device.type == "cuda" else "eager"
                compiled = torch.compile(ref_fn, backend=backend, dynamic=False)
                with kernels.forced(False):
                    comp_ms = time_call(op, compiled, device=device, iters=args.iters)[0].median_ms
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
