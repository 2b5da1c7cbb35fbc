"""Mask search: errors recorded per (step, layer, head) against dense attention, the choice under a
target sparsity, and ``fv sta search`` on a tiny Wan checkpoint (written by the installed family
plugin, used as a user would)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from fastvideo.attention import ALL, StepContext, attention, step_context, use_backend
from fastvideo.attention.layers import attach_layer_modules
from fastvideo.attention.options import resolve_options
from fastvideo.testing import fake_plugins
from fastvideo_sta import plugin as sta_plugin
from fastvideo_sta.ops import sta_attention_reference
from fastvideo_sta.search import RECORDER, choose, search
from fastvideo_sta.strategy import load_strategy
from fastvideo_sta.tiles import TileGeometry

DISTRIBUTIONS = ("fastvideo-sta", "fastvideo-wan", "fastvideo-hunyuan")
GRID, TILE = (3, 5, 7), (2, 4, 4)
HEADS, DIM = 2, 16


def test_choose_meets_the_sparsity_with_the_least_error_per_cell() -> None:
    geom = TileGeometry((4, 8, 8), (2, 4, 4))  # tile grid (2, 2, 2)
    small, mid = (1, 1, 1), (2, 1, 1)  # keep 1/8 and 1/4
    errors = {
        (s, 0, h): {small: 0.3 + 0.1 * h + s, mid: 0.1 * h + 0.05 * s} for s in range(3) for h in range(2)
    }
    dense, _ = choose(errors, geom, 0.0, full_steps=1)
    assert set(dense.windows.values()) == {(2, 2, 2)}  # no sparsity asked: the whole grid, zero error
    strategy, summary = choose(errors, geom, 0.7, full_steps=1)
    assert all(strategy.window(0, 0, h) == (2, 2, 2) for h in range(2))  # the full steps
    assert summary["sparsity"] >= 0.7 - 1e-9
    assert strategy.sparsity(geom, range(1, 3)) == pytest.approx(summary["sparsity"])
    # every cell takes the option minimising error + lam * kept (the Lagrangian optimum)
    lam = summary["lam"]
    for (s, layer, h), cands in errors.items():
        if s == 0:
            continue
        options = {(2, 2, 2): 0.0, **cands}
        best = min(options, key=lambda w: (options[w] + lam * geom.kept_fraction(w), geom.kept_fraction(w)))
        assert strategy.window(s, layer, h) == best
    strategy, summary = choose(errors, geom, 0.875)  # only the smallest windows everywhere
    assert set(strategy.windows.values()) == {small}
    with pytest.raises(ValueError, match=r"sparsest they reach is 0\.875"):
        choose(errors, geom, 0.9)


class _Self(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(DIM * HEADS, 3 * DIM * HEADS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).unflatten(-1, (3, HEADS, DIM)).unbind(2)
        return attention(q, k, v, allow=ALL)


class _Model(nn.Module):
    sparse_attention_layers = ("layers.*",)

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([_Self(), _Self()])


def test_search_mode_records_each_candidates_error_and_keeps_attention_dense() -> None:
    torch.manual_seed(0)
    x = torch.randn(1, math.prod(GRID), DIM * HEADS)
    candidates = [(1, 1, 1), (2, 1, 2)]
    with fake_plugins(sta_plugin):
        model = _Model()
        attach_layer_modules(model, "sta")
        options = resolve_options("sta", {"sta": {"search": "1,1,1;2,1,2", "tile": "2,4,4"}})
        RECORDER.clear()
        try:
            with use_backend("sta"), torch.no_grad():
                with step_context(StepContext(grid=GRID, step_index=1, options=options)):
                    outs = [layer(x) for layer in model.layers]
            errors = RECORDER.errors()
        finally:
            RECORDER.clear()
    assert set(errors) == {(1, layer, h) for layer in range(2) for h in range(HEADS)}
    for layer, out in zip(model.layers, outs, strict=True):
        with torch.no_grad():
            q, k, v = layer.qkv(x).unflatten(-1, (3, HEADS, DIM)).unbind(2)
        dense = torch.nn.functional.scaled_dot_product_attention(
            *(t.transpose(1, 2) for t in (q, k, v))
        ).transpose(1, 2)
        torch.testing.assert_close(out, dense)  # the search runs on the dense trajectory
        index = list(model.layers).index(layer)
        for window in candidates:
            sparse = sta_attention_reference(q, k, v, GRID, window, tile=TILE)
            expected = (sparse - dense).pow(2).mean(dim=(0, 1, 3))
            for h in range(HEADS):
                assert errors[(1, index, h)][window] == pytest.approx(float(expected[h]), rel=1e-4, abs=1e-9)


@pytest.mark.slow
def test_fv_sta_search_writes_a_strategy_that_generates(checkpoints: Any, tmp_path: Path) -> None:
    from fastvideo import VideoGenerator

    out, errors = tmp_path / "strategy.json", tmp_path / "errors.json"
    shape = dict(num_frames=9, height=64, width=64, num_inference_steps=2, guidance_scale=1.0)
    with fake_plugins(autoload=DISTRIBUTIONS):
        summary = search(
            str(checkpoints("wan")),
            ["a red ball", "a blue square"],
            output=out,
            sparsity=0.5,
            candidates="1,1,1;2,1,1",
            full_steps=1,
            tile="1,4,4",
            errors_path=errors,
            generator_options={"device": "cpu"},
            **shape,
        )
        strategy = load_strategy(out)
        assert (strategy.num_steps, strategy.num_layers, strategy.num_heads) == (2, 2, 2)
        assert {strategy.window(0, layer, h) for layer in range(2) for h in range(2)} == {(3, 1, 1)}
        assert summary["sparsity"] >= 0.5 and summary["grid"] == [3, 4, 4]
        recorded = json.loads(errors.read_text())
        assert set(recorded) == {f"{s}_{layer}_{h}" for s in range(2) for layer in range(2) for h in range(2)}
        assert set(recorded["1_1_1"]) == {"1,1,1", "2,1,1"}
        with pytest.raises(FileExistsError, match="--overwrite"):
            search(str(checkpoints("wan")), ["x"], output=out, sparsity=0.5)
        gen = VideoGenerator.from_pretrained(str(checkpoints("wan")), attention_backend="sta", device="cpu")
        result = gen.generate_video(
            "a red ball", backend_options={"sta": {"strategy": str(out), "tile": "1,4,4"}}, **shape
        )
        assert torch.isfinite(result.latents).all()


def _fv(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from fastvideo.cli import main

    with fake_plugins(sta_plugin):
        try:
            main(args)
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_fv_sta_fixed_and_info(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "fixed.json"
    args = ["sta", "fixed", str(path), "--window", "3,3,3", "--steps", "4", "--layers", "2", "--heads", "3"]
    code, out, _ = _fv([*args, "--full-steps", "1", "--full", "5,6,10"], capsys)
    assert code == 0 and "4 steps x 2 layers x 3 heads" in out
    s = load_strategy(path)
    assert s.window(0, 1, 2) == (5, 6, 10) and s.window(3, 0, 0) == (3, 3, 3)
    code, _, err = _fv(args, capsys)  # exists: refused, one line, nothing changed
    assert (
        code == 2
        and err.strip()
        == f"error: {str(path)!r} exists; pass --overwrite to replace it or choose another path"
    )
    code, _, err = _fv([*args[:-2], "--heads", "3", "--window", "3,3"], capsys)
    assert code == 2 and err.strip().startswith("error: --window must be three positive integers")
    code, out, _ = _fv(["sta", "info", str(path), "--grid", "30,48,80"], capsys)
    kept = TileGeometry((30, 48, 80)).kept_fraction((3, 3, 3))
    assert code == 0 and f"sparsity {0.75 * (1 - kept):.3f}" in out
