"""``fv generate`` with bad input: exit code 2, one ``error:`` line on stderr, no traceback, no files.

Runs the installed ``fv`` in subprocesses with only the wan plugin enabled, no Hub access and an
empty Hugging Face cache. Every case fails before any weights are needed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fastvideo.testing import plugin_env, run_fv

WAN_REPO = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"


@pytest.fixture
def cwd(tmp_path: Path) -> Path:
    folder = tmp_path / "cwd"
    folder.mkdir()
    return folder


def fv_error(cwd: Path, *args: str) -> str:
    """Run ``fv generate --prompt ... ARGS`` in ``cwd`` and return its one error line, checking
    the exit code, that nothing else was printed, and that no file was written."""
    env = plugin_env(
        FASTVIDEO_PLUGINS="fastvideo-wan",
        HF_HUB_OFFLINE="1",
        HF_HOME=str(cwd.parent / "empty-hf-home"),
        FASTVIDEO_DEBUG=None,
    )
    before = sorted(cwd.iterdir())
    proc = run_fv(["generate", "--prompt", "a corgi surfing", *args], env=env, cwd=cwd)
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    assert sorted(cwd.iterdir()) == before  # no outputs/ folder, no partial mp4
    return lines[0]


def test_unknown_model(cwd: Path) -> None:
    line = fv_error(cwd, "--model", "wan2.1-t2v-1.3")
    assert line.startswith("error: Unknown model 'wan2.1-t2v-1.3': not a preset, a local diffusers folder")
    assert "Did you mean 'wan2.1-t2v-1.3b'" in line
    assert "Installed families: wan" in line


def test_height_not_divisible_by_the_family_factor(cwd: Path) -> None:
    line = fv_error(cwd, "--model", "wan", "--height", "481")
    assert line == "error: height=481 is not divisible by 16, which wan requires; use 480 or 496"


def test_width_not_divisible_by_the_family_factor(cwd: Path) -> None:
    line = fv_error(cwd, "--model", "wan", "--width", "840")
    assert line == "error: width=840 is not divisible by 16, which wan requires; use 832 or 848"


def test_invalid_frame_count(cwd: Path) -> None:
    line = fv_error(cwd, "--model", "wan", "--num-frames", "80")
    assert line == "error: num_frames=80 is invalid for wan: it must be 4*k+1 (e.g. 77 or 81)"


def test_negative_steps(cwd: Path) -> None:
    line = fv_error(cwd, "--model", "wan", "--steps", "-4")
    assert line == "error: num_inference_steps must be an integer in [1, 1000], got -4"


@pytest.mark.parametrize("path", ["/proc/fvtest.mp4", "/sys/fvtest/out.mp4"])
def test_unwritable_output_path(cwd: Path, path: str) -> None:
    line = fv_error(cwd, "--model", "wan", "--output", path)
    assert line.startswith(f"error: cannot write '{path}': ")
    assert line.endswith("is not a writable directory")


def test_existing_output_without_overwrite(cwd: Path) -> None:
    (cwd / "taken.mp4").write_bytes(b"an earlier video")
    line = fv_error(cwd, "--model", "wan", "--output", "taken.mp4")
    assert line == "error: 'taken.mp4' already exists; pass --overwrite (overwrite=True) to replace it"
    assert (cwd / "taken.mp4").read_bytes() == b"an earlier video"


def test_output_that_is_not_mp4(cwd: Path) -> None:
    line = fv_error(cwd, "--model", "wan", "--output", "video.gif")
    assert line == "error: output path must end in .mp4, got 'video.gif'"


def test_unknown_attention_backend(cwd: Path) -> None:
    line = fv_error(cwd, "--model", "wan", "--attention-backend", "vsa")
    assert line.startswith("error: Unknown attention backend 'vsa'. Available: ")
    assert "flash-attn" in line and "sdpa" in line
    assert line.endswith("'vsa' is provided by fastvideo-vsa (pip install fastvideo-vsa).")


def test_unavailable_attention_backend(cwd: Path) -> None:
    line = fv_error(cwd, "--model", "wan", "--attention-backend", "flash-attn")
    assert line.startswith("error: Attention backend 'flash-attn' cannot run here: ")
    assert line.endswith("(pip install flash-attn)")


def test_bad_dtype(cwd: Path) -> None:
    line = fv_error(cwd, "--model", "wan", "--dtype", "int8")
    assert line == "error: dtype must be one of bf16, fp16, fp32, got 'int8'"


def test_uncached_model_offline_says_how_to_download(cwd: Path) -> None:
    line = fv_error(cwd, "--model", "wan")
    assert line.startswith(
        f"error: {WAN_REPO} is not in the local Hugging Face cache and HF_HUB_OFFLINE=1 is set"
    )
    assert f"hf download {WAN_REPO}" in line


def test_model_of_a_family_whose_plugin_is_not_installed(cwd: Path) -> None:
    line = fv_error(cwd, "--model", "hunyuanvideo-community/HunyuanVideo")
    assert line == (
        "error: 'hunyuanvideo-community/HunyuanVideo' is a hunyuan model, but the hunyuan family is not "
        "installed; pip install fastvideo-hunyuan"
    )


def test_unknown_sampler(cwd: Path) -> None:
    line = fv_error(cwd, "--model", "wan", "--sampler", "unipcc")
    assert line == (
        "error: Unknown sampler 'unipcc'. Available: checkpoint, few-step, flow-euler, unipc. "
        "Did you mean 'unipc'?"
    )


def test_missing_image(cwd: Path) -> None:
    line = fv_error(cwd, "--model", "wan2.1-i2v-14b-480p", "--image", "nope.png")
    assert line == "error: --image 'nope.png' does not exist"
