"""CosmosTransformer against diffusers' CosmosTransformer3DModel: the conformance kit's checks with
Cosmos' parameters, then what only Cosmos has (per-frame timesteps, fps RoPE, padding mask)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import pytest
import torch

from fastvideo.attention import ALL, DENSE
from fastvideo.testing.conformance import DiTConformance
from fastvideo_cosmos import convert
from fastvideo_cosmos import model as cosmos_model
from fastvideo_cosmos.configs import CONFIGS
from fastvideo_cosmos.model import CosmosConfig, CosmosTransformer

T2I = dict(in_channels=16, rope_scale=(1.0, 4.0, 4.0))
LEARNABLE = dict(in_channels=16, extra_pos_embed_type="learnable")
P25 = dict(use_crossattn_projection=True, crossattn_proj_in_channels=40, encoder_hidden_states_channels=32)


def make_inputs(
    cfg: Any,
    *,
    batch: int = 1,
    latent: tuple[int, int, int] = (3, 8, 12),
    text_len: int = 7,
    per_frame: bool = True,
    fps: float | None = 16,
    cond_frames: int = 1,
    seed: int = 0,
) -> tuple[Any, ...]:
    """diffusers' positional inputs: (hidden_states, timestep, encoder_hidden_states, controlnet=None,
    attention_mask=None, fps, condition_mask, padding_mask)."""
    gen = torch.Generator().manual_seed(seed)
    with_mask = cfg.in_channels == 17
    x = torch.randn(batch, 16, *latent, generator=gen)
    t = (
        torch.rand(batch, 1, latent[0], 1, 1, generator=gen)
        if per_frame
        else torch.rand(batch, generator=gen)
    )
    width = cfg.crossattn_proj_in_channels if cfg.use_crossattn_projection else cfg.text_embed_dim
    text = torch.randn(batch, text_len, width, generator=gen)
    mask = None
    if with_mask:
        mask = torch.zeros(batch, 1, *latent)
        mask[:, :, :cond_frames] = 1
    pad = torch.zeros(1, 1, latent[1] * 8, latent[2] * 8)
    return x, t, text, None, None, fps, mask, pad


class TestCosmosConformance(DiTConformance):
    model_class = CosmosTransformer
    family = "cosmos"
    real_configs = CONFIGS
    parity_cases = (
        pytest.param({}, {}, id="v2w-per-frame-t"),
        pytest.param({}, dict(batch=2, latent=(2, 6, 10), per_frame=False), id="v2w-batch2-scalar-t"),
        pytest.param({}, dict(fps=None, cond_frames=2), id="v2w-no-fps"),
        pytest.param(T2I, dict(latent=(1, 8, 8), per_frame=False, fps=None), id="t2i"),
        pytest.param(LEARNABLE, dict(batch=2), id="learnable-pos-embed"),
        pytest.param(P25, dict(batch=2), id="predict2.5-text-projection"),
    )
    low_precision_case = ({**LEARNABLE, **P25}, {})
    grad_case = (P25, {})
    metadata_overrides = LEARNABLE
    fp32_expected = ("pos_embed.t",)
    sp_case = (LEARNABLE, {})  # per-frame timesteps: frames (and the position table) carry every token too
    bad_configs = (
        (dict(attention_head_dim=10), "attention_head_dim=10"),
        (dict(patch_size=(2, 2, 2)), "the temporal patch must be 1"),
        (dict(patch_size=(1, 2)), "patch_size=(1, 2)"),
        (dict(extra_pos_embed_type="sincos"), "extra_pos_embed_type='sincos'"),
        (dict(controlnet_block_every_n=7), "Transfer2.5"),
    )
    bad_inputs = (
        pytest.param(
            lambda a: (a[0], torch.zeros(1, 1, 2, 1, 1), *a[2:]), r"\(1, 1, 3, 1, 1\)", id="timestep-shape"
        ),
        pytest.param(lambda a: (torch.zeros(1, 17, 3, 8, 12), *a[1:]), "takes 16", id="channels"),
        pytest.param(lambda a: (*a[:4], torch.ones(1, 7), *a[5:]), "attention_mask", id="attention-mask"),
    )
    bad_checkpoint_config = ({"attention_head_dim": 10}, "attention_head_dim=10")
    missing_example = "transformer_blocks.1.attn1.to_q.weight"
    unexpected_example = ("crossattn_proj.0.weight", (32, 40))
    mis_shaped_example = ("proj_out.weight", (3, 48), (64, 48))
    used_rules = tuple(r for r in convert.RULES if not r[0].startswith("learnable_pos_embed"))
    mapping_examples: ClassVar[dict[str, str]] = {
        "transformer_blocks.3.norm2.linear_1.weight": "blocks.3.mod_cross.down.weight",
        "transformer_blocks.0.attn1.norm_k.weight": "blocks.0.self_attn.norm_k",
        "norm_out.linear_2.weight": "head.mod.up.weight",
    }
    unmapped_example = "transformer_blocks.0.attn1.to_q.lora_A.weight"

    def make_inputs(self, config: Any, **kwargs: Any) -> tuple[Any, ...]:
        return make_inputs(config, **kwargs)


# --------------------------------------------------------------------------------------------------
# Cosmos only
# --------------------------------------------------------------------------------------------------


def test_attention_goes_through_the_seam_with_layer_allow_lists(
    tiny_checkpoint: Callable, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, ref = tiny_checkpoint()
    model = CosmosTransformer.from_pretrained(folder, dtype=torch.float32)
    calls = []
    seam = cosmos_model.attention

    def spy(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kw: Any) -> torch.Tensor:
        calls.append((tuple(q.shape), tuple(k.shape), kw["allow"]))
        return seam(q, k, v, **kw)

    monkeypatch.setattr(cosmos_model, "attention", spy)
    with torch.no_grad():
        model(*make_inputs(ref.config, latent=(2, 4, 6), text_len=5))
    L, heads = 2 * 2 * 3, (2, 24)
    per_block = [((1, L, *heads), (1, L, *heads), ALL), ((1, L, *heads), (1, 5, *heads), DENSE)]
    assert calls == per_block * ref.config.num_layers


def test_rope_fps_off_equals_diffusers_without_fps(tiny_checkpoint: Callable) -> None:
    """``rope_fps=False`` (the checkpoints' training) ignores fps: it equals diffusers called with fps=None,
    and differs from diffusers' default fps-scaled RoPE."""
    folder, ref = tiny_checkpoint()
    ours = CosmosTransformer.from_pretrained(folder, dtype=torch.float32)
    args = make_inputs(ref.config, latent=(4, 8, 8))
    no_fps = (*args[:5], None, *args[6:])
    with torch.no_grad():
        with_fps = ref(*args, return_dict=False)[0]
        without = ref(*no_fps, return_dict=False)[0]
        ours.rope_fps = False
        out = ours(*args)
    torch.testing.assert_close(out, without, rtol=1e-5, atol=1e-5)
    assert (out - with_fps).abs().max() > 1e-3


def test_padding_mask_none_means_zeros_and_is_resized(tiny_checkpoint: Callable) -> None:
    folder, ref = tiny_checkpoint()
    ours = CosmosTransformer.from_pretrained(folder, dtype=torch.float32)
    args = list(make_inputs(ref.config))
    pad = torch.zeros(1, 1, 64, 96)
    pad[..., 40:, :] = 1  # a padded bottom band, resized to the 8 x 12 latent
    with torch.no_grad():
        zeros = ours(*args[:7], None)
        torch.testing.assert_close(zeros, ours(*args))
        expected = ref(*args[:7], pad, return_dict=False)[0]
        torch.testing.assert_close(ours(*args[:7], pad), expected, rtol=1e-5, atol=1e-5)


def test_rope_axes_and_grid_limit() -> None:
    cfg = CosmosConfig(attention_head_dim=128, num_layers=1, max_size=(8, 16, 16))
    assert cfg.rope_axes == (44, 42, 42) and cfg.dim == 4096
    model = CosmosTransformer.from_config(cfg)
    with pytest.raises(
        ValueError, match=r"token grid \(9, 2, 2\) exceeds max_size / patch_size = \(8, 8, 8\)"
    ):
        model.token_grid((1, 16, 9, 4, 4))
