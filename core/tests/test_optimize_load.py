"""Loading under a LoadPolicy (fastvideo.loader.policy): with layer offload the DiT's blocks go from the
safetensors to CPU memory and never to the device; with an FP8 checkpoint the FP8 linears are filled from
the file, the high-precision weights they replace are never read; outputs equal the plain load's.

The device is stood in for by ``meta``: whatever lands there is what a GPU would have held."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from fastvideo.configs import PipelineConfig
from fastvideo.loader.checkpoint import DiffusersCheckpoint
from fastvideo.loader.policy import LoadPolicy, current_policy
from fastvideo.models.dit import DiT
from fastvideo.optimize.fp8 import FP8, FP8Linear, block_linears, load_prequantized, quantize_rows
from fastvideo.optimize.transforms import FP8Transform, LayerOffloadTransform
from fastvideo.pipelines.composed import ComposedPipeline
from fastvideo.testing.speed import ToyDiT, toy_dit

META = torch.device("meta")


def _save_folder(model: nn.Module, folder: Path) -> Path:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        str(folder / "diffusion_pytorch_model.safetensors"),
    )
    (folder / "config.json").write_text(
        json.dumps({"_class_name": "ToyDiT", **model.config.to_diffusers_config()})
    )
    return folder


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(1, 4, 2, 3, 3, generator=g), torch.tensor([500.0]), torch.randn(1, 6, 16, generator=g)


def _block_names(model: nn.Module) -> set[str]:
    prefixes = tuple(f"blocks.{i}." for i in range(len(model.blocks)))
    return {n for n in model.state_dict() if n.startswith(prefixes)}


@pytest.fixture
def no_model_wide_moves(monkeypatch: pytest.MonkeyPatch) -> None:
    """A DiT moved as a whole (``.to`` / ``.cuda``) or loaded by the plain path fails the test."""
    plain_to = nn.Module.to

    def spy_to(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        assert not isinstance(self, DiT), "a model-wide .to() of the DiT"
        return plain_to(self, *args, **kwargs)

    def refuse(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("the whole-model load path ran")

    monkeypatch.setattr(nn.Module, "to", spy_to)
    monkeypatch.setattr(ToyDiT, "load_checkpoint", classmethod(refuse))


def test_streamed_load_puts_only_the_resident_parts_on_the_device(
    tmp_path: Path, no_model_wide_moves: None
) -> None:
    reference = toy_dit(seed=1)
    folder = _save_folder(reference, tmp_path / "transformer")
    policy = LoadPolicy(stream_blocks=True)
    with policy.active():
        model = ToyDiT.from_pretrained(folder, dtype=None, device=META)
    assert current_policy() is None  # only inside the with
    blocks = _block_names(model)
    expected = reference.state_dict()
    for name, tensor in model.state_dict().items():
        if name in blocks:  # CPU memory, with the file's values
            assert tensor.device.type == "cpu" and torch.equal(tensor, expected[name]), name
        else:  # the device (stand-in): embeddings, modulation, head
            assert tensor.device == META, name
    assert policy.loaded == [(str(folder), {"streamed_tensors": len(blocks), "fp8_linears": 0})]


def test_streamed_load_then_offload_equals_the_resident_model(tmp_path: Path) -> None:
    reference = toy_dit(seed=1)
    folder = _save_folder(reference, tmp_path / "transformer")
    with LoadPolicy(stream_blocks=True).active():
        model = ToyDiT.from_pretrained(folder, dtype=None, device="cpu")
    loaded = {n: t.data_ptr() for n, t in model.state_dict().items()}
    pipe = ComposedPipeline([], {"transformer": model, "device": "cpu"})
    LayerOffloadTransform().apply(pipe, PipelineConfig(offload="layer"))
    stored = {
        t.data_ptr() for g in pipe.components["offload"]["layers"]["transformer"].groups for t in g.stored
    }
    assert {loaded[n] for n in _block_names(model)} <= stored  # kept where they were read, not copied again
    with torch.no_grad():
        before = ToyDiT.from_pretrained(
            folder, dtype=None, device="cpu"
        )  # the former path: load, then offload
        LayerOffloadTransform().apply(
            ComposedPipeline([], {"transformer": before, "device": "cpu"}), PipelineConfig(offload="layer")
        )
        assert torch.equal(model(*_inputs()), before(*_inputs()))
        assert (model(*_inputs()) - reference(*_inputs())).abs().max() < 1e-6


def _fp8_file(model: nn.Module, path: Path, *, everything: bool) -> nn.Module:
    """An FP8 file of ``model`` (LightX2V style: per-row ``weight_scale``): its block linears' weights and
    scales (``everything``: every other tensor too); returns the model it stands for (dequantized)."""
    import copy

    from safetensors.torch import save_file

    reference = copy.deepcopy(model)
    names = {id(m): n for n, m in reference.named_modules()}
    state = {k: v.clone() for k, v in model.state_dict().items()} if everything else {}
    for _, _, linear in block_linears(reference):
        key = f"{names[id(linear)]}.weight"
        q, scale = quantize_rows(linear.weight.detach())
        state[key], state[key + "_scale"] = q, scale
        linear.weight.data = (q.float() * scale).to(linear.weight.dtype)
    save_file(state, str(path))
    return reference


def _spy_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    read: list[str] = []
    plain = DiffusersCheckpoint.tensors

    def spy(self, device="cpu", names=None):  # type: ignore[no-untyped-def]
        for name, tensor in plain(self, device, names):
            read.append(name)
            yield name, tensor

    monkeypatch.setattr(DiffusersCheckpoint, "tensors", spy)
    return read


def test_fp8_checkpoint_fills_the_fp8_linears_without_a_high_precision_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_model_wide_moves: None
) -> None:
    folder_model = toy_dit(seed=2)
    folder = _save_folder(folder_model, tmp_path / "transformer")
    reference = _fp8_file(folder_model, tmp_path / "dit_fp8.safetensors", everything=False)
    read = _spy_reads(monkeypatch)
    monkeypatch.setattr(FP8Linear, "from_linear", None)  # nothing is quantized from a loaded linear
    policy = LoadPolicy(fp8_checkpoint=str(tmp_path / "dit_fp8.safetensors"), fp8_mode="fp8")
    with policy.active():
        model = ToyDiT.from_pretrained(folder, dtype=None, device="cpu")
    replaced = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, FP8Linear)}
    assert len(replaced) == 21 and not replaced & set(read)  # the folder's weights of those: never read
    assert (
        set(read) == set(folder_model.state_dict()) - replaced
    )  # the rest (biases included) from the folder
    assert all(model.get_parameter(n).dtype == FP8 for n in replaced)
    assert policy.loaded[0][1]["fp8_linears"] == 21 and model.fp8_checkpoint_loaded == policy.fp8_checkpoint
    monkeypatch.undo()
    before = ToyDiT.from_pretrained(folder, dtype=None, device="cpu")  # the former path: load, then the file
    load_prequantized(before, tmp_path / "dit_fp8.safetensors")
    with torch.no_grad():
        assert torch.equal(model(*_inputs()), before(*_inputs()))
        assert (model(*_inputs()) - reference(*_inputs())).abs().max() < 1e-5


def test_fp8_checkpoint_and_streaming_together_cast_only_what_stays_high_precision(tmp_path: Path) -> None:
    folder_model = toy_dit(seed=2)
    folder = _save_folder(folder_model, tmp_path / "transformer")
    _fp8_file(toy_dit(seed=3), tmp_path / "f.safetensors", everything=True)
    policy = LoadPolicy(stream_blocks=True, fp8_checkpoint=str(tmp_path / "f.safetensors"))
    with policy.active():
        model = ToyDiT.from_pretrained(folder, dtype=torch.bfloat16, device=META)
    blocks = _block_names(model)
    for name, tensor in model.state_dict().items():
        assert tensor.device.type == ("cpu" if name in blocks else "meta"), name
        fp8 = name.endswith(".weight") and isinstance(model.get_submodule(name[: -len(".weight")]), FP8Linear)
        want = FP8 if fp8 else torch.float32 if name.endswith("weight_scale") else torch.bfloat16
        assert tensor.dtype == want, name
    assert policy.loaded[0][1] == {
        "streamed_tensors": len(blocks),
        "fp8_linears": 21,
        "fp8_checkpoint": policy.fp8_checkpoint,
    }
    with pytest.raises(ValueError, match="holds one DiT"), policy.active():  # a second DiT (an MoE)
        ToyDiT.from_pretrained(folder, dtype=None, device="cpu")


def test_the_transforms_set_the_policy_and_the_fp8_transform_does_not_load_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastvideo.transforms import load_policy

    default = load_policy(PipelineConfig())
    assert default.is_default()
    with default.active():
        assert current_policy() is None
    path = str(tmp_path / "f.safetensors")
    policy = load_policy(PipelineConfig(offload="layer", fp8_checkpoint=path, quantize="fp8-storage"))
    assert (policy.stream_blocks, policy.fp8_checkpoint, policy.fp8_mode) == (True, path, "fp8-storage")
    model = toy_dit()
    model.fp8_checkpoint_loaded = path
    monkeypatch.setattr("fastvideo.optimize.fp8.load_prequantized", None)  # calling it would fail
    FP8Transform().apply(ComposedPipeline([], {"transformer": model}), PipelineConfig(fp8_checkpoint=path))
    assert isinstance(model.blocks[0].qkv, nn.Linear)  # nothing left to do without --quantize


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_the_gpu_the_load_peak_is_the_resident_parts_and_outputs_match(tmp_path: Path) -> None:
    """A 12-block DiT loaded for offload (with --quantize fp8, quantized block by block) never holds its
    blocks on the GPU while loading; outputs match the resident FP8 model's."""
    from fastvideo.optimize.fp8 import quantize_fp8

    source = toy_dit(seed=1, num_layers=12, dim=1024)
    folder = _save_folder(source, tmp_path / "transformer")
    blocks = sum(p.numel() * p.element_size() for b in source.blocks for p in b.parameters())
    rest = sum(p.numel() * p.element_size() for p in source.parameters()) - blocks
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    with LoadPolicy(stream_blocks=True).active():
        model = ToyDiT.from_pretrained(folder, dtype=None, device="cuda")
    pipe = ComposedPipeline([], {"transformer": model, "device": "cuda"})
    FP8Transform().apply(pipe, PipelineConfig(quantize="fp8", offload="layer"))
    LayerOffloadTransform().apply(pipe, PipelineConfig(offload="layer"))
    load_peak = torch.cuda.max_memory_allocated() - base
    # the resident parts plus the temporaries of quantizing one linear on the GPU, never the 12 blocks
    assert load_peak < rest + 3 * blocks / 12 + 2**20, (load_peak, rest, blocks)
    assert all(p.device.type == "cpu" and p.is_pinned() for p in model.blocks[0].parameters())
    before = ToyDiT.from_pretrained(folder, dtype=None, device="cuda")  # resident, quantized on the GPU
    quantize_fp8(before, "fp8", use_torchao=False)
    x, t, text = (v.cuda() for v in _inputs())
    with torch.no_grad():
        a, b = model(x, t, text), before(x, t, text)
    assert (a - b).abs().max() <= 1e-3 * b.abs().max()  # the same FP8 weights and kernels


def test_a_streamed_dit_that_is_no_component_is_moved_whole(tmp_path: Path) -> None:
    folder = _save_folder(toy_dit(seed=1), tmp_path / "transformer")
    policy = LoadPolicy(stream_blocks=True)
    with policy.active():
        kept = ToyDiT.from_pretrained(folder, dtype=None, device=META)
        stray = ToyDiT.from_pretrained(folder, dtype=None, device=META)  # held by a stage, say
    assert policy.streamed == [kept, stray] and stray.blocks[0].qkv.weight.device.type == "cpu"
    pipe = ComposedPipeline([], {"transformer": kept, "device": META})
    pipe.load_policy = policy
    LayerOffloadTransform().apply(pipe, PipelineConfig(offload="layer"))
    assert all(p.device == META for p in stray.parameters())
    assert kept.blocks[0].qkv.weight.device.type == "cpu"  # streamed by the offload
