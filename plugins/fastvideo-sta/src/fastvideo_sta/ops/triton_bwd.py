"""Triton backward of sliding tile attention: dq over each query's window, dk/dv over each key's queries.

Two kernels, reading and writing ``[B, L, H, D]`` in raster order like the forward (``delta =
rowsum(dout * out)`` is one torch reduction before them):

1. ``_dq_kernel``: the forward's programs (text blocks, then query tile slices) walk the same keys,
   recompute ``p`` from the saved log-sum-exp, and accumulate ``dq = scale * (p * (dout v^T - delta)) k``.
2. ``_dkdv_kernel``: one program per key tile slice group (after the text key blocks) walks the query
   tiles whose window holds its tile. Along an axis of ``n`` tiles with window ``w`` they form one
   interval (:func:`fastvideo_sta.tiles.query_range`), so the inverse of the sliding window needs no
   table. Then every text query (they attend to all keys). ``dv = p^T dout``, ``dk = scale * ds^T q``.

No atomics: deterministic.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastvideo_sta.ops.triton_fwd import (
    ENV_BWD_CONFIG,
    LOG2E,
    SHAPE_ARGS,
    LaunchConfig,
    advance,
    block_rows,
    d_pad,
    dot_in_f32,
    even_grid,
    geometry_args,
    interpreting,
    launch,
    load_rows,
    mm,
    query_block,
    query_programs,
    resolve_config,
    slice_rows,
    tile_rows,
)
from fastvideo_sta.tiles import TileGeometry, ceil_div

# --------------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------------

#: Autotune candidates. ptxas for sm_90 (triton 3.9, bf16, head dim 128): dq at (2, 1, 8, 2) and
#: (1, 1, 8, 2) spills nothing; dk/dv at (1, 2, 8, 2) spills ~1.1 KB a thread (two 128 x 128 fp32
#: accumulators) and at (1, 1, 4, 3) ~0.5 KB, at (1, 1, 8, 2) 72 bytes. (2, 1, 8, 2) for dk/dv too: the
#: sweep on one H100 (2026-12-06) timed 128,64,8,2 for both kernels fastest (212 against 235 ms at
#: HunyuanVideo's 30x48x80 + 256, 25.0 against 33.6 ms at Wan's 21x30x52).
DQ_CONFIGS = [
    triton.Config({"QS": qs, "KS": ks}, num_warps=w, num_stages=s)
    for qs, ks, w, s in ((2, 1, 8, 2), (1, 1, 8, 2), (1, 1, 4, 3))
]
DKDV_CONFIGS = [
    triton.Config({"QS": qs, "KS": ks}, num_warps=w, num_stages=s)
    for qs, ks, w, s in ((1, 1, 8, 2), (1, 2, 8, 2), (1, 1, 4, 3), (2, 1, 8, 2))
]
INTERPRETER_CONFIG = {"QS": 2, "KS": 2}

# --------------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------------


@triton.jit
def _rows(X, b, h, tok, dd, mask, sb, sl, sh):
    """Rows ``tok`` of head ``h`` of ``X`` ``[B, L, H, D]`` (zeros where masked)."""
    return tl.load(X + b * sb + h * sh + tok[:, None] * sl + dd[None, :], mask=mask, other=0.0)


@triton.jit
def _dq_kv(q, do, lse, delta, k, v, kvalid, dq, qk_scale, MASKED: tl.constexpr, F32DOT: tl.constexpr,
           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):  # fmt: skip
    """One block of keys (and values) into ``dq``."""
    if F32DOT:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    s = mm(q, tl.trans(k), tl.zeros([BLOCK_M, BLOCK_N], tl.float32), F32DOT)  # (M, N)
    p = tl.exp2(s * qk_scale - lse[:, None])
    if MASKED:
        p = tl.where(kvalid[None, :], p, 0.0)
    dp = mm(do, tl.trans(v), tl.zeros([BLOCK_M, BLOCK_N], tl.float32), F32DOT)  # (M, N)
    ds = p * (dp - delta[:, None])
    return mm(ds.to(k.dtype), k, dq, F32DOT)  # (M, D)


@triton.jit
def _dq_step(q, do, lse, delta, k_base, v_base, ktok, kvalid, dd, dmask, skl, svl, dq, qk_scale,
             F32DOT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):  # fmt: skip
    """One block of keys gathered by token index (always masked): the text keys."""
    kmask = kvalid[:, None] & dmask[None, :]
    k = tl.load(k_base + ktok[:, None] * skl + dd[None, :], mask=kmask, other=0.0)  # (N, D)
    v = tl.load(v_base + ktok[:, None] * svl + dd[None, :], mask=kmask, other=0.0)  # (N, D)
    return _dq_kv(q, do, lse, delta, k, v, kvalid, dq, qk_scale, True, F32DOT, BLOCK_M, BLOCK_N)


@triton.jit
def block_valid(dt, dh, dw, real, kt, kh, kw, first, T, HG, W, TT, TH, TW, FULL: tl.constexpr):
    """Which rows of the block of tile ``(kt, kh, kw)`` from slice ``first`` are tokens (rows from
    :func:`fastvideo_sta.ops.triton_fwd.block_rows`)."""
    if FULL:
        return real
    else:
        return (
            real
            & (dt < tl.minimum(TT - first, T - kt * TT - first))
            & (dh < HG - kh * TH)
            & (dw < W - kw * TW)
        )


@triton.jit
def corner_of(kt, kh, kw, first, HG, W, TT, TH, TW):
    """Token index (int64) of the first row of the block of tile ``(kt, kh, kw)`` from slice ``first``."""
    return (((kt * TT + first) * HG + kh * TH) * W + kw * TW).to(tl.int64)


@triton.jit(do_not_specialize=SHAPE_ARGS)
def _dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ, WIN, TV,
    sqb, sql, sqh, skb, skl, skh, svb, svl, svh, sdb, sdl, sdh, sxb, sxl, sxh,
    H, T, HG, W, TT, TH, TW, NT, NH, NW, N, LT, L,
    scale, qk_scale,
    D: tl.constexpr,
    D_PAD: tl.constexpr,
    SLICE: tl.constexpr,
    HAS_TV: tl.constexpr,
    F32DOT: tl.constexpr,
    EVEN: tl.constexpr,
    TILE_T: tl.constexpr,
    QS: tl.constexpr,
    KS: tl.constexpr,
):  # fmt: skip
    # EVEN, TILE_T: as the forward's (whole tiles, the video key blocks unmasked when KS divides tt)
    BLOCK_M: tl.constexpr = QS * SLICE
    BLOCK_N: tl.constexpr = KS * SLICE
    FULL: tl.constexpr = EVEN and (TILE_T % KS == 0)
    MASK_D: tl.constexpr = D != D_PAD
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = bh % H
    dd = tl.arange(0, D_PAD)
    dmask = dd < D
    rn = tl.arange(0, BLOCK_N)
    qtok, qvalid, st_t, en_t, st_h, en_h, st_w, en_w = query_block(
        pid, h, WIN, T, HG, W, TT, TH, TW, NT, NH, NW, N, LT, QS, SLICE
    )
    qmask = qvalid[:, None] & dmask[None, :]
    q = _rows(Q, b, h, qtok, dd, qmask, sqb, sql, sqh)
    do = _rows(DO, b, h, qtok, dd, qmask, sdb, sdl, sdh)
    if F32DOT:
        q = q.to(tl.float32)
        do = do.to(tl.float32)
    lse = tl.load(LSE + bh.to(tl.int64) * L + qtok, mask=qvalid, other=0.0)
    delta = tl.load(DELTA + bh.to(tl.int64) * L + qtok, mask=qvalid, other=0.0)
    k_base = K + b * skb + h * skh
    v_base = V + b * svb + h * svh
    dq = tl.zeros([BLOCK_M, D_PAD], tl.float32)
    # the window's key blocks, walked as the forward walks them (loop-invariant row offsets, counters)
    dt, dh, dw, roff, real = block_rows(rn, HG, W, TH, TW, SLICE)
    roff = roff.to(tl.int64)
    k_off = roff[:, None] * skl + dd[None, :]
    v_off = roff[:, None] * svl + dd[None, :]
    nsb = (TT + KS - 1) // KS
    kt = st_t
    kh = st_h
    kw = st_w
    first = st_t * 0
    for _ in range(0, (en_t - st_t) * (en_h - st_h) * (en_w - st_w) * nsb):
        corner = corner_of(kt, kh, kw, first, HG, W, TT, TH, TW)
        kvalid = block_valid(dt, dh, dw, real, kt, kh, kw, first, T, HG, W, TT, TH, TW, FULL)
        k = load_rows(k_base + corner * skl + k_off, kvalid, dmask, not FULL, MASK_D)  # (N, D)
        v = load_rows(v_base + corner * svl + v_off, kvalid, dmask, not FULL, MASK_D)  # (N, D)
        dq = _dq_kv(q, do, lse, delta, k, v, kvalid, dq, qk_scale, not FULL, F32DOT, BLOCK_M, BLOCK_N)
        kt, kh, kw, first = advance(kt, kh, kw, first, st_h, st_w, en_h, en_w, TT, KS)
    for j in range(0, LT, BLOCK_N):
        rows = j + rn
        kvalid = rows < LT
        if HAS_TV:
            kvalid = kvalid & (tl.load(TV + b * LT + rows, mask=kvalid, other=0) != 0)
        dq = _dq_step(
            q, do, lse, delta, k_base, v_base, (N + rows).to(tl.int64), kvalid, dd, dmask, skl, svl, dq,
            qk_scale, F32DOT, BLOCK_M, BLOCK_N,
        )  # fmt: skip
    tl.store(
        DQ + b * sxb + h * sxh + qtok[:, None] * sxl + dd[None, :],
        (dq * scale).to(DQ.dtype.element_ty),
        mask=qmask,
    )


@triton.jit
def _dkdv_q(k, v, q, do, lse, delta, qvalid, kvalid, dk, dv, qk_scale, MASKED: tl.constexpr,
            F32DOT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):  # fmt: skip
    """One block of queries (with their ``dout``, lse, delta) into ``dk``, ``dv``. Unmasked
    (``MASKED`` false): every query and key of the block real."""
    if F32DOT:
        q = q.to(tl.float32)
        do = do.to(tl.float32)
    s = mm(q, tl.trans(k), tl.zeros([BLOCK_M, BLOCK_N], tl.float32), F32DOT)  # (M, N)
    p = tl.exp2(s * qk_scale - lse[:, None])
    if MASKED:
        p = tl.where(qvalid[:, None] & kvalid[None, :], p, 0.0)
    dv = mm(tl.trans(p.to(do.dtype)), do, dv, F32DOT)  # (N, D)
    dp = mm(do, tl.trans(v), tl.zeros([BLOCK_M, BLOCK_N], tl.float32), F32DOT)  # (M, N)
    ds = p * (dp - delta[:, None])
    dk = mm(tl.trans(ds.to(q.dtype)), q, dk, F32DOT)  # (N, D)
    return dk, dv


@triton.jit
def _dkdv_step(k, v, q_base, do_base, LSE_BH, DELTA_BH, qtok, qvalid, kvalid, dd, dmask, sql, sdl,
               dk, dv, qk_scale, F32DOT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):  # fmt: skip
    """One block of queries gathered by token index (always masked): the text queries."""
    qmask = qvalid[:, None] & dmask[None, :]
    q = tl.load(q_base + qtok[:, None] * sql + dd[None, :], mask=qmask, other=0.0)  # (M, D)
    do = tl.load(do_base + qtok[:, None] * sdl + dd[None, :], mask=qmask, other=0.0)  # (M, D)
    lse = tl.load(LSE_BH + qtok, mask=qvalid, other=0.0)
    delta = tl.load(DELTA_BH + qtok, mask=qvalid, other=0.0)
    return _dkdv_q(k, v, q, do, lse, delta, qvalid, kvalid, dk, dv, qk_scale, True, F32DOT, BLOCK_M, BLOCK_N)


@triton.jit
def query_first(kt, w, n):
    """First query tile whose window of ``w`` tiles (clamped to ``n``) holds key tile ``kt``."""
    return tl.where(kt - w + 1 <= 0, 0, kt - w + 1 + (w - 1) // 2)


@triton.jit
def query_last(kt, w, n):
    """Last query tile whose window of ``w`` tiles (clamped to ``n``) holds key tile ``kt``."""
    return tl.where(kt >= n - w, n - 1, tl.minimum(kt + (w - 1) // 2, n - 1))


@triton.jit(do_not_specialize=SHAPE_ARGS)
def _dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV, WIN, TV,
    sqb, sql, sqh, skb, skl, skh, svb, svl, svh, sdb, sdl, sdh, skxb, skxl, skxh, svxb, svxl, svxh,
    H, T, HG, W, TT, TH, TW, NT, NH, NW, N, LT, L,
    scale, qk_scale,
    D: tl.constexpr,
    D_PAD: tl.constexpr,
    SLICE: tl.constexpr,
    HAS_TV: tl.constexpr,
    F32DOT: tl.constexpr,
    EVEN: tl.constexpr,
    TILE_T: tl.constexpr,
    QS: tl.constexpr,
    KS: tl.constexpr,
):  # fmt: skip
    # EVEN, TILE_T: as the forward's; here the query blocks go unmasked when QS divides tt (FULL) and
    # the program's keys are video keys (a text key block masks its padding)
    BLOCK_M: tl.constexpr = QS * SLICE
    BLOCK_N: tl.constexpr = KS * SLICE
    FULL: tl.constexpr = EVEN and (TILE_T % QS == 0)
    MASK_D: tl.constexpr = D != D_PAD
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = bh % H
    dd = tl.arange(0, D_PAD)
    dmask = dd < D
    rm = tl.arange(0, BLOCK_M)
    rn = tl.arange(0, BLOCK_N)
    wt = tl.minimum(tl.load(WIN + h * 3), NT)
    wh = tl.minimum(tl.load(WIN + h * 3 + 1), NH)
    ww = tl.minimum(tl.load(WIN + h * 3 + 2), NW)
    nkb = (TT + KS - 1) // KS
    n_text = (LT + BLOCK_N - 1) // BLOCK_N  # text key blocks first: every query attends to them
    if pid >= n_text:  # a slice group of a video key tile: the queries whose window holds the tile
        tile = (pid - n_text) // nkb
        first = ((pid - n_text) % nkb) * KS
        ct = tile // (NH * NW)
        ch = (tile // NW) % NH
        cw = tile % NW
        ktok, kvalid = tile_rows(ct, ch, cw, first, rn, T, HG, W, TT, TH, TW, SLICE)
        kstore = kvalid
        st_t = query_first(ct, wt, NT)
        en_t = query_last(ct, wt, NT) + 1
        st_h = query_first(ch, wh, NH)
        en_h = query_last(ch, wh, NH) + 1
        st_w = query_first(cw, ww, NW)
        en_w = query_last(cw, ww, NW) + 1
        live = first < tl.minimum(TT, T - ct * TT)
        en_t = tl.where(live, en_t, st_t)
    else:  # a block of text keys: every query
        rows = pid * BLOCK_N + rn
        ktok = (N + rows).to(tl.int64)
        kstore = rows < LT  # padded text keys get zero gradients, written
        kvalid = kstore
        if HAS_TV:
            kvalid = kvalid & (tl.load(TV + b * LT + rows, mask=kstore, other=0) != 0)
        st_t = wt * 0
        st_h = wh * 0
        st_w = ww * 0
        en_t = st_t + NT
        en_h = st_h + NH
        en_w = st_w + NW
    kmask = kstore[:, None] & dmask[None, :]
    k = _rows(K, b, h, ktok, dd, kmask, skb, skl, skh)
    v = _rows(V, b, h, ktok, dd, kmask, svb, svl, svh)
    if F32DOT:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    q_base = Q + b * sqb + h * sqh
    do_base = DO + b * sdb + h * sdh
    lse_bh = LSE + bh.to(tl.int64) * L
    delta_bh = DELTA + bh.to(tl.int64) * L
    dk = tl.zeros([BLOCK_N, D_PAD], tl.float32)
    dv = tl.zeros([BLOCK_N, D_PAD], tl.float32)
    # the query blocks whose window holds this key block, walked as the forward walks keys (the row
    # offsets are loop invariant; the [M, D] addresses are rebuilt each step: holding them costs dk/dv
    # accumulator registers)
    dt, dh, dw, roff, real = block_rows(rm, HG, W, TH, TW, SLICE)
    roff = roff.to(tl.int64)
    nsb = (TT + QS - 1) // QS
    qt = st_t
    qh = st_h
    qw = st_w
    qf = st_t * 0
    for _ in range(0, (en_t - st_t) * (en_h - st_h) * (en_w - st_w) * nsb):
        qtok = corner_of(qt, qh, qw, qf, HG, W, TT, TH, TW) + roff
        qvalid = block_valid(dt, dh, dw, real, qt, qh, qw, qf, T, HG, W, TT, TH, TW, FULL)
        q = load_rows(q_base + qtok[:, None] * sql + dd[None, :], qvalid, dmask, not FULL, MASK_D)  # (M, D)
        do = load_rows(do_base + qtok[:, None] * sdl + dd[None, :], qvalid, dmask, not FULL, MASK_D)
        if FULL:
            lse = tl.load(lse_bh + qtok)
            delta = tl.load(delta_bh + qtok)
        else:
            lse = tl.load(lse_bh + qtok, mask=qvalid, other=0.0)
            delta = tl.load(delta_bh + qtok, mask=qvalid, other=0.0)
        dk, dv = _dkdv_q(
            k, v, q, do, lse, delta, qvalid, kvalid, dk, dv, qk_scale, not FULL, F32DOT, BLOCK_M, BLOCK_N
        )  # unmasked, padded text keys get a gradient here: zeroed below
        qt, qh, qw, qf = advance(qt, qh, qw, qf, st_h, st_w, en_h, en_w, TT, QS)
    for i in range(0, LT, BLOCK_M):  # text queries attend to every key
        rows_q = i + rm
        dk, dv = _dkdv_step(
            k, v, q_base, do_base, lse_bh, delta_bh, (N + rows_q).to(tl.int64), rows_q < LT, kvalid, dd,
            dmask, sql, sdl, dk, dv, qk_scale, F32DOT, BLOCK_M, BLOCK_N,
        )  # fmt: skip
    # a key's masked logits touch only its own rows of dk and dv: zero them (padded text keys)
    dk = tl.where(kvalid[:, None], dk, 0.0)
    dv = tl.where(kvalid[:, None], dv, 0.0)
    tl.store(
        DK + b * skxb + h * skxh + ktok[:, None] * skxl + dd[None, :],
        (dk * scale).to(DK.dtype.element_ty),
        mask=kmask,
    )
    tl.store(
        DV + b * svxb + h * svxh + ktok[:, None] * svxl + dd[None, :], dv.to(DV.dtype.element_ty), mask=kmask
    )


_KEY = ["D_PAD", "SLICE", "F32DOT", "HAS_TV", "EVEN", "TILE_T"]
_dq_tuned = triton.autotune(DQ_CONFIGS, key=_KEY)(_dq_kernel)
_dkdv_tuned = triton.autotune(DKDV_CONFIGS, key=_KEY)(_dkdv_kernel)

# --------------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------------


def key_programs(geom: TileGeometry, text_len: int, ks: int, slice_: int) -> int:
    """Programs of a key-side launch: the text key blocks, then ``ceil(tt / ks)`` per tile."""
    return geom.num_tiles * ceil_div(geom.tile[0], ks) + ceil_div(text_len, ks * slice_)


def sta_backward(
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    windows: torch.Tensor,
    text_valid: torch.Tensor | None,
    geom: TileGeometry,
    scale: float,
    config: LaunchConfig | dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dq, dk, dv)``, each like its input. ``config``: both kernels' launch config (BLOCK_M the query
    block, BLOCK_N the key block; default: :data:`ENV_BWD_CONFIG` if set, else autotuned)."""
    batch, length, heads, dim = q.shape
    text_len = length - geom.num_tokens
    delta = (dout.float() * out.float()).sum(-1).transpose(1, 2).contiguous()  # (B, H, L)
    dq, dk, dv = q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)
    slice_ = slice_rows(geom)
    config = resolve_config(config, slice_, ENV_BWD_CONFIG)
    if config is not None:  # the TMA variant is the forward's
        config = {key: val for key, val in config.items() if key != "TMA"}
    tv = text_valid if text_valid is not None else windows
    strides = (
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        dout.stride(0), dout.stride(1), dout.stride(2),
    )  # fmt: skip
    common = (heads, *geometry_args(geom, text_len, length), scale, scale * LOG2E)
    even = even_grid(geom, slice_)
    meta = dict(
        D=dim, D_PAD=d_pad(dim), SLICE=slice_, HAS_TV=text_valid is not None, F32DOT=dot_in_f32(q.dtype),
        EVEN=even, TILE_T=geom.tile[0] if even else 0,
    )  # fmt: skip

    def q_grid(cfg):  # type: ignore[no-untyped-def]
        return (query_programs(geom, text_len, cfg["QS"], slice_), batch * heads)

    def k_grid(cfg):  # type: ignore[no-untyped-def]
        return (key_programs(geom, text_len, cfg["KS"], slice_), batch * heads)

    dq_args = (
        q,
        k,
        v,
        dout,
        lse,
        delta,
        dq,
        windows,
        tv,
        *strides,
        dq.stride(0),
        dq.stride(1),
        dq.stride(2),
        *common,
    )
    launch(_dq_kernel, _dq_tuned, q_grid, dq_args, meta, config, INTERPRETER_CONFIG)
    dkdv_args = (
        q, k, v, dout, lse, delta, dk, dv, windows, tv, *strides,
        dk.stride(0), dk.stride(1), dk.stride(2), dv.stride(0), dv.stride(1), dv.stride(2),
        *common,
    )  # fmt: skip
    launch(_dkdv_kernel, _dkdv_tuned, k_grid, dkdv_args, meta, config, INTERPRETER_CONFIG)
    return dq, dk, dv


__all__ = ["interpreting", "sta_backward"]
