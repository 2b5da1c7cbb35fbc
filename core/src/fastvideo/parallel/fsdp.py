"""FSDP2 (``torch.distributed.fsdp.fully_shard``) over a ``("shard",)`` or HSDP ``("replicate", "shard")`` mesh.

Each module whose class name is in the model's ``fsdp_units`` (Wan: ``WanBlock``) becomes one
FSDP unit, then the root takes the remaining parameters. Every rank keeps ``1 / shard`` of each
unit's weights; a unit's full weights exist only while it runs (all-gathered before, freed after
with ``reshard_after_forward``). For inference this lets a DiT larger than one GPU's memory run
on several; for training, gradients are reduce-scattered (and all-reduced across HSDP replicas).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn
    from torch.distributed.device_mesh import DeviceMesh


def shard_model(
    model: nn.Module,
    mesh: DeviceMesh,
    *,
    units: tuple[str, ...] | None = None,
    mp_policy: Any = None,
    reshard_after_forward: bool = True,
    offload: bool = False,
) -> nn.Module:
    """Apply ``fully_shard`` to each unit of ``model`` and to ``model`` itself, in place.

    :param units: class names of the sharding units (default: ``model.fsdp_units``).
    :param mp_policy: a ``torch.distributed.fsdp.MixedPrecisionPolicy`` (training: bf16 params,
        fp32 gradient reduction); None keeps the parameters' dtype.
    :param offload: keep the shards in CPU memory between uses (``CPUOffloadPolicy``).
    :raises ValueError: the model declares no units.
    """
    from torch.distributed.fsdp import CPUOffloadPolicy, fully_shard

    names = set(units if units is not None else getattr(model, "fsdp_units", ()))
    if not names:
        raise ValueError(
            f"{type(model).__name__} declares no fsdp_units (class names of the blocks to shard); add "
            f"e.g. fsdp_units = ('MyBlock',) to the model class, or run without --fsdp"
        )
    kwargs: dict[str, Any] = {"mesh": mesh, "reshard_after_forward": reshard_after_forward}
    if mp_policy is not None:
        kwargs["mp_policy"] = mp_policy
    if offload:
        kwargs["offload_policy"] = CPUOffloadPolicy()
    blocks = [m for m in model.modules() if m is not model and type(m).__name__ in names]
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no submodule of the fsdp_units classes {sorted(names)}")
    for block in blocks:
        fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)
    return model
