"""StepVideoTransformer against the official ``StepVideoModel``: the committed outputs of the official
forward (``tests/data``, see its README), the released parameter names and shapes on ``meta``, and
loading / input errors."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from fastvideo.attention import use_backend
from fastvideo.errors import CheckpointError
from fastvideo.testing import assert_close
from fastvideo_stepvideo import convert
from fastvideo_stepvideo.model import StepVideoBlock, StepVideoConfig, StepVideoTransformer

DATA = Path(__file__).parent / "data"
#: The released transformer/config.json (stepfun-ai/stepvideo-t2v; the Turbo and TI2V DiTs share the sizes).
RELEASED = {
    "_class_name": "StepVideoModel",
    "num_attention_heads": 48,
    "attention_head_dim": 128,
    "in_channels": 64,
    "out_channels": 64,
    "num_layers": 48,
    "dropout": 0.0,
    "patch_size": 1,
    "norm_type": "ada_norm_single",
    "norm_elementwise_affine": False,
    "norm_eps": 1e-06,
    "use_additional_conditions": False,
    "caption_channels": [6144, 1024],
    "attention_type": "parallel",
}


@pytest.fixture(scope="module")
def tiny() -> StepVideoTransformer:
    return StepVideoTransformer.from_pretrained(DATA / "dit", dtype=torch.float32)


@pytest.fixture(scope="module")
def io() -> dict[str, torch.Tensor]:
    return load_file(DATA / "dit_io.safetensors")


def inputs(io: dict[str, torch.Tensor], case: str) -> tuple[torch.Tensor, ...]:
    """Our call's inputs from the official ones ((B, F, C, H, W) -> (B, C, T, H, W))."""
    return (
        io[f"{case}.hidden_states"].permute(0, 2, 1, 3, 4),
        io[f"{case}.timestep"],
        io[f"{case}.encoder_hidden_states"],
        io[f"{case}.encoder_hidden_states_2"],
        io[f"{case}.encoder_attention_mask"],
    )


@pytest.mark.parametrize("case", ["a", "b"])
def test_forward_matches_official_fp32(tiny: StepVideoTransformer, io: dict, case: str) -> None:
    """2 heads x 16, 2 layers, unequal text lengths (masked cross-attention), two grids."""
    with use_backend("sdpa"), torch.no_grad():
        out = tiny(*inputs(io, case))
    assert_close("output", io[f"{case}.output"].permute(0, 2, 1, 3, 4), out, 1e-4)


def test_per_head_qkv_layout_matters(tiny: StepVideoTransformer, io: dict) -> None:
    """The fixture tells the per-head (H, 3, Dh) qkv split from a (3, H, Dh) one: swapping the two
    layouts in the weights moves the output far from the official one."""
    model = StepVideoTransformer.from_pretrained(DATA / "dit", dtype=torch.float32)
    cfg = model.config
    h, d = cfg.num_attention_heads, cfg.attention_head_dim
    with torch.no_grad():
        for block in model.blocks:
            w = block.self_attn.qkv.weight
            w.copy_(w.view(3, h, d, -1).transpose(0, 1).reshape_as(w))
        out = model(*inputs(io, "a"))
    ref = io["a.output"].permute(0, 2, 1, 3, 4)
    assert (out - ref).norm() / ref.norm() > 1e-2


def test_bf16_load_is_close(io: dict) -> None:
    model = StepVideoTransformer.from_pretrained(DATA / "dit")  # bf16
    assert model.dtype == torch.bfloat16
    with use_backend("sdpa"), torch.no_grad():
        out = model(*inputs(io, "a")).float()
    assert_close("bf16 output", io["a.output"].permute(0, 2, 1, 3, 4), out, 5e-2)


def test_real_size_names_and_shapes_are_the_released_ones() -> None:
    """Built from the released config on meta, our parameters map one to one onto every parameter
    of the official model (its state dict built on meta, recorded in released_shapes.json)."""
    released = json.loads((DATA / "released_shapes.json").read_text())["transformer"]
    model = StepVideoTransformer.from_config(RELEASED)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    theirs = convert.ours_to_released(ours)
    assert theirs == released
    assert convert.released_to_ours(theirs) == ours
    n = sum(math.prod(s) for s in released.values())
    assert 29e9 < n < 30e9  # "30B"
    assert StepVideoConfig.from_diffusers_config(RELEASED).to_diffusers_config() == {
        k: v for k, v in RELEASED.items() if not k.startswith("_")
    }


