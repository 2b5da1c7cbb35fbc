"""Tiny diffusers LTX-2 DiT checkpoints written with ``save_pretrained`` (the real format)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

TINY_DIT: dict[str, Any] = {
    "in_channels": 8,
    "out_channels": 8,
    "num_attention_heads": 2,
    "attention_head_dim": 16,
    "cross_attention_dim": 32,
    "audio_in_channels": 8,
    "audio_out_channels": 8,
    "audio_num_attention_heads": 2,
    "audio_attention_head_dim": 8,
    "audio_cross_attention_dim": 16,
    "num_layers": 2,
    "caption_channels": 24,
}


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., tuple[Path, Any]]:
    """``make(**overrides) -> (folder, diffusers LTX2VideoTransformer3DModel in fp32)``, cached."""
    from diffusers import LTX2VideoTransformer3DModel

    cache: dict[tuple, tuple[Path, Any]] = {}

    def make(**overrides: Any) -> tuple[Path, Any]:
        key = tuple(sorted(overrides.items()))
        if key not in cache:
            torch.manual_seed(len(cache))
            ref = LTX2VideoTransformer3DModel(**{**TINY_DIT, **overrides}).eval()
            with torch.no_grad():  # non-trivial tables, biases and norms: every term is exercised
                for name, p in ref.named_parameters():
                    if "scale_shift_table" in name or name.endswith("bias") or "norm" in name:
                        p.add_(torch.randn_like(p) * 0.1)
            folder = tmp_path_factory.mktemp("ltx2-dit")
            ref.save_pretrained(folder)
            cache[key] = (folder, ref)
        return cache[key]

    return make
