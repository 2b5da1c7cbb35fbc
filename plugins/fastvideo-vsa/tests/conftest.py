"""Fixtures of the VSA tests.

Without a GPU the kernels run in Triton's CPU interpreter: ``TRITON_INTERPRET=1`` is set here,
before triton compiles anything, unless the caller chose otherwise. Every test runs with
``torch.empty`` (and ``Tensor.new_empty``, ``torch.empty_like``) returning NaN-filled memory, so a
kernel that leaves part of an output unwritten fails.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

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
