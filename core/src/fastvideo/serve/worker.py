"""A worker of ``fv serve``: one process that loads a model once and runs the jobs it claims.

Started by the server as ``python -m fastvideo.serve.worker SETTINGS_JSON NAME MODEL``. It claims jobs
of its model from the SQLite queue (:class:`~fastvideo.serve.store.JobStore`), reports progress
through :func:`fastvideo.progress.listen`, writes each video atomically into the data directory and
marks the job done. It dies with the server (``PR_SET_PDEATHSIG`` where Linux has it, and a check of
its parent between jobs), so a killed server leaves no worker behind to race its successor.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, ClassVar

from fastvideo.serve.store import Claim, JobStore


class Cancelled(Exception):
    """The job was deleted while it ran."""


def _log(name: str, message: str) -> None:
    print(f"fv serve: worker {name}: {message}", file=sys.stderr, flush=True)


def _one_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Progress:
    """Turns the pipeline's tasks (denoising, decoding) into the job's percent, stage and ETA."""

    #: Percent reached when each stage starts and ends; the rest (loading text, latents) is below 2 %.
    SPANS: ClassVar[dict[str, tuple[int, int]]] = {"denoising": (2, 90), "decoding": (90, 99)}

    def __init__(self, store: JobStore, claim: Claim, *, stop_if_deleted: bool = True) -> None:
        self.store = store
        self.claim = claim
        self.stop_if_deleted = stop_if_deleted  # False in a parallel worker: its ranks must stay in step
        self.started: dict[str, float] = {}
        self.last_write = 0.0

    def __call__(self, description: str, done: int, total: int | None) -> None:
        now = time.monotonic()
        first = description not in self.started
        self.started.setdefault(description, now)
        low, high = self.SPANS.get(description, (2, 2))
        frac = done / total if total else 0.0
        eta = None
        if done and total:
            eta = (now - self.started[description]) / done * (total - done)
        finished = total is not None and done >= total
        if not (first or finished or now - self.last_write >= 0.1):
            return
        self.last_write = now
        alive = self.store.progress(
            self.claim,
            progress=int(low + (high - low) * frac),
            stage=description,
            step=done,
            steps=total,
            eta_s=None if eta is None else round(eta, 3),
        )
        if not alive and self.stop_if_deleted:
            raise Cancelled(self.claim.id)


def _free_cached_memory() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when the server that started it dies."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def load(settings: dict[str, Any], model: str) -> Any:
    from fastvideo.generator import VideoGenerator

    overrides = {k: settings[k] for k in ("device", "dtype", "attention_backend") if settings.get(k)}
    if settings.get("compile") is not None:
        overrides["compile"] = settings["compile"]
    slot = os.environ.get("FASTVIDEO_SERVE_SLOT")
    if slot is not None and settings.get("num_gpus", 1) == 1 and settings.get("device") in (None, "cuda"):
        import torch

        if torch.cuda.is_available():  # workers take the GPUs in turn (several may share one)
            overrides["device"] = f"cuda:{int(slot) % torch.cuda.device_count()}"
    # a parallel worker: its ranks were started with RANK/WORLD_SIZE, which set the GPU count
    return VideoGenerator.from_pretrained(model, progress=False, **overrides)


def run_job(
    gen: Any, store: JobStore, claim: Claim, videos: Path, name: str, *, stoppable: bool = True
) -> str:
    """Generate one claimed job; returns what happened (completed, failed, cancelled)."""
    from fastvideo import progress

    path = videos / f"{claim.id}.mp4"
    start = time.monotonic()
    _log(name, f"job {claim.id} started")
    try:
        with progress.listen(Progress(store, claim, stop_if_deleted=stoppable)):
            gen.generate_video(output_path=path, overwrite=True, **claim.params)
    except Cancelled:
        path.unlink(missing_ok=True)
        _log(name, f"job {claim.id} cancelled")
        return "cancelled"
    except Exception as exc:  # the job fails, the worker lives on
        path.unlink(missing_ok=True)
        _free_cached_memory()  # e.g. after running out of GPU memory
        if os.environ.get("FASTVIDEO_DEBUG", "") not in ("", "0"):
            traceback.print_exc()
        code = "invalid_request" if isinstance(exc, ValueError) else "generation_failed"
        store.finish(claim, video_path=None, error=(code, _one_line(exc)))
        _log(name, f"job {claim.id} failed: {_one_line(exc)}")
        return "failed"
    if not store.finish(claim, video_path=str(path)):  # deleted between the last step and now
        path.unlink(missing_ok=True)
        _log(name, f"job {claim.id} cancelled")
        return "cancelled"
    _log(name, f"job {claim.id} completed in {time.monotonic() - start:.1f} s")
    return "completed"


def main(argv: list[str]) -> int:
    settings, name, model = json.loads(argv[0]), argv[1], argv[2]
    _die_with_parent()
    parent = os.getppid()
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    store = JobStore(settings["db_path"])
    if rank == 0:  # rank 0 speaks for a parallel worker
        store.set_worker(name, model=model, pid=os.getpid(), state="loading", error=None)
    try:
        gen = load(settings, model)
    except Exception as exc:
        if rank == 0:
            store.set_worker(name, model=model, state="exited", error=_one_line(exc))
        _log(name, f"could not load {model}: {_one_line(exc)}")
        if os.environ.get("FASTVIDEO_DEBUG", "") not in ("", "0"):
            traceback.print_exc()
        return 3
    videos = Path(settings["videos_dir"])
    poll = float(settings.get("poll_s", 0.05))
    if rank == 0:
        device = str(gen.pipeline.components.get("device") or "")
        gpus = f", {world} processes" if world > 1 else ""
        store.set_worker(name, model=model, state="ready", backend=gen.backend, device=device)
        _log(name, f"{model} loaded ({gen.backend} attention{', ' + device if device else ''}{gpus})")
    if world > 1:
        return _parallel_loop(gen, store, model, name, videos, poll, parent, rank)
    wait = poll
    while os.getppid() == parent:
        claim = store.claim(model, name)
        if claim is None:
            time.sleep(wait)
            wait = min(wait * 1.25, 0.25)  # idle: look less often (at most 4 times a second)
            continue
        wait = poll
        run_job(gen, store, claim, videos, name)
    return 0


def _parallel_loop(
    gen: Any, store: JobStore, model: str, name: str, videos: Path, poll: float, parent: int, rank: int
) -> int:
    """One rank of a worker spanning several GPUs: rank 0 claims a job (or says there is none, at least
    every half second) and broadcasts it; every rank generates it; rank 0 writes and reports. A
    deleted job runs to its end (the ranks must stay in step) and its video is discarded."""
    import torch.distributed as dist

    while True:
        message: list[Any] = [None]
        if rank == 0:
            deadline = time.monotonic() + 0.5
            while os.getppid() == parent and message[0] is None and time.monotonic() < deadline:
                message[0] = store.claim(model, name)
                if message[0] is None:
                    time.sleep(poll)
            if os.getppid() != parent:
                message[0] = "stop"
        dist.broadcast_object_list(message, src=0)
        item = message[0]
        if item == "stop" or os.getppid() != parent:
            return 0
        if item is None:
            continue
        if rank == 0:
            run_job(gen, store, item, videos, name, stoppable=False)
        else:
            try:
                gen.generate_video(output_path=None, **item.params)
            except Exception as exc:  # rank 0 fails the job with its own error
                _log(f"{name} rank {rank}", f"job {item.id}: {_one_line(exc)}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
