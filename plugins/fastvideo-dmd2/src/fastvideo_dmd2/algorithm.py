"""The ``dmd2`` training algorithm: few-step distillation by distribution matching (DMD2).

Three models of one family, declared as roles of the core trainer:

* ``student`` (the generator, trained, with EMA): initialised from the teacher, sampled at a fixed
  list of timesteps (``algorithm_options.student_timesteps``, default ``[1000, 757, 522]``);
* ``teacher`` (frozen, the "real score"): the checkpoint at ``model.path``, run with classifier-free
  guidance at ``algorithm_options.guidance_scale`` (default: the checkpoint's own);
* ``critic`` (trained, the "fake score"): initialised from the teacher, trained with the family's
  flow-matching loss on the student's samples.

Every optimisation step trains the critic; every ``student_update_every``-th step (default 5) first
trains the student. The student's sample comes from a *simulated* rollout: from pure noise, its
earlier steps run without gradient (each predicts ``x0`` and re-noises it to the next timestep, as
the few-step sampler does) up to a target step drawn per optimisation step, whose prediction carries
the gradient. Its loss is the distribution-matching gradient (:func:`fastvideo_dmd2.losses.dmd_gradient`)
at the sample noised to a random timestep, as a stop-gradient target.

Sparse distillation: the student runs the run's attention backend (``attention.backend: vsa`` with
its sparsity ramp); teacher and critic always run a dense one (``algorithm_options.dense_backend``,
default the best available dense backend), so one flag makes the student sparse.
"""

from __future__ import annotations

import copy
import itertools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from fastvideo.interfaces.training import ModelRole, TrainingAlgorithm

if TYPE_CHECKING:
    import torch
    from torch import nn

#: Streams of the per-sample generators (``ctx.generators(micro, stream)``), one per use.
STUDENT_ROLLOUT, STUDENT_NOISE, CRITIC_ROLLOUT, CRITIC_NOISE, TARGET_STEP = 11, 12, 13, 14, 15


@dataclass(frozen=True, kw_only=True)
class DMD2Options:
    """``algorithm_options`` of ``dmd2`` (defaults: FastVideo's Wan recipe)."""

    student_timesteps: tuple[float, ...] = (1000.0, 757.0, 522.0)  # 4 steps: [1000, 750, 500, 250]
    student_update_every: int = 5  # the student trains every N-th step, the critic every step
    guidance_scale: float | None = None  # the teacher's CFG scale; None = the checkpoint's default
    simulate: bool = True  # student samples from rollouts from noise (else: noised data latents)
    min_timestep: float = 0.02  # the DMD and critic noise levels: uniform in [min, max], then shifted
    max_timestep: float = 0.98
    timestep_shift: float | None = None  # None = the family objective's shift (Wan: flow_shift)
    dense_backend: str | None = None  # teacher and critic attention; None = the best dense backend
    teacher_dtype: str | None = None  # None = bf16 under bf16 mixed precision, else fp32

    def __post_init__(self) -> None:
        steps = self.student_timesteps
        if (
            not steps
            or any(not 0 < t <= 1000 for t in steps)
            or any(a <= b for a, b in itertools.pairwise(steps))
        ):
            raise ValueError(
                f"algorithm_options.student_timesteps must be a decreasing list in (0, 1000], got {list(steps)}"
            )
        if self.student_update_every < 1:
            raise ValueError(
                f"algorithm_options.student_update_every must be >= 1, got {self.student_update_every}"
            )
        if not 0.0 <= self.min_timestep < self.max_timestep <= 1.0:
            raise ValueError(
                "algorithm_options.min_timestep and max_timestep must satisfy 0 <= min < max <= 1, got "
                f"{self.min_timestep} and {self.max_timestep}"
            )
        if self.guidance_scale is not None and self.guidance_scale < 1.0:
            raise ValueError(f"algorithm_options.guidance_scale must be >= 1, got {self.guidance_scale}")
        if self.teacher_dtype not in (None, "fp32", "bf16", "float32", "bfloat16"):
            raise ValueError(
                f"algorithm_options.teacher_dtype must be fp32 or bf16, got {self.teacher_dtype!r}"
            )


