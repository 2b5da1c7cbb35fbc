"""The example family's training hooks (fastvideo_example/training.py) against the libraries they
wrap: preprocessing encoders against diffusers' VAE and transformers' UMT5 called directly, the
objective's shift against the scheduler config, and the name mapping and loader's errors. (The core
trainer, LoRA and parallel tests run on the example family too: core/tests/test_training_*.py.)"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from fastvideo.testing import fake_plugins
from fastvideo_example import plugin as example_plugin


@pytest.fixture(autouse=True)
def example_family() -> Iterator[None]:
    with fake_plugins(example_plugin):
        yield


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fastvideo_example.checkpoint import make_checkpoint

    return make_checkpoint(tmp_path_factory.mktemp("example") / "tiny", seed=1)


def _source(path: Path):  # type: ignore[no-untyped-def]
    from fastvideo.resolve import resolve

    return resolve(str(path))


def test_preprocess_encoders_match_the_libraries(ckpt: Path) -> None:
    from diffusers import AutoencoderKLWan
    from transformers import UMT5EncoderModel

    from fastvideo.configs import PipelineConfig
    from fastvideo_example.checkpoint import example_tokenizer

    source = _source(ckpt)
    encoders = source.family.training_encoders(source, PipelineConfig(device="cpu", progress=False))
    frames = torch.randint(
        0, 256, (5, 32, 32, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8
    )
    vae = AutoencoderKLWan.from_pretrained(str(ckpt / "vae")).eval()
    video = frames.permute(3, 0, 1, 2)[None].float() / 127.5 - 1.0  # (1, 3, T, H, W) in [-1, 1]
    with torch.no_grad():
        raw = vae.encode(video).latent_dist.mode()
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    latents = encoders.encode_video(frames)
    assert latents.shape == (16, 2, 4, 4)
    torch.testing.assert_close(latents, ((raw - mean) / std)[0], rtol=1e-5, atol=1e-5)

    text = UMT5EncoderModel.from_pretrained(str(ckpt / "text_encoder")).eval()
    ids = example_tokenizer()("a red ball", return_tensors="pt").input_ids
    with torch.no_grad():
        ref = text(input_ids=ids).last_hidden_state[0]
    (embeds,) = encoders.encode_text(["a red ball"], max_length=16)
    assert embeds.shape == ref.shape
    torch.testing.assert_close(embeds, ref, rtol=1e-5, atol=1e-5)


def test_objective_uses_the_checkpoint_shift(ckpt: Path, tmp_path: Path) -> None:
    from fastvideo.training.objectives import FlowMatchingObjective

    source = _source(ckpt)
    assert source.family.training_objective(source) == FlowMatchingObjective(
        shift=3.0, num_train_timesteps=1000
    )

    other = tmp_path / "shift5"
    shutil.copytree(ckpt, other)
    config = json.loads((other / "scheduler" / "scheduler_config.json").read_text())
    (other / "scheduler" / "scheduler_config.json").write_text(json.dumps({**config, "shift": 5.0}))
    assert _source(other).family.training_objective(_source(other)).shift == 5.0


def test_names_and_loading_errors(ckpt: Path) -> None:
    from fastvideo.errors import CheckpointError
    from fastvideo_example.family import ExampleFamily

    source = _source(ckpt)
    model = ExampleFamily.load_transformer(source, dtype="fp32")
    names = list(model.state_dict())
    assert ExampleFamily.to_diffusers_names(names) == {n: n for n in names}
    assert ExampleFamily.from_diffusers_names(["blocks.7.cross_attn.kv.bias"]) == {
        "blocks.7.cross_attn.kv.bias": "blocks.7.cross_attn.kv.bias"
    }
    with pytest.raises(
        CheckpointError, match=r"1 name\(s\) are no parameter of the example DiT: unet.down.0.weight"
    ):
        ExampleFamily.from_diffusers_names(["unet.down.0.weight"])
    with pytest.raises(ValueError, match=r"has no component 'transformer_2' to train \(it has .*transformer"):
        ExampleFamily.load_transformer(source, component="transformer_2")
    config = ExampleFamily.transformer_config(model)
    assert config["_class_name"] == "ExampleTransformer" and json.loads(json.dumps(config)) == json.loads(
        (ckpt / "transformer" / "config.json").read_text()
    )
