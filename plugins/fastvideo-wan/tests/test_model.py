"""WanTransformer against diffusers' WanTransformer3DModel: numerics, structure, loading, errors."""

from __future__ import annotations

import fnmatch
import json
import math
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from fastvideo.attention import ALL, DENSE, use_backend
from fastvideo.errors import CheckpointError
from fastvideo.testing import rewrite_checkpoint
from fastvideo_wan import model as wan_model
from fastvideo_wan.configs import CONFIGS
from fastvideo_wan.convert import (
    INDEX_NAME,
    WEIGHTS_NAME,
    UnmappedKeysError,
    diffusers_to_ours,
    ours_to_diffusers,
)
from fastvideo_wan.model import WanConfig, WanTransformer

I2V = dict(in_channels=36, image_dim=24, added_kv_proj_dim=32)  # CLIP dim scaled down; k/v input = 2 x 16
TI2V = dict(in_channels=48, out_channels=48)
FLF2V = dict(I2V, pos_embed_seq_len=10)  # 2 x 5 image tokens


@pytest.fixture(autouse=True)
def _dense_sdpa() -> Iterator[None]:
    with use_backend("sdpa"):  # other installed attention plugins must not change the numbers
        yield


def make_inputs(
    cfg: Any,
    *,
    batch: int = 1,
    latent: tuple[int, int, int] = (2, 16, 16),
    text_len: int = 7,
    image: tuple[int, int] | None = None,
    per_token: bool = False,
    seed: int = 0,
) -> tuple[torch.Tensor, ...]:
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


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref.float()).abs().max() / ref.float().abs().max()).item()


# --------------------------------------------------------------------------------------------------
# Parity with diffusers (fp32)
# --------------------------------------------------------------------------------------------------

PARITY = [
    pytest.param({}, {}, id="t2v"),
    pytest.param({}, dict(batch=2, latent=(3, 6, 10)), id="t2v-odd-grid-batch2"),
    pytest.param(dict(cross_attn_norm=False), {}, id="t2v-no-cross-attn-norm"),
    # diffusers splits image from text tokens assuming 512 text tokens, as its pipelines pad to
    pytest.param(I2V, dict(batch=2, text_len=512, image=(2, 9)), id="i2v"),
    pytest.param(FLF2V, dict(text_len=512, image=(2, 5)), id="flf2v"),
    pytest.param(TI2V, dict(batch=2, latent=(3, 6, 10), per_token=True), id="ti2v-per-token-timesteps"),
]


@pytest.mark.parametrize(("overrides", "inputs"), PARITY)
def test_forward_matches_diffusers_fp32(tiny_checkpoint: Callable, overrides: dict, inputs: dict) -> None:
    folder, ref = tiny_checkpoint(**overrides)
    ours = WanTransformer.from_pretrained(folder, dtype=torch.float32)
    args = make_inputs(ref.config, **inputs)
    with torch.no_grad():
        expected = ref(*args, return_dict=False)[0]
        out = ours(*args)
    assert out.shape == expected.shape == (args[0].shape[0], ref.config.out_channels, *args[0].shape[2:])
    assert rel_err(out, expected) <= 1e-4


def test_bf16_load_keeps_diffusers_fp32_modules(tiny_checkpoint: Callable) -> None:
    from diffusers import WanTransformer3DModel

    folder, _ = tiny_checkpoint(**FLF2V)
    ours = WanTransformer.from_pretrained(folder)  # bf16 by default
    ref = WanTransformer3DModel.from_pretrained(folder, torch_dtype=torch.bfloat16)
    expected = diffusers_to_ours({k: v.dtype for k, v in ref.state_dict().items()})
    got = {k: v.dtype for k, v in ours.state_dict().items()}
    assert got == expected
    fp32 = {k for k, d in got.items() if d == torch.float32}
    assert fp32 == {k for k in got if WanTransformer.is_fp32_param(k)}
    assert {
        "blocks.0.modulation",
        "head.modulation",
        "time_embed.fc1.weight",
        "image_embed.norm_out.bias",
    } <= fp32
    x, t, text, img = make_inputs(ref.config, text_len=512, image=(2, 5))
    args = (x.bfloat16(), t, text.bfloat16(), img.bfloat16())
    with torch.no_grad():
        out, expected_out = ours(*args), ref(*args, return_dict=False)[0]
    assert out.dtype == torch.bfloat16
    assert rel_err(out, expected_out) <= 3e-2  # two bf16 implementations: rounding noise only


