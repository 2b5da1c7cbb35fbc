"""Weights read after sharding: a DiT left on ``meta`` is filled once FSDP2 has split it, each rank
reading only its own slice of each tensor.

Loading a DiT for a sharded training run the plain way puts the whole model in every process's CPU
memory before FSDP2 keeps ``1 / N`` of it: a 14B DiT in fp32 is 56 GB a process, and a distillation
holds three such models (168 GB a process, 1.3 TB for 8 ranks on one host). Deferred, the model is
built on ``meta`` with its parameters already in their final dtypes, the checkpoint it came from is
attached (:func:`defer`), the run wraps and shards it, and :func:`fill` then allocates each rank's
shards on its device and copies into them from the safetensors one tensor at a time: a process never
holds more than one full tensor, and the values are those of a plain load.

A model built on ``meta`` with no checkpoint (random weights: benchmarks) is deferred with
``ckpt=None`` and filled by its ``init_weights``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

    from fastvideo.loader.checkpoint import DiffusersCheckpoint

_ATTR = "_fv_pending_weights"


@dataclass(frozen=True)
class PendingWeights:
    """Where a ``meta`` model's values come from: ``ckpt`` (our names), or ``init_weights`` if None."""

    ckpt: DiffusersCheckpoint | None
    zero_init: tuple[str, ...] = ()


def defer(
    model: nn.Module,
    ckpt: DiffusersCheckpoint | None,
    *,
    dtype: torch.dtype | None = None,
    keep_fp32: Callable[[str], bool] | None = None,
    zero_init: Iterable[str] = (),
) -> nn.Module:
    """Leave ``model`` (built on ``meta``) unfilled until :func:`fill`, its parameters cast to their
    final dtypes now (``dtype``; fp32 where ``keep_fp32`` says so) so that sharding sees them.

    :raises CheckpointError: ``ckpt`` does not match the model (as a plain load would say, now).
    :raises ValueError: a parameter or buffer of ``model`` is not on ``meta``.
    """
    import torch

    state = model.state_dict(keep_vars=True)
    real = [name for name, t in state.items() if t.device.type != "meta"]
    if real:
        raise ValueError(
            f"{type(model).__name__}: deferred loading needs a model built on meta; {real[0]!r} is on "
            f"{state[real[0]].device}"
        )
    zeros = tuple(zero_init)
    if ckpt is not None:
        ckpt.check_against({k: tuple(v.shape) for k, v in state.items() if k not in zeros})
    if dtype is not None:
        for name, param in model.named_parameters():
            if param.is_floating_point():
                target = torch.float32 if keep_fp32 is not None and keep_fp32(name) else dtype
                param.data = param.data.to(target)
    setattr(model, _ATTR, PendingWeights(ckpt, zeros))
    return model


def pending(model: nn.Module) -> PendingWeights | None:
    """What :func:`fill` would read into ``model``, or None when it holds its values already."""
    return getattr(model, _ATTR, None)


def fill(model: nn.Module, device: torch.device | str) -> nn.Module:
    """Allocate ``model``'s (possibly sharded) parameters on ``device`` and fill them as deferred.

    Under FSDP2 the parameters are DTensors: each rank copies the slice its placements select out of
    the full tensor read from the file, and nothing is communicated.

    :raises ValueError: ``model`` was not deferred.
    :raises CheckpointError: unreadable data (as a plain load).
    """
    import torch

    todo = pending(model)
    if todo is None:
        raise ValueError(f"{type(model).__name__} has no deferred weights to fill")
    delattr(model, _ATTR)
    model.to_empty(device=device)
    if todo.ckpt is None:
        init = getattr(model, "init_weights", None)
        if init is None:
            raise ValueError(f"{type(model).__name__} has no init_weights() to fill its random weights")
        init()
        return model
    targets = model.state_dict(keep_vars=True)
    with torch.no_grad():
        for name, tensor in todo.ckpt.tensors(device="cpu", names=set(targets) - set(todo.zero_init)):
            _copy_into(targets[name], tensor)
        for name in todo.zero_init:
            _local(targets[name]).zero_()
    return model


def _local(t: Any) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def _copy_into(target: Any, full: torch.Tensor) -> None:
    """Copy ``full`` (or, for a DTensor ``target``, this rank's slice of it) into ``target``."""
    local = _local(target)
    if local is not target:
        full = _shard_of(full, target.device_mesh, target.placements)
    local.copy_(full.to(dtype=local.dtype))


def _shard_of(full: torch.Tensor, mesh: Any, placements: Any) -> torch.Tensor:
    """This rank's piece of ``full`` under ``placements`` (``Shard(d)``: ``torch.chunk`` along ``d``,
    as DTensor and FSDP2 split; ``Replicate``: all of it)."""
    from torch.distributed.tensor import Replicate, Shard

    coordinate = mesh.get_coordinate()
    piece = full
    for mesh_dim, placement in enumerate(placements):
        if isinstance(placement, Replicate):
            continue
        if not isinstance(placement, Shard):
            raise ValueError(f"deferred loading splits Shard and Replicate placements, not {placement}")
        chunks = piece.chunk(mesh.size(mesh_dim), dim=placement.dim)
        index = coordinate[mesh_dim]
        if index < len(chunks):
            piece = chunks[index]
        else:  # more ranks than rows: this rank's shard is empty
            piece = piece.narrow(placement.dim, 0, 0)
    return piece
