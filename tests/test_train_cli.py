"""``fv train`` and ``fv preprocess`` end to end, in subprocesses, on a tiny Wan checkpoint.

* A run killed with SIGKILL mid-training and resumed with ``--resume`` ends with weights and a loss
  sequence bit-identical to an uninterrupted run, even with a half-written checkpoint lying around.
* FSDP2 on 2 gloo processes (torchrun) gives the losses and weights of 1 process, within the
  tolerances stated in :func:`test_fsdp_two_processes_match_one_process`.
* ``fv preprocess`` writes latents and text embeddings equal to diffusers' own VAE and UMT5 outputs,
  skips what it cannot read, and resumes without re-encoding finished shards.
* ``fv train --help`` imports no torch; bad configs are one-line errors with exit code 2.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fastvideo.testing import plugin_env, run_python

FV = str(Path(sys.executable).with_name("fv"))
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "FASTVIDEO_PROGRESS": "0"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from fastvideo.training.data import write_synthetic_dataset
    from fastvideo_wan.tiny import make_tiny_wan

    root = tmp_path_factory.mktemp("train")
    ckpt = make_tiny_wan(root / "ckpt", seed=0, randomize=False)
    data = write_synthetic_dataset(
        root / "data", count=6, latent_shape=(16, 3, 8, 8), text_dim=32, max_sequence_length=16
    )
    return {"root": root, "ckpt": ckpt, "data": data}


def _write_config(tiny: dict[str, Path], name: str, **extra: Any) -> tuple[Path, Path]:
    import yaml

    out = tiny["root"] / name
    cfg = {
        "model": {"path": str(tiny["ckpt"])},
        "data": {"path": str(tiny["data"]), "batch_size": 2},
        "output_dir": str(out),
        "max_steps": 6,
        "mixed_precision": "fp32",
        "optim": {"lr": 1e-3},
        "export": {"dtype": "fp32"},
        "logging": {"every_steps": 1},
    }
    for key, value in extra.items():
        section, _, field = key.partition("__")
        if field:
            cfg.setdefault(section, {})[field] = value
        else:
            cfg[key] = value
    path = tiny["root"] / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, out


def _losses(out: Path) -> dict[int, float]:
    from fastvideo.training.metrics import read_metrics

    return {r["step"]: r["loss"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r}


def _weights(out: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(out / "export" / "transformer" / "diffusion_pytorch_model.safetensors"))


# ---------------------------------------------------------------- exact resume after SIGKILL


def test_sigkill_and_resume_is_bit_identical(tiny: dict[str, Path]) -> None:
    steps, kill_after = 20, 7
    common = {"max_steps": steps, "checkpoint__every_steps": 4, "checkpoint__keep_last": 3, "ema__decay": 0.9}
    ref_cfg, ref_out = _write_config(tiny, "uninterrupted", **common)
    cfg, out = _write_config(tiny, "killed", **common)
    reference = subprocess.Popen(
        [FV, "train", "--config", str(ref_cfg)],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    victim = subprocess.Popen(
        [FV, "train", "--config", str(cfg)],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert victim.stdout is not None
    for line in victim.stdout:  # "step N/30 ..." lines, flushed as each step ends
        if line.startswith("step ") and int(line.split()[1].split("/")[0]) >= kill_after:
            victim.send_signal(signal.SIGKILL)
            break
    assert victim.wait(timeout=120) == -signal.SIGKILL
    logged = _losses(out)
    assert kill_after <= max(logged) < steps, "the run was not killed mid-training"
    assert not (out / "export").exists()
    from fastvideo.training import checkpoint as ckpt

    complete = ckpt.latest(out / "checkpoints")
    assert complete is not None and ckpt.checkpoint_step(complete) < steps
    # what a kill during a save leaves behind, one step later than the last complete checkpoint:
    # a temp folder and a step folder without the COMPLETE marker; neither may be loaded
    later = ckpt.checkpoint_step(complete) + 100
    shutil.copytree(complete, out / "checkpoints" / f".tmp-step-{later:08d}")
    shutil.copytree(complete, out / "checkpoints" / f"step-{later + 1:08d}")
    (out / "checkpoints" / f"step-{later + 1:08d}" / ckpt.COMPLETE).unlink()
    resumed = subprocess.run(
        [FV, "train", "--config", str(cfg), "--resume"], env=ENV, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"resume: path={complete}" in resumed.stdout
    _, err = reference.communicate(timeout=300)
    assert reference.returncode == 0, err
    ref_losses, losses = _losses(ref_out), _losses(out)
    assert sorted(losses) == list(range(1, steps + 1))
    assert losses == ref_losses  # bit-identical floats, every step
    ref_w, w = _weights(ref_out), _weights(out)
    assert set(ref_w) == set(w) and all((ref_w[k] == w[k]).all() for k in w)


# ---------------------------------------------------------------- FSDP2 on 2 processes


@pytest.mark.parametrize("algorithm", ["finetune", "lora"])
def test_fsdp_two_processes_match_one_process(tiny: dict[str, Path], algorithm: str) -> None:
    """Tolerances: losses rtol 1e-5, weights atol 1% of lr x steps.

    Both runs see the same samples, noise and timesteps (seeded per sample position), in fp32. The
    only difference is the order of floating-point sums: one process sums the gradient of the
    2-sample batch inside its matmuls, two processes each backpropagate one sample and FSDP2's
    reduce-scatter averages them. That perturbs gradients at fp32 rounding (~1e-7 relative), so losses
    agree to ~1e-7 (rtol 1e-5 leaves 100x). Adam divides each gradient by its running RMS, so for
    elements whose gradient is near zero a rounding-level change moves the update by up to lr per
    step; the bound 0.01 * lr * steps allows that for a few elements while any real error (a lost or
    duplicated sample, wrong averaging, an unsynchronized shard) moves losses by >= 1e-3 and weights
    by ~lr. The EMA (exported here) and the LoRA adapters (gathered from shards) follow the same bound.
    """
    steps, lr = 4, 1e-3
    extra: dict[str, Any] = {
        "max_steps": steps,
        "checkpoint__every_steps": 2,
        "optim__lr": lr,
        "algorithm": algorithm,
    }
    if algorithm == "finetune":
        extra.update({"ema__decay": 0.5, "export__use_ema": True})
    else:
        extra.update({"lora__rank": 4, "optim__lr": 1e-2, "parallel__activation_checkpointing": True})
        lr = 1e-2
    cfg1, out1 = _write_config(tiny, f"one-{algorithm}", **extra)
    cfg2, out2 = _write_config(tiny, f"two-{algorithm}", **extra)
    port = {"finetune": "29531", "lora": "29532"}[algorithm]
    run = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        port,
        "-m",
        "fastvideo.cli",
        "train",
        "--config",
        str(cfg2),
    ]
    two = subprocess.Popen(
        run, env={**ENV, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    one = subprocess.run(
        [FV, "train", "--config", str(cfg1)], env=ENV, capture_output=True, text=True, timeout=300
    )
    stdout, stderr = two.communicate(timeout=300)
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, stderr[-3000:]
    assert stdout.count(f"done: step {steps}") == 1  # rank 0 reports
    l1, l2 = _losses(out1), _losses(out2)
    assert sorted(l1) == sorted(l2) == list(range(1, steps + 1))
    np.testing.assert_allclose([l2[s] for s in sorted(l2)], [l1[s] for s in sorted(l1)], rtol=1e-5)
    if algorithm == "finetune":
        w1, w2, base = _weights(out1), _weights(out2), _load_base(tiny["ckpt"])
    else:  # the adapters (B starts at zero, so "moved" is B itself)
        w1, w2 = (_lora(out) for out in (out1, out2))
        base = {k: 0 * v if "lora_B" in k else v for k, v in w1.items()}
    moved = max(float((w1[k] - base[k]).abs().max()) for k in w1)
    assert moved > 0.5 * lr, "training did not move the weights; the comparison would be vacuous"
    worst = max(float((w1[k] - w2[k]).abs().max()) for k in w1)
    assert worst <= 0.01 * lr * steps, f"max |w(1 proc) - w(2 procs)| = {worst:.2e}"
    # the sharded checkpoint holds one file per rank
    files = sorted(p.name for p in (out2 / "checkpoints" / f"step-{steps:08d}").glob("*.distcp"))
    assert files == ["__0_0.distcp", "__1_0.distcp"]


def _lora(out: Path) -> dict[str, Any]:
    from fastvideo.training.lora import read_lora_file

    return read_lora_file(out / "export")[0]


def _load_base(ckpt: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(ckpt / "transformer" / "diffusion_pytorch_model.safetensors"))


# ---------------------------------------------------------------- preprocess


def _write_videos(folder: Path) -> dict[str, Any]:
    from fastvideo.video import write_mp4

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    clips = {}
    for name, (frames, h, w) in {
        "a.mp4": (8, 40, 48),
        "b.mp4": (5, 32, 32),
        "short.mp4": (3, 32, 32),
    }.items():
        t = np.linspace(0, 1, frames)[:, None, None, None]
        base = rng.integers(0, 255, (1, h, w, 3))
        clip = (base * (1 - t) + 255 * t * rng.random((1, h, w, 3))).astype(np.uint8)
        write_mp4(clip, folder / name, fps=8, lossless=True)
        clips[name] = clip
    return clips


def test_preprocess_matches_diffusers_encoders_and_resumes(tiny: dict[str, Path]) -> None:
    import torch
    from diffusers import AutoencoderKLWan, WanPipeline

    from fastvideo.training.data import LatentDataset
    from fastvideo.training.preprocess import load_frames

    root = tiny["root"] / "pre"
    videos = root / "videos"
    clips = _write_videos(videos)
    captions = root / "captions.json"
    captions.write_text(
        json.dumps(
            [
                {"path": "a.mp4", "caption": "a red circle moving left"},
                {"path": "b.mp4", "caption": "a blue square"},
                {"path": "short.mp4", "caption": "too short"},
                {"path": "missing.mp4", "caption": "not there"},
                {"path": "c.npy", "caption": "a green triangle"},  # uint8 (T, H, W, 3) frames
            ]
        )
    )
    np.save(videos / "c.npy", clips["b.mp4"][::-1].copy())
    out = root / "data"
    cmd = [
        FV,
        "preprocess",
        "--model",
        str(tiny["ckpt"]),
        "--videos",
        str(videos),
        "--captions",
        str(captions),
        "--output",
        str(out),
        "--num-frames",
        "5",
        "--height",
        "32",
        "--width",
        "32",
        "--shard-size",
        "2",
        "--encode-batch-size",
        "2",  # a and b in one VAE call; the reference encodes them one by one
        "--max-sequence-length",
        "16",
        "--negative-prompt",
        "blurry static frames",
        "--device",
        "cpu",
        "--no-progress",
    ]
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "wrote 3 samples in 2 shard(s)" in proc.stdout and "(2 skipped)" in proc.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    reasons = {s["path"]: s["reason"] for s in manifest["skipped"]}
    assert "need 5" in reasons["short.mp4"] and "cannot read video" in reasons["missing.mp4"]

    # the reference: diffusers' VAE (latent mode, Wan normalization) and WanPipeline.encode_prompt
    vae = AutoencoderKLWan.from_pretrained(str(tiny["ckpt"] / "vae")).eval()
    pipe = WanPipeline.from_pretrained(str(tiny["ckpt"]))
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    ds = LatentDataset(out)
    assert len(ds) == 3
    items = [("a.mp4", "a red circle moving left"), ("b.mp4", "a blue square"), ("c.npy", "a green triangle")]
    for i, (name, caption) in enumerate(items):
        frames = load_frames(videos / name, 5, 32, 32)
        video = frames.permute(3, 0, 1, 2)[None].float() / 127.5 - 1
        with torch.no_grad():
            ref = (vae.encode(video).latent_dist.mode() - mean) / std
            text, _ = pipe.encode_prompt(caption, do_classifier_free_guidance=False, max_sequence_length=16)
        torch.testing.assert_close(ds[i]["latents"], ref[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ds[i]["text"], text[0].float(), rtol=1e-5, atol=1e-5)
    assert np.array_equal(
        load_frames(videos / "b.mp4", 5, 32, 32).numpy(), clips["b.mp4"]
    )  # lossless, no resize
    assert np.array_equal(load_frames(videos / "c.npy", 5, 32, 32).numpy(), clips["b.mp4"][::-1])
    # the empty prompt (caption dropout's and CFG's unconditional input), zero-padded like the captions
    with torch.no_grad():
        null, _ = pipe.encode_prompt("", do_classifier_free_guidance=False, max_sequence_length=16)
    assert manifest["null_text"] == "null-text.safetensors" and ds.null_text is not None
    torch.testing.assert_close(ds.null_text, null[0].float(), rtol=1e-5, atol=1e-5)
    # the negative prompt (a CFG teacher's unconditional input), likewise
    with torch.no_grad():
        negative, _ = pipe.encode_prompt(
            "blurry static frames", do_classifier_free_guidance=False, max_sequence_length=16
        )
    assert manifest["negative_prompt"] == "blurry static frames" and ds.negative_text is not None
    torch.testing.assert_close(ds.negative_text, negative[0].float(), rtol=1e-5, atol=1e-5)

    # resumable (the same code in-process): a second run re-encodes nothing, a lost shard is
    # rewritten, other settings are refused
    from fastvideo.training.preprocess import preprocess

    options = dict(num_frames=5, height=32, width=32, max_sequence_length=16, device="cpu")
    shard = out / manifest["shards"][0]["file"]
    stamp = shard.stat().st_mtime_ns

    def rerun() -> None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert preprocess(str(tiny["ckpt"]), videos, captions, out, shard_size=2, **options)["count"] == 3
        skipped = sorted(str(w.message).split(":")[0] for w in caught if w.category is UserWarning)
        assert skipped == ["skipped missing.mp4", "skipped short.mp4"]

    rerun()
    assert shard.stat().st_mtime_ns == stamp
    shard.unlink()
    rerun()
    assert shard.is_file()
    torch.testing.assert_close(LatentDataset(out)[1]["latents"], ds[1]["latents"])
    with pytest.raises(
        ValueError, match=r"preprocessed with other settings \(shard_size differ\); use another"
    ):
        preprocess(str(tiny["ckpt"]), videos, captions, out, shard_size=3, **options)


# ---------------------------------------------------------------- CLI surface


def test_train_help_imports_no_torch() -> None:
    proc = run_python(
        "import sys\nsys.argv = ['fv', 'train', '--help']\nfrom fastvideo.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('HEAVY', sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))",
        env=plugin_env(HF_HUB_OFFLINE="1"),
    )
    assert "--config" in proc.stdout and "--resume" in proc.stdout
    assert "HEAVY []" in proc.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--config", "nope.yaml"], "config file 'nope.yaml' does not exist"),
        (
            ["--model.path", "x", "--data.path", "y", "--max_steps", "3", "--optim.lr", "fast"],
            "optim.lr must be a number, got 'fast'",
        ),
        (
            ["--model.path", "x", "--data.path", "y", "--max-steps", "3", "--optim.lrate", "1"],
            "unknown config key 'optim.lrate'; did you mean optim.lr?",
        ),
        (["--model.path", "wan-nope", "--data.path", "y", "--max_steps", "3"], "Unknown model 'wan-nope'"),
    ],
)
def test_train_bad_input_is_one_line(args: list[str], message: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        [FV, "train", *args, "--output_dir", str(tmp_path / "o")],
        env=ENV,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and proc.stderr.strip().count("\n") == 0, proc.stderr


# ---------------------------------------------------------------- damaged or crafted checkpoints


def _tree_hash(folder: Path) -> dict[str, str]:
    import hashlib

    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def two_checkpoints(tiny: dict[str, Path]) -> Path:
    """A finished 2-step run with a checkpoint at each step."""
    cfg, out = _write_config(tiny, "two-ckpts", max_steps=2, checkpoint__every_steps=1, export__enabled=False)
    proc = subprocess.run(
        [FV, "train", "--config", str(cfg)], env=ENV, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    return out / "checkpoints"


def _damaged_run(tiny: dict[str, Path], two_checkpoints: Path, name: str) -> tuple[Path, Path]:
    cfg, out = _write_config(tiny, name, max_steps=2, checkpoint__every_steps=1, export__enabled=False)
    shutil.copytree(two_checkpoints, out / "checkpoints")
    return cfg, out


def _truncate_shard(step: Path) -> Path:
    shard = sorted(step.glob("*.distcp"))[0]
    shard.write_bytes(shard.read_bytes()[:100])
    return shard


class _Payload:
    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


def _plant_metadata(step: Path, marker: Path) -> Path:
    """A .metadata that creates ``marker`` when unpickled, with COMPLETE's manifest forged to match."""
    import hashlib
    import pickle

    meta = step / ".metadata"
    meta.write_bytes(pickle.dumps(_Payload(marker)))
    info = json.loads((step / "COMPLETE").read_text())
    data = meta.read_bytes()
    info["files"][".metadata"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (step / "COMPLETE").write_text(json.dumps(info))
    return meta


@pytest.mark.parametrize("case", ["resume-from-truncated", "resume-none-intact", "resume-from-crafted"])
def test_train_damaged_checkpoint_is_exit_2_and_changes_nothing(
    tiny: dict[str, Path], two_checkpoints: Path, case: str, tmp_path: Path
) -> None:
    cfg, out = _damaged_run(tiny, two_checkpoints, case)
    step2 = out / "checkpoints" / "step-00000002"
    marker = tmp_path / "PWNED"
    if case == "resume-from-crafted":
        named, args = _plant_metadata(step2, marker), ["--resume-from", str(step2)]
    elif case == "resume-from-truncated":
        named, args = _truncate_shard(step2), ["--resume-from", str(step2)]
    else:
        named = _truncate_shard(step2)
        _truncate_shard(out / "checkpoints" / "step-00000001")
        args = ["--resume"]
    before = _tree_hash(out)
    proc = subprocess.run(
        [FV, "train", "--config", str(cfg), *args], env=ENV, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(named) in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert _tree_hash(out) == before
    assert not marker.exists()


def test_train_resume_falls_back_to_the_newest_intact_checkpoint(
    tiny: dict[str, Path], two_checkpoints: Path
) -> None:
    cfg, out = _damaged_run(tiny, two_checkpoints, "resume-fallback")
    shard = _truncate_shard(out / "checkpoints" / "step-00000002")
    proc = subprocess.run(
        [FV, "train", "--config", str(cfg), "--resume"], env=ENV, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    warned = [line for line in proc.stderr.splitlines() if "unusable" in line]
    assert len(warned) == 1 and warned[0].startswith("warning: checkpoint step-00000002 is unusable"), (
        proc.stderr
    )
    assert str(shard) in warned[0] and "resuming from step-00000001" in warned[0]
    assert f"resume: path={out / 'checkpoints' / 'step-00000001'}" in proc.stdout
    assert sorted(_losses(out)) == [2]  # step 2 trained again from step 1, and saved intact
    from fastvideo.training import checkpoint as ckpt

    assert ckpt.checkpoint_step(ckpt.latest(out / "checkpoints")) == 2  # type: ignore[arg-type]
    ckpt.verify(out / "checkpoints" / "step-00000002")
