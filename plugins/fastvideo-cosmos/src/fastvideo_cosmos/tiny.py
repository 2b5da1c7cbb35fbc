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


#: A small vocabulary for test and demo prompts.
WORDS = (
    "a an the of on in with and to is red green blue robot arm picks up cup table kitchen car road "
    "driving city night day camera moves slowly forward ball rolling left right video world"
).split()


class StandInSafetyChecker:
    """A no-op stand-in for ``cosmos_guardrail.CosmosSafetyChecker`` (diffusers' Cosmos pipelines
    refuse to run without a checker): every prompt is safe, frames pass unchanged."""

    def to(self, *args: Any, **kwargs: Any) -> StandInSafetyChecker:
        return self

    def check_text_safety(self, prompt: str) -> bool:
        return True

    def check_video_safety(self, frames: Any) -> Any:
        return frames


def tiny_t5() -> tuple[Any, Any]:
    from transformers import T5Config, T5EncoderModel, T5TokenizerFast

    specials = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab = specials + [("▁" + w, -float(i + 1)) for i, w in enumerate(WORDS)]
    vocab += [(c, -100.0 - i) for i, c in enumerate("abcdefghijklmnopqrstuvwxyz")]
    tokenizer = T5TokenizerFast(vocab=vocab, extra_ids=0)
    torch.manual_seed(0)
    config = T5Config(
        vocab_size=len(vocab),
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        feed_forward_proj="gated-gelu",
    )
    return tokenizer, T5EncoderModel(config).eval()


def tiny_vae() -> Any:
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    vae = AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    ).eval()
    return vae


def tiny_predict2(kind: str = "video2world", seed: int = 0) -> Any:
    """A diffusers ``Cosmos2VideoToWorldPipeline`` (``kind="video2world"``) or
    ``Cosmos2TextToImagePipeline`` (``"text2image"``) of tiny random components, with the stand-in
    safety checker; ``save_pretrained`` writes the real checkpoint format."""
    from diffusers import (
        Cosmos2TextToImagePipeline,
        Cosmos2VideoToWorldPipeline,
        FlowMatchEulerDiscreteScheduler,
    )

    tokenizer, text_encoder = tiny_t5()
    video = kind == "video2world"
    dit = tiny_dit(
        seed, in_channels=17 if video else 16, rope_scale=(1.0, 3.0, 3.0) if video else (1.0, 4.0, 4.0)
    )
    cls = Cosmos2VideoToWorldPipeline if video else Cosmos2TextToImagePipeline
    return cls(
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=dit,
        vae=tiny_vae(),
        scheduler=FlowMatchEulerDiscreteScheduler(use_karras_sigmas=True),
        safety_checker=StandInSafetyChecker(),
    )


#: A chat template in Qwen2.5-VL's format (system / user turns, text parts only).
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{{ part['text'] }}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_qwen_tokenizer() -> Any:
    """A word-level Qwen2-style tokenizer with the chat template, built in memory."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import Qwen2TokenizerFast

    extra = "you are helpful assistant who will provide prompts image generator".split()
    words = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>", *dict.fromkeys(WORDS + extra), "."]
    vocab = {w: i for i, w in enumerate(words)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = Qwen2TokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", pad_token="<|endoftext|>", eos_token="<|im_end|>"
    )
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHAT_TEMPLATE
    return tok


def tiny_qwen(vocab_size: int) -> Any:
    """A 2-layer Qwen2.5-VL (32 wide, a 1-block vision tower) with random weights."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=256,
            rope_parameters={"rope_theta": 10000.0, "rope_type": "default", "mrope_section": [2, 3, 3]},
        ),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=32),
    )
    torch.manual_seed(0)
    return Qwen2_5_VLForConditionalGeneration(config).eval()


def tiny_predict25(seed: int = 0) -> Any:
    """A diffusers ``Cosmos2_5_PredictBasePipeline`` of tiny random components (Qwen2.5-VL of 2 x 32
    features -> crossattn_proj_in_channels 64), the published UniPC settings, the stand-in checker."""
    from diffusers import Cosmos2_5_PredictBasePipeline, UniPCMultistepScheduler

    from fastvideo_cosmos.samplers import PREDICT25_UNIPC

    tokenizer = tiny_qwen_tokenizer()
    dit = tiny_dit(
        seed,
        in_channels=17,
        use_crossattn_projection=True,
        crossattn_proj_in_channels=64,
        encoder_hidden_states_channels=32,
    )
    return Cosmos2_5_PredictBasePipeline(
        text_encoder=tiny_qwen(len(tokenizer)),
        tokenizer=tokenizer,
        transformer=dit,
        vae=tiny_vae(),
        scheduler=UniPCMultistepScheduler(**PREDICT25_UNIPC),
        safety_checker=StandInSafetyChecker(),
    )
