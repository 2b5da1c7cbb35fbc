"""The core's samplers and how a pipeline gets one (see :class:`fastvideo.interfaces.Sampler`).

============== ==============================================================================
name           schedule and update
============== ==============================================================================
``checkpoint`` the checkpoint's own diffusers scheduler (``model_index.json``'s ``scheduler``)
``flow-euler`` flow-matching Euler, ``x <- x + (sigma_next - sigma) * v``, diffusers' shifted schedule
``unipc``      diffusers' ``UniPCMultistepScheduler`` configured for flow matching (as Wan samples)
``few-step``   an explicit timestep list (DMD2's ``1000, 757, 522``): predict x0, re-noise to the next
============== ==============================================================================

The sampler of a generator: ``PipelineConfig.sampler``, else its preset's ``sampler``, else its
family's ``default_sampler``, else ``checkpoint`` (the behaviour of every family before samplers).
Torch and diffusers are imported inside the methods.
"""

from __future__ import annotations

import itertools
import logging
from abc import abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from fastvideo.interfaces.sampler import FlowMatchingSampler, Sampler

if TYPE_CHECKING:
    import torch

    from fastvideo.configs import PipelineConfig
    from fastvideo.interfaces.model_family import ModelSource
    from fastvideo.pipelines.composed import ComposedPipeline

logger = logging.getLogger(__name__)

DEFAULT_SAMPLER = "checkpoint"

#: The key of a checkpoint's ``scheduler_config.json`` that says how fastvideo samples it, written by
#: distillation exports: ``{"sampler": "few-step", "timesteps": [1000, 757, 522]}``. diffusers keeps
#: keys that start with ``_`` in the scheduler's config without using them.
SAMPLING_KEY = "_fastvideo_sampling"


def checkpoint_sampling(source: ModelSource | None) -> dict[str, Any]:
    """The :data:`SAMPLING_KEY` entry of ``source``'s scheduler config (empty when it has none)."""
    if source is None:
        return {}
    config = source.read_json("scheduler/scheduler_config.json") or {}
    value = config.get(SAMPLING_KEY)
    return dict(value) if isinstance(value, dict) else {}


def scheduler_with_shift(scheduler: Any, shift: float | None) -> Any:
    """A copy of a diffusers flow scheduler with its shift replaced (``flow_shift`` or ``shift``)."""
    if shift is None:
        return scheduler
    config = dict(scheduler.config)
    key = "flow_shift" if "flow_shift" in config else "shift"
    if config.get(key) == shift:
        return scheduler
    config[key] = shift
    return type(scheduler).from_config(config)


