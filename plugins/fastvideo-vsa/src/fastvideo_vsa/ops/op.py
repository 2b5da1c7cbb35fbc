"""``vsa_attention``: the public VSA op, a ``torch.library`` custom op with a Triton forward and backward.

Two custom ops, ``fastvideo_vsa::vsa_fwd`` and ``fastvideo_vsa::vsa_bwd``, each with a fake
(meta) implementation, tied together by ``register_autograd``: ``torch.compile`` traces around
them (no graph break) and autograd differentiates through them.
"""

import math
from typing import Optional

import torch

from fastvideo_vsa.ops import hopper
from fastvideo_vsa.ops.geometry import CubeGeometry, topk_for
from fastvideo_vsa.ops.pooling import coarse_backward, coarse_select, key_runs_length, pool
from fastvideo_vsa.ops.triton_bwd import fine_backward, prep_backward
from fastvideo_vsa.ops.triton_fwd import fine_forward, interpreting

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256


def _empty(like: torch.Tensor) -> torch.Tensor:
    return like.new_empty((0,), dtype=torch.float32)


@torch.library.custom_op("fastvideo_vsa::vsa_fwd", mutates_args=())
def vsa_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    gate: Optional[torch.Tensor],
    grid: list[int],
    topk: int,
    scale: float,
) -> tuple[
    torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
    torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
]:  # fmt: skip
    """``(out, lse, indices, qc, kc, vc, oc, runs, first, count)``; ``vc``/``oc`` are empty without a
    gate; the last three are the key plan (kept for the backward's dq pass).

    On Hopper (:func:`fastvideo_vsa.ops.hopper.enabled`) the pooling pass also writes cube-major
    copies of q, k and v, which the Gluon fine stage reads by TMA; elsewhere the Triton kernels
    gather from q, k, v directly."""
    geom = CubeGeometry(tuple(grid))
    has_gate = gate is not None
    tiles = None
    if hopper.enabled(q, topk):
        batch, _, heads, dim = q.shape
        tiles = q.new_empty((3, batch * heads * geom.num_cubes * 64, dim))
    qc, kc, vc = pool(q, k, v if has_gate or tiles is not None else None, geom, tiles=tiles, mean_v=has_gate)
    indices, oc, key_plan = coarse_select(qc, kc, vc, topk, scale, geom)
    if tiles is not None:
        out, lse = hopper.fine_forward(q, tuple(tiles), gate, oc, indices, geom, scale)
        del tiles
    else:
        out, lse = fine_forward(q, k, v, gate, oc, key_plan, geom, scale)
    vc_oc = (vc, oc) if has_gate else (_empty(q), _empty(q))
    return out, lse, indices, qc, kc, *vc_oc, *key_plan


@vsa_fwd.register_fake
def _(q, k, v, gate, grid, topk, scale):
    batch, length, heads, dim = q.shape
    cubes = CubeGeometry(tuple(grid)).num_cubes
    coarse = (batch, heads, cubes, dim)
    f32 = torch.float32
    if gate is not None:
        vc_oc = (q.new_empty(coarse, dtype=f32), q.new_empty(coarse, dtype=f32))
    else:
        vc_oc = (_empty(q), _empty(q))
    segments = batch * heads * cubes
    plan = (
        q.new_empty((key_runs_length(CubeGeometry(tuple(grid)), segments, topk),), dtype=torch.int32),
        q.new_empty((segments,), dtype=torch.int64),
        q.new_empty((segments,), dtype=torch.int32),
    )
    return (
        q.new_empty(q.shape),
        q.new_empty((batch, heads, length), dtype=f32),
        q.new_empty((batch, heads, cubes, topk), dtype=torch.int32),
        q.new_empty(coarse, dtype=f32),
        q.new_empty(coarse, dtype=f32),
        *vc_oc,
        *plan,
    )


