"""The declared diffusers <-> fastvideo_hunyuan name mapping and the diffusers folder reader."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from fastvideo.testing import assert_same_placeholders
from fastvideo_hunyuan import convert
from fastvideo_hunyuan.configs import HUNYUANVIDEO_T2V_13B
from fastvideo_hunyuan.convert import (
    RULES,
    DiffusersCheckpoint,
    UnmappedKeysError,
    diffusers_to_ours,
    ours_to_diffusers,
)
from fastvideo_hunyuan.model import HunyuanTransformer


def test_real_names_round_trip_one_to_one(real_size_reference: Any) -> None:
    names = list(real_size_reference.state_dict())
    ours = diffusers_to_ours({k: k for k in names})
    assert len(ours) == len(names)  # no two diffusers names land on one of ours
    assert set(ours) == set(HunyuanTransformer.from_config(HUNYUANVIDEO_T2V_13B).state_dict())
    assert ours_to_diffusers(dict(ours)) == {d: d for d in names}


def test_every_rule_is_used_by_the_real_checkpoint(real_size_reference: Any) -> None:
    names = list(real_size_reference.state_dict())
    for (theirs, ours), (pattern, _) in zip(RULES, convert._TO_OURS, strict=True):
        assert any(pattern.fullmatch(n) for n in names), f"rule {theirs} -> {ours} matches no diffusers name"


def test_rules_use_the_same_placeholders_on_both_sides() -> None:
    assert_same_placeholders(RULES)


def test_values_pass_through_untouched() -> None:
    w = torch.zeros(3)
    out = diffusers_to_ours({"transformer_blocks.12.attn.add_k_proj.bias": w, "norm_out.linear.weight": 1})
    assert out == {"double_blocks.12.attn.text_k.bias": w, "head.mod.weight": 1}
    assert out["double_blocks.12.attn.text_k.bias"] is w


def test_unmapped_names_are_all_listed() -> None:
    with pytest.raises(
        UnmappedKeysError, match=r"2 diffusers name\(s\).*attn\.to_q\.lora_A\.weight, foo"
    ) as info:
        diffusers_to_ours({"transformer_blocks.0.attn.to_q.lora_A.weight": 0, "proj_out.bias": 1, "foo": 2})
    assert info.value.keys == ["transformer_blocks.0.attn.to_q.lora_A.weight", "foo"]
    with pytest.raises(UnmappedKeysError, match=r"fastvideo_hunyuan name\(s\).*transformer_blocks\.0\.attn"):
        ours_to_diffusers({"transformer_blocks.0.attn.to_q.weight": 0})


def test_checkpoint_reads_headers_then_tensors(tiny_checkpoint: Callable, tmp_path: Path) -> None:
    folder, ref = tiny_checkpoint()
    ref.save_pretrained(tmp_path, max_shard_size="50KB")
    assert len(DiffusersCheckpoint(folder).files) == 1 and len(DiffusersCheckpoint(tmp_path).files) > 1
    expected = diffusers_to_ours({k: tuple(v.shape) for k, v in ref.state_dict().items()})
    theirs = diffusers_to_ours(ref.state_dict())
    for path in (folder, tmp_path):
        ckpt = DiffusersCheckpoint(path)
        assert ckpt.shapes == expected
        ckpt.check_against(expected)
        tensors = dict(ckpt.tensors())
        assert tensors.keys() == theirs.keys() and all(torch.equal(tensors[k], theirs[k]) for k in theirs)


@pytest.mark.parametrize("how", ["truncate", "flip", "drop", "reshape"])
@pytest.mark.parametrize("sharded", [False, True], ids=["single", "sharded"])
def test_damaged_checkpoint_is_a_one_line_error(
    tiny_checkpoint: Callable, tmp_path: Path, how: str, sharded: bool
) -> None:
    """A damaged copy of the tiny DiT (fastvideo.testing.corrupt_copy) fails to load with one line
    naming the damaged file or tensor, never loads silently."""
    from fastvideo.errors import CheckpointError
    from fastvideo.testing import corrupt_copy

    folder, ref = tiny_checkpoint()
    if sharded:
        ref.save_pretrained(tmp_path / "sharded", max_shard_size="50KB")
        folder = tmp_path / "sharded"
    damaged = corrupt_copy(folder, tmp_path / "damaged", how)
    with pytest.raises(CheckpointError) as info:
        HunyuanTransformer.from_pretrained(damaged.path.parent, dtype=torch.float32)
    message = str(info.value)
    assert "\n" not in message
    named = str(damaged.path) if how == "truncate" else damaged.tensor
    assert named is not None and named in message, message
