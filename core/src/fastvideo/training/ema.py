"""Exponential moving average of the trainable weights, in fp32, sharded like the weights."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


class EMA:
    """``ema = decay * ema + (1 - decay) * w`` over the trainable parameters of ``model``.

    Shadows are fp32 clones of the parameters (DTensor shards under FSDP2, so each rank averages its
    own shard). Until ``start_step`` the shadows just copy the weights.
    """

    def __init__(self, model: nn.Module, *, decay: float, start_step: int = 0, every_steps: int = 1) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.start_step = start_step
        self.every_steps = every_steps
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        params = dict(model.named_parameters())
        self.shadow = {n: params[n].detach().float().clone() for n in self.names}

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Call after optimizer step ``step`` (1-based)."""
        if step % self.every_steps:
            return
        params = dict(model.named_parameters())
        current = [params[n].detach().float() for n in self.names]
        shadows = [self.shadow[n] for n in self.names]
        if step <= self.start_step:
            torch._foreach_copy_(shadows, current)
        else:
            torch._foreach_lerp_(shadows, current, 1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = sorted(set(self.names) - set(state))
        if missing:
            raise ValueError(f"EMA state is missing {len(missing)} parameter(s), e.g. {missing[0]!r}")
        for n in self.names:
            self.shadow[n].copy_(state[n])

    @contextlib.contextmanager
    @torch.no_grad()
    def applied(self, model: nn.Module) -> Iterator[nn.Module]:
        """Temporarily put the EMA weights into ``model`` (validation, export)."""
        params = dict(model.named_parameters())
        saved = {n: params[n].detach().clone() for n in self.names}
        for n in self.names:
            params[n].copy_(self.shadow[n])
        try:
            yield model
        finally:
            for n in self.names:
                params[n].copy_(saved[n])
