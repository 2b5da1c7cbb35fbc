"""The abstract base classes that plugins subclass: one per kind of extension (and
:func:`flow_euler_step`, the flow-matching update that samplers share)."""

from fastvideo.interfaces.attention import AttentionBackend, BackendOption, LayerModule
from fastvideo.interfaces.model_family import ModelFamily, Preset
from fastvideo.interfaces.parallel import ParallelStrategy
from fastvideo.interfaces.sampler import FlowMatchingSampler, Sampler, flow_euler_step
from fastvideo.interfaces.training import ModelRole, TrainingAlgorithm
from fastvideo.interfaces.transform import PipelineTransform

__all__ = [
    "AttentionBackend",
    "BackendOption",
    "FlowMatchingSampler",
    "LayerModule",
    "ModelFamily",
    "ModelRole",
    "ParallelStrategy",
    "PipelineTransform",
    "Preset",
    "Sampler",
    "TrainingAlgorithm",
    "flow_euler_step",
]
