"""Checkpoint loading on real files: safetensors written by safetensors / diffusers ``save_pretrained``."""

from __future__ import annotations

import json
import re
import shutil
import struct
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

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
from fastvideo.loader.validate import CheckpointMismatchError, check_config_values, meta_build
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


# ---------------------------------------------------------------- strict components: transformers and diffusers

#: Real tiny transformers encoders (the families' text and image encoders), each saved by save_pretrained.
ENCODERS = {
    "umt5": ("UMT5EncoderModel", "UMT5Config", dict(d_model=16, d_kv=4, d_ff=32, num_heads=4)),
    "t5": ("T5EncoderModel", "T5Config", dict(d_model=16, d_kv=4, d_ff=32, num_heads=4)),
    "clip-text": (
        "CLIPTextModel",
        "CLIPTextConfig",
        dict(hidden_size=16, intermediate_size=32, num_attention_heads=2, max_position_embeddings=16),
    ),
    "clip-vision": (
        "CLIPVisionModel",
        "CLIPVisionConfig",
        dict(hidden_size=16, intermediate_size=32, num_attention_heads=2, image_size=16, patch_size=8),
    ),
    "llama": (
        "LlamaModel",
        "LlamaConfig",
        dict(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_key_value_heads=1),
    ),
}
_LAYERS = {"umt5": "num_layers", "t5": "num_layers", "llama": "num_hidden_layers"}


@pytest.fixture(scope="module")
def encoders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[str]]]:
    """A folder with one sub-folder per encoder of :data:`ENCODERS` (2 layers, vocabulary 64) and a
    tiny diffusers AutoencoderKLWan, plus the model index that lists them."""
    import transformers
    from diffusers import AutoencoderKLWan

    root = tmp_path_factory.mktemp("encoders")
    index: dict[str, list[str]] = {}
    torch.manual_seed(0)
    for name, (model_cls, config_cls, kwargs) in ENCODERS.items():
        layers = _LAYERS.get(name, "num_hidden_layers")
        vocab = {} if name == "clip-vision" else {"vocab_size": 64}
        config = getattr(transformers, config_cls)(**kwargs, **vocab, **{layers: 2})
        getattr(transformers, model_cls)(config).eval().save_pretrained(root / name)
        index[name] = ["transformers", model_cls]
    vae = AutoencoderKLWan(
        base_dim=8, z_dim=4, dim_mult=[1, 2], num_res_blocks=1, temperal_downsample=[False]
    )
    vae.save_pretrained(root / "vae")
    index["vae"] = ["diffusers", "AutoencoderKLWan"]
    return root, index


def _corrupt(src: Path, dst: Path, edit: Any = None, config: dict[str, Any] | None = None) -> Path:
    """A copy of the component folder ``src`` with its single weight file edited and its config updated."""
    shutil.copytree(src, dst)
    weights = next(dst.glob("*.safetensors"))
    if edit is not None:
        state = load_file(str(weights))
        edit(state)
        save_file(state, str(weights), metadata={"format": "pt"})
    if config:
        cfg = json.loads((dst / "config.json").read_text())
        (dst / "config.json").write_text(json.dumps({**cfg, **config}))
    return dst


def _load(folder: Path, library_class: list[str]) -> Any:
    return load_component(folder.parent, {folder.name: library_class}, folder.name)


@pytest.mark.parametrize("name", [*ENCODERS, "vae"])
def test_component_loads_exactly_what_its_library_loads(encoders: tuple[Path, dict], name: str) -> None:
    import diffusers
    import transformers

    root, index = encoders
    library, class_name = index[name]
    reference = getattr(transformers if library == "transformers" else diffusers, class_name).from_pretrained(
        root / name
    )
    model = load_component(root, index, name)
    expected = reference.state_dict()
    assert set(model.state_dict()) == set(expected)
    for key, value in model.state_dict().items():
        assert torch.equal(value, expected[key]), key


