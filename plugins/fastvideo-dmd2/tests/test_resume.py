"""Exact resume of a DMD2 run after SIGKILL, on 2 gloo processes with FSDP2 (torchrun, CPU).

A run killed mid-training and resumed with ``--resume`` must end with the student and critic
weights and the loss sequences (critic and DMD) of an uninterrupted run, bit for bit: the
checkpoint holds both trained models, both optimizers and lr schedules, the student's EMA and every
rank's RNG state; the frozen teacher is reloaded from its source.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "FASTVIDEO_PROGRESS": "0",
    "OMP_NUM_THREADS": "1",
    "PYTHONUNBUFFERED": "1",  # each "step N" line reaches the test as the step ends
}
STEPS, KILL_AFTER = 10, 5


def _config(dataset: Path, root: Path, name: str) -> tuple[Path, Path]:
    import yaml

    out = root / name
    cfg = {
        "algorithm": "dmd2",
        "model": {"path": "wan-toy"},
        "data": {"path": str(dataset), "batch_size": 4},
        "output_dir": str(out),
        "max_steps": STEPS,
        "mixed_precision": "fp32",
        "optim": {"lr": 1e-3, "betas": [0.0, 0.999]},
        "roles": {"critic": {"optim": {"lr": 2e-3}}, "student": {"ema": {"decay": 0.9}}},
        "algorithm_options": {"student_update_every": 2, "guidance_scale": 3.0},
        "checkpoint": {"every_steps": 2, "keep_last": 3},
        "export": {"dtype": "fp32", "use_ema": False},
        "logging": {"every_steps": 1},
        "parallel": {"fsdp": True},
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, out


def _torchrun(config: Path, port: int, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(port),
        "-m", "fastvideo.cli", "train", "--config", str(config), *extra,
    ]  # fmt: skip


def _descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (torchrun starts its ranks in sessions of their own)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        children = [c for c, p in parents.items() if p in frontier]
        found += children
        frontier = children
    return found


def _metrics(out: Path) -> dict[int, dict[str, Any]]:
    from fastvideo.training.metrics import read_metrics

    return {r["step"]: r for r in read_metrics(out / "metrics.jsonl") if "loss" in r}


@pytest.mark.slow
def test_sigkill_and_resume_under_fsdp_is_bit_identical(dataset: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from fastvideo.training import checkpoint as ckpt

    ref_cfg, ref_out = _config(dataset, tmp_path, "uninterrupted")
    cfg, out = _config(dataset, tmp_path, "killed")
    reference = subprocess.Popen(
        _torchrun(ref_cfg, 29561), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    victim = subprocess.Popen(
        _torchrun(cfg, 29562), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert victim.stdout is not None
    for line in victim.stdout:
        if line.startswith("step ") and int(line.split()[1].split("/")[0]) >= KILL_AFTER:
            for pid in [victim.pid, *_descendants(victim.pid)]:  # torchrun and both ranks, at once
                os.kill(pid, signal.SIGKILL)
            break
    victim.wait(timeout=120)
    killed_at = max(_metrics(out))
    assert KILL_AFTER <= killed_at < STEPS, "the run was not killed mid-training"
    assert not (out / "export").exists()
    last = ckpt.latest(out / "checkpoints")
    assert last is not None and ckpt.checkpoint_step(last) < STEPS
    resumed = subprocess.run(
        _torchrun(cfg, 29563, "--resume"), env=ENV, capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resume: path={last}" in resumed.stdout
    _, err = reference.communicate(timeout=600)
    assert reference.returncode == 0, err[-3000:]
    ref, got = _metrics(ref_out), _metrics(out)
    assert sorted(got) == sorted(ref) == list(range(1, STEPS + 1))
    for key in ("loss", "critic_loss", "dmd_loss"):
        assert [got[s].get(key) for s in got] == [ref[s].get(key) for s in ref], key
    assert [s for s in ref if "dmd_loss" in ref[s]] == list(range(2, STEPS + 1, 2))
    ref_w = load_file(str(ref_out / "export" / "transformer" / "diffusion_pytorch_model.safetensors"))
    w = load_file(str(out / "export" / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert set(ref_w) == set(w) and all((ref_w[k] == w[k]).all() for k in w)
    # the checkpoint holds both trained roles, their optimizers and the student's EMA, one file per rank
    from fastvideo.training.checkpoint import saved_keys, verify

    final = ckpt.latest(out / "checkpoints")
    assert final is not None and ckpt.checkpoint_step(final) == STEPS
    keys = saved_keys(final, verify(final))
    assert {"model-student", "model-critic", "optim-student", "optim-critic", "ema-student"} <= set(keys)
    assert "model-teacher" not in keys
    assert sorted(p.name for p in final.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
