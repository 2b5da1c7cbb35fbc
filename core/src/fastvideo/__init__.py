"""fastvideo: fast inference and post-training for video diffusion models, as a plugin ecosystem.

``from fastvideo import VideoGenerator`` is the Python API; ``fv`` is the CLI. Heavy modules
(torch, diffusers) load only when a generator is built, so importing this package is cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastvideo.hookspecs import PLUGIN_API_VERSION, hookimpl

if TYPE_CHECKING:
    from fastvideo.configs import ParallelConfig, PipelineConfig, SamplingParams
    from fastvideo.generator import GenerationResult, VideoGenerator

__all__ = [
    "PLUGIN_API_VERSION",
    "GenerationResult",
    "ParallelConfig",
    "PipelineConfig",
    "SamplingParams",
    "VideoGenerator",
    "hookimpl",
]

_LAZY = {
    "VideoGenerator": "fastvideo.generator",
    "GenerationResult": "fastvideo.generator",
    "SamplingParams": "fastvideo.configs",
    "PipelineConfig": "fastvideo.configs",
    "ParallelConfig": "fastvideo.configs",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fastvideo' has no attribute {name!r}")
