"""Triton backward of VSA: the gate and coarse-output gradients, then dq and (dk, dv) of the fine stage.

Three kernels, all reading and writing ``[B, L, H, D]`` in raster order like the forward:

1. ``_prep_kernel`` (one program per query cube): ``delta = rowsum(dout * fine)`` with
   ``fine = out - gate * oc``, and with a gate ``dgate = dout * oc`` and
   ``doc[cube] = sum over the cube's rows of dout * gate``.
2. ``_dq_kernel`` (one program per query cube, streaming the runs of its selected key cubes like
   the forward): recomputes ``p`` from the saved log-sum-exp, ``ds = p * (dout v^T - delta)``,
   ``dq = scale * ds k``; the epilogue adds the pooling gradient ``dqc[cube] / n_cube``.
3. ``_dkdv_kernel`` (one program per key cube, streaming the runs of the query cubes that selected
   it, from :func:`fastvideo_vsa.ops.pooling.plans`): ``dv = p^T dout``,
   ``dk = scale * ds^T q``, plus ``dkc / n`` and ``dvc / n``.

By default dq and (dk, dv) are separate passes (7 matmuls per block, no atomics, deterministic);
``FASTVIDEO_VSA_BACKWARD=atomic`` computes dq in the (dk, dv) pass instead, adding each block's share
to an fp32 accumulator with atomics (5 matmuls), then ``_dq_finish_kernel`` casts it.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from fastvideo_vsa.ops.geometry import CubeGeometry
from fastvideo_vsa.ops.triton_fwd import (
    LOG2E,
    cube_count,
    cube_tokens,
    d_pad,
    dot_in_f32,
    geometry_args,
    launch,
    mm,
    run_tokens,
)

# --------------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------------

PREP_CONFIGS = [triton.Config({}, num_warps=w) for w in (8, 16)]
#: Launch configs searched by the autotuners. benchmarks/vsa_config_sweep.py on an H100 at the Wan
#: shape (docs/benchmarks.md): 8 warps ran 1.5-2.5x slower than 4 everywhere, so only 4-warp configs
#: stay; (64, 4, 2) for dk/dv took 6.01 ms against 6.69 ms for the earlier list's pick.
DQ_CONFIGS = [
    triton.Config({"BLOCK_N": bn}, num_warps=w, num_stages=s)
    for bn, w, s in ((64, 4, 2), (64, 4, 3), (128, 4, 3))
]
DKDV_CONFIGS = [
    triton.Config({"BLOCK_M": bm}, num_warps=w, num_stages=s)
    for bm, w, s in ((32, 4, 2), (64, 4, 2), (64, 4, 3))
]
#: dk, dv and (atomically) dq in one pass: 5 matmuls per block pair instead of 7.
DKDVQ_CONFIGS = [
    triton.Config({"BLOCK_M": bm}, num_warps=w, num_stages=s) for bm, w, s in ((32, 8, 2), (32, 8, 3))
]
INTERPRETER_DQ = {"BLOCK_N": 64}
INTERPRETER_DKDV = {"BLOCK_M": 64}

# --------------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------------


@triton.jit
def _rows(X, b, h, tok, dd, mask, sb, sl, sh):
    """Load rows ``tok`` of head ``h`` of ``X`` ``[B, L, H, D]`` (zeros where masked)."""
    return tl.load(X + b * sb + h * sh + tok[:, None] * sl + dd[None, :], mask=mask, other=0.0)


@triton.jit
def _prep_kernel(
    OUT, DO, G, OC, DG, DOC, DELTA,
    sob, sol, soh, sdb, sdl, sdh, sgb, sgl, sgh, sxb, sxl, sxh,
    H, T, HG, W, NCH, NCW, L, C,
    D: tl.constexpr,
    D_PAD: tl.constexpr,
    HAS_GATE: tl.constexpr,
):  # fmt: skip
    cube = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = bh % H
    dd = tl.arange(0, D_PAD)
    dmask = dd < D
    tok, valid = cube_tokens(cube, tl.arange(0, 64), T, HG, W, NCH, NCW)
    mask = valid[:, None] & dmask[None, :]
    do = _rows(DO, b, h, tok, dd, mask, sdb, sdl, sdh).to(tl.float32)
    fine = _rows(OUT, b, h, tok, dd, mask, sob, sol, soh).to(tl.float32)
    if HAS_GATE:
        g = _rows(G, b, h, tok, dd, mask, sgb, sgl, sgh).to(tl.float32)
        oc = tl.load(OC + (bh.to(tl.int64) * C + cube) * D + dd, mask=dmask, other=0.0)  # (D,)
        fine = fine - g * oc[None, :]
        dg = do * oc[None, :]
        tl.store(
            DG + b * sxb + h * sxh + tok[:, None] * sxl + dd[None, :], dg.to(DG.dtype.element_ty), mask=mask
        )
        tl.store(DOC + (bh.to(tl.int64) * C + cube) * D + dd, tl.sum(do * g, 0), mask=dmask)
    tl.store(DELTA + bh.to(tl.int64) * L + tok, tl.sum(do * fine, 1), mask=valid)


@triton.jit
def _dq_kernel(
    Q, K, V, DO, LSE, DELTA, RUNS, FIRST, COUNT, DQC, DQ,
    sqb, sql, sqh, skb, skl, skh, svb, svl, svh, sdb, sdl, sdh, sxb, sxl, sxh,
    H, T, HG, W, NCH, NCW, L, C,
    scale, qk_scale,
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
    dd = tl.arange(0, D_PAD)
    dmask = dd < D
    qtok, qvalid = cube_tokens(cube_q, tl.arange(0, 64), T, HG, W, NCH, NCW)
    qmask = qvalid[:, None] & dmask[None, :]
    q = _rows(Q, b, h, qtok, dd, qmask, sqb, sql, sqh)
    do = _rows(DO, b, h, qtok, dd, qmask, sdb, sdl, sdh)
    if F32DOT:
        q = q.to(tl.float32)
        do = do.to(tl.float32)
    lse = tl.load(LSE + bh.to(tl.int64) * L + qtok, mask=qvalid, other=0.0)
    delta = tl.load(DELTA + bh.to(tl.int64) * L + qtok, mask=qvalid, other=0.0)
    segment = bh * C + cube_q
    runs_base = RUNS + tl.load(FIRST + segment)
    n_runs = tl.load(COUNT + segment)
    dq = tl.zeros([64, D_PAD], tl.float32)
    for step in range(0, tl.cdiv(n_runs, BLOCK_N // 4)):
        ktok, kvalid = run_tokens(runs_base, step, n_runs, BLOCK_N)
        kmask = kvalid[:, None] & dmask[None, :]
        k = _rows(K, b, h, ktok, dd, kmask, skb, skl, skh)  # (N, D)
        v = _rows(V, b, h, ktok, dd, kmask, svb, svl, svh)  # (N, D)
        if F32DOT:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        s = mm(q, tl.trans(k), tl.zeros([64, BLOCK_N], tl.float32), F32DOT)  # (64, N)
        p = tl.exp2(s * qk_scale + tl.where(kvalid, 0.0, float("-inf"))[None, :] - lse[:, None])  # (64, N)
        dp = mm(do, tl.trans(v), tl.zeros([64, BLOCK_N], tl.float32), F32DOT)  # (64, N)
        ds = p * (dp - delta[:, None])
        dq = mm(ds.to(k.dtype), k, dq, F32DOT)  # (64, D)
    dq = dq * scale
    if HAS_GATE:
        count = cube_count(cube_q, T, HG, W, NCH, NCW).to(tl.float32)
        dqc = tl.load(DQC + (bh.to(tl.int64) * C + cube_q) * D + dd, mask=dmask, other=0.0)
        dq = dq + dqc[None, :] / count
    tl.store(
        DQ + b * sxb + h * sxh + qtok[:, None] * sxl + dd[None, :], dq.to(DQ.dtype.element_ty), mask=qmask
    )


@triton.jit
def _dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, RUNS, FIRST, COUNT, DKC, DVC, DK, DV, DQACC,
    sqb, sql, sqh, skb, skl, skh, svb, svl, svh, sdb, sdl, sdh, sxb, sxl, sxh,
    H, T, HG, W, NCH, NCW, L, C,
    scale, qk_scale,
    D: tl.constexpr,
    D_PAD: tl.constexpr,
    HAS_GATE: tl.constexpr,
    F32DOT: tl.constexpr,
    DQ_ATOMIC: tl.constexpr,
    BLOCK_M: tl.constexpr,
):  # fmt: skip
    cube_k = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = bh % H
    dd = tl.arange(0, D_PAD)
    dmask = dd < D
    ktok, kvalid = cube_tokens(cube_k, tl.arange(0, 64), T, HG, W, NCH, NCW)
    kmask = kvalid[:, None] & dmask[None, :]
    k = _rows(K, b, h, ktok, dd, kmask, skb, skl, skh)  # (64, D)
    v = _rows(V, b, h, ktok, dd, kmask, svb, svl, svh)  # (64, D)
    if F32DOT:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    segment = bh * C + cube_k
    runs_base = RUNS + tl.load(FIRST + segment)
    n_runs = tl.load(COUNT + segment)  # runs of the query cubes that selected this key cube
    dk = tl.zeros([64, D_PAD], tl.float32)
    dv = tl.zeros([64, D_PAD], tl.float32)
    for step in range(0, tl.cdiv(n_runs, BLOCK_M // 4)):  # BLOCK_M query rows per step
        qtok, qvalid = run_tokens(runs_base, step, n_runs, BLOCK_M)
        qmask = qvalid[:, None] & dmask[None, :]
        q = _rows(Q, b, h, qtok, dd, qmask, sqb, sql, sqh)  # (M, D)
        do = _rows(DO, b, h, qtok, dd, qmask, sdb, sdl, sdh)  # (M, D)
        if F32DOT:
            q = q.to(tl.float32)
            do = do.to(tl.float32)
        lse = tl.load(LSE + bh.to(tl.int64) * L + qtok, mask=qvalid, other=float("inf"))  # masked rows: p = 0
        delta = tl.load(DELTA + bh.to(tl.int64) * L + qtok, mask=qvalid, other=0.0)
        st = mm(k, tl.trans(q), tl.zeros([64, BLOCK_M], tl.float32), F32DOT)  # (64, M)
        pt = tl.exp2(st * qk_scale - lse[None, :])
        dv = mm(pt.to(do.dtype), do, dv, F32DOT)  # (64, D)
        dpt = mm(v, tl.trans(do), tl.zeros([64, BLOCK_M], tl.float32), F32DOT)  # (64, M)
        dst = pt * (dpt - delta[None, :])
        dk = mm(dst.to(q.dtype), q, dk, F32DOT)  # (64, D)
        if DQ_ATOMIC:  # dq += ds k, accumulated in fp32 across the key cubes of the query rows
            dq = mm(tl.trans(dst.to(k.dtype)), k, tl.zeros([BLOCK_M, D_PAD], tl.float32), F32DOT)  # (M, D)
            rows = b * sxb + h * sxh + qtok[:, None] * sxl + dd[None, :]
            tl.atomic_add(DQACC + rows, dq * scale, mask=qmask, sem="relaxed")
    dk = dk * scale
    if HAS_GATE:
        inv = 1.0 / cube_count(cube_k, T, HG, W, NCH, NCW).to(tl.float32)
        coarse = (bh.to(tl.int64) * C + cube_k) * D + dd
        dk = dk + tl.load(DKC + coarse, mask=dmask, other=0.0)[None, :] * inv
        dv = dv + tl.load(DVC + coarse, mask=dmask, other=0.0)[None, :] * inv
    out = b * sxb + h * sxh + ktok[:, None] * sxl + dd[None, :]
    tl.store(DK + out, dk.to(DK.dtype.element_ty), mask=kmask)
    tl.store(DV + out, dv.to(DV.dtype.element_ty), mask=kmask)


@triton.jit
def _dq_finish_kernel(
    DQACC, DQC, DQ,
    sxb, sxl, sxh,
    H, T, HG, W, NCH, NCW, L, C,
    D: tl.constexpr,
    D_PAD: tl.constexpr,
    HAS_GATE: tl.constexpr,
):  # fmt: skip
    cube = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = bh % H
    dd = tl.arange(0, D_PAD)
    dmask = dd < D
    tok, valid = cube_tokens(cube, tl.arange(0, 64), T, HG, W, NCH, NCW)
    mask = valid[:, None] & dmask[None, :]
    rows = b * sxb + h * sxh + tok[:, None] * sxl + dd[None, :]
    dq = tl.load(DQACC + rows, mask=mask, other=0.0)
    if HAS_GATE:
        inv = 1.0 / cube_count(cube, T, HG, W, NCH, NCW).to(tl.float32)
        dq = dq + tl.load(DQC + (bh.to(tl.int64) * C + cube) * D + dd, mask=dmask, other=0.0)[None, :] * inv
    tl.store(DQ + rows, dq.to(DQ.dtype.element_ty), mask=mask)


_prep_tuned = triton.autotune(PREP_CONFIGS, key=["D_PAD", "HAS_GATE"])(_prep_kernel)
_dq_tuned = triton.autotune(DQ_CONFIGS, key=["D_PAD", "HAS_GATE", "F32DOT"])(_dq_kernel)
_dkdv_tuned = triton.autotune(DKDV_CONFIGS, key=["D_PAD", "HAS_GATE", "F32DOT", "DQ_ATOMIC"])(_dkdv_kernel)
_dkdvq_tuned = triton.autotune(
    DKDVQ_CONFIGS, key=["D_PAD", "HAS_GATE", "F32DOT", "DQ_ATOMIC"], reset_to_zero=["DQACC"]
)(_dkdv_kernel)

# --------------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------------


def _strides(x: torch.Tensor) -> tuple[int, int, int]:
    return x.stride(0), x.stride(1), x.stride(2)


def prep_backward(
    out: torch.Tensor,
    dout: torch.Tensor,
    gate: torch.Tensor | None,
    oc: torch.Tensor | None,
    geom: CubeGeometry,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``(delta [B, H, L] fp32, dgate [B, L, H, D] or None, doc [B, H, C, D] fp32 or None)``."""
    batch, length, heads, dim = out.shape
    delta = out.new_empty((batch, heads, length), dtype=torch.float32)
    has_gate = gate is not None
    dgate = gate.new_empty(gate.shape) if has_gate else None
    doc = out.new_empty((batch, heads, geom.num_cubes, dim), dtype=torch.float32) if has_gate else None
    g = gate if has_gate else out
    dg = dgate if has_gate else out
    args = (
        out, dout, g, oc if has_gate else delta, dg, doc if has_gate else delta, delta,
        *_strides(out), *_strides(dout), *_strides(g), *_strides(dg),
        heads, *geometry_args(geom),
    )  # fmt: skip
    meta = dict(D=dim, D_PAD=d_pad(dim), HAS_GATE=has_gate)
    launch(_prep_kernel, _prep_tuned, (geom.num_cubes, batch * heads), args, meta, None, {})
    return delta, dgate, doc


