"""Ring attention: keys and values travel around the ring group while each rank keeps its queries.

Each rank holds one block of the (padded) token sequence. In ``R`` steps every rank attends its
queries to every block of keys/values, receiving the next block from its predecessor while it
computes on the current one, and merges the partial results exactly with their log-sum-exp:

    lse = logaddexp(lse_a, lse_b)
    out = out_a * exp(lse_a - lse) + out_b * exp(lse_b - lse)

which is softmax attention over the union of the key sets. Padded keys are cut off each block
before use (a block's valid length is known from its origin), so any token count works.

Replicated tokens (text in joint-attention models, held whole by every rank) join as one more key
block for the local queries; their own queries attend to every block as it passes by, so every rank
ends with the same, complete replicated output. Forward only (inference): no backward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

#: The fused kernels that passed the probe, best first, per (device type, dtype, head dim).
_KERNELS: dict[tuple[str, torch.dtype, int], tuple[str, ...]] = {}
_CUDA_ORDER = ("cudnn", "flash", "efficient")


def _math(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, mask: torch.Tensor | None):
    s = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale  # (B, H, Lq, Lk)
    if mask is not None:
        s = s.masked_fill(~mask[:, None, None, :], float("-inf"))
    lse = torch.logsumexp(s, dim=-1)  # (B, H, Lq)
    return torch.matmul(torch.softmax(s, dim=-1), v.float()).to(q.dtype), lse


def _kernel(
    name: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One attention call through kernel ``name``: ``(out [B, H, Lq, D], lse [B, H, Lq] fp32)``."""
    aten = torch.ops.aten
    b, h, lq, _ = q.shape
    if name == "math":
        return _math(q, k, v, scale, mask)
    if name == "cpu":
        out, lse = aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, False, scale=scale)[:2]
    elif name == "cudnn":
        out, lse = aten._scaled_dot_product_cudnn_attention(
            q, k, v, None, True, 0.0, False, False, scale=scale
        )[:2]
    elif name == "flash":
        out, lse = aten._scaled_dot_product_flash_attention(q, k, v, 0.0, False, False, scale=scale)[:2]
    else:
        out, lse = aten._scaled_dot_product_efficient_attention(q, k, v, None, True, 0.0, False, scale=scale)[
            :2
        ]
    if out.shape != q.shape[:-1] + v.shape[-1:] or lse.numel() < b * h * lq:
        raise RuntimeError(f"{name} returned out {tuple(out.shape)}, lse {tuple(lse.shape)}")
    return out, lse.reshape(b, h, -1)[..., :lq].float()  # lse may be (B, H, Lq, 1) or padded


def _probe(name: str, device: torch.device, dtype: torch.dtype, head_dim: int) -> bool:
    """Whether kernel ``name`` runs here and agrees with plain math on a small problem."""
    gen = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(1, 2, 96, head_dim, device=device, dtype=dtype, generator=gen) for _ in range(3))
    try:
        out, lse = _kernel(name, q, k, v, head_dim**-0.5, None)
    except (RuntimeError, NotImplementedError, TypeError):
        return False
    ref_out, ref_lse = _math(q, k, v, head_dim**-0.5, None)
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    return bool((lse - ref_lse).abs().max() < tol * 10) and bool(
        (out.float() - ref_out.float()).abs().max() < tol
    )


def _fused(device: torch.device, dtype: torch.dtype, head_dim: int) -> tuple[str, ...]:
    key = (device.type, dtype, head_dim)
    if key not in _KERNELS:
        order = ("cpu",) if device.type == "cpu" else _CUDA_ORDER
        _KERNELS[key] = tuple(n for n in order if _probe(n, device, dtype, head_dim))
    return _KERNELS[key]


