"""STA's forward through FlashAttention-4's block-sparse kernel (``pip install flash-attn-4``).

FlashAttention-4 (``flash_attn.cute``) runs attention over a block-sparse pattern: per batch, head and
query block, the key blocks to visit (``BlockSparseTensorsTorch``: a count and the block indices packed
to the left, "full" blocks taking no mask). Sliding tile attention is such a pattern once the tokens are
in tile-major order: a query tile attends to whole key tiles (the window) and to the text. So this path

* gathers q, k and v into tile-major order (tiles in raster order over the tile grid, the tokens of a tile
  in raster order inside it), the text after the video;
* describes each head's windows as key blocks of ``BLOCK_KV`` tokens (a tile is ``tile tokens /
  BLOCK_KV`` of them), one query block per tile, text query blocks over every key;
* runs ``flash_attn_func(..., block_sparse_tensors=...)`` and scatters the output back to raster order.

It applies where a tile's tokens are whole key blocks and the grid a whole number of tiles (no partial
tile: HunyuanVideo's 30x48x80 with 6x8x8 tiles, not 32x45x80), the head dim is one the kernel takes,
inference only (no gradient: the Triton kernels keep training), Hopper (sm_90: FlashAttention-4's
block-sparse forward takes 384-row query blocks there), and, with padded text (``text_valid``), the same
number of valid text tokens in every batch element, first (the padded keys are cut off by the key length;
padded text queries still attend to every valid key, as in :mod:`fastvideo_sta.ops.reference`).
``FASTVIDEO_STA_FA4`` chooses (:func:`mode`; read when a compiled block is traced, so set it before the
first call): ``auto`` (the default) takes this path for every CUDA call it
applies to when flash-attn-4 is installed and runs the Triton kernels silently otherwise; ``1`` asks for it
and warns once per reason a call runs the Triton kernel instead; ``0`` keeps the Triton kernels. Measured on
an H100 at HunyuanVideo's 30x48x80 + 256 text, paper windows: 40.05 ms against the Triton kernel's 54.36 ms
in the same run (docs/benchmarks.md).
"""

from __future__ import annotations

import functools
import os
from typing import Any

import torch

from fastvideo_sta.tiles import TileGeometry, Window, window_start

ENV = "FASTVIDEO_STA_FA4"
#: Key block of the sparse pattern: FlashAttention-4's key tile at head dim 128 on Hopper.
BLOCK_KV = 128
HEAD_DIMS = (64, 96, 128)


MODES = {"": "auto", "auto": "auto", "1": "on", "0": "off"}


def mode() -> str:
    """``auto``, ``on`` or ``off``, from ``FASTVIDEO_STA_FA4`` (unset: ``auto``)."""
    raw = os.environ.get(ENV, "")
    value = MODES.get(raw.strip().lower())
    if value is None:
        raise ValueError(
            f"{ENV} must be auto, 1 or 0, got {raw!r}; unset it to use flash-attn-4 where it applies"
        )
    return value


def wanted(q: torch.Tensor) -> bool:
    """Whether a call without a gradient should be offered to this path: asked for (``1``), or ``auto``
    with flash-attn-4 installed and the tensors on a CUDA device."""
    chosen = mode()
    return chosen == "on" or (chosen == "auto" and q.is_cuda and installed())


#: ``{"fa4": bool}`` once looked up, in eager code (:meth:`fastvideo_sta.backend.STABackend.unavailable_reason`):
#: a compiled block then reads a dict, not the file system (dynamo re-traces a ``functools.cache`` body).
_INSTALLED: dict[str, bool] = {}


def installed() -> bool:
    """Whether flash-attn-4 (``flash_attn.cute`` and its compiler, ``cutlass``) is installed, found
    without importing it (:func:`fastvideo.attention.backends.flash_attn_installed`); cached
    (``installed.cache_clear()`` looks again)."""
    if "fa4" not in _INSTALLED:
        from fastvideo.attention.backends import flash_attn_installed

        _INSTALLED["fa4"] = "fa4" in flash_attn_installed()
    return _INSTALLED["fa4"]


installed.cache_clear = _INSTALLED.clear  # type: ignore[attr-defined]