def test_repeat_forward_is_deterministic_and_gradients_are_finite(tiny_checkpoint: Callable) -> None:
    folder, ref = tiny_checkpoint(**I2V)
    model = WanTransformer.from_pretrained(folder, dtype=torch.float32)
    args = make_inputs(ref.config, batch=2, image=(2, 9))
    with torch.no_grad():
        assert torch.equal(model(*args), model(*args))
    model.train()
    model(*args).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_attention_goes_through_the_seam_with_layer_allow_lists(
    tiny_checkpoint: Callable, monkeypatch: pytest.MonkeyPatch
) -> None:
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
    self_attn = {n for n, m in model.named_modules() if isinstance(m, wan_model.WanSelfAttention)}
    sparse = {
        n
        for n, _ in model.named_modules()
        if any(fnmatch.fnmatch(n, p) for p in model.sparse_attention_layers)
    }
    assert sparse == self_attn and len(sparse) == ref.config.num_layers


# --------------------------------------------------------------------------------------------------
# Structure, configs, helpers
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_real_size_names_and_shapes_match_diffusers(name: str) -> None:
    from diffusers import WanTransformer3DModel

    cfg = CONFIGS[name]
    with torch.device("meta"):
        ref = WanTransformer3DModel(**{k: v for k, v in cfg.items() if not k.startswith("_")})
    ours = WanTransformer.from_config(cfg)
    assert all(p.is_meta for p in ours.parameters())
    theirs = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert ours_to_diffusers({k: tuple(v.shape) for k, v in ours.state_dict().items()}) == theirs
    theirs_cfg = {
        k: list(v) if k == "patch_size" else v for k, v in ref.config.items() if not k.startswith("_")
    }
    assert WanConfig.from_diffusers_config(cfg).to_diffusers_config() == theirs_cfg


def test_class_metadata_names_real_modules(tiny_checkpoint: Callable) -> None:
    model = WanTransformer.from_config(WanConfig.from_diffusers_config(tiny_checkpoint(**FLF2V)[1].config))
    classes = {type(m).__name__ for m in model.modules()}
    assert set(WanTransformer.fsdp_units) <= classes
    names = [n for n, _ in model.named_parameters()]
    for entry in WanTransformer.fp32_modules:  # every entry keeps something
        assert any(WanTransformer.is_fp32_param(n) and entry.split(".")[-1] in n.split(".") for n in names), (
            entry
        )
    assert not WanTransformer.is_fp32_param("blocks.0.self_attn.q.weight")
    assert not WanTransformer.is_fp32_param("time_mod.weight")


def test_config_from_diffusers_ignores_private_and_unknown_keys() -> None:
    raw = {
        **CONFIGS["wan2.1-t2v-1.3b"],
        "_diffusers_version": "0.42.1",
        "window_size": [-1, -1],
        "out_channels": None,
    }
    cfg = WanConfig.from_diffusers_config(raw)
    assert cfg.dim == 1536 and cfg.out_channels == 16 and cfg.patch_size == (1, 2, 2)


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        (dict(attention_head_dim=7), "attention_head_dim=7"),
        (dict(freq_dim=33), "freq_dim=33"),
        (dict(qk_norm="rms_norm"), "qk_norm='rms_norm'"),
        (dict(image_dim=1280), "added_kv_proj_dim=None"),
        (dict(image_dim=1280, added_kv_proj_dim=1280), "= 5120"),
        (dict(pos_embed_seq_len=514), "image_dim (got None)"),
        (dict(patch_size=(1, 2)), "patch_size=(1, 2)"),
    ],
)
def test_config_rejects_bad_values_with_numbers(bad: dict, words: str) -> None:
    with pytest.raises(ValueError, match=re.escape(words)):
        WanConfig(**bad)


