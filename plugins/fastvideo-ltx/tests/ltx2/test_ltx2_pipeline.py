"""Text to audio-video against diffusers' LTX2Pipeline on a tiny checkpoint written by its own
save_pretrained (tiny Gemma 3, connectors, DiT, video VAE, audio VAE, vocoder): the same prompt and
initial video and audio noise give the same frames and the same waveform; --no-audio, the mp4 with
sound, bad noise shapes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import fastvideo_ltx.plugin
from fastvideo import VideoGenerator
from fastvideo.testing import fake_plugins
from fastvideo.video import read_mp4, read_mp4_audio
from fastvideo_ltx.ltx2.pipeline import Guidance, set_guidance
from fastvideo_ltx.ltx2.tiny import build_pipeline

REQUEST = {"num_frames": 9, "height": 64, "width": 64, "num_inference_steps": 2, "max_sequence_length": 16}
PROMPT, NEGATIVE = "a cat plays piano in the rain", "blurry"


@pytest.fixture(autouse=True)
def _plugin() -> Iterator[None]:
    with fake_plugins(fastvideo_ltx.plugin):
        yield


def _noise(seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # 9 frames at 64x64 -> (16, 2, 2, 2); 9/24 s of audio at 16 kHz, hop 160, 4x -> 9 latents x 4 mel bins
    return torch.randn(1, 16, 2, 2, 2, generator=g), torch.randn(1, 4, 9, 4, generator=g)


def _diffusers_run(
    pipe: Any, video: torch.Tensor, audio: torch.Tensor, guidance: Guidance, scale: float
) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        frames, wave = pipe(
            prompt=PROMPT, negative_prompt=NEGATIVE, num_frames=9, height=64, width=64, num_inference_steps=2,
            frame_rate=24.0, guidance_scale=scale, audio_guidance_scale=guidance.audio_scale,
            stg_scale=guidance.stg_scale, audio_stg_scale=guidance.audio_stg_scale,
            modality_scale=guidance.modality_scale, audio_modality_scale=guidance.audio_modality_scale,
            guidance_rescale=guidance.rescale, audio_guidance_rescale=guidance.audio_rescale,
            spatio_temporal_guidance_blocks=list(guidance.stg_blocks), use_cross_timestep=guidance.use_cross_timestep,
            latents=video.clone(), audio_latents=audio.clone(), max_sequence_length=16,
            generator=torch.Generator().manual_seed(0), output_type="pil", return_dict=False,
        )  # fmt: skip
    return np.stack([np.asarray(f) for f in frames[0]]), wave[0].float().T.numpy()


CASES = [
    pytest.param(False, Guidance(), 3.0, id="ltx2-defaults"),
    pytest.param(True, Guidance(stg_blocks=(1,)), 3.0, id="ltx2.3-stg-modality"),
    pytest.param(
        False,
        Guidance(
            audio_scale=None,
            stg_scale=0.0,
            audio_stg_scale=0.0,
            modality_scale=1.0,
            audio_modality_scale=1.0,
            rescale=0.0,
            audio_rescale=0.0,
            use_cross_timestep=False,
        ),
        1.0,
        id="no-guidance",
    ),
]


@pytest.mark.parametrize(("ltx23", "guidance", "scale"), CASES)
def test_matches_diffusers_ltx2_pipeline(
    tmp_path: Path, ltx23: bool, guidance: Guidance, scale: float
) -> None:
    pipe = build_pipeline(ltx23=ltx23)
    pipe.save_pretrained(tmp_path / "ckpt", safe_serialization=True)
    video, audio = _noise()
    ref_frames, ref_wave = _diffusers_run(pipe, video, audio, guidance, scale)
    gen = VideoGenerator.from_pretrained(str(tmp_path / "ckpt"), device="cpu", progress=False)
    set_guidance(gen.pipeline, guidance)
    out = gen.generate_video(PROMPT, negative_prompt=NEGATIVE, guidance_scale=scale, latents=video,
                             audio_latents=audio, **REQUEST)  # fmt: skip
    assert out.frames.shape == ref_frames.shape == (9, 64, 64, 3)
    diff = np.abs(out.frames.astype(np.int16) - ref_frames.astype(np.int16))
    assert diff.mean() <= 0.03 and diff.max() <= 2, (diff.mean(), diff.max())
    assert out.audio is not None and out.audio.shape == ref_wave.shape and out.audio.dtype == np.float32
    assert out.sample_rate == pipe.vocoder.config.output_sampling_rate
    assert np.abs(out.audio - ref_wave).max() <= 1e-4, np.abs(out.audio - ref_wave).max()
    assert np.abs(ref_wave).max() > 1e-3  # a real signal, not silence


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ltx2") / "ckpt"
    build_pipeline().save_pretrained(path, safe_serialization=True)
    return path


def test_mp4_holds_both_streams_and_no_audio_skips_them(tiny: Path, tmp_path: Path) -> None:
    gen = VideoGenerator.from_pretrained(str(tiny), device="cpu", progress=False)
    video, audio = _noise()
    out = gen.generate_video(
        PROMPT, latents=video, audio_latents=audio, output_path=tmp_path / "av.mp4", **REQUEST
    )
    assert out.path is not None
    np.testing.assert_array_equal(read_mp4(out.path).shape, out.frames.shape)
    back, rate = read_mp4_audio(out.path)
    assert rate == out.sample_rate and back.shape == out.audio.shape
    mute = gen.generate_video(PROMPT, latents=video, audio_latents=audio, audio=False, **REQUEST)
    assert mute.audio is None and mute.sample_rate is None
    np.testing.assert_array_equal(mute.frames, out.frames)


def test_noise_of_the_wrong_shape_is_one_line(tiny: Path) -> None:
    gen = VideoGenerator.from_pretrained(str(tiny), device="cpu", progress=False)
    with pytest.raises(ValueError) as err:
        gen.generate_video(PROMPT, audio_latents=torch.zeros(1, 4, 5, 4), **REQUEST)
    assert str(err.value) == (
        "audio_latents must be a float tensor (1, C, L, M) = (1, 4, 9, 4) for this request, "
        "got torch.float32 (1, 4, 5, 4)"
    )


def _image(path: Path) -> Path:
    from PIL import Image

    yy, xx = np.mgrid[0:80, 0:96]
    rgb = np.stack([xx * 2, yy * 3, (xx + yy) % 255], axis=-1).astype(np.uint8)
    Image.fromarray(rgb).save(path)
    return path


def test_image_to_audio_video_matches_diffusers(tmp_path: Path) -> None:
    from diffusers import LTX2ImageToVideoPipeline
    from PIL import Image

    pipe = build_pipeline()
    pipe.save_pretrained(tmp_path / "ckpt", safe_serialization=True)
    i2v = LTX2ImageToVideoPipeline(**{k: v for k, v in pipe.components.items() if v is not None})
    image = _image(tmp_path / "start.png")
    video = torch.randn(1, 16, 2, 2, 2, generator=torch.Generator().manual_seed(0))  # what diffusers draws
    _, audio = _noise()
    with torch.no_grad():
        frames, wave = i2v(
            image=Image.open(image).convert("RGB"), prompt=PROMPT, negative_prompt=NEGATIVE,  # CRF 33 both
            num_frames=9, height=64, width=64, num_inference_steps=2, frame_rate=24.0, audio_latents=audio.clone(),
            max_sequence_length=16, generator=torch.Generator().manual_seed(0), output_type="pil", return_dict=False,
        )  # fmt: skip
    ref = np.stack([np.asarray(f) for f in frames[0]])
    gen = VideoGenerator.from_pretrained(str(tmp_path / "ckpt"), device="cpu", progress=False)
    out = gen.generate_video(PROMPT, negative_prompt=NEGATIVE, image=str(image), latents=video, audio_latents=audio,
                             **REQUEST)  # fmt: skip
    diff = np.abs(out.frames.astype(np.int16) - ref.astype(np.int16))
    assert diff.mean() <= 0.03 and diff.max() <= 2, (diff.mean(), diff.max())
    assert np.abs(out.audio - wave[0].float().T.numpy()).max() <= 1e-4
    t2v = gen.generate_video(PROMPT, negative_prompt=NEGATIVE, latents=video, audio_latents=audio, **REQUEST)
    assert np.abs(t2v.frames.astype(np.int16) - out.frames.astype(np.int16)).mean() > 1.0  # the image matters
    raw = gen.generate_video(PROMPT, negative_prompt=NEGATIVE, image=str(image), latents=video, audio_latents=audio,
                             family_options={"ltx2": {"image_crf": 0}}, **REQUEST)  # fmt: skip
    assert not np.array_equal(raw.frames, out.frames)  # the H.264 round trip reached the model


def test_two_stage_matches_diffusers_stage_by_stage(tmp_path: Path) -> None:
    """Half size with full guidance, latent upsample, 3 distilled refinement steps at full size: as
    LTX2Pipeline(output_type="latent") -> LTX2LatentUpsamplePipeline -> LTX2Pipeline(sigmas=stage 2)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, LTX2LatentUpsamplePipeline, LTX2Pipeline

    from fastvideo_ltx.ltx2.pipeline import STAGE_2_SIGMAS
    from fastvideo_ltx.ltx2.tiny import build_upsampler

    pipe = build_pipeline()
    pipe.save_pretrained(tmp_path / "ckpt", safe_serialization=True)
    upsampler = build_upsampler()
    upsampler.save_pretrained(tmp_path / "ckpt" / "latent_upsampler", safe_serialization=True)
    video, audio = _noise()  # stage-1 size: 64x64 of a 128x128 request
    with torch.no_grad():
        v1, a1 = pipe(prompt=PROMPT, negative_prompt=NEGATIVE, num_frames=9, height=64, width=64,
                      num_inference_steps=2, latents=video.clone(), audio_latents=audio.clone(),
                      max_sequence_length=16, generator=torch.Generator().manual_seed(5), output_type="latent",
                      return_dict=False)  # fmt: skip
        up = LTX2LatentUpsamplePipeline(vae=pipe.vae, latent_upsampler=upsampler)
        v_up = up(latents=v1, output_type="latent", return_dict=False)[0]
        stage2 = LTX2Pipeline(**{k: v for k, v in pipe.components.items() if v is not None})
        stage2.scheduler = FlowMatchEulerDiscreteScheduler.from_config(
            pipe.scheduler.config, use_dynamic_shifting=False, shift_terminal=None
        )
        frames, wave = stage2(
            prompt=PROMPT, num_frames=9, height=128, width=128, latents=v_up, audio_latents=a1,
            noise_scale=STAGE_2_SIGMAS[0], sigmas=list(STAGE_2_SIGMAS), num_inference_steps=3, guidance_scale=1.0,
            audio_guidance_scale=1.0, stg_scale=0.0, audio_stg_scale=0.0, modality_scale=1.0,
            audio_modality_scale=1.0, guidance_rescale=0.0, audio_guidance_rescale=0.0, max_sequence_length=16,
            generator=torch.Generator().manual_seed(1024), output_type="pil", return_dict=False,
        )  # fmt: skip
    ref = np.stack([np.asarray(f) for f in frames[0]])
    gen = VideoGenerator.from_pretrained(str(tmp_path / "ckpt"), device="cpu", progress=False)
    out = gen.generate_video(PROMPT, negative_prompt=NEGATIVE, latents=video, audio_latents=audio, seed=1024,
                             **{**REQUEST, "height": 128, "width": 128})  # fmt: skip
    assert out.frames.shape == ref.shape == (9, 128, 128, 3)
    assert {"denoising", "latent_upsample", "refine", "decoding"} <= set(out.timings)
    diff = np.abs(out.frames.astype(np.int16) - ref.astype(np.int16))
    assert diff.mean() <= 0.03 and diff.max() <= 2, (diff.mean(), diff.max())
    assert np.abs(out.audio - wave[0].float().T.numpy()).max() <= 1e-4


