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


# ---------------------------------------------------------------- raw HTTP: extras and errors


def _http(serve, key="default"):
    import httpx

    headers = {"Authorization": f"Bearer {serve.api_key if key == 'default' else key}"} if key else {}
    return httpx.Client(base_url=serve.url, headers=headers, timeout=60)


def _wait(http, video_id, timeout=60):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = http.get(f"/v1/videos/{video_id}").json()
        if job["status"] in ("completed", "failed"):
            return job
        time.sleep(0.05)
    raise TimeoutError(job)


def test_progress_events_stream_until_done(serve):
    """SSE: progress events with the stage, step/steps and ETA, percent never going back, then done."""
    import json

    with _http(serve) as http:
        job = http.post(
            "/v1/videos", data={"prompt": "a green dot", "steps": 60}
        ).json()  # ~0.5 s of denoising
        events = []
        with http.stream("GET", f"/v1/fastvideo/videos/{job['id']}/events") as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            name = None
            for line in response.iter_lines():
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: "):
                    events.append((name, json.loads(line[6:])))
    names = [n for n, _ in events]
    assert names[-1] == "done" and set(names[:-1]) == {"progress"}
    progress = [e for n, e in events if n == "progress"]
    percents = [e["progress"] for e in progress]
    assert percents == sorted(percents) and percents[-1] == 100
    steps = [e for e in progress if e["stage"] == "denoising"]
    assert steps and all(e["steps"] == 60 for e in steps)
    assert any(e["eta_s"] is not None and e["step"] >= 1 for e in steps)
    assert events[-1][1]["status"] == "completed" and events[-1][1]["id"] == job["id"]


def test_a_client_that_disconnects_loses_nothing(serve):
    """The event stream closed after its first event: the job still runs, and waits to be fetched."""
    with _http(serve) as http:
        job = http.post("/v1/videos", data={"prompt": "nobody watches", "size": "32x32", "steps": 20}).json()
        with http.stream("GET", f"/v1/fastvideo/videos/{job['id']}/events") as response:
            next(line for line in response.iter_lines() if line.startswith("data: "))
    with _http(serve) as again:  # a new connection, later
        done = _wait(again, job["id"])
        assert done["status"] == "completed"
        assert again.get(f"/v1/videos/{job['id']}/content").content[4:8] == b"ftyp"  # an mp4


def test_health_models_and_backends(serve):
    with _http(serve, key=None) as anonymous:
        health = anonymous.get("/health").json()  # the one route without a key
    assert health["status"] == "ok" and health["workers"] == {"ready": 1, "expected": 1}
    with _http(serve) as http:
        models = http.get("/v1/fastvideo/models").json()["data"]
        assert [m["id"] for m in models] == ["wan-toy"]
        assert models[0]["family"] == "wan" and models[0]["backends"] == ["sdpa"]
        assert models[0]["defaults"]["num_frames"] == 17 and models[0]["defaults"]["fps"] == 8
        assert [w["state"] for w in models[0]["workers"]] == ["ready"]
        assert http.get("/v1/fastvideo/backends").json()["data"] == [{"name": "sdpa", "workers": ["0"]}]
        assert [m["id"] for m in http.get("/v1/models").json()["data"]] == ["wan-toy"]


SMALL_FRAMES = {"num_frames": 5}


def _cli_message(*args):
    """The one line ``fv generate`` prints for the same bad request (the reference)."""
    from fastvideo.testing import run_fv

    proc = run_fv(["generate", "--prompt", "x", "--model", "wan-toy", *args])
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ")
    return line[len("error: ") :]


@pytest.mark.parametrize(
    ("fields", "status", "expected"),
    [
        ({"num_frames": "18"}, 400, ("--num-frames", "18")),
        ({"size": "30x32"}, 400, ("--width", "30", "--height", "32")),
        ({"size": "wide"}, 422, "size must be WIDTHxHEIGHT"),
        ({"steps": "many"}, 422, "steps must be an integer, got 'many'"),
        ({"seed": "-1"}, 400, "seed must be 0 to 2**64-1, got -1"),
        ({"seconds": "0"}, 400, "seconds must be more than 0"),
        ({"seconds": "1", "num_frames": "9"}, 400, "set the same thing"),
        (
            {"model": "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"},
            400,
            "is not served here; this server serves: wan-toy",
        ),
        ({"model": "/etc"}, 400, "is not served here"),
        ({"loras": "x"}, 400, "unknown parameter 'loras'"),
        ({"prompt": ""}, 422, "prompt is required"),
    ],
    ids=lambda v: str(v)[:30] if not isinstance(v, int) else str(v),
)
def test_bad_parameters_get_one_line_errors(serve, fields, status, expected):
    with _http(serve) as http:
        response = http.post("/v1/videos", data={"prompt": "a dot", **fields})
    assert response.status_code == status, response.text
    message = response.json()["error"]["message"]
    assert "\n" not in message and message
    if isinstance(expected, tuple):  # the same message as fv generate's
        assert message == _cli_message(*expected)
    else:
        assert expected in message