def test_token_grid_and_shape_errors() -> None:
    model = WanTransformer.from_config(WanConfig(patch_size=(1, 2, 2), num_layers=1, rope_max_seq_len=32))
    assert model.token_grid((1, 16, 3, 6, 10)) == (3, 3, 5)
    assert model.token_grid(torch.Size([21, 60, 16])) == (21, 30, 8)
    with pytest.raises(ValueError, match=r"\(3, 7, 10\) must be divisible by the patch \(t, h, w\)=\(1, 2, 2\)"):
        model.token_grid((1, 16, 3, 7, 10))
    with pytest.raises(ValueError, match=r"\(40, 2, 2\) exceeds rope_max_seq_len=32"):
        model.token_grid((1, 16, 40, 4, 4))


def test_timestep_shape_error_and_image_without_image_dim(tiny_checkpoint: Callable) -> None:
    folder, ref = tiny_checkpoint()
    model = WanTransformer.from_pretrained(folder, dtype=torch.float32)
    x, _, text, _ = make_inputs(ref.config)
    with pytest.raises(ValueError, match=r"\(B, 128\)"):
        model(x, torch.zeros(1, 5), text)
    with pytest.raises(ValueError, match="image_dim"):
        model(x, torch.zeros(1), text, torch.zeros(1, 3, 24))


def test_from_config_on_cpu_initializes_and_runs() -> None:
    cfg = WanConfig(
        num_attention_heads=2, attention_head_dim=16, text_dim=32, freq_dim=32, ffn_dim=64, num_layers=2
    )
    model = WanTransformer.from_config(cfg, device="cpu")
    assert all(torch.isfinite(p).all() for p in model.parameters())
    out = model(torch.randn(1, 16, 2, 8, 8), torch.tensor([3.0]), torch.randn(1, 4, 32))
    assert out.shape == (1, 16, 2, 8, 8) and torch.isfinite(out).all()


def test_compile_blocks_keeps_outputs_and_names(tiny_checkpoint: Callable) -> None:
    folder, ref = tiny_checkpoint()
    model = WanTransformer.from_pretrained(folder, dtype=torch.float32)
    args = make_inputs(ref.config)
    names = list(model.state_dict())
    with torch.no_grad():
        eager = model(*args)
        compiled = model.compile_blocks(backend="eager")(*args)
    assert list(model.state_dict()) == names
    torch.testing.assert_close(compiled, eager)


# --------------------------------------------------------------------------------------------------
# Loading and its errors
# --------------------------------------------------------------------------------------------------


def test_sharded_checkpoint_loads_like_single_file(tiny_checkpoint: Callable, tmp_path: Path) -> None:
    _, ref = tiny_checkpoint()
    ref.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / INDEX_NAME).is_file() and not (tmp_path / WEIGHTS_NAME).exists()
    sharded = WanTransformer.from_pretrained(tmp_path, dtype=torch.float32).state_dict()
    single = WanTransformer.from_pretrained(tiny_checkpoint()[0], dtype=torch.float32).state_dict()
    assert sharded.keys() == single.keys() and all(torch.equal(sharded[k], single[k]) for k in single)
    shard = sorted(json.loads((tmp_path / INDEX_NAME).read_text())["weight_map"].values())[-1]
    (tmp_path / shard).unlink()
    with pytest.raises(CheckpointError, match=shard):
        WanTransformer.from_pretrained(tmp_path)


