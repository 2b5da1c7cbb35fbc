"""Fused Triton kernels for the memory-bound elementwise work of the DiTs' eager inference forward.

Each op is one read of its inputs and one write of its output, with fp32 math and a single rounding:

- :func:`adaln_modulate`: LayerNorm or RMSNorm (fp32 statistics, optional affine) then
  ``* (1 + scale) + shift`` with per-sample, per-token or per-row-of-a-table (``index``) modulation.
- :func:`rms_norm_rope`: RMSNorm over groups of channels (one head, or the whole width) with its weight,
  then RoPE (interleaved pairs or rotate-half); :func:`rms_norm` is the same without the RoPE;
  :func:`rms_norm_rope_pair` does q and k of a self-attention in one launch (the tables read once).
- :func:`gated_residual`: ``x + gate * y`` with the gate per sample, per token or per row of a table.
- :func:`gated_residual_adaln`: the two above back to back (the residual of one sub-layer, then the
  next sub-layer's norm and modulation), reading the residual stream once.

Dispatch (:func:`active`): the Triton kernel runs only for CUDA tensors, when Triton imports, when no
autograd graph can be built (grad mode off: ``torch.no_grad`` / ``inference_mode``; training keeps the
PyTorch path, the kernels have no backward), outside ``torch.compile`` tracing (Inductor fuses the
reference code itself), and unless the environment sets ``FASTVIDEO_FUSED=0``. Otherwise the functions compute a plain PyTorch reference (fp32 math, one
rounding). Model files call them behind ``if active(...)`` and keep their own code in the ``else``, so
everything that is not a CUDA inference forward runs exactly as without this module.
A kernel that fails to build or launch (a Triton compile error, out of resources, a feature the
GPU or the installed Triton lacks) never fails the call: one warning names the op and the error, the
call returns the op's PyTorch reference, and that op stays on the reference for the rest of the process
(:func:`fused_or_reference`; ``benchmarks/compile_check.py`` compiles every kernel for sm_90 ahead of time).
:func:`forced` switches the kernels on for any device (CPU tensors run under ``TRITON_INTERPRET=1``) or
off, for tests.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import torch
import torch.nn.functional as F

__all__ = [
    "ENV",
    "active",
    "adaln_modulate",
    "available",
    "failed_ops",
    "forced",
    "fused_or_reference",
    "gated_residual",
    "gated_residual_adaln",
    "rms_norm",
    "rms_norm_rope",
    "rms_norm_rope_pair",
]

#: Set to ``0`` to disable the fused kernels (the PyTorch code of the model files runs).
ENV = "FASTVIDEO_FUSED"

_force: bool | None = None
logger = logging.getLogger(__name__)
T = TypeVar("T")

#: Set to ``1`` to raise a kernel's build or launch error instead of falling back (tests, benchmarks).
STRICT_ENV = "FASTVIDEO_FUSED_STRICT"

#: Ops whose kernel failed to build or launch in this process: they compute the reference instead.
_failed: set[str] = set()


def failed_ops() -> frozenset[str]:
    """The ops switched to their PyTorch reference after their kernel failed (see :func:`fused_or_reference`)."""
    return frozenset(_failed)


def _one_line(exc: BaseException) -> str:
    """``exc`` as ``Type: message`` on one line (a multi-line compiler message: its last line)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[-1] if lines else ""
    return f"{type(exc).__name__}: {text}"[:300]


def fused_or_reference(
    op: str,
    launch: Callable[[], T],
    reference: Callable[[], T],
    *,
    switch_off: str = f"{ENV}=0 turns the fused kernels off",
) -> T:
    """``launch()`` (a fused kernel, arguments already validated), unless it fails to build or launch:
    then one warning names ``op`` and the error, ``op`` computes ``reference()`` for the rest of the
    process, and this call returns ``reference()``. Errors of the caller are not caught: ``ValueError``
    / ``TypeError`` (bad shapes and dtypes are refused before the launch), and out of GPU memory (the
    reference would need as much). ``FASTVIDEO_FUSED_STRICT=1`` raises every error (no fallback)."""
    if op in _failed:
        return reference()
    try:
        return launch()
    except (ValueError, TypeError, torch.cuda.OutOfMemoryError):
        raise
    except Exception as exc:  # a Triton compile error, out of resources, an unsupported feature
        if os.environ.get(STRICT_ENV, "0").strip() not in ("", "0"):
            raise
        _failed.add(op)
        logger.warning(
            "fused kernel %s failed to build or launch (%s); falling back to PyTorch for this op; %s",
            op,
            _one_line(exc),
            switch_off,
        )
        return reference()


