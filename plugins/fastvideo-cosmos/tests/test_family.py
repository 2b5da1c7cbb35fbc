"""The Cosmos family as users meet it: registration, presets and detection, request checks, the two
samplers against diffusers' schedulers, and ``fv generate`` with and without ``--no-guardrail``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import fastvideo_cosmos.plugin
from fastvideo.interfaces.model_family import ModelSource
from fastvideo.registry import get_registry
from fastvideo.testing import fake_plugins, run_fv
from fastvideo_cosmos.family import CosmosFamily
from fastvideo_cosmos.samplers import PREDICT25_UNIPC, CosmosEDMSampler, CosmosUniPCSampler


def test_registers_the_family_and_its_samplers_without_torch() -> None:
    with fake_plugins(fastvideo_cosmos.plugin):
        reg = get_registry()
        assert reg.names("model_family") == ["cosmos"]
        assert {"cosmos-edm", "cosmos-unipc"} <= set(reg.names("sampler"))
    code = (
        "import sys, fastvideo_cosmos.plugin as p; p.fv_register_model_families(); p.fv_register_samplers(); "
        "print('torch' in sys.modules)"
    )
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_presets_and_detection() -> None:
    from fastvideo.resolve import detect_family, find_preset

    with fake_plugins(fastvideo_cosmos.plugin):
        for cls in (
            "Cosmos2TextToImagePipeline",
            "Cosmos2VideoToWorldPipeline",
            "Cosmos2_5_PredictBasePipeline",
        ):
            assert detect_family({"_class_name": cls}) is CosmosFamily
        match = find_preset("nvidia/Cosmos-Predict2-2B-Video2World")
        assert match is not None and match.preset.name == "cosmos-predict2-2b-video2world"
        v2w = match.preset.sampling
        assert (v2w["num_frames"], v2w["height"], v2w["width"], v2w["fps"]) == (93, 704, 1280, 16)
        assert (v2w["num_inference_steps"], v2w["guidance_scale"]) == (35, 7.0)
        assert find_preset("cosmos-t2i").preset.sampling["num_frames"] == 1  # type: ignore[union-attr]


def test_text2image_folder_defaults_to_one_frame(tmp_path: Path) -> None:
    source = ModelSource(
        family=CosmosFamily, path=tmp_path, model_index={"_class_name": "Cosmos2TextToImagePipeline"}
    )
    params = CosmosFamily.sampling_defaults(source)
    assert (params.num_frames, params.height, params.width) == (1, 768, 1360)
    with pytest.raises(
        ValueError, match=r"height=700 is not divisible by 16, which cosmos requires; use 688 or 704"
    ):
        CosmosFamily.validate(params.with_overrides({"height": 700}), source)


def test_edm_sampler_matches_diffusers_karras_euler() -> None:
    """The schedule and one step equal diffusers' FlowMatchEulerDiscreteScheduler(use_karras_sigmas=True)
    with the EDM values the Predict2 pipelines register (sigma_min as the final sigma)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    ref = FlowMatchEulerDiscreteScheduler(use_karras_sigmas=True)
    ref.register_to_config(sigma_max=80.0, sigma_min=0.002, sigma_data=1.0, final_sigmas_type="sigma_min")
    ref.set_timesteps(sigmas=torch.linspace(0, 1, 6, dtype=torch.float64))
    ref.sigmas[-1] = ref.sigmas[-2]
    ours = CosmosEDMSampler(None)
    timesteps = ours.set_timesteps(6)
    torch.testing.assert_close(timesteps, ref.timesteps, rtol=1e-6, atol=0)
    torch.testing.assert_close(ours.sigmas, ref.sigmas, rtol=1e-6, atol=0)
    assert ours.init_noise_sigma == 80.0
    x, x0 = torch.randn(1, 4, 2, 3, 3) * 30, torch.randn(1, 4, 2, 3, 3)
    for i in (0, 4, 5):
        ref._step_index = i
        expected = ref.step((x - x0) / ref.sigmas[i], ref.timesteps[i], x, return_dict=False)[0]
        torch.testing.assert_close(
            ours.step(x0, timesteps[i], x, step_index=i), expected, rtol=1e-5, atol=1e-5
        )


def test_unipc_sampler_runs_predict25_schedule() -> None:
    from diffusers import UniPCMultistepScheduler

    ref = UniPCMultistepScheduler(**PREDICT25_UNIPC)
    ref.set_timesteps(8)
    for scheduler in (
        None,
        UniPCMultistepScheduler(**PREDICT25_UNIPC),
    ):  # none shipped: the published settings
        ours = CosmosUniPCSampler(scheduler)
        torch.testing.assert_close(ours.set_timesteps(8), ref.timesteps)
        assert ours.sigma(0) == ref.sigmas[0] and float(ours.sigma(7)) == pytest.approx(float(ref.sigmas[7]))


@pytest.mark.slow  # two `fv` processes (~25 s on a loaded 2-core machine)
def test_fv_generate_text2image_needs_no_guardrail_flag(tmp_path: Path) -> None:
    """Through the installed entry point: without cosmos_guardrail, ``fv generate`` is a one-line error
    naming --no-guardrail (exit 2); with the flag it writes the image as a one-frame mp4."""
    from fastvideo.video import read_mp4
    from fastvideo_cosmos.tiny import tiny_predict2

    folder = tmp_path / "t2i"
    tiny_predict2("text2image", seed=4).save_pretrained(folder)
    base = ["generate", "--model", str(folder), "--prompt", "a red ball", "--device", "cpu", "--lossless"]
    base += ["--height", "32", "--width", "48", "--steps", "2", "--json"]
    refused = run_fv([*base, "--output", str(tmp_path / "no.mp4")], timeout=300)
    assert refused.returncode == 2 and not (tmp_path / "no.mp4").exists()
    assert (
        refused.stderr.strip().splitlines()[-1].startswith("error: Cosmos checkpoints run NVIDIA's guardrail")
    )
    done = run_fv([*base, "--no-guardrail", "--output", str(tmp_path / "a.mp4")], timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["path"] == str(tmp_path / "a.mp4")
    frames = read_mp4(tmp_path / "a.mp4")
    assert np.asarray(frames).shape == (1, 32, 48, 3)
