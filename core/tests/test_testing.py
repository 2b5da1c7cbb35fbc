"""The public test kit itself: the numerical checks must pass and fail where they should."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest
import torch

from fastvideo.testing import assert_close, assert_no_worse, plugin_env, plugin_module, rel_error


def test_rel_error_is_relative_to_the_reference_scale() -> None:
    ref = torch.tensor([100.0, -200.0, 50.0])
    assert rel_error(ref, ref + torch.tensor([0.0, 2.0, 0.0])) == pytest.approx(0.01)
    assert rel_error(np.zeros(3), np.full(3, 0.5)) == 0.5  # all-zero reference: absolute error
    assert rel_error(ref, ref) == 0.0


def test_assert_close_passes_within_the_ratio_at_any_scale() -> None:
    for scale in (1e-6, 1.0, 1e6):
        ref = torch.randn(4, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * scale
        assert_close("x", ref, (ref * (1 + 1e-4)).float(), 2e-4)


def test_assert_close_explains_a_failure() -> None:
    ref = torch.zeros(2, 3)
    ref[0, 0] = 10.0
    out = ref.clone()
    out[1, 2] = 0.5
    with pytest.raises(AssertionError) as err:
        assert_close("dq", ref, out, 0.01)
    assert str(err.value) == (
        "dq: max error 0.5 at (1, 2) (reference 0, got 0.5) exceeds ratio 0.01 x scale 10 + atol 0 = 0.1 "
        "(relative error 0.05)"
    )
    assert_close("dq", ref, out, 0.01, atol=0.5)


def test_assert_close_checks_shapes_and_non_finite_values() -> None:
    with pytest.raises(AssertionError, match=re.escape("x: shape (3,) differs from the reference's (1, 3)")):
        assert_close("x", torch.ones(1, 3), torch.ones(3), 1.0)
    nan = torch.tensor([1.0, float("nan")])
    assert_close("x", nan, nan.clone(), 0.0)  # NaN where the reference has NaN is fine
    with pytest.raises(AssertionError, match=r"x: non-finite values differ .* first mismatch at \(1,\)"):
        assert_close("x", torch.tensor([1.0, 2.0]), nan, 1.0)
    with pytest.raises(AssertionError, match="non-finite values differ"):
        assert_close("x", torch.tensor([float("inf")]), torch.tensor([float("-inf")]), 1.0)


def test_assert_no_worse_compares_with_the_baseline_error() -> None:
    ref = torch.randn(64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    baseline = ref.to(torch.bfloat16)
    assert_no_worse("out", ref, baseline, baseline)
    with pytest.raises(AssertionError, match=r"out: relative error .* exceeds 2 x the baseline's"):
        assert_no_worse("out", ref, ref + 0.1, baseline)


def test_plugin_module_rejects_non_hook_names() -> None:
    with pytest.raises(ValueError, match="hook names start with 'fv_', got 'register'"):
        plugin_module("bad", register=lambda: [])


def test_plugin_env_puts_paths_first_and_clears_switches() -> None:
    base = {"PYTHONPATH": "/old", "FASTVIDEO_PLUGINS": "x", "KEEP": "1", "DROP": "1"}
    env = plugin_env("/a", "/b", base=base, DROP=None, NEW="2")
    assert env == {"PYTHONPATH": "/a:/b:/old", "KEEP": "1", "NEW": "2"}


def test_mean_ssim_matches_scikit_image() -> None:
    """Against scikit-image's structural_similarity with the same definition (Gaussian window,
    sigma 1.5, population covariances, data range 255), per frame, averaged."""
    import numpy as np
    from skimage.metrics import structural_similarity

    from fastvideo.testing import mean_ssim

    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (3, 40, 48, 3), dtype=np.uint8)
    for spread in (5, 40, 120):
        b = np.clip(a.astype(int) + rng.integers(-spread, spread + 1, a.shape), 0, 255).astype(np.uint8)
        ref = np.mean(
            [
                structural_similarity(
                    a[t],
                    b[t],
                    gaussian_weights=True,
                    sigma=1.5,
                    use_sample_covariance=False,
                    data_range=255,
                    channel_axis=-1,
                )
                for t in range(3)
            ]
        )
        assert abs(mean_ssim(a, b) - ref) < 1e-9
    assert mean_ssim(a, a) == 1.0
    with pytest.raises(ValueError, match="equal shapes"):
        mean_ssim(a, a[:2])


# ---------------------------------------------------------------- corrupt_copy


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "a.weight": torch.randn(4, 6, generator=g),
        "b.bias": torch.randn(6, generator=g).to(torch.bfloat16),
        "c.scale": torch.randn(2, 3, 2, generator=g).to(torch.float16),
        "d.index": torch.arange(5, dtype=torch.int64),
    }


def _digest(folder: Any) -> dict[str, bytes]:
    from pathlib import Path

    root = Path(folder)
    return (
        {p.name: p.read_bytes() for p in sorted(root.iterdir())}
        if root.is_dir()
        else {root.name: root.read_bytes()}
    )


@pytest.fixture
def single(tmp_path: Any) -> Any:
    from safetensors.torch import save_file

    folder = tmp_path / "single"
    folder.mkdir()
    save_file(_tensors(), str(folder / "diffusion_pytorch_model.safetensors"))
    (folder / "config.json").write_text("{}")
    return folder


@pytest.fixture
def sharded(tmp_path: Any) -> Any:
    """Two shards and the index, laid out as diffusers' save_pretrained writes them."""
    import json

    from safetensors.torch import save_file

    folder = tmp_path / "sharded"
    folder.mkdir()
    tensors = _tensors()
    shards = {
        "diffusion_pytorch_model-00001-of-00002.safetensors": ["a.weight", "b.bias"],
        "diffusion_pytorch_model-00002-of-00002.safetensors": ["c.scale", "d.index"],
    }
    weight_map = {}
    for name, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, str(folder / name))
        weight_map.update(dict.fromkeys(keys, name))
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    return folder


