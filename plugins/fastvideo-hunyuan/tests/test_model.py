"""HunyuanTransformer against diffusers' HunyuanVideoTransformer3DModel: the conformance kit's checks
with HunyuanVideo's parameters, then what only it has (text padding and masks, joint attention)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any, ClassVar

import pytest
import torch

from fastvideo.attention import ALL, DENSE
from fastvideo.testing.conformance import DiTConformance
from fastvideo_hunyuan import model as hy_model
from fastvideo_hunyuan.configs import CONFIGS
from fastvideo_hunyuan.model import HunyuanTransformer


def make_inputs(
    cfg: Any,
    *,
    lengths: tuple[int, ...] = (5,),
    text_len: int = 12,
    latent: tuple[int, int, int] = (3, 8, 8),
    left_padded: bool = False,
    seed: int = 0,
) -> tuple[torch.Tensor, ...]:
    """(hidden_states, timestep, text, text mask, pooled, guidance) for a diffusers config; one
    sample per entry of ``lengths`` (its number of valid text tokens)."""
    gen = torch.Generator().manual_seed(seed)
    b = len(lengths)
    x = torch.randn(b, cfg.in_channels, *latent, generator=gen)
    t = (torch.rand(b, generator=gen) * 1000).round()
    text = torch.randn(b, text_len, cfg.text_embed_dim, generator=gen)
    mask = torch.zeros(b, text_len, dtype=torch.int64)
    for i, n in enumerate(lengths):
        mask[i, text_len - n :] = 1 if left_padded else 0
        mask[i, :n] = 0 if left_padded else 1
    pooled = torch.randn(b, cfg.pooled_projection_dim, generator=gen)
    guidance = torch.full((b,), 6.0) * 1000
    return x, t, text, mask, pooled, guidance


class TestHunyuanConformance(DiTConformance):
    model_class = HunyuanTransformer
    family = "hunyuan"
    real_configs = CONFIGS
    parity_cases = (
        pytest.param({}, {}, id="b1-right-padded-text"),  # the pipeline's case: padding dropped, no mask
        pytest.param({}, dict(lengths=(12,)), id="b1-no-padding"),
        pytest.param({}, dict(lengths=(5, 9)), id="b2-unequal-lengths-masked"),
        pytest.param({}, dict(lengths=(7, 7)), id="b2-equal-lengths"),
        pytest.param({}, dict(lengths=(3, 7), left_padded=True), id="b2-left-padded"),
        pytest.param({}, dict(latent=(3, 6, 10)), id="odd-grid"),
        pytest.param(dict(guidance_embeds=False), {}, id="no-guidance-embeds"),
        pytest.param(dict(patch_size_t=2, num_layers=1), dict(latent=(4, 4, 6)), id="temporal-patch-2"),
    )
    grad_case = ({}, dict(lengths=(5, 9)))
    bad_configs = (
        (dict(qk_norm="layer_norm"), "qk_norm='layer_norm'"),
        (dict(image_condition_type="token_replace"), "HunyuanVideo-I2V"),
        (dict(rope_axes_dim=(16, 56, 48)), "summing to attention_head_dim=128"),
        (dict(rope_axes_dim=(15, 57, 56)), "positive even sizes"),
        (dict(num_attention_heads=0), "sizes must be positive"),
    )
    bad_inputs = (
        pytest.param(
            lambda a: (*a[:5], None), r"guidance_embeds=True\): pass guidance=", id="missing-guidance"
        ),
    )
    bad_checkpoint_config = ({"qk_norm": "layer_norm"}, "qk_norm='layer_norm'")
    missing_example = "transformer_blocks.1.attn.to_q.weight"
    unexpected_example = ("single_transformer_blocks.5.proj_out.bias", (32,))  # a block beyond the 2
    mis_shaped_example = ("proj_out.weight", (3, 32), (16, 32))
    shard_size = "50KB"
    mapping_examples: ClassVar[dict[str, str]] = {
        "transformer_blocks.12.attn.add_k_proj.bias": "double_blocks.12.attn.text_k.bias",
        "norm_out.linear.weight": "head.mod.weight",
    }
    unmapped_example = "transformer_blocks.0.attn.to_q.lora_A.weight"

    def make_inputs(self, config: Any, **kwargs: Any) -> tuple[Any, ...]:
        return make_inputs(config, **kwargs)


# --------------------------------------------------------------------------------------------------
# HunyuanVideo only
# --------------------------------------------------------------------------------------------------


def test_real_size_is_13b_and_both_presets_share_it() -> None:
    assert len({json.dumps(c, sort_keys=True) for c in CONFIGS.values()}) == 1
    ours = HunyuanTransformer.from_config(CONFIGS["hunyuanvideo-t2v-13b"])
    assert 12.5e9 < sum(math.prod(p.shape) for p in ours.state_dict().values()) < 13.5e9


def test_joint_attention_layers_are_the_sparse_ones_and_text_stays_whole(tiny_checkpoint: Callable) -> None:
    """The declared sparse layers are the joint attentions; every block gets the 5 prompt tokens whole."""
    folder, ref = tiny_checkpoint()
    model = HunyuanTransformer.from_pretrained(folder, dtype=torch.float32)
    joint = [n for n, m in model.named_modules() if isinstance(m, hy_model.HunyuanJointAttention)]
    assert joint == [f"{b}.{i}.attn" for b in ("double_blocks", "single_blocks") for i in range(2)]
    assert HunyuanTransformer.sparse_attention_layers == ("double_blocks.*.attn", "single_blocks.*.attn")
    text_tokens = []
    handles = [
        b.register_forward_pre_hook(lambda m, a: text_tokens.append(a[1].shape[1]))
        for b in model.blocks_in_order()
    ]
    with torch.no_grad():
        model(*make_inputs(ref.config, lengths=(5,)))
    for h in handles:
        h.remove()
    assert text_tokens == [5] * (ref.config.num_layers + ref.config.num_single_layers)


def test_padded_text_runs_unmasked_on_the_valid_tokens_only(
    tiny_checkpoint: Callable, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At batch size 1 the padding is dropped: every attention call is unmasked and sees only the
    prompt's tokens, text as replicated tokens of the joint attention, and the output equals that of
    the unpadded input."""
    folder, ref = tiny_checkpoint()
    model = HunyuanTransformer.from_pretrained(folder, dtype=torch.float32)
    calls = []
    seam, joint_seam = hy_model.attention, hy_model.joint_attention

    def spy(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kw: Any) -> Any:
        masks = (kw.get("attn_mask"), kw.get("replicated_mask"))
        calls.append(
            (tuple(q.shape), tuple(k.shape), None, masks, kw["allow"], kw.get("sequence_parallel", False))
        )
        return seam(q, k, v, **kw)

    def joint_spy(*qkv: torch.Tensor, **kw: Any) -> Any:  # the seam's defaults: allow=ALL, sequence_parallel
        shapes = (tuple(qkv[0].shape), tuple(qkv[1].shape), tuple(qkv[4].shape))
        calls.append(
            (*shapes, (None, kw.get("txt_mask")), kw.get("allow", ALL), kw.get("sequence_parallel", True))
        )
        return joint_seam(*qkv, **kw)

    monkeypatch.setattr(hy_model, "attention", spy)
    monkeypatch.setattr(hy_model, "joint_attention", joint_spy)
    x, t, text, mask, pooled, g = make_inputs(ref.config, lengths=(5,), text_len=12)
    with torch.no_grad():
        padded = model(x, t, text, mask, pooled, g)
        unpadded = model(x, t, text[:, :5], mask[:, :5], pooled, g)
    assert torch.equal(padded, unpadded)
    lv, heads = 3 * 4 * 4, (2, 16)
    cfg = ref.config
    refiner = [((1, 5, *heads), (1, 5, *heads), None, (None, None), DENSE, False)] * cfg.num_refiner_layers
    joint = [((1, lv, *heads), (1, lv, *heads), (1, 5, *heads), (None, None), ALL, True)]
    assert calls == (refiner + joint * (cfg.num_layers + cfg.num_single_layers)) * 2


