"""Whole-pipeline parity with diffusers' Wan pipelines on tiny checkpoints written by diffusers.

Same checkpoint, same initial latents, same prompts: the frames of our pipeline (Python API and
``fv generate``) must be within 1/255 mean absolute difference of diffusers' frames.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fastvideo.testing import fv_generate
from fastvideo_wan.tiny import make_tiny_wan

PROMPT = "a red circle moving left on a black background"
NEGATIVE = "blue square"
FRAMES, SIZE, STEPS = 9, 64, 4
TOL = 1.0 / 255


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("wan")
    return {v: make_tiny_wan(root / v, variant=v, seed=3) for v in ("t2v", "moe", "i2v", "ti2v")}


@pytest.fixture(scope="module")
def image_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("img") / "cond.png"
    Image.fromarray(rng.integers(0, 255, (48, 80, 3), dtype=np.uint8)).save(path)
    return path


def _latents(variant: str) -> torch.Tensor:
    channels, stride = (48, 16) if variant == "ti2v" else (16, 8)
    gen = torch.Generator().manual_seed(11)
    return torch.randn(1, channels, (FRAMES - 1) // 4 + 1, SIZE // stride, SIZE // stride, generator=gen)


def _kwargs(variant: str, image: Path) -> dict:
    kw = dict(num_frames=FRAMES, height=SIZE, width=SIZE, num_inference_steps=STEPS, guidance_scale=3.0)
    if variant == "moe":
        kw["guidance_scale_2"] = 2.0
    if variant in ("i2v", "ti2v"):
        kw["image"] = str(image)
    return kw


def _reference(
    path: Path,
    variant: str,
    image: Path,
    *,
    latents: torch.Tensor | None = None,
    vae_tiles: dict | None = None,
) -> np.ndarray:
    from diffusers import WanImageToVideoPipeline, WanPipeline
    from PIL import Image

    kw = _kwargs(variant, image)
    if "image" in kw:
        kw["image"] = Image.open(kw["image"]).convert("RGB")
        cls = WanImageToVideoPipeline
    else:
        cls = WanPipeline
    if variant == "ti2v":  # diffusers runs TI2V image conditioning through its I2V pipeline
        base = WanPipeline.from_pretrained(str(path))
        pipe = WanImageToVideoPipeline(
            tokenizer=base.tokenizer,
            text_encoder=base.text_encoder,
            vae=base.vae,
            scheduler=base.scheduler,
            transformer=base.transformer,
            expand_timesteps=True,
        )
    else:
        pipe = cls.from_pretrained(str(path))
    pipe.set_progress_bar_config(disable=True)
    if vae_tiles is not None:
        pipe.vae.enable_tiling(**vae_tiles)
    latents = _latents(variant) if latents is None else latents
    out = pipe(prompt=PROMPT, negative_prompt=NEGATIVE, latents=latents.clone(), output_type="np", **kw)
    return (np.asarray(out.frames[0]) * 255).astype(np.float64)  # (T, H, W, 3) in [0, 255]


@pytest.mark.parametrize("variant", ["t2v", "moe", "i2v", "ti2v"])
def test_api_matches_diffusers(ckpts: dict[str, Path], image_path: Path, variant: str) -> None:
    from fastvideo import VideoGenerator

    ref = _reference(ckpts[variant], variant, image_path)
    gen = VideoGenerator.from_pretrained(str(ckpts[variant]), device="cpu", progress=False)
    result = gen.generate_video(
        PROMPT, negative_prompt=NEGATIVE, latents=_latents(variant), **_kwargs(variant, image_path)
    )
    assert result.frames.dtype == np.uint8 and result.frames.shape == (FRAMES, SIZE, SIZE, 3)
    err = np.abs(result.frames.astype(np.float64) - ref).mean() / 255
    assert ref.std() > 5, "reference video is flat; the test would not detect errors"
    assert err <= TOL, f"{variant}: mean |ours - diffusers| = {err * 255:.3f}/255"


def test_seeded_generation_is_deterministic(ckpts: dict[str, Path]) -> None:
    from fastvideo import VideoGenerator

    gen = VideoGenerator.from_pretrained(str(ckpts["t2v"]), device="cpu", progress=False)
    kw = dict(num_frames=FRAMES, height=SIZE, width=SIZE, num_inference_steps=2, seed=5)
    a, b = gen.generate_video(PROMPT, **kw), gen.generate_video(PROMPT, **kw)
    c = gen.generate_video(PROMPT, **{**kw, "seed": 6})
    assert np.array_equal(a.frames, b.frames)
    assert not np.array_equal(a.frames, c.frames)


@pytest.mark.parametrize("variant", ["t2v", "moe", "i2v", "ti2v"])
def test_cli_matches_diffusers(
    ckpts: dict[str, Path], image_path: Path, tmp_path: Path, variant: str
) -> None:
    """``fv generate`` with the same initial noise (drawn from the same seed) writes the same video."""
    channels, stride = (48, 16) if variant == "ti2v" else (16, 8)
    shape = (1, channels, (FRAMES - 1) // 4 + 1, SIZE // stride, SIZE // stride)
    latents = torch.randn(shape, generator=torch.Generator().manual_seed(42))  # what --seed 42 draws
    ref = _reference(ckpts[variant], variant, image_path, latents=latents)
    summary, frames = fv_generate(
        ckpts[variant],
        tmp_path / "out.mp4",
        prompt=PROMPT,
        negative_prompt=NEGATIVE,
        seed=42,
        **_kwargs(variant, image_path),
    )
    assert summary["frames"] == FRAMES
    frames = frames.astype(np.float64)
    assert frames.shape == (FRAMES, SIZE, SIZE, 3)
    err = np.abs(frames - ref).mean() / 255
    assert err <= TOL, f"{variant}: mean |fv generate - diffusers| = {err * 255:.3f}/255"


def test_tiled_decode_matches_diffusers_tiled_decode(ckpts: dict[str, Path], image_path: Path) -> None:
    """With ``vae_tiling=True`` the VAE decodes in overlapping tiles, exactly as diffusers' tiling does."""
    from fastvideo import VideoGenerator

    tiles = dict(
        tile_sample_min_height=32,
        tile_sample_min_width=32,
        tile_sample_stride_height=16,
        tile_sample_stride_width=16,
    )
    gen = VideoGenerator.from_pretrained(str(ckpts["t2v"]), device="cpu", progress=False, vae_tiling=True)
    gen.pipeline.components["vae"].enable_tiling(**tiles)
    ours = gen.generate_video(
        PROMPT, negative_prompt=NEGATIVE, latents=_latents("t2v"), **_kwargs("t2v", image_path)
    )
    ref = _reference(ckpts["t2v"], "t2v", image_path, vae_tiles=tiles)
    untiled = _reference(ckpts["t2v"], "t2v", image_path)
    assert np.abs(ref - untiled).mean() > 0.05, (
        "tiles too large to change the decode; the test would not detect it"
    )
    err = np.abs(ours.frames.astype(np.float64) - ref).mean() / 255
    assert err <= TOL, f"mean |ours tiled - diffusers tiled| = {err * 255:.3f}/255"


