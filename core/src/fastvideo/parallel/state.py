"""The process groups and device meshes of one parallel run, and the process's current state.

Layout: the ranks form the mesh ``("dp", "cfg", "ring", "ulysses")`` with the Ulysses dimension
innermost, so global rank ``= ((dp * C + cfg) * R + ring) * U + ulysses``. ``dp`` is data
parallelism (the replicas of a training run, each fed its own micro-batches; 1 in a generation).
The sequence-parallel group is ``ring x ulysses`` flattened (sp rank ``= ring * U + ulysses``), which
is the order tokens are sharded in. Text encoders use groups of ``tp_size`` consecutive ranks, FSDP
a ``("replicate", "shard")`` mesh.

:func:`init_parallel` is called once per process (by the launcher, by ``VideoGenerator`` under
torchrun, or by the training runtime); the stages read :func:`current` to decide whether to split
CFG branches or VAE tiles.
This module imports torch only inside functions.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch.distributed import ProcessGroup
    from torch.distributed.device_mesh import DeviceMesh

    from fastvideo.configs import ParallelConfig

#: Module state rather than a ContextVar (one run per process; traceable by torch.compile).
_CURRENT: list[ParallelState | None] = [None]


@dataclass(eq=False, kw_only=True)
class ParallelState:
    """Ranks, groups and meshes of this process. Groups of size 1 are ``None``."""

    config: ParallelConfig
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str  # "nccl" or "gloo"
    mesh: DeviceMesh  # ("dp", "cfg", "ring", "ulysses")
    dp_group: ProcessGroup | None
    cfg_group: ProcessGroup | None
    ring_group: ProcessGroup | None
    ulysses_group: ProcessGroup | None
    sp_group: ProcessGroup | None  # ring x ulysses
    tp_group: ProcessGroup | None
    fsdp_mesh: DeviceMesh | None  # ("replicate", "shard") or ("shard",), only with fsdp
    owns_process_group: bool  # whether init_parallel created the default group (and tears it down)

    @property
    def dp_size(self) -> int:
        return self.config.dp_size

    @property
    def cfg_size(self) -> int:
        return self.config.cfg_degree

    @property
    def ring_size(self) -> int:
        return self.config.ring_size

    @property
    def ulysses_size(self) -> int:
        return self.config.ulysses_size

    @property
    def sp_size(self) -> int:
        return self.ring_size * self.ulysses_size

    @property
    def tp_size(self) -> int:
        return self.config.tp_size

    @property
    def dp_rank(self) -> int:
        return self.rank // (self.cfg_size * self.sp_size)

    @property
    def cfg_rank(self) -> int:
        return (self.rank // self.sp_size) % self.cfg_size

    @property
    def sp_rank(self) -> int:
        return self.rank % self.sp_size

    @property
    def ring_rank(self) -> int:
        return self.sp_rank // self.ulysses_size

    @property
    def ulysses_rank(self) -> int:
        return self.sp_rank % self.ulysses_size

    @property
    def tp_rank(self) -> int:
        return self.rank % self.tp_size

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes the video and prints."""
        return self.rank == 0


def current() -> ParallelState | None:
    """The state of this process's parallel run, or ``None`` in a one-process run."""
    return _CURRENT[0]


def env_world_size() -> int:
    """``WORLD_SIZE`` as set by torchrun (or the launcher); 1 when absent."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ValueError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} must be an integer") from None


def _pick_device(requested: str | None, local_rank: int) -> torch.device:
    import torch

    if requested is not None and torch.device(requested).type == "cpu":
        return torch.device("cpu")
    if requested is not None and torch.device(requested).type != "cuda":
        raise ValueError(f"device={requested!r}: parallel runs support cuda and cpu devices")
    if not torch.cuda.is_available():
        if requested is not None:
            raise ValueError(
                f"device={requested!r} was requested but CUDA is not available; use --device cpu"
            )
        return torch.device("cpu")
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise ValueError(
            f"local rank {local_rank} has no GPU: {count} visible (CUDA_VISIBLE_DEVICES); "
            f"use at most {count} processes per machine"
        )
    return torch.device("cuda", local_rank)


def _groups(mesh: DeviceMesh, dims: tuple[str, ...]) -> ProcessGroup | None:
    if all(mesh[d].size() == 1 for d in dims):
        return None
    if len(dims) == 1:
        return mesh.get_group(dims[0])
    return mesh[dims]._flatten("_".join(dims)).get_group()


def _subgroup(world: int, size: int) -> ProcessGroup | None:
    """This rank's group among consecutive blocks of ``size`` ranks (every rank creates all)."""
    import torch.distributed as dist

    if size == 1:
        return None
    group, _ = dist.new_subgroups_by_enumeration([list(range(s, s + size)) for s in range(0, world, size)])
    return group


