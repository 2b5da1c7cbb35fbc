"""The processes, devices and parallel wrapping of one training run.

:class:`TrainingRuntime` owns what every algorithm and model role shares: this rank's device, the
process group (joined once), the data-parallel x sequence-parallel layout, mixed precision, and how
a model is made ready to train (activation checkpointing, sequence parallelism through the
registered ``ulysses`` strategy, FSDP2 through the ``fsdp`` strategy's ``shard_model``).

Sequence parallelism reuses :func:`fastvideo.parallel.state.init_parallel` (one call per run,
however many models are wrapped), so the attention seam and the inference stages see the same
:class:`~fastvideo.parallel.state.ParallelState` as in ``fv generate``.
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


class TrainingRuntime:
    """Devices, ranks and parallel layout of a training run; built by :meth:`start`.

    Attributes after :meth:`start`: ``device``, ``rank``, ``world_size``, ``local_rank``,
    ``dp_size``/``dp_rank`` (data parallel), ``sp_size``, ``fsdp`` (whether trainable models are
    sharded) and ``mesh`` (``("dp", "sp")``, only with several processes).
    """

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.device = torch.device("cpu")
        self.rank, self.world_size, self.local_rank = 0, 1, 0
        self.dp_size, self.dp_rank, self.sp_size = 1, 0, 1
        self.fsdp = False
        self.mesh: Any = None
        self._sp_state: ParallelState | None = None
        self.owns_process_group = False

    # ---------------------------------------------------------------- setup

    def start(self) -> TrainingRuntime:
        """Pick the device, join the process group (torchrun's env), check the layout, seed."""
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = self._pick_device()
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
            self.owns_process_group = True
        self.world_size = dist.get_world_size() if dist.is_initialized() else 1
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self._check_layout()
        if self.world_size > 1:
            from torch.distributed.device_mesh import init_device_mesh

            self.mesh = init_device_mesh(
                self.device.type, (self.dp_size, self.sp_size), mesh_dim_names=("dp", "sp")
            )
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
        sp = cfg.parallel.sp_size
        if self.world_size % sp:
            raise ValueError(f"parallel.sp_size={sp} must divide the number of processes ({self.world_size})")
        if sp > 1 and sp != self.world_size:
            raise ValueError(
                f"parallel.sp_size={sp} with {self.world_size} processes: sequence parallelism inside several "
                f"data-parallel groups is not supported yet; use sp_size = the number of processes"
            )
        self.sp_size = sp
        self.dp_size, self.dp_rank = self.world_size // sp, self.rank // sp
        data = cfg.data
        if data.batch_size % (data.grad_accum_steps * self.dp_size):
            raise ValueError(
                f"data.batch_size={data.batch_size} must be a multiple of data.grad_accum_steps "
                f"({data.grad_accum_steps}) x data-parallel ranks ({self.dp_size})"
            )
        self.fsdp = cfg.parallel.fsdp if cfg.parallel.fsdp is not None else self.world_size > 1
        if self.world_size > 1 and not self.fsdp:
            raise ValueError("several processes need parallel.fsdp: true (plain DDP is not provided)")

    @staticmethod
    def seed_everything(seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)

    # ---------------------------------------------------------------- models

    def sequence_parallel_state(self) -> ParallelState:
        """The run's :class:`ParallelState` for Ulysses (``init_parallel`` once, reused by every model)."""
        if self._sp_state is None:
            from fastvideo.configs import ParallelConfig
            from fastvideo.parallel.state import init_parallel

            config = ParallelConfig(num_gpus=self.world_size, sp_size=self.sp_size)
            self._sp_state = init_parallel(config, device=str(self.device))
        return self._sp_state

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
        ``requires_grad_(False)``. ``shard`` defaults to the run's FSDP setting.
        """
        par = self.config.parallel
        shard = self.fsdp if shard is None else shard and self.world_size > 1
        if trainable and par.activation_checkpointing:
            apply_activation_checkpointing(model)
        if not trainable:
            model.requires_grad_(False)
        if self.sp_size > 1:
            model = self.apply_sequence_parallel(model)
        if shard:
            from fastvideo.parallel.fsdp import shard_model  # the fsdp strategy's own sharding

            mesh = self.mesh["dp", "sp"]._flatten("dp_sp") if self.sp_size > 1 else self.mesh["dp"]
            model = shard_model(model, mesh)  # parameters stay fp32: autocast does the bf16 compute
        else:
            model = model.to(self.device)
        return model.train() if trainable else model.eval()

    def autocast(self) -> Any:
        enabled = self.config.mixed_precision != "fp32"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

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
        """Leave the process group (the one this run joined, or torchrun's)."""
        if dist.is_initialized():
            dist.destroy_process_group()