def test_other_request_errors(serve):
    import io

    with _http(serve) as http:
        json_job = http.post(
            "/v1/videos", json={"prompt": "json body", "size": "32x32", **SMALL_FRAMES, "steps": 1}
        )
        assert json_job.status_code == 200 and json_job.json()["status"] == "queued"
        png = b"\x89PNG\r\n\x1a\n" + b"\0" * 32
        image = http.post(
            "/v1/videos",
            data={"prompt": "x"},
            files={"input_reference": ("a.png", io.BytesIO(png), "image/png")},
        )
        assert image.status_code == 400 and "takes no --image" in image.json()["error"]["message"]
        assert not list((serve.data_dir / "inputs").iterdir())  # the upload of a refused request is removed
        text = http.post(
            "/v1/videos", data={"prompt": "x"}, files={"input_reference": ("a.txt", b"hello", "text/plain")}
        )
        assert text.status_code == 400 and "PNG, JPEG or WebP" in text.json()["error"]["message"]
        big = http.post("/v1/videos", data={"prompt": "x" * (2 * 2**20)})  # the shared server takes 1 MiB
        assert big.status_code == 413 and "--max-request-mb" in big.json()["error"]["message"]
        assert http.get("/v1/videos/video_nope").status_code == 404
        assert http.delete("/v1/videos/video_nope").status_code == 404
        assert http.get("/v1/videos", params={"limit": "0"}).status_code == 400
        assert http.get("/v1/videos", params={"after": "video_nope"}).status_code == 400
        done = _wait(http, json_job.json()["id"])
        assert done["status"] == "completed"
        variant = http.get(f"/v1/videos/{done['id']}/content", params={"variant": "thumbnail"})
        assert variant.status_code == 400 and "variant=video" in variant.json()["error"]["message"]


#: Every protected route (method, path); tests below check this list against the app's own.
PROTECTED = [
    ("POST", "/v1/videos"),
    ("GET", "/v1/videos"),
    ("GET", "/v1/videos/{video_id}"),
    ("GET", "/v1/videos/{video_id}/content"),
    ("DELETE", "/v1/videos/{video_id}"),
    ("GET", "/v1/models"),
    ("GET", "/v1/fastvideo/videos/{video_id}/events"),
    ("GET", "/v1/fastvideo/models"),
    ("GET", "/v1/fastvideo/backends"),
    ("GET", "/no/such/route"),
]


@pytest.mark.parametrize(
    "auth",
    [None, "Bearer wrong-key", "Basic dGVzdC1rZXktMTIzNDo=", "Bearer test-key-123"],
    ids=["missing", "wrong", "basic-scheme", "prefix-of-the-key"],
)
def test_a_missing_or_wrong_key_gets_401_on_every_protected_route(serve, auth):
    with _http(serve, key=None) as http:
        job = _http(serve).post("/v1/videos", data={"prompt": "x", "size": "32x32", **SMALL_FRAMES}).json()
        headers = {} if auth is None else {"Authorization": auth}
        for method, path in PROTECTED:
            response = http.request(
                method,
                path.format(video_id=job["id"]),
                headers=headers,
                data={"prompt": "x"} if method == "POST" else None,
            )
            assert response.status_code == 401, (method, path, response.text)
            assert response.headers["www-authenticate"] == "Bearer"
            assert "API key" in response.json()["error"]["message"]
        assert http.get("/health").status_code == 200
        assert http.get("/").status_code == 200  # the page (no data; its API calls carry the key)
        assert (
            http.get(
                f"/v1/videos/{job['id']}", headers={"Authorization": f"Bearer {serve.api_key}"}
            ).status_code
            == 200
        )


def test_a_browser_on_another_site_is_refused(serve):
    """A form another site makes the browser post to this server (CSRF) is refused, key or not; the
    page's own calls (same origin) pass."""
    with _http(serve) as http:
        for origin in ("http://evil.example", "null", f"{serve.url}.evil.example"):
            response = http.post("/v1/videos", data={"prompt": "x"}, headers={"Origin": origin})
            assert response.status_code == 403 and response.json()["error"]["code"] == "cross_origin"
        same = http.get("/v1/videos", headers={"Origin": serve.url})
        assert same.status_code == 200


def test_the_protected_list_is_every_route_of_the_app(tmp_path):
    """The 401 test covers every route the app has (a new route cannot forget the key)."""
    from fastvideo.configs import PipelineConfig
    from fastvideo.serve import ServeSettings
    from fastvideo.serve.app import PUBLIC, create_app
    from fastvideo.serve.params import Validator
    from fastvideo.serve.store import JobStore

    settings = ServeSettings(models=("wan-toy",), data_dir=tmp_path)
    app = create_app(settings, JobStore(settings.db_path), Validator(settings.models, PipelineConfig()))
    routes = {(m, r.path) for r in app.routes for m in getattr(r, "methods", ()) if m != "HEAD"}
    assert routes == set(PROTECTED[:-1]) | {("GET", p) for p in PUBLIC}


# ---------------------------------------------------------------- load


