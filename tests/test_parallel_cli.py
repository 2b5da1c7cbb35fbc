"""``fv generate`` on several processes, as users run it: spawned workers, errors, torchrun on two "nodes".

Everything runs on CPU over gloo with a tiny Wan checkpoint; each result is compared with one
process's generation of the same request (same seed) in this process. Lossless mp4s, so the frames
read back are the frames generated.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fastvideo.testing import DummyDist, install_dists, plugin_env, run_fv

PROMPT, NEGATIVE = "a red circle moving left on a black background", "blue square"
REQUEST = [
    "--num-frames",
    "9",
    "--height",
    "48",
    "--width",
    "80",
    "--steps",
    "2",
    "--guidance-scale",
    "3.0",
    "--seed",
    "42",
    "--negative-prompt",
    NEGATIVE,
    "--device",
    "cpu",
    "--lossless",
    "--json",
    "--no-progress",
]

_RANK_FAIL = """
import os

from fastvideo import hookimpl
from fastvideo.interfaces import AttentionBackend

FASTVIDEO_PLUGIN_API = 1


class RankFailAttention(AttentionBackend):
    name = "rank-fail"
    priority = -50

    def forward(self, q, k, v, *, attn_mask=None, scale=None, is_causal=False, step=None):
        if os.environ.get("RANK") == "1":
            raise RuntimeError("rank-fail backend fails on rank 1")
        import torch.nn.functional as F

        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        return F.scaled_dot_product_attention(q, k, v, attn_mask, scale=scale).transpose(1, 2)


@hookimpl
def fv_register_attention_backends():
    return [RankFailAttention]
"""


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fastvideo_wan.tiny import make_tiny_wan

    return make_tiny_wan(tmp_path_factory.mktemp("cli-parallel") / "tiny", variant="t2v", seed=3)


@pytest.fixture(scope="module")
def reference(ckpt: Path) -> np.ndarray:
    """Frames of the request made in one process through the Python API."""
    from fastvideo import VideoGenerator

    gen = VideoGenerator.from_pretrained(str(ckpt), device="cpu", progress=False)
    frames = gen.generate_video(
        PROMPT,
        negative_prompt=NEGATIVE,
        num_frames=9,
        height=48,
        width=80,
        num_inference_steps=2,
        guidance_scale=3.0,
        seed=42,
    ).frames
    assert frames.std() > 5, "flat reference video: the comparisons would see nothing"
    return frames


def _env(**extra: str | None) -> dict[str, str]:
    return plugin_env(HF_HUB_OFFLINE="1", FASTVIDEO_DEBUG=None, **extra)


def _same_frames(path: Path, reference: np.ndarray) -> None:
    from fastvideo.video import read_mp4

    frames = read_mp4(path)
    assert frames.shape == reference.shape
    diff = np.abs(frames.astype(np.int16) - reference.astype(np.int16))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, (
        f"frames differ from one process's (max {diff.max()})"
    )


def test_spawned_workers_match_one_process(ckpt: Path, reference: np.ndarray, tmp_path: Path) -> None:
    """``--num-gpus 2 --cfg-parallel --ring-size 1``: two workers, rank 0 writes and reports once."""
    out = tmp_path / "two.mp4"
    proc = run_fv(
        [
            "generate",
            "--model",
            str(ckpt),
            "--prompt",
            PROMPT,
            *REQUEST,
            "--num-gpus",
            "2",
            "--cfg-parallel",
            "--output",
            str(out),
        ],
        env=_env(),
        cwd=tmp_path,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)  # one JSON document: only rank 0 printed
    assert summary["path"] == str(out) and summary["frames"] == 9
    assert sorted(p.name for p in tmp_path.iterdir()) == ["two.mp4"]
    _same_frames(out, reference)


def test_error_on_one_rank_stops_every_rank_with_the_root_cause(ckpt: Path, tmp_path: Path) -> None:
    """Rank 1 fails inside attention while rank 0 waits for it: both stop, rank 1's error is shown."""
    site = install_dists([DummyDist(name="fvtest-rankfail", plugin=_RANK_FAIL)], tmp_path / "site")
    start = time.monotonic()
    proc = run_fv(
        [
            "generate",
            "--model",
            str(ckpt),
            "--prompt",
            PROMPT,
            *REQUEST,
            "--num-gpus",
            "2",
            "--attention-backend",
            "rank-fail",
            "--dist-timeout",
            "120",
            "--output",
            str(tmp_path / "never.mp4"),
        ],
        env=plugin_env(site, HF_HUB_OFFLINE="1", FASTVIDEO_DEBUG=None),
        cwd=tmp_path,
        timeout=240,
    )
    assert time.monotonic() - start < 100, "rank 0 was left waiting for its peer until the timeout"
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "error: WorkerError: rank 1 failed: RuntimeError: rank-fail backend fails on rank 1 "
        "(set FASTVIDEO_DEBUG=1 for the traceback)"
    ]
    assert not (tmp_path / "never.mp4").exists()


