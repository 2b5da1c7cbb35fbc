"""LTXVideoTransformer against diffusers' LTXVideoTransformer3DModel: the conformance kit's checks with
LTX-Video's parameters (diffusers takes packed tokens: the reference call packs and unpacks), then what
only LTX-Video has (full-width RoPE, text-mask bias, per-token timesteps, explicit RoPE coordinates)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

from fastvideo.attention import use_backend
from fastvideo.testing.conformance import DiTConformance, rel_err
from fastvideo_ltx.ltxv import convert
from fastvideo_ltx.ltxv.configs import CONFIGS
from fastvideo_ltx.ltxv.model import LTXVideoConfig, LTXVideoTransformer, drop_text_padding


def make_inputs(
    cfg: Any,
    *,
    batch: int = 1,
    latent: tuple[int, int, int] = (2, 4, 6),
    text_len: int = 7,
    valid: tuple[int, ...] | None = None,
    per_token: bool = False,
    rope_scale: tuple[float, float, float] | None = (8 / 25, 32.0, 32.0),
    seed: int = 0,
) -> tuple[Any, ...]:
    """(hidden_states, encoder_hidden_states, timestep, encoder_attention_mask, rope_interpolation_scale)
    for a diffusers config; ``valid[b]`` text tokens of sample ``b`` are unmasked (default: 5, then fewer)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cfg.in_channels, *latent, generator=gen)
    tokens = math.prod(latent)
    if per_token:  # image conditioning: the first latent frame's tokens are clean (t = 0)
        t = (torch.rand(batch, tokens, generator=gen) * 1000).round()
        t[:, : latent[1] * latent[2]] = 0
    else:
        t = (torch.rand(batch, generator=gen) * 1000).round()
    text = torch.randn(batch, text_len, cfg.caption_channels, generator=gen)
    valid = valid or tuple(max(1, 5 - b) for b in range(batch))
    mask = (torch.arange(text_len)[None, :] < torch.tensor(valid)[:, None]).long()
    return x, text, t, mask, rope_scale


def packed_reference(
    ref: Any, args: tuple[Any, ...], video_coords: torch.Tensor | None = None
) -> torch.Tensor:
    """diffusers' model on our inputs: latents packed to tokens, the output unpacked."""
    x, text, t, mask, scale = args
    b, _, f, h, w = x.shape
    tokens = x.flatten(2).transpose(1, 2)  # patch 1: (B, F*H*W, C)
    out = ref(tokens, text, t, mask, f, h, w, scale, video_coords=video_coords, return_dict=False)[
        0
    ]  # (B, L, C_out)
    return out.transpose(1, 2).reshape(b, -1, f, h, w)


