"""``ExampleFamily``: how fastvideo recognises, validates and runs the example checkpoints.

This module is imported during plugin registration, so it must not import torch; the pipeline
module, which does, is imported inside :meth:`ExampleFamily.build_pipeline`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar

from fastvideo.interfaces.model_family import ModelFamily, ModelSource, Preset
from fastvideo_example.presets import PRESETS, SAMPLING
from fastvideo_example.training import LORA_TARGET_MODULES

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

    # ---------------------------------------------------------------- training hooks (training.py)

    #: LoRA targets: the attention projections and the feed-forward of every block.
    lora_target_modules: ClassVar[tuple[str, ...]] = LORA_TARGET_MODULES

    @classmethod
    def dit_class(cls) -> Any:
        """The example DiT: ``ModelFamily.load_transformer`` loads it for training."""
        from fastvideo_example.model import ExampleTransformer

        return ExampleTransformer

    @classmethod
    def training_objective(cls, source: ModelSource) -> Any:
        from fastvideo_example import training

        return training.training_objective(source)

    @classmethod
    def training_encoders(cls, source: ModelSource, config: PipelineConfig) -> Any:
        from fastvideo_example import training

        return training.training_encoders(source, config)

    @classmethod
    def to_diffusers_names(cls, names: Iterable[str]) -> dict[str, str]:
        from fastvideo_example import training

        return training.checked_names(names)  # the checkpoint uses the DiT's own names

    @classmethod
    def from_diffusers_names(cls, names: Iterable[str]) -> dict[str, str]:
        from fastvideo_example import training

        return training.checked_names(names)

    @classmethod
    def transformer_config(cls, model: Any) -> dict[str, Any]:
        from fastvideo_example import training

        return training.transformer_config(model)
