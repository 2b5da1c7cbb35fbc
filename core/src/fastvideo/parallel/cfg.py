"""CFG parallelism: the conditional and unconditional branches of a step run on different ranks.

The ranks of cfg index 0 compute the conditional prediction, those of index 1 the unconditional
one, each in one DiT forward (with sequence parallelism inside the branch when configured). One
all-gather over the ``cfg`` group gives every rank both predictions, which are combined with the
same formula as in one process, so all ranks keep identical latents and the result equals the
sequential run's. The ``cfg-parallel`` pipeline transform (:mod:`fastvideo.parallel.transforms`)
installs :class:`CFGParallelGuidance` as the denoising stage's ``guidance``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch

from fastvideo.parallel import comm

if TYPE_CHECKING:
    from fastvideo.parallel.state import ParallelState


def cfg_parallel_predict(
    model: Callable[..., torch.Tensor],
    inputs: Mapping[str, Any],
    cond: Mapping[str, Any],
    uncond: Mapping[str, Any] | None,
    scale: float,
    state: ParallelState,
) -> torch.Tensor:
    """The guided prediction ``uncond + scale * (cond - uncond)`` with one branch per rank group.

    :param inputs: DiT keyword arguments shared by both branches (latents, timestep).
    :param cond: the conditional branch's text arguments; ``uncond`` the unconditional one's, or
        None without guidance (then every rank computes the conditional branch).
    """
    if uncond is None:
        return model(**inputs, **cond)
    mine = model(**inputs, **(cond if state.cfg_rank == 0 else uncond))
    assert state.cfg_group is not None
    both = comm.all_gather(mine.unsqueeze(0), 0, state.cfg_group)  # (2, ...): cond, uncond
    pred, uncond_pred = both[0], both[1]
    return uncond_pred + scale * (pred - uncond_pred)


class CFGParallelGuidance:
    """A denoising stage's ``guidance`` in a CFG-parallel run (see
    :class:`fastvideo.pipelines.stages.ClassifierFreeGuidance` for the call)."""

    def __init__(self, state: ParallelState) -> None:
        self.state = state

    def __call__(
        self,
        model: Callable[..., torch.Tensor],
        inputs: Mapping[str, Any],
        cond: Mapping[str, Any],
        uncond: Mapping[str, Any] | None,
        scale: float,
    ) -> torch.Tensor:
        return cfg_parallel_predict(model, inputs, cond, uncond, scale, self.state)
