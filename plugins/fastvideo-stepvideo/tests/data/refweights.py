"""Seeded random weights for the tiny reference models, shared by ``make_reference.py`` and the tests:
the same names, shapes and seed give the same tensors on any machine (CPU generator), so the VAE and
Step-LLM fixtures store only the recipe (``*_recipe.json``) and their inputs/outputs."""

from __future__ import annotations

import math

import torch


def seeded_state(shapes: list[tuple[str, list[int]]], seed: int) -> dict[str, torch.Tensor]:
    """One tensor per ``(name, shape)`` in the given order: norm weights ``1 + 0.1 N``, biases
    ``0.05 N``, other weights ``N / sqrt(fan_in)``."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in shapes:
        noise = torch.randn(shape, generator=g)
        leaf = name.rsplit(".", 2)
        if name.endswith("bias"):
            out[name] = noise * 0.05
        elif "norm" in leaf[-2] or len(shape) == 1:
            out[name] = 1.0 + 0.1 * noise
        else:
            out[name] = noise / math.sqrt(math.prod(shape[1:]))
    return out
