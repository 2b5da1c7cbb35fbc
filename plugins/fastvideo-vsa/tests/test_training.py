"""Training with the ``vsa`` backend through the core trainer, on the example plugin's tiny
checkpoint: the example family is used as a user would use it (installed, through its entry point,
its checkpoint written by ``fv example make-checkpoint``), never imported (a plugin never imports
another plugin). Without a GPU the kernels run in Triton's CPU interpreter."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fastvideo.testing import fake_plugins, plugin_env, run_fv
from fastvideo.training.config import load_config
from fastvideo.training.data import write_synthetic_dataset
from fastvideo.training.metrics import read_metrics
from fastvideo.training.trainer import Trainer

DISTRIBUTIONS = ("fastvideo-vsa", "fastvideo-example-plugin")  # the example: a test dependency (pyproject)

LATENT = (16, 3, 8, 8)  # token grid (3, 4, 4) with the DiT's (1, 2, 2) patches


@pytest.mark.slow
def test_training_with_vsa_trains_and_exports_the_gates(tmp_path: Path) -> None:
    """Its sparsity ramp runs, its gate projections are attached to the DiT's self-attention, trained,
    and exported as FastVideo names them (``blocks.N.to_gate_compress``) with the trained values."""
    from safetensors import safe_open

    ckpt = tmp_path / "ckpt"
    args = ["example", "make-checkpoint", str(ckpt), "--seed", "0"]
    proc = run_fv(args, env=plugin_env(FASTVIDEO_PLUGINS=",".join(DISTRIBUTIONS)), timeout=300)
    assert proc.returncode == 0, proc.stderr
    data = write_synthetic_dataset(
        tmp_path / "data", count=4, latent_shape=LATENT, text_dim=32, max_sequence_length=16
    )
    overrides = {
        "model.path": str(ckpt),
        "data.path": str(data),
        "output_dir": str(tmp_path / "vsa"),
        "max_steps": 2,
        "mixed_precision": "fp32",
        "optim.lr": 1e-3,
        "data.batch_size": 2,
        "export.dtype": "fp32",
        "logging.every_steps": 100,
        "attention.backend": "vsa",
        "attention.sparsity": 0.5,
        "attention.sparsity_ramp_steps": 1,
    }
    with fake_plugins(autoload=DISTRIBUTIONS):
        trainer = Trainer(load_config(None, overrides))
        trainer.train()
    logged = [r["vsa.sparsity"] for r in read_metrics(tmp_path / "vsa" / "metrics.jsonl") if "loss" in r]
    assert logged == pytest.approx([0.0, 0.5])
    gates = [block.self_attn.gate_compress.weight for block in trainer.algorithm.model.blocks]
    assert all(g.abs().sum() > 0 for g in gates)  # zero-initialised, moved by training
    export = tmp_path / "vsa" / "export" / "transformer"
    with safe_open(str(export / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert {"blocks.0.to_gate_compress.weight", "blocks.1.to_gate_compress.bias"} <= set(f.keys())
        exported = f.get_tensor("blocks.0.to_gate_compress.weight")
    assert torch.equal(exported, gates[0].detach().cpu())
