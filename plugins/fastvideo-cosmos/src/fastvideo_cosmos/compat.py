"""Run diffusers' Cosmos reference where torchvision cannot be imported (the CPU test machines).

diffusers' ``CosmosTransformer3DModel`` resizes the padding mask with
``torchvision.transforms.functional.resize(..., NEAREST)``; :func:`patch_diffusers_resize` gives
its module a torch-only stand-in with the same result (nearest-neighbour interpolation) when
torchvision is missing. Used by the tests and the benchmark, never by the pipelines.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any


def _resize(img: Any, size: list[int], interpolation: Any = None) -> Any:
    import torch.nn.functional as F

    return F.interpolate(img[None] if img.ndim == 3 else img, size=list(size), mode="nearest")


def patch_diffusers_resize() -> None:
    """Give diffusers' Cosmos transformer module a ``transforms`` namespace if torchvision is absent."""
    from diffusers.models.transformers import transformer_cosmos

    if getattr(transformer_cosmos, "transforms", None) is None:
        transformer_cosmos.transforms = SimpleNamespace(  # type: ignore[attr-defined]
            functional=SimpleNamespace(resize=_resize),
            InterpolationMode=SimpleNamespace(NEAREST="nearest"),
        )


def _to_tensor(image: Any) -> Any:
    import numpy as np
    import torch

    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)


def patch_diffusers_to_tensor() -> None:
    """Give diffusers' Predict2.5 pipeline module ``torchvision.transforms.functional.to_tensor``
    (PIL -> float CHW in [0, 1]) if torchvision is absent (its image-to-world path calls it)."""
    from diffusers.pipelines.cosmos import pipeline_cosmos2_5_predict as module

    if getattr(module, "torchvision", None) is None:
        module.torchvision = SimpleNamespace(  # type: ignore[attr-defined]
            transforms=SimpleNamespace(functional=SimpleNamespace(to_tensor=_to_tensor))
        )
