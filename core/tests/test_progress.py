"""fastvideo.progress.listen: the callbacks ``fv serve`` reports a job's progress with."""

from __future__ import annotations

import pytest

from fastvideo import progress


@pytest.mark.parametrize("shown", [True, False], ids=["bars-on", "bars-off"])
def test_listeners_see_each_task_start_and_advance(shown, monkeypatch):
    monkeypatch.setenv("FASTVIDEO_PROGRESS", "1" if shown else "0")
    seen = []
    with progress.listen(lambda *event: seen.append(event)):
        with progress.task("denoising", 3) as advance:
            for _ in range(3):
                advance(1)
        with progress.task("decoding", None) as advance:
            advance(2)
    assert seen == [
        ("denoising", 0, 3),
        ("denoising", 1, 3),
        ("denoising", 2, 3),
        ("denoising", 3, 3),
        ("decoding", 0, None),
        ("decoding", 2, None),
    ]
    with progress.task("after", 1) as advance:  # the listener is gone once its block ends
        advance(1)
    assert len(seen) == 6


def test_a_listener_that_raises_stops_the_task():
    class Stop(Exception):
        pass

    def stop_at_two(description, done, total):
        if done == 2:
            raise Stop

    steps = []
    with pytest.raises(Stop), progress.listen(stop_at_two), progress.task("denoising", 5) as advance:
        for i in range(5):
            advance(1)
            steps.append(i)
    assert steps == [0]
