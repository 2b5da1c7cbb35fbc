"""Real-size HunyuanVideo DiT configuration: the ``transformer/config.json`` of the diffusers checkpoints.

``hunyuanvideo-community/HunyuanVideo`` and ``FastVideo/FastHunyuan-diffusers`` share this architecture
(13B parameters); the values are the ``HunyuanVideoTransformer3DModel.__init__`` defaults, which diffusers
set to this checkpoint, written out here. ``CONFIGS[name]`` feeds ``HunyuanConfig.from_diffusers_config``
and ``HunyuanVideoTransformer3DModel(**...)`` alike (drop the ``_``-keys for the latter).
"""

from __future__ import annotations

from typing import Any

HUNYUANVIDEO_T2V_13B: dict[str, Any] = {
    "_class_name": "HunyuanVideoTransformer3DModel",
    "in_channels": 16,
    "out_channels": 16,
    "num_attention_heads": 24,  # dim 3072
    "attention_head_dim": 128,
    "num_layers": 20,  # dual-stream blocks
    "num_single_layers": 40,
    "num_refiner_layers": 2,
    "mlp_ratio": 4.0,
    "patch_size": 2,
    "patch_size_t": 1,
    "qk_norm": "rms_norm",
    "guidance_embeds": True,
    "text_embed_dim": 4096,  # llava-llama-3-8b hidden size
    "pooled_projection_dim": 768,  # CLIP ViT-L/14 text
    "rope_theta": 256.0,
    "rope_axes_dim": [16, 56, 56],
    "image_condition_type": None,
}

CONFIGS: dict[str, dict[str, Any]] = {
    "hunyuanvideo-t2v-13b": HUNYUANVIDEO_T2V_13B,
    "fasthunyuan-t2v-13b": HUNYUANVIDEO_T2V_13B,
}
