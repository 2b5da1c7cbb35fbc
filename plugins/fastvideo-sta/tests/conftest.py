"""Fixtures of the STA tests.

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

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

_REAL = {"empty": torch.empty, "empty_like": torch.empty_like, "new_empty": torch.Tensor.new_empty}


def _poison(t: torch.Tensor) -> torch.Tensor:
    if t.is_floating_point():
        t.fill_(float("nan"))
    elif t.dtype in (torch.int32, torch.int64):
        t.fill_(-(2**30))
    return t


def _forget_constructors() -> None:
    """``with torch.device(...)`` caches the identity of ``torch.empty`` & co. on first use; a cache
    filled while they are patched would break every later ``torch.device`` block in the session."""
    cached = getattr(getattr(torch.utils, "_device", None), "_device_constructors", None)
    if cached is not None and hasattr(cached, "cache_clear"):
        cached.cache_clear()


@pytest.fixture(autouse=True)
def nan_empty(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Uninitialised memory reads as NaN (ints: a large negative index) during the test."""
    monkeypatch.setattr(torch, "empty", lambda *a, **k: _poison(_REAL["empty"](*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: _poison(_REAL["empty_like"](*a, **k)))
    monkeypatch.setattr(
        torch.Tensor, "new_empty", lambda self, *a, **k: _poison(_REAL["new_empty"](self, *a, **k))
    )
    _forget_constructors()
    yield
    monkeypatch.undo()
    _forget_constructors()
