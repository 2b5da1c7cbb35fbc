"""Q, K and V to float8_e4m3fn with one scale per tensor (or per batch and head), for the ``fp8`` attention
backend (:mod:`fastvideo.attention.fp8_attn`).

K is smoothed by its mean over tokens (SageAttention's trick: softmax is unchanged, every logit of a query
row moving by the same amount). Q and K are then rotated along the head dim by the orthonormal Hadamard
matrix ``H = S / sqrt(D)`` (``S`` Sylvester's +-1 matrix; FlashAttention-3's "incoherent processing"):
``(q H)(k H)^T = q k^T``, so attention is unchanged, while a few outlier channels, which would set the
per-tensor scale and leave the other channels few significant bits, are spread over all of them (on
random data with 20x outliers in 4 of 128 channels, the spec's relative error 0.15 -> 0.045;
``rotate=False`` skips it). Each tensor is then multiplied by ``448 / bound`` and rounded to nearest e4m3.
The bounds are read on the device (no host sync) and need no second pass over the data: ``amax(v)``;
``amax(q)`` and ``amax(k) + amax(mean)`` (which bounds ``amax(k - mean)``), times ``sqrt(D)`` when rotated
(``|x H|`` is at most ``|x|_2 <= sqrt(D) amax(x)``). e4m3 is a floating format: a loose bound only moves the
values some binades down, far above its subnormals.

    stats:  amax(q), amax(k), amax(v) and mean(k) over tokens, in fp32: one Triton pass over the three
            tensors (partial maxima and sums per block of tokens), then two small reductions
    kernel: per (block of tokens, batch x head) x @ S (Q, K; exact products, fp32 sums), minus mean @ S
            (K), times the scale / sqrt(D), to e4m3, stored contiguous [B, L, H, D]
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from fastvideo.attention.sage_triton import _to_e4m3, interpreting

E4M3_MAX = 448.0
#: Tokens per program of the quantization kernel.
BLOCK_L = 64  # (the rotation reads its 32 KB +-1 matrix once per program, from L2)


@triton.jit
def _quantize(
    X,
    S,
    MEAN,
    SCALES,
    OUT,
    L,
    H,
    s_xb,
    s_xl,
    s_xh,
    which,
    n_scales,
    head_step,
    INV_NORM,
    D: tl.constexpr,
    ROTATE: tl.constexpr,
    HAS_MEAN: tl.constexpr,
    IEEE: tl.constexpr,
    BLOCK_L: tl.constexpr,
    EXACT_ROUND: tl.constexpr,
):
    """OUT[b, l, h, :] = e4m3((X[b, l, h, :] @ S - MEAN[b, h, :]) * scale * INV_NORM) (no ``@ S`` without
    ROTATE), scale = SCALES[which * n_scales + (b * H + h) * head_step] (one per tensor: head_step 0, or per
    batch and head: 1); X's last dim contiguous, OUT contiguous, MEAN (B, H, D) times S too when rotating."""
    lt, bh = tl.program_id(0), tl.program_id(1)
    b, h = bh // H, bh % H
    rows = lt * BLOCK_L + tl.arange(0, BLOCK_L)
    ch = tl.arange(0, D)
    mask = (rows < L)[:, None]
    base = X + b.to(tl.int64) * s_xb + h.to(tl.int64) * s_xh
    x = tl.load(base + rows[:, None].to(tl.int64) * s_xl + ch[None, :], mask=mask, other=0.0)
    if ROTATE:
        signs = tl.load(S + ch[:, None] * D + ch[None, :])  # (D, D) +-1 in x's dtype: exact products
        if IEEE:  # fp32 inputs, or the interpreter (whose bf16 dot is wrong): the same sums in fp32
            y = tl.dot(x.to(tl.float32), signs.to(tl.float32), input_precision="ieee")
        else:
            y = tl.dot(x, signs)
    else:
        y = x.to(tl.float32)
    if HAS_MEAN:
        y = y - tl.load(MEAN + bh.to(tl.int64) * D + ch)[None, :]
    scale = tl.load(SCALES + which * n_scales + bh * head_step)
    y = tl.minimum(tl.maximum(y * (scale * INV_NORM), -448.0), 448.0)
    out = OUT + ((b.to(tl.int64) * L + rows[:, None].to(tl.int64)) * H + h) * D + ch[None, :]
    tl.store(out, _to_e4m3(y, EXACT_ROUND), mask=mask)


_SIGNS: dict[tuple[int, torch.dtype, torch.device], torch.Tensor] = {}


