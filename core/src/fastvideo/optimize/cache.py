"""Step caches and the text key/value cache.

**Step caches** skip DiT forwards between nearby denoising steps and reuse the prediction of the last
computed step of the same CFG branch (each branch keeps its own state, so CFG parallelism works as
it is). They wrap the denoising stage's ``guidance``: the model it calls is replaced, per branch, by
a :class:`StepCache` that decides whether to compute. Decisions that need a look inside the forward
use forward hooks on the DiT's modules and stop the forward early (:class:`_Reuse`) when the cached
prediction is good enough:

* ``teacache`` (Liu et al., "Timestep Embedding Tells: It's Time to Cache for Video Diffusion
  Model", CVPR 2025): the relative L1 change of the timestep modulation (the output of the module
  the DiT names in ``timestep_modulation``), rescaled by the DiT's polynomial
  (``teacache_coefficients()``, fitted per model by the TeaCache authors), is accumulated over
  skipped steps; a step is computed when the sum reaches the threshold (default 0.08). The first
  10 % of the steps and the last one are always computed (TeaCache's "ret steps" mode).
* ``firstblock`` (ParaAttention's First Block Cache): the first block runs; when its residual
  (output - input) differs from the one of the last computed step by less than the threshold
  (relative L1, default 0.05), the rest of the forward is skipped.
* ``magcache`` (Ma et al., "MagCache: Fast Video Generation with Magnitude-Aware Cache", 2025): the
  error of reusing is estimated from the ratio of prediction magnitudes between consecutive steps
  (measured online on the computed steps of each branch), accumulated while skipping; a step is
  computed when the accumulated error reaches the threshold (default 0.06) or after 3 skips in a
  row; the first 20 % of the steps are always computed.

**The text key/value cache** (lossless, on by default): modules whose input is text only (the text
embedding, cross-attention key and value projections: the DiT lists them in ``text_kv_layers``)
return their stored output when called again with the same input (the same tensor, or an equal
one), so text projections are computed once per prompt and branch instead of once per step.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

#: The published default thresholds (TeaCache4Wan2.1 1.3B range 0.05-0.08; diffusers' FirstBlockCacheConfig
#: 0.05; MagCache 0.06).
DEFAULT_THRESHOLDS = {"teacache": 0.08, "firstblock": 0.05, "magcache": 0.06}


class _Reuse(Exception):
    """Raised from a hook to stop a forward whose prediction will be reused."""


def _first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        for v in value:
            if isinstance(v, torch.Tensor):
                return v
    return None


def _rel_l1(new: torch.Tensor, old: torch.Tensor) -> float:
    return float((new.float() - old.float()).abs().mean() / old.float().abs().mean().clamp(min=1e-12))


class StepCache:
    """The state of one step cache for one CFG branch of one denoising stage.

    :meth:`__call__` runs (or skips) one DiT call; ``step`` / ``num_steps`` are set by the stage's
    step hook before each step. ``stats`` counts ``computed`` and ``reused`` calls.
    """

    kind = "none"

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.step = 0
        self.num_steps = 1
        self.cached: torch.Tensor | None = None
        self.model: Any = None
        self.stats = {"computed": 0, "reused": 0}

    def reset(self) -> None:
        self.cached = None

    def __call__(self, model: Callable[..., torch.Tensor], kwargs: dict[str, Any]) -> torch.Tensor:
        if model is not self.model:  # a new model (the second expert of an MoE): nothing to reuse
            self.model = model
            self.reset()
        if self.cached is not None and self.skip_before():
            return self._reuse()
        try:
            out = self.run(model, kwargs)
        except _Reuse:
            return self._reuse()
        self.computed(out)
        self.cached = out
        self.stats["computed"] += 1
        return out

    def _reuse(self) -> torch.Tensor:
        self.stats["reused"] += 1
        assert self.cached is not None
        return self.cached

    def forced(self, warmup: float) -> bool:
        """Steps always computed: the first ``warmup`` fraction and the last one."""
        return self.step < max(1, math.ceil(warmup * self.num_steps)) or self.step >= self.num_steps - 1

    # -- policy
    def skip_before(self) -> bool:
        """Decide before the forward (False: run it; hooks may still stop it)."""
        return False

    def run(self, model: Callable[..., torch.Tensor], kwargs: dict[str, Any]) -> torch.Tensor:
        return model(**kwargs)

    def computed(self, out: torch.Tensor) -> None:
        """Called with the prediction of a computed step."""


def _module(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise ValueError(
            f"{type(model).__name__} declares module {name!r} for caching but has none"
        ) from None


class TeaCache(StepCache):
    kind = "teacache"

    def __init__(self, threshold: float) -> None:
        super().__init__(threshold)
        self.previous: torch.Tensor | None = None
        self.accumulated = 0.0
        self.coefficients: tuple[float, ...] | None = None
        self._hooked: set[int] = set()

    def reset(self) -> None:
        super().reset()
        self.previous, self.accumulated = None, 0.0

    def run(self, model: Any, kwargs: dict[str, Any]) -> torch.Tensor:
        name = getattr(model, "timestep_modulation", None)
        if name is None:
            raise ValueError(
                f"--cache teacache needs a DiT that declares timestep_modulation; {type(model).__name__} "
                "declares none: use --cache firstblock or magcache"
            )
        if id(model) not in self._hooked:
            self._hooked.add(id(model))
            self.coefficients = model.teacache_coefficients()
            _module(model, name).register_forward_hook(self._hook)
        self._active = True
        try:
            return model(**kwargs)
        finally:
            self._active = False

    @torch.compiler.disable
    def _hook(self, module: nn.Module, args: Any, output: Any) -> None:
        if not getattr(self, "_active", False):
            return
        e = _first_tensor(output)
        assert e is not None
        previous, self.previous = self.previous, e.detach()
        if previous is None or self.cached is None or self.forced(0.1):
            self.accumulated = 0.0
            return
        distance = _rel_l1(e, previous)
        if self.coefficients:
            distance = abs(sum(c * distance**i for i, c in enumerate(reversed(self.coefficients))))
        self.accumulated += distance
        if self.accumulated < self.threshold:
            raise _Reuse
        self.accumulated = 0.0


class FirstBlockCache(StepCache):
    kind = "firstblock"

    def __init__(self, threshold: float) -> None:
        super().__init__(threshold)
        self.residual: torch.Tensor | None = None
        self._hooked: set[int] = set()
        self._active = False

    def reset(self) -> None:
        super().reset()
        self.residual = None

    def run(self, model: Any, kwargs: dict[str, Any]) -> torch.Tensor:
        if id(model) not in self._hooked:
            self._hooked.add(id(model))
            first = next(iter(model.blocks_in_order()))
            first.register_forward_hook(self._hook, with_kwargs=True)
        self._active = True
        try:
            return model(**kwargs)
        finally:
            self._active = False

    @torch.compiler.disable
    def _hook(self, module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
        if not self._active:
            return
        self._active = False  # only the first block of this forward
        x_in = _first_tensor(args) if args else _first_tensor(list(kwargs.values()))
        x_out = _first_tensor(output)
        assert x_in is not None and x_out is not None
        residual = (x_out - x_in).detach()
        if self.residual is not None and self.cached is not None and not self.forced(0.0):
            if _rel_l1(residual, self.residual) < self.threshold:
                raise _Reuse
        self.residual = residual


class MagCache(StepCache):
    kind = "magcache"
    max_skips = 3
    retention = 0.2

    def __init__(self, threshold: float) -> None:
        super().__init__(threshold)
        self.ratio = 1.0  # |pred_t| / |pred_t-1| of the last two consecutive computed steps
        self.last_norm: float | None = None
        self.last_step = -2
        self._accumulate_reset()

    def _accumulate_reset(self) -> None:
        self.acc_ratio, self.acc_error, self.skips = 1.0, 0.0, 0

    def reset(self) -> None:
        super().reset()
        self.ratio, self.last_norm, self.last_step = 1.0, None, -2
        self._accumulate_reset()

    def skip_before(self) -> bool:
        if self.forced(self.retention):
            return False
        self.acc_ratio *= self.ratio
        self.acc_error += abs(1.0 - self.acc_ratio)
        self.skips += 1
        if self.acc_error < self.threshold and self.skips <= self.max_skips:
            return True
        return False

    def computed(self, out: torch.Tensor) -> None:
        norm = float(out.float().norm())
        if self.last_norm is not None and self.last_step == self.step - 1 and self.last_norm > 0:
            self.ratio = norm / self.last_norm
        self.last_norm, self.last_step = norm, self.step
        self._accumulate_reset()


CACHE_CLASSES: dict[str, type[StepCache]] = {
    "teacache": TeaCache,
    "firstblock": FirstBlockCache,
    "magcache": MagCache,
}


class CachedGuidance:
    """Wraps a denoising stage's ``guidance``: each CFG branch's DiT call goes through its own
    :class:`StepCache` (branches are told apart by call order within one step)."""

    def __init__(self, inner: Callable[..., torch.Tensor], kind: str, threshold: float | None) -> None:
        self.inner = inner
        self.kind = kind
        self.threshold = DEFAULT_THRESHOLDS[kind] if threshold is None else threshold
        self.branches: list[StepCache] = []
        self.step = 0
        self.num_steps = 1
        self._branch = 0

    def _cache(self, i: int) -> StepCache:
        while len(self.branches) <= i:
            self.branches.append(CACHE_CLASSES[self.kind](self.threshold))
        cache = self.branches[i]
        cache.step, cache.num_steps = self.step, self.num_steps
        return cache

    def new_generation(self) -> None:
        for cache in self.branches:
            cache.reset()

    @property
    def stats(self) -> dict[str, int]:
        """DiT calls computed and reused, over all branches since the generator was built."""
        return {k: sum(c.stats[k] for c in self.branches) for k in ("computed", "reused")}

    def __call__(self, model: Any, inputs: Any, cond: Any, uncond: Any, scale: float) -> torch.Tensor:
        self._branch = 0

        def branch_model(**kwargs: Any) -> torch.Tensor:
            cache = self._cache(self._branch)
            self._branch += 1
            return cache(model, kwargs)

        return self.inner(branch_model, inputs, cond, uncond, scale)


def step_hook_for(guidance: CachedGuidance) -> Any:
    """The denoising-stage step hook that tells ``guidance`` the step index (and resets it at step 0)."""
    from fastvideo.pipelines.stages import StepHook

    class _StepIndex(StepHook):
        def before_step(self, stage: Any, batch: Any, step: Any) -> None:
            if step.index == 0:
                guidance.new_generation()
            guidance.step, guidance.num_steps = step.index, step.num_steps

    return _StepIndex()


def memo_reset_hook(memos: list[_Memo]) -> Any:
    """A step hook that empties ``memos`` before the first step of each generation (weights, LoRA
    scales or the prompt may have changed since the last one) and after its last step, so that the
    stored keys and values (about 0.2 GiB for Wan 1.3B with CFG) do not sit on the card through the
    VAE decode, where a generation's memory peaks."""
    from fastvideo.pipelines.stages import StepHook

    def clear() -> None:
        for memo in memos:
            memo.entries = []

    class _ResetMemos(StepHook):
        def before_step(self, stage: Any, batch: Any, step: Any) -> None:
            if step.index == 0:
                clear()

        def after_step(self, stage: Any, batch: Any, step: Any, pred: Any, latents: Any) -> None:
            if step.index == step.num_steps - 1:
                clear()

    return _ResetMemos()


