"""``stepvideo-flow``: the reference's ``FlowMatchDiscreteScheduler`` (Euler on a time-shifted flow).

Sigmas ``linspace(1, 0, n + 1)`` shifted by ``s' = shift * s / (1 + (shift - 1) * s)``; with the
scheduler's ``reverse`` false (its default) they run ``1 - s'`` (0 -> 1), with ``reverse`` true
``s'`` (1 -> 0). The DiT receives the sigma itself as its timestep (it scales by 1000 inside) and
each step is ``x + v * (sigma[i+1] - sigma[i])`` in fp32. This module does not import torch at
import time (it is registered with the plugin).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastvideo.interfaces import Sampler


class StepVideoFlowSampler(Sampler):
    name = "stepvideo-flow"
    description = "Step-Video's flow matching: Euler on sigmas time-shifted by flow_shift, the sigma as the DiT timestep"

    def default_shift(self) -> float:
        return float(self.scheduler_config().get("time_shift", 13.0))

    @property
    def reverse(self) -> bool:
        return bool(self.scheduler_config().get("reverse", False))

    def set_timesteps(
        self,
        num_steps: int,
        *,
        device: Any = None,
        shift: float | None = None,
        sigmas: Sequence[float] | None = None,
    ) -> Any:
        import torch

        shift = self.default_shift() if shift is None else float(shift)
        s = torch.linspace(1, 0, num_steps + 1, device=device)
        s = shift * s / (1 + (shift - 1) * s)
        self.sigmas = s if self.reverse else 1 - s
        return self.sigmas[:-1]

    def step(
        self, model_output: Any, timestep: Any, sample: Any, *, step_index: int, generator: Any = None
    ) -> Any:
        import torch

        dt = self.sigmas[step_index + 1] - self.sigmas[step_index]
        return sample.to(torch.float32) + model_output.to(torch.float32) * dt
