"""The few-step presets: the public FastWan checkpoints (DMD2 students) on tiny stand-ins laid out in
an offline Hugging Face cache under their repo ids, and the shipped ``wan-toy-fast``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fastvideo.testing import plugin_env, run_python
from fastvideo.testing.hub import write_hf_cache
from fastvideo_wan.tiny import make_tiny_wan

STANDINS = {
    # preset: (repo id, tiny variant, published defaults: frames, height, width, fps, flow shift)
    "fastwan2.1-t2v-1.3b": ("FastVideo/FastWan2.1-T2V-1.3B-Diffusers", "t2v", (61, 448, 832, 16, 8.0)),
    "fastwan2.2-ti2v-5b": (
        "FastVideo/FastWan2.2-TI2V-5B-FullAttn-Diffusers",
        "ti2v",
        (121, 704, 1280, 24, 5.0),
    ),
}


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fastwan")
    home = root / "hf"
    for repo_id, variant, _ in STANDINS.values():
        tiny = make_tiny_wan(root / variant, variant=variant, seed=1)
        files = {str(p.relative_to(tiny)): p.read_bytes() for p in tiny.rglob("*") if p.is_file()}
        write_hf_cache(home, repo_id, files)
    return home


@pytest.mark.slow
def test_fastwan_presets_resolve_offline_with_their_published_defaults(hf_home: Path) -> None:
    """Each preset resolves to its stand-in, validates at its published resolution (the family's
    factors read from the stand-in's VAE and DiT configs), picks the few-step sampler with DMD2's
    timesteps and no CFG, and generates (at a tiny size) with exactly 3 DiT forwards."""
    code = f"""
        import json
        from fastvideo import VideoGenerator
        from fastvideo.configs import PipelineConfig
        from fastvideo.resolve import resolve
        from fastvideo.samplers import sampler_class, sampler_name

        out = {{}}
        for name in {list(STANDINS)!r}:
            source = resolve(name)
            params = source.family.sampling_defaults(source)
            source.family.validate(params, source)
            sampler = sampler_name(PipelineConfig(), source)
            gen = VideoGenerator.from_pretrained(name, device="cpu")
            calls = []
            dit = gen.pipeline.components["transformer"]
            dit.register_forward_pre_hook(lambda m, a: calls.append(1))
            kwargs = dict(num_frames=5, height=64 if "2.2" in name else 32, width=64 if "2.2" in name else 32, seed=0)
            gen.generate_video("a cat", **kwargs)
            out[name] = dict(
                path=str(source.path), workload=source.preset.workload, sampler=sampler,
                timesteps=sampler_class(sampler)(None).set_timesteps(params.num_inference_steps).tolist(),
                frames=params.num_frames, height=params.height, width=params.width, fps=params.fps,
                shift=params.flow_shift, steps=params.num_inference_steps, guidance=params.guidance_scale,
                forwards=len(calls),
            )
        print(json.dumps(out))
    """
    env = plugin_env(HF_HOME=str(hf_home), HF_HUB_OFFLINE="1", FASTVIDEO_PROGRESS="0")
    proc = run_python(code, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, (repo_id, _, (frames, height, width, fps, shift)) in STANDINS.items():
        r = got[name]
        assert repo_id.replace("/", "--") in r["path"]
        assert (r["frames"], r["height"], r["width"], r["fps"], r["shift"]) == (
            frames,
            height,
            width,
            fps,
            shift,
        )
        assert (r["steps"], r["guidance"], r["sampler"]) == (3, 1.0, "few-step")
        assert r["timesteps"] == [1000.0, 757.0, 522.0]
        assert r["forwards"] == 3  # 3 steps, no negative branch
    assert got["fastwan2.2-ti2v-5b"]["workload"] == "ti2v"


def test_wan_toy_fast_shares_wan_toy_components() -> None:
    from fastvideo.resolve import resolve

    fast, toy = resolve("wan-toy-fast").path, resolve("wan-toy").path
    for component in ("vae", "text_encoder", "tokenizer"):
        assert (fast / component).resolve() == (toy / component).resolve()
    scheduler = json.loads((fast / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["_fastvideo_sampling"] == {"sampler": "few-step", "timesteps": [1000, 757, 522]}
    assert (fast / "transformer" / "diffusion_pytorch_model.safetensors").is_file()


def test_wan_toy_fast_generates_in_three_dit_forwards() -> None:
    from fastvideo import VideoGenerator
    from fastvideo_wan import toy

    gen = VideoGenerator.from_pretrained("wan-toy-fast", device="cpu", progress=False)
    calls: list[int] = []
    gen.pipeline.components["transformer"].register_forward_pre_hook(lambda m, a: calls.append(1))
    frames = gen.generate_video("a blue square moving up on a black background", seed=0).frames
    assert len(calls) == 3  # 3 steps, no CFG branch
    assert toy.detect(frames) == {
        "colour": "blue",
        "shape": "square",
        "direction": "up",
        "background": "black",
    }


def test_toy_evaluation_samples_a_student_as_it_ships(monkeypatch: pytest.MonkeyPatch) -> None:
    """``fv wan toy-eval`` scores the model with its own steps and guidance: a 3-step student
    without CFG runs 3 DiT forwards, not wan-toy's CFG 2 on top of them (6)."""
    import fastvideo
    from fastvideo_wan.toy import held_out_prompts
    from fastvideo_wan.toy_model import evaluate_model

    calls: list[int] = []
    original = fastvideo.VideoGenerator.from_pretrained

    def counting(*args: object, **kwargs: object) -> object:
        gen = original(*args, **kwargs)
        gen.pipeline.components["transformer"].register_forward_pre_hook(lambda m, a: calls.append(1))
        return gen

    monkeypatch.setattr(fastvideo.VideoGenerator, "from_pretrained", counting)
    prompt = held_out_prompts()[:1]
    evaluate_model("wan-toy-fast", prompt, device="cpu")
    assert len(calls) == 3


#: The acceptance bar of issue 18: within 3 points of the teacher (100%, 98.2%, 100% on colour, shape,
#: direction) on the 56 held-out prompts, sampled as shipped (3 steps, no CFG). The shipped student
#: measured 98.2%, 100%, 100%, 100% (docs/dmd2.md).
FAST_FLOORS = {"colour": 0.97, "shape": 0.952, "direction": 0.97, "background": 0.98}


@pytest.mark.slow
def test_wan_toy_fast_follows_held_out_prompts() -> None:
    from fastvideo_wan.toy_model import evaluate_model

    result = evaluate_model("wan-toy-fast", device="cpu")
    assert result["count"] == 56
    for attribute, floor in FAST_FLOORS.items():
        assert result["accuracy"][attribute] >= floor, (attribute, result["accuracy"])


def test_a_copy_of_wan_toy_fast_samples_like_the_preset(tmp_path: Path) -> None:
    """Its ``fastvideo.json`` is what an export of the preset writes, and a copied folder (links followed)
    gets the preset's defaults and the few-step sampler from its own files."""
    import shutil

    from fastvideo.configs import PipelineConfig
    from fastvideo.resolve import folder_settings, resolve
    from fastvideo.samplers import sampler_name

    preset = resolve("wan-toy-fast")
    assert json.loads((preset.path / "fastvideo.json").read_text()) == folder_settings(preset)
    copy = tmp_path / "my-student"
    shutil.copytree(preset.path, copy)
    source = resolve(str(copy))
    assert source.family.sampling_defaults(source) == preset.family.sampling_defaults(preset)
    assert sampler_name(PipelineConfig(), source) == "few-step"
