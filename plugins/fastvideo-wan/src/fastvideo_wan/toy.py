"""A procedural toy video dataset and a pixel-based evaluator for it (numpy only, deterministic).

Each clip shows one object of a colour and a shape moving in a direction at constant speed over a
plain background; its caption follows the grammar
``"a {colour} {shape} moving {direction} on a {background} background"``.

Some (colour, shape, direction, background) combinations are held out: the training split never
contains them, so a model trained on it can be tested on unseen compositions of seen words
(:func:`held_out_prompts`). Every single word and every pair of words still occurs in training.

The evaluator reads the attributes back from the pixels: the background is the median of the frame
border; the object is the pixels that differ from it by more than a fixed threshold and by at least
half of the object's own contrast (its edge, wherever a blur puts it); colour is the palette entry
nearest to the object's median colour; shape is, frame by frame, the ideal shape (square, circle,
apex-up triangle) that, drawn in the object's bounding box, overlaps the object best (intersection
over union), and then the most frequent one over the frames; direction is the displacement of the
object's centroid from the first to the last frame. Ground-truth clips score 100%, also blurred
(tests/test_toy.py).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 40),
    "blue": (40, 80, 230),
    "yellow": (230, 220, 40),
    "white": (245, 245, 245),
    "magenta": (220, 50, 220),
    "cyan": (40, 220, 220),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"black": (0, 0, 0), "gray": (110, 110, 110)}
SPLITS = ("train", "held-out")
MANIFEST = "captions.json"

# unit step of each direction in image coordinates (x right, y down)
_STEPS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
_FOREGROUND_THRESHOLD = 40  # max channel difference from the background that counts as object
_PROMPT_RE = re.compile(r"^an? (\w+) (\w+) moving (\w+) on an? (\w+) background$")


class Combo(NamedTuple):
    colour: str
    shape: str
    direction: str
    background: str


def caption(combo: Combo) -> str:
    """The prompt of a combination, e.g. ``"a red circle moving left on a black background"``."""
    return (
        f"{_article(combo.colour)} {combo.colour} {combo.shape} moving {combo.direction} "
        f"on {_article(combo.background)} {combo.background} background"
    )


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def parse_prompt(prompt: str) -> Combo:
    """The combination a prompt of the grammar names; ValueError for anything else."""
    match = _PROMPT_RE.match(prompt.strip().lower())
    if match is None:
        raise ValueError(f"not a toy prompt: {prompt!r}")
    combo = Combo(*match.groups())
    for value, vocab in zip(combo, (COLOURS, SHAPES, DIRECTIONS, BACKGROUNDS), strict=True):
        if value not in vocab:
            raise ValueError(f"unknown word {value!r} in toy prompt {prompt!r}")
    return combo


def all_combinations() -> list[Combo]:
    return [Combo(*c) for c in itertools.product(COLOURS, SHAPES, DIRECTIONS, BACKGROUNDS)]


def is_held_out(combo: Combo) -> bool:
    """Fixed rule: the sum of the four vocabulary indices is divisible by 3 (56 of 168 combinations).

    Since the direction index alone runs over 4 consecutive values, every (colour, shape) pair, and
    likewise every other pair of attributes, still occurs in the training split.
    """
    idx = (
        list(COLOURS).index(combo.colour)
        + SHAPES.index(combo.shape)
        + DIRECTIONS.index(combo.direction)
        + list(BACKGROUNDS).index(combo.background)
    )
    return idx % 3 == 0


def split_combinations(split: str = "train") -> list[Combo]:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    return [c for c in all_combinations() if is_held_out(c) == (split == "held-out")]


def held_out_prompts() -> list[str]:
    """The prompts of the held-out combinations (never in the training split), in a fixed order."""
    return [caption(c) for c in split_combinations("held-out")]


def train_prompts() -> list[str]:
    return [caption(c) for c in split_combinations("train")]


def render_clip(combo: Combo, rng: np.random.Generator, *, frames: int = 17, size: int = 64) -> np.ndarray:
    """uint8 ``(frames, size, size, 3)``: the object moving at constant speed, fully inside the frame.

    ``rng`` jitters the object's size, speed and start position.
    """
    if frames < 2 or size < 48:
        raise ValueError(f"need frames >= 2 and size >= 48, got frames={frames} size={size}")
    margin = 2.0
    side = float(rng.uniform(0.36, 0.46) * size)  # a third to a half of the frame: shapes stay legible
    room = size - 2 * margin - side  # range of the object's top-left corner along an axis
    travel = float(rng.uniform(0.4, 0.6) * room)
    dx, dy = _STEPS[combo.direction]
    # start so the whole path stays inside: along the motion axis leave `travel` of room ahead
    cx0 = margin + side / 2 + rng.uniform(0, room - travel * abs(dx))
    cy0 = margin + side / 2 + rng.uniform(0, room - travel * abs(dy))
    if dx < 0:
        cx0 += travel
    if dy < 0:
        cy0 += travel
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5  # pixel centres
    video = np.empty((frames, size, size, 3), np.uint8)
    video[:] = BACKGROUNDS[combo.background]
    for t in range(frames):
        f = t / (frames - 1)
        mask = _shape_mask(combo.shape, xs, ys, cx0 + dx * travel * f, cy0 + dy * travel * f, side)
        video[t][mask] = COLOURS[combo.colour]
    return video


def _shape_mask(shape: str, xs: np.ndarray, ys: np.ndarray, cx: float, cy: float, side: float) -> np.ndarray:
    half = side / 2
    if shape == "circle":
        return (xs - cx) ** 2 + (ys - cy) ** 2 <= half**2
    if shape == "square":
        return (np.abs(xs - cx) <= half) & (np.abs(ys - cy) <= half)
    if shape == "triangle":  # apex up, base at the bottom, as wide as it is tall
        top = cy - half
        return (ys >= top) & (ys <= cy + half) & (np.abs(xs - cx) <= (ys - top) / 2)
    raise ValueError(f"unknown shape {shape!r}")


def make_clip(
    seed: int, index: int, *, split: str = "train", frames: int = 17, size: int = 64
) -> tuple[np.ndarray, str]:
    """Clip ``index`` of a split for ``seed``: (frames, caption). Independent of how many are made."""
    combos = split_combinations(split)
    rng = np.random.default_rng([seed, index, SPLITS.index(split)])
    combo = combos[int(rng.integers(len(combos)))]
    return render_clip(combo, rng, frames=frames, size=size), caption(combo)


def generate(
    num: int, seed: int = 0, *, split: str = "train", frames: int = 17, size: int = 64
) -> Iterator[tuple[np.ndarray, str]]:
    for i in range(num):
        yield make_clip(seed, i, split=split, frames=frames, size=size)


def write_dataset(
    out: str | Path,
    num: int,
    seed: int = 0,
    *,
    split: str = "train",
    frames: int = 17,
    size: int = 64,
    fps: int = 16,
    overwrite: bool = False,
    format: str = "mp4",
) -> Path:
    """Write ``num`` clips and ``captions.json`` (the ``fv preprocess`` manifest) into ``out``.

    ``format``: ``mp4`` (lossless H.264, needs imageio-ffmpeg) or ``npy`` (uint8 ``(T, H, W, 3)``
    arrays, read by ``fv preprocess`` and the ``vae`` training algorithm without ffmpeg).
    Returns the manifest's path; clips are ``clip-NNNNN.<format>``, paths relative to ``out``.
    """
    from fastvideo.errors import OutputPathError
    from fastvideo.training.data import write_json_atomic
    from fastvideo.video import write_mp4

    if num < 1:
        raise ValueError(f"num must be >= 1, got {num}")
    if format not in ("mp4", "npy"):
        raise ValueError(f"format must be mp4 or npy, got {format!r}")
    make_clip(seed, 0, split=split, frames=frames, size=size)  # check the options before writing
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, (video, text) in enumerate(generate(num, seed, split=split, frames=frames, size=size)):
        name = f"clip-{i:05d}.{format}"
        if format == "mp4":
            write_mp4(video, out / name, fps, overwrite=overwrite, lossless=True)
        else:
            if (out / name).exists() and not overwrite:
                raise OutputPathError(f"{out / name} already exists; pass --overwrite to replace it")
            np.save(out / name, video)
        entries.append({"path": name, "caption": text})
    manifest = out / MANIFEST
    write_json_atomic(manifest, entries)
    return manifest


# ---------------------------------------------------------------------------------------- evaluator


def _nearest(colour: np.ndarray, palette: dict[str, tuple[int, int, int]]) -> str:
    names = list(palette)
    dist = np.linalg.norm(np.asarray([palette[n] for n in names], np.float64) - colour, axis=1)
    return names[int(np.argmin(dist))]


def _ideal_shapes(height: int, width: int) -> dict[str, np.ndarray]:
    """Masks of each shape filling a ``height x width`` box, in the order of :data:`SHAPES`."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5
    u, v = xs / width, ys / height
    masks = {
        "circle": (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25,
        "square": np.ones((height, width), bool),
        "triangle": np.abs(u - 0.5) <= v / 2,  # apex at the top centre, base along the bottom
    }
    return {name: masks[name] for name in SHAPES}


def _shape_of(mask: np.ndarray) -> str:
    """The shape whose ideal mask in ``mask``'s bounding box has the highest IoU with it."""
    ys, xs = np.nonzero(mask)
    crop = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    ious = {
        name: float((crop & ideal).sum() / (crop | ideal).sum())
        for name, ideal in _ideal_shapes(*crop.shape).items()
    }
    return max(ious, key=ious.__getitem__)


def detect(frames: Any) -> dict[str, str | None]:
    """The attributes read from uint8 ``(T, H, W, 3)`` pixels; None where no object is found."""
    video = np.asarray(frames)
    if video.ndim != 4 or video.shape[-1] != 3 or video.shape[0] < 2:
        raise ValueError(f"frames must be (T, H, W, 3) with T >= 2, got {tuple(video.shape)}")
    video = video.astype(np.int16)
    colours: list[np.ndarray] = []
    shapes: list[str] = []
    centroids: list[tuple[float, float] | None] = []
    backgrounds: list[np.ndarray] = []
    for frame in video:
        border = np.concatenate([frame[0], frame[-1], frame[1:-1, 0], frame[1:-1, -1]])
        bg = np.median(border, axis=0)
        backgrounds.append(bg)
        diff = np.abs(frame - bg).max(axis=-1)
        mask = diff > _FOREGROUND_THRESHOLD
        if mask.sum() < 4:
            centroids.append(None)
            continue
        contrast = np.percentile(diff[mask], 90)  # the object's own difference from the background
        mask &= diff >= 0.5 * contrast
        ys, xs = np.nonzero(mask)
        shapes.append(_shape_of(mask))
        colours.append(frame[mask])
        centroids.append((float(xs.mean()), float(ys.mean())))
    result: dict[str, str | None] = {
        "colour": None,
        "shape": None,
        "direction": None,
        "background": _nearest(np.median(np.stack(backgrounds), axis=0), BACKGROUNDS),
    }
    if colours:
        result["colour"] = _nearest(np.median(np.concatenate(colours), axis=0), COLOURS)
        result["shape"] = max(SHAPES, key=shapes.count)  # the most frequent; ties in SHAPES order
    first, last = centroids[0], centroids[-1]
    if first is not None and last is not None:
        dx, dy = last[0] - first[0], last[1] - first[1]
        if max(abs(dx), abs(dy)) >= 1.0:  # a still object has no direction
            if abs(dx) >= abs(dy):
                result["direction"] = "right" if dx > 0 else "left"
            else:
                result["direction"] = "down" if dy > 0 else "up"
    return result


def score_clip(frames: Any, prompt: str) -> dict[str, bool]:
    """Per attribute (colour, shape, direction, background): whether the pixels match the prompt."""
    want = parse_prompt(prompt)
    got = detect(frames)
    return {key: got[key] == getattr(want, key) for key in Combo._fields}


def evaluate(videos_and_prompts: Iterable[tuple[Any, str]]) -> dict[str, float]:
    """Accuracy per attribute over ``(frames, prompt)`` pairs: ``{colour, shape, direction, background}``."""
    totals = dict.fromkeys(Combo._fields, 0)
    count = 0
    for frames, prompt in videos_and_prompts:
        for key, ok in score_clip(frames, prompt).items():
            totals[key] += int(ok)
        count += 1
    if count == 0:
        raise ValueError("evaluate needs at least one (frames, prompt) pair")
    return {key: totals[key] / count for key in Combo._fields}