def hadamard_signs(
    d: int, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Sylvester's (d, d) matrix of +-1 (d a power of two; ``S S^T = d I``), cached per dtype and device."""
    if d < 1 or d & (d - 1):
        raise ValueError(f"a Hadamard rotation needs a power-of-two head dim, got {d}")
    key = (d, dtype, torch.device(device))
    if key not in _SIGNS:
        s = torch.ones(1, 1)
        while s.shape[0] < d:
            s = torch.cat([torch.cat([s, s], 1), torch.cat([s, -s], 1)], 0)
        _SIGNS[key] = s.to(device=device, dtype=dtype)
    return _SIGNS[key]


@triton.jit
def _dequantize(X, SCALE, OUT, N, BLOCK: tl.constexpr):
    """OUT[i] = X[i] * SCALE[0], X e4m3, OUT in its own dtype."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(OUT + offs, (x * tl.load(SCALE)).to(OUT.dtype.element_ty), mask=mask)


def dequantize(x8: torch.Tensor, descale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x8`` (float8_e4m3fn, contiguous) times ``descale`` (a (1,) fp32 tensor on its device), in ``dtype``:
    one pass (cuDNN's e4m3 attention output back to the model's dtype)."""
    out = torch.empty(x8.shape, dtype=dtype, device=x8.device)
    n = x8.numel()
    block = 4096
    _dequantize[(triton.cdiv(n, block),)](x8, descale, out, n, BLOCK=block, num_warps=8)
    return out


@triton.jit
def _stats(
    Q,
    K,
    V,
    AMAX,
    KSUM,
    LQ,
    LK,
    H,
    s_qb,
    s_ql,
    s_qh,
    s_kb,
    s_kl,
    s_kh,
    s_vb,
    s_vl,
    s_vh,
    D: tl.constexpr,
    DV: tl.constexpr,
    BLOCK_L: tl.constexpr,
):
    """One read of Q, K and V: per program (block of tokens, batch x head) the maxima of |q|, |k|, |v|
    (AMAX[0 / 1 / 2, program]) and K's sums over its tokens (KSUM[block, batch x head, :]), all fp32."""
    lt, bh = tl.program_id(0), tl.program_id(1)
    b, h = bh // H, bh % H
    programs = tl.num_programs(0) * tl.num_programs(1)
    pid = bh * tl.num_programs(0) + lt
    rows = (lt * BLOCK_L + tl.arange(0, BLOCK_L)).to(tl.int64)
    ch, chv = tl.arange(0, D), tl.arange(0, DV)
    q_ptrs = Q + b.to(tl.int64) * s_qb + h.to(tl.int64) * s_qh + rows[:, None] * s_ql + ch[None, :]
    x = tl.load(q_ptrs, mask=(rows < LQ)[:, None], other=0.0).to(tl.float32)
    tl.store(AMAX + pid, tl.max(tl.max(tl.abs(x), 1), 0))
    keys = (rows < LK)[:, None]
    k_ptrs = K + b.to(tl.int64) * s_kb + h.to(tl.int64) * s_kh + rows[:, None] * s_kl + ch[None, :]
    x = tl.load(k_ptrs, mask=keys, other=0.0).to(tl.float32)
    tl.store(AMAX + programs + pid, tl.max(tl.max(tl.abs(x), 1), 0))
    tl.store(KSUM + (lt.to(tl.int64) * tl.num_programs(1) + bh) * D + ch, tl.sum(x, 0))
    v_ptrs = V + b.to(tl.int64) * s_vb + h.to(tl.int64) * s_vh + rows[:, None] * s_vl + chv[None, :]
    x = tl.load(v_ptrs, mask=keys, other=0.0).to(tl.float32)
    tl.store(AMAX + 2 * programs + pid, tl.max(tl.max(tl.abs(x), 1), 0))


def qkv_stats(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, per_head: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(amax of |q|, |k|, |v| (3,) or, per_head, (3, B * H), mean of k over tokens (B, 1, H, D))`` in fp32
    from one Triton pass over the three tensors (last dims contiguous) and two small reductions of its
    partial results."""
    b, lq, h, d = q.shape
    lk, dv = k.shape[1], v.shape[-1]
    blocks = triton.cdiv(max(lq, lk), BLOCK_L)
    amax = torch.empty(3, blocks * b * h, dtype=torch.float32, device=q.device)
    ksum = torch.empty(blocks, b * h, d, dtype=torch.float32, device=q.device)
    _stats[(blocks, b * h)](
        q, k, v, amax, ksum, lq, lk, h, q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1),
        k.stride(2), v.stride(0), v.stride(1), v.stride(2), D=d, DV=dv, BLOCK_L=BLOCK_L, num_warps=4,
    )  # fmt: skip
    mean = (ksum.sum(dim=0) / lk).view(b, 1, h, d)
    return (amax.view(3, b * h, blocks).amax(dim=2) if per_head else amax.amax(dim=1)), mean


def _scales_from(
    amax_q: torch.Tensor, amax_k: torch.Tensor, amax_v: torch.Tensor, mean: torch.Tensor, spread: float
) -> torch.Tensor:
    """``448 / bound`` for q, k - mean and v (see the module docstring), (3,) from scalar maxima or (3, B * H)
    from per-head ones; a tensor of zeros gets a finite scale."""
    mean_amax = _amax(mean) if amax_q.dim() == 0 else mean.abs().amax(dim=-1).flatten()  # (B * H,)
    bounds = torch.stack([amax_q * spread, (amax_k + mean_amax) * spread, amax_v])
    return E4M3_MAX / bounds.clamp_min(1e-30)


def _amax(x: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(x, ord=float("inf"), dtype=torch.float32)


def qkv_scales(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rotate: bool = True, per_head: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scales (3,) or, per_head, (3, B * H), mean of k over tokens (B, 1, H, D))``, fp32 on the inputs'
    device: the factors that map q, k - mean (both rotated by ``H = S / sqrt(D)`` when ``rotate``) and v into
    e4m3's range (see the module docstring); a tensor of zeros gets a finite scale."""
    mean = k.mean(dim=1, keepdim=True, dtype=torch.float32)
    spread = math.sqrt(q.shape[-1]) if rotate else 1.0
    if per_head:  # maxima over tokens and channels of each (batch, head)
        aq, ak, av = (x.float().abs().amax(dim=(1, 3)).flatten() for x in (q, k, v))
        return _scales_from(aq, ak, av, mean, spread), mean
    return _scales_from(_amax(q), _amax(k), _amax(v), mean, spread), mean


def quantize_qkv(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rotate: bool = True, per_head: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``q``, ``k``, ``v`` (B, L, H, D), fp16/bf16/fp32, as many K/V heads as Q heads, D a power of two when
    ``rotate`` -> e4m3 copies, contiguous (Q and K rotated, K smoothed), and the descales (``1 / scale``, fp32,
    (3,) or with ``per_head`` one per batch and head, (3, B, H)): ``q H ~= q8 * descale[0]``,
    ``(k - mean) H ~= k8 * descale[1]``, ``v ~= v8 * descale[2]``."""
    q, k, v = (x if x.stride(3) == 1 else x.contiguous() for x in (q, k, v))
    b, d = q.shape[0], q.shape[-1]
    amax, mean = qkv_stats(q, k, v, per_head)  # qkv_scales' numbers (the mean summed in another order)
    scales = _scales_from(amax[0], amax[1], amax[2], mean, math.sqrt(d) if rotate else 1.0)
    n_scales = scales.shape[1] if per_head else 1
    mean = mean.squeeze(1)  # (B, H, D), contiguous
    if rotate:
        mean = mean @ hadamard_signs(d, device=mean.device)  # subtracted from k @ S, before the 1 / sqrt(D)
    outs = []
    for which, x in enumerate((q, k, v)):
        length, h, dx = x.shape[1:]
        out = torch.empty(x.shape, dtype=torch.float8_e4m3fn, device=x.device)
        turn = rotate and which < 2
        signs = hadamard_signs(dx, x.dtype, x.device) if turn else scales  # an unused pointer unrotated
        _quantize[(triton.cdiv(length, BLOCK_L), b * h)](
            x,
            signs,
            mean if which == 1 else scales,  # likewise without a mean
            scales,
            out,
            length,
            h,
            x.stride(0),
            x.stride(1),
            x.stride(2),
            which,
            n_scales,
            1 if per_head else 0,
            1.0 / math.sqrt(dx) if turn else 1.0,
            D=dx,
            ROTATE=turn,
            HAS_MEAN=which == 1,
            IEEE=x.dtype == torch.float32 or interpreting(),
            BLOCK_L=BLOCK_L,
            EXACT_ROUND=interpreting(),
            num_warps=4,
        )
        outs.append(out)
    descale = 1.0 / scales
    return outs[0], outs[1], outs[2], descale.view(3, b, -1) if per_head else descale


def quantize_qkv_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rotate: bool = True, per_head: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`quantize_qkv` in plain PyTorch (the tests' reference), in the kernel's order of operations."""
    scales, mean = qkv_scales(q, k, v, rotate, per_head)
    b, _, h, d = q.shape
    if per_head:  # (3, B * H) -> (3, B, 1, H, 1): broadcast over tokens and channels
        scales = scales.view(3, b, 1, h, 1)
    if rotate:
        signs = hadamard_signs(d, device=q.device)
        qr, kr = q.float() @ signs, k.float() @ signs - mean @ signs
        factors = [scales[0] / math.sqrt(d), scales[1] / math.sqrt(d)]
    else:
        qr, kr, factors = q.float(), k.float() - mean, [scales[0], scales[1]]
    q8, k8, v8 = (
        (x * s).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
        for x, s in ((qr, factors[0]), (kr, factors[1]), (v.float(), scales[2]))
    )
    return q8, k8, v8, (1.0 / scales).view(3, b, h) if per_head else 1.0 / scales
