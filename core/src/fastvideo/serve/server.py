"""Running ``fv serve``: the data directory, the worker processes and uvicorn.

Start-up, in order: lock the data directory (one server per directory), check the models (the same
resolution ``fv generate`` does; a bad name fails here, before anything binds), open the queue and
recover it (jobs left running are failed with the reason, or re-queued with
``--requeue-interrupted``), start the workers, then serve. A worker that exits before its model is
loaded stops the server with its error; one that dies later has its job failed and is restarted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from fastvideo.errors import FastVideoError
from fastvideo.serve import ServeSettings
from fastvideo.serve.store import JobStore


def log(message: str) -> None:
    print(f"fv serve: {message}", file=sys.stderr, flush=True)


class DataDirLock:
    """An exclusive ``flock`` on ``DATA_DIR/server.lock`` for the server's lifetime."""

    def __init__(self, data_dir: Path) -> None:
        import fcntl

        self.path = data_dir / "server.lock"
        self.file = open(self.path, "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.file.seek(0)
            owner = self.file.read().strip() or "?"
            self.file.close()
            raise FastVideoError(
                f"another fv serve (pid {owner}) is using the data directory {str(data_dir)!r}; "
                "stop it or pass another --data-dir"
            ) from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(str(os.getpid()))
        self.file.flush()


class WorkerPool:
    """The worker processes: ``settings.workers`` per model, each on its own GPU slice."""

    def __init__(self, settings: ServeSettings, store: JobStore) -> None:
        self.settings = settings
        self.store = store
        self.procs: dict[str, list[subprocess.Popen[bytes]]] = {}  # a worker's processes (one per GPU)
        self.models: dict[str, str] = {}
        self.slots: dict[str, int] = {}
        self.fatal: str | None = None
        self.stopping = False
        payload = {
            "db_path": str(settings.db_path),
            "videos_dir": str(settings.videos_dir),
            "device": settings.device,
            "dtype": settings.dtype,
            "attention_backend": settings.attention_backend,
            "compile": settings.compile,
            "num_gpus": settings.num_gpus,
            "poll_s": settings.poll_s,
        }
        self.payload = json.dumps(payload)

    def start(self) -> None:
        slot = 0
        for model in self.settings.models:
            for i in range(self.settings.workers):
                name = f"{model}/{i}" if len(self.settings.models) > 1 else str(i)
                self.models[name] = model
                self.slots[name] = slot
                slot += 1
                self._spawn(name)

    def _env(self, name: str) -> dict[str, str]:
        """This worker's GPUs. One GPU per worker: the worker takes ``cuda:(slot % GPUs)`` itself
        (several workers may share a GPU). Several: its slice of ``CUDA_VISIBLE_DEVICES`` (or of 0..N-1)."""
        env = dict(os.environ, FASTVIDEO_SERVE_SLOT=str(self.slots[name]))
        total = len(self.slots)
        if total > 1 and self.settings.num_gpus > 1 and not (self.settings.device or "").startswith("cpu"):
            visible = [d for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
            need = total * self.settings.num_gpus
            if visible and len(visible) < need:
                raise FastVideoError(
                    f"{total} workers x {self.settings.num_gpus} GPUs need {need} devices, but "
                    f"CUDA_VISIBLE_DEVICES lists {len(visible)}; lower --workers or --num-gpus"
                )
            devices = visible or [str(d) for d in range(need)]
            start = self.slots[name] * self.settings.num_gpus
            env["CUDA_VISIBLE_DEVICES"] = ",".join(devices[start : start + self.settings.num_gpus])
        return env

    def _spawn(self, name: str) -> None:
        """Start worker ``name``: one process, or one per GPU (ranks of one process group, as torchrun
        would start them) when ``--num-gpus`` > 1."""
        cmd = [sys.executable, "-m", "fastvideo.serve.worker", self.payload, name, self.models[name]]
        env = self._env(name)
        world = self.settings.num_gpus
        if world > 1:
            env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE=str(world))
            env.update(LOCAL_WORLD_SIZE=str(world), GROUP_RANK="0")
        procs = []
        for rank in range(world):
            if world > 1:
                env = {**env, "RANK": str(rank), "LOCAL_RANK": str(rank)}
            procs.append(subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL))
        self.procs[name] = procs

    def watch(self, server: Any) -> None:
        """Until the server stops: fail the job of a worker that died and restart it; a worker that
        dies before its model loaded stops the server."""
        while not self.stopping:
            for name, procs in list(self.procs.items()):
                codes = [p.poll() for p in procs]
                code = next((c for c in codes if c is not None), None)
                if code is None or self.stopping:
                    continue
                for p in procs:  # a parallel worker that lost a rank is restarted whole
                    if p.poll() is None:
                        p.kill()
                    p.wait()
                states = {w["name"]: w for w in self.store.workers()}
                info = states.get(name, {})
                if info.get("state") != "ready":
                    reason = info.get("error") or f"exit code {code}"
                    self.fatal = f"worker {name} could not load {self.models[name]}: {reason}"
                    server.should_exit = True
                    self.stopping = True
                    return
                how = f"signal {-code}" if code < 0 else f"exit code {code}"
                failed = self.store.fail_worker_jobs(
                    name, f"the worker running this job died ({how}); submit it again"
                )
                log(f"worker {name} died ({how}); failed {', '.join(failed) or 'no job'}; restarting it")
                self.store.set_worker(name, model=self.models[name], state="exited", error=how)
                self._spawn(name)
            time.sleep(0.2)

    def stop(self) -> None:
        self.stopping = True
        everyone = [p for procs in self.procs.values() for p in procs]
        for proc in everyone:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in everyone:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(settings: ServeSettings) -> None:
    """Serve until SIGINT/SIGTERM; raises FastVideoError when a worker cannot load its model."""
    import uvicorn

    from fastvideo.configs import PipelineConfig
    from fastvideo.serve.app import create_app
    from fastvideo.serve.params import Validator
    from fastvideo.video import remove_stale_temps

    config = PipelineConfig(
        device=settings.device,
        dtype=settings.dtype,
        compile=settings.compile,
        attention_backend=settings.attention_backend,
        progress=False,
    )
    # an unknown model or backend fails here, before anything is created or bound
    validator = Validator(
        settings.models, config, max_prompt_chars=settings.max_prompt_chars, max_pixels=settings.max_pixels
    )
    for folder in (settings.data_dir, settings.videos_dir, settings.inputs_dir):
        folder.mkdir(parents=True, exist_ok=True)
    lock = DataDirLock(settings.data_dir)
    store = JobStore(settings.db_path)
    queued, interrupted = store.recover(requeue=settings.requeue_interrupted)
    if interrupted:
        what = "re-queued" if settings.requeue_interrupted else "marked failed"
        log(f"{len(interrupted)} job(s) interrupted by the last stop {what}: {', '.join(interrupted)}")
    if queued:
        log(f"{queued} queued job(s) kept from the last run")
    remove_stale_temps(settings.videos_dir)
    if settings.api_key is None and settings.host not in ("127.0.0.1", "localhost", "::1"):
        log(
            f"warning: listening on {settings.host} without an API key: anyone who reaches this port can submit jobs"
        )
    pool = WorkerPool(settings, store)
    pool.start()
    app = create_app(settings, store, validator)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=5,
        )
    )
    threading.Thread(target=pool.watch, args=(server,), name="fv-serve-workers", daemon=True).start()
    threading.Thread(target=_announce, args=(server, settings), name="fv-serve-announce", daemon=True).start()
    try:
        server.run()
    finally:
        pool.stop()
        lock.file.close()
    if pool.fatal:
        raise FastVideoError(pool.fatal)


def _announce(server: Any, settings: ServeSettings) -> None:
    """``listening on http://HOST:PORT`` once uvicorn is up (with the real port when ``--port 0``)."""
    while not server.started:
        if server.should_exit:
            return
        time.sleep(0.05)
    port = settings.port
    for s in getattr(server, "servers", []):
        for sock in s.sockets:
            port = sock.getsockname()[1]
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    workers = f"{settings.workers} worker(s) per model"
    log(
        f"listening on http://{host}:{port} ({', '.join(settings.models)}; {workers}; data in {settings.data_dir})"
    )
