"""Step-Video's video VAE (``vae/vae_v2.safetensors``): 64 latent channels, 16x spatial and 8x
temporal compression, causal 3D convolutions, decoded in chunks of 3 latent frames (17 video frames)
blended at the chunk borders.

Our own implementation of the reference's ``stepvideo/vae/vae.py`` (``AutoencoderKL``, version 2)
with the same parameter names (so the released weights load as they are; the released
``decoder.conv_out.*`` is the reference's ``decoder.conv_out.conv.*``, renamed on load as the
reference does) and the same numerics:

- every GroupNorm normalises each frame on its own (the reference's ``base_group_norm.spatial``,
  switched on for version 2);
- the ResNet convolutions pad time causally with zeros after the norm and SiLU;
- the decoder's patchify path: ``conv_in`` plus a channel-duplicating shortcut, then a 2x2x2
  pixel-shuffle convolution plus a channel-duplicating shortcut, the first shuffled frame dropped;
- the mid attention is one head over all tokens of the chunk, causal in raster order;
- :meth:`StepVideoVAE.decode` splits the latents into chunks of ``latent_len`` frames, decodes each
  (dropping the first 3 frames of each chunk's output), concatenates and mixes the frames on each side
  of a border (60 % own, 40 % the neighbour's, the later frame first).

A weights file with only ``decoder.*`` tensors loads as a decoder-only VAE (text-to-video needs
nothing else); :meth:`StepVideoVAE.encode` then says why it cannot run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

WEIGHT_FILES = ("vae_v2.safetensors", "diffusion_pytorch_model.safetensors")
DEFAULT_TILE, DEFAULT_TILE_STRIDE = 256, 192  # pixels: latent tiles of 16 started every 12
TEMPORAL_UP_LAYERS = (2, 3)  # decoder levels that upsample time too
ENCODER_TIME_DOWN_LAYERS = (1, 2)  # encoder levels that downsample time too


@dataclass(frozen=True)
class StepVideoVAEConfig:
    """The VAE's ``config.json`` keys (FastVideo's diffusers-style mirror) with the released values."""

    in_channels: int = 3
    out_channels: int = 3
    z_channels: int = 64
    num_res_blocks: int = 2
    version: int = 2
    frame_len: int = 17  # video frames per chunk
    world_size: int = 1
    spatial_compression_ratio: int = 16
    temporal_compression_ratio: int = 8
    scaling_factor: float = 1.0
    encoder_ch: int = 32
    encoder_ch_mult: tuple[int, ...] = (4, 8, 16, 16)
    decoder_ch: int = 128
    decoder_ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        for key in ("encoder_ch_mult", "decoder_ch_mult"):
            object.__setattr__(self, key, tuple(getattr(self, key)))
        if self.version != 2:
            raise ValueError(
                f"version={self.version}: only the version-2 VAE (vae_v2.safetensors, z_channels=64) is "
                "supported; set version to 2"
            )
        if len(self.decoder_ch_mult) != 4 or len(self.encoder_ch_mult) != 4:
            raise ValueError(
                "encoder_ch_mult and decoder_ch_mult must have 4 levels (16x spatial, 8x temporal)"
            )
        widths = [self.decoder_ch * m for m in self.decoder_ch_mult] + [
            self.encoder_ch * m for m in self.encoder_ch_mult
        ]
        if any(w % 32 for w in widths):
            raise ValueError(f"VAE widths {widths} must be multiples of 32 (GroupNorm with 32 groups)")

    @property
    def latent_len(self) -> int:
        """Latent frames per chunk (17 video frames -> 3)."""
        return (self.frame_len - 1) // self.temporal_compression_ratio + 1

    @classmethod
    def from_json(cls, config: dict[str, Any]) -> StepVideoVAEConfig:
        names = {f for f in cls.__dataclass_fields__ if f != "extra"}
        known = {k: v for k, v in config.items() if k in names}
        return cls(**known, extra={k: v for k, v in config.items() if k not in names})


# --------------------------------------------------------------------------------------------------
# Building blocks (parameter names as in the reference)
# --------------------------------------------------------------------------------------------------


def frame_group_norm(x: torch.Tensor, norm: nn.GroupNorm, silu: bool) -> torch.Tensor:
    """GroupNorm of each frame of ``x`` ``(B, C, T, H, W)`` on its own (optionally then SiLU)."""
    b, c, t, h, w = x.shape
    y = x.transpose(1, 2).reshape(b * t, c, h, w)
    y = F.group_norm(y, norm.num_groups, norm.weight, norm.bias, norm.eps)
    if silu:
        y = F.silu(y)
    return y.reshape(b, t, c, h, w).transpose(1, 2)


class CausalConv3d(nn.Module):
    """A 3D convolution padded causally in time (zeros before the first frame when ``causal``) and
    symmetrically in space; weights at ``.conv``."""

    def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int, int], stride: int = 1) -> None:
        super().__init__()
        k = (kernel,) * 3 if isinstance(kernel, int) else tuple(kernel)
        self.kt, self.kh, self.kw = k
        self.conv = nn.Conv3d(cin, cout, k, stride=(stride, 1, 1) if isinstance(stride, int) else stride)

    def forward(self, x: torch.Tensor, causal: bool = True) -> torch.Tensor:
        pw, ph = self.kw // 2, self.kh // 2
        return self.conv(F.pad(x, (pw, pw, ph, ph, self.kt - 1 if causal else 0, 0)))


def pixel_shuffle_3d(x: torch.Tensor, factor: int) -> torch.Tensor:
    """``(B, C*f^3, T, H, W)`` -> ``(B, C, T*f - (f-1), H*f, W*f)``: channels to a 2x2x2 block, the
    first frame of the first block dropped (causal)."""
    b, c, t, h, w = x.shape
    x = x.view(b, c // factor**3, factor, factor, factor, t, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
    x = x.reshape(b, c // factor**3, t * factor, h * factor, w * factor)
    return x[:, :, factor - 1 :]


def duplicate_shuffle(x: torch.Tensor, cout: int, factor: int) -> torch.Tensor:
    """The reference's channel-duplicating shortcut: repeat channels, then :func:`pixel_shuffle_3d`."""
    repeats = cout * factor**3 // x.shape[1]
    return pixel_shuffle_3d(x.repeat_interleave(repeats, dim=1), factor)