def init_parallel(config: ParallelConfig, device: str | None = None) -> ParallelState:
    """Join (or reuse) the default process group and build this run's meshes and groups.

    Reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` as set by
    torchrun or :mod:`fastvideo.parallel.launch`. NCCL on CUDA devices, gloo on CPU.

    :raises ValueError: ``WORLD_SIZE`` differs from ``config.num_gpus``, or the devices don't fit.
    """
    import datetime

    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    world = dist.get_world_size() if dist.is_initialized() else env_world_size()
    if world != config.num_gpus:
        raise ValueError(
            f"num_gpus={config.num_gpus} but this run has {world} process(es); launch one process per GPU "
            f"(fv generate --num-gpus {config.num_gpus}, or torchrun --nproc-per-node {config.num_gpus})"
        )
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = _pick_device(device, local_rank)
    owns = not dist.is_initialized()
    if owns:
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=config.timeout_s))
    backend = str(dist.get_backend())
    rank = dist.get_rank()
    shape = (config.dp_size, config.cfg_degree, config.ring_size, config.ulysses_size)
    mesh = init_device_mesh(dev.type, shape, mesh_dim_names=("dp", "cfg", "ring", "ulysses"))
    fsdp_mesh = None
    if config.fsdp:
        shard = config.hsdp_shard_size or world
        if shard == world:
            fsdp_mesh = init_device_mesh(dev.type, (world,), mesh_dim_names=("shard",))
        else:
            fsdp_mesh = init_device_mesh(
                dev.type, (world // shard, shard), mesh_dim_names=("replicate", "shard")
            )
    state = ParallelState(
        config=config,
        rank=rank,
        world_size=world,
        local_rank=local_rank,
        device=dev,
        backend=backend,
        mesh=mesh,
        dp_group=_groups(mesh, ("dp",)),
        cfg_group=_groups(mesh, ("cfg",)),
        ring_group=_groups(mesh, ("ring",)),
        ulysses_group=_groups(mesh, ("ulysses",)),
        sp_group=_groups(mesh, ("ring", "ulysses")),
        tp_group=_subgroup(world, config.tp_size),
        fsdp_mesh=fsdp_mesh,
        owns_process_group=owns,
    )
    _CURRENT[0] = state
    return state


def teardown() -> None:
    """Forget the current state and destroy the default group if :func:`init_parallel` made it."""
    state, _CURRENT[0] = _CURRENT[0], None
    if state is not None:
        from fastvideo.parallel.peer import forget_exchanges

        forget_exchanges()
    if state is not None and state.owns_process_group:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def describe(state: ParallelState) -> str:
    """One line naming the layout, e.g. ``4 ranks: cfg 2 x ring 1 x ulysses 2, tp 1, fsdp off``
    (``dp N x`` first when there are several data-parallel replicas)."""
    c = state.config
    fsdp = "off" if not c.fsdp else f"shard {c.hsdp_shard_size or state.world_size}"
    dp = f"dp {state.dp_size} x " if state.dp_size > 1 else ""
    return (
        f"{state.world_size} ranks ({state.backend}): {dp}cfg {state.cfg_size} x ring {state.ring_size} x "
        f"ulysses {state.ulysses_size}, tp {state.tp_size}, fsdp {fsdp}"
    )
