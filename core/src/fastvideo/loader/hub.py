"""Fetching diffusers-format folders from the Hugging Face Hub (or its local cache)."""

from __future__ import annotations

import os
from pathlib import Path

from fastvideo.errors import ModelNotCachedError, ModelNotFoundError

#: What a diffusers-format repo needs: configs, safetensors weights, tokenizer files.
ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken"]


def hub_token(explicit: str | None = None) -> str | None:
    """The token to use: explicit, else ``HF_TOKEN``, else ``HF_API_KEY`` (FastVideo's variable)."""
    return explicit or os.environ.get("HF_TOKEN") or os.environ.get("HF_API_KEY") or None


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


_PROXY_VARS = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "https_proxy", "http_proxy", "all_proxy")
_PROBE_TIMEOUT_S = 3.0
_PROBED: dict[str, str | None] = {}


def _hub_unreachable() -> str | None:
    """Why the Hub endpoint cannot be reached, or ``None``: one TCP connect (at most 3 s), so that
    a machine without network fails at once instead of after huggingface_hub's retries (~25 s).

    Skipped (``None``) when a proxy is configured: the proxy may reach what a direct connect cannot.
    """
    if any(os.environ.get(var) for var in _PROXY_VARS):
        return None
    import socket
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    endpoint = str(constants.ENDPOINT)
    if endpoint not in _PROBED:
        url = urlsplit(endpoint)
        host, port = url.hostname or "", url.port or (443 if url.scheme == "https" else 80)
        try:
            with socket.create_connection((host, port), timeout=_PROBE_TIMEOUT_S):
                _PROBED[endpoint] = None
        except OSError as exc:
            _PROBED[endpoint] = f"{endpoint} cannot be reached: {exc.strerror or type(exc).__name__}"
    return _PROBED[endpoint]


def _download_hint(repo_id: str) -> str:
    return f"download it first with `hf download {repo_id}` (or `huggingface-cli download {repo_id}`) on a machine with Hub access"


def fetch_model(
    repo_id: str,
    *,
    revision: str | None = None,
    token: str | None = None,
    local_files_only: bool = False,
    filename: str | None = None,
) -> Path:
    """Local path of a Hub repo snapshot (or of one ``filename`` in it), downloading if allowed.

    Honours ``HF_HUB_OFFLINE`` and the local cache. A repo that is not cached while the Hub is
    unreachable raises :class:`ModelNotCachedError` naming the repo and how to download it.
    """
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = local_files_only or _offline()
    unreachable = None if offline else _hub_unreachable()
    auth = hub_token(token)
    try:
        if filename is not None:
            file = hf_hub_download(
                repo_id,
                filename,
                revision=revision,
                token=auth,
                local_files_only=offline or bool(unreachable),
            )
            return Path(str(file))
        from fastvideo import progress

        with progress.task(f"fetching {repo_id}", None):
            folder = snapshot_download(
                repo_id,
                allow_patterns=ALLOW_PATTERNS,
                revision=revision,
                token=auth,
                local_files_only=offline or bool(unreachable),
            )
            return Path(str(folder))
    except GatedRepoError:
        raise ModelNotFoundError(
            f"{repo_id} is gated: accept its licence on the Hub and set HF_TOKEN (or HF_API_KEY)"
        ) from None
    except RepositoryNotFoundError:
        raise ModelNotFoundError(
            f"{repo_id} was not found on the Hugging Face Hub (or it is private: set HF_TOKEN)"
        ) from None
    except RevisionNotFoundError:
        raise ModelNotFoundError(f"revision {revision!r} of {repo_id} does not exist") from None
    except LocalEntryNotFoundError:
        why = f"the Hub cannot be reached ({unreachable})" if unreachable else "the Hub cannot be reached"
        if offline:
            why = "HF_HUB_OFFLINE=1 is set" if _offline() else "local_files_only=True was passed"
        raise ModelNotCachedError(
            f"{repo_id} is not in the local Hugging Face cache and {why}; {_download_hint(repo_id)}"
        ) from None
    except OSError as exc:  # connection errors surface as OSError subclasses
        raise ModelNotCachedError(
            f"{repo_id} could not be fetched ({type(exc).__name__}); {_download_hint(repo_id)}"
        ) from None
