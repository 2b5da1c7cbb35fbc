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


def _spy_policy(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """What each DiT load under a LoadPolicy did; the whole-model load path fails the test."""
    from fastvideo.loader.policy import LoadPolicy
    from fastvideo_wan.model import WanTransformer

    loads: list[dict] = []
    plain = LoadPolicy.load

    def spy(self, model, ckpt, **kw):  # type: ignore[no-untyped-def]
        out = plain(self, model, ckpt, **kw)
        loads.append(dict(self.loaded[-1][1]))
        return out

    def refuse(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("the DiT was loaded whole")

    monkeypatch.setattr(LoadPolicy, "load", spy)
    monkeypatch.setattr(WanTransformer, "load_checkpoint", classmethod(refuse))
    return loads


def test_layer_offload_gives_identical_frames(
    ckpts: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    base, _ = _frames(ckpts["t2v"])
    loads = _spy_policy(monkeypatch)
    frames, gen = _frames(ckpts["t2v"], offload="layer")
    assert len(loads) == 1 and loads[0]["streamed_tensors"] > 0  # blocks read into CPU memory
    offload = gen.pipeline.components["offload"]
    assert offload["layers"]["transformer"].stats["copies"] >= 2 * KW["num_inference_steps"] * 2
    assert len(offload["idle"]) == 2  # the text encoding and the decoding stages
    assert np.array_equal(frames, base)


@pytest.mark.parametrize("scale", ["weight_scale", "scale_weight", None], ids=["lightx2v", "kijai", "cast"])
def test_fp8_checkpoint_in_the_original_wan_naming_loads(tmp_path: Path, scale: str | None) -> None:
    """LightX2V / Kijai FP8 files use the original Wan release's names (blocks.N.ffn.0, norm3, head.head)."""
    import torch
    from safetensors.torch import save_file

    from fastvideo.optimize.fp8 import FP8, FP8Linear, block_linears, load_prequantized, quantize_rows
    from fastvideo_wan.convert import ORIGINAL_MAPPING
    from fastvideo_wan.model import WanConfig, WanTransformer

    cfg = WanConfig(
        num_attention_heads=2, attention_head_dim=16, text_dim=32, freq_dim=32, ffn_dim=64, num_layers=2
    )
    torch.manual_seed(0)
    reference = WanTransformer.from_config(cfg, device="cpu").eval()
    names = {id(m): n for n, m in reference.named_modules()}
    state = dict(reference.state_dict())
    scales = {}
    for _, _, linear in block_linears(reference):
        key = f"{names[id(linear)]}.weight"
        q, s = quantize_rows(linear.weight.detach()) if scale != "scale_weight" else (None, None)
        if scale == "scale_weight":
            s = linear.weight.detach().abs().max() / 448.0
            q = (linear.weight.detach() / s).to(FP8)
        if scale is None:
            q, s = linear.weight.detach().to(FP8), torch.ones(())
        state[key] = q
        if scale is not None:
            scales[key.removesuffix("weight") + scale] = s
        linear.weight.data = (q.float() * (s if s.ndim else s.reshape(()))).to(linear.weight.dtype)
    original = ORIGINAL_MAPPING.to_theirs(state)
    assert (
        "blocks.0.ffn.0.weight" in original
        and "head.head.weight" in original
        and "blocks.0.norm3.weight" in original
    )
    for key, value in scales.items():  # scale names follow their weight's original name
        weight = ORIGINAL_MAPPING.to_theirs({key.rsplit(".", 1)[0] + ".weight": 0})
        original[next(iter(weight)).removesuffix("weight") + key.rsplit(".", 1)[1]] = value
    save_file({k: v.contiguous() for k, v in original.items()}, str(tmp_path / "wan_fp8.safetensors"))
    torch.manual_seed(1)
    model = WanTransformer.from_config(cfg, device="cpu").eval()
    info = load_prequantized(model, tmp_path / "wan_fp8.safetensors")
    assert info["fp8_linears"] == 2 * 10 and isinstance(model.blocks[1].ffn.fc2, FP8Linear)
    x, t, text = torch.randn(1, 16, 2, 4, 4), torch.tensor([500.0]), torch.randn(1, 7, 32)
    with torch.no_grad():
        assert torch.equal(model(x, t, text), reference(x, t, text))


def test_fp8_checkpoint_through_the_generator_reads_no_high_precision_copy(
    ckpts: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``fp8_checkpoint`` (with offload): the FP8 linears come from the file as the DiT loads; frames equal
    the former path's (the whole DiT loaded from the folder, then the file loaded into it)."""
    import torch
    from safetensors.torch import save_file

    from fastvideo.loader.checkpoint import DiffusersCheckpoint
    from fastvideo.optimize.fp8 import block_linears, quantize_rows
    from fastvideo_wan.model import WanTransformer

    model = WanTransformer.from_pretrained(ckpts["t2v"] / "transformer", dtype=None)
    names = {id(m): n for n, m in model.named_modules()}
    state = {}
    for _, _, linear in block_linears(model):  # only the block linears: the rest comes from the folder
        q, scale = quantize_rows(linear.weight.detach())
        state[f"{names[id(linear)]}.weight"], state[f"{names[id(linear)]}.weight_scale"] = q, scale
    path = str(tmp_path / "wan_fp8.safetensors")
    save_file(state, path)
    from fastvideo.loader.policy import LoadPolicy

    with monkeypatch.context() as m:  # the former path: no load policy, the file loaded after the folder
        m.setattr("fastvideo.transforms.load_policy", lambda config: LoadPolicy())
        former, old = _frames(ckpts["t2v"], fp8_checkpoint=path, quantize="fp8-storage", offload="layer")
    assert not hasattr(old.pipeline.components["transformer"], "fp8_checkpoint_loaded")
    read: list[str] = []
    plain = DiffusersCheckpoint.tensors

    def spy(self, device="cpu", names=None):  # type: ignore[no-untyped-def]
        for name, tensor in plain(self, device, names):
            read.append(name)
            yield name, tensor

    monkeypatch.setattr(DiffusersCheckpoint, "tensors", spy)
    loads = _spy_policy(monkeypatch)
    frames, gen = _frames(ckpts["t2v"], fp8_checkpoint=path, quantize="fp8-storage", offload="layer")
    assert loads[0]["fp8_linears"] == len(state) // 2 and loads[0]["streamed_tensors"] > 0
    assert not set(state) & set(read)  # the folder's weights of the FP8 linears were never read
    assert isinstance(gen.pipeline.components["transformer"].blocks[0].ffn.fc1.weight, torch.Tensor)
    assert gen.pipeline.components["transformer"].blocks[0].ffn.fc1.weight.dtype == torch.float8_e4m3fn
    assert np.array_equal(frames, former)


def test_fv_generate_flags_apply_the_transforms(ckpts: dict[str, Path], tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """``fv generate --quantize ... --cache ... --cache-threshold ... --offload ...`` reach the transforms."""
    from typer.testing import CliRunner

    import fastvideo.transforms
    from fastvideo.cli import app

    applied: list[list[str]] = []
    original = fastvideo.transforms.apply_transforms

    def spy(pipeline, config):  # type: ignore[no-untyped-def]
        applied.append(original(pipeline, config))
        assert (config.quantize, config.cache, config.cache_threshold, config.offload) == (
            "fp8-storage", "magcache", 0.5, "layer"
        )  # fmt: skip
        return applied[-1]

    monkeypatch.setattr(fastvideo.transforms, "apply_transforms", spy)
    out = tmp_path / "v.mp4"
    args = ["generate", "-m", str(ckpts["t2v"]), "-p", PROMPT, "--device", "cpu", "-o", str(out), "--json",
            "--num-frames", "5", "--height", "32", "--width", "32", "--steps", "4", "--no-progress",
            "--quantize", "fp8-storage", "--cache", "magcache", "--cache-threshold", "0.5", "--offload", "layer"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert applied == [["step-cache", "fp8", "text-kv-cache", "layer-offload"]]  # by their order
    assert out.is_file()
    bad = CliRunner().invoke(app, [*args[:9], "--cache-threshold", "0.5"])
    assert bad.exit_code == 2 and "needs a cache" in bad.output
