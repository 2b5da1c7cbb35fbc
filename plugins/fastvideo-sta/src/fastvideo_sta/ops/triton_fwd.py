"""Triton forward of sliding tile attention: block-sparse over tiles, every block kept whole or skipped.

Tokens stay where the model put them, ``[B, L, H, D]`` in raster order (video first, then text):
each program gathers the rows it needs by token index, so there is no tiling pass and no padded copy,
and any grid works (rows of partial tiles are masked). One program handles ``QS`` consecutive
``t``-slices of one query tile (a slice is the tile's ``th x tw`` tokens of one frame, ``SLICE`` rows
rounded up to a power of two) of one (batch, head); it walks the key tiles of its window (read from a
per-head window table, so one launch serves heads with different windows) in ``KS`` slices per step,
then the text keys. Text queries attend to every key; their programs come first, so that their long
walks start early instead of trailing the launch. bf16/fp16 ``tl.dot`` with fp32 accumulation, exp2
online softmax; the log-sum-exp (base 2, of the scaled logits) is stored for the backward pass.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from fastvideo_sta.tiles import TileGeometry, ceil_div

LOG2E = 1.4426950408889634

# --------------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------------

#: Query slices per program (QS) and key slices per step (KS); with the default 8x8 tile face a slice
#: is 64 rows, so (2, 1) is a 128 x 64 block. Few configs: each one compiles on first use (not yet
#: swept on a GPU; FlashAttention-2's usual blocks for head dim 128).
FWD_CONFIGS = [
    triton.Config({"QS": qs, "KS": ks}, num_warps=w, num_stages=s)
    for qs, ks, w, s in ((2, 1, 8, 3), (2, 1, 4, 3), (1, 1, 4, 3))
]
#: The interpreter takes no autotuning: one config (tests pass others explicitly).
INTERPRETER_CONFIG = {"QS": 2, "KS": 2}


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


# --------------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------------


@triton.jit
def tile_rows(ct, ch, cw, first, r, T, HG, W, TT, TH, TW, SLICE: tl.constexpr):
    """Token index (int64) and validity of rows ``r`` of tile ``(ct, ch, cw)``, starting at its
    ``t``-slice ``first`` (``SLICE`` rows per slice, ``th * tw`` of them real)."""
    dt = first + r // SLICE
    rr = r % SLICE
    dh = rr // TW
    dw = rr - dh * TW
    t = ct * TT + dt
    y = ch * TH + dh
    x = cw * TW + dw
    valid = (rr < TH * TW) & (dt < TT) & (t < T) & (y < HG) & (x < W)
    return ((t * HG + y) * W + x).to(tl.int64), valid


@triton.jit
def window_block(j, st_t, st_h, st_w, nh, nw, nsb, S: tl.constexpr):
    """Block ``j`` of a window walked as one flat loop (one loop, so that Triton pipelines its loads
    across tiles): ``nsb`` blocks of ``S`` slices per tile, tiles in (t, h, w) raster order from
    ``(st_t, st_h, st_w)`` over ``nh x nw`` tiles per frame row. Returns ``(t, h, w, first slice)``;
    blocks past a partial tile's last frame come out fully masked by :func:`tile_rows`."""
    first = (j % nsb) * S
    r = j // nsb
    cw = st_w + r % nw
    r = r // nw
    ch = st_h + r % nh
    ct = st_t + r // nh
    return ct, ch, cw, first


