"""Step-LLM, Step-Video's bilingual decoder-only text encoder (``step_llm/``), and its tokenizer.

Our own implementation of the reference's ``stepvideo/text_encoder/stepllm.py`` (``Step1Model``)
with the same parameter names. The reference runs its attention in a closed CUDA library
(``liboptimus_ths``, ``torch.ops.Optimus.fwd``); here it goes through the attention seam with the
math StepFun published for its Step-1 models (``modeling_step1.py``): causal softmax attention whose
scores get the ALiBi bias ``-slope_h * sqrt(i - j)`` (no positional embedding otherwise), grouped
key/value heads, RMSNorm pre-norms (fp32 normalisation), SwiGLU feed-forwards, no final norm: the
encoder's output is the last block's hidden states.

The tokenizer wraps the SentencePiece model ``step1_chat_tokenizer.model``: ``[BOS] + tokens +
[EOS]``, truncated to ``max_length``, right-padded with token 2, with a mask over the real tokens.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fastvideo.attention import DENSE, attention

TOKENIZER_FILE = "step1_chat_tokenizer.model"
BOS, EOS, PAD = 1, 2, 2


@dataclass(frozen=True)
class StepLLMConfig:
    """The ``step_llm/config.json`` keys the model uses (the others are ignored)."""

    hidden_size: int = 6144
    num_attention_heads: int = 48
    num_attention_groups: int = 4
    num_layers: int = 48
    ffn_hidden_size: int = 16384
    layernorm_epsilon: float = 1e-5
    padded_vocab_size: int = 65536

    def __post_init__(self) -> None:
        if (
            self.hidden_size % self.num_attention_heads
            or self.num_attention_heads % self.num_attention_groups
        ):
            raise ValueError(
                f"hidden_size={self.hidden_size} must divide into num_attention_heads={self.num_attention_heads}, "
                f"which must divide into num_attention_groups={self.num_attention_groups}"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def ffn_dim(self) -> int:
        """The SwiGLU width: ``ffn_hidden_size`` rounded up to a multiple of 256, as the reference does."""
        return 256 * math.ceil(self.ffn_hidden_size / 256)

    @classmethod
    def from_json(cls, config: dict[str, Any]) -> StepLLMConfig:
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in config.items() if k in names})


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """Step-1's per-head slopes: ``2^(-8k/n)``, k = 1..n (n the largest power of two <= heads),
    then ``2^(-4(2k-1)/n)`` for the remaining heads."""
    n = 2 ** math.floor(math.log2(n_heads))
    slopes = torch.pow(2.0 ** (-8.0 / n), torch.arange(1, n + 1, dtype=torch.float64))
    if n < n_heads:
        extra = torch.pow(2.0 ** (-4.0 / n), torch.arange(1, 1 + 2 * (n_heads - n), 2, dtype=torch.float64))
        slopes = torch.cat([slopes, extra])
    return slopes.float()


def alibi_bias(length: int, n_heads: int, *, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The additive causal bias ``(1, H, L, L)``: ``-slope_h * sqrt(i - j)`` for ``j <= i``, ``-inf`` above."""
    i = torch.arange(length, device=device)[:, None]
    j = torch.arange(length, device=device)[None, :]
    dist = (i - j).clamp(min=0).float().sqrt()
    bias = -dist[None] * alibi_slopes(n_heads).to(device)[:, None, None]
    return bias.masked_fill((j > i)[None], float("-inf")).to(dtype)[None]


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).type_as(x) * weight


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


class GroupedAttention(nn.Module):
    """Fused ``wqkv`` (queries, then per group ``(k, v)``), ALiBi-biased causal attention, ``wo``."""

    def __init__(self, cfg: StepLLMConfig) -> None:
        super().__init__()
        self.heads, self.groups, self.head_dim = (
            cfg.num_attention_heads,
            cfg.num_attention_groups,
            cfg.head_dim,
        )
        self.wqkv = nn.Linear(cfg.hidden_size, cfg.hidden_size + 2 * self.head_dim * self.groups, bias=False)
        self.wo = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        q, kv = self.wqkv(x).split([d, 2 * self.head_dim * self.groups], dim=-1)
        q = q.view(b, s, self.heads, self.head_dim)
        k, v = kv.view(b, s, self.groups, 2 * self.head_dim).chunk(2, dim=-1)  # (B, S, G, Dh) each
        per = self.heads // self.groups
        k, v = k.repeat_interleave(per, dim=2), v.repeat_interleave(per, dim=2)  # head h uses group h // per
        out = attention(q, k, v, attn_mask=bias, allow=DENSE)  # (B, S, H, Dh)
        return self.wo(out.flatten(2))


