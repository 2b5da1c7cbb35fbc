"""``sta`` is trainable: gradients through the seam under ``torch.compile`` (the op's fake
implementation and registered autograd), and ``fv train``'s trainer on the example plugin's tiny
checkpoint (the example family is used as a user would: installed, through its entry point, its
checkpoint written by ``fv example make-checkpoint``; never imported)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from fastvideo.attention import ALL, StepContext, attention, step_context, use_backend
from fastvideo.attention.options import resolve_options
from fastvideo.testing import assert_close, fake_plugins, plugin_env, run_fv
from fastvideo_sta import plugin as sta_plugin
from fastvideo_sta.backend import STABackend
from fastvideo_sta.ops import sta_attention_reference

GRID, HEADS, DIM = (3, 5, 7), 2, 16


class _Self(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(DIM * HEADS, 3 * DIM * HEADS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).unflatten(-1, (3, HEADS, DIM)).unbind(2)
        return attention(q, k, v, allow=ALL).flatten(2)


def test_gradients_under_torch_compile_match_the_reference() -> None:
    torch.manual_seed(0)
    layer = _Self()
    x = torch.randn(1, math.prod(GRID), DIM * HEADS)
    with fake_plugins(sta_plugin):
        options = resolve_options("sta", {"sta": {"window": "1,2,1", "tile": "2,4,4"}})
        with use_backend("sta"), step_context(StepContext(grid=GRID, options=options)):
            compiled = torch.compile(layer, backend="aot_eager")
            out = compiled(x)
            out.square().mean().backward()
    grads = [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad()
    q, k, v = layer.qkv(x).unflatten(-1, (3, HEADS, DIM)).unbind(2)
    ref = sta_attention_reference(q, k, v, GRID, (1, 2, 1), tile=(2, 4, 4)).flatten(2)
    ref.square().mean().backward()
    assert_close("out", ref, out, 1e-5)
    for (name, p), g in zip(layer.named_parameters(), grads, strict=True):
        assert_close(f"grad {name}", p.grad, g, 1e-5)


DISTRIBUTIONS = ("fastvideo-sta", "fastvideo-example-plugin")
LATENT = (16, 3, 8, 8)  # token grid (3, 4, 4) with the DiT's (1, 2, 2) patches


def train(tmp_path: Path, name: str, ckpt: Path, data: Path) -> list[torch.Tensor]:
    """The DiT's weights after two optimizer steps with ``sta``."""
    from fastvideo.training.config import load_config
    from fastvideo.training.trainer import Trainer

    overrides = {
        "model.path": str(ckpt),
        "data.path": str(data),
        "output_dir": str(tmp_path / name),
        "max_steps": 2,
        "mixed_precision": "fp32",
        "optim.lr": 1e-3,
        "data.batch_size": 2,
        "export.dtype": "fp32",
        "logging.every_steps": 100,
        "attention.backend": "sta",
        "attention.window": "1,1,1",
        "attention.tile": "1,4,4",
    }
    with fake_plugins(autoload=DISTRIBUTIONS):
        trainer = Trainer(load_config(None, overrides))
        trainer.train()
    return [p.detach().clone() for p in trainer.algorithm.model.parameters()]


@pytest.mark.slow
def test_fv_train_with_sta_matches_training_with_the_reference(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastvideo.training.data import write_synthetic_dataset

    ckpt = tmp_path / "ckpt"
    proc = run_fv(
        ["example", "make-checkpoint", str(ckpt), "--seed", "0"],
        env=plugin_env(FASTVIDEO_PLUGINS=",".join(DISTRIBUTIONS)),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    data = write_synthetic_dataset(
        tmp_path / "data", count=4, latent_shape=LATENT, text_dim=32, max_sequence_length=16
    )
    calls: list[int] = []
    attend = STABackend.attend
    monkeypatch.setattr(
        STABackend, "attend", lambda self, q, *a: calls.append(q.requires_grad) or attend(self, q, *a)
    )
    kernel = train(tmp_path, "kernel", ckpt, data)
    assert calls and all(calls)  # the sparse layers ran sta, with gradients

    def reference(self, q, k, v, geom, windows, attn_mask, scale):  # type: ignore[no-untyped-def]
        return sta_attention_reference(q, k, v, geom.grid, windows.tolist(), tile=geom.tile, scale=scale)

    monkeypatch.setattr(STABackend, "attend", reference)
    ref = train(tmp_path, "reference", ckpt, data)
    for a, b in zip(ref, kernel, strict=True):
        assert_close("trained weights", a, b, 1e-3)  # Adam normalises: tiny gradient differences show
    # training moved the weights: the export differs from the checkpoint it started from
    from safetensors.torch import load_file

    name = "diffusion_pytorch_model.safetensors"
    start = load_file(str(ckpt / "transformer" / name))
    end = load_file(str(tmp_path / "kernel" / "export" / "transformer" / name))
    assert set(start) == set(end) and any(not torch.equal(start[k], end[k]) for k in start)
