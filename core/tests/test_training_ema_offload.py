"""``ema.offload``: the EMA shadows in CPU memory (each rank's shards) average exactly as on the device,
and checkpoints do not depend on where they lived: a run saved with offloaded shadows resumes without
offload (and the other way round) to the EMA of an uninterrupted run, bit for bit, on 2 gloo ranks
under FSDP2."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from fastvideo.parallel.testing import run_ranks
from fastvideo.testing import fake_plugins
from fastvideo.training.config import load_config
from fastvideo.training.data import write_synthetic_dataset
from fastvideo.training.ema import EMA
from fastvideo.training.trainer import Trainer
from fastvideo_example import plugin as example_plugin

LATENT = (16, 3, 6, 10)


def test_offloaded_shadows_average_as_on_the_device() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Linear(5, 3))
    model[1].bias.requires_grad_(False)  # frozen parameters have no shadow
    here, offloaded = EMA(model, decay=0.7, start_step=1), EMA(model, decay=0.7, start_step=1, offload=True)
    assert "1.bias" not in offloaded.shadow and all(t.device.type == "cpu" for t in offloaded.shadow.values())
    for step in range(1, 5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        here.update(model, step)
        offloaded.update(model, step)
    for name in here.names:
        assert torch.equal(here.shadow[name], offloaded.shadow[name]), name
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with offloaded.applied(model):
        assert torch.equal(model[0].weight, here.shadow["0.weight"])
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # restored
    fresh = EMA(model, decay=0.7, offload=True)
    fresh.load_state_dict(here.state_dict())
    assert all(torch.equal(fresh.shadow[n], here.shadow[n]) for n in here.names)


def _run(ckpt: str, data: str, out: str, steps: int, offload: bool, resume: bool) -> dict[str, torch.Tensor]:
    config = load_config(
        None,
        {
            "model.path": ckpt,
            "data.path": data,
            "data.batch_size": 2,
            "output_dir": out,
            "max_steps": steps,
            "mixed_precision": "fp32",
            "optim.lr": 1e-2,
            "ema.decay": 0.6,
            "ema.offload": offload,
            "checkpoint.every_steps": 1,
            "export.enabled": False,
            "logging.every_steps": 100,
            "attention.backend": "sdpa",
            "parallel.fsdp": True,
        },
    )
    with fake_plugins(example_plugin):
        trainer = Trainer(config, resume=True if resume else None)
        trainer.train()
        ema = trainer.ema
        assert ema is not None and ema.offload == offload
        if offload:
            assert all(t.device.type == "cpu" and not hasattr(t, "to_local") for t in ema.shadow.values())
        out_state = {}
        for name, t in ema.state_dict().items():
            full = getattr(t, "full_tensor", None)
            out_state[name] = (full() if callable(full) else t).detach().clone()
    from fastvideo.parallel.state import teardown

    teardown()  # forget the layout, keep run_ranks' process group for the next run
    return out_state


def ema_rank(rank: int, world: int, ckpt: str, data: str, root: str) -> dict[str, Any]:
    r = Path(root)
    results = {
        "device": _run(ckpt, data, str(r / "device"), 3, offload=False, resume=False),
        "offload": _run(ckpt, data, str(r / "offload"), 3, offload=True, resume=False),
    }
    # two steps one way, the third after a resume the other way
    _run(ckpt, data, str(r / "to-device"), 2, offload=True, resume=False)
    results["offload-then-device"] = _run(ckpt, data, str(r / "to-device"), 3, offload=False, resume=True)
    _run(ckpt, data, str(r / "to-offload"), 2, offload=False, resume=False)
    results["device-then-offload"] = _run(ckpt, data, str(r / "to-offload"), 3, offload=True, resume=True)
    return results


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    from fastvideo_example.checkpoint import make_checkpoint
    from fastvideo_example.model import ExampleTransformer

    ckpt = make_checkpoint(tmp_path_factory.mktemp("example") / "tiny", seed=0)
    dit = ExampleTransformer.from_pretrained(ckpt / "transformer", dtype=torch.float32)
    dit.init_weights(seed=1, std=0.2)
    dit.save_pretrained(ckpt / "transformer")
    data = write_synthetic_dataset(
        tmp_path_factory.mktemp("data"), count=4, latent_shape=LATENT, text_dim=32, max_sequence_length=16
    )
    root = tmp_path_factory.mktemp("runs")
    return run_ranks(f"{__file__}:ema_rank", 2, args=(str(ckpt), str(data), str(root)), timeout=120)


def test_offloaded_ema_equals_the_device_ema_under_fsdp(ranks: list[dict[str, Any]]) -> None:
    for r in ranks:
        ref = r["device"]
        for case in ("offload", "offload-then-device", "device-then-offload"):
            assert r[case].keys() == ref.keys()
            for name, value in ref.items():
                assert torch.equal(r[case][name], value), f"{case}: {name} differs"
