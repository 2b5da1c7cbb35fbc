"""LTX-Video presets: the public diffusers-format checkpoints with their published sampling defaults."""

from __future__ import annotations

from fastvideo.interfaces.model_family import Preset

PRESETS: tuple[Preset, ...] = (
    Preset(
        name="ltx-video-0.9.1",
        repo_id="Lightricks/LTX-Video",
        aliases=("ltx", "ltx-video"),
        sampling={
            "num_frames": 161,
            "height": 512,
            "width": 704,
            "num_inference_steps": 50,
            "guidance_scale": 3.0,
            "fps": 25,
        },
        description="LTX-Video 2B text-to-video (0.9.1), 512x704, 161 frames",
    ),
)
