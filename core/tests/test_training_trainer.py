"""The trainer on the example plugin's tiny checkpoint (``fv example make-checkpoint``: its own DiT,
diffusers' Wan VAE, a UMT5 text encoder) and a small synthetic latent dataset: the loss falls,
gradient accumulation equals a larger batch, the exported folder loads back with the trained weights
and generates, and checkpoints are atomic (a partial one is never picked up). That a Wan export also
loads in diffusers is tested in fastvideo-wan's tests."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fastvideo.testing import fake_plugins
from fastvideo.training import checkpoint as ckpt
from fastvideo.training.config import load_config
from fastvideo.training.data import LatentDataset, global_batch, write_synthetic_dataset
from fastvideo.training.metrics import read_metrics
from fastvideo.training.trainer import Trainer
from fastvideo_example import plugin as example_plugin

LATENT = (16, 3, 8, 8)


@pytest.fixture(autouse=True)
def example_family() -> Iterator[None]:
    """The core's built-ins and the example plugin only (no installed plugin)."""
    with fake_plugins(example_plugin):
        yield


@pytest.fixture(scope="module")
def ckpt_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fastvideo_example.checkpoint import make_checkpoint

    return make_checkpoint(tmp_path_factory.mktemp("example") / "tiny", seed=0)


@pytest.fixture(scope="module")
def data_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_dataset(
        tmp_path_factory.mktemp("data"), count=8, latent_shape=LATENT, text_dim=32, max_sequence_length=16
    )


def _config(ckpt_path: Path, data_path: Path, out: Path, **overrides: Any) -> Any:
    base = {
        "model.path": str(ckpt_path),
        "data.path": str(data_path),
        "output_dir": str(out),
        "max_steps": 6,
        "mixed_precision": "fp32",
        "optim.lr": 1e-3,
        "data.batch_size": 2,
        "export.dtype": "fp32",
        "logging.every_steps": 100,
    }
    return load_config(None, {**base, **overrides})


def _losses(out: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r]


def test_dataset_and_data_order(data_path: Path) -> None:
    ds = LatentDataset(data_path)
    item = ds[3]
    assert item["latents"].shape == LATENT and item["text"].shape == (16, 32)
    n = int(item["text_mask"].sum())
    assert n >= 1 and item["text"][n:].abs().sum() == 0 and item["text"][:n].abs().sum() > 0
    # the order is a function of (seed, position): one epoch is a permutation, the next another
    first = global_batch(8, seed=1, position=0, batch_size=8, shuffle=True)
    assert sorted(first) == list(range(8))
    assert global_batch(8, seed=1, position=5, batch_size=6, shuffle=True)[:3] == first[5:]
    assert global_batch(8, seed=1, position=8, batch_size=8, shuffle=True) != first


@pytest.fixture(scope="module")
def finetuned(
    ckpt_path: Path, data_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Trainer, Path]:
    out = tmp_path_factory.mktemp("run") / "finetune"
    cfg = _config(
        ckpt_path,
        data_path,
        out,
        max_steps=40,
        **{
            "checkpoint.every_steps": 20,
            "ema.decay": 0.9,
            "optim.lr": 5e-3,
            "validation.every_steps": 40,
            "validation.prompts": "[a red circle]",
            "validation.num_frames": 5,
            "validation.height": 32,
            "validation.width": 32,
            "validation.num_inference_steps": 2,
        },
    )
    with fake_plugins(example_plugin):  # module-scoped: set up before the autouse fixture
        trainer = Trainer(cfg)
        trainer.train()
    return trainer, out


def test_loss_falls_on_synthetic_data(finetuned: tuple[Trainer, Path]) -> None:
    _, out = finetuned
    losses = _losses(out)
    assert len(losses) == 40 and all(np.isfinite(losses))
    first, last = np.mean(losses[:8]), np.mean(losses[-8:])
    assert last < 0.8 * first, f"loss did not fall: first 8 steps {first:.3f}, last 8 {last:.3f}"
    assert [p.name for p in ckpt.complete_checkpoints(out / "checkpoints")] == [
        "step-00000020",
        "step-00000040",
    ]


