"""Tiny random-weight HunyuanVideo checkpoints in the real diffusers format (tests, offline demo).

Every component is written by its library's own ``save_pretrained``: diffusers for the DiT, VAE and
scheduler (through ``HunyuanVideoPipeline``), transformers for Llama, CLIP and their tokenizers. The
tokenizers are byte-pair encoders built from an in-memory word list (nothing is downloaded): whole
words of the prompt template and of test prompts are single tokens, and the template's prefix is
exactly :data:`~fastvideo_hunyuan.pipeline.PROMPT_TEMPLATE`'s ``crop_start`` = 95 tokens, as with the
real Llama-3 tokenizer, so that the crop removes the template and keeps the prompt.
``fv hunyuan make-tiny PATH`` calls :func:`make_tiny_hunyuan`.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

#: Prompt words besides the template's: enough for tests and the demo.
WORDS = (
    "a an the of on in with and to is are red green blue yellow white black orange purple circle square "
    "triangle ball cat dog corgi surfing wave beach moving left right up down background sky sea city "
    "night day flying running walking car bird tree forest mountain snow rain sun video cinematic slow"
).split()

LLAMA_SPECIALS = ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
_CHARS = sorted(set(string.ascii_letters + string.digits + string.punctuation))


def _bpe(words: Iterable[list[str]], vocab: dict[str, int]) -> list[tuple[str, str]]:
    """Merges that build each word (a list of pieces) left to right; every prefix joins ``vocab``."""
    merges: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for pieces in words:
        cur = pieces[0]
        for piece in pieces[1:]:
            if (cur, piece) not in seen:
                seen.add((cur, piece))
                merges.append((cur, piece))
            cur += piece
            vocab.setdefault(cur, len(vocab))
    return merges


def _template_words() -> list[str]:
    from fastvideo_hunyuan.pipeline import PROMPT_TEMPLATE

    return re.findall(r"[A-Za-z]+", PROMPT_TEMPLATE.text.replace("<|", " ").replace("|>", " "))


def tiny_llama_tokenizer() -> Any:
    """A Llama tokenizer (sentencepiece-style ``▁`` word boundaries, right padding)."""
    from transformers import LlamaTokenizer

    vocab = {"<unk>": 0, "<|begin_of_text|>": 1, "<|end_of_text|>": 2}
    for piece in ["▁", "\n", *_CHARS]:
        vocab.setdefault(piece, len(vocab))
    words = sorted(set(_template_words()) | set(WORDS))
    # "▁word" after a space; "system", "user", "Describe" and "\n\n" follow special tokens or newlines.
    merges = _bpe([["▁", *w] for w in words], vocab)
    merges += _bpe([list(w) for w in ("system", "user", "Describe")] + [["\n", "\n"]], vocab)
    tokenizer = LlamaTokenizer(
        vocab=vocab,
        merges=merges,
        unk_token="<unk>",
        bos_token="<|begin_of_text|>",
        eos_token="<|end_of_text|>",
        add_bos_token=True,
        padding_side="right",
    )
    tokenizer.add_special_tokens(
        {"pad_token": "<|end_of_text|>", "additional_special_tokens": list(LLAMA_SPECIALS)}
    )
    return tokenizer


def tiny_clip_tokenizer() -> Any:
    """A CLIP tokenizer (lower case, ``</w>`` word ends)."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in _CHARS:
        vocab.setdefault(c.lower(), len(vocab))
        vocab.setdefault(c.lower() + "</w>", len(vocab))
    words = sorted({w.lower() for w in (*WORDS, *_template_words())})
    merges = _bpe([[*w[:-1], w[-1] + "</w>"] for w in words if len(w) > 1], vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges)


def _randomize(module: torch.nn.Module, seed: int, std: float = 0.2) -> None:
    """Give every parameter (norms and modulation layers too) random values, so that a parity test
    exercises all of them."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters()):
            noise = torch.randn(p.shape, generator=gen) * std
            p.copy_(noise + (1.0 if re.search(r"norm[^.]*\.weight$", name) else 0.0))


TINY_DIT: dict[str, Any] = dict(
    in_channels=4,
    out_channels=4,
    num_attention_heads=2,
    attention_head_dim=16,
    num_layers=2,
    num_single_layers=2,
    num_refiner_layers=2,
    mlp_ratio=2.0,
    patch_size=2,
    patch_size_t=1,
    qk_norm="rms_norm",
    guidance_embeds=True,
    text_embed_dim=32,
    pooled_projection_dim=24,
    rope_theta=256.0,
    rope_axes_dim=(4, 6, 6),
)


def tiny_dit(seed: int = 0, randomize: bool = True, **overrides: Any) -> Any:
    """diffusers' ``HunyuanVideoTransformer3DModel`` at :data:`TINY_DIT` size (fp32)."""
    from diffusers import HunyuanVideoTransformer3DModel

    torch.manual_seed(seed)
    model = HunyuanVideoTransformer3DModel(**{**TINY_DIT, **overrides}).eval()
    if randomize:
        _randomize(model, seed)
    return model


def make_tiny_hunyuan(path: str | Path, *, seed: int = 0, randomize: bool = True) -> Path:
    """Write a tiny HunyuanVideo checkpoint (``HunyuanVideoPipeline``, ~1.5 MB) to ``path`` and return it."""
    from diffusers import AutoencoderKLHunyuanVideo, FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel

    path = Path(path)
    torch.manual_seed(seed)
    tokenizer, tokenizer_2 = tiny_llama_tokenizer(), tiny_clip_tokenizer()
    llama = LlamaModel(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=TINY_DIT["text_embed_dim"],
            intermediate_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    ).eval()
    clip = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer_2),
            hidden_size=TINY_DIT["pooled_projection_dim"],
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=77,
            projection_dim=TINY_DIT["pooled_projection_dim"],
            bos_token_id=tokenizer_2.bos_token_id,
            eos_token_id=tokenizer_2.eos_token_id,
            pad_token_id=tokenizer_2.pad_token_id,
        )
    ).eval()
    vae = AutoencoderKLHunyuanVideo(
        latent_channels=TINY_DIT["in_channels"],
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        norm_num_groups=4,
        spatial_compression_ratio=8,
        temporal_compression_ratio=4,
    ).eval()
    pipe = HunyuanVideoPipeline(
        text_encoder=llama,
        tokenizer=tokenizer,
        transformer=tiny_dit(seed, randomize),
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
        text_encoder_2=clip,
        tokenizer_2=tokenizer_2,
    )
    pipe.save_pretrained(str(path))
    return path
