"""Shared fixtures: tiny diffusers Wan DiT checkpoints written with ``save_pretrained`` (the real format).

No environment switches here: ``test_pipeline.py`` needs the installed ``wan`` entry point. Model
tests pin the attention backend with ``use_backend("sdpa")`` instead, so other installed plugins
cannot change their numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

TINY: dict[str, Any] = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=16,
    in_channels=16,
    out_channels=16,
    text_dim=32,
    freq_dim=32,
    ffn_dim=64,
    num_layers=2,
    rope_max_seq_len=32,
)


def randomize_(model: torch.nn.Module, seed: int = 0, std: float = 0.2) -> None:
    """Give every parameter random values (init leaves norms at 1 and biases/tables at 0)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., tuple[Path, Any]]:
    """``make(**overrides) -> (folder, diffusers WanTransformer3DModel in fp32)``, cached per overrides."""
    from diffusers import WanTransformer3DModel

    cache: dict[tuple, tuple[Path, Any]] = {}

    def make(**overrides: Any) -> tuple[Path, Any]:
        key = tuple(sorted(overrides.items()))
        if key not in cache:
            ref = WanTransformer3DModel(**{**TINY, **overrides}).eval()
            randomize_(ref, seed=len(cache))
            folder = tmp_path_factory.mktemp("wan-dit")
            ref.save_pretrained(folder)
            cache[key] = (folder, ref)
        return cache[key]

    return make