# ---------------------------------------------------------------- the text key/value cache


class _Memo:
    """Stores ``module``'s last outputs by input; returns the stored output for the same input."""

    def __init__(self, module: nn.Module, slots: int = 2) -> None:
        self.forward = module.forward
        self.slots = slots
        self.entries: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.hits = 0
        self.misses = 0

    @staticmethod
    def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
        if a is b:
            return True
        if a.shape != b.shape or a.dtype != b.dtype or a.device != b.device:
            return False
        return bool(torch.equal(a, b))

    @torch.compiler.disable
    def __call__(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if args or kwargs or not isinstance(x, torch.Tensor) or torch.is_grad_enabled():
            return self.forward(x, *args, **kwargs)
        # the same tensor first (no device sync: the usual case, step after step), then an equal one
        hit = next((i for i, (inp, _) in enumerate(self.entries) if inp is x), None)
        if hit is None:
            hit = next((i for i, (inp, _) in enumerate(self.entries) if self._same(inp, x)), None)
        if hit is not None:
            self.hits += 1
            return self.entries[hit][1]
        self.misses += 1
        out = self.forward(x)
        self.entries = [(x, out), *self.entries][: self.slots]
        return out


def text_kv_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules of ``model`` that its ``text_kv_layers`` globs name."""
    patterns = getattr(model, "text_kv_layers", ())
    return [
        (n, m) for n, m in model.named_modules() if n and any(fnmatch.fnmatchcase(n, p) for p in patterns)
    ]


def enable_text_kv_cache(model: nn.Module, slots: int = 2) -> list[_Memo]:
    """Memoize ``model``'s text-only modules (lossless); returns the memos (their hits and misses)."""
    memos = []
    for _name, module in text_kv_modules(model):
        if isinstance(module.__dict__.get("forward"), _Memo):
            memos.append(module.__dict__["forward"])
            continue
        memo = _Memo(module, slots)
        module.forward = memo  # type: ignore[method-assign]  # an instance attribute; the class is untouched
        memos.append(memo)
    return memos


def disable_text_kv_cache(model: nn.Module) -> None:
    for _name, module in text_kv_modules(model):
        if isinstance(module.__dict__.get("forward"), _Memo):
            del module.forward
