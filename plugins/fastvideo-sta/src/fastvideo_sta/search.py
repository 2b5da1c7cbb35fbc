"""Mask search: measure every candidate window per (step, layer, head) against dense attention, then
pick the strategy with the lowest error under a target sparsity.

How it runs (``fv sta search``, or :func:`search` from Python): the model generates with the ``sta``
backend and its option ``search`` set to the candidate windows. Attention stays dense (so the sampling
trajectory is the dense one), and in every sparse attention layer the backend also runs each candidate
for all heads and records the mean squared error of each head's output against the dense output
(:func:`record`, averaged over prompts, CFG branches and batch). :func:`choose` then assigns one
window per (step, layer, head): the first ``full_steps`` steps get the whole grid; the others minimise
``error + lam * kept_fraction``, with ``lam`` found by bisection so that the mean kept fraction over
those steps is at most ``1 - sparsity`` (the whole grid is always a candidate, at zero error).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastvideo_sta.strategy import Strategy, save_strategy, write_json_atomic
from fastvideo_sta.tiles import TileGeometry, Window, parse_triple

if TYPE_CHECKING:
    import torch

    from fastvideo.attention.context import StepContext

#: The candidates of the anchor's HunyuanVideo search (windows in 6x8x8 tiles); they clamp to the grid.
DEFAULT_CANDIDATES = "5,3,3;1,6,10;3,3,5;5,1,10;5,6,1"


@dataclass
class Recorder:
    """Squared errors against dense attention, summed per (step, layer, head) and candidate."""

    sums: dict[tuple[int, int, int], dict[Window, list[float]]] = field(default_factory=dict)
    grid: tuple[int, int, int] | None = None
    tile: tuple[int, int, int] | None = None

    def add(self, step: int, layer: int, head: int, window: Window, error: float) -> None:
        cell = self.sums.setdefault((step, layer, head), {}).setdefault(window, [0.0, 0])
        cell[0] += error
        cell[1] += 1

    def errors(self) -> dict[tuple[int, int, int], dict[Window, float]]:
        """Mean error of each candidate per (step, layer, head)."""
        return {key: {w: s / max(1, n) for w, (s, n) in cells.items()} for key, cells in self.sums.items()}

    def clear(self) -> None:
        self.sums.clear()
        self.grid = self.tile = None


#: What the ``sta`` backend records while ``search`` is set (one generation at a time per process).
RECORDER = Recorder()


def record(
    backend: Any,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    dense: torch.Tensor,
    attn_mask: torch.Tensor | None,
    scale: float | None,
    step: StepContext,
    values: Mapping[str, Any],
    tag: torch.Tensor | None,
) -> None:
    """Run each candidate window for all heads of this call and record each head's error."""
    import torch

    from fastvideo_sta.backend import parse_candidates

    if tag is None:
        raise ValueError(
            "sta mask search records errors per layer, but this attention call comes from no numbered "
            "sparse attention layer (the model lists none in sparse_attention_layers)"
        )
    geom = TileGeometry(tuple(step.grid), parse_triple(values["tile"], "tile"))  # type: ignore[arg-type]
    ids = tag[0, 0, :, :2].round().long().tolist()  # (H, 2): head, layer
    RECORDER.grid, RECORDER.tile = geom.grid, geom.tile
    with torch.no_grad():
        for window in parse_candidates(values["search"]):
            window = geom.clamp(window)
            out = backend.attend(q, k, v, geom, window, attn_mask, scale)
            err = (out.float() - dense.float()).pow(2).mean(dim=(0, 1, 3)).tolist()  # (H,)
            for (head, layer), e in zip(ids, err, strict=True):
                RECORDER.add(step.step_index, layer, head, window, e)