def test_missing_files_name_the_path(tiny_checkpoint: Callable, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"config\.json not found"):
        WanTransformer.from_pretrained(tmp_path)
    (tmp_path / "transformer").mkdir()
    shutil.copy(tiny_checkpoint()[0] / "config.json", tmp_path / "transformer" / "config.json")
    with pytest.raises(CheckpointError, match=r"did you mean .*transformer"):
        WanTransformer.from_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match=f"{WEIGHTS_NAME} or {INDEX_NAME}"):
        WanTransformer.from_pretrained(tmp_path / "transformer")


def test_truncated_and_corrupt_safetensors_name_the_file(tiny_checkpoint: Callable, tmp_path: Path) -> None:
    src = tiny_checkpoint()[0]
    for name, damage in [
        ("truncated", lambda b: b[: len(b) // 2]),
        ("corrupt", lambda b: b"\xff" * 64 + b[64:]),
    ]:
        folder = tmp_path / name
        shutil.copytree(src, folder)
        path = folder / WEIGHTS_NAME
        path.write_bytes(damage(path.read_bytes()))
        with pytest.raises(CheckpointError, match=f"{name}/{WEIGHTS_NAME}"):
            WanTransformer.from_pretrained(folder)


def test_wrong_model_class_or_bad_config_is_a_checkpoint_error(
    tiny_checkpoint: Callable, tmp_path: Path
) -> None:
    src = tiny_checkpoint()[0]
    for name, change in [
        ("vace", {"_class_name": "WanVACETransformer3DModel"}),
        ("bad", {"attention_head_dim": 7}),
    ]:
        folder = tmp_path / name
        shutil.copytree(src, folder)
        cfg = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**cfg, **change}))
        with pytest.raises(
            CheckpointError, match="WanVACETransformer3DModel" if name == "vace" else "head_dim=7"
        ):
            WanTransformer.from_pretrained(folder)


def _drop(key: str) -> Callable[[dict], None]:
    return lambda sd: sd.pop(key)


def _add(key: str, shape: tuple[int, ...]) -> Callable[[dict], None]:
    return lambda sd: sd.__setitem__(key, torch.zeros(shape))


@pytest.mark.parametrize(
    ("edit", "error", "words"),
    [
        (
            _drop("blocks.1.attn1.to_q.weight"),
            CheckpointError,
            r"missing 1 tensor.*blocks\.1\.attn1\.to_q\.weight",
        ),
        (
            _add("blocks.0.attn2.add_k_proj.weight", (32, 32)),
            CheckpointError,
            r"unexpected tensor.*blocks\.0\.attn2\.add_k_proj\.weight \(diffusion_pytorch_model",
        ),
        (
            _add("blocks.0.attn1.to_q.lora_A.weight", (4, 32)),
            UnmappedKeysError,
            r"blocks\.0\.attn1\.to_q\.lora_A",
        ),
        (
            _add("proj_out.weight", (3, 32)),
            CheckpointError,
            r"proj_out\.weight .*\(3, 32\), the config needs \(64, 32\)",
        ),
    ],
    ids=["missing", "unexpected", "unmapped", "shape-mismatch"],
)
def test_state_dict_mismatch_names_the_tensor(
    tiny_checkpoint: Callable, tmp_path: Path, edit: Callable, error: type, words: str
) -> None:
    folder = rewrite_checkpoint(tiny_checkpoint()[0], tmp_path / "ckpt", edit)
    with pytest.raises(error, match=words):
        WanTransformer.from_pretrained(folder)


def test_ignored_diffusers_key_is_dropped(tiny_checkpoint: Callable, tmp_path: Path) -> None:
    folder = rewrite_checkpoint(
        tiny_checkpoint(**I2V)[0], tmp_path / "ckpt", _add("blocks.0.attn2.norm_added_q.weight", (32,))
    )
    assert "blocks.0.cross_attn.norm_k_img.weight" in WanTransformer.from_pretrained(folder).state_dict()
