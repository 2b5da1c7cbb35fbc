"""The public test kit itself: the numerical checks must pass and fail where they should."""

from __future__ import annotations

import re

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
