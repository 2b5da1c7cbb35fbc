"""LoRA: our layers (merge/unmerge exactness), LoRA files and their loading into a pipeline, on the
example plugin's tiny checkpoint.

The reference for a loaded LoRA is the DiT with its weights changed by hand in plain PyTorch
(``W + scale * B @ A``, read from the file with safetensors): the generator with the LoRA loaded (and
then merged) must give the frames of a generator whose DiT holds those weights. Each case also checks
that the LoRA changes the video, so the comparison could fail. Interop with diffusers' and the
official Wan LoRA formats is tested in fastvideo-wan's tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from fastvideo.testing import fake_plugins
from fastvideo.testing.loras import (
    check_foreign_lora_is_refused,
    check_lora_round_trip,
    check_scaled_loras,
    random_lora,
)
from fastvideo.training import lora as L
from fastvideo_example import plugin as example_plugin

PROMPT = "a red ball rolling on the street"
KW = dict(num_frames=5, height=32, width=32, num_inference_steps=2, guidance_scale=3.0, seed=11)


@pytest.fixture(autouse=True)
def example_family() -> Iterator[None]:
    """The core's built-ins and the example plugin only (no installed plugin)."""
    with fake_plugins(example_plugin):
        yield


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fastvideo_example.checkpoint import make_checkpoint
    from fastvideo_example.model import ExampleTransformer

    path = make_checkpoint(tmp_path_factory.mktemp("example") / "tiny", seed=3)
    # larger random weights than the checkpoint's (std 0.02), so that the DiT, and an adapter on it,
    # visibly change the decoded video
    dit = ExampleTransformer.from_pretrained(path / "transformer")
    dit.init_weights(seed=3, std=0.2)
    dit.save_pretrained(path / "transformer")
    return path


def _family():
    from fastvideo_example.family import ExampleFamily

    return ExampleFamily


def _ours(ckpt: Path):
    from fastvideo import VideoGenerator

    return VideoGenerator.from_pretrained(str(ckpt), device="cpu", progress=False)


def _frames(gen) -> np.ndarray:
    return gen.generate_video(PROMPT, **KW).frames.astype(np.float64)


def _by_hand(ckpt: Path, loras: list[tuple[Path, float]]) -> np.ndarray:
    """Frames of a generator whose DiT weights are ``W + scale * B @ A`` for each LoRA file, read with
    safetensors (the file folds alpha / r into B; the example's names are the DiT's own)."""
    from safetensors.torch import load_file

    gen = _ours(ckpt)
    dit = gen.pipeline.components["transformer"]
    with torch.no_grad():
        for path, scale in loras:
            tensors = load_file(str(path))
            modules = {
                k.removeprefix("transformer.").rsplit(".lora_A.", 1)[0] for k in tensors if ".lora_A." in k
            }
            assert modules, f"{path} holds no lora_A tensor"
            for module in modules:
                a = tensors[f"transformer.{module}.lora_A.weight"]
                b = tensors[f"transformer.{module}.lora_B.weight"]
                weight = dit.get_parameter(f"{module}.weight")
                weight += scale * (b.float() @ a.float()).to(weight.dtype)
    return _frames(gen)


@pytest.fixture(scope="module")
def base_frames(ckpt: Path) -> np.ndarray:
    with fake_plugins(example_plugin):  # module-scoped: set up before the autouse fixture
        return _frames(_ours(ckpt))


# ---------------------------------------------------------------- layer


def test_lora_linear_merge_unmerge_is_exact() -> None:
    torch.manual_seed(0)
    base = torch.nn.Linear(8, 6).to(torch.bfloat16)
    w0 = base.weight.detach().clone()
    layer = L.LoRALinear(base)
    assert layer.weight is base.weight  # same parameters, same names
    a, b = torch.randn(2, 8), torch.randn(6, 2)
    layer.add("x", a.bfloat16(), b.bfloat16(), scale=0.5, bias=torch.randn(6).bfloat16())
    x = torch.randn(3, 8).bfloat16()
    ref = x.float() @ (w0.float() + 0.5 * b @ a).T + base.bias.float() + 0.5 * layer.lora_bias["x"].float()
    torch.testing.assert_close(layer(x).float(), ref, rtol=0.05, atol=0.1)
    unmerged = layer(x)
    layer.merge()
    torch.testing.assert_close(layer(x), unmerged, rtol=0.05, atol=0.1)
    layer.unmerge()
    assert torch.equal(layer.weight, w0)  # bit-exact in bf16
    assert torch.equal(layer(x), unmerged)
    assert sorted(n for n, _ in layer.named_parameters()) == [
        "bias",
        "lora_A.x",
        "lora_B.x",
        "lora_bias.x",
        "weight",
    ]


def test_targets_that_match_nothing_say_what_exists() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"match no Linear layer of Sequential; module names look like 0"):
        L.add_trainable_lora(model, ["blocks.*.q"], rank=2)


def test_lora_arg_parsing() -> None:
    from fastvideo.generator import parse_lora_spec

    assert parse_lora_spec("a/b.safetensors:0.5") == ("a/b.safetensors", 0.5)
    assert parse_lora_spec("a/b.safetensors") == ("a/b.safetensors", 1.0)
    assert parse_lora_spec("c:/x:y.safetensors") == ("c:/x:y.safetensors", 1.0)


# ---------------------------------------------------------------- LoRA files in a pipeline


def test_our_lora_file_loads_merges_and_unloads(ckpt: Path, base_frames: np.ndarray, tmp_path: Path) -> None:
    path = random_lora(
        _family(), ckpt, tmp_path / "ours", rank=4, alpha=8.0, seed=1, targets=_family().lora_target_modules
    )
    tensors, meta = L.read_lora_file(path.parent)
    assert len(tensors) == 2 * 7 * 2  # 2 blocks x 7 target Linears x (A, B)
    assert "transformer.blocks.0.self_attn.qkv.lora_A.weight" in tensors and meta["transformer.r"] == 4
    ref = _by_hand(ckpt, [(path, 1.0)])
    check_lora_round_trip(_ours(ckpt), path, frames=_frames, ref=ref, base=base_frames)


def test_several_loras_with_scales_match_the_weights_changed_by_hand(ckpt: Path, tmp_path: Path) -> None:
    one = random_lora(
        _family(), ckpt, tmp_path / "one", rank=4, alpha=4.0, seed=2, targets=("blocks.*.self_attn.*",)
    )
    two = random_lora(
        _family(), ckpt, tmp_path / "two", rank=2, alpha=4.0, seed=3, targets=("blocks.*.ffn.*",)
    )
    ref = _by_hand(ckpt, [(one, 0.7), (two, -0.5)])
    check_scaled_loras(_ours(ckpt), one, two, scales=(0.7, -0.5), frames=_frames, ref=ref)


def test_bad_lora_files_give_one_line_errors(ckpt: Path, tmp_path: Path) -> None:
    check_foreign_lora_is_refused(_ours(ckpt), tmp_path, "example")
