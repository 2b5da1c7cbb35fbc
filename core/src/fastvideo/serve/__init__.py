"""``fv serve``: an OpenAI-compatible video generation server (docs/serve.md).

The HTTP side (:mod:`fastvideo.serve.app`, FastAPI on uvicorn) validates requests and records jobs in
SQLite (:mod:`fastvideo.serve.store`); worker processes (:mod:`fastvideo.serve.worker`), each holding
one model warm, claim the jobs and write the videos. Nothing here imports torch, FastAPI or uvicorn at
import time: ``fv serve --help`` stays fast, and ``fv generate`` does not need the ``serve`` extra.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

INSTALL_HINT = "pip install 'fastvideo-core[serve]'"


def default_data_dir() -> Path:
    """``$XDG_CACHE_HOME/fastvideo/serve`` (``~/.cache/fastvideo/serve``)."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "fastvideo" / "serve"


@dataclass(frozen=True, kw_only=True)
class ServeSettings:
    """What ``fv serve`` was started with."""

    models: tuple[str, ...]  # the only model names requests may ask for (no path, no Hub id)
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1  # per model, each a process holding the model warm
    num_gpus: int = 1  # per worker
    data_dir: Path = field(default_factory=default_data_dir)
    api_key: str | None = None
    max_queue: int = 64  # jobs waiting or running; beyond it 429
    max_request_bytes: int = 20 * 2**20
    max_prompt_chars: int = 4000
    max_pixels: int | None = None  # frames x height x width of one video; None: what the model takes
    requeue_interrupted: bool = False
    device: str | None = None
    dtype: str | None = None
    compile: bool | None = None  # torch.compile of the DiT blocks; None: on for CUDA (as fv generate)
    attention_backend: str | None = None
    poll_s: float = 0.05  # how often an idle worker looks for a job

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("fv serve needs at least one --model (a preset name or a local folder)")
        twice = sorted({m for m in self.models if self.models.count(m) > 1})
        if twice:
            raise ValueError(
                f"--model {twice[0]} is given twice; give each model once (--workers sets how many run it)"
            )
        for name, value, low in (
            ("--workers", self.workers, 1),
            ("--num-gpus", self.num_gpus, 1),
            ("--max-queue", self.max_queue, 1),
            ("--port", self.port, 0),
            ("--max-pixels", self.max_pixels if self.max_pixels is not None else 1, 1),
        ):
            if value < low:
                raise ValueError(f"{name} must be at least {low}, got {value}")
        if self.port > 65535:
            raise ValueError(f"--port must be at most 65535, got {self.port}")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("--api-key is empty; give a secret, or leave it (and FASTVIDEO_API_KEY) unset")

    @property
    def db_path(self) -> Path:
        return self.data_dir / "jobs.sqlite3"

    @property
    def videos_dir(self) -> Path:
        return self.data_dir / "videos"

    @property
    def inputs_dir(self) -> Path:
        return self.data_dir / "inputs"
