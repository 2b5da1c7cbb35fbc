"""The whole Step-Video pipeline on tiny checkpoints (fastvideo_stepvideo.tiny) in both layouts: the
official one and FastVideo's diffusers-style mirror. The numerics of each part are checked against
the official code elsewhere (test_model, test_vae, test_stepllm, test_sampling)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fastvideo.configs import SamplingParams
from fastvideo.errors import CheckpointError
from fastvideo.pipelines.batch import ForwardBatch
from fastvideo_stepvideo.pipeline import NEG_MAGIC, POS_MAGIC, TI2V_NEG_MAGIC, TI2V_POS_MAGIC, component_paths
from fastvideo_stepvideo.tiny import make_tiny_stepvideo

KW = dict(num_frames=17, height=32, width=32, num_inference_steps=2, seed=3)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("stepvideo")
    return {layout: make_tiny_stepvideo(root / layout, layout=layout) for layout in ("official", "diffusers")}


@pytest.fixture(scope="module")
def generators(folders: dict[str, Path]) -> dict:
    from fastvideo import VideoGenerator

    return {
        k: VideoGenerator.from_pretrained(str(v), device="cpu", progress=False) for k, v in folders.items()
    }


def test_both_layouts_generate_the_same_video(generators: dict) -> None:
    frames = {
        k: np.asarray(g.generate_video("a cat walks on the moon", **KW).frames) for k, g in generators.items()
    }
    assert frames["official"].shape == (17, 32, 32, 3) and frames["official"].dtype == np.uint8
    assert np.array_equal(frames["official"], frames["diffusers"])
    again = np.asarray(generators["official"].generate_video("a cat walks on the moon", **KW).frames)
    assert np.array_equal(again, frames["official"])
    other = np.asarray(generators["official"].generate_video("a red ball bounces", **KW).frames)
    assert not np.array_equal(other, frames["official"])


def test_text_stage_uses_the_magic_prompts(generators: dict) -> None:
    gen = generators["official"]
    stage = gen.pipeline.stages[gen.pipeline.index("text_encoding")]
    batch = ForwardBatch(
        params=SamplingParams(prompt="a cat", guidance_scale=9.0), device=torch.device("cpu")
    )
    batch = stage(batch)
    llm_tok = stage.encoders[0].tokenizer
    assert int(batch.prompt_masks[0].sum()) == len(llm_tok.sp.encode_as_ids("a cat" + POS_MAGIC)[:318]) + 2
    assert int(batch.negative_prompt_masks[0].sum()) == len(llm_tok.sp.encode_as_ids(NEG_MAGIC)[:318]) + 2
    assert batch.prompt_embeds[0].shape == (1, 320, 32)  # Step-LLM, 320 tokens
    assert batch.prompt_embeds[1].shape == (1, 77, 16)  # CLIP last hidden state, every position attended
    assert int(batch.prompt_masks[1].sum()) == 77


def test_requests_are_checked_before_loading(folders: dict[str, Path]) -> None:
    from fastvideo.resolve import resolve
    from fastvideo_stepvideo.family import StepVideoFamily

    source = resolve(str(folders["official"]))
    with pytest.raises(ValueError, match="multiple of 17"):
        StepVideoFamily.validate(SamplingParams(prompt="x", num_frames=33, height=32, width=32), source)
    with pytest.raises(ValueError, match="not divisible by 16"):
        StepVideoFamily.validate(SamplingParams(prompt="x", num_frames=34, height=40, width=32), source)
    StepVideoFamily.validate(SamplingParams(prompt="x", num_frames=34, height=32, width=32), source)


def test_a_folder_missing_a_component_says_which(folders: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "transformer").mkdir()
    with pytest.raises(CheckpointError, match="no vae, step_llm, clip, clip_tokenizer folder"):
        component_paths(tmp_path)
    assert component_paths(folders["diffusers"])["step_llm"].name == "text_encoder"


@pytest.mark.slow
def test_fv_generate_on_two_ranks_with_fsdp_and_ulysses(
    folders: dict[str, Path], generators: dict, tmp_path: Path
) -> None:
    """``fv generate --num-gpus 2 --fsdp`` (gloo on CPU: FSDP2 over the DiT, Ulysses over its 2 heads)
    gives the one-process frames (up to one level of rounding)."""
    import json

    from fastvideo.testing import run_fv
    from fastvideo.video import read_mp4

    out = tmp_path / "two.mp4"
    args = ["generate", "--model", str(folders["official"]), "--prompt", "a cat walks on the moon", "--device", "cpu",
            "--lossless", "--json", "--output", str(out), "--num-gpus", "2", "--fsdp", "--num-frames", "17",
            "--height", "32", "--width", "32", "--num-inference-steps", "2", "--seed", "3"]  # fmt: skip
    proc = run_fv(args, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["path"] == str(out)
    one = np.asarray(generators["official"].generate_video("a cat walks on the moon", **KW).frames).astype(
        int
    )
    assert np.abs(read_mp4(out).astype(int) - one).max() <= 1


# ---- Step-Video-TI2V (the DiT's numerics: test_model; the one-image encode: test_vae)


@pytest.fixture(scope="module")
def ti2v(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    from PIL import Image

    root = tmp_path_factory.mktemp("ti2v")
    folder = make_tiny_stepvideo(root / "ckpt", ti2v=True)
    rng = np.random.RandomState(0)
    for name in ("a.png", "b.png"):
        Image.fromarray((rng.rand(40, 70, 3) * 255).astype("uint8")).save(root / name)
    return folder, root / "a.png", root / "b.png"


def test_ti2v_generates_from_the_image_and_the_motion_score(ti2v: tuple[Path, Path, Path]) -> None:
    from fastvideo import VideoGenerator

    folder, a, b = ti2v
    gen = VideoGenerator.from_pretrained(str(folder), device="cpu", progress=False)
    first = np.asarray(gen.generate_video("a cat", image=str(a), **KW).frames)
    assert first.shape == (17, 32, 32, 3)
    assert np.array_equal(first, np.asarray(gen.generate_video("a cat", image=str(a), **KW).frames))
    assert not np.array_equal(first, np.asarray(gen.generate_video("a cat", image=str(b), **KW).frames))
    text = gen.pipeline.stages[gen.pipeline.index("text_encoding")]
    assert (text.pos_magic, text.default_negative_prompt) == (TI2V_POS_MAGIC, TI2V_NEG_MAGIC)  # TI2V's own
    # the motion score: the request's (fv generate --motion-score), default 5
    five = {"family_options": {"stepvideo": {"motion_score": 5}}}
    assert np.array_equal(first, np.asarray(gen.generate_video("a cat", image=str(a), **KW, **five).frames))
    twenty = {"family_options": {"stepvideo": {"motion_score": "20"}}}
    moved = np.asarray(gen.generate_video("a cat", image=str(a), **KW, **twenty).frames)
    assert not np.array_equal(first, moved)
    stage = gen.pipeline.stages[gen.pipeline.index("denoising")]
    stage.motion_score = 20.0  # a fixed score set on the stage wins over the request's
    try:
        assert np.array_equal(moved, np.asarray(gen.generate_video("a cat", image=str(a), **KW).frames))
    finally:
        stage.motion_score = None


def test_ti2v_needs_an_image_and_t2v_takes_none(
    ti2v: tuple[Path, Path, Path], folders: dict[str, Path]
) -> None:
    from fastvideo.resolve import resolve
    from fastvideo_stepvideo.family import StepVideoFamily

    folder, a, _ = ti2v
    kw = dict(prompt="x", num_frames=17, height=32, width=32)
    with pytest.raises(ValueError, match="pass --image PATH"):
        StepVideoFamily.validate(SamplingParams(**kw), resolve(str(folder)))
    with pytest.raises(ValueError, match="takes no --image"):
        StepVideoFamily.validate(SamplingParams(**kw, image=str(a)), resolve(str(folders["official"])))
    score = {"family_options": {"stepvideo": {"motion_score": 10}}}
    with pytest.raises(ValueError, match=r"^--motion-score is a Step-Video-TI2V setting; .*text-to-video"):
        StepVideoFamily.validate(SamplingParams(**kw, **score), resolve(str(folders["official"])))
    bad = {"family_options": {"stepvideo": {"motion_score": -1}}}
    with pytest.raises(ValueError, match=r"^stepvideo option 'motion_score' \(--motion-score\) must be >= 0"):
        StepVideoFamily.validate(SamplingParams(**kw, image=str(a), **bad), resolve(str(folder)))


def test_image_is_scaled_to_cover_and_center_cropped(tmp_path: Path) -> None:
    """A 40x80 image with 10-pixel red borders left and right, to 32x32: scaled by 0.8 (to cover the
    height), 64 wide, the middle 32 columns kept: only blue is left."""
    from PIL import Image

    from fastvideo_stepvideo.pipeline import load_image

    arr = np.zeros((40, 80, 3), dtype=np.uint8)
    arr[:, :10, 0] = arr[:, 70:, 0] = 255
    arr[:, 10:70, 2] = 255
    Image.fromarray(arr).save(tmp_path / "x.png")
    x = load_image(str(tmp_path / "x.png"), 32, 32)
    assert x.shape == (3, 32, 32)
    assert torch.allclose(x[2], torch.ones(32, 32), atol=1e-3) and torch.allclose(
        x[0], -torch.ones(32, 32), atol=1e-3
    )
    with pytest.raises(ValueError, match="cannot be read as an image"):
        load_image(str(tmp_path / "missing.png"), 32, 32)


def test_clip_without_safetensors_is_a_one_line_checkpoint_error(
    folders: dict[str, Path], tmp_path: Path
) -> None:
    import shutil

    from fastvideo import VideoGenerator

    broken = tmp_path / "broken"
    shutil.copytree(folders["official"], broken)
    (broken / "hunyuan_clip" / "clip_text_encoder" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"cannot load HunyuanCLIP .*model\.safetensors") as info:
        VideoGenerator.from_pretrained(str(broken), device="cpu", progress=False)
    assert "\n" not in str(info.value)


def _bin_clip(folders: dict[str, Path], tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the tiny checkpoint whose HunyuanCLIP is a pytorch_model.bin only, as released."""
    import shutil

    from transformers import BertModel

    ckpt = tmp_path / "ckpt"
    shutil.copytree(folders["official"], ckpt)
    clip = ckpt / "hunyuan_clip" / "clip_text_encoder"
    torch.save(BertModel.from_pretrained(clip).state_dict(), clip / "pytorch_model.bin")
    (clip / "model.safetensors").unlink()
    return ckpt, clip


