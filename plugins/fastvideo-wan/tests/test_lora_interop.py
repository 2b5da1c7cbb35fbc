"""LoRA files of Wan models: interop with diffusers' Wan LoRA loading (the generic LoRA layers and
files are tested in core's test_training_lora.py, on the example plugin).

The reference is diffusers' own ``WanPipeline`` with ``load_lora_weights`` (peft underneath), on a
tiny checkpoint written by diffusers, with the same initial latents: our pipeline with the same LoRA
file must give frames within 1/255 mean absolute difference, for a LoRA we saved, one diffusers/peft
saved, and one in the official Wan repository's naming (``diffusion_model.*``, ``lora_down``/``up``,
``alpha``, ``diff_b``). Each case also checks that the LoRA changes the video, so the comparison
could fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fastvideo.testing.loras import (
    TOL,
    assert_lora_changes_video,
    check_foreign_lora_is_refused,
    check_lora_round_trip,
    check_scaled_loras,
    frame_error,
    random_lora,
)
from fastvideo.training import lora as L

PROMPT = "a red circle moving left on a black background"
FRAMES, SIZE, STEPS = 9, 64, 3
KW = dict(num_frames=FRAMES, height=SIZE, width=SIZE, num_inference_steps=STEPS, guidance_scale=3.0)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fastvideo_wan.tiny import make_tiny_wan

    return make_tiny_wan(tmp_path_factory.mktemp("wan") / "t2v", seed=3)


def _latents() -> torch.Tensor:
    return torch.randn(1, 16, 3, 8, 8, generator=torch.Generator().manual_seed(11))


def _family():
    from fastvideo_wan.family import WanFamily

    return WanFamily


def _diffusers_frames(
    ckpt: Path, loras: list[tuple[Path, float]], *, attention_scale: float | None = None
) -> np.ndarray:
    from diffusers import WanPipeline

    pipe = WanPipeline.from_pretrained(str(ckpt))
    pipe.set_progress_bar_config(disable=True)
    names = []
    for i, (path, _) in enumerate(loras):
        pipe.load_lora_weights(str(path), adapter_name=f"a{i}")
        names.append(f"a{i}")
    if names:
        pipe.set_adapters(names, adapter_weights=[w for _, w in loras])
    kwargs = {"attention_kwargs": {"scale": attention_scale}} if attention_scale is not None else {}
    out = pipe(prompt=PROMPT, latents=_latents(), output_type="np", **KW, **kwargs)
    return np.asarray(out.frames[0]) * 255


def _ours(ckpt: Path):
    from fastvideo import VideoGenerator

    return VideoGenerator.from_pretrained(str(ckpt), device="cpu", progress=False)


def _frames(gen) -> np.ndarray:
    return gen.generate_video(PROMPT, latents=_latents(), **KW).frames.astype(np.float64)


def _our_lora(
    ckpt: Path, path: Path, *, rank: int, alpha: float, seed: int, targets: tuple[str, ...] = ()
) -> Path:
    """:func:`random_lora` on Wan's DiT (adapters of std 0.2); ``targets`` default to the family's."""
    targets = targets or _family().lora_target_modules
    return random_lora(_family(), ckpt, path, rank=rank, alpha=alpha, seed=seed, targets=targets, std=0.2)


@pytest.fixture(scope="module")
def base_frames(ckpt: Path) -> np.ndarray:
    return _diffusers_frames(ckpt, [])


# ---------------------------------------------------------------- interop with diffusers


def test_our_lora_loads_in_diffusers_and_matches(ckpt: Path, base_frames: np.ndarray, tmp_path: Path) -> None:
    path = _our_lora(ckpt, tmp_path / "ours", rank=4, alpha=8.0, seed=1)
    tensors, meta = L.read_lora_file(path.parent)
    assert all(
        k.startswith("transformer.blocks.") and k.endswith((".lora_A.weight", ".lora_B.weight"))
        for k in tensors
    )
    assert "transformer.blocks.0.attn1.to_q.lora_A.weight" in tensors and "transformer.r" in meta
    ref = _diffusers_frames(ckpt, [(path, 1.0)])
    check_lora_round_trip(_ours(ckpt), path, frames=_frames, ref=ref, base=base_frames)


def test_several_loras_with_scales_match_diffusers_set_adapters(ckpt: Path, tmp_path: Path) -> None:
    one = _our_lora(ckpt, tmp_path / "one", rank=4, alpha=4.0, seed=2, targets=("blocks.*.self_attn.*",))
    two = _our_lora(ckpt, tmp_path / "two", rank=2, alpha=4.0, seed=3, targets=("blocks.*.ffn.*",))
    ref = _diffusers_frames(ckpt, [(one, 0.7), (two, -0.5)])
    check_scaled_loras(_ours(ckpt), one, two, scales=(0.7, -0.5), frames=_frames, ref=ref)


def test_lora_saved_by_diffusers_and_peft_loads_in_ours(
    ckpt: Path, base_frames: np.ndarray, tmp_path: Path
) -> None:
    from diffusers import WanPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe = WanPipeline.from_pretrained(str(ckpt))
    pipe.set_progress_bar_config(disable=True)
    config = LoraConfig(
        r=4,
        lora_alpha=12,
        init_lora_weights=False,
        target_modules=["to_q", "to_k", "to_v", "to_out.0", "net.0.proj", "net.2", "proj_out"],
    )
    torch.manual_seed(5)
    pipe.transformer.add_adapter(config)
    WanPipeline.save_lora_weights(
        str(tmp_path),
        transformer_lora_layers=get_peft_model_state_dict(pipe.transformer),
        transformer_lora_adapter_metadata=pipe.transformer.peft_config["default"].to_dict(),
    )
    ref = np.asarray(pipe(prompt=PROMPT, latents=_latents(), output_type="np", **KW).frames[0]) * 255
    assert_lora_changes_video(ref, base_frames)
    gen = _ours(ckpt)
    gen.load_lora(tmp_path)  # alpha/r = 3 comes from the file's peft metadata
    assert frame_error(_frames(gen), ref) <= TOL


def test_lora_in_the_official_wan_naming_matches_diffusers(
    ckpt: Path, base_frames: np.ndarray, tmp_path: Path
) -> None:
    from safetensors.torch import save_file

    gen_ = torch.Generator().manual_seed(9)
    tensors = {}
    dim, ffn, rank = 32, 64, 4
    shapes = {
        "self_attn.q": (dim, dim),
        "self_attn.o": (dim, dim),
        "cross_attn.k": (dim, dim),
        "ffn.0": (ffn, dim),
        "ffn.2": (dim, ffn),
    }
    for i in range(2):
        for module, (out_f, in_f) in shapes.items():
            key = f"diffusion_model.blocks.{i}.{module}"
            tensors[f"{key}.lora_down.weight"] = torch.randn(rank, in_f, generator=gen_) * 0.3
            tensors[f"{key}.lora_up.weight"] = torch.randn(out_f, rank, generator=gen_) * 0.3
            tensors[f"{key}.alpha"] = torch.tensor(2.0)
            tensors[f"{key}.diff_b"] = torch.randn(out_f, generator=gen_) * 0.1
    path = tmp_path / "wan_lora.safetensors"
    save_file(tensors, str(path))
    ref = _diffusers_frames(ckpt, [(path, 1.0)])
    assert_lora_changes_video(ref, base_frames)
    gen = _ours(ckpt)
    gen.load_lora(path)
    assert frame_error(_frames(gen), ref) <= TOL


def test_bad_lora_files_give_one_line_errors(ckpt: Path, tmp_path: Path) -> None:
    check_foreign_lora_is_refused(_ours(ckpt), tmp_path, "wan")


def test_fv_generate_lora_flag_matches_diffusers(ckpt: Path, tmp_path: Path) -> None:
    """``fv generate --lora PATH:scale`` (merged) against diffusers with the same LoRA at that scale."""
    from fastvideo.video import read_mp4

    path = _our_lora(ckpt, tmp_path / "cli", rank=4, alpha=4.0, seed=7)
    latents = torch.randn(1, 16, 3, 8, 8, generator=torch.Generator().manual_seed(42))  # what --seed 42 draws
    from diffusers import WanPipeline

    pipe = WanPipeline.from_pretrained(str(ckpt))
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(path))
    ref = (
        pipe(prompt=PROMPT, latents=latents, output_type="np", attention_kwargs={"scale": 0.6}, **KW).frames[
            0
        ]
        * 255
    )
    out = tmp_path / "out.mp4"
    fv = Path(sys.executable).with_name("fv")
    cmd = [
        str(fv),
        "generate",
        "--model",
        str(ckpt),
        "--prompt",
        PROMPT,
        "--num-frames",
        str(FRAMES),
        "--height",
        str(SIZE),
        "--width",
        str(SIZE),
        "--steps",
        str(STEPS),
        "--guidance-scale",
        "3.0",
        "--seed",
        "42",
        "--device",
        "cpu",
        "--lossless",
        "--output",
        str(out),
        "--json",
        "--lora",
        f"{path.parent}:0.6",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["frames"] == FRAMES
    assert frame_error(read_mp4(out).astype(np.float64), ref) <= TOL
    bad = subprocess.run([*cmd[:-1], "nope.safetensors", "--overwrite"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0
    assert "--lora 'nope.safetensors'" in bad.stderr
