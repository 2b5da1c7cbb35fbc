"""Applying the registered pipeline transforms (see :class:`fastvideo.interfaces.PipelineTransform`)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastvideo.configs import PipelineConfig
    from fastvideo.interfaces.transform import PipelineTransform
    from fastvideo.loader.policy import LoadPolicy
    from fastvideo.pipelines.composed import ComposedPipeline

logger = logging.getLogger(__name__)


def apply_transforms(pipeline: ComposedPipeline, config: PipelineConfig) -> list[str]:
    """Apply every registered transform whose ``applies(pipeline, config)`` is true, in increasing
    ``order`` then name; returns their names (also kept in ``pipeline.transforms``)."""
    from fastvideo.registry import get_registry

    classes: list[type[PipelineTransform]] = get_registry().classes("pipeline_transform")
    classes.sort(key=lambda c: (c.order, c.name))
    applied = []
    for cls in classes:
        transform = cls()
        if transform.applies(pipeline, config):
            transform.apply(pipeline, config)
            applied.append(cls.name)
    pipeline.transforms = [*pipeline.transforms, *applied]
    if applied:
        logger.info("pipeline transforms: %s", ", ".join(applied))
    return applied


def load_policy(config: PipelineConfig) -> LoadPolicy:
    """The :class:`~fastvideo.loader.policy.LoadPolicy` the registered transforms ask for ``config``
    (each one's ``prepare_load``, in ``apply_transforms``' order); activate it while the pipeline loads."""
    from fastvideo.loader.policy import LoadPolicy
    from fastvideo.registry import get_registry

    classes: list[type[PipelineTransform]] = get_registry().classes("pipeline_transform")
    policy = LoadPolicy()
    for cls in sorted(classes, key=lambda c: (c.order, c.name)):
        prepare = getattr(cls(), "prepare_load", None)
        if prepare is not None:
            prepare(config, policy)
    return policy