def _wait_idle(http, timeout=60):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = http.get("/health").json()["jobs"]
        if jobs["queued"] == jobs["in_progress"] == 0:
            return
        time.sleep(0.05)
    raise TimeoutError(jobs)


def test_50_concurrent_submissions_against_a_queue_of_20(serve):
    """While one long job runs, 50 simultaneous submissions: exactly 19 get a job (20 places), 31 get
    429 with Retry-After; the long job is cancelled by DELETE; every accepted job completes, once."""
    import re
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    with _http(serve) as http:
        _wait_idle(http)
        blocker = http.post(
            "/v1/videos", data={"prompt": "the long one", "steps": 1000, "num_frames": 33}
        ).json()
        while http.get(f"/v1/videos/{blocker['id']}").json()["status"] != "in_progress":
            pass
        barrier = threading.Barrier(50)
        headers = {"Authorization": f"Bearer {serve.api_key}"}

        def submit(i):
            with httpx.Client(base_url=serve.url, headers=headers, timeout=60) as own:
                barrier.wait()
                return own.post(
                    "/v1/videos", data={"prompt": f"load {i}", "size": "32x32", "steps": 2, **SMALL_FRAMES}
                )

        with ThreadPoolExecutor(50) as pool:
            responses = list(pool.map(submit, range(50)))
        codes = sorted(r.status_code for r in responses)
        assert set(codes) <= {200, 429}, codes
        accepted = [r.json()["id"] for r in responses if r.status_code == 200]
        rejected = [r for r in responses if r.status_code == 429]
        assert len(accepted) == 19 and len(set(accepted)) == 19 and len(rejected) == 31
        for r in rejected:
            assert int(r.headers["retry-after"]) >= 1
            assert (
                r.json()["error"]["code"] == "queue_full" and "--max-queue 20" in r.json()["error"]["message"]
            )

        assert http.delete(f"/v1/videos/{blocker['id']}").json()["deleted"]
        done = [_wait(http, i) for i in accepted]
        assert all(d["status"] == "completed" and d["fastvideo"]["attempts"] == 1 for d in done)
        assert http.get(f"/v1/videos/{blocker['id']}").status_code == 404
        listed = set()
        page = http.get("/v1/videos", params={"limit": 100}).json()
        listed.update(v["id"] for v in page["data"])
        assert set(accepted) <= listed

    log = serve.log()
    for job_id in accepted:  # the worker's own log: each job ran exactly once
        assert len(re.findall(rf"job {job_id} started", log)) == 1
        assert len(re.findall(rf"job {job_id} completed", log)) == 1
    assert f"job {blocker['id']} cancelled" in log
    assert not (serve.data_dir / "videos" / f"{blocker['id']}.mp4").exists()


def test_the_sdk_example_of_the_docs_runs(serve, tmp_path, monkeypatch):
    """docs/serve.md's Python example, against this server (its URL and key swapped in)."""
    import re
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "serve.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", page, flags=re.S)
    assert 'base_url="http://127.0.0.1:8000/v1"' in code and 'api_key="KEY"' in code
    code = code.replace("http://127.0.0.1:8000/v1", serve.base_url).replace('"KEY"', repr(serve.api_key))
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        scope: dict = {}
        exec(compile(code, "docs/serve.md", "exec"), scope)
    assert scope["video"].status == "completed" and scope["video"].seconds == "2"
    assert (tmp_path / "square.mp4").stat().st_size > 0


def test_requests_are_checked_against_the_served_models_and_limits():
    """fastvideo.serve.params in-process (no server): resolved against wan-toy's defaults; our limits."""
    import re

    from fastvideo.configs import PipelineConfig
    from fastvideo.serve.params import RequestError, Validator

    validator = Validator(("wan-toy",), PipelineConfig(), max_prompt_chars=20, max_pixels=5 * 64 * 64)
    job = validator.parse({"prompt": "a dot", "size": "64x32", "frames": "5", "seed": "9", "priority": "3"})
    assert job.overrides == {"prompt": "a dot", "width": 64, "height": 32, "num_frames": 5, "seed": 9}
    assert (job.size, job.seconds, job.priority, job.model) == ("64x32", "0.5", 3, "wan-toy")
    assert (
        validator.parse({"prompt": "a dot", "seconds": "2", "size": "32x32"}).overrides["num_frames"] == 17
    )  # 2 s at 8 fps
    for fields, message in [
        ({"size": "128x128"}, "is 278528 pixels; this server makes at most 20480 (fv serve --max-pixels)"),
        ({"prompt": "x" * 21}, "prompt has 21 characters; this server takes at most 20"),
        ({"model": "../../etc"}, "model '../../etc' is not served here; this server serves: wan-toy"),
        ({"seed": str(2**64)}, "seed must be 0 to 2**64-1, got 18446744073709551616"),
        ({"priority": "5000"}, "priority must be -1000 to 1000, got 5000"),
    ]:
        with pytest.raises(RequestError, match=re.escape(message)):
            validator.parse({"prompt": "a dot", **fields})
