"""``example-linear``: an example sampler, registered through ``fv_register_samplers``.

Flow-matching Euler on the *unshifted* linear schedule ``sigma_i = 1 - i / n``: the DiT sees
``t = sigma * num_train_timesteps`` and each step moves ``x <- x + (sigma_{i+1} - sigma_i) * v``.
The request's ``flow_shift`` and a family's explicit sigmas are ignored, which is what makes it
different from the core's ``flow-euler``. Use it with ``fv generate --sampler example-linear``.

This module is imported during plugin registration, so torch is imported inside the methods.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from fastvideo.interfaces import Sampler, flow_euler_step

if TYPE_CHECKING:
    import torch


class ExampleLinearSampler(Sampler):
    """Euler steps on ``linspace(1, 0, n + 1)``, no shift."""

    name = "example-linear"
    description = "flow-matching Euler on an unshifted linear schedule (example plugin)"

    def set_timesteps(
        self,
        num_steps: int,
        *,
        device: Any = None,
        shift: float | None = None,
        sigmas: Sequence[float] | None = None,
    ) -> torch.Tensor:
        import torch

        self.sigmas = torch.linspace(1.0, 0.0, num_steps + 1, device=device)  # (n + 1,)
        return self.sigmas[:-1] * self.num_train_timesteps

    def step(
        self,
        model_output: torch.Tensor,
        timestep: torch.Tensor,
        sample: torch.Tensor,
        *,
        step_index: int,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        # the core's flow-matching Euler update, x <- x + (sigma_{i+1} - sigma_i) * v
        return flow_euler_step(sample, model_output, self.sigmas[step_index], self.sigmas[step_index + 1])
