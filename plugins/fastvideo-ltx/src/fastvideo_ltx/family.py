"""``LTXVideoFamily``: ties the LTX-Video 0.9.x presets, checkpoint detection, validation and pipelines together.

This module is imported during plugin registration, so it must not import torch. (LTX-2 will be a
family of its own beside this one.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from fastvideo.interfaces.model_family import ModelFamily, ModelSource, Preset
from fastvideo_ltx.ltxv.presets import PRESETS

if TYPE_CHECKING:
    from fastvideo.configs import PipelineConfig
    from fastvideo.pipelines.composed import ComposedPipeline


class LTXVideoFamily(ModelFamily):
    """LTX-Video 0.9.x: text-to-video, image-to-video, conditioning and distilled multi-scale generation."""

    name = "ltx"
    presets: ClassVar[tuple[Preset, ...]] = PRESETS
    pipeline_class_names = ("LTXPipeline", "LTXImageToVideoPipeline", "LTXConditionPipeline")
    spatial_factor = 32  # VAE stride 32 x patch 1
    temporal_factor = 8
    default_sampling: ClassVar[dict[str, Any]] = {
        "num_frames": 161,
        "height": 512,
        "width": 704,
        "num_inference_steps": 50,
        "guidance_scale": 3.0,
        "fps": 25,
        "max_sequence_length": 128,
    }

    @classmethod
    def factors(cls, source: ModelSource) -> tuple[int, int]:
        vae_cfg = source.read_json("vae/config.json")
        if vae_cfg is None:
            return cls.spatial_factor, cls.temporal_factor
        dit_cfg = source.read_json("transformer/config.json") or {}
        spatial, temporal = vae_strides(vae_cfg)
        return spatial * int(dit_cfg.get("patch_size", 1)), temporal * int(dit_cfg.get("patch_size_t", 1))

    @classmethod
    def image_files(cls, image: str) -> list[str]:
        """``--image`` is ``PATH[@FRAME[:STRENGTH]]``, several separated by ``;`` (conditioning)."""
        from fastvideo_ltx.ltxv.options import parse_conditions

        return [c.path for c in parse_conditions(image)]

    @classmethod
    def validate(cls, params: Any, source: ModelSource) -> None:
        super().validate(params, source)  # sizes: multiples of the VAE stride (32); frames: 8k + 1
        # --image turns any LTX-Video checkpoint into image-to-video (the same weights serve both)
        if params.image is not None:
            _check_conditions(params, source)
        if source.class_name == "LTXImageToVideoPipeline" and params.image is None:
            raise ValueError(
                "this LTX-Video checkpoint is image-to-video: pass --image PATH (the first frame)"
            )

    @classmethod
    def dit_class(cls) -> Any:
        from fastvideo_ltx.ltxv.model import LTXVideoTransformer

        return LTXVideoTransformer

    @classmethod
    def build_pipeline(cls, source: ModelSource, config: PipelineConfig) -> ComposedPipeline:
        from fastvideo_ltx.ltxv.pipeline import build_ltx_pipeline

        return build_ltx_pipeline(cls, source, config)


def _check_conditions(params: Any, source: ModelSource) -> None:
    """``--image`` is one first frame for ``LTXPipeline`` / ``LTXImageToVideoPipeline`` checkpoints;
    conditions at other frames (or several) need the conditioning pipeline; frames inside the video."""
    from fastvideo_ltx.ltxv.options import options_for, parse_conditions

    conditions = parse_conditions(params.image)
    for c in conditions:
        if c.frame >= params.num_frames:
            raise ValueError(
                f"--image {c.path!r} is placed at frame {c.frame}, past the video's {params.num_frames} frames; "
                f"use a frame below {params.num_frames}"
            )
    conditioning = source.class_name == "LTXConditionPipeline" or options_for(source).upsampler is not None
    if not conditioning and (len(conditions) > 1 or conditions[0].frame or conditions[0].strength != 1.0):
        raise ValueError(
            f"this {source.class_name or 'LTX-Video'} checkpoint conditions on one first frame (--image PATH); "
            "conditions at other frames or with a strength need an LTXConditionPipeline checkpoint"
        )


def vae_strides(vae_cfg: dict[str, Any]) -> tuple[int, int]:
    """(spatial, temporal) compression of an ``AutoencoderKLLTXVideo`` config, as diffusers derives
    them when the config does not state them: patch size x 2 per spatio-temporal scaling block."""
    scaling = vae_cfg.get("spatio_temporal_scaling", (True, True, True, False))
    spatial = vae_cfg.get("spatial_compression_ratio") or int(vae_cfg.get("patch_size", 4)) * 2 ** sum(
        scaling
    )
    temporal = vae_cfg.get("temporal_compression_ratio") or int(vae_cfg.get("patch_size_t", 1)) * 2 ** sum(
        scaling
    )
    return int(spatial), int(temporal)
