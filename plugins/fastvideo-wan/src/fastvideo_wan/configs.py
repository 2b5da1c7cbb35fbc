"""Real-size Wan DiT configurations: the ``transformer/config.json`` contents of the diffusers checkpoints.

Values come from diffusers' ``scripts/convert_wan_to_diffusers.py`` (``get_transformer_config``),
which wrote those checkpoints; keys it leaves out take the ``WanTransformer3DModel.__init__`` defaults
(``rope_max_seq_len=1024``, ``pos_embed_seq_len=None``, ``image_dim=None``), written out here.
Wan2.2 A14B models have two DiTs of one config (``transformer``: high-noise expert, ``transformer_2``:
low-noise expert); their second one is listed under ``"<name>/transformer_2"``.

``CONFIGS[name]`` feeds ``WanConfig.from_diffusers_config`` and ``WanTransformer3DModel(**...)`` alike
(drop the ``_``-keys for the latter).
"""

from __future__ import annotations

from typing import Any

_COMMON: dict[str, Any] = {
    "_class_name": "WanTransformer3DModel",
    "patch_size": [1, 2, 2],
    "attention_head_dim": 128,
    "text_dim": 4096,  # umT5-XXL
    "freq_dim": 256,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-06,
    "image_dim": None,
    "added_kv_proj_dim": None,
    "rope_max_seq_len": 1024,
    "pos_embed_seq_len": None,
}

_14B: dict[str, Any] = {**_COMMON, "num_attention_heads": 40, "num_layers": 40, "ffn_dim": 13824}

WAN21_T2V_1_3B: dict[str, Any] = {
    **_COMMON,
    "num_attention_heads": 12,  # dim 1536
    "num_layers": 30,
    "ffn_dim": 8960,
    "in_channels": 16,
    "out_channels": 16,
}

WAN21_T2V_14B: dict[str, Any] = {**_14B, "in_channels": 16, "out_channels": 16}

# 480P and 720P share the DiT architecture (different weights). in_channels = 16 noise + 4 mask + 16 image latents.
WAN21_I2V_14B: dict[str, Any] = {
    **_14B,
    "in_channels": 36,
    "out_channels": 16,
    "image_dim": 1280,  # CLIP ViT-H/14 penultimate hidden states (257 tokens)
    "added_kv_proj_dim": 5120,
}

# First-last-frame-to-video: the I2V DiT plus a learned position table over 2 x 257 image tokens.
WAN21_FLF2V_14B: dict[str, Any] = {**WAN21_I2V_14B, "pos_embed_seq_len": 514}

WAN22_TI2V_5B: dict[str, Any] = {
    **_COMMON,
    "num_attention_heads": 24,  # dim 3072
    "num_layers": 30,
    "ffn_dim": 14336,
    "in_channels": 48,  # Wan2.2 VAE (16x16 spatial compression, 48 channels)
    "out_channels": 48,
}

WAN22_T2V_A14B: dict[str, Any] = {**_14B, "in_channels": 16, "out_channels": 16}

# Image conditioning by latent concatenation only: no CLIP tokens in Wan2.2 I2V.
WAN22_I2V_A14B: dict[str, Any] = {**_14B, "in_channels": 36, "out_channels": 16}

CONFIGS: dict[str, dict[str, Any]] = {
    "wan2.1-t2v-1.3b": WAN21_T2V_1_3B,
    "wan2.1-t2v-14b": WAN21_T2V_14B,
    "wan2.1-i2v-14b-480p": WAN21_I2V_14B,
    "wan2.1-i2v-14b-720p": WAN21_I2V_14B,
    "wan2.1-flf2v-14b-720p": WAN21_FLF2V_14B,
    "wan2.2-ti2v-5b": WAN22_TI2V_5B,
    "wan2.2-t2v-a14b": WAN22_T2V_A14B,
    "wan2.2-t2v-a14b/transformer_2": WAN22_T2V_A14B,
    "wan2.2-i2v-a14b": WAN22_I2V_A14B,
    "wan2.2-i2v-a14b/transformer_2": WAN22_I2V_A14B,
}
