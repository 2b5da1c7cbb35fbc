"""The Python API checks its arguments like the CLI: a fake family whose pipeline returns black frames
(no weights), so each case runs in milliseconds."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch

from fastvideo import VideoGenerator
from fastvideo.errors import OutputPathError
from fastvideo.interfaces import ModelFamily
from fastvideo.pipelines.composed import ComposedPipeline, PipelineStage
from fastvideo.testing import fake_plugins, plugin_module


class _BlackFrames(PipelineStage):
    """Black frames of the requested size."""

    name = "black_frames"

    def forward(self, batch: Any) -> Any:
        p = batch.params
        batch.frames = np.zeros((p.num_frames, p.height, p.width, 3), np.uint8)
        return batch


class StubFamily(ModelFamily):
    name = "stub-fam"
    pipeline_class_names = ("StubPipeline",)
    default_sampling: ClassVar[dict[str, Any]] = {"num_frames": 3, "height": 16, "width": 16}

    @classmethod
    def build_pipeline(cls, source, config):  # type: ignore[no-untyped-def]
        return ComposedPipeline([_BlackFrames()], {"device": torch.device("cpu")})


@pytest.fixture
def folder(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "stub-model"
    path.mkdir()
    (path / "model_index.json").write_text(json.dumps({"_class_name": "StubPipeline"}))
    with fake_plugins(plugin_module("stub-family-plugin", fv_register_model_families=lambda: [StubFamily])):
        yield path


def test_from_pretrained_takes_a_pathlib_path(folder: Path) -> None:
    gen = VideoGenerator.from_pretrained(pathlib.Path(folder), device="cpu", progress=False)
    assert gen.source.path == folder.resolve() and gen.source.family is StubFamily
    assert gen.generate_video("x").frames.shape == (3, 16, 16, 3)


@pytest.mark.parametrize("model", [None, 5, ["a"]], ids=["None", "int", "list"])
def test_model_of_the_wrong_type(folder: Path, model: Any) -> None:
    with pytest.raises(TypeError) as err:
        VideoGenerator.from_pretrained(model)
    assert str(err.value).startswith(
        "model must be a preset name, a Hub repo id or a local folder (str or pathlib.Path), "
        f"got {type(model).__name__}"
    )


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        ({"attention_backend": 1}, TypeError, "attention_backend must be a string or None, got int (1)"),
        ({"dtype": 3}, ValueError, "dtype must be one of bf16, fp16, fp32, got 3"),
        ({"negative_prompt": 5}, TypeError, "negative_prompt must be a string or None, got int (5)"),
        (
            {"guidance_scale": float("nan")},
            ValueError,
            "guidance_scale must be a finite number >= 0.0, got nan",
        ),
        ({"num_inference_steps": 10**6}, ValueError, "num_inference_steps must be an integer in [1, 1000]"),
    ],
    ids=["attention_backend", "dtype", "negative_prompt", "guidance_nan", "steps"],
)
def test_from_pretrained_options_of_the_wrong_type(
    folder: Path, overrides: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as err:
        VideoGenerator.from_pretrained(str(folder), device="cpu", progress=False, **overrides)
    assert type(err.value) is error and str(err.value).startswith(message)


@pytest.fixture
def gen(folder: Path) -> VideoGenerator:
    return VideoGenerator.from_pretrained(str(folder), device="cpu", progress=False)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"negative_prompt": 5}, TypeError, "negative_prompt must be a string or None, got int (5)"),
        ({"seed": 2**64}, ValueError, "seed must be an integer in [0, 2**64 - 1], got 18446744073709551616"),
        ({"flow_shift": float("nan")}, ValueError, "flow_shift must be a finite number >= 0.0, got nan"),
        (
            {"latents": [[0.0]]},
            TypeError,
            "latents must be a torch.Tensor of shape (B, C, T', H', W'), got list",
        ),
        (
            {"latents": torch.zeros(1, 4, 2, 2)},
            ValueError,
            "latents must be a floating-point tensor of shape (B, C, T', H', W'), got torch.float32 of shape "
            "(1, 4, 2, 2)",
        ),
        (
            {"latents": torch.zeros(1, 4, 1, 2, 2, dtype=torch.int64)},
            ValueError,
            "latents must be a floating-point tensor of shape (B, C, T', H', W'), got torch.int64",
        ),
        (
            {"output_path": 5},
            TypeError,
            "output_path must be a str or pathlib.Path ending in .mp4, got int",
        ),
    ],
    ids=["negative_prompt", "seed", "flow_shift", "latents_list", "latents_4d", "latents_int", "output_path"],
)
def test_generate_video_checks_its_arguments(
    gen: VideoGenerator, kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as err:
        gen.generate_video("x", **kwargs)
    assert type(err.value) is error and str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_generate_video_accepts_a_pathlib_output_path(gen: VideoGenerator, tmp_path: Path) -> None:
    out = gen.generate_video("x", output_path=tmp_path / "a.mp4")
    assert out.path == tmp_path / "a.mp4" and out.path.is_file()
    with pytest.raises(OutputPathError, match="already exists"):
        gen.generate_video("x", output_path=tmp_path / "a.mp4")


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--guidance-scale", "nan"], "error: guidance_scale must be a finite number >= 0.0, got nan"),
        (["--flow-shift", "inf"], "error: flow_shift must be a finite number >= 0.0, got inf"),
        (["--steps", "1000000"], "error: num_inference_steps must be an integer in [1, 1000], got 1000000"),
        (
            ["--max-sequence-length", "5000"],
            "error: max_sequence_length must be an integer in [1, 4096], got 5000",
        ),
    ],
    ids=["guidance-nan", "shift-inf", "steps", "text-length"],  # --seed: parse time (test_cli_hardening)
)
def test_cli_reports_the_config_checks(folder: Path, tmp_path: Path, option: list[str], message: str) -> None:
    from typer.testing import CliRunner

    from fastvideo.cli import app

    args = ["generate", "--model", str(folder), "--prompt", "x", "--output", str(tmp_path / "o.mp4"), *option]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [message]
    assert not (tmp_path / "o.mp4").exists()


def test_a_request_is_resolved_and_validated_once(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``fv generate``'s path (preflight, then the generator built from its plan, then one video)
    resolves the model, the attention backend and validates the request once each; another request
    to the same generator is validated (once) again."""
    import fastvideo.attention as attention_pkg
    import fastvideo.resolve as resolve_mod
    from fastvideo.configs import PipelineConfig
    from fastvideo.generator import preflight

    counts = {"validate": 0, "resolve_family": 0, "backend": 0}
    real_validate, real_resolve = StubFamily.validate.__func__, resolve_mod.resolve_family  # type: ignore[attr-defined]
    real_backend = attention_pkg.resolve_backend_name

    def validate(cls: type, params: Any, source: Any) -> None:
        counts["validate"] += 1
        real_validate(cls, params, source)

    def resolve_family(*args: Any, **kwargs: Any) -> Any:
        counts["resolve_family"] += 1
        return real_resolve(*args, **kwargs)

    def backend(*args: Any, **kwargs: Any) -> str:
        counts["backend"] += 1
        return real_backend(*args, **kwargs)

    monkeypatch.setattr(StubFamily, "validate", classmethod(validate))
    monkeypatch.setattr(resolve_mod, "resolve_family", resolve_family)
    monkeypatch.setattr(attention_pkg, "resolve_backend_name", backend)
    config = PipelineConfig(device="cpu", progress=False)
    sampling = {"prompt": "x", "num_frames": 5}
    plan = preflight(str(folder), sampling, config)
    gen = VideoGenerator.from_config(str(folder), config, sampling_overrides=sampling, plan=plan)
    assert gen.generate_video().frames.shape == (5, 16, 16, 3)
    assert counts == {"validate": 1, "resolve_family": 1, "backend": 1}
    gen.generate_video(num_frames=7)
    assert counts["validate"] == 2


