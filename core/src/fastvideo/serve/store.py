"""The job queue of ``fv serve``: one SQLite database (WAL) under the server's data directory.

The HTTP process inserts and reads jobs; worker processes claim them. A claim is one ``BEGIN
IMMEDIATE`` transaction that moves the oldest queued job of the highest priority to ``in_progress``
and stamps it with a fresh claim token, so two workers never get the same job; every later write of
the worker (progress, completion, failure) names that token, so a job that was deleted, or
re-queued after a restart, ignores a stale worker. Standard library only.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,      -- FIFO order
    id TEXT NOT NULL UNIQUE,
    model TEXT NOT NULL,
    prompt TEXT NOT NULL,
    params TEXT NOT NULL,                      -- JSON: the sampling overrides of the request
    size TEXT NOT NULL,
    seconds TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,       -- higher runs first
    status TEXT NOT NULL,                      -- queued, in_progress, completed, failed
    progress INTEGER NOT NULL DEFAULT 0,       -- percent
    stage TEXT,
    step INTEGER,
    steps INTEGER,
    eta_s REAL,
    error_code TEXT,
    error_message TEXT,
    created_at INTEGER NOT NULL,
    started_at REAL,
    completed_at INTEGER,
    duration_s REAL,
    worker TEXT,
    claim TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    input_path TEXT,
    video_path TEXT
);
CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (status, model, priority DESC, seq);
CREATE TABLE IF NOT EXISTS workers (
    name TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    pid INTEGER,
    state TEXT NOT NULL,                       -- loading, ready, exited
    backend TEXT,
    device TEXT,
    error TEXT,
    updated_at REAL
);
"""

PENDING = ("queued", "in_progress")
FINISHED = ("completed", "failed")


@dataclass(frozen=True)
class Claim:
    """A job a worker took: what to generate, and the token its later writes must carry."""

    id: str
    model: str
    params: dict[str, Any]
    token: str
    input_path: str | None


class QueueFull(Exception):
    """The queue holds ``max_queue`` jobs waiting or running."""

    def __init__(self, pending: int, retry_after_s: int) -> None:
        super().__init__(f"the queue is full ({pending} jobs waiting or running)")
        self.pending = pending
        self.retry_after_s = retry_after_s


