"""The published LTX-2 and LTX-2.3 DiT configurations (diffusers ``transformer/config.json`` values),
for the meta-device checks and the GPU benchmark's random-weight model."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

_BASE: dict[str, Any] = {
    "in_channels": 128,
    "out_channels": 128,
    "patch_size": 1,
    "patch_size_t": 1,
    "num_attention_heads": 32,
    "attention_head_dim": 128,
    "cross_attention_dim": 4096,
    "vae_scale_factors": (8, 32, 32),
    "pos_embed_max_pos": 20,
    "base_height": 2048,
    "base_width": 2048,
    "audio_in_channels": 128,
    "audio_out_channels": 128,
    "audio_patch_size": 1,
    "audio_patch_size_t": 1,
    "audio_num_attention_heads": 32,
    "audio_attention_head_dim": 64,
    "audio_cross_attention_dim": 2048,
    "audio_scale_factor": 4,
    "audio_pos_embed_max_pos": 20,
    "audio_sampling_rate": 16000,
    "audio_hop_length": 160,
    "num_layers": 48,
    "activation_fn": "gelu-approximate",
    "qk_norm": "rms_norm_across_heads",
    "norm_elementwise_affine": False,
    "norm_eps": 1e-6,
    "caption_channels": 3840,
    "attention_bias": True,
    "attention_out_bias": True,
    "rope_theta": 10000.0,
    "rope_double_precision": True,
    "causal_offset": 1,
    "timestep_scale_multiplier": 1000,
    "cross_attn_timestep_scale_multiplier": 1000,
}

#: Lightricks/LTX-2 (19B): text projections in the DiT, no gates, no prompt modulation.
LTX2 = MappingProxyType({**_BASE, "rope_type": "split", "use_prompt_embeddings": True})
#: LTX-2.3 (22B): gated attention, text cross-attention modulation with a prompt adaLN, STG-ready
#: attention; the text projections moved into the connectors.
LTX23 = MappingProxyType(
    {
        **_BASE,
        "gated_attn": True,
        "cross_attn_mod": True,
        "audio_gated_attn": True,
        "audio_cross_attn_mod": True,
        "rope_type": "split",
        "use_prompt_embeddings": False,
        "perturbed_attn": True,
    }
)
TRANSFORMER_CONFIGS = MappingProxyType({"ltx-2": LTX2, "ltx-2.3": LTX23})
