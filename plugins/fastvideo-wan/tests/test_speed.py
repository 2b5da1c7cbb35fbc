"""The core's speed options on the Wan DiT (tiny checkpoints written by diffusers): the text key/value
cache is lossless (identical frames), the lossy options stay close to the baseline and the step
caches reuse DiT calls."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fastvideo_wan.tiny import make_tiny_wan

PROMPT = "a red circle moving left on a black background"
KW = dict(num_frames=5, height=32, width=32, num_inference_steps=5, guidance_scale=3.0, seed=3)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("wan-speed")
    return {v: make_tiny_wan(root / v, variant=v, seed=3) for v in ("t2v", "i2v")}


@pytest.fixture(scope="module")
def image_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from PIL import Image

    path = tmp_path_factory.mktemp("img") / "cond.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 80, 3), dtype=np.uint8)).save(path)
    return path


def _frames(path: Path, **options) -> tuple[np.ndarray, object]:  # type: ignore[no-untyped-def]
    from fastvideo import VideoGenerator

    sampling = {k: options.pop(k) for k in ("image", "prompt") if k in options}
    gen = VideoGenerator.from_pretrained(str(path), device="cpu", progress=False, **options)
    result = gen.generate_video(sampling.pop("prompt", PROMPT), **sampling, **KW)
    return result.frames, gen


@pytest.mark.parametrize("variant", ["t2v", "i2v"])
def test_text_kv_cache_gives_identical_frames(ckpts: dict[str, Path], image_path: Path, variant: str) -> None:
    extra = {"image": str(image_path)} if variant == "i2v" else {}
    plain, _ = _frames(ckpts[variant], text_kv_cache=False, **extra)
    cached, gen = _frames(ckpts[variant], **extra)
    assert "text-kv-cache" in gen.pipeline.transforms
    memos = gen.pipeline.components["text_kv_memos"]
    assert len(memos) == 1 + 2 * 2 + (1 + 2 * 2 if variant == "i2v" else 0)  # embeddings, k/v per block
    assert all(m.hits > 0 for m in memos)
    assert np.array_equal(cached, plain) and plain.std() > 5
    # a second prompt with the same generator: recomputed, and again identical to the uncached pipeline
    other = gen.generate_video("a blue square", **extra, **KW).frames
    assert np.array_equal(
        other, _frames(ckpts[variant], text_kv_cache=False, prompt="a blue square", **extra)[0]
    )


@pytest.mark.parametrize(
    "options",
    [
        {"quantize": "fp8"},
        {"cache": "teacache", "cache_threshold": 5.0},
        {"cache": "firstblock", "cache_threshold": 0.5},
        {"cache": "magcache", "cache_threshold": 0.5},
    ],
    ids=["fp8", "teacache", "firstblock", "magcache"],
)
def test_lossy_options_run_through_the_generator(ckpts: dict[str, Path], options: dict) -> None:
    base, _ = _frames(ckpts["t2v"])
    frames, gen = _frames(ckpts["t2v"], **dict(options))
    err = np.abs(frames.astype(float) - base.astype(float)).mean()
    assert err > 0, f"{options} changed nothing"
    if "quantize" in options:  # (the caches' quality is measured on wan-toy: docs/speed.md)
        assert err < 6, f"{options}: mean |frames - baseline| = {err:.2f}/255"
    else:
        stats = next(s for s in gen.pipeline.stages if hasattr(s, "step_cache")).step_cache.stats
        assert stats["reused"] > 0 and stats["computed"] + stats["reused"] == 2 * KW["num_inference_steps"]


def test_layer_offload_gives_identical_frames(ckpts: dict[str, Path]) -> None:
    base, _ = _frames(ckpts["t2v"])
    frames, gen = _frames(ckpts["t2v"], offload="layer")
    offload = gen.pipeline.components["offload"]
    assert offload["layers"]["transformer"].stats["copies"] >= 2 * KW["num_inference_steps"] * 2
    assert len(offload["idle"]) == 2  # the text encoding and the decoding stages
    assert np.array_equal(frames, base)
