"""Triton kernels of :mod:`fastvideo.kernels`: one program per token row, the whole row in registers
(``BLOCK = next_power_of_2(width)``), statistics and arithmetic in fp32, one read of the input and one
write of the output, rounded once to the output's dtype.

Imported lazily (only when a fused op runs), so importing :mod:`fastvideo.kernels` never needs Triton.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _warps(block: int) -> int:
    """Warps per program: about 8 to 16 elements per thread (16-byte vector loads in bf16)."""
    return max(1, min(16, block // 512))


# --------------------------------------------------------------------------------------------------
# adaLN: norm then modulate
# --------------------------------------------------------------------------------------------------


@triton.jit
def _adaln_kernel(
    X,
    SHIFT,
    SCALE,
    INDEX,
    W,
    BIAS,
    OUT,
    L,
    D,
    eps,
    sxb,
    sxl,
    ssb,
    ssl,
    scb,
    scl,
    sob,
    sol,
    BLOCK: tl.constexpr,
    RMS: tl.constexpr,
    HAS_INDEX: tl.constexpr,
    HAS_W: tl.constexpr,
    HAS_B: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    b = row // L
    t = row % L
    cols = tl.arange(0, BLOCK)
    mask = cols < D
    x = tl.load(X + b * sxb + t * sxl + cols, mask=mask, other=0.0).to(tl.float32)
    if RMS:
        xn = x * tl.rsqrt(tl.sum(x * x, axis=0) / D + eps)
    else:
        xc = tl.where(mask, x - tl.sum(x, axis=0) / D, 0.0)
        xn = xc * tl.rsqrt(tl.sum(xc * xc, axis=0) / D + eps)
    if HAS_W:
        xn = xn * tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_B:
        xn = xn + tl.load(BIAS + cols, mask=mask, other=0.0).to(tl.float32)
    m = t
    if HAS_INDEX:
        m = tl.load(INDEX + t).to(tl.int64)
    shift = tl.load(SHIFT + b * ssb + m * ssl + cols, mask=mask, other=0.0).to(tl.float32)
    scale = tl.load(SCALE + b * scb + m * scl + cols, mask=mask, other=0.0).to(tl.float32)
    y = xn * (1.0 + scale) + shift
    tl.store(OUT + b * sob + t * sol + cols, y.to(OUT.dtype.element_ty), mask=mask)


def _mod_strides(m: torch.Tensor, b: int, rows: int, name: str) -> tuple[torch.Tensor, int, int]:
    """``m`` broadcast to ``(B, rows, D)``: (tensor with unit last stride, batch stride, row stride)."""
    m = m.expand(b, rows, m.shape[-1])
    if m.stride(-1) != 1:
        m = m.contiguous()
    return m, m.stride(0), m.stride(1)


def adaln(
    x: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    eps: float,
    rms: bool,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    index: torch.Tensor | None,
) -> torch.Tensor:
    """Launch :func:`_adaln_kernel` on ``x`` ``(B, L, D)``; shift / scale ``(B or 1, Lm, D)``."""
    b, length, d = x.shape
    if x.stride(-1) != 1:
        x = x.contiguous()
    rows = shift.shape[1] if index is not None else length
    shift, ssb, ssl = _mod_strides(shift, b, rows, "shift")
    scale, scb, scl = _mod_strides(scale, b, rows, "scale")
    out = torch.empty((b, length, d), device=x.device, dtype=x.dtype)
    if out.numel() == 0:
        return out
    block = triton.next_power_of_2(d)
    _adaln_kernel[(b * length,)](
        x,
        shift,
        scale,
        index if index is not None else x,
        weight if weight is not None else x,
        bias if bias is not None else x,
        out,
        length,
        d,
        eps,
        x.stride(0),
        x.stride(1),
        ssb,
        ssl,
        scb,
        scl,
        out.stride(0),
        out.stride(1),
        BLOCK=block,
        RMS=rms,
        HAS_INDEX=index is not None,
        HAS_W=weight is not None,
        HAS_B=bias is not None,
        num_warps=_warps(block),
    )
    return out


# --------------------------------------------------------------------------------------------------
# RMSNorm (grouped) then RoPE
# --------------------------------------------------------------------------------------------------


@triton.jit
def _rms_rope_row(
    X,
    W,
    OUT,
    xoff,
    ooff,
    g,
    c,
    col,
    mask,
    pc,
    cs,
    sn,
    eps,
    GROUP: tl.constexpr,
    HAS_W: tl.constexpr,
    ROPE: tl.constexpr,
):
    """One token row of one tensor: grouped RMSNorm (times W), then the rotation by (cs, sn)."""
    xrow = X + xoff + g * GROUP
    x = tl.load(xrow + c, mask=mask, other=0.0).to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x * x, axis=1) / GROUP + eps)[:, None]
    y = x * rstd
    if HAS_W:
        y = y * tl.load(W + c, mask=mask, other=0.0).to(tl.float32)
    if ROPE:
        # the rotation partner of each channel (same group: R divides GROUP); its load hits the cache
        yp = tl.load(xrow + pc, mask=mask, other=0.0).to(tl.float32) * rstd
        if HAS_W:
            yp = yp * tl.load(W + pc, mask=mask, other=0.0).to(tl.float32)
        out = y * cs + yp * sn
    else:
        out = y
    tl.store(OUT + ooff + col, out.to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def _rms_rope_kernel(
    X,
    W,
    COS,
    SIN,
    OUT,
    X2,
    W2,
    OUT2,
    L,
    eps,
    sxb,
    sxl,
    scb,
    scl,
    sch,
    ssb,
    ssl,
    ssh,
    sob,
    sol,
    s2b,
    s2l,
    NG: tl.constexpr,
    NG_BLOCK: tl.constexpr,
    GROUP: tl.constexpr,
    G_BLOCK: tl.constexpr,
    R: tl.constexpr,
    TW: tl.constexpr,
    HALF: tl.constexpr,
    SIGNED: tl.constexpr,
    HAS_W: tl.constexpr,
    ROPE: tl.constexpr,
    PAIR: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    b = row // L
    t = row % L
    g = tl.arange(0, NG_BLOCK)[:, None]
    c = tl.arange(0, G_BLOCK)[None, :]
    mask = (g < NG) & (c < GROUP)
    col = g * GROUP + c  # (NG_BLOCK, G_BLOCK): one group per row of the tile
    pc = c
    cs = tl.zeros([NG_BLOCK, G_BLOCK], dtype=tl.float32)
    sn = cs
    if ROPE:  # the tables are read once per row, for both tensors of a pair
        r = col % R
        if HALF:
            pc = tl.where(r < R // 2, c + R // 2, c - R // 2)
            first = r < R // 2
        else:
            pc = c ^ 1
            first = (c % 2) == 0
        hi = col // R  # the table row of a head (stride 0 when the heads share it)
        ti = r % TW  # half-width tables: both halves use the same angle
        cs = tl.load(COS + b * scb + t * scl + hi * sch + ti, mask=mask, other=0.0).to(tl.float32)
        sn = tl.load(SIN + b * ssb + t * ssl + hi * ssh + ti, mask=mask, other=0.0).to(tl.float32)
        if not SIGNED:
            sn = tl.where(first, -sn, sn)
    _rms_rope_row(X, W, OUT, b * sxb + t * sxl, b * sob + t * sol, g, c, col, mask, pc, cs, sn, eps,
                  GROUP, HAS_W, ROPE)  # fmt: skip
    if PAIR:
        _rms_rope_row(X2, W2, OUT2, b * s2b + t * s2l, b * sob + t * sol, g, c, col, mask, pc, cs, sn, eps,
                      GROUP, HAS_W, ROPE)  # fmt: skip


def _rows_contiguous(x: torch.Tensor) -> torch.Tensor:
    """x with unit stride over its channels (dims 2.. flattened without a copy where they can be)."""
    inner_contiguous = x.ndim < 4 or all(
        x.stride(i) == x.stride(i + 1) * x.shape[i + 1] for i in range(2, x.ndim - 1)
    )
    return x if x.stride(-1) == 1 and inner_contiguous else x.contiguous()


Tables = tuple[tuple[torch.Tensor, int, int, int, int], tuple[torch.Tensor, int, int, int, int]]


def rms_rope(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    eps: float,
    group: int,
    half: bool,
    signed: bool,
    period: int,
    tables: Tables | None,
) -> torch.Tensor:
    """Launch :func:`_rms_rope_kernel` on ``x`` ``(B, L, ...)``; rows of ``prod(...)`` channels; the
    tables come from :func:`fastvideo.kernels.table_layout` (checked by the caller)."""
    return _rms_rope_launch(x, weight, eps, group, half, signed, period, tables, None)[0]


def rms_rope_pair(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    eps: float,
    group: int,
    half: bool,
    signed: bool,
    period: int,
    tables: Tables,
    pair: tuple[torch.Tensor, torch.Tensor | None],
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`rms_rope` of ``x`` and of ``pair[0]`` (same shape, weight ``pair[1]``) in one launch:
    the tables are read once for both."""
    return _rms_rope_launch(x, weight, eps, group, half, signed, period, tables, pair)


