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

#: Which fused kernel returned a usable log-sum-exp, per (device type, dtype); filled on first use.
_KERNELS: dict[tuple[str, torch.dtype], str] = {}
_CUDA_ORDER = ("cudnn", "flash", "efficient", "math")


def _math(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, mask: torch.Tensor | None):
    s = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale  # (B, H, Lq, Lk)
    if mask is not None:
        s = s.masked_fill(~mask[:, None, None, :], float("-inf"))
    lse = torch.logsumexp(s, dim=-1)  # (B, H, Lq)
    return torch.matmul(torch.softmax(s, dim=-1), v.float()).to(q.dtype), lse


def _kernel(name: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, mask: torch.Tensor | None):
    aten = torch.ops.aten
    bias = None
    if mask is not None:
        if name in ("flash", "cpu", "cudnn"):
            raise RuntimeError("kernel takes no mask")
        bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(~mask, float("-inf"))
        bias = bias[:, None, None, :].expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    if name == "cpu":
        return aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, False, scale=scale)[:2]
    if name == "cudnn":
        return aten._scaled_dot_product_cudnn_attention(q, k, v, None, True, 0.0, False, False, scale=scale)[:2]
    if name == "flash":
        return aten._scaled_dot_product_flash_attention(q, k, v, 0.0, False, False, scale=scale)[:2]
    if name == "efficient":
        return aten._scaled_dot_product_efficient_attention(q, k, v, bias, True, 0.0, False, scale=scale)[:2]
    return _math(q, k, v, scale, mask)


def attention_lse(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, key_mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention on ``[B, H, L, D]`` with its log-sum-exp: ``(out [B, H, Lq, D], lse [B, H, Lq] fp32)``.

    Uses torch's fused SDPA kernels that return the log-sum-exp (cuDNN, flash, memory-efficient on
    CUDA; the flash CPU kernel on CPU) and falls back to plain math. ``key_mask`` ``[B, Lk]`` is
    boolean (True = attend).
    """
    b, h, lq, _ = q.shape
    key = (q.device.type, q.dtype)
    if q.device.type == "cpu":
        names: Sequence[str] = ("math",) if key_mask is not None else ("cpu",)
    else:
        names = (_KERNELS[key],) if key in _KERNELS and key_mask is None else _CUDA_ORDER
    for name in names:
        try:
            out, lse = _kernel(name, q, k, v, scale, key_mask)
        except (RuntimeError, NotImplementedError):
            if name == "math":
                raise
            continue
        if out.shape != q.shape[:-1] + v.shape[-1:] or lse.numel() < b * h * lq:
            continue
        if key_mask is None and q.device.type == "cuda":
            _KERNELS[key] = name
        return out, lse.reshape(b, h, -1)[..., :lq].float()
    raise RuntimeError("no attention kernel returned a log-sum-exp")  # unreachable: math always does


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
        self.out = self.out * torch.exp(self.lse - new).unsqueeze(-1) + out * torch.exp(lse - new).unsqueeze(-1)
        self.lse = new


def _exchange(send: torch.Tensor, recv: torch.Tensor, group: ProcessGroup, nxt: int, prv: int) -> list:
    ops = [dist.P2POp(dist.isend, send, nxt, group), dist.P2POp(dist.irecv, recv, prv, group)]
    return dist.batch_isend_irecv(ops)


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
