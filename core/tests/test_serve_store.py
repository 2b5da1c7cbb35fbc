"""fastvideo.serve.store: the SQLite job queue of ``fv serve`` (claims, priorities, bounds, recovery)."""

from __future__ import annotations

import multiprocessing
import sqlite3

import pytest

from fastvideo.serve.store import JobStore, QueueFull
from fastvideo.testing.serve import claim_until_empty


def _add(store, prompt, **kw):
    return store.add(
        model="m", prompt=prompt, params={"prompt": prompt}, size="8x8", seconds="1", max_queue=100, **kw
    )


def test_claims_follow_priority_then_fifo_and_only_the_model_asked_for(tmp_path):
    store = JobStore(tmp_path / "q.db")
    ids = [_add(store, "a")["id"], _add(store, "b")["id"], _add(store, "urgent", priority=5)["id"]]
    store.add(model="other", prompt="o", params={}, size="8x8", seconds="1", max_queue=100)
    order = [store.claim("m", "w").id for _ in range(3)]
    assert order == [ids[2], ids[0], ids[1]]
    assert store.claim("m", "w") is None
    assert store.claim("other", "w") is not None


def test_the_queue_bound_counts_waiting_and_running_jobs(tmp_path):
    store = JobStore(tmp_path / "q.db")
    for i in range(3):
        store.add(model="m", prompt=str(i), params={}, size="8x8", seconds="1", max_queue=3)
    claim = store.claim("m", "w")
    with pytest.raises(QueueFull) as info:
        store.add(model="m", prompt="x", params={}, size="8x8", seconds="1", max_queue=3)
    assert info.value.pending == 3 and info.value.retry_after_s >= 1
    store.finish(claim, video_path="v.mp4")
    store.add(model="m", prompt="x", params={}, size="8x8", seconds="1", max_queue=3)  # a place is free again


def test_a_stale_claim_cannot_write_after_delete_or_requeue(tmp_path):
    store = JobStore(tmp_path / "q.db")
    job = _add(store, "a")["id"]
    claim = store.claim("m", "w")
    assert store.progress(claim, progress=10, stage="denoising")
    queued, interrupted = store.recover(requeue=True)  # a restart while it ran
    assert (queued, interrupted) == (1, [job])
    assert not store.progress(claim, progress=20) and not store.finish(claim, video_path="v.mp4")
    again = store.claim("m", "w2")
    assert again.id == job and store.get(job)["attempts"] == 2
    assert store.finish(again, video_path="v.mp4") and store.get(job)["status"] == "completed"
    other = _add(store, "b")["id"]
    claim = store.claim("m", "w")
    assert store.delete(other)["id"] == other
    assert not store.progress(claim, progress=5) and not store.finish(claim, video_path="x.mp4")


def test_recover_fails_running_jobs_with_the_reason_and_keeps_the_rest(tmp_path):
    store = JobStore(tmp_path / "q.db")
    done, running, waiting = (_add(store, p)["id"] for p in "abc")
    store.finish(store.claim("m", "w"), video_path="a.mp4")
    store.claim("m", "w")
    assert store.recover(requeue=False) == (1, [running])
    job = store.get(running)
    assert job["status"] == "failed" and job["error_code"] == "interrupted"
    assert "--requeue-interrupted" in job["error_message"]
    assert store.get(done)["status"] == "completed" and store.get(waiting)["status"] == "queued"


def test_concurrent_workers_never_claim_the_same_job(tmp_path):
    path = tmp_path / "q.db"
    store = JobStore(path)
    ids = {_add(store, str(i))["id"] for i in range(60)}
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=claim_until_empty, args=(path, f"w{i}", out)) for i in range(3)]
    for p in procs:
        p.start()
    claimed = [i for _ in procs for i in out.get(timeout=60)]
    for p in procs:
        p.join(30)
    assert sorted(claimed) == sorted(ids)  # each job once, none lost
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("SELECT count(*) FROM jobs WHERE attempts != 1").fetchone()[0] == 0
