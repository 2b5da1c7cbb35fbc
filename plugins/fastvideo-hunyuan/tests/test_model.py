"""HunyuanTransformer against diffusers' HunyuanVideoTransformer3DModel: numerics, structure, loading, errors."""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from fastvideo.attention import DENSE, use_backend
from fastvideo.errors import CheckpointError
from fastvideo.testing import rewrite_checkpoint
from fastvideo_hunyuan import model as hy_model
from fastvideo_hunyuan.configs import CONFIGS
from fastvideo_hunyuan.convert import WEIGHTS_NAME, UnmappedKeysError, ours_to_diffusers
from fastvideo_hunyuan.model import HunyuanConfig, HunyuanTransformer


@pytest.fixture(autouse=True)
def _dense_sdpa() -> Iterator[None]:
    with use_backend("sdpa"):  # other installed attention plugins must not change the numbers
        yield


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


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref.float()).abs().max() / ref.float().abs().max()).item()


# --------------------------------------------------------------------------------------------------
# Parity with diffusers (fp32)
# --------------------------------------------------------------------------------------------------

PARITY = [
    pytest.param({}, {}, id="b1-right-padded-text"),  # the pipeline's case: padding dropped, no mask
    pytest.param({}, dict(lengths=(12,)), id="b1-no-padding"),
    pytest.param({}, dict(lengths=(5, 9)), id="b2-unequal-lengths-masked"),
    pytest.param({}, dict(lengths=(7, 7)), id="b2-equal-lengths"),
    pytest.param({}, dict(lengths=(3, 7), left_padded=True), id="b2-left-padded"),
    pytest.param({}, dict(latent=(3, 6, 10)), id="odd-grid"),
    pytest.param(dict(guidance_embeds=False), {}, id="no-guidance-embeds"),
    pytest.param(dict(patch_size_t=2, num_layers=1), dict(latent=(4, 4, 6)), id="temporal-patch-2"),
]


@pytest.mark.parametrize(("overrides", "inputs"), PARITY)
def test_forward_matches_diffusers_fp32(tiny_checkpoint: Callable, overrides: dict, inputs: dict) -> None:
    folder, ref = tiny_checkpoint(**overrides)
    ours = HunyuanTransformer.from_pretrained(folder, dtype=torch.float32)
    args = make_inputs(ref.config, **inputs)
    with torch.no_grad():
        expected = ref(*args, return_dict=False)[0]
        out = ours(*args)
    assert out.shape == expected.shape == (args[0].shape[0], ref.config.out_channels, *args[0].shape[2:])
    assert rel_err(out, expected) <= 1e-4


