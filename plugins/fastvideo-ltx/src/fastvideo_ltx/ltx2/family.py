"""The ``ltx2`` model family: Lightricks' LTX-2 audio-video checkpoints (diffusers layout)."""

from __future__ import annotations

from typing import Any, ClassVar

from fastvideo.interfaces import ModelFamily, Preset
from fastvideo.interfaces.attention import BackendOption
from fastvideo_ltx.media import LTX2_IMAGE_CRF, check_crf

PRESETS = (
    Preset(
        name="ltx-2",
        repo_id="Lightricks/LTX-2",
        aliases=("ltx2",),
        sampling={
            "num_frames": 121,
            "height": 512,
            "width": 768,
            "num_inference_steps": 30,
            "guidance_scale": 3.0,
            "fps": 24,
            "max_sequence_length": 1024,
            "negative_prompt": "worst quality, inconsistent motion, blurry, jittery, distorted",
        },
        description="LTX-2 19B: text to video with sound, 512x768, 121 frames at 24 fps",
    ),
)


class LTX2Family(ModelFamily):
    """LTX-2 / LTX-2.3: one DiT makes the video and its soundtrack."""

    name = "ltx2"
    pipeline_class_names = ("LTX2Pipeline",)
    presets = PRESETS
    audio = True
    spatial_factor = 32
    temporal_factor = 8
    default_sampling: ClassVar[dict[str, Any]] = {
        "num_frames": 121, "height": 512, "width": 768, "num_inference_steps": 30, "guidance_scale": 3.0,
        "fps": 24, "max_sequence_length": 1024,
    }  # fmt: skip
    #: ``fv generate --image-crf`` / ``family_options={"ltx2": {"image_crf": 0}}`` (with ``--image`` only)
    sampling_options: ClassVar[tuple[BackendOption, ...]] = (
        BackendOption(
            name="image_crf",
            type=int,
            default=LTX2_IMAGE_CRF,
            help=f"H.264 CRF the conditioning image is compressed at first, as LTX-2 was trained (default "
            f"{LTX2_IMAGE_CRF}; 0 uses it as it is)",
            cli_flags=("--image-crf",),
            validate=check_crf,
        ),
    )

    @classmethod
    def validate(cls, params: Any, source: Any) -> None:
        if params.num_inference_steps < 2:
            raise ValueError(
                f"num_inference_steps={params.num_inference_steps}: LTX-2's schedule (stretched to its terminal "
                "sigma) needs at least 2 steps; use --steps 2 or more"
            )
        super().validate(params, source)
        if params.image is None and "image_crf" in params.family_options.get(cls.name, {}):
            raise ValueError(
                "--image-crf sets how the conditioning image is compressed; pass --image PATH or drop it"
            )

    @classmethod
    def factors(cls, source: Any) -> tuple[int, int]:
        """A checkpoint with a latent upsampler runs its first stage at half the size: 64-pixel steps."""
        two_stage = source.read_json("latent_upsampler/config.json") is not None
        return (64 if two_stage else cls.spatial_factor, cls.temporal_factor)

    @classmethod
    def build_pipeline(cls, source: Any, config: Any) -> Any:
        from fastvideo_ltx.ltx2.pipeline import build

        return build(cls, source, config)
