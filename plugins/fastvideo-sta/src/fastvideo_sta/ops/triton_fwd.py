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

The key loop does no index arithmetic per row: a key block's row offsets from its tile corner are the
same for every block, computed once per program, and the walk carries its tile and slice as counters
(no divisions in the loop). On a grid of whole tiles whose frame fills a slice (HunyuanVideo's
30x48x80 with 6x8x8 tiles) and a key block that divides the tile's frames, the key loads and logits
go unmasked (``EVEN``) and the softmax takes one FMA per logit (the max of the raw logits, scaled
after). Launch configs: :class:`LaunchConfig`, pinned by ``FASTVIDEO_STA_CONFIG`` or autotuned over
:data:`FWD_CANDIDATES` (:data:`FWD_TMA_CANDIDATES` where TMA applies); ``tma`` reads the video keys
and values as TMA boxes (Hopper) instead.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from fastvideo_sta.tiles import TileGeometry, ceil_div

LOG2E = 1.4426950408889634

# --------------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------------

#: Environment variables that pin a launch config, ``BLOCK_M,BLOCK_N,num_warps,num_stages`` (e.g.
#: ``128,64,8,3``): the forward's, and the backward's (both of its kernels: BLOCK_M is the query block,
#: BLOCK_N the key block). Unset or ``auto``: the autotuner picks from the candidates below on first use.
ENV_FWD_CONFIG = "FASTVIDEO_STA_CONFIG"
ENV_BWD_CONFIG = "FASTVIDEO_STA_BWD_CONFIG"