def test_bf16_forward_is_close_to_diffusers_bf16(tiny_checkpoint: Callable) -> None:
    from diffusers import HunyuanVideoTransformer3DModel

    folder, _ = tiny_checkpoint()
    ours = HunyuanTransformer.from_pretrained(folder)  # bf16 by default
    ref = HunyuanVideoTransformer3DModel.from_pretrained(folder, torch_dtype=torch.bfloat16)
    assert {v.dtype for v in ours.state_dict().values()} == {torch.bfloat16}
    x, t, text, mask, pooled, g = make_inputs(ref.config)
    args = (x.bfloat16(), t, text.bfloat16(), mask, pooled.bfloat16(), g.bfloat16())
    with torch.no_grad():
        out, expected = ours(*args), ref(*args, return_dict=False)[0]
    assert out.dtype == torch.bfloat16
    assert rel_err(out, expected) <= 3e-2  # two bf16 implementations: rounding noise only


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
        calls.append((tuple(q.shape), tuple(k.shape), None, kw.get("attn_mask"), kw["allow"], "attention"))
        return seam(q, k, v, **kw)

    def joint_spy(*qkv: torch.Tensor, **kw: Any) -> Any:
        calls.append(
            (tuple(qkv[0].shape), tuple(qkv[1].shape), tuple(qkv[4].shape), kw.get("txt_mask"), "", "joint")
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
    refiner = [((1, 5, *heads), (1, 5, *heads), None, None, DENSE, "attention")] * cfg.num_refiner_layers
    joint = [((1, lv, *heads), (1, lv, *heads), (1, 5, *heads), None, "", "joint")]
    assert calls == (refiner + joint * (cfg.num_layers + cfg.num_single_layers)) * 2


def test_sequence_parallel_plan_names_the_video_token_arguments(tiny_checkpoint: Callable) -> None:
    """Every block gets (x, txt, cond, cos, sin, text_mask) with the plan's token args of length Lv."""
    folder, ref = tiny_checkpoint()
    model = HunyuanTransformer.from_pretrained(folder, dtype=torch.float32)
    plan = model.sequence_parallel_plan
    blocks = [b for name in plan.blocks for b in getattr(model, name)]
    assert len(blocks) == ref.config.num_layers + ref.config.num_single_layers
    seen = []

    def check(module: torch.nn.Module, args: tuple, output: Any) -> None:
        seen.append({name: args[i].shape[d] for name, (i, d) in plan.resolve(module).items()})
        assert {i: output[i].shape[d] for i, d in plan.output.items()} == {0: 48}
        assert args[1].shape[1] == 5  # text tokens: whole, not in the plan

    handles = [b.register_forward_hook(check) for b in blocks]
    with torch.no_grad():
        model(*make_inputs(ref.config, lengths=(5,)))
    for h in handles:
        h.remove()
    assert seen == [{"x": 48, "cos": 48, "sin": 48}] * len(blocks)


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


def test_attention_layers_declared_sparse_are_the_joint_ones(tiny_checkpoint: Callable) -> None:
    model = HunyuanTransformer.from_config(HunyuanConfig.from_diffusers_config(tiny_checkpoint()[1].config))
    names = [n for n, _ in model.named_modules()]
    sparse = {n for n in names if any(fnmatch.fnmatch(n, p) for p in model.sparse_attention_layers)}
    joint = {
        n
        for n, m in model.named_modules()
        if isinstance(m, (hy_model.HunyuanDoubleAttention, hy_model.HunyuanSingleAttention))
    }
    assert sparse == joint and len(joint) == 4
    classes = {type(m).__name__ for m in model.modules()}
    assert set(HunyuanTransformer.fsdp_units) <= classes


def test_repeat_forward_is_deterministic_and_gradients_are_finite(tiny_checkpoint: Callable) -> None:
    folder, ref = tiny_checkpoint()
    model = HunyuanTransformer.from_pretrained(folder, dtype=torch.float32)
    args = make_inputs(ref.config, lengths=(5, 9))
    with torch.no_grad():
        assert torch.equal(model(*args), model(*args))
    model.train()
    model(*args).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


# --------------------------------------------------------------------------------------------------
# Structure and configs
# --------------------------------------------------------------------------------------------------


def test_real_size_names_and_shapes_match_diffusers(real_size_reference: Any) -> None:
    """The 13B model on the meta device: every diffusers tensor has exactly one of ours, same shape."""
    assert (
        len({json.dumps(c, sort_keys=True) for c in CONFIGS.values()}) == 1
    )  # both presets: one architecture
    cfg = CONFIGS["hunyuanvideo-t2v-13b"]
    ours = HunyuanTransformer.from_config(cfg)
    assert all(p.is_meta for p in ours.parameters())
    theirs = {k: tuple(v.shape) for k, v in real_size_reference.state_dict().items()}
    mine = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert len(mine) == len(theirs) and ours_to_diffusers(mine) == theirs
    assert 12.5e9 < sum(math_prod(s) for s in mine.values()) < 13.5e9
    theirs_cfg = {
        k: list(v) if k == "rope_axes_dim" else v
        for k, v in real_size_reference.config.items()
        if not k.startswith("_")
    }
    assert HunyuanConfig.from_diffusers_config(cfg).to_diffusers_config() == theirs_cfg


def math_prod(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        (dict(qk_norm="layer_norm"), "qk_norm='layer_norm'"),
        (dict(image_condition_type="token_replace"), "HunyuanVideo-I2V"),
        (dict(rope_axes_dim=(16, 56, 48)), "summing to attention_head_dim=128"),
        (dict(rope_axes_dim=(15, 57, 56)), "positive even sizes"),
        (dict(num_attention_heads=0), "sizes must be positive"),
    ],
)
def test_config_rejects_bad_values_with_numbers(bad: dict, words: str) -> None:
    with pytest.raises(ValueError, match=re.escape(words)):
        HunyuanConfig(**bad)


