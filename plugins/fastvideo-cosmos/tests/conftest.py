"""Shared fixtures: tiny diffusers Cosmos DiT checkpoints written with ``save_pretrained``, and the
torch-only stand-in for the torchvision resize diffusers' reference calls (torchvision cannot be
imported next to the CPU torch)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(autouse=True, scope="session")
def _diffusers_without_torchvision() -> None:
    from fastvideo_cosmos.compat import patch_diffusers_resize

    patch_diffusers_resize()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., tuple[Path, Any]]:
    """``make(**overrides) -> (folder, diffusers CosmosTransformer3DModel in fp32)``, cached per overrides."""
    from fastvideo_cosmos.tiny import tiny_dit

    cache: dict[tuple, tuple[Path, Any]] = {}

    def make(**overrides: Any) -> tuple[Path, Any]:
        key = tuple(sorted(overrides.items()))
        if key not in cache:
            ref = tiny_dit(seed=len(cache), **overrides)
            folder = tmp_path_factory.mktemp("cosmos-dit")
            ref.save_pretrained(folder)
            cache[key] = (folder, ref)
        return cache[key]

    return make
