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

Parallelism comes from :mod:`fastvideo.parallel`: FSDP2 through the ``fsdp`` strategy's
``shard_model`` (one unit per block class in the model's ``fsdp_units``) and sequence parallelism
through the registered ``ulysses`` strategy (:func:`apply_sequence_parallel`).
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from fastvideo.attention.context import StepContext, step_context
from fastvideo.errors import CheckpointError
from fastvideo.training import checkpoint as ckpt
from fastvideo.training.config import TrainConfig, dump_config
from fastvideo.training.data import LatentDataset, iterate_micro_batches
from fastvideo.training.ema import EMA
from fastvideo.training.metrics import MetricsLogger, truncate_after

CHECKPOINTS = "checkpoints"
EXPORT = "export"


# ---------------------------------------------------------------- parallel seams


def apply_sequence_parallel(
    model: nn.Module, sp_size: int, world_size: int, device: torch.device
) -> nn.Module:
    """Ulysses sequence parallelism through the registered ``ulysses`` strategy of
    :mod:`fastvideo.parallel` (token shards per rank, all-to-all around attention)."""
    from fastvideo.registry import get_registry

    table = get_registry().entries["parallel_strategy"]
    if "ulysses" not in table:
        raise ValueError(
            f"parallel.sp_size={sp_size} needs the 'ulysses' parallel strategy, which nothing registers here "
            f"(registered: {', '.join(sorted(table)) or 'none'}); set parallel.sp_size: 1"
        )
    from fastvideo.configs import ParallelConfig
    from fastvideo.parallel.state import init_parallel

    state = init_parallel(ParallelConfig(num_gpus=world_size, sp_size=sp_size), device=str(device))
    return table["ulysses"].cls().wrap(model, state)


def apply_activation_checkpointing(model: nn.Module) -> int:
    """Recompute every ``fsdp_units`` block in the backward pass; returns how many were wrapped."""
    from torch.distributed._composable import checkpoint

    units = tuple(getattr(model, "fsdp_units", ()))
    blocks = [m for m in model.modules() if m is not model and type(m).__name__ in units]
    if not blocks:
        raise ValueError(
            f"activation checkpointing needs {type(model).__name__}.fsdp_units (the block class names); it has none"
        )
    for block in blocks:
        checkpoint(block)
    return len(blocks)


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


@dataclass
class Registered:
    """A model the trainer checkpoints (with its optimizer and lr schedule)."""

    role: str
    model: nn.Module
    optimizer: torch.optim.Optimizer | None
    scheduler: Any
    trainable_only: bool  # checkpoint only parameters that require grad (LoRA: the adapters)


def _rng_state() -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state().numpy().tobytes(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state().numpy().tobytes()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(torch.frombuffer(bytearray(state["torch"]), dtype=torch.uint8))
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.frombuffer(bytearray(state["cuda"]), dtype=torch.uint8))


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
        self.registry: dict[str, Registered] = {}
        self.step = 0
        self.data_position = 0
        self.ema: EMA | None = None
        self.algorithm: Any = None
        self.logger: MetricsLogger | None = None
        self._validation: Any = None
        self._null_text: torch.Tensor | None = None
        self._is_setup = False

    # -- processes and devices
    def _init_distributed(self) -> None:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if self.config.device is not None:
            self.device = torch.device(self.config.device)
            if self.device.type == "cuda" and self.device.index is None:
                self.device = torch.device("cuda", self.local_rank)
        elif torch.cuda.is_available():
            self.device = torch.device("cuda", self.local_rank)
        else:
            self.device = torch.device("cpu")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        self.world_size = dist.get_world_size() if dist.is_initialized() else 1
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        sp = self.config.parallel.sp_size
        if self.world_size % sp:
            raise ValueError(f"parallel.sp_size={sp} must divide the number of processes ({self.world_size})")
        if sp > 1 and sp != self.world_size:
            raise ValueError(
                f"parallel.sp_size={sp} with {self.world_size} processes: sequence parallelism inside several "
                f"data-parallel groups is not supported yet; use sp_size = the number of processes"
            )
        self.dp_size, self.dp_rank = self.world_size // sp, self.rank // sp
        data = self.config.data
        if data.batch_size % (data.grad_accum_steps * self.dp_size):
            raise ValueError(
                f"data.batch_size={data.batch_size} must be a multiple of data.grad_accum_steps "
                f"({data.grad_accum_steps}) x data-parallel ranks ({self.dp_size})"
            )
        self.fsdp = (
            self.config.parallel.fsdp if self.config.parallel.fsdp is not None else self.world_size > 1
        )
        if self.world_size > 1 and not self.fsdp:
            raise ValueError("several processes need parallel.fsdp: true (plain DDP is not provided)")
        self.mesh = None
        if self.world_size > 1:
            from torch.distributed.device_mesh import init_device_mesh

            self.mesh = init_device_mesh(self.device.type, (self.dp_size, sp), mesh_dim_names=("dp", "sp"))

    def _seed(self) -> None:
        seed = self.config.seed
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)

    def setup(self) -> Trainer:
        """Processes, model family, data, algorithm, EMA, logging. Idempotent."""
        if self._is_setup:
            return self
        cfg = self.config
        if cfg.mixed_precision == "fp16":
            raise ValueError(
                "mixed_precision fp16 needs loss scaling, which the trainer does not do; use bf16"
            )
        self._init_distributed()
        self._seed()
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

        self.algorithm = get_registry().get("training_algorithm", cfg.algorithm).cls(self)
        if self.dataset is None:
            self.dataset = self.algorithm.make_dataset()
        if self.dataset is None:
            self.dataset = LatentDataset(cfg.data.path)
        null_text = getattr(self.dataset, "null_text", None)  # the empty prompt, for caption dropout
        self._null_text = None if null_text is None else null_text.to(self.device)
        self.algorithm.setup()
        if not self.registry:
            raise ValueError(
                f"training algorithm {cfg.algorithm!r} registered no model in setup(); call ctx.register"
            )
        if cfg.ema.decay > 0:
            self.ema = EMA(
                self.algorithm.eval_model(),
                decay=cfg.ema.decay,
                start_step=cfg.ema.start_step,
                every_steps=cfg.ema.every_steps,
            )
        self._is_setup = True
        return self

    # -- services for algorithms
    def load_transformer(self, component: str | None = None, *, dtype: str = "fp32") -> nn.Module:
        """The family's DiT (ours) for ``component`` (default ``model.component``), in ``dtype``, on
        this rank's device (on the CPU when it will be sharded: FSDP2 moves the shards)."""
        if self.injected_model is not None:
            model, self.injected_model = self.injected_model, None
            return model
        device = "cpu" if self.fsdp else self.device
        comp = component or self.config.model.component
        return self.family.load_transformer(
            self.source, component=comp, dtype=dtype, device=device, attention_backend=self.backend
        )

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Activation checkpointing, sequence parallelism and FSDP2 as configured; train mode."""
        par = self.config.parallel
        if par.activation_checkpointing:
            apply_activation_checkpointing(model)
        if par.sp_size > 1:
            model = apply_sequence_parallel(model, par.sp_size, self.world_size, self.device)
        if self.fsdp:
            assert self.mesh is not None
            mesh = self.mesh["dp", "sp"]._flatten("dp_sp") if par.sp_size > 1 else self.mesh["dp"]
            from fastvideo.parallel.fsdp import shard_model  # the fsdp strategy's own sharding

            model = shard_model(model, mesh)  # parameters stay fp32: autocast does the bf16 compute
        else:
            model = model.to(self.device)
        return model.train()

    def make_optimizer(self, model_or_params: nn.Module | Any) -> torch.optim.Optimizer:
        """AdamW over the parameters that require grad."""
        params = model_or_params.parameters() if isinstance(model_or_params, nn.Module) else model_or_params
        trainable = [p for p in params if p.requires_grad]
        if not trainable:
            raise ValueError("no parameter requires grad: nothing to train")
        o = self.config.optim
        return torch.optim.AdamW(trainable, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)

    def make_scheduler(self, optimizer: torch.optim.Optimizer) -> Any:
        o, total = self.config.optim, self.config.max_steps

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
        """Checkpoint ``model`` (+ optimizer and lr schedule, made here when ``scheduler="auto"``)."""
        if "." in role or "-" in role:
            raise ValueError(f"role names are identifiers (no '.' or '-'), got {role!r}")
        if scheduler == "auto":
            scheduler = self.make_scheduler(optimizer) if optimizer is not None else None
        self.registry[role] = Registered(role, model, optimizer, scheduler, trainable_only)

    def registered(self, role: str) -> Registered:
        if role not in self.registry:
            raise KeyError(
                f"no model registered as {role!r}; registered: {', '.join(self.registry) or 'none'}"
            )
        return self.registry[role]

    def autocast(self) -> Any:
        enabled = self.config.mixed_precision != "fp32"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

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
        return {k: (v.to(self.device, non_blocking=True) if k != "position" else v) for k, v in micro.items()}

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
        if self._null_text is not None:
            batch["null_text"] = self._null_text
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
        """Clip (``optim.max_grad_norm``), step, advance the lr schedule, zero the grads."""
        params = [p for group in optimizer.param_groups for p in group["params"]]
        max_norm = self.config.optim.max_grad_norm or float("inf")
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
        value = value.detach().float().reshape(())
        if self.world_size > 1:
            value = value.to(self.device)
            dist.all_reduce(value)
            value = value / self.world_size
        return float(value)

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

    def _model_state(self, reg: Registered) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        opts = StateDictOptions(ignore_frozen_params=reg.trainable_only)
        return get_model_state_dict(reg.model, options=opts)

    def _state(self, keys: set[str] | None = None) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        state: dict[str, Any] = {
            "trainer": {"step": self.step, "data_position": self.data_position, "world_size": self.world_size}
        }
        state[f"rng-rank{self.rank}"] = _rng_state()
        algo = self.algorithm.state_dict()
        if algo:
            state["algorithm"] = algo
        for role, reg in self.registry.items():
            state[f"model-{role}"] = self._model_state(reg)
            if reg.optimizer is not None:
                state[f"optim-{role}"] = get_optimizer_state_dict(reg.model, reg.optimizer)
            if reg.scheduler is not None:
                state[f"sched-{role}"] = reg.scheduler.state_dict()
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        if keys is not None:
            state = {k: v for k, v in state.items() if k in keys}
        return state

    def save_checkpoint(self) -> Path:
        path = ckpt.save(
            self.checkpoint_root,
            self.step,
            self._state(),
            keep_last=self.config.checkpoint.keep_last,
            world_size=self.world_size,
        )
        if self.logger is not None:
            self.logger.event(self.step, "checkpoint", path=str(path))
        return path

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore models, optimizers, schedules, EMA, RNG states and the data position."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        keys = ckpt.saved_keys(path)
        missing = [f"model-{r}" for r in self.registry if f"model-{r}" not in keys]
        if missing:
            raise CheckpointError(
                f"{path} holds no {missing[0]!r}: it was written by another algorithm ({keys})"
            )
        state = ckpt.load(path, self._state(keys))
        for role, reg in self.registry.items():
            set_model_state_dict(
                reg.model, state[f"model-{role}"], options=StateDictOptions(strict=not reg.trainable_only)
            )
            if reg.optimizer is not None and f"optim-{role}" in state:
                set_optimizer_state_dict(reg.model, reg.optimizer, state[f"optim-{role}"])
            if reg.scheduler is not None and f"sched-{role}" in state:
                reg.scheduler.load_state_dict(state[f"sched-{role}"])
        if self.ema is not None and "ema" in state:
            self.ema.load_state_dict(state["ema"])
        if "algorithm" in state:
            self.algorithm.load_state_dict(state["algorithm"])
        if f"rng-rank{self.rank}" in state:
            _set_rng_state(state[f"rng-rank{self.rank}"])
        self.step = int(state["trainer"]["step"])
        self.data_position = int(state["trainer"]["data_position"])

    def _resume_path(self) -> Path | None:
        req = self.resume_request
        if req in (None, False):
            found = ckpt.latest(self.checkpoint_root)
            if found is not None:
                raise ValueError(
                    f"{self.output_dir} already holds checkpoint {found.name}; pass --resume to continue it "
                    f"or choose another output_dir"
                )
            return None
        if req in (True, "auto", "latest"):
            return ckpt.latest(self.checkpoint_root)
        path = Path(str(req))
        if not ckpt.is_complete(path):
            raise ValueError(
                f"--resume-from {path}: not a complete checkpoint (a step-N folder with a COMPLETE marker)"
            )
        return path

    # -- validation
    def validate(self) -> list[str]:
        """Write one video per validation prompt with the current (or EMA) weights; returns paths."""
        cfg = self.config.validation
        from fastvideo.configs import PipelineConfig
        from fastvideo.generator import VideoGenerator

        model = self.algorithm.eval_model()
        if self._validation is None:
            pipe_cfg = PipelineConfig(
                device=str(self.device), dtype="fp32", progress=False, attention_backend=self.backend
            )
            pipeline = self.family.build_pipeline(self.source, pipe_cfg)
            defaults = self.family.sampling_defaults(self.source)
            self._validation = VideoGenerator(self.source, pipeline, pipe_cfg, defaults)
        gen = self._validation
        component = self.config.model.component
        for stage in gen.pipeline.stages:
            if component == "transformer" and hasattr(stage, "transformer"):
                stage.transformer = model
            if component == "transformer_2" and hasattr(stage, "transformer_2"):
                stage.transformer_2 = model
        gen.pipeline.components[component] = model
        overrides = {
            k: getattr(cfg, k)
            for k in ("num_frames", "height", "width", "guidance_scale")
            if getattr(cfg, k) is not None
        }
        out_dir = self.output_dir / "validation"
        paths = []
        model.eval()
        try:
            ctx = (
                self.ema.applied(model)
                if self.ema is not None and self.config.export.use_ema
                else contextlib.nullcontext()
            )
            with ctx, self.autocast():
                for i, prompt in enumerate(cfg.prompts):
                    path = out_dir / f"step-{self.step:08d}-{i}.mp4" if self.rank == 0 else None
                    gen.generate_video(
                        prompt,
                        output_path=path,
                        overwrite=True,
                        seed=cfg.seed,
                        num_inference_steps=cfg.num_inference_steps,
                        **overrides,
                    )
                    if path is not None:
                        paths.append(str(path))
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
        and step context, then the EMA update. Returns the algorithm's metrics."""
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
        if self.ema is not None:
            self.ema.update(self.algorithm.eval_model(), self.step)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return metrics

    def _time_is_up(self, started: float) -> bool:
        """Whether ``max_minutes`` have passed since ``started``; rank 0's clock decides for all."""
        up = time.monotonic() - started >= 60.0 * self.config.max_minutes
        if self.world_size > 1:
            flag = torch.tensor([float(up)], device=self.device)
            dist.broadcast(flag, src=0)
            up = bool(flag.item())
        return up

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
        folder = self.output_dir / EXPORT
        model = self.algorithm.eval_model()
        ctx = (
            self.ema.applied(model)
            if self.ema is not None and self.config.export.use_ema
            else contextlib.nullcontext()
        )
        with ctx:
            path = self.algorithm.export(folder)
        if self.logger is not None:
            self.logger.event(self.step, "export", path=str(path))
        return path

    def close(self) -> None:
        """Leave the process group this trainer created."""
        if dist.is_initialized():
            dist.destroy_process_group()


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
