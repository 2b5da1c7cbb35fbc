"""Real-size Cosmos DiT configurations: the ``transformer/config.json`` contents of the diffusers checkpoints.

Values from diffusers' ``scripts/convert_cosmos_to_diffusers.py`` (``TRANSFORMER_CONFIGS``), which
wrote those checkpoints; keys it leaves out take ``CosmosTransformer3DModel.__init__``'s defaults,
written out here so that each dict is complete.
"""

from __future__ import annotations

from typing import Any

_COMMON: dict[str, Any] = {
    "_class_name": "CosmosTransformer3DModel",
    "out_channels": 16,
    "attention_head_dim": 128,
    "mlp_ratio": 4.0,
    "text_embed_dim": 1024,  # T5-11B
    "adaln_lora_dim": 256,
    "max_size": [128, 240, 240],
    "patch_size": [1, 2, 2],
    "concat_padding_mask": True,
    "extra_pos_embed_type": None,
    "use_crossattn_projection": False,
    "crossattn_proj_in_channels": 1024,
    "encoder_hidden_states_channels": 1024,
    "controlnet_block_every_n": None,
    "img_context_dim_in": None,
    "img_context_num_tokens": 256,
    "img_context_dim_out": 2048,
}
_2B: dict[str, Any] = {**_COMMON, "num_attention_heads": 16, "num_layers": 28}  # D = 2048
_14B: dict[str, Any] = {**_COMMON, "num_attention_heads": 40, "num_layers": 36}  # D = 5120

PREDICT2_2B_T2I: dict[str, Any] = {**_2B, "in_channels": 16, "rope_scale": [1.0, 4.0, 4.0]}
PREDICT2_14B_T2I: dict[str, Any] = {**_14B, "in_channels": 16, "rope_scale": [1.0, 4.0, 4.0]}
# Video2World: 16 latent channels + the condition mask.
PREDICT2_2B_V2W: dict[str, Any] = {**_2B, "in_channels": 17, "rope_scale": [1.0, 3.0, 3.0]}
PREDICT2_14B_V2W: dict[str, Any] = {**_14B, "in_channels": 17, "rope_scale": [20 / 24, 2.0, 2.0]}
# Predict2.5: Qwen2.5-VL-7B's 28 layers x 3584 features, projected to 1024.
_25: dict[str, Any] = {
    "in_channels": 17,
    "rope_scale": [1.0, 3.0, 3.0],
    "use_crossattn_projection": True,
    "crossattn_proj_in_channels": 100352,
    "encoder_hidden_states_channels": 1024,
}
PREDICT25_2B: dict[str, Any] = {**_2B, **_25}
PREDICT25_14B: dict[str, Any] = {**_14B, **_25}

CONFIGS: dict[str, dict[str, Any]] = {
    "cosmos-predict2-2b-text2image": PREDICT2_2B_T2I,
    "cosmos-predict2-14b-text2image": PREDICT2_14B_T2I,
    "cosmos-predict2-2b-video2world": PREDICT2_2B_V2W,
    "cosmos-predict2-14b-video2world": PREDICT2_14B_V2W,
    "cosmos-predict2.5-2b": PREDICT25_2B,
    "cosmos-predict2.5-14b": PREDICT25_14B,
}
