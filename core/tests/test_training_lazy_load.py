"""Lazy (deferred) loading for sharded training: the DiT stays on ``meta`` until FSDP2 has split it,
then each rank reads only its slice of each tensor from the safetensors.

The reference is the plain load in one process (``DiT.from_pretrained``): on 3 gloo ranks (so that
FSDP2's chunks are uneven) the gathered weights equal it bit for bit, in fp32 and in bf16, and what
``load_transformer(lazy=True)`` returns holds no memory at all (every tensor on ``meta``). In one
process the same deferral reproduces ``load_pretrained`` with fp32-kept parameters and zero-filled
per-layer modules the checkpoint lacks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from fastvideo.parallel.testing import run_ranks
from fastvideo.testing import fake_plugins
from fastvideo.training.config import load_config
from fastvideo.training.trainer import Trainer
from fastvideo_example import plugin as example_plugin

WORLD = 3


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> str:
    from fastvideo_example.checkpoint import make_checkpoint
    from fastvideo_example.model import ExampleTransformer

    path = make_checkpoint(tmp_path_factory.mktemp("example") / "tiny", seed=0)
    dit = ExampleTransformer.from_pretrained(path / "transformer", dtype=torch.float32)
    dit.init_weights(seed=3, std=0.3)  # every value distinct from a fresh init's
    dit.save_pretrained(path / "transformer")
    return str(path)


def _full(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for name, t in model.state_dict().items():
        full = getattr(t, "full_tensor", None)
        out[name] = (full() if callable(full) else t).detach().clone()
    return out


def lazy_rank(rank: int, world: int, ckpt: str, out: str) -> dict[str, Any]:
    """Set up a sharded finetune (lazy), then load a bf16 frozen copy lazily and shard it too."""
    from fastvideo.loader.deferred import pending
    from fastvideo.parallel.state import teardown

    config = load_config(
        None,
        {
            "model.path": ckpt,
            "data.path": "in-memory",
            "output_dir": out,
            "max_steps": 1,
            "mixed_precision": "fp32",
            "data.batch_size": world,
            "export.enabled": False,
            "attention.backend": "sdpa",
            "parallel.fsdp": True,
        },
    )
    with fake_plugins(example_plugin):
        from fastvideo.training.data import InMemoryDataset

        sample = {
            "latents": torch.zeros(16, 1, 2, 2),
            "text": torch.zeros(4, 32),
            "text_mask": torch.ones(4, dtype=torch.long),
        }
        trainer = Trainer(config, dataset=InMemoryDataset([sample] * world)).setup()
        trained = trainer.algorithm.model
        local = {n: tuple(p.to_local().shape) for n, p in trained.named_parameters()}
        lazy = trainer.load_transformer(dtype="bf16", lazy=True)
        on_meta = all(t.device.type == "meta" for t in lazy.state_dict().values())
        dtypes = {str(p.dtype) for p in lazy.parameters()}
        deferred = pending(lazy) is not None
        frozen = trainer.runtime.prepare_model(lazy, trainable=False, shard=True)
        result = {
            "fp32": _full(trained),
            "bf16": _full(frozen),
            "local_shapes": local,
            "lazy_on_meta": on_meta,
            "lazy_dtypes": dtypes,
            "deferred": deferred,
            "filled": pending(frozen) is None,
        }
    teardown()  # run_ranks' process group stays for it to close
    return result


@pytest.fixture(scope="module")
def ranks(ckpt: str, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("runs")
    return run_ranks(f"{__file__}:lazy_rank", WORLD, args=(ckpt, str(out)), timeout=90)


def test_lazy_sharded_load_equals_the_plain_load(ckpt: str, ranks: list[dict[str, Any]]) -> None:
    from fastvideo_example.model import ExampleTransformer

    for dtype, key in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
        ref = ExampleTransformer.from_pretrained(Path(ckpt) / "transformer", dtype=dtype).state_dict()
        for r in ranks:
            got = r[key]
            assert set(got) == set(ref)
            for name, value in ref.items():
                assert got[name].dtype == value.dtype, name
                assert torch.equal(got[name], value), f"{key} {name} differs from the plain load"


def test_lazy_load_holds_nothing_until_sharded(ranks: list[dict[str, Any]]) -> None:
    for r in ranks:
        assert r["lazy_on_meta"] and r["deferred"] and r["filled"]
        assert r["lazy_dtypes"] == {"torch.bfloat16"}  # cast on meta, before FSDP2 sees them
    # each rank holds its torch.chunk of dim 0: 32 rows over 3 ranks are 11, 11 and 10
    rows = [r["local_shapes"]["patch_embed.weight"][0] for r in ranks]
    assert rows == [11, 11, 10]


def test_deferred_fill_matches_load_pretrained_with_kept_fp32_and_zeros(ckpt: str) -> None:
    """One process: fp32-kept parameters, a zero-filled module the checkpoint lacks, bf16 elsewhere."""
    from fastvideo.loader.checkpoint import load_pretrained
    from fastvideo.loader.deferred import defer, fill, pending
    from fastvideo_example.model import ExampleTransformer

    folder = Path(ckpt) / "transformer"
    config = ExampleTransformer.read_config(folder)

    def keep(name: str) -> bool:
        return name.startswith("time_embed")

    def meta_model() -> tuple[torch.nn.Module, Any]:
        model = ExampleTransformer.from_config(config)  # meta
        ckpt_ = ExampleTransformer.open_checkpoint(folder, model)
        model.extra = torch.nn.Linear(4, 3, device="meta")  # not in the checkpoint: zero-filled
        return model, ckpt_

    ref, ref_ckpt = meta_model()
    load_pretrained(
        ref, ref_ckpt, dtype=torch.bfloat16, keep_fp32=keep, zero_init=["extra.weight", "extra.bias"]
    )
    lazy, lazy_ckpt = meta_model()
    defer(lazy, lazy_ckpt, dtype=torch.bfloat16, keep_fp32=keep, zero_init=["extra.weight", "extra.bias"])
    assert pending(lazy) is not None and lazy.time_embed.fc1.weight.dtype == torch.float32
    fill(lazy, "cpu")
    assert pending(lazy) is None
    want, got = ref.state_dict(), lazy.state_dict()
    assert set(got) == set(want)
    for name, value in want.items():
        assert got[name].dtype == value.dtype and torch.equal(got[name], value), name


def test_defer_refuses_a_model_that_holds_memory_and_fill_an_undeferred_one(ckpt: str) -> None:
    from fastvideo.loader.checkpoint import CheckpointError
    from fastvideo.loader.deferred import defer, fill
    from fastvideo_example.model import ExampleTransformer

    folder = Path(ckpt) / "transformer"
    real = ExampleTransformer.from_pretrained(folder, dtype=torch.float32)
    with pytest.raises(ValueError, match="built on meta"):
        defer(real, None)
    with pytest.raises(ValueError, match="no deferred weights"):
        fill(real, "cpu")
    # a checkpoint that does not match is refused at defer time, as a plain load would refuse it
    config = ExampleTransformer.read_config(folder)
    model = ExampleTransformer.from_config(config)
    model.extra = torch.nn.Linear(4, 3, device="meta")
    with pytest.raises(CheckpointError, match="extra"):
        defer(model, ExampleTransformer.open_checkpoint(folder, model), dtype=torch.float32)
