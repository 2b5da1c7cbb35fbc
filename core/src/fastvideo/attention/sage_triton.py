"""Triton kernels of 8-bit attention (SageAttention's recipe): INT8 ``Q K^T`` with per-block scales,
online softmax in fp32, ``P V`` in fp16 with fp32 accumulation.

Inputs are prepared by :func:`quantize_blocks` (called from :func:`sage_attention_triton`): ``q`` is
pre-multiplied by ``scale * log2(e)`` (so the kernel uses ``exp2``), ``k`` is smoothed by subtracting
its mean over tokens (softmax is unchanged: every logit of a query row moves by the same amount), and
both are quantized to int8 with one scale per block of ``BLOCK_M`` (q) or ``BLOCK_N`` (k) tokens of
one (batch, head), into buffers padded to whole blocks and a power-of-two head dim (the kernel's main
loop has no masks; only the last, partial key block is masked). ``v`` is converted once to fp16 in the
same padded layout, or (``pv="fp8"``, SageAttention 2) to e4m3 with one scale per channel, transposed
so that keys are contiguous (the K-major operand of FP8 MMA); ``P`` is then scaled by 448 to e4m3 and
the product accumulates in fp32. The output keeps the seam's ``[B, L, H, D]`` layout.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634

# --------------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------------

#: (BLOCK_M, BLOCK_N, num_warps, num_stages) on the GPU: 128 query rows per program (two warpgroups),
#: 64 keys per step. ``FASTVIDEO_SAGE_CONFIG="128,128,8,3"`` overrides it (benchmarks/sage_config_sweep.py
#: measures the candidates); without it warps and stages are autotuned for the blocks.
GPU_CONFIG = (128, 64, 8, 3)
#: The interpreter: bigger blocks mean fewer (slow) interpreted steps.
INTERPRETER_CONFIG = (64, 64, 4, 1)
#: How ``P V`` is computed: ``fp16`` (P and V in fp16, SageAttention 1) or ``fp8`` (V quantized to e4m3
#: with one scale per channel, P scaled by 448 to e4m3: SageAttention 2's recipe; FP8 tensor cores, sm89+).
PV_CHOICES = ("fp16", "fp8")
#: What ``pv="auto"`` means on Hopper (sm90) and on other cards; set from the sweep's results.
SM90_DEFAULT_PV = "fp16"
OTHER_DEFAULT_PV = "fp16"
#: Whether Q / K / V blocks are loaded through tensor descriptors (TMA) by default.
DEFAULT_TMA = False


def block_config() -> tuple[int, int, int, int]:
    """``(BLOCK_M, BLOCK_N, num_warps, num_stages)`` the launcher uses here (the quantization blocks)."""
    if interpreting():
        return INTERPRETER_CONFIG
    forced = os.environ.get("FASTVIDEO_SAGE_CONFIG")
    return parse_config(forced) if forced else GPU_CONFIG


def parse_config(text: str) -> tuple[int, int, int, int]:
    """``"128,64,8,3"`` -> ``(128, 64, 8, 3)`` (BLOCK_M, BLOCK_N powers of two >= 16; warps 4 or 8)."""
    try:
        m, n, w, st = (int(x) for x in text.split(","))
    except ValueError:
        raise ValueError(
            f"a sage config is 'BLOCK_M,BLOCK_N,num_warps,num_stages' (e.g. '128,64,8,3'), got {text!r}"
        ) from None
    if any(b < 16 or b & (b - 1) for b in (m, n)) or w not in (1, 2, 4, 8, 16) or not 1 <= st <= 8:
        raise ValueError(
            f"a sage config needs BLOCK_M, BLOCK_N powers of two >= 16, num_warps in 1..16 (a power of "
            f"two) and 1..8 stages, got {text!r}"
        )
    return m, n, w, st


#: Compute capability per CUDA device index, read once outside compiled graphs (a capability query
#: inside one would break the graph; a dict lookup does not).
_CAPABILITY: dict[int, tuple[int, int]] = {}


def device_capability(device: torch.device) -> tuple[int, int]:
    """``device``'s compute capability ((0, 0) off CUDA), cached (see :data:`_CAPABILITY`)."""
    if device.type != "cuda":
        return (0, 0)
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _CAPABILITY:
        _CAPABILITY[index] = tuple(torch.cuda.get_device_capability(index))  # type: ignore[assignment]
    return _CAPABILITY[index]


