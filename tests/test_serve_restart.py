"""``fv serve`` killed with SIGKILL mid-generation, then restarted on the same data directory: queued
jobs run, the interrupted one is reported (or re-queued with --requeue-interrupted), finished videos
still download, and no worker outlives the killed server."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("fastapi", reason="fv serve needs the serve extra: pip install 'fastvideo-core[serve]'")
httpx = pytest.importorskip("httpx")

SMALL = {"size": "32x32", "num_frames": 5, "steps": 2}
#: About 3 s of denoising on an idle CPU: long enough to be killed in the middle, with room to spare.
LONG = {"num_frames": 17, "steps": 400}


def _wait(http, video_id, until=("completed", "failed"), timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = http.get(f"/v1/videos/{video_id}").json()
        if job["status"] in until and (
            job["status"] != "in_progress" or (job["fastvideo"]["step"] or 0) >= 1
        ):
            return job
        time.sleep(0.02)
    raise TimeoutError(job)


def test_sigkill_mid_generation_then_restart(tmp_path):
    from fastvideo.testing.serve import ServeProcess

    data = tmp_path / "data"
    server = ServeProcess(["--model", "wan-toy", "--device", "cpu"], data_dir=data).start()
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            finished = http.post("/v1/videos", data={"prompt": "finished before", **SMALL}).json()["id"]
            assert _wait(http, finished)["status"] == "completed"
            before = http.get(f"/v1/videos/{finished}/content").content
            running = http.post("/v1/videos", data={"prompt": "killed mid-way", **LONG}).json()["id"]
            queued = [
                http.post("/v1/videos", data={"prompt": f"queued {i}", **SMALL}).json()["id"]
                for i in range(2)
            ]
            job = _wait(http, running, until=("in_progress",))
            assert job["fastvideo"]["stage"] == "denoising" and job["progress"] < 90
        server.kill()  # and checks that its worker died with it
    finally:
        server.stop()
    assert [p.name for p in (data / "videos").iterdir() if p.suffix == ".mp4"] == [f"{finished}.mp4"]

    restarted = ServeProcess(["--model", "wan-toy", "--device", "cpu"], data_dir=data).start()
    try:
        with httpx.Client(base_url=restarted.url, timeout=60) as http:
            interrupted = http.get(f"/v1/videos/{running}").json()
            assert interrupted["status"] == "failed" and interrupted["error"]["code"] == "interrupted"
            assert "server stopped while this job was running" in interrupted["error"]["message"]
            assert "--requeue-interrupted" in interrupted["error"]["message"]
            assert all(_wait(http, q)["status"] == "completed" for q in queued)
            assert http.get(f"/v1/videos/{finished}/content").content == before
            assert http.get(f"/v1/videos/{running}/content").status_code == 409
        assert f"1 job(s) interrupted by the last stop marked failed: {running}" in restarted.log()
    finally:
        restarted.stop()


@pytest.mark.slow
def test_requeue_interrupted_runs_the_killed_job_again(tmp_path):
    """``--requeue-interrupted``: the job a SIGKILL interrupted runs again after the restart, once."""
    from fastvideo.testing.serve import ServeProcess

    data = tmp_path / "data"
    server = ServeProcess(["--model", "wan-toy", "--device", "cpu"], data_dir=data).start()
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            again = http.post("/v1/videos", data={"prompt": "requeued", **LONG}).json()["id"]
            _wait(http, again, until=("in_progress",))
        server.kill()
    finally:
        server.stop()
    restarted = ServeProcess(
        ["--model", "wan-toy", "--device", "cpu", "--requeue-interrupted"], data_dir=data
    )
    try:
        restarted.start()
        with httpx.Client(base_url=restarted.url, timeout=60) as http:
            job = _wait(http, again)
            assert job["status"] == "completed" and job["fastvideo"]["attempts"] == 2
        log = restarted.log()
        assert f"re-queued: {again}" in log
        assert log.count(f"job {again} started") == 1 and log.count(f"job {again} completed") == 1
    finally:
        restarted.stop()


@pytest.mark.slow
def test_a_worker_spanning_two_processes_matches_one(tmp_path):
    """``--num-gpus 2`` on the CPU: one worker of two ranks (gloo, Ulysses over wan-toy's 2 heads) makes
    the video one process makes for the same request."""
    import numpy as np

    from fastvideo import VideoGenerator
    from fastvideo.testing.serve import ServeProcess
    from fastvideo.video import read_mp4

    server = ServeProcess(
        ["--model", "wan-toy", "--device", "cpu", "--num-gpus", "2"], data_dir=tmp_path / "data"
    )
    try:
        server.start()
        with httpx.Client(base_url=server.url, timeout=60) as http:
            job = http.post(
                "/v1/videos", data={"prompt": "a red square moving right", **SMALL, "seed": 5}
            ).json()
            assert _wait(http, job["id"])["status"] == "completed"
            (tmp_path / "out.mp4").write_bytes(http.get(f"/v1/videos/{job['id']}/content").content)
        workers = server.get("/v1/fastvideo/models")["data"][0]["workers"]
        assert len(workers) == 1 and "2 processes" in server.log()
    finally:
        server.stop()
    frames = read_mp4(tmp_path / "out.mp4")
    ref = VideoGenerator.from_pretrained("wan-toy", device="cpu", progress=False).generate_video(
        "a red square moving right", num_frames=5, height=32, width=32, num_inference_steps=2, seed=5
    )
    assert frames.shape == ref.frames.shape
    assert np.abs(frames.astype(np.float32) - ref.frames.astype(np.float32)).mean() < 4.0


def _serve_error(args, tmp_path):
    from fastvideo.testing import run_fv

    proc = run_fv(["serve", *args], env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"}, cwd=tmp_path)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def test_start_up_errors_are_one_line_before_anything_is_created(tmp_path):
    import fcntl
    import os

    data = tmp_path / "data"
    line = _serve_error(["--model", "no-such-model", "--data-dir", str(data)], tmp_path)
    assert "no-such-model" in line and not data.exists()
    assert _serve_error(["--model", "wan-toy", "--port", "70000"], tmp_path) == (
        "error: --port must be at most 65535, got 70000"
    )
    data.mkdir()
    with open(data / "server.lock", "w") as held:  # another server holds the directory
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write(str(os.getpid()))
        held.flush()
        line = _serve_error(["--model", "wan-toy", "--data-dir", str(data)], tmp_path)
    assert line == (
        f"error: another fv serve (pid {os.getpid()}) is using the data directory {str(data)!r}; "
        "stop it or pass another --data-dir"
    )


@pytest.mark.slow
def test_a_worker_killed_mid_job_fails_that_job_and_is_restarted(tmp_path):
    import os
    import signal

    from fastvideo.testing.serve import ServeProcess

    server = ServeProcess(["--model", "wan-toy", "--device", "cpu"], data_dir=tmp_path / "data")
    try:
        server.start()
        with httpx.Client(base_url=server.url, timeout=60) as http:
            running = http.post("/v1/videos", data={"prompt": "its worker dies", **LONG}).json()["id"]
            _wait(http, running, until=("in_progress",))
            (worker,) = server.get("/v1/fastvideo/models")["data"][0]["workers"]
            os.kill(worker["pid"], signal.SIGKILL)
            job = _wait(http, running)
            assert job["status"] == "failed" and job["error"]["code"] == "worker_died"
            assert job["error"]["message"] == "the worker running this job died (signal 9); submit it again"
            after = http.post("/v1/videos", data={"prompt": "after the restart", **SMALL}).json()["id"]
            assert _wait(http, after)["status"] == "completed"
            (again,) = server.get("/v1/fastvideo/models")["data"][0]["workers"]
            assert again["pid"] != worker["pid"] and again["state"] == "ready"
        assert "worker 0 died (signal 9)" in server.log()
    finally:
        server.stop()


@pytest.mark.slow
def test_a_model_that_cannot_load_stops_the_server_with_its_error(tmp_path):
    """A checkpoint that resolves (its model_index.json is fine) but whose DiT file is truncated: the
    worker cannot load it, and fv serve exits with that error on one line instead of serving nothing."""
    import shutil
    import subprocess
    from pathlib import Path

    import fastvideo_wan
    from fastvideo.testing import corrupt_copy, fv_command

    toy = Path(fastvideo_wan.__file__).parent / "assets" / "wan-toy"
    model = tmp_path / "broken-toy"
    shutil.copytree(toy, model, ignore=shutil.ignore_patterns("transformer"))
    corrupt_copy(toy / "transformer", model / "transformer", "truncate")
    proc = subprocess.run(
        [
            *fv_command(),
            "serve",
            "--model",
            str(model),
            "--device",
            "cpu",
            "--port",
            "0",
            "--data-dir",
            str(tmp_path / "d"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"},
    )
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(errors) == 1 and errors[0].startswith(f"error: worker 0 could not load {model}: "), errors
    assert "diffusion_pytorch_model.safetensors" in errors[0]