@pytest.mark.parametrize("name", [*ENCODERS, "vae"])
def test_component_with_a_missing_tensor_is_refused(
    encoders: tuple[Path, dict], tmp_path: Path, name: str
) -> None:
    root, index = encoders
    state = load_file(str(next((root / name).glob("*.safetensors"))))
    victim = sorted(state)[len(state) // 2]
    shape = ", ".join(str(s) for s in state[victim].shape) + ("," if state[victim].dim() == 1 else "")
    numel = sum(t.numel() for t in state.values())
    folder = _corrupt(root / name, tmp_path / name, lambda sd: sd.pop(victim))
    file = next(folder.glob("*.safetensors")).name
    with pytest.raises(CheckpointMismatchError) as err:
        _load(folder, index[name])
    assert isinstance(err.value, ValueError)
    assert str(err.value) == (
        f"{folder / 'config.json'} describes {numel:,} parameters, the weights hold "
        f"{numel - state[victim].numel():,}: missing 1 tensor(s) the config needs: {victim} of shape ({shape}) "
        f"(not in {file}); fix the config or re-download the checkpoint"
    )


def test_component_with_a_mis_shaped_tensor_names_both_shapes(
    encoders: tuple[Path, dict], tmp_path: Path
) -> None:
    root, index = encoders
    key = "encoder.block.1.layer.0.SelfAttention.q.weight"
    folder = _corrupt(root / "umt5", tmp_path / "umt5", lambda sd: sd.__setitem__(key, torch.zeros(17, 16)))
    with pytest.raises(
        CheckpointMismatchError,
        match=re.escape(f"tensor {key} (model.safetensors) has shape (17, 16), the config needs (16, 16)"),
    ):
        _load(folder, index["umt5"])


def test_component_with_an_unexpected_tensor_is_refused(encoders: tuple[Path, dict], tmp_path: Path) -> None:
    root, index = encoders
    folder = _corrupt(
        root / "llama", tmp_path / "llama", lambda sd: sd.__setitem__("extra.weight", torch.zeros(3))
    )
    with pytest.raises(
        CheckpointMismatchError,
        match=re.escape(
            "1 unexpected tensor(s) the config has no place for: extra.weight (model.safetensors) of shape (3,)"
        ),
    ):
        _load(folder, index["llama"])


@pytest.mark.parametrize("stored", ["shared", "embed_tokens", "both"])
def test_tied_t5_embedding_loads_from_either_name(
    encoders: tuple[Path, dict], tmp_path: Path, stored: str
) -> None:
    """T5's ``shared.weight`` is tied into ``encoder.embed_tokens.weight``: a checkpoint holding either
    name (or both, as older savers wrote) loads, tied, with the stored values."""
    root, index = encoders

    def edit(sd: dict[str, torch.Tensor]) -> None:
        if stored == "embed_tokens":
            sd["encoder.embed_tokens.weight"] = sd.pop("shared.weight")
        elif stored == "both":
            sd["encoder.embed_tokens.weight"] = sd["shared.weight"].clone()

    folder = _corrupt(root / "umt5", tmp_path / "umt5", edit)
    model = _load(folder, index["umt5"])
    reference = load_file(str(root / "umt5" / "model.safetensors"))["shared.weight"]
    assert model.encoder.embed_tokens.weight is model.shared.weight
    assert torch.equal(model.shared.weight, reference)


def test_component_with_a_legacy_prefix_loads_through_its_library(
    encoders: tuple[Path, dict], tmp_path: Path
) -> None:
    """Names the library renames itself (CLIP vision checkpoints saved as ``vision_model.*``) still load."""
    from transformers import CLIPVisionModel

    root, index = encoders
    folder = tmp_path / "clip-vision"
    _corrupt(
        root / "clip-vision", folder, lambda sd: sd.update({f"vision_model.{k}": sd.pop(k) for k in list(sd)})
    )
    model = _load(folder, index["clip-vision"])
    reference = CLIPVisionModel.from_pretrained(root / "clip-vision").state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in model.state_dict().items())


