"""The ``ltx`` family: registration without torch, presets and their options, detection, and request
validation against the real checkpoints' strides (32 x 32 x 8) with one-line errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fastvideo.configs import SamplingParams
from fastvideo.interfaces.model_family import ModelSource
from fastvideo_ltx.family import LTXVideoFamily
from fastvideo_ltx.ltxv.configs import CONFIGS, VAE_095
from fastvideo_ltx.ltxv.options import LTXVideoOptions
from fastvideo_ltx.ltxv.presets import PRESET_OPTIONS, PRESETS


def test_registration_imports_no_torch() -> None:
    code = (
        "import sys; from fastvideo.registry import get_registry; reg = get_registry(); "
        "assert 'ltx' in reg.names('model_family'), reg.names('model_family'); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_every_preset_has_options_and_valid_sampling() -> None:
    assert {p.name for p in PRESETS} == set(PRESET_OPTIONS)
    for preset in PRESETS:
        params = SamplingParams().with_overrides(dict(preset.sampling))
        assert (params.num_frames - 1) % 8 == 0 and params.height % 32 == 0 and params.width % 32 == 0
        opts = PRESET_OPTIONS[preset.name]
        assert isinstance(opts, LTXVideoOptions)
        if "distilled" in preset.name:
            assert params.guidance_scale == 1.0 and opts.upsampler and opts.timesteps is not None
    assert PRESET_OPTIONS["ltx-video-0.9.8-13b-distilled"].tone_map_compression_ratio == 0.6


@pytest.fixture
def real_layout(tmp_path: Path) -> ModelSource:
    """A folder with the real 0.9.5 VAE and 2B DiT configs (no weights): what validation reads."""
    (tmp_path / "vae").mkdir()
    (tmp_path / "transformer").mkdir()
    (tmp_path / "vae" / "config.json").write_text(
        json.dumps({"_class_name": "AutoencoderKLLTXVideo", **VAE_095})
    )
    (tmp_path / "transformer" / "config.json").write_text(json.dumps(CONFIGS["ltx-video-2b"]))
    index = {"_class_name": "LTXConditionPipeline"}
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    assert LTXVideoFamily.detect(index) and not LTXVideoFamily.detect({"_class_name": "WanPipeline"})
    return ModelSource(family=LTXVideoFamily, path=tmp_path, model_index=index)


@pytest.mark.parametrize(
    ("override", "words"),
    [
        (dict(num_frames=120), "num_frames=120 is invalid for ltx: it must be 8*k+1 (e.g. 113 or 121)"),
        (dict(height=500), "height=500 is not divisible by 32, which ltx requires; use 480 or 512"),
        (dict(width=700), "width=700 is not divisible by 32, which ltx requires; use 672 or 704"),
    ],
)
def test_real_strides_validate_with_one_line_errors(
    real_layout: ModelSource, override: dict, words: str
) -> None:
    assert LTXVideoFamily.factors(real_layout) == (32, 8)
    params = SamplingParams(num_frames=121, height=512, width=704).with_overrides(override)
    with pytest.raises(ValueError, match=re.escape(words)) as info:
        LTXVideoFamily.validate(params, real_layout)
    assert "\n" not in str(info.value)
    LTXVideoFamily.validate(SamplingParams(num_frames=121, height=512, width=704), real_layout)


def test_make_tiny_command_writes_a_loadable_folder(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fastvideo_ltx.commands import ltx_app

    result = CliRunner().invoke(ltx_app, [str(tmp_path / "tiny")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "tiny" / "model_index.json").read_text())["_class_name"] == "LTXPipeline"
    again = CliRunner().invoke(ltx_app, [str(tmp_path / "tiny")])
    assert again.exit_code == 2 and "pass --overwrite" in again.output


def test_image_files_are_each_condition_file() -> None:
    assert LTXVideoFamily.image_files("a.png; clip.gif@32:0.5") == ["a.png", "clip.gif"]


@pytest.mark.slow
def test_fv_generate_checks_every_condition_file(tmp_path: Path) -> None:
    """``fv generate`` checks every file of a conditioning ``--image`` before anything loads (~13 s)."""
    from fastvideo.testing import plugin_env, run_fv
    from fastvideo_ltx.ltxv.tiny import make_tiny_ltx

    folder = make_tiny_ltx(tmp_path / "tiny", pipeline="LTXConditionPipeline")
    (tmp_path / "first.png").write_bytes(b"")
    spec = f"{tmp_path / 'first.png'};{tmp_path / 'missing.png'}@8:0.5"
    env = plugin_env(FASTVIDEO_PLUGINS="fastvideo-ltx", HF_HUB_OFFLINE="1", FASTVIDEO_DEBUG=None)
    args = ["generate", "--model", str(folder), "--prompt", "a", "--image", spec, "--num-frames", "9"]
    proc = run_fv([*args, "--height", "64", "--width", "64"], env=env, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"error: --image '{tmp_path / 'missing.png'}' does not exist"
    bad = run_fv(
        [*args[:6], "first.png@x", *args[7:], "--height", "64", "--width", "64"], env=env, cwd=tmp_path
    )
    assert bad.returncode == 2 and "is not PATH[@FRAME[:STRENGTH]]" in bad.stderr


@pytest.mark.parametrize(
    ("cls", "image", "words"),
    [
        ("LTXConditionPipeline", "a.png@121", "placed at frame 121, past the video's 121 frames"),
        ("LTXPipeline", "a.png;b.png@8", "conditions on one first frame (--image PATH)"),
        ("LTXPipeline", "a.png@0:0.5", "need an LTXConditionPipeline checkpoint"),
    ],
)
def test_bad_conditions_are_one_line_errors(tmp_path: Path, cls: str, image: str, words: str) -> None:
    source = ModelSource(family=LTXVideoFamily, path=tmp_path, model_index={"_class_name": cls})
    params = SamplingParams(num_frames=121, height=512, width=704, image=image)
    with pytest.raises(ValueError, match=re.escape(words)) as info:
        LTXVideoFamily.validate(params, source)
    assert "\n" not in str(info.value)
    LTXVideoFamily.validate(SamplingParams(num_frames=121, height=512, width=704, image="a.png"), source)
