"""The LTX-Video pipelines against diffusers' ``LTXPipeline`` / ``LTXImageToVideoPipeline`` on tiny
checkpoints written by diffusers' own ``save_pretrained``, from the same initial noise; and the
request validation (frames 8k + 1, sizes multiples of the VAE stride) with one-line errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fastvideo import VideoGenerator
from fastvideo_ltx.ltxv.tiny import make_tiny_ltx

FRAMES, HEIGHT, WIDTH, STEPS, SEED = 9, 64, 96, 3, 7
LATENT = (1, 8, 3, 16, 24)  # tiny VAE: 8 channels, 4x4x4 compression
PROMPT = "a red ball moving left"
DECODE = {"decode_timestep": 0.05, "decode_noise_scale": 0.025}


def _folder(root: Path, name: str, options: dict[str, Any], **kw: Any) -> Path:
    path = make_tiny_ltx(root / name, **kw)
    (path / "fastvideo.json").write_text(json.dumps({"ltx": options}))
    return path


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ltx")
    return {
        "dynamic-shift": _folder(root, "dyn", {"guidance_rescale": 0.5}, dynamic_shift=True),
        "timestep-vae": _folder(
            root, "tvae", {**DECODE, "guidance_rescale": 0.5}, timestep_conditioning=True
        ),
        "i2v": _folder(root, "i2v", DECODE, timestep_conditioning=True, pipeline="LTXImageToVideoPipeline"),
    }


def _uint8(frames: np.ndarray) -> np.ndarray:
    """diffusers' float frames in [0, 1] rounded as uint8 frames are (``numpy_to_pil``)."""
    return (frames * 255).round().astype(np.uint8)


def assert_same_frames(ours: np.ndarray, ref: np.ndarray) -> None:
    assert ours.shape == ref.shape == (FRAMES, HEIGHT, WIDTH, 3) and ours.std() > 10  # not a flat video
    diff = np.abs(ours.astype(np.float64) - ref.astype(np.float64))
    assert diff.mean() <= 0.03 and diff.max() <= 2, (diff.mean(), diff.max())


def _ours(folder: Path, noise: torch.Tensor, **kw: Any) -> np.ndarray:
    gen = VideoGenerator.from_pretrained(str(folder), device="cpu")
    result = gen.generate_video(
        PROMPT,
        latents=noise,
        output_path=None,
        num_frames=FRAMES,
        height=HEIGHT,
        width=WIDTH,
        num_inference_steps=STEPS,
        guidance_scale=3.0,
        seed=SEED,
        fps=25,
        max_sequence_length=16,
        **kw,
    )
    return result.frames


REF_ARGS = dict(
    num_frames=FRAMES,
    height=HEIGHT,
    width=WIDTH,
    num_inference_steps=STEPS,
    guidance_scale=3.0,
    frame_rate=25,
    max_sequence_length=16,
    output_type="np",
)


@pytest.mark.parametrize("case", ["dynamic-shift", "timestep-vae"])
def test_text_to_video_matches_diffusers(folders: dict[str, Path], case: str) -> None:
    from diffusers import LTXPipeline

    noise = torch.randn(LATENT, generator=torch.Generator().manual_seed(1))  # VAE latent layout
    ours = _ours(folders[case], noise)
    pipe = LTXPipeline.from_pretrained(folders[case])
    decode = DECODE if case == "timestep-vae" else {}
    ref = pipe(
        PROMPT,
        latents=noise.flatten(2).transpose(1, 2),  # diffusers takes the noise packed to tokens
        guidance_rescale=0.5,
        generator=torch.Generator().manual_seed(SEED),  # decode-time noise
        **REF_ARGS,
        **decode,
    ).frames[0]
    assert_same_frames(ours, _uint8(ref))


def test_image_to_video_matches_diffusers(folders: dict[str, Path], tmp_path: Path) -> None:
    """Same noise and the same posterior sample of the image latents: diffusers draws the posterior
    sample, then the noise, from its generator; we draw the posterior sample from the request's and
    take the noise from ``latents=``; the decode-time noise is the next draw on both sides."""
    from diffusers import LTXImageToVideoPipeline
    from PIL import Image

    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8))
    image.save(tmp_path / "first.png")
    pipe = LTXImageToVideoPipeline.from_pretrained(folders["i2v"])
    pixels = pipe.video_processor.preprocess(image, height=HEIGHT, width=WIDTH)
    gen = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        posterior = pipe.vae.encode(pixels.unsqueeze(2)).latent_dist
        posterior.sample(gen)
        noise = torch.randn(LATENT, generator=gen)
        mixed, _ = pipe.prepare_latents(
            pixels, 1, 8, HEIGHT, WIDTH, FRAMES, torch.float32, "cpu", torch.Generator().manual_seed(SEED)
        )
    decode_gen = torch.Generator().manual_seed(SEED)
    torch.randn(posterior.mean.shape, generator=decode_gen)  # past the posterior draw
    ref = pipe(image=image, prompt=PROMPT, latents=mixed, generator=decode_gen, **REF_ARGS, **DECODE).frames[
        0
    ]
    ours = _ours(folders["i2v"], noise, image=str(tmp_path / "first.png"))
    assert_same_frames(ours, _uint8(ref))
    assert np.abs(ours[0].astype(int) - np.asarray(image).astype(int)).mean() < 80  # tied to the image


@pytest.mark.parametrize(
    ("override", "words"),
    [
        (dict(num_frames=10), r"num_frames=10 is invalid for ltx: it must be 4\*k\+1 \(e.g. 9 or 13\)"),
        (dict(height=66), r"height=66 is not divisible by 4, which ltx requires; use 64 or 68"),
    ],
)
def test_bad_requests_are_one_line_errors(folders: dict[str, Path], override: dict, words: str) -> None:
    gen = VideoGenerator.from_pretrained(str(folders["dynamic-shift"]), device="cpu")
    with pytest.raises(ValueError, match=words) as info:
        gen.generate_video(
            PROMPT, output_path=None, **{"num_frames": FRAMES, "height": HEIGHT, "width": WIDTH, **override}
        )
    assert "\n" not in str(info.value)


def test_image_to_video_checkpoint_needs_an_image(folders: dict[str, Path]) -> None:
    gen = VideoGenerator.from_pretrained(str(folders["i2v"]), device="cpu")
    with pytest.raises(ValueError, match=r"image-to-video: pass --image PATH"):
        gen.generate_video(PROMPT, output_path=None, num_frames=FRAMES, height=HEIGHT, width=WIDTH)


def test_unknown_folder_option_is_named(tmp_path: Path, folders: dict[str, Path]) -> None:
    import shutil

    folder = tmp_path / "bad"
    shutil.copytree(folders["dynamic-shift"], folder)
    (folder / "fastvideo.json").write_text(json.dumps({"ltx": {"decode_steps": 3}}))
    with pytest.raises(ValueError, match=r"fastvideo.json: unknown LTX-Video option\(s\) \['decode_steps'\]"):
        VideoGenerator.from_pretrained(str(folder), device="cpu")
    (folder / "fastvideo.json").write_text(json.dumps({"ltx": {"refine_strength": 3}}))
    with pytest.raises(ValueError, match=r"fastvideo.json: refine_strength=3 must be in \[0, 1\]"):
        VideoGenerator.from_pretrained(str(folder), device="cpu")
