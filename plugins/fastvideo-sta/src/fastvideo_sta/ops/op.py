"""``sta_attention``: the public STA op, a ``torch.library`` custom op with a Triton forward and backward.

Two custom ops, ``fastvideo_sta::sta_fwd`` and ``fastvideo_sta::sta_bwd``, each with a fake (meta)
implementation, tied together by ``register_autograd``: ``torch.compile`` traces around them (no
graph break) and autograd differentiates through them. The per-head windows travel as an ``[H, 3]``
int32 tensor on the inputs' device, so heads with different windows share one launch and the Triton
path never waits on the host (the flash-attn-4 path, ``fastvideo_sta::sta_fwd_fa4``, reads the window
table and the valid text count on the host once a call: a sync next to a kernel of tens of ms).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Optional

import torch

from fastvideo.errors import warn_once
from fastvideo_sta.ops import fa4
from fastvideo_sta.ops.triton_bwd import sta_backward
from fastvideo_sta.ops.triton_fwd import interpreting, sta_forward
from fastvideo_sta.tiles import DEFAULT_TILE, TileGeometry

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256
MAX_TILE_FACE = 128


@torch.library.custom_op("fastvideo_sta::sta_fwd", mutates_args=())
def sta_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    windows: torch.Tensor,
    text_valid: Optional[torch.Tensor],
    grid: list[int],
    tile: list[int],
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out [B, L, H, D], lse [B, H, L] fp32)``."""
    geom = TileGeometry(tuple(grid), tuple(tile))
    return sta_forward(q, k, v, windows, text_valid, geom, scale)


@sta_fwd.register_fake
def _(q, k, v, windows, text_valid, grid, tile, scale):
    batch, length, heads, _ = q.shape
    return q.new_empty(q.shape), q.new_empty((batch, heads, length), dtype=torch.float32)


@torch.library.custom_op("fastvideo_sta::sta_fwd_fa4", mutates_args=())
def sta_fwd_fa4(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    windows: torch.Tensor,
    text_valid: Optional[torch.Tensor],
    grid: list[int],
    tile: list[int],
    scale: float,
) -> torch.Tensor:
    """Inference forward through flash-attn-4 (:mod:`fastvideo_sta.ops.fa4`) where it applies, else the
    Triton kernel (one warning per reason where asked for, ``1``; a failing call warns in every mode)."""
    geom = TileGeometry(tuple(grid), tuple(tile))
    reason = (
        fa4.why_not(q, geom, text_valid, grad=False) if fa4.installed() else "flash-attn-4 is not installed"
    )
    failed = False
    if reason is None:
        table = [tuple(w) for w in windows.tolist()]
        try:
            return fa4.sta_forward_fa4(q, k, v, table, text_valid, geom, scale)
        except Exception as err:  # a kernel or package that rejects the call: the Triton kernel runs
            first = str(err).splitlines()[0] if str(err) else ""
            reason, failed = f"flash-attn-4 failed ({type(err).__name__}: {first[:200]})", True
    if failed or fa4.mode() == "on":  # auto: silent where the path does not apply
        warn_once(
            f"sta: the flash-attn-4 forward ({fa4.ENV} {fa4.mode()}) gave way to the Triton kernel: {reason}"
        )
    return sta_forward(q, k, v, windows, text_valid, geom, scale)[0]


@sta_fwd_fa4.register_fake
def _(q, k, v, windows, text_valid, grid, tile, scale):
    return q.new_empty(q.shape)


