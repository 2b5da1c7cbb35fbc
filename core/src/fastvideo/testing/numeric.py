"""Numerical comparisons for kernels, models and pipelines, relative to the reference's scale."""

from __future__ import annotations

from typing import Any


def _as_float64(x: Any) -> Any:
    import torch

    return torch.as_tensor(x).detach().to("cpu", torch.float64)


def rel_error(ref: Any, out: Any) -> float:
    """``max |out - ref| / max |ref|`` in float64 (the absolute error when ``ref`` is all zero).

    Accepts torch tensors, numpy arrays and nested lists; only finite entries count.
    """
    ref64, out64 = _as_float64(ref), _as_float64(out)
    finite = ref64.isfinite() & out64.isfinite()
    if not bool(finite.any()):
        return 0.0
    err = float((out64 - ref64)[finite].abs().max())
    scale = float(ref64[finite].abs().max())
    return err / scale if scale > 0 else err


def assert_close(name: str, ref: Any, out: Any, ratio: float, *, atol: float = 0.0) -> None:
    """Assert ``max |out - ref| <= ratio * max |ref| + atol``, with a message that explains a failure.

    The tolerance scales with the reference (so one ``ratio`` works for logits and for gradients
    of any magnitude). Shapes must match, and ``out`` must be NaN/inf exactly where ``ref`` is.

    :param name: what is compared (``"out"``, ``"dq"``), shown in the message.
    :param ratio: allowed error relative to the reference's largest magnitude, e.g. ``1e-5`` for
        fp32 against an fp32 reference, ``1e-2`` for bf16.
    :param atol: absolute slack for references that are (nearly) zero.
    """
    ref64, out64 = _as_float64(ref), _as_float64(out)
    if tuple(ref64.shape) != tuple(out64.shape):
        raise AssertionError(
            f"{name}: shape {tuple(out64.shape)} differs from the reference's {tuple(ref64.shape)}"
        )
    ref_bad, out_bad = ~ref64.isfinite(), ~out64.isfinite()
    same = (ref64 == out64) | (ref64.isnan() & out64.isnan())
    mismatch = (ref_bad | out_bad) & ~same
    if bool(mismatch.any()):
        first = tuple(int(i) for i in mismatch.nonzero()[0].tolist())
        raise AssertionError(
            f"{name}: non-finite values differ from the reference ({int(out_bad.sum())} in output, "
            f"{int(ref_bad.sum())} in reference; first mismatch at {first})"
        )
    if ref64.numel() == 0:
        return
    finite = ~ref_bad
    diff = _zero_outside(out64 - ref64, finite).abs()
    err = float(diff.max())
    scale = float(_zero_outside(ref64, finite).abs().max())
    allowed = ratio * scale + atol
    if err > allowed:
        idx = tuple(int(i) for i in (diff == err).nonzero()[0].tolist())
        raise AssertionError(
            f"{name}: max error {err:.4g} at {idx} (reference {float(ref64[idx]):.6g}, got "
            f"{float(out64[idx]):.6g}) exceeds ratio {ratio:g} x scale {scale:.4g} + atol {atol:g} = "
            f"{allowed:.4g} (relative error {err / scale if scale else float('inf'):.3g})"
        )


def assert_no_worse(
    name: str, ref: Any, out: Any, baseline: Any, *, factor: float = 2.0, atol: float = 1e-6
) -> None:
    """For low precision: ``rel_error(ref, out) <= factor * rel_error(ref, baseline) + atol``.

    ``baseline`` is the same computation done by plain torch in the same dtype as ``out``, so a
    kernel is held to the error that dtype makes anyway.
    """
    err, base = rel_error(ref, out), rel_error(ref, baseline)
    if err > factor * base + atol:
        raise AssertionError(
            f"{name}: relative error {err:.4g} exceeds {factor:g} x the baseline's {base:.4g} + atol {atol:g}"
        )


def _zero_outside(x: Any, keep: Any) -> Any:
    """``x`` with the entries outside ``keep`` set to zero."""
    return x.masked_fill(~keep, 0.0)
