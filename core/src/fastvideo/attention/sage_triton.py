"""Triton kernels of 8-bit attention (SageAttention's recipe): INT8 ``Q K^T`` with per-block scales,
online softmax in fp32, ``P V`` in fp16 with fp32 accumulation.

Inputs are prepared by :func:`quantize_blocks` (called from :func:`sage_attention_triton`): ``q`` is
pre-multiplied by ``scale * log2(e)`` (so the kernel uses ``exp2``), ``k`` is smoothed by subtracting
its mean over tokens (softmax is unchanged: every logit of a query row moves by the same amount), and
both are quantized to int8 with one scale per block of ``BLOCK_M`` (q) or ``BLOCK_N`` (k) tokens of
one (batch, head). ``v`` and the output keep the seam's ``[B, L, H, D]`` layout (strided loads, no copy).
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634

# --------------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------------

#: (BLOCK_M, BLOCK_N, num_warps, num_stages) on the GPU: 128 query rows per program (two warpgroups),
#: 64 keys per step.
GPU_CONFIG = (128, 64, 8, 3)
#: The interpreter: bigger blocks mean fewer (slow) interpreted steps.
INTERPRETER_CONFIG = (64, 64, 4, 1)


def block_config() -> tuple[int, int, int, int]:
    """``(BLOCK_M, BLOCK_N, num_warps, num_stages)`` the launcher uses here (the quantization blocks)."""
    return INTERPRETER_CONFIG if interpreting() else GPU_CONFIG


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


# --------------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------------


@triton.jit
def _sage_fwd(
    Q,
    K,
    V,
    Out,
    QS,
    KS,  # int8 [B, H, Lqp, D], int8 [B, H, Lkp, D], [B, Lk, H, D], [B, Lq, H, D], fp32 scales
    H,
    Lq,
    Lk,
    NBQ,
    NBK,
    D,
    s_vb,
    s_vl,
    s_vh,  # strides of V (the last dim is contiguous)
    s_ob,
    s_ol,
    s_oh,  # strides of O
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    mblock = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh - b * H
    rows = mblock * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_D)
    dmask = cols < D
    lqp = NBQ * BLOCK_M
    lkp = NBK * BLOCK_N
    q = tl.load(Q + (bh.to(tl.int64) * lqp + rows[:, None]) * D + cols[None, :], mask=dmask[None, :], other=0)
    q_scale = tl.load(QS + bh * NBQ + mblock)
    m_i = tl.full([BLOCK_M], -float("inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for nblock in range(0, NBK):
        keys = nblock * BLOCK_N + tl.arange(0, BLOCK_N)
        k = tl.load(
            K + (bh.to(tl.int64) * lkp + keys[:, None]) * D + cols[None, :], mask=dmask[None, :], other=0
        )
        k_scale = tl.load(KS + bh * NBK + nblock)
        s = tl.dot(q, tl.trans(k)).to(tl.float32) * (q_scale * k_scale)  # (BLOCK_M, BLOCK_N), base-2 logits
        s = tl.where((keys < Lk)[None, :], s, -float("inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v_ptr = V + b.to(tl.int64) * s_vb + h * s_vh + keys[:, None].to(tl.int64) * s_vl + cols[None, :]
        v = tl.load(v_ptr, mask=(keys < Lk)[:, None] & dmask[None, :], other=0.0).to(tl.float16)
        acc = acc * alpha[:, None] + tl.dot(p.to(tl.float16), v)
        m_i = m_new
    out = acc / l_i[:, None]
    o_ptr = Out + b.to(tl.int64) * s_ob + h * s_oh + rows[:, None].to(tl.int64) * s_ol + cols[None, :]
    tl.store(o_ptr, out.to(Out.dtype.element_ty), mask=(rows < Lq)[:, None] & dmask[None, :])


@triton.jit
def _quantize_fwd(
    X,
    MEAN,
    Q,
    S,  # [B, L, H, D] (strided), fp32 [B, H, D] or unused, int8 [B, H, NB * BLOCK, D], fp32 [B, H, NB]
    H,
    L,
    NB,
    D,
    s_xb,
    s_xl,
    s_xh,
    multiplier,
    HAS_MEAN: tl.constexpr,
    BLOCK: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    block = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh - b * H
    rows = block * BLOCK + tl.arange(0, BLOCK)
    cols = tl.arange(0, BLOCK_D)
    mask = (rows < L)[:, None] & (cols < D)[None, :]
    x_ptr = X + b.to(tl.int64) * s_xb + h * s_xh + rows[:, None].to(tl.int64) * s_xl + cols[None, :]
    x = tl.load(x_ptr, mask=mask, other=0.0).to(tl.float32)
    if HAS_MEAN:
        mean = tl.load(MEAN + bh * D + cols, mask=cols < D, other=0.0)
        x = tl.where(mask, x - mean[None, :], 0.0)
    x = x * multiplier
    scale = tl.maximum(tl.max(tl.max(tl.abs(x), 1), 0), 1e-12) / 127.0
    y = x / scale
    y = tl.where(y >= 0, tl.floor(y + 0.5), tl.ceil(y - 0.5))  # round half away from zero
    y = tl.minimum(tl.maximum(y, -127.0), 127.0)
    q_ptr = Q + (bh.to(tl.int64) * NB * BLOCK + rows[:, None]) * D + cols[None, :]
    tl.store(q_ptr, y.to(tl.int8), mask=(cols < D)[None, :])
    tl.store(S + bh * NB + block, scale)


#: On the GPU, warps and pipeline stages are searched at the first call of each (head dim, key
#: length); the block sizes stay fixed (they are the quantization blocks).
GPU_TUNING = [
    triton.Config({}, num_warps=w, num_stages=n) for w, n in ((8, 3), (4, 3), (8, 2), (4, 2), (8, 4))
]
_sage_fwd_tuned = triton.autotune(configs=GPU_TUNING, key=["D", "Lk"])(_sage_fwd)


# --------------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------------


def quantize_blocks(
    x: torch.Tensor, block: int, multiplier: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` [B, L, H, D] -> (int8 [B, H, nb * block, D] (zero padded), fp32 scales [B, H, nb]) with
    ``x * multiplier ~= q * scale`` per block of ``block`` tokens of one (batch, head)."""
    b, length, h, d = x.shape
    nb = triton.cdiv(length, block)
    xt = x.transpose(1, 2).float()  # (B, H, L, D)
    if multiplier != 1.0:
        xt = xt * multiplier
    xt = torch.nn.functional.pad(xt, (0, 0, 0, nb * block - length)).view(b, h, nb, block, d)
    scale = xt.abs().amax(dim=(3, 4)).clamp(min=1e-12) / 127.0  # (B, H, nb)
    q = (xt / scale[..., None, None]).round_().clamp_(-127, 127).to(torch.int8)
    return q.view(b, h, nb * block, d), scale.contiguous()


