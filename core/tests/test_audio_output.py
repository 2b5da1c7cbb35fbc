"""Videos with sound: ``write_mp4(audio=...)`` muxes an AAC track, ``GenerationResult`` carries the
samples, ``--no-audio`` / ``audio=False`` skips them; a family without audio is unchanged. A fake
audio-video family (no weights) whose pipeline makes a sine soundtrack keeps each case fast."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch

from fastvideo import VideoGenerator
from fastvideo.interfaces import ModelFamily
from fastvideo.pipelines.composed import ComposedPipeline, PipelineStage
from fastvideo.testing import fake_plugins, plugin_module
from fastvideo.video import read_mp4, read_mp4_audio, write_mp4

RATE = 16000


def _frames(t: int, h: int, w: int) -> np.ndarray:
    tt, yy, xx = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij")
    r = 40 + 160 * xx / w + 4 * tt
    g = 40 + 160 * yy / h
    b = 120 + 0 * xx
    return np.stack([r, g, b], axis=-1).round().clip(0, 255).astype(np.uint8)


def _sines(n: int, rate: int, freqs: tuple[float, ...] = (440.0, 660.0)) -> np.ndarray:
    t = np.arange(n) / rate
    return np.stack([0.4 * np.sin(2 * np.pi * f * t) for f in freqs], axis=1).astype(np.float32)


def _has_audio_stream(path: Path) -> bool:
    import imageio_ffmpeg

    probe = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True
    )
    return "Audio:" in probe.stderr.decode(errors="replace")


def _close(back: np.ndarray, ref: np.ndarray) -> None:
    """AAC at 192 kb/s keeps two pure tones within a small error (the codec is lossy)."""
    assert back.shape == ref.shape, (back.shape, ref.shape)
    err = np.abs(back - ref)
    assert err.mean() < 5e-3, err.mean()
    corr = float((back * ref).sum() / np.sqrt((back**2).sum() * (ref**2).sum()))
    assert corr > 0.995, corr


@pytest.mark.parametrize("channels", [1, 2])
def test_write_mp4_with_audio_round_trip(tmp_path: Path, channels: int) -> None:
    frames = _frames(6, 32, 48)
    audio = _sines(RATE * 6 // 8, RATE, (440.0, 660.0)[:channels])
    path = write_mp4(frames, tmp_path / "av.mp4", fps=8, audio=audio, sample_rate=RATE)
    back = read_mp4(path)
    assert back.shape == frames.shape
    assert np.abs(back.astype(np.int16) - frames.astype(np.int16)).mean() < 3.0
    sound, rate = read_mp4_audio(path)
    assert rate == RATE
    _close(sound, audio)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["av.mp4"]  # no temp files left


def test_write_mp4_without_audio_has_no_audio_stream(tmp_path: Path) -> None:
    path = write_mp4(_frames(3, 16, 16), tmp_path / "v.mp4", fps=8)
    assert not _has_audio_stream(path)
    with pytest.raises(ValueError, match="has no audio stream"):
        read_mp4_audio(path)


@pytest.mark.parametrize(
    ("audio", "rate", "message"),
    [
        (
            np.zeros((4, 3, 2)),
            RATE,
            "audio must be float samples (N,) or (N, channels) with 1 to 8 channels, got (4, 3, 2)",
        ),
        (np.zeros((0, 2)), RATE, "audio must be float samples (N,) or (N, channels)"),
        (np.full(100, np.nan), RATE, "audio has NaN or infinite samples"),
        (np.zeros(100), None, "sample_rate must be a positive int (Hz) when audio is given, got None"),
        (np.zeros(100), 0, "sample_rate must be a positive int (Hz) when audio is given, got 0"),
    ],
    ids=["3d", "empty", "nan", "no-rate", "zero-rate"],
)
def test_write_mp4_checks_the_audio(tmp_path: Path, audio: np.ndarray, rate: Any, message: str) -> None:
    with pytest.raises(ValueError) as err:
        write_mp4(_frames(2, 16, 16), tmp_path / "x.mp4", fps=8, audio=audio, sample_rate=rate)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    assert not (tmp_path / "x.mp4").exists()


class _Sound(PipelineStage):
    """Frames and (unless ``params.audio`` is off) a soundtrack as long as the video; the audio
    noise, when given, sets the tone's frequency so the test sees it arrive."""

    name = "sound"
    decodes = 0

    def forward(self, batch: Any) -> Any:
        p = batch.params
        batch.frames = _frames(p.num_frames, p.height, p.width)
        if p.audio:
            type(self).decodes += 1
            freq = 440.0 if batch.audio_latents is None else float(batch.audio_latents.flatten()[0])
            batch.audio = _sines(RATE * p.num_frames // p.fps, RATE, (freq, 330.0))
            batch.sample_rate = RATE
        return batch


class _Silent(PipelineStage):
    name = "silent"

    def forward(self, batch: Any) -> Any:
        p = batch.params
        batch.frames = _frames(p.num_frames, p.height, p.width)
        return batch


class AVFamily(ModelFamily):
    name = "av-stub"
    pipeline_class_names = ("AVStubPipeline",)
    audio = True
    default_sampling: ClassVar[dict[str, Any]] = {"num_frames": 8, "height": 32, "width": 32, "fps": 8}

    @classmethod
    def build_pipeline(cls, source, config):  # type: ignore[no-untyped-def]
        return ComposedPipeline([_Sound()], {"device": torch.device("cpu")})


class SilentFamily(ModelFamily):
    name = "silent-stub"
    pipeline_class_names = ("SilentStubPipeline",)
    default_sampling: ClassVar[dict[str, Any]] = {"num_frames": 8, "height": 32, "width": 32, "fps": 8}

    @classmethod
    def build_pipeline(cls, source, config):  # type: ignore[no-untyped-def]
        return ComposedPipeline([_Silent()], {"device": torch.device("cpu")})


@pytest.fixture
def folders(tmp_path: Path) -> Iterator[dict[str, Path]]:
    out = {}
    for key, cls in (("av", "AVStubPipeline"), ("silent", "SilentStubPipeline")):
        path = tmp_path / key
        path.mkdir()
        (path / "model_index.json").write_text(json.dumps({"_class_name": cls}))
        out[key] = path
    plugin = plugin_module("av-plugin", fv_register_model_families=lambda: [AVFamily, SilentFamily])
    with fake_plugins(plugin):
        yield out


def test_generate_video_writes_and_returns_the_soundtrack(folders: dict[str, Path], tmp_path: Path) -> None:
    gen = VideoGenerator.from_pretrained(str(folders["av"]), device="cpu", progress=False)
    noise = torch.full((1, 2, 3, 4), 550.0)
    result = gen.generate_video("x", audio_latents=noise, output_path=tmp_path / "out.mp4")
    assert result.sample_rate == RATE and result.audio is not None and result.audio.dtype == np.float32
    np.testing.assert_array_equal(result.audio, _sines(RATE, RATE, (550.0, 330.0)))
    assert result.summary()["audio"] == {"seconds": 1.0, "channels": 2, "sample_rate": RATE}
    frames = read_mp4(result.path)
    assert frames.shape == result.frames.shape
    assert np.abs(frames.astype(np.int16) - result.frames.astype(np.int16)).mean() < 3.0
    sound, rate = read_mp4_audio(result.path)
    assert rate == RATE
    _close(sound, result.audio)


def test_no_audio_skips_the_decode_and_the_track(folders: dict[str, Path], tmp_path: Path) -> None:
    gen = VideoGenerator.from_pretrained(str(folders["av"]), device="cpu", progress=False)
    before = _Sound.decodes
    result = gen.generate_video("x", audio=False, output_path=tmp_path / "mute.mp4")
    assert _Sound.decodes == before
    assert result.audio is None and result.sample_rate is None and "audio" not in result.summary()
    assert result.path is not None and not _has_audio_stream(result.path)


def test_cli_writes_sound_and_no_audio_leaves_it_out(folders: dict[str, Path], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fastvideo.cli import app

    base = ["generate", "--model", str(folders["av"]), "--prompt", "x", "--device", "cpu", "--json"]
    loud = CliRunner().invoke(app, [*base, "--output", str(tmp_path / "loud.mp4")])
    assert loud.exit_code == 0, loud.output
    assert json.loads(loud.output)["audio"]["sample_rate"] == RATE
    assert _has_audio_stream(tmp_path / "loud.mp4")
    mute = CliRunner().invoke(app, [*base, "--output", str(tmp_path / "mute.mp4"), "--no-audio"])
    assert mute.exit_code == 0, mute.output
    assert "audio" not in json.loads(mute.output)
    assert not _has_audio_stream(tmp_path / "mute.mp4")


def test_a_family_without_audio_is_unchanged(folders: dict[str, Path], tmp_path: Path) -> None:
    gen = VideoGenerator.from_pretrained(str(folders["silent"]), device="cpu", progress=False)
    result = gen.generate_video("x", output_path=tmp_path / "v.mp4")
    assert result.audio is None and result.sample_rate is None
    assert result.path is not None and not _has_audio_stream(result.path)
    with pytest.raises(ValueError) as err:
        gen.generate_video("x", audio_latents=torch.zeros(1, 2, 3, 4))
    assert (
        str(err.value)
        == "audio_latents were given, but family 'silent-stub' makes no audio; leave them unset"
    )