def test_renamed_tensor_that_the_library_cannot_place_is_refused(
    encoders: tuple[Path, dict], tmp_path: Path
) -> None:
    """Same counts, different names: left to the library, whose loading report is then checked."""
    root, index = encoders
    key = "encoder.layers.1.layer_norm1.bias"
    folder = _corrupt(
        root / "clip-vision", tmp_path / "clip", lambda sd: sd.__setitem__(key + "x", sd.pop(key))
    )
    with pytest.raises(CheckpointMismatchError, match=rf"missing tensor\(s\) {re.escape(key)}; unexpected"):
        _load(folder, index["clip-vision"])


@pytest.mark.parametrize(
    ("name", "key"), [("umt5", "num_layers"), ("llama", "num_hidden_layers"), ("vae", "base_dim")]
)
def test_absurd_config_is_refused_before_allocating(
    encoders: tuple[Path, dict], tmp_path: Path, name: str, key: str
) -> None:
    root, index = encoders
    numel = sum(t.numel() for t in load_file(str(next((root / name).glob("*.safetensors")))).values())
    folder = _corrupt(root / name, tmp_path / name, config={key: 100_000})
    start = time.perf_counter()
    with pytest.raises(CheckpointMismatchError) as err:
        _load(folder, index[name])
    assert time.perf_counter() - start < 5
    message = str(err.value)
    assert message.startswith(f"{folder / 'config.json'} describes at least ")
    assert f"parameters, the weights ({next(folder.glob('*.safetensors')).name}) hold {numel:,}: " in message


def test_meta_build_stops_an_absurd_model_early() -> None:
    """Layers of 10,100 parameters against weights of 10,100: the limit (2 x 10,100 + 1,000,000) is
    passed by the weight of the 102nd layer (101 x 10,100 + 10,000), and no further layer is built."""
    built = []

    def build() -> torch.nn.Module:
        return torch.nn.Sequential(*(built.append(i) or torch.nn.Linear(100, 100) for i in range(100_000)))

    with pytest.raises(
        CheckpointMismatchError,
        match=r"^cfg.json describes at least 1,030,100 parameters, the weights \(w.safetensors\) hold 10,100: ",
    ):
        meta_build(build, stored_numel=10_100, config="cfg.json", weights="w.safetensors")
    assert len(built) == 102


# ---------------------------------------------------------------- config files and values


@pytest.mark.parametrize(
    ("rel", "text", "where"),
    [
        ("umt5/config.json", '{"d_model": 16\n "x": 1}', "line 2 column 2: Expecting ',' delimiter"),
        ("umt5/generation_config.json", "{", "line 1 column 2: Expecting property name"),
        ("vae/config.json", '{"z_dim": 4,}', "line 1 column 13: Expecting property name"),
    ],
    ids=["transformers-config", "other-json", "diffusers-config"],
)
def test_invalid_json_names_the_file_and_the_position(
    encoders: tuple[Path, dict], tmp_path: Path, rel: str, text: str, where: str
) -> None:
    root, index = encoders
    name = rel.split("/")[0]
    shutil.copytree(root / name, tmp_path / name)
    (tmp_path / rel).write_text(text)
    with pytest.raises(CheckpointError, match=re.escape(f"{tmp_path / rel}: invalid JSON at {where}")):
        _load(tmp_path / name, index[name])


def test_invalid_tokenizer_and_scheduler_json_name_the_file(tmp_path: Path) -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler
    from transformers import T5TokenizerFast

    FlowMatchEulerDiscreteScheduler().save_pretrained(tmp_path / "scheduler")
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁a", -1.0)]
    T5TokenizerFast(vocab=vocab, extra_ids=0).save_pretrained(tmp_path / "tokenizer")
    index = {
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "tokenizer": ["transformers", "T5TokenizerFast"],
    }
    for rel in ("scheduler/scheduler_config.json", "tokenizer/tokenizer.json"):
        (tmp_path / rel).write_text('{"a": 1, oops}')
        with pytest.raises(
            CheckpointError, match=re.escape(f"{tmp_path / rel}: invalid JSON at line 1 column 10")
        ):
            load_component(tmp_path, index, rel.split("/")[0])