def why_not(q: torch.Tensor, geom: TileGeometry, text_valid: torch.Tensor | None, grad: bool) -> str | None:
    """Why this path cannot take the call (``None``: it can)."""
    tile_tokens = geom.tile[0] * geom.tile[1] * geom.tile[2]
    if grad:
        return "a gradient is needed (the Triton kernels run the backward)"
    major, minor = torch.cuda.get_device_capability(q.device) if q.is_cuda else (9, 0)
    if major != 9:
        # Blackwell's forward wants query blocks of a multiple of 256 rows, sm_80/120 64-row key tiles
        return f"flash-attn-4's block-sparse forward takes a tile per query block on Hopper (sm_90) only, not sm_{major}{minor}"
    if tile_tokens % BLOCK_KV:
        return f"a tile of {geom.tile} is {tile_tokens} tokens, not a multiple of {BLOCK_KV}"
    if any(g % t for g, t in zip(geom.grid, geom.tile, strict=True)):
        return f"grid {geom.grid} is not a whole number of {geom.tile} tiles"
    if q.shape[-1] not in HEAD_DIMS:
        return f"head dim {q.shape[-1]} is not one of {HEAD_DIMS}"
    if q.dtype not in (torch.float16, torch.bfloat16):
        return f"{q.dtype} (flash-attn-4 takes fp16 or bf16)"
    if text_valid is not None and text_keys(text_valid) is None:
        return "the valid text tokens do not come first, or their number differs across the batch"
    return None


def text_keys(text_valid: torch.Tensor) -> int | None:
    """The valid text tokens of every batch element when each row of ``text_valid`` ``[B, Lt]`` holds the
    same number and they come first (the key length then cuts the rest off); else ``None``."""
    valid = text_valid.bool()
    counts = valid.sum(dim=1)
    n = int(counts[0]) if len(counts) else 0
    if bool((counts != n).any()) or not bool(valid[:, :n].all()):
        return None
    return n