def resolve_pv(pv: str, device: torch.device) -> str:
    """``pv`` with ``auto`` resolved (``FASTVIDEO_SAGE_PV`` when set, else the default of ``device``);
    ``fp8`` becomes ``fp16`` on CUDA cards without FP8 tensor cores (before compute capability 8.9)."""
    if pv == "auto":
        pv = os.environ.get("FASTVIDEO_SAGE_PV", "auto")
    if pv == "auto":
        if SM90_DEFAULT_PV == OTHER_DEFAULT_PV:  # no capability query needed
            pv = OTHER_DEFAULT_PV
        else:
            pv = SM90_DEFAULT_PV if device_capability(device) == (9, 0) else OTHER_DEFAULT_PV
    if pv not in PV_CHOICES:
        raise ValueError(f"sage pv must be one of {('auto', *PV_CHOICES)}, got {pv!r}")
    if pv == "fp8" and device.type == "cuda" and device_capability(device) < (8, 9):
        pv = "fp16"
    return pv


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


# --------------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------------


@triton.jit
def _to_e4m3(y, EXACT_ROUND: tl.constexpr):
    """``y`` (fp32 within +-448) as float8_e4m3fn, to nearest, ties to even. The interpreter's own cast
    does not round so (it truncates where rounding reaches the next power of two): there
    (``EXACT_ROUND``) ``y`` is first rounded on the e4m3 grid in fp32, and the cast is exact."""
    if EXACT_ROUND:
        bits = y.to(tl.int32, bitcast=True)
        exponent = tl.maximum(((bits >> 23) & 0xFF) - 127, -6)
        step = ((exponent - 3 + 127) << 23).to(tl.float32, bitcast=True)
        magic = step * 12582912.0  # 1.5 * 2**23 steps
        y = (y + magic) - magic
    return y.to(tl.float8e4nv)