@pytest.mark.parametrize(("text", "kind"), [("[]", "array"), ('"WanPipeline"', "string"), ("null", "null")])
def test_model_index_that_is_not_an_object(tmp_path: Path, text: str, kind: str) -> None:
    (tmp_path / "model_index.json").write_text(text)
    with pytest.raises(
        CheckpointError,
        match=re.escape(
            f"{tmp_path / 'model_index.json'}: expected a JSON object {{...}}, got a JSON {kind}"
        ),
    ):
        read_model_index(tmp_path)


@pytest.mark.parametrize(
    ("change", "shown"),
    [
        ({"scale_factor_spatial": 0}, "scale_factor_spatial=0"),
        ({"scale_factor_temporal": -4}, "scale_factor_temporal=-4"),
        ({"patch_size": 0}, "patch_size=0"),
    ],
)
def test_zero_divisor_in_a_vae_config_is_refused(
    encoders: tuple[Path, dict], tmp_path: Path, change: dict, shown: str
) -> None:
    root, index = encoders
    folder = _corrupt(root / "vae", tmp_path / "vae", config=change)
    with pytest.raises(
        CheckpointMismatchError,
        match=re.escape(f"{folder / 'config.json'}: {shown} must be a positive integer"),
    ):
        _load(folder, index["vae"])


def test_check_config_values_accepts_defaults_and_positive_values() -> None:
    check_config_values(
        {"patch_size": [1, 2, 2], "scale_factor_spatial": None, "spatial_compression_ratio": 8}, "c"
    )
    check_config_values({"num_layers": 0, "patch_embed_dim": 0}, "c")  # not divisors: the model checks them
    with pytest.raises(ValueError, match=r"^c: patch_size_t=true must be a positive integer"):
        check_config_values({"patch_size_t": True}, "c")
    with pytest.raises(ValueError, match=r"^c: temporal_compression_ratio=0 must be"):
        check_config_values({"temporal_compression_ratio": 0}, "c")


# ---------------------------------------------------------------- shard indexes stay in their folder


def _index_to(folder: Path, target: str) -> None:
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": {"a.weight": target, "a.bias": target}})
    )


@pytest.mark.parametrize("kind", ["parent", "absolute", "symlink"])
def test_shard_index_pointing_outside_its_folder_is_refused(tmp_path: Path, kind: str) -> None:
    folder = tmp_path / "component"
    folder.mkdir()
    outside = tmp_path / "x.safetensors"
    save_file(_tensors(), str(outside))
    target = {"parent": "../x.safetensors", "absolute": str(outside), "symlink": "link.safetensors"}[kind]
    if kind == "symlink":
        (folder / "link.safetensors").symlink_to(outside)
    _index_to(folder, target)
    with pytest.raises(
        CheckpointError,
        match=re.escape(
            f"model.safetensors.index.json: shard {target!r} is outside {folder}; an index may only"
        ),
    ):
        load_safetensors_folder(folder)


def test_shard_index_in_the_hub_cache_follows_blob_symlinks(tmp_path: Path) -> None:
    """huggingface_hub's snapshots link each file to ``blobs/<hash>``, outside the snapshot folder."""
    repo = tmp_path / "models--org--name"
    blobs, snapshot = repo / "blobs", repo / "snapshots" / "abc" / "text_encoder"
    blobs.mkdir(parents=True)
    snapshot.mkdir(parents=True)
    save_file(_tensors(), str(blobs / "f00d"))
    (snapshot / "model-00001-of-00001.safetensors").symlink_to("../../../blobs/f00d")
    _index_to(snapshot, "model-00001-of-00001.safetensors")
    loaded = load_safetensors_folder(snapshot)
    assert all(torch.equal(loaded[k], v) for k, v in _tensors().items())
