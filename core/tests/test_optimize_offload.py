"""Layerwise offload (fastvideo.optimize.offload): outputs bit for bit those of the resident model, block
weights on the device only while (and just before) their block runs, encoders/VAE only during their stage."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fastvideo.configs import ParallelConfig, PipelineConfig
from fastvideo.optimize.offload import LayerOffload
from fastvideo.optimize.transforms import LayerOffloadTransform
from fastvideo.pipelines.batch import ForwardBatch
from fastvideo.pipelines.composed import ComposedPipeline, PipelineStage
from fastvideo.pipelines.stages import DenoisingStage
from fastvideo.testing.speed import toy_dit


def _inputs(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(1, 4, 2, 3, 3, generator=g),
        torch.tensor([700.0 - seed]),
        torch.randn(1, 6, 16, generator=g),
    )


def _ptrs(block: nn.Module) -> list[int]:
    return [p.data_ptr() for p in block.parameters()]


def test_offloaded_outputs_equal_resident_and_weights_move_only_around_their_block() -> None:
    resident = toy_dit()
    model = toy_dit()
    expected = [resident(*_inputs(s)) for s in range(3)]
    offload = LayerOffload(model, "cpu")  # the mechanics on CPU: "device" copies are fresh tensors
    stored = [[t.data_ptr() for t in g.stored] for g in offload.groups]
    seen = []

    def probe(i: int):  # type: ignore[no-untyped-def]
        def hook(module, args):  # type: ignore[no-untyped-def]
            n = len(offload.groups)
            seen.append(
                (
                    i,
                    _ptrs(module) != stored[i] and offload.groups[i].resident,  # a copy, on the device
                    all(not offload.groups[j].resident for j in range(n) if j != i),  # the others are not
                    (i + 1) % n in offload.pending,  # the next group is on its way
                )
            )

        return hook

    for i, block in enumerate(model.blocks):
        block.register_forward_pre_hook(probe(i))
    for s in range(3):
        out = model(*_inputs(s))
        assert torch.equal(out, expected[s])  # bit for bit
        for i, block in enumerate(model.blocks):  # between calls: only the stored CPU copies
            assert _ptrs(block) == stored[i] and not offload.groups[i].resident
    assert seen == [(i, True, True, True) for _ in range(3) for i in range(3)]
    # 3 calls x 3 groups, plus the first group prefetched for a next call during the last block
    assert (
        offload.stats["max_resident"] == 2
        and offload.stats["copies"] == 3 * 3 + 1
        and list(offload.pending) == [0]
    )
    assert (
        model.patch_embed.weight.data_ptr() == model.patch_embed.weight.data_ptr()
    )  # outside blocks: untouched
    offload.remove()
    assert torch.equal(model(*_inputs(0)), expected[0])


def test_group_size_bounds_what_is_resident() -> None:
    model = toy_dit(num_layers=4)
    expected = toy_dit(num_layers=4)(*_inputs(1))
    offload = LayerOffload(model, "cpu", group_size=2)
    assert len(offload.groups) == 2
    assert torch.equal(model(*_inputs(1)), expected)
    with pytest.raises(ValueError, match="group_size must be >= 1"):
        LayerOffload(toy_dit(), "cpu", group_size=0)


class _EncodeStage(PipelineStage):
    name = "encode"

    def __init__(self, encoder: nn.Module, stored: list[int]) -> None:
        self.encoder = encoder
        self.stored = stored
        self.during: list[bool] = []

    def forward(self, batch: ForwardBatch) -> ForwardBatch:
        self.during.append([p.data_ptr() for p in self.encoder.parameters()] != self.stored)
        batch.extra["out"] = self.encoder(torch.ones(1, 4))
        return batch


def test_transform_keeps_encoders_off_the_device_between_their_stages() -> None:
    model, encoder = toy_dit(), nn.Linear(4, 4)
    expected = encoder(torch.ones(1, 4))
    stage = _EncodeStage(encoder, [])
    pipe = ComposedPipeline(
        [stage, DenoisingStage(model)],
        {"transformer": model, "text_encoder": encoder, "device": torch.device("cpu")},
    )
    LayerOffloadTransform().apply(pipe, PipelineConfig(offload="layer"))
    idle = pipe.components["offload"]["idle"]
    assert len(idle) == 1
    stage.stored = [t.data_ptr() for t in idle[0].group.stored]
    assert [p.data_ptr() for p in encoder.parameters()] == stage.stored
    batch = stage(ForwardBatch(params=None))  # type: ignore[arg-type]
    assert stage.during == [True] and torch.equal(batch.extra["out"], expected)
    assert [p.data_ptr() for p in encoder.parameters()] == stage.stored
    with pytest.raises(ValueError, match="cannot run with --fsdp"):
        LayerOffloadTransform().apply(
            pipe, PipelineConfig(offload="layer", parallel=ParallelConfig(fsdp=True))
        )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_offload_on_gpu_is_exact_and_holds_few_blocks() -> None:
    resident = toy_dit(num_layers=6, dim=1024).cuda()
    model = toy_dit(num_layers=6, dim=1024)
    inputs = [t.cuda() for t in _inputs(0)]
    expected = resident(*inputs)
    del resident
    offload = LayerOffload(model, "cuda")
    block_bytes = sum(p.numel() * p.element_size() for p in model.blocks[0].parameters())
    assert all(p.device.type == "cpu" and p.is_pinned() for p in model.blocks[0].parameters())
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    for _ in range(3):
        out = model(*inputs)
    torch.cuda.synchronize()
    assert torch.equal(out, expected)
    # the group running, the next one arriving, the previous one until the GPU is done with it
    assert torch.cuda.max_memory_allocated() - base < 3.5 * block_bytes
    assert offload.stats["max_resident"] <= 2


@pytest.mark.slow  # dynamo tracing the toy's blocks: ~6-9 s on 2 cores
def test_offload_works_with_regionally_compiled_blocks() -> None:
    expected = toy_dit()(*_inputs(2))
    model = toy_dit()
    offload = LayerOffload(model, "cpu")
    model.compile_blocks(backend="eager")  # dynamo traces the blocks; the offload hooks run eagerly
    for _ in range(2):
        assert torch.equal(model(*_inputs(2)), expected)
    assert offload.stats["copies"] == 2 * 3 + 1
