"""Per-step state for attention backends, set by the denoising stage (never passed through models)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, kw_only=True)
class StepContext:
    """What a sparse attention backend may need to know about the current DiT forward.

    ``grid`` is the post-patchify token grid (T, H, W) of the video tokens, which are laid out
    first in the sequence in raster order; ``step_index`` counts denoising steps from 0.
    ``options`` holds the selected backend's option values by backend name (``{"vsa": {"sparsity":
    0.9}}``), checked and completed with the declared defaults; read them with
    :meth:`backend_options`.
    """

    grid: tuple[int, int, int] | None = None
    step_index: int = 0
    num_steps: int = 1
    timestep: float | None = None
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def backend_options(self, name: str) -> Mapping[str, Any]:
        """The option values of backend ``name`` (empty when none were given)."""
        return self.options.get(name, {})


# Module state rather than a ContextVar: torch.compile traces a global read without a graph break.
# One generation runs at a time per process (parallel ranks are processes).
_CURRENT: list[StepContext | None] = [None]


def current_step() -> StepContext | None:
    """The step context of the forward now running, or ``None`` outside a denoising step."""
    return _CURRENT[0]


@contextlib.contextmanager
def step_context(ctx: StepContext) -> Iterator[StepContext]:
    """Make ``ctx`` the current step context for the duration of the block."""
    previous, _CURRENT[0] = _CURRENT[0], ctx
    try:
        yield ctx
    finally:
        _CURRENT[0] = previous
