"""LTX-Video presets: the public diffusers-format checkpoints with their published sampling defaults.

Sampling values follow the diffusers documentation of LTX-Video (``docs/source/en/api/pipelines/
ltx_video.md``) and the model cards: 2B 0.9.x at 512x704 (width x height 704x480 in the cards'
examples is also common), 161 frames, 25 fps (24 for 0.9.5+), guidance 3; decode timestep 0.03 and
decode noise 0.025 for the timestep-conditioned VAEs (>= 0.9.1); the 0.9.7 / 0.9.8 distilled
releases at guidance 1 with rescale 0.7 on the explicit timestep list, then 2x latent upsampling and
a refine pass. ``PRESET_OPTIONS[name]`` holds what is not a generic sampling parameter.
"""

from __future__ import annotations

from fastvideo.interfaces.model_family import Preset
from fastvideo_ltx.ltxv.options import LTXVideoOptions

_2B = {"num_frames": 161, "height": 512, "width": 704, "max_sequence_length": 128}

#: The distilled first pass (0.9.7 / 0.9.8 distilled), as diffusers' docs run it.
DISTILLED_TIMESTEPS = (1000.0, 993.0, 987.0, 981.0, 975.0, 909.0, 725.0, 0.03)
#: The refine pass after 2x latent upsampling.
REFINE_TIMESTEPS = (1000.0, 909.0, 725.0, 421.0, 0.0)

PRESETS: tuple[Preset, ...] = (
    Preset(
        name="ltx-video-0.9.1",
        repo_id="Lightricks/LTX-Video",
        aliases=("ltx", "ltx-video"),
        sampling={**_2B, "num_inference_steps": 50, "guidance_scale": 3.0, "fps": 25},
        description="LTX-Video 2B text-to-video (0.9.1), 512x704, 161 frames, 50 steps",
    ),
    Preset(
        name="ltx-video-0.9.5",
        repo_id="Lightricks/LTX-Video-0.9.5",
        aliases=("ltx-video-0.9.5-2b",),
        sampling={**_2B, "num_inference_steps": 40, "guidance_scale": 3.0, "fps": 24},
        description="LTX-Video 2B 0.9.5 (text- and image-to-video, conditioning), 512x704, 161 frames",
    ),
    Preset(
        name="ltx-video-0.9.7-dev",
        repo_id="Lightricks/LTX-Video-0.9.7-dev",
        aliases=("ltx-video-13b",),
        sampling={**_2B, "num_frames": 121, "num_inference_steps": 30, "guidance_scale": 5.0, "fps": 24},
        description="LTX-Video 13B 0.9.7 dev, 512x704, 121 frames, 30 steps",
    ),
    Preset(
        name="ltx-video-0.9.7-distilled",
        repo_id="Lightricks/LTX-Video-0.9.7-distilled",
        sampling={**_2B, "num_frames": 121, "num_inference_steps": 8, "guidance_scale": 1.0, "fps": 24},
        description="LTX-Video 13B 0.9.7 distilled: 8 steps, 2x latent upsampling, refine (multi-scale)",
    ),
    Preset(
        name="ltx-video-0.9.8-13b-distilled",
        repo_id="Lightricks/LTX-Video-0.9.8-13B-distilled",
        aliases=("ltx-video-0.9.8-distilled",),
        sampling={**_2B, "num_frames": 161, "num_inference_steps": 8, "guidance_scale": 1.0, "fps": 24},
        description="LTX-Video 13B 0.9.8 distilled: 8 steps, 2x latent upsampling, refine (multi-scale)",
    ),
)

_DECODE = {"decode_timestep": 0.05, "decode_noise_scale": 0.025}
_DISTILLED = LTXVideoOptions(
    **_DECODE,
    guidance_rescale=0.7,
    timesteps=DISTILLED_TIMESTEPS,
    upsampler="Lightricks/ltxv-spatial-upscaler-0.9.7",
    refine_timesteps=REFINE_TIMESTEPS,
    refine_strength=0.999,
)

PRESET_OPTIONS: dict[str, LTXVideoOptions] = {
    "ltx-video-0.9.1": LTXVideoOptions(decode_timestep=0.03, decode_noise_scale=0.025),
    "ltx-video-0.9.5": LTXVideoOptions(**_DECODE),
    "ltx-video-0.9.7-dev": LTXVideoOptions(**_DECODE),
    "ltx-video-0.9.7-distilled": _DISTILLED,
    "ltx-video-0.9.8-13b-distilled": LTXVideoOptions(
        **{**_DISTILLED.__dict__, "tone_map_compression_ratio": 0.6}
    ),
}