class JobStore:
    """Jobs and workers in one SQLite file; one connection per thread."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._db().executescript(SCHEMA)  # idempotent; executescript commits on its own

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # with WAL: a killed process loses nothing committed
            db.execute("PRAGMA busy_timeout=60000")
            self._local.db = db
        return db

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (rolled back on an exception): writers take turns."""
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    # ---------------------------------------------------------------- the HTTP side

    def add(
        self,
        *,
        model: str,
        prompt: str,
        params: dict[str, Any],
        size: str,
        seconds: str,
        priority: int = 0,
        max_queue: int,
        workers: int = 1,
        input_path: str | None = None,
        job_id: str | None = None,
    ) -> dict[str, Any]:
        """Queue a job unless ``max_queue`` jobs are waiting or running (then :class:`QueueFull`)."""
        job_id = job_id or f"video_{secrets.token_hex(12)}"
        with self.transaction() as db:
            pending = db.execute("SELECT count(*) FROM jobs WHERE status IN ('queued', 'in_progress')")
            count = pending.fetchone()[0]
            if count >= max_queue:
                raise QueueFull(count, self._retry_after(db, count, workers))
            db.execute(
                "INSERT INTO jobs (id, model, prompt, params, size, seconds, priority, status, created_at, "
                "input_path) VALUES (?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?)",
                (
                    job_id,
                    model,
                    prompt,
                    json.dumps(params),
                    size,
                    seconds,
                    priority,
                    int(time.time()),
                    input_path,
                ),
            )
        job = self.get(job_id)
        assert job is not None
        return job

    @staticmethod
    def _retry_after(db: sqlite3.Connection, pending: int, workers: int) -> int:
        """Seconds until a place is likely free: the recent mean job time times the jobs ahead per worker."""
        rows = db.execute(
            "SELECT duration_s FROM jobs WHERE status = 'completed' AND duration_s IS NOT NULL "
            "ORDER BY completed_at DESC LIMIT 20"
        ).fetchall()
        mean = sum(r[0] for r in rows) / len(rows) if rows else 5.0
        return max(1, min(3600, round(mean * max(1, pending) / max(1, workers) + 0.5)))

    def get(self, job_id: str) -> dict[str, Any] | None:
        row = self._db().execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return dict(row) if row else None

    def page(self, *, after: str | None, limit: int, order: str) -> tuple[list[dict[str, Any]], bool]:
        """Up to ``limit`` jobs after job ``after`` in ``order`` (asc/desc by creation); and whether more
        follow. :raises KeyError: ``after`` is no job."""
        db = self._db()
        op, direction = (">", "ASC") if order == "asc" else ("<", "DESC")
        where, args = "", []
        if after:
            row = db.execute("SELECT seq FROM jobs WHERE id = ?", (after,)).fetchone()
            if row is None:
                raise KeyError(after)
            where, args = f"WHERE seq {op} ?", [row[0]]
        rows = db.execute(
            f"SELECT * FROM jobs {where} ORDER BY seq {direction} LIMIT ?", (*args, limit + 1)
        ).fetchall()
        return [dict(r) for r in rows[:limit]], len(rows) > limit

    def delete(self, job_id: str) -> dict[str, Any] | None:
        """Remove a job (queued, running or finished) and return its last row; a worker running it
        notices at its next progress write and stops."""
        with self.transaction() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is not None:
                db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
        return dict(row) if row else None

    def counts(self) -> dict[str, int]:
        rows = self._db().execute("SELECT status, count(*) FROM jobs GROUP BY status").fetchall()
        out = {s: 0 for s in (*PENDING, *FINISHED)}
        out.update({r[0]: r[1] for r in rows})
        return out

    def recover(self, *, requeue: bool) -> tuple[int, list[str]]:
        """At start-up: jobs left ``in_progress`` by a server that stopped are re-queued (``requeue``)
        or failed with the reason; returns (queued jobs, the interrupted ones)."""
        with self.transaction() as db:
            ids = [r[0] for r in db.execute("SELECT id FROM jobs WHERE status = 'in_progress' ORDER BY seq")]
            if requeue:
                db.execute(
                    "UPDATE jobs SET status = 'queued', progress = 0, stage = NULL, step = NULL, steps = NULL, "
                    "eta_s = NULL, worker = NULL, claim = NULL WHERE status = 'in_progress'"
                )
            else:
                db.execute(
                    "UPDATE jobs SET status = 'failed', error_code = 'interrupted', error_message = ?, "
                    "completed_at = ?, claim = NULL WHERE status = 'in_progress'",
                    (
                        "interrupted: the server stopped while this job was running; submit it again "
                        "(fv serve --requeue-interrupted re-queues such jobs at start-up)",
                        int(time.time()),
                    ),
                )
            db.execute("UPDATE workers SET state = 'exited' WHERE state != 'exited'")
            queued = db.execute("SELECT count(*) FROM jobs WHERE status = 'queued'").fetchone()[0]
        return queued, ids

    def fail_worker_jobs(self, worker: str, message: str) -> list[str]:
        """Fail the job a worker that died was running; returns its id(s)."""
        with self.transaction() as db:
            ids = [
                r[0]
                for r in db.execute(
                    "SELECT id FROM jobs WHERE status = 'in_progress' AND worker = ?", (worker,)
                )
            ]
            db.execute(
                "UPDATE jobs SET status = 'failed', error_code = 'worker_died', error_message = ?, "
                "completed_at = ?, claim = NULL WHERE status = 'in_progress' AND worker = ?",
                (message, int(time.time()), worker),
            )
        return ids

    def workers(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self._db().execute("SELECT * FROM workers ORDER BY name")]

    # ---------------------------------------------------------------- the worker side

    def set_worker(self, name: str, **fields: Any) -> None:
        fields["updated_at"] = time.time()
        cols = ", ".join(fields)
        marks = ", ".join("?" for _ in fields)
        update = ", ".join(f"{k} = excluded.{k}" for k in fields)
        with self.transaction() as db:
            db.execute(
                f"INSERT INTO workers (name, {cols}) VALUES (?, {marks}) ON CONFLICT(name) DO UPDATE SET {update}",
                (name, *fields.values()),
            )

    def claim(self, model: str, worker: str) -> Claim | None:
        """Take the next queued job of ``model`` (highest priority, then oldest), or None."""
        token = secrets.token_hex(8)
        with self.transaction() as db:
            row = db.execute(
                "SELECT id, params, input_path FROM jobs WHERE status = 'queued' AND model = ? "
                "ORDER BY priority DESC, seq ASC LIMIT 1",
                (model,),
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE jobs SET status = 'in_progress', worker = ?, claim = ?, started_at = ?, "
                "attempts = attempts + 1, stage = 'starting' WHERE id = ? AND status = 'queued'",
                (worker, token, time.time(), row["id"]),
            )
        return Claim(row["id"], model, json.loads(row["params"]), token, row["input_path"])

    def progress(self, claim: Claim, **fields: Any) -> bool:
        """Record progress of a claimed job; False when the job is no longer this claim's (deleted)."""
        sets = ", ".join(f"{k} = ?" for k in fields)
        cur = self._db().execute(
            f"UPDATE jobs SET {sets} WHERE id = ? AND claim = ? AND status = 'in_progress'",
            (*fields.values(), claim.id, claim.token),
        )
        return cur.rowcount == 1

    def finish(self, claim: Claim, *, video_path: str | None, error: tuple[str, str] | None = None) -> bool:
        """Mark a claimed job completed (``video_path``) or failed (``error`` = (code, message)); False
        when the job is no longer this claim's."""
        now = time.time()
        with self.transaction() as db:
            row = db.execute(
                "SELECT started_at FROM jobs WHERE id = ? AND claim = ? AND status = 'in_progress'",
                (claim.id, claim.token),
            ).fetchone()
            if row is None:
                return False
            duration = now - (row[0] or now)
            if error is None:
                db.execute(
                    "UPDATE jobs SET status = 'completed', progress = 100, stage = 'done', eta_s = 0, "
                    "completed_at = ?, duration_s = ?, video_path = ?, claim = NULL WHERE id = ?",
                    (int(now), duration, video_path, claim.id),
                )
            else:
                db.execute(
                    "UPDATE jobs SET status = 'failed', error_code = ?, error_message = ?, completed_at = ?, "
                    "duration_s = ?, claim = NULL WHERE id = ?",
                    (error[0], error[1], int(now), duration, claim.id),
                )
        return True
