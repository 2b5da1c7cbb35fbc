"""Checkpoint loading on real files: safetensors written by safetensors / diffusers ``save_pretrained``."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from fastvideo.errors import CheckpointError, ModelNotCachedError
from fastvideo.loader import (
    fetch_model,
    hub_token,
    load_component,
    load_module_weights,
    load_safetensors_folder,
    read_model_index,
    verify_safetensors,
)
from fastvideo.testing import plugin_env, run_python, write_hf_cache

TINY_WAN_DIT = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 2,
    "attention_head_dim": 16,
    "in_channels": 16,
    "out_channels": 16,
    "text_dim": 32,
    "freq_dim": 32,
    "ffn_dim": 64,
    "num_layers": 2,
    "rope_max_seq_len": 32,
}


def _tensors() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {"a.weight": torch.randn(4, 3, generator=gen), "a.bias": torch.randn(4, generator=gen)}


@pytest.fixture
def weights_file(tmp_path: Path) -> Path:
    path = tmp_path / "model.safetensors"
    save_file(_tensors(), str(path))
    return path


# ---------------------------------------------------------------- verify_safetensors


def test_verify_accepts_a_good_file(weights_file: Path) -> None:
    header = verify_safetensors(weights_file)
    assert set(header) - {"__metadata__"} == {"a.weight", "a.bias"}
    assert header["a.weight"]["shape"] == [4, 3]


def test_verify_rejects_a_truncated_file(weights_file: Path) -> None:
    data = weights_file.read_bytes()
    weights_file.write_bytes(data[:-5])
    with pytest.raises(CheckpointError, match="truncated") as err:
        verify_safetensors(weights_file)
    assert str(weights_file) in str(err.value)
    assert f"the file has {len(data) - 5}" in str(err.value)


def test_verify_rejects_a_file_cut_inside_the_header(weights_file: Path) -> None:
    weights_file.write_bytes(weights_file.read_bytes()[:20])
    with pytest.raises(CheckpointError, match=f"{weights_file}: corrupt or truncated safetensors header"):
        verify_safetensors(weights_file)


@pytest.mark.parametrize(
    "header",
    [b'{"a.weight": {"dtype": "F32", "shape": [4, 3], "data_offsets": [0, 48]', b'["not", "a", "table"]'],
    ids=["bad-json", "not-a-table"],
)
def test_verify_rejects_a_corrupt_header(tmp_path: Path, header: bytes) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(48))
    with pytest.raises(CheckpointError, match="corrupt safetensors header") as err:
        verify_safetensors(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("content", [b"", b"1234"], ids=["empty", "tiny"])
def test_verify_rejects_a_file_too_short_for_a_header(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "short.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=f"{path}: not a safetensors file \\({len(content)} bytes\\)"):
        verify_safetensors(path)


def test_verify_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=re.escape("gone.safetensors: no such file")):
        verify_safetensors(tmp_path / "gone.safetensors")


# ---------------------------------------------------------------- folders and shards


def _write_shards(folder: Path, *, missing: bool = False) -> None:
    tensors = _tensors()
    save_file({"a.weight": tensors["a.weight"]}, str(folder / "model-00001-of-00002.safetensors"))
    if not missing:
        save_file({"a.bias": tensors["a.bias"]}, str(folder / "model-00002-of-00002.safetensors"))
    weight_map = {
        "a.weight": "model-00001-of-00002.safetensors",
        "a.bias": "model-00002-of-00002.safetensors",
    }
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )


def test_sharded_folder_loads_every_tensor(tmp_path: Path) -> None:
    _write_shards(tmp_path)
    loaded = load_safetensors_folder(tmp_path)
    expected = _tensors()
    assert set(loaded) == set(expected)
    for name, tensor in expected.items():
        assert torch.equal(loaded[name], tensor), name


def test_sharded_index_with_a_missing_shard_names_it(tmp_path: Path) -> None:
    _write_shards(tmp_path, missing=True)
    with pytest.raises(
        CheckpointError, match=re.escape("model.safetensors.index.json lists shards that are missing")
    ) as err:
        load_safetensors_folder(tmp_path)
    assert str(tmp_path / "model-00002-of-00002.safetensors") in str(err.value)


def test_invalid_shard_index_is_a_checkpoint_error(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors.index.json").write_text('{"metadata": {}}')
    with pytest.raises(
        CheckpointError, match=re.escape("model.safetensors.index.json: not a valid shard index")
    ):
        load_safetensors_folder(tmp_path)


def test_tensor_in_two_shards_is_rejected(tmp_path: Path) -> None:
    save_file(_tensors(), str(tmp_path / "one.safetensors"))
    save_file({"a.bias": torch.zeros(4)}, str(tmp_path / "two.safetensors"))
    with pytest.raises(
        CheckpointError, match=r"two.safetensors: tensors also present in another shard: \['a.bias'\]"
    ):
        load_safetensors_folder(tmp_path)


def test_folder_without_safetensors_mentions_the_bin_files(tmp_path: Path) -> None:
    torch.save(_tensors(), tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"found pytorch_model.bin: only safetensors are loaded"):
        load_safetensors_folder(tmp_path)


# ---------------------------------------------------------------- load_module_weights


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(3, 4)
        self.norm = torch.nn.LayerNorm(4)


def _tiny_state() -> dict[str, torch.Tensor]:
    with torch.device("cpu"):
        return {k: torch.randn_like(v) for k, v in Tiny().state_dict().items()}


def test_load_module_weights_fills_a_meta_module() -> None:
    state = _tiny_state()
    with torch.device("meta"):
        module = Tiny()
    load_module_weights(module, state, source="tiny", dtype=torch.bfloat16, keep_fp32=("norm",))
    assert module.a.weight.device.type == "cpu"
    assert module.a.weight.dtype == torch.bfloat16
    assert module.norm.weight.dtype == torch.float32  # kept in fp32
    assert torch.equal(module.norm.weight, state["norm.weight"])
    assert torch.equal(module.a.weight, state["a.weight"].bfloat16())


def test_load_module_weights_applies_the_name_mapping() -> None:
    state = {f"model.{k}": v for k, v in _tiny_state().items()}
    module = load_module_weights(Tiny(), state, source="tiny", rename=lambda k: k.removeprefix("model."))
    assert torch.equal(module.a.bias, state["model.a.bias"])


def test_load_module_weights_names_a_missing_tensor() -> None:
    state = _tiny_state()
    del state["norm.bias"]
    with pytest.raises(CheckpointError, match=r"^ckpt/transformer: missing tensor\(s\) \['norm.bias'\]$"):
        load_module_weights(Tiny(), state, source="ckpt/transformer")


def test_load_module_weights_names_an_unexpected_tensor() -> None:
    state = {**_tiny_state(), "extra.weight": torch.zeros(1)}
    with pytest.raises(CheckpointError, match=r"^tiny: unexpected tensor\(s\) \['extra.weight'\]$"):
        load_module_weights(Tiny(), state, source="tiny")


def test_load_module_weights_names_a_mis_shaped_tensor() -> None:
    state = {**_tiny_state(), "a.weight": torch.zeros(4, 5)}
    with pytest.raises(
        CheckpointError, match=r"^tiny: tensor 'a.weight' has shape \(4, 5\), the model expects \(4, 3\)$"
    ):
        load_module_weights(Tiny(), state, source="tiny")


# ---------------------------------------------------------------- components of a diffusers folder


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A diffusers-format folder: a tiny WanTransformer3DModel (safetensors), the same model as
    .bin only, and a scheduler, each written by diffusers' save_pretrained."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanTransformer3DModel

    root = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    model = WanTransformer3DModel(**TINY_WAN_DIT)
    model.save_pretrained(root / "transformer")
    model.save_pretrained(root / "transformer_bin", safe_serialization=False)
    FlowMatchEulerDiscreteScheduler(shift=3.0).save_pretrained(root / "scheduler")
    index = {
        "_class_name": "WanPipeline",
        "_diffusers_version": "0.42.1",
        "transformer": ["diffusers", "WanTransformer3DModel"],
        "transformer_bin": ["diffusers", "WanTransformer3DModel"],
        "transformer_missing": ["diffusers", "WanTransformer3DModel"],
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "vae": [None, None],
    }
    (root / "model_index.json").write_text(json.dumps(index))
    return root


def test_load_component_builds_the_model_with_the_dtype(tiny_checkpoint: Path) -> None:
    from diffusers import WanTransformer3DModel

    index = read_model_index(tiny_checkpoint)
    model = load_component(tiny_checkpoint, index, "transformer", dtype="bf16")
    assert isinstance(model, WanTransformer3DModel)
    assert model.proj_out.weight.dtype == torch.bfloat16
    assert not model.training
    reference = WanTransformer3DModel.from_pretrained(tiny_checkpoint / "transformer")
    assert torch.equal(model.proj_out.weight, reference.proj_out.weight.bfloat16())


def test_load_component_loads_a_scheduler(tiny_checkpoint: Path) -> None:
    scheduler = load_component(tiny_checkpoint, read_model_index(tiny_checkpoint), "scheduler")
    assert type(scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"
    assert scheduler.config.shift == 3.0


def test_load_component_with_a_missing_folder(tiny_checkpoint: Path) -> None:
    index = read_model_index(tiny_checkpoint)
    with pytest.raises(
        CheckpointError, match=r"'transformer_missing' is listed in model_index\.json but .* is missing"
    ):
        load_component(tiny_checkpoint, index, "transformer_missing")


def test_load_component_not_in_the_index(tiny_checkpoint: Path) -> None:
    index = read_model_index(tiny_checkpoint)
    with pytest.raises(
        CheckpointError, match=r"no component 'text_encoder' \(it lists scheduler, transformer, "
    ):
        load_component(tiny_checkpoint, index, "text_encoder")


def test_load_component_with_only_bin_weights(tiny_checkpoint: Path) -> None:
    index = read_model_index(tiny_checkpoint)
    with pytest.raises(
        CheckpointError,
        match=r"no .safetensors weights in .*transformer_bin \(found diffusion_pytorch_model.bin",
    ):
        load_component(tiny_checkpoint, index, "transformer_bin")


def test_load_component_with_truncated_weights(tiny_checkpoint: Path, tmp_path: Path) -> None:
    folder = tmp_path / "transformer"
    folder.mkdir()
    (folder / "config.json").write_bytes((tiny_checkpoint / "transformer" / "config.json").read_bytes())
    data = (tiny_checkpoint / "transformer" / "diffusion_pytorch_model.safetensors").read_bytes()
    (folder / "diffusion_pytorch_model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(
        CheckpointError, match=re.escape("diffusion_pytorch_model.safetensors: truncated or corrupt")
    ):
        load_component(tmp_path, {"transformer": ["diffusers", "WanTransformer3DModel"]}, "transformer")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (["mylib", "Thing"], "unsupported library 'mylib' \\(expected diffusers or transformers\\)"),
        (["diffusers", "NoSuchModel"], "diffusers has no class 'NoSuchModel'; upgrade diffusers"),
    ],
    ids=["library", "class"],
)
def test_load_component_with_an_unknown_class(tiny_checkpoint: Path, spec: list[str], message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        load_component(tiny_checkpoint, {"scheduler": spec}, "scheduler")


def test_read_model_index_of_a_non_diffusers_folder(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(
        CheckpointError, match=f"{tmp_path} is not a diffusers-format folder: model_index.json is missing"
    ):
        read_model_index(tmp_path)
    (tmp_path / "model_index.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=re.escape("model_index.json: invalid JSON")):
        read_model_index(tmp_path)


# ---------------------------------------------------------------- Hub


def test_hub_token_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_API_KEY", raising=False)
    assert hub_token() is None
    monkeypatch.setenv("HF_API_KEY", "from-api-key")
    assert hub_token() == "from-api-key"
    monkeypatch.setenv("HF_TOKEN", "from-hf-token")
    assert hub_token() == "from-hf-token"
    assert hub_token("explicit") == "explicit"


@pytest.mark.parametrize("filename", [None, "model_index.json"], ids=["snapshot", "file"])
def test_fetch_model_offline_names_the_uncached_repo(
    monkeypatch: pytest.MonkeyPatch, filename: str | None
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotCachedError) as err:
        fetch_model("fvtest/never-cached-anywhere", filename=filename)
    assert str(err.value) == (
        "fvtest/never-cached-anywhere is not in the local Hugging Face cache and HF_HUB_OFFLINE=1 is set; "
        "download it first with `hf download fvtest/never-cached-anywhere` (or `huggingface-cli download "
        "fvtest/never-cached-anywhere`) on a machine with Hub access"
    )


def test_fetch_model_local_files_only_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(
        ModelNotCachedError, match="not in the local Hugging Face cache and local_files_only=True"
    ):
        fetch_model("fvtest/never-cached-anywhere", local_files_only=True, filename="model_index.json")


def test_fetch_model_offline_finds_a_cached_repo(tmp_path: Path) -> None:
    snapshot = write_hf_cache(
        tmp_path / "hf", "fvtest/cached", {"model_index.json": "{}", "vae/config.json": "{}"}
    )
    proc = run_python(
        """
        from fastvideo.loader import fetch_model
        print(fetch_model("fvtest/cached"))
        print(fetch_model("fvtest/cached", filename="vae/config.json"))
        """,
        env=plugin_env(HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1"),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [str(snapshot), str(snapshot / "vae" / "config.json")]