def test_fv_generate_writes_video_with_sound(tiny: Path, tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from fastvideo.cli import app

    args = ["generate", "--model", str(tiny), "--prompt", PROMPT, "--num-frames", "9", "--height", "64",
            "--width", "64", "--steps", "2", "--max-sequence-length", "16", "--device", "cpu", "--json"]  # fmt: skip
    loud = CliRunner().invoke(app, [*args, "--output", str(tmp_path / "loud.mp4")])
    assert loud.exit_code == 0, loud.output
    summary = json.loads(loud.output)
    assert summary["audio"]["channels"] == 2 and summary["audio"]["sample_rate"] == 16000
    back, rate = read_mp4_audio(tmp_path / "loud.mp4")
    assert rate == 16000 and back.shape[1] == 2
    mute = CliRunner().invoke(app, [*args, "--output", str(tmp_path / "mute.mp4"), "--no-audio"])
    assert mute.exit_code == 0, mute.output
    assert "audio" not in json.loads(mute.output)
    with pytest.raises(ValueError, match="has no audio stream"):
        read_mp4_audio(tmp_path / "mute.mp4")
    bad = CliRunner().invoke(app, [*args[:-1], "--height", "48", "--output", str(tmp_path / "bad.mp4")])
    assert bad.exit_code == 2 and bad.output.startswith("error: ") and "32" in bad.output
    one = CliRunner().invoke(app, [*args, "--steps", "1", "--output", str(tmp_path / "one.mp4")])
    assert one.exit_code == 2 and "needs at least 2 steps" in one.output and "\n" not in one.output.strip()


def test_two_stage_image_to_audio_video_keeps_the_first_frame_clean(tmp_path: Path) -> None:
    from fastvideo_ltx.ltx2.tiny import build_upsampler

    build_pipeline().save_pretrained(tmp_path / "ckpt", safe_serialization=True)
    build_upsampler().save_pretrained(tmp_path / "ckpt" / "latent_upsampler", safe_serialization=True)
    gen = VideoGenerator.from_pretrained(str(tmp_path / "ckpt"), device="cpu", progress=False)
    seen = []
    refine = next(s for s in gen.pipeline.stages if s.name == "refine")
    upsample = next(s for s in gen.pipeline.stages if s.name == "latent_upsample")
    forward = upsample.forward

    def spy(batch: Any) -> Any:
        out = forward(batch)
        seen.append(out.latents[:, :, :1].clone())
        return out

    upsample.forward = spy  # type: ignore[method-assign]
    out = gen.generate_video(
        PROMPT, image=str(_image(tmp_path / "a.png")), **{**REQUEST, "height": 128, "width": 128}
    )
    assert out.frames.shape == (9, 128, 128, 3) and out.audio is not None
    assert refine.name == "refine" and torch.equal(out.latents[:, :, :1], seen[0])  # never denoised


def _photo(height: int, width: int) -> np.ndarray:
    """A picture with edges, gradients and noise (what H.264 at CRF 33 visibly changes)."""
    yy, xx = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(7)
    rgb = np.stack([xx * 255 // width, yy * 255 // height, ((xx // 8 + yy // 8) % 2) * 200], axis=-1)
    return np.clip(rgb + rng.normal(0, 12, rgb.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("crf", [33, 18])
def test_image_h264_round_trip_matches_diffusers(crf: int) -> None:
    """Ours against diffusers' LTX-2 ``apply_image_conditioning_crf`` (its port of ltx-pipelines): the same
    pixels, odd sides cropped to even; CRF 0 leaves the image alone. PyAV is a dependency of the plugin:
    without it this fails."""
    from diffusers.pipelines.ltx2.utils import apply_image_conditioning_crf
    from PIL import Image

    from fastvideo_ltx.media import recompress_h264

    pixels = _photo(81, 97)
    ours = np.asarray(recompress_h264(Image.fromarray(pixels), crf))
    ref = apply_image_conditioning_crf(pixels.copy(), crf)
    assert ours.shape == ref.shape == (80, 96, 3)
    assert np.array_equal(ours, ref)
    assert np.abs(ours.astype(int) - pixels[:80, :96]).mean() > 1.0  # it did compress
    same = recompress_h264(Image.fromarray(pixels).convert("RGBA"), 0)
    assert same.mode == "RGB" and np.array_equal(np.asarray(same), pixels)


def test_image_crf_is_checked_in_one_line(tiny: Path, tmp_path: Path) -> None:
    from PIL import Image

    from fastvideo.configs import SamplingParams
    from fastvideo.resolve import resolve
    from fastvideo_ltx.ltx2.family import LTX2Family
    from fastvideo_ltx.media import recompress_h264

    image = _image(tmp_path / "start.png")
    kw = dict(prompt="x", num_frames=9, height=64, width=64, num_inference_steps=2)
    source = resolve(str(tiny))
    with pytest.raises(
        ValueError, match=r"^--image-crf sets how the conditioning image is compressed; pass --image"
    ):
        LTX2Family.validate(SamplingParams(**kw, family_options={"ltx2": {"image_crf": 20}}), source)
    with pytest.raises(
        ValueError, match=r"^ltx2 option 'image_crf' \(--image-crf\) must be an H.264 CRF from 0"
    ):
        LTX2Family.validate(
            SamplingParams(**kw, image=str(image), family_options={"ltx2": {"image_crf": 52}}), source
        )
    LTX2Family.validate(
        SamplingParams(**kw, image=str(image), family_options={"ltx2": {"image_crf": 0}}), source
    )
    with pytest.raises(ValueError, match=r"^image CRF must be an H.264 CRF from 0 \(off\) to 51, got -1$"):
        recompress_h264(Image.open(image), -1)
