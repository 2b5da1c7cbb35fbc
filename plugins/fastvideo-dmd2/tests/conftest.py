"""Fixtures of the DMD2 tests: the tiny Wan that fastvideo-wan ships (``wan-toy``, 1.2 M parameters),
reached through the core's registry as a user reaches it (the family plugin is never imported), and
a synthetic latent dataset of its shape."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

DISTRIBUTIONS = ("fastvideo-dmd2", "fastvideo-wan", "fastvideo-vsa")
LATENT = (8, 3, 8, 8)  # wan-toy: 8 latent channels; token grid (3, 4, 4) with its (1, 2, 2) patches
TEXT_DIM = 64  # wan-toy's text encoder width

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # vsa's kernels on the CPU (the sparse-student test)


@pytest.fixture
def plugins() -> Iterator[None]:
    from fastvideo.testing import fake_plugins

    with fake_plugins(autoload=DISTRIBUTIONS):
        yield


@pytest.fixture(scope="session")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fastvideo.training.data import write_synthetic_dataset

    return write_synthetic_dataset(
        tmp_path_factory.mktemp("dmd2-data"),
        count=8,
        latent_shape=LATENT,
        text_dim=TEXT_DIM,
        max_sequence_length=16,
    )


@pytest.fixture
def dmd2_config() -> Any:
    """``dmd2_config(dataset, out, **overrides)``: the TrainConfig of a small dmd2 run on ``wan-toy``."""
    return _config


def _config(dataset: Path, out: Path, **overrides: Any) -> Any:
    from fastvideo.training.config import load_config

    base = {
        "algorithm": "dmd2",
        "model.path": "wan-toy",
        "data.path": str(dataset),
        "output_dir": str(out),
        "max_steps": 10,
        "device": "cpu",  # the hand computations run on the CPU, also on a machine with a GPU
        "mixed_precision": "fp32",
        "data.batch_size": 2,
        "logging.every_steps": 100,
        "export.enabled": False,
        "algorithm_options.guidance_scale": 3.0,
        "roles.student.optim.lr": 1e-3,
        "roles.critic.optim.lr": 1e-3,
    }
    return load_config(None, {**base, **overrides})
