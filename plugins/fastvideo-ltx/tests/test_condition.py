"""The conditioning pipeline against diffusers' ``LTXConditionPipeline`` on a tiny checkpoint written by
its ``save_pretrained``: a hard image condition at frame 0 and a soft keyframe later (extra latent
frames with their own RoPE positions), CFG with rescale, conditioning noise at every step; the same
seed drives every draw on both sides. Plus the ``--image`` syntax."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fastvideo import VideoGenerator
from fastvideo_ltx.ltxv.condition import Condition, parse_conditions
from fastvideo_ltx.ltxv.options import linear_quadratic_schedule
from fastvideo_ltx.ltxv.tiny import make_tiny_ltx

FRAMES, HEIGHT, WIDTH, STEPS, SEED = 17, 64, 96, 4, 5
OPTIONS = {
    "decode_timestep": 0.05,
    "decode_noise_scale": 0.025,
    "guidance_rescale": 0.5,
    "image_cond_noise_scale": 0.15,
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ltx-cond")
    path = make_tiny_ltx(root / "cond", timestep_conditioning=True, pipeline="LTXConditionPipeline")
    (path / "fastvideo.json").write_text(json.dumps({"ltx": OPTIONS}))
    from PIL import Image

    rng = np.random.default_rng(1)
    for name in ("first", "key"):
        Image.fromarray(rng.integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)).save(root / f"{name}.png")
    clip = [Image.fromarray(rng.integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)) for _ in range(9)]
    clip[0].save(root / "clip.gif", save_all=True, append_images=clip[1:])
    return path


@pytest.mark.parametrize(
    "spec",
    [
        "first.png;key.png@8:0.8",  # hard first frame, soft keyframe as extra latent frames
        # a 9-frame clip at frame 8: one latent frame laid in, two as extra frames (~5 s)
        pytest.param("clip.gif@8", marks=pytest.mark.slow),
    ],
)
def test_conditions_match_diffusers(folder: Path, spec: str) -> None:
    from diffusers import LTXConditionPipeline
    from diffusers.pipelines.ltx.pipeline_ltx_condition import LTXVideoCondition
    from PIL import Image

    from fastvideo_ltx.ltxv.condition import read_clip

    spec = ";".join(str(folder.parent / s) for s in spec.split(";"))
    gen = VideoGenerator.from_pretrained(str(folder), device="cpu")
    kw = dict(num_frames=FRAMES, height=HEIGHT, width=WIDTH, num_inference_steps=STEPS, guidance_scale=3.0)
    ours = gen.generate_video(
        "a red ball", image=spec, output_path=None, seed=SEED, fps=25, max_sequence_length=16, **kw
    ).frames
    conditions = [
        LTXVideoCondition(image=Image.open(c.path), frame_index=c.frame, strength=c.strength)
        if c.path.endswith(".png")
        else LTXVideoCondition(video=read_clip(c.path), frame_index=c.frame, strength=c.strength)
        for c in parse_conditions(spec)
    ]
    pipe = LTXConditionPipeline.from_pretrained(folder)
    ref = pipe(  # (conditions=: diffusers' image= list keeps only the first image when video is None)
        prompt="a red ball",
        conditions=conditions,
        guidance_rescale=0.5,
        image_cond_noise_scale=0.15,
        decode_timestep=0.05,
        decode_noise_scale=0.025,
        frame_rate=25,
        max_sequence_length=16,
        generator=torch.Generator().manual_seed(SEED),
        output_type="np",
        **kw,
    ).frames[0]
    ref = (ref * 255).round().astype(np.uint8)
    assert ours.shape == ref.shape == (FRAMES, HEIGHT, WIDTH, 3) and ours.std() > 10
    diff = np.abs(ours.astype(np.float64) - ref.astype(np.float64))
    assert diff.mean() <= 0.03 and diff.max() <= 2, (diff.mean(), diff.max())


def test_text_only_request_runs_the_conditioning_schedule(folder: Path) -> None:
    from diffusers import LTXConditionPipeline

    gen = VideoGenerator.from_pretrained(str(folder), device="cpu")
    kw = dict(num_frames=9, height=HEIGHT, width=WIDTH, num_inference_steps=3, guidance_scale=1.0)
    ours = gen.generate_video(
        "a cat", output_path=None, seed=SEED, fps=24, max_sequence_length=16, **kw
    ).frames
    ref = LTXConditionPipeline.from_pretrained(folder)(
        prompt="a cat",
        decode_timestep=0.05,
        decode_noise_scale=0.025,
        frame_rate=24,
        max_sequence_length=16,
        generator=torch.Generator().manual_seed(SEED),
        output_type="np",
        **kw,
    ).frames[0]
    diff = np.abs(ours.astype(np.float64) - (ref * 255).round())
    assert diff.mean() <= 0.03 and diff.max() <= 2, (diff.mean(), diff.max())


def test_image_syntax() -> None:
    assert parse_conditions("a.png") == [Condition("a.png")]
    assert parse_conditions("a.png; clip.gif@32:0.5") == [Condition("a.png"), Condition("clip.gif", 32, 0.5)]
    with pytest.raises(ValueError, match=r"--image 'a.png@x' is not PATH\[@FRAME\[:STRENGTH\]\]"):
        parse_conditions("a.png@x")
    with pytest.raises(ValueError, match=r"STRENGTH in \[0, 1\]"):
        parse_conditions("a.png@0:2")


def test_linear_quadratic_schedule_matches_diffusers() -> None:
    from diffusers.pipelines.ltx.pipeline_ltx_condition import linear_quadratic_schedule as ref

    for n in (1, 2, 7, 30):
        assert torch.equal(torch.tensor(linear_quadratic_schedule(n)), ref(n))