@triton.jit
def _sage_step(
    acc,
    l_i,
    m_i,
    q,
    q_scale,
    K,
    KS,
    V,
    bh,
    nblock,
    Lk,
    lkp,
    NBK,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PV_FP8: tl.constexpr,
    MASKED: tl.constexpr,
    EXACT_ROUND: tl.constexpr,
    FAST_I2F: tl.constexpr,
    TMA: tl.constexpr,
):
    """One block of ``BLOCK_N`` keys: logits, online softmax, ``P V`` accumulated (fp32). With ``TMA``,
    ``K`` and ``V`` are tensor descriptors of the same buffers seen as 2-D (rows: (b, h, token))."""
    keys = nblock * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_D)
    if TMA:
        k = K.load([bh * lkp + nblock * BLOCK_N, 0])
    else:
        k = tl.load(K + (bh.to(tl.int64) * lkp + keys[:, None]) * BLOCK_D + cols[None, :])
    k_scale = tl.load(KS + bh * NBK + nblock)
    s = tl.dot(q, tl.trans(k))  # int32 (BLOCK_M, BLOCK_N), |s| <= 127 * 127 * 256 < 2**22
    if FAST_I2F:  # int32 -> fp32 by full-rate integer add + float subtract (I2F runs at a quarter rate):
        s = (s + 0x4B400000).to(tl.float32, bitcast=True) - 12582912.0  # bits of 1.5 * 2**23 + s, exact
    else:
        s = s.to(tl.float32)
    s = s * (q_scale * k_scale)  # base-2 logits
    if MASKED:  # the last, partial block: padded keys (zeros) must not count
        s = tl.where((keys < Lk)[None, :], s, -float("inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    if PV_FP8:  # V^T e4m3 [BLOCK_D, Lkp] (keys contiguous: the K-major operand FP8 MMA wants)
        if TMA:
            vt = V.load([bh * BLOCK_D, nblock * BLOCK_N])
        else:
            vt = tl.load(V + (bh.to(tl.int64) * BLOCK_D + cols[:, None]) * lkp + keys[None, :])
        # times 1/448 (P's factor) here, not on the output: the product is then no operand of the add,
        # so Triton does not accumulate it in the MMA's accumulator, whose FP8 sums keep ~14 bits on
        # Hopper; the block's sum (64 keys) is added to ``acc`` in fp32 (SageAttention 2's two levels)
        pv = tl.dot(_to_e4m3(p * 448.0, EXACT_ROUND), tl.trans(vt)) * (1.0 / 448.0)
    else:  # V fp16 [Lkp, BLOCK_D]
        if TMA:
            v = V.load([bh * lkp + nblock * BLOCK_N, 0])
        else:
            v = tl.load(V + (bh.to(tl.int64) * lkp + keys[:, None]) * BLOCK_D + cols[None, :])
        pv = tl.dot(p.to(tl.float16), v)
    acc = acc * alpha[:, None] + pv
    return acc, l_i, m_new


@triton.jit
def _sage_fwd(
    Q,
    K,
    V,
    Out,
    QS,
    KS,
    VS,  # int8 [B, H, Lqp, BD], int8 [B, H, Lkp, BD], V prepared (see _prepare_v), [B, Lq, H, D], fp32 scales
    H,
    Lq,
    Lk,
    NBQ,
    NBK,
    D,
    s_ob,
    s_ol,
    s_oh,  # strides of O (the last dim is contiguous)
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PV_FP8: tl.constexpr,
    EXACT_ROUND: tl.constexpr,
    FAST_I2F: tl.constexpr,
    TMA: tl.constexpr,
):
    mblock = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh - b * H
    rows = mblock * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_D)
    lqp = NBQ * BLOCK_M
    lkp = NBK * BLOCK_N
    if TMA:
        q = Q.load([bh * lqp + mblock * BLOCK_M, 0])
    else:
        q = tl.load(Q + (bh.to(tl.int64) * lqp + rows[:, None]) * BLOCK_D + cols[None, :])
    q_scale = tl.load(QS + bh * NBQ + mblock)
    m_i = tl.full([BLOCK_M], -float("inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    n_full = Lk // BLOCK_N
    for nblock in range(0, n_full):  # full blocks: no masks
        acc, l_i, m_i = _sage_step(
            acc, l_i, m_i, q, q_scale, K, KS, V, bh, nblock, Lk, lkp, NBK,
            BLOCK_N, BLOCK_D, PV_FP8, False, EXACT_ROUND, FAST_I2F, TMA,
        )  # fmt: skip
    if n_full < NBK:
        acc, l_i, m_i = _sage_step(
            acc, l_i, m_i, q, q_scale, K, KS, V, bh, n_full, Lk, lkp, NBK,
            BLOCK_N, BLOCK_D, PV_FP8, True, EXACT_ROUND, FAST_I2F, TMA,
        )  # fmt: skip
    out = acc * (1.0 / l_i)[:, None]
    if PV_FP8:  # undo V's per-channel scale
        out = out * tl.load(VS + bh * BLOCK_D + cols)[None, :]
    o_ptr = Out + b.to(tl.int64) * s_ob + h * s_oh + rows[:, None].to(tl.int64) * s_ol + cols[None, :]
    tl.store(o_ptr, out.to(Out.dtype.element_ty), mask=(rows < Lq)[:, None] & (cols < D)[None, :])


@triton.jit
def _load_rows(X, block, bh, H, L, D, s_xb, s_xl, s_xh, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr):
    """Rows ``block * BLOCK ..`` of head ``bh % H`` of sample ``bh // H`` of ``X`` ``[B, L, H, D]``
    (strided) in fp32, zeros outside ``L`` x ``D``; with their row and column indices and mask."""
    b = bh // H
    h = bh - b * H
    rows = block * BLOCK + tl.arange(0, BLOCK)
    cols = tl.arange(0, BLOCK_D)
    mask = (rows < L)[:, None] & (cols < D)[None, :]
    x_ptr = X + b.to(tl.int64) * s_xb + h * s_xh + rows[:, None].to(tl.int64) * s_xl + cols[None, :]
    return tl.load(x_ptr, mask=mask, other=0.0).to(tl.float32), rows, cols, mask


@triton.jit
def _quantize_fwd(
    X,
    MEAN,
    Q,
    S,  # [B, L, H, D] (strided), fp32 [B, H, D] or unused, int8 [B, H, NB * BLOCK, W], fp32 [B, H, NB]
    H,
    L,
    NB,
    D,
    W,
    s_xb,
    s_xl,
    s_xh,
    multiplier,
    HAS_MEAN: tl.constexpr,
    BLOCK: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    block = tl.program_id(0)
    bh = tl.program_id(1)
    x, rows, cols, mask = _load_rows(X, block, bh, H, L, D, s_xb, s_xl, s_xh, BLOCK, BLOCK_D)
    if HAS_MEAN:
        mean = tl.load(MEAN + bh * D + cols, mask=cols < D, other=0.0)
        x = tl.where(mask, x - mean[None, :], 0.0)
    x = x * multiplier
    scale = tl.maximum(tl.max(tl.max(tl.abs(x), 1), 0), 1e-12) / 127.0
    y = x / scale
    y = tl.where(y >= 0, tl.floor(y + 0.5), tl.ceil(y - 0.5))  # round half away from zero
    y = tl.minimum(tl.maximum(y, -127.0), 127.0)
    q_ptr = Q + (bh.to(tl.int64) * NB * BLOCK + rows[:, None]) * W + cols[None, :]
    tl.store(q_ptr, y.to(tl.int8), mask=(cols < W)[None, :])  # padded rows and columns: zeros
    tl.store(S + bh * NB + block, scale)


@triton.jit
def _prepare_v(
    X,
    VS,
    Out,  # [B, L, H, D] (strided), fp32 [B, H, BD] (FP8: the per-channel scale), see below
    H,
    L,
    D,
    lkp,
    s_xb,
    s_xl,
    s_xh,
    BLOCK: tl.constexpr,
    BLOCK_D: tl.constexpr,
    FP8: tl.constexpr,
    EXACT_ROUND: tl.constexpr,
):
    """V for the ``P V`` product, zero padded to ``lkp`` tokens and ``BLOCK_D`` channels: fp16
    ``[B, H, lkp, BD]``, or (``FP8``) ``v / scale`` in e4m3, transposed: ``[B, H, BD, lkp]``."""
    block = tl.program_id(0)
    bh = tl.program_id(1)
    x, rows, cols, _ = _load_rows(X, block, bh, H, L, D, s_xb, s_xl, s_xh, BLOCK, BLOCK_D)
    if FP8:
        vs = tl.load(VS + bh * BLOCK_D + cols)  # amax / 448 per channel (1 in padded channels)
        y = tl.minimum(tl.maximum(x / vs[None, :], -448.0), 448.0)
        o_ptr = Out + (bh.to(tl.int64) * BLOCK_D + cols[None, :]) * lkp + rows[:, None]
        tl.store(o_ptr, _to_e4m3(y, EXACT_ROUND))
    else:
        o_ptr = Out + (bh.to(tl.int64) * lkp + rows[:, None]) * BLOCK_D + cols[None, :]
        tl.store(o_ptr, x.to(tl.float16))


#: On the GPU, warps and pipeline stages are searched at the first call of each (head dim, key
#: length, P V recipe); the block sizes stay fixed (they are the quantization blocks).
GPU_TUNING = [
    triton.Config({}, num_warps=w, num_stages=n) for w, n in ((8, 3), (4, 3), (8, 2), (4, 2), (8, 4))
]
_sage_fwd_tuned = triton.autotune(configs=GPU_TUNING, key=["D", "Lk", "PV_FP8", "FAST_I2F", "TMA"])(_sage_fwd)


# --------------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------------


def quantize_blocks(
    x: torch.Tensor, block: int, multiplier: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` [B, L, H, D] -> (int8 [B, H, nb * block, D] (zero padded), fp32 scales [B, H, nb]) with
    ``x * multiplier ~= q * scale`` per block of ``block`` tokens of one (batch, head)."""
    b, length, h, d = x.shape
    nb = triton.cdiv(length, block)
    xt = x.transpose(1, 2).float()  # (B, H, L, D)
    if multiplier != 1.0:
        xt = xt * multiplier
    xt = torch.nn.functional.pad(xt, (0, 0, 0, nb * block - length)).view(b, h, nb, block, d)
    scale = xt.abs().amax(dim=(3, 4)).clamp(min=1e-12) / 127.0  # (B, H, nb)
    q = (xt / scale[..., None, None]).round_().clamp_(-127, 127).to(torch.int8)
    return q.view(b, h, nb * block, d), scale.contiguous()


def _block_d(d: int) -> int:
    return max(32, 1 << math.ceil(math.log2(d)))


def quantize_warps(block: int, block_d: int) -> int:
    """Warps of :func:`_quantize_fwd` for a ``block x block_d`` tile: 32 values a thread (ptxas for
    sm_90: 128 registers, no spills; 4 warps on a 128 x 128 tile spill ~1 KB a thread)."""
    return min(16, max(4, block * block_d // 1024))


def quantize_blocks_triton(
    x: torch.Tensor,
    block: int,
    multiplier: float = 1.0,
    *,
    mean: torch.Tensor | None = None,
    width: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`quantize_blocks` of ``x - mean`` (``mean`` fp32 [B, H, D], broadcast over tokens) in one
    Triton pass over ``x``; ``width`` (>= D, default D): the stored rows' length (zero padded)."""
    b, length, h, d = x.shape
    width = d if width is None else width
    if width < d:
        raise ValueError(f"quantize_blocks_triton: width must be >= the head dim {d}, got {width}")
    nb = triton.cdiv(length, block)
    if x.stride(-1) != 1:
        x = x.contiguous()
    q = torch.empty(b, h, nb * block, width, dtype=torch.int8, device=x.device)
    scale = torch.empty(b, h, nb, dtype=torch.float32, device=x.device)
    _quantize_fwd[(nb, b * h)](
        x, mean if mean is not None else scale, q, scale,
        h, length, nb, d, width, x.stride(0), x.stride(1), x.stride(2), float(multiplier),
        HAS_MEAN=mean is not None, BLOCK=block, BLOCK_D=_block_d(width),
        num_warps=quantize_warps(block, _block_d(width)),
    )  # fmt: skip
    return q, scale


def prepare_v(v: torch.Tensor, block: int, pv: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``v`` [B, L, H, D] as the kernel reads it (one pass; tokens padded to a multiple of ``block``):
    ``fp16``: fp16 [B, H, Lkp, BD], no scale; ``fp8``: e4m3 ``v / scale`` transposed [B, H, BD, Lkp]
    and fp32 ``scale`` [B, H, BD] (``amax over tokens / 448`` per channel; 1 in padding)."""
    b, length, h, d = v.shape
    bd = _block_d(d)
    lkp = triton.cdiv(length, block) * block
    if v.stride(-1) != 1:
        v = v.contiguous()
    fp8 = pv == "fp8"
    if fp8:
        amax = v.abs().amax(dim=1).float()  # (B, H, D)
        vs = torch.ones(b, h, bd, dtype=torch.float32, device=v.device)
        vs[..., :d] = (amax / 448.0).clamp(min=1e-12)
        out = torch.empty(b, h, bd, lkp, dtype=torch.float8_e4m3fn, device=v.device)
    else:
        vs = None
        out = torch.empty(b, h, lkp, bd, dtype=torch.float16, device=v.device)
    _prepare_v[(lkp // block, b * h)](
        v, vs if vs is not None else out, out, h, length, d, lkp, v.stride(0), v.stride(1), v.stride(2),
        BLOCK=block, BLOCK_D=bd, FP8=fp8, EXACT_ROUND=fp8 and interpreting(),
    )  # fmt: skip
    return out, vs


def smooth_k(k: torch.Tensor) -> torch.Tensor:
    """``k`` minus its mean over tokens (per batch, head and channel); attention is unchanged."""
    return k - k.float().mean(dim=1, keepdim=True).to(k.dtype)


def sage_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float | None = None,
    *,
    pv: str = "auto",
    config: tuple[int, int, int, int] | None = None,
    fast_i2f: bool = True,
    tma: bool | None = None,
) -> torch.Tensor:
    """8-bit attention of ``[B, L, H, D]`` tensors (any L, D <= 256); returns ``q``'s dtype and layout.

    :param pv: ``fp16``, ``fp8`` or ``auto`` (:func:`resolve_pv`).
    :param config: ``(BLOCK_M, BLOCK_N, num_warps, num_stages)``, fixed (no autotuning); default
        :func:`block_config` (on the GPU warps and stages autotuned unless ``FASTVIDEO_SAGE_CONFIG``).
    :param fast_i2f: convert the int32 logits to fp32 with an integer add and a float subtract (exact
        for head dims <= 256) instead of the quarter-rate conversion instruction; False for comparison.
    :param tma: load Q, K, V blocks through tensor descriptors (TMA on Hopper) instead of pointers;
        None: ``FASTVIDEO_SAGE_TMA=1`` or :data:`DEFAULT_TMA` (off until the sweep shows it pays and it
        is checked under ``torch.compile``).
    """
    if tma is None:
        tma = os.environ.get("FASTVIDEO_SAGE_TMA", "1" if DEFAULT_TMA else "0") not in ("", "0")
    b, lq, h, d = q.shape
    lk = k.shape[1]
    pv = resolve_pv(pv, q.device)
    fixed = config is not None or interpreting() or bool(os.environ.get("FASTVIDEO_SAGE_CONFIG"))
    block_m, block_n, warps, stages = config if config is not None else block_config()
    bd = _block_d(d)
    scale = d**-0.5 if scale is None else scale
    qq, qs = quantize_blocks_triton(q, block_m, scale * LOG2E, width=bd)
    k_mean = k.mean(dim=1, dtype=torch.float32)  # (B, H, D), no fp32 copy of k
    kq, ks = quantize_blocks_triton(k, block_n, mean=k_mean, width=bd)
    vp, vs = prepare_v(v, block_n, pv)
    out = torch.empty_like(q) if q.stride(-1) == 1 else torch.empty(q.shape, dtype=q.dtype, device=q.device)
    nbq, nbk = qs.shape[-1], ks.shape[-1]
    grid = (nbq, b * h)
    if tma:
        from triton.tools.tensor_descriptor import TensorDescriptor

        qd = TensorDescriptor.from_tensor(qq.view(-1, bd), [block_m, bd])
        kd = TensorDescriptor.from_tensor(kq.view(-1, bd), [block_n, bd])
        two_d = vp.view(-1, vp.shape[-1])
        vd = TensorDescriptor.from_tensor(two_d, [bd, block_n] if pv == "fp8" else [block_n, bd])
    args = (
        qd if tma else qq, kd if tma else kq, vd if tma else vp, out, qs, ks, vs if vs is not None else qs,
        h, lq, lk, nbq, nbk, d,
        out.stride(0), out.stride(1), out.stride(2),
    )  # fmt: skip
    blocks = {
        "BLOCK_M": block_m,
        "BLOCK_N": block_n,
        "BLOCK_D": bd,
        "PV_FP8": pv == "fp8",
        "EXACT_ROUND": pv == "fp8" and interpreting(),
        "FAST_I2F": bool(fast_i2f),
        "TMA": bool(tma),
    }
    if fixed:
        _sage_fwd[grid](*args, **blocks, num_warps=warps, num_stages=stages)
    else:
        _sage_fwd_tuned[grid](*args, **blocks)
    return out