def test_corrupt_copy_flip_drop_reshape_read_back_with_safetensors(single: Any, tmp_path: Any) -> None:
    from safetensors.torch import load_file

    from fastvideo.testing import corrupt_copy

    before = _digest(single)
    ref = _tensors()
    weights = "diffusion_pytorch_model.safetensors"
    for tensor in ("a.weight", "b.bias", "c.scale"):  # fp32, bf16, fp16: every element NaN
        c = corrupt_copy(single, tmp_path / f"flip-{tensor}", "flip", tensor=tensor)
        assert c.path == tmp_path / f"flip-{tensor}" / weights and c.tensor == tensor
        got = load_file(str(c.path))
        assert got[tensor].isnan().all() and got[tensor].shape == ref[tensor].shape
        assert all(torch.equal(got[k], ref[k]) for k in ref if k != tensor)
    got = load_file(str(corrupt_copy(single, tmp_path / "flip-int", "flip", tensor="d.index").path))
    assert torch.equal(got["d.index"], ~ref["d.index"])  # integers: every bit inverted

    c = corrupt_copy(single, tmp_path / "drop", "drop", tensor="b.bias")
    got = load_file(str(c.path))
    assert set(got) == set(ref) - {"b.bias"} and all(torch.equal(got[k], ref[k]) for k in got)
    assert (tmp_path / "drop" / "config.json").read_text() == "{}"  # the rest of the folder is copied

    c = corrupt_copy(single, tmp_path / "reshape", "reshape", tensor="c.scale")
    got = load_file(str(c.path))
    assert got["c.scale"].shape == (6, 2) and torch.equal(got["c.scale"], ref["c.scale"].reshape(6, 2))
    got = load_file(str(corrupt_copy(single, tmp_path / "reshape-1d", "reshape", tensor="b.bias").path))
    assert got["b.bias"].shape == (1, 6)
    assert _digest(single) == before  # the source is never touched


