"""``fv serve`` driven by the official ``openai`` SDK and by raw HTTP (docs/serve.md).

One server for the module (tests/conftest.py ``serve``): wan-toy on the CPU, an API key, a queue of 20.
"""

from __future__ import annotations

import warnings

import pytest

openai = pytest.importorskip("openai")

#: The smallest wan-toy request: 5 frames of 32x32, 2 steps (about 0.05 s of generation on a CPU).
SMALL = {"num_frames": 5, "steps": 2}


@pytest.fixture
def client(serve):
    warnings.filterwarnings("ignore", category=DeprecationWarning, module="openai")
    return openai.OpenAI(base_url=serve.base_url, api_key=serve.api_key, max_retries=0)


def test_openai_sdk_create_poll_download_list_delete(serve, client, tmp_path):
    """create -> poll -> download the mp4 -> read it back (the same frames as the same request run in
    this process); list pages through both jobs; delete removes the job and its file."""
    import numpy as np

    from fastvideo import VideoGenerator
    from fastvideo.video import read_mp4

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        video = client.videos.create(
            prompt="a red square moving right", size="32x32", seconds="1", extra_body={"steps": 2, "seed": 7}
        )
        assert video.status == "queued" and video.size == "32x32" and video.seconds == "1"
        assert video.model == "wan-toy" and video.object == "video"
        done = client.videos.poll(video.id, poll_interval_ms=50)
        assert done.status == "completed", done.error
        assert done.progress == 100 and done.completed_at >= done.created_at
        content = client.videos.download_content(video.id)
        path = tmp_path / "out.mp4"
        content.write_to_file(path)
        frames = read_mp4(path)
        assert frames.shape == (9, 32, 32, 3)  # 1 s at wan-toy's 8 fps: 8 intervals, 9 frames

        ref = VideoGenerator.from_pretrained("wan-toy", device="cpu", progress=False).generate_video(
            "a red square moving right", num_frames=9, height=32, width=32, num_inference_steps=2, seed=7
        )
        err = np.abs(frames.astype(np.float32) - ref.frames.astype(np.float32)).mean()
        assert err < 4.0, err  # H.264 (yuv420p) of the same frames

        second = client.videos.create(prompt="a blue circle", size="32x32", extra_body=SMALL)
        client.videos.poll(second.id, poll_interval_ms=50)
        ids = [v.id for v in client.videos.list(limit=1)]  # one per page: follows has_more / last_id
        assert ids.index(second.id) < ids.index(video.id)  # newest first
        asc = [v.id for v in client.videos.list(limit=1, order="asc")]
        assert asc.index(video.id) < asc.index(second.id)

        stored = serve.data_dir / "videos" / f"{video.id}.mp4"
        assert stored.is_file()
        deleted = client.videos.delete(video.id)
        assert deleted.deleted and deleted.id == video.id
        assert not stored.exists()
        with pytest.raises(openai.NotFoundError):
            client.videos.retrieve(video.id)
        with pytest.raises(openai.NotFoundError):
            client.videos.download_content(video.id)
        assert client.videos.retrieve(second.id).status == "completed"
