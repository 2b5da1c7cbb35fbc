"""HunyuanVideo presets: the public diffusers-format checkpoints with their sampling defaults.

Values follow the checkpoints' published inference settings (HunyuanVideo: 50 steps, flow shift 7,
embedded guidance 6; FastHunyuan, its consistency-distilled version: 6 steps, flow shift 17), as
FastVideo's sample configs record them. ``guidance_scale`` is the embedded guidance scale.
"""

from __future__ import annotations

from fastvideo.interfaces.model_family import Preset

_720P_125 = {"num_frames": 125, "height": 720, "width": 1280, "fps": 24, "guidance_scale": 6.0}

PRESETS: tuple[Preset, ...] = (
    Preset(
        name="hunyuanvideo-t2v-13b",
        repo_id="hunyuanvideo-community/HunyuanVideo",
        aliases=("hunyuan", "hunyuanvideo"),
        sampling={**_720P_125, "num_inference_steps": 50, "flow_shift": 7.0},
        description="HunyuanVideo text-to-video, 13B, 720P, embedded guidance",
    ),
    Preset(
        name="fasthunyuan-t2v-13b",
        repo_id="FastVideo/FastHunyuan-diffusers",
        aliases=("fasthunyuan",),
        sampling={**_720P_125, "num_inference_steps": 6, "flow_shift": 17.0},
        description="FastHunyuan: HunyuanVideo distilled to 6 steps, 720P",
    ),
)
