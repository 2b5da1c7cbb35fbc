"""What a DiT declares for sequence parallelism: its blocks, and which block arguments carry tokens.

Plain data, importable from model files without torch.distributed::

    sequence_parallel_plan = SequenceParallelPlan(
        blocks="blocks",                                 # ModuleList attribute(s), in call order
        shard={"x": 1, "temb": 1, "cos": 0, "sin": 0},   # block forward argument name -> token dim
        output=1,                                        # token dim of the last block's output
    )

Arguments are named, never numbered: :meth:`SequenceParallelPlan.resolve` looks each name up in the
block's ``forward`` signature (positional index and name), so reordering a signature cannot shard
the wrong tensor, and a name the block does not take is an error when the plan is applied.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class SequenceParallelPlan:
    """The sequence-parallel declaration of a DiT (see the module docstring).

    :param blocks: name(s) of the ``ModuleList`` attributes holding the blocks, in call order.
    :param shard: block ``forward`` argument name -> its token dim; an argument is cut into token
        shards where its size along that dim is the full token count (others pass through whole).
    :param output: token dim of the last block's output (a tensor), or ``{index: dim}`` for a tuple.
        Default: the dim of the first ``shard`` entry.
    """

    blocks: str | tuple[str, ...]
    shard: Mapping[str, int]
    output: int | Mapping[int, int] | None = None
    _cache: dict[type, dict[str, tuple[int | None, int]]] = field(
        default_factory=dict, compare=False, repr=False
    )

    def __post_init__(self) -> None:
        blocks = (self.blocks,) if isinstance(self.blocks, str) else tuple(self.blocks)
        object.__setattr__(self, "blocks", blocks)
        shard = dict(self.shard)
        bad = [k for k in shard if not isinstance(k, str) or not k.isidentifier()]
        if bad or not shard:
            raise ValueError(
                f"SequenceParallelPlan.shard must map block argument names to token dims, got {self.shard!r}; "
                "name the arguments (e.g. {'hidden_states': 1}), positions are not accepted"
            )
        object.__setattr__(self, "shard", shard)
        if self.output is None:
            object.__setattr__(self, "output", next(iter(shard.values())))

    @property
    def first(self) -> str:
        """The argument whose token count defines the sequence length (the first ``shard`` entry)."""
        return next(iter(self.shard))

    def resolve(self, block: Any, owner: str = "the model") -> dict[str, tuple[int | None, int]]:
        """``{name: (positional index or None for keyword-only, token dim)}`` for ``block``'s forward.

        :raises ValueError: a ``shard`` name that ``block.forward`` does not take.
        """
        cls = type(block)
        hit = self._cache.get(cls)
        if hit is not None:
            return hit
        params = list(inspect.signature(block.forward).parameters.values())
        index = {
            p.name: (i if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) else None)
            for i, p in enumerate(params)
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        }
        missing = [name for name in self.shard if name not in index]
        if missing:
            raise ValueError(
                f"{owner}.sequence_parallel_plan shards {', '.join(map(repr, missing))}, but "
                f"{cls.__name__}.forward takes ({', '.join(index)}); name arguments of the block's forward"
            )
        resolved = {name: (index[name], dim) for name, dim in self.shard.items()}
        self._cache[cls] = resolved
        return resolved


def as_plan(plan: Any, owner: str) -> SequenceParallelPlan:
    """A declared plan (a :class:`SequenceParallelPlan`, or a mapping of its fields) as the dataclass.

    :raises ValueError: no plan, or a plan in the old positional form (``token_args``).
    """
    if isinstance(plan, SequenceParallelPlan):
        return plan
    if isinstance(plan, Mapping) and "token_args" in plan:
        raise ValueError(
            f"{owner}.sequence_parallel_plan numbers block arguments (token_args={dict(plan['token_args'])}); "
            "declare SequenceParallelPlan(blocks=..., shard={'argument_name': token_dim}) instead"
        )
    if isinstance(plan, Mapping) and "blocks" in plan and "shard" in plan:
        return SequenceParallelPlan(**plan)
    raise ValueError(
        f"{owner} declares no sequence_parallel_plan, so it cannot run with sp_size or ring_size > 1; "
        f"use --cfg-parallel / --fsdp only, or declare the plan (docs/parallel.md)"
    )
