"""Shared fixtures: tiny diffusers LTX-Video checkpoints written with ``save_pretrained`` (the real format).

No environment switches here: the pipeline tests need the installed ``ltx`` entry point. Model tests
pin the attention backend with ``use_backend("sdpa")`` instead, so other installed plugins cannot
change their numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., tuple[Path, Any]]:
    """``make(**overrides) -> (folder, diffusers LTXVideoTransformer3DModel in fp32)``, cached per overrides."""
    from fastvideo_ltx.ltxv.tiny import tiny_dit

    cache: dict[tuple, tuple[Path, Any]] = {}

    def make(**overrides: Any) -> tuple[Path, Any]:
        key = tuple(sorted(overrides.items()))
        if key not in cache:
            ref = tiny_dit(seed=len(cache) + 1, **overrides)
            folder = tmp_path_factory.mktemp("ltx-dit")
            ref.save_pretrained(folder)
            cache[key] = (folder, ref)
        return cache[key]

    return make
