"""The shared model plumbing: layers, the DiT base class, latent geometry, devices and dtypes,
and the joint-attention seam, each against a plain PyTorch reference."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastvideo.attention import joint_attention, use_backend
from fastvideo.configs import DiffusersConfigMixin
from fastvideo.errors import CheckpointError
from fastvideo.layers import MLP, modulate, patchify, unpatchify
from fastvideo.loader.mapping import NameMapping
from fastvideo.models import (
    DiT,
    LatentGeometry,
    SequenceParallelPlan,
    default_dtypes,
    matches_module,
    pick_device,
)

# ---------------------------------------------------------------------------------------------- layers


def test_modulate_is_adaln_per_sample_and_per_token() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 8, generator=gen)
    shift, scale = torch.randn(2, 8, generator=gen), torch.randn(2, 8, generator=gen)
    normed = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + 1e-6)
    ref = normed * (1 + scale[:, None]) + shift[:, None]
    torch.testing.assert_close(modulate(x, shift, scale), ref)
    per_token = modulate(x, shift[:, None].expand(2, 5, 8), scale[:, None].expand(2, 5, 8), eps=1e-6)
    torch.testing.assert_close(per_token, ref)
    low = modulate(x.bfloat16(), shift, scale)  # fp32 tables, bf16 tokens: the output keeps x's dtype
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), ref, rtol=2e-2, atol=2e-2)


def test_mlp_matches_its_definition_and_rejects_unknown_activations() -> None:
    mlp = MLP(4, 6, 3, "silu")
    x = torch.randn(2, 4)
    torch.testing.assert_close(mlp(x), mlp.fc2(F.silu(mlp.fc1(x))))
    assert [n for n, _ in mlp.named_parameters()] == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    with pytest.raises(ValueError, match="MLP activation 'relu6' is not one of silu, gelu, gelu_tanh"):
        MLP(4, 6, 3, "relu6")


def test_patchify_and_unpatchify_are_inverse_in_raster_order() -> None:
    x = torch.arange(2 * 3 * 4 * 6 * 4, dtype=torch.float32).reshape(2, 3, 4, 6, 4)  # (B, C, T, H, W)
    tokens = patchify(x, (2, 3, 2))  # (B, 2*2*2, 3*2*3*2)
    assert tokens.shape == (2, 8, 36)
    # token (t', h', w') = (1, 0, 1) holds the patch x[:, :, 2:4, 0:3, 2:4], channel-major
    torch.testing.assert_close(tokens[:, 1 * 4 + 0 * 2 + 1], x[:, :, 2:4, 0:3, 2:4].reshape(2, -1))
    assert torch.equal(unpatchify(tokens, (2, 2, 2), (2, 3, 2)), x)
    last = (
        tokens.unflatten(-1, (3, 2, 3, 2)).permute(0, 1, 3, 4, 5, 2).flatten(2)
    )  # (pt, ph, pw, C) per token
    assert torch.equal(unpatchify(last, (2, 2, 2), (2, 3, 2), channels_last=True), x)


# ---------------------------------------------------------------------------------------------- DiT base


@dataclass(frozen=True, kw_only=True)
class ToyConfig(DiffusersConfigMixin):
    channels: int = 4
    dim: int = 8
    num_layers: int = 2
    patch_size: tuple[int, int, int] = (1, 2, 2)

    def __post_init__(self) -> None:
        object.__setattr__(self, "patch_size", tuple(self.patch_size))


class ToyBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return x + self.fc(self.norm(x)) * t


class ToyDiT(DiT):
    config_class = ToyConfig
    diffusers_class = "ToyTransformer3DModel"
    name_mapping = NameMapping(
        (
            ("embed.{p}", "patch_embed.{p}"),
            ("layers.{i}.ln.{p}", "blocks.{i}.norm.{p}"),
            ("layers.{i}.lin.{p}", "blocks.{i}.fc.{p}"),
            ("out.{p}", "head.{p}"),
        ),
        rules_name="ToyDiT rules",
        ours="toy",
        their_class="ToyTransformer3DModel",
        our_class="ToyDiT",
    )
    fp32_modules: ClassVar[tuple[str, ...]] = ("norm",)
    sequence_parallel_plan = SequenceParallelPlan(blocks="blocks", shard={"x": 1})

    def __init__(self, config: ToyConfig) -> None:
        super().__init__()
        self.config = config
        self.patch_embed = nn.Conv3d(config.channels, config.dim, config.patch_size, config.patch_size)
        self.blocks = nn.ModuleList(ToyBlock(config.dim) for _ in range(config.num_layers))
        self.head = nn.Linear(config.dim, config.channels * 4)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        grid = self.token_grid(x.shape)
        h = self.patch_embed(x.to(self.dtype)).flatten(2).transpose(1, 2)
        for block in self.blocks:
            h = block(h, t.to(self.dtype))
        return unpatchify(self.head(h), grid, self.patch())


def _save_toy(folder: Path, model: ToyDiT) -> Path:
    from safetensors.torch import save_file

    folder.mkdir()
    config = {"_class_name": "ToyTransformer3DModel", **model.config.to_diffusers_config(), "extra": 1}
    (folder / "config.json").write_text(json.dumps(config))
    state = ToyDiT.name_mapping.to_theirs({k: v.contiguous() for k, v in model.state_dict().items()})
    save_file(state, str(folder / "diffusion_pytorch_model.safetensors"))
    return folder


def test_dit_from_config_builds_on_meta_and_initializes_elsewhere() -> None:
    meta = ToyDiT.from_config({"channels": 4, "dim": 8, "_class_name": "ToyTransformer3DModel"})
    assert all(p.is_meta for p in meta.parameters()) and meta.dtype == torch.float32
    torch.manual_seed(0)
    cpu = ToyDiT.from_config(ToyConfig(), device="cpu")
    assert all(p.device.type == "cpu" and torch.isfinite(p).all() for p in cpu.parameters())
    assert torch.equal(cpu.blocks[0].norm.weight, torch.ones(8))  # reset_parameters: norms at one
    assert list(cpu.blocks_in_order()) == list(cpu.blocks)
    with pytest.raises(
        TypeError, match=r"ToyDiT\.from_config takes a ToyConfig or a diffusers config dict, got int"
    ):
        ToyDiT.from_config(3)


def test_dit_token_grid_names_latent_and_patch() -> None:
    model = ToyDiT.from_config(ToyConfig())
    assert model.token_grid((1, 4, 3, 6, 10)) == (3, 3, 5)
    with pytest.raises(
        ValueError,
        match=r"latent \(T, H, W\)=\(3, 7, 10\) must be divisible by the patch \(t, h, w\)=\(1, 2, 2\)",
    ):
        model.token_grid((1, 4, 3, 7, 10))


def test_dit_from_pretrained_maps_names_keeps_fp32_modules_and_compiles(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = ToyDiT.from_config(ToyConfig(), device="cpu").eval()
    folder = _save_toy(tmp_path / "toy", model)
    loaded = ToyDiT.from_pretrained(folder)  # bf16, norms kept in fp32
    dtypes = {k: v.dtype for k, v in loaded.state_dict().items()}
    assert {k for k, d in dtypes.items() if d == torch.float32} == {
        f"blocks.{i}.norm.{p}" for i in (0, 1) for p in ("weight", "bias")
    }
    assert loaded.dtype == torch.bfloat16 and not loaded.training
    exact = ToyDiT.from_pretrained(folder, dtype=torch.float32)
    assert all(torch.equal(exact.state_dict()[k], v) for k, v in model.state_dict().items())
    x, t = torch.randn(1, 4, 2, 4, 4), torch.tensor(0.5)
    with torch.no_grad():
        eager = exact(x, t)
        torch.testing.assert_close(exact.compile_blocks(backend="eager")(x, t), eager)
    assert list(exact.state_dict()) == list(model.state_dict())
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "_class_name": "WanTransformer3DModel"}))
    with pytest.raises(
        CheckpointError, match="describes a WanTransformer3DModel; ToyDiT loads ToyTransformer3DModel"
    ):
        ToyDiT.from_pretrained(folder)


def test_matches_module_takes_whole_name_components() -> None:
    assert matches_module("blocks.3.modulation", ("modulation",))
    assert matches_module("image_embed.norm_in.weight", ("image_embed.norm_in",))
    assert not matches_module("blocks.3.time_modulation", ("modulation",))
    assert not matches_module("norm_in.weight", ("image_embed.norm_in",))


# ---------------------------------------------------------------------------------------------- geometry, devices


def test_latent_geometry_reads_wan_and_hunyuan_vae_configs() -> None:
    wan = SimpleNamespace(config={"z_dim": 2, "latents_mean": [0.5, -1.0], "latents_std": [2.0, 4.0]})
    g = LatentGeometry.from_vae(wan, spatial=8, temporal=4)  # the config names no strides: the fallbacks
    assert (g.channels, g.spatial, g.temporal) == (2, 8, 4)
    assert g.shape(SimpleNamespace(num_frames=81, height=480, width=832)) == (2, 21, 60, 104)
    z = torch.randn(1, 2, 3, 4, 4)
    ref = z * torch.tensor([2.0, 4.0]).view(1, 2, 1, 1, 1) + torch.tensor([0.5, -1.0]).view(1, 2, 1, 1, 1)
    torch.testing.assert_close(g.denormalize(z), ref)
    torch.testing.assert_close(g.normalize(g.denormalize(z)), z)
    hy = SimpleNamespace(
        config={
            "latent_channels": 16,
            "spatial_compression_ratio": 8,
            "temporal_compression_ratio": 4,
            "scaling_factor": 0.476986,
        }
    )
    h = LatentGeometry.from_vae(hy, channels=4)
    assert (h.channels, h.spatial, h.temporal, h.mean) == (4, 8, 4, None)
    torch.testing.assert_close(h.denormalize(z), z / 0.476986)
    with pytest.raises(
        ValueError,
        match=r"SimpleNamespace's config gives no latent channels / spatial / temporal stride \(got 2, None, None\)",
    ):
        LatentGeometry.from_vae(SimpleNamespace(config={"z_dim": 2}))


def test_device_and_default_dtypes() -> None:
    cfg = SimpleNamespace(device=None, dtype=None, text_encoder_dtype=None, vae_dtype=None)
    assert pick_device(SimpleNamespace(device="cpu")) == pick_device("cpu") == torch.device("cpu")
    assert (
        pick_device(cfg) == pick_device(None) == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    )
    assert default_dtypes(cfg, torch.device("cpu")) == ("fp32", "fp32", "fp32")
    assert default_dtypes(cfg, torch.device("cuda")) == ("bf16", "bf16", "fp32")
    assert default_dtypes(cfg, torch.device("cuda"), text="fp16", vae="fp16") == ("bf16", "fp16", "fp16")
    mine = SimpleNamespace(device=None, dtype="fp16", text_encoder_dtype="fp32", vae_dtype="bf16")
    assert default_dtypes(mine, torch.device("cuda")) == ("fp16", "fp32", "bf16")


# ---------------------------------------------------------------------------------------------- joint attention


def test_joint_attention_is_attention_over_video_then_text() -> None:
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 6, 2, 8, generator=gen) for _ in range(3))
    qt, kt, vt = (torch.randn(2, 3, 2, 8, generator=gen) for _ in range(3))
    mask = torch.tensor([[True, True, True], [True, False, False]])
    keys = torch.cat([torch.ones(2, 6, dtype=torch.bool), mask], dim=1)[:, None, None, :]
    cat = [torch.cat(p, dim=1).transpose(1, 2) for p in ((q, qt), (k, kt), (v, vt))]  # (B, H, L, D)
    ref = F.scaled_dot_product_attention(*cat, attn_mask=keys).transpose(1, 2)
    with use_backend("sdpa"):
        out, out_txt = joint_attention(q, k, v, qt, kt, vt, txt_mask=mask)
    torch.testing.assert_close(out, ref[:, :6])
    torch.testing.assert_close(out_txt, ref[:, 6:])


def test_model_source_reads_component_configs(tmp_path: Path) -> None:
    from fastvideo.interfaces.model_family import ModelFamily, ModelSource

    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text('{"z_dim": 16}')
    source = ModelSource(family=ModelFamily, path=tmp_path, model_index={})
    assert source.read_json("vae/config.json") == {"z_dim": 16}
    assert source.read_json("transformer/config.json") is None
    assert (
        ModelSource(family=ModelFamily, path=Path("."), model_index={}).read_json("vae/config.json") is None
    )