class TestLTXVideoConformance(DiTConformance):
    model_class = LTXVideoTransformer
    family = "ltx"
    real_configs = CONFIGS
    parity_cases = (
        pytest.param({}, {}, id="t2v"),
        pytest.param({}, dict(batch=2, latent=(3, 5, 7), valid=(7, 3)), id="batch2-mask-bias"),
        pytest.param({}, dict(batch=2, per_token=True), id="i2v-per-token-timesteps"),
        pytest.param({}, dict(rope_scale=None), id="no-rope-scale"),
        pytest.param(dict(attention_head_dim=24, cross_attention_dim=48), {}, id="width-48-no-rope-pad"),
        pytest.param(dict(attention_bias=False, attention_out_bias=False), {}, id="no-bias"),
    )
    low_precision_case = ({}, dict(batch=2, valid=(7, 3)))
    grad_case = ({}, dict(batch=2, per_token=True))
    sp_case = ({}, dict(per_token=True))  # per-token timesteps: temb has every token too
    bad_configs = (
        (dict(cross_attention_dim=64), "cross_attention_dim=64 must equal the width"),
        (dict(qk_norm="rms_norm"), "qk_norm='rms_norm' is not supported"),
        (dict(norm_elementwise_affine=True), "norm_elementwise_affine=True"),
        (dict(num_attention_heads=0), "sizes must be positive"),
        (dict(patch_size=2), "patch_size=2 is not supported"),
    )
    bad_inputs = (
        pytest.param(
            lambda a: (a[0], a[1], torch.zeros(1, 5), *a[3:]), r"\(B, L\)=\(1, 48\)", id="timestep-shape"
        ),
    )
    bad_checkpoint_config = ({"cross_attention_dim": 7}, "cross_attention_dim=7")
    missing_example = "transformer_blocks.1.attn1.to_q.weight"
    unexpected_example = ("transformer_blocks.2.attn1.to_q.weight", (32, 32))  # a third block of 2
    mis_shaped_example = ("proj_out.weight", (3, 32), (8, 32))
    used_rules = convert.RULES
    mapping_examples: ClassVar[dict[str, str]] = {
        "transformer_blocks.12.attn2.norm_k.weight": "blocks.12.cross_attn.norm_k.weight",
        "scale_shift_table": "head.modulation",
        "transformer_blocks.3.scale_shift_table": "blocks.3.modulation",
    }
    unmapped_example = "transformer_blocks.0.attn1.to_q.lora_A.weight"

    def make_inputs(self, config: Any, **kwargs: Any) -> tuple[Any, ...]:
        return make_inputs(config, **kwargs)

    def low_precision_inputs(self, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x, text, t, mask, scale = args  # diffusers' order: the timestep is argument 2
        return x.bfloat16(), text.bfloat16(), t, mask, scale

    def run_reference(self, ref: Any, args: tuple[Any, ...]) -> torch.Tensor:
        return packed_reference(ref, args)

    def _latent_cases(self) -> list[Any]:
        def packed(args: tuple[Any, ...]) -> tuple[Any, ...]:
            return (args[0].flatten(2).transpose(1, 2), *args[1:])

        return [pytest.param(packed, r"hidden_states must be latents \(B, 8, T, H, W\)", id="packed-tokens")]


# --------------------------------------------------------------------------------------------------
# LTX-Video only
# --------------------------------------------------------------------------------------------------


def test_explicit_video_coords_match_reference(tiny_checkpoint: Callable) -> None:
    """The conditioning pipeline's explicit RoPE positions (fractional frames per sample)."""
    folder, ref = tiny_checkpoint()
    model = LTXVideoTransformer.from_pretrained(folder, dtype=torch.float32)
    args = make_inputs(ref.config, batch=2, latent=(3, 4, 4))
    gen = torch.Generator().manual_seed(5)
    coords = torch.rand(2, 3, 48, generator=gen) * torch.tensor([40.0, 128.0, 128.0])[None, :, None]
    with torch.no_grad(), use_backend("sdpa"):
        out = model(*args, video_coords=coords)
        expected = packed_reference(ref, args, video_coords=coords)
    assert rel_err(out, expected) <= 1e-4
    with pytest.raises(ValueError, match=r"video_coords must be \(B, 3, 48\)"):
        model(*args, video_coords=coords[:, :, :10])


def test_padded_text_is_dropped_only_where_exact() -> None:
    text = torch.randn(2, 6, 4)
    same = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 0, 0, 0]])
    kept, bias = drop_text_padding(text, same)
    assert kept.shape == (2, 3, 4) and bias is None
    ragged = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]])
    kept, bias = drop_text_padding(text, ragged)
    assert kept.shape == (2, 4, 4) and bias.shape == (2, 1, 1, 4)
    assert bias[1, 0, 0].tolist() == [0.0, 0.0, -10000.0, -10000.0]
    holes = torch.tensor([[1, 0, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]])  # not right padding: kept whole
    kept, bias = drop_text_padding(text, holes)
    assert kept.shape == (2, 6, 4) and bias[0, 0, 0, 1] == -10000.0


def test_config_reads_diffusers_json_and_13b_width() -> None:
    cfg = LTXVideoConfig.from_diffusers_config({**CONFIGS["ltx-video-13b"], "_diffusers_version": "0.42.1"})
    assert cfg.dim == 4096 and cfg.num_layers == 48
    model = LTXVideoTransformer.from_config(cfg)
    n = sum(p.numel() for p in model.parameters())
    assert 12.5e9 < n < 14e9, n  # 13B
    n2 = sum(p.numel() for p in LTXVideoTransformer.from_config(CONFIGS["ltx-video-2b"]).parameters())
    assert 1.8e9 < n2 < 2.1e9, n2


def test_bf16_error_no_worse_than_diffusers_bf16(tmp_path: Path) -> None:
    """Against the fp32 output, our bf16 forward (RoPE tables rounded to bf16, fused norms) is as
    accurate as diffusers' own bf16 forward (fp32 RoPE), at a width with real head sizes."""
    from diffusers import LTXVideoTransformer3DModel

    from fastvideo_ltx.ltxv.tiny import tiny_dit

    ref = tiny_dit(3, num_attention_heads=4, attention_head_dim=64, cross_attention_dim=256)
    ref.save_pretrained(tmp_path)
    ours = LTXVideoTransformer.from_pretrained(tmp_path, dtype=torch.bfloat16)
    ref_bf16 = LTXVideoTransformer3DModel.from_pretrained(tmp_path, torch_dtype=torch.bfloat16)
    x, text, t, mask, scale = make_inputs(ref.config, batch=2, latent=(4, 8, 8))
    low = (x.bfloat16(), text.bfloat16(), t, mask, scale)
    with torch.no_grad(), use_backend("sdpa"):
        exact = packed_reference(ref, (x, text, t, mask, scale))
        err_ours = rel_err(ours(*low), exact)
        err_ref = rel_err(packed_reference(ref_bf16, low), exact)
    assert err_ours <= 1.25 * err_ref + 1e-3, (err_ours, err_ref)