def pixel_unshuffle_3d(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Inverse of :func:`pixel_shuffle_3d` (``f-1`` zero frames padded in front first)."""
    x = F.pad(x, (0, 0, 0, 0, factor - 1, 0))
    b, c, t, h, w = x.shape
    x = x.view(b, c, t // factor, factor, h // factor, factor, w // factor, factor).permute(
        0, 1, 3, 5, 7, 2, 4, 6
    )
    return x.reshape(b, c * factor**3, t // factor, h // factor, w // factor)


def average_unshuffle(x: torch.Tensor, cout: int, factor: int) -> torch.Tensor:
    """The encoder's shortcut: :func:`pixel_unshuffle_3d`, then channel groups averaged to ``cout``."""
    x = pixel_unshuffle_3d(x, factor)
    b, c, t, h, w = x.shape
    return x.view(b, cout, c // cout, t, h, w).mean(dim=2)


class ResnetBlock(nn.Module):
    """``x + conv2(silu(gn2(conv1(silu(gn1(x))))))`` with causal zero padding after each norm; a
    1x1x1 ``nin_shortcut`` when the width changes."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(32, cin)
        self.conv1 = CausalConv3d(cin, cout, 3)
        self.norm2 = nn.GroupNorm(32, cout)
        self.conv2 = CausalConv3d(cout, cout, 3)
        if cin != cout:
            self.nin_shortcut = CausalConv3d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(frame_group_norm(x, self.norm1, silu=True))
        h = self.conv2(frame_group_norm(h, self.norm2, silu=True))
        return h + (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x)


class AttnBlock(nn.Module):
    """One-head self-attention over all tokens of a chunk (raster order, causal), 1x1x1 projections."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(32, channels)
        self.q, self.k, self.v, self.proj_out = (CausalConv3d(channels, channels, 1) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = frame_group_norm(x, self.norm, silu=False)
        b, c, t, hh, ww = h.shape
        q, k, v = (
            proj(h).flatten(2).transpose(1, 2)[:, None] for proj in (self.q, self.k, self.v)
        )  # (B,1,L,C)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)[:, 0]  # (B, L, C)
        return x + self.proj_out(out.transpose(1, 2).reshape(b, c, t, hh, ww))


class UpsampleResBlock(nn.Module):
    """The reference's ``Res3DBlockUpsample`` (same width): ``x + silu(gn2(conv2(silu(gn1(conv1(x))))) + x)``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = CausalConv3d(channels, channels, 3)
        self.norm1 = nn.GroupNorm(32, channels)
        self.conv2 = CausalConv3d(channels, channels, 3)
        self.norm2 = nn.GroupNorm(32, channels)

    def forward(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        h = frame_group_norm(self.conv1(x, causal), self.norm1, silu=True)
        h = frame_group_norm(self.conv2(h, causal), self.norm2, silu=False)
        return F.silu(h + x) + x


class Upsample3D(nn.Module):
    """Nearest 2x in time and space, then :class:`UpsampleResBlock` (weights at ``conv3d``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv3d = UpsampleResBlock(channels)

    def forward(self, x: torch.Tensor, causal: bool = True) -> torch.Tensor:
        return self.conv3d(F.interpolate(x, scale_factor=2.0, mode="nearest"), causal)


class Upsample2D(nn.Module):
    """Per frame: nearest 2x in space, then a 3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, causal: bool = True) -> torch.Tensor:
        b, c, t, h, w = x.shape
        y = x.transpose(1, 2).reshape(b * t, c, h, w)
        y = self.conv(F.interpolate(y, scale_factor=2.0, mode="nearest"))
        return y.reshape(b, t, c, 2 * h, 2 * w).transpose(1, 2)


class Downsample2D(nn.Module):
    """Per frame: a stride-2 3x3 convolution, zero-padded one row/column at the end."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor, causal: bool = True) -> torch.Tensor:
        b, c, t, h, w = x.shape
        y = self.conv(F.pad(x.transpose(1, 2).reshape(b * t, c, h, w), (0, 1, 0, 1)))
        return y.reshape(b, t, c, *y.shape[-2:]).transpose(1, 2)


class Downsample3D(nn.Module):
    """A stride-2 causal 3x3x3 convolution (time, height, width)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = CausalConv3d(channels, channels, 3, stride=(2, 2, 2))

    def forward(self, x: torch.Tensor, causal: bool = True) -> torch.Tensor:
        conv = self.conv
        # stride 2 in time: the reference pads kt - 1 + max(1 - stride, 0) = 2 frames in front
        return conv.conv(F.pad(x, (1, 1, 1, 1, 2 if causal else 0, 0)))


class Level(nn.Module):
    """A resolution level: ``block`` (ResNets), an empty ``attn`` list (kept for the names), ``up/downsample``."""

    def __init__(self, blocks: list[nn.Module]) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList()


class Mid(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class VideoDecoder(nn.Module):
    """Latent chunk ``(B, z, 3, h, w)`` -> video chunk ``(B, 3, 17, 16h, 16w)``."""

    def __init__(self, cfg: StepVideoVAEConfig) -> None:
        super().__init__()
        ch, mult, z = cfg.decoder_ch, cfg.decoder_ch_mult, cfg.z_channels
        block_in = ch * mult[-1]
        self.patch_channels = 4 * z * 2**3
        self.block_in = block_in
        self.conv_in = CausalConv3d(z, self.patch_channels, 3)
        self.conv_unpatchify = nn.Module()
        self.conv_unpatchify.conv = CausalConv3d(self.patch_channels, block_in * 8, 3)
        self.mid = Mid(block_in)
        levels: list[Level] = []
        for i in reversed(range(len(mult))):
            out = ch * mult[i]
            level = Level(
                [ResnetBlock(block_in if j == 0 else out, out) for j in range(cfg.num_res_blocks + 1)]
            )
            block_in = out
            if i != 0:
                level.upsample = Upsample3D(block_in) if i in TEMPORAL_UP_LAYERS else Upsample2D(block_in)
            levels.insert(0, level)
        self.up = nn.ModuleList(levels)
        self.norm_out = nn.GroupNorm(32, block_in)
        self.conv_out = CausalConv3d(block_in, cfg.out_channels, 3)
        self.crop = 3  # the reference's temporal_downsample - 1

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.tail(self.head(z))

    def head(self, z: torch.Tensor) -> torch.Tensor:
        """Latent chunk -> the mid block's output ``(B, 4 * ch, 5, 2h, 2w)`` (its attention sees the whole chunk)."""
        h = self.conv_in(z) + duplicate_shuffle(z, self.patch_channels, 1)
        h = pixel_shuffle_3d(self.conv_unpatchify.conv(h), 2) + duplicate_shuffle(h, self.block_in, 2)
        return self.mid(h)

    def tail(self, h: torch.Tensor) -> torch.Tensor:
        """The mid block's output -> video (the up levels: convolutions and per-frame norms, where the memory goes)."""
        for i in reversed(range(len(self.up))):
            level = self.up[i]
            for block in level.block:
                h = block(h)
            if i != 0:
                h = level.upsample(h)
        h = self.conv_out(frame_group_norm(h, self.norm_out, silu=True))
        return h[:, :, self.crop :]


class VideoEncoder(nn.Module):
    """Video chunk ``(B, 3, 17, H, W)`` -> ``(B, 2z, 3, H/16, W/16)`` (mean and log-variance)."""

    def __init__(self, cfg: StepVideoVAEConfig) -> None:
        super().__init__()
        ch, mult, z = cfg.encoder_ch, cfg.encoder_ch_mult, cfg.z_channels
        self.conv_in = CausalConv3d(cfg.in_channels, ch, 3)
        levels = []
        block_in = ch
        for i, m in enumerate(mult):
            out = ch * m
            level = Level([ResnetBlock(block_in if j == 0 else out, out) for j in range(cfg.num_res_blocks)])
            block_in = out
            if i != len(mult) - 1:
                level.downsample = (
                    Downsample3D(block_in) if i in ENCODER_TIME_DOWN_LAYERS else Downsample2D(block_in)
                )
            levels.append(level)
        self.down = nn.ModuleList(levels)
        self.mid = Mid(block_in)
        self.norm_out = nn.GroupNorm(32, block_in)
        self.patch_channels = 4 * z * 2**3
        self.conv_patchify = nn.Module()
        self.conv_patchify.conv = CausalConv3d(block_in, self.patch_channels // 8, 3)
        self.conv_out = CausalConv3d(self.patch_channels, 2 * z, 3)
        self.z = z

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            for block in level.block:
                h = block(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = frame_group_norm(self.mid(h), self.norm_out, silu=True)
        h = pixel_unshuffle_3d(self.conv_patchify.conv(h), 2) + average_unshuffle(h, self.patch_channels, 2)
        return self.conv_out(h) + average_unshuffle(h, 2 * self.z, 1)


# --------------------------------------------------------------------------------------------------
# The VAE
# --------------------------------------------------------------------------------------------------


class StepVideoVAE(nn.Module):
    """``decode(z (B, 64, T', h, w)) -> (B, 3, T, 16h, 16w)`` unclamped; ``encode`` for TI2V."""

    def __init__(self, config: StepVideoVAEConfig | None = None, *, with_encoder: bool = True) -> None:
        super().__init__()
        self.config = cfg = config or StepVideoVAEConfig()
        self.decoder = VideoDecoder(cfg)
        self.encoder = VideoEncoder(cfg) if with_encoder else None
        self.use_tiling = False
        self.tile_size, self.tile_stride = DEFAULT_TILE, DEFAULT_TILE_STRIDE

    # ---- spatial tiling (the core's DecodingStage switches it with enable_tiling / disable_tiling) --

    def enable_tiling(self, tile_size: int | None = None, tile_stride: int | None = None) -> None:
        """Decode each latent chunk in overlapping spatial tiles of ``tile_size`` pixels (default 256)
        started every ``tile_stride`` pixels (default 192), blended linearly across the overlap. Both
        are multiples of the 16x spatial compression, with ``tile_size / 2 <= tile_stride < tile_size``.
        Sizes set earlier are kept when called without arguments."""
        size = self.tile_size if tile_size is None else tile_size
        stride = self.tile_stride if tile_stride is None else tile_stride
        ratio = self.config.spatial_compression_ratio
        if size % ratio or stride % ratio or not (size / 2 <= stride < size):
            raise ValueError(
                f"tile_size={size}, tile_stride={stride}: both must be multiples of {ratio} pixels with "
                f"tile_size / 2 <= tile_stride < tile_size; e.g. enable_tiling(256, 192)"
            )
        self.tile_size, self.tile_stride = size, stride
        self.use_tiling = True

    def disable_tiling(self) -> None:
        self.use_tiling = False

    # ---- loading ---------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, dtype: torch.dtype | None = torch.float32, device: torch.device | str = "cpu"
    ) -> StepVideoVAE:
        """Load ``folder`` (``config.json`` optional; ``vae_v2.safetensors`` or
        ``diffusion_pytorch_model.safetensors``). Only ``decoder.*`` tensors: a decoder-only VAE.

        :raises CheckpointError: no weights file, or tensors that do not match the config.
        """
        from safetensors import safe_open

        from fastvideo.errors import CheckpointError

        folder = Path(folder)
        cfg_path = folder / "config.json"
        try:
            raw = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
            config = StepVideoVAEConfig.from_json(raw)
        except (OSError, json.JSONDecodeError, TypeError, ValueError) as e:
            raise CheckpointError(f"{cfg_path}: not a Step-Video VAE config ({e})") from e
        file = next((folder / n for n in WEIGHT_FILES if (folder / n).exists()), None)
        if file is None:
            raise CheckpointError(
                f"{folder}: no VAE weights; expected one of {', '.join(WEIGHT_FILES)} (the released vae/ folder)"
            )
        try:
            with safe_open(file, framework="pt") as f:
                state = {_our_name(k): f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # a truncated or corrupt file
            raise CheckpointError(f"{file}: cannot read the safetensors file ({e})") from e
        with_encoder = any(k.startswith("encoder.") for k in state)
        with torch.device("meta"):
            model = cls(config, with_encoder=with_encoder)
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        wrong = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != expected[k])
        if missing or unexpected or wrong:
            parts = []
            if missing:
                parts.append(f"missing {', '.join(missing[:5])}")
            if unexpected:
                parts.append(f"unexpected {', '.join(unexpected[:5])}")
            if wrong:
                k = wrong[0]
                parts.append(f"{k} has shape {tuple(state[k].shape)}, the config needs {expected[k]}")
            raise CheckpointError(f"{file}: weights do not match the VAE config ({'; '.join(parts)})")
        model.load_state_dict(
            {k: v.to(device=device, dtype=dtype or v.dtype) for k, v in state.items()}, assign=True
        )
        return model.eval()

    # ---- decoding / encoding ----------------------------------------------------------------

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder.conv_in.conv.weight.dtype

    def decode_chunk(self, z: torch.Tensor) -> torch.Tensor:
        """One chunk ``(B, C, latent_len, h, w)`` -> ``(B, 3, frame_len, 16h, 16w)``."""
        return self.decoder(z.to(self.dtype))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents ``(B, C, T', h, w)`` (``T'`` a multiple of ``latent_len``) -> frames ``(B, 3, T, H, W)``,
        chunk by chunk, blended at the chunk borders as the reference does. Unclamped. With
        :meth:`enable_tiling`, each chunk's mid block runs whole (its attention spans the chunk) and the
        up levels, where the memory goes, run in overlapping spatial tiles (:func:`spatial_tiles`)
        blended across the overlaps (:func:`assemble_tiles`), so memory is bounded by the tile size."""
        cfg = self.config
        if z.ndim != 5 or z.shape[1] != cfg.z_channels:
            raise ValueError(f"decode takes latents (B, {cfg.z_channels}, T', h, w), got {tuple(z.shape)}")
        if z.shape[2] % cfg.latent_len:
            raise ValueError(
                f"decode takes a multiple of {cfg.latent_len} latent frames (chunks of {cfg.frame_len} video "
                f"frames), got {z.shape[2]}"
            )
        tiles = spatial_tiles(self, z)
        if tiles is None:
            chunks = [self.decode_chunk(c) for c in z.split(cfg.latent_len, dim=2)]
            return blend_chunks(torch.cat(chunks, dim=2), cfg.frame_len)
        return assemble_tiles(self, z, [self.decoder.tail(t) for t in tiles])

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Video ``(B, 3, T, H, W)`` in [-1, 1] -> the posterior's mean and log-variance
        ``(B, 2 * z_channels, T', h, w)`` (mean first), chunk by chunk of ``frame_len`` frames (a last,
        shorter chunk too: one image gives one latent frame, as TI2V encodes its first frame)."""
        if self.encoder is None:
            raise RuntimeError(
                "this VAE was loaded from decoder-only weights (text-to-video), so it cannot encode; load "
                "the full vae_v2.safetensors (encoder.* tensors included) for image-to-video"
            )
        cfg = self.config
        if x.ndim != 5 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"encode takes video (B, {cfg.in_channels}, T, H, W), got {tuple(x.shape)}")
        x = x.to(self.dtype)
        return torch.cat([self.encoder(c) for c in x.split(cfg.frame_len, dim=2)], dim=2)


def blend_chunks(x: torch.Tensor, frame_len: int, keep: float = 0.6) -> torch.Tensor:
    """Mix the last frame of each chunk with the first of the next (``x`` ``(B, C, T, H, W)``):
    the later frame first (``keep`` own + the rest the neighbour's), then the earlier one with the
    updated later frame, as the reference's ``mix``."""
    t = x.shape[2]
    front = slice(frame_len - 1, t - 1, frame_len)
    back = slice(frame_len, t, frame_len)
    x = x.clone()
    x[:, :, back] = x[:, :, back] * keep + x[:, :, front] * (1 - keep)
    x[:, :, front] = x[:, :, front] * keep + x[:, :, back] * (1 - keep)
    return x


def _our_name(key: str) -> str:
    """Released name -> ours (the released ``decoder.conv_out.*`` is our ``decoder.conv_out.conv.*``)."""
    if key.startswith("decoder.conv_out.") and not key.startswith("decoder.conv_out.conv."):
        return "decoder.conv_out.conv." + key[len("decoder.conv_out.") :]
    return key


def _starts(length: int, tile: int, stride: int) -> list[int]:
    """Tile starts along one latent axis: every ``stride``, until a tile reaches the end."""
    starts = [0]
    while starts[-1] + tile < length:
        starts.append(starts[-1] + stride)
    return starts


MID_SCALE = 2  # the mid block's output is 2x the latents spatially (the unpatchify shuffle)


def _geometry(vae: StepVideoVAE, z: torch.Tensor) -> tuple[list[int], list[int], int, int, int]:
    """Tile starts along the mid output's rows and columns, tile size and stride there, and the
    output pixels per mid pixel."""
    r = vae.config.spatial_compression_ratio // MID_SCALE
    tile, stride = vae.tile_size // r, vae.tile_stride // r
    h, w = z.shape[3] * MID_SCALE, z.shape[4] * MID_SCALE
    return _starts(h, tile, stride), _starts(w, tile, stride), tile, stride, r


def _is_tiled(vae: StepVideoVAE, z: torch.Tensor) -> bool:
    """Whether :func:`spatial_tiles` cuts ``z``'s frames (tiling on and more than one tile)."""
    if not vae.use_tiling:
        return False
    rows, cols, _, _, _ = _geometry(vae, z)
    return len(rows) > 1 or len(cols) > 1


def spatial_tiles(vae: StepVideoVAE, z: torch.Tensor) -> list[torch.Tensor] | None:
    """The tiles of a tiled decode of latents ``z``: for each chunk of ``latent_len`` frames, its mid
    block output (:meth:`VideoDecoder.head`, whole: the attention spans the chunk) cut in windows of
    ``tile_size`` output pixels started every ``tile_stride`` (raster order; the last ones shorter
    where they reach the edge); each goes through :meth:`VideoDecoder.tail`. None when tiling is off
    or one tile covers a frame."""
    if not _is_tiled(vae, z):
        return None
    rows, cols, tile, _, _ = _geometry(vae, z)
    tiles = []
    for c in z.split(vae.config.latent_len, dim=2):
        h = vae.decoder.head(c.to(vae.dtype))
        tiles += [h[:, :, :, i : i + tile, j : j + tile] for i in rows for j in cols]
    return tiles


def _ramp(size: int, overlap: int, first: bool, last: bool) -> torch.Tensor:
    """A tile's blend weights along one axis (``size`` pixels): rising linearly over the ``overlap``
    pixels it shares with the previous tile, falling over those it shares with the next one."""
    w = torch.ones(size, dtype=torch.float64)
    ramp = (torch.arange(overlap, dtype=torch.float64) + 0.5) / overlap
    if not first:
        w[:overlap] = ramp
    if not last:
        w[size - overlap :] = ramp.flip(0)
    return w


def assemble_tiles(vae: StepVideoVAE, z: torch.Tensor, tiles: list[torch.Tensor]) -> torch.Tensor:
    """The video from the decoded tiles of :func:`spatial_tiles` (same order): each chunk's tiles
    summed with weights that cross-fade linearly over every overlap (they sum to 1 everywhere), the
    chunks then blended at their borders as :meth:`StepVideoVAE.decode` does."""
    rows, cols, tile, stride, r = _geometry(vae, z)
    s = vae.config.spatial_compression_ratio
    height, width, overlap = z.shape[3] * s, z.shape[4] * s, (tile - stride) * r
    per_chunk = len(rows) * len(cols)
    chunks = []
    for c in range(len(tiles) // per_chunk):
        mine = tiles[c * per_chunk : (c + 1) * per_chunk]
        b, ch, t = mine[0].shape[:3]
        out = torch.zeros(b, ch, t, height, width, dtype=torch.float64, device=mine[0].device)
        for k, piece in enumerate(mine):
            i, j = divmod(k, len(cols))
            y, x = rows[i] * r, cols[j] * r
            h, w = piece.shape[3], piece.shape[4]
            wy = _ramp(h, overlap, i == 0, i == len(rows) - 1)
            wx = _ramp(w, overlap, j == 0, j == len(cols) - 1)
            weight = (wy[:, None] * wx[None, :]).to(out.device)
            out[:, :, :, y : y + h, x : x + w] += piece.double() * weight
        chunks.append(out.to(mine[0].dtype))
    return blend_chunks(torch.cat(chunks, dim=2), vae.config.frame_len)


class StepVideoVAESplitter:
    """The parallel VAE decode's per-class part (``fastvideo.parallel.vae``): the tiles are the
    latent chunks (3 latent frames each) or, with spatial tiling on, the spatial tiles of each chunk's
    mid block output (every rank runs the mid blocks, which are small); the
    core spreads them over the ranks and :func:`assemble_tiles` / :func:`blend_chunks` put them
    together exactly as :meth:`StepVideoVAE.decode` does in one process."""

    def split(self, vae: StepVideoVAE, z: torch.Tensor) -> list[torch.Tensor] | None:
        n = vae.config.latent_len
        if z.ndim != 5 or z.shape[2] % n:
            return None  # not chunkable: decode says why, on every rank
        tiles = spatial_tiles(vae, z)
        if tiles is not None:
            return tiles
        if z.shape[2] <= n:
            return None  # one chunk, one tile: decoded whole on every rank
        return list(z.split(n, dim=2))

    def decode_tile(self, vae: StepVideoVAE, tile: torch.Tensor) -> torch.Tensor:
        cfg = vae.config
        if tile.shape[1] == cfg.z_channels and tile.shape[2] == cfg.latent_len:
            return vae.decode_chunk(tile)  # a latent chunk
        return vae.decoder.tail(tile)  # a spatial tile of a chunk's mid block output

    def assemble(self, vae: StepVideoVAE, z: torch.Tensor, tiles: list[torch.Tensor]) -> torch.Tensor:
        if _is_tiled(vae, z):
            return assemble_tiles(vae, z, tiles)
        return blend_chunks(torch.cat(tiles, dim=2), vae.config.frame_len)
