"""Base class of training algorithms (finetune, LoRA, DMD2)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar


class TrainingAlgorithm(ABC):
    """One post-training method.

    Class attributes:
        name: lower-kebab name (``"lora"``).
        models: the roles of the models it needs (``("student", "teacher", "critic")``).
    """

    name: ClassVar[str]
    models: ClassVar[tuple[str, ...]] = ("transformer",)

    @abstractmethod
    def train_step(self, batch: Any) -> dict[str, float]:
        """Run one optimisation step and return its metrics."""

    def state_dict(self) -> dict[str, Any]:
        """Algorithm state to checkpoint beside the models and optimizers."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