def attention_lse(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, key_mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention on ``[B, H, L, D]`` with its log-sum-exp: ``(out [B, H, Lq, D], lse [B, H, Lq] fp32)``.

    Uses torch's fused SDPA kernels that return the log-sum-exp (cuDNN, flash, memory-efficient on
    CUDA; the flash kernel on CPU), each checked once against plain math on a small problem, and
    plain math otherwise. ``key_mask`` ``[B, Lk]`` is boolean (True = attend); masked calls (a few
    replicated tokens) use plain math.
    """
    if key_mask is None:
        for name in _fused(q.device, q.dtype, q.shape[-1]):
            try:
                return _kernel(name, q, k, v, scale, None)
            except (RuntimeError, NotImplementedError):  # e.g. a layout this kernel refuses
                continue
    return _kernel("math", q, k, v, scale, key_mask)


class _Partial:
    """A running softmax-attention result merged block by block (fp32)."""

    def __init__(self) -> None:
        self.out: torch.Tensor | None = None
        self.lse: torch.Tensor | None = None

    def add(self, out: torch.Tensor, lse: torch.Tensor) -> None:
        out = out.float()
        if self.out is None or self.lse is None:
            self.out, self.lse = out, lse
            return
        new = torch.logaddexp(self.lse, lse)  # (B, H, L)
        self.out = self.out * torch.exp(self.lse - new).unsqueeze(-1) + out * torch.exp(lse - new).unsqueeze(
            -1
        )
        self.lse = new


def _exchange(send: torch.Tensor, recv: torch.Tensor, group: ProcessGroup, nxt: int, prv: int) -> list:
    ops = [dist.P2POp(dist.isend, send, nxt, group), dist.P2POp(dist.irecv, recv, prv, group)]
    return dist.batch_isend_irecv(ops)


@torch.compiler.disable  # point-to-point ops: eager
def ring_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    group: ProcessGroup,
    valid: Sequence[int],
    scale: float | None = None,
    replicated: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    replicated_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attention of this rank's query block to the keys/values of every rank of ``group``.

    :param q: ``[B, Lb, H, D]`` this rank's block (``k``, ``v`` alike; same ``Lb`` on every rank).
    :param valid: real (unpadded) tokens of each rank's block, by ring rank.
    :param replicated: ``(q, k, v)`` ``[B, Lt, H, D]`` held whole by every rank, or None.
    :param replicated_mask: ``[B, Lt]`` boolean key mask of the replicated tokens (True = attend).
    :returns: ``([B, Lb, H, D], [B, Lt, H, D] or None)`` in ``q``'s dtype.
    """
    size, me = dist.get_world_size(group), dist.get_rank(group)
    nxt, prv = dist.get_global_rank(group, (me + 1) % size), dist.get_global_rank(group, (me - 1) % size)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    qh = q.transpose(1, 2)  # (B, H, Lb, D)
    kv = torch.stack((k, v)).transpose(2, 3).contiguous()  # (2, B, H, Lb, D)
    spare = torch.empty_like(kv)
    mine, theirs = _Partial(), _Partial()
    rq = replicated[0].transpose(1, 2) if replicated is not None else None
    for step in range(size):
        reqs = _exchange(kv, spare, group, nxt, prv) if step < size - 1 else []
        n = valid[(me - step) % size]
        if n > 0:
            kb, vb = (kv[i, :, :, :n] if n == kv.shape[3] else kv[i, :, :, :n].contiguous() for i in (0, 1))
            mine.add(*attention_lse(qh, kb, vb, scale))
            if rq is not None:
                theirs.add(*attention_lse(rq, kb, vb, scale))
        for req in reqs:
            req.wait()
        kv, spare = spare, kv
    if replicated is not None and rq is not None:
        rk, rv = (t.transpose(1, 2) for t in replicated[1:])
        mine.add(*attention_lse(qh, rk, rv, scale, replicated_mask))
        theirs.add(*attention_lse(rq, rk, rv, scale, replicated_mask))
    assert mine.out is not None
    out = mine.out.to(q.dtype).transpose(1, 2)  # (B, Lb, H, D)
    rep_out = theirs.out.to(q.dtype).transpose(1, 2) if theirs.out is not None else None
    return out, rep_out
