"""A tiny LTX-2 checkpoint in diffusers' layout, written by ``LTX2Pipeline.save_pretrained``: random
weights, every component at toy size (Gemma 3 with 2 layers, a 2-block DiT, a small video VAE with
the real 32x spatial / 8x temporal compression, a small audio VAE and vocoder). Tokenizer from an
in-memory vocabulary: nothing is downloaded. For tests and offline smoke runs."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

WORDS = ("a", "cat", "dog", "plays", "piano", "in", "the", "rain", "red", "ball", "sings", "loud", "quiet")
_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'-"

GEMMA_HIDDEN = 32
GEMMA_LAYERS = 2
#: DiT sizes (diffusers config keys) of the tiny model
TINY_DIT: dict[str, Any] = {
    "in_channels": 16,
    "out_channels": 16,
    "num_attention_heads": 2,
    "attention_head_dim": 16,
    "cross_attention_dim": 32,
    "audio_in_channels": 16,  # 4 latent channels x 4 latent mel bins
    "audio_out_channels": 16,
    "audio_num_attention_heads": 2,
    "audio_attention_head_dim": 8,
    "audio_cross_attention_dim": 16,
    "num_layers": 2,
    "caption_channels": GEMMA_HIDDEN,
}
LTX23_OVERRIDES: dict[str, Any] = {
    "gated_attn": True,
    "cross_attn_mod": True,
    "audio_gated_attn": True,
    "audio_cross_attn_mod": True,
    "rope_type": "split",
    "perturbed_attn": True,
    "use_prompt_embeddings": False,
}


def tiny_tokenizer() -> Any:
    """A Gemma tokenizer (byte-pair, ``▁`` word boundaries) over a few words."""
    from transformers import GemmaTokenizer

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3}
    for piece in ["▁", *_CHARS]:
        vocab.setdefault(piece, len(vocab))
    merges: list[tuple[str, str]] = []
    for word in WORDS:
        cur = "▁"
        for ch in word:
            if (cur, ch) not in merges:
                merges.append((cur, ch))
            cur += ch
            vocab.setdefault(cur, len(vocab))
    return GemmaTokenizer(vocab=vocab, merges=merges, unk_token="<unk>", bos_token="<bos>", eos_token="<eos>",
                          pad_token="<pad>")  # fmt: skip


def _randomize(module: torch.nn.Module, seed: int, std: float = 0.1) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters()):
            base = 1.0 if re.search(r"norm[^.]*\.weight$", name) else 0.0
            p.copy_(p * 0.5 + base * 0.5 + torch.randn(p.shape, generator=gen) * std)


def build_pipeline(*, ltx23: bool = False, seed: int = 0) -> Any:
    """diffusers' ``LTX2Pipeline`` with tiny random components (fp32, CPU)."""
    from diffusers import (
        AutoencoderKLLTX2Audio,
        AutoencoderKLLTX2Video,
        FlowMatchEulerDiscreteScheduler,
        LTX2Pipeline,
        LTX2VideoTransformer3DModel,
    )
    from diffusers.pipelines.ltx2 import LTX2TextConnectors
    from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    text_cfg = {
        "vocab_size": len(tokenizer), "hidden_size": GEMMA_HIDDEN, "intermediate_size": 64,
        "num_hidden_layers": GEMMA_LAYERS, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16,
        "max_position_embeddings": 256, "sliding_window": 16, "pad_token_id": 0, "bos_token_id": 2,
        "eos_token_id": 1,
    }  # fmt: skip
    vision_cfg = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                  "image_size": 28, "patch_size": 14}  # fmt: skip
    gemma_cfg = Gemma3Config(text_config=text_cfg, vision_config=vision_cfg, mm_tokens_per_image=4)
    text_encoder = Gemma3ForConditionalGeneration(gemma_cfg).eval()
    dit_cfg = {**TINY_DIT, **(LTX23_OVERRIDES if ltx23 else {})}
    dit_width = dit_cfg["num_attention_heads"] * dit_cfg["attention_head_dim"]
    audio_width = dit_cfg["audio_num_attention_heads"] * dit_cfg["audio_attention_head_dim"]
    connectors = LTX2TextConnectors(
        caption_channels=GEMMA_HIDDEN,
        text_proj_in_factor=GEMMA_LAYERS + 1,
        video_connector_num_attention_heads=2,
        video_connector_attention_head_dim=16,  # 2 x 16 = the caption width (LTX-2) or the DiT width (2.3)
        video_connector_num_layers=1,
        video_connector_num_learnable_registers=4,
        audio_connector_num_attention_heads=2,
        audio_connector_attention_head_dim=16 if not ltx23 else audio_width // 2,
        audio_connector_num_layers=1,
        audio_connector_num_learnable_registers=4,
        connector_rope_base_seq_len=64,
        rope_type="split" if ltx23 else "interleaved",
        video_gated_attn=ltx23,
        audio_gated_attn=ltx23,
        per_modality_projections=ltx23,
        video_hidden_dim=dit_width,
        audio_hidden_dim=audio_width,
        proj_bias=ltx23,
    )
    transformer = LTX2VideoTransformer3DModel(**dit_cfg)
    vae = AutoencoderKLLTX2Video(
        in_channels=3,
        out_channels=3,
        latent_channels=16,
        block_out_channels=(8, 16, 32, 32),
        decoder_block_out_channels=(8, 16, 16, 32),
        layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, True, True),
        decoder_spatio_temporal_scaling=(True, True, True, True),
        decoder_inject_noise=(False, False, False, False, False),
        downsample_type=("spatial", "temporal", "spatiotemporal", "spatiotemporal"),
        upsample_type=("spatiotemporal", "spatiotemporal", "temporal", "spatial"),
        upsample_residual=(False, False, False, False),
        upsample_factor=(2, 2, 1, 2),
        timestep_conditioning=False,
        patch_size=4,
        patch_size_t=1,
        encoder_causal=True,
        decoder_causal=False,
        encoder_spatial_padding_mode="zeros",
        decoder_spatial_padding_mode="zeros",
        spatial_compression_ratio=32,
        temporal_compression_ratio=8,
    )
    audio_vae = AutoencoderKLLTX2Audio(
        base_channels=16,
        output_channels=2,
        ch_mult=(1, 2, 4),
        num_res_blocks=1,
        in_channels=2,
        latent_channels=4,
        mel_bins=16,
        sample_rate=16000,
        mel_hop_length=160,
    )
    if ltx23:  # LTX-2.3's vocoder: 16 kHz, then a bandwidth extension to 48 kHz
        from diffusers.pipelines.ltx2.vocoder import LTX2VocoderWithBWE

        vocoder = LTX2VocoderWithBWE(
            in_channels=2 * 16, hidden_channels=32, upsample_kernel_sizes=[10, 8, 8, 4], upsample_factors=[5, 4, 4, 2],
            resnet_kernel_sizes=[3], resnet_dilations=[[1, 3]], bwe_in_channels=2 * 16, bwe_hidden_channels=64,
            bwe_resnet_kernel_sizes=[3], bwe_resnet_dilations=[[1, 3]], filter_length=160, hop_length=80,
            window_length=160, num_mel_channels=16,
        )  # fmt: skip
    else:
        vocoder = LTX2Vocoder(
            in_channels=2 * 16,
            hidden_channels=16,
            out_channels=2,
            upsample_kernel_sizes=[4, 4],
            upsample_factors=[2, 2],
            resnet_kernel_sizes=[3],
            resnet_dilations=[[1, 3]],
            output_sampling_rate=16000,
        )
    for i, module in enumerate((text_encoder, connectors, transformer, vae, audio_vae, vocoder)):
        _randomize(module, seed + i)
    with torch.no_grad():  # latent statistics that are not the identity, so (de)normalization is exercised
        g = torch.Generator().manual_seed(seed + 17)
        vae.latents_mean.copy_(torch.randn(vae.latents_mean.shape, generator=g) * 0.1)
        vae.latents_std.copy_(1 + torch.rand(vae.latents_std.shape, generator=g) * 0.5)
        audio_vae.latents_mean.copy_(torch.randn(audio_vae.latents_mean.shape, generator=g) * 0.1)
        audio_vae.latents_std.copy_(1 + torch.rand(audio_vae.latents_std.shape, generator=g) * 0.5)
    scheduler = FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05, base_image_seq_len=1024,
        max_image_seq_len=4096, shift_terminal=0.1,
    )  # fmt: skip
    return LTX2Pipeline(
        scheduler=scheduler,
        vae=vae,
        audio_vae=audio_vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        connectors=connectors,
        transformer=transformer,
        vocoder=vocoder,
    )


def make_checkpoint(path: str | Path, *, ltx23: bool = False, seed: int = 0) -> Path:
    """Write the tiny checkpoint to ``path`` (diffusers' ``save_pretrained``, safetensors)."""
    path = Path(path)
    build_pipeline(ltx23=ltx23, seed=seed).save_pretrained(path, safe_serialization=True)
    return path


def build_upsampler(seed: int = 0) -> Any:
    """A tiny ``LTX2LatentUpsamplerModel`` (2x spatial) for the tiny checkpoint's 16 latent channels."""
    from diffusers.pipelines.ltx2.latent_upsampler import LTX2LatentUpsamplerModel

    torch.manual_seed(seed)
    model = LTX2LatentUpsamplerModel(in_channels=16, mid_channels=32, num_blocks_per_stage=1, dims=3,
                                     spatial_upsample=True, use_rational_resampler=False).eval()  # fmt: skip
    _randomize(model, seed + 99)
    return model
