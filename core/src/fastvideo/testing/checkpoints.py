"""Helpers for plugins' checkpoint tests: damaged copies of a diffusers folder, rule sanity checks."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"


def rewrite_checkpoint(src: Path, dst: Path, edit: Callable[[dict[str, torch.Tensor]], None]) -> Path:
    """Copy a single-file diffusers folder ``src`` to ``dst``, passing its state dict through ``edit``."""
    from safetensors.torch import load_file, save_file

    dst.mkdir()
    shutil.copy(src / "config.json", dst / "config.json")
    state = load_file(src / WEIGHTS_NAME)
    edit(state)
    save_file(state, dst / WEIGHTS_NAME)
    return dst


def assert_same_placeholders(rules: Sequence[tuple[str, str]]) -> None:
    """Each ``(their template, our template)`` rule uses the same ``{placeholders}`` on both sides."""
    for theirs, ours in rules:
        want, got = sorted(re.findall(r"\{(\w+)\}", theirs)), sorted(re.findall(r"\{(\w+)\}", ours))
        assert want == got, f"rule {theirs} -> {ours}: placeholders {want} vs {got}"
