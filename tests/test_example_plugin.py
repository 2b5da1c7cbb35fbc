"""The example third-party plugin, end to end, as a user would meet it.

pip-installs ``examples/fastvideo-example-plugin`` into this interpreter's environment, uses it
through the ``fv`` CLI in subprocesses (discovery, its own command, a generation with its own
family and attention backend), compares its backend with torch SDPA in-process, generates in-process
with its sampler and its step-skipping transform (checked against the loop written out by hand),
then uninstalls it and checks that everything it registered is gone. The uninstall runs in ``finally``;
so does the restore: an example plugin installed before the test (``nox -s tests`` installs it
editable, for the tests that use it) is reinstalled from where it came. CPU, ~20 s.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pytest

from fastvideo.testing import assert_close, plugin_env, run_fv

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "fastvideo-example-plugin"
DIST = "fastvideo-example-plugin"
STEPS = 4
PLUGIN_ENV_VARS = ("FASTVIDEO_PLUGINS", "FASTVIDEO_DISABLE_PLUGIN_AUTOLOAD", "FASTVIDEO_ATTENTION_BACKEND")

#: It uninstalls the example plugin that other tests use: `nox -s tests` runs it alone, after them.
pytestmark = pytest.mark.serial


# ---------------------------------------------------------------- helpers


def _pip(*args: str, cwd: Path) -> None:
    cmd = [sys.executable, "-m", "pip", *args, "--quiet", "--disable-pip-version-check"]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, f"pip {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"


def _installed_from() -> list[str] | None:
    """pip's arguments that reinstall the example plugin as it is installed now (``None``: it is
    not), read from its metadata (PEP 610 ``direct_url.json``)."""
    try:
        dist = md.distribution(DIST)
    except md.PackageNotFoundError:
        return None
    if dist.read_text("RECORD") is None:  # pip cannot uninstall it, nor this test restore it
        pytest.fail(
            f"{DIST} is visible at {dist.locate_file('')} but not installed by pip (an *.egg-info left "
            "beside the sources by an editable build, on PYTHONPATH?); delete it or run nox -s tests"
        )
    direct = json.loads(dist.read_text("direct_url.json") or "{}")
    url = direct.get("url", "")
    if not url.startswith("file://"):
        return [f"{DIST}=={dist.version}"]
    path = unquote(urlparse(url).path)
    if not Path(path).exists():  # this test could not put it back after uninstalling it
        pytest.fail(
            f"{DIST} is installed from {path}, which no longer exists; reinstall it first: "
            f"pip install --no-deps -e {EXAMPLE}"
        )
    return ["-e", path] if direct.get("dir_info", {}).get("editable") else [path]


def _restore(previous: list[str] | None, cwd: Path) -> None:
    if previous is not None:
        _pip("install", "--no-deps", "--no-build-isolation", *previous, cwd=cwd)
        _forget_plugins()


def _fv(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``fv ARGS`` as a user runs it: no plugin switches set, no Hub access, cache under ``cwd``."""
    env = plugin_env(HF_HUB_OFFLINE="1", XDG_CACHE_HOME=str(cwd / "cache"), FASTVIDEO_DEBUG=None)
    return run_fv(list(args), env=env, cwd=cwd, timeout=180)


