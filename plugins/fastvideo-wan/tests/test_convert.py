"""The declared diffusers <-> fastvideo_wan name mapping and the diffusers folder reader."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from fastvideo.testing import assert_same_placeholders
from fastvideo_wan import convert
from fastvideo_wan.configs import CONFIGS
from fastvideo_wan.convert import (
    RULES,
    DiffusersCheckpoint,
    UnmappedKeysError,
    diffusers_to_ours,
    ours_to_diffusers,
)
from fastvideo_wan.model import WanTransformer


@functools.cache
def diffusers_names(name: str) -> tuple[str, ...]:
    """State-dict names of diffusers' model for a real-size config, built on the meta device."""
    from diffusers import WanTransformer3DModel

    cfg = {k: v for k, v in CONFIGS[name].items() if not k.startswith("_")}
    with torch.device("meta"):
        return tuple(WanTransformer3DModel(**cfg).state_dict())


UNIQUE = ["wan2.1-t2v-1.3b", "wan2.1-i2v-14b-480p", "wan2.1-flf2v-14b-720p", "wan2.2-ti2v-5b"]


@pytest.mark.parametrize("name", UNIQUE)
def test_real_names_round_trip_one_to_one(name: str) -> None:
    names = diffusers_names(name)
    ours = diffusers_to_ours({k: k for k in names})
    assert len(ours) == len(names)  # no two diffusers names land on one of ours
    assert set(ours) == set(WanTransformer.from_config(CONFIGS[name]).state_dict())
    back = ours_to_diffusers({o: d for o, d in ours.items()})
    assert back == {d: d for d in names}


def test_every_rule_is_used_by_a_real_checkpoint() -> None:
    names = {n for cfg in UNIQUE for n in diffusers_names(cfg)}
    for (theirs, ours), (pattern, _) in zip(RULES, convert._TO_OURS, strict=True):
        assert any(pattern.fullmatch(n) for n in names), f"rule {theirs} -> {ours} matches no diffusers name"


def test_rules_use_the_same_placeholders_on_both_sides() -> None:
    assert_same_placeholders(RULES)


def test_values_pass_through_untouched() -> None:
    w = torch.zeros(3)
    out = diffusers_to_ours({"blocks.12.attn2.add_k_proj.bias": w, "scale_shift_table": 1})
    assert out == {"blocks.12.cross_attn.k_img.bias": w, "head.modulation": 1}
    assert out["blocks.12.cross_attn.k_img.bias"] is w


def test_unmapped_names_are_all_listed() -> None:
    with pytest.raises(
        UnmappedKeysError, match=r"2 diffusers name\(s\).*attn1\.to_q\.lora_A\.weight, foo"
    ) as info:
        diffusers_to_ours({"blocks.0.attn1.to_q.lora_A.weight": 0, "proj_out.bias": 1, "foo": 2})
    assert info.value.keys == ["blocks.0.attn1.to_q.lora_A.weight", "foo"]
    with pytest.raises(UnmappedKeysError, match=r"fastvideo_wan name\(s\).*blocks\.0\.attn1\.to_q\.weight"):
        ours_to_diffusers({"blocks.0.attn1.to_q.weight": 0})


def test_ignored_diffusers_keys_are_dropped() -> None:
    assert diffusers_to_ours({"blocks.3.attn2.norm_added_q.weight": 0}) == {}
    with pytest.raises(UnmappedKeysError):
        diffusers_to_ours({"blocks.3.attn1.norm_added_q.weight": 0})


def test_checkpoint_reads_headers_then_tensors(tiny_checkpoint: Callable, tmp_path: Path) -> None:
    folder, ref = tiny_checkpoint()
    ref.save_pretrained(tmp_path, max_shard_size="20KB")
    assert len(DiffusersCheckpoint(folder).files) == 1 and len(DiffusersCheckpoint(tmp_path).files) > 1
    for path in (folder, tmp_path):
        ckpt = DiffusersCheckpoint(path)
        expected = diffusers_to_ours({k: tuple(v.shape) for k, v in ref.state_dict().items()})
        assert ckpt.shapes == expected
        ckpt.check_against(expected)
        tensors = dict(ckpt.tensors())
        theirs = diffusers_to_ours(ref.state_dict())
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
        ref.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
        folder = tmp_path / "sharded"
    damaged = corrupt_copy(folder, tmp_path / "damaged", how)
    with pytest.raises(CheckpointError) as info:
        WanTransformer.from_pretrained(damaged.path.parent, dtype=torch.float32)
    message = str(info.value)
    assert "\n" not in message
    named = str(damaged.path) if how == "truncate" else damaged.tensor
    assert named is not None and named in message, message
