"""The abstract base classes that plugins subclass: one per kind of extension."""

from fastvideo.interfaces.attention import AttentionBackend
from fastvideo.interfaces.model_family import ModelFamily, Preset
from fastvideo.interfaces.parallel import ParallelStrategy
from fastvideo.interfaces.training import ModelRole, TrainingAlgorithm

__all__ = ["AttentionBackend", "ModelFamily", "ModelRole", "ParallelStrategy", "Preset", "TrainingAlgorithm"]
