"""Sequence parallelism of the Cosmos DiT on 2 CPU processes (gloo): video tokens (and the per-token
timestep embeddings, the RoPE tables, the position table) sharded, text replicated, the same output
as one process. The model only declares ``sequence_parallel_plan``; the core's strategies do the rest."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

CASES = {  # name -> (ParallelConfig kwargs, make_inputs kwargs)
    "ulysses-per-frame-t": (dict(sp_size=2), dict(latent=(3, 8, 12))),
    "ulysses-b2-scalar-t-odd-tokens": (dict(sp_size=2), dict(batch=2, latent=(3, 6, 10), per_frame=False)),
    "ring-per-frame-t": (dict(ring_size=2), dict(latent=(2, 6, 10))),
}


def suite(rank: int, world: int, folder: str) -> dict[str, float]:
    """On each rank: every case's max |sharded - whole| / max |whole|."""
    import sys
    from pathlib import Path

    import torch

    sys.path.insert(0, str(Path(__file__).parent))  # the ranks import this file by path
    from test_model import make_inputs

    from fastvideo.attention import use_backend
    from fastvideo.testing.parallel import sharded_forward
    from fastvideo_cosmos.model import CosmosTransformer

    torch.set_num_threads(1)  # two ranks share the CPU cores
    model = CosmosTransformer.from_pretrained(folder, dtype=torch.float32)
    errors = {}
    for name, (par, inputs) in CASES.items():
        args = make_inputs(model.config, **inputs)
        with torch.no_grad(), use_backend("sdpa"):
            whole = model(*args)
            sharded = sharded_forward(model, world, par, *args)
        errors[name] = ((sharded - whole).abs().max() / whole.abs().max()).item()
    return errors


def test_sequence_parallel_matches_one_process(tiny_checkpoint: Callable[..., tuple[Any, Any]]) -> None:
    from fastvideo.parallel.testing import run_ranks

    folder, _ = tiny_checkpoint(extra_pos_embed_type="learnable")
    results = run_ranks(f"{__file__}:suite", world=2, args=(str(folder),))
    for rank, errors in enumerate(results):
        assert set(errors) == set(CASES)
        for name, err in errors.items():
            assert err <= 1e-5, f"rank {rank}, {name}: max |sharded - whole| / max |whole| = {err:.3g}"