def test_samplers_on_a_wan_checkpoint(ckpts: dict[str, Path], image_path: Path) -> None:
    """``unipc`` rebuilds the UniPC flow scheduler Wan ships (bit-identical to the default); ``flow-euler``
    matches diffusers' WanPipeline given a FlowMatchEulerDiscreteScheduler with the same shift."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

    from fastvideo import VideoGenerator

    kw = dict(latents=_latents("t2v"), negative_prompt=NEGATIVE, **_kwargs("t2v", image_path))
    runs = {}
    for sampler in (None, "unipc", "flow-euler"):
        gen = VideoGenerator.from_pretrained(str(ckpts["t2v"]), device="cpu", progress=False, sampler=sampler)
        runs[sampler] = gen.generate_video(PROMPT, **kw)
    assert torch.equal(runs["unipc"].latents, runs[None].latents)
    assert not torch.allclose(runs["flow-euler"].latents, runs[None].latents, atol=1e-3)

    pipe = WanPipeline.from_pretrained(str(ckpts["t2v"]))
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=pipe.scheduler.config.flow_shift)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(
        prompt=PROMPT, output_type="np", **{k: v.clone() if k == "latents" else v for k, v in kw.items()}
    )
    ref_frames = np.asarray(ref.frames[0]) * 255
    err = np.abs(runs["flow-euler"].frames.astype(np.float64) - ref_frames).mean() / 255
    assert err <= TOL, f"flow-euler: mean |ours - diffusers| = {err * 255:.3f}/255"