@triton.jit
def window_first(c, w, n):
    """First tile of the window of ``w`` tiles (already clamped to ``n``) around tile ``c``."""
    return tl.minimum(tl.maximum(c - (w - 1) // 2, 0), n - w)


@triton.jit
def mm(a, b, acc, IEEE: tl.constexpr):
    """``acc + a @ b``; fp32 operands use exact fp32 products (no TF32)."""
    if IEEE:
        return tl.dot(a, b, acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc)


@triton.jit
def _fwd_step(q, k_base, v_base, ktok, kvalid, dd, dmask, skl, svl, m_i, l_i, acc, qk_scale,
              F32DOT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):  # fmt: skip
    """One block of keys into the online softmax."""
    kmask = kvalid[:, None] & dmask[None, :]
    k = tl.load(k_base + ktok[:, None] * skl + dd[None, :], mask=kmask, other=0.0)  # (N, D)
    v = tl.load(v_base + ktok[:, None] * svl + dd[None, :], mask=kmask, other=0.0)  # (N, D)
    if F32DOT:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    s = mm(q, tl.trans(k), tl.zeros([BLOCK_M, BLOCK_N], tl.float32), F32DOT)  # (M, N)
    s = s * qk_scale + tl.where(kvalid, 0.0, float("-inf"))[None, :]  # log2 units
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = mm(p.to(v.dtype), v, acc * alpha[:, None], F32DOT)  # (M, D)
    return m_new, l_i, acc


@triton.jit
def query_block(pid, h, WIN, T, HG, W, TT, TH, TW, NT, NH, NW, N, LT,
                QS: tl.constexpr, SLICE: tl.constexpr):  # fmt: skip
    """Rows of query program ``pid`` (text blocks first: they attend to every key, so they start
    early instead of trailing the launch; then the video tiles) and the key-tile window ``[st, en)``
    per axis it attends to (empty when the program holds no row)."""
    nqb = (TT + QS - 1) // QS
    n_text = (LT + QS * SLICE - 1) // (QS * SLICE)
    r = tl.arange(0, QS * SLICE)
    wt = tl.minimum(tl.load(WIN + h * 3), NT)
    wh = tl.minimum(tl.load(WIN + h * 3 + 1), NH)
    ww = tl.minimum(tl.load(WIN + h * 3 + 2), NW)
    if pid >= n_text:
        tile = (pid - n_text) // nqb
        first = ((pid - n_text) % nqb) * QS
        ct = tile // (NH * NW)
        ch = (tile // NW) % NH
        cw = tile % NW
        qtok, qvalid = tile_rows(ct, ch, cw, first, r, T, HG, W, TT, TH, TW, SLICE)
        st_t = window_first(ct, wt, NT)
        st_h = window_first(ch, wh, NH)
        st_w = window_first(cw, ww, NW)
        live = first < tl.minimum(TT, T - ct * TT)
        en_t = tl.where(live, st_t + wt, st_t)
        en_h = st_h + wh
        en_w = st_w + ww
    else:
        rows = pid * (QS * SLICE) + r
        qtok = (N + rows).to(tl.int64)
        qvalid = rows < LT
        st_t = wt * 0
        st_h = wh * 0
        st_w = ww * 0
        en_t = st_t + NT
        en_h = st_h + NH
        en_w = st_w + NW
    return qtok, qvalid, st_t, en_t, st_h, en_h, st_w, en_w


#: Geometry arguments that change with every video shape: not specialised on (no recompile per shape).
SHAPE_ARGS = ["H", "T", "HG", "W", "TT", "TH", "TW", "NT", "NH", "NW", "N", "LT", "L"]


@triton.jit(do_not_specialize=SHAPE_ARGS)
def _fwd_kernel(
    Q, K, V, OUT, LSE, WIN, TV,
    sqb, sql, sqh, skb, skl, skh, svb, svl, svh, sob, sol, soh,
    H, T, HG, W, TT, TH, TW, NT, NH, NW, N, LT, L,
    qk_scale,
    D: tl.constexpr,
    D_PAD: tl.constexpr,
    SLICE: tl.constexpr,
    HAS_TV: tl.constexpr,
    F32DOT: tl.constexpr,
    QS: tl.constexpr,
    KS: tl.constexpr,
):  # fmt: skip
    BLOCK_M: tl.constexpr = QS * SLICE
    BLOCK_N: tl.constexpr = KS * SLICE
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
    q = tl.load(
        Q + b * sqb + h * sqh + qtok[:, None] * sql + dd[None, :],
        mask=qvalid[:, None] & dmask[None, :],
        other=0.0,
    )  # (M, D)
    if F32DOT:
        q = q.to(tl.float32)
    k_base = K + b * skb + h * skh
    v_base = V + b * svb + h * svh
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D_PAD], tl.float32)
    nsb = (TT + KS - 1) // KS
    for j in range(0, (en_t - st_t) * (en_h - st_h) * (en_w - st_w) * nsb):  # the window's key blocks
        kt, kh, kw, first = window_block(j, st_t, st_h, st_w, en_h - st_h, en_w - st_w, nsb, KS)
        ktok, kvalid = tile_rows(kt, kh, kw, first, rn, T, HG, W, TT, TH, TW, SLICE)
        m_i, l_i, acc = _fwd_step(
            q, k_base, v_base, ktok, kvalid, dd, dmask, skl, svl, m_i, l_i, acc, qk_scale,
            F32DOT, BLOCK_M, BLOCK_N,
        )  # fmt: skip
    for j in range(0, LT, BLOCK_N):  # text keys, attended by every query
        rows = j + rn
        kvalid = rows < LT
        if HAS_TV:
            kvalid = kvalid & (tl.load(TV + b * LT + rows, mask=kvalid, other=0) != 0)
        m_i, l_i, acc = _fwd_step(
            q, k_base, v_base, (N + rows).to(tl.int64), kvalid, dd, dmask, skl, svl, m_i, l_i, acc,
            qk_scale, F32DOT, BLOCK_M, BLOCK_N,
        )  # fmt: skip
    l_safe = tl.where(l_i > 0, l_i, 1.0)
    out = acc / l_safe[:, None]
    tl.store(
        OUT + b * sob + h * soh + qtok[:, None] * sol + dd[None, :],
        out.to(OUT.dtype.element_ty),
        mask=qvalid[:, None] & dmask[None, :],
    )
    tl.store(LSE + bh.to(tl.int64) * L + qtok, m_i + tl.log2(l_safe), mask=qvalid)


_fwd_tuned = triton.autotune(FWD_CONFIGS, key=["D_PAD", "SLICE", "F32DOT", "HAS_TV"])(_fwd_kernel)


# --------------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------------


def d_pad(d: int) -> int:
    """Head dim rounded up to a power of two >= 16 (``tl.dot`` needs K >= 16)."""
    return max(16, triton.next_power_of_2(d))


def slice_rows(geom: TileGeometry) -> int:
    """Rows of one tile slice (``th * tw``) rounded up to a power of two >= 16."""
    return max(16, triton.next_power_of_2(geom.tile[1] * geom.tile[2]))


def dot_in_f32(dtype: torch.dtype) -> bool:
    """fp32 inputs, or bf16 under the interpreter (whose bf16 ``tl.dot`` is wrong): fp32 products."""
    return dtype == torch.float32 or (dtype == torch.bfloat16 and interpreting())


def geometry_args(geom: TileGeometry, text_len: int, length: int) -> tuple[int, ...]:
    """``T, HG, W, TT, TH, TW, NT, NH, NW, N, LT, L`` as the kernels take them."""
    return (*geom.grid, *geom.tile, *geom.tile_grid, geom.num_tokens, text_len, length)


def query_programs(geom: TileGeometry, text_len: int, qs: int, slice_: int) -> int:
    """Programs of a query-side launch: the text blocks, then ``ceil(tt / qs)`` per tile."""
    return geom.num_tiles * ceil_div(geom.tile[0], qs) + ceil_div(text_len, qs * slice_)


def launch(kernel, tuned, grid, args, meta, config, default):
    """Run ``tuned`` (autotuned) on the GPU, else ``kernel`` with ``config`` (tests) or ``default``
    (the interpreter's single config). ``grid`` is a function of the launch config."""
    if config is None and not interpreting():
        return tuned[grid](*args, **meta)
    cfg = dict(default if config is None else config)
    if interpreting():
        cfg.pop("num_warps", None)
        cfg.pop("num_stages", None)
    return kernel[grid(cfg)](*args, **meta, **cfg)


def sta_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    windows: torch.Tensor,
    text_valid: torch.Tensor | None,
    geom: TileGeometry,
    scale: float,
    config: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out [B, L, H, D], lse [B, H, L] fp32)``; ``windows`` ``[H, 3]`` int32 on q's device."""
    batch, length, heads, dim = q.shape
    text_len = length - geom.num_tokens
    out = q.new_empty(q.shape)
    lse = q.new_empty((batch, heads, length), dtype=torch.float32)
    slice_ = slice_rows(geom)
    tv = text_valid if text_valid is not None else windows
    args = (
        q, k, v, out, lse, windows, tv,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        heads, *geometry_args(geom, text_len, length),
        scale * LOG2E,
    )  # fmt: skip
    meta = dict(
        D=dim, D_PAD=d_pad(dim), SLICE=slice_, HAS_TV=text_valid is not None, F32DOT=dot_in_f32(q.dtype)
    )

    def grid(cfg):  # type: ignore[no-untyped-def]
        return (query_programs(geom, text_len, cfg["QS"], slice_), batch * heads)

    launch(_fwd_kernel, _fwd_tuned, grid, args, meta, config, INTERPRETER_CONFIG)
    return out, lse
