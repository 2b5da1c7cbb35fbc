"""``sta`` in whole generations: Wan and Step-Video (video self-attention; cross-attention stays dense)
and HunyuanVideo (joint video+text attention with padded text), on tiny random-weight checkpoints that the
installed family plugins write (``fv wan make-tiny``, ``fv hunyuan make-tiny``, ``fv stepvideo make-tiny``:
used as a user would, never imported). The Triton kernels (CPU interpreter without a GPU) must give the generation that the plain
reference gives, and differ from dense attention."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from fastvideo.testing import assert_close, fake_plugins, plugin_env, run_fv
from fastvideo_sta.backend import STABackend
from fastvideo_sta.ops import sta_attention_reference
from fastvideo_sta.strategy import Strategy, save_strategy

#: This plugin and the families the tests generate with (test dependencies, see pyproject's test extra).
DISTRIBUTIONS = ("fastvideo-sta", "fastvideo-wan", "fastvideo-hunyuan", "fastvideo-stepvideo")
SHAPE = dict(num_frames=9, height=64, width=64)  # token grid (3, 4, 4) with (1, 2, 2) patches
#: Step-Video's VAE compresses 8x in time and 16x in space, its DiT patches 1x1: grid (3, 4, 4) as well
SHAPES = {"stepvideo": dict(num_frames=17, height=64, width=64)}
TILE = "1,4,4"  # tile grid (3, 1, 1): window 1 keeps a third of the frames


def reference_attend(self: STABackend, q, k, v, geom, windows, attn_mask, scale):  # type: ignore[no-untyped-def]
    """What ``STABackend.attend`` computes, by the plain reference."""
    text_mask = None
    if attn_mask is not None and q.shape[1] > geom.num_tokens:
        text_mask = attn_mask[:, 0, 0, geom.num_tokens :].expand(q.shape[0], -1)
    per_head = windows.tolist() if isinstance(windows, torch.Tensor) else windows
    return sta_attention_reference(
        q, k, v, geom.grid, per_head, tile=geom.tile, text_mask=text_mask, scale=scale
    )


def generate(gen: Any, family: str, **options: Any) -> torch.Tensor:
    result = gen.generate_video(
        "a red ball moving left",
        num_inference_steps=1,
        guidance_scale=1.0,
        seed=3,
        backend_options={"sta": {"tile": TILE, **options}},
        **SHAPES.get(family, SHAPE),
    )
    return result.latents


@pytest.mark.parametrize("family", ["wan", "hunyuan", "stepvideo"])
def test_generation_with_sta_matches_the_reference_and_differs_from_dense(
    family: str, checkpoints: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastvideo import VideoGenerator

    calls: list[tuple[int, ...]] = []
    attend = STABackend.attend
    monkeypatch.setattr(
        STABackend, "attend", lambda self, q, *a: calls.append(tuple(q.shape)) or attend(self, q, *a)
    )
    # hunyuan's tiny DiT: 2 double + 2 single blocks
    layers = {"wan": 2, "hunyuan": 4}.get(family, 0)
    with fake_plugins(autoload=DISTRIBUTIONS):
        gen = VideoGenerator.from_pretrained(str(checkpoints(family)), attention_backend="sta", device="cpu")
        config = gen.pipeline.components["transformer"].config
        heads = config.num_attention_heads
        layers = layers or config.num_layers
        windows = {
            (0, layer, h): (1 + (layer + h) % 2, 1, 1) for layer in range(layers) for h in range(heads)
        }
        strategy = save_strategy(Strategy(windows), tmp_path / "strategy.json")
        kernel = generate(gen, family, strategy=str(strategy))
        fixed = generate(gen, family, window="1,1,1")
        assert len(calls) == 2 * layers  # every sparse layer, once per generation (no CFG)
        tokens = {shape[1] for shape in calls}
        assert (min(tokens) > 48) if family == "hunyuan" else (tokens == {48})  # hunyuan: text after video
        dense = generate(gen, family)
        monkeypatch.setattr(STABackend, "attend", reference_attend)
        reference = generate(gen, family, strategy=str(strategy))
    assert_close(f"{family} latents", reference, kernel, 1e-4)
    assert (dense - kernel).abs().max() > 1e-3 and (fixed - kernel).abs().max() > 1e-4


@pytest.mark.slow
def test_fv_generate_with_sta_on_the_command_line(checkpoints: Any, tmp_path: Path) -> None:
    out = tmp_path / "sta.mp4"
    args = ["generate", "--model", str(checkpoints("wan")), "--prompt", "a red ball", "--steps", "1"]
    args += ["--num-frames", "9", "--height", "64", "--width", "64", "--device", "cpu", "--output", str(out)]
    args += ["--attention-backend", "sta", "--sta-window", "1,1,1", "--sta-tile", TILE]
    proc = run_fv(
        args, env=plugin_env(FASTVIDEO_PLUGINS=",".join(DISTRIBUTIONS), TRITON_INTERPRET="1"), timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_size > 0
    args[args.index(str(out))] = str(tmp_path / "other.mp4")
    bad = run_fv(
        [*args[:-6], "--attention-backend", "sta", "--sta-window", "0,1,1"],
        env=plugin_env(FASTVIDEO_PLUGINS=",".join(DISTRIBUTIONS)),
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert [line for line in bad.stderr.splitlines() if line.startswith("error:")] == [
        "error: sta option 'window' (--sta-window) must be three positive integers t,h,w in tiles (e.g. 3,3,3), got '0,1,1'"
    ]