def _io(q, k, v, dout, dq):
    return (*_strides(q), *_strides(k), *_strides(v), *_strides(dout), *_strides(dq))


def _meta(q: torch.Tensor, has_coarse: bool) -> dict:
    return dict(D=q.shape[-1], D_PAD=d_pad(q.shape[-1]), HAS_GATE=has_coarse, F32DOT=dot_in_f32(q.dtype))


def dq_backward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    dout: torch.Tensor,
    lse: torch.Tensor,
    delta: torch.Tensor,
    plan: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    geom: CubeGeometry,
    scale: float,
    dqc: torch.Tensor | None = None,
    config: dict | None = None,
) -> torch.Tensor:
    """``dq`` ``[B, L, H, D]`` of the fine stage (``plan``: the forward's key runs), plus
    ``dqc[cube] / n_cube`` when given."""
    batch, _, heads, _ = q.shape
    dq = q.new_empty(q.shape)
    args = (
        q, k, v, dout, lse, delta, *plan, dqc if dqc is not None else lse, dq, *_io(q, k, v, dout, dq),
        heads, *geometry_args(geom), scale, scale * LOG2E,
    )  # fmt: skip
    grid = (geom.num_cubes, batch * heads)
    launch(_dq_kernel, _dq_tuned, grid, args, _meta(q, dqc is not None), config, INTERPRETER_DQ)
    return dq


