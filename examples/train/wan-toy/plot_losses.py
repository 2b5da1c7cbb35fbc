"""Draw the loss curves of a wan-toy training run as one SVG (no plotting library needed).

    python examples/train/wan-toy/plot_losses.py WORKDIR docs/wan-toy-loss.svg

Reads the ``metrics.jsonl`` that ``fv train`` wrote in ``WORKDIR/vae`` and ``WORKDIR/dit``, and draws
each model's loss per
step (a moving average over 25 steps, log scale) in its own panel.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

WIDTH, HEIGHT, PAD = 420, 260, 48


def _losses(path: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [(r["step"], float(r["loss"])) for r in rows if "loss" in r]


def _smooth(points: list[tuple[int, float]], window: int = 25) -> list[tuple[int, float]]:
    out = []
    for i in range(len(points)):
        chunk = points[max(0, i - window + 1) : i + 1]
        out.append((points[i][0], sum(v for _, v in chunk) / len(chunk)))
    return out


def _panel(points: list[tuple[int, float]], title: str, x0: int) -> str:
    steps = [s for s, _ in points]
    logs = [math.log10(max(v, 1e-8)) for _, v in points]
    lo, hi = math.floor(min(logs) * 2) / 2, math.ceil(max(logs) * 2) / 2
    hi = hi if hi > lo else lo + 0.5
    smax = max(steps)

    def xy(step: int, log: float) -> tuple[float, float]:
        x = x0 + PAD + (WIDTH - 1.5 * PAD) * step / smax
        y = HEIGHT - PAD + (log - lo) / (hi - lo) * -(HEIGHT - 1.7 * PAD)
        return x, y

    parts = [f'<text x="{x0 + WIDTH / 2}" y="18" text-anchor="middle" font-weight="bold">{title}</text>']
    left, bottom = x0 + PAD, HEIGHT - PAD
    parts.append(
        f'<line x1="{left}" y1="{bottom}" x2="{x0 + WIDTH - PAD / 2}" y2="{bottom}" stroke="black"/>'
    )
    parts.append(f'<line x1="{left}" y1="{bottom}" x2="{left}" y2="{0.7 * PAD}" stroke="black"/>')
    tick = lo
    while tick <= hi + 1e-9:
        _, y = xy(0, tick)
        parts.append(f'<line x1="{left - 4}" y1="{y:.1f}" x2="{left}" y2="{y:.1f}" stroke="black"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{10**tick:.3g}</text>')
        tick += 0.5
    for frac in (0, 0.5, 1):
        x, _ = xy(int(smax * frac), lo)
        parts.append(f'<text x="{x:.1f}" y="{bottom + 16}" text-anchor="middle">{int(smax * frac)}</text>')
    parts.append(f'<text x="{x0 + WIDTH / 2}" y="{HEIGHT - 8}" text-anchor="middle">step</text>')
    path = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(s, g) for s, g in zip(steps, logs, strict=True)))
    parts.append(f'<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="{path}"/>')
    return "\n".join(parts)


def main(work: str, out: str) -> None:
    vae = _losses(Path(work) / "vae" / "metrics.jsonl")
    panels = [
        _panel(_smooth(vae), "VAE: weighted L1 + MSE (+ KL)", 0),
        _panel(_smooth(_losses(Path(work) / "dit" / "metrics.jsonl")), "DiT: flow-matching MSE", WIDTH),
    ]
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * WIDTH}" height="{HEIGHT}" '
        f'font-family="sans-serif" font-size="11">\n<rect width="100%" height="100%" fill="white"/>\n'
        + "\n".join(panels)
        + "\n</svg>\n"
    )
    Path(out).write_text(svg)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: plot_losses.py WORKDIR OUT.svg")
    main(sys.argv[1], sys.argv[2])
