"""The core's built-in parallel strategies, and :func:`parallelize`, which applies the enabled ones.

============  ==================  ==========================================================
name          mesh dims           what it does
============  ==================  ==========================================================
``ulysses``   ulysses             token shards per rank; all-to-all of heads around attention
``ring``      ring                token shards per rank; keys/values passed around a ring
``usp``       ring, ulysses       both: Ulysses within groups, ring across them
``cfg``       cfg                 conditional / unconditional branch on different ranks
``fsdp``      replicate, shard    DiT weights sharded with FSDP2 (HSDP with replicas)
``tp``        tp                  text encoders with column/row-parallel linears
============  ==================  ==========================================================

They are registered through ``fv_register_parallel_strategies`` like a plugin's, and chosen from
the :class:`~fastvideo.configs.ParallelConfig`. The strategies that act on stages rather than
models are pipeline transforms (:mod:`fastvideo.parallel.transforms`): ``cfg-parallel`` replaces
the denoising stage's guidance, ``parallel-vae`` wraps the decoding stage's VAE decode.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, ClassVar

from fastvideo.interfaces.parallel import ParallelStrategy

if TYPE_CHECKING:
    from fastvideo.configs import ParallelConfig
    from fastvideo.parallel.state import ParallelState
    from fastvideo.pipelines.composed import ComposedPipeline

logger = logging.getLogger(__name__)


class _SequenceParallel(ParallelStrategy):
    """Shards the DiT's tokens with :class:`~fastvideo.parallel.sequence.SequenceSharding`."""

    order = 100

    def wrap(self, model: Any, state: ParallelState) -> Any:
        from fastvideo.parallel.sequence import SequenceSharding

        SequenceSharding(model, state).apply(model)
        return model


class UlyssesStrategy(_SequenceParallel):
    """DeepSpeed-Ulysses: all-to-all from token shards to head shards around attention."""

    name = "ulysses"
    mesh_dims = ("ulysses",)

    @classmethod
    def enabled(cls, config: ParallelConfig) -> bool:
        return config.ulysses_size > 1 and config.ring_size == 1


class RingStrategy(_SequenceParallel):
    """Ring attention: keys/values travel around the ranks, partial results merge by log-sum-exp."""

    name = "ring"
    mesh_dims = ("ring",)

    @classmethod
    def enabled(cls, config: ParallelConfig) -> bool:
        return config.ring_size > 1 and config.ulysses_size == 1


class USPStrategy(_SequenceParallel):
    """Unified sequence parallelism: Ulysses inside groups of ``sp_size`` ranks, ring across them."""

    name = "usp"
    mesh_dims = ("ring", "ulysses")

    @classmethod
    def enabled(cls, config: ParallelConfig) -> bool:
        return config.ring_size > 1 and config.ulysses_size > 1


class CFGParallelStrategy(ParallelStrategy):
    """Classifier-free guidance branches on different ranks: declares the ``cfg`` mesh dim; the
    ``cfg-parallel`` pipeline transform swaps the denoising stage's guidance (no model changes)."""

    name = "cfg"
    mesh_dims = ("cfg",)
    components: ClassVar[tuple[str, ...]] = ()  # no model changes: see fastvideo.parallel.transforms
    order = 0

    @classmethod
    def enabled(cls, config: ParallelConfig) -> bool:
        return config.cfg_parallel

    def wrap(self, model: Any, state: ParallelState) -> Any:
        return model


class FSDPStrategy(ParallelStrategy):
    """FSDP2 sharding of the DiT's weights over the ``shard`` mesh dim (HSDP with ``replicate``)."""

    name = "fsdp"
    mesh_dims = ("replicate", "shard")
    order = 200

    @classmethod
    def enabled(cls, config: ParallelConfig) -> bool:
        return config.fsdp

    def wrap(self, model: Any, state: ParallelState) -> Any:
        from fastvideo.parallel.fsdp import shard_model

        assert state.fsdp_mesh is not None
        return shard_model(model, state.fsdp_mesh)


class TensorParallelStrategy(ParallelStrategy):
    """Column/row-parallel linears in the text encoders, over groups of ``tp_size`` consecutive ranks."""

    name = "tp"
    mesh_dims = ("tp",)
    components: ClassVar[tuple[str, ...]] = ("text_encoder", "text_encoder_2")
    order = 300

    @classmethod
    def enabled(cls, config: ParallelConfig) -> bool:
        return config.tp_size > 1

    def wrap(self, model: Any, state: ParallelState) -> Any:
        from fastvideo.parallel.tp import find_plan, tensor_parallel

        if find_plan(model) is None:  # small encoders (CLIP) stay whole on every rank
            logger.info("no tensor-parallel plan for %s; it stays replicated", type(model).__name__)
            return model
        assert state.tp_group is not None
        return tensor_parallel(model, state.tp_group)


BUILTIN = (
    UlyssesStrategy,
    RingStrategy,
    USPStrategy,
    CFGParallelStrategy,
    FSDPStrategy,
    TensorParallelStrategy,
)


def enabled_strategies(config: ParallelConfig) -> list[type[ParallelStrategy]]:
    """The registered strategies ``config`` enables, in application order."""
    from fastvideo.errors import UnknownNameError
    from fastvideo.registry import get_registry, unknown_name_message

    entries = get_registry().entries["parallel_strategy"]
    for name in config.strategies:
        if name not in entries:
            raise UnknownNameError(unknown_name_message("parallel_strategy", name, sorted(entries)))
    classes = [e.cls for e in entries.values()]
    return sorted((c for c in classes if c.enabled(config)), key=lambda c: (c.order, c.name))  # type: ignore[attr-defined]


def check_strategies(config: ParallelConfig, *, parallel: bool) -> None:
    """Reject strategy names that are not registered or that this run would never apply.

    :param parallel: whether this process is one rank of a parallel run.
    :raises UnknownNameError: a name in ``config.strategies`` is not registered.
    :raises ValueError: a named strategy is not enabled by this layout, or the run has one process.
    """
    requested = list(dict.fromkeys(config.strategies))
    if not requested:
        return
    enabled = {c.name for c in enabled_strategies(config)}  # raises for unknown names
    if not parallel:
        many = len(requested) > 1
        raise ValueError(
            f"parallel strateg{'ies' if many else 'y'} {', '.join(map(repr, requested))} "
            f"need{'' if many else 's'} a parallel run, got num_gpus={config.num_gpus} in one process; "
            f"set num_gpus > 1 (fv generate --num-gpus N) or drop {'them' if many else 'it'} "
            "(one-process changes are pipeline transforms)"
        )
    idle = [name for name in requested if name not in enabled]
    if idle:
        raise ValueError(
            f"parallel strategy {idle[0]!r} is named in strategies but this layout does not enable it "
            f"(enabled: {', '.join(sorted(enabled)) or 'none'}); set the options that enable it or drop it"
        )


def parallelize(pipeline: ComposedPipeline, state: ParallelState) -> list[str]:
    """Apply every enabled strategy to the pipeline's components, in place; returns their names.

    A strategy that returns a new object for a component replaces it in ``pipeline.components`` and
    in every stage attribute that held the old one.
    """
    applied = []
    for cls in enabled_strategies(state.config):
        strategy = cls()
        for key in cls.components:
            old = pipeline.components.get(key)
            if old is None:
                continue
            new = strategy.wrap(old, state)
            if new is not old:
                pipeline.replace_component(key, new)
        applied.append(cls.name)
    if state.is_main:
        from fastvideo.parallel.state import describe

        logger.info("parallel run: %s; strategies: %s", describe(state), ", ".join(applied) or "none")
    return applied
