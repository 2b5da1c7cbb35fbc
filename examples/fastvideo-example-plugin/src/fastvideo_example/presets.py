"""Presets of the example family.

A preset names a checkpoint and its sampling defaults. Published families point ``repo_id`` at a
diffusers-format Hub repo; this example has no published weights, so its preset points at a local
folder that ``fv example make-checkpoint`` fills with random weights.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastvideo.interfaces.model_family import Preset

#: Sampling defaults sized for a CPU: a few frames, small frames, few steps.
SAMPLING = {
    "num_frames": 17,  # 4k+1: the Wan VAE compresses time by 4
    "height": 128,
    "width": 128,
    "num_inference_steps": 8,
    "guidance_scale": 3.0,
    "flow_shift": 3.0,
    "fps": 8,
    "max_sequence_length": 64,  # text tokens; the tiny tokenizer knows few words anyway
}


def default_checkpoint_dir() -> Path:
    """Where ``fv example make-checkpoint`` writes when no path is given (the preset's folder)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "fastvideo-example" / "example-tiny"


PRESETS: tuple[Preset, ...] = (
    Preset(
        name="example-tiny",
        local_path=str(default_checkpoint_dir()),
        aliases=("example",),
        sampling=SAMPLING,
        description="random-weight example DiT; create it first with `fv example make-checkpoint`",
    ),
)