def test_validation_videos_are_written(finetuned: tuple[Trainer, Path]) -> None:
    from fastvideo.video import read_mp4

    _, out = finetuned
    events = [r for r in read_metrics(out / "metrics.jsonl") if r.get("event") == "validation"]
    assert [e["step"] for e in events] == [40]
    (video,) = events[0]["videos"]
    assert video.endswith("validation/step-00000040-0.mp4") and read_mp4(video).shape == (5, 32, 32, 3)


def _module_backend(seen: list[tuple[int, float, tuple | None, bool]]) -> type:
    """A sparse backend that owns an option with a training ramp and a per-layer module (like vsa's
    sparsity and gate): ``out = attention + extra``, ``extra`` from the layer's module."""
    import torch.nn.functional as F
    from torch import nn

    from fastvideo.interfaces.attention import AttentionBackend, BackendOption, LayerModule

    def build(layer: nn.Module) -> nn.Module:
        qkv = layer.qkv  # the example DiT's fused q, k, v projection: in_features is the width
        dim = qkv.in_features
        return nn.Linear(dim, dim, device=qkv.weight.device, dtype=qkv.weight.dtype)

    class RecordingSparse(AttentionBackend):
        name = "recording-sparse"
        sparse = True
        priority = -100
        options = (
            BackendOption(name="target", type=float, default=0.0),
            BackendOption(name="ramp_steps", type=int, default=0, training_only=True),
        )
        layer_modules = (LayerModule(name="extra", build=build, checkpoint_names=("{parent}.to_extra",)),)

        @classmethod
        def option_values(cls, options, *, step=None, total=None):  # type: ignore[no-untyped-def]
            values = super().option_values(options)
            if step is not None and options.get("ramp_steps"):
                values["target"] *= min(1.0, step / options["ramp_steps"])
            return values

        def layer_inputs(self, layer, hidden, q):  # type: ignore[no-untyped-def]
            return {"extra": layer.extra(hidden).unflatten(-1, q.shape[2:])}

        def forward(self, q, k, v, *, attn_mask=None, scale=None, is_causal=False, step=None, extra=None):  # type: ignore[no-untyped-def]
            seen.append((step.step_index, self.option(step, "target"), step.grid, extra is not None))
            out = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)), scale=scale)
            return out.transpose(1, 2) + (extra if extra is not None else 0)

    return RecordingSparse


def test_backend_options_schedule_and_layer_modules_in_training(
    ckpt_path: Path, data_path: Path, tmp_path: Path
) -> None:
    """A sparse backend registered by a plugin gets each step's value of its option's ramp in its step
    context; its per-layer module is attached to the DiT's self-attention, trained, and exported under the
    checkpoint name it declares, with the trained values."""
    from safetensors import safe_open

    from fastvideo.testing import plugin_module

    seen: list[tuple[int, float, tuple | None, bool]] = []
    backend = _module_backend(seen)
    plugin = plugin_module("recording-sparse", fv_register_attention_backends=lambda: [backend])
    with fake_plugins(plugin, example_plugin):
        cfg = _config(
            ckpt_path,
            data_path,
            tmp_path / "sparse",
            max_steps=4,
            **{
                "attention.backend": "recording-sparse",
                "attention.target": 0.6,
                "attention.ramp_steps": 4,
                "parallel.activation_checkpointing": True,
            },
        )
        trainer = Trainer(cfg)
        trainer.train()
        model = trainer.algorithm.model
    per_step = {i: t for i, t, _, _ in seen}
    assert per_step == pytest.approx({1: 0.0, 2: 0.15, 3: 0.3, 4: 0.45})
    assert {g for _, _, g, _ in seen} == {
        (3, 4, 4)
    }  # the token grid of (16, 3, 8, 8) latents, patch (1, 2, 2)
    # per step and block: the forward and the recomputation in backward (activation checkpointing),
    # both with the step's context and the module's output; cross-attention never reaches the backend
    assert len(seen) == 4 * 2 * 2 and all(t == pytest.approx(per_step[i]) and e for i, t, _, e in seen)
    logged = [
        r["recording-sparse.target"]
        for r in read_metrics(tmp_path / "sparse" / "metrics.jsonl")
        if "loss" in r
    ]
    assert logged == pytest.approx([0.0, 0.15, 0.3, 0.45])
    extra = [block.self_attn.extra.weight for block in model.blocks]
    assert all(w.requires_grad and w.abs().sum() > 0 for w in extra)  # attached at zero, trained
    weights = tmp_path / "sparse" / "export" / "transformer" / "diffusion_pytorch_model.safetensors"
    with safe_open(str(weights), "pt") as f:
        assert {"blocks.0.to_extra.weight", "blocks.1.to_extra.bias"} <= set(f.keys())
        exported = f.get_tensor("blocks.1.to_extra.weight")
    assert torch.equal(exported, model.blocks[1].self_attn.extra.weight.detach().cpu())


