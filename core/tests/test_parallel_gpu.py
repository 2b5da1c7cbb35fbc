"""Sequence parallelism on real GPUs (NCCL, two or four GPUs; skipped where there are fewer).

The peer-memory Ulysses exchange (copy engines, :mod:`fastvideo.parallel.peer`) exists only on CUDA:
here it must give what NCCL's all-to-all gives, and what one GPU gives, for the example plugin's DiT
in fp32 with a token count that does not divide the ranks, several head-group plans and a batch of
two; and with a sparse backend whose per-layer module's output travels as a fourth tensor (as vsa's
gate does). The example DiT does not declare sequence parallelism itself (yet): the test opts it in
from outside, as a model file would.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch

from fastvideo.parallel.testing import run_ranks
from fastvideo.testing import fake_plugins, plugin_module
from fastvideo.testing.toys import FrameLocal
from fastvideo_example import plugin as example_plugin

GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0
# head-group plans for the 8 heads of the model below: 4 per rank on 2 GPUs, 2 per rank on 4
PLANS: dict[int, list[Any]] = {2: [1, 2, (1, 3), 4], 4: [1, 2, (1, 1)]}


@contextmanager
def sequence_parallel_example() -> Iterator[None]:
    """The plugins under test registered (the example DiT declares its sequence-parallel plan and
    attends among the sharded tokens in self-attention)."""
    backends = plugin_module("frame-local", fv_register_attention_backends=lambda: [FrameLocal])
    with fake_plugins(example_plugin, backends):
        yield


def _model_and_inputs(device: torch.device) -> tuple[Any, tuple[torch.Tensor, ...]]:
    from fastvideo_example.model import ExampleConfig, ExampleTransformer

    cfg = ExampleConfig(num_heads=8, head_dim=16, text_dim=32, ffn_dim=128, num_layers=2)
    model = ExampleTransformer(cfg)
    model.init_weights(seed=0, std=0.2)
    model = model.to(device).float().eval()
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 16, 5, 14, 22, generator=gen)  # 5 x 7 x 11 = 385 tokens: padded for 2 or 4 ranks
    text = torch.randn(2, 9, 32, generator=gen)
    return model, (x.to(device), torch.tensor([300.0, 700.0], device=device), text.to(device))


# the exchanges compared: NCCL's all-to-all; peer copies, one strided cudaMemcpy2DAsync per peer and
# head group; peer copies, one memcpy per contiguous piece (FASTVIDEO_PEER_MEMCPY2D=0)
EXCHANGES = {"nccl": ("nccl", "1"), "peer": ("peer", "1"), "peer rows": ("peer", "0")}


def suite(rank: int, world: int) -> dict[str, Any]:
    with sequence_parallel_example():
        return _suite(rank, world)


def _suite(rank: int, world: int) -> dict[str, Any]:
    import os

    from fastvideo.attention import use_backend
    from fastvideo.configs import ParallelConfig
    from fastvideo.parallel import peer
    from fastvideo.parallel.sequence import SequenceSharding
    from fastvideo.parallel.state import init_parallel, teardown

    device = torch.device("cuda", rank)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model, inputs = _model_and_inputs(device)
    results: dict[str, Any] = {}
    with use_backend("sdpa"), torch.no_grad():
        results["one"] = model(*inputs).cpu()
        for name, (exchange, memcpy2d) in EXCHANGES.items():
            os.environ["FASTVIDEO_PEER_MEMCPY2D"] = memcpy2d  # read when the group's exchange is made
            for plan in PLANS[world]:
                state = init_parallel(ParallelConfig(num_gpus=world), str(device))
                sharding = SequenceSharding(model, state, head_groups=plan, exchange=exchange)
                sharding.apply(model)
                outs = [model(*inputs).cpu() for _ in range(2)]  # twice: the buffers are reused
                # exchange="peer" raises where peer copies cannot run, so these ran through them
                results[f"{name} {plan}"] = outs
                made = [e for e in peer._EXCHANGES.values() if e is not None]
                results[f"{name} {plan} 2d"] = [e.memcpy2d is not None for e in made]
                sharding.remove(model)
                teardown()
        os.environ.pop("FASTVIDEO_PEER_MEMCPY2D")
    from fastvideo.attention import StepContext, step_context
    from fastvideo.attention.layers import attach_layer_modules

    attach_layer_modules(model, "frame-local")  # the backend's projections, zeros
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for block in model.blocks:
            w = block.self_attn.extra.weight
            w.copy_(torch.randn(w.shape, generator=gen).to(device) * 0.2)
    with use_backend("frame-local"), step_context(StepContext(grid=(5, 7, 11))), torch.no_grad():
        results["sparse one"] = model(*inputs).cpu()
        for exchange in ("nccl", "peer"):
            state = init_parallel(ParallelConfig(num_gpus=world), str(device))
            sharding = SequenceSharding(model, state, exchange=exchange)
            sharding.apply(model)
            results[f"sparse {exchange}"] = model(*inputs).cpu()
            sharding.remove(model)
            teardown()
    return results


@pytest.mark.parametrize("world", [2, 4])
def test_peer_exchange_matches_nccl_and_one_gpu(world: int) -> None:
    if GPUS < world:
        pytest.skip(f"needs {world} CUDA GPUs, this machine has {GPUS}")
    runs = run_ranks(f"{__file__}:suite", world, backend="nccl", timeout=300)
    for result in runs:
        ref = result["one"]
        for plan in PLANS[world]:
            for name in EXCHANGES:
                for out in result[f"{name} {plan}"]:
                    err = ((out - ref).norm() / ref.norm()).item()
                    assert err <= 1e-5, f"{name} exchange, head groups {plan}: rel err {err:.2e}"
            # which copies ran: the 2D memcpy where asked for (CUDA's runtime found), rows otherwise
            assert result[f"peer {plan} 2d"] == [True], result[f"peer {plan} 2d"]
            assert result[f"peer rows {plan} 2d"] == [False], result[f"peer rows {plan} 2d"]
            assert result[f"nccl {plan} 2d"] == [], result[f"nccl {plan} 2d"]
            nccl = result[f"nccl {plan}"][0]
            for name in ("peer", "peer rows"):
                diff = ((result[f"{name} {plan}"][0] - nccl).norm() / nccl.norm()).item()
                assert diff <= 1e-6, f"head groups {plan}: {name} and NCCL exchanges differ by {diff:.2e}"
        # the sparse backend's module output is a fourth exchanged tensor; it changes the result
        ref = result["sparse one"]
        assert ((ref - result["one"]).norm() / result["one"].norm()).item() > 1e-3, "ran densely"
        for exchange in ("nccl", "peer"):
            err = ((result[f"sparse {exchange}"] - ref).norm() / ref.norm()).item()
            assert err <= 1e-5, f"frame-local with the {exchange} exchange: rel err {err:.2e}"