def test_torchrun_on_two_nodes_over_loopback(ckpt: Path, reference: np.ndarray, tmp_path: Path) -> None:
    """Two torchrun agents (``--nnodes 2``, one process each) form one run; node 0's rank 0 writes."""
    from fastvideo.parallel.launch import _free_port

    out = tmp_path / "nodes.mp4"
    torchrun = Path(sys.executable).with_name("torchrun")
    port = str(_free_port())
    procs = [
        subprocess.Popen(
            [
                str(torchrun),
                "--nnodes",
                "2",
                "--nproc-per-node",
                "1",
                "--node-rank",
                str(node),
                "--master-addr",
                "127.0.0.1",
                "--master-port",
                port,
                "-m",
                "fastvideo.cli",
                "generate",
                "--model",
                str(ckpt),
                "--prompt",
                PROMPT,
                *REQUEST,
                "--cfg-parallel",
                "--dist-timeout",
                "120",
                "--output",
                str(out),
            ],
            env=_env(OMP_NUM_THREADS="1"),
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for node in (0, 1)
    ]
    outputs = [p.communicate(timeout=240) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err
    assert json.loads(outputs[0][0])["path"] == str(out)  # rank 0 reports
    assert outputs[1][0].strip() == ""  # rank 1 is silent
    _same_frames(out, reference)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--num-gpus", "3", "--cfg-parallel"],
            "num_gpus=3 is not divisible by ring_size=1 x cfg degree=2; use a num_gpus that is a multiple of 2",
        ),
        (
            ["--num-gpus", "4", "--sp-size", "4", "--ring-size", "2"],
            "sp_size=4 x ring_size=2 x cfg degree=1 = 8 must equal num_gpus=4; e.g. sp_size=2 or leave sp_size unset",
        ),
        (["--num-gpus", "4", "--tp-size", "3"], "tp_size=3 must divide num_gpus=4; use a divisor of 4"),
        (["--num-gpus", "2", "--dist-timeout", "0"], "timeout_s must be a number >= 1.0, got 0.0"),
    ],
    ids=["cfg-degree", "product", "tp", "timeout"],
)
def test_bad_layouts_fail_before_any_worker_starts(args: list[str], message: str, tmp_path: Path) -> None:
    proc = run_fv(["generate", "--model", "wan", "--prompt", PROMPT, *args], env=_env(), cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"error: {message}"]


def test_heads_not_divisible_fail_before_any_worker_starts(tmp_path: Path) -> None:
    """wan-toy's DiT has 2 heads: a Ulysses degree of 3 is refused from its config, before the
    launcher starts a worker (none of whose output would then appear)."""
    proc = run_fv(
        ["generate", "--model", "wan-toy", "--prompt", PROMPT, "--num-gpus", "3"], env=_env(), cwd=tmp_path
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines() == [
        "error: WanTransformer3DModel has 2 attention heads, which Ulysses degree sp_size=3 does not divide; "
        "use --sp-size 1 --ring-size 3 (ring attention)"
    ]
    assert not list(tmp_path.rglob("*.mp4"))


def test_python_api_outside_a_launcher_says_how_to_launch() -> None:
    from fastvideo import VideoGenerator

    env_rank = os.environ.pop("RANK", None)
    try:
        with pytest.raises(
            ValueError, match=r"num_gpus=2 needs one process per GPU: run `fv generate --num-gpus 2"
        ):
            VideoGenerator.from_pretrained("wan", num_gpus=2)
    finally:
        if env_rank is not None:
            os.environ["RANK"] = env_rank
