"""LTX-Video presets: the public diffusers-format checkpoints with their published sampling defaults.

Values follow the diffusers documentation of LTX-Video (``docs/source/en/api/pipelines/ltx_video.md``)
and the pipelines' own defaults where the documentation passes none (the RoPE frame rate: 25):

- ``Lightricks/LTX-Video`` (``LTXPipeline``): 161 frames at 512x768, 50 steps, guidance 3, decode
  timestep 0.03 with decode noise 0.025;
- ``-0.9.5`` (``LTXConditionPipeline``): 161 frames at 512x704, 50 steps, guidance 3, the documented
  settings of timestep-aware VAEs (decode timestep 0.05, noise 0.025, conditioning noise 0.025);
- ``-0.9.7-dev``: multi-scale at 768x1152 (first pass at 2/3 size, 30 steps, guidance 5, rescale 0.7;
  2x upsampling; refine on 10 steps from strength 0.4);
- ``-0.9.7-distilled`` / ``-0.9.8-13B-distilled``: multi-scale with guidance 1, rescale 0.7, the
  distilled timestep list, 2x upsampling with AdaIN, refine on ``[1000, 909, 725, 421, 0]`` from
  strength 0.999; 0.9.8 adds tone mapping 0.6 and is documented at 480x832.

``PRESET_OPTIONS[name]`` holds what is not a generic sampling parameter (:class:`LTXVideoOptions`).
"""

from __future__ import annotations

from fastvideo.interfaces.model_family import Preset
from fastvideo_ltx.ltxv.options import LTXVideoOptions, linear_quadratic_schedule

#: The distilled first pass (0.9.7 / 0.9.8 distilled), as diffusers' docs run it.
DISTILLED_TIMESTEPS = (1000.0, 993.0, 987.0, 981.0, 975.0, 909.0, 725.0, 0.03)
#: The distilled refine pass after 2x latent upsampling.
REFINE_TIMESTEPS = (1000.0, 909.0, 725.0, 421.0, 0.0)
#: The 0.9.7-dev refine pass: the conditioning pipeline's 10-step schedule.
DEV_REFINE_TIMESTEPS = tuple(s * 1000.0 for s in linear_quadratic_schedule(10))

NEGATIVE_097 = "worst quality, inconsistent motion, blurry, jittery, distorted"
NEGATIVE_098 = "bright colors, symbols, graffiti, watermarks, worst quality, inconsistent motion, blurry, jittery, distorted"

_BASE = {"num_frames": 161, "fps": 25, "max_sequence_length": 128}
_COND = {**_BASE, "max_sequence_length": 256}  # LTXConditionPipeline's text length

PRESETS: tuple[Preset, ...] = (
    Preset(
        name="ltx-video",
        repo_id="Lightricks/LTX-Video",
        aliases=("ltx", "ltx-video-2b"),
        sampling={**_BASE, "height": 512, "width": 768, "num_inference_steps": 50, "guidance_scale": 3.0},
        description="LTX-Video 2B text-to-video (and image-to-video with --image), 161 x 512 x 768, 50 steps",
    ),
    Preset(
        name="ltx-video-0.9.5",
        repo_id="Lightricks/LTX-Video-0.9.5",
        sampling={**_COND, "height": 512, "width": 704, "num_inference_steps": 50, "guidance_scale": 3.0},
        description="LTX-Video 2B 0.9.5, conditioning pipeline (--image PATH[@FRAME[:STRENGTH]];...)",
    ),
    Preset(
        name="ltx-video-0.9.7-dev",
        repo_id="Lightricks/LTX-Video-0.9.7-dev",
        aliases=("ltx-video-13b",),
        sampling={
            **_COND,
            "height": 768,
            "width": 1152,
            "num_inference_steps": 30,
            "guidance_scale": 5.0,
            "negative_prompt": NEGATIVE_097,
        },
        description="LTX-Video 13B 0.9.7 dev: multi-scale (30 steps at 2/3 size, 2x upsampling, refine)",
    ),
    Preset(
        name="ltx-video-0.9.7-distilled",
        repo_id="Lightricks/LTX-Video-0.9.7-distilled",
        sampling={**_COND, "height": 768, "width": 1152, "num_inference_steps": 8, "guidance_scale": 1.0},
        description="LTX-Video 13B 0.9.7 distilled: 8 steps at 2/3 size, 2x upsampling, 4-step refine",
    ),
    Preset(
        name="ltx-video-0.9.8-13b-distilled",
        repo_id="Lightricks/LTX-Video-0.9.8-13B-distilled",
        aliases=("ltx-video-0.9.8-distilled",),
        sampling={**_COND, "height": 480, "width": 832, "num_inference_steps": 8, "guidance_scale": 1.0},
        description="LTX-Video 13B 0.9.8 distilled: 8 steps at 2/3 size, 2x upsampling, tone mapping, refine",
    ),
)

_DECODE = {"decode_timestep": 0.05, "decode_noise_scale": 0.025}
_DISTILLED = dict(
    _DECODE,
    guidance_rescale=0.7,
    image_cond_noise_scale=0.0,
    timesteps=DISTILLED_TIMESTEPS,
    upsampler="Lightricks/ltxv-spatial-upscaler-0.9.7",
    refine_timesteps=REFINE_TIMESTEPS,
    refine_strength=0.999,
    adain_factor=1.0,
)

PRESET_OPTIONS: dict[str, LTXVideoOptions] = {
    "ltx-video": LTXVideoOptions(decode_timestep=0.03, decode_noise_scale=0.025),
    "ltx-video-0.9.5": LTXVideoOptions(**_DECODE, image_cond_noise_scale=0.025),
    "ltx-video-0.9.7-dev": LTXVideoOptions(
        **_DECODE,
        guidance_rescale=0.7,
        image_cond_noise_scale=0.0,
        upsampler="Lightricks/ltxv-spatial-upscaler-0.9.7",
        refine_timesteps=DEV_REFINE_TIMESTEPS,
        refine_strength=0.4,
    ),
    "ltx-video-0.9.7-distilled": LTXVideoOptions(**_DISTILLED),
    "ltx-video-0.9.8-13b-distilled": LTXVideoOptions(
        **{
            **_DISTILLED,
            "upsampler": "a-r-r-o-w/LTX-0.9.8-Latent-Upsampler",
            "tone_map_compression_ratio": 0.6,
        }
    ),
}