def test_sharded_checkpoint_loads_like_single_file(tiny: StepVideoTransformer, tmp_path: Path) -> None:
    """The released folder is sharded with an index: same weights either way."""
    state = load_file(DATA / "dit" / "diffusion_pytorch_model.safetensors")
    names = sorted(state)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, keys in shards.items():
        save_file({k: state[k] for k in keys}, tmp_path / file)
    index = {"metadata": {}, "weight_map": {k: f for f, keys in shards.items() for k in keys}}
    (tmp_path / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    shutil.copy(DATA / "dit" / "config.json", tmp_path / "config.json")
    model = StepVideoTransformer.from_pretrained(tmp_path, dtype=torch.float32)
    for (k, a), b in zip(tiny.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_missing_tensor_is_named(tmp_path: Path) -> None:
    state = load_file(DATA / "dit" / "diffusion_pytorch_model.safetensors")
    del state["transformer_blocks.1.attn1.wqkv.weight"]
    save_file(state, tmp_path / "diffusion_pytorch_model.safetensors")
    shutil.copy(DATA / "dit" / "config.json", tmp_path / "config.json")
    with pytest.raises(CheckpointError, match=r"transformer_blocks\.1\.attn1\.wqkv\.weight"):
        StepVideoTransformer.from_pretrained(tmp_path)


def test_wrong_class_name_is_refused(tmp_path: Path) -> None:
    shutil.copy(DATA / "dit" / "diffusion_pytorch_model.safetensors", tmp_path)
    cfg = json.loads((DATA / "dit" / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "_class_name": "WanTransformer3DModel"}))
    with pytest.raises(CheckpointError, match="StepVideoModel"):
        StepVideoTransformer.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        ({"attention_head_dim": 12}, "multiple of 8"),
        ({"caption_channels": [1, 2, 3]}, r"\[llm_width, clip_width\]"),
        ({"norm_type": "layer_norm"}, "ada_norm_single"),
    ],
)
def test_bad_config_says_what_is_wrong(edit: dict, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        StepVideoConfig.from_diffusers_config({**RELEASED, **edit})


def test_bad_inputs_say_what_to_pass(tiny: StepVideoTransformer, io: dict) -> None:
    x, t, y, y2, mask = inputs(io, "a")
    with pytest.raises(ValueError, match=r"\(B, C, T, H, W\)"):
        tiny(x[:, :, 0], t, y, y2, mask)
    with pytest.raises(ValueError, match="in_channels=4"):
        tiny(x[:, :2], t, y, y2, mask)
    with pytest.raises(ValueError, match=r"\(B, L_clip \+ L_llm\)"):
        tiny(x, t, y, y2, mask[:, 1:])
    with pytest.raises(ValueError, match="Step-LLM states"):
        tiny(x, t, y[..., :5], y2, mask)


def test_without_mask_all_text_tokens_attend(tiny: StepVideoTransformer, io: dict) -> None:
    """No mask equals an all-ones mask."""
    x, t, y, y2, _ = inputs(io, "a")
    with torch.no_grad():
        a = tiny(x, t, y, y2, None)
        b = tiny(x, t, y, y2, torch.ones(2, 12))
    assert torch.equal(a, b)


def test_metadata_names_real_modules(tiny: StepVideoTransformer) -> None:
    plan = StepVideoTransformer.sequence_parallel_plan
    assert plan.resolve(tiny.blocks[0]) == {"x": (0, 1), "cos": (3, 0), "sin": (4, 0)}
    assert all(type(b).__name__ in StepVideoTransformer.fsdp_units for b in tiny.blocks)
    assert isinstance(tiny.blocks[0], StepVideoBlock)
    names = {n for n, _ in tiny.named_modules()}
    assert {"blocks.0.self_attn", "blocks.1.self_attn"} <= names
    assert tiny.token_grid((1, 4, 3, 4, 6)) == (3, 4, 6)


# ---- Step-Video-TI2V's DiT (the official TI2V repository's StepVideoModel, use_additional_conditions=True)


def test_ti2v_forward_matches_official_fp32() -> None:
    """Image latents concatenated along the channels, the motion score embedded beside the timestep."""
    model = StepVideoTransformer.from_pretrained(DATA / "dit_ti2v", dtype=torch.float32)
    io = load_file(DATA / "dit_ti2v_io.safetensors")
    p = lambda x: x.permute(0, 2, 1, 3, 4)  # noqa: E731
    args = (
        p(io["hidden_states"]),
        io["timestep"],
        io["encoder_hidden_states"],
        io["encoder_hidden_states_2"],
    )
    with use_backend("sdpa"), torch.no_grad():
        out = model(
            *args, io["encoder_attention_mask"], p(io["condition_hidden_states"]), float(io["motion_score"])
        )
        other = model(*args, io["encoder_attention_mask"], p(io["condition_hidden_states"]), 10.0)
    assert_close("TI2V output", p(io["output"]), out, 1e-4)
    assert (other - out).norm() / out.norm() > 1e-3  # the motion score matters
    with pytest.raises(ValueError, match="condition_hidden_states"):
        model(*args, io["encoder_attention_mask"])


def test_ti2v_real_size_names_and_shapes_are_the_released_ones() -> None:
    released = json.loads((DATA / "released_shapes.json").read_text())["transformer_ti2v"]
    model = StepVideoTransformer.from_config({**RELEASED, "use_additional_conditions": True})
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert convert.ours_to_released(ours) == released
    assert released["pos_embed.proj.weight"] == [6144, 128, 1, 1]
