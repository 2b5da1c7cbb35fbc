"""The models of a training run, one per role the algorithm declares (see
:class:`fastvideo.interfaces.training.ModelRole`): each with its own optimizer, lr schedule and EMA."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

    from fastvideo.interfaces.training import ModelRole
    from fastvideo.training.ema import EMA


@dataclass
class RoleState:
    """A registered model with what the trainer keeps for it (and checkpoints)."""

    spec: ModelRole
    model: nn.Module
    optimizer: torch.optim.Optimizer | None
    scheduler: Any  # lr schedule of the optimizer, or None
    trainable_only: bool  # checkpoint only parameters that require grad (LoRA: the adapters)
    ema: EMA | None = None

    @property
    def role(self) -> str:
        return self.spec.name


#: The name this class had before roles were declared; kept for plugins that annotate with it.
Registered = RoleState
