"""Sequence parallelism of the LTX-Video DiT on 2 CPU processes (gloo): video tokens, per-token timestep
embeddings and RoPE tables sharded by name (``sequence_parallel_plan``), text replicated for the dense
cross-attention; the same output as one process."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from fastvideo.parallel.testing import run_ranks

CASES = {  # name -> (ParallelConfig kwargs, make_inputs kwargs)
    "ulysses-b2-masked-text": (dict(sp_size=2), dict(batch=2, valid=(7, 3))),
    "ulysses-per-token-timesteps-odd-tokens": (dict(sp_size=2), dict(per_token=True, latent=(3, 5, 7))),
    "ring-b2": (dict(ring_size=2), dict(batch=2, latent=(3, 4, 6))),
}


def suite(rank: int, world: int, folder: str) -> dict[str, float]:
    """On each rank: every case's max |sharded - whole| / max |whole|."""
    import sys
    from pathlib import Path

    import torch

    from fastvideo.attention import use_backend
    from fastvideo.testing.parallel import sharded_forward
    from fastvideo_ltx.ltxv.model import LTXVideoTransformer

    sys.path.insert(0, str(Path(__file__).parent))
    from test_model import make_inputs

    torch.set_num_threads(1)  # two ranks share the CPU cores
    model = LTXVideoTransformer.from_pretrained(folder, dtype=torch.float32)
    errors = {}
    for name, (par, inputs) in CASES.items():
        args = make_inputs(model.config, **inputs)
        with torch.no_grad(), use_backend("sdpa"):
            whole = model(*args)
            sharded = sharded_forward(model, world, par, *args)
        errors[name] = ((sharded - whole).abs().max() / whole.abs().max()).item()
    return errors


@pytest.mark.slow
def test_sequence_parallel_matches_one_process(tiny_checkpoint: Callable[..., tuple[Any, Any]]) -> None:
    folder, _ = tiny_checkpoint()
    results = run_ranks(f"{__file__}:suite", world=2, args=(str(folder),))
    for rank, errors in enumerate(results):
        assert set(errors) == set(CASES)
        for name, err in errors.items():
            assert err <= 1e-5, f"rank {rank}, {name}: max |sharded - whole| / max |whole| = {err:.3g}"
