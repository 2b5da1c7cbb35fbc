"""Collectives used by the strategies, differentiable where training needs them.

Built on ``torch.distributed._functional_collectives`` (traceable by torch.compile, autograd-aware
in their ``*_autograd`` forms), on any backend: NCCL on GPUs, gloo on CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup


def ready(t: torch.Tensor) -> torch.Tensor:
    """``t`` as a plain tensor, waiting for the collective that produces it if it is still running.

    A functional collective returns an ``AsyncCollectiveTensor`` that waits when a PyTorch op reads
    it; views of it stay asynchronous. Triton kernels read raw pointers without going through
    PyTorch, so a result that may reach one (the gathered output of the last block, a batch-of-one
    Ulysses exchange that needs no copy) passes through here first. Under autograd the wrapper is
    what the graph holds and is kept (the fused kernels run without gradients)."""
    if isinstance(t, funcol.AsyncCollectiveTensor) and not t.requires_grad:
        return t.wait()
    return t


def all_to_all(x: torch.Tensor, group: ProcessGroup) -> torch.Tensor:
    """Exchange equal chunks of dim 0: chunk ``i`` of ``x`` (``x.shape[0] == group size``) goes to rank
    ``i``; chunk ``i`` of the result came from rank ``i``. Differentiable (its gradient is the same
    exchange). The result stays asynchronous until read (see :func:`ready`)."""
    flat = x.contiguous().flatten()
    if torch.is_grad_enabled() and x.requires_grad:
        out = funcol.all_to_all_single_autograd(flat, None, None, group)
    else:
        out = funcol.all_to_all_single(flat, None, None, group)
    return out.view(x.shape)


def all_gather(x: torch.Tensor, dim: int, group: ProcessGroup) -> torch.Tensor:
    """Concatenate every rank's ``x`` along ``dim`` in group-rank order (differentiable)."""
    grad = torch.is_grad_enabled() and x.requires_grad
    name = (
        "all_gather_single" if hasattr(funcol, "all_gather_single") else "all_gather_tensor"
    )  # torch < 2.12
    fn = getattr(funcol, f"{name}_autograd" if grad else name)
    out = fn(x.contiguous(), 0, group)  # (P * x.shape[0], ...)
    size = dist.get_world_size(group)
    return ready(out.view(size, *x.shape).movedim(0, dim).flatten(dim, dim + 1))


def seq_to_heads(tensors: Sequence[torch.Tensor], group: ProcessGroup) -> list[torch.Tensor]:
    """Ulysses forward exchange: ``(B, Lc, H, D)`` token shards -> ``(B, U*Lc, H/U, D)`` head shards.

    The tensors (q, k, v, ...) travel together in one collective; each is copied once, straight
    into the send layout.
    """
    b, lc, h, d = tensors[0].shape
    u = dist.get_world_size(group)
    send = tensors[0].new_empty(u, len(tensors), b, lc, h // u, d)  # chunk i: rank i's heads
    for i, t in enumerate(tensors):
        send[:, i].copy_(t.view(b, lc, u, h // u, d).permute(2, 0, 1, 3, 4))
    y = all_to_all(send, group)  # chunk i: tokens of rank i, our heads
    y = y.permute(1, 2, 0, 3, 4, 5).reshape(len(tensors), b, u * lc, h // u, d)
    return [ready(t) for t in y.unbind(0)]


def ulysses_attention(
    tensors: Sequence[torch.Tensor],
    group: ProcessGroup,
    attend: Callable[..., torch.Tensor],
    groups: Sequence[int] | None = None,
) -> torch.Tensor:
    """Ulysses attention from ``(B, Lc, H, D)`` token shards: ``(B, Lc, H, D)``, this rank's tokens.

    ``attend(*tensors)`` gets every token of some of this rank's ``H / U`` heads (``U``: the group
    size) and returns ``(B, U*Lc, heads, D)``. ``groups`` splits those heads into consecutive groups
    (their sizes, summing to ``H / U``; default: one group): the exchanges of all groups are issued at
    once and each group's attention starts as soon as its own exchange is in, so the exchanges of the
    later groups and the return trips of the earlier ones run while attention computes (collectives
    are asynchronous until their result is read). Only the first group's exchange and the last one's
    return trip have no attention to hide behind.
    """
    b, lc, h, d = tensors[0].shape
    u = dist.get_world_size(group)
    hp = h // u  # heads per rank
    groups = tuple(groups or (hp,))
    if sum(groups) != hp or min(groups) < 1:
        raise ValueError(f"head groups {groups} must be positive and sum to the {hp} heads per rank")
    starts = [sum(groups[:j]) for j in range(len(groups))]
    views = [t.view(b, lc, u, hp, d) for t in tensors]
    received = []
    for g, s in zip(groups, starts, strict=True):  # issue every group's exchange; read them one by one
        send = tensors[0].new_empty(u, len(tensors), b, lc, g, d)  # [i]: rank i's heads of this group
        for t_index, t in enumerate(views):
            send[:, t_index].copy_(t[:, :, :, s : s + g].permute(2, 0, 1, 3, 4))
        received.append(all_to_all(send, group))
    back = []
    for g, y in zip(groups, received, strict=True):  # y[i]: rank i's tokens of our heads of this group
        parts = y.permute(1, 2, 0, 3, 4, 5).reshape(len(tensors), b, u * lc, g, d).unbind(0)
        out = attend(*(ready(t) for t in parts))  # (B, U*Lc, g, D)
        back.append(all_to_all(out.reshape(b, u, lc, g, d).transpose(0, 1), group))
    result = tensors[0].new_empty(b, lc, u, hp, d)
    for g, s, y in zip(groups, starts, back, strict=True):  # y[i]: our tokens of rank i's heads of this group
        result[:, :, :, s : s + g].copy_(y.permute(1, 2, 0, 3, 4))
    return result.view(b, lc, h, d)


def heads_to_seq(x: torch.Tensor, group: ProcessGroup) -> torch.Tensor:
    """Ulysses backward exchange: ``(B, U*Lc, H/U, D)`` -> ``(B, Lc, H, D)``."""
    b, length, hh, d = x.shape
    u = dist.get_world_size(group)
    x = x.view(b, u, length // u, hh, d).transpose(0, 1)  # (U, B, Lc, H/U, D)
    y = all_to_all(x, group)  # chunk i: our tokens, heads of rank i
    return ready(y.permute(1, 2, 0, 3, 4).reshape(b, length // u, u * hh, d))


def padded_length(length: int, parts: int) -> int:
    """The smallest multiple of ``parts`` that is >= ``length``."""
    return -(-length // parts) * parts


def shard(x: torch.Tensor, dim: int, parts: int, index: int) -> torch.Tensor:
    """Zero-pad ``dim`` to a multiple of ``parts`` and return chunk ``index`` (contiguous)."""
    length = x.shape[dim]
    pad = padded_length(length, parts) - length
    if pad:
        shape = list(x.shape)
        shape[dim] = pad
        x = torch.cat([x, x.new_zeros(shape)], dim=dim)
    return x.chunk(parts, dim=dim)[index].contiguous()


def gather_unpad(x: torch.Tensor, dim: int, length: int, group: ProcessGroup) -> torch.Tensor:
    """Inverse of :func:`shard` over ``group``: all-gather along ``dim`` and drop the padding."""
    return all_gather(x, dim, group).narrow(dim, 0, length)
