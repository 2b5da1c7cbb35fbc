"""Helpers for kernel tests (the attention plugins' Triton kernels, run in the CPU interpreter, and the
models' use of :mod:`fastvideo.kernels`).

:func:`poisoned_empty` makes uninitialised memory read as NaN (integers: a large negative index) while
it is active, so a kernel that leaves part of an output unwritten fails its comparison instead of
passing on whatever the allocator returned. A plugin's ``conftest.py`` uses it as an autouse fixture::

    @pytest.fixture(autouse=True)
    def nan_empty():
        with poisoned_empty():
            yield

:func:`record_calls` counts which fused ops a model's forward takes; :func:`fused_and_unfused` runs a
module both ways (the fused kernels, then its PyTorch path) for a GPU test to compare.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


def _poison(t: torch.Tensor) -> torch.Tensor:
    if t.is_floating_point():
        t.fill_(float("nan"))
    elif t.dtype in (torch.int32, torch.int64):
        t.fill_(-(2**30))
    return t


def _forget_constructors() -> None:
    """``with torch.device(...)`` caches the identity of ``torch.empty`` & co. on first use; a cache
    filled while they are patched would break every later ``torch.device`` block in the process."""
    cached = getattr(getattr(torch.utils, "_device", None), "_device_constructors", None)
    if cached is not None and hasattr(cached, "cache_clear"):
        cached.cache_clear()


@contextmanager
def poisoned_empty() -> Iterator[None]:
    """``torch.empty``, ``torch.empty_like`` and ``Tensor.new_empty`` return poisoned memory inside."""
    real = (torch.empty, torch.empty_like, torch.Tensor.new_empty)
    empty, empty_like, new_empty = real
    torch.empty = lambda *a, **k: _poison(empty(*a, **k))  # type: ignore[assignment]
    torch.empty_like = lambda *a, **k: _poison(empty_like(*a, **k))  # type: ignore[assignment]
    torch.Tensor.new_empty = lambda self, *a, **k: _poison(new_empty(self, *a, **k))  # type: ignore[method-assign,misc]
    _forget_constructors()
    try:
        yield
    finally:
        torch.empty, torch.empty_like, torch.Tensor.new_empty = real  # type: ignore[misc,method-assign]
        _forget_constructors()


def record_calls(monkeypatch: Any, module: Any, *names: str) -> list[str]:
    """Wrap ``module.<name>`` for each of ``names`` (a pytest ``monkeypatch`` undoes it) so that every
    call appends its name to the returned list, then runs the real function."""
    calls: list[str] = []

    def wrap(real: Any, name: str) -> Any:
        def recorded(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            return real(*args, **kwargs)

        return recorded

    for name in names:
        monkeypatch.setattr(module, name, wrap(getattr(module, name), name))
    return calls


def fused_and_unfused(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
    """``(fused, unfused)``: ``fn(*args, **kwargs)`` without grad as it runs (the fused kernels where
    they are active) and with :func:`fastvideo.kernels.forced` ``(False)`` (the PyTorch path)."""
    from fastvideo import kernels

    with torch.no_grad():
        with kernels.forced(False):
            unfused = fn(*args, **kwargs)
        return fn(*args, **kwargs), unfused
