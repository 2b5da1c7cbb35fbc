"""Tiny random-weight Cosmos components in the real diffusers format (tests and benchmark dry runs).

Every component is written by its library's own ``save_pretrained``: diffusers for the DiT, the Wan
VAE and the schedulers, transformers for T5 / Qwen2.5-VL and their tokenizers (built in memory, so
nothing is downloaded).
"""

from __future__ import annotations

from typing import Any

import torch

#: The tiny DiT (diffusers' ``CosmosTransformer3DModel`` kwargs): 2 blocks of 2 heads x 24.
TINY_DIT: dict[str, Any] = dict(
    in_channels=17,
    out_channels=16,
    num_attention_heads=2,
    attention_head_dim=24,
    num_layers=2,
    mlp_ratio=2.0,
    text_embed_dim=32,
    adaln_lora_dim=8,
    max_size=(16, 32, 32),
    patch_size=(1, 2, 2),
    rope_scale=(1.0, 3.0, 3.0),
    concat_padding_mask=True,
    extra_pos_embed_type=None,
)


def randomize(module: torch.nn.Module, seed: int, std: float = 0.2) -> None:
    """Random values for every parameter (norm weights around one), so parity tests exercise them all."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters()):
            one = name.endswith(("norm_q.weight", "norm_k.weight", "time_embed.norm.weight"))
            p.copy_(torch.randn(p.shape, generator=gen) * std + (1.0 if one else 0.0))


def tiny_dit(seed: int = 0, **overrides: Any) -> Any:
    """A diffusers ``CosmosTransformer3DModel`` of :data:`TINY_DIT` (with ``overrides``), random, fp32."""
    from diffusers import CosmosTransformer3DModel

    model = CosmosTransformer3DModel(**{**TINY_DIT, **overrides}).eval()
    randomize(model, seed)
    return model
