"""``example-linear``: an example sampler, registered through ``fv_register_samplers``.

Flow-matching Euler on the *unshifted* linear schedule ``sigma_i = 1 - i / n``: the DiT sees
``t = sigma * num_train_timesteps`` and each step moves ``x <- x + (sigma_{i+1} - sigma_i) * v``.
The request's ``flow_shift`` and a family's explicit sigmas are ignored, which is what makes it
different from the core's ``flow-euler``. Use it with ``fv generate --sampler example-linear``.

A flow-matching sampler only has to give its sigma schedule: the core's
:class:`~fastvideo.interfaces.FlowMatchingSampler` turns it into the timesteps the DiT sees and runs
the Euler update (:func:`~fastvideo.interfaces.flow_euler_step`). A sampler with another update rule
subclasses :class:`~fastvideo.interfaces.Sampler` and writes ``set_timesteps`` and ``step`` itself.

This module is imported during plugin registration, so torch is imported inside the methods.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastvideo.interfaces import FlowMatchingSampler

if TYPE_CHECKING:
    import torch


class ExampleLinearSampler(FlowMatchingSampler):
    """Euler steps on ``linspace(1, 0, n + 1)``, no shift."""

    name = "example-linear"
    description = "flow-matching Euler on an unshifted linear schedule (example plugin)"

    def sigma_schedule(self, num_steps: int, device: Any, shift: float | None, sigmas: Any) -> torch.Tensor:
        import torch

        # 1, 1 - 1/n, ..., 1/n (the base class appends the final 0); shift and sigmas are ignored
        return torch.linspace(1.0, 0.0, num_steps + 1, device=device)[:-1]
