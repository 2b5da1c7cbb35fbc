"""Tensor parallelism of the large text encoders (umT5-XXL, T5, Llama): column/row-parallel linears.

A plan maps module-name globs to a style:

* ``"colwise"``: an ``nn.Linear`` keeps ``1 / tp`` of its output features (the heads or FFN
  columns of this rank); no communication.
* ``"rowwise"``: an ``nn.Linear`` keeps the matching ``1 / tp`` of its input features; its partial
  outputs are summed over the group (all-reduce), then the bias is added once.
* ``"embedding_colwise"``: an ``nn.Embedding`` keeps ``1 / tp`` of its columns (T5's relative
  position bias, one column per head).

plus attributes that count heads (``n_heads``), divided by ``tp`` on matching modules. Plans come
from the model's ``tensor_parallel_plan`` attribute (and ``tensor_parallel_attrs``), then :data:`PLANS`
(the T5 family declares none), then the colwise/rowwise entries of transformers'
``config.base_model_tp_plan`` (Llama and most decoder LMs declare one; embeddings stay whole).
Inference only.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

_T5: dict[str, str] = {
    "*.SelfAttention.q": "colwise",
    "*.SelfAttention.k": "colwise",
    "*.SelfAttention.v": "colwise",
    "*.SelfAttention.o": "rowwise",
    "*.SelfAttention.relative_attention_bias": "embedding_colwise",
    "*.DenseReluDense.wi": "colwise",
    "*.DenseReluDense.wi_0": "colwise",
    "*.DenseReluDense.wi_1": "colwise",
    "*.DenseReluDense.wo": "rowwise",
}
_T5_ATTRS: dict[str, tuple[str, ...]] = {"*.SelfAttention": ("n_heads", "inner_dim")}

#: Built-in plans by class name: (module glob -> style, module glob -> head-count attributes).
PLANS: dict[str, tuple[dict[str, str], dict[str, tuple[str, ...]]]] = {
    "T5EncoderModel": (_T5, _T5_ATTRS),
    "UMT5EncoderModel": (_T5, _T5_ATTRS),
}
STYLES = ("colwise", "rowwise", "embedding_colwise")


def find_plan(model: nn.Module) -> tuple[dict[str, str], dict[str, tuple[str, ...]]] | None:
    """The tensor-parallel plan of ``model``: its own ``tp_plan``, transformers' config plan, or a built-in."""
    own = getattr(model, "tensor_parallel_plan", None)
    if isinstance(own, Mapping) and own:
        return dict(own), dict(getattr(model, "tensor_parallel_attrs", {}))
    for cls in type(model).__mro__:
        if cls.__name__ in PLANS:
            return PLANS[cls.__name__]
    config_plan = getattr(getattr(model, "config", None), "base_model_tp_plan", None)
    if isinstance(config_plan, Mapping) and config_plan:
        prefix = getattr(model, "base_model_prefix", "")
        plan = {k: v for k, v in config_plan.items() if v in ("colwise", "rowwise")}
        if prefix and hasattr(model, prefix):  # a model with a head: plan keys are relative to the base
            plan = {f"{prefix}.{k}": v for k, v in plan.items()}
        return plan, {}
    return None


def _style(plan: Mapping[str, str], name: str) -> str | None:
    for pattern, style in plan.items():
        if fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name, pattern.removeprefix("*.")):
            return style
    return None


def _slice(t: torch.Tensor, dim: int, size: int, rank: int, what: str) -> nn.Parameter:
    if t.shape[dim] % size:
        raise ValueError(
            f"{what} has {t.shape[dim]} features on dim {dim}, which tp_size={size} does not divide; "
            f"use a tp_size that divides {t.shape[dim]}"
        )
    return nn.Parameter(t.detach().chunk(size, dim=dim)[rank].clone(), requires_grad=t.requires_grad)


def _all_reduce(x: torch.Tensor, group: ProcessGroup) -> torch.Tensor:
    if torch.is_grad_enabled() and x.requires_grad:
        from torch.distributed.nn.functional import all_reduce

        return all_reduce(x, group=group)
    dist.all_reduce(x, group=group)
    return x


def _rowwise_hook(group: ProcessGroup) -> Any:
    def hook(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        output = _all_reduce(output, group)
        bias = getattr(module, "_fv_tp_bias", None)  # a buffer, so that .to() moves it
        return output if bias is None else output + bias.to(output.dtype)

    return hook


def _shard_module(name: str, module: nn.Module, style: str, group: ProcessGroup) -> None:
    size, rank = dist.get_world_size(group), dist.get_rank(group)
    if style == "embedding_colwise":
        if not isinstance(module, nn.Embedding):
            raise TypeError(f"tensor-parallel plan: {name} is a {type(module).__name__}, not an nn.Embedding")
        module.weight = _slice(module.weight, 1, size, rank, name)
        module.embedding_dim = module.weight.shape[1]
        return
    if not isinstance(module, nn.Linear):
        raise TypeError(f"tensor-parallel plan: {name} is a {type(module).__name__}, not an nn.Linear")
    if style == "colwise":
        module.weight = _slice(module.weight, 0, size, rank, name)
        if module.bias is not None:
            module.bias = _slice(module.bias, 0, size, rank, name)
        module.out_features = module.weight.shape[0]
        return
    module.weight = _slice(module.weight, 1, size, rank, name)
    module.in_features = module.weight.shape[1]
    bias = module.bias
    module.bias = None  # type: ignore[assignment]  # added once, after the sum over ranks
    module.register_forward_hook(_rowwise_hook(group))
    if bias is not None:
        module.register_buffer("_fv_tp_bias", bias.detach(), persistent=False)


def tensor_parallel(
    model: nn.Module,
    group: ProcessGroup,
    *,
    plan: Mapping[str, str] | None = None,
    attrs: Mapping[str, tuple[str, ...]] | None = None,
) -> nn.Module:
    """Shard ``model``'s layers over ``group`` in place, following ``plan`` (default: :func:`find_plan`).

    :raises ValueError: no plan is known for the model, a style is unknown, or a width is not
        divisible by the group size.
    """
    if plan is None:
        found = find_plan(model)
        if found is None:
            raise ValueError(
                f"no tensor-parallel plan is known for {type(model).__name__}; give it a tensor_parallel_plan "
                f"attribute (module glob -> 'colwise' | 'rowwise') or run with --tp-size 1"
            )
        plan, attrs = found
    bad = sorted({s for s in plan.values() if s not in STYLES})
    if bad:
        raise ValueError(f"tensor-parallel styles {bad} are not supported; use one of {', '.join(STYLES)}")
    size = dist.get_world_size(group)
    matched = 0
    for name, module in list(model.named_modules()):
        style = _style(plan, name)
        if style is not None:
            _shard_module(name, module, style, group)
            matched += 1
        for pattern, fields in (attrs or {}).items():
            if fnmatch.fnmatchcase(name, pattern):
                for field in fields:
                    value = getattr(module, field)
                    if value % size:
                        raise ValueError(f"{name}.{field}={value} is not divisible by tp_size={size}")
                    setattr(module, field, value // size)
    if not matched:
        raise ValueError(f"the tensor-parallel plan of {type(model).__name__} matches none of its modules")
    return model
