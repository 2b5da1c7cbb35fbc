"""NVIDIA's Cosmos guardrail (``cosmos_guardrail.CosmosSafetyChecker``), run as diffusers runs it.

The Cosmos license (NVIDIA Open Model License) asks for the safety checker. When the package is
installed it checks the prompt before anything is encoded (an unsafe prompt is a one-line
``ValueError``) and the decoded uint8 frames after decoding (its ``check_video_safety`` may blur or
blank them). When it is not installed, generation proceeds only when the caller turned the
guardrail off explicitly (``fv generate --no-guardrail``, ``VideoGenerator.from_pretrained(...,
guardrail=False)``), and says so once per process.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from fastvideo.errors import BackendUnavailableError
from fastvideo.pipelines.batch import ForwardBatch
from fastvideo.pipelines.composed import PipelineStage

logger = logging.getLogger(__name__)
_said_off = False


def load_guardrail(wanted: bool | None) -> Any:
    """The safety checker to run, or None when ``wanted`` is False (said once per process).

    :raises BackendUnavailableError: ``wanted`` is not False and ``cosmos_guardrail`` is missing.
    """
    global _said_off
    if wanted is False:
        if not _said_off:
            logger.warning(
                "Cosmos guardrail off (--no-guardrail): prompts and videos are not safety-checked; the "
                "NVIDIA Open Model License asks for it (pip install cosmos_guardrail)"
            )
            _said_off = True
        return None
    try:
        from cosmos_guardrail import CosmosSafetyChecker
    except ImportError:
        raise BackendUnavailableError(
            "Cosmos checkpoints run NVIDIA's guardrail, and cosmos_guardrail is not installed: pip install "
            "'fastvideo-cosmos[guardrail]', or pass --no-guardrail (guardrail=False in the Python API) to "
            "generate without it"
        ) from None
    return CosmosSafetyChecker()


@contextlib.contextmanager
def on_device(checker: Any, device: Any) -> Iterator[None]:
    """Run the checker's models on the generation's device, then back on the CPU (as diffusers does)."""
    move = callable(getattr(checker, "to", None)) and device is not None
    if move:
        checker.to(device)
    try:
        yield
    finally:
        if move:
            checker.to("cpu")


class GuardrailTextStage(PipelineStage):
    """Refuses an unsafe prompt before anything is encoded."""

    name = "guardrail_text"

    def __init__(self, checker: Any) -> None:
        self.checker = checker

    def forward(self, batch: ForwardBatch) -> ForwardBatch:
        with on_device(self.checker, batch.device):
            safe = self.checker.check_text_safety(batch.params.prompt)
        if not safe:
            raise ValueError(
                "Cosmos Guardrail found the prompt unsafe; change the prompt (the NVIDIA Open Model License "
                "asks for the check)"
            )
        return batch