def test_export_loads_back_and_generates_with_the_trained_weights(
    finetuned: tuple[Trainer, Path], ckpt_path: Path
) -> None:
    """The export is a complete example checkpoint: our loader reads the trained DiT bit-exactly (fp32
    export), and generating from it gives what the original checkpoint gives with the trained DiT
    swapped in (the other components were carried over unchanged), not what the untrained one gives."""
    import json

    from fastvideo import VideoGenerator
    from fastvideo_example.model import ExampleTransformer

    trainer, out = finetuned
    export = out / "export"
    trained = {k: v.detach().cpu() for k, v in trainer.algorithm.model.state_dict().items()}
    loaded = ExampleTransformer.from_pretrained(export / "transformer", dtype=None).state_dict()
    assert set(loaded) == set(trained)
    assert all(torch.equal(loaded[k], trained[k]) for k in trained)
    assert json.loads((export / "model_index.json").read_text()) == json.loads(
        (ckpt_path / "model_index.json").read_text()
    )
    kw = dict(num_frames=5, height=32, width=32, num_inference_steps=2, seed=42)

    def frames(path: Path, weights: dict[str, torch.Tensor] | None = None) -> np.ndarray:
        gen = VideoGenerator.from_pretrained(str(path), device="cpu", progress=False)
        if weights is not None:
            gen.pipeline.components["transformer"].load_state_dict(weights)
        return np.asarray(gen.generate_video("a red circle", **kw).frames, dtype=np.float64)

    ours, ref, untrained = frames(export), frames(ckpt_path, trained), frames(ckpt_path)
    assert ref.std() > 1 and np.array_equal(ours, ref)
    assert np.abs(ours - untrained).mean() > 0.5  # the trained weights are what generated it


def test_gradient_clipping_then_adamw(ckpt_path: Path, data_path: Path, tmp_path: Path) -> None:
    """optimizer_step = clip to max_grad_norm, then AdamW, checked against torch's own ops (eps=1 makes
    AdamW's update depend on the gradient's scale, so a missing clip would show)."""
    cfg = _config(ckpt_path, data_path, tmp_path / "clip", **{"optim.max_grad_norm": 0.01, "optim.eps": 1.0})
    trainer = Trainer(cfg).setup()
    model, opt = trainer.algorithm.model, trainer.algorithm.optimizer
    params = [p for p in model.parameters() if p.requires_grad]
    gen = torch.Generator().manual_seed(0)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)
    grads = [p.grad.clone() for p in params]
    ref_params = [p.detach().clone().requires_grad_(True) for p in params]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    for rp, g in zip(ref_params, grads, strict=True):
        rp.grad = g * (0.01 / (norm + 1e-6))
    ref_opt = torch.optim.AdamW(
        ref_params, lr=cfg.optim.lr, betas=cfg.optim.betas, eps=1.0, weight_decay=cfg.optim.weight_decay
    )
    ref_opt.step()
    metrics = trainer.optimizer_step(opt, model)
    assert metrics["grad_norm"] == pytest.approx(float(norm), rel=1e-6)
    for p, rp in zip(params, ref_params, strict=True):
        torch.testing.assert_close(p.detach(), rp.detach(), rtol=1e-6, atol=1e-7)
        assert p.grad is None


