"""Q, K and V to float8_e4m3fn with one scale per tensor, for the ``cudnn-fp8`` backend
(:mod:`fastvideo.attention.fp8_cudnn`): K smoothed by its mean over tokens first (SageAttention's trick;
softmax is unchanged, every logit of a query row moving by the same amount), then each tensor times
``448 / bound``, rounded to nearest e4m3. The bounds are amaxes read on the device (no host sync):
``amax(q)``, ``amax(v)`` and, for the smoothed K, ``amax(k) + amax(mean)``, an upper bound of
``amax(k - mean)`` that needs no second pass over K (e4m3 is a floating format: a bound up to twice the
true maximum only moves the values one binade down, far above its subnormals).

    stats:  amax(q), amax(k), amax(v) (torch's inf-norm reductions) and mean(k) over tokens, in fp32
    kernel: per (block of tokens, batch, block of channels) x - mean (K only) times its scale, to e4m3
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastvideo.attention.sage_triton import _to_e4m3, interpreting

E4M3_MAX = 448.0
#: Tokens and channels (heads x head dim) per program of the quantization kernel.
BLOCK_L, BLOCK_C = 32, 128


@triton.jit
def _quantize(
    X,
    MEAN,
    SCALES,
    OUT,
    L,
    C,
    s_xb,
    s_xl,
    which,
    HAS_MEAN: tl.constexpr,
    BLOCK_L: tl.constexpr,
    BLOCK_C: tl.constexpr,
    EXACT_ROUND: tl.constexpr,
):
    """OUT[b, l, c] = e4m3((X[b, l, c] - MEAN[b, c]) * SCALES[which]); X's channels contiguous, OUT contiguous."""
    lt, b, ct = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rows = lt * BLOCK_L + tl.arange(0, BLOCK_L)
    cols = ct * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = (rows < L)[:, None] & (cols < C)[None, :]
    ptrs = X + b.to(tl.int64) * s_xb + rows[:, None].to(tl.int64) * s_xl + cols[None, :]
    x = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
    if HAS_MEAN:
        x = x - tl.load(MEAN + b.to(tl.int64) * C + cols, mask=cols < C, other=0.0)[None, :]
    y = tl.minimum(tl.maximum(x * tl.load(SCALES + which), -448.0), 448.0)
    out = OUT + (b.to(tl.int64) * L + rows[:, None].to(tl.int64)) * C + cols[None, :]
    tl.store(out, _to_e4m3(y, EXACT_ROUND), mask=mask)


def _amax(x: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(x, ord=float("inf"), dtype=torch.float32)


def qkv_scales(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scales (3,), mean of k over tokens (B, 1, H, D))``, fp32 on the inputs' device: the factors that map
    q, k - mean and v into e4m3's range (see the module docstring); a tensor of zeros gets a finite scale."""
    mean = k.mean(dim=1, keepdim=True, dtype=torch.float32)
    bounds = torch.stack([_amax(q), _amax(k) + _amax(mean), _amax(v)])
    return E4M3_MAX / bounds.clamp_min(1e-30), mean


def quantize_qkv(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``q``, ``k``, ``v`` (B, L, H, D), fp16/bf16/fp32 -> e4m3 copies, contiguous, K smoothed, and the three
    descales (``1 / scale``, fp32 (3,)): ``x ~= e4m3 * descale`` (K: ``k - mean``)."""
    scales, mean = qkv_scales(q, k, v)
    outs = []
    for which, x in enumerate((q, k, v)):
        b, length, h, d = x.shape
        if x.stride(3) != 1 or x.stride(2) != d:  # the kernel reads H x D channels as one contiguous row
            x = x.contiguous()
        out = torch.empty(x.shape, dtype=torch.float8_e4m3fn, device=x.device)
        grid = (triton.cdiv(length, BLOCK_L), b, triton.cdiv(h * d, BLOCK_C))
        _quantize[grid](
            x,
            mean if which == 1 else scales,  # an unused pointer when there is no mean
            scales,
            out,
            length,
            h * d,
            x.stride(0),
            x.stride(1),
            which,
            HAS_MEAN=which == 1,
            BLOCK_L=BLOCK_L,
            BLOCK_C=BLOCK_C,
            EXACT_ROUND=interpreting(),
            num_warps=4,
        )
        outs.append(out)
    return outs[0], outs[1], outs[2], 1.0 / scales


def quantize_qkv_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`quantize_qkv` in plain PyTorch (the tests' reference)."""
    scales, mean = qkv_scales(q, k, v)
    q8, k8, v8 = (
        (x.float() * s).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
        for x, s in ((q, scales[0]), (k.float() - mean, scales[1]), (v, scales[2]))
    )
    return q8, k8, v8, 1.0 / scales
