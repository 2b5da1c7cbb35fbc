"""Does cuDNN SDPA run faster when memory-bound work sits between its calls (issue #21)? Cosmos-2B's
self-attention (84480 tokens x 16 heads x 128) timed call by call with CUDA events, back to back and with
~30 ms of elementwise traffic between calls (diffusers' Cosmos spends ~0.9 s of its 3.9 s forward in
elementwise kernels between attention calls; ours spends 0.09 s), while ``nvidia-smi`` samples the SM
clock and power. Tells whether the 4 % per-call gap between the same cuDNN kernel in diffusers and in
ours is the card's power management rather than anything in our inputs.

    python benchmarks/sdpa_power.py            # prints per-mode SDPA ms, SM MHz and W while it ran
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time

import torch
import torch.nn.functional as F


def _sample_file() -> tuple[subprocess.Popen, str]:  # type: ignore[type-arg]
    path = tempfile.mktemp(suffix=".csv")
    cmd = ["nvidia-smi", "--query-gpu=clocks.sm,power.draw", "--format=csv,noheader,nounits", "-lms", "20"]
    return subprocess.Popen(cmd, stdout=open(path, "w"), stderr=subprocess.DEVNULL), path


def _read(path: str) -> tuple[float, float]:
    """Mean SM clock (MHz) and power (W) over the sampler's rows."""
    rows = []
    for line in open(path):
        parts = [p.strip() for p in line.split(",")]
        try:
            rows.append((float(parts[0]), float(parts[1])))
        except (ValueError, IndexError):
            continue
    if not rows:
        return float("nan"), float("nan")
    return statistics.mean(r[0] for r in rows), statistics.mean(r[1] for r in rows)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=84480)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--calls", type=int, default=24)
    ap.add_argument("--gap-ms", type=float, default=30.0, help="elementwise work between calls")
    a = ap.parse_args()
    q, k, v = (torch.randn(1, a.heads, a.tokens, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    buf = torch.randn(256 * 1024 * 1024 // 2, device="cuda", dtype=torch.bfloat16)  # 256 MiB
    # calibrate the elementwise gap: one in-place pass over 256 MiB reads and writes 512 MiB
    for _ in range(3):
        buf.mul_(1.0)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(20):
        buf.mul_(1.0)
    torch.cuda.synchronize()
    per_pass = (time.perf_counter() - t) / 20 * 1e3
    passes = max(1, round(a.gap_ms / per_pass))
    print(
        torch.cuda.get_device_name(),
        torch.__version__,
        f"H={a.heads} L={a.tokens} D=128;",
        f"gap = {passes} passes of {per_pass:.2f} ms",
        flush=True,
    )

    def run(gap: bool) -> list[float]:
        times = []
        for _ in range(a.calls):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            F.scaled_dot_product_attention(q, k, v)
            e.record()
            if gap:
                for _ in range(passes):
                    buf.mul_(1.0)
            times.append((s, e))
        torch.cuda.synchronize()
        return [s.elapsed_time(e) for s, e in times]

    run(False)  # warm
    for mode in ["back to back", "with gaps", "back to back", "with gaps"]:
        proc, path = _sample_file()
        time.sleep(0.3)
        ms = run(mode == "with gaps")
        proc.terminate()
        proc.wait()
        mhz, watts = _read(path)
        ms_sorted = sorted(ms[2:])
        print(
            f"{mode:13s}: SDPA {statistics.mean(ms[2:]):.2f} ms/call (median {ms_sorted[len(ms_sorted) // 2]:.2f}),"
            f" SM {mhz:.0f} MHz, {watts:.0f} W (means over the sampler's run)",
            flush=True,
        )
        time.sleep(1.0)


if __name__ == "__main__":
    main()
