"""The core's DiT conformance kit on LTX2Transformer: fp32 and bf16 parity with diffusers, determinism and
gradients, compile, real configs on meta, the name mapping's rules, checkpoint errors naming the tensor
or file, bad configs, the declared metadata. The kit compares one tensor: the video prediction plus the
audio prediction's per-sample mean, so every check also covers the audio stream."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
import torch

from fastvideo.testing.conformance import DiTConformance
from fastvideo_ltx.ltx2.configs import TRANSFORMER_CONFIGS
from fastvideo_ltx.ltx2.model import LTX2Transformer

LTX23 = {"gated_attn": True, "cross_attn_mod": True, "audio_gated_attn": True, "audio_cross_attn_mod": True,
         "rope_type": "split", "perturbed_attn": True, "use_prompt_embeddings": False}  # fmt: skip
MEL = 2  # latent mel bins of the tiny audio layout (audio_in_channels = channels x mel bins)


class TestLTX2Conformance(DiTConformance):
    model_class = LTX2Transformer
    family = "ltx2"
    real_configs = TRANSFORMER_CONFIGS
    parity_cases: ClassVar[list[Any]] = [
        pytest.param({}, {}, id="ltx2"),
        pytest.param(LTX23, {}, id="ltx2.3"),
        pytest.param({}, {"batch": 2}, id="batch2"),
    ]
    low_precision_case: ClassVar[tuple[dict, dict]] = (LTX23, {})
    grad_case: ClassVar[tuple[dict, dict]] = (LTX23, {})
    bad_configs: ClassVar[list[tuple[dict, str]]] = [
        ({"rope_type": "spiral"}, "rope_type='spiral' must be 'interleaved' or 'split'"),
        ({"patch_size": 2}, "patch size 1"),
        ({"audio_cross_attention_dim": 7}, "audio_cross_attention_dim=7 must equal the audio width"),
    ]
    bad_checkpoint_config: ClassVar[tuple[dict, str]] = ({"rope_type": "spiral"}, "rope_type='spiral'")
    missing_example = "transformer_blocks.1.attn1.to_q.weight"
    unexpected_example = ("transformer_blocks.0.attn1.to_gate_logits.weight", (2, 32))  # gates: LTX-2.3 only
    mis_shaped_example = ("transformer_blocks.0.ff.net.2.weight", (3, 3), (32, 128))
    unmapped_example = "transformer_blocks.0.attn1.to_q.lora_A.weight"
    mapping_examples: ClassVar[dict[str, str]] = {
        "transformer_blocks.3.audio_to_video_attn.to_out.0.weight": "blocks.3.a2v_attn.o.weight",
        "av_cross_attn_audio_v2a_gate.linear.bias": "audio_cross_gate_embed.proj.bias",
        "scale_shift_table": "head_modulation",
    }

    def make_inputs(self, config: Any, *, batch: int = 1, seed: int = 0) -> tuple[Any, ...]:
        g = torch.Generator().manual_seed(seed)
        text_dim = (
            config.caption_channels
            if config.use_prompt_embeddings
            else config.num_attention_heads * config.attention_head_dim
        )
        audio_dim = config.audio_num_attention_heads * config.audio_attention_head_dim
        audio_text_dim = config.caption_channels if config.use_prompt_embeddings else audio_dim
        video = torch.randn(batch, config.in_channels, 2, 2, 3, generator=g)
        audio = torch.randn(batch, config.audio_in_channels // MEL, 5, MEL, generator=g)
        text = torch.randn(batch, 6, text_dim, generator=g)
        audio_text = torch.randn(batch, 6, audio_text_dim, generator=g)
        t = (torch.rand(batch, generator=g) * 1000).round()
        return video, audio, text, audio_text, t  # fmt: skip

    def run(self, model: Any, args: tuple[Any, ...]) -> torch.Tensor:
        video, audio = model(*args, sigma=args[4])
        return video + audio.float().mean(dim=(1, 2, 3)).view(-1, 1, 1, 1, 1).to(video.dtype)

    def run_reference(self, ref: Any, args: tuple[Any, ...]) -> torch.Tensor:
        video, audio, text, audio_text, t = args
        b, _, f, h, w = video.shape
        out_v, out_a = ref(
            hidden_states=video.flatten(2).transpose(1, 2), audio_hidden_states=audio.transpose(1, 2).flatten(2),
            encoder_hidden_states=text, audio_encoder_hidden_states=audio_text, timestep=t, sigma=t,
            num_frames=f, height=h, width=w, audio_num_frames=audio.shape[2], return_dict=False,
        )  # fmt: skip
        out_v = out_v.transpose(1, 2).reshape(b, -1, f, h, w)
        return out_v + out_a.float().mean(dim=(1, 2)).view(-1, 1, 1, 1, 1).to(out_v.dtype)

    def low_precision_inputs(self, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return (*(a.bfloat16() for a in args[:4]), args[4])

    def _latent_cases(self) -> list[Any]:
        return []  # patch size 1: every latent size is a whole number of tokens
