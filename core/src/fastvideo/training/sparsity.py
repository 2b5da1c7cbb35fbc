"""The sparsity ramp of sparse attention backends (``vsa``) during training.

A dense checkpoint is adapted to sparse attention by raising the sparsity step by step, from 0 at
the first optimisation step to ``target`` after ``ramp_steps`` steps. With ``increment`` the ramp
is a staircase of multiples of it (FastVideo's VSA recipe: target 0.9 in increments of 0.03 every
50 steps, i.e. ``ramp_steps = 1500``). The trainer puts the value into the attention step context
(:attr:`fastvideo.attention.context.StepContext.sparsity`), where the backend reads it.
"""

from __future__ import annotations

import math


def sparsity_at(step: int, target: float, ramp_steps: int = 0, increment: float = 0.0) -> float:
    """Sparsity for the optimisation step after ``step`` completed ones (counted from 0).

    ``target * min(1, step / ramp_steps)`` (``target`` from the start when ``ramp_steps`` is 0);
    with ``increment > 0`` the rising part is rounded down to multiples of it. Never above ``target``.
    """
    if not 0.0 <= target < 1.0:
        raise ValueError(f"target sparsity must be in [0, 1), got {target}")
    if ramp_steps < 0 or step < 0:
        raise ValueError(f"step and ramp_steps must be >= 0, got step={step}, ramp_steps={ramp_steps}")
    if increment < 0:
        raise ValueError(f"increment must be >= 0, got {increment}")
    frac = 1.0 if ramp_steps == 0 else min(1.0, step / ramp_steps)
    value = target * frac
    if increment > 0 and frac < 1.0:
        # the 1e-9 keeps e.g. 0.9 / 0.03 = 29.999999... from losing a whole increment
        value = math.floor(value / increment + 1e-9) * increment
    return min(target, round(value, 12))
