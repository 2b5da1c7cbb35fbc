"""A Hugging Face cache laid out on disk, so that offline resolution can be tested without the Hub."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

FAKE_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def write_hf_cache(hf_home: str | Path, repo_id: str, files: Mapping[str, str | bytes]) -> Path:
    """Write ``files`` as huggingface_hub caches a model repo under ``HF_HOME`` and return the snapshot.

    The layout is the cache's own (``hub/models--org--name/refs/main`` holding a commit, files in
    ``snapshots/<commit>/``), so a process started with ``HF_HOME=hf_home HF_HUB_OFFLINE=1`` finds
    the repo exactly as if it had been downloaded. huggingface_hub reads ``HF_HOME`` at import, so
    use it from a subprocess (:func:`fastvideo.testing.run_python`).
    """
    repo = Path(hf_home) / "hub" / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / FAKE_COMMIT
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(FAKE_COMMIT)
    for name, content in files.items():
        path = snapshot / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return snapshot
