"""The coarse stage: fused cube pooling (Triton), cube attention and top-k selection (torch).

Pooling reads ``q``, ``k`` (and ``v`` when a gate needs the coarse output) once, in raster order,
and writes fp32 cube means ``[B, H, C, D]``: one program per (cube, batch x head). The cube-level
attention is ``C x C`` per head (624 x 624 for 81x480x832 Wan), small enough for torch's batched
matmul in fp32, which also makes the selection exact; ``torch.topk`` picks the key cubes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastvideo_vsa.ops.geometry import CubeGeometry
from fastvideo_vsa.ops.triton_fwd import cube_count, cube_tokens, d_pad, geometry_args, launch

# --------------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------------

POOL_CONFIGS = [triton.Config({}, num_warps=w) for w in (2, 4)]

# --------------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------------


@triton.jit
def _pool_one(X, XC, b, h, bh, cube, rows, dd, dmask, valid, tok, count, sb, sl, sh, C, D: tl.constexpr):
    x = tl.load(
        X + b * sb + h * sh + tok[:, None] * sl + dd[None, :], mask=valid[:, None] & dmask[None, :], other=0.0
    )
    mean = tl.sum(x.to(tl.float32), 0) / count  # (D,)
    tl.store(XC + (bh.to(tl.int64) * C + cube) * D + dd, mean, mask=dmask)


@triton.jit
def _pool_kernel(
    Q, K, V, QC, KC, VC,
    sqb, sql, sqh, skb, skl, skh, svb, svl, svh,
    H, T, HG, W, NCH, NCW, L, C,
    D: tl.constexpr,
    D_PAD: tl.constexpr,
    POOL_V: tl.constexpr,
):  # fmt: skip
    cube = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = bh % H
    rows = tl.arange(0, 64)
    dd = tl.arange(0, D_PAD)
    dmask = dd < D
    tok, valid = cube_tokens(cube, rows, T, HG, W, NCH, NCW)
    count = cube_count(cube, T, HG, W, NCH, NCW).to(tl.float32)
    _pool_one(Q, QC, b, h, bh, cube, rows, dd, dmask, valid, tok, count, sqb, sql, sqh, C, D)
    _pool_one(K, KC, b, h, bh, cube, rows, dd, dmask, valid, tok, count, skb, skl, skh, C, D)
    if POOL_V:
        _pool_one(V, VC, b, h, bh, cube, rows, dd, dmask, valid, tok, count, svb, svl, svh, C, D)


_pool_tuned = triton.autotune(POOL_CONFIGS, key=["D_PAD", "POOL_V"])(_pool_kernel)

# --------------------------------------------------------------------------------------------------
# Launchers and the torch part
# --------------------------------------------------------------------------------------------------


def pool(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor | None, geom: CubeGeometry
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """fp32 cube means ``[B, H, C, D]`` of ``q``, ``k`` and (when given) ``v``."""
    batch, _, heads, dim = q.shape
    shape = (batch, heads, geom.num_cubes, dim)
    qc = q.new_empty(shape, dtype=torch.float32)
    kc = q.new_empty(shape, dtype=torch.float32)
    vc = q.new_empty(shape, dtype=torch.float32) if v is not None else None
    vv = v if v is not None else k
    args = (
        q, k, vv, qc, kc, vc if vc is not None else kc,
        *q.stride()[:3], *k.stride()[:3], *vv.stride()[:3],
        heads, *geometry_args(geom),
    )  # fmt: skip
    meta = dict(D=dim, D_PAD=d_pad(dim), POOL_V=v is not None)
    launch(_pool_kernel, _pool_tuned, (geom.num_cubes, batch * heads), args, meta, None, {"num_warps": 4})
    return qc, kc, vc


def coarse_select(
    qc: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor | None, topk: int, scale: float
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Selected key cubes ``[B, H, C, topk]`` int32 (ascending) and, with ``vc``, the coarse
    output ``softmax(qc kc^T * scale) vc`` ``[B, H, C, D]`` fp32."""
    scores = torch.matmul(qc, kc.transpose(-1, -2)) * scale  # (B, H, C, C) fp32
    num_cubes = scores.shape[-1]
    if topk >= num_cubes:
        idx = torch.arange(num_cubes, device=qc.device, dtype=torch.int32).expand(scores.shape).contiguous()
    else:
        idx = torch.topk(scores, topk, dim=-1, sorted=False).indices.sort(dim=-1).values.to(torch.int32)
    oc = torch.matmul(torch.softmax(scores, dim=-1), vc) if vc is not None else None
    return idx, oc


def coarse_backward(
    qc: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor, doc: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of the cube means ``(dqc, dkc, dvc)`` from that of the coarse output (fp32)."""
    probs = torch.softmax(torch.matmul(qc, kc.transpose(-1, -2)) * scale, dim=-1)  # (B, H, C, C)
    dvc = torch.matmul(probs.transpose(-1, -2), doc)
    dprobs = torch.matmul(doc, vc.transpose(-1, -2))
    dscores = probs * (dprobs - (dprobs * probs).sum(-1, keepdim=True)) * scale
    return torch.matmul(dscores, kc), torch.matmul(dscores.transpose(-1, -2), qc), dvc


def transpose_selection(indices: torch.Tensor, num_cubes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each key cube, the query cubes that selected it: ``(lists [B, H, C, C], counts [B, H, C])``.

    Row ``j`` of ``lists`` starts with the ``counts[j]`` selecting query cubes, ascending; both int32.
    """
    shape = (*indices.shape[:2], num_cubes, num_cubes)
    chosen = torch.zeros(shape, dtype=torch.bool, device=indices.device)
    chosen.scatter_(-1, indices.long(), True)  # (B, H, Cq, Ck)
    by_key = chosen.transpose(-1, -2)  # (B, H, Ck, Cq)
    counts = by_key.sum(-1, dtype=torch.int32)
    slot = torch.where(by_key, by_key.cumsum(-1) - 1, num_cubes)  # overflow column for the unselected
    lists = torch.zeros((*shape[:3], num_cubes + 1), dtype=torch.int32, device=indices.device)
    src = torch.arange(num_cubes, dtype=torch.int32, device=indices.device).expand(shape)
    lists.scatter_(-1, slot, src)
    return lists[..., :num_cubes].contiguous(), counts
