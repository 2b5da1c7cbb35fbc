"""``StepVideoFamily``: the Step-Video presets, checkpoint detection, request checks and pipeline.

Imported during plugin registration: no torch here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from fastvideo.interfaces.attention import BackendOption
from fastvideo.interfaces.model_family import ModelFamily, ModelSource, Preset
from fastvideo_stepvideo.presets import PRESETS

if TYPE_CHECKING:
    from fastvideo.configs import PipelineConfig
    from fastvideo.pipelines.composed import ComposedPipeline

FRAMES_PER_CHUNK = 17


class StepVideoFamily(ModelFamily):
    """Step-Video-T2V, T2V-Turbo and TI2V: 17-frame chunks, 16x16 spatial compression, CFG with a
    negative prompt; TI2V checkpoints (``use_additional_conditions`` in the DiT config) take ``--image``."""

    name = "stepvideo"
    presets: ClassVar[tuple[Preset, ...]] = PRESETS
    pipeline_class_names = ("StepVideoPipeline",)
    spatial_factor = 16  # VAE stride 16 x patch 1
    temporal_factor = 1  # frames are checked in chunks of 17 by validate
    default_sampler = "stepvideo-flow"
    #: ``fv generate --num-gpus N``: the VAE's latent chunks are decoded on different ranks
    vae_splitters: ClassVar[dict[str, str]] = {"StepVideoVAE": "fastvideo_stepvideo.vae:StepVideoVAESplitter"}
    #: ``fv generate --motion-score`` / ``family_options={"stepvideo": {"motion_score": 10.0}}`` (TI2V only)
    sampling_options: ClassVar[tuple[BackendOption, ...]] = (
        BackendOption(
            name="motion_score",
            type=float,
            default=5.0,
            help="Step-Video-TI2V's motion score: 2 steadier, 5 the published default, 10 or 20 more motion",
            cli_flags=("--motion-score",),
            validate=lambda v: None if v >= 0 else "must be >= 0",
        ),
    )
    default_sampling: ClassVar[dict[str, Any]] = {
        "num_frames": 204,
        "height": 544,
        "width": 992,
        "num_inference_steps": 50,
        "guidance_scale": 9.0,
        "flow_shift": 13.0,
        "fps": 25,
    }

    @classmethod
    def validate(cls, params: Any, source: ModelSource) -> None:
        super().validate(params, source)
        if params.num_frames % FRAMES_PER_CHUNK:
            k = max(1, params.num_frames // FRAMES_PER_CHUNK)
            raise ValueError(
                f"num_frames={params.num_frames} is invalid for stepvideo: the VAE decodes chunks of "
                f"{FRAMES_PER_CHUNK} frames; use a multiple of {FRAMES_PER_CHUNK} (e.g. {FRAMES_PER_CHUNK * k} or "
                f"{FRAMES_PER_CHUNK * (k + 1)})"
            )
        if cls.is_ti2v(source):
            if params.image is None:
                raise ValueError("Step-Video-TI2V is image-to-video: pass --image PATH (the first frame)")
        else:
            if params.image is not None:
                raise ValueError(
                    "this Step-Video checkpoint is text-to-video and takes no --image; use --model stepvideo-ti2v"
                )
            if "motion_score" in params.family_options.get(cls.name, {}):
                raise ValueError(
                    "--motion-score is a Step-Video-TI2V setting; this checkpoint is text-to-video (drop it, "
                    "or use --model stepvideo-ti2v)"
                )

    @classmethod
    def is_ti2v(cls, source: ModelSource) -> bool:
        """Whether the checkpoint's DiT is Step-Video-TI2V's (image latents + motion score)."""
        cfg = source.read_json("transformer/config.json")
        if cfg is None:  # a Hub repo not downloaded yet: the preset says
            return source.preset is not None and source.preset.workload == "i2v"
        return bool(cfg.get("use_additional_conditions"))

    @classmethod
    def build_pipeline(cls, source: ModelSource, config: PipelineConfig) -> ComposedPipeline:
        from fastvideo_stepvideo.pipeline import build_stepvideo_pipeline

        return build_stepvideo_pipeline(cls, source, config)
