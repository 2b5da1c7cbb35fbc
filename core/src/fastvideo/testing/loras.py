"""Test helpers for LoRA files in a pipeline, shared by the core's tests (on the example plugin) and
the model plugins' interop tests: a random LoRA written by our own layers, the frame error the
comparisons use, and the load / merge / unmerge / unload checks against a reference video.

The reference frames come from the caller (weights changed by hand, diffusers' own pipeline...);
``frames`` is the caller's function from a generator to its frames (float64, 0-255), so that each
test keeps its own prompt, sizes and initial latents. Torch is imported inside the functions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

#: the frame error below which two videos count as the same (mean absolute difference, 0-1 scale)
TOL = 1.0 / 255


def frame_error(a: Any, b: Any) -> float:
    """Mean absolute difference of two videos given on the 0-255 scale, as a fraction of 255."""
    import numpy as np

    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).mean() / 255)


def random_lora(
    family: Any,
    ckpt: Path,
    path: Path,
    *,
    rank: int,
    alpha: float,
    seed: int,
    targets: Sequence[str],
    std: float = 0.5,
) -> Path:
    """A LoRA file as one trained by us would be: our LoRA layers on ``family``'s DiT of ``ckpt``
    (fp32), with random non-zero ``B`` (``std``) so that it changes the output. Returns the file."""
    import torch

    from fastvideo.resolve import resolve
    from fastvideo.training import lora as L

    model = family.load_transformer(resolve(str(ckpt)), dtype="fp32")
    L.add_trainable_lora(model, tuple(targets), rank=rank, alpha=alpha, seed=seed)
    gen = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for layer in L.lora_layers(model).values():
            layer.lora_B["default"].copy_(torch.randn(layer.lora_B["default"].shape, generator=gen) * std)
    return L.save_lora_file(L.lora_tensors(model), family, path)


def assert_lora_changes_video(ref: Any, base: Any, tol: float = TOL) -> None:
    """The reference with the LoRA differs from the video without it (else a comparison would see nothing)."""
    assert frame_error(ref, base) > 3 * tol, (
        "the LoRA barely changes the video; the test would not detect errors"
    )


def check_lora_round_trip(
    gen: Any, path: Path, *, frames: Callable[[Any], Any], ref: Any, base: Any, tol: float = TOL
) -> None:
    """``gen.load_lora(path)`` gives ``ref`` (unmerged, then merged); unmerging and unloading give the
    DiT's weights back bit for bit, and the frames ``base`` of the generator without the LoRA."""
    import torch

    assert_lora_changes_video(ref, base, tol)
    w0 = {k: v.clone() for k, v in gen.pipeline.components["transformer"].state_dict().items()}
    name = gen.load_lora(path)
    assert gen.loras == {name: 1.0}
    assert frame_error(frames(gen), ref) <= tol
    gen.merge_loras()
    assert frame_error(frames(gen), ref) <= tol
    gen.unmerge_loras()
    gen.unload_lora(name)
    state = gen.pipeline.components["transformer"].state_dict()
    assert set(state) == set(w0) and all(torch.equal(state[k], w0[k]) for k in w0)
    assert frame_error(frames(gen), base) <= tol


def check_scaled_loras(
    gen: Any,
    first: Path,
    second: Path,
    *,
    scales: tuple[float, float],
    frames: Callable[[Any], Any],
    ref: Any,
    tol: float = TOL,
) -> None:
    """Two LoRA files (both named ``pytorch_lora_weights``, as :func:`random_lora` writes them) loaded
    with their scales set the three ways (``PATH:scale``, the ``scale`` argument changed later with
    ``set_lora_scale``) give ``ref``, unmerged and merged."""
    gen.load_lora(f"{first}:{scales[0]}")
    gen.load_lora(second, 1.0)
    gen.set_lora_scale("pytorch_lora_weights-1", scales[1])
    assert gen.loras == {"pytorch_lora_weights": scales[0], "pytorch_lora_weights-1": scales[1]}
    assert frame_error(frames(gen), ref) <= tol
    gen.merge_loras()
    assert frame_error(frames(gen), ref) <= tol


def check_foreign_lora_is_refused(gen: Any, tmp_path: Path, model: str) -> None:
    """A LoRA file for another architecture (UNet names) is refused with a one-line
    :class:`~fastvideo.errors.CheckpointError` naming ``model``'s DiT and the module, and a missing
    file with a ``ValueError``."""
    import pytest
    import torch
    from safetensors.torch import save_file

    from fastvideo.errors import CheckpointError

    path = tmp_path / "other.safetensors"
    save_file(
        {
            "transformer.unet.down.0.lora_A.weight": torch.zeros(2, 4),
            "transformer.unet.down.0.lora_B.weight": torch.zeros(4, 2),
        },
        str(path),
    )
    expected = rf"match no module of the {model} DiT: unet.down.0 \(is this LoRA for another model"
    with pytest.raises(CheckpointError, match=expected) as info:
        gen.load_lora(path)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="does not exist"):
        gen.load_lora(tmp_path / "missing.safetensors")