def test_unequal_lengths_mask_padded_keys_like_diffusers(tiny_checkpoint: Callable) -> None:
    """Batch 2 with 5 and 9 valid tokens: the trailing 3 tokens nobody uses are dropped, the mask
    keeps sample 0 off its padded keys, and sample 0 equals its own batch-1 result."""
    folder, ref = tiny_checkpoint()
    model = HunyuanTransformer.from_pretrained(folder, dtype=torch.float32)
    x, t, text, mask, pooled, g = make_inputs(ref.config, lengths=(5, 9))
    with torch.no_grad():
        both = model(x, t, text, mask, pooled, g)
        first = model(x[:1], t[:1], text[:1], mask[:1], pooled[:1], g[:1])
    torch.testing.assert_close(both[:1], first, rtol=1e-5, atol=1e-5)


def test_family_refuses_a_zero_vae_compression_ratio(tmp_path: Any) -> None:
    import re

    from fastvideo.interfaces.model_family import ModelSource
    from fastvideo_hunyuan.family import HunyuanFamily

    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text(json.dumps({"spatial_compression_ratio": 0}))
    source = ModelSource(family=HunyuanFamily, path=tmp_path, model_index={})
    with pytest.raises(
        ValueError,
        match=re.escape(
            f"{tmp_path / 'vae' / 'config.json'}: spatial_compression_ratio=0 must be a positive integer"
        ),
    ):
        HunyuanFamily.factors(source)
