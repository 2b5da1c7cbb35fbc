"""Launching a parallel generation: one worker process per GPU, or the processes torchrun started.

``fv generate --num-gpus N`` calls :func:`generate_distributed`, which spawns ``N`` workers on this
machine (``torch.multiprocessing``, start method ``spawn``), each joining one process group
(NCCL on GPUs, gloo on CPU) through ``MASTER_ADDR=127.0.0.1`` and a free port. Rank 0 writes the
video and returns its summary. When any worker fails, the others are terminated at once and the
error of the rank that failed first (the root cause; the others only lost their peers) is raised.

Under torchrun (``torchrun ... -m fastvideo.cli generate ...``) the same code runs in each process
torchrun started, on one machine or several; torchrun stops all ranks when one fails.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastvideo.errors import FastVideoError
from fastvideo.parallel.state import env_world_size

if TYPE_CHECKING:
    from fastvideo.configs import PipelineConfig
    from fastvideo.parallel.state import ParallelState


class WorkerError(RuntimeError):
    """A worker process of a parallel run failed; the message names its rank and error."""


def launched() -> bool:
    """Whether this process was started as one rank of a run (torchrun or the launcher)."""
    return "RANK" in os.environ and env_world_size() > 1


def join_run(config: PipelineConfig) -> tuple[ParallelState, PipelineConfig]:
    """In a rank's process: join the process group and return its state and the rank's config.

    Under torchrun, ``num_gpus`` left at 1 takes the world size. The rank's config has its device
    (``cuda:LOCAL_RANK`` or ``cpu``) and progress bars on rank 0 only.

    :raises ValueError: the process was not started as one rank of ``num_gpus`` processes.
    """
    from fastvideo.parallel.state import init_parallel

    par = config.parallel
    world = env_world_size()
    if launched() and par.num_gpus == 1:
        par = dataclasses.replace(par, num_gpus=world)
    if not launched():
        n = par.num_gpus
        raise ValueError(
            f"num_gpus={n} needs one process per GPU: run `fv generate --num-gpus {n} ...`, or start your "
            f"script with `torchrun --nproc-per-node {n} script.py` (docs/parallel.md)"
        )
    state = init_parallel(par, config.device)
    config = dataclasses.replace(
        config, parallel=par, device=str(state.device), progress=config.progress and state.is_main
    )
    return state, config


# ---------------------------------------------------------------- one rank's work


@dataclasses.dataclass(frozen=True)
class Request:
    """Everything a worker needs to generate one video (picklable)."""

    model: str
    config: PipelineConfig
    sampling: dict[str, Any]
    output: str | None
    overwrite: bool = False
    lossless: bool = False
    loras: tuple[str, ...] = ()


def exit_worker(code: int = 0) -> None:
    """End this worker process now, after flushing its output, without interpreter finalization.

    A worker's process group is already destroyed when it gets here; what remains are C++ static
    destructors, and with gloo one of them occasionally meets a still-joinable thread and aborts
    the process ("terminate called without an active exception", SIGABRT after the work was done),
    which torchrun and the spawn launcher report as a failed rank. Nothing is left to clean up.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def generate_here(request: Request) -> dict[str, Any] | None:
    """Run ``request`` as this process's rank; rank 0 writes the video and returns its summary."""
    from fastvideo.generator import VideoGenerator
    from fastvideo.parallel.state import teardown

    try:
        gen = VideoGenerator.from_config(request.model, request.config, sampling_overrides=request.sampling)
        for spec in request.loras:
            gen.load_lora(spec)  # type: ignore[attr-defined]
        if request.loras:
            gen.merge_loras()  # type: ignore[attr-defined]
        result = gen.generate_video(
            output_path=request.output, overwrite=request.overwrite, lossless=request.lossless
        )
        state = gen.parallel_state
        return result.summary() if state is None or state.is_main else None
    finally:
        teardown()


