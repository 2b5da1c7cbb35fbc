"""Backend selection and the :func:`attention` dispatcher."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Collection, Iterator
from typing import TYPE_CHECKING

from fastvideo.errors import BackendUnavailableError, UnknownNameError
from fastvideo.registry import get_registry, unknown_name_message

if TYPE_CHECKING:
    import torch

    from fastvideo.interfaces.attention import AttentionBackend

logger = logging.getLogger(__name__)

#: Allow-list sentinels for layers: ``DENSE`` admits only exact backends (cross-attention),
#: ``ALL`` admits sparse ones too (video self-attention).
DENSE = "dense"
ALL = "all"
ENV_VAR = "FASTVIDEO_ATTENTION_BACKEND"

# Plain module state (not ContextVars or locks) so torch.compile traces attention() without graph
# breaks: the forced backend name and the instances, filled before the first traced call.
_FORCED: list[str | None] = [None]
_INSTANCES: dict[str, AttentionBackend] = {}


def _classes() -> dict[str, type[AttentionBackend]]:
    reg = get_registry()
    return {n: e.cls for n, e in reg.entries["attention_backend"].items()}  # type: ignore[misc]


def available_backends() -> list[str]:
    """Names of the backends that can run here, best first."""
    classes = _classes()
    ok = [c for c in classes.values() if c.is_available()]
    return [c.name for c in sorted(ok, key=lambda c: (-c.priority, c.name))]


def resolve_backend_name(requested: str | None = None) -> str:
    """The backend that runs when ``requested`` (or the env var, or nothing) is asked for.

    An explicit request for an unknown or unavailable backend raises; an automatic choice takes
    the best available backend.
    """
    classes = _classes()
    name = requested or os.environ.get(ENV_VAR) or None
    if name is not None:
        name = name.strip().lower().replace("_", "-")
        if name not in classes:
            raise UnknownNameError(unknown_name_message("attention_backend", name, sorted(classes)))
        reason = classes[name].unavailable_reason()
        if reason is not None:
            hint = f" (pip install {classes[name].requires})" if classes[name].requires else ""
            raise BackendUnavailableError(f"Attention backend {name!r} cannot run here: {reason}{hint}")
        return name
    avail = [n for n in available_backends() if not classes[n].sparse]
    if not avail:
        raise BackendUnavailableError("No attention backend can run here; install torch>=2.5 for 'sdpa'")
    return avail[0]


def get_backend(name: str) -> AttentionBackend:
    """The (cached) instance of the backend registered as ``name``."""
    backend = _INSTANCES.get(name)
    if backend is None:
        backend = _INSTANCES[name] = _classes()[name]()
    return backend


@contextlib.contextmanager
def use_backend(name: str | None) -> Iterator[str]:
    """Force a backend for the calls made inside the block (``None`` = automatic choice).

    Resolves and validates the name on entry, so a bad request fails before any work.
    """
    resolved = resolve_backend_name(name)
    get_backend(resolved)
    for dense in _dense_candidates():  # instantiate fallbacks now, outside any compiled region
        get_backend(dense)
    previous, _FORCED[0] = _FORCED[0], resolved
    try:
        yield resolved
    finally:
        _FORCED[0] = previous


@functools.lru_cache(maxsize=1)
def _dense_candidates() -> tuple[str, ...]:
    classes = _classes()
    return tuple(n for n in available_backends() if not classes[n].sparse)


def _dense_fallback(
    allow: str | Collection[str],
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None,
) -> AttentionBackend:
    """The best available dense backend that takes these inputs, preferring those ``allow`` names."""
    backends = [get_backend(n) for n in _dense_candidates()]
    for backend in sorted(backends, key=lambda b: not _admits(allow, b)):  # stable: keeps priority order
        if backend.supports(q, k, v, attn_mask=attn_mask) is None:
            return backend
    raise BackendUnavailableError(
        f"No dense attention backend can take these inputs here (available dense backends: "
        f"{', '.join(_dense_candidates()) or 'none'}); install torch>=2.5 for 'sdpa'"
    )


def _admits(allow: str | Collection[str], backend: AttentionBackend) -> bool:
    if allow == ALL:
        return True
    if allow == DENSE:
        return not backend.sparse
    return backend.name in allow


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    attn_mask: torch.Tensor | None = None,
    scale: float | None = None,
    is_causal: bool = False,
    allow: str | Collection[str] = DENSE,
) -> torch.Tensor:
    """Scaled dot-product attention on ``[B, L, H, D]`` tensors through the selected backend.

    :param allow: the layer's allow-list: ``DENSE`` (default; exact backends only), ``ALL``, or a
        collection of backend names. A backend outside it, or one whose ``supports`` declines the
        inputs, is replaced by the best available dense backend that takes the inputs (one the
        allow-list names, if any).
    :returns: ``[B, Lq, H, Dv]``.
    """
    from fastvideo.attention.context import current_step

    name = _FORCED[0]
    if name is None:
        name = _auto_name()
    backend = _INSTANCES.get(name) or get_backend(name)
    if not _admits(allow, backend) or backend.supports(q, k, v, attn_mask=attn_mask) is not None:
        backend = _dense_fallback(allow, q, k, v, attn_mask)
    return backend.forward(q, k, v, attn_mask=attn_mask, scale=scale, is_causal=is_causal, step=current_step())


@functools.lru_cache(maxsize=8)
def _auto_name_for(env_value: str | None) -> str:
    return resolve_backend_name(env_value)


def _auto_name() -> str:
    return _auto_name_for(os.environ.get(ENV_VAR) or None)


def clear_caches() -> None:
    """Forget cached backend instances and choices (after the registry changes)."""
    _INSTANCES.clear()
    _dense_candidates.cache_clear()
    _auto_name_for.cache_clear()
