"""The procedural toy dataset and its pixel evaluator (CPU, numpy; a few lossless mp4 round trips)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fastvideo.training.preprocess import read_captions
from fastvideo.video import read_mp4, write_mp4
from fastvideo_wan import toy
from fastvideo_wan.commands import wan_app

GRAMMAR = re.compile(
    rf"^a ({'|'.join(toy.COLOURS)}) ({'|'.join(toy.SHAPES)}) moving ({'|'.join(toy.DIRECTIONS)}) "
    rf"on a ({'|'.join(toy.BACKGROUNDS)}) background$"
)
OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}


def test_vocabulary_is_large_enough() -> None:
    assert len(toy.COLOURS) >= 5 and len(toy.SHAPES) >= 3
    assert len(toy.DIRECTIONS) == 4 and len(toy.BACKGROUNDS) >= 2
    assert len(set(toy.COLOURS.values()) | set(toy.BACKGROUNDS.values())) == len(toy.COLOURS) + len(
        toy.BACKGROUNDS
    )


def test_generator_is_deterministic() -> None:
    a, cap_a = toy.make_clip(3, 5)
    b, cap_b = toy.make_clip(3, 5)
    assert a.dtype == np.uint8 and a.shape == (17, 64, 64, 3)
    assert np.array_equal(a, b) and cap_a == cap_b
    others = [toy.make_clip(4, 5)[0], toy.make_clip(3, 6)[0], toy.make_clip(3, 5, split="held-out")[0]]
    assert all(not np.array_equal(a, o) for o in others)
    # clip i does not depend on how many clips are generated
    assert np.array_equal(list(toy.generate(8, 3))[5][0], a)
    small = toy.make_clip(0, 0, frames=5, size=48)[0]
    assert small.shape == (5, 48, 48, 3)
    with pytest.raises(ValueError, match="size >= 48"):
        toy.make_clip(0, 0, size=16)


def test_captions_follow_the_grammar() -> None:
    for split in toy.SPLITS:
        for _, text in toy.generate(40, 1, split=split):
            assert GRAMMAR.match(text), text
            assert toy.caption(toy.parse_prompt(text)) == text
    assert toy.caption(toy.Combo("red", "circle", "left", "black")) == (
        "a red circle moving left on a black background"
    )
    for bad in ("a purple circle moving left on a black background", "a red circle", ""):
        with pytest.raises(ValueError):
            toy.parse_prompt(bad)


def test_splits_are_disjoint_and_cover_every_pair() -> None:
    train, held = set(toy.train_prompts()), set(toy.held_out_prompts())
    assert len(held) >= 50 and len(held) == len(toy.held_out_prompts())
    assert not train & held
    assert len(train) + len(held) == len(toy.all_combinations())
    assert toy.held_out_prompts() == toy.held_out_prompts()  # fixed order
    # generated training clips never use a held-out combination, and vice versa
    assert {c for _, c in toy.generate(200, 0)} <= train
    assert {c for _, c in toy.generate(100, 0, split="held-out")} <= held
    # every pair of attribute values is still seen in training (only the combination is new)
    combos = toy.split_combinations("train")
    for i in range(4):
        for j in range(i + 1, 4):
            seen = {(c[i], c[j]) for c in combos}
            assert seen == {(c[i], c[j]) for c in toy.all_combinations()}


def test_evaluator_scores_ground_truth_perfectly() -> None:
    clips = list(toy.generate(60, 11)) + list(toy.generate(30, 11, split="held-out"))
    clips += list(toy.generate(10, 12, frames=5, size=48)) + list(toy.generate(10, 13, size=96))
    assert toy.evaluate(clips) == {"colour": 1.0, "shape": 1.0, "direction": 1.0, "background": 1.0}
    # all attribute values are exercised
    combos = [toy.parse_prompt(c) for _, c in clips]
    for i, vocab in enumerate((toy.COLOURS, toy.SHAPES, toy.DIRECTIONS, toy.BACKGROUNDS)):
        assert {c[i] for c in combos} == set(vocab)


@pytest.mark.parametrize("sigma", [1.0, 2.0])
def test_evaluator_reads_blurred_ground_truth(sigma: float) -> None:
    """A decoder's output is soft-edged: a Gaussian blur of the ground truth (sigma 1 or 2 pixels,
    i.e. edges smeared over 5 to 10 pixels) still reads back as the prompt. The former bounding-box
    fill-ratio rule read 78% of the shapes right at sigma 2 (docs/wan-toy.md)."""
    from scipy.ndimage import gaussian_filter

    clips = list(toy.generate(40, 3, split="held-out")) + list(toy.generate(20, 4))
    blurred = [
        (
            np.clip(gaussian_filter(v.astype(np.float64), (0, sigma, sigma, 0)), 0, 255)
            .round()
            .astype(np.uint8),
            t,
        )
        for v, t in clips
    ]
    assert toy.evaluate(blurred) == {"colour": 1.0, "shape": 1.0, "direction": 1.0, "background": 1.0}


def test_shape_is_the_ideal_shape_overlapping_most() -> None:
    """Per frame, the shape is the ideal mask in the object's box with the highest IoU: exact masks of
    any box size map to themselves; a square with rounded corners stays a square."""
    for h, w in ((9, 9), (20, 17), (31, 31)):
        for name, mask in toy._ideal_shapes(h, w).items():
            padded = np.zeros((h + 6, w + 6), bool)
            padded[3 : 3 + h, 3 : 3 + w] = mask
            assert toy._shape_of(padded) == name
    ys, xs = np.mgrid[0:24, 0:24] + 0.5
    r = 5.0  # corner radius of a 24-pixel square
    cx, cy = np.clip(xs, r, 24 - r), np.clip(ys, r, 24 - r)
    assert toy._shape_of((xs - cx) ** 2 + (ys - cy) ** 2 <= r**2) == "square"


def test_evaluator_through_lossless_mp4(tmp_path: Path) -> None:
    for i, (video, text) in enumerate(toy.generate(4, 21)):
        path = write_mp4(video, tmp_path / f"{i}.mp4", 16, lossless=True)
        back = read_mp4(path)
        assert np.array_equal(back, video)
        assert all(toy.score_clip(back, text).values())


def _wrong(clips: list[tuple[np.ndarray, str]], key: str) -> list[tuple[np.ndarray, str]]:
    out = []
    for video, text in clips:
        combo = toy.parse_prompt(text)
        value = getattr(combo, key)
        if key == "direction":
            new = OPPOSITE[value]
        else:
            vocab = list({"colour": toy.COLOURS, "shape": toy.SHAPES, "background": toy.BACKGROUNDS}[key])
            new = vocab[(vocab.index(value) + 1) % len(vocab)]
        out.append((video, toy.caption(combo._replace(**{key: new}))))
    return out


@pytest.mark.parametrize("key", ["colour", "shape", "direction", "background"])
def test_evaluator_rejects_wrong_prompts(key: str) -> None:
    clips = list(toy.generate(24, 5))
    scores = toy.evaluate(_wrong(clips, key))
    assert scores[key] == 0.0
    assert all(v == 1.0 for k, v in scores.items() if k != key)


def test_evaluator_on_degenerate_videos() -> None:
    blank = np.zeros((5, 64, 64, 3), np.uint8)
    assert toy.detect(blank) == {"colour": None, "shape": None, "direction": None, "background": "black"}
    assert toy.evaluate([(blank, "a red circle moving left on a black background")])["colour"] == 0.0
    video, text = toy.make_clip(0, 0)
    still = np.repeat(video[:1], 5, axis=0)
    assert toy.detect(still)["direction"] is None
    reversed_video = video[::-1]
    assert toy.score_clip(reversed_video, text)["direction"] is False
    with pytest.raises(ValueError):
        toy.evaluate([])


def test_cli_writes_a_preprocessable_dataset(tmp_path: Path) -> None:
    out = tmp_path / "toy"
    runner = CliRunner()
    args = ["toy-dataset", str(out), "--num", "3", "--seed", "2", "--frames", "9", "--size", "48"]
    result = runner.invoke(wan_app, args)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.glob("*.mp4")) == [f"clip-{i:05d}.mp4" for i in range(3)]
    items = read_captions(out / toy.MANIFEST)
    assert json.loads((out / toy.MANIFEST).read_text()) == items
    assert len(items) == 3
    for i, item in enumerate(items):
        video, text = toy.make_clip(2, i, frames=9, size=48)
        assert item["caption"] == text
        assert np.array_equal(read_mp4(out / item["path"]), video)
    # a second run refuses to overwrite, --overwrite replaces
    again = runner.invoke(wan_app, args)
    assert again.exit_code == 2 and "already exists" in again.output
    assert runner.invoke(wan_app, [*args, "--overwrite"]).exit_code == 0
    bad = runner.invoke(wan_app, ["toy-dataset", str(tmp_path / "x"), "--split", "test"])
    assert bad.exit_code == 2 and "split" in bad.output
    assert not (tmp_path / "x").exists()