@functools.cache
def _tile_order(grid: tuple[int, int, int], tile: tuple[int, int, int]) -> torch.Tensor:
    """``(N,)`` int64: the raster index of each token in tile-major order."""
    t, h, w = grid
    tt, th, tw = tile
    idx = torch.arange(t * h * w).view(t // tt, tt, h // th, th, w // tw, tw)
    return idx.permute(0, 2, 4, 1, 3, 5).reshape(-1)


def tile_order(geom: TileGeometry, device: torch.device) -> torch.Tensor:
    """``(N,)`` int64 on ``device``: the raster index of each token in tile-major order."""
    return _cached_on(device, _tile_order, geom.grid, geom.tile)


def block_tables(
    geom: TileGeometry, windows: list[Window], text_len: int, keys: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(count [1, H, M], index [1, H, M, NK])`` int32 of the sparse pattern in tile-major order: query
    block ``m < num_tiles`` is tile ``m``, the rest are ``ceil(text_len / tile tokens)`` text blocks;
    key block ``j`` holds tokens ``[j * BLOCK_KV, (j + 1) * BLOCK_KV)`` of the video then ``keys`` text
    tokens. Each row's block indices are packed to the left, ascending."""
    nt, nh, nw = geom.tile_grid
    tile_tokens = geom.tile[0] * geom.tile[1] * geom.tile[2]
    per_tile = tile_tokens // BLOCK_KV
    video_blocks = geom.num_tiles * per_tile
    text_blocks = -(-keys // BLOCK_KV)
    nk = video_blocks + text_blocks
    text_q = -(-text_len // tile_tokens)
    m = geom.num_tiles + text_q
    count = torch.zeros(1, len(windows), m, dtype=torch.int32)
    index = torch.zeros(1, len(windows), m, nk, dtype=torch.int32)
    text_ids = torch.arange(video_blocks, nk)
    for h, window in enumerate(windows):
        wt, wh, ww = geom.clamp(window)
        # per axis: the tiles of each query tile's window, (n, w)
        axes = [
            torch.tensor([window_start(c, w, n) for c in range(n)])[:, None] + torch.arange(w)[None, :]
            for w, n in ((wt, nt), (wh, nh), (ww, nw))
        ]
        tiles = (
            axes[0][:, None, None, :, None, None] * (nh * nw)
            + axes[1][None, :, None, None, :, None] * nw
            + axes[2][None, None, :, None, None, :]
        ).reshape(geom.num_tiles, -1)  # (tiles, window tiles), ascending in each row
        blocks = (tiles[:, :, None] * per_tile + torch.arange(per_tile)).reshape(geom.num_tiles, -1)
        rows = torch.cat([blocks, text_ids.expand(geom.num_tiles, -1)], dim=1)
        index[0, h, : geom.num_tiles, : rows.shape[1]] = rows.to(torch.int32)
        count[0, h, : geom.num_tiles] = rows.shape[1]
        index[0, h, geom.num_tiles :, :] = torch.arange(nk, dtype=torch.int32)
        count[0, h, geom.num_tiles :] = nk
    return count, index


_DEVICE_CACHE: dict[tuple[Any, ...], Any] = {}


def _cached_on(device: torch.device, fn: Any, *args: Any) -> Any:
    """``fn(*args)`` (tensors) moved to ``device``, cached per arguments and device (a few entries: the
    token orders of the shapes in use)."""
    key = (fn.__name__, str(device), *args)
    if key not in _DEVICE_CACHE:
        if len(_DEVICE_CACHE) > 16:
            _DEVICE_CACHE.clear()
        value = fn(*args)
        _DEVICE_CACHE[key] = (
            tuple(x.to(device) for x in value) if isinstance(value, tuple) else value.to(device)
        )
    return _DEVICE_CACHE[key]


#: One head's block-table rows on the device, per (grid, tile, window, text, keys, device); a strategy
#: has a few dozen distinct windows, each row set about a megabyte at HunyuanVideo's 720p shapes.
_HEAD_ROWS: dict[tuple[Any, ...], tuple[torch.Tensor, torch.Tensor]] = {}
HEAD_ROWS_BYTES = 512 * 2**20


def _head_rows(
    geom: TileGeometry, window: Window, text_len: int, keys: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(count [M], index [M, NK])`` int32 on ``device`` of one head's window (:func:`block_tables`),
    built once: a layer's tables are these rows stacked, one device copy instead of a host build and a
    host-to-device transfer per call (which cost about as much as the sparsity saved)."""
    key = (geom.grid, geom.tile, geom.clamp(window), text_len, keys, str(device))
    rows = _HEAD_ROWS.get(key)
    if rows is None:
        count, index = block_tables(geom, [window], text_len, keys)
        held = sum(i.numel() * 4 for _, i in _HEAD_ROWS.values())
        if held + index.numel() * 4 > HEAD_ROWS_BYTES:
            _HEAD_ROWS.clear()
        rows = _HEAD_ROWS[key] = (count[0, 0].to(device), index[0, 0].to(device))
    return rows


def _orders(
    grid: tuple[int, int, int], tile: tuple[int, int, int], length: int, keys: int
) -> tuple[torch.Tensor, ...]:
    """``(query order, key order, inverse)``: the raster rows of the tile-major queries (all ``length``
    tokens) and keys (the video and the first ``keys`` text tokens), and the tile-major row of each raster
    query row."""
    order = _tile_order(grid, tile)
    n = order.numel()
    queries = torch.cat([order, torch.arange(n, length)])
    inverse = torch.empty_like(queries)
    inverse[queries] = torch.arange(length)
    return queries, torch.cat([order, torch.arange(n, n + keys)]), inverse


@functools.cache
def _no_partial_blocks(m: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The partial-block ("mask") tables, empty: ``[1, 1, M]`` zeros and ``[1, 1, M, 1]``, which
    FlashAttention-4 broadcasts over batch and heads."""
    return (
        torch.zeros(1, 1, m, dtype=torch.int32, device=device),
        torch.zeros(1, 1, m, 1, dtype=torch.int32, device=device),
    )


def sparse_tensors(
    geom: TileGeometry, windows: list[Window], text_len: int, keys: int, device: torch.device
) -> Any:
    """The ``BlockSparseTensorsTorch`` of the pattern. Every kept block is "full" (no mask inside it);
    the key length cuts the last text block, which FlashAttention-4 masks because it walks a row's
    blocks from the last index down and masks the key length in the first block it takes: the rows are
    ascending and each one ends with that block (:func:`block_tables`)."""
    from flash_attn.cute.block_sparsity import BlockSparseTensorsTorch

    heads = [_head_rows(geom, tuple(int(x) for x in w), text_len, keys, device) for w in windows]  # type: ignore[arg-type]
    count = torch.stack([c for c, _ in heads])[None]
    index = torch.stack([i for _, i in heads])[None]
    no_count, no_index = _no_partial_blocks(count.shape[2], str(device))
    tile_tokens = geom.tile[0] * geom.tile[1] * geom.tile[2]
    return BlockSparseTensorsTorch(
        mask_block_cnt=no_count,
        mask_block_idx=no_index,
        full_block_cnt=count,
        full_block_idx=index,
        block_size=(tile_tokens, BLOCK_KV),
    )


def sta_forward_fa4(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    windows: list[Window],
    text_valid: torch.Tensor | None,
    geom: TileGeometry,
    scale: float,
) -> torch.Tensor:
    """STA's output ``[B, L, H, D]`` through flash-attn-4 (the caller checked :func:`why_not`)."""
    from flash_attn.cute.interface import flash_attn_func

    n = geom.num_tokens
    text_len = q.shape[1] - n
    keys = text_len if text_valid is None else text_keys(text_valid)
    assert keys is not None, "why_not() admits prefix text masks only"
    queries, key_rows, inverse = _cached_on(q.device, _orders, geom.grid, geom.tile, q.shape[1], keys)
    # one gather each into tile-major order (the text after the video), one back
    qt, kt, vt = q.index_select(1, queries), k.index_select(1, key_rows), v.index_select(1, key_rows)
    tensors = sparse_tensors(geom, windows, text_len, keys, q.device)
    out = flash_attn_func(qt, kt, vt, softmax_scale=scale, block_sparse_tensors=tensors)
    out = out[0] if isinstance(out, tuple) else out
    return out.index_select(1, inverse)
