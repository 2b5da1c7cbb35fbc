"""``vsa`` under Ulysses sequence parallelism (2 gloo ranks, CPU, Triton's interpreter without a GPU):
the backend, with its gate projections, sees the whole token grid, so each rank's DiT output equals
one process's. The DiT is the example plugin's; it does not declare sequence parallelism itself
(yet), so :func:`sequence_parallel_example` opts it in from outside, as a model file would."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from fastvideo.attention import StepContext, step_context, use_backend
from fastvideo.parallel.testing import run_ranks
from fastvideo.testing import assert_close, fake_plugins
from fastvideo_example import plugin as example_plugin
from fastvideo_vsa import plugin as vsa_plugin

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

RTOL = 1e-5


@contextmanager
def sequence_parallel_example() -> Iterator[None]:
    """The plugins under test registered (the example DiT declares its sequence-parallel plan and
    attends among the sharded tokens in self-attention)."""
    with fake_plugins(vsa_plugin, example_plugin):
        yield


def vsa_forward(parallel: bool, backend: str = "vsa") -> torch.Tensor:
    """A 4-head example DiT forward with ``backend`` (vsa: gated, 50 % sparse) on 45 tokens
    (3 x 3 x 5, a multiple of neither 2 nor 4); Ulysses over all ranks when ``parallel``."""
    from fastvideo.attention.layers import attach_layer_modules
    from fastvideo.configs import ParallelConfig
    from fastvideo.parallel.sequence import SequenceSharding
    from fastvideo.parallel.state import init_parallel, teardown
    from fastvideo_example.model import ExampleConfig, ExampleTransformer

    with sequence_parallel_example():
        model = ExampleTransformer(ExampleConfig(num_heads=4, head_dim=8, text_dim=32, ffn_dim=64))
        model.init_weights(seed=0, std=0.2)
        attach_layer_modules(model, "vsa")  # the backend's gate projections, zeros
        gen = torch.Generator().manual_seed(3)
        with torch.no_grad():
            for block in model.blocks:
                block.self_attn.gate_compress.weight.copy_(torch.randn(32, 32, generator=gen) * 0.2)
        if parallel:
            world = torch.distributed.get_world_size()
            state = init_parallel(ParallelConfig(num_gpus=world, sp_size=world), "cpu")
            SequenceSharding(model, state).apply(model)
        gen = torch.Generator().manual_seed(2)
        x, text = torch.randn(1, 16, 3, 6, 10, generator=gen), torch.randn(1, 7, 32, generator=gen)
        context = StepContext(grid=(3, 3, 5), options={"vsa": {"sparsity": 0.5}})
        with use_backend(backend), step_context(context), torch.no_grad():
            out = model(x, torch.tensor([300.0]), text)
        if parallel:
            teardown()
    return out


def rank_forward(rank: int, world: int) -> torch.Tensor:
    return vsa_forward(parallel=True)


def test_ulysses_with_vsa_equals_one_process() -> None:
    ref = vsa_forward(parallel=False)
    dense = vsa_forward(parallel=False, backend="sdpa")
    assert (dense - ref).abs().max() > 1e-3, "vsa ran densely: nothing tested"
    for rank, out in enumerate(run_ranks(f"{__file__}:rank_forward", 2)):
        assert_close(f"vsa rank {rank}", ref, out, RTOL)
