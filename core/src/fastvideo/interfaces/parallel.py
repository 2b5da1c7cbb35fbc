"""Base class of parallel strategies (Ulysses, ring, USP, CFG, FSDP, TP).

A strategy wraps a model from outside (model files contain no distributed code): it says which
device-mesh dimensions it uses, which pipeline components it applies to, and prepares each of them
(hooks, sharded parameters, replaced layers) in :meth:`ParallelStrategy.wrap`. The core applies
every enabled strategy after loading a pipeline, in ``order``, on each rank.

A complete tiny strategy plugin::

    # my_par/strategy.py
    from fastvideo.interfaces import ParallelStrategy

    class CompileBlocks(ParallelStrategy):
        name = "compile-blocks"
        components = ("transformer",)
        order = 900                      # after the built-ins

        def wrap(self, model, state):
            for block in model.blocks:
                block.compile()
            return model

    # my_par/plugin.py
    from fastvideo import hookimpl

    FASTVIDEO_PLUGIN_API = 1

    @hookimpl
    def fv_register_parallel_strategies():
        from my_par.strategy import CompileBlocks
        return [CompileBlocks]

It runs when asked for by name: ``ParallelConfig(strategies=("compile-blocks",))``.
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
