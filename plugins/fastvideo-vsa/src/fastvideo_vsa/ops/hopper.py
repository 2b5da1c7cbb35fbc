"""Hopper (sm_90) kernels of the VSA fine stage (forward, dq, dk/dv), in Gluon: TMA, shared-memory rings, async wgmma.

The portable Triton kernel (:mod:`fastvideo_vsa.ops.triton_fwd`) gathers keys four tokens at a time
with ``cp.async`` and runs each step's matmuls and softmax back to back. This kernel:

* reads cube-major copies of q, k and v (``[B*H*C*64, D]``: cube ``c`` of batch x head ``n`` is the
  64 rows from ``(n * C + c) * 64``; q in slot order as in :mod:`fastvideo_vsa.ops.geometry`, k and v
  compacted, the cube's tokens first (:func:`fastvideo_vsa.ops.triton_fwd.compact_tokens`); zeros in
  the rows a partial cube lacks), which the pooling kernel writes while it reads the tokens for the
  cube means (:func:`fastvideo_vsa.ops.pooling.pool` with ``tiles=...``);
* sorts each query cube's key cubes by size (:func:`_by_width`): a whole cube is one ``[64, D]`` TMA
  box a step, two cubes of at most 32 tokens or four of at most 16 share a step (boxes of 32 or 16
  rows; the grid without partial cubes compiles the one-pass kernel);
* keeps a ring of 3 key/value tiles in shared memory, filled by TMA on mbarriers one to two steps
  ahead of their use;
* runs two key cubes per loop iteration so that the tensor cores overlap the softmax: the logits of
  cube b run while the softmax of cube a does, ``P_a @ V_a`` while the softmax of b does (the
  in-flight accumulator never crosses the loop's back edge, which would make ptxas serialize every
  wgmma).

Measured on one H200 (docs/benchmarks.md): 2.3 ms for the fine stage at sparsity 0.875 on Wan's
21x30x52 grid against 3.4 ms for the Triton kernel (2.0 against 3.3 ms on 8x64x64, no partial cubes).
``MODE`` 1 and 2 turn the kernel into the probes of ``benchmarks/vsa_roofline.py`` (its loads alone, its math alone).

The backward's dq (:func:`dq_backward`) follows the same plan over compacted copies of k and v
(:func:`kv_tiles`): per iteration the logits and dP of one step run while dS of the other is formed.
Its dk/dv (:func:`dkdv_backward`) runs one program per key cube, longest query lists first
(:func:`fastvideo_vsa.ops.pooling.query_cubes`, sorted by size too: small query cubes two or four to
a step of 64 query slots): the key and value tiles stay in shared memory, the tiles of q and dout
(compacted copies, with lse and delta) stream through a ring, two programs share an SM; key cubes of
at most 32 or 16 tokens run a transposed kernel on 32- or 16-row key tiles. Measured on one H200:
backward 11.6 -> 7.5 ms at 0.875 on 21x30x52 (4.2x cuDNN dense). bf16/fp16, head dim 64 or 128, CUDA capability 9.x: :func:`supported` says whether the
kernels can run, :func:`enabled` whether the op takes them (the Triton kernels otherwise, and on the
CPU interpreter).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from fastvideo_vsa.ops.geometry import CubeGeometry
from fastvideo_vsa.ops.pooling import _pool_one, by_class
from fastvideo_vsa.ops.triton_fwd import (
    LOG2E,
    compact_tokens,
    cube_count,
    cube_tokens,
    d_pad,
    geometry_args,
    interpreting,
    launch,
    output_buffers,
)

#: The oldest triton the Gluon kernels were run with (3.6 on the GPU machine; 3.9 compiles them, tested).
MIN_TRITON = (3, 6)

try:  # Gluon ships with triton >= 3.5; the Hopper path is optional
    if tuple(int(x) for x in triton.__version__.split(".")[:2]) < MIN_TRITON:
        raise ImportError(f"triton {triton.__version__} is older than {MIN_TRITON}")
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (
        fence_async_shared,
        mbarrier,
        tma,
        warpgroup_mma,
        warpgroup_mma_wait,
    )
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    # the TMA load's name: async_copy_global_to_shared up to triton 3.6, async_load from 3.7
    tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared
    HAVE_GLUON = True
except ImportError:  # pragma: no cover - depends on the triton build
    HAVE_GLUON = False

HEAD_DIMS = (64, 128)


@triton.jit
def _copy_tiles_kernel(X, Y, XT, YT, LSE, DELTA, LT, DT, sxb, sxl, sxh, syb, syl, syh, H, T, HG, W, NCH, NCW, L, C,
                       D: tl.constexpr, D_PAD: tl.constexpr, STATS: tl.constexpr, COMPACT: tl.constexpr):  # fmt: skip
    """Cube-major copies of x and y (in slot order as the pooling pass writes them, or with ``COMPACT``
    in compacted row order), one (cube, batch x head) a program; with ``STATS`` also of the per-token
    ``LSE`` (``+inf`` in empty slots) and ``DELTA`` (0)."""
    cube = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = bh % H
    rows = tl.arange(0, 64)
    dd = tl.arange(0, D_PAD)
    if COMPACT:
        tok, valid = compact_tokens(cube, rows, T, HG, W, NCH, NCW)
    else:
        tok, valid = cube_tokens(cube, rows, T, HG, W, NCH, NCW)
    _pool_one(X, X, XT, b, h, bh, cube, rows, dd, dd < D, valid, tok, 1.0, sxb, sxl, sxh, C, D, False, True)
    _pool_one(Y, Y, YT, b, h, bh, cube, rows, dd, dd < D, valid, tok, 1.0, syb, syl, syh, C, D, False, True)
    if STATS:
        src = bh.to(tl.int64) * L + tok
        dst = (bh.to(tl.int64) * C + cube) * 64 + rows
        tl.store(LT + dst, tl.load(LSE + src, mask=valid, other=float("inf")))
        tl.store(DT + dst, tl.load(DELTA + src, mask=valid, other=0.0))


def copy_tiles(
    x: torch.Tensor,
    y: torch.Tensor,
    geom: CubeGeometry,
    stats: tuple[torch.Tensor, torch.Tensor] | None = None,
    compact: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``[2, B*H*C*64, D]``: the cube-major copies of ``x`` and ``y`` ``[B, L, H, D]`` (the layout of
    :func:`pooling.pool`'s ``tiles``; with ``compact`` each cube's tokens first, in (t, y, x) order, see
    :func:`fastvideo_vsa.ops.triton_fwd.compact_tokens`); with ``stats = (lse, delta)`` (``[B, H, L]``
    fp32) also their cube-major copies ``[B*H*C*64]`` (``+inf`` and 0 in the empty rows), else ``None``."""
    batch, _, heads, dim = x.shape
    tiles = x.new_empty((2, batch * heads * geom.num_cubes * 64, dim))
    lt = dt = None
    if stats is not None:
        lt, dt = (tiles.new_empty(tiles.shape[1], dtype=torch.float32) for _ in range(2))
    lse, delta = stats if stats is not None else (x, x)
    args = (x, y, tiles[0], tiles[1], lse, delta, lt if lt is not None else x, dt if dt is not None else x,
            *x.stride()[:3], *y.stride()[:3], heads, *geometry_args(geom))  # fmt: skip
    meta = {"D": dim, "D_PAD": d_pad(dim), "STATS": stats is not None, "COMPACT": compact}
    launch(_copy_tiles_kernel, _copy_tiles_kernel, (geom.num_cubes, batch * heads), args, meta,
           {"num_warps": 4}, {})  # fmt: skip
    return tiles, lt, dt


def kv_tiles(k: torch.Tensor, v: torch.Tensor, geom: CubeGeometry) -> torch.Tensor:
    """The backward's copies of k and v ``[2, B*H*C*64, D]``, compacted rows (what :func:`dq_backward`
    and :func:`dkdv_backward` read)."""
    return copy_tiles(k, v, geom, compact=True)[0]


@triton.jit
def _by_width_kernel(IDX, CLS, OUT, WIDTHS, TOPK, BLOCK_K: tl.constexpr):
    """One selection row: its key cubes by width class (0: whole, 1: <= 32 tokens, 2: <= 16), ascending
    within each, and how many of each."""
    row = tl.program_id(0).to(tl.int64)
    t = tl.arange(0, BLOCK_K)
    ok = t < TOPK
    cube = tl.load(IDX + row * TOPK + t, mask=ok, other=0)
    by_class(cube, tl.load(CLS + cube, mask=ok, other=3), ok, OUT + row * TOPK, WIDTHS + row * 3)


