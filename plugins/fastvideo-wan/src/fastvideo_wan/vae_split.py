"""Tile-by-tile decoding of diffusers' ``AutoencoderKLWan``, for the core's parallel VAE decode.

``WanFamily.vae_splitters`` names :class:`WanVAESplitter` for the VAE class; the core
(:mod:`fastvideo.parallel.vae`) spreads the tiles over the ranks and calls :meth:`~WanVAESplitter.assemble`
on every rank. The tiles are the ones the VAE's own ``tiled_decode`` makes (each over all frames),
decoded frame by frame through the causal decoder with its feature cache, and blended in raster
order with the VAE's own ``blend_v`` / ``blend_h``, so the frames equal one process's tiled decode.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

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


class WanVAESplitter:
    """The :class:`fastvideo.parallel.vae.VAESplitter` of ``AutoencoderKLWan`` (Wan 2.1 and 2.2)."""

    def split(self, vae: Any, z: torch.Tensor) -> list[torch.Tensor] | None:
        if not all(hasattr(vae, a) for a in _NEEDS) or not vae.use_tiling:
            return None
        g = _geometry(vae)
        _, _, _, height, width = z.shape
        if height <= g["lat_h"] and width <= g["lat_w"]:
            return None  # one tile: the VAE decodes without tiling
        return [
            z[:, :, :, i : i + g["lat_h"], j : j + g["lat_w"]]
            for i in range(0, height, g["lat_stride_h"])
            for j in range(0, width, g["lat_stride_w"])
        ]

    def decode_tile(self, vae: Any, tile: torch.Tensor) -> torch.Tensor:
        """One latent tile ``(B, C, T, h, w)`` through the causal decoder, frame by frame (no clamp)."""
        import torch

        vae.clear_cache()
        frames = []
        for k in range(tile.shape[2]):
            vae._conv_idx = [0]
            x = vae.post_quant_conv(tile[:, :, k : k + 1])
            frames.append(
                vae.decoder(x, feat_cache=vae._feat_map, feat_idx=vae._conv_idx, first_chunk=k == 0)
            )
        vae.clear_cache()
        return torch.cat(frames, dim=2)

    def assemble(self, vae: Any, z: torch.Tensor, tiles: list[torch.Tensor]) -> torch.Tensor:
        """Blend tiles with their upper and left neighbours (in place, in raster order, as the VAE
        does), crop, and clamp to [-1, 1]."""
        import torch

        g = _geometry(vae)
        _, _, _, height, width = z.shape
        cols = len(range(0, width, g["lat_stride_w"]))
        rows = [tiles[r * cols : (r + 1) * cols] for r in range(len(tiles) // cols)]
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