def _rms_rope_launch(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    eps: float,
    group: int,
    half: bool,
    signed: bool,
    period: int,
    tables: Tables | None,
    pair: tuple[torch.Tensor, torch.Tensor | None] | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    shape = x.shape
    b, length = shape[0], shape[1]
    width = x[0, 0].numel() if x.numel() else 1
    x = _rows_contiguous(x)
    x2, w2 = pair if pair is not None else (x, weight)
    x2 = _rows_contiguous(x2)
    none = (x, 0, 0, 0, 2)
    (cos_t, scb, scl, sch, tw), (sin_t, ssb, ssl, ssh, _) = tables if tables is not None else (none, none)
    out = torch.empty(shape, device=x.device, dtype=x.dtype)
    out2 = torch.empty(shape, device=x.device, dtype=x.dtype) if pair is not None else out
    if out.numel() == 0:
        return out, out2
    ng = width // group
    ng_block, g_block = triton.next_power_of_2(ng), triton.next_power_of_2(group)
    _rms_rope_kernel[(b * length,)](
        x,
        weight if weight is not None else x,
        cos_t,
        sin_t,
        out,
        x2,
        w2 if w2 is not None else x,
        out2,
        length,
        eps,
        x.stride(0),
        x.stride(1),
        scb,
        scl,
        sch,
        ssb,
        ssl,
        ssh,
        out.stride(0),
        out.stride(1),
        x2.stride(0),
        x2.stride(1),
        NG=ng,
        NG_BLOCK=ng_block,
        GROUP=group,
        G_BLOCK=g_block,
        R=period,
        TW=tw,
        HALF=half,
        SIGNED=signed,
        HAS_W=weight is not None,
        ROPE=tables is not None,
        PAIR=pair is not None,
        num_warps=_warps(ng_block * g_block),
    )
    return out, out2


# --------------------------------------------------------------------------------------------------
# Gated residual
# --------------------------------------------------------------------------------------------------


@triton.jit
def _gated_residual_kernel(
    X,
    Y,
    GATE,
    INDEX,
    OUT,
    L,
    D,
    sxb,
    sxl,
    syb,
    syl,
    sgb,
    sgl,
    sob,
    sol,
    BLOCK: tl.constexpr,
    HAS_INDEX: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    b = row // L
    t = row % L
    cols = tl.arange(0, BLOCK)
    mask = cols < D
    m = t
    if HAS_INDEX:
        m = tl.load(INDEX + t).to(tl.int64)
    x = tl.load(X + b * sxb + t * sxl + cols, mask=mask, other=0.0).to(tl.float32)
    y = tl.load(Y + b * syb + t * syl + cols, mask=mask, other=0.0).to(tl.float32)
    gate = tl.load(GATE + b * sgb + m * sgl + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(OUT + b * sob + t * sol + cols, (x + gate * y).to(OUT.dtype.element_ty), mask=mask)


def gated_residual(
    x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor, index: torch.Tensor | None
) -> torch.Tensor:
    """Launch :func:`_gated_residual_kernel`: ``x + gate * y``, x / y ``(B, L, D)``, gate ``(B or 1, M, D)``."""
    b, length, d = x.shape
    x = x if x.stride(-1) == 1 else x.contiguous()
    y = y.expand(b, length, d)
    y = y if y.stride(-1) == 1 else y.contiguous()
    gate, sgb, sgl = _mod_strides(gate, b, gate.shape[1] if index is not None else length, "gate")
    out = torch.empty((b, length, d), device=x.device, dtype=x.dtype)
    if out.numel() == 0:
        return out
    block = triton.next_power_of_2(d)
    _gated_residual_kernel[(b * length,)](
        x,
        y,
        gate,
        index if index is not None else x,
        out,
        length,
        d,
        x.stride(0),
        x.stride(1),
        y.stride(0),
        y.stride(1),
        sgb,
        sgl,
        out.stride(0),
        out.stride(1),
        BLOCK=block,
        HAS_INDEX=index is not None,
        num_warps=_warps(block),
    )
    return out


# --------------------------------------------------------------------------------------------------
# Gated residual, then the next sub-layer's adaLN
# --------------------------------------------------------------------------------------------------


@triton.jit
def _gated_residual_adaln_kernel(
    X,
    Y,
    GATE,
    SHIFT,
    SCALE,
    SHIFT2,
    SCALE2,
    INDEX,
    SOUT,
    HOUT,
    HOUT2,
    L,
    D,
    eps,
    sxb,
    sxl,
    syb,
    syl,
    sgb,
    sgl,
    ssb,
    ssl,
    scb,
    scl,
    s2b,
    s2l,
    c2b,
    c2l,
    sob,
    sol,
    BLOCK: tl.constexpr,
    RMS: tl.constexpr,
    HAS_INDEX: tl.constexpr,
    HAS_GATE: tl.constexpr,
    TWO: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    b = row // L
    t = row % L
    cols = tl.arange(0, BLOCK)
    mask = cols < D
    m = t
    if HAS_INDEX:
        m = tl.load(INDEX + t).to(tl.int64)
    x = tl.load(X + b * sxb + t * sxl + cols, mask=mask, other=0.0).to(tl.float32)
    y = tl.load(Y + b * syb + t * syl + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_GATE:
        y = y * tl.load(GATE + b * sgb + m * sgl + cols, mask=mask, other=0.0).to(tl.float32)
    s = (x + y).to(SOUT.dtype.element_ty)
    tl.store(SOUT + b * sob + t * sol + cols, s, mask=mask)
    s = s.to(tl.float32)  # the norm sees the rounded sum, as the two separate kernels would
    if RMS:
        sn = s * tl.rsqrt(tl.sum(s * s, axis=0) / D + eps)
    else:
        sc = tl.where(mask, s - tl.sum(s, axis=0) / D, 0.0)
        sn = sc * tl.rsqrt(tl.sum(sc * sc, axis=0) / D + eps)
    shift = tl.load(SHIFT + b * ssb + m * ssl + cols, mask=mask, other=0.0).to(tl.float32)
    scale = tl.load(SCALE + b * scb + m * scl + cols, mask=mask, other=0.0).to(tl.float32)
    h = sn * (1.0 + scale) + shift
    tl.store(HOUT + b * sob + t * sol + cols, h.to(HOUT.dtype.element_ty), mask=mask)
    if TWO:
        shift = tl.load(SHIFT2 + b * s2b + m * s2l + cols, mask=mask, other=0.0).to(tl.float32)
        scale = tl.load(SCALE2 + b * c2b + m * c2l + cols, mask=mask, other=0.0).to(tl.float32)
        h = sn * (1.0 + scale) + shift
        tl.store(HOUT2 + b * sob + t * sol + cols, h.to(HOUT2.dtype.element_ty), mask=mask)


def gated_residual_adaln(
    x: torch.Tensor,
    y: torch.Tensor,
    gate: torch.Tensor | None,
    mods: list[tuple[torch.Tensor, torch.Tensor]],
    eps: float,
    rms: bool,
    index: torch.Tensor | None,
) -> tuple[torch.Tensor, ...]:
    """Launch :func:`_gated_residual_adaln_kernel`: ``s = x + gate * y`` (``x + y`` without a gate),
    then ``adaLN(s)`` with each of the one or two ``(shift, scale)`` pairs of ``mods``; x / y
    ``(B, L, D)``, gate / shift / scale ``(B or 1, M, D)`` (M = L without index). Returns (s, h[, h2])."""
    b, length, d = x.shape
    x = x if x.stride(-1) == 1 else x.contiguous()
    y = y.expand(b, length, d)
    y = y if y.stride(-1) == 1 else y.contiguous()
    rows = mods[0][0].shape[1] if index is not None else length
    sgb = sgl = 0
    if gate is not None:
        gate, sgb, sgl = _mod_strides(gate, b, rows, "gate")
    tables = [_mod_strides(m, b, rows, "mod") for pair in mods for m in pair]
    if len(tables) == 2:
        tables += tables
    outs = [torch.empty((b, length, d), device=x.device, dtype=x.dtype) for _ in range(1 + len(mods))]
    if x.numel() == 0:
        return tuple(outs)
    block = triton.next_power_of_2(d)
    (sh, ssb, ssl), (sc, scb, scl), (sh2, s2b, s2l), (sc2, c2b, c2l) = tables
    _gated_residual_adaln_kernel[(b * length,)](
        x,
        y,
        gate if gate is not None else x,
        sh,
        sc,
        sh2,
        sc2,
        index if index is not None else x,
        outs[0],
        outs[1],
        outs[-1],
        length,
        d,
        eps,
        x.stride(0),
        x.stride(1),
        y.stride(0),
        y.stride(1),
        sgb,
        sgl,
        ssb,
        ssl,
        scb,
        scl,
        s2b,
        s2l,
        c2b,
        c2l,
        outs[0].stride(0),
        outs[0].stride(1),
        BLOCK=block,
        RMS=rms,
        HAS_INDEX=index is not None,
        HAS_GATE=gate is not None,
        TWO=len(mods) == 2,
        num_warps=_warps(block),
    )
    return tuple(outs)
