"""``ComposedPipeline`` and the ``PipelineStage`` base class."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from fastvideo.pipelines.batch import ForwardBatch


class PipelineStage:
    """One step of a pipeline. Subclasses set ``name`` and implement :meth:`forward`."""

    name: str = "stage"

    def forward(self, batch: ForwardBatch) -> ForwardBatch:
        raise NotImplementedError

    def __call__(self, batch: ForwardBatch) -> ForwardBatch:
        return self.forward(batch)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class ComposedPipeline:
    """An ordered list of stages plus the components they share.

    Families build one in ``ModelFamily.build_pipeline`` from the core stages
    (:mod:`fastvideo.pipelines.stages`), subclassing or inserting their own where they differ.
    """

    def __init__(self, stages: Iterable[PipelineStage], components: Mapping[str, Any] | None = None) -> None:
        self.stages = list(stages)
        self.components = dict(components or {})
        self.transforms: list[str] = []  # names of the pipeline transforms applied, in order
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")

    def index(self, name: str) -> int:
        for i, stage in enumerate(self.stages):
            if stage.name == name:
                return i
        raise KeyError(f"no stage named {name!r}; stages: {[s.name for s in self.stages]}")

    def insert_after(self, name: str, stage: PipelineStage) -> None:
        self.stages.insert(self.index(name) + 1, stage)

    def replace(self, name: str, stage: PipelineStage) -> None:
        self.stages[self.index(name)] = stage

    def replace_component(self, key: str, new: Any) -> None:
        """Replace component ``key`` by ``new`` in ``components`` and in every stage attribute that
        held the old object (transforms that wrap a model: FP8, offload, compile)."""
        old = self.components.get(key)
        self.components[key] = new
        if old is None:
            return
        for stage in self.stages:
            for attr, value in list(vars(stage).items()):
                if value is old:
                    setattr(stage, attr, new)

    def __call__(self, batch: ForwardBatch) -> ForwardBatch:
        import torch

        with torch.inference_mode():
            for stage in self.stages:
                start = time.perf_counter()
                batch = stage(batch)
                if batch.device is not None and getattr(batch.device, "type", "") == "cuda":
                    torch.cuda.synchronize(batch.device)
                batch.timings[stage.name] = time.perf_counter() - start
        return batch
