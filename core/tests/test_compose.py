"""Composing a pipeline apart from loading it (fastvideo.pipelines.compose)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from fastvideo.configs import PipelineConfig
from fastvideo.pipelines.compose import compile_if_asked, load_components, text_to_video
from fastvideo.pipelines.composed import PipelineStage
from fastvideo.pipelines.stages import DenoisingStage


class _Extra(PipelineStage):
    def __init__(self, name: str) -> None:
        self.name = name


def test_text_to_video_lays_out_the_standard_stages_with_the_familys_own() -> None:
    geometry = SimpleNamespace(shape=lambda p: (4, 1, 2, 2), denormalize=lambda x: x)
    denoising = DenoisingStage(torch.nn.Linear(1, 1), cfg=False)
    stages = text_to_video(
        SimpleNamespace(name="fam"),  # type: ignore[arg-type]
        SimpleNamespace(),  # type: ignore[arg-type]
        text_encoders=[],
        scheduler=object(),
        geometry=geometry,  # type: ignore[arg-type]
        denoising=denoising,
        vae=object(),
        cfg=False,
        default_negative_prompt="blurry",
        after_text=[_Extra("image_encoding")],
        after_latents=[_Extra("image_latents")],
    )
    names = [s.name for s in stages]
    assert names == [
        "input_validation",
        "text_encoding",
        "image_encoding",
        "timesteps",
        "latents",
        "image_latents",
        "denoising",
        "decoding",
    ]
    assert stages[6] is denoising and stages[1].cfg is False and stages[1].default_negative_prompt == "blurry"


def test_load_components_loads_each_in_its_dtype(tmp_path: Path) -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler
    from transformers import UMT5Config, UMT5EncoderModel

    from fastvideo.interfaces.model_family import ModelSource

    UMT5EncoderModel(UMT5Config(d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2)).save_pretrained(
        tmp_path / "text_encoder"
    )
    FlowMatchEulerDiscreteScheduler(shift=3.0).save_pretrained(tmp_path / "scheduler")
    index = {
        "text_encoder": ["transformers", "UMT5EncoderModel"],
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
    }
    source = ModelSource(family=object, path=tmp_path, model_index=index)  # type: ignore[arg-type]
    parts = load_components(source, torch.device("cpu"), text_encoder="bf16", scheduler=None)
    assert next(parts["text_encoder"].parameters()).dtype == torch.bfloat16
    assert parts["scheduler"].config.shift == 3.0


def test_compile_if_asked_follows_the_config() -> None:
    calls: list[Any] = []
    model = SimpleNamespace(compile_blocks=lambda: calls.append(1))
    compile_if_asked([model, None], PipelineConfig(compile=False), torch.device("cpu"))
    assert calls == []
    compile_if_asked([model, None], PipelineConfig(compile=True), torch.device("cpu"))
    assert calls == [1]
    compile_if_asked([model], PipelineConfig(), torch.device("cpu"))  # default: CUDA devices only
    assert calls == [1]
