"""Sequence parallelism on real GPUs (NCCL, two or four GPUs; skipped where there are fewer).

The peer-memory Ulysses exchange (copy engines, :mod:`fastvideo.parallel.peer`) exists only on CUDA:
here it must give what NCCL's all-to-all gives, and what one GPU gives, for a Wan DiT in fp32 with a
token count that does not divide the ranks, several head-group plans and a batch of two; and with the
sparse ``vsa`` backend (its gate travels as a fourth tensor) when the VSA plugin is installed.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from fastvideo.parallel.testing import run_ranks

GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0
# head-group plans for the 8 heads of the model below: 4 per rank on 2 GPUs, 2 per rank on 4
PLANS: dict[int, list[Any]] = {2: [1, 2, (1, 3), 4], 4: [1, 2, (1, 1)]}


def _model_and_inputs(device: torch.device) -> tuple[Any, tuple[torch.Tensor, ...]]:
    from fastvideo_wan.model import WanConfig, WanTransformer

    torch.manual_seed(0)
    cfg = WanConfig(
        num_attention_heads=8,
        attention_head_dim=16,
        text_dim=32,
        freq_dim=32,
        ffn_dim=128,
        num_layers=2,
        rope_max_seq_len=64,
    )
    model = WanTransformer.from_config(cfg, device=device).float().eval()
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 16, 5, 14, 22, generator=gen)  # 5 x 7 x 11 = 385 tokens: padded for 2 or 4 ranks
    text = torch.randn(2, 9, 32, generator=gen)
    return model, (x.to(device), torch.tensor([300.0, 700.0], device=device), text.to(device))


def _has_vsa() -> bool:
    try:
        import fastvideo_vsa  # noqa: F401
    except ImportError:
        return False
    return True


# the exchanges compared: NCCL's all-to-all; peer copies, one strided cudaMemcpy2DAsync per peer and
# head group; peer copies, one memcpy per contiguous piece (FASTVIDEO_PEER_MEMCPY2D=0)
EXCHANGES = {"nccl": ("nccl", "1"), "peer": ("peer", "1"), "peer rows": ("peer", "0")}


def suite(rank: int, world: int) -> dict[str, Any]:
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
    if not _has_vsa():
        return results
    from fastvideo.attention import StepContext, step_context
    from fastvideo.attention.layers import attach_layer_modules

    attach_layer_modules(model, "vsa")  # the backend's gate projections, zeros
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for block in model.blocks:
            w = block.self_attn.gate_compress.weight
            w.copy_(torch.randn(w.shape, generator=gen).to(device) * 0.2)
    with (
        use_backend("vsa"),
        step_context(StepContext(grid=(5, 7, 11), options={"vsa": {"sparsity": 0.5}})),
        torch.no_grad(),
    ):
        results["vsa one"] = model(*inputs).cpu()
        for exchange in ("nccl", "peer"):
            state = init_parallel(ParallelConfig(num_gpus=world), str(device))
            sharding = SequenceSharding(model, state, exchange=exchange)
            sharding.apply(model)
            results[f"vsa {exchange}"] = model(*inputs).cpu()
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
        if "vsa one" in result:  # VSA's gate is a fourth exchanged tensor
            ref = result["vsa one"]
            for exchange in ("nccl", "peer"):
                err = ((result[f"vsa {exchange}"] - ref).norm() / ref.norm()).item()
                assert err <= 1e-5, f"vsa with the {exchange} exchange: rel err {err:.2e}"
