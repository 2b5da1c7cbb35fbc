"""Sequence parallelism of the HunyuanVideo DiT on 2 CPU processes (gloo): video tokens sharded, text
tokens replicated, the same output as one process.

The model declares only ``sequence_parallel_plan`` and passes its text tokens to the attention seam as
``replicated``; the core's strategies (Ulysses all-to-all, ring attention) do the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastvideo.parallel.testing import run_ranks

CASES = {  # name -> (ParallelConfig kwargs, make_inputs kwargs)
    "ulysses-b1-padded-text": (dict(sp_size=2), dict(lengths=(5,))),
    "ulysses-b2-masked-text-odd-tokens": (dict(sp_size=2), dict(lengths=(5, 9), latent=(3, 6, 10))),
    "ring-b2-masked-text-odd-tokens": (dict(ring_size=2), dict(lengths=(5, 9), latent=(3, 6, 10))),
}


def _inputs(cfg: Any, lengths: tuple[int, ...], latent: tuple[int, int, int] = (3, 8, 8)) -> tuple[Any, ...]:
    """(latents, timestep, right-padded text, its mask, pooled, guidance); text of 12 tokens."""
    import torch

    gen = torch.Generator().manual_seed(0)
    b = len(lengths)
    mask = torch.tensor([[1] * n + [0] * (12 - n) for n in lengths])
    return (
        torch.randn(b, cfg.in_channels, *latent, generator=gen),
        (torch.rand(b, generator=gen) * 1000).round(),
        torch.randn(b, 12, cfg.text_embed_dim, generator=gen),
        mask,
        torch.randn(b, cfg.pooled_projection_dim, generator=gen),
        torch.full((b,), 6000.0),
    )


def suite(rank: int, world: int, folder: str) -> dict[str, float]:
    """On each rank: every case's max |sharded - whole| / max |whole|."""
    import torch

    from fastvideo.attention import use_backend
    from fastvideo.testing.parallel import sharded_forward
    from fastvideo_hunyuan.model import HunyuanTransformer

    torch.set_num_threads(1)  # two ranks share the CPU cores
    model = HunyuanTransformer.from_pretrained(folder, dtype=torch.float32)
    errors = {}
    for name, (par, inputs) in CASES.items():
        args = _inputs(model.config, **inputs)
        with torch.no_grad(), use_backend("sdpa"):
            whole = model(*args)
            sharded = sharded_forward(model, world, par, *args)
        errors[name] = ((sharded - whole).abs().max() / whole.abs().max()).item()
    return errors


def test_sequence_parallel_matches_one_process(tiny_checkpoint: Callable[..., tuple[Any, Any]]) -> None:
    folder, _ = tiny_checkpoint()
    results = run_ranks(f"{__file__}:suite", world=2, args=(str(folder),))
    for rank, errors in enumerate(results):
        assert set(errors) == set(CASES)
        for name, err in errors.items():
            assert err <= 1e-5, f"rank {rank}, {name}: max |sharded - whole| / max |whole| = {err:.3g}"
