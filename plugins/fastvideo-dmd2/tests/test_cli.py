"""``fv distill dmd2``: bad input is a one-line error with exit code 2, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from fastvideo.testing import plugin_env, run_fv


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--timesteps", "1000,abc"], "error: --timesteps must be comma-separated numbers, got '1000,abc'"),
        (["--timesteps", "500,900"], "error: algorithm_options.student_timesteps must be a decreasing list"),
        (["--roles.student.optim.lrr", "1"], "error: roles.student: unknown config key"),
    ],
)
def test_bad_input_is_one_line(tmp_path: Path, dataset: Path, extra: list[str], message: str) -> None:
    args = [
        "distill",
        "dmd2",
        "--teacher",
        "wan-toy",
        "--data",
        str(dataset),
        "--output",
        str(tmp_path / "o"),
    ]
    proc = run_fv([*args, "--steps", "1", *extra], env=plugin_env(), timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith(message), proc.stderr
    assert "Traceback" not in proc.stderr
