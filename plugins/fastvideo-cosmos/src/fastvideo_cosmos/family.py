"""``CosmosFamily``: ties the Cosmos presets, checkpoint detection, validation and pipelines together.

This module is imported during plugin registration, so it must not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from fastvideo.interfaces.model_family import ModelFamily, ModelSource, Preset
from fastvideo_cosmos.presets import PRESETS

if TYPE_CHECKING:
    from fastvideo.configs import PipelineConfig, SamplingParams
    from fastvideo.pipelines.composed import ComposedPipeline

T2I = "Cosmos2TextToImagePipeline"
V2W = "Cosmos2VideoToWorldPipeline"
PREDICT25 = "Cosmos2_5_PredictBasePipeline"


def workload(source: ModelSource) -> str:
    """``t2i`` (Predict2 Text2Image), ``v2w`` (Predict2 Video2World) or ``predict2.5``."""
    name = (source.model_index or {}).get("_class_name")
    if name is None and source.preset is not None:
        repo = source.preset.repo_id or ""
        return "t2i" if "Text2Image" in repo else "predict2.5" if "2.5" in repo else "v2w"
    return {T2I: "t2i", V2W: "v2w"}.get(str(name), "predict2.5")


class CosmosFamily(ModelFamily):
    """NVIDIA Cosmos-Predict2 (Text2Image, Video2World) and Predict2.5 (text/image/video to world)."""

    name = "cosmos"
    presets: ClassVar[tuple[Preset, ...]] = PRESETS
    pipeline_class_names = (T2I, V2W, PREDICT25)
    spatial_factor = 16  # Wan VAE stride 8 x patch 2
    temporal_factor = 4
    default_sampling: ClassVar[dict[str, Any]] = {
        "num_frames": 93,
        "height": 704,
        "width": 1280,
        "num_inference_steps": 35,
        "guidance_scale": 7.0,
        "fps": 16,
    }

    @classmethod
    def sampling_defaults(cls, source: ModelSource) -> SamplingParams:
        params = super().sampling_defaults(source)
        if workload(source) == "t2i" and source.preset is None:
            params = params.with_overrides({"num_frames": 1, "height": 768, "width": 1360})
        if workload(source) == "predict2.5" and source.preset is None:
            params = params.with_overrides({"num_inference_steps": 36})
        return params

    @classmethod
    def validate(cls, params: Any, source: ModelSource) -> None:
        super().validate(params, source)
        kind = workload(source)
        if kind == "t2i":
            if params.num_frames != 1:
                raise ValueError(
                    f"Cosmos Text2Image makes one image; got num_frames={params.num_frames}, use 1"
                )
            if params.image is not None:
                raise ValueError("Cosmos Text2Image takes no --image; use a Video2World checkpoint")
        if kind == "v2w" and params.image is None:
            raise ValueError(
                "Cosmos-Predict2 Video2World needs a conditioning image or clip: pass --image PATH "
                "(a picture, or a video file whose last frames condition the world)"
            )

    @classmethod
    def build_pipeline(cls, source: ModelSource, config: PipelineConfig) -> ComposedPipeline:
        from fastvideo_cosmos.pipeline import build_cosmos_pipeline

        return build_cosmos_pipeline(cls, source, config)

    @classmethod
    def dit_class(cls) -> Any:
        from fastvideo_cosmos.model import CosmosTransformer

        return CosmosTransformer
