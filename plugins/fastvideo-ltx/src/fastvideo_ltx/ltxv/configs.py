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