def dkdv_backward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    dout: torch.Tensor,
    lse: torch.Tensor,
    delta: torch.Tensor,
    plan: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    geom: CubeGeometry,
    scale: float,
    dkc_dvc: tuple[torch.Tensor, torch.Tensor] | None = None,
    dqacc: torch.Tensor | None = None,
    config: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dk, dv)`` ``[B, L, H, D]`` of the fine stage, plus the pooling shares of ``dkc_dvc``.

    ``plan``: the query runs of each (batch x head, key cube): the runs of the query cubes that
    selected it (:func:`fastvideo_vsa.ops.pooling.transpose_selection`, then ``cube_runs``).

    With ``dqacc`` (fp32 zeros shaped like q) the same pass also adds the fine stage's dq into it
    (atomically); :func:`dq_finish` then turns it into dq.
    """
    batch, _, heads, _ = q.shape
    dk, dv = k.new_empty(k.shape), v.new_empty(v.shape)
    dkc, dvc = dkc_dvc if dkc_dvc is not None else (lse, lse)
    atomic = dqacc is not None
    if atomic and dqacc.stride() != dk.stride():
        raise ValueError("dqacc must be a contiguous fp32 tensor shaped like q")
    args = (
        q, k, v, dout, lse, delta, *plan, dkc, dvc, dk, dv, dqacc if atomic else lse,
        *_io(q, k, v, dout, dk), heads, *geometry_args(geom), scale, scale * LOG2E,
    )  # fmt: skip
    grid = (geom.num_cubes, batch * heads)
    meta = {**_meta(q, dkc_dvc is not None), "DQ_ATOMIC": atomic}
    tuned = _dkdvq_tuned if atomic else _dkdv_tuned
    launch(_dkdv_kernel, tuned, grid, args, meta, config, INTERPRETER_DKDV)
    return dk, dv


def dq_finish(
    dqacc: torch.Tensor, dqc: torch.Tensor | None, geom: CubeGeometry, dtype: torch.dtype
) -> torch.Tensor:
    """``dq`` in ``dtype`` from the fp32 accumulator, plus ``dqc[cube] / n_cube`` when given."""
    batch, _, heads, dim = dqacc.shape
    dq = dqacc.new_empty(dqacc.shape, dtype=dtype)
    args = (dqacc, dqc if dqc is not None else dqacc, dq, *_strides(dq), heads, *geometry_args(geom))
    meta = dict(D=dim, D_PAD=d_pad(dim), HAS_GATE=dqc is not None)
    kernel = _dq_finish_kernel
    launch(kernel, kernel, (geom.num_cubes, batch * heads), args, meta, {"num_warps": 8}, {})
    return dq


_TUNED_ATOMIC: set[tuple] = set()


def backward_mode() -> str:
    """``FASTVIDEO_VSA_BACKWARD``: ``split`` (default: dq and dk/dv in separate passes, no atomics,
    deterministic) or ``atomic`` (one pass, dq accumulated with fp32 atomics: fewer matmuls)."""
    mode = os.environ.get("FASTVIDEO_VSA_BACKWARD", "split").strip().lower()
    if mode not in ("split", "atomic"):
        raise ValueError(f"FASTVIDEO_VSA_BACKWARD={mode!r} is not a mode; expected split or atomic")
    return mode


def fine_backward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    dout: torch.Tensor,
    lse: torch.Tensor,
    delta: torch.Tensor,
    indices: torch.Tensor,
    geom: CubeGeometry,
    scale: float,
    coarse_grads: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    key_plan: tuple[torch.Tensor, ...] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dq, dk, dv)`` ``[B, L, H, D]``, each plus its pooling share of ``coarse_grads``
    (``dqc, dkc, dvc`` ``[B, H, C, D]`` fp32) when given; ``indices`` is the forward's selection and
    ``key_plan`` its key runs (built again from ``indices`` when not given)."""
    from fastvideo_vsa.ops import hopper
    from fastvideo_vsa.ops.pooling import plans

    dqc, dkc, dvc = coarse_grads if coarse_grads is not None else (None, None, None)
    pair = (dkc, dvc) if coarse_grads is not None else None
    common = (q, k, v, dout, lse, delta)
    if backward_mode() == "split" and hopper.enabled(q, indices.shape[-1], backward=True):
        # Hopper: both passes in Gluon, over cube-major copies of k and v (and of q, dout in the second)
        kv_tiles = hopper.kv_tiles(k, v, geom)
        dq = hopper.dq_backward(q, kv_tiles, dout, lse, delta, indices, geom, scale, dqc)
        dk, dv = hopper.dkdv_backward(q, kv_tiles, dout, lse, delta, indices, geom, scale, pair)
        return dq, dk, dv
    key_plan, query_plan = plans(indices, geom, transposed=True, key_plan=key_plan)
    if backward_mode() == "atomic":
        dqacc = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
        dk, dv = dkdv_backward(*common, query_plan, geom, scale, pair, dqacc)  # type: ignore[arg-type]
        key = (q.shape[-1], q.dtype, pair is not None, q.device.type)
        if key not in _TUNED_ATOMIC:  # the autotuner's trial runs may have added to dqacc: run again
            _TUNED_ATOMIC.add(key)
            dqacc.zero_()
            dkdv_backward(*common, query_plan, geom, scale, pair, dqacc)  # type: ignore[arg-type]
        return dq_finish(dqacc, dqc, geom, q.dtype), dk, dv
    dq = dq_backward(*common, key_plan, geom, scale, dqc)
    dk, dv = dkdv_backward(*common, query_plan, geom, scale, pair)  # type: ignore[arg-type]
    return dq, dk, dv