def test_released_clip_bin_is_refused_with_the_fix_then_converted(
    folders: dict[str, Path], generators: dict, tmp_path: Path
) -> None:
    """Loading says which command converts the .bin; the conversion (restricted unpickler) gives the
    same video; a second conversion is refused."""
    from fastvideo import VideoGenerator
    from fastvideo_stepvideo.commands import convert_clip

    ckpt, clip = _bin_clip(folders, tmp_path)
    with pytest.raises(CheckpointError, match="fv stepvideo convert-clip"):
        VideoGenerator.from_pretrained(str(ckpt), device="cpu", progress=False)
    assert convert_clip(clip) == clip / "model.safetensors"
    with pytest.raises(ValueError, match="exists already"):
        convert_clip(clip)
    gen = VideoGenerator.from_pretrained(str(ckpt), device="cpu", progress=False)
    a = np.asarray(gen.generate_video("a cat walks on the moon", **KW).frames)
    assert np.array_equal(
        a, np.asarray(generators["official"].generate_video("a cat walks on the moon", **KW).frames)
    )


@pytest.mark.slow
def test_convert_clip_command(folders: dict[str, Path], tmp_path: Path) -> None:
    from fastvideo.testing import run_fv

    _, clip = _bin_clip(folders, tmp_path)
    proc = run_fv(["stepvideo", "convert-clip", str(clip)])
    assert proc.returncode == 0 and (clip / "model.safetensors").is_file(), proc.stderr
    again = run_fv(["stepvideo", "convert-clip", str(clip)])
    assert again.returncode == 2 and again.stderr.startswith("error:") and "exists already" in again.stderr
    assert "Traceback" not in again.stderr


