"""Plain PyTorch reference of sliding tile attention: the spec the kernels are tested against.

Paper: "Fast Video Generation with Sliding Tile Attention" (arXiv 2502.04507).

Shapes: ``q, k, v`` are ``[B, L, H, D]``. The first ``N = T * Hg * W`` tokens are the video, in
raster ``(t, h, w)`` order over ``grid = (T, Hg, W)``; the ``Lt = L - N`` tokens after them (possibly
none) are text tokens of joint attention (HunyuanVideo). Tiles and windows are those of
:mod:`fastvideo_sta.tiles`; ``windows`` holds one ``(wt, wh, ww)`` per head, in tiles.

Math, per batch element and head ``h``, with ``scale = D ** -0.5`` unless given:

* video query ``i`` (in tile ``c(i)``) attends to the video keys whose tile lies in the window of
  ``windows[h]`` around ``c(i)`` (per axis, :func:`fastvideo_sta.tiles.window_start`), and to every
  text key;
* text query attends to every key (all video tokens and all text tokens), as in the paper's
  HunyuanVideo kernel;
* text keys with ``text_mask[b, j] == False`` (padding) are attended by nobody;
* ``out[i] = softmax_j(q[i] . k[j] * scale over the allowed j) v[j]``.

Computation happens in the inputs' dtype: pass fp32/fp64 tensors for the ground truth, low-precision
ones for "what plain torch gets".
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fastvideo_sta.tiles import DEFAULT_TILE, TileGeometry, Window


def tile_coords(geom: TileGeometry, device: torch.device | str = "cpu") -> torch.Tensor:
    """``(N, 3)`` int64: the tile coordinates of each video token, tokens in raster order."""
    axes = [torch.arange(g, device=device) // t for g, t in zip(geom.grid, geom.tile, strict=True)]
    tt, hh, ww = torch.meshgrid(*axes, indexing="ij")
    return torch.stack([tt.flatten(), hh.flatten(), ww.flatten()], dim=1)


def video_mask(geom: TileGeometry, window: Window, device: torch.device | str = "cpu") -> torch.Tensor:
    """``(N, N)`` bool: video query ``i`` may attend to video key ``j`` under ``window``."""
    coords = tile_coords(geom, device)  # (N, 3)
    allowed = torch.ones(geom.num_tokens, geom.num_tokens, dtype=torch.bool, device=device)
    for axis, (w, n) in enumerate(zip(window, geom.tile_grid, strict=True)):
        w = min(int(w), n)
        c = coords[:, axis]
        start = (c - (w - 1) // 2).clamp(0, n - w)  # (N,) first tile of each query's window
        allowed &= (c[None, :] >= start[:, None]) & (c[None, :] < start[:, None] + w)
    return allowed


def rows_mask(
    geom: TileGeometry,
    window: Window,
    rows: torch.Tensor,
    text_len: int = 0,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """``(len(rows), L)`` bool: the mask of :func:`sta_mask` for the query ``rows`` only (so that the
    reference fits at real sizes: a few query rows against every key)."""
    n = geom.num_tokens
    coords = tile_coords(geom, device)  # (N, 3)
    rows = rows.to(device)
    mask = torch.ones(len(rows), n + text_len, dtype=torch.bool, device=device)
    video = rows < n
    qc = coords[rows.clamp(max=n - 1)]  # (R, 3)
    for axis, (w, nt) in enumerate(zip(window, geom.tile_grid, strict=True)):
        w = min(int(w), nt)
        start = (qc[:, axis] - (w - 1) // 2).clamp(0, nt - w)
        kc = coords[:, axis]
        keep = (kc[None, :] >= start[:, None]) & (kc[None, :] < start[:, None] + w)
        mask[:, :n] &= keep | ~video[:, None]
    return mask


def sta_mask(
    geom: TileGeometry,
    window: Window,
    text_len: int = 0,
    text_valid: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """``(B or 1, L, L)`` bool mask of one head: who attends to whom (see the module docstring)."""
    n = geom.num_tokens
    length = n + text_len
    mask = torch.ones(length, length, dtype=torch.bool, device=device)
    mask[:n, :n] = video_mask(geom, window, device)
    mask = mask[None]
    if text_valid is not None and text_len:
        keys = torch.cat(
            [torch.ones(text_valid.shape[0], n, dtype=torch.bool, device=device), text_valid.bool()], 1
        )
        mask = mask & keys[:, None, :]
    return mask


def sta_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    grid: tuple[int, int, int],
    windows: Window | Sequence[Window],
    *,
    tile: tuple[int, int, int] = DEFAULT_TILE,
    text_mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """STA as the module docstring defines it. ``[B, L, H, D]`` in, ``[B, L, H, D]`` out.

    :param windows: one ``(wt, wh, ww)`` for every head, or one per head.
    :param text_mask: ``[B, Lt]`` bool, True for the text keys to attend (``None``: all).
    """
    geom = TileGeometry(grid, tile)
    heads = q.shape[2]
    if len(windows) == 3 and all(isinstance(w, int) for w in windows):  # type: ignore[arg-type]
        windows = [tuple(windows)] * heads  # type: ignore[list-item]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    text_len = q.shape[1] - geom.num_tokens
    outs = []
    for h in range(heads):
        mask = sta_mask(geom, tuple(windows[h]), text_len, text_mask, q.device)  # type: ignore[arg-type]
        qh, kh, vh = (x[:, :, h] for x in (q, k, v))  # (B, L, D)
        logits = qh @ kh.transpose(1, 2) * scale  # (B, L, L)
        logits = logits.masked_fill(~mask, float("-inf"))
        outs.append(torch.softmax(logits, dim=-1) @ vh)  # (B, L, D)
    return torch.stack(outs, dim=2)  # (B, L, H, D)
