"""The processes, devices and parallel wrapping of one training run.

:class:`TrainingRuntime` owns what every algorithm and model role shares: this rank's device, the
process group (joined once), the data-parallel x sequence-parallel layout, mixed precision, and how
a model is made ready to train (activation checkpointing, sequence parallelism through the
registered ``ulysses`` strategy, FSDP2 through the ``fsdp`` strategy's ``shard_model``).

The layout is the one of ``fv generate``: :func:`fastvideo.parallel.state.init_parallel` is called
once per run with a :class:`~fastvideo.configs.ParallelConfig` of ``dp_size`` data-parallel replicas
of ``sp_size`` sequence-parallel ranks each, and its :class:`~fastvideo.parallel.state.ParallelState`
(mesh ``("dp", "cfg", "ring", "ulysses")``, Ulysses groups, the FSDP/HSDP mesh) serves every model
role, the attention seam and validation alike.
"""

from __future__ import annotations

import os
import random
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

if TYPE_CHECKING:
    from fastvideo.parallel.state import ParallelState
    from fastvideo.training.config import TrainConfig


def apply_activation_checkpointing(model: nn.Module) -> int:
    """Recompute every ``fsdp_units`` block in the backward pass; returns how many were wrapped.

    Under sequence parallelism the recompute runs with the token sharding of the block's forward
    (:func:`fastvideo.parallel.sequence.recompute_contexts`)."""
    from torch.distributed._composable import checkpoint

    from fastvideo.parallel.sequence import recompute_contexts

    units = tuple(getattr(model, "fsdp_units", ()))
    blocks = [m for m in model.modules() if m is not model and type(m).__name__ in units]
    if not blocks:
        raise ValueError(
            f"activation checkpointing needs {type(model).__name__}.fsdp_units (the block class names); it has none"
        )
    for block in blocks:
        checkpoint(block, context_fn=recompute_contexts)
    return len(blocks)