def test_vae_tiling_setting_reaches_the_step_video_vae(folders: dict[str, Path], generators: dict) -> None:
    """``vae_tiling=True`` (PipelineConfig) makes the decoding stage tile the Step-Video VAE: the frames
    come out in tiles, not equal to the untiled ones (test_vae bounds the difference); without the
    setting a 64 x 64 request is not tiled (below the stage's automatic threshold)."""
    from fastvideo import VideoGenerator

    kw = {**KW, "height": 64, "width": 64}
    plain = np.asarray(generators["official"].generate_video("a cat", **kw).frames)
    gen = VideoGenerator.from_pretrained(
        str(folders["official"]), device="cpu", progress=False, vae_tiling=True
    )
    vae = gen.pipeline.stages[gen.pipeline.index("decoding")].vae
    vae.enable_tiling(32, 16)  # 3 x 3 tiles of a 64 x 64 frame; the stage keeps these sizes
    tiled = np.asarray(gen.generate_video("a cat", **kw).frames)
    assert vae.use_tiling
    assert tiled.shape == plain.shape == (17, 64, 64, 3)
    assert not np.array_equal(tiled, plain)  # decoded in tiles


def test_vae_tiles_automatically_only_above_the_official_sizes(generators: dict) -> None:
    """vae_tiling=None: 544x992 and 768x768 decode untiled (the official numerics), larger frames in tiles."""
    stage = generators["official"].pipeline.stages[generators["official"].pipeline.index("decoding")]
    vae = stage.vae
    try:
        for (height, width), tiled in (((544, 992), False), ((768, 768), False), ((1088, 1984), True)):
            stage._set_tiling(
                ForwardBatch(params=SamplingParams(height=height, width=width), device=torch.device("cpu"))
            )
            assert vae.use_tiling is tiled, (height, width)
    finally:
        vae.disable_tiling()
