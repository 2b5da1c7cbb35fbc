"""``WanFamily``: ties the Wan presets, checkpoint detection, validation and pipelines together.

This module is imported during plugin registration, so it must not import torch.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, ClassVar

from fastvideo.interfaces.model_family import ModelFamily, ModelSource, Preset
from fastvideo_wan.presets import PRESETS

if TYPE_CHECKING:
    from fastvideo.configs import PipelineConfig
    from fastvideo.pipelines.composed import ComposedPipeline


class WanFamily(ModelFamily):
    """Wan 2.1 / 2.2: T2V, I2V, TI2V-5B and the A14B mixture of experts."""

    name = "wan"
    presets: ClassVar[tuple[Preset, ...]] = PRESETS
    pipeline_class_names = ("WanPipeline", "WanImageToVideoPipeline")
    spatial_factor = 16  # VAE stride 8 x patch 2 (Wan2.2's 48-channel VAE: 16 x 2 = 32)
    temporal_factor = 4
    default_sampling: ClassVar[dict[str, Any]] = {
        "num_frames": 81,
        "height": 480,
        "width": 832,
        "num_inference_steps": 50,
        "guidance_scale": 5.0,
        "fps": 16,
    }

    @classmethod
    def factors(cls, source: ModelSource) -> tuple[int, int]:
        vae_cfg = _read_json(source, "vae/config.json")
        dit_cfg = _read_json(source, "transformer/config.json") or _read_json(
            source, "transformer_2/config.json"
        )
        if vae_cfg is not None:
            stride = int(vae_cfg.get("scale_factor_spatial") or (16 if vae_cfg.get("z_dim") == 48 else 8))
            patch = int((dit_cfg or {}).get("patch_size", [1, 2, 2])[1])
            return stride * patch, int(vae_cfg.get("scale_factor_temporal") or 4)
        if source.preset is not None and source.preset.workload == "ti2v":
            return 32, 4
        return cls.spatial_factor, cls.temporal_factor

    @classmethod
    def validate(cls, params: Any, source: ModelSource) -> None:
        super().validate(params, source)
        workload = _workload(source)
        if workload == "i2v" and params.image is None:
            raise ValueError(
                f"{source.preset.name if source.preset else 'this model'} is image-to-video: pass --image PATH"
            )
        if workload == "t2v" and params.image is not None:
            raise ValueError(
                "this Wan checkpoint is text-to-video and takes no --image; use an I2V or TI2V model"
            )

    @classmethod
    def build_pipeline(cls, source: ModelSource, config: PipelineConfig) -> ComposedPipeline:
        from fastvideo_wan.pipeline import build_wan_pipeline

        return build_wan_pipeline(cls, source, config)


def _workload(source: ModelSource) -> str:
    if source.model_index:
        if source.model_index.get("_class_name") == "WanImageToVideoPipeline":
            return "i2v"
        if source.model_index.get("expand_timesteps"):
            return "ti2v"
        return "t2v"
    return source.preset.workload if source.preset else "t2v"


def _read_json(source: ModelSource, rel: str) -> dict[str, Any] | None:
    path = source.path / rel if str(source.path) not in ("", ".") else None
    if path is None or not path.is_file():
        return None
    return json.loads(path.read_text())