def choose(
    errors: Mapping[tuple[int, int, int], Mapping[Window, float]],
    geom: TileGeometry,
    sparsity: float,
    full_steps: int = 0,
) -> tuple[Strategy, dict[str, float]]:
    """The strategy of lowest total error whose sparse steps keep at most ``1 - sparsity`` of the
    video attention on average, and a summary (achieved sparsity, mean error, ``lam``).

    :raises ValueError: ``sparsity`` outside [0, 1), no recorded errors, or candidates too dense to
        reach ``sparsity`` (the message gives the sparsest achievable).
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"target sparsity must be in [0, 1), got {sparsity!r}")
    if not errors:
        raise ValueError("no errors were recorded: the search ran no sparse attention layer")
    full = geom.tile_grid
    num_steps = max(s for s, _, _ in errors) + 1
    layers = max(layer for _, layer, _ in errors) + 1
    heads = max(h for _, _, h in errors) + 1
    cells = [
        (s, layer, h) for s in range(full_steps, num_steps) for layer in range(layers) for h in range(heads)
    ]
    missing = [c for c in cells if c not in errors]
    if missing:
        raise ValueError(
            f"errors are missing for {len(missing)} (step, layer, head) cells, e.g. {missing[0]}"
        )
    kept = {}
    options: dict[tuple[int, int, int], list[tuple[float, float, Window]]] = {}
    for c in cells:
        opts = {full: 0.0, **{geom.clamp(w): e for w, e in errors[c].items()}}
        for w in opts:
            kept.setdefault(w, geom.kept_fraction(w))
        options[c] = [(e, kept[w], w) for w, e in opts.items()]

    def pick(lam: float) -> tuple[list[Window], float, float]:
        chosen, total_kept, total_err = [], 0.0, 0.0
        for c in cells:
            e, k, w = min(options[c], key=lambda o: (o[0] + lam * o[1], o[1]))
            chosen.append(w)
            total_kept += k
            total_err += e
        n = max(1, len(cells))
        return chosen, total_kept / n, total_err / n

    budget = 1.0 - sparsity
    chosen, mean_kept, mean_err = pick(0.0)
    lam = 0.0
    if mean_kept > budget + 1e-12:
        lo, hi = 0.0, 1.0
        while pick(hi)[1] > budget + 1e-12:
            hi *= 4.0
            if hi > 1e30:
                sparsest = 1.0 - pick(math.inf)[1] if cells else 0.0
                raise ValueError(
                    f"the candidate windows cannot reach sparsity {sparsity:g}; the sparsest they reach is "
                    f"{sparsest:.3f}: add smaller candidates (--candidates) or lower --sparsity"
                )
        for _ in range(60):
            mid = (lo + hi) / 2
            if pick(mid)[1] > budget + 1e-12:
                lo = mid
            else:
                hi = mid
        lam = hi
        chosen, mean_kept, mean_err = pick(hi)
    windows: dict[tuple[int, int, int], Window] = {}
    for s in range(full_steps):
        for layer in range(layers):
            for h in range(heads):
                windows[(s, layer, h)] = full
    windows.update(zip(cells, chosen, strict=True))
    summary = {"sparsity": 1.0 - mean_kept, "mean_error": mean_err, "lam": lam}
    strategy = Strategy(windows)
    summary["overall_sparsity"] = strategy.sparsity(geom)
    return strategy, summary


def errors_json(errors: Mapping[tuple[int, int, int], Mapping[Window, float]]) -> dict[str, dict[str, float]]:
    """``{"step_layer_head": {"t,h,w": error}}``: the recorded errors, for the record."""
    return {
        f"{s}_{layer}_{h}": {",".join(map(str, w)): e for w, e in cells.items()}
        for (s, layer, h), cells in sorted(errors.items())
    }


def search(
    model: str,
    prompts: Sequence[str],
    *,
    output: str | os.PathLike[str],
    sparsity: float,
    candidates: str = DEFAULT_CANDIDATES,
    full_steps: int = 0,
    tile: str = "6,8,8",
    errors_path: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    generator_options: Mapping[str, Any] | None = None,
    **sampling: Any,
) -> dict[str, Any]:
    """Search a strategy for ``model`` on ``prompts`` and write it to ``output`` (atomically).

    :param sampling: :class:`fastvideo.configs.SamplingParams` fields (``num_frames``, ``height``,
        ``num_inference_steps``, ...): the search is for that shape and step count.
    :returns: the summary of :func:`choose` plus ``output`` (and ``errors`` when written).
    :raises ValueError: no prompts, a bad candidate list or sparsity; ``FileExistsError`` for an
        existing output without ``overwrite`` (checked before any work).
    """
    from fastvideo import VideoGenerator
    from fastvideo_sta.backend import parse_candidates

    if not prompts:
        raise ValueError("give at least one prompt (--prompt)")
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"--sparsity must be in [0, 1), got {sparsity!r}")
    parse_candidates(candidates)
    for path in (output, errors_path):
        if path is not None and Path(path).expanduser().exists() and not overwrite:
            raise FileExistsError(
                f"{str(path)!r} exists; pass --overwrite to replace it or choose another path"
            )
    options = {"sta": {"search": candidates, "tile": tile}}
    gen = VideoGenerator.from_pretrained(model, attention_backend="sta", **dict(generator_options or {}))
    RECORDER.clear()
    try:
        for prompt in prompts:
            gen.generate_video(prompt, backend_options=options, **sampling)
        if RECORDER.grid is None:
            raise ValueError(
                "the search ran no sparse attention layer (does the model list sparse_attention_layers?)"
            )
        geom = TileGeometry(RECORDER.grid, RECORDER.tile or parse_triple(tile, "tile"))
        errors = RECORDER.errors()
    finally:
        RECORDER.clear()
    strategy, summary = choose(errors, geom, sparsity, full_steps)
    save_strategy(strategy, output, overwrite=overwrite)
    result: dict[str, Any] = {**summary, "output": str(output), "grid": list(geom.grid)}
    if errors_path is not None:
        write_json_atomic(errors_json(errors), errors_path, overwrite=overwrite)
        result["errors"] = str(errors_path)
    return result
