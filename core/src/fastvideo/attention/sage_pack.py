"""V for the ``sageattention`` package's Hopper kernel, packed by two Triton passes instead of the package's
four steps (a ``torch.cat`` padding V to 128 tokens, a transpose kernel writing a bf16 copy, a kernel
reading that copy twice for the channel maxima and the FP8 values): 1.45 ms of the 27 ms a Wan 14B
self-attention call takes on an H100 (``benchmarks/sage2_probe.py``'s parts); these take 0.37 ms
(``benchmarks/v_pack_probe.py``, H100, 1 x 32760 x 40 x 128). On by default (``FASTVIDEO_SAGE_V_PACK=0``
turns it off).

The kernel (``qk_int8_sv_f8_accum_f32_fuse_v_scale_attn_inst_buf``) takes V as float8_e4m3fn of shape
``(B, D, H, Lp)`` for ``(B, L, H, D)`` input (NHD), ``Lp`` = ``L`` rounded up to 128 (zeros past ``L``),
keys contiguous and, inside each group of 16 keys, in the order its FP8 MMA reads them: key ``m`` of a
group at position ``m // 8 * 2 + (m // 2) % 4 * 4 + m % 2``. One fp32 scale per (batch, head, channel),
``amax / 448``, the values ``v * (448 / amax)`` rounded to nearest e4m3: the package's recipe
(``per_channel_fp8`` without smoothing). Its extension is built with fast-math divisions, ours are
PyTorch's, so a scale may differ in the last bit and a rare value by one e4m3 step; a channel whose
maxima is zero (or too small for ``448 / amax`` to be finite) gets scale 0 and zeros, where the package
divides by zero.

    pass 1: per (batch x head, 128-key tile) the channel maxima of |v|; the tiles' maxima reduced by torch
    pass 2: per (batch x head, 64-key tile) v times 448 / amax to e4m3, stored transposed and permuted
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastvideo.attention.sage_triton import _to_e4m3, interpreting

#: Keys per program of the maxima pass.
AMAX_BLOCK = 128
#: Keys per program of the packing pass (a multiple of 16, the permutation's group).
PACK_BLOCK = 64


@triton.jit
def _v_amax(V, P, L, H, s_vb, s_vl, s_vh, BLOCK_L: tl.constexpr, D: tl.constexpr):
    """P[bh, tile, :] = max over the tile's keys of |v[b, key, h, :]| (fp32)."""
    tile, bh = tl.program_id(0), tl.program_id(1)
    b, h = bh // H, bh % H
    keys = tile * BLOCK_L + tl.arange(0, BLOCK_L)
    ch = tl.arange(0, D)
    ptrs = V + b.to(tl.int64) * s_vb + h.to(tl.int64) * s_vh + keys[:, None].to(tl.int64) * s_vl + ch[None, :]
    x = tl.load(ptrs, mask=(keys < L)[:, None], other=0.0).to(tl.float32)
    tl.store(P + (bh.to(tl.int64) * tl.num_programs(0) + tile) * D + ch, tl.max(tl.abs(x), 0))


@triton.jit
def _v_pack(
    V,
    R,
    OUT,
    L,
    H,
    LP,
    s_vb,
    s_vl,
    s_vh,
    BLOCK_L: tl.constexpr,
    D: tl.constexpr,
    EXACT_ROUND: tl.constexpr,
):
    """OUT[b, :, h, tile positions] = e4m3(v[b, key, h, :] * R[b, h, :]) (0 past L). Each output position
    reads the key it holds (position ``p`` of a group of 16 holds key ``p // 4 * 2 + (p // 2) % 2 * 8 +
    p % 2``), so rows load whole and the transposed tile stores contiguous positions."""
    tile, bh = tl.program_id(0), tl.program_id(1)
    b, h = bh // H, bh % H
    p = tl.arange(0, BLOCK_L)
    m = p % 16
    keys = tile * BLOCK_L + (p // 16) * 16 + (m // 4) * 2 + ((m // 2) % 2) * 8 + m % 2
    ch = tl.arange(0, D)
    ptrs = V + b.to(tl.int64) * s_vb + h.to(tl.int64) * s_vh + keys[:, None].to(tl.int64) * s_vl + ch[None, :]
    x = tl.load(ptrs, mask=(keys < L)[:, None], other=0.0).to(tl.float32)
    recp = tl.load(R + bh.to(tl.int64) * D + ch)  # (D,) fp32
    y = tl.trans(x * recp[None, :])  # (D, BLOCK_L): positions contiguous
    base = OUT + b.to(tl.int64) * D * H * LP + h * LP + tile * BLOCK_L
    tl.store(base + ch[:, None].to(tl.int64) * H * LP + p[None, :], _to_e4m3(y, EXACT_ROUND))


def _reciprocal(amax: torch.Tensor) -> torch.Tensor:
    """``448 / amax`` where that is finite, else 0 (the channel packs to zeros)."""
    finite = amax > 448.0 / torch.finfo(torch.float32).max
    return torch.where(finite, 448.0 / amax.clamp_min(1e-30), torch.zeros_like(amax))


def pack_v_sm90(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``v`` (B, L, H, D) fp16/bf16, D 64 or 128, last dim contiguous -> (float8_e4m3fn (B, D, H, Lp),
    fp32 scales (B, H, D)) as described in the module docstring."""
    b, length, h, d = v.shape
    if d not in (64, 128):
        raise ValueError(f"pack_v_sm90 takes head dim 64 or 128, got {d}")
    if v.stride(-1) != 1:
        v = v.contiguous()
    padded = triton.cdiv(length, 128) * 128
    tiles = triton.cdiv(length, AMAX_BLOCK)
    partial = torch.empty(b * h, tiles, d, dtype=torch.float32, device=v.device)
    strides = (v.stride(0), v.stride(1), v.stride(2))
    _v_amax[(tiles, b * h)](v, partial, length, h, *strides, BLOCK_L=AMAX_BLOCK, D=d, num_warps=8)
    amax = partial.amax(dim=1)  # (B*H, D)
    recp = _reciprocal(amax)
    out = torch.empty(b, d, h, padded, dtype=torch.float8_e4m3fn, device=v.device)
    _v_pack[(padded // PACK_BLOCK, b * h)](
        v,
        recp,
        out,
        length,
        h,
        padded,
        *strides,
        BLOCK_L=PACK_BLOCK,
        D=d,
        EXACT_ROUND=interpreting(),
        num_warps=8,
    )
    return out, (amax / 448.0).view(b, h, d)


def pack_v_reference(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`pack_v_sm90` in plain PyTorch (the tests' reference)."""
    b, length, h, d = v.shape
    padded = -(-length // 128) * 128
    amax = v.float().abs().amax(dim=1)  # (B, H, D)
    recp = _reciprocal(amax)
    order = [0, 1, 8, 9, 2, 3, 10, 11, 4, 5, 12, 13, 6, 7, 14, 15]  # position r holds key order[r] of a group
    x = torch.nn.functional.pad(v.float(), (0, 0, 0, 0, 0, padded - length)) * recp[:, None]
    x = x.view(b, padded // 16, 16, h, d)[:, :, order].to(torch.float8_e4m3fn)
    return x.permute(0, 4, 3, 1, 2).reshape(b, d, h, padded).contiguous(), amax / 448.0
