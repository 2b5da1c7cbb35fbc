"""Tiny random-weight LTX-Video checkpoints in the real diffusers format (tests, benchmarks' dry runs).

Every component is written by its library's own ``save_pretrained``: diffusers for the DiT, the VAE
(``AutoencoderKLLTXVideo``, with or without the timestep-conditioned decoder), the scheduler and the
latent upsampler; transformers for T5 and its tokenizer (built from an in-memory vocabulary, so
nothing is downloaded). ``fv ltx make-tiny PATH`` calls :func:`make_tiny_ltx`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

WORDS = (
    "a an the of on in with and to is red green blue yellow white black circle square ball cat dog "
    "moving left right up down background sky sea city night day flying running car bird tree video"
).split()

#: The tiny DiT (diffusers' ``LTXVideoTransformer3DModel`` kwargs): 2 blocks of 2 heads x 16.
TINY_DIT: dict[str, Any] = dict(
    in_channels=8,
    out_channels=8,
    patch_size=1,
    patch_size_t=1,
    num_attention_heads=2,
    attention_head_dim=16,  # width 32: 32 % 6 = 2 unrotated RoPE channels, as at real sizes
    cross_attention_dim=32,
    num_layers=2,
    caption_channels=32,
)

#: The tiny VAE: 8 latent channels, 4x spatial and 4x temporal compression.
TINY_VAE: dict[str, Any] = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=8,
    block_out_channels=(8, 8, 8, 8),
    decoder_block_out_channels=(8, 8, 8, 8),
    layers_per_block=(1, 1, 1, 1, 1),
    decoder_layers_per_block=(1, 1, 1, 1, 1),
    spatio_temporal_scaling=(True, True, False, False),
    decoder_spatio_temporal_scaling=(True, True, False, False),
    decoder_inject_noise=(False, False, False, False, False),
    upsample_residual=(False, False, False, False),
    upsample_factor=(1, 1, 1, 1),
    patch_size=1,
    patch_size_t=1,
    encoder_causal=True,
    decoder_causal=False,
)

#: The 0.9.0 / 0.9.1 schedulers: resolution-dependent shift and a stretched terminal sigma.
DYNAMIC_SHIFT: dict[str, Any] = dict(
    use_dynamic_shifting=True,
    base_shift=0.95,
    max_shift=2.05,
    base_image_seq_len=1024,
    max_image_seq_len=4096,
    shift_terminal=0.1,
)


def _randomize(module: torch.nn.Module, seed: int, std: float = 0.2) -> None:
    """Random values for every parameter (norms around one), so parity exercises all of them."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters()):
            noise = torch.randn(p.shape, generator=gen) * std
            p.copy_(noise + (1.0 if name.endswith(("norm_q.weight", "norm_k.weight")) else 0.0))


def tiny_dit(seed: int = 0, **overrides: Any) -> Any:
    """A diffusers ``LTXVideoTransformer3DModel`` of :data:`TINY_DIT` (+ overrides), random weights, fp32."""
    from diffusers import LTXVideoTransformer3DModel

    torch.manual_seed(seed)
    model = LTXVideoTransformer3DModel(**{**TINY_DIT, **overrides}).eval()
    _randomize(model, seed)
    return model


def tiny_vae(seed: int = 0, *, timestep_conditioning: bool = False) -> Any:
    """A diffusers ``AutoencoderKLLTXVideo`` of :data:`TINY_VAE`, with random latent statistics."""
    from diffusers import AutoencoderKLLTXVideo

    torch.manual_seed(seed)
    vae = AutoencoderKLLTXVideo(**TINY_VAE, timestep_conditioning=timestep_conditioning).eval()
    gen = torch.Generator().manual_seed(seed + 100)
    c = TINY_VAE["latent_channels"]
    vae.latents_mean.copy_(torch.randn(c, generator=gen) * 0.1)
    vae.latents_std.copy_(0.5 + torch.rand(c, generator=gen))
    return vae


def tiny_tokenizer() -> Any:
    from transformers import T5TokenizerFast

    specials = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab = specials + [("▁" + w, -float(i + 1)) for i, w in enumerate(WORDS)]
    vocab += [(c, -100.0 - i) for i, c in enumerate("abcdefghijklmnopqrstuvwxyz")]
    return T5TokenizerFast(vocab=vocab, extra_ids=0)


def tiny_text_encoder(seed: int = 0, vocab_size: int = 128) -> Any:
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    cfg = T5Config(
        vocab_size=vocab_size,
        d_model=TINY_DIT["caption_channels"],
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        feed_forward_proj="gated-gelu",
    )
    return T5EncoderModel(cfg).eval()


def tiny_upsampler(seed: int = 0) -> Any:
    """A diffusers ``LTXLatentUpsamplerModel`` (2x spatial) for the tiny latent space."""
    from diffusers.pipelines.ltx.modeling_latent_upsampler import LTXLatentUpsamplerModel

    torch.manual_seed(seed)
    model = LTXLatentUpsamplerModel(
        in_channels=TINY_VAE["latent_channels"], mid_channels=32, num_blocks_per_stage=1
    ).eval()
    _randomize(model, seed, std=0.05)
    return model


def make_tiny_ltx(
    path: str | Path,
    *,
    seed: int = 0,
    dynamic_shift: bool = False,
    timestep_conditioning: bool = False,
    pipeline: str = "LTXPipeline",
) -> Path:
    """Write a whole tiny LTX-Video pipeline folder (``model_index.json`` and components).

    :param dynamic_shift: the 0.9.0/0.9.1 scheduler (resolution-dependent shift), else a plain shift.
    :param timestep_conditioning: the >= 0.9.1 decoder that takes a decode timestep.
    :param pipeline: the ``_class_name`` of ``model_index.json`` (``LTXPipeline``,
        ``LTXImageToVideoPipeline``, ``LTXConditionPipeline``).
    """
    import diffusers
    from diffusers import FlowMatchEulerDiscreteScheduler

    path = Path(path)
    scheduler = FlowMatchEulerDiscreteScheduler(**(DYNAMIC_SHIFT if dynamic_shift else {"shift": 1.0}))
    tokenizer = tiny_tokenizer()
    pipe = getattr(diffusers, pipeline)(
        scheduler=scheduler,
        vae=tiny_vae(seed, timestep_conditioning=timestep_conditioning),
        text_encoder=tiny_text_encoder(seed, vocab_size=len(tokenizer)),
        tokenizer=tokenizer,
        transformer=tiny_dit(seed),
    )
    pipe.save_pretrained(path)
    return path


def make_tiny_upsampler(path: str | Path, *, seed: int = 0) -> Path:
    """Write a tiny latent-upsampler folder (``LTXLatentUpsamplePipeline`` format: ``latent_upsampler/``)."""
    path = Path(path)
    tiny_upsampler(seed).save_pretrained(path / "latent_upsampler")
    return path
