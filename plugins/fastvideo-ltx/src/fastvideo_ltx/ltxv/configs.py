"""Real-size LTX-Video DiT configurations: the ``transformer/config.json`` of the diffusers checkpoints.

2B (``Lightricks/LTX-Video`` 0.9.0 / 0.9.1 / 0.9.5 and the 2B distilled releases): diffusers'
``LTXVideoTransformer3DModel`` defaults, written out. 13B (``-0.9.7-dev``, ``-0.9.7-distilled``,
``-0.9.8-13B-distilled``): 48 blocks of 32 heads x 128 (width 4096), as diffusers'
``scripts/convert_ltx_to_diffusers.py`` writes them. ``CONFIGS[name]`` feeds
``LTXVideoConfig.from_diffusers_config`` and ``LTXVideoTransformer3DModel(**...)`` alike (drop the
``_``-keys for the latter).
"""

from __future__ import annotations

from typing import Any

LTXV_2B: dict[str, Any] = {
    "_class_name": "LTXVideoTransformer3DModel",
    "in_channels": 128,
    "out_channels": 128,
    "patch_size": 1,
    "patch_size_t": 1,
    "num_attention_heads": 32,
    "attention_head_dim": 64,  # width 2048
    "cross_attention_dim": 2048,
    "num_layers": 28,
    "activation_fn": "gelu-approximate",
    "qk_norm": "rms_norm_across_heads",
    "norm_elementwise_affine": False,
    "norm_eps": 1e-6,
    "caption_channels": 4096,  # T5-v1.1-XXL
    "attention_bias": True,
    "attention_out_bias": True,
}

LTXV_13B: dict[str, Any] = {
    **LTXV_2B,
    "attention_head_dim": 128,  # width 4096
    "cross_attention_dim": 4096,
    "num_layers": 48,
}

CONFIGS: dict[str, dict[str, Any]] = {"ltx-video-2b": LTXV_2B, "ltx-video-13b": LTXV_13B}

#: ``AutoencoderKLLTXVideo`` of 0.9.5 / 0.9.7 / 0.9.8 (timestep-conditioned decoder), as diffusers'
#: conversion script writes it.
VAE_095: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 128,
    "block_out_channels": (128, 256, 512, 1024, 2048),
    "down_block_types": ("LTXVideo095DownBlock3D",) * 4,
    "decoder_block_out_channels": (256, 512, 1024),
    "layers_per_block": (4, 6, 6, 2, 2),
    "decoder_layers_per_block": (5, 5, 5, 5),
    "spatio_temporal_scaling": (True, True, True, True),
    "decoder_spatio_temporal_scaling": (True, True, True),
    "decoder_inject_noise": (False, False, False, False),
    "downsample_type": ("spatial", "temporal", "spatiotemporal", "spatiotemporal"),
    "upsample_residual": (True, True, True),
    "upsample_factor": (2, 2, 2),
    "timestep_conditioning": True,
    "patch_size": 4,
    "patch_size_t": 1,
    "resnet_norm_eps": 1e-6,
    "scaling_factor": 1.0,
    "encoder_causal": True,
    "decoder_causal": False,
    "spatial_compression_ratio": 32,
    "temporal_compression_ratio": 8,
}

#: ``LTXLatentUpsamplerModel`` of the 0.9.7 / 0.9.8 spatial upscalers (2x).
UPSAMPLER_097: dict[str, Any] = {
    "in_channels": 128,
    "mid_channels": 512,
    "num_blocks_per_stage": 4,
    "dims": 3,
    "spatial_upsample": True,
    "temporal_upsample": False,
}

#: T5-v1.1-XXL encoder (the text encoder of every LTX-Video 0.9.x checkpoint).
T5_XXL: dict[str, Any] = {
    "vocab_size": 32128,
    "d_model": 4096,
    "d_kv": 64,
    "d_ff": 10240,
    "num_layers": 24,
    "num_heads": 64,
    "relative_attention_num_buckets": 32,
    "feed_forward_proj": "gated-gelu",
}