@torch.library.custom_op("fastvideo_vsa::vsa_bwd", mutates_args=())
def vsa_bwd(
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    gate: Optional[torch.Tensor],
    out: torch.Tensor,
    lse: torch.Tensor,
    indices: torch.Tensor,
    qc: torch.Tensor,
    kc: torch.Tensor,
    vc: torch.Tensor,
    oc: torch.Tensor,
    runs: torch.Tensor,
    first: torch.Tensor,
    count: torch.Tensor,
    grid: list[int],
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dq, dk, dv, dgate)``; ``dgate`` is empty without a gate."""
    geom = CubeGeometry(tuple(grid))
    has_gate = gate is not None
    dout = dout.contiguous()
    delta, dgate, doc = prep_backward(out, dout, gate, oc if has_gate else None, geom)
    coarse = coarse_backward(qc, kc, vc, doc, scale) if has_gate else None
    key_plan = (runs, first, count)
    dq, dk, dv = fine_backward(q, k, v, dout, lse, delta, indices, geom, scale, coarse, key_plan)
    return dq, dk, dv, dgate if dgate is not None else _empty(q)


@vsa_bwd.register_fake
def _(dout, q, k, v, gate, out, lse, indices, qc, kc, vc, oc, runs, first, count, grid, scale):
    dgate = gate.new_empty(gate.shape) if gate is not None else _empty(q)
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), dgate


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, gate, grid, _, scale = inputs
    out, lse, indices, qc, kc, vc, oc, runs, first, count = output
    ctx.save_for_backward(q, k, v, gate, out, lse, indices, qc, kc, vc, oc, runs, first, count)
    ctx.grid, ctx.scale = grid, scale
    ctx.mark_non_differentiable(lse, indices, qc, kc, vc, oc, runs, first, count)


def _backward(ctx, dout, *_):
    q, k, v, gate, out, lse, indices, qc, kc, vc, oc, runs, first, count = ctx.saved_tensors
    dq, dk, dv, dgate = vsa_bwd(
        dout, q, k, v, gate, out, lse, indices, qc, kc, vc, oc, runs, first, count, ctx.grid, ctx.scale
    )
    return dq, dk, dv, dgate if gate is not None else None, None, None, None


vsa_fwd.register_autograd(_backward, setup_context=_setup_context)


def _check(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gate: torch.Tensor | None, geom: CubeGeometry
) -> None:
    if q.ndim != 4:
        raise ValueError(f"q must be [B, L, H, D], got shape {tuple(q.shape)}")
    for name, x in (("k", k), ("v", v), ("gate", gate)):
        if x is not None and (x.shape != q.shape or x.dtype != q.dtype or x.device != q.device):
            raise ValueError(
                f"{name} must match q: q is {tuple(q.shape)} {q.dtype} on {q.device}, "
                f"{name} is {tuple(x.shape)} {x.dtype} on {x.device}"
            )
    if q.shape[1] != geom.num_tokens:
        raise ValueError(
            f"q has {q.shape[1]} tokens but grid {geom.grid} holds {geom.num_tokens}: VSA needs exactly "
            "the video tokens, in raster (t, h, w) order"
        )
    if q.dtype not in _DTYPES:
        raise ValueError(f"vsa_attention takes fp16, bf16 or fp32, got {q.dtype}")
    if not 1 <= q.shape[-1] <= MAX_HEAD_DIM:
        raise ValueError(f"head dim must be in [1, {MAX_HEAD_DIM}], got {q.shape[-1]}")
    if not (q.is_cuda or (q.device.type == "cpu" and interpreting())):
        raise ValueError(
            f"vsa_attention runs on CUDA tensors (or on CPU under TRITON_INTERPRET=1), got {q.device}"
        )


def _inner_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def vsa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    grid: tuple[int, int, int],
    *,
    sparsity: float | None = None,
    topk: int | None = None,
    gate: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Video sparse attention (VSA) over the 4x4x4 cubes of a token grid; differentiable.

    ``out = fine + gate * coarse``: the coarse stage attends between mean-pooled cubes, every
    query cube keeps the ``topk`` key cubes it scores highest, and the fine stage is exact
    attention over the tokens of those cubes. :mod:`fastvideo_vsa.ops.reference` defines it.

    :param q, k, v: ``[B, L, H, D]`` (fp16, bf16 or fp32; CUDA, or CPU under
        ``TRITON_INTERPRET=1``), the ``L = T*Hg*W`` tokens in raster order over ``grid``.
    :param grid: the token grid ``(T, Hg, W)``; any sizes (partial cubes are masked).
    :param sparsity: fraction of key cubes dropped, in [0, 1): ``topk = ceil((1 - s) * C)``;
        0 keeps every cube (dense attention plus the gated coarse term). Or give ``topk``.
    :param gate: ``[B, L, H, D]`` weight of the coarse output (``None`` = zero).
    :param scale: softmax scale, ``D ** -0.5`` by default.
    :returns: ``[B, L, H, D]`` in q's dtype.
    :raises ValueError: mismatched shapes, dtypes or devices, ``L != T*Hg*W``, or a sparsity
        outside [0, 1).

    Example::

        q, k, v = (torch.randn(1, 21 * 30 * 52, 12, 128, device="cuda", dtype=torch.bfloat16)
                   for _ in range(3))
        out = vsa_attention(q, k, v, (21, 30, 52), sparsity=0.875)   # [1, 32760, 12, 128]
    """
    geom = CubeGeometry(grid)
    _check(q, k, v, gate, geom)
    if (sparsity is None) == (topk is None):
        raise ValueError("give exactly one of sparsity and topk")
    if topk is None:
        topk = topk_for(sparsity, geom.num_cubes)  # type: ignore[arg-type]
    if not 1 <= topk <= geom.num_cubes:
        raise ValueError(f"topk must be in [1, {geom.num_cubes}] (the number of cubes), got {topk}")
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    q, k, v = (_inner_contiguous(x) for x in (q, k, v))
    gate = _inner_contiguous(gate) if gate is not None else None
    return vsa_fwd(q, k, v, gate, list(geom.grid), topk, scale)[0]


def vsa_select(
    q: torch.Tensor, k: torch.Tensor, grid: tuple[int, int, int], topk: int, scale: float | None = None
) -> torch.Tensor:
    """The key cubes each query cube keeps, as the op selects them: ``[B, H, C, topk]`` int32."""
    geom = CubeGeometry(grid)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    qc, kc, _ = pool(_inner_contiguous(q), _inner_contiguous(k), None, geom)
    return coarse_select(qc, kc, None, topk, scale, geom)[0]