@torch.library.custom_op("fastvideo_sta::sta_bwd", mutates_args=())
def sta_bwd(
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    windows: torch.Tensor,
    text_valid: Optional[torch.Tensor],
    grid: list[int],
    tile: list[int],
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dq, dk, dv)``."""
    geom = TileGeometry(tuple(grid), tuple(tile))
    return sta_backward(dout.contiguous(), q, k, v, out, lse, windows, text_valid, geom, scale)


@sta_bwd.register_fake
def _(dout, q, k, v, out, lse, windows, text_valid, grid, tile, scale):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output) -> None:  # type: ignore[no-untyped-def]
    q, k, v, windows, text_valid, grid, tile, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, windows, text_valid)
    ctx.grid, ctx.tile, ctx.scale = grid, tile, scale
    ctx.mark_non_differentiable(lse)


def _backward(ctx, dout, _dlse):  # type: ignore[no-untyped-def]
    q, k, v, out, lse, windows, text_valid = ctx.saved_tensors
    dq, dk, dv = sta_bwd(dout, q, k, v, out, lse, windows, text_valid, ctx.grid, ctx.tile, ctx.scale)
    return dq, dk, dv, None, None, None, None, None


sta_fwd.register_autograd(_backward, setup_context=_setup_context)


def window_table(
    windows: Sequence[int] | Sequence[Sequence[int]] | torch.Tensor, heads: int, device: torch.device
) -> torch.Tensor:
    """``windows`` (one ``(t, h, w)``, one per head, or an ``[H, 3]`` tensor) as ``[H, 3]`` int32 on
    ``device``.

    :raises ValueError: a window that is not three positive ints, or a count that is not ``heads``.
    """
    if isinstance(windows, torch.Tensor):
        table = windows
    else:
        items = list(windows)
        if len(items) == 3 and all(isinstance(w, int) for w in items):
            items = [items] * heads
        table = torch.tensor(items, dtype=torch.int32)
    if table.ndim != 2 or table.shape[1] != 3:
        raise ValueError(
            f"windows must be one (t, h, w) or one per head ([H, 3]), got shape {tuple(table.shape)}"
        )
    if table.shape[0] != heads:
        raise ValueError(f"windows gives {table.shape[0]} windows but q has {heads} heads; give one per head")
    if not table.is_cuda and not table.is_meta and int(table.min()) < 1:
        raise ValueError(f"window sizes must be >= 1 tile per axis, got {table.tolist()}")
    return table.to(device=device, dtype=torch.int32)


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, geom: TileGeometry) -> None:
    if q.ndim != 4:
        raise ValueError(f"q must be [B, L, H, D], got shape {tuple(q.shape)}")
    for name, x in (("k", k), ("v", v)):
        if x.shape != q.shape or x.dtype != q.dtype or x.device != q.device:
            raise ValueError(
                f"{name} must match q: q is {tuple(q.shape)} {q.dtype} on {q.device}, "
                f"{name} is {tuple(x.shape)} {x.dtype} on {x.device}"
            )
    if q.shape[1] < geom.num_tokens:
        raise ValueError(
            f"q has {q.shape[1]} tokens but grid {geom.grid} holds {geom.num_tokens}: STA needs the video "
            "tokens in raster (t, h, w) order first (text tokens may follow)"
        )
    if q.dtype not in _DTYPES:
        raise ValueError(f"sta_attention takes fp16, bf16 or fp32, got {q.dtype}")
    if not 1 <= q.shape[-1] <= MAX_HEAD_DIM:
        raise ValueError(f"head dim must be in [1, {MAX_HEAD_DIM}], got {q.shape[-1]}")
    if not (q.is_cuda or q.is_meta or (q.device.type == "cpu" and interpreting())):
        raise ValueError(
            f"sta_attention runs on CUDA tensors (or on CPU under TRITON_INTERPRET=1), got {q.device}"
        )


def _inner_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def sta_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    grid: tuple[int, int, int],
    windows: Sequence[int] | Sequence[Sequence[int]] | torch.Tensor,
    *,
    tile: tuple[int, int, int] = DEFAULT_TILE,
    text_mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Sliding tile attention over the tiles of a token grid; differentiable.

    Each video query tile attends to the window of tiles centred on it (slid inwards at the borders),
    plus every text token; text tokens attend to everything. :mod:`fastvideo_sta.ops.reference`
    defines it; :mod:`fastvideo_sta.tiles` defines tiles and windows.

    :param q, k, v: ``[B, L, H, D]`` (fp16, bf16 or fp32; CUDA, or CPU under ``TRITON_INTERPRET=1``):
        the ``T*Hg*W`` video tokens in raster order over ``grid``, then ``L - T*Hg*W`` text tokens.
    :param grid: the token grid ``(T, Hg, W)``; any sizes (partial tiles are masked).
    :param windows: window in tiles ``(t, h, w)`` for all heads, one per head, or an ``[H, 3]`` int
        tensor (on q's device: no host sync). Sizes beyond the tile grid clamp to it.
    :param tile: tile size in tokens, ``(6, 8, 8)`` by default.
    :param text_mask: ``[B, Lt]`` bool, the text keys to attend (``None``: all).
    :param scale: softmax scale, ``D ** -0.5`` by default.
    :returns: ``[B, L, H, D]`` in q's dtype.
    :raises ValueError: mismatched shapes, dtypes or devices, fewer tokens than the grid holds, or bad
        windows.

    Example::

        q, k, v = (torch.randn(1, 30 * 48 * 80 + 256, 24, 128, device="cuda", dtype=torch.bfloat16)
                   for _ in range(3))
        out = sta_attention(q, k, v, (30, 48, 80), (3, 3, 5))     # [1, 115456, 24, 128]
    """
    geom = TileGeometry(grid, tile)
    _check(q, k, v, geom)
    if geom.tile[1] * geom.tile[2] > MAX_TILE_FACE:
        raise ValueError(
            f"tile {geom.tile} has {geom.tile[1] * geom.tile[2]} tokens per frame; at most {MAX_TILE_FACE} "
            "(one frame of a tile is one kernel block): use a smaller h or w"
        )
    heads = q.shape[2]
    table = window_table(windows, heads, q.device)
    text_len = q.shape[1] - geom.num_tokens
    valid = None
    if text_mask is not None:
        if tuple(text_mask.shape) != (q.shape[0], text_len):
            raise ValueError(
                f"text_mask must be [B, Lt] = {[q.shape[0], text_len]} (the tokens after the grid), got "
                f"{list(text_mask.shape)}"
            )
        valid = text_mask.to(device=q.device, dtype=torch.int8).contiguous()
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    q, k, v = (_inner_contiguous(x) for x in (q, k, v))
    if fa4.wanted(q) and not (torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v))):
        return sta_fwd_fa4(q, k, v, table, valid, list(geom.grid), list(geom.tile), scale)
    return sta_fwd(q, k, v, table, valid, list(geom.grid), list(geom.tile), scale)[0]
