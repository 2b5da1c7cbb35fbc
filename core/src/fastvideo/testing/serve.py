"""``fv serve`` in a subprocess for tests: started on a free port, waited for, killed or stopped.

    with ServeProcess(["--model", "wan-toy"], data_dir=tmp_path / "data") as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="unused")

Standard library only (the tests bring their own HTTP clients).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastvideo.testing.dists import fv_command

_LISTENING = re.compile(r"listening on (http://[^\s]+)")


class ServeProcess:
    """``fv serve ARGS --port 0 --data-dir DATA_DIR``, its stderr in ``DATA_DIR/../serve-N.log``."""

    def __init__(
        self,
        args: Sequence[str],
        *,
        data_dir: Path,
        env: dict[str, str] | None = None,
        api_key: str | None = None,
    ) -> None:
        self.args = list(args)
        self.data_dir = Path(data_dir)
        self.env = dict(os.environ if env is None else env)
        self.env.setdefault("HF_HUB_OFFLINE", "1")
        self.api_key = api_key
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.log_path = self.data_dir.parent / f"serve-{self.data_dir.name}.log"
        self._log_start = 0

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def start(self, timeout: float = 180, *, wait_ready: bool = True) -> ServeProcess:
        cmd = [*fv_command(), "serve", *self.args, "--port", "0", "--data-dir", str(self.data_dir)]
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + timeout
        while not self.url:
            found = _LISTENING.search(self.log())
            if found:
                self.url = found[1]
                break
            self._check_alive(deadline)
            time.sleep(0.05)
        while wait_ready and self.get("/health")["status"] != "ok":
            self._check_alive(deadline)
            time.sleep(0.1)
        return self

    def _check_alive(self, deadline: float) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"fv serve exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"fv serve did not become ready:\n{self.log()[-3000:]}")

    def log(self) -> str:
        """What this run printed so far."""
        if not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as f:
            f.seek(self._log_start)
            return f.read().decode(errors="replace")

    def get(self, path: str) -> Any:
        """GET ``path`` (with the API key) as JSON."""
        request = urllib.request.Request(self.url + path)
        if self.api_key:
            request.add_header("Authorization", f"Bearer {self.api_key}")
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def kill(self) -> None:
        """SIGKILL the server (its workers die with it) and wait for them to be gone."""
        assert self.proc is not None
        workers = [w["pid"] for w in self._workers()]
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        _wait_gone(workers)
        self.url = ""

    def _workers(self) -> list[dict[str, Any]]:
        try:
            return [w for m in self.get("/v1/fastvideo/models")["data"] for w in m["workers"] if w["pid"]]
        except (OSError, urllib.error.URLError):
            return []

    def stop(self) -> None:
        """SIGTERM and wait (SIGKILL after 30 s)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> ServeProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _wait_gone(pids: list[int], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            try:  # a zombie of ours: reap it
                if os.waitpid(pid, os.WNOHANG)[0]:
                    break
            except ChildProcessError:
                pass
            if _zombie(pid):
                break
            time.sleep(0.05)
        else:
            raise TimeoutError(f"worker pid {pid} outlived the killed server")


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return False


def claim_until_empty(path: str | Path, worker: str, out: Any) -> None:
    """A worker process's loop over the job store at ``path``: claim and finish jobs until none is
    queued, then put the claimed ids on ``out`` (a multiprocessing queue). Importable by spawned
    processes, unlike a function defined in a test module."""
    from fastvideo.serve.store import JobStore

    store = JobStore(path)
    got = []
    while (claim := store.claim("m", worker)) is not None:
        got.append(claim.id)
        store.finish(claim, video_path=f"{claim.id}.mp4")
    out.put(got)
