"""The trainer: everything around an algorithm's ``train_step``.

``Trainer(config).train()`` (or ``fv train --config train.yaml``, under ``torchrun`` for several
processes) does, per optimisation step: take the next global batch from the seeded data order,
hand this rank's micro-batches to the algorithm (which calls back :meth:`Trainer.objective_loss`,
:meth:`Trainer.backward` and :meth:`Trainer.optimizer_step`), update the EMA, log metrics, and
every so often save a checkpoint and write validation videos. At the end it saves, exports and
returns a summary.

Determinism: every random draw of a sample (noise, timestep) comes from a generator seeded with
(seed, step, position of the sample in the global batch), the data order from (seed, epoch) and
the data position, so a resumed run, or the same run on another number of ranks, sees the same
numbers. The remaining global RNG states (dropout) are checkpointed per rank.

The pieces: :class:`~fastvideo.training.runtime.TrainingRuntime` (processes, devices, FSDP2 and
sequence parallelism through :mod:`fastvideo.parallel`), one
:class:`~fastvideo.training.roles.RoleState` per model role the algorithm declares (optimizer, lr
schedule, EMA), :class:`~fastvideo.training.checkpointing.CheckpointManager` (what a checkpoint
holds, which one to resume), :class:`~fastvideo.training.validation.Validator` (videos through the
family's inference pipeline) and, here, the loop and the services algorithms call back.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fastvideo.attention.context import StepContext, step_context
from fastvideo.training import checkpoint as ckpt
from fastvideo.training.checkpointing import CheckpointManager
from fastvideo.training.config import TrainConfig, dump_config
from fastvideo.training.data import LatentDataset, iterate_micro_batches
from fastvideo.training.ema import EMA
from fastvideo.training.metrics import MetricsLogger, truncate_after
from fastvideo.training.roles import Registered, RoleState
from fastvideo.training.runtime import TrainingRuntime
from fastvideo.training.validation import Validator

__all__ = ["Registered", "RoleState", "Trainer", "lr_factor", "sample_generator"]

CHECKPOINTS = "checkpoints"
EXPORT = "export"


# ---------------------------------------------------------------- helpers


def sample_generator(seed: int, step: int, position: int, stream: int = 0) -> torch.Generator:
    """The CPU generator of one sample: a function of (seed, step, position in the batch, stream)."""
    state = np.random.SeedSequence([seed, step, position, stream]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)


def lr_factor(i: int, *, warmup: int, total: int, kind: str, min_ratio: float) -> float:
    """Multiplier of the base lr for the optimizer step after ``i`` scheduler steps."""
    if warmup and i < warmup:
        return (i + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = min(1.0, (i - warmup) / max(1, total - warmup))
    if kind == "linear":
        return 1.0 - (1.0 - min_ratio) * progress
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


# ---------------------------------------------------------------- the trainer


class Trainer:
    """Runs one training job described by a :class:`TrainConfig`.

    ``source``, ``dataset``, ``objective`` and ``model`` may be passed in (benchmarks and tests
    use them: a random-init model, an in-memory dataset); otherwise they come from the config and
    the model family.
    """

    def __init__(
        self,
        config: TrainConfig,
        *,
        resume: str | Path | bool | None = None,
        source: Any = None,
        dataset: Any = None,
        objective: Any = None,
        model: nn.Module | None = None,
    ) -> None:
        self.config = config
        self.resume_request = resume
        self.source = source
        self.family: Any = source.family if source is not None else None
        self.dataset = dataset
        self.objective = objective
        self.injected_model = model
        self.runtime = TrainingRuntime(config)
        self.registry: dict[str, RoleState] = {}
        self.step = 0
        self.data_position = 0
        self.algorithm: Any = None
        self.logger: MetricsLogger | None = None
        self.checkpoints: CheckpointManager | None = None
        self._validator: Validator | None = None
        self._null_text: torch.Tensor | None = None
        self._negative_text: torch.Tensor | None = None
        self._is_setup = False

    # -- the runtime's view (kept as attributes: algorithms and tests read them)
    @property
    def device(self) -> torch.device:
        return self.runtime.device

    @property
    def rank(self) -> int:
        return self.runtime.rank

    @property
    def world_size(self) -> int:
        return self.runtime.world_size

    @property
    def dp_size(self) -> int:
        return self.runtime.dp_size

    @property
    def dp_rank(self) -> int:
        return self.runtime.dp_rank

    @property
    def fsdp(self) -> bool:
        return self.runtime.fsdp

    @property
    def mesh(self) -> Any:
        return self.runtime.mesh

    @property
    def ema(self) -> EMA | None:
        """The EMA of the evaluated role (validation and export use it)."""
        reg = self.registry.get(self.algorithm.eval_role) if self.algorithm is not None else None
        return reg.ema if reg is not None else None

    def setup(self) -> Trainer:
        """Processes, model family, data, algorithm and its roles, logging. Idempotent."""
        if self._is_setup:
            return self
        cfg = self.config
        if cfg.mixed_precision == "fp16":
            raise ValueError(
                "mixed_precision fp16 needs loss scaling, which the trainer does not do; use bf16"
            )
        self.runtime.start()
        from fastvideo.attention import resolve_backend_name

        self.backend = resolve_backend_name(cfg.attention.backend)
        if self.source is None:
            from fastvideo.resolve import resolve

            self.source = resolve(cfg.model.path, revision=cfg.model.revision)
            self.family = self.source.family
        if self.objective is None:
            self.objective = self.family.training_objective(self.source)
        if hasattr(self.objective, "with_options"):
            self.objective = self.objective.with_options(cfg.objective)
        self.output_dir = cfg.output_path
        if self.rank == 0:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        from fastvideo.registry import get_registry

        algorithm_cls: Any = get_registry().get("training_algorithm", cfg.algorithm).cls
        unknown = sorted(set(cfg.roles) - {r.name for r in algorithm_cls.roles})
        if unknown:
            raise ValueError(
                f"roles.{unknown[0]}: training algorithm {cfg.algorithm!r} has no such role; its roles: "
                f"{', '.join(r.name for r in algorithm_cls.roles)}"
            )
        self.algorithm = algorithm_cls(self)
        self.checkpoints = CheckpointManager(
            self.output_dir / CHECKPOINTS,
            rank=self.rank,
            world_size=self.world_size,
            keep_last=cfg.checkpoint.keep_last,
            eval_role=self.algorithm.eval_role,
        )
        if self.dataset is None:
            self.dataset = self.algorithm.make_dataset()
        if self.dataset is None:
            self.dataset = LatentDataset(cfg.data.path)
        self._null_text = self._dataset_text("null_text")  # the empty prompt, for caption dropout
        self._negative_text = self._dataset_text("negative_text")  # the negative prompt (CFG teachers)
        self.algorithm.setup()
        self._check_roles()
        self._is_setup = True
        return self

    def _dataset_text(self, name: str) -> torch.Tensor | None:
        value = getattr(self.dataset, name, None)
        return None if value is None else value.to(self.device)

    def _check_roles(self) -> None:
        declared = [r.name for r in self.algorithm.roles]
        if not self.registry:
            raise ValueError(
                f"training algorithm {self.config.algorithm!r} registered no model in setup(); call ctx.register"
            )
        missing = [r for r in declared if r not in self.registry]
        if missing:
            raise ValueError(
                f"training algorithm {self.config.algorithm!r} declares role {missing[0]!r} but registered no "
                f"model for it in setup() (registered: {', '.join(self.registry)})"
            )

    # -- services for algorithms
    def load_transformer(
        self,
        component: str | None = None,
        *,
        dtype: str = "fp32",
        attention_backend: str | None = None,
        lazy: bool = False,
    ) -> nn.Module:
        """The family's DiT (ours) for ``component`` (default ``model.component``), in ``dtype``, on
        this rank's device (on the CPU when it will be sharded: FSDP2 moves the shards), with the
        per-layer modules of ``attention_backend`` (default: the run's backend; a distillation's dense
        teacher passes a dense one).

        ``lazy``: when the run shards, the DiT comes back on ``meta`` with its checkpoint attached and
        :meth:`prepare_model` reads each rank's shards from the files after FSDP2 has split it (one
        tensor at a time: no process holds the whole model; :mod:`fastvideo.loader.deferred`). Only
        for a model handed to :meth:`prepare_model` as loaded (LoRA adds adapters first: not lazy).
        Families whose DiT does not load through :meth:`fastvideo.models.DiT.from_pretrained` load
        as usual."""
        if self.injected_model is not None:
            model, self.injected_model = self.injected_model, None
            return model
        device = "cpu" if self.fsdp else self.device
        comp = component or self.config.model.component

        def load() -> nn.Module:
            return self.family.load_transformer(
                self.source,
                component=comp,
                dtype=dtype,
                device=device,
                attention_backend=attention_backend or self.backend,
            )

        if not (lazy and self.fsdp):
            return load()
        from fastvideo.loader.policy import LoadPolicy

        with LoadPolicy(defer_weights=True).active():
            return load()

    def prepare_model(self, model: nn.Module, *, role: str | None = None) -> nn.Module:
        """Activation checkpointing, sequence parallelism and FSDP2 as configured; train mode. With
        ``role``, as that declared role needs (a frozen one: eval mode, no grad, sharded only if the
        role's ``shard`` says so)."""
        if role is None:
            return self.runtime.prepare_model(model)
        spec = self.algorithm.role(role)
        return self.runtime.prepare_model(model, trainable=spec.trainable, shard=self.fsdp and spec.shard)

    def make_optimizer(
        self, model_or_params: nn.Module | Any, *, role: str | None = None
    ) -> torch.optim.Optimizer:
        """AdamW over the parameters that require grad, with ``optim`` (and ``roles.<role>.optim``)."""
        params = model_or_params.parameters() if isinstance(model_or_params, nn.Module) else model_or_params
        trainable = [p for p in params if p.requires_grad]
        if not trainable:
            raise ValueError(
                f"no parameter requires grad: nothing to train{f' for role {role!r}' if role else ''}"
            )
        o = self.config.optim_for(role)
        return torch.optim.AdamW(trainable, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)

    def make_scheduler(self, optimizer: torch.optim.Optimizer, *, role: str | None = None) -> Any:
        o, total = self.config.optim_for(role), self.config.max_steps

        def factor(i: int) -> float:
            return lr_factor(
                i, warmup=o.warmup_steps, total=total, kind=o.scheduler, min_ratio=o.min_lr_ratio
            )

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    def register(
        self,
        role: str,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        scheduler: Any = "auto",
        trainable_only: bool = False,
    ) -> None:
        """Checkpoint ``model`` as ``role`` (+ optimizer and lr schedule, made here when
        ``scheduler="auto"``, and an EMA when the config enables it for this role)."""
        try:
            spec = self.algorithm.role(role)
        except KeyError as exc:
            raise ValueError(exc.args[0]) from None
        if scheduler == "auto":
            scheduler = self.make_scheduler(optimizer, role=role) if optimizer is not None else None
        ema_cfg = self.config.ema_for(role)
        ema = None
        if spec.trainable and spec.ema and ema_cfg.decay > 0:
            ema = EMA(
                model,
                decay=ema_cfg.decay,
                start_step=ema_cfg.start_step,
                every_steps=ema_cfg.every_steps,
                offload=ema_cfg.offload,
            )
        self.registry[role] = RoleState(spec, model, optimizer, scheduler, trainable_only, ema)

    def registered(self, role: str) -> RoleState:
        if role not in self.registry:
            raise KeyError(
                f"no model registered as {role!r}; registered: {', '.join(self.registry) or 'none'}"
            )
        return self.registry[role]

    def autocast(self) -> Any:
        return self.runtime.autocast()

    def backend_options(self, step: int | None = None) -> dict[str, dict[str, Any]]:
        """The attention backend's option values for optimizer step ``step`` (1-based; default the
        current one), as the step context carries them: the backend evaluates its schedules (a
        sparsity ramp) after ``step - 1`` completed steps, so a ramp's first step is at its start."""
        from fastvideo.attention.options import resolve_options

        done = (self.step if step is None else step) - 1
        configured = self.config.attention
        options = {(configured.backend or self.backend).strip().lower().replace("_", "-"): configured.options}
        return resolve_options(
            self.backend, options, step=max(0, done), total=self.config.max_steps, training=True
        )

    def generators(self, micro: dict[str, Any], stream: int = 0) -> list[torch.Generator]:
        """One seeded CPU generator per sample of ``micro`` (see :func:`sample_generator`)."""
        return [sample_generator(self.config.seed, self.step, int(p), stream) for p in micro["position"]]

    def to_device(self, micro: dict[str, Any]) -> dict[str, Any]:
        """``micro`` on this rank's device, with the dataset's ``null_text`` (empty prompt) and
        ``negative_text`` (negative prompt) embeddings when it has them."""
        batch = {
            k: (v.to(self.device, non_blocking=True) if k != "position" else v) for k, v in micro.items()
        }
        if self._null_text is not None:
            batch["null_text"] = self._null_text
        if self._negative_text is not None:
            batch["negative_text"] = self._negative_text
        return batch

    def step_context(self, model: nn.Module, latents: torch.Tensor) -> StepContext:
        grid_fn = getattr(model, "token_grid", None)
        grid = grid_fn(tuple(latents.shape)) if callable(grid_fn) else None
        return StepContext(
            grid=grid, step_index=self.step, num_steps=self.config.max_steps, options=self.backend_options()
        )

    def objective_loss(
        self, model: nn.Module, micro: dict[str, Any], stream: int = 0
    ) -> tuple[torch.Tensor, dict]:
        """The family objective on one micro-batch, under autocast and the attention step context."""
        gens = self.generators(micro, stream)
        batch = self.to_device(micro)
        with self.autocast(), step_context(self.step_context(model, batch["latents"])):
            return self.objective(model, batch, gens)

    def backward(self, loss: torch.Tensor) -> None:
        # No sp_size factor under sequence parallelism: every sp rank computes the same full loss and
        # the output all-gather's backward is a reduce-scatter (sum over the sp ranks), so each rank's
        # gradient is already sp_size x its token shard's share (and the full one for layers after the
        # gather); FSDP2's mean over the sp ranks is then the one-process gradient.
        loss.backward()

    def gradient_sync(self, model: nn.Module, enabled: bool) -> None:
        """Skip FSDP2's reduce-scatter on all but the last micro-batch of a step."""
        setter = getattr(model, "set_requires_gradient_sync", None)
        if callable(setter):
            setter(enabled)

    def optimizer_step(self, optimizer: torch.optim.Optimizer, model: nn.Module) -> dict[str, float]:
        """Clip (``optim.max_grad_norm`` of the optimizer's role), step, advance the lr schedule,
        zero the grads."""
        params = [p for group in optimizer.param_groups for p in group["params"]]
        role = next((r.role for r in self.registry.values() if r.optimizer is optimizer), None)
        max_norm = self.config.optim_for(role).max_grad_norm or float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        full = getattr(norm, "full_tensor", None)
        norm = full() if callable(full) else norm
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        for reg in self.registry.values():
            if reg.optimizer is optimizer and reg.scheduler is not None:
                reg.scheduler.step()
        return {"grad_norm": float(norm), "lr": float(lr)}

    def mean_over_ranks(self, value: torch.Tensor) -> float:
        """The mean of a scalar over all ranks (losses for logging)."""
        return self.runtime.mean_over_ranks(value)

    def export_diffusers(self, model: nn.Module, folder: str | Path) -> Path:
        from fastvideo.training.export import export_diffusers

        return export_diffusers(
            self.family,
            self.source,
            model,
            folder,
            component=self.config.model.component,
            dtype=self.config.export.dtype,
        )

    # -- checkpoints
    @property
    def checkpoint_root(self) -> Path:
        return self.output_dir / CHECKPOINTS

    def save_checkpoint(self) -> Path:
        assert self.checkpoints is not None
        path = self.checkpoints.save(
            self.step,
            self.registry,
            counters={"step": self.step, "data_position": self.data_position},
            algorithm=self.algorithm.state_dict(),
        )
        if self.logger is not None:
            self.logger.event(self.step, "checkpoint", path=str(path))
        return path

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore every role's model, optimizer, schedule and EMA, the RNG states, the algorithm's
        state and the data position."""
        assert self.checkpoints is not None
        counters, algorithm = self.checkpoints.load(
            path, self.registry, algorithm=self.algorithm.state_dict()
        )
        if algorithm is not None:
            self.algorithm.load_state_dict(algorithm)
        self.step = counters["step"]
        self.data_position = counters["data_position"]

    def _resume_path(self) -> Path | None:
        assert self.checkpoints is not None
        return self.checkpoints.resume_path(self.resume_request, self.output_dir)

    # -- validation
    @contextlib.contextmanager
    def _eval_weights(self, model: nn.Module) -> Iterator[nn.Module]:
        """``model`` with the EMA weights in it when ``export.use_ema`` (validation and export)."""
        ema = self.ema
        with (
            ema.applied(model) if ema is not None and self.config.export.use_ema else contextlib.nullcontext()
        ):
            yield model

    def validate(self) -> list[str]:
        """Write one video per validation prompt with the current (or EMA) weights; returns paths."""
        if self._validator is None:
            self._validator = Validator(
                self.family,
                self.source,
                device=str(self.device),
                attention_backend=self.backend,
                component=self.config.model.component,
            )
        model = self.algorithm.eval_model()
        model.eval()
        try:
            with self._eval_weights(model), self.autocast():
                paths = self._validator.write(
                    model,
                    self.config.validation,
                    self.output_dir / "validation",
                    step=self.step,
                    main=self.rank == 0,
                )
        finally:
            model.train()
        if self.logger is not None:
            self.logger.event(self.step, "validation", videos=paths)
        return paths

    # -- the loop
    def _batches(self) -> Iterator[tuple[int, list[dict[str, Any]]]]:
        d = self.config.data
        return iterate_micro_batches(
            self.dataset,
            seed=self.config.seed,
            position=self.data_position,
            batch_size=d.batch_size,
            dp_rank=self.dp_rank,
            dp_size=self.dp_size,
            grad_accum_steps=d.grad_accum_steps,
            shuffle=d.shuffle,
        )

    def run_step(self, micro_batches: list[dict[str, Any]]) -> dict[str, Any]:
        """Optimizer step ``self.step``: the algorithm's ``train_step`` under the attention backend
        and step context, then every role's EMA update. Returns the algorithm's metrics."""
        from fastvideo.attention import use_backend

        # the step context stays set through backward: recomputed (checkpointed) blocks must
        # dispatch attention exactly as the forward did
        latents = micro_batches[0].get("latents")
        ctx = (
            self.step_context(self.algorithm.eval_model(), latents)
            if latents is not None
            else StepContext(step_index=self.step, num_steps=self.config.max_steps)
        )
        with use_backend(self.backend), step_context(ctx):
            metrics = self.algorithm.train_step(micro_batches)
        for reg in self.registry.values():
            if reg.ema is not None:
                reg.ema.update(reg.model, self.step)
        self.runtime.synchronize()
        return metrics

    def _time_is_up(self, started: float) -> bool:
        """Whether ``max_minutes`` have passed since ``started``; rank 0's clock decides for all."""
        return self.runtime.rank0_decides(time.monotonic() - started >= 60.0 * self.config.max_minutes)

    def _due(self, every: int) -> bool:
        return every > 0 and self.step % every == 0

    def train(self) -> dict[str, Any]:
        """Run until ``max_steps``; returns ``{"step", "loss", "checkpoint", "export"}``."""
        self.setup()
        cfg = self.config
        resume = self._resume_path()
        if resume is not None:
            self.load_checkpoint(resume)
        if self.rank == 0:
            dump_config(cfg, self.output_dir / "config.yaml")
            truncate_after(self.output_dir / "metrics.jsonl", self.step)
        wandb = {
            "project": cfg.logging.wandb_project,
            "entity": cfg.logging.wandb_entity,
            "name": cfg.logging.wandb_run_name,
            "config": cfg.to_dict(),
        }
        self.logger = MetricsLogger(
            self.output_dir,
            enabled=self.rank == 0,
            every_steps=cfg.logging.every_steps,
            max_steps=cfg.max_steps,
            wandb=wandb,
        )
        if resume is not None:
            self.logger.event(self.step, "resume", path=str(resume))
        last: dict[str, Any] = {}
        saved_at = self.step if resume is not None else -1  # a finished run resumed: nothing new to save
        try:
            from fastvideo.attention import use_backend

            batches = self._batches()
            started = time.monotonic()
            while self.step < cfg.max_steps:
                self.step += 1
                position, micro_batches = next(batches)
                start = time.perf_counter()
                metrics = self.run_step(micro_batches)
                self.data_position = position
                metrics["step_time_s"] = time.perf_counter() - start
                metrics["samples_per_s"] = cfg.data.batch_size / metrics["step_time_s"]
                for backend, values in self.backend_options().items():  # e.g. vsa.sparsity, as ramped
                    metrics.update({f"{backend}.{k}": v for k, v in values.items() if _is_number(v)})
                if self.device.type == "cuda":
                    metrics["max_memory_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
                self.logger.log(self.step, metrics)
                last = metrics
                if self._due(cfg.checkpoint.every_steps):
                    self.save_checkpoint()
                    saved_at = self.step
                if self._due(cfg.validation.every_steps):
                    with use_backend(self.backend):
                        self.validate()
                if cfg.max_minutes and self._time_is_up(started):
                    self.logger.event(self.step, "time_limit", max_minutes=cfg.max_minutes)
                    break
            if saved_at != self.step:
                self.save_checkpoint()
            exported = None
            if cfg.export.enabled:
                with use_backend(self.backend):
                    exported = self.export()
            return {
                "step": self.step,
                "loss": last.get("loss"),
                "export": str(exported) if exported else None,
                "checkpoint": str(ckpt.step_dir(self.checkpoint_root, self.step)),
            }
        finally:
            self.logger.close()

    def export(self) -> Path:
        """The algorithm's export into ``<output_dir>/export`` (EMA weights with ``export.use_ema``)."""
        with self._eval_weights(self.algorithm.eval_model()):
            path = self.algorithm.export(self.output_dir / EXPORT)
        if self.logger is not None:
            self.logger.event(self.step, "export", path=str(path))
        return path

    def close(self) -> None:
        """Leave the process group this trainer joined."""
        self.runtime.close()


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