def test_guardrail_choice_reaches_the_family_from_api_and_cli(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``guardrail=False`` / ``--no-guardrail`` (a family's safety checker) is a
    PipelineConfig field the family reads in build_pipeline; None when not given. ``--video`` is a
    conditioning clip carried as ``params.image``; giving both is one line."""
    from typer.testing import CliRunner

    from fastvideo.cli import app

    seen: list[Any] = []
    real = StubFamily.build_pipeline.__func__  # type: ignore[attr-defined]

    def build(cls: type, source: Any, config: Any) -> Any:
        seen.append(config.guardrail)
        return real(cls, source, config)

    def validate(cls: type, params: Any, source: Any) -> None:
        images.append(params.image)

    images: list[Any] = []
    monkeypatch.setattr(StubFamily, "build_pipeline", classmethod(build))
    monkeypatch.setattr(StubFamily, "validate", classmethod(validate))
    VideoGenerator.from_pretrained(folder, device="cpu", progress=False)
    VideoGenerator.from_pretrained(folder, device="cpu", progress=False, guardrail=False)
    assert seen == [None, False]
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"")
    base = ["generate", "--model", str(folder), "--prompt", "x", "--device", "cpu", "--no-progress", "--json"]
    result = CliRunner().invoke(
        app, [*base, "--no-guardrail", "--video", str(clip), "-o", str(tmp_path / "a.mp4")]
    )
    assert result.exit_code == 0, result.output
    assert seen[-1] is False and images[-1] == str(clip)
    both = CliRunner().invoke(app, [*base, "--image", str(clip), "--video", str(clip)])
    assert result.exit_code == 0 and both.exit_code == 2
    assert both.output.strip().splitlines() == [
        "error: --image and --video both given; pass one conditioning input"
    ]
    missing = tmp_path / "none.mp4"
    absent = CliRunner().invoke(app, [*base, "--video", str(missing)])
    assert absent.exit_code == 2
    assert absent.output.strip().splitlines() == [f"error: --video {str(missing)!r} does not exist"]
