"""``fv`` hardening from outside runs: the last-resort error handler, ``--version``, option checks
made before any loading, plain progress lines off a terminal, the ``wrote`` line, and a Hub that
cannot be reached.

Every failure case asserts the exit code, one ``error:`` line naming the option, no traceback, and
that nothing was written.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from fastvideo.testing import plugin_env, run_fv, run_python

#: A command that raises what ``fv`` never expects, then ``fastvideo.cli.main``.
_RAISER = """
import sys
from fastvideo import cli


class CheckpointException(BaseException):  # like torch.distributed.checkpoint's
    pass


@cli.app.command("boom")
def boom(kind: str) -> None:
    if kind == "base":
        raise CheckpointException("rank 1 could not write shard 3")
    if kind == "runtime":
        raise RuntimeError("cuda kernel failed")
    raise KeyboardInterrupt


cli.main(["boom", *sys.argv[1:]])
"""


def _env(cwd: Path, **overrides: str | None) -> dict[str, str]:
    base: dict[str, str | None] = {
        "FASTVIDEO_PLUGINS": "fastvideo-wan",
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(cwd.parent / "empty-hf-home"),
        "FASTVIDEO_DEBUG": None,
    }
    return plugin_env(**{**base, **overrides})


@pytest.fixture
def cwd(tmp_path: Path) -> Path:
    folder = tmp_path / "cwd"
    folder.mkdir()
    return folder


def _raise(kind: str, cwd: Path, debug: bool) -> tuple[int, str, str]:
    code = _RAISER.replace("sys.argv[1:]", repr([kind]))
    proc = run_python(code, env=_env(cwd, FASTVIDEO_DEBUG="1" if debug else None), cwd=cwd)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.parametrize(
    ("kind", "line"),
    [
        (
            "base",
            "error: CheckpointException: rank 1 could not write shard 3 (set FASTVIDEO_DEBUG=1 for the traceback)",
        ),
        ("runtime", "error: RuntimeError: cuda kernel failed (set FASTVIDEO_DEBUG=1 for the traceback)"),
    ],
)
def test_last_resort_handler_prints_one_line(kind: str, line: str, cwd: Path) -> None:
    code, out, err = _raise(kind, cwd, debug=False)
    assert (code, out) == (1, "")
    assert err.splitlines() == [line]


@pytest.mark.parametrize(
    ("kind", "last"),
    [
        ("base", "CheckpointException: rank 1 could not write shard 3"),
        ("runtime", "RuntimeError: cuda kernel failed"),
    ],
)
def test_last_resort_handler_shows_the_traceback_under_fastvideo_debug(
    kind: str, last: str, cwd: Path
) -> None:
    code, _, err = _raise(kind, cwd, debug=True)
    assert code == 1
    assert err.startswith("Traceback (most recent call last):")
    assert "AttributeError" not in err  # the handler itself no longer fails
    assert 'File "<string>", line' in err and err.splitlines()[-1] == last


def test_keyboard_interrupt_exits_130(cwd: Path) -> None:
    code, _, err = _raise("interrupt", cwd, debug=False)
    assert code == 130  # typer ends it with exit 130 (and maybe "error: interrupted")
    assert err.strip() in ("", "error: interrupted")


def test_usage_error_is_one_line_with_exit_2(cwd: Path) -> None:
    proc = run_fv(["generate", "--prompt", "x", "--bogus"], env=_env(cwd), cwd=cwd)
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr.splitlines() == ["error: No such option: --bogus (see `fv generate --help`)"]


def test_no_arguments_prints_the_help(cwd: Path) -> None:
    proc = run_fv(["plugins"], env=_env(cwd), cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Usage: fv plugins [OPTIONS] COMMAND [ARGS]...")


def test_version_lists_core_and_plugins(cwd: Path) -> None:
    import importlib.metadata as md

    proc = run_fv(["--version"], env=_env(cwd), cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"fastvideo-core {md.version('fastvideo-core')}"
    assert f"fastvideo-wan {md.version('fastvideo-wan')} (plugin)" in lines[1:]


def _one_error(proc_args: list[str], cwd: Path, **env: str | None) -> str:
    before = sorted(cwd.rglob("*"))
    proc = run_fv(proc_args, env=_env(cwd, **env), cwd=cwd)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert sorted(cwd.rglob("*")) == before
    return lines[0]


def test_num_gpus_zero_is_an_error(cwd: Path) -> None:
    line = _one_error(["generate", "-p", "x", "--model", "wan", "--num-gpus", "0"], cwd)
    assert line.startswith("error: Invalid value for '--num-gpus': ")
    assert "1" in line


@pytest.mark.parametrize(("seed", "bound"), [(str(2**64), "18446744073709551615"), ("-1", "0")])
def test_seed_beyond_64_bits_is_rejected(seed: str, bound: str, cwd: Path) -> None:
    line = _one_error(["generate", "-p", "x", "--model", "wan", "--seed", seed], cwd)
    assert line.startswith("error: Invalid value for '--seed': ") and bound in line


def test_cuda_device_without_cuda_is_one_line(cwd: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    for device in ("cuda", "cuda:1"):
        line = _one_error(["generate", "-p", "x", "--model", "wan", "--device", device], cwd)
        assert line.startswith(f"error: --device {device}: CUDA is not available here")
        assert line.endswith("use --device cpu, or leave --device out to pick the best device")


def test_train_without_a_config_says_so(cwd: Path) -> None:
    line = _one_error(["train"], cwd)
    assert line == "error: fv train needs a config: --config train.yaml (see examples/train/*.yaml)"


def _vsa_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("fastvideo_vsa") is not None


@pytest.mark.parametrize("args", [["--attention-backend", "sdpa"], []], ids=["sdpa", "automatic"])
def test_sparsity_with_a_dense_backend_is_an_error(args: list[str], cwd: Path) -> None:
    line = _one_error(
        ["generate", "-p", "x", "--model", "wan", "--sparsity", "0.5", *args],
        cwd,
        FASTVIDEO_PLUGINS="fastvideo-wan,fastvideo-vsa",
    )
    if _vsa_installed():  # the flag is vsa's (its option's alias); the automatic choice is dense too
        assert line == (
            "error: vsa option 'sparsity' (--vsa-sparsity) was given, but the selected attention backend is "
            "'sdpa'; select 'vsa' (--attention-backend vsa) or drop the option"
        )
    else:  # no installed backend declares the flag
        assert line.startswith("error: No such option: --sparsity")


def test_vsa_without_a_gpu_gives_the_real_reason(cwd: Path) -> None:
    import torch

    if torch.cuda.is_available() or not _vsa_installed():
        pytest.skip("needs fastvideo-vsa on a machine without CUDA")
    line = _one_error(
        ["generate", "-p", "x", "--model", "wan", "--attention-backend", "vsa"],
        cwd,
        FASTVIDEO_PLUGINS="fastvideo-wan,fastvideo-vsa",
        TRITON_INTERPRET="0",
    )
    assert line.startswith(
        "error: Attention backend 'vsa' cannot run here: VSA's Triton kernels need a CUDA GPU"
    )
    assert "pip install" not in line  # it is installed: installing it again would not help


def test_unknown_hub_repo_without_network_fails_fast(cwd: Path) -> None:
    start = time.monotonic()
    line = _one_error(
        ["generate", "-p", "x", "--model", "fvtest-nobody/no-such-model"],
        cwd,
        HF_HUB_OFFLINE=None,
        HF_ENDPOINT="http://127.0.0.1:9",  # nothing listens on the discard port: refused at once
        HTTPS_PROXY=None,
        HTTP_PROXY=None,
        ALL_PROXY=None,
        https_proxy=None,
        http_proxy=None,
        all_proxy=None,
    )
    assert time.monotonic() - start < 5  # huggingface_hub alone retries for ~25 s
    assert line.startswith(
        "error: fvtest-nobody/no-such-model is not in the local Hugging Face cache and the Hub cannot be "
        "reached (http://127.0.0.1:9 cannot be reached: "
    )
    assert "hf download fvtest-nobody/no-such-model" in line


def test_progress_off_a_terminal_prints_plain_lines(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastvideo import progress

    monkeypatch.delenv("FASTVIDEO_PROGRESS", raising=False)
    monkeypatch.setenv("FASTVIDEO_PROGRESS_INTERVAL", "0")
    progress.set_enabled(True)
    with progress.task("denoising", 3) as advance:
        for _ in range(3):
            advance(1)
    lines = capsys.readouterr().err.splitlines()
    assert [re.sub(r" \(\d+\.\d s\)$", "", line) for line in lines] == [
        "denoising 1/3",
        "denoising 2/3",
        "denoising 3/3",
    ]
    monkeypatch.setenv("FASTVIDEO_PROGRESS_INTERVAL", "3600")  # throttled: only the last count
    with progress.task("decoding", 4) as advance:
        for _ in range(4):
            advance(1)
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("decoding 4/4 (")
    progress.set_enabled(False)
    with progress.task("denoising", 3) as advance:
        advance(3)
    assert capsys.readouterr().err == ""
    progress.set_enabled(True)


def test_report_line_says_which_time_is_which(capsys: pytest.CaptureFixture[str]) -> None:
    from fastvideo.cli import _report

    summary = {
        "path": "x.mp4",
        "frames": 17,
        "height": 48,
        "width": 64,
        "fps": 8,
        "seed": 3,
        "timings_s": {"denoise": 1.5, "total": 1.84},
    }
    _report("wan-toy", summary, as_json=False, wall_s=2.04)
    assert capsys.readouterr().out == "wrote x.mp4 (17 frames, 64x48, generated in 1.8 s, 2.0 s total)\n"
    _report("wan-toy", summary, as_json=True, wall_s=2.04)
    assert json.loads(capsys.readouterr().out) == {"model": "wan-toy", **summary, "wall_s": 2.04}


@pytest.mark.slow
def test_generate_wan_toy_reports_times_and_progress_lines(cwd: Path) -> None:
    proc = run_fv(
        ["generate", "--model", "wan-toy", "-p", "a blue square moving up", "-o", "toy.mp4", "--steps", "4"],
        env=_env(cwd, FASTVIDEO_PROGRESS_INTERVAL="0", FASTVIDEO_PROGRESS=None),
        cwd=cwd,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert re.fullmatch(
        r"wrote toy\.mp4 \(17 frames, 64x64, generated in \d+\.\d s, \d+\.\d s total\)\n", proc.stdout
    ), proc.stdout
    steps = [re.sub(r" \(\d+\.\d s\)$", "", line) for line in proc.stderr.splitlines() if "denoising" in line]
    assert steps == ["denoising 1/4", "denoising 2/4", "denoising 3/4", "denoising 4/4"]
