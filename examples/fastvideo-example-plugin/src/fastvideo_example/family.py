"""``ExampleFamily``: how fastvideo recognises, validates and runs the example checkpoints.

This module is imported during plugin registration, so it must not import torch; the pipeline
module, which does, is imported inside :meth:`ExampleFamily.build_pipeline`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from fastvideo.interfaces.model_family import ModelFamily, ModelSource, Preset
from fastvideo_example.presets import PRESETS, SAMPLING

if TYPE_CHECKING:
    from fastvideo.configs import PipelineConfig, SamplingParams
    from fastvideo.pipelines.composed import ComposedPipeline

PIPELINE_CLASS_NAME = "ExampleVideoPipeline"  # `_class_name` in model_index.json


class ExampleFamily(ModelFamily):
    """The example video DiT with the Wan VAE, a UMT5 text encoder and flow-matching Euler sampling."""

    name = "example"
    presets: ClassVar[tuple[Preset, ...]] = PRESETS
    pipeline_class_names = (PIPELINE_CLASS_NAME,)
    spatial_factor = 16  # VAE stride 8 x patch 2
    temporal_factor = 4  # VAE stride in time; the DiT's temporal patch is 1
    default_sampling: ClassVar[dict[str, Any]] = dict(SAMPLING)  # for folders that match no preset

    @classmethod
    def factors(cls, source: ModelSource) -> tuple[int, int]:
        """Read the strides from the checkpoint's configs when they are on disk."""
        vae = source.read_json("vae/config.json")
        dit = source.read_json("transformer/config.json")
        if vae is None or dit is None:
            return cls.spatial_factor, cls.temporal_factor
        _, ph, _ = dit.get("patch_size", (1, 2, 2))  # a temporal patch > 1 is checked by the DiT
        return int(vae.get("scale_factor_spatial", 8)) * int(ph), int(vae.get("scale_factor_temporal", 4))

    @classmethod
    def validate(cls, params: SamplingParams, source: ModelSource) -> None:
        preset = source.preset
        if preset is not None and preset.local_path and not (source.path / "model_index.json").is_file():
            raise ValueError(
                f"the {preset.name} checkpoint is not at {source.path}; create it with "
                f"`fv example make-checkpoint {source.path}`"
            )
        super().validate(params, source)

    @classmethod
    def build_pipeline(cls, source: ModelSource, config: PipelineConfig) -> ComposedPipeline:
        from fastvideo_example.pipeline import build_example_pipeline

        return build_example_pipeline(cls, source, config)
