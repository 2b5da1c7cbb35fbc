"""Base class of parallel strategies (Ulysses, ring, USP, CFG, FSDP, TP).

A strategy wraps a model from outside (model files contain no distributed code): it says which
device-mesh dimensions it uses, which pipeline components it applies to, and prepares each of them
(hooks, sharded parameters, replaced layers) in :meth:`ParallelStrategy.wrap`. The core applies
every enabled strategy after loading a pipeline, in ``order``, on each rank.

A complete tiny strategy plugin::

    # my_par/strategy.py
    from fastvideo.interfaces import ParallelStrategy

    class BroadcastWeights(ParallelStrategy):
        name = "broadcast-weights"
        components = ("transformer",)
        order = 50                       # before sequence sharding and FSDP

        def wrap(self, model, state):
            import torch.distributed as dist
            for param in model.parameters():   # every rank starts from rank 0's weights
                dist.broadcast(param.data, src=0)
            return model

    # my_par/plugin.py
    from fastvideo import hookimpl

    FASTVIDEO_PLUGIN_API = 1

    @hookimpl
    def fv_register_parallel_strategies():
        from my_par.strategy import BroadcastWeights
        return [BroadcastWeights]

It runs when asked for by name in a parallel run: ``ParallelConfig(num_gpus=2,
strategies=("broadcast-weights",))``. Naming it in a one-process run is an error; changes that are
not about ranks (compile, offload, FP8, step caches) are pipeline transforms
(:class:`~fastvideo.interfaces.PipelineTransform`), which run in one process and in many.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from fastvideo.configs import ParallelConfig
    from fastvideo.parallel.state import ParallelState


class ParallelStrategy(ABC):
    """One way to spread work over the ranks of a parallel run.

    Class attributes:
        name: lower-kebab name (``"ulysses"``).
        mesh_dims: names of the mesh dimensions the strategy uses (``("ulysses",)``), for docs and
            ``fv plugins``.
        components: the pipeline components (``ComposedPipeline.components`` keys) it wraps;
            absent ones are skipped.
        order: strategies are applied in increasing order (sequence sharding 100, FSDP 200,
            tensor parallelism 300; plugins default to 500).
    """

    name: ClassVar[str]
    mesh_dims: ClassVar[tuple[str, ...]] = ()
    components: ClassVar[tuple[str, ...]] = ("transformer", "transformer_2")
    order: ClassVar[int] = 500

    @classmethod
    def enabled(cls, config: ParallelConfig) -> bool:
        """Whether ``config`` asks for this strategy (default: its name is in ``config.strategies``)."""
        return cls.name in config.strategies

    @abstractmethod
    def wrap(self, model: Any, state: ParallelState) -> Any:
        """Prepare ``model`` (a pipeline component) to run under ``state``; return it (the same object
        where possible: the core replaces references held by the pipeline's stages otherwise).

        Called once per component on every rank, after the weights are loaded. Raise ``ValueError``
        with the fix when the model cannot run this way (e.g. heads not divisible by the degree).
        """
