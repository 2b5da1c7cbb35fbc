"""Fixtures of the cross-package tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

#: The key of the shared ``fv serve`` (tests/test_serve*.py).
SERVE_KEY = "test-key-1234"
#: The queue bound of the shared server: the load test submits 50 jobs against it.
SERVE_MAX_QUEUE = 20


@pytest.fixture(scope="session")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """One ``fv serve --model wan-toy`` for the session (API key, queue of 20, requests up to 1 MiB), ready."""
    pytest.importorskip(
        "fastapi", reason="fv serve needs the serve extra: pip install 'fastvideo-core[serve]'"
    )
    from fastvideo.testing.serve import ServeProcess

    data = tmp_path_factory.mktemp("serve") / "data"
    args = [
        "--model",
        "wan-toy",
        "--device",
        "cpu",
        "--max-queue",
        str(SERVE_MAX_QUEUE),
        "--api-key",
        SERVE_KEY,
        "--max-request-mb",
        "1",
    ]
    server = ServeProcess(args, data_dir=data, api_key=SERVE_KEY)
    server.start()
    try:
        yield server
    finally:
        server.stop()
