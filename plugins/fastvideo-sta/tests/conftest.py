"""Fixtures of the STA tests (and ``checkpoints``: tiny Wan / HunyuanVideo checkpoints written by the
installed family plugins).

Without a GPU the kernels run in Triton's CPU interpreter: ``TRITON_INTERPRET=1`` is set here,
before triton compiles anything, unless the caller chose otherwise. Every test runs with
``torch.empty`` (and ``Tensor.new_empty``, ``torch.empty_like``) returning NaN-filled memory, so a
kernel that leaves part of an output unwritten fails.
"""

from __future__ import annotations

import importlib.metadata as md
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from fastvideo.testing.kernels import poisoned_empty

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def nan_empty() -> Iterator[None]:
    """Uninitialised memory reads as NaN (ints: a large negative index) during the test."""
    with poisoned_empty():
        yield


#: This plugin and the families the tests generate with (test dependencies, see pyproject's test extra).
DISTRIBUTIONS = ("fastvideo-sta", "fastvideo-wan", "fastvideo-hunyuan", "fastvideo-stepvideo")


def _installed() -> None:
    for dist in DISTRIBUTIONS:
        try:
            md.distribution(dist)
        except md.PackageNotFoundError:
            pytest.fail(f"{dist} is not installed: pip install -e 'plugins/fastvideo-sta[test]'")


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """``checkpoints(family)``: the folder of a tiny checkpoint of ``family``, written on first use."""
    from fastvideo.cli import main
    from fastvideo.testing import fake_plugins

    _installed()
    root = tmp_path_factory.mktemp("tiny")

    def get(family: str) -> Path:
        if not (root / family).exists():
            with fake_plugins(autoload=DISTRIBUTIONS):
                try:
                    main([family, "make-tiny", str(root / family)])
                except SystemExit as exc:
                    assert exc.code in (0, None)
        return root / family

    return get