def _plugin_rows(cwd: Path) -> list[dict[str, Any]]:
    proc = _fv("plugins", "list", "--json", cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return [row for row in json.loads(proc.stdout) if row["distribution"] == DIST]


def _read_video(path: Path) -> Any:
    import imageio.v2 as imageio
    import numpy as np

    with imageio.get_reader(str(path), format="FFMPEG") as reader:
        return np.stack([np.asarray(frame) for frame in reader])


def _forget_plugins() -> None:
    """Drop what this process loaded, so later tests rediscover the installed plugins."""
    from fastvideo import registry

    registry.reset()  # also clears the attention selector's caches
    for name in [m for m in sys.modules if m == "fastvideo_example" or m.startswith("fastvideo_example.")]:
        del sys.modules[name]
    importlib.invalidate_caches()


# ---------------------------------------------------------------- the steps


def _check_listed(work: Path) -> None:
    rows = _plugin_rows(work)
    assert len(rows) == 1, f"{DIST} is not listed by `fv plugins list --json` once: {rows}"
    row = rows[0]
    assert row["version"] == "0.1.0"
    assert row["name"] == "example" and row["module"] == "fastvideo_example.plugin"
    assert row["broken"] is None, row["broken"]
    assert row["registers"] == {
        "model_family": ["example"],
        "attention_backend": ["example-math"],
        "sampler": ["example-linear"],
        "pipeline_transform": ["example-skip-steps"],
    }


def _check_generate(work: Path) -> Path:
    ckpt = work / "ckpt"
    bad = _fv("example", "make-checkpoint", str(ckpt), "--backend-modules", "example-math", cwd=work)
    assert bad.returncode == 2 and not ckpt.exists(), bad.stderr
    assert len(bad.stderr.splitlines()) == 1 and bad.stderr.startswith(
        "error: attention backend 'example-math' is not installed or declares no per-layer modules; "
        "backends that do: "
    ), bad.stderr
    made = _fv("example", "make-checkpoint", str(ckpt), cwd=work)
    assert made.returncode == 0, made.stderr
    index = json.loads((ckpt / "model_index.json").read_text())
    assert index["_class_name"] == "ExampleVideoPipeline"
    assert index["transformer"] == ["fastvideo_example", "ExampleTransformer"]
    assert (ckpt / "transformer" / "diffusion_pytorch_model.safetensors").is_file()

    out = ckpt / "out.mp4"
    args = [
        "--model",
        str(ckpt),
        "--prompt",
        "a red ball",
        "--num-frames",
        "9",
        "--height",
        "64",
        "--width",
        "64",
    ]
    args += ["--steps", "3", "--attention-backend", "example-math", "--output", str(out), "--json"]
    args += ["--example-math-softcap", "5"]  # the backend's own option, its flag added by the core
    bad_cap = _fv("generate", *args[:-1], "-1", cwd=work)
    assert bad_cap.returncode == 2 and not out.exists(), bad_cap.stderr
    assert bad_cap.stderr.strip() == (
        "error: example-math option 'softcap' (--example-math-softcap) must be >= 0, got '-1'"
    ), bad_cap.stderr
    gen = _fv("generate", *args, cwd=work)
    assert gen.returncode == 0, f"fv generate failed (exit {gen.returncode}):\n{gen.stderr}"
    summary = json.loads(gen.stdout)
    assert (summary["frames"], summary["height"], summary["width"]) == (9, 64, 64)
    frames = _read_video(out)
    assert frames.shape == (9, 64, 64, 3), frames.shape
    assert frames.std() > 0, "the video is a single flat colour"
    return ckpt


def _check_math_matches_sdpa() -> None:
    import torch
    import torch.nn.functional as F

    from fastvideo.attention import attention, available_backends, resolve_backend_name, use_backend
    from fastvideo.registry import get_registry

    _forget_plugins()
    entry = get_registry().get("attention_backend", "example-math")
    assert entry.dist == DIST
    assert resolve_backend_name(None) == "sdpa" and available_backends().index("example-math") > 0
    backend = entry.cls()

    def sdpa(q, k, v, **kw):  # [B, L, H, D] in and out, like the backends
        out = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)), **kw)
        return out.transpose(1, 2)

    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 37, 3, 16, generator=gen)
    k, v = torch.randn(2, 2, 23, 3, 16, generator=gen)
    keep = torch.rand(2, 1, 37, 23, generator=gen) > 0.5
    keep[..., 0] = True  # no fully masked row
    bias = torch.randn(2, 3, 37, 23, generator=gen)
    cases = {
        "plain": ((q, k, v), {}),
        "scale": ((q, k, v), {"scale": 0.3}),
        "bool-mask": ((q, k, v), {"attn_mask": keep}),
        "additive-mask": ((q, k, v), {"attn_mask": bias}),
        "causal": ((q, q, q), {"is_causal": True}),
    }
    for case, (qkv, kw) in cases.items():
        ref = sdpa(*qkv, **kw)
        assert_close(case, ref, backend.forward(*qkv, **kw), 1e-5)
        with use_backend("example-math"):  # through the seam, as a DiT calls it
            assert_close(f"{case} via attention()", ref, attention(*qkv, **kw), 1e-5)
    from fastvideo.attention import StepContext, step_context

    cap = 0.7  # soft-capped logits: c * tanh(s / c), against the formula in float64
    q64, k64, v64 = (t.transpose(1, 2).double() for t in (q, k, v))
    logits = q64 @ k64.transpose(-2, -1) * q.shape[-1] ** -0.5
    ref = ((cap * torch.tanh(logits / cap)).softmax(-1) @ v64).transpose(1, 2).float()
    step = StepContext(options={"example-math": {"softcap": cap}})
    assert_close("softcap", ref, backend.forward(q, k, v, step=step), 1e-5)
    with use_backend("example-math"), step_context(step):
        assert_close("softcap via attention()", ref, attention(q, k, v), 1e-5)
    q16, k16, v16 = (t.bfloat16() for t in (q, k, v))
    half = backend.forward(q16, k16, v16)  # fp32 inside, bf16 out: only the output rounding differs
    assert half.dtype == torch.bfloat16
    assert_close("bf16", sdpa(q16.float(), k16.float(), v16.float()), half, 1e-2)
    assert backend.supports(q, k[:, :, :1], v[:, :, :1]) is not None  # grouped-query attention
    assert backend.supports(q, k, v, attn_mask=keep.int()) is not None  # integer mask


