"""Cosmos presets: the public diffusers-format checkpoints with their published sampling defaults.

Values are those of diffusers' pipelines and the model cards (nvidia/Cosmos-Predict2-*,
nvidia/Cosmos-Predict2.5-*): Predict2 Video2World 93 frames at 704x1280, 16 fps, 35 steps, guidance
7; Text2Image one 768x1360 frame, 35 steps, guidance 7; Predict2.5 93 frames at 704x1280, 36 steps,
guidance 7. Guidance follows Cosmos' convention ``x0_c + g (x0_c - x0_u)`` (g = 7 weighs the
conditional prediction 8 times). Every preset uses Cosmos' default negative prompt
(:data:`DEFAULT_NEGATIVE_PROMPT`).
"""

from __future__ import annotations

from fastvideo.interfaces.model_family import Preset

DEFAULT_NEGATIVE_PROMPT = (
    "The video captures a series of frames showing ugly scenes, static with no motion, motion blur, "
    "over-saturation, shaky footage, low resolution, grainy texture, pixelated images, poorly lit areas, "
    "underexposed and overexposed scenes, poor color balance, washed out colors, choppy sequences, "
    "jerky movements, low frame rate, artifacting, color banding, unnatural transitions, outdated special "
    "effects, fake elements, unconvincing visuals, poorly edited content, jump cuts, visual noise, and "
    "flickering. Overall, the video is of poor quality."
)

_V2W = {
    "num_frames": 93,
    "height": 704,
    "width": 1280,
    "fps": 16,
    "num_inference_steps": 35,
    "guidance_scale": 7.0,
}
_T2I = {"num_frames": 1, "height": 768, "width": 1360, "num_inference_steps": 35, "guidance_scale": 7.0}
_P25 = {
    "num_frames": 93,
    "height": 704,
    "width": 1280,
    "fps": 16,
    "num_inference_steps": 36,
    "guidance_scale": 7.0,
}

PRESETS: tuple[Preset, ...] = (
    Preset(
        name="cosmos-predict2-2b-text2image",
        repo_id="nvidia/Cosmos-Predict2-2B-Text2Image",
        aliases=("cosmos-t2i",),
        sampling=_T2I,
        description="Cosmos-Predict2 text-to-image, 2B, 768x1360",
    ),
    Preset(
        name="cosmos-predict2-14b-text2image",
        repo_id="nvidia/Cosmos-Predict2-14B-Text2Image",
        sampling=_T2I,
        description="Cosmos-Predict2 text-to-image, 14B, 768x1360",
    ),
    Preset(
        name="cosmos-predict2-2b-video2world",
        repo_id="nvidia/Cosmos-Predict2-2B-Video2World",
        workload="i2v",
        aliases=("cosmos", "cosmos-v2w"),
        sampling=_V2W,
        description="Cosmos-Predict2 video-to-world from an image or clip, 2B, 93 frames 704x1280",
    ),
    Preset(
        name="cosmos-predict2-14b-video2world",
        repo_id="nvidia/Cosmos-Predict2-14B-Video2World",
        workload="i2v",
        sampling=_V2W,
        description="Cosmos-Predict2 video-to-world from an image or clip, 14B, 93 frames 704x1280",
    ),
    Preset(
        name="cosmos-predict2.5-2b",
        repo_id="nvidia/Cosmos-Predict2.5-2B",
        aliases=("cosmos2.5",),
        sampling=_P25,
        description="Cosmos-Predict2.5 text/image/video-to-world, 2B, 93 frames 704x1280",
    ),
)
