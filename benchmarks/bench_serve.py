"""fv serve's workers on a GPU: throughput and latency of a burst of jobs with 1 and 2 warm workers.

Runs the server's own queue and worker processes (fastvideo.serve.store / .server.WorkerPool), without
the HTTP layer (so it needs no FastAPI on the GPU machine): N jobs are queued at once, the workers claim
and generate them, and the script reports jobs/s, the mean and p95 time from submission to completion,
the mean generation time per job, the model load time, and checks every video (frames, size).

    python benchmarks/bench_serve.py --model wan-toy --jobs 16 --workers 1,2 --out /tmp/out
    python benchmarks/bench_serve.py --tiny        # CPU dry run: 4 small jobs
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def run(model: str, workers: int, jobs: int, params: dict, device: str | None, timeout: float) -> dict:
    from fastvideo.serve import ServeSettings
    from fastvideo.serve.server import WorkerPool
    from fastvideo.serve.store import JobStore
    from fastvideo.video import read_mp4

    data = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    settings = ServeSettings(models=(model,), workers=workers, data_dir=data, device=device, compile=False)
    settings.videos_dir.mkdir(parents=True)
    store = JobStore(settings.db_path)
    pool = WorkerPool(settings, store)
    start = time.monotonic()
    pool.start()
    try:
        while sum(w["state"] == "ready" for w in store.workers()) < workers:
            if any(p.poll() is not None for procs in pool.procs.values() for p in procs):
                raise RuntimeError(f"a worker exited while loading: {store.workers()}")
            if time.monotonic() - start > timeout:
                raise TimeoutError("workers did not load")
            time.sleep(0.05)
        load_s = time.monotonic() - start
        devices = sorted({w["device"] for w in store.workers()})
        submitted = {}
        t0 = time.monotonic()
        for i in range(jobs):
            job = store.add(
                model=model,
                prompt=f"a red square moving right {i}",
                params={"prompt": f"a red square moving right {i}", "seed": i, **params},
                size="",
                seconds="",
                max_queue=jobs + 1,
            )
            submitted[job["id"]] = time.time()
        while store.counts()["completed"] + store.counts()["failed"] < jobs:
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"jobs did not finish: {store.counts()}")
            time.sleep(0.01)
        wall = time.monotonic() - t0
        rows = [store.get(i) for i in submitted]
        failed = [r["error_message"] for r in rows if r["status"] != "completed"]
        if failed:
            raise RuntimeError(f"{len(failed)} job(s) failed: {failed[0]}")
        latency = sorted(r["started_at"] + r["duration_s"] - submitted[r["id"]] for r in rows)
        shapes = {tuple(read_mp4(r["video_path"]).shape) for r in rows}
        return {
            "workers": workers,
            "jobs": jobs,
            "devices": devices,
            "load_s": round(load_s, 2),
            "wall_s": round(wall, 3),
            "jobs_per_s": round(jobs / wall, 3),
            "latency_mean_s": round(statistics.mean(latency), 3),
            "latency_p95_s": round(latency[max(0, int(0.95 * len(latency)) - 1)], 3),
            "generation_mean_s": round(statistics.mean(r["duration_s"] for r in rows), 3),
            "video_shapes": sorted(shapes),
        }
    finally:
        pool.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="wan-toy")
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts to compare")
    parser.add_argument("--device", default=None, help="[cuda when available]")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps [the model's default]")
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--tiny", action="store_true", help="CPU dry run: 4 jobs of 5x32x32, 2 steps")
    parser.add_argument("--out", default=None, help="folder for serve.json")
    args = parser.parse_args()
    params: dict = {}
    if args.steps:
        params["num_inference_steps"] = args.steps
    if args.tiny:
        args.jobs, args.device = 4, "cpu"
        params.update(num_frames=5, height=32, width=32, num_inference_steps=2)
    results = []
    for workers in (int(w) for w in args.workers.split(",")):
        result = run(args.model, workers, args.jobs, params, args.device, args.timeout)
        print(json.dumps(result), flush=True)
        results.append(result)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "serve.json").write_text(
            json.dumps({"model": args.model, "params": params, "runs": results}, indent=2)
        )


if __name__ == "__main__":
    main()