def quantize_blocks_triton(
    x: torch.Tensor, block: int, multiplier: float = 1.0, *, mean: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`quantize_blocks` of ``x - mean`` (``mean`` fp32 [B, H, D], broadcast over tokens) in one
    Triton pass over ``x``."""
    b, length, h, d = x.shape
    nb = triton.cdiv(length, block)
    if x.stride(-1) != 1:
        x = x.contiguous()
    q = torch.empty(b, h, nb * block, d, dtype=torch.int8, device=x.device)
    scale = torch.empty(b, h, nb, dtype=torch.float32, device=x.device)
    _quantize_fwd[(nb, b * h)](
        x, mean if mean is not None else scale, q, scale,
        h, length, nb, d, x.stride(0), x.stride(1), x.stride(2), float(multiplier),
        HAS_MEAN=mean is not None, BLOCK=block, BLOCK_D=max(32, 1 << math.ceil(math.log2(d))),
    )  # fmt: skip
    return q, scale


def smooth_k(k: torch.Tensor) -> torch.Tensor:
    """``k`` minus its mean over tokens (per batch, head and channel); attention is unchanged."""
    return k - k.float().mean(dim=1, keepdim=True).to(k.dtype)


def sage_attention_triton(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None
) -> torch.Tensor:
    """8-bit attention of ``[B, L, H, D]`` tensors (any L, D <= 256); returns ``q``'s dtype and layout."""
    b, lq, h, d = q.shape
    lk = k.shape[1]
    block_m, block_n, warps, stages = block_config()
    scale = d**-0.5 if scale is None else scale
    qq, qs = quantize_blocks_triton(q, block_m, scale * LOG2E)
    kq, ks = quantize_blocks_triton(k, block_n, mean=k.float().mean(dim=1).contiguous())
    if v.stride(-1) != 1:
        v = v.contiguous()
    out = torch.empty_like(q) if q.stride(-1) == 1 else torch.empty(q.shape, dtype=q.dtype, device=q.device)
    nbq, nbk = qs.shape[-1], ks.shape[-1]
    grid = (nbq, b * h)
    args = (
        qq, kq, v, out, qs, ks,
        h, lq, lk, nbq, nbk, d,
        v.stride(0), v.stride(1), v.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
    )  # fmt: skip
    blocks = {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_D": max(32, 1 << math.ceil(math.log2(d)))}
    if interpreting():
        _sage_fwd[grid](*args, **blocks, num_warps=warps, num_stages=stages)
    else:
        _sage_fwd_tuned[grid](*args, **blocks)
    return out
