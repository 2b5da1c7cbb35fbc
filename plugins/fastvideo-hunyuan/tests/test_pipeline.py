"""Whole-pipeline parity with diffusers' HunyuanVideoPipeline on a tiny checkpoint written by diffusers.

Same checkpoint, same initial latents, same prompt: the frames of our pipeline (Python API and
``fv generate``) must be within 1/255 mean absolute difference of diffusers' frames.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from fastvideo.testing import fv_generate

PROMPT = "a red circle moving left on a black background"
FRAMES, SIZE, STEPS = 9, 64, 4
TOL = 1.0 / 255
KW = dict(num_frames=FRAMES, height=SIZE, width=SIZE, num_inference_steps=STEPS)


def _latents(seed: int = 11) -> torch.Tensor:
    return torch.randn(
        1, 4, (FRAMES - 1) // 4 + 1, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(seed)
    )


@pytest.fixture(scope="module")
def reference_pipe(tiny_pipeline: Path):  # type: ignore[no-untyped-def]
    from diffusers import HunyuanVideoPipeline

    pipe = HunyuanVideoPipeline.from_pretrained(str(tiny_pipeline))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _reference(pipe, latents: torch.Tensor, guidance_scale: float) -> np.ndarray:  # type: ignore[no-untyped-def]
    out = pipe(prompt=PROMPT, latents=latents.clone(), guidance_scale=guidance_scale, output_type="np", **KW)
    return np.asarray(out.frames[0]).astype(np.float64) * 255  # (T, H, W, 3) in [0, 255]


def test_text_encoders_match_diffusers_encode_prompt(tiny_pipeline: Path, reference_pipe) -> None:  # type: ignore[no-untyped-def]
    """The Llama states after the template crop, their mask, and the CLIP pooled states."""
    from fastvideo import VideoGenerator
    from fastvideo.configs import SamplingParams
    from fastvideo.pipelines.batch import ForwardBatch

    gen = VideoGenerator.from_pretrained(str(tiny_pipeline), device="cpu", progress=False)
    batch = ForwardBatch(
        params=SamplingParams(prompt=PROMPT, max_sequence_length=256), device=torch.device("cpu")
    )
    batch = gen.pipeline.stages[gen.pipeline.index("text_encoding")](batch)
    embeds, pooled, mask = reference_pipe.encode_prompt(prompt=PROMPT, device="cpu", max_sequence_length=256)
    assert batch.prompt_embeds[0].shape == embeds.shape == (1, 256, 32)
    assert torch.equal(batch.prompt_masks[0], mask)
    assert int(mask.sum()) == 10  # the crop removed exactly the template: 9 prompt tokens + <|eot_id|>
    torch.testing.assert_close(batch.prompt_embeds[0], embeds, rtol=0, atol=0)
    torch.testing.assert_close(batch.prompt_embeds[1], pooled, rtol=0, atol=0)
    assert batch.negative_prompt_embeds == [] and batch.prompt_masks[1] is None


TILES = dict(
    tile_sample_min_height=32,
    tile_sample_min_width=32,
    tile_sample_stride_height=24,
    tile_sample_stride_width=24,
)  # small tiles, so that a 64 x 64 video is decoded in 9 overlapping tiles


@pytest.mark.parametrize(
    ("guidance_scale", "tiled"),
    [(6.0, False), (1.0, False), (6.0, True)],
    ids=["guidance-6", "guidance-1", "tiled"],
)
def test_api_matches_diffusers(
    tiny_pipeline: Path, reference_pipe, guidance_scale: float, tiled: bool
) -> None:  # type: ignore[no-untyped-def]
    from fastvideo import VideoGenerator

    gen = VideoGenerator.from_pretrained(str(tiny_pipeline), device="cpu", progress=False, vae_tiling=tiled)
    if tiled:
        reference_pipe.vae.enable_tiling(**TILES)
        gen.pipeline.components["vae"].enable_tiling(**TILES)
    try:
        ref = _reference(reference_pipe, _latents(), guidance_scale)
    finally:
        reference_pipe.vae.disable_tiling()
    result = gen.generate_video(PROMPT, latents=_latents(), guidance_scale=guidance_scale, **KW)
    assert gen.pipeline.components["vae"].use_tiling is tiled
    assert result.frames.dtype == np.uint8 and result.frames.shape == (FRAMES, SIZE, SIZE, 3)
    err = np.abs(result.frames.astype(np.float64) - ref).mean() / 255
    assert ref.std() > 5, "reference video is flat; the test would not detect errors"
    assert err <= TOL, f"mean |ours - diffusers| = {err * 255:.3f}/255"


def test_guidance_and_prompt_change_the_video(tiny_pipeline: Path) -> None:
    """Embedded guidance and the prompt (after the template crop) reach the DiT; the seed draws the noise."""
    from fastvideo import VideoGenerator

    gen = VideoGenerator.from_pretrained(str(tiny_pipeline), device="cpu", progress=False)
    kw = dict(KW, num_frames=5, num_inference_steps=1, seed=5)
    base = gen.generate_video(PROMPT, **kw).frames
    assert np.array_equal(base, gen.generate_video(PROMPT, **kw).frames)
    for change in ({"seed": 6}, {"guidance_scale": 2.0}, {"prompt": "a blue square"}):
        assert not np.array_equal(base, gen.generate_video(**{"prompt": PROMPT, **kw, **change}).frames), (
            change
        )


def test_cli_matches_diffusers(tiny_pipeline: Path, reference_pipe, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """``fv generate`` with the same initial noise (drawn from the same seed) writes the same video."""
    latents = torch.randn(1, 4, 3, 8, 8, generator=torch.Generator().manual_seed(42))  # what seed 42 draws
    ref = _reference(reference_pipe, latents, 6.0)
    summary, frames = fv_generate(
        tiny_pipeline,
        tmp_path / "out.mp4",
        prompt=PROMPT,
        num_frames=FRAMES,
        height=SIZE,
        width=SIZE,
        steps=STEPS,
        guidance_scale=6.0,
        seed=42,
    )
    assert summary["frames"] == FRAMES
    frames = frames.astype(np.float64)
    assert frames.shape == (FRAMES, SIZE, SIZE, 3)
    err = np.abs(frames - ref).mean() / 255
    assert err <= TOL, f"mean |fv generate - diffusers| = {err * 255:.3f}/255"


# --------------------------------------------------------------------------------------------------
# Family: presets, validation, commands
# --------------------------------------------------------------------------------------------------


def test_presets_resolve_with_their_sampling_defaults() -> None:
    from fastvideo.interfaces.model_family import ModelSource
    from fastvideo.resolve import resolve_family

    for name, repo, steps, shift in [
        ("hunyuan", "hunyuanvideo-community/HunyuanVideo", 50, 7.0),
        ("FastVideo/FastHunyuan-diffusers", "FastVideo/FastHunyuan-diffusers", 6, 17.0),
    ]:
        family, preset, where, _ = resolve_family(name)
        assert family.name == "hunyuan" and where == repo and preset is not None
        params = family.sampling_defaults(
            ModelSource(family=family, path=Path(), model_index={}, preset=preset)
        )
        assert (params.num_frames, params.height, params.width) == (125, 720, 1280)
        assert (params.num_inference_steps, params.flow_shift, params.guidance_scale) == (steps, shift, 6.0)
        assert params.max_sequence_length == 256


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        (dict(height=72), "height=72 is not divisible by 16, which hunyuan requires; use 64 or 80"),
        (dict(num_frames=10), "num_frames=10 is invalid for hunyuan: it must be 4*k+1 (e.g. 9 or 13)"),
        (dict(negative_prompt="blurry"), "so it takes no negative prompt; drop --negative-prompt"),
        (dict(image="cat.png"), "text-to-video and take no --image; drop --image"),
    ],
    ids=["height", "frames", "negative-prompt", "image"],
)
def test_bad_requests_fail_before_loading(tiny_pipeline: Path, overrides: dict, words: str) -> None:
    """What ``fv generate`` checks before loading anything (its one-line errors are the core's)."""
    from fastvideo.configs import PipelineConfig
    from fastvideo.generator import preflight

    with pytest.raises(ValueError, match=re.escape(words)):
        preflight(str(tiny_pipeline), {"prompt": "x", **overrides}, PipelineConfig())


def test_make_tiny_command_writes_a_loadable_checkpoint(tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from fastvideo_hunyuan import plugin

    app = typer.Typer()
    plugin.fv_register_commands(app)
    runner = CliRunner()
    result = runner.invoke(app, ["hunyuan", "make-tiny", str(tmp_path / "ckpt")])
    assert result.exit_code == 0, result.output
    index = json.loads((tmp_path / "ckpt" / "model_index.json").read_text())
    assert index["_class_name"] == "HunyuanVideoPipeline"
    assert index["transformer"] == ["diffusers", "HunyuanVideoTransformer3DModel"]
    again = runner.invoke(app, ["hunyuan", "make-tiny", str(tmp_path / "ckpt")])
    assert again.exit_code == 2 and "pass --overwrite" in again.output


def test_prompt_template_needs_one_placeholder() -> None:
    from fastvideo.pipelines.stages import PromptTemplate
    from fastvideo_hunyuan.pipeline import PROMPT_TEMPLATE, flow_sigmas

    assert PROMPT_TEMPLATE.crop_start == 95 and PROMPT_TEMPLATE.text.count("{}") == 1
    for text, crop in [("no placeholder", 0), ("{} twice {}", 0), ("{}", -1)]:
        with pytest.raises(ValueError, match=r"exactly one '\{\}' and crop_start >= 0"):
            PromptTemplate(text=text, crop_start=crop)
    assert np.allclose(flow_sigmas(4), np.linspace(1.0, 0.0, 5)[:-1])
