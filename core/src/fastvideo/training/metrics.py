"""Training metrics: one JSON line per step in ``metrics.jsonl``, a summary line on stdout every
``logging.every_steps`` steps, and W&B when it is installed and a project is configured."""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` (a partial last line, left by a killed run, is skipped)."""
    out = []
    for line in Path(path).read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def truncate_after(path: Path, step: int) -> None:
    """Drop the records of steps after ``step`` (a resumed run logs them again), atomically."""
    if not path.is_file():
        return
    keep = [r for r in read_metrics(path) if int(r.get("step", 0)) <= step]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
    os.replace(tmp, path)


class MetricsLogger:
    """Writes metrics on rank 0 only; other ranks get a logger that does nothing."""

    def __init__(
        self,
        output_dir: Path,
        *,
        enabled: bool,
        every_steps: int,
        max_steps: int,
        wandb: dict[str, Any] | None = None,
    ) -> None:
        self.enabled = enabled
        self.every_steps = every_steps
        self.max_steps = max_steps
        self.path = output_dir / METRICS_FILE
        self._file = open(self.path, "a") if enabled else None
        self._wandb = self._init_wandb(wandb) if enabled and wandb is not None else None

    @staticmethod
    def _init_wandb(options: dict[str, Any]) -> Any:
        project = options.get("project") or os.environ.get("WANDB_PROJECT")
        if not project:
            return None
        try:
            import wandb
        except ImportError:
            warnings.warn(
                f"W&B project {project!r} is configured but wandb is not installed (pip install wandb); "
                "logging to stdout and metrics.jsonl only",
                stacklevel=2,
            )
            return None
        return wandb.init(
            project=project,
            entity=options.get("entity"),
            name=options.get("name"),
            config=options.get("config"),
            resume="allow",
        )

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **metrics}
        assert self._file is not None
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._wandb is not None:
            self._wandb.log(metrics, step=step)
        if step % self.every_steps == 0 or step == self.max_steps:
            parts = [f"step {step}/{self.max_steps}"]
            options = sorted(k for k in metrics if "." in k)  # the attention backend's, e.g. vsa.sparsity
            for key in ("loss", "grad_norm", "lr", *options, "step_time_s", "max_memory_gib"):
                if key in metrics:
                    value = metrics[key]
                    parts.append(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}")
            print("  ".join(parts), file=sys.stdout, flush=True)

    def event(self, step: int, kind: str, **data: Any) -> None:
        """A non-metric record (validation videos, checkpoints, export) in the JSONL and on stdout."""
        if not self.enabled:
            return
        assert self._file is not None
        self._file.write(json.dumps({"step": step, "event": kind, **data}) + "\n")
        self._file.flush()
        print(f"{kind}: " + ", ".join(f"{k}={v}" for k, v in data.items()), file=sys.stdout, flush=True)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None
