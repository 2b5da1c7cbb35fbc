"""WanTransformer against diffusers' WanTransformer3DModel: the conformance kit's checks with Wan's
parameters, then what only Wan has (image tokens, per-token timesteps, RoPE range, fp32 modules)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

from fastvideo.attention import ALL, DENSE
from fastvideo.testing import rewrite_checkpoint
from fastvideo.testing.conformance import DiTConformance
from fastvideo_wan import convert
from fastvideo_wan import model as wan_model
from fastvideo_wan.configs import CONFIGS
from fastvideo_wan.convert import UnmappedKeysError
from fastvideo_wan.model import WanConfig, WanTransformer

I2V = dict(in_channels=36, image_dim=24, added_kv_proj_dim=32)  # CLIP dim scaled down; k/v input = 2 x 16
TI2V = dict(in_channels=48, out_channels=48)
FLF2V = dict(I2V, pos_embed_seq_len=10)  # 2 x 5 image tokens


def make_inputs(
    cfg: Any,
    *,
    batch: int = 1,
    latent: tuple[int, int, int] = (2, 16, 16),
    text_len: int = 7,
    image: tuple[int, int] | None = None,
    per_token: bool = False,
    seed: int = 0,
) -> tuple[Any, ...]:
    """(hidden_states, timestep, encoder_hidden_states, encoder_hidden_states_image) for a diffusers config."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cfg.in_channels, *latent, generator=gen)
    grid = [n // p for n, p in zip(latent, cfg.patch_size, strict=True)]
    if per_token:  # Wan2.2 TI2V (expand_timesteps): the conditioning first latent frame is at t=0
        t = (torch.rand(batch, math.prod(grid), generator=gen) * 1000).round()
        t[:, : grid[1] * grid[2]] = 0
    else:
        t = (torch.rand(batch, generator=gen) * 1000).round()
    text = torch.randn(batch, text_len, cfg.text_dim, generator=gen)
    img = None if image is None else torch.randn(*image, cfg.image_dim, generator=gen)
    return x, t, text, img


def _add(key: str, shape: tuple[int, ...]) -> Callable[[dict], None]:
    return lambda sd: sd.__setitem__(key, torch.zeros(shape))


class TestWanConformance(DiTConformance):
    model_class = WanTransformer
    family = "wan"
    real_configs = CONFIGS
    parity_cases = (
        pytest.param({}, {}, id="t2v"),
        pytest.param({}, dict(batch=2, latent=(3, 6, 10)), id="t2v-odd-grid-batch2"),
        pytest.param(dict(cross_attn_norm=False), {}, id="t2v-no-cross-attn-norm"),
        # diffusers splits image from text tokens assuming 512 text tokens, as its pipelines pad to
        pytest.param(I2V, dict(batch=2, text_len=512, image=(2, 9)), id="i2v"),
        pytest.param(FLF2V, dict(text_len=512, image=(2, 5)), id="flf2v"),
        pytest.param(TI2V, dict(batch=2, latent=(3, 6, 10), per_token=True), id="ti2v-per-token-timesteps"),
    )
    low_precision_case = (FLF2V, dict(text_len=512, image=(2, 5)))
    fp32_expected = (
        "blocks.0.modulation",
        "head.modulation",
        "time_embed.fc1.weight",
        "image_embed.norm_out.bias",
    )
    grad_case = (I2V, dict(batch=2, image=(2, 9)))
    metadata_overrides = FLF2V
    sp_case = (TI2V, dict(latent=(3, 6, 10), per_token=True))  # per-token timesteps: temb6 has L tokens too
    bad_configs = (
        (dict(attention_head_dim=7), "attention_head_dim=7"),
        (dict(freq_dim=33), "freq_dim=33"),
        (dict(qk_norm="rms_norm"), "qk_norm='rms_norm'"),
        (dict(image_dim=1280), "added_kv_proj_dim=None"),
        (dict(image_dim=1280, added_kv_proj_dim=1280), "= 5120"),
        (dict(pos_embed_seq_len=514), "image_dim (got None)"),
        (dict(patch_size=(1, 2)), "patch_size=(1, 2)"),
    )
    bad_inputs = (
        pytest.param(lambda a: (a[0], torch.zeros(1, 5), *a[2:]), r"\(B, 128\)", id="timestep-shape"),
        pytest.param(
            lambda a: (*a[:3], torch.zeros(1, 3, 24)), "has no image_dim", id="image-without-image-dim"
        ),
    )
    bad_checkpoint_config = ({"attention_head_dim": 7}, "head_dim=7")
    missing_example = "blocks.1.attn1.to_q.weight"
    unexpected_example = ("blocks.0.attn2.add_k_proj.weight", (32, 32))  # image k/v of a T2V config
    mis_shaped_example = ("proj_out.weight", (3, 32), (64, 32))
    used_rules = convert.RULES
    mapping_examples: ClassVar[dict[str, str]] = {
        "blocks.12.attn2.add_k_proj.bias": "blocks.12.cross_attn.k_img.bias",
        "scale_shift_table": "head.modulation",
    }
    unmapped_example = "blocks.0.attn1.to_q.lora_A.weight"

    def make_inputs(self, config: Any, **kwargs: Any) -> tuple[Any, ...]:
        return make_inputs(config, **kwargs)


# --------------------------------------------------------------------------------------------------
# Wan only
# --------------------------------------------------------------------------------------------------


def test_attention_goes_through_the_seam_with_layer_allow_lists(
    tiny_checkpoint: Callable, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Per block: video self-attention (any backend), then text and image cross-attention (dense)."""
    folder, ref = tiny_checkpoint(**I2V)
    model = WanTransformer.from_pretrained(folder, dtype=torch.float32)
    calls = []
    seam = wan_model.attention

    def spy(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kw: Any) -> torch.Tensor:
        calls.append((tuple(q.shape), tuple(k.shape), kw["allow"]))
        return seam(q, k, v, **kw)

    monkeypatch.setattr(wan_model, "attention", spy)
    with torch.no_grad():
        model(*make_inputs(ref.config, latent=(2, 4, 6), text_len=5, image=(1, 9)))
    L, heads = 2 * 2 * 3, (2, 16)  # tokens; (H, Dh): [B, L, H, D] layout
    per_block = [
        ((1, L, *heads), (1, L, *heads), ALL),
        ((1, L, *heads), (1, 5, *heads), DENSE),
        ((1, L, *heads), (1, 9, *heads), DENSE),
    ]
    assert calls == per_block * ref.config.num_layers


def test_fp32_modules_match_whole_name_components() -> None:
    assert not WanTransformer.is_fp32_param("blocks.0.self_attn.q.weight")
    assert not WanTransformer.is_fp32_param("time_mod.weight")
    assert WanTransformer.is_fp32_param("blocks.3.modulation") and WanTransformer.is_fp32_param(
        "head.modulation"
    )


def test_config_from_diffusers_ignores_private_and_unknown_keys() -> None:
    raw = {
        **CONFIGS["wan2.1-t2v-1.3b"],
        "_diffusers_version": "0.42.1",
        "window_size": [-1, -1],
        "out_channels": None,
    }
    cfg = WanConfig.from_diffusers_config(raw)
    assert cfg.dim == 1536 and cfg.out_channels == 16 and cfg.patch_size == (1, 2, 2)


def test_token_grid_and_rope_range() -> None:
    model = WanTransformer.from_config(WanConfig(patch_size=(1, 2, 2), num_layers=1, rope_max_seq_len=32))
    assert model.token_grid((1, 16, 3, 6, 10)) == (3, 3, 5)
    assert model.token_grid(torch.Size([21, 60, 16])) == (21, 30, 8)
    with pytest.raises(
        ValueError, match=r"\(3, 7, 10\) must be divisible by the patch \(t, h, w\)=\(1, 2, 2\)"
    ):
        model.token_grid((1, 16, 3, 7, 10))
    with pytest.raises(ValueError, match=r"\(40, 2, 2\) exceeds rope_max_seq_len=32"):
        model.token_grid((1, 16, 40, 4, 4))


def test_ignored_diffusers_keys_are_dropped(tiny_checkpoint: Callable, tmp_path: Path) -> None:
    assert convert.diffusers_to_ours({"blocks.3.attn2.norm_added_q.weight": 0}) == {}
    with pytest.raises(UnmappedKeysError):
        convert.diffusers_to_ours({"blocks.3.attn1.norm_added_q.weight": 0})
    folder = rewrite_checkpoint(
        tiny_checkpoint(**I2V)[0], tmp_path / "ckpt", _add("blocks.0.attn2.norm_added_q.weight", (32,))
    )
    assert "blocks.0.cross_attn.norm_k_img.weight" in WanTransformer.from_pretrained(folder).state_dict()


def test_unmapped_error_names_the_rules() -> None:
    with pytest.raises(UnmappedKeysError, match=re.escape("match no rule of fastvideo_wan.convert.RULES")):
        convert.diffusers_to_ours({"foo": 0})


def test_config_with_a_zero_patch_size_names_the_file(tiny_checkpoint: Callable, tmp_path: Path) -> None:
    import json
    import shutil

    from fastvideo.errors import CheckpointError

    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint()[0], folder)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "patch_size": [1, 0, 2]}))
    with pytest.raises(
        CheckpointError,
        match=re.escape(f"{folder / 'config.json'}: patch_size=[1, 0, 2] must be a positive integer"),
    ):
        WanTransformer.from_pretrained(folder)