def _generate(ckpt: Path, softcap: float = 0.0) -> tuple[Any, Any, int]:
    """The example family + backend (with its ``softcap`` option) + sampler in-process: (generator,
    result, DiT forwards)."""
    from fastvideo import VideoGenerator

    gen = VideoGenerator.from_pretrained(
        str(ckpt), device="cpu", attention_backend="example-math", sampler="example-linear", progress=False
    )
    calls: list[int] = []
    handle = gen.pipeline.components["transformer"].register_forward_hook(lambda *_: calls.append(1))
    try:
        result = gen.generate_video(
            "a red ball",
            num_frames=9,
            height=64,
            width=64,
            num_inference_steps=STEPS,
            seed=3,
            backend_options={"example-math": {"softcap": softcap}},
        )
    finally:
        handle.remove()
    return gen, result, len(calls)


def _by_hand(gen: Any, *, reuse_odd: bool, softcap: float = 0.0) -> Any:
    """The denoising loop written out: the pipeline's own text encoding and noise, then CFG and
    Euler steps on ``linspace(1, 0, n + 1)``, reusing the last guided prediction on odd steps."""
    import torch

    from fastvideo.attention import StepContext, step_context, use_backend
    from fastvideo.pipelines.batch import ForwardBatch

    params = gen.sampling_params(
        "a red ball", num_frames=9, height=64, width=64, num_inference_steps=STEPS, seed=3
    )
    batch = ForwardBatch(params=params, device=torch.device("cpu"))
    dit = gen.pipeline.components["transformer"]
    sigmas = torch.linspace(1.0, 0.0, STEPS + 1)
    options = {"example-math": {"softcap": softcap}}
    with torch.inference_mode(), use_backend("example-math"), step_context(StepContext(options=options)):
        for stage in gen.pipeline.stages[: gen.pipeline.index("denoising")]:
            batch = stage(batch)
        x, pred = batch.latents.clone(), None
        for i in range(STEPS):
            if not (reuse_odd and i % 2):
                t = (sigmas[i] * 1000).expand(1)
                cond = dit(hidden_states=x, timestep=t, encoder_hidden_states=batch.prompt_embeds[0])
                uncond = dit(
                    hidden_states=x, timestep=t, encoder_hidden_states=batch.negative_prompt_embeds[0]
                )
                pred = uncond + params.guidance_scale * (cond - uncond)
            x = x + (sigmas[i + 1] - sigmas[i]) * pred
    return x


