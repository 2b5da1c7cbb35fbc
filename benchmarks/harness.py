"""Benchmark harness: time callables on the GPU side by side and append a row to docs/benchmarks.md.

Used by every ``bench_*.py`` here. Timings use CUDA events around each call after warm-up and report
the median; peak memory is ``torch.cuda.max_memory_allocated`` over the timed calls.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "benchmarks.md"


@dataclass
class Timing:
    name: str
    median_ms: float
    min_ms: float
    peak_gib: float
    times_ms: list[float] = field(default_factory=list)


_profiled: dict[str, int] = {}


def profile_once(name: str, fn: Callable[[], Any]) -> None:
    """With ``BENCH_PROFILE=DIR`` set, profile one call of ``fn`` (after its warm-up) and write the
    CUDA kernels by total time to ``DIR/<name>_<n>.txt`` (printing the top 20): where a forward's
    time goes, ours against the reference's, in the same run."""
    folder = os.environ.get("BENCH_PROFILE")
    if not folder or not torch.cuda.is_available():
        return
    from torch.profiler import ProfilerActivity, profile

    n = _profiled[name] = _profiled.get(name, 0) + 1
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as prof:
        fn()
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=40, max_name_column_width=90)
    Path(folder).mkdir(parents=True, exist_ok=True)
    stem = Path(folder) / f"{name.replace(' ', '_')}_{n}"
    stem.with_suffix(".txt").write_text(table)
    # the same ops split by input shapes (self- and cross-attention apart), with whole kernel names
    stem.with_name(stem.name + "_shapes.txt").write_text(
        prof.key_averages(group_by_input_shape=True).table(
            sort_by="cuda_time_total", row_limit=60, max_name_column_width=300, max_shapes_column_width=200
        )
    )
    print(f"-- profile of {name} (call {n}):\n" + "\n".join(table.splitlines()[:24]), flush=True)


def time_interleaved(
    fns: dict[str, Callable[[], Any]], *, warmup: int = 1, iters: int = 3
) -> dict[str, tuple[Timing, Any]]:
    """Median time and peak memory of each of ``fns``, their timed calls interleaved (A B A B ...).

    A card that has been busy for a while clocks lower (heat, power), so timing one model's calls
    after the other's favours whichever goes first; alternating the calls gives both the same
    conditions. Each function is warmed up (and profiled under ``BENCH_PROFILE``) first."""
    outs: dict[str, Any] = {}
    for name, fn in fns.items():
        for _ in range(warmup):
            outs[name] = fn()
        profile_once(name, fn)
    times: dict[str, list[float]] = {name: [] for name in fns}
    peaks = dict.fromkeys(fns, 0.0)
    for _ in range(iters):
        for name, fn in fns.items():
            outs[name] = None  # the previous output is not held while this call runs
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            ms, outs[name] = _event_ms(fn)
            times[name].append(ms)
            peaks[name] = max(peaks[name], torch.cuda.max_memory_allocated() / 2**30)
    return {
        name: (Timing(name, statistics.median(t), min(t), peaks[name], t), outs[name])
        for name, t in times.items()
    }


def _event_ms(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(ms, output) of one call of ``fn``, timed by CUDA events."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    out = fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end), out


def time_cuda(name: str, fn: Callable[[], Any], *, warmup: int = 2, iters: int = 5) -> tuple[Timing, Any]:
    """Median time of ``fn()`` over ``iters`` runs after ``warmup`` runs, with peak memory."""
    out = None
    for _ in range(warmup):
        out = fn()
    profile_once(name, fn)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(iters):
        ms, out = _event_ms(fn)
        times.append(ms)
    peak = torch.cuda.max_memory_allocated() / 2**30
    return Timing(name, statistics.median(times), min(times), peak, times), out


def time_cpu(name: str, fn: Callable[[], Any], *, warmup: int = 2, iters: int = 5) -> tuple[Timing, Any]:
    """:func:`time_cuda` for the benchmarks' CPU dry runs: wall-clock time, no peak memory (0)."""
    out = None
    for _ in range(warmup):
        out = fn()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        out = fn()
        times.append((time.perf_counter() - start) * 1e3)
    return Timing(name, statistics.median(times), min(times), 0.0, times), out


def time_call(
    name: str, fn: Callable[[], Any], *, device: str | torch.device, warmup: int = 2, iters: int = 5
) -> tuple[Timing, Any]:
    """:func:`time_cuda` on a CUDA ``device``, else :func:`time_cpu`."""
    timer = time_cuda if torch.device(device).type == "cuda" else time_cpu
    return timer(name, fn, warmup=warmup, iters=iters)


def environment() -> dict[str, str]:
    """Card, driver-visible versions and the command line, for the results table."""
    info = {
        "card": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "cuda": str(torch.version.cuda),
        "python": platform.python_version(),
        "date": _dt.date.today().isoformat(),
        "command": " ".join(["python", *sys.argv]),
    }
    try:
        import diffusers

        info["diffusers"] = diffusers.__version__
    except ImportError:
        info["diffusers"] = "-"
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = "-"
    return info


def append_row(section: str, header: list[str], row: list[Any], *, path: Path | None = None) -> None:
    """Append ``row`` under the markdown table of ``section`` (created when absent).

    Also writes the row as JSON to ``$OUT`` when that is set, so runs on a remote machine can be
    copied back.
    """
    path = path or RESULTS
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    title = f"## {section}"
    line = "| " + " | ".join(str(c) for c in row) + " |"
    if title not in text:
        text += f"\n{title}\n\n| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n"
        text += line + "\n"
    else:
        head, _, tail = text.partition(title)
        body, sep, rest = tail.partition("\n## ")
        body = body.rstrip("\n") + "\n" + line + "\n"
        text = head + title + body + (("\n## " + rest) if sep else "")
    path.write_text(text)
    out = os.environ.get("OUT")
    if out:
        with open(Path(out) / "bench_rows.jsonl", "a") as f:
            f.write(json.dumps({"section": section, "header": header, "row": row}) + "\n")


def simulate_world(world: int) -> None:
    """Make this one process rank 0 of ``world`` (PyTorch's fake process group: every collective
    returns at once, leaving its output buffer as allocated).

    Everything is allocated as on rank 0 of a real ``world``-GPU run (FSDP2 shards, all-gathered
    blocks, Ulysses' head shards), so the peak memory per GPU is that run's, less NCCL's own buffers;
    the time is the compute of one rank alone, without any communication. What a card of a machine
    with fewer GPUs can say about a larger one: label its rows as simulated. Ulysses exchanges take
    the NCCL path (the peer-memory one needs the other ranks' processes).
    """
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world))
    os.environ["FASTVIDEO_ULYSSES_EXCHANGE"] = "nccl"
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world)


def add_simulate_world(parser: Any, what: str = "") -> None:
    """``--simulate-world N`` (see :func:`simulate_world`) on a benchmark's argument parser."""
    parser.add_argument(
        "--simulate-world",
        type=int,
        default=0,
        help=f"{what}run as rank 0 of this many GPUs on one (memory per GPU; compute time without communication)",
    )