def test_bf16_autocast_step_is_close_to_fp32(ckpt_path: Path, data_path: Path, tmp_path: Path) -> None:
    losses = {}
    for precision in ("fp32", "bf16"):
        cfg = _config(
            ckpt_path,
            data_path,
            tmp_path / precision,
            max_steps=2,
            **{"mixed_precision": precision, "export.enabled": False},
        )
        Trainer(cfg).train()
        losses[precision] = _losses(tmp_path / precision)
    assert all(np.isfinite(losses["bf16"]))
    np.testing.assert_allclose(losses["bf16"], losses["fp32"], rtol=3e-2)  # bf16 has 8 mantissa bits


def test_gradient_accumulation_equals_the_larger_batch(
    ckpt_path: Path, data_path: Path, tmp_path: Path
) -> None:
    """Batch 2 in one micro-batch, and 2 micro-batches of 1 (with activation checkpointing): the same
    samples, noise and loss."""
    runs = {}
    for name, accum in (("big", 1), ("accum", 2)):
        cfg = _config(
            ckpt_path,
            data_path,
            tmp_path / name,
            max_steps=3,
            **{
                "data.grad_accum_steps": accum,
                "export.enabled": False,
                "parallel.activation_checkpointing": accum == 2,
            },
        )
        Trainer(cfg).train()
        runs[name] = _losses(tmp_path / name)
    np.testing.assert_allclose(runs["accum"], runs["big"], rtol=1e-5)


def test_partial_checkpoints_are_never_picked_up(finetuned: tuple[Trainer, Path], tmp_path: Path) -> None:
    _, out = finetuned
    root = tmp_path / "checkpoints"
    shutil.copytree(out / "checkpoints", root)
    good = ckpt.latest(root)
    assert good is not None and good.name == "step-00000040"
    # a run killed while writing step 60 leaves the temp folder; one without the marker is not complete
    shutil.copytree(good, root / ".tmp-step-00000060")
    shutil.copytree(good, root / "step-00000080")
    (root / "step-00000080" / ckpt.COMPLETE).unlink()
    assert ckpt.latest(root) == good
    with pytest.raises(Exception, match="is not a complete checkpoint"):
        ckpt.load(root / "step-00000080", {})


def test_resume_loads_models_optimizer_and_position(
    finetuned: tuple[Trainer, Path], ckpt_path: Path, data_path: Path
) -> None:
    trainer, out = finetuned
    cfg = _config(
        ckpt_path,
        data_path,
        out,
        max_steps=40,
        **{"checkpoint.every_steps": 20, "ema.decay": 0.9, "optim.lr": 5e-3},
    )
    fresh = Trainer(cfg, resume=True).setup()
    fresh.load_checkpoint(ckpt.latest(out / "checkpoints"))  # type: ignore[arg-type]
    assert fresh.step == 40 and fresh.data_position == 80
    a, b = fresh.algorithm.model.state_dict(), trainer.algorithm.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in b)
    sa, sb = (
        fresh.algorithm.optimizer.state_dict()["state"],
        trainer.algorithm.optimizer.state_dict()["state"],
    )
    assert all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sb)
    assert fresh.registered("transformer").scheduler.last_epoch == 40
    assert all(torch.equal(fresh.ema.shadow[k], trainer.ema.shadow[k]) for k in trainer.ema.shadow)  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="already holds checkpoint step-00000040; pass --resume"):
        Trainer(cfg).train()