# ---------------------------------------------------------------- spawning workers


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(local_rank: int, world: int, port: int, folder: str, request: Request) -> None:
    """Entry point of a spawned worker: one rank; errors are recorded for the parent, then exit 1."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(local_rank),
        LOCAL_RANK=str(local_rank),
        WORLD_SIZE=str(world),
        LOCAL_WORLD_SIZE=str(world),
    )
    try:
        summary = generate_here(request)
        if summary is not None:
            (Path(folder) / "result.json").write_text(json.dumps(summary))
    except BaseException as exc:
        record = {
            "time": time.time(),
            "rank": local_rank,
            "type": type(exc).__name__,
            "message": (str(exc).splitlines() or [""])[0],
            "bad_input": isinstance(exc, (ValueError, FastVideoError)),
            "traceback": traceback.format_exc(),
        }
        (Path(folder) / f"error-{local_rank}.json").write_text(json.dumps(record))
        exit_worker(1)  # no teardown: peers may be blocked in collectives; the parent ends them
    exit_worker(0)


def _root_cause(folder: Path, exc: BaseException) -> Exception:
    """The first recorded worker error (the others follow from it), as the exception to raise."""
    records = [json.loads(p.read_text()) for p in sorted(folder.glob("error-*.json"))]
    if not records:
        rank = getattr(exc, "error_index", "?")
        code, sig = getattr(exc, "exit_code", None), getattr(exc, "signal_name", None)
        how = f"was killed by {sig}" if sig else f"exited with code {code}"
        return WorkerError(f"rank {rank} {how} without an error message (out of memory?)")
    first = min(records, key=lambda r: r["time"])
    text = f"{first['type']}: {first['message']}" if first["message"] else first["type"]
    err: Exception = (
        ValueError(f"rank {first['rank']}: {first['message']}")
        if first["bad_input"]
        else (WorkerError(f"rank {first['rank']} failed: {text}"))
    )
    if hasattr(err, "add_note"):
        err.add_note(f"traceback of rank {first['rank']}:\n{first['traceback']}")
    return err


def spawn(request: Request, world: int) -> dict[str, Any]:
    """Run ``request`` on ``world`` spawned workers of this machine and return rank 0's summary.

    :raises ValueError: a worker rejected the input (the root cause's message, with its rank).
    :raises WorkerError: a worker failed otherwise; the others were terminated.
    """
    import logging

    import torch.multiprocessing as mp
    from torch.multiprocessing.spawn import ProcessException

    logging.getLogger("torch.multiprocessing.spawn").setLevel(
        logging.ERROR
    )  # "Terminating process ..." lines
    with tempfile.TemporaryDirectory(prefix="fv-parallel-") as tmp:
        folder = Path(tmp)
        context = mp.start_processes(
            _worker, args=(world, _free_port(), tmp, request), nprocs=world, join=False, start_method="spawn"
        )
        try:
            while not context.join():
                pass
        except ProcessException as exc:  # join() has terminated the other workers
            raise _root_cause(folder, exc) from None
        except BaseException:
            for proc in context.processes:
                if proc.is_alive():
                    proc.terminate()
            raise
        return json.loads((folder / "result.json").read_text())


def check_devices(config: PipelineConfig) -> None:
    """Fail before spawning when this machine cannot host ``num_gpus`` CUDA workers."""
    import torch

    n = config.parallel.num_gpus
    if config.device is not None and torch.device(config.device).type == "cpu":
        return
    if not torch.cuda.is_available():
        if config.device is not None:
            raise ValueError(
                f"device={config.device!r} was requested but CUDA is not available; use --device cpu"
            )
        return  # CPU workers over gloo
    count = torch.cuda.device_count()
    if n > count:
        raise ValueError(
            f"--num-gpus {n} but this machine has {count} visible GPU(s); use --num-gpus {count}, or torchrun "
            f"across machines (docs/parallel.md)"
        )


def generate_distributed(request: Request) -> dict[str, Any] | None:
    """Generate with ``request.config.parallel``: in this process under torchrun, else on spawned workers.

    :returns: rank 0's result summary (the ``--json`` output); None on the other torchrun ranks.
    """
    if launched():
        return generate_here(request)
    check_devices(request.config)
    return spawn(request, request.config.parallel.num_gpus)
