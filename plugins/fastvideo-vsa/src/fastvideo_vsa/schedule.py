"""The sparsity ramp of VSA training: start dense, reach the target sparsity over ``ramp_steps``."""

from __future__ import annotations

import math


def sparsity_at(step: int, target: float, ramp_steps: int, *, increment: float | None = None) -> float:
    """The sparsity to train with at optimizer step ``step`` (counted from 0).

    Grows linearly from 0 at step 0 to ``target`` at step ``ramp_steps`` and stays there. With
    ``increment`` it grows in stairs of that size instead (FastVideo's recipe: 0.03 per 50 steps is
    ``increment=0.03, ramp_steps=round(50 * target / 0.03)``), never exceeding ``target``.

    >>> sparsity_at(0, 0.9, 100), sparsity_at(50, 0.9, 100), sparsity_at(500, 0.9, 100)
    (0.0, 0.45, 0.9)

    :raises ValueError: ``target`` outside [0, 1), a negative ``step`` or ``ramp_steps``, or an
        ``increment`` that is not positive.
    """
    if not 0.0 <= target < 1.0:
        raise ValueError(f"target sparsity must be in [0, 1), got {target!r}")
    if step < 0 or ramp_steps < 0:
        raise ValueError(f"step and ramp_steps must be >= 0, got step={step}, ramp_steps={ramp_steps}")
    if increment is not None and not increment > 0:
        raise ValueError(f"increment must be > 0, got {increment!r}")
    frac = 1.0 if ramp_steps == 0 else min(1.0, step / ramp_steps)
    value = target * frac
    if increment is not None and frac < 1.0:
        value = math.floor(value / increment + 1e-9) * increment
    return min(value, target)
