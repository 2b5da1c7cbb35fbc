"""Base class of parallel strategies (Ulysses, ring, CFG, FSDP, TP).

A strategy wraps a model from outside (model files contain no distributed code): it says which
device-mesh dimensions it needs, shards inputs, wraps modules and gathers outputs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import torch


class ParallelStrategy(ABC):
    """One way to spread work over the ranks of a device mesh.

    Class attributes:
        name: lower-kebab name (``"ulysses"``).
        mesh_dims: names of the mesh dimensions the strategy uses (``("sp",)``).
    """

    name: ClassVar[str]
    mesh_dims: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def wrap(self, model: torch.nn.Module, mesh: Any) -> torch.nn.Module:
        """Return ``model`` prepared to run under ``mesh`` (in place where possible)."""
