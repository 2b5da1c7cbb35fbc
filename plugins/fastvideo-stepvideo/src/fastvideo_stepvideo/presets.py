"""Step-Video presets: the released checkpoints with their published sampling settings.

Step-Video-T2V: 204 frames at 544x992, 50 steps, CFG 9, time shift 13 (the README's command line).
Step-Video-T2V-Turbo (inference-step distilled): 10-15 steps (15 here), CFG 5, time shift 17.
Step-Video-TI2V (image-to-video, 30B, its own repository): 102 frames, 50 steps, CFG 9, time shift 13,
motion score 5 (the README's command line and recommendation).
"""

from __future__ import annotations

from fastvideo.interfaces.model_family import Preset

_540P_204 = {"num_frames": 204, "height": 544, "width": 992, "fps": 25, "seed": 1234}

PRESETS: tuple[Preset, ...] = (
    Preset(
        name="stepvideo-t2v",
        repo_id="stepfun-ai/stepvideo-t2v",
        aliases=("stepvideo",),
        sampling={**_540P_204, "num_inference_steps": 50, "guidance_scale": 9.0, "flow_shift": 13.0},
        description="Step-Video-T2V text-to-video, 30B, 544x992, 204 frames",
    ),
    Preset(
        name="stepvideo-t2v-turbo",
        repo_id="stepfun-ai/stepvideo-t2v-turbo",
        aliases=("stepvideo-turbo",),
        sampling={**_540P_204, "num_inference_steps": 15, "guidance_scale": 5.0, "flow_shift": 17.0},
        description="Step-Video-T2V-Turbo: inference-step distilled, 10-15 steps",
    ),
    Preset(
        name="stepvideo-ti2v",
        repo_id="stepfun-ai/stepvideo-ti2v",
        workload="i2v",
        sampling={
            "num_frames": 102,
            "height": 544,
            "width": 992,
            "num_inference_steps": 50,
            "guidance_scale": 9.0,
            "flow_shift": 13.0,
            "fps": 25,
            "seed": 1234,
        },
        description="Step-Video-TI2V image-to-video, 30B, first-frame conditioned, motion score 5",
    ),
)