@dataclass(frozen=True)
class LaunchConfig:
    """A launch config: query rows per program, key rows per step, warps, pipeline stages.

    Blocks are whole tile slices (a slice is one frame of a tile, ``th * tw`` rows rounded up to a power
    of two: 64 for the 8x8 face), so the kernels take ``BLOCK_M // SLICE`` and ``BLOCK_N // SLICE``
    slices (at least one); with the 8x8 face ``128,64`` is two query slices against one key slice.
    """

    block_m: int
    block_n: int
    num_warps: int = 4
    num_stages: int = 3
    #: Forward only: read the video keys and values with TMA (Hopper tensor descriptors: one 5-d box
    #: ``[1, KS, th, tw, D]`` of the ``[B, T, Hg, W, H*D]`` view a step) instead of gathering rows with
    #: ``cp.async``. Where the shape does not allow it (see :func:`tma_supported`) the gather runs.
    tma: bool = False
    #: Registers per thread ptxas may use (``None``: its choice). ``128`` lets two 8-warp CTAs share an
    #: SM (one's softmax then overlaps the other's matmuls) at the price of some spills.
    maxnreg: int | None = None

    def __str__(self) -> str:
        flags = (",tma" if self.tma else "") + (f",r{self.maxnreg}" if self.maxnreg else "")
        return f"{self.block_m},{self.block_n},{self.num_warps},{self.num_stages}{flags}"

    def slices(self, slice_: int) -> tuple[int, int]:
        """``(QS, KS)``: query and key slices per block for slices of ``slice_`` rows."""
        return max(1, self.block_m // slice_), max(1, self.block_n // slice_)

    def meta(self, slice_: int) -> dict[str, int]:
        """The kernels' launch arguments for slices of ``slice_`` rows."""
        qs, ks = self.slices(slice_)
        meta = {"QS": qs, "KS": ks, "num_warps": self.num_warps, "num_stages": self.num_stages}
        if self.tma:
            meta["TMA"] = True
        if self.maxnreg:
            meta["maxnreg"] = self.maxnreg
        return meta


def parse_config(text: str | None, what: str = ENV_FWD_CONFIG) -> LaunchConfig | None:
    """``"BLOCK_M,BLOCK_N,num_warps,num_stages[,tma][,rN]"`` as a :class:`LaunchConfig` (``rN``: at
    most N registers per thread); ``None`` for unset or ``auto``.

    :raises ValueError: anything else (one line: what was expected, what was given).
    """
    if text is None or text.strip().lower() in ("", "auto"):
        return None
    parts = [p.strip().lower() for p in text.split(",")]
    flags, parts = parts[4:], parts[:4]
    tma = "tma" in flags
    regs = [f[1:] for f in flags if f.startswith("r")]
    try:
        values = [int(p) for p in parts]
        maxnreg = int(regs[0]) if regs else None
    except ValueError:
        values, maxnreg = [], None
    bad_flags = (
        len(flags) != int(tma) + len(regs) or len(regs) > 1 or not (maxnreg is None or 24 <= maxnreg <= 255)
    )
    pow2 = [v > 0 and v & (v - 1) == 0 for v in values]
    if (
        bad_flags
        or len(values) != 4
        or not all(pow2[:3])
        or not 16 <= values[0] <= 512
        or not 16 <= values[1] <= 512
        or values[2] > 16
        or not 1 <= values[3] <= 8
    ):
        raise ValueError(
            f"{what} must be BLOCK_M,BLOCK_N,num_warps,num_stages[,tma][,rN] (blocks powers of two in 16..512, "
            f"warps a power of two <= 16, stages 1..8, N registers 24..255; e.g. 128,64,8,3) or auto, got {text!r}"
        )
    return LaunchConfig(*values, tma=tma, maxnreg=maxnreg)


def env_config(name: str) -> LaunchConfig | None:
    """The launch config pinned by environment variable ``name`` (``None``: autotune)."""
    return parse_config(os.environ.get(name), name)


#: The forward's autotune candidates (the default; each compiles on first use). Chosen from what
#: ptxas reports for sm_90 (compiled on a CPU machine with triton 3.9, bf16, head dim 128, 64-row
#: slices; the GPU machine's triton 3.6 may differ): 128 x 64 blocks at 8 warps use ~210 registers and
#: spill nothing (one 8-warp CTA per SM); 64 x 64 at 4 warps (~225 registers, 80-112 KB of shared
#: memory) fits two CTAs per SM, so one's softmax can overlap the other's matmuls. 128-row blocks at 4
#: warps and 128-key blocks at 8 warps spill (and 128 x 128 at three stages needs 224 KB of shared
#: memory): sweep only. The previous list ((128, 64, 8, 3), (128, 64, 4, 3), (64, 64, 4, 3)) gave
#: 89.7 ms at HunyuanVideo's 30x48x80 + 256 with the paper windows on one H100.
FWD_CANDIDATES = (
    LaunchConfig(128, 64, 8, 3),
    LaunchConfig(128, 64, 8, 2),
    LaunchConfig(64, 64, 4, 3),
    LaunchConfig(64, 64, 4, 2),
)
#: Where the shape allows TMA (:func:`tma_supported`) the default autotunes over these instead. The
#: sweep on one H100 (triton 3.6, 2026-12-06) put 64 x 64 at 4 warps, 3 stages with TMA first at both
#: HunyuanVideo's 30x48x80 + 256 (50.3 ms against 56.3 for the gathered candidates' best) and Wan's
#: 21x30x52 (6.2 against 7.3 ms). All share BLOCK_N = 64, so the key/value descriptors (whose box
#: is the key block) serve every candidate.
FWD_TMA_CANDIDATES = (
    LaunchConfig(64, 64, 4, 3, tma=True),
    LaunchConfig(128, 64, 8, 3, tma=True),
    LaunchConfig(128, 64, 8, 2, tma=True),
    LaunchConfig(64, 64, 4, 2, tma=True),
)
#: The grid ``benchmarks/sta_config_sweep.py`` times (forward), most promising first (the sweep has a
#: time budget): query blocks of one or two 64-row slices (three 128-row programs per 6-frame tile; 256
#: rows would leave a quarter of the last program empty), key blocks of one or two slices, 4 or 8 warps,
#: 2 to 4 stages, gathered or TMA, ptxas's register choice or 128.
SWEEP_FWD_CONFIGS = tuple(
    LaunchConfig(*c[:4], tma="tma" in c[4:], maxnreg=128 if "r128" in c[4:] else None)
    for c in (
        # the autotune candidates, then their TMA variants, then two 8-warp CTAs per SM (128 registers)
        (128, 64, 8, 3), (128, 64, 8, 2), (64, 64, 4, 3), (64, 64, 4, 2),
        (128, 64, 8, 3, "tma"), (128, 64, 8, 2, "tma"), (64, 64, 4, 3, "tma"), (64, 64, 4, 2, "tma"),
        (128, 64, 8, 2, "r128"), (128, 64, 8, 2, "tma", "r128"),
        # the rest: more stages, 128-key blocks, 64-row blocks at 8 warps, 128-row blocks at 4 warps
        (128, 64, 8, 4), (128, 128, 8, 2), (128, 128, 8, 3), (128, 128, 8, 2, "tma"), (64, 64, 8, 3),
        (128, 64, 4, 2),
    )
)  # fmt: skip
#: ... and the backward (``None``: its autotuned default).
SWEEP_BWD_CONFIGS = (
    None,
    LaunchConfig(64, 64, 8, 2),
    LaunchConfig(128, 64, 8, 2),
    LaunchConfig(64, 128, 8, 2),
    LaunchConfig(64, 64, 4, 3),
)
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


#: Geometry arguments that change with every video shape: not specialised on (no recompile per shape).
SHAPE_ARGS = ["H", "T", "HG", "W", "TT", "TH", "TW", "NT", "NH", "NW", "N", "LT", "L"]


@triton.jit
def block_rows(r, HG, W, TH, TW, SLICE: tl.constexpr):
    """Rows ``r`` of a block of whole tile slices, relative to the block's first token (its tile's
    corner in the block's first frame): ``(frame, dh, dw, token offset, real)``, ``real`` false on the
    rows that pad a slice of ``th * tw`` tokens up to ``SLICE``. The same for every block of a walk,
    so the forward computes it once per program, outside its key loop."""
    dt = r // SLICE
    rr = r % SLICE
    dh = rr // TW
    dw = rr - dh * TW
    return dt, dh, dw, (dt * HG + dh) * W + dw, rr < TH * TW


@triton.jit
def load_rows(ptr, rmask, dmask, MASK_ROWS: tl.constexpr, MASK_D: tl.constexpr):
    """``tl.load`` of a ``[rows, D_PAD]`` block, masked only where a row or the head dim can be out of range."""
    if MASK_ROWS:
        if MASK_D:
            return tl.load(ptr, mask=rmask[:, None] & dmask[None, :], other=0.0)
        else:
            return tl.load(ptr, mask=rmask[:, None], other=0.0)
    else:
        if MASK_D:
            return tl.load(ptr, mask=dmask[None, :], other=0.0)
        else:
            return tl.load(ptr)


@triton.jit
def softmax_pv(qk, v, kvalid, m_i, l_i, acc, qk_scale, MASKED: tl.constexpr, F32DOT: tl.constexpr):
    """Logits ``qk`` of one block of keys (values ``v``) into the online softmax (base 2; ``qk_scale``
    >= 0 holds log2(e)). Unmasked blocks (``MASKED`` false: every key real) take the max of the raw
    logits and one FMA per logit."""
    if F32DOT:
        v = v.to(tl.float32)
    if MASKED:
        s = tl.where(kvalid[None, :], qk * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp2(s - m_new[:, None])
    else:
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        p = tl.exp2(qk * qk_scale - m_new[:, None])
    alpha = tl.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = mm(p.to(v.dtype), v, acc * alpha[:, None], F32DOT)  # (M, D)
    return m_new, l_i, acc


@triton.jit
def logits(q, k, F32DOT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """``q @ k^T`` in fp32, ``(M, N)``."""
    if F32DOT:
        k = k.to(tl.float32)
    return mm(q, tl.trans(k), tl.zeros([BLOCK_M, BLOCK_N], tl.float32), F32DOT)


@triton.jit
def softmax_step(q, k, v, kvalid, m_i, l_i, acc, qk_scale, MASKED: tl.constexpr, F32DOT: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):  # fmt: skip
    """One block of keys into the online softmax."""
    qk = logits(q, k, F32DOT, BLOCK_M, BLOCK_N)
    return softmax_pv(qk, v, kvalid, m_i, l_i, acc, qk_scale, MASKED, F32DOT)


@triton.jit
def _fwd_step(q, k_base, v_base, ktok, kvalid, dd, dmask, skl, svl, m_i, l_i, acc, qk_scale,
              F32DOT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):  # fmt: skip
    """One block of keys gathered by token index (always masked): the text keys."""
    kmask = kvalid[:, None] & dmask[None, :]
    k = tl.load(k_base + ktok[:, None] * skl + dd[None, :], mask=kmask, other=0.0)  # (N, D)
    v = tl.load(v_base + ktok[:, None] * svl + dd[None, :], mask=kmask, other=0.0)  # (N, D)
    return softmax_step(q, k, v, kvalid, m_i, l_i, acc, qk_scale, True, F32DOT, BLOCK_M, BLOCK_N)


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


@triton.jit
def block_kv(k_base, v_base, K_DESC, V_DESC, k_off, v_off, dt, dh, dw, real, dmask, skl, svl,
             kt, kh, kw, first, bh, h, H, T, HG, W, TT, TH, TW,
             D: tl.constexpr, D_PAD: tl.constexpr, FULL: tl.constexpr, MASK_D: tl.constexpr,
             TMA: tl.constexpr, BLOCK_N: tl.constexpr):  # fmt: skip
    """Keys, values ``(N, D)`` and key validity of block ``(kt, kh, kw, first)`` of a window walk."""
    corner = (((kt * TT + first) * HG + kh * TH) * W + kw * TW).to(tl.int64)
    if FULL:
        kvalid = real
    else:
        kvalid = (
            real
            & (dt < tl.minimum(TT - first, T - kt * TT - first))
            & (dh < HG - kh * TH)
            & (dw < W - kw * TW)
        )
    if TMA:  # one box [1, KS, th, tw, D] of the [B, T, Hg, W, H*D] view (zeros outside the grid)
        box = [bh // H, kt * TT + first, kh * TH, kw * TW, h * D]
        k = tl.reshape(K_DESC.load(box), [BLOCK_N, D_PAD])
        v = tl.reshape(V_DESC.load(box), [BLOCK_N, D_PAD])
    else:
        k = load_rows(k_base + corner * skl + k_off, kvalid, dmask, not FULL, MASK_D)
        v = load_rows(v_base + corner * svl + v_off, kvalid, dmask, not FULL, MASK_D)
    return k, v, kvalid


@triton.jit
def advance(kt, kh, kw, first, st_h, st_w, en_h, en_w, TT, KS: tl.constexpr):
    """The block after ``(kt, kh, kw, first)``: slice group ``first + KS``; past the tile's last, the
    next tile along w, then h, then t (counters: no divisions)."""
    first = first + KS
    wrap = first >= TT
    first = tl.where(wrap, 0, first)
    kw = kw + wrap.to(tl.int32)
    wrap = kw >= en_w
    kw = tl.where(wrap, st_w, kw)
    kh = kh + wrap.to(tl.int32)
    wrap = kh >= en_h
    kh = tl.where(wrap, st_h, kh)
    kt = kt + wrap.to(tl.int32)
    return kt, kh, kw, first


@triton.jit
def video_block(q, k_base, v_base, K_DESC, V_DESC, k_off, v_off, dt, dh, dw, real, dmask, skl, svl,
                m_i, l_i, acc, kt, kh, kw, first, st_h, st_w, en_h, en_w, bh, h,
                H, T, HG, W, TT, TH, TW, qk_scale,
                D: tl.constexpr, D_PAD: tl.constexpr, KS: tl.constexpr, FULL: tl.constexpr,
                MASK_D: tl.constexpr, TMA: tl.constexpr, F32DOT: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):  # fmt: skip
    """Key block ``(kt, kh, kw, first)`` of a window walk into the online softmax; returns the state
    and the next block."""
    k, v, kvalid = block_kv(
        k_base, v_base, K_DESC, V_DESC, k_off, v_off, dt, dh, dw, real, dmask, skl, svl,
        kt, kh, kw, first, bh, h, H, T, HG, W, TT, TH, TW, D, D_PAD, FULL, MASK_D, TMA, BLOCK_N,
    )  # fmt: skip
    m_i, l_i, acc = softmax_step(q, k, v, kvalid, m_i, l_i, acc, qk_scale, not FULL, F32DOT, BLOCK_M, BLOCK_N)
    kt, kh, kw, first = advance(kt, kh, kw, first, st_h, st_w, en_h, en_w, TT, KS)
    return m_i, l_i, acc, kt, kh, kw, first


@triton.jit(do_not_specialize=SHAPE_ARGS)
def _fwd_kernel(
    Q, K, V, OUT, LSE, WIN, TV, K_DESC, V_DESC,
    sqb, sql, sqh, skb, skl, skh, svb, svl, svh, sob, sol, soh,
    H, T, HG, W, TT, TH, TW, NT, NH, NW, N, LT, L,
    qk_scale,
    D: tl.constexpr,
    D_PAD: tl.constexpr,
    SLICE: tl.constexpr,
    HAS_TV: tl.constexpr,
    F32DOT: tl.constexpr,
    EVEN: tl.constexpr,
    TILE_T: tl.constexpr,
    QS: tl.constexpr,
    KS: tl.constexpr,
    TMA: tl.constexpr = False,
):  # fmt: skip
    # EVEN: the grid is a whole number of tiles and a tile's frame fills its slice (th * tw == SLICE);
    # then TILE_T is tt, and when KS divides it no block of a window walk holds a missing row (FULL):
    # the video key loads and the logits go unmasked.
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
    # Row offsets of a key block (loop invariant); each block adds the scalar offset of its corner.
    rn = tl.arange(0, BLOCK_N)
    dt, dh, dw, roff, real = block_rows(rn, HG, W, TH, TW, SLICE)
    roff = roff.to(tl.int64)
    k_off = roff[:, None] * skl + dd[None, :]
    v_off = roff[:, None] * svl + dd[None, :]
    # The window's key blocks, (t, h, w) tiles in raster order, KS slices of a tile per step, walked as
    # one flat loop (so that Triton pipelines its loads across tiles) with the tile and slice carried
    # as counters (no divisions in the loop).
    nsb = (TT + KS - 1) // KS
    kt = st_t
    kh = st_h
    kw = st_w
    first = st_t * 0
    n_blocks = (en_t - st_t) * (en_h - st_h) * (en_w - st_w) * nsb
    for _ in range(0, n_blocks):
        m_i, l_i, acc, kt, kh, kw, first = video_block(
            q, k_base, v_base, K_DESC, V_DESC, k_off, v_off, dt, dh, dw, real, dmask, skl, svl,
            m_i, l_i, acc, kt, kh, kw, first, st_h, st_w, en_h, en_w, bh, h,
            H, T, HG, W, TT, TH, TW, qk_scale,
            D, D_PAD, KS, FULL, MASK_D, TMA, F32DOT, BLOCK_M, BLOCK_N,
        )  # fmt: skip
    for j in range(0, LT, BLOCK_N):  # text keys, attended by every query
        rows = j + rn
        tvalid = rows < LT
        if HAS_TV:
            tvalid = tvalid & (tl.load(TV + b * LT + rows, mask=tvalid, other=0) != 0)
        m_i, l_i, acc = _fwd_step(
            q, k_base, v_base, (N + rows).to(tl.int64), tvalid, dd, dmask, skl, svl, m_i, l_i, acc,
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
        cfg.pop("maxnreg", None)
    return kernel[grid(cfg)](*args, **meta, **cfg)


_FWD_TUNED: dict[tuple[int, bool], triton.runtime.Autotuner] = {}
#: Whether the default forward autotunes over :data:`FWD_TMA_CANDIDATES` where the shape allows
#: (``FASTVIDEO_STA_AUTO_TMA=0`` turns it off; a failed TMA launch turns it off with one warning).
_AUTO_TMA = [os.environ.get("FASTVIDEO_STA_AUTO_TMA", "1").strip() != "0"]


def _disable_auto_tma(err: Exception) -> None:
    _AUTO_TMA[0] = False
    warnings.warn(
        f"sta: the TMA forward failed ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
        "using the gathered forward from now on (set FASTVIDEO_STA_AUTO_TMA=0 to skip the attempt)",
        RuntimeWarning,
        stacklevel=3,
    )


def tma_key_slices(slice_: int) -> int:
    """``KS`` of every :data:`FWD_TMA_CANDIDATES` entry for slices of ``slice_`` rows (one box size)."""
    (ks,) = {cand.slices(slice_)[1] for cand in FWD_TMA_CANDIDATES}
    return ks


def fwd_tuned(slice_: int, tma: bool = False) -> triton.runtime.Autotuner:
    """The forward autotuned over :data:`FWD_CANDIDATES` (``tma``: :data:`FWD_TMA_CANDIDATES`, whose
    launches take key/value descriptors) for slices of ``slice_`` rows (cached)."""
    if (slice_, tma) not in _FWD_TUNED:
        configs = {}
        for cand in FWD_TMA_CANDIDATES if tma else FWD_CANDIDATES:
            meta = cand.meta(slice_)
            configs.setdefault(tuple(meta.values()), meta)
        _FWD_TUNED[slice_, tma] = triton.autotune(
            [
                triton.Config(
                    {"QS": m["QS"], "KS": m["KS"], **({"TMA": True} if tma else {})},
                    num_warps=m["num_warps"],
                    num_stages=m["num_stages"],
                )
                for m in configs.values()
            ],
            key=["D_PAD", "SLICE", "F32DOT", "HAS_TV", "EVEN", "TILE_T"],
        )(_fwd_kernel)
    return _FWD_TUNED[slice_, tma]


def even_grid(geom: TileGeometry, slice_: int) -> bool:
    """Whether the grid is a whole number of tiles and a tile's frame fills a slice (no partial rows)."""
    grid_even = all(g % t == 0 for g, t in zip(geom.grid, geom.tile, strict=True))
    return grid_even and geom.tile[1] * geom.tile[2] == slice_


def tma_supported(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, geom: TileGeometry, slice_: int) -> bool:
    """Whether the forward can read k and v with TMA boxes: a tile face of ``SLICE`` rows (th, tw powers
    of two), a power-of-two head dim >= 16 contiguous with the heads (``[.., H, D]`` strides ``(D, 1)``),
    16-byte aligned bases and strides; CUDA capability >= 9 (or the interpreter)."""
    if geom.tile[1] * geom.tile[2] != slice_ or (geom.tile[1] & (geom.tile[1] - 1)):
        return False
    dim = q.shape[-1]
    if dim != d_pad(dim):
        return False
    for x in (k, v):
        size = x.element_size()
        if x.stride(3) != 1 or x.stride(2) != dim or x.data_ptr() % 16:
            return False
        if (x.stride(0) * size) % 16 or (x.stride(1) * size) % 16:
            return False
    if interpreting():
        return True
    return q.is_cuda and torch.cuda.get_device_capability(q.device)[0] >= 9


def kv_descriptors(k: torch.Tensor, v: torch.Tensor, geom: TileGeometry, ks: int):  # type: ignore[no-untyped-def]
    """Tensor descriptors of the video keys and values as ``[B, T, Hg, W, H*D]``, boxes ``[1, ks, th, tw, D]``."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    t, hg, w = geom.grid
    _, th, tw = geom.tile

    def desc(x: torch.Tensor):  # type: ignore[no-untyped-def]
        sb, sl = x.stride(0), x.stride(1)
        shape = [x.shape[0], t, hg, w, x.shape[2] * x.shape[3]]
        return TensorDescriptor(x, shape, [sb, hg * w * sl, w * sl, sl, 1], [1, ks, th, tw, x.shape[3]])

    return desc(k), desc(v)


def resolve_config(config: LaunchConfig | dict | None, slice_: int, env: str) -> dict | None:
    """Kernel launch arguments: ``config`` (a :class:`LaunchConfig`, or a dict of ``QS``/``KS``/...),
    else the config pinned by environment variable ``env``, else ``None`` (autotune)."""
    if config is None:
        config = env_config(env)
    if isinstance(config, LaunchConfig):
        return config.meta(slice_)
    return config


def sta_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    windows: torch.Tensor,
    text_valid: torch.Tensor | None,
    geom: TileGeometry,
    scale: float,
    config: LaunchConfig | dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out [B, L, H, D], lse [B, H, L] fp32)``; ``windows`` ``[H, 3]`` int32 on q's device.

    ``config``: the launch config (default: :data:`ENV_FWD_CONFIG` if set, else autotuned).
    """
    batch, length, heads, dim = q.shape
    text_len = length - geom.num_tokens
    out = q.new_empty(q.shape)
    lse = q.new_empty((batch, heads, length), dtype=torch.float32)
    slice_ = slice_rows(geom)
    tv = text_valid if text_valid is not None else windows
    if scale < 0:  # the kernel's unmasked softmax wants a scale >= 0: (-q) . k * |scale| is exact
        q, scale = -q, -scale
    cfg = resolve_config(config, slice_, ENV_FWD_CONFIG)
    k_desc, v_desc = k, v
    auto_tma = False
    if cfg is not None and cfg.get("TMA"):
        if tma_supported(q, k, v, geom, slice_):
            k_desc, v_desc = kv_descriptors(k, v, geom, cfg["KS"])
        else:  # the gather path
            cfg = {key: val for key, val in cfg.items() if key != "TMA"}
    elif cfg is None and not interpreting() and _AUTO_TMA[0] and tma_supported(q, k, v, geom, slice_):
        auto_tma = True  # autotune over the TMA candidates
        k_desc, v_desc = kv_descriptors(k, v, geom, tma_key_slices(slice_))
    args = (
        q, k, v, out, lse, windows, tv, k_desc, v_desc,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        heads, *geometry_args(geom, text_len, length),
        scale * LOG2E,
    )  # fmt: skip
    even = even_grid(geom, slice_)
    meta = dict(
        D=dim, D_PAD=d_pad(dim), SLICE=slice_, HAS_TV=text_valid is not None, F32DOT=dot_in_f32(q.dtype),
        EVEN=even, TILE_T=geom.tile[0] if even else 0,
    )  # fmt: skip

    def grid(cfg):  # type: ignore[no-untyped-def]
        return (query_programs(geom, text_len, cfg["QS"], slice_), batch * heads)

    if auto_tma:
        try:
            fwd_tuned(slice_, True)[grid](*args, **meta)
            return out, lse
        except Exception as err:  # a Triton or driver without TMA support: gather instead
            _disable_auto_tma(err)
            args = (*args[:7], k, v, *args[9:])
    if cfg is None and not interpreting():
        fwd_tuned(slice_)[grid](*args, **meta)
    else:
        launch(_fwd_kernel, None, grid, args, meta, cfg, INTERPRETER_CONFIG)
    return out, lse
