"""Parallel VAE decoding: the spatial tiles of a tiled decode are split across ranks.

For VAEs with diffusers' tiled-decoding interface (``AutoencoderKLWan``: ``use_tiling``,
``tile_sample_min_*``, ``tile_sample_stride_*``, ``blend_v`` / ``blend_h``, a causal decoder with a
feature cache), rank ``r`` decodes tiles ``r, r + N, r + 2N, ...`` (each over all frames), the raw
tiles are all-gathered, and every rank blends them in the order the VAE's own ``tiled_decode`` does,
with the VAE's own blend functions. The frames therefore equal one process's tiled decode; the
decode time is divided by the number of ranks. Whether to tile is the decoding stage's decision
(``PipelineConfig.vae_tiling``, or automatic for large videos), the same in one process and in N.

Anything else (tiling off, a single tile, another VAE class) decodes the whole video on every rank,
as one process would.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from fastvideo.parallel import comm

if TYPE_CHECKING:
    from fastvideo.parallel.state import ParallelState

_NEEDS = (
    "use_tiling",
    "tile_sample_min_height",
    "tile_sample_min_width",
    "tile_sample_stride_height",
    "tile_sample_stride_width",
    "spatial_compression_ratio",
    "clear_cache",
    "post_quant_conv",
    "decoder",
    "blend_v",
    "blend_h",
    "tiled_decode",
)


def supports_parallel_decode(vae: Any) -> bool:
    """Whether ``vae`` has the tiled-decoding interface this module splits across ranks."""
    return all(hasattr(vae, a) for a in _NEEDS)


def _geometry(vae: Any) -> dict[str, int]:
    ratio = vae.spatial_compression_ratio
    patch = getattr(vae.config, "patch_size", None) or 1
    stride_h, stride_w = vae.tile_sample_stride_height // patch, vae.tile_sample_stride_width // patch
    return {
        "lat_h": vae.tile_sample_min_height // ratio,
        "lat_w": vae.tile_sample_min_width // ratio,
        "lat_stride_h": vae.tile_sample_stride_height // ratio,
        "lat_stride_w": vae.tile_sample_stride_width // ratio,
        "stride_h": stride_h,
        "stride_w": stride_w,
        "blend_h": vae.tile_sample_min_height // patch - stride_h,
        "blend_w": vae.tile_sample_min_width // patch - stride_w,
        "ratio": ratio,
        "patch": patch,
    }


def _decode_tile(vae: Any, tile: torch.Tensor) -> torch.Tensor:
    """One latent tile ``(B, C, T, h, w)`` through the causal decoder, frame by frame (no clamp)."""
    vae.clear_cache()
    frames = []
    for k in range(tile.shape[2]):
        vae._conv_idx = [0]
        x = vae.post_quant_conv(tile[:, :, k : k + 1])
        frames.append(vae.decoder(x, feat_cache=vae._feat_map, feat_idx=vae._conv_idx, first_chunk=k == 0))
    vae.clear_cache()
    return torch.cat(frames, dim=2)


def _exchange(
    mine: list[torch.Tensor], total: int, dtype: torch.dtype, state: ParallelState
) -> list[torch.Tensor]:
    """Every rank's tiles to every rank, in tile order (tile ``t`` is decoded by rank ``t % N``)."""
    import torch.distributed as dist

    n = state.world_size
    slots = -(-total // n)
    shapes = torch.zeros(slots, 5, dtype=torch.long)
    for i, t in enumerate(mine):
        shapes[i] = torch.tensor(t.shape)
    group = dist.group.WORLD
    assert group is not None
    all_shapes = comm.all_gather(shapes.to(state.device), 0, group).cpu()  # (N * slots, 5)
    big = all_shapes.max(dim=0).values.tolist()
    buf = torch.zeros(slots, *big, dtype=dtype, device=state.device)
    for i, t in enumerate(mine):
        buf[i, : t.shape[0], : t.shape[1], : t.shape[2], : t.shape[3], : t.shape[4]] = t
    gathered = comm.all_gather(buf, 0, group)  # (N * slots, *big)
    tiles = []
    for index in range(total):
        row = (index % n) * slots + index // n
        b, c, f, h, w = all_shapes[row].tolist()
        tiles.append(gathered[row, :b, :c, :f, :h, :w].clone())
    return tiles


def parallel_decode(vae: Any, z: torch.Tensor, state: ParallelState) -> torch.Tensor | None:
    """Decode ``z`` ``(B, C, T, H, W)`` with its tiles spread over all ranks; every rank gets the video.

    :returns: ``(B, 3, F, H*s, W*s)`` clamped to [-1, 1], equal to ``vae.tiled_decode(z)``; or None
        when this VAE or request is not decoded in tiles (the caller decodes as one process does).
    """
    if not supports_parallel_decode(vae) or not vae.use_tiling or state.world_size == 1:
        return None
    g = _geometry(vae)
    _, _, _, height, width = z.shape
    if height <= g["lat_h"] and width <= g["lat_w"]:
        return None  # one tile: the VAE decodes without tiling
    origins = [
        (i, j) for i in range(0, height, g["lat_stride_h"]) for j in range(0, width, g["lat_stride_w"])
    ]
    mine = [
        _decode_tile(vae, z[:, :, :, i : i + g["lat_h"], j : j + g["lat_w"]])
        for i, j in origins[state.rank :: state.world_size]
    ]
    tiles = _exchange(mine, len(origins), next(vae.parameters()).dtype, state)
    cols = len(range(0, width, g["lat_stride_w"]))
    rows = [tiles[r * cols : (r + 1) * cols] for r in range(len(tiles) // cols)]
    return _blend(vae, rows, g, height, width)


def _blend(
    vae: Any, rows: list[list[torch.Tensor]], g: dict[str, int], height: int, width: int
) -> torch.Tensor:
    """Blend tiles with their upper and left neighbours (in place, in raster order, as the VAE does)."""
    out_rows = []
    for i, row in enumerate(rows):
        cropped = []
        for j, tile in enumerate(row):
            if i > 0:
                tile = vae.blend_v(rows[i - 1][j], tile, g["blend_h"])
            if j > 0:
                tile = vae.blend_h(row[j - 1], tile, g["blend_w"])
            row[j] = tile
            cropped.append(tile[:, :, :, : g["stride_h"], : g["stride_w"]])
        out_rows.append(torch.cat(cropped, dim=-1))
    sample_h, sample_w = height * g["ratio"] // g["patch"], width * g["ratio"] // g["patch"]
    dec = torch.cat(out_rows, dim=3)[:, :, :, :sample_h, :sample_w]
    if g["patch"] > 1:
        from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

        dec = unpatchify(dec, patch_size=g["patch"])
    return dec.clamp(-1.0, 1.0)
