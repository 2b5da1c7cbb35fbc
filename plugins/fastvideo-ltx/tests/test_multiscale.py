"""The distilled multi-scale chain (first pass on the distilled timestep list, 2x latent upsampling,
refine pass, decode, resize) against diffusers' documented recipe for LTX-Video 0.9.7 / 0.9.8
distilled: ``LTXConditionPipeline`` -> ``LTXLatentUpsamplePipeline`` -> ``LTXConditionPipeline``, on
tiny checkpoints written by diffusers' ``save_pretrained``, with one generator for every draw."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fastvideo import VideoGenerator
from fastvideo_ltx.ltxv.multiscale import adain, pass_sizes, tone_map
from fastvideo_ltx.ltxv.presets import DISTILLED_TIMESTEPS, REFINE_TIMESTEPS
from fastvideo_ltx.ltxv.tiny import make_tiny_ltx, make_tiny_upsampler

FRAMES, HEIGHT, WIDTH, SEED = 9, 96, 144, 3
OPTIONS = {
    "decode_timestep": 0.05,
    "decode_noise_scale": 0.025,
    "guidance_rescale": 0.7,
    "image_cond_noise_scale": 0.0,
    "timesteps": list(DISTILLED_TIMESTEPS),
    "upsampler": "upsampler",
    "refine_timesteps": list(REFINE_TIMESTEPS),
    "refine_strength": 0.999,
    "adain_factor": 1.0,
    "tone_map_compression_ratio": 0.6,
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = make_tiny_ltx(
        tmp_path_factory.mktemp("ltx-ms") / "distilled",
        timestep_conditioning=True,
        pipeline="LTXConditionPipeline",
    )
    make_tiny_upsampler(path / "upsampler")
    (path / "fastvideo.json").write_text(json.dumps({"ltx": OPTIONS}))
    from PIL import Image

    pixels = np.random.default_rng(2).integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path.parent / "first.png")
    return path


@pytest.mark.parametrize(
    "with_image", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["t2v", "image"]
)
def test_chain_matches_diffusers_recipe(folder: Path, with_image: bool) -> None:
    """With an image, its condition applies to both passes, as the documented recipe passes it."""
    from diffusers import LTXConditionPipeline, LTXLatentUpsamplePipeline
    from diffusers.pipelines.ltx.modeling_latent_upsampler import LTXLatentUpsamplerModel
    from diffusers.pipelines.ltx.pipeline_ltx_condition import LTXVideoCondition
    from PIL import Image

    image = str(folder.parent / "first.png") if with_image else None
    conditions = [LTXVideoCondition(image=Image.open(image), frame_index=0)] if image else None
    gen = VideoGenerator.from_pretrained(str(folder), device="cpu")
    result = gen.generate_video(
        "a red ball",
        image=image,
        output_path=None,
        num_frames=FRAMES,
        height=HEIGHT,
        width=WIDTH,
        guidance_scale=1.0,
        seed=SEED,
        fps=24,
        max_sequence_length=16,
    )
    names = [s.name for s in gen.pipeline.stages]
    assert (
        names.index("first_pass") < names.index("upsample") < names.index("refine") < names.index("decoding")
    )

    pipe = LTXConditionPipeline.from_pretrained(folder)
    upsampler = LTXLatentUpsamplerModel.from_pretrained(folder / "upsampler" / "latent_upsampler")
    upsample = LTXLatentUpsamplePipeline(vae=pipe.vae, latent_upsampler=upsampler)
    (h1, w1), _ = pass_sizes(HEIGHT, WIDTH, 2 / 3, 4)
    assert (h1, w1) == (64, 96)
    g = torch.Generator().manual_seed(SEED)
    common = dict(
        num_frames=FRAMES,
        decode_timestep=0.05,
        decode_noise_scale=0.025,
        image_cond_noise_scale=0.0,
        guidance_scale=1.0,
        guidance_rescale=0.7,
        max_sequence_length=16,
        frame_rate=24,
        conditions=conditions,
    )
    low = pipe(
        prompt="a red ball",
        height=h1,
        width=w1,
        timesteps=list(DISTILLED_TIMESTEPS),
        generator=g,
        output_type="latent",
        **common,
    ).frames
    up = upsample(latents=low, adain_factor=1.0, tone_map_compression_ratio=0.6, output_type="latent").frames
    video = pipe(
        prompt="a red ball",
        height=2 * h1,
        width=2 * w1,
        denoise_strength=0.999,
        timesteps=list(REFINE_TIMESTEPS),
        latents=up,
        generator=g,
        output_type="pil",
        **common,
    ).frames[0]
    ref = np.stack([np.asarray(frame.resize((WIDTH, HEIGHT))) for frame in video])
    ours = result.frames
    assert ours.shape == ref.shape == (FRAMES, HEIGHT, WIDTH, 3) and ours.std() > 10
    diff = np.abs(ours.astype(np.float64) - ref.astype(np.float64))
    assert diff.mean() <= 0.03 and diff.max() <= 2, (diff.mean(), diff.max())


def test_adain_and_tone_map_match_diffusers() -> None:
    from diffusers import LTXLatentUpsamplePipeline

    gen = torch.Generator().manual_seed(0)
    x, ref = torch.randn(2, 3, 2, 4, 5, generator=gen) * 2, torch.randn(2, 3, 2, 4, 5, generator=gen)
    pipe = LTXLatentUpsamplePipeline.__new__(LTXLatentUpsamplePipeline)  # the methods use no state
    torch.testing.assert_close(adain(x, ref, 0.7), pipe.adain_filter_latent(x, ref, 0.7))
    torch.testing.assert_close(tone_map(x, 0.6), pipe.tone_map_latents(x, 0.6))


def test_pass_sizes_round_to_the_stride() -> None:
    assert pass_sizes(480, 832, 2 / 3, 32) == ((320, 544), (640, 1088))  # diffusers' docs example
    assert pass_sizes(32, 32, 2 / 3, 32) == ((32, 32), (64, 64))


@pytest.mark.slow
def test_dev_chain_matches_diffusers_recipe(folder: Path, tmp_path: Path) -> None:
    """0.9.7-dev's chain: CFG with a negative prompt and rescale, the conditioning pipeline's
    linear-quadratic schedule in the first pass, no AdaIN, and a refine pass on its 10-step schedule
    from strength 0.4 (the last 4 steps)."""
    import shutil

    from diffusers import LTXConditionPipeline, LTXLatentUpsamplePipeline
    from diffusers.pipelines.ltx.modeling_latent_upsampler import LTXLatentUpsamplerModel

    from fastvideo_ltx.ltxv.presets import DEV_REFINE_TIMESTEPS

    dev = tmp_path / "dev"
    shutil.copytree(folder, dev)
    options = {
        "decode_timestep": 0.05,
        "decode_noise_scale": 0.025,
        "guidance_rescale": 0.7,
        "image_cond_noise_scale": 0.0,
        "upsampler": "upsampler",
        "refine_timesteps": list(DEV_REFINE_TIMESTEPS),
        "refine_strength": 0.4,
    }
    (dev / "fastvideo.json").write_text(json.dumps({"ltx": options}))
    neg = "worst quality, blurry"
    ours = (
        VideoGenerator.from_pretrained(str(dev), device="cpu")
        .generate_video(
            "a red ball",
            negative_prompt=neg,
            output_path=None,
            num_frames=FRAMES,
            height=HEIGHT,
            width=WIDTH,
            num_inference_steps=4,
            guidance_scale=5.0,
            seed=SEED,
            fps=24,
            max_sequence_length=16,
        )
        .frames
    )
    pipe = LTXConditionPipeline.from_pretrained(dev)
    upsampler = LTXLatentUpsamplerModel.from_pretrained(dev / "upsampler" / "latent_upsampler")
    upsample = LTXLatentUpsamplePipeline(vae=pipe.vae, latent_upsampler=upsampler)
    g = torch.Generator().manual_seed(SEED)
    common = dict(
        negative_prompt=neg,
        num_frames=FRAMES,
        decode_timestep=0.05,
        decode_noise_scale=0.025,
        image_cond_noise_scale=0.0,
        guidance_scale=5.0,
        guidance_rescale=0.7,
        max_sequence_length=16,
        frame_rate=24,
    )
    low = pipe(
        prompt="a red ball",
        height=64,
        width=96,
        num_inference_steps=4,
        generator=g,
        output_type="latent",
        **common,
    ).frames
    up = upsample(latents=low, output_type="latent").frames
    video = pipe(
        prompt="a red ball",
        height=128,
        width=192,
        denoise_strength=0.4,
        num_inference_steps=10,
        latents=up,
        generator=g,
        output_type="pil",
        **common,
    ).frames[0]
    ref = np.stack([np.asarray(frame.resize((WIDTH, HEIGHT))) for frame in video])
    diff = np.abs(ours.astype(np.float64) - ref.astype(np.float64))
    assert diff.mean() <= 0.03 and diff.max() <= 2, (diff.mean(), diff.max())
