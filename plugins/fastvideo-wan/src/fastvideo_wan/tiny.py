"""Tiny random-weight Wan checkpoints in the real diffusers format (for tests and the offline demo).

Every component is written by its library's own ``save_pretrained``: diffusers for the DiT, VAE
and scheduler, transformers for UMT5 and its tokenizer (built from an in-memory vocabulary, so
nothing is downloaded). ``fv wan make-tiny PATH`` calls :func:`make_tiny_wan`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

#: A small vocabulary: enough words for test and demo prompts.
WORDS = (
    "a an the of on in with and to is are red green blue yellow white black orange purple circle square "
    "triangle ball cat dog corgi surfing wave beach moving left right up down background sky sea city "
    "night day flying running walking car bird tree forest mountain snow rain sun video cinematic slow"
).split()


def tiny_tokenizer() -> Any:
    from transformers import T5TokenizerFast

    specials = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab = specials + [("▁" + w, -float(i + 1)) for i, w in enumerate(WORDS)]
    vocab += [(c, -100.0 - i) for i, c in enumerate("abcdefghijklmnopqrstuvwxyz")]
    return T5TokenizerFast(vocab=vocab, extra_ids=0)


def _randomize(module: torch.nn.Module, seed: int, std: float = 0.2) -> None:
    """Give every parameter (also norms and modulation tables, zero/one at init) random values,
    so that a parity test exercises all of them."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters()):
            noise = torch.randn(p.shape, generator=gen) * std
            p.copy_(
                noise + (1.0 if name.endswith(("norm.weight", "norm_q.weight", "norm_k.weight")) else 0.0)
            )


VARIANTS = ("t2v", "moe", "i2v", "ti2v")


#: The tiny Wan DiT (diffusers' ``WanTransformer3DModel`` kwargs): 2 blocks of 2 heads x 16, used by
#: the tests, the benchmarks' ``--tiny`` runs and :func:`make_tiny_wan`.
TINY_DIT: dict[str, Any] = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=16,
    in_channels=16,
    out_channels=16,
    text_dim=32,
    freq_dim=32,
    ffn_dim=64,
    num_layers=2,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    rope_max_seq_len=32,
)


#: The tiny umT5 text encoder (``UMT5Config`` kwargs, vocabulary size aside) and Wan2.1 VAE
#: (``AutoencoderKLWan`` kwargs) of :func:`make_tiny_wan`.
TINY_UMT5: dict[str, Any] = dict(
    d_model=32,
    d_kv=8,
    d_ff=64,
    num_layers=2,
    num_heads=4,
    relative_attention_num_buckets=8,
    feed_forward_proj="gated-gelu",
)
TINY_VAE: dict[str, Any] = dict(
    base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1, temperal_downsample=[False, True, True]
)


def tiny_dit(seed: int = 0, randomize: bool = True, **overrides: Any) -> Any:
    """diffusers' ``WanTransformer3DModel`` at :data:`TINY_DIT` size (fp32, eval mode)."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    model = WanTransformer3DModel(**{**TINY_DIT, **overrides}).eval()
    if randomize:
        _randomize(model, seed)
    return model


def make_tiny_wan(path: str | Path, *, variant: str = "t2v", seed: int = 0, randomize: bool = True) -> Path:
    """Write a tiny Wan checkpoint to ``path`` and return it.

    ``variant``: ``t2v`` (Wan2.1 T2V), ``moe`` (Wan2.2 A14B layout: two experts and
    ``boundary_ratio``), ``i2v`` (Wan2.1 I2V with a CLIP image encoder) or ``ti2v`` (Wan2.2 TI2V:
    48-channel VAE with 16x spatial stride and per-token timesteps).
    """
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanImageToVideoPipeline, WanPipeline
    from transformers import UMT5Config, UMT5EncoderModel

    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    path = Path(path)
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=len(tokenizer), **TINY_UMT5)).eval()
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0
    )
    common: dict[str, Any] = {"tokenizer": tokenizer, "text_encoder": text_encoder, "scheduler": scheduler}
    if variant == "ti2v":
        vae = AutoencoderKLWan(
            base_dim=8,
            decoder_base_dim=12,
            z_dim=48,
            dim_mult=[1, 2, 2, 2],
            num_res_blocks=1,
            is_residual=True,
            in_channels=12,
            out_channels=12,
            patch_size=2,
            scale_factor_spatial=16,
            latents_mean=[0.0] * 48,
            latents_std=[1.0] * 48,
        )
        dit = tiny_dit(seed, randomize, in_channels=48, out_channels=48)
        pipe: Any = WanPipeline(vae=vae, transformer=dit, expand_timesteps=True, **common)
    else:
        vae = AutoencoderKLWan(**TINY_VAE)
        if variant == "i2v":
            from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

            clip = CLIPVisionModel(
                CLIPVisionConfig(
                    hidden_size=24,
                    intermediate_size=48,
                    num_hidden_layers=2,
                    num_attention_heads=2,
                    image_size=32,
                    patch_size=8,
                    projection_dim=24,
                )
            ).eval()
            processor = CLIPImageProcessor(crop_size=32, size={"shortest_edge": 32})
            dit = tiny_dit(seed, randomize, in_channels=36, image_dim=24, added_kv_proj_dim=32)
            pipe = WanImageToVideoPipeline(
                vae=vae, transformer=dit, image_encoder=clip, image_processor=processor, **common
            )
        elif variant == "moe":
            pipe = WanPipeline(
                vae=vae,
                transformer=tiny_dit(seed, randomize),
                transformer_2=tiny_dit(seed + 1, randomize),
                boundary_ratio=0.875,
                **common,
            )
        else:
            pipe = WanPipeline(vae=vae, transformer=tiny_dit(seed, randomize), **common)
    pipe.save_pretrained(str(path))
    return path