def test_lora_training_saves_only_adapters(ckpt_path: Path, data_path: Path, tmp_path: Path) -> None:
    from fastvideo.training.lora import read_lora_file

    cfg = _config(
        ckpt_path,
        data_path,
        tmp_path / "lora",
        max_steps=3,
        **{"algorithm": "lora", "lora.rank": 4, "lora.alpha": 8, "optim.lr": 1e-2},
    )
    summary = Trainer(cfg).train()
    tensors, meta = read_lora_file(summary["export"])
    # 2 blocks x (self qkv, proj + cross q, kv, proj + ffn 2) x (A, B)
    assert len(tensors) == 2 * 7 * 2
    assert meta["transformer.r"] == 4 and meta["transformer.lora_alpha"] == 4  # alpha/r folded into B
    assert any(float(t.abs().max()) > 0 for k, t in tensors.items() if "lora_B" in k)
    keys = ckpt.saved_keys(ckpt.latest(tmp_path / "lora" / "checkpoints"))  # type: ignore[arg-type]
    assert {"model-transformer", "optim-transformer", "trainer", "rng-rank0"} <= keys
    from torch.distributed.checkpoint import FileSystemReader

    meta_keys = FileSystemReader(str(ckpt.latest(tmp_path / "lora" / "checkpoints"))).read_metadata()
    model_keys = [k for k in meta_keys.state_dict_metadata if k.startswith("model-transformer.")]
    assert model_keys and all(".lora_" in k for k in model_keys)  # the frozen base is not checkpointed


def test_caption_dropout_feeds_the_null_text_to_the_drawn_samples() -> None:
    """objective.text_dropout: after its noise and timestep draws, each sample's generator draws
    u ~ U(0, 1); u < p replaces the sample's text by the empty prompt's embedding (the dataset's
    null text). Checked against those draws made independently, with a model that records its input."""
    from fastvideo.training.objectives import FlowMatchingObjective
    from fastvideo.training.trainer import sample_generator

    seen: dict[str, torch.Tensor] = {}

    def model(
        hidden_states: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> Any:
        seen["text"] = encoder_hidden_states
        return torch.zeros_like(hidden_states)

    n, p = 16, 0.5
    batch = {
        "latents": torch.randn(n, 4, 2, 4, 4),
        "text": torch.randn(n, 6, 8),
        "null_text": torch.full((6, 8), 7.0),
    }
    objective = FlowMatchingObjective(text_dropout=p)
    objective(model, batch, [sample_generator(0, 1, i) for i in range(n)])
    expected = []
    for i in range(n):
        g = sample_generator(0, 1, i)
        torch.randn(batch["latents"].shape[1:], generator=g)  # noise
        torch.rand(1, generator=g)  # sigma
        expected.append(bool(torch.rand(1, generator=g) < p))
    dropped = [bool((seen["text"][i] == 7.0).all()) for i in range(n)]
    assert dropped == expected and 0 < sum(dropped) < n
    for i in range(n):
        if not dropped[i]:
            assert torch.equal(seen["text"][i], batch["text"][i])
    # without a null text the dropped samples see zeros; p = 0 draws nothing and changes nothing
    objective(
        model,
        {k: v for k, v in batch.items() if k != "null_text"},
        [sample_generator(0, 1, i) for i in range(n)],
    )
    assert all(bool((seen["text"][i] == 0).all()) == expected[i] for i in range(n))
    FlowMatchingObjective()(model, batch, [sample_generator(0, 1, i) for i in range(n)])
    assert torch.equal(seen["text"], batch["text"])


def test_max_minutes_stops_the_run_then_saves_and_exports(
    ckpt_path: Path, data_path: Path, tmp_path: Path
) -> None:
    out = tmp_path / "capped"
    summary = Trainer(_config(ckpt_path, data_path, out, max_steps=50, max_minutes=1e-6)).train()
    assert summary["step"] == 1  # the first step already passes the limit
    events = [r for r in read_metrics(out / "metrics.jsonl") if r.get("event") == "time_limit"]
    assert events == [{"step": 1, "event": "time_limit", "max_minutes": 1e-6}]
    assert ckpt.latest(out / "checkpoints") is not None and (out / "export" / "model_index.json").is_file()