def test_corrupt_copy_truncate_breaks_the_file(single: Any, tmp_path: Any) -> None:
    from safetensors import safe_open

    from fastvideo.testing import corrupt_copy

    src = single / "diffusion_pytorch_model.safetensors"
    c = corrupt_copy(single, tmp_path / "t", "truncate")
    assert c.tensor is None and 8 < c.path.stat().st_size < src.stat().st_size
    with pytest.raises(Exception):  # noqa: B017 - safetensors' own error type
        safe_open(str(c.path), framework="pt")
    # one file as src: dst is the file to write
    c = corrupt_copy(src, tmp_path / "one.safetensors", "truncate", tensor="a.weight")
    assert c.path == tmp_path / "one.safetensors" and c.path.stat().st_size < src.stat().st_size


def test_corrupt_copy_of_a_sharded_folder(sharded: Any, tmp_path: Any) -> None:
    import json

    from safetensors.torch import load_file

    from fastvideo.testing import corrupt_copy

    ref = _tensors()
    second = "diffusion_pytorch_model-00002-of-00002.safetensors"
    c = corrupt_copy(sharded, tmp_path / "drop", "drop", tensor="c.scale")  # found in the second shard
    assert c.path.name == second and set(load_file(str(c.path))) == {"d.index"}
    index = json.loads((tmp_path / "drop" / "diffusion_pytorch_model.safetensors.index.json").read_text())
    assert "c.scale" not in index["weight_map"] and index["weight_map"]["d.index"] == second
    first = tmp_path / "drop" / "diffusion_pytorch_model-00001-of-00002.safetensors"
    assert first.read_bytes() == (sharded / first.name).read_bytes()

    c = corrupt_copy(sharded, tmp_path / "flip", "flip")  # default: the first shard's first tensor
    assert c.path.name.endswith("00001-of-00002.safetensors") and c.tensor == "a.weight"
    assert load_file(str(c.path))["a.weight"].isnan().all()
    c = corrupt_copy(sharded, tmp_path / "reshape", "reshape", file=second)
    assert c.tensor == "d.index" and load_file(str(c.path))["d.index"].shape == (1, 5)  # first in file order
    assert torch.equal(load_file(str(c.path))["c.scale"], ref["c.scale"])
    c = corrupt_copy(sharded, tmp_path / "flip2", "flip", file=second)  # a floating tensor first
    assert c.tensor == "c.scale" and load_file(str(c.path))["c.scale"].isnan().all()


def test_corrupt_copy_bad_arguments_are_one_line(single: Any, tmp_path: Any) -> None:
    from fastvideo.testing import corrupt_copy

    with pytest.raises(ValueError, match="how='melt': expected one of truncate, flip, drop, reshape"):
        corrupt_copy(single, tmp_path / "x", "melt")
    with pytest.raises(ValueError, match="already exists"):
        corrupt_copy(single, single, "flip")
    with pytest.raises(ValueError, match="holds a tensor named 'nope'"):
        corrupt_copy(single, tmp_path / "y", "drop", tensor="nope")
    with pytest.raises(ValueError, match=r"has no file 'w\.safetensors'"):
        corrupt_copy(single, tmp_path / "z", "drop", file="w.safetensors")


def test_conformance_run_reference_calls_diffusers_convention_by_default() -> None:
    """The kit's reference call is ``ref(*args, return_dict=False)[0]`` unless a family overrides it."""
    import torch

    from fastvideo.testing.conformance import DiTConformance

    seen = {}

    def ref(*args, **kwargs):  # type: ignore[no-untyped-def]
        seen.update(args=args, kwargs=kwargs)
        return (args[0] * 2,)

    x = torch.ones(2)
    out = DiTConformance().run_reference(ref, (x, 3))
    assert torch.equal(out, x * 2) and seen == {"args": (x, 3), "kwargs": {"return_dict": False}}