class TrainingRuntime:
    """Devices, ranks and parallel layout of a training run; built by :meth:`start`.

    Attributes after :meth:`start`: ``device``, ``rank``, ``world_size``, ``local_rank``,
    ``dp_size``/``dp_rank`` (data parallel), ``sp_size``, ``fsdp`` (whether trainable models are
    sharded), ``parallel`` (the run's :class:`~fastvideo.parallel.state.ParallelState`, only with
    several processes) and ``mesh`` (its ``("dp", "cfg", "ring", "ulysses")`` device mesh).
    """

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.device = torch.device("cpu")
        self.rank, self.world_size, self.local_rank = 0, 1, 0
        self.dp_size, self.dp_rank, self.sp_size = 1, 0, 1
        self.fsdp = False
        self.mesh: Any = None
        self.parallel: ParallelState | None = None

    # ---------------------------------------------------------------- setup

    def start(self) -> TrainingRuntime:
        """Pick the device, join the process group (torchrun's env) through ``init_parallel``, check
        the layout, seed."""
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = self._pick_device()
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        world = dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", "1"))
        self.world_size = world
        self._check_layout()
        if world > 1:
            from fastvideo.configs import ParallelConfig
            from fastvideo.parallel.state import init_parallel

            par = self.config.parallel
            config = ParallelConfig(
                num_gpus=world,
                dp_size=self.dp_size,
                sp_size=self.sp_size,
                fsdp=self.fsdp,
                hsdp_shard_size=par.hsdp_shard_size,
            )
            self.parallel = init_parallel(config, device=str(self.device))
            self.mesh = self.parallel.mesh
            self.rank, self.dp_rank = self.parallel.rank, self.parallel.dp_rank
        self.seed_everything(self.config.seed)
        return self

    def _pick_device(self) -> torch.device:
        requested = self.config.device
        if requested is not None:
            device = torch.device(requested)
            if device.type == "cuda" and device.index is None:
                device = torch.device("cuda", self.local_rank)
            return device
        return torch.device("cuda", self.local_rank) if torch.cuda.is_available() else torch.device("cpu")

    def _check_layout(self) -> None:
        cfg = self.config
        sp, world = cfg.parallel.sp_size, self.world_size
        if world % sp:
            raise ValueError(
                f"parallel.sp_size={sp} must divide the number of processes ({world}); "
                f"use a divisor of {world}"
            )
        self.sp_size = sp
        self.dp_size = world // sp
        data = cfg.data
        if data.batch_size % (data.grad_accum_steps * self.dp_size):
            raise ValueError(
                f"data.batch_size={data.batch_size} must be a multiple of data.grad_accum_steps "
                f"({data.grad_accum_steps}) x data-parallel ranks ({self.dp_size})"
            )
        self.fsdp = cfg.parallel.fsdp if cfg.parallel.fsdp is not None else world > 1
        if world > 1 and not self.fsdp:
            raise ValueError("several processes need parallel.fsdp: true (plain DDP is not provided)")
        shard = cfg.parallel.hsdp_shard_size
        if shard is not None and (world % shard or not self.fsdp):
            raise ValueError(
                f"parallel.hsdp_shard_size={shard} needs parallel.fsdp and must divide the number of "
                f"processes ({world}); use a divisor of {world} or leave it unset (shard over all ranks)"
            )

    @staticmethod
    def seed_everything(seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)

    # ---------------------------------------------------------------- models

    def sequence_parallel_state(self) -> ParallelState:
        """The run's :class:`ParallelState` (built once by :meth:`start`; every model shares it)."""
        if self.parallel is None:
            raise RuntimeError("the parallel state exists only in a run of several processes, after start()")
        return self.parallel

    def apply_sequence_parallel(self, model: nn.Module) -> nn.Module:
        """Ulysses sequence parallelism through the registered ``ulysses`` strategy of
        :mod:`fastvideo.parallel` (token shards per rank, all-to-all around attention)."""
        from fastvideo.registry import get_registry

        table = get_registry().entries["parallel_strategy"]
        if "ulysses" not in table:
            raise ValueError(
                f"parallel.sp_size={self.sp_size} needs the 'ulysses' parallel strategy, which nothing registers "
                f"here (registered: {', '.join(sorted(table)) or 'none'}); set parallel.sp_size: 1"
            )
        return table["ulysses"].cls().wrap(model, self.sequence_parallel_state())

    def prepare_model(
        self, model: nn.Module, *, trainable: bool = True, shard: bool | None = None
    ) -> nn.Module:
        """Make ``model`` ready for this run.

        Trainable models get activation checkpointing (when configured), sequence parallelism and
        FSDP2 (when the run shards), then train mode. Frozen ones (a distillation teacher) get the
        sequence parallelism, FSDP2 only when ``shard`` is true (to save memory), ``eval()`` mode and
        ``requires_grad_(False)``. ``shard`` defaults to the run's FSDP setting. A model a lazy load
        left on ``meta`` is filled last, after sharding (see ``Trainer.load_transformer``).
        """
        par = self.config.parallel
        shard = self.fsdp if shard is None else shard and self.world_size > 1
        if trainable and par.activation_checkpointing:
            apply_activation_checkpointing(model)
        if not trainable:
            model.requires_grad_(False)
        if self.sp_size > 1:
            model = self.apply_sequence_parallel(model)
        from fastvideo.loader.deferred import fill, pending

        if shard:
            from fastvideo.parallel.fsdp import shard_model  # the fsdp strategy's own sharding

            assert self.parallel is not None and self.parallel.fsdp_mesh is not None
            model = shard_model(
                model, self.parallel.fsdp_mesh
            )  # parameters stay fp32: autocast does the bf16 compute
            if pending(model) is not None:  # loaded lazily: each rank reads its shards now
                fill(model, self.device)
        elif pending(model) is not None:  # lazily loaded, not sharded (a frozen role)
            fill(model, self.device)
        else:
            model = model.to(self.device)
        return model.train() if trainable else model.eval()

    def autocast(self) -> Any:
        """bf16 autocast (off under ``mixed_precision: fp32``). Under FSDP2 without autocast's weight
        cache: it would keep a bf16 copy of every all-gathered weight until the forward ends, undoing
        the resharding after each block (a whole bf16 model a GPU: 28 GB for a 14B DiT)."""
        enabled = self.config.mixed_precision != "fp32"
        return torch.autocast(
            self.device.type, dtype=torch.bfloat16, enabled=enabled, cache_enabled=not self.fsdp
        )

    # ---------------------------------------------------------------- collectives

    def mean_over_ranks(self, value: torch.Tensor) -> float:
        """The mean of a scalar over all ranks (losses for logging)."""
        value = value.detach().float().reshape(())
        if self.world_size > 1:
            value = value.to(self.device)
            dist.all_reduce(value)
            value = value / self.world_size
        return float(value)

    def rank0_decides(self, flag: bool) -> bool:
        """Rank 0's ``flag`` on every rank (so that all stop at the same step)."""
        if self.world_size == 1:
            return flag
        tensor = torch.tensor([float(flag)], device=self.device)
        dist.broadcast(tensor, src=0)
        return bool(tensor.item())

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def close(self) -> None:
        """Forget the parallel state and leave the process group (the one this run joined, or torchrun's)."""
        from fastvideo.parallel.state import teardown

        teardown()
        self.parallel = None
        if dist.is_initialized():
            dist.destroy_process_group()
