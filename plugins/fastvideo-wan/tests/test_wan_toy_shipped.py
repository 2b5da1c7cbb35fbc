"""The shipped ``wan-toy`` preset: offline generation, held-out accuracy (regression floors), and a
seeded regression against the video committed with the weights (tests/data/wan-toy-reference.npz)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from fastvideo_wan import toy

REFERENCE = Path(__file__).parent / "data" / "wan-toy-reference.npz"
FV = str(Path(sys.executable).with_name("fv"))


def _generate(prompt: str, seed: int) -> np.ndarray:
    from fastvideo import VideoGenerator

    gen = VideoGenerator.from_pretrained("wan-toy", device="cpu", progress=False)
    return gen.generate_video(prompt, seed=seed).frames


def test_shipped_model_matches_its_committed_reference_video() -> None:
    """A seeded generation at the preset's defaults against the frames committed when the model was
    trained (tests/data/wan-toy-reference.npz): mean SSIM >= 0.98."""
    from fastvideo.testing import mean_ssim

    ref = np.load(REFERENCE)
    frames = _generate(str(ref["prompt"]), int(ref["seed"]))
    assert frames.shape == ref["frames"].shape == (17, 64, 64, 3)
    assert mean_ssim(frames, ref["frames"]) >= 0.98


#: The demo issue's bar over at least 50 held-out prompts. The shipped weights measured colour 100%,
#: shape 98.2%, direction 100%, background 100% (docs/wan-toy.md; CPU, fp32).
BAR = {"colour": 0.95, "shape": 0.80, "direction": 0.90, "background": 0.95}


def test_shipped_model_follows_held_out_prompts() -> None:
    """Over the 56 held-out prompts (attribute combinations never seen in training), one seeded video
    each at the preset's defaults, scored from pixels by the toy evaluator."""
    from fastvideo_wan.toy_model import evaluate_model

    result = evaluate_model("wan-toy", device="cpu")
    assert result["count"] == 56
    for attribute, bar in BAR.items():
        assert result["accuracy"][attribute] >= bar, (attribute, result["accuracy"])


def test_fv_generate_wan_toy_offline(tmp_path: Path) -> None:
    out = tmp_path / "toy.mp4"
    proc = subprocess.run(
        [
            FV,
            "generate",
            "--model",
            "wan-toy",
            "--prompt",
            "a blue square moving up on a black background",
            "--output",
            str(out),
        ],
        env={**os.environ, "HF_HUB_OFFLINE": "1", "FASTVIDEO_PROGRESS": "0"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    from fastvideo.video import read_mp4

    got = toy.detect(read_mp4(out))
    assert got == {"colour": "blue", "shape": "square", "direction": "up", "background": "black"}
