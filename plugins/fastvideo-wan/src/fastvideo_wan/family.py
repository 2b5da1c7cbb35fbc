"""``WanFamily``: ties the Wan presets, checkpoint detection, validation and pipelines together.

This module is imported during plugin registration, so it must not import torch.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
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
    #: Tile-by-tile decoding of Wan's VAE for the core's parallel VAE decode (any family using it).
    vae_splitters: ClassVar[dict[str, str]] = {"AutoencoderKLWan": "fastvideo_wan.vae_split:WanVAESplitter"}

    @classmethod
    def factors(cls, source: ModelSource) -> tuple[int, int]:
        vae_cfg = source.read_json("vae/config.json")
        dit_cfg = source.read_json("transformer/config.json") or source.read_json("transformer_2/config.json")
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

    # ---------------------------------------------------------------- training hooks

    #: LoRA on the attention projections and the feed-forward of every block (our module names).
    lora_target_modules: ClassVar[tuple[str, ...]] = (
        "blocks.*.self_attn.[qkvo]",
        "blocks.*.cross_attn.[qkvo]",
        "blocks.*.ffn.fc[12]",
    )

    @classmethod
    def dit_class(cls) -> Any:
        """Our DiT, which ``ModelFamily.load_transformer`` loads for training (with the per-layer
        modules of the training backend, zeros where the checkpoint has none)."""
        from fastvideo_wan.model import WanTransformer

        return WanTransformer

    @classmethod
    def training_objective(cls, source: ModelSource) -> Any:
        """Flow matching with the checkpoint's shift: the preset's ``flow_shift``, else the scheduler's."""
        from fastvideo.training.objectives import FlowMatchingObjective

        workload = _workload(source)
        if workload != "t2v":
            raise ValueError(
                f"training supports Wan text-to-video checkpoints; this one is {workload} (image conditioning "
                "in training is not implemented yet)"
            )
        scheduler = source.read_json("scheduler/scheduler_config.json") or {}
        shift = scheduler.get("flow_shift") or scheduler.get("shift") or 1.0
        if source.preset is not None and source.preset.sampling.get("flow_shift"):
            shift = source.preset.sampling["flow_shift"]
        steps = int(scheduler.get("num_train_timesteps", 1000))
        return FlowMatchingObjective(shift=float(shift), num_train_timesteps=steps)

    @classmethod
    def training_encoders(cls, source: ModelSource, config: PipelineConfig) -> Any:
        from fastvideo.loader.components import load_component
        from fastvideo.models import default_dtypes, pick_device
        from fastvideo.pipelines.stages import T5TextEncoder
        from fastvideo.training.preprocess import Encoders
        from fastvideo_wan.pipeline import wan_latents

        device = pick_device(config)
        _, text_dtype, vae_dtype = default_dtypes(config, device)
        index = source.model_index
        tokenizer = load_component(source.path, index, "tokenizer")
        text_encoder = load_component(source.path, index, "text_encoder", dtype=text_dtype, device=device)
        vae = load_component(source.path, index, "vae", dtype=vae_dtype, device=device)
        normalize = wan_latents(vae).normalize  # what the pipelines' denormalize inverts
        return Encoders(
            text=T5TextEncoder(tokenizer, text_encoder), vae=vae, normalize=normalize, device=device
        )

    @classmethod
    def to_diffusers_names(cls, names: Iterable[str]) -> dict[str, str]:
        from fastvideo_wan.convert import ours_to_diffusers

        return {ours: theirs for theirs, ours in ours_to_diffusers({n: n for n in names}).items()}

    @classmethod
    def from_diffusers_names(cls, names: Iterable[str]) -> dict[str, str]:
        from fastvideo_wan.convert import diffusers_to_ours

        return {theirs: ours for ours, theirs in diffusers_to_ours({n: n for n in names}).items()}

    @classmethod
    def from_original_names(cls, names: Iterable[str]) -> dict[str, str]:
        """Module names of the official Wan repository (LoRAs published with ``diffusion_model.``)."""
        out = {}
        for name in names:
            for pattern, template in _ORIGINAL_MODULES:
                if re.fullmatch(pattern, name):
                    out[name] = re.sub(pattern, template, name)
                    break
        return out

    @classmethod
    def transformer_config(cls, model: Any) -> dict[str, Any]:
        return {"_class_name": "WanTransformer3DModel", **model.config.to_diffusers_config()}


#: Linear layers of the official Wan DiT (Wan-Video/Wan2.1 ``wan/modules/model.py``) -> ours.
_ORIGINAL_MODULES: tuple[tuple[str, str], ...] = (
    (r"blocks\.(\d+)\.(self_attn|cross_attn)\.(q|k|v|o|k_img|v_img)", r"blocks.\1.\2.\3"),
    (r"blocks\.(\d+)\.ffn\.0", r"blocks.\1.ffn.fc1"),
    (r"blocks\.(\d+)\.ffn\.2", r"blocks.\1.ffn.fc2"),
    (r"head\.head", "head.proj"),
    (r"time_projection\.1", "time_mod"),
    (r"text_embedding\.0", "text_embed.fc1"),
    (r"text_embedding\.2", "text_embed.fc2"),
    (r"time_embedding\.0", "time_embed.fc1"),
    (r"time_embedding\.2", "time_embed.fc2"),
    (r"img_emb\.proj\.1", "image_embed.fc1"),
    (r"img_emb\.proj\.3", "image_embed.fc2"),
)


def _workload(source: ModelSource) -> str:
    if source.model_index:
        if source.model_index.get("_class_name") == "WanImageToVideoPipeline":
            return "i2v"
        if source.model_index.get("expand_timesteps"):
            return "ti2v"
        return "t2v"
    return source.preset.workload if source.preset else "t2v"