if HAVE_GLUON:

    @gluon.constexpr_function
    def _mma_layout(n):
        """The wgmma accumulator layout of a 64 x ``n`` tile on one warpgroup."""
        return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, n, 16])

    @gluon.jit
    def _softmax_step(s, m_i, l_i, kvalid, qk_scale):
        """Online-softmax update for the logits of one step (base-2 units); columns not ``kvalid``
        masked."""
        s = gl.where(kvalid[None, :], s * qk_scale, float("-inf"))
        m_new = gl.maximum(m_i, gl.max(s, 1))
        alpha = gl.exp2(m_i - m_new)
        p = gl.exp2(s - m_new[:, None])
        return p, alpha, m_new, l_i * alpha + gl.sum(p, 1)

    @gluon.jit
    def _step_cubes(idx_base, t, n, G: gl.constexpr):
        """The ``G`` key cubes of step ``t`` (a tuple): list entries ``t * G ..`` (past the list: its last
        entry, masked)."""
        c0 = gl.load(idx_base + gl.minimum(t * G, n - 1))
        if G == 1:
            cubes = (c0,)
        else:
            c1 = gl.load(idx_base + gl.minimum(t * G + 1, n - 1))
            if G == 2:
                cubes = (c0, c1)
            else:
                c2 = gl.load(idx_base + gl.minimum(t * G + 2, n - 1))
                c3 = gl.load(idx_base + gl.minimum(t * G + 3, n - 1))
                cubes = (c0, c1, c2, c3)
        return cubes

    @gluon.jit
    def _step_mask(cubes, t, n, cols, G: gl.constexpr, T, HG, W, NCH, NCW):
        """Which of the 64 key columns of step ``t`` (key cubes ``cubes``) hold a token: column ``c`` is
        row ``c % (64 / G)`` of the step's cube ``c // (64 / G)`` (compacted rows)."""
        if G == 1:
            return (cols < cube_count(cubes[0], T, HG, W, NCH, NCW)) & (t < n)
        else:
            group = cols // (64 // G)
            count = gl.where(group == 0, cube_count(cubes[0], T, HG, W, NCH, NCW),
                             cube_count(cubes[1], T, HG, W, NCH, NCW))  # fmt: skip
            if G == 4:
                count = gl.where(group == 2, cube_count(cubes[2], T, HG, W, NCH, NCW), count)
                count = gl.where(group == 3, cube_count(cubes[3], T, HG, W, NCH, NCW), count)
            return (t * G + group < n) & (cols % (64 // G) < count)

    @gluon.jit
    def _load_group(desc, ring, bars, cubes, step, LIMIT, row0, G: gl.constexpr, SLOTS: gl.constexpr,
                    desc2=None, ring2=None):  # fmt: skip
        """TMA of a step's ``G`` key cubes (``cubes``; the first ``64 / G`` rows of each, ``desc``'s box)
        into ring slot ``step % SLOTS`` (and from ``desc2`` into ``ring2`` on the same barrier), for ring
        steps below ``LIMIT``."""
        ok = step < LIMIT
        bar = bars.index(step % SLOTS)
        if desc2 is None:
            mbarrier.expect(bar, G * desc.block_type.nbytes, pred=ok)
        else:
            mbarrier.expect(bar, 2 * G * desc.block_type.nbytes, pred=ok)
        for g in gl.static_range(G):
            rows = [row0 + cubes[g] * 64, 0]
            tma_load(desc, rows, bar, ring.index(step % SLOTS).slice(g * (64 // G), 64 // G), pred=ok)
            if desc2 is not None:
                tma_load(desc2, rows, bar, ring2.index(step % SLOTS).slice(g * (64 // G), 64 // G), pred=ok)

    @gluon.jit
    def _ring_steps(n, G: gl.constexpr):
        """Ring steps a pass over ``n`` cubes, ``G`` a step, loads (0 when ``n`` is 0): two steps an
        iteration, plus the logits of one step past the last pair (computed, unused)."""
        steps = (n + G - 1) // G
        return gl.where(n > 0, 2 * ((steps + 1) // 2) + 1, 0)

    @gluon.jit
    def _fwd_pass(q_smem, k_desc, v_desc, k_smem, v_smem, bars, idx_base, n, s0, LIMIT, row0, m_i, l_i, acc,
                  zero_s, qk_scale, T, HG, W, NCH, NCW, G: gl.constexpr, D: gl.constexpr, MODE: gl.constexpr):  # fmt: skip
        """The online softmax over the ``n`` key cubes at ``idx_base`` (compacted rows; ``G`` cubes of at
        most ``64 / G`` tokens per 64-column step), two steps per iteration; ring steps ``s0 ..
        s0 + LIMIT``, every one loaded and waited for (``MODE`` 2: only the first two of the first pass)."""
        NS: gl.constexpr = 3
        o_layout: gl.constexpr = _mma_layout(D)
        p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
        o_rows: gl.constexpr = gl.SliceLayout(1, o_layout)
        cols = gl.arange(0, 64, layout=gl.SliceLayout(0, _mma_layout(64)))
        end = s0 + LIMIT
        if MODE == 2:  # probe: the math alone, on tiles loaded once
            end = gl.minimum(end, 2)
        pairs = (LIMIT - 1) // 2
        # key cubes are read an iteration before they are needed: a, b (masks), c, d (TMA)
        cubes_a = _step_cubes(idx_base, 0, n, G)
        cubes_b = _step_cubes(idx_base, 1, n, G)
        _load_group(k_desc, k_smem, bars, cubes_a, s0, end, row0, G, NS, v_desc, v_smem)
        _load_group(k_desc, k_smem, bars, cubes_b, s0 + 1, end, row0, G, NS, v_desc, v_smem)
        cubes_c = _step_cubes(idx_base, 2, n, G)
        cubes_d = _step_cubes(idx_base, 3, n, G)
        _wait_tile(bars, s0, end, NS)
        s_a = warpgroup_mma(
            q_smem, k_smem.index(s0 % NS).permute((1, 0)), zero_s, use_acc=False, is_async=True
        )
        s_a = warpgroup_mma_wait(num_outstanding=0, deps=(s_a,))
        for i in range(pairs):
            t = 2 * i  # the pass's step of a; ring step s0 + t
            a = s0 + t
            cubes_e = _step_cubes(idx_base, t + 4, n, G)
            cubes_f = _step_cubes(idx_base, t + 5, n, G)
            if MODE == 1:  # probe: the loads alone
                _load_group(k_desc, k_smem, bars, cubes_c, a + 2, end, row0, G, NS, v_desc, v_smem)
                _wait_tile(bars, a + 1, end, NS)
                _wait_tile(bars, a + 2, end, NS)
                _load_group(k_desc, k_smem, bars, cubes_d, a + 3, end, row0, G, NS, v_desc, v_smem)
            else:
                # the slot of step a - 1 is free (its P @ V completed last iteration): step a + 2
                _load_group(k_desc, k_smem, bars, cubes_c, a + 2, end, row0, G, NS, v_desc, v_smem)
                _wait_tile(bars, a + 1, end, NS)
                s_b = warpgroup_mma(q_smem, k_smem.index((a + 1) % NS).permute((1, 0)), zero_s, use_acc=False,
                                    is_async=True)  # fmt: skip
                mask = _step_mask(cubes_a, t, n, cols, G, T, HG, W, NCH, NCW)
                p, alpha, m_i, l_i = _softmax_step(s_a, m_i, l_i, mask, qk_scale)
                s_b = warpgroup_mma_wait(num_outstanding=0, deps=(s_b,))
                acc = acc * gl.convert_layout(alpha, o_rows)[:, None]
                acc = warpgroup_mma(gl.convert_layout(p.to(k_desc.dtype), p_layout), v_smem.index(a % NS), acc,
                                    is_async=True)  # fmt: skip
                mask = _step_mask(cubes_b, t + 1, n, cols, G, T, HG, W, NCH, NCW)
                p, alpha, m_i, l_i = _softmax_step(s_b, m_i, l_i, mask, qk_scale)
                _wait_tile(bars, a + 2, end, NS)
                s_a = warpgroup_mma(q_smem, k_smem.index((a + 2) % NS).permute((1, 0)), zero_s, use_acc=False,
                                    is_async=True)  # fmt: skip
                acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc,))  # P_a @ V_a done: its slot is free
                _load_group(k_desc, k_smem, bars, cubes_d, a + 3, end, row0, G, NS, v_desc, v_smem)
                acc = acc * gl.convert_layout(alpha, o_rows)[:, None]
                acc = warpgroup_mma(gl.convert_layout(p.to(k_desc.dtype), p_layout), v_smem.index((a + 1) % NS),
                                    acc, is_async=True)  # fmt: skip
                s_a, acc = warpgroup_mma_wait(num_outstanding=0, deps=(s_a, acc))
            cubes_a, cubes_b, cubes_c, cubes_d = cubes_c, cubes_d, cubes_e, cubes_f
        return m_i, l_i, acc

    @gluon.jit
    def _fwd_kernel(
        q_desc, k_desc, v_desc, k32_desc, v32_desc, k16_desc, v16_desc, G, OC, OUT, LSE, IDX, WIDTHS,
        stride_gb, stride_gl, stride_gh,
        stride_ob, stride_ol, stride_oh,
        H, T, HG, W, NCH, NCW, L, C, TOPK,
        qk_scale,
        D: gl.constexpr,
        HAS_GATE: gl.constexpr,
        MODE: gl.constexpr = 0,
        PACKED: gl.constexpr = True,
    ):  # fmt: skip
        """One (query cube, batch x head) program over its ``TOPK`` key cubes (``IDX``: whole cubes first,
        then those of at most 32 tokens, then of at most 16; ``WIDTHS``: how many of each), one
        :func:`_fwd_pass` per kind: one whole cube, two or four smaller ones to a 64-column step."""
        NS: gl.constexpr = 3
        cube_q = gl.program_id(0)
        bh = gl.program_id(1)
        b = (bh // H).to(gl.int64)
        h = bh % H
        row = bh.to(gl.int64) * C + cube_q

        s_layout: gl.constexpr = _mma_layout(64)  # 64 x 64 logits (one step)
        o_layout: gl.constexpr = _mma_layout(D)  # 64 x D accumulator
        s_rows: gl.constexpr = gl.SliceLayout(1, s_layout)
        o_rows: gl.constexpr = gl.SliceLayout(1, o_layout)
        o_cols: gl.constexpr = gl.SliceLayout(0, o_layout)

        q_smem = gl.allocate_shared_memory(q_desc.dtype, [64, D], q_desc.layout)
        k_smem = gl.allocate_shared_memory(k_desc.dtype, [NS, 64, D], k_desc.layout)
        v_smem = gl.allocate_shared_memory(v_desc.dtype, [NS, 64, D], v_desc.layout)
        q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        bars = gl.allocate_shared_memory(gl.int64, [NS, 1], mbarrier.MBarrierLayout())
        _init_barriers(q_bar, bars, NS)

        row0 = bh * C * 64
        idx_base = IDX + row * TOPK
        mbarrier.expect(q_bar, q_desc.block_type.nbytes)
        tma_load(q_desc, [row0 + cube_q * 64, 0], q_bar, q_smem)
        m_i = gl.full([64], float("-inf"), gl.float32, layout=s_rows)
        l_i = gl.zeros([64], gl.float32, layout=s_rows)
        acc = gl.zeros([64, D], gl.float32, layout=o_layout)
        zero = gl.zeros([64, 64], gl.float32, layout=s_layout)
        mbarrier.wait(q_bar, 0)
        if PACKED:  # whole cubes one a step, cubes of <= 32 tokens two a step, of <= 16 four a step
            n64 = gl.load(WIDTHS + row * 3)
            n32 = gl.load(WIDTHS + row * 3 + 1)
            n16 = gl.load(WIDTHS + row * 3 + 2)
            lim64 = _ring_steps(n64, 1)
            lim32 = _ring_steps(n32, 2)
            lim16 = _ring_steps(n16, 4)
            if n64 > 0:
                m_i, l_i, acc = _fwd_pass(q_smem, k_desc, v_desc, k_smem, v_smem, bars, idx_base, n64, 0, lim64, row0,
                                          m_i, l_i, acc, zero, qk_scale, T, HG, W, NCH, NCW, 1, D, MODE)  # fmt: skip
            if n32 > 0:
                m_i, l_i, acc = _fwd_pass(q_smem, k32_desc, v32_desc, k_smem, v_smem, bars, idx_base + n64, n32, lim64,
                                          lim32, row0, m_i, l_i, acc, zero, qk_scale, T, HG, W, NCH, NCW, 2, D, MODE)  # fmt: skip
            if n16 > 0:
                m_i, l_i, acc = _fwd_pass(q_smem, k16_desc, v16_desc, k_smem, v_smem, bars, idx_base + n64 + n32, n16,
                                          lim64 + lim32, lim16, row0, m_i, l_i, acc, zero, qk_scale, T, HG, W, NCH, NCW,
                                          4, D, MODE)  # fmt: skip
        else:
            m_i, l_i, acc = _fwd_pass(q_smem, k_desc, v_desc, k_smem, v_smem, bars, idx_base, TOPK, 0,
                                          _ring_steps(TOPK, 1), row0, m_i, l_i, acc, zero, qk_scale, T, HG, W, NCH, NCW, 1,
                                          D, MODE)  # fmt: skip
        _invalidate_barriers(q_bar, bars, NS)

        out = acc / gl.convert_layout(l_i, o_rows)[:, None]
        dd = gl.arange(0, D, layout=o_cols)
        qtok, qvalid = cube_tokens(cube_q, gl.arange(0, 64, layout=o_rows), T, HG, W, NCH, NCW)
        omask = qvalid[:, None] & (dd < D)[None, :]
        if HAS_GATE:
            g = gl.load(
                G + b * stride_gb + h * stride_gh + qtok[:, None] * stride_gl + dd[None, :],
                mask=omask,
                other=0.0,
            )
            oc = gl.load(OC + (bh.to(gl.int64) * C + cube_q) * D + dd)
            out = out + g.to(gl.float32) * oc[None, :]
        gl.store(
            OUT + b * stride_ob + h * stride_oh + qtok[:, None] * stride_ol + dd[None, :],
            out.to(OUT.dtype.element_ty),
            mask=omask,
        )
        ltok, lvalid = cube_tokens(cube_q, gl.arange(0, 64, layout=s_rows), T, HG, W, NCH, NCW)
        gl.store(LSE + bh.to(gl.int64) * L + ltok, m_i + gl.log2(l_i), mask=lvalid)


if HAVE_GLUON:

    @gluon.jit
    def _rows_to_smem(X, base, tok, valid, stride_l, smem, D: gl.constexpr):
        """Gather the 64 rows ``tok`` of one head (``X + base``) into the operand tile ``smem``."""
        layout: gl.constexpr = gl.BlockedLayout([1, 8], [32 // (D // 8), D // 8], [4, 1], [1, 0])
        dd = gl.arange(0, D, layout=gl.SliceLayout(0, layout))
        t = gl.convert_layout(tok, gl.SliceLayout(1, layout))
        ok = gl.convert_layout(valid, gl.SliceLayout(1, layout))
        x = gl.load(
            X + base + t[:, None] * stride_l + dd[None, :], mask=ok[:, None] & (dd < D)[None, :], other=0.0
        )
        smem.store(x)

    @gluon.jit
    def _ds_step(s, dp, lse, delta, kvalid, qk_scale):
        """``dS = P * (dP - delta)`` of one step's key columns (``kvalid``: which hold a token), ``P``
        recomputed from the logits and ``lse``."""
        p = gl.where(kvalid[None, :], gl.exp2(s * qk_scale - lse[:, None]), 0.0)
        return p * (dp - delta[:, None])

    @gluon.jit
    def _wait_tile(bars, step, LIMIT, SLOTS: gl.constexpr):
        mbarrier.wait(bars.index(step % SLOTS), (step // SLOTS) & 1, pred=step < LIMIT)

    @gluon.jit
    def _dq_pass(q_smem, do_smem, k_desc, v_desc, k_smem, v_smem, k_bars, v_bars, idx_base, n, s0, LIMIT, row0,
                 lse, delta, dq, zero_s, qk_scale, T, HG, W, NCH, NCW, G: gl.constexpr, D: gl.constexpr):  # fmt: skip
        """dq over the ``n`` key cubes at ``idx_base`` (compacted rows; ``G`` cubes of at most ``64 / G``
        tokens per 64-column step), two steps per iteration: the logits and dP of step b run on the
        tensor cores while dS of step a is formed, dS_a @ K_a while dS_b is. Ring steps ``s0 ..
        s0 + LIMIT`` (keys: 3 slots, values: 2), every one loaded and waited for."""
        KS: gl.constexpr = 3
        VS: gl.constexpr = 2
        a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=_mma_layout(D), k_width=2)
        cols = gl.arange(0, 64, layout=gl.SliceLayout(0, _mma_layout(64)))
        end = s0 + LIMIT
        pairs = (LIMIT - 1) // 2
        cubes_a = _step_cubes(idx_base, 0, n, G)
        cubes_b = _step_cubes(idx_base, 1, n, G)
        _load_group(k_desc, k_smem, k_bars, cubes_a, s0, end, row0, G, KS)
        _load_group(v_desc, v_smem, v_bars, cubes_a, s0, end, row0, G, VS)
        _load_group(k_desc, k_smem, k_bars, cubes_b, s0 + 1, end, row0, G, KS)
        _load_group(v_desc, v_smem, v_bars, cubes_b, s0 + 1, end, row0, G, VS)
        cubes_c = _step_cubes(idx_base, 2, n, G)
        cubes_d = _step_cubes(idx_base, 3, n, G)
        _wait_tile(k_bars, s0, end, KS)
        _wait_tile(v_bars, s0, end, VS)
        s_a = warpgroup_mma(
            q_smem, k_smem.index(s0 % KS).permute((1, 0)), zero_s, use_acc=False, is_async=True
        )
        dp_a = warpgroup_mma(
            do_smem, v_smem.index(s0 % VS).permute((1, 0)), zero_s, use_acc=False, is_async=True
        )
        s_a, dp_a = warpgroup_mma_wait(num_outstanding=0, deps=(s_a, dp_a))
        for i in range(pairs):
            t = 2 * i  # the pass's step of a; ring step s0 + t
            a = s0 + t
            cubes_e = _step_cubes(idx_base, t + 4, n, G)
            cubes_f = _step_cubes(idx_base, t + 5, n, G)
            # K_{a-1} (read by dS @ K last iteration) and V_a (dP_a done) have left their slots
            _load_group(k_desc, k_smem, k_bars, cubes_c, a + 2, end, row0, G, KS)
            _load_group(v_desc, v_smem, v_bars, cubes_c, a + 2, end, row0, G, VS)
            _wait_tile(k_bars, a + 1, end, KS)
            _wait_tile(v_bars, a + 1, end, VS)
            kb = k_smem.index((a + 1) % KS)
            s_b = warpgroup_mma(q_smem, kb.permute((1, 0)), zero_s, use_acc=False, is_async=True)
            dp_b = warpgroup_mma(do_smem, v_smem.index((a + 1) % VS).permute((1, 0)), zero_s, use_acc=False,
                                 is_async=True)  # fmt: skip
            mask = _step_mask(cubes_a, t, n, cols, G, T, HG, W, NCH, NCW)
            ds = _ds_step(s_a, dp_a, lse, delta, mask, qk_scale)
            s_b, dp_b = warpgroup_mma_wait(num_outstanding=0, deps=(s_b, dp_b))
            dq = warpgroup_mma(gl.convert_layout(ds.to(k_desc.dtype), a_layout), k_smem.index(a % KS), dq,
                               is_async=True)  # fmt: skip
            mask = _step_mask(cubes_b, t + 1, n, cols, G, T, HG, W, NCH, NCW)
            ds = _ds_step(s_b, dp_b, lse, delta, mask, qk_scale)
            _wait_tile(k_bars, a + 2, end, KS)
            _wait_tile(v_bars, a + 2, end, VS)
            s_a = warpgroup_mma(q_smem, k_smem.index((a + 2) % KS).permute((1, 0)), zero_s, use_acc=False,
                                is_async=True)  # fmt: skip
            dp_a = warpgroup_mma(do_smem, v_smem.index((a + 2) % VS).permute((1, 0)), zero_s, use_acc=False,
                                 is_async=True)  # fmt: skip
            dq = warpgroup_mma_wait(num_outstanding=2, deps=(dq,))  # dS_a @ K_a done: K_a's slot is free
            _load_group(k_desc, k_smem, k_bars, cubes_d, a + 3, end, row0, G, KS)
            _load_group(v_desc, v_smem, v_bars, cubes_d, a + 3, end, row0, G, VS)  # dP_b done
            dq = warpgroup_mma(gl.convert_layout(ds.to(k_desc.dtype), a_layout), kb, dq, is_async=True)
            s_a, dp_a, dq = warpgroup_mma_wait(num_outstanding=0, deps=(s_a, dp_a, dq))
            cubes_a, cubes_b, cubes_c, cubes_d = cubes_c, cubes_d, cubes_e, cubes_f
        return dq

    @gluon.jit
    def _dq_kernel(
        Q, DO, k_desc, v_desc, k32_desc, v32_desc, k16_desc, v16_desc, LSE, DELTA, IDX, WIDTHS, DQC, DQ,
        sqb, sql, sqh, sdb, sdl, sdh, sxb, sxl, sxh,
        H, T, HG, W, NCH, NCW, L, C, TOPK,
        scale, qk_scale,
        D: gl.constexpr,
        HAS_COARSE: gl.constexpr,
        PACKED: gl.constexpr = True,
    ):  # fmt: skip
        """dq of one (query cube, batch x head) over its ``TOPK`` key cubes (``IDX``: whole cubes first,
        then those of at most 32 tokens, then of at most 16; ``WIDTHS``: how many of each), one
        :func:`_dq_pass` per kind: one whole cube, two or four smaller ones to a 64-column step (their
        compacted rows, boxes of 32 or 16 rows)."""
        KS: gl.constexpr = 3
        VS: gl.constexpr = 2
        cube_q = gl.program_id(0)
        bh = gl.program_id(1)
        b = (bh // H).to(gl.int64)
        h = bh % H
        row = bh.to(gl.int64) * C + cube_q

        o_layout: gl.constexpr = _mma_layout(D)  # 64 x D dq
        s_rows: gl.constexpr = gl.SliceLayout(1, _mma_layout(64))
        o_rows: gl.constexpr = gl.SliceLayout(1, o_layout)
        o_cols: gl.constexpr = gl.SliceLayout(0, o_layout)

        q_smem = gl.allocate_shared_memory(k_desc.dtype, [64, D], k_desc.layout)
        do_smem = gl.allocate_shared_memory(k_desc.dtype, [64, D], k_desc.layout)
        k_smem = gl.allocate_shared_memory(k_desc.dtype, [KS, 64, D], k_desc.layout)
        v_smem = gl.allocate_shared_memory(v_desc.dtype, [VS, 64, D], v_desc.layout)
        k_bars = gl.allocate_shared_memory(gl.int64, [KS, 1], mbarrier.MBarrierLayout())
        v_bars = gl.allocate_shared_memory(gl.int64, [VS, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(KS):
            mbarrier.init(k_bars.index(i), count=1)
        for i in gl.static_range(VS):
            mbarrier.init(v_bars.index(i), count=1)

        row0 = bh * C * 64
        idx_base = IDX + row * TOPK
        qtok, qvalid = cube_tokens(cube_q, gl.arange(0, 64, layout=s_rows), T, HG, W, NCH, NCW)
        _rows_to_smem(Q, b * sqb + h * sqh, qtok, qvalid, sql, q_smem, D)
        _rows_to_smem(DO, b * sdb + h * sdh, qtok, qvalid, sdl, do_smem, D)
        fence_async_shared()
        dq = gl.zeros([64, D], gl.float32, layout=o_layout)
        lse = gl.load(LSE + bh.to(gl.int64) * L + qtok, mask=qvalid, other=0.0)
        delta = gl.load(DELTA + bh.to(gl.int64) * L + qtok, mask=qvalid, other=0.0)
        zero = gl.zeros([64, 64], gl.float32, layout=_mma_layout(64))
        if PACKED:  # whole cubes one a step, cubes of <= 32 tokens two a step, of <= 16 four a step
            n64 = gl.load(WIDTHS + row * 3)
            n32 = gl.load(WIDTHS + row * 3 + 1)
            n16 = gl.load(WIDTHS + row * 3 + 2)
            lim64 = _ring_steps(n64, 1)
            lim32 = _ring_steps(n32, 2)
            lim16 = _ring_steps(n16, 4)
            if n64 > 0:
                dq = _dq_pass(q_smem, do_smem, k_desc, v_desc, k_smem, v_smem, k_bars, v_bars, idx_base, n64, 0, lim64,
                              row0, lse, delta, dq, zero, qk_scale, T, HG, W, NCH, NCW, 1, D)  # fmt: skip
            if n32 > 0:
                dq = _dq_pass(q_smem, do_smem, k32_desc, v32_desc, k_smem, v_smem, k_bars, v_bars, idx_base + n64, n32,
                              lim64, lim32, row0, lse, delta, dq, zero, qk_scale, T, HG, W, NCH, NCW, 2, D)  # fmt: skip
            if n16 > 0:
                dq = _dq_pass(q_smem, do_smem, k16_desc, v16_desc, k_smem, v_smem, k_bars, v_bars, idx_base + n64 + n32,
                              n16, lim64 + lim32, lim16, row0, lse, delta, dq, zero, qk_scale, T, HG, W, NCH, NCW, 4, D)  # fmt: skip
        else:
            dq = _dq_pass(q_smem, do_smem, k_desc, v_desc, k_smem, v_smem, k_bars, v_bars, idx_base, TOPK, 0,
                              _ring_steps(TOPK, 1), row0, lse, delta, dq, zero, qk_scale, T, HG, W, NCH, NCW, 1, D)  # fmt: skip
        for i in gl.static_range(KS):
            mbarrier.invalidate(k_bars.index(i))
        for i in gl.static_range(VS):
            mbarrier.invalidate(v_bars.index(i))

        dq = dq * scale
        dd = gl.arange(0, D, layout=o_cols)
        otok, ovalid = cube_tokens(cube_q, gl.arange(0, 64, layout=o_rows), T, HG, W, NCH, NCW)
        if HAS_COARSE:
            count = cube_count(cube_q, T, HG, W, NCH, NCW).to(gl.float32)
            dqc = gl.load(DQC + row * D + dd)
            dq = dq + dqc[None, :] / count
        gl.store(DQ + b * sxb + h * sxh + otok[:, None] * sxl + dd[None, :], dq.to(DQ.dtype.element_ty),
                 mask=ovalid[:, None] & (dd < D)[None, :])  # fmt: skip


if HAVE_GLUON:

    @gluon.jit
    def _query_rows(base, cubes, t, n, slots, G: gl.constexpr):
        """Rows of the cube-major copies (and their lse / delta) behind step ``t``'s 64 query slots
        (``slots``, 0..63 in the layout wanted): slot ``c`` is row ``c % (64 / G)`` of the step's query cube
        ``c // (64 / G)`` (compacted rows); and whether the slot's list entry exists."""
        if G == 1:
            return (base + cubes[0]) * 64 + slots, t < n
        else:
            group = slots // (64 // G)
            cube = gl.where(group == 0, cubes[0], cubes[1])
            if G == 4:
                cube = gl.where(group == 2, cubes[2], cube)
                cube = gl.where(group == 3, cubes[3], cube)
            return (base + cube) * 64 + slots % (64 // G), t * G + group < n

    @gluon.jit
    def _query_prologue(q_desc, do_desc, q_smem, do_smem, bars, lists, n, s0, end, row0, G: gl.constexpr,
                        NS: gl.constexpr):  # fmt: skip
        """The query cubes of a dk/dv pass's first three steps (clamped to the list; loads past ``end``
        are predicated off), the tiles of its first ``NS - 1`` requested."""
        cubes0 = _step_cubes(lists, 0, n, G)
        cubes1 = _step_cubes(lists, 1, n, G)
        cubes2 = _step_cubes(lists, 2, n, G)
        _load_group(q_desc, q_smem, bars, cubes0, s0, end, row0, G, NS, do_desc, do_smem)
        if NS == 3:
            _load_group(q_desc, q_smem, bars, cubes1, s0 + 1, end, row0, G, NS, do_desc, do_smem)
        return cubes0, cubes1, cubes2

    @gluon.jit
    def _query_step(q_desc, do_desc, q_smem, do_smem, bars, LT, lists, n, j, s0, end, row0, base, slots, cubes1,
                    cubes2, cubes0, G: gl.constexpr, NS: gl.constexpr):  # fmt: skip
        """Step ``j`` of a dk/dv pass (query cubes ``cubes0``): requests the tiles ``NS - 1`` steps ahead
        (the slot of step ``j - 1`` is free: its matmuls completed), reads the cubes 3 steps ahead, and
        waits for step ``j``'s tiles. Returns those cubes, the rows of the step's query slots, their lse
        (``+inf`` past the list) and the ring slot."""
        r = s0 + j
        cubes3 = _step_cubes(lists, j + 3, n, G)
        if NS == 2:
            _load_group(q_desc, q_smem, bars, cubes1, r + 1, end, row0, G, NS, do_desc, do_smem)
        else:
            _load_group(q_desc, q_smem, bars, cubes2, r + 2, end, row0, G, NS, do_desc, do_smem)
        rows, ok = _query_rows(base, cubes0, j, n, slots, G)
        lse = gl.where(ok, gl.load(LT + rows), float("inf"))
        slot = r % NS
        mbarrier.wait(bars.index(slot), (r // NS) & 1)
        return cubes3, rows, lse, slot

    @gluon.jit
    def _dkdv_wide_pass(k_smem, v_smem, q_desc, do_desc, q_smem, do_smem, bars, LT, DT, base, lists, n, s0, row0,
                        dk, dv, zero_s, qk_scale, G: gl.constexpr, NS: gl.constexpr, D: gl.constexpr):  # fmt: skip
        """dk, dv of a 64-row key tile over the ``n`` query cubes at ``lists`` (``G`` to a step of 64 query
        slots); ring steps from ``s0``, ``NS - 1`` ahead, every one loaded and waited for."""
        a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=_mma_layout(D), k_width=2)
        slots = gl.arange(0, 64, layout=gl.SliceLayout(0, _mma_layout(64)))
        steps = (n + G - 1) // G
        end = s0 + steps
        cubes0, cubes1, cubes2 = _query_prologue(q_desc, do_desc, q_smem, do_smem, bars, lists, n, s0, end, row0, G,
                                                 NS)  # fmt: skip
        for j in range(steps):
            cubes3, rows, lse, slot = _query_step(q_desc, do_desc, q_smem, do_smem, bars, LT, lists, n, j, s0, end,
                                                  row0, base, slots, cubes1, cubes2, cubes0, G, NS)  # fmt: skip
            st = warpgroup_mma(
                k_smem, q_smem.index(slot).permute((1, 0)), zero_s, use_acc=False, is_async=True
            )
            dpt = warpgroup_mma(v_smem, do_smem.index(slot).permute((1, 0)), zero_s, use_acc=False,
                                is_async=True)  # fmt: skip
            st = warpgroup_mma_wait(num_outstanding=1, deps=(st,))
            pt = gl.exp2(st * qk_scale - lse[None, :])  # empty query slots: lse = +inf, p = 0
            delta = gl.load(DT + rows)
            dv = warpgroup_mma(gl.convert_layout(pt.to(q_desc.dtype), a_layout), do_smem.index(slot), dv,
                               is_async=True)  # fmt: skip
            dpt = warpgroup_mma_wait(num_outstanding=1, deps=(dpt,))
            dst = pt * (dpt - delta[None, :])
            dk = warpgroup_mma(gl.convert_layout(dst.to(q_desc.dtype), a_layout), q_smem.index(slot), dk,
                               is_async=True)  # fmt: skip
            dv, dk = warpgroup_mma_wait(num_outstanding=0, deps=(dv, dk))
            cubes0, cubes1, cubes2 = cubes1, cubes2, cubes3
        return dk, dv

    @gluon.jit
    def _key_segment(ORDER, C, H):
        """The (batch x head, key cube) segment of this dk/dv program (``ORDER``: by decreasing work):
        ``(seg, bh, cube_k, b, h, row0)``."""
        seg = gl.load(ORDER + gl.program_id(0))
        bh = seg // C
        cube_k = seg - bh * C
        return seg, bh, cube_k, (bh // H).to(gl.int64), bh % H, bh * C * 64

    @gluon.jit
    def _query_list(LISTS, FIRST, QW, seg):
        """Segment ``seg``'s query list and how many of its cubes are whole, of <= 32 and <= 16 tokens."""
        lists = LISTS + gl.load(FIRST + seg)
        return lists, gl.load(QW + seg * 3), gl.load(QW + seg * 3 + 1), gl.load(QW + seg * 3 + 2)

    @gluon.jit
    def _init_barriers(bar, ring, NS: gl.constexpr):
        """Initialize a single-use barrier and a ring of ``NS``, one arrival each."""
        mbarrier.init(bar, count=1)
        for i in gl.static_range(NS):
            mbarrier.init(ring.index(i), count=1)

    @gluon.jit
    def _invalidate_barriers(bar, ring, NS: gl.constexpr):
        mbarrier.invalidate(bar)
        for i in gl.static_range(NS):
            mbarrier.invalidate(ring.index(i))

    @gluon.jit
    def _load_key_tile(k_desc, v_desc, k_smem, v_smem, kv_bar, row0, cube_k):
        """TMA of the key cube's key and value tiles (the first rows of its compacted copies)."""
        mbarrier.expect(kv_bar, 2 * k_desc.block_type.nbytes)
        tma_load(k_desc, [row0 + cube_k * 64, 0], kv_bar, k_smem)
        tma_load(v_desc, [row0 + cube_k * 64, 0], kv_bar, v_smem)

    @gluon.jit
    def _dkdv_kernel(
        q_desc, do_desc, q32_desc, do32_desc, q16_desc, do16_desc, k_desc, v_desc, LT, DT, ORDER, LISTS, FIRST, QW,
        DKC, DVC, DK, DV,
        sxb, sxl, sxh,
        H, T, HG, W, NCH, NCW, L, C,
        scale, qk_scale,
        D: gl.constexpr,
        HAS_COARSE: gl.constexpr,
        NS: gl.constexpr = 2,
    ):  # fmt: skip
        """dk and dv of one (batch x head, key cube) segment (``ORDER``: segments by decreasing work)
        over the query cubes that selected it (``LISTS``: whole cubes first, then those of at most 32
        tokens, then of at most 16; ``QW``: how many of each): one, two or four query cubes to a step
        (compacted copies of q and dout, boxes of 64, 32 or 16 rows); q and dO tiles in a ring of
        ``NS``, filled ``NS - 1`` steps ahead, each step's four matmuls done before the next step's (two
        programs share an SM at ``NS = 2``, and overlap each other's)."""
        seg, bh, cube_k, b, h, row0 = _key_segment(ORDER, C, H)

        o_layout: gl.constexpr = _mma_layout(D)  # 64 x D: dk, dv
        o_rows: gl.constexpr = gl.SliceLayout(1, o_layout)
        o_cols: gl.constexpr = gl.SliceLayout(0, o_layout)

        k_smem = gl.allocate_shared_memory(k_desc.dtype, [64, D], k_desc.layout)
        v_smem = gl.allocate_shared_memory(v_desc.dtype, [64, D], v_desc.layout)
        q_smem = gl.allocate_shared_memory(q_desc.dtype, [NS, 64, D], q_desc.layout)
        do_smem = gl.allocate_shared_memory(do_desc.dtype, [NS, 64, D], do_desc.layout)
        kv_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        bars = gl.allocate_shared_memory(gl.int64, [NS, 1], mbarrier.MBarrierLayout())
        _init_barriers(kv_bar, bars, NS)
        lists, n64, n32, n16 = _query_list(LISTS, FIRST, QW, seg)
        _load_key_tile(k_desc, v_desc, k_smem, v_smem, kv_bar, row0, cube_k)
        dk = gl.zeros([64, D], gl.float32, layout=o_layout)
        dv = gl.zeros([64, D], gl.float32, layout=o_layout)
        zero_s = gl.zeros([64, 64], gl.float32, layout=_mma_layout(64))
        base = bh * C
        s32 = n64
        s16 = s32 + (n32 + 1) // 2
        mbarrier.wait(kv_bar, 0)
        if n64 > 0:
            dk, dv = _dkdv_wide_pass(k_smem, v_smem, q_desc, do_desc, q_smem, do_smem, bars, LT, DT, base, lists, n64,
                                     0, row0, dk, dv, zero_s, qk_scale, 1, NS, D)  # fmt: skip
        if n32 > 0:
            dk, dv = _dkdv_wide_pass(k_smem, v_smem, q32_desc, do32_desc, q_smem, do_smem, bars, LT, DT, base,
                                     lists + n64, n32, s32, row0, dk, dv, zero_s, qk_scale, 2, NS, D)  # fmt: skip
        if n16 > 0:
            dk, dv = _dkdv_wide_pass(k_smem, v_smem, q16_desc, do16_desc, q_smem, do_smem, bars, LT, DT, base,
                                     lists + n64 + n32, n16, s16, row0, dk, dv, zero_s, qk_scale, 4, NS, D)  # fmt: skip
        _invalidate_barriers(kv_bar, bars, NS)

        dk = dk * scale
        dd = gl.arange(0, D, layout=o_cols)
        ktok, kvalid = compact_tokens(cube_k, gl.arange(0, 64, layout=o_rows), T, HG, W, NCH, NCW)
        if HAS_COARSE:
            inv = 1.0 / cube_count(cube_k, T, HG, W, NCH, NCW).to(gl.float32)
            coarse = (bh.to(gl.int64) * C + cube_k) * D + dd
            dk = dk + gl.load(DKC + coarse)[None, :] * inv
            dv = dv + gl.load(DVC + coarse)[None, :] * inv
        out = b * sxb + h * sxh + ktok[:, None] * sxl + dd[None, :]
        mask = kvalid[:, None] & (dd < D)[None, :]
        gl.store(DK + out, dk.to(DK.dtype.element_ty), mask=mask)
        gl.store(DV + out, dv.to(DV.dtype.element_ty), mask=mask)

    @gluon.jit
    def _dkdv_narrow_pass(k_smem, v_smem, q_desc, do_desc, q_smem, do_smem, p_smem, ds_smem, bars, LT, DT, base,
                          lists, n, s0, row0, dk0, dv0, dk1, dv1, zero, qk_scale, G: gl.constexpr, NS: gl.constexpr,
                          NK: gl.constexpr, D: gl.constexpr):  # fmt: skip
        """dK^T, dV^T (two 64-row halves of the head dim) of an ``NK``-row key tile over the ``n`` query
        cubes at ``lists`` (``G`` to a step of 64 query slots); ring steps from ``s0``."""
        slots = gl.arange(0, 64, layout=gl.SliceLayout(1, _mma_layout(NK)))
        steps = (n + G - 1) // G
        end = s0 + steps
        cubes0, cubes1, cubes2 = _query_prologue(q_desc, do_desc, q_smem, do_smem, bars, lists, n, s0, end, row0, G,
                                                 NS)  # fmt: skip
        for j in range(steps):
            cubes3, rows, lse, slot = _query_step(q_desc, do_desc, q_smem, do_smem, bars, LT, lists, n, j, s0, end,
                                                  row0, base, slots, cubes1, cubes2, cubes0, G, NS)  # fmt: skip
            qt = q_smem.index(slot)
            dot = do_smem.index(slot)
            s = warpgroup_mma(qt, k_smem.permute((1, 0)), zero, use_acc=False, is_async=True)
            dp = warpgroup_mma(dot, v_smem.permute((1, 0)), zero, use_acc=False, is_async=True)
            s = warpgroup_mma_wait(num_outstanding=1, deps=(s,))
            p = gl.exp2(s * qk_scale - lse[:, None])  # empty query slots: lse = +inf, p = 0
            p_smem.store(p.to(q_desc.dtype))
            delta = gl.load(DT + rows)
            dp = warpgroup_mma_wait(num_outstanding=0, deps=(dp,))
            ds_smem.store((p * (dp - delta[:, None])).to(q_desc.dtype))
            fence_async_shared()
            dv0 = warpgroup_mma(dot.slice(0, 64, dim=1).permute((1, 0)), p_smem, dv0, is_async=True)
            dk0 = warpgroup_mma(qt.slice(0, 64, dim=1).permute((1, 0)), ds_smem, dk0, is_async=True)
            if D == 128:
                dv1 = warpgroup_mma(dot.slice(64, 64, dim=1).permute((1, 0)), p_smem, dv1, is_async=True)
                dk1 = warpgroup_mma(qt.slice(64, 64, dim=1).permute((1, 0)), ds_smem, dk1, is_async=True)
                dv0, dk0, dv1, dk1 = warpgroup_mma_wait(num_outstanding=0, deps=(dv0, dk0, dv1, dk1))
            else:
                dv0, dk0 = warpgroup_mma_wait(num_outstanding=0, deps=(dv0, dk0))
            cubes0, cubes1, cubes2 = cubes1, cubes2, cubes3
        return dk0, dv0, dk1, dv1

    @gluon.jit
    def _dkdv_narrow_kernel(
        q_desc, do_desc, q32_desc, do32_desc, q16_desc, do16_desc, k_desc, v_desc, LT, DT, ORDER, LISTS, FIRST, QW,
        DKC, DVC, DK, DV,
        sxb, sxl, sxh,
        H, T, HG, W, NCH, NCW, L, C,
        scale, qk_scale,
        D: gl.constexpr,
        NK: gl.constexpr,
        P_LAYOUT: gl.constexpr,
        HAS_COARSE: gl.constexpr,
        NS: gl.constexpr = 3,
    ):  # fmt: skip
        """dk and dv of a key cube of at most ``NK`` tokens (its compacted rows ``0..NK``), transposed so
        that no matmul spans the empty rows: per step ``S = Q K^T`` and ``dP = dO V^T`` (64 query slots x
        ``NK`` keys), then ``dV^T += dO^T P`` and ``dK^T += Q^T dS`` in 64-row halves of the head dim,
        P and dS through shared memory. Same lists, query packing, order and ring as
        :func:`_dkdv_kernel`."""
        seg, bh, cube_k, b, h, row0 = _key_segment(ORDER, C, H)

        n_layout: gl.constexpr = _mma_layout(NK)  # 64 x NK: S, dP, and each half of dK^T, dV^T
        n_rows: gl.constexpr = gl.SliceLayout(1, n_layout)
        n_cols: gl.constexpr = gl.SliceLayout(0, n_layout)

        k_smem = gl.allocate_shared_memory(k_desc.dtype, [NK, D], k_desc.layout)
        v_smem = gl.allocate_shared_memory(v_desc.dtype, [NK, D], v_desc.layout)
        q_smem = gl.allocate_shared_memory(q_desc.dtype, [NS, 64, D], q_desc.layout)
        do_smem = gl.allocate_shared_memory(do_desc.dtype, [NS, 64, D], do_desc.layout)
        p_smem = gl.allocate_shared_memory(q_desc.dtype, [64, NK], P_LAYOUT)
        ds_smem = gl.allocate_shared_memory(q_desc.dtype, [64, NK], P_LAYOUT)
        kv_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        bars = gl.allocate_shared_memory(gl.int64, [NS, 1], mbarrier.MBarrierLayout())
        _init_barriers(kv_bar, bars, NS)
        lists, n64, n32, n16 = _query_list(LISTS, FIRST, QW, seg)
        _load_key_tile(k_desc, v_desc, k_smem, v_smem, kv_bar, row0, cube_k)
        zero = gl.zeros([64, NK], gl.float32, layout=n_layout)
        dk0 = gl.zeros([64, NK], gl.float32, layout=n_layout)  # dK^T, head dims 0..63
        dv0 = gl.zeros([64, NK], gl.float32, layout=n_layout)
        dk1 = gl.zeros([64, NK], gl.float32, layout=n_layout)  # head dims 64..127 (D = 128)
        dv1 = gl.zeros([64, NK], gl.float32, layout=n_layout)
        base = bh * C
        s32 = n64
        s16 = s32 + (n32 + 1) // 2
        mbarrier.wait(kv_bar, 0)
        if n64 > 0:
            dk0, dv0, dk1, dv1 = _dkdv_narrow_pass(
                k_smem, v_smem, q_desc, do_desc, q_smem, do_smem, p_smem, ds_smem, bars, LT, DT, base, lists, n64, 0,
                row0, dk0, dv0, dk1, dv1, zero, qk_scale, 1, NS, NK, D)  # fmt: skip
        if n32 > 0:
            dk0, dv0, dk1, dv1 = _dkdv_narrow_pass(
                k_smem, v_smem, q32_desc, do32_desc, q_smem, do_smem, p_smem, ds_smem, bars, LT, DT, base,
                lists + n64, n32, s32, row0, dk0, dv0, dk1, dv1, zero, qk_scale, 2, NS, NK, D)  # fmt: skip
        if n16 > 0:
            dk0, dv0, dk1, dv1 = _dkdv_narrow_pass(
                k_smem, v_smem, q16_desc, do16_desc, q_smem, do_smem, p_smem, ds_smem, bars, LT, DT, base,
                lists + n64 + n32, n16, s16, row0, dk0, dv0, dk1, dv1, zero, qk_scale, 4, NS, NK, D)  # fmt: skip
        _invalidate_barriers(kv_bar, bars, NS)

        dd = gl.arange(0, 64, layout=n_rows)
        ktok, kvalid = compact_tokens(cube_k, gl.arange(0, NK, layout=n_cols), T, HG, W, NCH, NCW)
        _store_transposed(dk0 * scale, dv0, DKC, DVC, DK, DV, b, h, bh, cube_k, ktok, kvalid, dd,
                          sxb, sxl, sxh, T, HG, W, NCH, NCW, C, D, HAS_COARSE)  # fmt: skip
        if D == 128:
            _store_transposed(dk1 * scale, dv1, DKC, DVC, DK, DV, b, h, bh, cube_k, ktok, kvalid, dd + 64,
                              sxb, sxl, sxh, T, HG, W, NCH, NCW, C, D, HAS_COARSE)  # fmt: skip

    @gluon.jit
    def _store_transposed(dkt, dvt, DKC, DVC, DK, DV, b, h, bh, cube_k, ktok, kvalid, dd,
                          sxb, sxl, sxh, T, HG, W, NCH, NCW, C, D: gl.constexpr, HAS_COARSE: gl.constexpr):  # fmt: skip
        """Store head dims ``dd`` (64 of them) of dk and dv from their transposes (``[64, NK]``), plus the
        pooling shares when ``HAS_COARSE``."""
        if HAS_COARSE:
            inv = 1.0 / cube_count(cube_k, T, HG, W, NCH, NCW).to(gl.float32)
            coarse = (bh.to(gl.int64) * C + cube_k) * D + dd
            dkt = dkt + gl.load(DKC + coarse)[:, None] * inv
            dvt = dvt + gl.load(DVC + coarse)[:, None] * inv
        out = b * sxb + h * sxh + ktok[None, :] * sxl + dd[:, None]
        mask = kvalid[None, :] & (dd < D)[:, None]
        gl.store(DK + out, dkt.to(DK.dtype.element_ty), mask=mask)
        gl.store(DV + out, dvt.to(DV.dtype.element_ty), mask=mask)


#: Fewer selected cubes than this per query cube and the forward's copies cost more than its kernel
#: saves (one H200, Wan's 21x30x52 grid: slower at 32 cubes, faster at 78; docs/benchmarks.md).
MIN_TOPK = 40
#: The backward's threshold: on the same card and grid both Gluon passes together beat the Triton ones
#: at 32 cubes (5.04 against 5.69 ms) and at 78; below 32 it was not measured.
MIN_TOPK_BACKWARD = 32


def supported(q: torch.Tensor) -> bool:
    """Whether the Hopper kernels can run a call with queries (and equally shaped keys/values) ``q``:
    Gluon present, a CUDA device of capability 9.x, bf16 or fp16, head dim 64 or 128."""
    if not HAVE_GLUON or interpreting():
        return False
    if not q.is_cuda or torch.cuda.get_device_capability(q.device)[0] != 9:
        return False
    return q.dtype in (torch.bfloat16, torch.float16) and q.shape[-1] in HEAD_DIMS


def enabled(q: torch.Tensor, topk: int, backward: bool = False) -> bool:
    """Whether the op takes the Hopper kernels for a call keeping ``topk`` cubes (in its forward, or
    with ``backward`` its backward): where :func:`supported`, and ``FASTVIDEO_VSA_HOPPER`` is ``1``
    (always), or unset / ``auto`` and ``topk >= MIN_TOPK`` (``MIN_TOPK_BACKWARD``); ``0`` turns them off.

    :raises ValueError: another value of ``FASTVIDEO_VSA_HOPPER``.
    """
    mode = os.environ.get("FASTVIDEO_VSA_HOPPER", "auto")
    if mode not in ("0", "1", "auto"):
        raise ValueError(f"FASTVIDEO_VSA_HOPPER must be 0, 1 or auto, got {mode!r}")
    if mode == "0" or not supported(q):
        return False
    return mode == "1" or topk >= (MIN_TOPK_BACKWARD if backward else MIN_TOPK)


def _descriptors(tiles: tuple[torch.Tensor, ...], rows: int = 64) -> tuple:
    """TMA descriptors of cube-major tiles, boxes of ``rows`` rows (a cube's first ``rows``)."""
    dim = tiles[0].shape[-1]
    gdt = gl.bfloat16 if tiles[0].dtype == torch.bfloat16 else gl.float16
    layout = gl.NVMMASharedLayout.get_default_for([rows, dim], gdt)
    return tuple(TensorDescriptor.from_tensor(x, [rows, dim], layout) for x in tiles)


def fine_forward(
    q: torch.Tensor,
    tiles: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    gate: torch.Tensor | None,
    oc: torch.Tensor | None,
    indices: torch.Tensor,
    geom: CubeGeometry,
    scale: float,
    mode: int = 0,
    narrow: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out [B, L, H, D], lse [B, H, L] fp32)``, the contract of
    :func:`fastvideo_vsa.ops.triton_fwd.fine_forward`, from the cube-major copies ``tiles`` of q, k, v
    (k and v compacted, as :func:`pooling.pool` writes them) and the selection ``indices [B, H, C,
    topk]``; call only where :func:`supported` holds. With ``narrow`` two or four key cubes of at most
    32 or 16 tokens share a step."""
    batch, _, heads, dim = q.shape
    out, lse, g, ocp = output_buffers(q, gate, oc)
    has_gate = gate is not None
    ordered, widths = _ordered(indices, geom, narrow)
    (q_desc,) = _descriptors(tiles[:1])
    kv = _key_descriptors(tiles[1:], widths is not None)
    _fwd_kernel[(geom.num_cubes, batch * heads)](
        q_desc, *kv, g, ocp, out, lse, ordered, widths if widths is not None else ordered,
        g.stride(0), g.stride(1), g.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        heads, *geometry_args(geom), indices.shape[-1],
        scale * LOG2E,
        D=dim, HAS_GATE=has_gate, MODE=mode, PACKED=widths is not None, num_warps=4,
    )  # fmt: skip
    return out, lse


def _has_partial(geom: CubeGeometry) -> bool:
    """Whether some cube of ``geom`` holds fewer than 64 tokens (the packed passes are compiled only then)."""
    return any(n % 4 for n in geom.grid)


def _by_width(indices: torch.Tensor, geom: CubeGeometry, narrow: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Each query cube's selection reordered whole cubes first, then cubes of at most 32 tokens, then of at
    most 16 (ascending within each; a few readable entries past the end), and how many of each
    (``[B*H*C, 3]`` int32); with ``narrow`` False all count as whole."""
    topk = indices.shape[-1]
    flat = indices.reshape(-1, topk)
    rows = flat.shape[0]
    ordered = flat.new_zeros(rows * topk + 8, dtype=torch.int32)
    widths = torch.zeros(rows, 3, dtype=torch.int32, device=flat.device)
    if not narrow:
        ordered[: rows * topk] = flat.flatten()
        widths[:, 0] = topk
        return ordered, widths
    cls = _width_classes(geom, flat.device)[0]
    block = max(16, triton.next_power_of_2(topk))
    launch(_by_width_kernel, _by_width_kernel, (rows,), (flat.contiguous(), cls, ordered, widths, topk),
           {"BLOCK_K": block}, {"num_warps": 4}, {})  # fmt: skip
    return ordered, widths


def _key_descriptors(kv: tuple[torch.Tensor, ...], packed: bool) -> list:
    """The k, v descriptors of the forward and dq kernels: boxes of 64, 32 and 16 rows where ``packed``;
    else the 64-row pair three times (only the first is read: descriptors cost host time per call)."""
    if not packed:
        return list(_descriptors(kv)) * 3
    return [d for rows in (64, 32, 16) for d in _descriptors(kv, rows=rows)]


def _ordered(
    indices: torch.Tensor, geom: CubeGeometry, narrow: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """What the forward and dq kernels stream: the selection ordered by key width and the count of each
    width (:func:`_by_width`) where ``narrow`` and ``geom`` has partial cubes; else the selection as it
    is (int32) and ``None`` (the one-pass kernels)."""
    if narrow and _has_partial(geom):
        return _by_width(indices, geom, True)
    return indices.to(torch.int32).contiguous().view(-1), None


def dq_backward(
    q: torch.Tensor,
    kv_tiles: torch.Tensor,
    dout: torch.Tensor,
    lse: torch.Tensor,
    delta: torch.Tensor,
    indices: torch.Tensor,
    geom: CubeGeometry,
    scale: float,
    dqc: torch.Tensor | None = None,
    narrow: bool = True,
) -> torch.Tensor:
    """``dq`` ``[B, L, H, D]`` of the fine stage (plus ``dqc[cube] / n_cube`` when given), the contract
    of :func:`fastvideo_vsa.ops.triton_bwd.dq_backward`, from the compacted copies of k and v
    (:func:`kv_tiles`) and the selection; call only where :func:`supported` holds. With ``narrow`` the
    key cubes of at most 32 or 16 tokens run on tiles of that many key rows instead of 64."""
    batch, _, heads, dim = q.shape
    dq = q.new_empty(q.shape)
    ordered, widths = _ordered(indices, geom, narrow)
    descs = _key_descriptors(tuple(kv_tiles), widths is not None)
    _dq_kernel[(geom.num_cubes, batch * heads)](
        q, dout, *descs, lse, delta, ordered, widths if widths is not None else ordered, dqc if dqc is not None else lse, dq,
        *q.stride()[:3], *dout.stride()[:3], *dq.stride()[:3],
        heads, *geometry_args(geom), indices.shape[-1],
        scale, scale * LOG2E,
        D=dim, HAS_COARSE=dqc is not None, PACKED=widths is not None, num_warps=4,
    )  # fmt: skip
    return dq


#: q/dout ring depth of the dk/dv kernel: at 2 two programs share an SM (3: one, measured slower).
DKDV_STAGES = 2
#: Ring depth of the narrow dk/dv kernel by key-tile width: the most that still fits two programs an SM
#: (108 KiB at 16 rows and 3 slots, 88 KiB at 32 rows and 2; sm90_report.py).
NARROW_STAGES = {16: 3, 32: 2}
#: Key cubes of at most this many tokens go to the narrow kernel at that tile width (else the 64-row one).
NARROW_WIDTHS = (16, 32)

_CLASSES: dict[tuple, tuple[torch.Tensor, list[int]]] = {}


def _width_classes(geom: CubeGeometry, device: torch.device) -> tuple[torch.Tensor, list[int], list[int]]:
    """Per cube, the index of its key-tile width in the widths ``(64, *NARROW_WIDTHS descending)``;
    those widths; and how many cubes each gets (counted on the host: no device sync)."""
    widths = [64, *sorted(NARROW_WIDTHS, reverse=True)]
    key = (geom.grid, str(device))
    if key not in _CLASSES:
        sizes = torch.tensor(geom.cube_sizes())
        cls = torch.zeros_like(sizes)
        for i, w in enumerate(widths[1:], start=1):
            cls[sizes <= w] = i
        _CLASSES[key] = (
            cls.to(device=device, dtype=torch.int32),
            [int((cls == i).sum()) for i in range(len(widths))],
        )
    cls, counts = _CLASSES[key]
    return cls, widths, counts


def dkdv_backward(
    q: torch.Tensor,
    kv_tiles: torch.Tensor,
    dout: torch.Tensor,
    lse: torch.Tensor,
    delta: torch.Tensor,
    indices: torch.Tensor,
    geom: CubeGeometry,
    scale: float,
    dkc_dvc: tuple[torch.Tensor, torch.Tensor] | None = None,
    narrow: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dk, dv)`` ``[B, L, H, D]`` of the fine stage (plus ``dkc[cube] / n_cube`` and
    ``dvc[cube] / n_cube`` when given), the contract of
    :func:`fastvideo_vsa.ops.triton_bwd.dkdv_backward`, from the compacted copies of k and v
    (:func:`kv_tiles`) and the selection; call only where :func:`supported` holds.

    With ``narrow`` the key cubes of at most 32 or 16 tokens (partial cubes) run the transposed kernel
    at that tile width instead of a 64-row tile, and two or four query cubes of at most 32 or 16 tokens
    share a step of 64 query slots."""
    from fastvideo_vsa.ops.pooling import query_cubes

    batch, _, heads, dim = q.shape
    cubes = geom.num_cubes
    cls, widths, per_class = _width_classes(geom, q.device)
    lists, first, count, query_widths = query_cubes(indices, cls if narrow else None)
    if not narrow:
        widths, per_class = [64], [cubes]
        cls = torch.zeros_like(cls)
    # segments by key width class, then longest list first (no host sync: class sizes come from the grid)
    seg_cls = cls.repeat(batch * heads).to(torch.int64)
    order = torch.argsort(seg_cls * (cubes + 1) - count.to(torch.int64)).to(torch.int32)
    qd_tiles, lt, dt = copy_tiles(q, dout, geom, stats=(lse, delta), compact=True)
    dk, dv = q.new_empty(q.shape), q.new_empty(q.shape)
    dkc, dvc = dkc_dvc if dkc_dvc is not None else (lt, lt)
    query_descs = [d for rows in (64, 32, 16) for d in _descriptors(tuple(qd_tiles), rows=rows)]
    tail = (lt, dt)
    rest = (first, query_widths, dkc, dvc, dk, dv, *dk.stride()[:3], heads, *geometry_args(geom), scale,
            scale * LOG2E)  # fmt: skip
    start = 0
    for width, n in zip(widths, per_class, strict=True):
        part = order[start : start + n * batch * heads]
        start += n * batch * heads
        if part.numel() == 0:
            continue
        k_desc, v_desc = _descriptors(tuple(kv_tiles), rows=width)
        if width == 64:
            _dkdv_kernel[(part.numel(),)](
                *query_descs, k_desc, v_desc, *tail, part, lists, *rest,
                D=dim, HAS_COARSE=dkc_dvc is not None, NS=DKDV_STAGES, num_warps=4,
            )  # fmt: skip
        else:
            gdt = gl.bfloat16 if q.dtype == torch.bfloat16 else gl.float16
            _dkdv_narrow_kernel[(part.numel(),)](
                *query_descs, k_desc, v_desc, *tail, part, lists, *rest,
                D=dim, NK=width, P_LAYOUT=gl.NVMMASharedLayout.get_default_for([64, width], gdt),
                HAS_COARSE=dkc_dvc is not None, NS=NARROW_STAGES[width], num_warps=4,
            )  # fmt: skip
    return dk, dv
