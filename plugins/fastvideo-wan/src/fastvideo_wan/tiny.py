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
            p.copy_(noise + (1.0 if name.endswith(("norm.weight", "norm_q.weight", "norm_k.weight")) else 0.0))


def make_tiny_wan(
    path: str | Path,
    *,
    variant: str = "t2v",
    seed: int = 0,
    randomize: bool = True,
) -> Path:
    """Write a tiny Wan checkpoint (``variant``: ``t2v``, ``moe``) to ``path`` and return it."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    if variant not in ("t2v", "moe"):
        raise ValueError(f"variant must be 't2v' or 'moe', got {variant!r}")
    path = Path(path)
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    text_encoder = UMT5EncoderModel(
        UMT5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                   relative_attention_num_buckets=8, feed_forward_proj="gated-gelu")
    ).eval()
    vae = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1, temperal_downsample=[False, True, True])

    def dit(s: int) -> WanTransformer3DModel:
        m = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=16,
                                  out_channels=16, text_dim=32, freq_dim=32, ffn_dim=64, num_layers=2,
                                  cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32)
        if randomize:
            _randomize(m, s)
        return m

    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    kwargs: dict[str, Any] = {"transformer": dit(seed)}
    if variant == "moe":
        kwargs.update(transformer_2=dit(seed + 1), boundary_ratio=0.875)
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler, **kwargs)
    pipe.save_pretrained(str(path))
    return path
