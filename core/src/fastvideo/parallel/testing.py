"""Test kit for parallel code: run a function on several processes (CPU over gloo, or one GPU each
over NCCL) and collect results.

    results = run_ranks("tests/test_mine.py:suite", world=2, args=(str(tmp_path),))
    # results[r] is what suite(rank=r, world=2, *args) returned on rank r

The target is ``"path/to/file.py:function"`` or ``"package.module:function"``; a test module can
name itself (``f"{__file__}:suite"``), since spawned processes load it by path. Each process joins
one process group (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``PORT`` are set,
so code under test sees what torchrun would give it). One spawn can run many cases: start the
group once and loop inside the target, as the core's tests do. Failures come back as
:class:`RankFailure` with the rank's traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pickle
import sys
import tempfile
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any


class RankFailure(AssertionError):
    """A rank of :func:`run_ranks` raised; the message holds its traceback."""


def load_target(target: str) -> Any:
    """``"file.py:name"`` or ``"module:name"`` -> the object."""
    where, _, name = target.rpartition(":")
    if where.endswith(".py"):
        spec = importlib.util.spec_from_file_location(f"_fv_ranks_{Path(where).stem}", where)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    return getattr(module, name)


def _entry(
    rank: int,
    world: int,
    port: int,
    folder: str,
    target: str,
    args: tuple[Any, ...],
    timeout: float,
    backend: str = "gloo",
) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_WORLD_SIZE=str(world),
    )
    out = Path(folder) / f"rank-{rank}.pkl"
    try:
        if backend == "nccl":
            torch.cuda.set_device(rank)
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout))
        result = ("ok", load_target(target)(rank, world, *args))
    except BaseException:
        out.write_bytes(pickle.dumps(("error", traceback.format_exc())))
        os._exit(1)  # the parent terminates the ranks still waiting for this one
    out.write_bytes(pickle.dumps(result))
    dist.destroy_process_group()


def run_ranks(
    target: str,
    world: int,
    *,
    args: tuple[Any, ...] = (),
    timeout: float = 120.0,
    start_method: str | None = None,
    backend: str = "gloo",
) -> list[Any]:
    """Call ``target(rank, world, *args)`` on ``world`` processes; return each rank's result.

    ``backend="nccl"``: rank ``r`` runs on GPU ``r`` (GPU tests; the processes are spawned).

    Results must be picklable (tensors are). Collectives time out after ``timeout`` seconds. The
    processes are forked (they inherit this process's imports: fast) unless CUDA is initialized
    here or ``start_method`` says otherwise; each uses ``cpu_count / world`` threads.

    :raises RankFailure: a rank raised (the first failing rank's traceback is in the message).
    """
    import torch.multiprocessing as mp

    from fastvideo.parallel.launch import _free_port

    with tempfile.TemporaryDirectory(prefix="fv-ranks-") as tmp:
        if start_method is None:
            import torch

            cuda = torch.cuda.is_initialized() or backend == "nccl"
            start_method = "spawn" if cuda or sys.platform != "linux" else "fork"
        context = mp.start_processes(
            _entry,
            args=(world, _free_port(), tmp, target, args, timeout, backend),
            nprocs=world,
            join=False,
            start_method=start_method,
        )
        crash = None
        try:
            while not context.join():
                pass
        except Exception as exc:
            crash = exc
        found = {}
        for rank in range(world):
            path = Path(tmp) / f"rank-{rank}.pkl"
            if path.is_file():
                found[rank] = pickle.loads(path.read_bytes())
        for rank, (status, value) in sorted(found.items()):
            if status == "error":
                raise RankFailure(f"rank {rank} of {target} raised:\n{value}")
        missing = sorted(set(range(world)) - set(found))
        if missing:
            raise RankFailure(f"rank {missing[0]} of {target} died without a result: {crash}")
        return [found[rank][1] for rank in range(world)]
