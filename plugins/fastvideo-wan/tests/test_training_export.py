"""A Wan model trained by the core trainer exports a diffusers folder: diffusers' own
``WanTransformer3DModel`` and ``WanPipeline`` load it with the trained weights, and ``fv generate``
on it matches diffusers' video. (Core's trainer tests run on the example plugin; this is the part
that needs Wan's diffusers classes.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fastvideo.training.config import load_config
from fastvideo.training.data import write_synthetic_dataset
from fastvideo.training.trainer import Trainer

LATENT = (16, 3, 8, 8)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Trainer, Path]:
    from fastvideo_wan.tiny import make_tiny_wan

    root = tmp_path_factory.mktemp("wan-train")
    ckpt = make_tiny_wan(root / "t2v", seed=0, randomize=False)
    data = write_synthetic_dataset(
        root / "data", count=8, latent_shape=LATENT, text_dim=32, max_sequence_length=16
    )
    overrides: dict[str, Any] = {
        "model.path": str(ckpt),
        "data.path": str(data),
        "output_dir": str(root / "run"),
        "max_steps": 4,
        "mixed_precision": "fp32",
        "optim.lr": 5e-3,
        "data.batch_size": 2,
        "export.dtype": "fp32",
        "logging.every_steps": 100,
    }
    trainer = Trainer(load_config(None, overrides))
    trainer.train()
    return trainer, root / "run"


def test_export_loads_in_diffusers_and_fv_generate_with_the_trained_weights(
    trained: tuple[Trainer, Path], tmp_path: Path
) -> None:
    from diffusers import WanPipeline, WanTransformer3DModel

    from fastvideo.video import read_mp4
    from fastvideo_wan.convert import diffusers_to_ours

    trainer, out = trained
    export = out / "export"
    ref_model = WanTransformer3DModel.from_pretrained(str(export / "transformer"))
    trained_state = trainer.algorithm.model.state_dict()
    exported = diffusers_to_ours(ref_model.state_dict())
    assert set(exported) == set(trained_state)
    assert all(torch.equal(exported[k], trained_state[k]) for k in trained_state)  # fp32 export: bit-exact
    kw = dict(num_frames=9, height=64, width=64, num_inference_steps=3, guidance_scale=3.0)
    latents = torch.randn(1, 16, 3, 8, 8, generator=torch.Generator().manual_seed(42))  # what --seed 42 draws
    pipe = WanPipeline.from_pretrained(str(export))
    pipe.set_progress_bar_config(disable=True)
    ref = np.asarray(pipe(prompt="a red circle", latents=latents, output_type="np", **kw).frames[0]) * 255
    video = tmp_path / "export.mp4"
    fv = Path(sys.executable).with_name("fv")
    cmd = [
        str(fv), "generate", "--model", str(export), "--prompt", "a red circle",
        "--num-frames", "9", "--height", "64", "--width", "64", "--steps", "3",
        "--guidance-scale", "3.0", "--seed", "42", "--device", "cpu", "--lossless",
        "--output", str(video), "--no-progress",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr
    ours = read_mp4(video).astype(np.float64)
    assert ref.std() > 5 and np.abs(ours - ref).mean() / 255 <= 1 / 255