def flow_shift(sigmas: Any, shift: float) -> Any:
    """The flow-matching timestep shift ``s * sigma / (1 + (s - 1) * sigma)`` (SD3, Wan, Hunyuan)."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


# ---------------------------------------------------------------- diffusers schedulers, run as they are


class DiffusersSampler(Sampler):
    """A sampler that runs a diffusers scheduler: :meth:`make_scheduler` builds it for the request's
    shift, then its ``set_timesteps`` and ``step`` are called as diffusers' pipelines call them.

    ``uses_sigmas``: whether a family's explicit ``sigmas`` list is passed to ``set_timesteps``
    (else it is ignored)."""

    uses_sigmas: ClassVar[bool] = True

    @abstractmethod
    def make_scheduler(self, shift: float | None) -> Any:
        """The diffusers scheduler of one request (``shift``: the request's flow shift, or None)."""

    def set_timesteps(
        self,
        num_steps: int,
        *,
        device: Any = None,
        shift: float | None = None,
        sigmas: Sequence[float] | None = None,
    ) -> torch.Tensor:
        scheduler = self.make_scheduler(shift)
        if sigmas is None or not self.uses_sigmas:
            scheduler.set_timesteps(num_steps, device=device)
        else:
            scheduler.set_timesteps(sigmas=list(sigmas), device=device)
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(0)
        self.active = scheduler
        self.init_noise_sigma = float(getattr(scheduler, "init_noise_sigma", 1.0))
        return scheduler.timesteps

    def step(
        self,
        model_output: torch.Tensor,
        timestep: torch.Tensor,
        sample: torch.Tensor,
        *,
        step_index: int,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        return self.active.step(model_output, timestep, sample, return_dict=False)[0]


class CheckpointSampler(DiffusersSampler):
    """Runs the checkpoint's diffusers scheduler as the pipelines always did (the default)."""

    name = "checkpoint"
    description = "the checkpoint's own diffusers scheduler (model_index.json)"

    def make_scheduler(self, shift: float | None) -> Any:
        if self.scheduler is None:
            raise ValueError(
                "the 'checkpoint' sampler needs the checkpoint's scheduler, and model_index.json names "
                "none; pick another sampler (--sampler flow-euler)"
            )
        return scheduler_with_shift(self.scheduler, shift)


# ---------------------------------------------------------------- flow-matching Euler (ours)


class FlowEulerSampler(FlowMatchingSampler):
    """Flow-matching Euler: the DiT predicts the velocity ``v = noise - x0``; each step moves
    ``x <- x + (sigma_next - sigma) * v`` in fp32, ending at sigma 0.

    The schedule is diffusers' ``FlowMatchEulerDiscreteScheduler`` one: ``num_steps`` sigmas from 1
    down to the smallest training sigma (itself shifted), spaced linearly, then shifted with the
    request's ``flow_shift`` (else the checkpoint's); an explicit ``sigmas`` list is shifted likewise.
    """

    name = "flow-euler"
    description = "flow-matching Euler with the (shifted) linear sigma schedule"

    def sigma_schedule(self, num_steps: int, device: Any, shift: float | None, sigmas: Any) -> torch.Tensor:
        import numpy as np
        import torch

        n_train = self.num_train_timesteps
        s = self.default_shift() if shift is None else float(shift)
        if sigmas is None:
            # The smallest training sigma, shifted, in fp32 (diffusers computes it so at construction).
            smallest = float(flow_shift(torch.tensor([1.0], dtype=torch.float32) / n_train, s)[0])
            base = np.linspace(n_train, smallest * n_train, num_steps) / n_train  # fp64
        else:
            base = np.asarray(list(sigmas), dtype=np.float32)
        return torch.from_numpy(flow_shift(base, s)).to(dtype=torch.float32, device=device)


# ---------------------------------------------------------------- UniPC (diffusers)


class UniPCSampler(DiffusersSampler):
    """diffusers' ``UniPCMultistepScheduler`` for flow matching (``prediction_type="flow_prediction"``,
    ``use_flow_sigmas=True``, the shift as ``flow_shift``), as the Wan checkpoints ship it. The
    checkpoint's own UniPC settings (solver order, ...) are kept when it is a UniPC scheduler.
    ``sigmas`` lists are not supported by UniPC and are ignored."""

    name = "unipc"
    description = "diffusers' UniPC multistep solver configured for flow matching"
    uses_sigmas = False

    def make_scheduler(self, shift: float | None) -> Any:
        from diffusers import UniPCMultistepScheduler

        cfg = self.scheduler_config()
        base = cfg if cfg.get("_class_name") == "UniPCMultistepScheduler" else {}
        base = {k: v for k, v in base.items() if not k.startswith("_")}
        base.update(
            num_train_timesteps=self.num_train_timesteps,
            prediction_type="flow_prediction",
            use_flow_sigmas=True,
            flow_shift=self.default_shift() if shift is None else float(shift),
        )
        return UniPCMultistepScheduler.from_config(base)


# ---------------------------------------------------------------- few-step lists (distilled students)


class FewStepSampler(Sampler):
    """Few-step sampling of a distilled student (DMD2) on an explicit list of timesteps.

    At timestep ``t`` (``sigma = t / num_train_timesteps``) the DiT's velocity ``v`` gives the clean
    estimate ``x0 = x - sigma * v``; before the next timestep ``t'`` it is re-noised with fresh
    Gaussian noise from the request's generator, ``x = (1 - sigma') * x0 + sigma' * noise``; the last
    step returns ``x0``. This is the update FastVideo's DMD denoising stage uses (it looks the sigmas
    up on a 1000-step grid, which equals ``t / 1000`` up to the grid spacing).

    The list is the checkpoint scheduler config's ``_fastvideo_sampling.timesteps`` (what a
    distillation export writes, :data:`SAMPLING_KEY`), else the class attribute ``timesteps``; a
    plugin subclasses to change the default. It replaces ``num_inference_steps`` (a different count
    is logged) and ignores ``flow_shift``.
    """

    name = "few-step"
    description = "explicit few-step timestep list with x0 prediction and re-noising (DMD2 students)"
    timesteps: ClassVar[tuple[float, ...]] = (1000.0, 757.0, 522.0)

    def set_timesteps(
        self,
        num_steps: int,
        *,
        device: Any = None,
        shift: float | None = None,
        sigmas: Sequence[float] | None = None,
    ) -> torch.Tensor:
        import torch

        timesteps = self.checkpoint_timesteps() or self.timesteps
        if num_steps != len(timesteps):
            logger.info(
                "the %r sampler runs its %d timesteps %s; num_inference_steps=%d is not used",
                self.name,
                len(timesteps),
                list(timesteps),
                num_steps,
            )
        self.schedule = torch.tensor(timesteps, dtype=torch.float32, device=device)
        return self.schedule

    def checkpoint_timesteps(self) -> tuple[float, ...]:
        """The timesteps the checkpoint's scheduler config lists under :data:`SAMPLING_KEY` (or none);
        a malformed list is a one-line ``ValueError``."""
        value = (self.scheduler_config().get(SAMPLING_KEY) or {}).get("timesteps")
        if value is None:
            return ()
        n_train = self.num_train_timesteps
        if (
            not isinstance(value, list)
            or not value
            or not all(isinstance(t, (int, float)) and 0 < t <= n_train for t in value)
            or any(a <= b for a, b in itertools.pairwise(value))
        ):
            raise ValueError(
                f"scheduler_config.json {SAMPLING_KEY}.timesteps must be a decreasing list of numbers in "
                f"(0, {n_train}], got {value!r}; fix the checkpoint's scheduler config"
            )
        return tuple(float(t) for t in value)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: torch.Tensor,
        sample: torch.Tensor,
        *,
        step_index: int,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        import torch

        n_train = self.num_train_timesteps
        sample = sample.to(torch.float32)
        x0 = sample - (timestep.to(torch.float32) / n_train) * model_output.to(torch.float32)
        if step_index + 1 >= len(self.schedule):
            return x0
        sigma_next = self.schedule[step_index + 1] / n_train
        noise = torch.randn(sample.shape, generator=generator, dtype=torch.float32).to(sample.device)
        return (1 - sigma_next) * x0 + sigma_next * noise


BUILTIN = (CheckpointSampler, FlowEulerSampler, UniPCSampler, FewStepSampler)


# ---------------------------------------------------------------- choosing a pipeline's sampler


def sampler_name(config: PipelineConfig, source: ModelSource | None = None) -> str:
    """The sampler a generator uses: the config's, the preset's, the family's, else ``checkpoint``.

    :raises UnknownNameError: the name is not registered (one line, with the available ones).
    """
    from fastvideo.registry import get_registry

    name = getattr(config, "sampler", None)
    if name is None and source is not None:
        preset = source.preset
        name = getattr(preset, "sampler", None) if preset is not None else None
        name = name or checkpoint_sampling(source).get("sampler")
        name = name or getattr(source.family, "default_sampler", None)
    name = name or DEFAULT_SAMPLER
    get_registry().get("sampler", name)
    return name


def sampler_class(name: str | None) -> type[Sampler]:
    """The registered sampler class for ``name`` (None: ``checkpoint``)."""
    from fastvideo.registry import get_registry

    return get_registry().get("sampler", name or DEFAULT_SAMPLER).cls  # type: ignore[no-any-return]


def use_sampler(pipeline: ComposedPipeline, config: PipelineConfig, source: ModelSource | None = None) -> str:
    """Set the sampler of every timestep stage of ``pipeline`` (see :func:`sampler_name`); returns it.

    A sampler named by the config or the preset replaces whatever the family's stages chose; the
    family's ``default_sampler`` (or ``checkpoint``) only fills stages that chose none.
    """
    from fastvideo.pipelines.stages import TimestepPreparationStage

    name = sampler_name(config, source)
    preset = source.preset if source is not None else None
    explicit = (
        config.sampler is not None
        or getattr(preset, "sampler", None) is not None
        or "sampler" in checkpoint_sampling(source)
    )
    stages = [s for s in pipeline.stages if isinstance(s, TimestepPreparationStage)]
    if not stages and explicit:
        raise ValueError(
            f"sampler {name!r} cannot be used: this pipeline has no timestep stage "
            f"(stages: {', '.join(s.name for s in pipeline.stages)}); leave the sampler unset"
        )
    for stage in stages:
        if explicit or stage.sampler is None:
            stage.sampler = name
    return name