def _check_sampler_and_step_skipping(ckpt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The plugin's sampler and its step-skipping transform, through VideoGenerator like a user."""
    import torch

    _forget_plugins()
    monkeypatch.delenv("FASTVIDEO_EXAMPLE_SKIP_STEPS", raising=False)
    plain_gen, plain, plain_calls = _generate(ckpt)
    assert plain_gen.pipeline.transforms == []
    assert plain_calls == 2 * STEPS  # conditional and unconditional branch per step
    assert_close("plain run vs by hand", _by_hand(plain_gen, reuse_odd=False), plain.latents, 1e-5)

    monkeypatch.setenv("FASTVIDEO_EXAMPLE_SKIP_STEPS", "1")
    skip_gen, skipped, skip_calls = _generate(ckpt)
    monkeypatch.delenv("FASTVIDEO_EXAMPLE_SKIP_STEPS")
    assert skip_gen.pipeline.transforms == ["example-skip-steps"]
    assert skip_calls == plain_calls // 2, f"{skip_calls} DiT forwards, expected {plain_calls // 2}"
    assert not torch.allclose(skipped.latents, plain.latents, atol=1e-4), "skipping changed nothing"
    assert_close("skipping run vs by hand", _by_hand(skip_gen, reuse_odd=True), skipped.latents, 1e-5)

    # all four together: the family, the backend with its own option, the sampler and the transform
    monkeypatch.setenv("FASTVIDEO_EXAMPLE_SKIP_STEPS", "1")
    all_gen, capped, capped_calls = _generate(ckpt, softcap=0.01)  # far below the logits: it matters
    monkeypatch.delenv("FASTVIDEO_EXAMPLE_SKIP_STEPS")
    assert capped_calls == skip_calls and capped.params.backend_options == {"example-math": {"softcap": 0.01}}
    change = (
        (capped.latents - skipped.latents).abs().max()
    )  # same code, deterministic: any change is the cap's
    assert change > 1e-6, f"the softcap changed the latents by {change:.2e} only"
    by_hand = _by_hand(all_gen, reuse_odd=True, softcap=0.01)
    assert_close("family + backend option + sampler + transform vs by hand", by_hand, capped.latents, 1e-5)


def _check_uninstalled(work: Path, ckpt: Path) -> None:
    assert _plugin_rows(work) == [], f"{DIST} is still listed after pip uninstall"
    args = ["--model", str(ckpt), "--prompt", "a red ball", "--attention-backend", "example-math"]
    gen = _fv("generate", *args, "--output", str(work / "after.mp4"), cwd=work)
    assert gen.returncode == 2, f"exit {gen.returncode}: {gen.stderr}"
    assert "example-math" in gen.stderr, gen.stderr


# ---------------------------------------------------------------- the test


def test_example_plugin_install_use_uninstall(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in PLUGIN_ENV_VARS:  # the in-process part discovers plugins like a user's session
        monkeypatch.delenv(var, raising=False)
    source = tmp_path / "src"  # build from a copy: pip writes build/ and *.egg-info beside the sources
    shutil.copytree(
        EXAMPLE, source, ignore=shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__")
    )
    work = tmp_path / "work"
    work.mkdir()
    previous = _installed_from()
    try:
        try:
            _pip("install", "--no-deps", "--no-build-isolation", str(source), cwd=work)
            _check_listed(work)
            ckpt = _check_generate(work)
            _check_math_matches_sdpa()
            _check_sampler_and_step_skipping(ckpt, monkeypatch)
        finally:
            _pip("uninstall", "--yes", DIST, cwd=work)
            _forget_plugins()
        _check_uninstalled(work, ckpt)
    finally:
        _restore(previous, work)
    assert _installed_from() == previous, "the example plugin was not restored as it was installed before"