@functools.cache
def available() -> bool:
    """Whether the Triton kernels import (Triton installed, and a GPU or ``TRITON_INTERPRET=1``)."""
    try:
        from fastvideo.kernels import _triton  # noqa: F401
    except Exception:
        return False
    return True


@contextmanager
def forced(on: bool = True) -> Iterator[None]:
    """Force the kernels on (any device, ``FASTVIDEO_FUSED`` ignored; CPU tensors need
    ``TRITON_INTERPRET=1``) or off, inside the block. Grad mode still takes the PyTorch path (the
    kernels have no backward): call under ``torch.no_grad()``."""
    global _force
    before, _force = _force, on
    try:
        yield
    finally:
        _force = before


def _on_gpu(tensors: list[torch.Tensor]) -> bool:
    return all(t.is_cuda for t in tensors)


def active(*tensors: torch.Tensor | None) -> bool:
    """Whether the fused kernels run for these inputs (see the module docstring)."""
    if _force is False or torch.is_grad_enabled() or torch.compiler.is_compiling():
        return False
    present = [t for t in tensors if t is not None]
    if _force is None:
        if os.environ.get(ENV, "1").strip() == "0":
            return False
        if not _on_gpu(present):
            return False
    return available()


# --------------------------------------------------------------------------------------------------
# adaLN
# --------------------------------------------------------------------------------------------------


def adaln_modulate(
    x: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    eps: float = 1e-6,
    *,
    norm: str = "layer",
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    index: torch.Tensor | None = None,
) -> torch.Tensor:
    """``norm(x) * (1 + scale) + shift`` in fp32, rounded once to x's dtype.

    :param x: ``(B, L, D)`` tokens (unit stride over D; any batch / token strides).
    :param shift: / ``scale``: per sample ``(B, D)`` or ``(B, 1, D)``, per token ``(B, L, D)``, or, with
        ``index``, a table ``(B, M, D)`` of which token ``l`` uses row ``index[l]``; any dtype and
        strides (fp32 tables are used exactly); a batch of 1 broadcasts.
    :param norm: ``"layer"`` (LayerNorm: mean and variance) or ``"rms"`` (RMSNorm), both fp32 statistics.
    :param weight: / ``bias``: the norm's optional affine ``(D,)``, applied before the modulation.
    :param index: ``(L,)`` integer rows of shift / scale (e.g. each token's latent frame).
    """
    shift, scale = _check_modulation(x, shift, scale, norm, index)
    d = x.shape[-1]
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and tuple(p.shape) != (d,):
            raise ValueError(f"{name} must be ({d},) for x {tuple(x.shape)}, got {tuple(p.shape)}")
    if active(x, shift, scale, weight, bias, index):
        from fastvideo.kernels import _triton

        def launch() -> torch.Tensor:
            sh, sc, idx = _table_rows(x, shift, scale, index)
            return _triton.adaln(x, sh, sc, eps, norm == "rms", weight, bias, idx)

        return fused_or_reference(
            "adaln_modulate",
            launch,
            lambda: _adaln_reference(x, shift, scale, eps, norm, weight, bias, index),
        )
    return _adaln_reference(x, shift, scale, eps, norm, weight, bias, index)


def _adaln_reference(
    x: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    eps: float,
    norm: str,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    index: torch.Tensor | None,
) -> torch.Tensor:
    """The PyTorch form of :func:`adaln_modulate` (validated arguments; fp32 math, one rounding)."""
    d = x.shape[-1]
    if index is not None:
        shift, scale = shift.index_select(1, index), scale.index_select(1, index)
    xf = x.float()
    w = weight.float() if weight is not None else None
    if norm == "rms":
        normed = F.rms_norm(xf, (d,), w, eps)
        if bias is not None:
            normed = normed + bias.float()
    else:
        normed = F.layer_norm(xf, (d,), w, bias.float() if bias is not None else None, eps)
    return (normed * (1 + scale.float()) + shift.float()).to(x.dtype)


