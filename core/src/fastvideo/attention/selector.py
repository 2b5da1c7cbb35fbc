"""Backend selection and the :func:`attention` dispatcher."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Callable, Collection, Iterator
from typing import TYPE_CHECKING, Any

from fastvideo.errors import BackendUnavailableError, UnknownNameError, warn_once
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
            missing = classes[name].requires and "not installed" in reason  # else installing won't help
            hint = f" (pip install {classes[name].requires})" if missing else ""
            raise BackendUnavailableError(f"Attention backend {name!r} cannot run here: {reason}{hint}")
        return name
    # Sparse backends are never chosen automatically, so their availability (which may need torch
    # or a GPU probe) is not even asked.
    # Dense ones are asked best first, and no further than the first that can run (a low-priority
    # backend's probe may import torch).
    dense = sorted((c for c in classes.values() if not c.sparse), key=lambda c: (-c.priority, c.name))
    best = next((c.name for c in dense if c.is_available()), None)
    if best is None:
        raise BackendUnavailableError("No attention backend can run here; install torch>=2.5 for 'sdpa'")
    return best


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


def select_backend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    allow: str | Collection[str] = DENSE,
) -> AttentionBackend:
    """The backend that a call with these inputs and this allow-list runs on (see :func:`attention`)."""
    name = _FORCED[0]
    if name is None:
        name = _auto_name()
    backend = _INSTANCES.get(name) or get_backend(name)
    if not _admits(allow, backend):  # e.g. cross-attention under a sparse backend: expected, silent
        return _dense_fallback(allow, q, k, v, attn_mask)
    reason = backend.supports(q, k, v, attn_mask=attn_mask)
    if reason is not None:
        fallback = _dense_fallback(allow, q, k, v, attn_mask)
        warn_once(
            f"attention backend {backend.name!r} cannot take this call ({reason}); using {fallback.name!r}",
            stacklevel=3,
        )
        return fallback
    return backend


#: The sparse attention layers whose forward is running, innermost last, with their input hidden
#: states: pushed and popped by the hooks that :mod:`fastvideo.attention.layers` puts on layers
#: holding a backend's modules (plain module state, like _FORCED).
_LAYERS: list[tuple[Any, torch.Tensor | None]] = []


def _requested() -> AttentionBackend:
    name = _FORCED[0]
    if name is None:
        name = _auto_name()
    return _INSTANCES.get(name) or get_backend(name)


def layer_inputs(q: torch.Tensor) -> dict[str, Any]:
    """The selected backend's extra ``forward`` arguments for this call, computed by its modules of
    the layer now running (see ``AttentionBackend.layer_modules``); empty elsewhere."""
    if not _LAYERS:
        return {}
    backend = _requested()
    if not backend.layer_modules:
        return {}
    layer, hidden = _LAYERS[-1]
    if hidden is None or any(getattr(layer, m.name, None) is None for m in backend.layer_modules):
        return {}
    return backend.layer_inputs(layer, hidden, q)


def attention_local(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    attn_mask: torch.Tensor | None = None,
    scale: float | None = None,
    is_causal: bool = False,
    allow: str | Collection[str] = DENSE,
    extras: dict[str, Any] | None = None,
) -> torch.Tensor:
    """:func:`attention` on this process's tensors only, never communicating.

    ``extras``: what :func:`layer_inputs` returned for the call; passed on only when the selected
    backend runs (not a dense fallback).
    """
    from fastvideo.attention.context import current_step

    backend = select_backend(q, k, v, attn_mask, allow)
    extra = extras if extras and backend is _requested() else {}
    return backend.forward(
        q, k, v, attn_mask=attn_mask, scale=scale, is_causal=is_causal, step=current_step(), **extra
    )


def joint_local(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    replicated: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    replicated_mask: torch.Tensor | None = None,
    *,
    scale: float | None = None,
    allow: str | Collection[str] = DENSE,
    extras: dict[str, Any] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention over ``[q; replicated q]`` etc. (tokens then replicated tokens), split back in two.

    ``extras`` (per-token tensors laid out like ``q``, see :func:`attention_local`) are extended with
    zeros for the replicated tokens."""
    import torch

    n = q.shape[1]
    q, k, v = (torch.cat((a, b), dim=1) for a, b in zip((q, k, v), replicated, strict=True))
    if extras:
        extras = {
            key: torch.cat((t, t.new_zeros(t.shape[0], q.shape[1] - n, *t.shape[2:])), dim=1)
            for key, t in extras.items()
        }
    mask = None
    if replicated_mask is not None:  # key mask over [tokens; replicated tokens], True = attend
        keep = torch.ones(replicated_mask.shape[0], n, dtype=torch.bool, device=replicated_mask.device)
        mask = torch.cat((keep, replicated_mask.bool()), dim=1)[:, None, None, :]  # (B, 1, 1, Lk)
    out = attention_local(q, k, v, attn_mask=mask, scale=scale, allow=allow, extras=extras)
    return out[:, :n], out[:, n:]


