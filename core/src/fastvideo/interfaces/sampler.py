"""Base class of samplers: the timestep schedule and the update rule of the denoising loop.

The denoising stage never talks to a diffusers scheduler directly: the timestep stage builds one
:class:`Sampler` per request (``batch.sampler``), asks it for the timesteps, the latent stage scales
the noise by its ``init_noise_sigma``, and the denoising stage calls :meth:`Sampler.step` after
every (guided) DiT prediction. Which sampler runs: ``PipelineConfig.sampler`` (``fv generate
--sampler NAME``), else the preset's ``sampler``, else the family's ``default_sampler``, else
``"checkpoint"`` (the checkpoint's own diffusers scheduler, as ``model_index.json`` names it).

Built-ins: ``checkpoint``, ``flow-euler`` (flow-matching Euler), ``unipc`` (diffusers' UniPC
configured for flow matching, as Wan samples) and ``few-step`` (an explicit timestep list with
x0-prediction re-noising, for DMD2-distilled students).

A complete tiny sampler plugin (flow-matching Euler on an unshifted linear schedule)::

    # my_sampler/sampler.py  (no torch import at module level)
    from fastvideo.interfaces import Sampler, flow_euler_step

    class LinearEuler(Sampler):
        name = "linear-euler"

        def set_timesteps(self, num_steps, *, device=None, shift=None, sigmas=None):
            import torch
            self.sigmas = torch.linspace(1.0, 0.0, num_steps + 1, device=device)
            return self.sigmas[:-1] * self.num_train_timesteps   # what the DiT sees

        def step(self, model_output, timestep, sample, *, step_index, generator=None):
            # x <- x + (sigma_next - sigma) * v
            return flow_euler_step(sample, model_output, self.sigmas[step_index], self.sigmas[step_index + 1])

    # my_sampler/plugin.py
    from fastvideo import hookimpl
    FASTVIDEO_PLUGIN_API = 1

    @hookimpl
    def fv_register_samplers():
        from my_sampler.sampler import LinearEuler
        return [LinearEuler]

Then ``fv generate --sampler linear-euler ...``. A flow-matching sampler like this one can instead
subclass :class:`FlowMatchingSampler` and only give its sigmas (``sigma_schedule``), as the example
plugin's ``example-linear`` and the core's ``flow-euler`` do.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import torch


class Sampler(ABC):
    """The schedule and update rule of one generation (a fresh instance per request).

    Class attributes:
        name: lower-kebab name (``"flow-euler"``).
        description: one line for ``fv plugins list --json`` and the docs.

    :param scheduler: the checkpoint's diffusers scheduler (``model_index.json``'s ``scheduler``),
        or None when the checkpoint has none. Samplers read defaults from its config
        (``num_train_timesteps``, ``shift`` / ``flow_shift``); they must not mutate it.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    #: The factor the initial noise is multiplied by (1 for flow matching).
    init_noise_sigma: float = 1.0

    def __init__(self, scheduler: Any | None = None) -> None:
        self.scheduler = scheduler

    # ---- what samplers read from the checkpoint's scheduler
    def scheduler_config(self) -> dict[str, Any]:
        """The checkpoint scheduler's config as a dict (empty without a scheduler)."""
        return dict(getattr(self.scheduler, "config", None) or {})

    @property
    def num_train_timesteps(self) -> int:
        """The DiT's timestep scale: ``t = sigma * num_train_timesteps`` (1000 by default)."""
        return int(self.scheduler_config().get("num_train_timesteps", 1000))

    def default_shift(self) -> float:
        """The checkpoint's flow shift (``flow_shift`` or ``shift`` of its scheduler), else 1."""
        cfg = self.scheduler_config()
        value = cfg.get("flow_shift") or cfg.get("shift") or 1.0
        return float(value)

    # ---- the contract
    @abstractmethod
    def set_timesteps(
        self,
        num_steps: int,
        *,
        device: Any = None,
        shift: float | None = None,
        sigmas: Sequence[float] | None = None,
    ) -> torch.Tensor:
        """Prepare a schedule of ``num_steps`` steps and return its timesteps (1-D, on ``device``).

        :param shift: the request's flow shift (``SamplingParams.flow_shift``); None keeps the
            checkpoint's (:meth:`default_shift`).
        :param sigmas: an explicit unshifted sigma schedule a family prefers (HunyuanVideo's
            ``linspace(1, 0, n + 1)[:-1]``); samplers that cannot use one may ignore it.

        Called once per request, before the latents are drawn. The values returned are what the
        DiT receives as ``timestep`` and what :meth:`step` receives back.
        """

    @abstractmethod
    def step(
        self,
        model_output: torch.Tensor,
        timestep: torch.Tensor,
        sample: torch.Tensor,
        *,
        step_index: int,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The latents after step ``step_index`` given the DiT's (guided) prediction.

        :param sample: the latents the prediction was made from (fp32).
        :param generator: the request's seeded CPU generator, for samplers that draw noise.
        Called once per step, in order; a sampler may keep state between calls (multistep).
        """


def flow_euler_step(
    sample: torch.Tensor, model_output: torch.Tensor, sigma: Any, sigma_next: Any
) -> torch.Tensor:
    """One flow-matching Euler step: ``sample + (sigma_next - sigma) * model_output``, the DiT's
    velocity ``v = noise - x0`` carrying the latents from ``sigma`` to ``sigma_next``.

    The sum is taken in fp32 (as diffusers' ``FlowMatchEulerDiscreteScheduler`` does) and returned in
    ``sample``'s dtype. ``sigma`` and ``sigma_next`` are floats or 0-d tensors.
    """
    import torch

    return (sample.to(torch.float32) + (sigma_next - sigma) * model_output).to(sample.dtype)


class FlowMatchingSampler(Sampler):
    """A flow-matching sampler given by its sigma schedule: subclasses implement
    :meth:`sigma_schedule`; the DiT sees ``t = sigma * num_train_timesteps`` and each step is
    :func:`flow_euler_step` from one sigma to the next, the last one to sigma 0."""

    @abstractmethod
    def sigma_schedule(self, num_steps: int, device: Any, shift: float | None, sigmas: Any) -> torch.Tensor:
        """The ``num_steps`` sigmas of one request, from (about) 1 down, without the final 0 (1-D fp32,
        on ``device``); ``shift`` and ``sigmas`` are :meth:`Sampler.set_timesteps`'s."""

    def set_timesteps(
        self,
        num_steps: int,
        *,
        device: Any = None,
        shift: float | None = None,
        sigmas: Sequence[float] | None = None,
    ) -> torch.Tensor:
        import torch

        schedule = self.sigma_schedule(num_steps, device, shift, sigmas)
        self.sigmas = torch.cat([schedule, schedule.new_zeros(1)])  # (n + 1,)
        return schedule * self.num_train_timesteps

    def step(
        self,
        model_output: torch.Tensor,
        timestep: torch.Tensor,
        sample: torch.Tensor,
        *,
        step_index: int,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        return flow_euler_step(sample, model_output, self.sigmas[step_index], self.sigmas[step_index + 1])