class DMD2Algorithm(TrainingAlgorithm):
    """DMD2: a few-step student distilled from a CFG teacher through a critic (see the module)."""

    name = "dmd2"
    description = (
        "DMD2 few-step distillation: student, frozen CFG teacher and critic (sparse students with vsa)"
    )
    roles: ClassVar[tuple[ModelRole, ...]] = (
        ModelRole(name="student", description="the few-step generator, initialised from the teacher"),
        ModelRole(name="teacher", trainable=False, description="the frozen teacher (real score), with CFG"),
        ModelRole(name="critic", ema=False, description="the fake score, flow matching on student samples"),
    )
    eval_role: ClassVar[str] = "student"

    # ---------------------------------------------------------------- setup

    def setup(self) -> None:
        from fastvideo.attention import get_backend, resolve_backend_name
        from fastvideo.training.config import parse_algorithm_options

        ctx = self.ctx
        opts: DMD2Options = parse_algorithm_options(DMD2Options, ctx.config.algorithm_options)
        self.options = opts
        self.student_backend = ctx.backend
        dense = resolve_backend_name(opts.dense_backend) if opts.dense_backend else None
        if dense is None:
            from fastvideo.attention.selector import _dense_candidates

            dense = _dense_candidates()[0]
        if get_backend(dense).sparse:
            raise ValueError(
                f"algorithm_options.dense_backend={dense!r} is a sparse backend; the teacher and critic need "
                "a dense one (e.g. sdpa)"
            )
        self.dense_backend = dense
        teacher_dtype = opts.teacher_dtype or ("bf16" if ctx.config.mixed_precision == "bf16" else "fp32")
        teacher = self._load(teacher_dtype, dense)
        student = self._load("fp32", self.student_backend)
        critic = self._load("fp32", dense)
        self._template = None  # an injected model's copies are made
        self.guidance_scale = (
            opts.guidance_scale
            if opts.guidance_scale is not None
            else float(ctx.family.sampling_defaults(ctx.source).guidance_scale or 1.0)
        )
        self.shift = opts.timestep_shift or float(getattr(ctx.objective, "shift", 1.0))
        self.num_train_timesteps = int(getattr(ctx.objective, "num_train_timesteps", 1000))
        self.teacher = ctx.prepare_model(teacher, role="teacher")
        self.student = ctx.prepare_model(student, role="student")
        self.critic = ctx.prepare_model(critic, role="critic")
        self.student_optimizer = ctx.make_optimizer(self.student, role="student")
        self.critic_optimizer = ctx.make_optimizer(self.critic, role="critic")
        ctx.register("student", self.student, self.student_optimizer)
        ctx.register("teacher", self.teacher)
        ctx.register("critic", self.critic, self.critic_optimizer)

    def _load(self, dtype: str, backend: str) -> nn.Module:
        """A fresh copy of the teacher's DiT in ``dtype`` with ``backend``'s layer modules. A model
        injected into the trainer (benchmarks: random weights) is the template of all three."""
        import torch

        ctx = self.ctx
        if getattr(self, "_template", None) is None and ctx.injected_model is not None:
            self._template = ctx.load_transformer()
        template = getattr(self, "_template", None)
        if template is None:  # lazy: under FSDP2 each rank reads only its shards, in prepare_model
            model = ctx.load_transformer(dtype=dtype, attention_backend=backend, lazy=True)
        else:
            from fastvideo.attention.layers import attach_layer_modules

            model = copy.deepcopy(template).to(
                torch.float32 if dtype in ("fp32", "float32") else torch.bfloat16
            )
            attach_layer_modules(model, backend)
        model.requires_grad_(True)
        return model

    # ---------------------------------------------------------------- pieces of a step

    def timestep_sigmas(self, generators: list[torch.Generator]) -> torch.Tensor:
        """One shifted noise level per sample, uniform in [min_timestep, max_timestep] before the shift."""
        import torch

        from fastvideo.training.objectives import shift_sigmas

        lo, hi = self.options.min_timestep, self.options.max_timestep
        raw = torch.cat([torch.rand(1, generator=g) for g in generators]) * (hi - lo) + lo
        return shift_sigmas(raw, self.shift)

    @staticmethod
    def draw(generators: list[torch.Generator], shape: tuple[int, ...], device: Any) -> torch.Tensor:
        """One standard normal tensor of ``shape`` per sample, stacked, on ``device``."""
        import torch

        return torch.stack([torch.randn(shape, generator=g, dtype=torch.float32) for g in generators]).to(
            device
        )

    def target_step(self) -> int:
        """The rollout step that carries the gradient this optimisation step (the same on every rank)."""
        import torch

        from fastvideo.training.trainer import sample_generator

        gen = sample_generator(self.ctx.config.seed, self.ctx.step, 0, TARGET_STEP)
        return int(torch.randint(len(self.options.student_timesteps), (1,), generator=gen))

    def predict(
        self,
        model: nn.Module,
        backend: str,
        batch: dict[str, Any],
        noisy: torch.Tensor,
        sigma: torch.Tensor,
        text: torch.Tensor,
    ) -> torch.Tensor:
        """``model``'s velocity at ``noisy`` (noise level ``sigma`` per sample) under ``backend``, fp32."""
        from fastvideo.attention import use_backend

        ctx = self.ctx
        dtype = next(model.parameters()).dtype
        inputs = ctx.objective.model_inputs(
            {**batch, "text": text}, noisy.to(dtype), (sigma * self.num_train_timesteps).to(noisy.device)
        )
        with use_backend(backend), ctx.autocast():
            return model(**inputs).float()

    def teacher_velocity(
        self, batch: dict[str, Any], noisy: torch.Tensor, sigma: torch.Tensor
    ) -> torch.Tensor:
        """The teacher's guided velocity ``uncond + g (cond - uncond)`` (the conditional one at g = 1)."""
        cond = self.predict(self.teacher, self.dense_backend, batch, noisy, sigma, batch["text"])
        if self.guidance_scale == 1.0:
            return cond
        uncond = self.predict(
            self.teacher, self.dense_backend, batch, noisy, sigma, self.negative_text(batch)
        )
        return uncond + self.guidance_scale * (cond - uncond)

    @staticmethod
    def negative_text(batch: dict[str, Any]) -> torch.Tensor:
        """The unconditional text of the batch: the dataset's negative prompt, else its empty prompt,
        else zeros, broadcast to the batch."""
        import torch

        text = batch["text"]
        negative = batch.get("negative_text")
        if negative is None:
            negative = batch.get("null_text")
        if negative is None:
            return torch.zeros_like(text)
        return negative.to(text.device, text.dtype).expand_as(text)

    def rollout(self, batch: dict[str, Any], stream: int, *, grad: bool) -> torch.Tensor:
        """The student's sample for ``batch``: its clean estimate at the target step, from pure noise
        through its earlier steps without gradient (``simulate``), or from the data latents noised to
        the target step; the target step's prediction carries the gradient when ``grad``."""
        import torch

        ctx = self.ctx
        latents = batch["latents"]
        shape = tuple(latents.shape[1:])
        gens = ctx.generators(batch, stream)
        sigmas = [t / self.num_train_timesteps for t in self.options.student_timesteps]
        k = self.target_step()
        full = torch.full((latents.shape[0],), 0.0)
        noise = self.draw(gens, shape, latents.device)
        if self.options.simulate:
            x = noise
            with torch.no_grad():
                for i in range(k):
                    v = self.predict(
                        self.student, self.student_backend, batch, x, full + sigmas[i], batch["text"]
                    )
                    x0 = x - sigmas[i] * v
                    x = (1 - sigmas[i + 1]) * x0 + sigmas[i + 1] * self.draw(gens, shape, latents.device)
        else:
            x = (1 - sigmas[k]) * latents.float() + sigmas[k] * noise
        with torch.set_grad_enabled(grad):
            v = self.predict(self.student, self.student_backend, batch, x, full + sigmas[k], batch["text"])
            return x.detach() - sigmas[k] * v

    def student_loss(self, micro: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        """The DMD loss of one micro-batch (gradient into the student only)."""
        import torch

        from fastvideo_dmd2 import losses

        ctx = self.ctx
        batch = ctx.to_device(micro)
        generated = self.rollout(batch, STUDENT_ROLLOUT, grad=True)
        gens = ctx.generators(micro, STUDENT_NOISE)
        noise = self.draw(gens, tuple(generated.shape[1:]), generated.device)
        sigma = self.timestep_sigmas(gens).to(generated.device)
        with torch.no_grad():
            noisy = losses.renoise(generated.detach(), noise, sigma)
            fake_x0 = losses.clean_estimate(
                noisy,
                self.predict(self.critic, self.dense_backend, batch, noisy, sigma, batch["text"]),
                sigma,
            )
            real_x0 = losses.clean_estimate(noisy, self.teacher_velocity(batch, noisy, sigma), sigma)
            grad = losses.dmd_gradient(generated, real_x0, fake_x0)
        loss = losses.dmd_loss(generated, grad)
        return loss, {"dmd_grad_abs": float(grad.abs().mean())}

    def critic_loss(self, micro: dict[str, Any]) -> torch.Tensor:
        """Flow matching of the critic on a student sample (drawn without gradient)."""
        import torch

        from fastvideo_dmd2 import losses

        ctx = self.ctx
        batch = ctx.to_device(micro)
        with torch.no_grad():
            generated = self.rollout(batch, CRITIC_ROLLOUT, grad=False)
        gens = ctx.generators(micro, CRITIC_NOISE)
        noise = self.draw(gens, tuple(generated.shape[1:]), generated.device)
        sigma = self.timestep_sigmas(gens).to(generated.device)
        noisy = losses.renoise(generated, noise, sigma)
        velocity = self.predict(self.critic, self.dense_backend, batch, noisy, sigma, batch["text"])
        return losses.flow_matching_loss(velocity, noise, generated)

    # ---------------------------------------------------------------- the step

    def student_due(self, step: int) -> bool:
        """Whether optimisation step ``step`` (1-based) trains the student."""
        return step % self.options.student_update_every == 0

    def train_step(self, batch: list[dict[str, Any]]) -> dict[str, float]:
        import torch

        from fastvideo.attention import use_backend

        ctx = self.ctx
        metrics: dict[str, float] = {}
        n = len(batch)
        if self.student_due(ctx.step):
            self.critic.requires_grad_(False)
            losses = []
            for i, micro in enumerate(batch):
                ctx.gradient_sync(self.student, i == n - 1)
                loss, extra = self.student_loss(micro)
                with use_backend(self.student_backend):  # recomputed blocks dispatch as the forward did
                    ctx.backward(loss / n)
                losses.append(loss.detach())
            self.critic.requires_grad_(True)
            done = ctx.optimizer_step(self.student_optimizer, self.student)
            metrics.update(
                dmd_loss=ctx.mean_over_ranks(torch.stack(losses).mean()),
                student_grad_norm=done["grad_norm"],
                student_lr=done["lr"],
                **extra,
            )
        losses = []
        for i, micro in enumerate(batch):
            ctx.gradient_sync(self.critic, i == n - 1)
            loss = self.critic_loss(micro)
            with use_backend(self.dense_backend):
                ctx.backward(loss / n)
            losses.append(loss.detach())
        done = ctx.optimizer_step(self.critic_optimizer, self.critic)
        critic = ctx.mean_over_ranks(torch.stack(losses).mean())
        metrics.update(loss=critic, critic_loss=critic, grad_norm=done["grad_norm"], lr=done["lr"])
        return metrics

    # ---------------------------------------------------------------- export

    def export(self, folder: Path) -> Path:
        """A diffusers folder with the student as ``transformer`` whose scheduler config and
        ``fastvideo.json`` say how to sample it: the few-step sampler on the student's timesteps,
        without CFG (``fv generate --model FOLDER`` needs nothing else)."""
        import torch.distributed as dist

        path = self.ctx.export_diffusers(self.eval_model(), folder)
        if not dist.is_initialized() or dist.get_rank() == 0:
            mark_few_step(Path(path), self.options.student_timesteps)
        if dist.is_initialized():
            dist.barrier()
        return Path(path)


def mark_few_step(folder: Path, timesteps: tuple[float, ...] | list[float]) -> None:
    """Make the diffusers folder ``folder`` sample with the ``few-step`` sampler on ``timesteps`` and
    no CFG: its scheduler config gains ``_fastvideo_sampling`` and its ``fastvideo.json`` the step
    count and guidance scale 1. Files are replaced, never written through (the export hard-links the
    teacher's scheduler config)."""
    import json

    from fastvideo.resolve import FOLDER_SETTINGS
    from fastvideo.samplers import SAMPLING_KEY

    listed = [int(t) if float(t).is_integer() else float(t) for t in timesteps]
    scheduler = folder / "scheduler" / "scheduler_config.json"
    if scheduler.is_file():
        config = json.loads(scheduler.read_text())
        config[SAMPLING_KEY] = {"sampler": "few-step", "timesteps": listed}
        _replace(scheduler, json.dumps(config, indent=2, sort_keys=True) + "\n")
    settings_path = folder / FOLDER_SETTINGS
    settings = json.loads(settings_path.read_text()) if settings_path.is_file() else {}
    sampling = dict(settings.get("sampling") or {})
    sampling.update(num_inference_steps=len(listed), guidance_scale=1.0)
    sampling.pop("guidance_scale_2", None)
    settings["sampling"] = sampling
    _replace(settings_path, json.dumps(settings, indent=2, ensure_ascii=False) + "\n")


def _replace(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
