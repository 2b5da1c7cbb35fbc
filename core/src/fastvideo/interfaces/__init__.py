"""The abstract base classes that plugins subclass: one per kind of extension."""

from fastvideo.interfaces.attention import AttentionBackend, BackendOption, LayerModule
from fastvideo.interfaces.model_family import ModelFamily, Preset
from fastvideo.interfaces.parallel import ParallelStrategy
from fastvideo.interfaces.training import TrainingAlgorithm

__all__ = [
    "AttentionBackend",
    "BackendOption",
    "LayerModule",
    "ModelFamily",
    "ParallelStrategy",
    "Preset",
    "TrainingAlgorithm",
]
