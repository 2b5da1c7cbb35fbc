"""The speed and memory options as built-in pipeline transforms (no torch import at module level).

Each reads its own field of :class:`~fastvideo.configs.PipelineConfig` and acts on the DiTs of the
pipeline (the components that are :class:`fastvideo.models.DiT` s), the denoising stages' seams and
the other components, never on a family's internals:

* ``text-kv-cache`` (order 590, on unless ``text_kv_cache=False``): lossless;
* ``step-cache`` (order 600, ``cache=teacache|firstblock|magcache``);
* ``fp8`` (order 700, ``quantize=fp8|fp8-storage``);
* ``layer-offload`` (order 800, ``offload=layer``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from fastvideo.interfaces.transform import PipelineTransform

if TYPE_CHECKING:
    from fastvideo.configs import PipelineConfig
    from fastvideo.pipelines.composed import ComposedPipeline

logger = logging.getLogger(__name__)


def pipeline_dits(pipeline: ComposedPipeline) -> list[tuple[str, Any]]:
    """``(component name, model)`` of every DiT of ``pipeline`` (each model once)."""
    from fastvideo.models.dit import DiT

    seen: set[int] = set()
    out = []
    for key, value in pipeline.components.items():
        if isinstance(value, DiT) and id(value) not in seen:
            seen.add(id(value))
            out.append((key, value))
    return out


class FP8Transform(PipelineTransform):
    """FP8 linears in the DiT blocks (``quantize="fp8"`` or ``"fp8-storage"``)."""

    name = "fp8"
    order = 700

    def applies(self, pipeline: ComposedPipeline, config: PipelineConfig) -> bool:
        return config.quantize is not None and bool(pipeline_dits(pipeline))

    def apply(self, pipeline: ComposedPipeline, config: PipelineConfig) -> None:
        from fastvideo.optimize.fp8 import quantize_fp8

        for key, model in pipeline_dits(pipeline):
            info = quantize_fp8(model, config.quantize or "fp8")
            logger.info("%s: %d linears in FP8 (%s via %s)", key, info["linears"], info["mode"], info["via"])


BUILTIN = (FP8Transform,)