def test_missing_guidance_and_bad_latent_say_what_to_pass(tiny_checkpoint: Callable) -> None:
    folder, ref = tiny_checkpoint()
    model = HunyuanTransformer.from_pretrained(folder, dtype=torch.float32)
    x, t, text, mask, pooled, _ = make_inputs(ref.config)
    with pytest.raises(ValueError, match=r"guidance_embeds=True\): pass guidance="):
        model(x, t, text, mask, pooled)
    with pytest.raises(
        ValueError, match=r"\(3, 7, 8\) must be divisible by the patch \(t, h, w\)=\(1, 2, 2\)"
    ):
        model(x[..., :7, :], t, text, mask, pooled, torch.tensor([6000.0]))


def test_from_config_on_cpu_initializes_and_runs() -> None:
    cfg = HunyuanConfig(
        in_channels=4,
        out_channels=4,
        num_attention_heads=2,
        attention_head_dim=16,
        num_layers=1,
        num_single_layers=1,
        num_refiner_layers=1,
        text_embed_dim=8,
        pooled_projection_dim=8,
        rope_axes_dim=(4, 6, 6),
    )
    model = HunyuanTransformer.from_config(cfg, device="cpu")
    assert all(torch.isfinite(p).all() for p in model.parameters())
    out = model(
        torch.randn(1, 4, 2, 4, 4),
        torch.tensor([3.0]),
        torch.randn(1, 3, 8),
        None,
        torch.randn(1, 8),
        torch.tensor([6000.0]),
    )
    assert out.shape == (1, 4, 2, 4, 4) and torch.isfinite(out).all()


def test_compile_blocks_keeps_outputs_and_names(tiny_checkpoint: Callable) -> None:
    folder, ref = tiny_checkpoint()
    model = HunyuanTransformer.from_pretrained(folder, dtype=torch.float32)
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
    folder, ref = tiny_checkpoint()
    ref.save_pretrained(tmp_path, max_shard_size="50KB")
    assert not (tmp_path / WEIGHTS_NAME).exists()
    sharded = HunyuanTransformer.from_pretrained(tmp_path, dtype=torch.float32).state_dict()
    single = HunyuanTransformer.from_pretrained(folder, dtype=torch.float32).state_dict()
    assert sharded.keys() == single.keys() and all(torch.equal(sharded[k], single[k]) for k in single)


def test_missing_config_and_wrong_class_name_the_path(tiny_checkpoint: Callable, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"config\.json not found"):
        HunyuanTransformer.from_pretrained(tmp_path)
    (tmp_path / "transformer").mkdir()
    shutil.copy(tiny_checkpoint()[0] / "config.json", tmp_path / "transformer" / "config.json")
    with pytest.raises(CheckpointError, match=r"did you mean .*transformer"):
        HunyuanTransformer.from_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "transformer" / "config.json").read_text())
    (tmp_path / "transformer" / "config.json").write_text(
        json.dumps({**cfg, "_class_name": "WanTransformer3DModel"})
    )
    with pytest.raises(CheckpointError, match="describes a WanTransformer3DModel"):
        HunyuanTransformer.from_pretrained(tmp_path / "transformer")


@pytest.mark.parametrize(
    ("edit", "error", "words"),
    [
        (
            lambda sd: sd.pop("transformer_blocks.1.attn.to_q.weight"),
            CheckpointError,
            r"missing 1 tensor.*transformer_blocks\.1\.attn\.to_q\.weight",
        ),
        (
            lambda sd: sd.__setitem__("single_transformer_blocks.5.proj_out.bias", torch.zeros(32)),
            CheckpointError,
            r"unexpected tensor.*single_transformer_blocks\.5\.proj_out\.bias",
        ),
        (
            lambda sd: sd.__setitem__("transformer_blocks.0.attn.to_q.lora_A.weight", torch.zeros(4, 32)),
            UnmappedKeysError,
            r"transformer_blocks\.0\.attn\.to_q\.lora_A\.weight",
        ),
        (
            lambda sd: sd.__setitem__("proj_out.weight", torch.zeros(3, 32)),
            CheckpointError,
            r"proj_out\.weight .*\(3, 32\), the config needs \(16, 32\)",
        ),
    ],
    ids=["missing", "unexpected", "unmapped", "shape-mismatch"],
)
def test_state_dict_mismatch_names_the_tensor(
    tiny_checkpoint: Callable, tmp_path: Path, edit: Callable, error: type, words: str
) -> None:
    folder = rewrite_checkpoint(tiny_checkpoint()[0], tmp_path / "ckpt", edit)
    with pytest.raises(error, match=words):
        HunyuanTransformer.from_pretrained(folder)