def _check_modulation(
    x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, norm: str, index: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate :func:`adaln_modulate`'s arguments; returns shift and scale as ``(B or 1, M, D)``."""
    if norm not in ("layer", "rms"):
        raise ValueError(f"norm={norm!r} must be 'layer' or 'rms'")
    if x.ndim != 3:
        raise ValueError(f"x must be (B, L, D), got shape {tuple(x.shape)}")
    b, length, d = x.shape
    shift, scale = (m.unsqueeze(1) if m.ndim == 2 else m for m in (shift, scale))
    rows = length if index is None else None
    for name, m in (("shift", shift), ("scale", scale)):
        ok = m.ndim == 3 and m.shape[0] in (1, b) and m.shape[-1] == d
        ok = ok and (m.shape[1] in (1, length) if rows is not None else True)
        if not ok:
            want = (
                f"(B, M, {d}) with index"
                if index is not None
                else f"({b}, {d}), ({b}, 1, {d}) or ({b}, {length}, {d})"
            )
            raise ValueError(f"{name} must be {want} for x {tuple(x.shape)}, got {tuple(m.shape)}")
    if index is not None and (index.ndim != 1 or index.shape[0] != length or index.is_floating_point()):
        raise ValueError(
            f"index must be ({length},) integer rows of shift / scale, got {index.dtype} {tuple(index.shape)}"
        )
    return shift, scale


def _table_rows(
    x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, index: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """shift / scale / index as the kernels take them (no index when one row serves every token)."""
    if index is not None and shift.shape[1] == 1 and scale.shape[1] == 1:
        return shift, scale, None
    if index is not None:
        index = index.to(device=x.device, dtype=torch.int64).contiguous()
        table_rows = max(shift.shape[1], scale.shape[1])
        shift, scale = shift.expand(-1, table_rows, -1), scale.expand(-1, table_rows, -1)
    return shift, scale, index


# --------------------------------------------------------------------------------------------------
# RMSNorm + RoPE
# --------------------------------------------------------------------------------------------------


def table_layout(tab: torch.Tensor, shape: torch.Size) -> tuple[torch.Tensor, int, int, int, int]:
    """A RoPE table for x of ``shape`` ``(B, L, D)`` or ``(B, L, H, Dh)``, as (tensor, batch stride,
    token stride, head stride, width): channel ``j`` of head ``h`` of token ``(b, l)`` reads entry
    ``j % width`` of the table row at ``(b, l, h)``. Full tables have the rotation width (D or Dh);
    half-width tables (rotate-half only) one entry per angle."""
    width = tab.shape[-1] if tab.ndim else 0
    try:
        if width not in (shape[-1], shape[-1] // 2):
            raise RuntimeError
        t = tab.expand(*shape[:-1], width)
    except RuntimeError:
        raise ValueError(
            f"RoPE table {tuple(tab.shape)} does not broadcast to x {tuple(shape)}; pass (L, 1, Dh), "
            "(B or 1, L, D) or (B or 1, L, H, Dh or Dh/2) tables of x's layout"
        ) from None
    if t.stride(-1) != 1:
        t = t.contiguous()
    return t, t.stride(0), t.stride(1), t.stride(2) if len(shape) == 4 else 0, width


def rms_norm_rope(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    cos: torch.Tensor,
    sin: torch.Tensor,
    eps: float,
    group: int,
    *,
    layout: str = "interleaved",
    signed_sin: bool = True,
) -> torch.Tensor:
    """RMSNorm over consecutive groups of ``group`` channels (times ``weight``), then RoPE; fp32 math,
    rounded once to x's dtype.

    :param x: ``(B, L, D)`` or ``(B, L, H, Dh)`` (q or k); the RoPE tables broadcast to its shape.
    :param weight: the norm's ``(group,)`` weight, or None.
    :param cos: / ``sin``: tables broadcasting to x's shape, the rotation running over x's last dim:
        e.g. ``(L, 1, Dh)`` (shared by the heads), ``(B or 1, L, D)``, or per head ``(B, L, H, Dh)``.
        ``interleaved``: channel pairs ``(2i, 2i+1)`` rotate together, the format of
        :func:`fastvideo.layers.rope_tables` (``signed_sin``: ``sin`` already holds ``(-s, +s)`` per pair;
        False: ``(s, s)``). ``half``: rotate-half, channel ``i`` with ``i + Dh/2`` (``cos = [c, c]``,
        ``sin = [s, s]``, or ``[-s, s]`` with ``signed_sin``), or half-width tables ``(..., Dh/2)``
        (``c``, ``s`` once per angle, e.g. a ``(B, H, L, Dh/2)`` table transposed to ``(B, L, H, Dh/2)``).
    :param group: channels per RMS statistic: ``Dh`` for per-head norms, ``H * Dh`` across heads.
    """
    cos_l, sin_l, period = _check_rope(x, weight, cos, sin, group, layout)
    args = (x, weight, cos_l, sin_l, eps, group, layout, signed_sin, period)
    if active(x, weight, cos, sin):
        from fastvideo.kernels import _triton

        return fused_or_reference(
            "rms_norm_rope",
            lambda: _triton.rms_rope(
                x, weight, eps, group, layout == "half", signed_sin, period, (cos_l, sin_l)
            ),
            lambda: _rms_norm_rope_reference(*args),
        )
    return _rms_norm_rope_reference(*args)


def rms_norm_rope_pair(
    q: torch.Tensor,
    k: torch.Tensor,
    q_weight: torch.Tensor | None,
    k_weight: torch.Tensor | None,
    cos: torch.Tensor,
    sin: torch.Tensor,
    eps: float,
    group: int,
    *,
    layout: str = "interleaved",
    signed_sin: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`rms_norm_rope` of ``q`` and of ``k`` (same shape, same tables: self-attention) in one
    launch that reads the RoPE tables once for both; returns ``(q, k)``. The two weights are both
    tensors or both None."""
    if tuple(q.shape) != tuple(k.shape):
        raise ValueError(
            f"q and k must have the same shape (self-attention), got {tuple(q.shape)} and {tuple(k.shape)}"
        )
    if q.dtype != k.dtype:
        raise ValueError(f"q and k must have the same dtype, got {q.dtype} and {k.dtype}")
    if (q_weight is None) != (k_weight is None):
        raise ValueError("q_weight and k_weight must both be tensors or both be None")
    cos_l, sin_l, period = _check_rope(q, q_weight, cos, sin, group, layout)
    _check_rope(k, k_weight, cos, sin, group, layout)
    args = (cos_l, sin_l, eps, group, layout, signed_sin, period)

    def reference() -> tuple[torch.Tensor, torch.Tensor]:
        return _rms_norm_rope_reference(q, q_weight, *args), _rms_norm_rope_reference(k, k_weight, *args)

    if active(q, k, q_weight, k_weight, cos, sin):
        from fastvideo.kernels import _triton

        half = layout == "half"
        pair = (k, k_weight)
        return fused_or_reference(
            "rms_norm_rope_pair",
            lambda: _triton.rms_rope_pair(
                q, q_weight, eps, group, half, signed_sin, period, (cos_l, sin_l), pair
            ),
            reference,
        )
    return reference()


def _check_rope(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    cos: torch.Tensor,
    sin: torch.Tensor,
    group: int,
    layout: str,
) -> tuple[tuple[torch.Tensor, int, int, int, int], tuple[torch.Tensor, int, int, int, int], int]:
    """Validate :func:`rms_norm_rope`'s arguments; returns the tables' layouts and the rotation width."""
    if layout not in ("interleaved", "half"):
        raise ValueError(f"layout={layout!r} must be 'interleaved' or 'half'")
    if x.ndim not in (3, 4):
        raise ValueError(f"x must be (B, L, D) or (B, L, H, Dh), got shape {tuple(x.shape)}")
    width = math.prod(x.shape[2:])
    if group < 2 or group % 2 or width % group:
        raise ValueError(f"group={group} must be an even divisor of the row width {width} (Dh or H*Dh)")
    if weight is not None and tuple(weight.shape) != (group,):
        raise ValueError(f"weight must be ({group},) (the norm's width), got {tuple(weight.shape)}")
    cos_l, sin_l = table_layout(cos, x.shape), table_layout(sin, x.shape)
    period = x.shape[-1]  # the rotation width: Dh per head, or D
    if cos_l[4] != sin_l[4] or period % 2 or (layout == "half" and group % period):
        raise ValueError(
            f"RoPE tables {tuple(cos.shape)} / {tuple(sin.shape)} for x {tuple(x.shape)}: the rotation "
            f"width must be even{' and divide group=' + str(group) if layout == 'half' else ''}"
        )
    if layout == "interleaved" and cos_l[4] != period:
        raise ValueError(
            f"interleaved RoPE needs full-width tables ({period} per row), got {tuple(cos.shape)}"
        )
    return cos_l, sin_l, period


def _rms_norm_rope_reference(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    cos_l: tuple[torch.Tensor, int, int, int, int],
    sin_l: tuple[torch.Tensor, int, int, int, int],
    eps: float,
    group: int,
    layout: str,
    signed_sin: bool,
    period: int,
) -> torch.Tensor:
    """The PyTorch form of :func:`rms_norm_rope` (fp32 math, one rounding)."""
    shape = x.shape
    xg = x.float().reshape(*shape[:2], -1, group)
    y = xg * torch.rsqrt(xg.pow(2).mean(-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.float()
    y = y.reshape(shape)
    c, s = cos_l[0].float(), sin_l[0].float()
    if layout == "interleaved":
        partner = y.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)
        sign = torch.tensor([-1.0, 1.0], device=x.device).repeat(period // 2)
    else:
        partner = torch.cat(y.chunk(2, dim=-1)[::-1], dim=-1)
        sign = torch.tensor([-1.0, 1.0], device=x.device).repeat_interleave(period // 2)
        if cos_l[4] != period:  # half-width tables
            c, s = torch.cat([c, c], dim=-1), torch.cat([s, s], dim=-1)
    if not signed_sin:
        s = s * sign
    return (y * c + partner * s).to(x.dtype)


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float, group: int) -> torch.Tensor:
    """RMSNorm over consecutive groups of ``group`` channels of ``x`` ``(B, L, ...)`` times ``weight``
    ``(group,)``; fp32 math, rounded once to x's dtype (:func:`rms_norm_rope` without the rotation)."""
    if x.ndim < 3:
        raise ValueError(f"x must be (B, L, D) or (B, L, H, Dh), got shape {tuple(x.shape)}")
    width = math.prod(x.shape[2:])
    if group < 1 or width % group:
        raise ValueError(f"group={group} must divide the row width {width} (Dh or H*Dh)")
    if weight is not None and tuple(weight.shape) != (group,):
        raise ValueError(f"weight must be ({group},) (the norm's width), got {tuple(weight.shape)}")
    if active(x, weight):
        from fastvideo.kernels import _triton

        return fused_or_reference(
            "rms_norm",
            lambda: _triton.rms_rope(x, weight, eps, group, False, True, 2, None),  # no tables: no rotation
            lambda: _rms_norm_reference(x, weight, eps, group),
        )
    return _rms_norm_reference(x, weight, eps, group)


def _rms_norm_reference(x: torch.Tensor, weight: torch.Tensor | None, eps: float, group: int) -> torch.Tensor:
    """The PyTorch form of :func:`rms_norm` (fp32 math, one rounding)."""
    xg = x.float().reshape(*x.shape[:2], -1, group)
    y = xg * torch.rsqrt(xg.pow(2).mean(-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.float()
    return y.reshape(x.shape).to(x.dtype)


# --------------------------------------------------------------------------------------------------
# Gated residual
# --------------------------------------------------------------------------------------------------


def gated_residual(
    x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor, *, index: torch.Tensor | None = None
) -> torch.Tensor:
    """``x + gate * y`` in fp32, rounded once to x's dtype (a new tensor).

    :param x: / ``y``: ``(B, L, D)`` (y may broadcast over the batch).
    :param gate: ``(B, D)``, ``(B, 1, D)``, ``(B, L, D)``, or with ``index`` a table ``(B, M, D)`` of which
        token ``l`` uses row ``index[l]``; any dtype and strides.
    """
    gate = _check_gate(x, gate, index)
    if active(x, y, gate, index):
        from fastvideo.kernels import _triton

        def launch() -> torch.Tensor:
            idx = index
            if idx is not None and gate.shape[1] == 1:
                idx = None
            elif idx is not None:
                idx = idx.to(device=x.device, dtype=torch.int64).contiguous()
            return _triton.gated_residual(x, y, gate, idx)

        return fused_or_reference(
            "gated_residual", launch, lambda: _gated_residual_reference(x, y, gate, index)
        )
    return _gated_residual_reference(x, y, gate, index)


def _gated_residual_reference(
    x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor, index: torch.Tensor | None
) -> torch.Tensor:
    """The PyTorch form of :func:`gated_residual` (validated gate ``(B or 1, M, D)``)."""
    if index is not None:
        gate = gate.index_select(1, index)
    return (x.float() + gate.float() * y.float()).to(x.dtype)


def _check_gate(x: torch.Tensor, gate: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    """Validate :func:`gated_residual`'s x / gate / index; returns gate as ``(B or 1, M, D)``."""
    if x.ndim != 3:
        raise ValueError(f"x must be (B, L, D), got shape {tuple(x.shape)}")
    b, length, d = x.shape
    gate = gate.unsqueeze(1) if gate.ndim == 2 else gate
    if (
        gate.ndim != 3
        or gate.shape[0] not in (1, b)
        or gate.shape[-1] != d
        or (index is None and gate.shape[1] not in (1, length))
    ):
        raise ValueError(
            f"gate must be ({b}, {d}), ({b}, 1, {d}) or ({b}, {length}, {d}), got {tuple(gate.shape)}"
        )
    if index is not None and (index.ndim != 1 or index.shape[0] != length or index.is_floating_point()):
        raise ValueError(
            f"index must be ({length},) integer rows of gate, got {index.dtype} {tuple(index.shape)}"
        )
    return gate


def gated_residual_adaln(
    x: torch.Tensor,
    y: torch.Tensor,
    gate: torch.Tensor | None,
    shift: torch.Tensor,
    scale: torch.Tensor,
    eps: float = 1e-6,
    *,
    norm: str = "layer",
    index: torch.Tensor | None = None,
    second: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, ...]:
    """:func:`gated_residual` then :func:`adaln_modulate` of its result, in one pass over the tokens:
    returns ``(s, h)`` with ``s = x + gate * y`` (``x + y`` when ``gate`` is None; fp32, rounded to
    x's dtype) and ``h = norm(s) * (1 + scale) + shift`` computed from the rounded ``s``, so exactly
    the separate calls' results. The residual stream is read once instead of twice between two
    sub-layers.

    :param gate: / ``shift`` / ``scale``: as in :func:`gated_residual` / :func:`adaln_modulate`;
        ``index`` (per-token rows of the tables) is shared by all of them.
    :param second: another ``(shift, scale)`` pair: returns ``(s, h, h2)``, ``h2`` the same norm
        modulated by it (two sub-layer inputs from one read, e.g. LTX-2's audio<->video attention).
    """
    pairs = [(shift, scale)] + ([second] if second is not None else [])
    if gate is not None:
        gate = _check_gate(x, gate, index)
    pairs = [_check_modulation(x, sh, sc, norm, index) for sh, sc in pairs]
    if tuple(y.shape[1:]) != tuple(x.shape[1:]) or y.shape[0] not in (1, x.shape[0]):
        raise ValueError(f"y must be (B or 1, L, D) for x {tuple(x.shape)}, got {tuple(y.shape)}")
    tables = [t for pair in pairs for t in pair] + ([gate] if gate is not None else [])

    def reference() -> tuple[torch.Tensor, ...]:
        if gate is not None:
            s = _gated_residual_reference(x, y, gate, index)
        else:
            s = (x.float() + y.float()).to(x.dtype)
        return (s, *(_adaln_reference(s, sh, sc, eps, norm, None, None, index) for sh, sc in pairs))

    if active(x, y, index, *tables):
        from fastvideo.kernels import _triton

        def launch() -> tuple[torch.Tensor, ...]:
            idx, g, mods = index, gate, pairs
            if idx is not None and all(t.shape[1] == 1 for t in tables):
                idx = None  # one row for every token
            elif idx is not None:
                rows = max(t.shape[1] for t in tables)
                idx = idx.to(device=x.device, dtype=torch.int64).contiguous()
                g = g.expand(-1, rows, -1) if g is not None else None
                mods = [(sh.expand(-1, rows, -1), sc.expand(-1, rows, -1)) for sh, sc in mods]
            return _triton.gated_residual_adaln(x, y, g, mods, eps, norm == "rms", idx)

        return fused_or_reference("gated_residual_adaln", launch, reference)
    return reference()
