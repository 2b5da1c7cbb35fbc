"""Triton forward of the VSA fine stage: block-sparse attention over the selected cubes, gated.

Tokens stay where the model put them, ``[B, L, H, D]`` in raster order: each program gathers the
rows it needs by token index, so there is no tiling pass, no padding in memory, and the output
lands in raster order too. One program handles one query cube (64 rows, :func:`cube_tokens`; the
rows a partial cube lacks are masked) of one (batch, head) and streams the tokens of its selected
key cubes as *runs* of up to 4 tokens (:func:`run_tokens`; the plan comes from
:func:`fastvideo_vsa.ops.pooling.plans`), ``BLOCK_N`` key rows per step, so the empty lines of
partial key cubes cost nothing. bf16/fp16 ``tl.dot`` with fp32 accumulation, exp2 online softmax;
the epilogue adds ``gate * coarse`` and stores the log-sum-exp (base 2, of the scaled logits) that
the backward pass needs.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from fastvideo_vsa.ops.geometry import CubeGeometry

LOG2E = 1.4426950408889634

# --------------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------------

#: Searched on the GPU: one warpgroup per 64-row cube. benchmarks/vsa_config_sweep.py on an H100
#: (docs/benchmarks.md): (64, 4, 2) fastest at both sparsities; 8 warps ran about 2x slower.
FWD_CONFIGS = [
    triton.Config({"BLOCK_N": bn}, num_warps=w, num_stages=s)
    for bn, w, s in ((64, 4, 2), (64, 4, 3), (128, 4, 3))
]
#: The interpreter takes no autotuning: one config (tests pass others explicitly).
INTERPRETER_CONFIG = {"BLOCK_N": 64, "num_warps": 4, "num_stages": 1}


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


# --------------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------------


@triton.jit
def cube_tokens(cube, slot, T, HG, W, NCH, NCW):
    """Token index (int64) and validity of ``slot`` (0..63) of ``cube``, both elementwise."""
    ct = cube // (NCH * NCW)
    rem = cube - ct * (NCH * NCW)
    ch = rem // NCW
    cw = rem - ch * NCW
    t = ct * 4 + slot // 16
    y = ch * 4 + (slot // 4) % 4
    x = cw * 4 + slot % 4
    valid = (t < T) & (y < HG) & (x < W)
    return ((t * HG + y) * W + x).to(tl.int64), valid


@triton.jit
def compact_tokens(cube, row, T, HG, W, NCH, NCW):
    """Token index (int64) and validity of ``row`` (0..63) of ``cube``'s *compacted* rows: its tokens
    first, in (t, y, x) order, then the empty rows (a full cube's rows are its slots)."""
    ct = cube // (NCH * NCW)
    rem = cube - ct * (NCH * NCW)
    ch = rem // NCW
    cw = rem - ch * NCW
    nt = tl.minimum(T - ct * 4, 4)
    ny = tl.minimum(HG - ch * 4, 4)
    nx = tl.minimum(W - cw * 4, 4)
    t = ct * 4 + row // (ny * nx)
    y = ch * 4 + (row // nx) % ny
    x = cw * 4 + row % nx
    return ((t * HG + y) * W + x).to(tl.int64), row < nt * ny * nx


@triton.jit
def run_tokens(runs_base, step, count, BLOCK: tl.constexpr):
    """Rows ``[step * BLOCK, (step + 1) * BLOCK)`` of a stream of ``count`` runs at ``runs_base``
    (4 rows per run, see :func:`fastvideo_vsa.ops.geometry.run_table`): token indices (int64) and
    validity (rows past a run's length or past the stream's end are invalid)."""
    cols = tl.arange(0, BLOCK)
    r = step * (BLOCK // 4) + cols // 4
    run = tl.load(runs_base + r, mask=r < count, other=-1)
    lane = cols % 4
    valid = (run >= 0) & (lane <= (run & 3))
    return ((run >> 2) + lane).to(tl.int64), valid


@triton.jit
def cube_count(cube, T, HG, W, NCH, NCW):
    """Number of tokens in ``cube`` (64 unless it is partial)."""
    ct = cube // (NCH * NCW)
    rem = cube - ct * (NCH * NCW)
    ch = rem // NCW
    cw = rem - ch * NCW
    return tl.minimum(T - ct * 4, 4) * tl.minimum(HG - ch * 4, 4) * tl.minimum(W - cw * 4, 4)


@triton.jit
def mm(a, b, acc, IEEE: tl.constexpr):
    """``acc + a @ b``; fp32 operands use exact fp32 products (no TF32)."""
    if IEEE:
        return tl.dot(a, b, acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc)


@triton.jit
def _fwd_kernel(
    Q, K, V, G, OC, OUT, LSE, RUNS, FIRST, COUNT,
    stride_qb, stride_ql, stride_qh,
    stride_kb, stride_kl, stride_kh,
    stride_vb, stride_vl, stride_vh,
    stride_gb, stride_gl, stride_gh,
    stride_ob, stride_ol, stride_oh,
    H, T, HG, W, NCH, NCW, L, C,
    qk_scale,
    D: tl.constexpr,
    D_PAD: tl.constexpr,
    HAS_GATE: tl.constexpr,
    F32DOT: tl.constexpr,
    BLOCK_N: tl.constexpr,
):  # fmt: skip
    cube_q = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = bh % H
    rows = tl.arange(0, 64)
    dd = tl.arange(0, D_PAD)
    dmask = dd < D
    qtok, qvalid = cube_tokens(cube_q, rows, T, HG, W, NCH, NCW)
    q = tl.load(
        Q + b * stride_qb + h * stride_qh + qtok[:, None] * stride_ql + dd[None, :],
        mask=qvalid[:, None] & dmask[None, :],
        other=0.0,
    )  # (64, D)
    if F32DOT:
        q = q.to(tl.float32)
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    segment = bh * C + cube_q
    runs_base = RUNS + tl.load(FIRST + segment)
    n_runs = tl.load(COUNT + segment)  # runs of the selected key cubes (every run holds a token)
    m_i = tl.full([64], float("-inf"), tl.float32)
    l_i = tl.zeros([64], tl.float32)
    acc = tl.zeros([64, D_PAD], tl.float32)
    for step in range(0, tl.cdiv(n_runs, BLOCK_N // 4)):  # BLOCK_N key rows per step
        ktok, kvalid = run_tokens(runs_base, step, n_runs, BLOCK_N)
        kmask = kvalid[:, None] & dmask[None, :]
        k = tl.load(k_base + ktok[:, None] * stride_kl + dd[None, :], mask=kmask, other=0.0)  # (N, D)
        v = tl.load(v_base + ktok[:, None] * stride_vl + dd[None, :], mask=kmask, other=0.0)  # (N, D)
        if F32DOT:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        s = mm(q, tl.trans(k), tl.zeros([64, BLOCK_N], tl.float32), F32DOT)  # (64, N)
        s = s * qk_scale + tl.where(kvalid, 0.0, float("-inf"))[None, :]  # log2 units; one FMA per logit
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = mm(p.to(v.dtype), v, acc * alpha[:, None], F32DOT)  # (64, D)
        m_i = m_new
    out = acc / l_i[:, None]
    if HAS_GATE:
        g = tl.load(
            G + b * stride_gb + h * stride_gh + qtok[:, None] * stride_gl + dd[None, :],
            mask=qvalid[:, None] & dmask[None, :],
            other=0.0,
        )
        oc = tl.load(OC + (bh.to(tl.int64) * C + cube_q) * D + dd, mask=dmask, other=0.0)  # (D,) fp32
        out = out + g.to(tl.float32) * oc[None, :]
    tl.store(
        OUT + b * stride_ob + h * stride_oh + qtok[:, None] * stride_ol + dd[None, :],
        out.to(OUT.dtype.element_ty),
        mask=qvalid[:, None] & dmask[None, :],
    )
    tl.store(LSE + bh.to(tl.int64) * L + qtok, m_i + tl.log2(l_i), mask=qvalid)


_fwd_tuned = triton.autotune(FWD_CONFIGS, key=["D_PAD", "HAS_GATE", "F32DOT"])(_fwd_kernel)


# --------------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------------


def d_pad(d: int) -> int:
    """Head dim rounded up to a power of two >= 16 (``tl.dot`` needs K >= 16)."""
    return max(16, triton.next_power_of_2(d))


def dot_in_f32(dtype: torch.dtype) -> bool:
    """fp32 inputs, or bf16 under the interpreter (whose bf16 ``tl.dot`` is wrong): fp32 products."""
    return dtype == torch.float32 or (dtype == torch.bfloat16 and interpreting())


def geometry_args(geom: CubeGeometry) -> tuple[int, ...]:
    """``T, HG, W, NCH, NCW, L, C`` as the kernels take them."""
    (t, hg, w), (_, nch, ncw) = geom.grid, geom.cube_grid
    return t, hg, w, nch, ncw, geom.num_tokens, geom.num_cubes


def launch(kernel, tuned, grid, args, meta, config, default):
    """Run ``tuned`` (autotuned) on the GPU, else ``kernel`` with ``config`` (tests) or ``default``
    (the interpreter's single config)."""
    if config is None and not interpreting():
        return tuned[grid](*args, **meta)
    cfg = dict(default if config is None else config)
    if interpreting():
        cfg.pop("num_warps", None)
        cfg.pop("num_stages", None)
    return kernel[grid](*args, **meta, **cfg)


def output_buffers(
    q: torch.Tensor, gate: torch.Tensor | None, oc: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(out, lse, g, oc)`` for a fine forward: empty outputs ``[B, L, H, D]`` and ``[B, H, L]`` fp32,
    and the gate and coarse output, or stand-ins (never read) when there is no gate."""
    batch, length, heads, _ = q.shape
    out = q.new_empty(q.shape)
    lse = q.new_empty((batch, heads, length), dtype=torch.float32)
    return out, lse, (gate if gate is not None else q), (oc if gate is not None else lse)


def fine_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    gate: torch.Tensor | None,
    oc: torch.Tensor | None,
    plan: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    geom: CubeGeometry,
    scale: float,
    config: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out [B, L, H, D], lse [B, H, L] fp32)``.

    ``plan``: the key runs of each (batch x head, query cube), ``(runs, first, count)`` from
    :func:`fastvideo_vsa.ops.pooling.cube_runs`. ``out = fine + gate * oc[cube]`` when ``gate`` is
    given (``oc``: ``[B, H, C, D]`` fp32).
    """
    batch, _, heads, dim = q.shape
    out, lse, g, ocp = output_buffers(q, gate, oc)
    has_gate = gate is not None
    args = (
        q, k, v, g, ocp, out, lse, *plan,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        g.stride(0), g.stride(1), g.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        heads, *geometry_args(geom),
        scale * LOG2E,
    )  # fmt: skip
    meta = dict(D=dim, D_PAD=d_pad(dim), HAS_GATE=has_gate, F32DOT=dot_in_f32(q.dtype))
    launch(_fwd_kernel, _fwd_tuned, (geom.num_cubes, batch * heads), args, meta, config, INTERPRETER_CONFIG)
    return out, lse