#: While a sequence-parallel forward runs, the handler that takes over ``attention(...,
#: sequence_parallel=True)`` (set by :mod:`fastvideo.parallel.sequence`; plain module state, like _FORCED).
_SEQUENCE_PARALLEL: list[Callable[..., Any] | None] = [None]


def set_sequence_parallel(handler: Callable[..., Any] | None) -> None:
    """Install (or clear, with ``None``) the handler of sequence-parallel attention calls."""
    _SEQUENCE_PARALLEL[0] = handler


def sequence_parallel_handler() -> Callable[..., Any] | None:
    """The handler :func:`set_sequence_parallel` installed, or None outside a sequence-parallel forward."""
    return _SEQUENCE_PARALLEL[0]


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    attn_mask: torch.Tensor | None = None,
    scale: float | None = None,
    is_causal: bool = False,
    allow: str | Collection[str] = DENSE,
    sequence_parallel: bool = False,
    replicated: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    replicated_mask: torch.Tensor | None = None,
) -> Any:
    """Scaled dot-product attention on ``[B, L, H, D]`` tensors through the selected backend.

    :param allow: the layer's allow-list: ``DENSE`` (default; exact backends only), ``ALL``, or a
        collection of backend names. A backend outside it, or one whose ``supports`` declines the
        inputs, is replaced by the best available dense backend that takes the inputs (one the
        allow-list names, if any).
    :param sequence_parallel: the layer attends among the tokens that a sequence-parallel run
        shards over ranks (video self-attention): q, k and v are this rank's shards, and the active
        strategy (Ulysses, ring, USP) gathers what attention needs. Without a sequence-parallel run
        it changes nothing. Leave it False where queries attend to tokens every rank holds whole
        (cross-attention to text): that needs no communication.
    :param replicated: joint attention: ``(q, k, v)`` ``[B, Lt, H, D]`` of extra tokens that every
        rank holds whole (text tokens of HunyuanVideo-style models), attending and attended to
        together with the main tokens, as if concatenated after them. Returns ``(out, out_replicated)``.
    :param replicated_mask: ``[B, Lt]`` boolean key mask of the replicated tokens (True = attend);
        the main tokens are always attended. Use it instead of ``attn_mask`` with ``replicated``.
    :returns: ``[B, Lq, H, Dv]``, or the pair ``([B, Lq, H, Dv], [B, Lt, H, Dv])`` with ``replicated``.
    """
    handler = _SEQUENCE_PARALLEL[0]
    extras = layer_inputs(q)  # a backend's per-layer modules at work (computed on this rank's tokens)
    if sequence_parallel and handler is not None:
        return handler(
            q,
            k,
            v,
            attn_mask=attn_mask,
            scale=scale,
            is_causal=is_causal,
            allow=allow,
            replicated=replicated,
            replicated_mask=replicated_mask,
            **({"extras": extras} if extras else {}),
        )
    if replicated is not None:
        if attn_mask is not None or is_causal:
            raise ValueError(
                "attention with replicated tokens takes replicated_mask, not attn_mask or is_causal"
            )
        return joint_local(q, k, v, replicated, replicated_mask, scale=scale, allow=allow, extras=extras)
    return attention_local(
        q, k, v, attn_mask=attn_mask, scale=scale, is_causal=is_causal, allow=allow, extras=extras
    )


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


def joint_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_txt: torch.Tensor,
    k_txt: torch.Tensor,
    v_txt: torch.Tensor,
    *,
    txt_mask: torch.Tensor | None = None,
    scale: float | None = None,
    allow: str | Collection[str] = ALL,
    sequence_parallel: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Joint attention (MM-DiT): video tokens and text tokens attend to all of both, as if the text
    were concatenated after the video; all ``[B, L, H, D]``.

    The text tokens are the seam's replicated tokens (:func:`attention`'s ``replicated``): under
    sequence parallelism the video tokens are sharded over ranks, and every rank holds all text tokens.

    :param txt_mask: ``[B, Lt]`` boolean key mask of the text tokens (True = attend; None: all).
    :param allow: the layer's allow-list; joint attention over video tokens admits every backend.
    :param sequence_parallel: the video tokens are the ones a sequence-parallel run shards.
    :returns: ``([B, Lv, H, D], [B, Lt, H, D])``: the video outputs and the text outputs.
    """
    return attention(  # type: ignore[no-any-return]
        q,
        k,
        v,
        scale=scale,
        allow=allow,
        sequence_parallel=sequence_parallel,
        replicated=(q_txt, k_txt, v_txt),
        replicated_mask=txt_mask,
    )
