"""Exponential moving average of the trainable weights, in fp32, sharded like the weights."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn


def _local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (the tensor itself otherwise)."""
    return t.to_local() if hasattr(t, "to_local") else t  # type: ignore[no-any-return]


class EMA:
    """``ema = decay * ema + (1 - decay) * w`` over the trainable parameters of ``model``.

    Shadows are fp32 clones of the parameters (DTensor shards under FSDP2, so each rank averages its
    own shard). Until ``start_step`` the shadows just copy the weights.

    ``offload``: the shadows live in CPU memory (this rank's shards, pinned where CUDA is), which frees
    4 bytes a parameter of each rank's shard on the GPU (7 GB a GPU for a 14B student over 8 ranks) at
    the cost of a device-to-host copy of the weights at each update. Checkpoints hold the same values
    either way (as DTensors over the model's mesh), so a run may switch between the two on resume.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        decay: float,
        start_step: int = 0,
        every_steps: int = 1,
        offload: bool = False,
    ) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.start_step = start_step
        self.every_steps = every_steps
        self.offload = offload
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        params = dict(model.named_parameters())
        #: name -> (mesh, placements, shape, stride) of a DTensor parameter (offload: to rebuild it)
        self._layout: dict[str, tuple[Any, Any, torch.Size, tuple[int, ...]]] = {}
        if not offload:
            self.shadow = {n: params[n].detach().float().clone() for n in self.names}
            return
        pin = torch.cuda.is_available()
        self.shadow = {}
        for n in self.names:
            p = params[n]
            if hasattr(p, "device_mesh"):
                self._layout[n] = (p.device_mesh, p.placements, p.shape, p.stride())  # type: ignore[attr-defined]
            local = _local(p.detach()).to("cpu", torch.float32, copy=True)
            self.shadow[n] = local.pin_memory() if pin else local

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Call after optimizer step ``step`` (1-based)."""
        if step % self.every_steps:
            return
        params = dict(model.named_parameters())
        copy = step <= self.start_step
        if self.offload:  # one tensor at a time: no second copy of the weights in CPU memory
            for n in self.names:
                current = _local(params[n].detach()).to("cpu", torch.float32)
                if copy:
                    self.shadow[n].copy_(current)
                else:
                    self.shadow[n].lerp_(current, 1.0 - self.decay)
            return
        values = [params[n].detach().float() for n in self.names]
        shadows = [self.shadow[n] for n in self.names]
        if copy:
            torch._foreach_copy_(shadows, values)
        else:
            torch._foreach_lerp_(shadows, values, 1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The shadows by parameter name; offloaded ones as DTensors over the model's mesh whose local
        shards are the CPU shadows themselves (a checkpoint load fills them in place)."""
        if not self._layout:
            return dict(self.shadow)
        from torch.distributed.tensor import DTensor

        out: dict[str, torch.Tensor] = {}
        for n in self.names:
            if n in self._layout:
                mesh, placements, shape, stride = self._layout[n]
                out[n] = DTensor.from_local(
                    self.shadow[n], mesh, placements, run_check=False, shape=shape, stride=stride
                )
            else:
                out[n] = self.shadow[n]
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = sorted(set(self.names) - set(state))
        if missing:
            raise ValueError(f"EMA state is missing {len(missing)} parameter(s), e.g. {missing[0]!r}")
        for n in self.names:
            value = state[n]
            if self.offload:
                value = _local(value)
            if value is not self.shadow[n]:
                self.shadow[n].copy_(value)

    @contextlib.contextmanager
    @torch.no_grad()
    def applied(self, model: nn.Module) -> Iterator[nn.Module]:
        """Temporarily put the EMA weights into ``model`` (validation, export)."""
        params = dict(model.named_parameters())
        saved = {n: params[n].detach().clone() for n in self.names}

        def put(n: str, value: torch.Tensor) -> None:
            if self.offload:
                _local(params[n]).copy_(_local(value))
            else:
                params[n].copy_(value)

        for n in self.names:
            put(n, self.shadow[n])
        try:
            yield model
        finally:
            for n in self.names:
                put(n, saved[n])
