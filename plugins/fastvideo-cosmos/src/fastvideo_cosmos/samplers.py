"""The Cosmos samplers: Predict2's EDM (Karras) schedule with Euler steps, and Predict2.5's UniPC.

``cosmos-edm`` (Cosmos-Predict2). Sigmas follow Karras et al.'s spacing from ``sigma_max = 80`` down
to ``sigma_min = 0.002`` (rho 7); the schedule ends at ``sigma_min`` (diffusers'
``final_sigmas_type="sigma_min"``: the last step holds the latents where they are). The initial noise
is scaled by ``sigma_max``. The denoiser is the rectified-flow EDM preconditioning the checkpoints
were trained with: at noise level ``sigma``, ``t = sigma / (sigma + 1)``, the DiT sees
``(1 - t) x`` and timestep ``t``, and the clean estimate is ``x0 = (1 - t) x - t F``
(:func:`edm_scalings`). The prediction :meth:`CosmosEDMSampler.step` takes is that clean estimate
(guidance and the conditioning frames applied to it); each step is Euler on
``v = (x - x0) / sigma``.

``cosmos-unipc`` (Cosmos-Predict2.5): diffusers' ``UniPCMultistepScheduler`` with flow sigmas on a
Karras schedule (``sigma_max = 200``, ``sigma_min = 0.01``) as the checkpoints ship it; the DiT sees
the flow sigma itself (0..1) as its timestep.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from fastvideo.interfaces import Sampler
from fastvideo.samplers import DiffusersSampler

if TYPE_CHECKING:
    import torch


def edm_scalings(sigma: Any) -> tuple[Any, Any, Any, Any]:
    """``(c_in, c_skip, c_out, t)`` of the rectified-flow EDM preconditioning at noise level ``sigma``."""
    t = sigma / (sigma + 1)
    return 1 - t, 1 - t, -t, t


def karras_sigmas(num_steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Any:
    """Karras et al.'s ``num_steps`` sigmas from ``sigma_max`` down to ``sigma_min`` (fp64 numpy)."""
    import numpy as np

    ramp = np.linspace(0, 1, num_steps)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


class CosmosEDMSampler(Sampler):
    """EDM Karras schedule and Euler steps on the clean estimate (see the module docstring)."""

    name = "cosmos-edm"
    description = "Cosmos-Predict2: EDM Karras sigmas 80 -> 0.002, Euler on the x0 prediction"
    sigma_max = 80.0
    sigma_min = 0.002

    def set_timesteps(
        self,
        num_steps: int,
        *,
        device: Any = None,
        shift: float | None = None,
        sigmas: Sequence[float] | None = None,
    ) -> torch.Tensor:
        import torch

        schedule = torch.from_numpy(karras_sigmas(num_steps, self.sigma_min, self.sigma_max)).float()
        # final_sigmas_type "sigma_min": the step after the last one stays at sigma_min
        self.sigmas = torch.cat([schedule, schedule[-1:]]).to(device)  # (n + 1,)
        self.init_noise_sigma = self.sigma_max
        return self.sigmas[:-1] * self.num_train_timesteps

    def sigma(self, step_index: int) -> torch.Tensor:
        """The noise level of step ``step_index``."""
        return self.sigmas[step_index]

    def step(
        self,
        model_output: torch.Tensor,
        timestep: torch.Tensor,
        sample: torch.Tensor,
        *,
        step_index: int,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """One Euler step from the clean estimate ``model_output`` (x0), in fp32."""
        import torch

        sigma, sigma_next = self.sigmas[step_index], self.sigmas[step_index + 1]
        sample = sample.to(torch.float32)
        velocity = (sample - model_output.to(torch.float32)) / sigma
        return sample + (sigma_next - sigma) * velocity


#: The scheduler settings the Cosmos-Predict2.5 checkpoints ship (diffusers' conversion script).
PREDICT25_UNIPC: dict[str, Any] = {
    "use_karras_sigmas": True,
    "use_flow_sigmas": True,
    "prediction_type": "flow_prediction",
    "sigma_max": 200.0,
    "sigma_min": 0.01,
}


class CosmosUniPCSampler(DiffusersSampler):
    """diffusers' UniPC with Predict2.5's flow-sigma Karras schedule (the checkpoint's own settings
    when it ships a UniPC scheduler, else :data:`PREDICT25_UNIPC`); ``flow_shift`` is not used."""

    name = "cosmos-unipc"
    description = "Cosmos-Predict2.5: UniPC multistep on flow sigmas with Karras spacing (200 -> 0.01)"
    uses_sigmas = False

    def make_scheduler(self, shift: float | None) -> Any:
        from diffusers import UniPCMultistepScheduler

        cfg = self.scheduler_config()
        if cfg.get("_class_name") != "UniPCMultistepScheduler" and type(self.scheduler).__name__ != (
            "UniPCMultistepScheduler"
        ):
            cfg = {"num_train_timesteps": 1000, **PREDICT25_UNIPC}
        return UniPCMultistepScheduler.from_config({k: v for k, v in cfg.items() if not k.startswith("_")})

    def sigma(self, step_index: int) -> torch.Tensor:
        """The flow sigma of step ``step_index`` (what the DiT receives as its timestep)."""
        return self.active.sigmas[step_index]
