"""``HunyuanFamily``: ties the HunyuanVideo presets, checkpoint detection, validation and pipeline together.

This module is imported during plugin registration, so it must not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from fastvideo.interfaces.model_family import ModelFamily, ModelSource, Preset
from fastvideo_hunyuan.presets import PRESETS

if TYPE_CHECKING:
    from fastvideo.configs import PipelineConfig
    from fastvideo.pipelines.composed import ComposedPipeline


class HunyuanFamily(ModelFamily):
    """HunyuanVideo text-to-video (and FastHunyuan). ``guidance_scale`` is the embedded guidance scale."""

    name = "hunyuan"
    presets: ClassVar[tuple[Preset, ...]] = PRESETS
    pipeline_class_names = ("HunyuanVideoPipeline",)
    spatial_factor = 16  # VAE stride 8 x patch 2
    temporal_factor = 4
    default_sampling: ClassVar[dict[str, Any]] = {
        "num_frames": 125,
        "height": 720,
        "width": 1280,
        "num_inference_steps": 50,
        "guidance_scale": 6.0,
        "fps": 24,
        "max_sequence_length": 256,
    }

    @classmethod
    def factors(cls, source: ModelSource) -> tuple[int, int]:
        vae_cfg = source.read_json("vae/config.json")
        if vae_cfg is None:
            return cls.spatial_factor, cls.temporal_factor
        dit_cfg = source.read_json("transformer/config.json") or {}
        stride = int(vae_cfg.get("spatial_compression_ratio", 8))
        return stride * int(dit_cfg.get("patch_size", 2)), int(vae_cfg.get("temporal_compression_ratio", 4))

    @classmethod
    def validate(cls, params: Any, source: ModelSource) -> None:
        super().validate(params, source)
        if params.image is not None:
            raise ValueError("HunyuanVideo checkpoints are text-to-video and take no --image; drop --image")
        if params.negative_prompt is not None:
            raise ValueError(
                "HunyuanVideo uses embedded guidance (--guidance-scale is an input of the DiT), so it takes no "
                "negative prompt; drop --negative-prompt"
            )

    @classmethod
    def build_pipeline(cls, source: ModelSource, config: PipelineConfig) -> ComposedPipeline:
        from fastvideo_hunyuan.pipeline import build_hunyuan_pipeline

        return build_hunyuan_pipeline(cls, source, config)