class FeedForward(nn.Module):
    """SwiGLU: ``w2(silu(a) * b)`` with ``(a, b) = w1(x)`` halves."""

    def __init__(self, cfg: StepLLMConfig) -> None:
        super().__init__()
        self.w1 = nn.Linear(cfg.hidden_size, 2 * cfg.ffn_dim, bias=False)
        self.w2 = nn.Linear(cfg.ffn_dim, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.w1(x).chunk(2, dim=-1)
        return self.w2(F.silu(a) * b)


class StepLLMBlock(nn.Module):
    def __init__(self, cfg: StepLLMConfig) -> None:
        super().__init__()
        self.attention = GroupedAttention(cfg)
        self.feed_forward = FeedForward(cfg)
        self.attention_norm = RMSNorm(cfg.hidden_size, cfg.layernorm_epsilon)
        self.ffn_norm = RMSNorm(cfg.hidden_size, cfg.layernorm_epsilon)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x), bias)
        return x + self.feed_forward(self.ffn_norm(x))


class _Embedding(nn.Module):
    def __init__(self, cfg: StepLLMConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.padded_vocab_size, cfg.hidden_size)


class _Layers(nn.Module):
    def __init__(self, cfg: StepLLMConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(StepLLMBlock(cfg) for _ in range(cfg.num_layers))


class StepLLM(nn.Module):
    """``forward(input_ids (B, L)) -> hidden states (B, L, hidden_size)`` (the last block's output)."""

    def __init__(self, config: StepLLMConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_embeddings = _Embedding(config)
        self.transformer = _Layers(config)

    @property
    def dtype(self) -> torch.dtype:
        return self.tok_embeddings.word_embeddings.weight.dtype

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.tok_embeddings.word_embeddings(input_ids)
        bias = alibi_bias(input_ids.shape[1], self.config.num_attention_heads, device=x.device, dtype=x.dtype)
        for layer in self.transformer.layers:
            x = layer(x, bias)
        return x

    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        dtype: torch.dtype | None = torch.bfloat16,
        device: torch.device | str = "cpu",
    ) -> StepLLM:
        """Load ``step_llm/`` (``config.json`` + safetensors, sharded or not) with the released names.

        :raises CheckpointError: a missing/unreadable file or weights that do not match the config.
        """
        from fastvideo.errors import CheckpointError
        from fastvideo.loader import load_module_weights, load_safetensors_folder

        folder = Path(folder)
        try:
            config = StepLLMConfig.from_json(json.loads((folder / "config.json").read_text()))
        except (OSError, json.JSONDecodeError, TypeError, ValueError) as e:
            raise CheckpointError(f"{folder / 'config.json'}: not a Step-LLM config ({e})") from e
        with torch.device("meta"):
            model = cls(config)
        state = load_safetensors_folder(folder)
        load_module_weights(model, state, source=str(folder), dtype=dtype)
        return model.to(device).eval()


class StepLLMTokenizer:
    """The reference's ``Wrapped_StepChatTokenizer``: SentencePiece ids as ``[BOS] + ids + [EOS]``,
    truncated to ``max_length``, right-padded with ``PAD``; returns ``(input_ids, attention_mask)``."""

    def __init__(self, model_file: str | Path) -> None:
        import sentencepiece

        self.sp = sentencepiece.SentencePieceProcessor(model_file=str(model_file))

    def __call__(self, prompts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = (
            [[BOS, EOS]]
            if not prompts
            else [[BOS, *self.sp.encode_as_ids(p)[: max_length - 2], EOS] for p in prompts]
        )
        ids = torch.full((len(rows), max_length), PAD, dtype=torch.long)
        mask = torch.zeros(len(rows), max_length, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row[:max_length])
            mask[i, : len(row)] = 1
        return ids, mask


class StepLLMTextEncoder:
    """A text encoder of :class:`fastvideo.pipelines.stages.TextEncodingStage`: ``(states (B, L, D),
    mask (B, L))`` at the reference's fixed length of 320 tokens (the request's length is not used:
    the DiT was trained with 320)."""

    def __init__(self, tokenizer: StepLLMTokenizer, model: StepLLM, *, max_length: int = 320) -> None:
        self.tokenizer, self.model, self.max_length = tokenizer, model, max_length

    def __call__(self, prompts: list[str], max_length: int, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = self.tokenizer(list(prompts), self.max_length)
        model_device = next(self.model.parameters()).device
        with torch.no_grad():
            states = self.model(ids.to(model_device))
        return states.to(device), mask.to(device)


class HunyuanClipTextEncoder:
    """HunyuanCLIP (a BERT, transformers' ``BertModel``): its last hidden state ``(B, 77, 1024)``,
    all 77 positions kept (the reference's DiT attends to every CLIP token, padding included)."""

    def __init__(self, tokenizer: Any, model: Any, *, max_length: int = 77) -> None:
        self.tokenizer, self.model, self.max_length = tokenizer, model, max_length

    def __call__(self, prompts: list[str], max_length: int, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            return_tensors="pt",
        )
        model_device = next(self.model.parameters()).device
        with torch.no_grad():
            out = self.model(
                tokens.input_ids.to(model_device), attention_mask=tokens.attention_mask.to(model_device)
            ).last_hidden_state
        return out.to(device), torch.ones(out.shape[:2], dtype=torch.long, device=device)
