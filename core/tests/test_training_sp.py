"""Sequence-parallel (Ulysses) training: the trainer with ``parallel.sp_size: 2`` over 2 gloo processes
(FSDP2 over the same 2 ranks) computes the same per-step losses, gradient norms and final weights as
one process, on the example plugin's tiny checkpoint with a token count (45) that 2 does not divide;
so does a run of 4 processes as 2 data-parallel replicas of 2 sequence-parallel ranks each, sharded
HSDP-style (2 replicas x 2 shards), all on the one ``init_parallel`` layout of ``fv generate``, and the
2-process run with activation checkpointing (each block recomputed in the backward pass, under the
token sharding of its forward).

The example DiT does not declare sequence parallelism itself (yet): :func:`sequence_parallel_example`
opts it in from outside, as a model file would (a ``sequence_parallel_plan`` and
``attention(..., sequence_parallel=True)`` in its self-attention), and nothing else."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fastvideo.parallel.testing import run_ranks
from fastvideo.testing import fake_plugins
from fastvideo.training.config import load_config
from fastvideo.training.data import write_synthetic_dataset
from fastvideo.training.metrics import read_metrics
from fastvideo.training.trainer import Trainer
from fastvideo_example import plugin as example_plugin

LATENT = (16, 3, 6, 10)  # patch (1, 2, 2): 3 x 3 x 5 = 45 tokens, padded to 46 for 2 ranks
STEPS = 3


@contextmanager
def sequence_parallel_example() -> Iterator[None]:
    """The plugins under test registered (the example DiT declares its sequence-parallel plan and
    attends among the sharded tokens in self-attention)."""
    with fake_plugins(example_plugin):
        yield


def _config(
    ckpt: str,
    data: str,
    out: str,
    sp_size: int,
    hsdp_shard_size: int | None = None,
    checkpointing: bool = False,
) -> Any:
    return load_config(
        None,
        {
            "model.path": ckpt,
            "data.path": data,
            "output_dir": out,
            "max_steps": STEPS,
            "mixed_precision": "fp32",
            "optim.lr": 1e-3,
            # eps = 1 and no clipping make AdamW's update depend on the gradient's scale, so a gradient
            # off by a factor (a wrong sp scaling) shows in the losses and weights, not only in grad_norm
            "optim.eps": 1.0,
            "optim.max_grad_norm": 0.0,
            "data.batch_size": 2,
            "export.enabled": False,
            "logging.every_steps": 100,
            "attention.backend": "sdpa",
            "parallel.sp_size": sp_size,
            "parallel.hsdp_shard_size": hsdp_shard_size,
            "parallel.activation_checkpointing": checkpointing,
        },
    )


def _train(ckpt: str, data: str, out: str, **layout: Any) -> dict[str, Any]:
    """Train on the example checkpoint with ``layout`` (``_config``'s sp_size, hsdp_shard_size, ...)."""
    with sequence_parallel_example():
        trainer = Trainer(_config(ckpt, data, out, **layout))
        state = trainer.setup().runtime.parallel
        layout = None
        if state is not None:
            shape = tuple(state.fsdp_mesh.shape)
            layout = (state.dp_size, state.dp_rank, state.ulysses_size, state.ulysses_rank, shape)
        trainer.train()
    records = (
        [r for r in read_metrics(Path(out) / "metrics.jsonl") if "loss" in r] if trainer.rank == 0 else []
    )
    weights = {}
    for name, p in trainer.algorithm.model.state_dict().items():
        full = getattr(p, "full_tensor", None)
        weights[name] = (full() if callable(full) else p).detach().clone()
    return {
        "loss": [r["loss"] for r in records],
        "grad_norm": [r["grad_norm"] for r in records],
        "weights": weights,
        "layout": layout,
    }


def sp_rank(
    rank: int,
    world: int,
    ckpt: str,
    data: str,
    out: str,
    sp_size: int,
    hsdp: int | None,
    checkpointing: bool = False,
) -> dict[str, Any]:
    """One rank of a parallel run (the process group is up: ``run_ranks``)."""
    from fastvideo.parallel.state import teardown

    result = _train(ckpt, data, out, sp_size=sp_size, hsdp_shard_size=hsdp, checkpointing=checkpointing)
    teardown()
    return result


@pytest.fixture(scope="module")
def paths(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    from fastvideo_example.checkpoint import make_checkpoint
    from fastvideo_example.model import ExampleTransformer

    ckpt = make_checkpoint(tmp_path_factory.mktemp("example") / "tiny", seed=0)
    dit = ExampleTransformer.from_pretrained(ckpt / "transformer")
    dit.init_weights(seed=0, std=0.2)  # every layer far from zero: each one's gradient is compared
    dit.save_pretrained(ckpt / "transformer")
    data = write_synthetic_dataset(
        tmp_path_factory.mktemp("data"), count=4, latent_shape=LATENT, text_dim=32, max_sequence_length=16
    )
    return str(ckpt), str(data)


@pytest.fixture(scope="module")
def runs(paths: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    ckpt, data = paths
    out = tmp_path_factory.mktemp("runs")
    # the parallel runs first: their processes fork from a pytest process that has not trained yet
    sp = run_ranks(f"{__file__}:sp_rank", 2, args=(ckpt, data, str(out / "sp"), 2, None), timeout=60)
    dp_sp = run_ranks(f"{__file__}:sp_rank", 4, args=(ckpt, data, str(out / "dp_sp"), 2, 2), timeout=120)
    sp_ac = run_ranks(
        f"{__file__}:sp_rank", 2, args=(ckpt, data, str(out / "sp_ac"), 2, None, True), timeout=60
    )
    ref = _train(ckpt, data, str(out / "one"), sp_size=1)
    with sequence_parallel_example():
        initial = Trainer(_config(ckpt, data, str(out / "init"), 1)).setup().algorithm.model.state_dict()
    return {"sp": sp, "dp_sp": dp_sp, "sp_ac": sp_ac, "ref": ref, "initial": initial}


def _assert_same_training(ranks: list[dict[str, Any]], ref: dict[str, Any], initial: dict[str, Any]) -> None:
    par = ranks[0]
    assert len(ref["loss"]) == STEPS and all(np.isfinite(ref["loss"]))
    # Tolerance: fp32 throughout; the sharded run differs from one process only in summation order
    # (attention over all-to-all'd head shards, FSDP2's reduce-scatter of per-shard gradients, the
    # all-gather of the output), i.e. rounding at fp32 epsilon (~1e-7) compounded over 2 blocks and
    # 3 AdamW steps: measured <= 1e-7 relative on losses and weights. rtol 1e-4 is ~1000x that, yet
    # a sharding bug shows far above it: the old x sp_size gradient scaling moved the losses by
    # 4e-3 relative (and grad_norm by 2x); padding tokens that attend or leak move them more.
    np.testing.assert_allclose(par["loss"], ref["loss"], rtol=1e-4)
    np.testing.assert_allclose(par["grad_norm"], ref["grad_norm"], rtol=1e-4)
    assert ref["weights"].keys() == par["weights"].keys()
    for rank, result in enumerate(ranks):
        for name, w in ref["weights"].items():
            torch.testing.assert_close(
                result["weights"][name],
                w,
                rtol=1e-4,
                atol=1e-6,
                msg=lambda m, n=name, r=rank: f"rank {r} {n}: {m}",
            )
    moved = max(float((w - initial[n]).abs().max()) for n, w in ref["weights"].items())
    assert moved > 1e-4, "the weights did not move: nothing was compared"


def test_ulysses_training_equals_one_process(runs: dict[str, Any]) -> None:
    assert [r["layout"] for r in runs["sp"]] == [(1, 0, 2, 0, (2,)), (1, 0, 2, 1, (2,))]
    _assert_same_training(runs["sp"], runs["ref"], runs["initial"])


def test_data_parallel_replicas_of_sequence_parallel_ranks_equal_one_process(runs: dict[str, Any]) -> None:
    """dp 2 x ulysses 2 on 4 ranks, HSDP (2 replicas x 2 shards): the rank layout is the one of
    ``init_parallel`` (dp outermost) and the training matches one process (a replica fed the other's
    micro-batch, or gradients averaged over the wrong group, would not)."""
    layouts = [r["layout"] for r in runs["dp_sp"]]
    assert layouts == [(2, d, 2, u, (2, 2)) for d in (0, 1) for u in (0, 1)]
    _assert_same_training(runs["dp_sp"], runs["ref"], runs["initial"])


def test_ulysses_training_with_activation_checkpointing_equals_one_process(runs: dict[str, Any]) -> None:
    """The recompute of each block in the backward pass runs under its forward's token sharding (it
    used to run unsharded after the forward's hooks had ended, and autograd refused the mismatch)."""
    _assert_same_training(runs["sp_ac"], runs["ref"], runs["initial"])
