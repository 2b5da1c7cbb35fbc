"""A fused Triton kernel for FP8 linears: per-row dynamic quantization of an activation.

``x`` (M, K) in bf16 / fp16 / fp32 -> ``(float8_e4m3fn (M, K), fp32 scales (M, 1))`` with
``x ~= q * scale`` per row, ``scale = max(amax(|row|) / 448, 1e-12)``, in one read of ``x`` and one
write of ``q`` (PyTorch ops take five or six passes: cast, abs, amax, divide, clamp, cast). A row that
fits ``ONE_PASS_MAX`` elements is held in registers (one read); a longer one is read twice, the second
time mostly from L2. Its outputs are what ``torch._scaled_mm`` takes with row-wise scaling.

Rounding: the GPU converts fp32 -> e4m3 to the nearest value, ties to even (as ``tensor.to(float8)``
does). Triton's CPU interpreter does not (it truncates where rounding up reaches the next power of
two, e.g. -31.7 -> -16, and flushes e4m3 subnormals, below 2**-6, to zero), so under
``TRITON_INTERPRET=1`` the kernel first rounds to the e4m3 grid in fp32 (``EXACT_ROUND``) and the cast
is then exact; tests compare with PyTorch's values exactly, subnormals aside.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

FP8_MAX = 448.0
#: Rows of at most this many elements are quantized from registers, in one read.
ONE_PASS_MAX = 16384


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@triton.jit
def _to_e4m3(y, EXACT_ROUND: tl.constexpr):
    """``y`` (fp32, within +-448) as float8_e4m3fn, rounded to nearest, ties to even."""
    if EXACT_ROUND:  # the interpreter: round on the e4m3 grid in fp32 first (fp32 adds round to even)
        bits = y.to(tl.int32, bitcast=True)
        exponent = tl.maximum(((bits >> 23) & 0xFF) - 127, -6)  # e4m3 subnormals share 2**-6's step
        step = ((exponent - 3 + 127) << 23).to(tl.float32, bitcast=True)  # 3 mantissa bits
        magic = step * 12582912.0  # 1.5 * 2**23 steps: y + magic has no bits below one step
        y = (y + magic) - magic
    return y.to(tl.float8e4nv)


@triton.jit
def _gelu_tanh(x):
    """GELU, tanh approximation, in fp32: ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``, with
    ``tanh(u) = 1 - 2 / (exp(2u) + 1)``, ``u`` clamped to +-40 (where fp32 tanh is already +-1; exp
    stays finite)."""
    u = 0.7978845608028654 * (x + 0.044715 * x * x * x)
    u = tl.minimum(tl.maximum(u, -40.0), 40.0)
    return 0.5 * x * (2.0 - 2.0 / (tl.exp(2.0 * u) + 1.0))


@triton.jit
def _load_rows(ptrs, mask, GELU: tl.constexpr):
    x = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
    if GELU:
        x = _gelu_tanh(x)
    return x


@triton.jit
def _quantize_rows_fwd(
    X,
    Q,
    S,  # (M, K) strided rows, float8_e4m3fn (M, K) contiguous, fp32 (M,)
    M,
    K,
    stride_xm,
    ROWS: tl.constexpr,
    BLOCK_K: tl.constexpr,
    ONE_PASS: tl.constexpr,
    EXACT_ROUND: tl.constexpr,
    GELU: tl.constexpr,
):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    row_ok = rows < M
    x_rows = X + rows[:, None].to(tl.int64) * stride_xm
    q_rows = Q + rows[:, None].to(tl.int64) * K
    cols = tl.arange(0, BLOCK_K)
    if ONE_PASS:
        mask = row_ok[:, None] & (cols < K)[None, :]
        x = _load_rows(x_rows + cols[None, :], mask, GELU)
        scale = tl.maximum(tl.max(tl.abs(x), 1) / 448.0, 1e-12)  # (ROWS,)
        y = tl.minimum(tl.maximum(x / scale[:, None], -448.0), 448.0)
        tl.store(q_rows + cols[None, :], _to_e4m3(y, EXACT_ROUND), mask=mask)
    else:
        amax = tl.zeros([ROWS], tl.float32)
        for start in range(0, K, BLOCK_K):
            c = start + cols
            mask = row_ok[:, None] & (c < K)[None, :]
            x = _load_rows(x_rows + c[None, :], mask, GELU)
            amax = tl.maximum(amax, tl.max(tl.abs(x), 1))
        scale = tl.maximum(amax / 448.0, 1e-12)
        for start in range(0, K, BLOCK_K):
            c = start + cols
            mask = row_ok[:, None] & (c < K)[None, :]
            x = _load_rows(x_rows + c[None, :], mask, GELU)
            y = tl.minimum(tl.maximum(x / scale[:, None], -448.0), 448.0)
            tl.store(q_rows + c[None, :], _to_e4m3(y, EXACT_ROUND), mask=mask)
    tl.store(S + rows, scale, mask=row_ok)


def launch_config(k: int) -> tuple[int, int, bool, int]:
    """``(ROWS, BLOCK_K, ONE_PASS, num_warps)`` for rows of ``k`` elements: about 8-16 K elements per
    program (enough bytes in flight per SM), whole rows in registers when they fit."""
    width = triton.next_power_of_2(k)
    if width <= ONE_PASS_MAX:
        rows = max(1, min(16, 8192 // width))
        return rows, width, True, 8 if rows * width >= 8192 else 4
    return 1, 4096, False, 8


def quantize_rows_triton(x: torch.Tensor, gelu: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` (M, K) (last dim contiguous) -> ``(float8_e4m3fn (M, K), fp32 (M, 1))``, one fused pass;
    ``gelu``: of ``GELU(x)`` (tanh approximation, computed in fp32 as the rows are read), the
    feed-forward's activation fused into the quantization of its second linear's input."""
    if x.dim() != 2:
        raise ValueError(
            f"quantize_rows_triton takes a 2-D (rows, features) tensor, got shape {tuple(x.shape)}"
        )
    if x.stride(-1) != 1:
        x = x.contiguous()
    m, k = x.shape
    q = torch.empty(m, k, dtype=torch.float8_e4m3fn, device=x.device)
    scale = torch.empty(m, 1, dtype=torch.float32, device=x.device)
    if m == 0:
        return q, scale
    rows, block_k, one_pass, warps = launch_config(k)
    _quantize_rows_fwd[(triton.cdiv(m, rows),)](
        x,
        q,
        scale,
        m,
        k,
        x.stride(0),
        ROWS=rows,
        BLOCK_K=block_k,
        ONE_PASS=one_pass,
        EXACT_ROUND=interpreting(),
        GELU=gelu,
        num_warps=warps,
    )
    return q, scale
